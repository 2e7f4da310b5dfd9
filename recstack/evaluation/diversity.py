"""Diversity re-ranking (MMR with genre caps and a freshness term) and list-diversity measures, numpy only.

The served re-ranking step (:mod:`recstack.ensembles.rerank`) and the offline trade-off report
(:mod:`recstack.evaluation.tradeoff`) call the same :func:`mmr_order`, so the table a team reads is
the ranking it serves. Greedy Maximal Marginal Relevance (Carbonell & Goldstein 1998): position
``t`` of a list takes the candidate ``i`` maximising

    lambda * (rel_i + w_fresh * fresh_i) - (1 - lambda) * max_{j already picked} cos(e_i, e_j)

where ``rel`` is the ranker score min-max scaled to [0, 1] over the row's usable candidates,
``fresh`` a per-item freshness in [0, 1] (time-decayed popularity, :func:`decayed_popularity`)
and ``e`` the unit-normalised item-tower embeddings. ``lambda = 1`` with ``w_fresh = 0`` is the
ranker's order exactly (ties to the lower candidate index, as a stable sort). A genre cap ``c > 0``
skips candidates with a genre that already has ``c`` items in the list, unless every usable
candidate left is capped (the cap never shortens a list).

Rows are independent: a batch gives the same lists as its rows one at a time.
"""

from __future__ import annotations

