"""FAISS inner-product index over item embeddings (architecture section 5).

FAISS ids are the encoded item ids (``IndexIDMap2`` around a Flat, HNSW, IVF-Flat or IVF-PQ
index, :mod:`recstack.retrieval.kinds`), so search results need no id translation and new
items are added later without a rebuild (IVF kinds assign them with their trained quantizer).
``runs/<ds>/index/`` holds ``items.faiss`` + ``index.json`` (kind, metric, dimension, count,
the kind's build and default search parameters, the FAISS factory string, build times).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from recstack.errors import InputError
from recstack.ids import FIRST_CODE
from recstack.io import atomic_dir, read_json, write_json
from recstack.paths import RunPaths
from recstack.retrieval.arrays import masked_top, check_embeddings, check_ids, select_top
from recstack.retrieval.exact import ExactSearch, resolve_device
from recstack.retrieval.kinds import (
    KINDS, METRIC, IndexConfig, new_faiss_index, search_parameters, with_search_params,
)

INDEX_FILE = "items.faiss"
META_FILE = "index.json"
ADD_CHUNK = 50_000  # rows per FAISS add call (progress steps of a large build)
# Batches below this many queries search on one OpenMP thread: forking threads costs more than it
# saves there, and on a busy machine one descheduled worker stalls the call (measured on 2 shared
# cores, IVF single query: p95 24 ms with 2 threads, 0.1 ms with 1).
SERIAL_BELOW = 16
DENSE_MAX_ITEMS = 200_000
"""Flat indexes up to this size also keep their vectors as a numpy matrix: a search that must
skip excluded ids is then one matmul with the excluded entries masked, instead of a FAISS
search over-fetching k + |excluded| results (a heap of hundreds per query: 64 queries over
1,680 items took 4.4 ms in FAISS, 0.6 ms masked)."""
# Train / add calls on fewer float32 values than this run on one thread too: their OpenMP regions
# are microseconds long (measured on the busy 2-core box: a 600 x 16 IVF-PQ build 4.5 s with 2
# threads, 0.01 s with 1). Bigger calls (a 1M-item build) keep every thread.
SERIAL_WORK = 1 << 22


@contextlib.contextmanager
def _omp_threads(n: int | None) -> Iterator[None]:
    """FAISS OpenMP threads for the calling thread (``None`` = unchanged) during the block."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class ItemIndex:
    """An item-embedding index: search with per-query exclusions, incremental add, save/load.

    ``config`` (:class:`IndexConfig`) holds the kind, its build parameters and the default
    search parameters; these can be changed at load, with :meth:`set_search_params`, or per call.
    """

    def __init__(self, index: faiss.Index, meta: dict[str, Any]):
        self.index = index
        self.meta = meta
        self.config = IndexConfig.from_meta(meta)
        self.kind: str = self.config.kind
        self.dimension: int = int(meta["dimension"])
        self._built_refine = self.config.refine_factor if self.kind == "ivf_pq" else 0
        self._ids = faiss.vector_to_array(index.id_map).astype(np.int64) if index.ntotal else np.zeros(0, np.int64)
        self._sorted_ids = np.sort(self._ids)
        self._exact: ExactSearch | None = None
        self._dense: np.ndarray | None = None
        self._order: np.ndarray | None = None  # argsort of _ids, for masked_top
        if self.kind == "flat" and 0 < index.ntotal <= DENSE_MAX_ITEMS:
            self._dense = faiss.downcast_index(index.index).reconstruct_n(0, index.ntotal)
        self.threads: int | None = None  # FAISS threads for batches >= SERIAL_BELOW (None = all cores)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(cls, dimension: int, kind: str = "flat", **params: Any) -> "ItemIndex":
        """An empty index. IVF kinds need ``nlist`` here and :meth:`train` before :meth:`add`."""
        if isinstance(dimension, bool) or not isinstance(dimension, (int, np.integer)) or dimension < 1:
            raise InputError(f"dimension: {dimension!r} is not a positive integer")
        config = IndexConfig.from_params(kind, **params)
        if kind in ("ivf_flat", "ivf_pq") and config.nlist is None:
            raise InputError("nlist: an empty IVF index needs nlist (or use ItemIndex.build with the vectors)")
        if kind == "ivf_pq" and int(dimension) % config.pq_m:
            raise InputError(f"pq_m: {config.pq_m} sub-quantizers do not divide the dimension {dimension}")
        index = new_faiss_index(config, int(dimension))
        meta = {"kind": kind, "metric": METRIC, "dimension": int(dimension), "count": 0,
                "factory": config.factory(int(dimension)), **config.to_meta(), "faiss_version": faiss.__version__}
        return cls(index, meta)

    @classmethod
    def build(cls, embeddings: Any, ids: Any, kind: str = "flat", progress: bool = False, seed: int = 0,
              **params: Any) -> "ItemIndex":
        """Index ``embeddings`` [N, d] with FAISS ids ``ids`` [N]: train (IVF kinds, on a sample), then add.

        ``params``: the kind's :class:`IndexConfig` fields. ``meta`` gains ``train_s`` / ``build_s`` (seconds).
        """
        x = check_embeddings(embeddings, "embeddings")
        a = check_ids(ids, x.shape[0])
        config = IndexConfig.from_params(kind, **params).resolved(x.shape[0], x.shape[1])
        t0 = time.perf_counter()
        index = cls.create(x.shape[1], kind, **config.to_meta())
        if not index.index.is_trained:
            sample = np.random.default_rng(seed).choice(x.shape[0], config.train_size, replace=False)
            index.train(x[np.sort(sample)])
        index.meta["train_s"] = round(time.perf_counter() - t0, 3)
        for start in tqdm(range(0, x.shape[0], ADD_CHUNK), desc=f"index {kind}", unit="chunk",
                          disable=not progress or x.shape[0] <= ADD_CHUNK):
            index.add(x[start:start + ADD_CHUNK], a[start:start + ADD_CHUNK])
        index.meta["build_s"] = round(time.perf_counter() - t0, 3)
        return index

    def train(self, vectors: Any) -> None:
        """Train the IVF quantizer (and PQ codebooks) on ``vectors`` [n, d]; flat / HNSW need none."""
        x = check_embeddings(vectors, "vectors", self.dimension)
        if self.config.nlist is not None and x.shape[0] < self.config.nlist and self.kind in ("ivf_flat", "ivf_pq"):
            raise InputError(f"vectors: {x.shape[0]} training vectors for nlist={self.config.nlist} lists")
        with _omp_threads(1 if x.size < SERIAL_WORK else None):
            self.index.train(x)
        self.meta["trained_on"] = int(x.shape[0])

    @classmethod
    def load(cls, directory: Path | str, device: str = "cpu", threads: int | None = None,
             **search_params: int | None) -> "ItemIndex":
        """Read ``items.faiss`` + ``index.json``; ``search_params`` (``nprobe``, ``ef_search``,
        ``refine_factor``) override the saved defaults; ``device`` as in :meth:`use_device`;
        ``threads``: FAISS threads for batches of >= ``SERIAL_BELOW`` queries (default: all cores)."""
        directory = Path(directory)
        meta_path, index_path = directory / META_FILE, directory / INDEX_FILE
        if not meta_path.is_file() or not index_path.is_file():
            raise InputError(f"{directory}: no {INDEX_FILE} + {META_FILE} (run `recstack index build` first)")
        meta = read_json(meta_path)
        if meta.get("kind") not in KINDS:
            raise InputError(f"{meta_path}: kind {meta.get('kind')!r} is not one of {', '.join(KINDS)}")
        index = faiss.read_index(str(index_path))
        if index.d != int(meta["dimension"]) or index.ntotal != int(meta["count"]):
            raise InputError(
                f"{index_path}: dimension/count {index.d}/{index.ntotal} disagree with {META_FILE} "
                f"{meta['dimension']}/{meta['count']}"
            )
        out = cls(index, meta)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads: expected an integer >= 1, got {threads!r}")
        out.threads = threads
        out.set_search_params(**search_params)
        out.use_device(device)
        return out

    def save(self, directory: Path | str) -> dict[str, Any]:
        """Write ``items.faiss`` + ``index.json`` into ``directory`` (atomically replaced); returns the meta."""
        self.meta.update(self.config.to_meta())
        self.meta["count"] = int(self.index.ntotal)
        self.meta["saved_at"] = datetime.now(timezone.utc).isoformat()
        with atomic_dir(Path(directory)) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            write_json(tmp / META_FILE, self.meta)
        return dict(self.meta)

    # -- settings -----------------------------------------------------------------------
    def set_search_params(self, **params: int | None) -> None:
        """New default ``nprobe`` / ``ef_search`` / ``refine_factor`` (``None`` keeps; others are errors)."""
        self.config = with_search_params(self.config, self._built_refine, **params)

    @property
    def ef_search(self) -> int:
        return self.config.ef_search

    @property
    def nprobe(self) -> int:
        return self.config.nprobe

    def use_device(self, device: str) -> str:
        """Where searches run: ``cpu`` = FAISS on CPU; ``cuda`` = exact search on the GPU (FAISS-GPU when
        installed, else PyTorch), flat indexes only; ``auto`` = ``cuda`` for a flat index when a GPU is
        visible, else FAISS CPU. Returns the backend name."""
        if device == "cpu":
            self._exact = None
            return "faiss-cpu"
        if device not in ("auto", "cuda"):
            raise InputError(f"device: expected auto, cpu or cuda, got {device!r}")
        if self.kind != "flat":
            if device == "cuda":
                raise InputError(f"device: cuda search is exact (flat) only; this index is {self.kind}")
            return "faiss-cpu"
        if resolve_device(device) == "cpu":
            return "faiss-cpu"
        return self.use_exact("cuda")

    def use_exact(self, device: str) -> str:
        """Search a flat index with :class:`ExactSearch` on ``device`` (``cpu`` runs the PyTorch path on
        CPU tensors: the check that it equals FAISS). Returns the backend name."""
        if self.kind != "flat":
            raise InputError(f"device: exact search needs a flat index, this one is {self.kind}")
        vectors = faiss.downcast_index(self.index.index).reconstruct_n(0, len(self)) if len(self) else \
            np.zeros((0, self.dimension), np.float32)
        self._exact = ExactSearch(vectors, self._ids, device)
        return self._exact.backend

    # -- updates ------------------------------------------------------------------------
    def add(self, embeddings: Any, ids: Any) -> None:
        """Add new items: ``embeddings`` [n, d] float32 with new ids ``ids`` [n] int64 (any kind, no rebuild).

        Raises InputError (nothing added) for a wrong dimension, NaN/inf values, ids already in
        the index or repeated, or an IVF index that was never trained.
        """
        x = check_embeddings(embeddings, "embeddings", self.dimension)
        a = check_ids(ids, x.shape[0])
        if x.shape[0] == 0:
            return
        if not self.index.is_trained:
            raise InputError(f"index: this {self.kind} index is not trained (build it with vectors first)")
        new = np.sort(a)
        at = np.searchsorted(self._sorted_ids, new)
        clash = np.intersect1d(new, self._sorted_ids[at[at < self._sorted_ids.size]])  # O(n log N), not O(N)
        if clash.size:
            raise InputError(f"ids: {int(clash[0])} is already in the index ({clash.size} ids clash)")
        with _omp_threads(1 if x.size < SERIAL_WORK else None):
            self.index.add_with_ids(x, a)
        self._ids = np.concatenate([self._ids, a])
        self._sorted_ids = np.insert(self._sorted_ids, at, new)
        if self._exact is not None:
            self._exact.add(x, a)
        if self._dense is not None:
            self._dense = np.concatenate([self._dense, x]) if len(self._ids) <= DENSE_MAX_ITEMS else None
        self.meta["count"] = int(self.index.ntotal)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __contains__(self, item_id: int) -> bool:
        at = np.searchsorted(self._sorted_ids, int(item_id))
        return bool(at < self._sorted_ids.size and self._sorted_ids[at] == int(item_id))

    @property
    def ids(self) -> np.ndarray:
        """The ids in the index, in insertion order."""
        return self._ids.copy()

    def require_dimension(self, dimension: int, source: str = "the model") -> None:
        """InputError unless the index holds ``dimension``-d vectors (e.g. the user tower's output size)."""
        if int(dimension) != self.dimension:
            raise InputError(f"index: dimension {self.dimension} does not match {source}'s {int(dimension)} "
                             f"(rebuild it: recstack index build)")

    def size_bytes(self) -> int:
        """Bytes of the serialised index (``items.faiss``; about its memory footprint)."""
        return int(faiss.serialize_index(self.index).nbytes)

    # -- search -------------------------------------------------------------------------
    def search(
        self,
        queries: Any,
        k: int,
        exclude: Sequence[np.ndarray] | None = None,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        refine_factor: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids ``[B, k]`` int64 and inner-product scores ``[B, k]`` float32 per query ``[B, d]``.

        ``exclude[b]`` (ids) never appear in row ``b``. Rows with fewer than ``k`` results are
        padded with id -1 and score -inf. ``nprobe`` / ``ef_search`` / ``refine_factor`` override
        the index's search parameters for this call only (an error for a kind without them).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise InputError(f"k: {k!r} is not a positive integer")
        k = int(k)
        q = check_embeddings(queries, "queries", self.dimension)
        b = q.shape[0]
        excl: list[np.ndarray] | None = None
        if exclude is not None:
            if len(exclude) != b:
                raise InputError(f"exclude: {len(exclude)} lists for {b} queries")
            excl = [np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude]
        config = self.config
        if nprobe is not None or ef_search is not None or refine_factor is not None:
            config = with_search_params(config, self._built_refine, nprobe=nprobe, ef_search=ef_search,
                                        refine_factor=refine_factor)
        n = len(self)
        if b == 0 or n == 0:
            return np.full((b, k), -1, dtype=np.int64), np.full((b, k), -np.inf, dtype=np.float32)
        fetch = min(k + (max((e.size for e in excl), default=0) if excl else 0), n)
        if self._dense is not None and self._exact is None and fetch > k:
            if self._order is None or len(self._order) != len(self._ids):
                self._order = np.argsort(self._ids, kind="stable")
            return masked_top(self._dense, self._ids, self._sorted_ids, self._order, q, k, excl)
        if self._exact is not None:
            scores, ids = self._exact.search(q, fetch)
        else:
            params, _keep_alive = search_parameters(config, fetch)
            with _omp_threads(1 if b < SERIAL_BELOW else self.threads):
                scores, ids = self.index.search(q, fetch, params=params)
        return select_top(ids, scores, k, excl)


def build_index(embeddings: Any, ids: Any, kind: str = "flat", out_dir: Path | str | None = None,
                progress: bool = False, **params: Any) -> dict[str, Any]:
    """Build a ``kind`` index over ``embeddings`` [N, d] with FAISS ids ``ids`` [N]; write it to ``out_dir``.

    ``params``: the kind's parameters (:class:`~recstack.retrieval.kinds.IndexConfig`). Returns
    ``index.json``'s content (with ``build_s``, wall seconds of train + add).
    """
    if out_dir is None:
        raise InputError("out_dir: missing")
    return ItemIndex.build(embeddings, ids, kind, progress=progress, **params).save(out_dir)


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
