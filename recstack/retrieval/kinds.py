"""The index kinds and their parameters: which FAISS index each builds and how it is searched.

=========  ===========================  ==============================================  =====================
kind       FAISS (inside IndexIDMap2)   build parameters                                search parameters
=========  ===========================  ==============================================  =====================
flat       IndexFlatIP (exact)          -                                               -
hnsw       IndexHNSWFlat                hnsw_m, ef_construction                         ef_search
ivf_flat   IndexIVFFlat                 nlist (train_size)                              nprobe
ivf_pq     IndexIVFPQ [+ IndexRefine]   nlist, pq_m, pq_nbits, refine_factor (train..)  nprobe, refine_factor
=========  ===========================  ==============================================  =====================

Every kind uses the inner-product metric. ``ivf_pq`` with ``refine_factor >= 1`` also keeps
the exact vectors (``IndexRefineFlat``): it takes ``refine_factor * k`` PQ candidates and
re-scores them exactly, so the returned scores are exact inner products (the ranker fuses
them); with ``refine_factor = 0`` scores are PQ approximations and memory is ``pq_m *
pq_nbits / 8`` bytes per item instead of ``4 * d``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import faiss

from recstack.errors import InputError

KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq")
IVF_KINDS = ("ivf_flat", "ivf_pq")
METRIC = "inner_product"

BUILD_PARAMS = {
    "flat": (),
    "hnsw": ("hnsw_m", "ef_construction"),
    "ivf_flat": ("nlist", "train_size"),
    "ivf_pq": ("nlist", "pq_m", "pq_nbits", "refine_factor", "train_size"),
}
SEARCH_PARAMS = {"flat": (), "hnsw": ("ef_search",), "ivf_flat": ("nprobe",), "ivf_pq": ("nprobe", "refine_factor")}


@dataclass(frozen=True)
class IndexConfig:
    """One index kind and its parameters (fields that do not apply to ``kind`` keep their defaults;
    :meth:`from_params` rejects them and :meth:`to_meta` leaves them out of ``index.json``).

    ``nlist`` / ``train_size`` ``None`` are resolved from the item count by :meth:`resolved`:
    ``nlist = clip(4 * sqrt(N), 1, N // 39)`` (FAISS wants >= 39 training points per list) and
    ``train_size = min(N, 64 * nlist)`` (k-means sample; more costs time, not recall).
    """

    kind: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int = 16
    pq_m: int = 16
    pq_nbits: int = 8
    refine_factor: int = 0
    train_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        minimum = {"hnsw_m": 2, "ef_construction": 1, "ef_search": 1, "nlist": 1, "nprobe": 1, "pq_m": 1,
                   "pq_nbits": 1, "refine_factor": 0, "train_size": 1}
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is None and name in ("nlist", "train_size"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name}: expected an integer >= {low}, got {value!r}")
        if self.pq_nbits > 16:
            raise InputError(f"pq_nbits: {self.pq_nbits} is above 16")

    @classmethod
    def from_params(cls, kind: str, **params: Any) -> "IndexConfig":
        """A config from keyword parameters; an unknown name is an InputError naming it."""
        if kind not in KINDS:
            raise InputError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
        names = set(BUILD_PARAMS[kind]) | set(SEARCH_PARAMS[kind])
        unknown = sorted(k for k, v in params.items() if k not in names and v is not None)
        if unknown:
            raise InputError(f"{unknown[0]}: not a parameter of a {kind} index "
                             f"(it has: {', '.join(sorted(names)) or 'none'})")
        return cls(kind=kind, **{k: _as_int(k, v) for k, v in params.items() if v is not None})

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "IndexConfig":
        """The config stored in ``index.json`` (older files without some keys get the defaults)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})

    def to_meta(self) -> dict[str, Any]:
        """The parameters of this kind (build + search), for ``index.json``."""
        keep = set(BUILD_PARAMS[self.kind]) | set(SEARCH_PARAMS[self.kind])
        return {k: v for k, v in asdict(self).items() if k in keep}

    def resolved(self, n: int, dim: int) -> "IndexConfig":
        """``nlist`` / ``train_size`` filled in for ``n`` items of dimension ``dim``; checks that they fit."""
        if self.kind not in IVF_KINDS:
            return self
        nlist = self.nlist or max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))
        train_size = min(n, self.train_size or 64 * nlist)
        if n < nlist or train_size < nlist:
            raise InputError(f"nlist: {nlist} inverted lists need at least {nlist} training vectors, got "
                             f"{min(n, train_size)}")
        if self.kind == "ivf_pq":
            if dim % self.pq_m:
                raise InputError(f"pq_m: {self.pq_m} sub-quantizers do not divide the dimension {dim}")
            if min(n, train_size) < 2 ** self.pq_nbits:
                raise InputError(f"pq_nbits: {self.pq_nbits} bits need at least {2 ** self.pq_nbits} training "
                                 f"vectors, got {min(n, train_size)}")
        return replace(self, nlist=nlist, train_size=train_size)

    def factory(self, dim: int) -> str:
        """The ``faiss.index_factory`` string (``nlist`` must be resolved)."""
        if self.kind == "flat":
            base = "Flat"
        elif self.kind == "hnsw":
            base = f"HNSW{self.hnsw_m}"
        elif self.kind == "ivf_flat":
            base = f"IVF{self.nlist},Flat"
        else:
            # "np": no polysemous training (minutes of simulated annealing for a feature we do not use)
            base = f"IVF{self.nlist},PQ{self.pq_m}x{self.pq_nbits}np" + (",RFlat" if self.refine_factor else "")
        return f"IDMap2,{base}"

    def describe_build(self) -> str:
        """Short label of the build parameters, e.g. ``nlist=4096 PQ32x8 refine=2`` (tables, plots)."""
        if self.kind == "hnsw":
            return f"M={self.hnsw_m} efC={self.ef_construction}"
        if self.kind == "ivf_flat":
            return f"nlist={self.nlist}"
        if self.kind == "ivf_pq":
            return f"nlist={self.nlist} PQ{self.pq_m}x{self.pq_nbits}" + \
                (f" refine={self.refine_factor}" if self.refine_factor else "")
        return "-"


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InputError(f"{name}: expected an integer, got {value!r}")
    return int(value)


