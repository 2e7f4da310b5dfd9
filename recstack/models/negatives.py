"""Training examples of the DLRM: which interactions are positives, and the negatives sampled
for each (catalogue-uniform, popularity-proportional, and hard ones from the two-tower's top items)."""

from __future__ import annotations

import numpy as np
import torch

from recstack.ids import FIRST_CODE
from recstack.models.data import Interactions, TrainingData
from recstack.models.predict import item_embeddings, user_embeddings
from recstack.models.two_tower import TwoTower
from recstack.ranking import score_batch_rows


def positive_rows(rows: Interactions, positive_min_rating: float | None) -> np.ndarray:
    """Rows that count as positives: rating >= threshold; every row when there are no ratings (or no threshold)."""
    if positive_min_rating is None or np.isnan(rows.ratings).all():
        return np.arange(len(rows))
    return np.flatnonzero(np.nan_to_num(rows.ratings, nan=np.inf) >= positive_min_rating)


@torch.no_grad()
def hard_negative_pool(two_tower: TwoTower, data: TrainingData, rows: Interactions, pos_rows: np.ndarray,
                       pool: int, batch_size: int = 2048) -> np.ndarray:
    """For each positive row, the two-tower's top-``pool`` items (not the positive, not in the history): [P, pool] int32."""
    item_emb = item_embeddings(two_tower, data)
    out = np.empty((len(pos_rows), pool), np.int32)
    batch_size = score_batch_rows(batch_size, data.n_items)
    for s in range(0, len(pos_rows), batch_size):
        r = pos_rows[s:s + batch_size]
        scores = user_embeddings(two_tower, data, rows.users[r], rows.history[r], rows.history_times[r]) @ item_emb.T
        scores[:, :FIRST_CODE] = -np.inf
        scores[np.arange(len(r))[:, None], rows.history[r]] = -np.inf
        scores[np.arange(len(r)), rows.items[r]] = -np.inf
        out[s:s + len(r)] = np.argpartition(-scores, pool - 1, axis=1)[:, :pool]
    return out


def dlrm_examples(data: TrainingData, rows: Interactions, rng: np.random.Generator, negatives: int,
                  pos_rows: np.ndarray, pop_share: float = 0.5, hard: int = 0,
                  hard_pool: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index into ``rows``, candidate item, label) for the positives + freshly sampled negatives.

    Per positive: ``hard`` negatives drawn from its retrieval pool (``hard_pool`` rows align with
    ``pos_rows``), the rest split into popularity-proportional (``pop_share``) and uniform ones.
    """
    counts = np.bincount(rows.items, minlength=data.n_items).astype(np.float64)
    counts[:FIRST_CODE] = 0
    pop = counts / counts.sum()
    n_hard = hard if hard_pool is not None else 0
    n_pop = int(round((negatives - n_hard) * pop_share))
    n_uni = negatives - n_hard - n_pop
    neg_rows = np.repeat(pos_rows, negatives)
    neg_items = np.empty((len(pos_rows), negatives), np.int64)
    if n_uni:
        neg_items[:, :n_uni] = rng.integers(FIRST_CODE, data.n_items, (len(pos_rows), n_uni))
    if n_pop:
        neg_items[:, n_uni:n_uni + n_pop] = rng.choice(data.n_items, size=(len(pos_rows), n_pop), p=pop)
    if n_hard:
        pick = rng.integers(0, hard_pool.shape[1], (len(pos_rows), n_hard))
        neg_items[:, n_uni + n_pop:] = np.take_along_axis(hard_pool, pick, axis=1)
    row_idx = np.concatenate([pos_rows, neg_rows])
    items = np.concatenate([rows.items[pos_rows], neg_items.reshape(-1)])
    labels = np.concatenate([np.ones(len(pos_rows), np.float32), np.zeros(len(neg_rows), np.float32)])
    labels[len(pos_rows):][items[len(pos_rows):] == rows.items[neg_rows]] = 1.0  # sampled the positive itself
    return row_idx, items, labels
