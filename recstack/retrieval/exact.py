"""Exact inner-product top-K off the FAISS CPU path: FAISS-GPU when installed, else PyTorch.

``ExactSearch(vectors, ids, device)``: ``device="cpu"`` runs the PyTorch path on CPU tensors
(tests compare it with FAISS ``IndexFlatIP``); ``"cuda"`` uses FAISS-GPU (``GpuIndexFlatIP``)
when ``faiss.get_num_gpus() > 0``, else a PyTorch matmul + ``topk`` on the GPU; ``"auto"`` is
``cuda`` when a GPU is visible, else ``cpu``. torch is imported only here, so CPU serving
processes that never ask for a device do not pay for it. FAISS is imported only to look for
FAISS-GPU: without FAISS installed (a GPU serving host that carries only PyTorch) the PyTorch path runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recstack.errors import InputError

SCORE_BLOCK = 1 << 26  # at most this many float32 scores ([queries, items]) in memory at once (256 MiB)


def _faiss() -> Any | None:
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _gpu_faiss_available() -> bool:
    faiss = _faiss()
    return faiss is not None and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch or FAISS sees a GPU, else ``cpu``; ``cuda`` without one is an InputError."""
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"device: expected auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return "cpu"
    import torch

    has_gpu = torch.cuda.is_available() or _gpu_faiss_available()
    if device == "cuda" and not has_gpu:
        raise InputError("device: cuda requested but no CUDA GPU is visible to torch or FAISS")
    return "cuda" if has_gpu else "cpu"


class ExactSearch:
    """Exact top-K by inner product over ``vectors`` [N, d] float32 with ids ``ids`` [N] int64.

    ``backend`` says what runs: ``faiss-gpu`` or ``torch-cuda`` / ``torch-cpu``.
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, device: str = "auto"):
        self.device = resolve_device(device)
        self.dimension = int(vectors.shape[1])
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.device == "cuda" and _gpu_faiss_available():
            faiss = _faiss()
            self.backend = "faiss-gpu"
            self._resources = faiss.StandardGpuResources()
            self._index: Any = faiss.GpuIndexFlatIP(self._resources, self.dimension)
            self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        else:
            import torch

            self.backend = f"torch-{self.device}"
            self._vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device)
            self._ids_t = torch.from_numpy(self.ids).to(self.device)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Append items (the caller has checked shapes, values and id uniqueness)."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ids = np.concatenate([self.ids, np.asarray(ids, dtype=np.int64)])
        if self.backend == "faiss-gpu":
            self._index.add(x)
            return
        import torch

        self._vectors = torch.cat([self._vectors, torch.from_numpy(x).to(self.device)])
        self._ids_t = torch.from_numpy(self.ids).to(self.device)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``[B, k']`` float32 (best first) and ids ``[B, k']`` int64, ``k' = min(k, N)``.

        Same order as FAISS ``search`` (scores first) so :class:`ItemIndex` treats both alike.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), len(self))
        if k == 0 or q.shape[0] == 0:
            return np.zeros((q.shape[0], k), np.float32), np.zeros((q.shape[0], k), np.int64)
        if self.backend == "faiss-gpu":
            scores, rows = self._index.search(q, k)
            return scores, np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)
        import torch

        block = max(1, SCORE_BLOCK // max(len(self), 1))
        out_scores, out_ids = [], []
        with torch.no_grad():
            for start in range(0, q.shape[0], block):
                qt = torch.from_numpy(q[start:start + block]).to(self.device)
                top = torch.topk(qt @ self._vectors.T, k, dim=1, largest=True, sorted=True)
                out_scores.append(top.values.cpu().numpy())
                out_ids.append(self._ids_t[top.indices].cpu().numpy())
        return np.concatenate(out_scores), np.concatenate(out_ids)


def exact_search(vectors: Any, ids: Any, queries: Any, k: int, device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """One-shot exact top-``k``: ids ``[B, k']`` int64 and scores ``[B, k']`` float32 (``k' = min(k, N)``).

    Note the order (ids, scores), like :meth:`ItemIndex.search`.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if x.ndim != 2 or q.ndim != 2 or x.shape[1] != q.shape[1]:
        raise InputError(f"queries: shape {q.shape} does not match vectors {x.shape} (expected [B, d] and [N, d])")
    scores, found = ExactSearch(x, np.asarray(ids), device).search(q, k)
    return found, scores
