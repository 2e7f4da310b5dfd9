"""Batch scoring with trained models: full-catalogue two-tower scores and DLRM reranking.

Used by training (model selection on the validation split, :mod:`recstack.models.validation`) and
by offline evaluation (``recstack evaluate``).
"""

from __future__ import annotations

import numpy as np
import torch

from recstack.models.data import TrainingData
from recstack.models.device import to_tensors
from recstack.models.dlrm import DLRM
from recstack.models.export import compute_item_embeddings
from recstack.models.two_tower import TwoTower


@torch.no_grad()
def item_embeddings(model: TwoTower, data: TrainingData) -> np.ndarray:
    """[n_items, d] float32 for every encoded item id (pad / OOV rows zero)."""
    return compute_item_embeddings(model, data.item_features)


@torch.no_grad()
def user_embeddings(model: TwoTower, data: TrainingData, users: np.ndarray, history: np.ndarray,
                    history_times: np.ndarray | None = None, batch_size: int = 4096) -> np.ndarray:
    """[U, d] float32 user-tower outputs for (user id, history) rows; ``history_times`` [U, L] unix
    seconds of the history items, required by a sequence tower with time gaps (ignored otherwise)."""
    if model.cfg.reads_history_times and history_times is None:
        raise ValueError("user_embeddings: this user tower reads time gaps; pass history_times")
    times = history_times if model.cfg.reads_history_times else None
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(users), batch_size):
        blocks = data.batch(users[s:s + batch_size], history[s:s + batch_size],
                            history_times=None if times is None else times[s:s + batch_size])
        blocks = {k: v for k, v in blocks.items()
                  if k in ("user_cat", "user_lists", "user_cont", "history", "history_times")}
        out.append(model.user_embedding(to_tensors(blocks, device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.output_dim), np.float32)


@torch.no_grad()
def dlrm_scores(model: DLRM, data: TrainingData, users: np.ndarray, history: np.ndarray,
                candidates: np.ndarray, context: np.ndarray | None = None, batch_size: int = 8192,
                cross: np.ndarray | None = None) -> np.ndarray:
    """DLRM logits for each row's candidates: ``candidates`` [U, C] -> scores [U, C] float32.

    ``context`` [U, 3]: each row's request context (:mod:`recstack.workflows.request_context`);
    needed by a DLRM whose layout reads context columns. ``cross`` [U, C, F]: the candidates'
    ``item_cross`` features (:mod:`recstack.models.candidates`), needed by a DLRM that reads them."""
    model.eval()
    device = next(model.parameters()).device
    U, C = candidates.shape
    rows = np.repeat(np.arange(U), C)
    flat_items = candidates.reshape(-1)
    out = np.empty(U * C, np.float32)
    for s in range(0, len(rows), batch_size):
        r = rows[s:s + batch_size]
        blocks = data.batch(users[r], history[r], flat_items[s:s + batch_size],
                            None if context is None else context[r])
        if cross is not None:
            blocks["item_cross"] = cross.reshape(U * C, -1)[s:s + batch_size]
        out[s:s + batch_size] = model(to_tensors(blocks, device)).float().cpu().numpy()
    return out.reshape(U, C)


def rerank(first_stage: np.ndarray, candidates: np.ndarray, second_stage: np.ndarray) -> np.ndarray:
    """Scores where the candidates rank first, by ``second_stage``, and the rest keep first-stage order.

    ``first_stage`` [U, n_items] (seen items at -inf), ``candidates`` [U, C] item ids,
    ``second_stage`` [U, C] scores of those candidates (-inf: an empty slot, e.g. a multi-source
    duplicate, never ranked). Returns a new [U, n_items] array.
    """
    final = np.array(first_stage, dtype=np.float64, copy=True)
    top = np.where(np.isfinite(final), final, -1e30).max(axis=1)
    second = second_stage.astype(np.float64)
    lowest = np.where(np.isfinite(second), second, np.inf).min(axis=1)  # -inf: an empty candidate slot
    offset = top - np.where(np.isfinite(lowest), lowest, 0.0) + 1.0  # every candidate above every non-candidate
    cand_scores = second + offset[:, None]
    cand_first = np.take_along_axis(first_stage, candidates, axis=1)
    cand_scores = np.where(np.isfinite(cand_first), cand_scores, -np.inf)  # never resurrect a seen item
    np.put_along_axis(final, candidates, cand_scores, axis=1)
    return final
