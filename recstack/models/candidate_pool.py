"""The ranker's training examples from the candidates retrieval produces (:mod:`recstack.models.candidates`).

For every positive training row (a user at the time of an interaction, with the history before
it), :func:`build_training_pool` runs the serving computation of that moment: the two-tower's
top-K over the catalogue (the row's history excluded), item-kNN over the history and popular
items, merged. The positive keeps its source flags (whether retrieval proposed it, and from which
source); the hard negatives are drawn from the merged candidates, never among the user's own
train items. Cross features (:data:`recstack.models.candidates.CROSS_FEATURES`) are computed per
batch by :meth:`TrainingPool.features`, at the row's own time (popularity and time since the
item's last interaction count only interactions before it).

The build reads every training row once (ML-1M: 988k rows). Its two selections run in PyTorch
(:func:`recstack.models.exact_topk.top_k_exact`: the two-tower's top-K on ``device``, the item-kNN
top on the CPU) with the numpy serving step's tie rule, so the pool's merged candidates equal
:meth:`~recstack.models.candidates.CandidateSources.merge`'s for the same two-tower scores. With
``knn_keys`` a row's item-kNN scores leave its own user out of the co-occurrence
(:class:`~recstack.models.item_knn.LeaveUserOut`), in the pool and in the features alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recstack.ids import FIRST_CODE, PAD
from recstack.models.candidates import (
    CandidateSources,
    KnnScores,
    combine,
    row_keys,
    source_flags,
)
from recstack.models.exact_topk import top_k_exact
from recstack.models.item_knn import LeaveUserOut, user_item_membership
from recstack.ranking import score_batch_rows

POOL_SAMPLE = 48
"""Negatives kept per positive row (a random subset of its merged candidates), drawn from each epoch."""


@dataclass
class TrainingPool:
    """Per positive row: ``negatives`` int32 [P, S] (PAD = none), their ``negative_sources`` bool
    [P, S, 3] and the positive's ``positive_sources`` bool [P, 3]; ``user_emb`` [P, d] float32 and
    ``item_emb`` [n_items, d] for the two-tower cosine feature; ``users`` [P] and ``knn_keys`` (sorted
    ``user * n_items + item`` of the item-kNN's pairs; None: no leave-one-user-out) for the item-kNN score."""

    negatives: np.ndarray
    negative_sources: np.ndarray
    positive_sources: np.ndarray
    user_emb: np.ndarray
    item_emb: np.ndarray
    users: np.ndarray | None = None
    knn_keys: np.ndarray | None = None

    def leave_out(self, rows: np.ndarray) -> LeaveUserOut | None:
        """The leave-one-user-out view of positive rows ``rows`` [b] (None without ``knn_keys``)."""
        return None if self.knn_keys is None else LeaveUserOut(self.users[rows], self.knn_keys)

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
        knn = sources.knn_scores(history, self.leave_out(rows))
        return sources.features(items, cos, flags, knn, history, times)


def build_training_pool(sources: CandidateSources, user_emb: np.ndarray, item_emb: np.ndarray,
                        users: np.ndarray, history: np.ndarray, positives: np.ndarray, times: np.ndarray,
                        own_keys: np.ndarray, rng: np.random.Generator, sample: int = POOL_SAMPLE,
                        batch_size: int = 2048, knn_keys: np.ndarray | None = None,
                        device: str | torch.device = "cpu") -> TrainingPool:
    """Merged candidates of each positive row, as serving computes them at that row's time.

    ``user_emb`` [P, d] the rows' two-tower user embeddings; ``users``, ``history`` [P, L],
    ``positives`` [P] and ``times`` [P] of the rows; ``own_keys`` sorted ``user * n_items + item``
    of every (user, item) of the training rows (what a negative may never be); ``knn_keys`` the
    item-kNN's (user, item) keys for leave-one-user-out scores (None: the served scores);
    ``device``: where the two-tower scores and their top-K are computed.
    """
    n_items = sources.n_items
    P = len(positives)
    negatives = np.full((P, sample), PAD, np.int32)  # ML-1M: 1M rows x 48 = 192 MB
    neg_sources = np.zeros((P, sample, 3), bool)
    pos_sources = np.zeros((P, 3), bool)
    pool = TrainingPool(negatives, neg_sources, pos_sources, user_emb, item_emb, np.asarray(users, np.int64),
                        knn_keys)
    item_t = torch.from_numpy(np.ascontiguousarray(item_emb, np.float64)).to(torch.device(device)).T
    step = score_batch_rows(batch_size, n_items)
    for s in range(0, P, step):
        r = np.arange(s, min(s + step, P))
        hist = history[r]
        seen_keys = sorted_seen_keys(hist, n_items)
        knn = sources.knn_scores(hist, pool.leave_out(r))
        ids, cands_sources = combine([two_tower_top(user_emb[r], item_t, hist, sources.cfg.two_tower),
                                      knn_top(sources, knn, seen_keys, len(r)),
                                      sources.top_popular(seen_keys, len(r))])
        pos_sources[r] = source_flags(ids, cands_sources, positives[r][:, None])[:, 0]
        rows_of = np.broadcast_to(np.arange(len(r))[:, None], ids.shape)
        own = user_item_membership(users[r], own_keys, n_items, rows_of, ids) | (ids == PAD)
        keys = np.where(own, 2.0, rng.random(ids.shape))
        cols = np.argsort(keys, axis=1)[:, :sample]
        picked = np.take_along_axis(ids, cols, 1)
        ok = ~np.take_along_axis(own, cols, 1)
        negatives[r, : cols.shape[1]] = np.where(ok, picked, PAD)
        neg_sources[r, : cols.shape[1]] = np.take_along_axis(cands_sources, cols[:, :, None], 1) & ok[:, :, None]
    return pool


def sorted_seen_keys(history: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted row keys (``b * n_items + item``) of the items of ``history`` [B, L] (0-padded): what
    :func:`~recstack.models.candidates.padded_seen_keys` gives, with a repeated item kept twice, from a
    sort of each row instead of a sort of the batch."""
    items = np.sort(history, axis=1)
    return row_keys(items, n_items)[(items != PAD) & (items < n_items)]


def two_tower_top(user_emb: np.ndarray, item_t: torch.Tensor, history: np.ndarray, k: int) -> np.ndarray:
    """The two-tower source of rows with ``user_emb`` [B, d] and ``history`` [B, L] (their seen items):
    the ``k`` best float64 inner products with ``item_t`` [d, n_items] (on its device), ties to the
    lower id, padding / OOV columns and the history excluded (PAD where fewer remain) -> int64 [B, k]."""
    users = torch.from_numpy(np.ascontiguousarray(user_emb, np.float64)).to(item_t.device)
    first = users @ item_t
    first[:, :FIRST_CODE] = -torch.inf
    first.scatter_(1, torch.from_numpy(np.asarray(history, np.int64)).to(item_t.device), -torch.inf)
    values, ids = top_k_exact(first, k)
    return torch.where(torch.isfinite(values), ids, PAD).cpu().numpy()


def knn_top(sources: CandidateSources, knn: KnnScores, seen_keys: np.ndarray, batch: int) -> np.ndarray:
    """:meth:`CandidateSources.top_knn` (the same items in the same order, PAD past the end) with
    PyTorch's top-k over dense scores; modifies ``knn``'s dense scores (seen items -> 0)."""
    if knn.dense is None or sources.cfg.item_knn == 0:
        return sources.top_knn(knn, seen_keys, batch)
    knn.dense.reshape(-1)[seen_keys] = 0.0
    values, ids = top_k_exact(torch.from_numpy(knn.dense), sources.cfg.item_knn, floor=0.0)
    out = np.full((batch, sources.cfg.item_knn), PAD, np.int64)
    out[:, : ids.shape[1]] = torch.where(values > 0, ids, PAD).numpy()
    return out


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
