"""Array checks and result selection shared by the index and the sweep.

``check_embeddings`` / ``check_ids`` turn user input into float32 [N, d] / int64 [N] arrays or
raise an InputError naming the field; ``select_top`` applies per-query exclusions to FAISS
results, vectorised over the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recstack.errors import InputError


def check_embeddings(embeddings: Any, field: str, dim: int | None = None) -> np.ndarray:
    """``embeddings`` as a C-contiguous float32 [N, d] array, or an InputError naming ``field``."""
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise InputError(f"{field}: expected a 2-d [N, d] array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"{field}: dimension {x.shape[1]} does not match the index dimension {dim}")
    if x.shape[1] == 0:
        raise InputError(f"{field}: dimension is 0")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"{field}: expected float32 values, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise InputError(f"{field}: row {int(np.flatnonzero(~finite)[0])} contains NaN or infinite values "
                         f"({int((~finite).sum())} rows)")
    return x


def check_ids(ids: Any, n: int, field: str = "ids") -> np.ndarray:
    """``ids`` as int64 [n], non-negative and unique, or an InputError naming ``field``."""
    a = np.asarray(ids)
    if a.ndim != 1 or a.shape[0] != n:
        raise InputError(f"{field}: expected a 1-d array of {n} int64 ids (one per vector), got shape {a.shape}")
    if n and not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{field}: expected int64 ids, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if n and a.min() < 0:
        raise InputError(f"{field}: ids must be >= 0 (-1 marks a missing result)")
    if np.unique(a).shape[0] != n:
        raise InputError(f"{field}: contains duplicate ids")
    return a


def select_top(ids: np.ndarray, scores: np.ndarray, k: int,
            exclude: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row of FAISS results ``ids``/``scores`` [B, F] (best first) without ``exclude[b]``.

    Vectorised over the batch (one ``np.isin`` on row-offset keys); rows short of ``k`` are
    padded with id -1 and score -inf.
    """
    b, f = ids.shape
    keep = ids >= 0
    exclude = None if exclude is None else [e[e >= 0] for e in exclude]  # -1 never matches a result
    if exclude is not None and any(e.size for e in exclude):
        excl = np.concatenate(exclude)
        span = int(max(ids.max(initial=0), excl.max(initial=0))) + 1
        rows = np.repeat(np.arange(b, dtype=np.int64), [e.size for e in exclude])
        keep &= ~np.isin(np.arange(b, dtype=np.int64)[:, None] * span + ids, rows * span + excl)
    if f >= k and keep[:, :k].all():
        return ids[:, :k].astype(np.int64, copy=False), scores[:, :k].astype(np.float32, copy=False)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept results first, in score order
    kept = np.take_along_axis(keep, order, axis=1)
    out_ids = np.full((b, k), -1, dtype=np.int64)
    out_scores = np.full((b, k), -np.inf, dtype=np.float32)
    out_ids[:, : order.shape[1]] = np.where(kept, np.take_along_axis(ids, order, axis=1), -1)
    out_scores[:, : order.shape[1]] = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf)
    return out_ids, out_scores


def masked_top(vectors: np.ndarray, ids: np.ndarray, sorted_ids: np.ndarray, order: np.ndarray,
               queries: np.ndarray, k: int, exclude: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` over ``vectors`` [N, d] (row i holds id ``ids[i]``) for
    ``queries`` [B, d], ``exclude[b]`` never returned: ids [B, k] int64 and scores [B, k] float32,
    best first, padded with -1 / -inf. ``sorted_ids`` = ``ids[order]`` (ascending) maps excluded
    ids to rows. One matmul with the excluded entries set to -inf: no over-fetch."""
    scores = np.ascontiguousarray(queries, dtype=np.float32) @ vectors.T
    b, n = scores.shape
    if exclude is not None and any(e.size for e in exclude):
        flat = np.concatenate(exclude)
        rows = np.repeat(np.arange(b), [e.size for e in exclude])
        at = np.minimum(np.searchsorted(sorted_ids, flat), n - 1)
        hit = sorted_ids[at] == flat
        scores[rows[hit], order[at[hit]]] = -np.inf
    kk = min(k, n)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (b, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    best = np.argsort(-part_scores, axis=1, kind="stable")
    top_scores = np.take_along_axis(part_scores, best, axis=1)
    top_ids = np.where(np.isfinite(top_scores), ids[np.take_along_axis(part, best, axis=1)], -1)
    out_ids = np.full((b, k), -1, dtype=np.int64)
    out_scores = np.full((b, k), -np.inf, dtype=np.float32)
    out_ids[:, :kk], out_scores[:, :kk] = top_ids, np.where(top_ids >= 0, top_scores, -np.inf)
    return out_ids, out_scores
