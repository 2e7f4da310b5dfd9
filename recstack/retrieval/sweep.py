"""`recstack index sweep`: recall@K against exact search and latency, per index kind and setting.

For each kind and build setting (:func:`build_grid`) the index is built once; for each search
setting (nprobe, efSearch, refine) the sweep measures

- ``recall@K``: mean over queries of |approx top-K ∩ exact top-K| / K (exact = FAISS Flat),
- single-query latency: ``ItemIndex.search`` of one query, median / p95 in ms over ``single`` queries,
- batch latency: one ``search`` of ``batch`` queries, median / p95 in ms over ``batch_repeats`` calls,
- the serialised index size in MB (its memory) and the build time in s.

Queries are real user-tower embeddings (run data) or draws of the same clustered mixture as the
synthetic catalogue (:func:`clustered_vectors`). All numbers come from one process on one
machine, so rows compare with each other and with the flat baseline (``speedup`` column).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recstack.errors import InputError
from recstack.ids import FIRST_CODE
from recstack.io import save_figure
from recstack.paths import RunPaths
from recstack.retrieval.index import ItemIndex
from recstack.retrieval.kinds import KINDS

NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EF_SEARCHES = (16, 32, 64, 128, 256, 512)


# ------------------------------------------------------------------------------ data

def clustered_vectors(n: int, dim: int, clusters: int | None = None, spread: float = 1.0, seed: int = 0,
                      centers_seed: int = 12345, chunk: int = 100_000) -> np.ndarray:
    """``n`` unit vectors [n, dim] float32 from a mixture of ``clusters`` (default ``sqrt(n)``) directions.

    Point = normalise(center + spread * g / sqrt(dim)), g ~ N(0, I): with ``spread = 1`` a point's
    cosine to its centre is ~0.7, like the L2-normalised two-tower embeddings. Queries for a
    catalogue: the same ``centers_seed`` (same mixture) with another ``seed``.
    """
    if n < 1 or dim < 1:
        raise InputError(f"synthetic: expected n >= 1 and dim >= 1, got {n} x {dim}")
    clusters = clusters or max(1, int(np.sqrt(n)))
    centers = np.random.default_rng(centers_seed).standard_normal((clusters, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centers[rng.integers(0, clusters, m)]
        x += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def synthetic_catalogue(n: int, dim: int, n_queries: int, seed: int = 0,
                        spread: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered item vectors [n, dim], their ids [n] (``FIRST_CODE..``, like encoded ids) and queries [n_queries, dim].

    ``spread``: noise around the cluster centres (:func:`clustered_vectors`); larger = clusters
    overlap more = harder for IVF / HNSW.
    """
    if spread <= 0:
        raise InputError(f"spread: must be > 0, got {spread}")
    vectors = clustered_vectors(n, dim, spread=spread, seed=seed)
    queries = clustered_vectors(n_queries, dim, clusters=max(1, int(np.sqrt(n))), spread=spread, seed=seed + 1)
    return vectors, np.arange(FIRST_CODE, n + FIRST_CODE, dtype=np.int64), queries


def user_queries(paths: RunPaths, n: int, seed: int = 0) -> np.ndarray:
    """User-tower embeddings [n', d] of up to ``n`` random test rows (user + history) of a trained run."""
    from recstack.models import load_training_data, load_two_tower
    from recstack.models.predict import user_embeddings

    model, _ = load_two_tower(paths.models / "two_tower")
    data = load_training_data(paths)
    rows = np.random.default_rng(seed).permutation(len(data.test.users))[:n]
    if rows.size == 0:
        raise InputError(f"{paths.data}: the test split is empty (no users to query with)")
    return user_embeddings(model, data, data.test.users[rows], data.test.history[rows],
                           data.test.history_times[rows])


# ------------------------------------------------------------------------------ grid

