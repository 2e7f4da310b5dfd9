"""Full-catalogue leave-one-out ranking (shared/DATA.md protocol), numpy only.

Model selection during training (:mod:`recstack.models.validation`) and offline evaluation
(:mod:`recstack.evaluation.evaluate`) score the same way, so the protocol lives here, below both.

Every user has one held-out target item; every catalogue item is scored; the user's own
earlier (seen) items are excluded; a target tied with other items ranks **below** all of
them (pessimistic ties), so a constant scorer gets no credit. With one target per user:

    rank      = #{catalogue items j != target, not seen, with score_j >= score_target}   (0-based)
    HR@K      = Recall@K = [rank < K]
    NDCG@K    = 1 / log2(rank + 2) if rank < K else 0       (the ideal DCG is 1)
    MRR       = 1 / (rank + 1)                              (over the full ranking)
    coverage  = share of catalogue items that appear in at least one user's top-K list

The catalogue is the encoded item ids from :data:`recstack.ids.FIRST_CODE` on; a target
outside it (padding / out-of-vocabulary id) counts as a miss (rank = catalogue size). Scores
are processed in user batches (:func:`row_batches`) so ML-1M-sized catalogues fit in memory:
:class:`RankingAccumulator` collects ranks and top-K lists batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from recstack.ids import FIRST_CODE

SeenCSR = tuple[np.ndarray, np.ndarray]  # (indptr [n_users + 1], indices): items per user id


SCORE_BATCH_BYTES = 1 << 28
"""Memory bound of one batch of full-catalogue scores (256 MiB of float64): with 1M items a
1024-user batch would be 8 GiB, and the ranking code makes a copy or two of it."""


def score_batch_rows(batch_size: int, n_items: int, budget_bytes: int = SCORE_BATCH_BYTES) -> int:
    """Users per batch of ``[b, n_items]`` float64 scores: ``batch_size``, lowered so a batch stays
    under ``budget_bytes`` (at least 1). ML-1M's 3.7k items keep 1024; 1M items get 33."""
    return max(1, min(int(batch_size), int(budget_bytes) // (8 * max(int(n_items), 1))))


def row_batches(n: int, batch_size: int) -> Iterator[np.ndarray]:
    """Row positions ``0 .. n-1`` in consecutive batches of at most ``batch_size``."""
    for start in range(0, n, batch_size):
        yield np.arange(start, min(start + batch_size, n))


def catalogue_mask(n_items: int, first_item: int = FIRST_CODE) -> np.ndarray:
    """Which score columns are real catalogue items (encoded ids >= ``first_item``; below: pad, OOV)."""
    mask = np.ones(n_items, dtype=bool)
    mask[:first_item] = False
    return mask


def exclude_seen(scores: np.ndarray, users: np.ndarray, seen: SeenCSR | None,
                 targets: np.ndarray | None = None) -> np.ndarray:
    """Set the seen items of each row's user to -inf (in place; a row's own target is never excluded)."""
    if seen is None:
        return scores
    indptr, indices = seen
    users = np.asarray(users)
    inside = users < len(indptr) - 1
    starts = np.where(inside, indptr[np.minimum(users, len(indptr) - 2)], 0)
    ends = np.where(inside, indptr[np.minimum(users, len(indptr) - 2) + 1], 0)
    lengths = ends - starts
    rows = np.repeat(np.arange(len(users)), lengths)
    offs = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = indices[np.repeat(starts, lengths) + offs]
    if targets is not None:
        keep = cols != np.asarray(targets)[rows]
        rows, cols = rows[keep], cols[keep]
    ok = cols < scores.shape[1]
    scores[rows[ok], cols[ok]] = -np.inf
    return scores


def mask_unrankable(scores: np.ndarray, users: np.ndarray, seen: SeenCSR | None, targets: np.ndarray,
                    catalogue: np.ndarray) -> np.ndarray:
    """First-stage scores ready for candidate selection (in place): each row's seen items (except its
    target) and every non-catalogue column at -inf."""
    exclude_seen(scores, users, seen, targets)
    scores[:, ~catalogue] = -np.inf
    return scores


def target_ranks(scores: np.ndarray, targets: np.ndarray, catalogue: np.ndarray | None = None) -> np.ndarray:
    """0-based pessimistic rank of each row's target among the catalogue columns of ``scores``.

    ``scores`` [U, n_items] (seen items already at -inf); ``targets`` [U] column ids. A target
    not in the catalogue, or scored -inf / NaN, gets rank = catalogue size (a miss).
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    n_items = scores.shape[1]
    if catalogue is None:
        catalogue = np.ones(n_items, dtype=bool)
    n_cat = int(catalogue.sum())
    in_range = (targets >= 0) & (targets < n_items)
    safe_t = np.where(in_range, targets, 0)
    t_score = scores[np.arange(len(targets)), safe_t]
    ge = (scores >= t_score[:, None]) & catalogue[None, :]
    ranks = ge.sum(axis=1) - ge[np.arange(len(targets)), safe_t]  # the target itself does not count
    miss = ~in_range | ~catalogue[safe_t] | ~np.isfinite(t_score)
    return np.where(miss, n_cat, ranks).astype(np.int64)


def top_k(scores: np.ndarray, k: int, catalogue: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` best (catalogue) columns per row, best first ([U, k]; ties: lower id first).

    Also the candidate selection of the two-stage ranking: the two-tower's top-``C`` items the
    DLRM reranks (seen and non-catalogue items already at -inf, :func:`mask_unrankable`).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if catalogue is not None:
        scores = np.where(catalogue[None, :], scores, -np.inf)
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def metrics_from_ranks(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """Recall@K, NDCG@K, HR@K and MRR from 0-based ranks (one target per user)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(ranks) == 0:
        return {f"recall@{k}": 0.0, f"ndcg@{k}": 0.0, f"hr@{k}": 0.0, "mrr": 0.0}
    hit = ranks < k
    ndcg = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    return {f"recall@{k}": float(hit.mean()), f"ndcg@{k}": float(ndcg.mean()), f"hr@{k}": float(hit.mean()),
            "mrr": float((1.0 / (ranks + 1.0)).mean())}


def coverage(topk_lists: np.ndarray, n_catalogue: int) -> float:
    """Share of the catalogue appearing in at least one top-K list."""
    if n_catalogue <= 0 or topk_lists.size == 0:
        return 0.0
    return float(len(np.unique(topk_lists)) / n_catalogue)


class RankingAccumulator:
    """Collect ranks and top-K lists over user batches, then report the metrics."""

    def __init__(self, n_items: int, k: int = 10, catalogue: np.ndarray | None = None):
        self.k = k
        self.catalogue = catalogue if catalogue is not None else catalogue_mask(n_items)
        self.n_catalogue = int(self.catalogue.sum())
        self.ranks: list[np.ndarray] = []
        self.tops: list[np.ndarray] = []

    def add(self, scores: np.ndarray, targets: np.ndarray, users: np.ndarray | None = None,
            seen: SeenCSR | None = None) -> np.ndarray:
        """Add a batch: ``scores`` [b, n_items] (modified: seen -> -inf), ``targets`` [b]; returns ranks."""
        scores = np.asarray(scores, dtype=np.float64)
        if seen is not None:
            exclude_seen(scores, users, seen, targets)
        ranks = target_ranks(scores, targets, self.catalogue)
        self.ranks.append(ranks)
        self.tops.append(top_k(scores, self.k, self.catalogue))
        return ranks

    def result(self) -> dict[str, float]:
        ranks = np.concatenate(self.ranks) if self.ranks else np.zeros(0, np.int64)
        out = metrics_from_ranks(ranks, self.k)
        tops = np.concatenate(self.tops) if self.tops else np.zeros((0, self.k), np.int64)
        out["coverage"] = coverage(tops, self.n_catalogue)
        out["users"] = int(len(ranks))
        return out
