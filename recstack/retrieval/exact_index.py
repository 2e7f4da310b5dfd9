"""An exact item index for serving on a device (``cuda``, or ``cpu`` to check it) with the
:class:`~recstack.retrieval.index.ItemIndex` search contract, usable where FAISS is not installed.

It reads a saved ``flat`` index (``items.faiss`` + ``index.json``): through FAISS when installed,
else with :func:`~recstack.retrieval.flat_file.read_flat_index`; searches with
:class:`~recstack.retrieval.exact.ExactSearch` (FAISS-GPU, else PyTorch matmul + topk).
Results equal ``ItemIndex.search`` on the same index (up to the order of equal scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recstack.errors import InputError
from recstack.io import read_json
from recstack.retrieval.arrays import check_embeddings, check_ids, select_top
from recstack.retrieval.exact import ExactSearch, _faiss
from recstack.retrieval.flat_file import read_flat_index

INDEX_FILE, META_FILE = "items.faiss", "index.json"  # as recstack.retrieval.index (which imports FAISS)


def _read_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    if faiss is None:
        return read_flat_index(path)
    index = faiss.read_index(str(path))
    ids = faiss.vector_to_array(index.id_map).astype(np.int64) if index.ntotal else np.zeros(0, np.int64)
    vectors = faiss.downcast_index(index.index).reconstruct_n(0, index.ntotal) if index.ntotal else \
        np.zeros((0, index.d), np.float32)
    return np.asarray(vectors, np.float32), ids


class ExactItemIndex:
    """Exact inner-product search over the vectors of a saved flat index, on ``device``.

    ``backend``: ``faiss-gpu``, ``torch-cuda`` or ``torch-cpu``.
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, device: str = "auto"):
        self.dimension = int(vectors.shape[1])
        self._search = ExactSearch(vectors, ids, device)
        self.backend = self._search.backend
        self._ids = {int(i) for i in ids}

    @classmethod
    def load(cls, directory: Path | str, device: str = "auto") -> ExactItemIndex:
        directory = Path(directory)
        meta_path, index_path = directory / META_FILE, directory / INDEX_FILE
        if not meta_path.is_file() or not index_path.is_file():
            raise InputError(f"{directory}: no {INDEX_FILE} + {META_FILE} (run `recstack index build` first)")
        meta = read_json(meta_path)
        if meta.get("kind") != "flat":
            raise InputError(f"{meta_path}: exact search on a device needs a flat index, this one is "
                             f"{meta.get('kind')!r} (rebuild with --index-kind flat, or serve on cpu)")
        vectors, ids = _read_vectors(index_path)
        if vectors.shape[1] != int(meta["dimension"]) or len(ids) != int(meta["count"]):
            raise InputError(f"{index_path}: {vectors.shape} vectors disagree with {META_FILE} "
                             f"{meta['count']} x {meta['dimension']}")
        return cls(vectors, ids, device)

    def __len__(self) -> int:
        return len(self._search)

    def require_dimension(self, dimension: int, source: str = "the model") -> None:
        """InputError unless the index holds ``dimension``-d vectors."""
        if int(dimension) != self.dimension:
            raise InputError(f"index: dimension {self.dimension} does not match {source}'s {int(dimension)} "
                             f"(rebuild it: recstack index build)")

    def add(self, embeddings: Any, ids: Any) -> None:
        """Add items: ``embeddings`` [n, d] float32, new ids [n] int64 (InputError for clashes, nothing added)."""
        x = check_embeddings(embeddings, "embeddings", self.dimension)
        a = check_ids(ids, x.shape[0])
        clash = [int(i) for i in a if int(i) in self._ids]
        if clash:
            raise InputError(f"ids: {clash[0]} is already in the index ({len(clash)} ids clash)")
        self._search.add(x, a)
        self._ids.update(int(i) for i in a)

    def search(self, queries: Any, k: int, exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids ``[B, k]`` int64 and scores ``[B, k]`` float32, ``exclude[b]`` left out of row ``b``
        (padding: id -1, score -inf), as :meth:`ItemIndex.search`."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise InputError(f"k: {k!r} is not a positive integer")
        q = check_embeddings(queries, "queries", self.dimension)
        excl = None if exclude is None else [np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude]
        if excl is not None and len(excl) != q.shape[0]:
            raise InputError(f"exclude: {len(excl)} lists for {q.shape[0]} queries")
        if q.shape[0] == 0 or len(self) == 0:
            return np.full((q.shape[0], k), -1, np.int64), np.full((q.shape[0], k), -np.inf, np.float32)
        fetch = min(int(k) + (max((e.size for e in excl), default=0) if excl else 0), len(self))
        scores, found = self._search.search(q, fetch)
        return select_top(found, scores, int(k), excl)