def new_faiss_index(config: IndexConfig, dim: int) -> faiss.Index:
    """An empty ``IndexIDMap2`` of ``config`` (resolved) for ``dim``-dimensional vectors (IVF: untrained)."""
    index = faiss.index_factory(int(dim), config.factory(dim), faiss.METRIC_INNER_PRODUCT)
    if config.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = config.ef_construction
    if config.kind in IVF_KINDS:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.min_points_per_centroid = 1  # our own checks above; no stderr warnings per build
        if config.kind == "ivf_pq":
            ivf.pq.cp.min_points_per_centroid = 1
    return index


def search_parameters(config: IndexConfig, fetch: int) -> tuple[faiss.SearchParameters | None, list[Any]]:
    """FAISS search parameters for ``config`` when fetching ``fetch`` results per query.

    Returns ``(params, keep_alive)``: ``keep_alive`` holds nested parameter objects that the
    caller must keep referenced while FAISS searches (SWIG does not own them).
    """
    if config.kind == "hnsw":
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(config.ef_search, fetch)  # HNSW returns at most efSearch results
        return params, []
    if config.kind in IVF_KINDS:
        ivf = faiss.SearchParametersIVF()
        ivf.nprobe = min(config.nprobe, config.nlist or config.nprobe)
        if config.kind == "ivf_pq" and config.refine_factor:
            refine = faiss.IndexRefineSearchParameters()
            refine.k_factor = float(config.refine_factor)
            refine.base_index_params = ivf
            return refine, [ivf]
        return ivf, []
    return None, []


def with_search_params(config: IndexConfig, built_refine: int, **params: int | None) -> IndexConfig:
    """``config`` with search parameters replaced (``None`` = keep); a parameter the kind lacks is an error.

    ``built_refine``: the index's build-time ``refine_factor`` (0 = no exact vectors stored, so
    a search cannot refine).
    """
    given = {k: _as_int(k, v) for k, v in params.items() if v is not None}
    for name in given:
        if name not in SEARCH_PARAMS[config.kind]:
            raise InputError(f"{name}: not a search parameter of a {config.kind} index "
                             f"(it has: {', '.join(SEARCH_PARAMS[config.kind]) or 'none'})")
    if config.kind == "ivf_pq" and "refine_factor" in given and given["refine_factor"] != 0 and not built_refine:
        raise InputError("refine_factor: this ivf_pq index was built without exact vectors (refine_factor=0)")
    if config.kind == "ivf_pq" and built_refine and given.get("refine_factor", 1) < 1:
        raise InputError("refine_factor: must be >= 1 for an ivf_pq index built with exact vectors")
    return replace(config, **given)
