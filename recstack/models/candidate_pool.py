"""The ranker's training examples from the candidates retrieval produces (:mod:`recstack.models.candidates`).

For every positive training row (a user at the time of an interaction, with the history before
it), :func:`build_training_pool` runs the serving computation of that moment: the two-tower's
top-K over the catalogue (the row's history excluded), item-kNN over the history and popular
items, merged. The positive keeps its source flags (whether retrieval proposed it, and from which
source); the hard negatives are drawn from the merged candidates, never among the user's own
train items. Cross features (:data:`recstack.models.candidates.CROSS_FEATURES`) are computed per
batch by :meth:`TrainingPool.features`, at the row's own time (popularity and time since the
item's last interaction count only interactions before it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recstack.ids import FIRST_CODE, PAD
from recstack.models.candidates import CandidateSources, in_sorted, source_flags
from recstack.ranking import score_batch_rows

POOL_SAMPLE = 48
"""Negatives kept per positive row (a random subset of its merged candidates), drawn from each epoch."""


@dataclass
class TrainingPool:
    """Per positive row: ``negatives`` int32 [P, S] (PAD = none), their ``negative_sources`` bool
    [P, S, 3] and the positive's ``positive_sources`` bool [P, 3]; ``user_emb`` [P, d] float32 and
    ``item_emb`` [n_items, d] for the two-tower cosine feature."""

    negatives: np.ndarray
    negative_sources: np.ndarray
    positive_sources: np.ndarray
    user_emb: np.ndarray
    item_emb: np.ndarray

    def draw(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` negatives per row, at random among its valid ones -> (column index [P, count],
        empty [P, count] bool: the row had fewer valid negatives)."""
        valid = self.negatives != PAD
        keys = np.where(valid, rng.random(self.negatives.shape), 2.0)
        cols = np.argsort(keys, axis=1)[:, :count]
        return cols, ~np.take_along_axis(valid, cols, 1)

    def features(self, sources: CandidateSources, rows: np.ndarray, items: np.ndarray, history: np.ndarray,
                 times: np.ndarray, flags: np.ndarray) -> np.ndarray:
        """Cross features of positive rows ``rows`` [b] (index into the pool) x ``items`` [b, J] ->
        [b, J, F] float32; ``history`` [b, L] and ``times`` [b] of those rows, ``flags`` [b, J, 3]."""
        cos = np.einsum("bd,bjd->bj", self.user_emb[rows].astype(np.float64),
                        self.item_emb[items].astype(np.float64))
        return sources.features(items, cos, flags, sources.knn_scores(history), history, times)


def build_training_pool(sources: CandidateSources, user_emb: np.ndarray, item_emb: np.ndarray,
                        users: np.ndarray, history: np.ndarray, positives: np.ndarray, times: np.ndarray,
                        own_keys: np.ndarray, rng: np.random.Generator, sample: int = POOL_SAMPLE,
                        batch_size: int = 2048) -> TrainingPool:
    """Merged candidates of each positive row, as serving computes them at that row's time.

    ``user_emb`` [P, d] the rows' two-tower user embeddings; ``users``, ``history`` [P, L],
    ``positives`` [P] and ``times`` [P] of the rows; ``own_keys`` sorted ``user * n_items + item``
    of every (user, item) of the training rows (what a negative may never be).
    """
    n_items = sources.n_items
    P = len(positives)
    negatives = np.full((P, sample), PAD, np.int32)  # ML-1M: 1M rows x 48 = 192 MB
    neg_sources = np.zeros((P, sample, 3), bool)
    pos_sources = np.zeros((P, 3), bool)
    for s in range(0, P, score_batch_rows(batch_size, n_items)):
        r = np.arange(s, min(s + score_batch_rows(batch_size, n_items), P))
        first = user_emb[r].astype(np.float64) @ item_emb.T.astype(np.float64)
        first[:, :FIRST_CODE] = -np.inf
        hist = history[r]
        np.put_along_axis(first, hist, -np.inf, 1)  # the items before the row: serving's seen items
        # (padding 0 is already -inf)
        ids, cands_sources = _merged(sources, first, hist)
        pos_sources[r] = source_flags(ids, cands_sources, positives[r][:, None])[:, 0]
        own = in_sorted(users[r][:, None] * n_items + ids, own_keys) | (ids == PAD)
        keys = np.where(own, 2.0, rng.random(ids.shape))
        cols = np.argsort(keys, axis=1)[:, :sample]
        picked = np.take_along_axis(ids, cols, 1)
        ok = ~np.take_along_axis(own, cols, 1)
        negatives[r, : cols.shape[1]] = np.where(ok, picked, PAD)
        neg_sources[r, : cols.shape[1]] = np.take_along_axis(cands_sources, cols[:, :, None], 1) & ok[:, :, None]
    return TrainingPool(negatives, neg_sources, pos_sources, user_emb, item_emb)


def _merged(sources: CandidateSources, first: np.ndarray, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The merged candidate ids [B, W] and their source flags [B, W, 3] (no features: the pool only needs these)."""
    from recstack.ranking import top_k

    seen_keys = np.flatnonzero(np.isneginf(first))
    tt = top_k(first, sources.cfg.two_tower)
    tt = np.where(np.isfinite(np.take_along_axis(first, tt, 1)), tt, PAD)
    cands = sources.merge(tt, history, seen_keys)
    return cands.ids, cands.sources


def own_item_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted unique ``user * n_items + item`` keys of interactions."""
    return np.unique(np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64))


def softmax_groups(pool: TrainingPool, positives: np.ndarray, rng: np.random.Generator,
                   negatives: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch's groups: (items [P, 1 + negatives] = positive then negatives, their source flags
    [P, 1 + negatives, 3], empty [P, 1 + negatives] bool: a slot without a negative, masked out of the softmax)."""
    cols, empty = pool.draw(rng, negatives)
    items = np.concatenate([positives[:, None], np.take_along_axis(pool.negatives, cols, 1)], 1).astype(np.int64)
    flags = np.concatenate([pool.positive_sources[:, None, :],
                            np.take_along_axis(pool.negative_sources, cols[:, :, None], 1)], 1)
    if cols.shape[1] < negatives:  # fewer kept candidates than negatives asked for
        pad = negatives - cols.shape[1]
        items = np.pad(items, ((0, 0), (0, pad)))
        flags = np.pad(flags, ((0, 0), (0, pad), (0, 0)))
        empty = np.pad(empty, ((0, 0), (0, pad)), constant_values=True)
    return items, flags, np.concatenate([np.zeros((len(items), 1), bool), empty], 1)
