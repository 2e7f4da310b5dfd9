"""Score fusion of the ranker (DLRM) with the retriever (two-tower): numpy only, no torch.

The final ranking score of a candidate for a known user is::

    score = dlrm_weight * dlrm_logit + retrieval_weight * retrieval_score

where ``retrieval_score`` is the two-tower inner product of the L2-normalised user and item
embeddings (what the FAISS inner-product index returns as ``retrieval_scores``). The weights
are chosen on the validation split at training time (:func:`select_fusion`, called by
``recstack.models.dlrm_training.train_dlrm``) and stored in ``runs/<ds>/models/dlrm/config.json``
under ``"fusion"``::

    {"dlrm_weight": a, "retrieval_weight": b, "selected_on": "valid", "valid_ndcg@10": ...}

Offline evaluation (``recstack evaluate``) and the serving steps apply the
same :func:`fuse_scores`, so what is measured is what is served. This module is imported by
serving processes: keep it free of torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recstack.errors import InputError

# dlrm_weight grid, relative to retrieval_weight = 1 / temperature; 0 is deliberately absent
# (the ranker must take part in the served ranking).
DLRM_WEIGHT_GRID = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)

# what a DLRM folder without a "fusion" entry (trained before fusion existed) means: DLRM only
LEGACY_FUSION = {"dlrm_weight": 1.0, "retrieval_weight": 0.0, "selected_on": "default"}


def check_fusion(fusion: dict[str, Any]) -> tuple[float, float]:
    """(dlrm_weight, retrieval_weight) of a fusion dict; InputError when missing / not usable."""
    if not isinstance(fusion, dict):
        raise InputError(f"fusion: expected a dict with dlrm_weight and retrieval_weight, got {type(fusion).__name__}")
    try:
        a, b = float(fusion["dlrm_weight"]), float(fusion["retrieval_weight"])
    except KeyError as exc:
        raise InputError(f"fusion: missing {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise InputError("fusion: dlrm_weight and retrieval_weight must be numbers") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < 0 or a + b == 0:
        raise InputError(f"fusion: weights must be finite, >= 0 and not both 0, got dlrm_weight={a}, "
                         f"retrieval_weight={b}")
    return a, b


def fuse_scores(dlrm_logits: np.ndarray, retrieval_scores: np.ndarray, fusion: dict[str, Any]) -> np.ndarray:
    """``dlrm_weight * dlrm_logits + retrieval_weight * retrieval_scores`` (same shape).

    The result is float32 for float32 inputs (serving: ``rank_scores``), float64 when either
    input is float64 (offline evaluation). A candidate whose retrieval score is not finite
    (padding: -inf from the index) stays -inf, whatever the weights.
    """
    a, b = check_fusion(fusion)
    dlrm_logits, retrieval_scores = np.asarray(dlrm_logits), np.asarray(retrieval_scores)
    out_dtype = np.result_type(dlrm_logits.dtype, retrieval_scores.dtype, np.float32)
    dlrm_logits = dlrm_logits.astype(np.float64)
    retrieval_scores = retrieval_scores.astype(np.float64)
    if dlrm_logits.shape != retrieval_scores.shape:
        raise InputError(f"fuse_scores: dlrm_logits shape {dlrm_logits.shape} != retrieval_scores shape "
                         f"{retrieval_scores.shape}")
    finite = np.isfinite(retrieval_scores)
    fused = a * dlrm_logits + b * np.where(finite, retrieval_scores, 0.0)
    return np.where(finite, fused, -np.inf).astype(out_dtype)


def read_fusion(model_dir: str | Path) -> dict[str, Any]:
    """The ``"fusion"`` entry of a DLRM folder's config.json (``LEGACY_FUSION`` when absent), validated."""
    from recstack.io import read_json

    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise InputError(f"{path}: missing (train the models first: recstack train)")
    fusion = read_json(path).get("fusion") or dict(LEGACY_FUSION)
    check_fusion(fusion)
    return fusion


def select_fusion(evaluate: Callable[[dict[str, Any]], float], temperature: float,
                  grid: Sequence[float] = DLRM_WEIGHT_GRID) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Grid search: retrieval_weight = 1 / temperature, dlrm_weight over ``grid`` (all > 0).

    ``evaluate(fusion) -> validation NDCG@10``. Returns the best fusion dict (ties: the larger
    dlrm_weight, so the ranker's share is not understated) and the whole search as a list.
    """
    if not grid or min(grid) <= 0:
        raise InputError("fusion grid: needs at least one dlrm_weight, all > 0")
    retrieval_weight = 1.0 / float(temperature)
    trials, best = [], None
    for a in grid:
        fusion = {"dlrm_weight": float(a), "retrieval_weight": retrieval_weight}
        ndcg = float(evaluate(fusion))
        trials.append({"dlrm_weight": float(a), "valid_ndcg@10": ndcg})
        if best is None or ndcg >= best[0]:
            best = (ndcg, fusion)
    fusion = {**best[1], "selected_on": "valid", "valid_ndcg@10": best[0]}
    return fusion, trials
