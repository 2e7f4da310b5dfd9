"""FAISS inner-product index over item embeddings (architecture section 5).

FAISS ids are the encoded item ids (``IndexIDMap2`` around a Flat or HNSW index),
so search results need no id translation and new items can be added later.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recstack.errors import InputError
from recstack.ids import FIRST_CODE
from recstack.io import atomic_dir, read_json, write_json
from recstack.paths import RunPaths

INDEX_FILE = "items.faiss"
META_FILE = "index.json"
KINDS = ("flat", "hnsw")
METRIC = "inner_product"
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF_SEARCH = 128


def _check_embeddings(embeddings: Any, field: str, dim: int | None = None) -> np.ndarray:
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
    if not np.isfinite(x).all():
        raise InputError(f"{field}: contains NaN or infinite values")
    return x


def _check_ids(ids: Any, n: int, field: str = "ids") -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1 or a.shape[0] != n:
        raise InputError(f"{field}: expected a 1-d array of {n} int64 ids, got shape {a.shape}")
    if n and not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{field}: expected int64 ids, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if n and a.min() < 0:
        raise InputError(f"{field}: ids must be >= 0 (-1 marks a missing result)")
    if np.unique(a).shape[0] != n:
        raise InputError(f"{field}: contains duplicate ids")
    return a


def _new_faiss_index(kind: str, dim: int, hnsw_m: int, ef_construction: int) -> faiss.Index:
    if kind == "flat":
        base = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        if hnsw_m < 2:
            raise InputError(f"hnsw_m: {hnsw_m} is below 2")
        base = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = int(ef_construction)
    else:
        raise InputError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    return faiss.IndexIDMap2(base)  # the SWIG wrapper keeps a reference to ``base``


class ItemIndex:
    """An item-embedding index: search with per-query exclusions, incremental add, save/load."""

    def __init__(self, index: faiss.Index, meta: dict):
        self.index = index
        self.meta = meta
        self.kind: str = meta["kind"]
        self.dimension: int = int(meta["dimension"])
        self.ef_search: int = int(meta.get("ef_search", DEFAULT_EF_SEARCH))
        self._ids = faiss.vector_to_array(index.id_map).astype(np.int64) if index.ntotal else np.zeros(0, np.int64)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        dimension: int,
        kind: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
    ) -> "ItemIndex":
        if isinstance(dimension, bool) or not isinstance(dimension, (int, np.integer)) or dimension < 1:
            raise InputError(f"dimension: {dimension!r} is not a positive integer")
        index = _new_faiss_index(kind, int(dimension), hnsw_m, ef_construction)
        meta = {"kind": kind, "metric": METRIC, "dimension": int(dimension), "count": 0}
        if kind == "hnsw":
            meta.update(hnsw_m=int(hnsw_m), ef_construction=int(ef_construction), ef_search=int(ef_search))
        return cls(index, meta)

    @classmethod
    def load(cls, directory: Path | str) -> "ItemIndex":
        directory = Path(directory)
        meta_path, index_path = directory / META_FILE, directory / INDEX_FILE
        if not meta_path.is_file() or not index_path.is_file():
            raise InputError(f"{directory}: no {INDEX_FILE} + {META_FILE} (run `recstack index build` first)")
        meta = read_json(meta_path)
        index = faiss.read_index(str(index_path))
        if index.d != int(meta["dimension"]) or index.ntotal != int(meta["count"]):
            raise InputError(
                f"{index_path}: dimension/count {index.d}/{index.ntotal} disagree with {META_FILE} "
                f"{meta['dimension']}/{meta['count']}"
            )
        return cls(index, meta)

    def save(self, directory: Path | str) -> dict:
        """Write ``items.faiss`` + ``index.json`` into ``directory`` (atomically replaced)."""
        self.meta["count"] = int(self.index.ntotal)
        self.meta["saved_at"] = datetime.now(timezone.utc).isoformat()
        with atomic_dir(Path(directory)) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            write_json(tmp / META_FILE, self.meta)
        return dict(self.meta)

    # -- updates ------------------------------------------------------------------------
    def add(self, embeddings: Any, ids: Any) -> None:
        """Add new items (ids not yet in the index); works for flat and HNSW."""
        x = _check_embeddings(embeddings, "embeddings", self.dimension)
        a = _check_ids(ids, x.shape[0])
        if x.shape[0] == 0:
            return
        clash = np.intersect1d(a, self._ids)
        if clash.size:
            raise InputError(f"ids: {int(clash[0])} is already in the index ({clash.size} ids clash)")
        self.index.add_with_ids(x, a)
        self._ids = np.concatenate([self._ids, a])
        self.meta["count"] = int(self.index.ntotal)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __contains__(self, item_id: int) -> bool:
        return bool(np.any(self._ids == int(item_id)))

    @property
    def ids(self) -> np.ndarray:
        """The ids in the index, in insertion order."""
        return self._ids.copy()

    # -- search -------------------------------------------------------------------------
    def search(
        self,
        queries: Any,
        k: int,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids ``[B, k]`` int64 and inner-product scores ``[B, k]`` float32 per query.

        ``exclude[b]`` (ids) never appear in row ``b``. Rows with fewer than ``k``
        results are padded with id -1 and score -inf.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise InputError(f"k: {k!r} is not a positive integer")
        k = int(k)
        q = _check_embeddings(queries, "queries", self.dimension)
        b = q.shape[0]
        excl: list[np.ndarray] | None = None
        if exclude is not None:
            if len(exclude) != b:
                raise InputError(f"exclude: {len(exclude)} lists for {b} queries")
            excl = [np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude]
        out_ids = np.full((b, k), -1, dtype=np.int64)
        out_scores = np.full((b, k), -np.inf, dtype=np.float32)
        n = len(self)
        if b == 0 or n == 0:
            return out_ids, out_scores

        extra = max((e.size for e in excl), default=0) if excl else 0
        fetch = min(k + extra, n)
        params = None
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, fetch)
        scores, ids = self.index.search(q, fetch, params=params)
        if not excl and fetch >= k and not (ids == -1).any():
            return ids[:, :k].astype(np.int64, copy=False), scores[:, :k].astype(np.float32, copy=False)
        for row in range(b):
            keep = ids[row] != -1
            if excl and excl[row].size:
                keep &= ~np.isin(ids[row], excl[row])
            r_ids, r_scores = ids[row][keep][:k], scores[row][keep][:k]
            out_ids[row, : r_ids.size] = r_ids
            out_scores[row, : r_scores.size] = r_scores
        return out_ids, out_scores


def build_index(
    embeddings: Any,
    ids: Any,
    kind: str = "flat",
    out_dir: Path | str | None = None,
    hnsw_m: int = 32,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    ef_search: int = DEFAULT_EF_SEARCH,
) -> dict:
    """Build a ``kind`` index over ``embeddings`` [N, d] with FAISS ids ``ids`` [N]; write it to ``out_dir``.

    Returns ``index.json``'s content plus ``build_s`` (wall time of the FAISS build).
    """
    if out_dir is None:
        raise InputError("out_dir: missing")
    x = _check_embeddings(embeddings, "embeddings")
    a = _check_ids(ids, x.shape[0])
    t0 = time.perf_counter()
    index = ItemIndex.create(x.shape[1], kind, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
    index.add(x, a)
    build_s = time.perf_counter() - t0
    index.meta["build_s"] = round(build_s, 3)
    meta = index.save(out_dir)
    return meta


def load_item_embeddings(paths: RunPaths) -> tuple[np.ndarray, np.ndarray]:
    """The two-tower item embeddings of real items (encoded ids ``FIRST_CODE..``): ``[n, d]`` float32 and their ids ``[n]``."""
    path = paths.models / "two_tower" / "item_embeddings.npy"
    if not path.is_file():
        raise InputError(f"{path}: not found (train the two-tower model first)")
    try:
        emb = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from exc
    if emb.ndim != 2 or emb.shape[0] <= FIRST_CODE:
        raise InputError(f"{path}: expected [n_items, d] with n_items > {FIRST_CODE}, got shape {emb.shape}")
    ids = np.arange(FIRST_CODE, emb.shape[0], dtype=np.int64)
    return np.ascontiguousarray(emb[FIRST_CODE:], dtype=np.float32), ids