import numpy as np


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` [..., d] scaled to unit L2 norm (zero rows stay zero), float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def scale_relevance(scores: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Per-row min-max scaling of ``scores`` [B, K] over ``usable`` entries to [0, 1] (float64;
    strictly order-preserving for float32 input; 0 elsewhere and for constant rows)."""
    scores = np.asarray(scores, dtype=np.float64)
    low = np.where(usable, scores, np.inf).min(axis=1, keepdims=True)
    high = np.where(usable, scores, -np.inf).max(axis=1, keepdims=True)
    span = np.where(np.isfinite(high - low) & (high > low), high - low, 1.0)
    return np.where(usable, (scores - np.where(np.isfinite(low), low, 0.0)) / span, 0.0)


def mmr_order(relevance: np.ndarray, usable: np.ndarray, embeddings: np.ndarray, n: int,
              lambdas: np.ndarray, *, genres: np.ndarray | None = None, genre_cap: np.ndarray | None = None,
              freshness: np.ndarray | None = None, freshness_weight: np.ndarray | None = None) -> np.ndarray:
    """Greedy MMR lists: candidate indices [B, min(n, K)], best first.

    ``relevance`` [B, K] ranker scores; ``usable`` [B, K] bool (unusable candidates come last, in
    index order); ``embeddings`` [B, K, d] unit-normalised candidate item embeddings
    (:func:`unit_rows`; a zero row is similar to nothing); ``lambdas``
    [B] in [0, 1]; ``genres`` [B, K, G] bool multi-hot with ``genre_cap`` [B] int (0 = no cap);
    ``freshness`` [B, K] in [0, 1] with ``freshness_weight`` [B] >= 0.
    """
    batch, k = relevance.shape
    steps = min(int(n), k)
    lambdas = np.asarray(lambdas, dtype=np.float64).reshape(batch, 1)
    capped = genres is not None and genre_cap is not None and bool(np.any(np.asarray(genre_cap) > 0))
    fresh = (freshness is not None and freshness_weight is not None
             and bool(np.any(np.asarray(freshness_weight) != 0)))
    if not capped and not fresh and bool(np.all(lambdas == 1.0)):
        # the ranker's order (what the loop below gives for these settings), without the K x K work
        return np.argsort(-np.where(usable, relevance, -np.inf), axis=1, kind="stable")[:, :steps]
    gain = scale_relevance(relevance, usable)
    if fresh:
        gain = gain + np.asarray(freshness_weight, np.float64).reshape(batch, 1) * np.asarray(freshness, np.float64)
    unit = np.asarray(embeddings, dtype=np.float32)
    max_similarity = np.zeros((batch, k))
    if capped:
        genres = np.asarray(genres, dtype=bool)
        genre_weights = genres.astype(np.float32)  # for a mat-vec: does a candidate carry a full genre?
        cap = np.asarray(genre_cap, np.int64).reshape(batch, 1)
        genre_counts = np.zeros((batch, genres.shape[2]), np.int64)
    free = np.ones((batch, k), dtype=bool)
    rows = np.arange(batch)
    order = np.zeros((batch, steps), np.int64)
    for position in range(steps):
        score = lambdas * gain - (1.0 - lambdas) * max_similarity
        open_ = free & usable
        if capped:
            full = (genre_counts >= cap) & (cap > 0)  # [B, G]
            allowed = open_ & ~(np.matmul(genre_weights, full.astype(np.float32)[:, :, None])[:, :, 0] > 0)
            open_ = np.where(allowed.any(axis=1, keepdims=True), allowed, open_)
        # rows with nothing usable left take their remaining candidates in index order
        pick = np.where(open_.any(axis=1), np.argmax(np.where(open_, score, -np.inf), axis=1), np.argmax(free, axis=1))
        order[:, position] = pick
        free[rows, pick] = False
        # cosine of every candidate to the one just picked: one batched mat-vec per position
        to_pick = np.matmul(unit, unit[rows, pick][:, :, None])[:, :, 0].astype(np.float64)
        max_similarity = to_pick if position == 0 else np.maximum(max_similarity, to_pick)
        if capped:
            genre_counts += genres[rows, pick] & usable[rows, pick][:, None]
    return order


def decayed_popularity(items: np.ndarray, timestamps: np.ndarray, n_items: int, half_life_s: float,
                       now: float | None = None) -> np.ndarray:
    """Freshness in [0, 1] per encoded item id [n_items]: interactions weighted ``2 ** -(age / half_life_s)``
    (age = ``now`` - timestamp, ``now`` = the latest timestamp by default), summed, divided by the maximum."""
    timestamps = np.asarray(timestamps, np.float64)
    if not len(timestamps):
        return np.zeros(n_items, np.float32)
    now = float(timestamps.max()) if now is None else float(now)
    weights = np.exp2(-np.maximum(now - timestamps, 0.0) / float(half_life_s))
    trend = np.bincount(np.asarray(items, np.int64), weights=weights, minlength=n_items)[:n_items]
    return (trend / max(trend.max(), 1e-12)).astype(np.float32)


def genre_matrix(item_codes: np.ndarray, genre_lists: list, n_rows: int) -> np.ndarray:
    """Multi-hot genres [n_rows, G] bool by encoded item id, from each item's encoded genre codes
    (column ``g`` = genre code ``g``; codes below 2, padding and out-of-vocabulary, are dropped)."""
    codes = [np.asarray(g if g is not None else [], np.int64) for g in genre_lists]
    width = max([int(c.max()) + 1 for c in codes if len(c)], default=1)
    out = np.zeros((n_rows, width), dtype=bool)
    for item, genre in zip(np.asarray(item_codes, np.int64), codes):
        out[item, genre[genre >= 2]] = True
    return out


def intra_list_distance(lists: np.ndarray, unit_embeddings: np.ndarray) -> np.ndarray:
    """Mean pairwise cosine distance ``1 - cos(e_i, e_j)`` within each list [U, N] of item ids (rows of
    ``unit_embeddings``; ids < 0 are skipped) -> [U] (NaN for lists shorter than 2)."""
    valid = lists >= 0
    vectors = unit_embeddings[np.where(valid, lists, 0)] * valid[..., None]
    sums = np.matmul(vectors, np.swapaxes(vectors, 1, 2)).sum(axis=(1, 2)) - valid.sum(axis=1)
    count = valid.sum(axis=1)
    pairs = count * (count - 1)
    return np.where(pairs > 0, 1.0 - sums / np.maximum(pairs, 1), np.nan)


def genre_intra_list_distance(lists: np.ndarray, genres: np.ndarray) -> np.ndarray:
    """Mean pairwise Jaccard distance of the items' genre sets within each list [U, N] -> [U]
    (``genres`` [n_items, G] bool; ids < 0 skipped; NaN for lists shorter than 2)."""
    valid = lists >= 0
    sets = genres[np.where(valid, lists, 0)].astype(np.float64) * valid[..., None]
    inter = np.matmul(sets, np.swapaxes(sets, 1, 2))
    size = sets.sum(axis=2)
    union = size[:, :, None] + size[:, None, :] - inter
    distance = np.where(union > 0, 1.0 - inter / np.maximum(union, 1), 0.0)
    pair = valid[:, :, None] & valid[:, None, :] & ~np.eye(lists.shape[1], dtype=bool)[None]
    count = pair.sum(axis=(1, 2))
    return np.where(count > 0, (distance * pair).sum(axis=(1, 2)) / np.maximum(count, 1), np.nan)