def build_grid(kinds: Iterable[str], dim: int, hnsw_m: Iterable[int] = (32,), ef_construction: int = 200,
               nlist: Iterable[int | None] = (None,), pq_m: Iterable[int] | None = None,
               refine: Iterable[int] = (0, 4)) -> list[tuple[str, dict[str, Any]]]:
    """(kind, build parameters) to build, in order; ``pq_m`` default: ``d/4`` and ``d/2`` (that divide d)."""
    pq_m = list(pq_m) if pq_m else sorted({m for m in (dim // 4, dim // 2) if m >= 1 and dim % m == 0})
    grid: list[tuple[str, dict[str, Any]]] = []
    for kind in kinds:
        if kind not in KINDS:
            raise InputError(f"kinds: {kind!r} is not one of {', '.join(KINDS)}")
        if kind == "flat":
            grid.append((kind, {}))
        elif kind == "hnsw":
            grid += [(kind, {"hnsw_m": m, "ef_construction": ef_construction}) for m in hnsw_m]
        elif kind == "ivf_flat":
            grid += [(kind, {"nlist": n}) for n in nlist]
        else:
            grid += [(kind, {"nlist": n, "pq_m": m, "refine_factor": r}) for n in nlist for m in pq_m for r in refine]
    return grid


def search_grid(index: ItemIndex, k: int, nprobes: Iterable[int] = NPROBES,
                ef_searches: Iterable[int] = EF_SEARCHES) -> list[dict[str, Any]]:
    """Search settings for a built index: nprobe up to nlist, efSearch from k (HNSW returns at most efSearch)."""
    if index.kind == "hnsw":
        return [{"ef_search": e} for e in sorted({max(e, k) for e in ef_searches})]
    if index.kind in ("ivf_flat", "ivf_pq"):
        nlist = int(index.config.nlist or 1)
        probes = sorted({min(p, nlist) for p in nprobes})
        return [{"nprobe": p} for p in probes]  # ivf_pq re-ranks with its built refine_factor
    return [{}]


# ------------------------------------------------------------------------------ measuring

def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |found[b] ∩ exact[b]| / |exact[b]| (ids [B, K]; -1 = no result)."""
    hits = [np.intersect1d(f[f >= 0], e[e >= 0]).size / max(int((e >= 0).sum()), 1) for f, e in zip(found, exact)]
    return float(np.mean(hits)) if hits else 0.0


def _timings_ms(fn: Callable[[int], Any], calls: int, warmup: int = 3) -> tuple[float, float, float]:
    """Median and p95 wall time and median CPU time of the calling thread, in ms, of ``fn(i)`` over
    ``calls`` calls (after ``warmup`` unmeasured ones). Wall far above CPU time = a busy machine."""
    for i in range(min(warmup, calls)):
        fn(i)
    wall, cpu = [], []
    for i in range(calls):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn(i)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    return float(np.median(wall)), float(np.percentile(wall, 95)), float(np.median(cpu))


def measure(index: ItemIndex, queries: np.ndarray, exact: np.ndarray, k: int, params: dict[str, Any],
            single: int = 200, batch: int = 64, batch_repeats: int = 10) -> dict[str, Any]:
    """One sweep row: recall@k vs ``exact`` [B, k] ids and latencies of ``index.search`` with ``params``."""
    found, _ = index.search(queries, k, **params)
    single = min(single, len(queries))
    batch_q = queries[: min(batch, len(queries))]
    s50, s95, s_cpu = _timings_ms(lambda i: index.search(queries[i % len(queries): i % len(queries) + 1], k, **params),
                           single)
    b50, b95, _ = _timings_ms(lambda i: index.search(batch_q, k, **params), batch_repeats, warmup=1)
    return {"recall": recall_at_k(found, exact), "single_p50_ms": s50, "single_p95_ms": s95, "single_cpu_ms": s_cpu,
            "batch_p50_ms": b50, "batch_p95_ms": b95, "batch": len(batch_q)}


def sweep(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int = 100,
          grid: list[tuple[str, dict[str, Any]]] | None = None, single: int = 200, batch: int = 64,
          batch_repeats: int = 10, threads: int | None = None, nprobes: Iterable[int] = NPROBES,
          ef_searches: Iterable[int] = EF_SEARCHES, progress: bool = True) -> list[dict[str, Any]]:
    """Rows (one per kind x build x search setting) of recall@k and latency; flat first (the baseline).

    ``vectors`` [N, d] float32, ``ids`` [N] int64, ``queries`` [B, d] float32; ``threads``: FAISS
    threads for the batch searches (``ItemIndex.threads``; one query always runs on one thread);
    ``nprobes`` / ``ef_searches``: the search settings tried (:func:`search_grid`).
    """
    grid = grid if grid is not None else build_grid(KINDS, vectors.shape[1])
    if k < 1 or k > len(ids):
        raise InputError(f"k: {k} must be between 1 and the number of items ({len(ids)})")
    grid = [g for g in grid if g[0] == "flat"] + [g for g in grid if g[0] != "flat"]
    flat_index = ItemIndex.build(vectors, ids, "flat")
    exact, _ = flat_index.search(queries, k)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(grid), desc="index sweep", unit="build", disable=not progress)
    for kind, build_params in grid:
        bar.set_postfix_str(f"building {kind} {build_params}")
        index = flat_index if kind == "flat" else ItemIndex.build(vectors, ids, kind, progress=progress,
                                                                   **build_params)
        size_mb = index.size_bytes() / 2**20
        index.threads = threads
        for params in search_grid(index, k, nprobes, ef_searches):
            bar.set_postfix_str(f"{kind} {build_params} {params}")
            row = {"kind": kind, "build": index.config.describe_build(), "search": _label(params),
                   "params": {**index.config.to_meta(), **params}, "build_s": index.meta.get("build_s", 0.0),
                   "size_mb": size_mb}
            row.update(measure(index, queries, exact, k, params, single, batch, batch_repeats))
            rows.append(row)
        bar.update(1)
        if index is not flat_index:
            del index
    bar.close()
    base = rows[0]["single_p50_ms"] if rows and rows[0]["kind"] == "flat" else None
    for row in rows:
        row["speedup"] = base / row["single_p50_ms"] if base and row["single_p50_ms"] > 0 else float("nan")
    return rows


def _label(params: dict[str, Any]) -> str:
    short = {"nprobe": "nprobe", "ef_search": "efSearch", "refine_factor": "refine"}
    return " ".join(f"{short[k]}={v}" for k, v in params.items()) or "-"


def choose(rows: list[dict[str, Any]], min_recall: float = 0.95) -> dict[str, Any] | None:
    """The row with recall >= ``min_recall`` and the smallest single-query p95 latency (None if none)."""
    ok = [r for r in rows if r["recall"] >= min_recall]
    return min(ok, key=lambda r: (r["single_p95_ms"], r["single_p50_ms"])) if ok else None


# ------------------------------------------------------------------------------ reporting

def format_table(rows: list[dict[str, Any]], k: int) -> str:
    """A fixed-width table of the sweep rows (one line each)."""
    head = (f"{'kind':<9} {'build':<30} {'search':<13} {f'recall@{k}':>10} {'1q p50':>8} {'1q p95':>8} {'1q cpu':>8} "
            f"{'batch p50':>10} {'batch p95':>10} {'speedup':>8} {'size MB':>9} {'build s':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['kind']:<9} {r['build']:<30} {r['search']:<13} {r['recall']:>10.4f} "
                     f"{r['single_p50_ms']:>8.3f} {r['single_p95_ms']:>8.3f} {r['single_cpu_ms']:>8.3f} "
                     f"{r['batch_p50_ms']:>10.2f} "
                     f"{r['batch_p95_ms']:>10.2f} {r['speedup']:>7.1f}x {r['size_mb']:>9.1f} {r['build_s']:>8.1f}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, k: int, title: str) -> Path:
    """PNG: recall@k against single-query p50 and batch p50 latency (log ms), one line per built index."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault(f"{r['kind']} {r['build']}".strip(), []).append(r)
    batch = rows[0]["batch"] if rows else 0
    for ax, key, label in ((axes[0], "single_p50_ms", "one query: median ms"),
                           (axes[1], "batch_p50_ms", f"batch of {batch}: median ms")):
        for name, pts in series.items():
            ax.plot([p[key] for p in pts], [p["recall"] for p in pts], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"recall@{k} vs exact")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, Path(path), dpi=120)
    return Path(path)
