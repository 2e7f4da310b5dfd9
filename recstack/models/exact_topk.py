"""Top-k per row with a defined tie rule, in PyTorch (CPU or a device): the training pool's selections.

``torch.topk`` is several times faster than ``numpy.argpartition`` on ``[B, n_items]`` rows, but
which of several equal scores it keeps at the k-th place is unspecified. :func:`top_k_exact` keeps
the rule of :meth:`recstack.models.candidates.CandidateSources.top_knn` (and of a full sort by
score, then id): best first, equal scores in increasing id, so that the training pool selects
exactly what the numpy serving step selects for the same scores.
"""

from __future__ import annotations

import torch


def _order_ties(values: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder each row's (values, ids) [B, k] by value descending, then id ascending."""
    by_id = torch.argsort(ids, dim=1)
    values, ids = values.gather(1, by_id), ids.gather(1, by_id)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, by_value), ids.gather(1, by_value)


def top_k_exact(scores: torch.Tensor, k: int, floor: float = float("-inf")) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best columns of each row of ``scores`` [B, n] -> ``(values [B, k], ids int64 [B, k])``,
    best first, equal scores by increasing column id (a stable sort's order).

    Entries with a value ``<= floor`` are ones the caller discards (padding, zero scores): ties
    among them are not resolved, so which ids stand there is unspecified. ``k`` is capped at n.
    """
    n = scores.shape[1]
    k = min(int(k), n)
    if k == 0 or scores.shape[0] == 0:
        empty = scores.new_empty((scores.shape[0], k))
        return empty, torch.empty((scores.shape[0], k), dtype=torch.int64, device=scores.device)
    if k == n:
        values, ids = torch.sort(scores, dim=1, descending=True, stable=True)
        return values, ids
    values, ids = torch.topk(scores, k + 1, dim=1, sorted=True)
    # a row whose (k+1)-th score equals its k-th has a tie across the cut: topk may have kept any of
    # the tied columns, so those rows (rare for real-valued scores) take the full stable sort
    cut = (values[:, k] == values[:, k - 1]) & (values[:, k - 1] > floor)
    values, ids = _order_ties(values[:, :k], ids[:, :k])
    rows = torch.nonzero(cut).flatten()
    if len(rows):
        full_values, full_ids = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        values[rows], ids[rows] = full_values[:, :k], full_ids[:, :k]
    return values, ids
