"""Evaluation's own metric helpers, on top of the shared ranking protocol in :mod:`recstack.ranking`
(ranks, Recall/NDCG/HR@K, MRR, coverage: the same code model selection uses during training)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recstack.ranking import RankingAccumulator, SeenCSR, row_batches, score_batch_rows


def ranks_from_topk(topk: np.ndarray, targets: np.ndarray, n_catalogue: int) -> np.ndarray:
    """Rank of each target inside a ranked top-k list ([U, k]); targets not in it get ``n_catalogue``."""
    hits = topk == np.asarray(targets)[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1), n_catalogue).astype(np.int64)


def evaluate_scores(score_fn: Callable[[np.ndarray], np.ndarray], users: np.ndarray, targets: np.ndarray,
                    n_items: int, seen: SeenCSR | None = None, k: int = 10, batch_size: int = 1024,
                    catalogue: np.ndarray | None = None) -> dict[str, float]:
    """Full-catalogue metrics of ``score_fn(row_indices) -> scores [b, n_items]`` over user batches.

    ``users`` [U] (ids for the seen lookup) and ``targets`` [U]; ``score_fn`` gets the row
    positions of the batch (so it can index its own per-row inputs).
    """
    acc = RankingAccumulator(n_items, k, catalogue)
    for rows in row_batches(len(users), score_batch_rows(batch_size, n_items)):
        acc.add(score_fn(rows), targets[rows], users[rows], seen)
    return acc.result()
