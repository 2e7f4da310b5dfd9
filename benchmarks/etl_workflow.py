"""ETL benchmark: fit + transform of a representative feature workflow with recstack, and the
same outputs from a hand-written pandas pipeline and a hand-written Polars pipeline, in the
same run, asserted equal. Prints rows/s and peak memory per size and writes a PNG.

The workflow: Categorify user_id and item_id (interactions) and genres (items table),
JoinGroupby counts per user and per item, DifferenceLag (time since the user's previous
interaction; 0 for a first one) >> Normalize, Normalize rating, and each user's last 20
encoded items ordered by time (Groupby >> ListSlice).

    .venv/bin/python benchmarks/etl_workflow.py --sizes ml-1m,10M
    .venv/bin/python benchmarks/etl_workflow.py --sizes 2M --workers 1,2          # + recstack on Dask
    .venv/bin/python benchmarks/etl_workflow.py --sizes 50M --impls recstack --workers 2 --worker-memory 3GiB
    .venv/bin/python benchmarks/etl_workflow.py --sizes 2M --scheduler tcp://127.0.0.1:8786

Each (size, implementation) runs in its own process, so its peak RSS (ru_maxrss, measured
before its outputs are written for the comparison) is its own. `recstack` holds the table in
memory (pandas, one process); `recstack-dask-Nw` streams it: parquet row groups are the
partitions, the workers of a LocalCluster (N processes, one thread each) fit partial
statistics, shuffle by user for DifferenceLag / Groupby, and write partitioned parquet; its
peak is reported per process (client, each worker). The first implementation of --impls is
the reference every other output is asserted equal to. An implementation is stopped (and
reported as such) when the machine's available memory falls below --min-free-gb. Synthetic
sizes are made with `recstack data synth` into --cache (reused across runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

HISTORY = 20
IMPLS = ("recstack", "recstack-dask", "pandas", "polars")


# ----------------------------------------------------------------------------- implementations
def recstack_workflows() -> tuple:
    """(rows workflow, history workflow, genres workflow), unfitted."""
    from recstack.workflows import (Categorify, DifferenceLag, FillMissing, Groupby, JoinGroupby, ListSlice,
                                    Normalize, Rename, Workflow)

    rows = Workflow((["user_id", "item_id"] >> Categorify()) + (["user_id", "item_id"] >> JoinGroupby())
                    + (["timestamp"] >> DifferenceLag("user_id") >> FillMissing(0.0) >> Normalize())
                    + (["rating"] >> Normalize() >> Rename(postfix="_norm")))
    grouped = (["user_id", "timestamp"] + (["item_id"] >> Categorify())) >> Groupby(
        "user_id", ["timestamp"], {"item_id": ["list"]})
    hist = Workflow(grouped[["user_id"]] + (grouped[["item_id_list"]] >> ListSlice(-HISTORY)))
    return rows, hist, Workflow(["genres"] >> Categorify())


def run_recstack(inter_path: Path, items_path: Path) -> dict:
    """In one process, the whole table in memory."""
    rows, hist, genres = recstack_workflows()
    inter = pd.read_parquet(inter_path)
    items = pd.read_parquet(items_path, columns=["item_id", "genres"])
    return {"rows": rows.fit_transform(inter, progress=False), "hist": hist.fit_transform(inter, progress=False),
            "genres": genres.fit_transform(items, progress=False)}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_recstack_dask(inter_path: Path, items_path: Path, out: Path, workers: int, scheduler: str,
                      memory_limit: str | None) -> dict:
    """On Dask, streaming: parquet row groups in, partitioned parquet out (``out/rows/``,
    ``out/hist/``, written by the workers; ``rows`` carries ``__row__``, the input row number).
    Returns the genres frame and every worker's peak RSS in MB."""
    import dask.dataframe as dd

    from recstack.workflows.dask_exec import dask_client, transform_to_parquet

    rows, hist, genres = recstack_workflows()
    with dask_client(scheduler=scheduler or None, workers=workers or None, memory_limit=memory_limit) as client:
        ddf = dd.read_parquet(str(inter_path), split_row_groups=True)
        transform_to_parquet(rows.fit(ddf, progress=False), ddf, out / "rows", training=True)
        transform_to_parquet(hist.fit(ddf, progress=False), ddf, out / "hist", training=True)
        worker_peaks = sorted(client.run(_peak_mb).values())
    items = pd.read_parquet(items_path, columns=["item_id", "genres"])
    return {"genres": genres.fit_transform(items, progress=False), "worker_peak_mb": worker_peaks}


def _vocab(values: pd.Series) -> pd.Index:
    vc = values.value_counts()
    table = pd.DataFrame({"v": vc.index.to_numpy(), "c": vc.to_numpy()})
    return pd.Index(table.sort_values(["c", "v"], ascending=[False, True], kind="mergesort")["v"].to_numpy())


def run_pandas(inter_path: Path, items_path: Path) -> dict:
    inter = pd.read_parquet(inter_path)
    items = pd.read_parquet(items_path, columns=["item_id", "genres"])
    user_code = _vocab(inter["user_id"]).get_indexer(inter["user_id"]) + 2
    item_code = _vocab(inter["item_id"]).get_indexer(inter["item_id"]) + 2
    chrono = inter[["user_id", "timestamp"]].assign(item=item_code).sort_values(["user_id", "timestamp"],
                                                                                  kind="stable")
    lag = chrono.groupby("user_id", sort=False)["timestamp"].diff().reindex(inter.index).fillna(0.0).to_numpy()
    rating = inter["rating"].to_numpy(np.float64)
    out = pd.DataFrame({
        "user_id": user_code, "item_id": item_code,
        "user_id_count": inter.groupby("user_id")["user_id"].transform("size").to_numpy(np.int64),
        "item_id_count": inter.groupby("item_id")["item_id"].transform("size").to_numpy(np.int64),
        "timestamp_difference_lag": ((lag - lag.mean()) / lag.std()).astype(np.float32),
        "rating_norm": ((rating - rating.mean()) / rating.std()).astype(np.float32),
    })
    hist = chrono.groupby("user_id", sort=True)["item"].apply(lambda s: s.to_numpy()[-HISTORY:])
    flat = items["genres"].explode()
    codes = _vocab(flat.dropna()).get_indexer(flat) + 2
    genres = pd.Series(codes[flat.notna().to_numpy()]).groupby(flat.index[flat.notna().to_numpy()]).agg(list)
    return {"rows": out, "hist": pd.DataFrame({"user_id": hist.index.to_numpy(), "item_id_list": hist.to_numpy()}),
            "genres": pd.DataFrame({"genres": genres.reindex(items.index).map(lambda v: v if isinstance(v, list) else [])})}


def run_polars(inter_path: Path, items_path: Path) -> dict:
    import polars as pl

    df = pl.read_parquet(inter_path).with_row_index("row")

    def codes(col: str) -> pl.DataFrame:
        return (df.group_by(col).len().sort(["len", col], descending=[True, False])
                .with_row_index("code", offset=2).select(col, pl.col("code").cast(pl.Int64)))

    out = (df.join(codes("user_id").rename({"code": "u"}), on="user_id", how="left")
             .join(codes("item_id").rename({"code": "i"}), on="item_id", how="left")
             .with_columns(pl.len().over("user_id").alias("user_id_count"),
                           pl.len().over("item_id").alias("item_id_count"))
             .sort(["user_id", "timestamp", "row"])
             .with_columns(pl.col("timestamp").diff().over("user_id").fill_null(0).cast(pl.Float64).alias("lag")))
    hist = (out.group_by("user_id").agg(pl.col("i").tail(HISTORY).alias("item_id_list")).sort("user_id"))
    out = out.sort("row").with_columns(
        ((pl.col("lag") - pl.col("lag").mean()) / pl.col("lag").std(ddof=0)).cast(pl.Float32)
        .alias("timestamp_difference_lag"),
        ((pl.col("rating").cast(pl.Float64) - pl.col("rating").cast(pl.Float64).mean())
         / pl.col("rating").cast(pl.Float64).std(ddof=0)).cast(pl.Float32).alias("rating_norm"))
    rows = out.select(pl.col("u").alias("user_id"), pl.col("i").alias("item_id"),
                      pl.col("user_id_count").cast(pl.Int64), pl.col("item_id_count").cast(pl.Int64),
                      "timestamp_difference_lag", "rating_norm")
    items = pl.read_parquet(items_path, columns=["item_id", "genres"]).with_row_index("r")
    flat = items.explode("genres").drop_nulls("genres")
    vocab = (flat.group_by("genres").len().sort(["len", "genres"], descending=[True, False])
             .with_row_index("code", offset=2).select("genres", pl.col("code").cast(pl.Int64)))
    genres = (items.select("r").join(flat.join(vocab, on="genres").group_by("r", maintain_order=True)
                                     .agg(pl.col("code")), on="r", how="left").sort("r")
              .select(pl.col("code").fill_null([]).alias("genres")))
    return {"rows": rows.to_pandas(), "hist": hist.to_pandas(), "genres": genres.to_pandas()}


# ----------------------------------------------------------------------------- child process
def child(args: argparse.Namespace) -> None:
    if args.run == "polars":  # imports are not part of the measured time
        import polars  # noqa: F401
    else:
        import recstack.workflows  # noqa: F401
    args.out.mkdir(parents=True, exist_ok=True)
    extra: dict = {}
    start = time.perf_counter()
    if args.run == "polars":
        out = run_polars(args.interactions, args.items)
    elif args.run == "pandas":
        out = run_pandas(args.interactions, args.items)
    elif args.run == "recstack-dask":
        got = run_recstack_dask(args.interactions, args.items, args.out, args.workers, args.scheduler or "",
                                args.worker_memory)
        out, extra = {"genres": got["genres"]}, {"worker_peak_mb": got["worker_peak_mb"]}
    else:
        out = run_recstack(args.interactions, args.items)
    seconds = time.perf_counter() - start
    peak_mb = _peak_mb()
    for name, frame in out.items():
        frame = frame.copy()
        for col in frame.columns:
            if frame[col].dtype == object or isinstance(frame[col].dtype, pd.ArrowDtype):
                frame[col] = [list(map(int, v)) for v in frame[col]]
        frame.to_parquet(args.out / f"{name}.parquet", index=False, row_group_size=1_048_576)
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, **extra}))


# ----------------------------------------------------------------------------- parent
def dataset(size: str, cache: Path) -> tuple[Path, Path, int]:
    """(interactions parquet, items parquet, rows) for "ml-1m", "ml-100k" or "10M" / "500k"
    (synthetic sizes made once with `recstack data synth --rows N --out DIR`, seed 0)."""
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    if size.startswith("ml-"):
        home = cache / "home"
        data = home / "runs" / size / "data"
        if not (data / "interactions.parquet").is_file():
            subprocess.run([sys.executable, "-m", "recstack.cli", "data", "prepare", "--dataset", size,
                            "--home", str(home), "--no-progress"], check=True, env=env)
        inter = data / "interactions.parquet"
        return inter, data / "items.parquet", pd.read_parquet(inter, columns=["user_id"]).shape[0]
    scale = {"k": 1_000, "M": 1_000_000}[size[-1]]
    rows = int(float(size[:-1]) * scale)
    data = cache / f"synth-{size}"
    if not (data / "interactions.parquet").is_file():
        subprocess.run([sys.executable, "-m", "recstack.cli", "data", "synth", "--rows", str(rows), "--seed", "0",
                        "--out", str(data)], check=True, env=env)
    return data / "interactions.parquet", data / "items.parquet", rows


def _available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return float("inf")


def measure(impl: str, inter: Path, items: Path, out: Path, extra: list[str], min_free_gb: float,
            max_seconds: float | None = None) -> dict | str:
    """Run one implementation in its own process (group); the reason it was stopped instead when
    the machine's available memory fell under ``min_free_gb`` (it shares the machine) or it ran
    past ``max_seconds``."""
    run = "recstack-dask" if impl.startswith("recstack-dask") else impl
    cmd = [sys.executable, __file__, "--run", run, "--interactions", str(inter), "--items", str(items),
           "--out", str(out), *extra]
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(Path.cwd())})
        started = time.monotonic()
        while proc.poll() is None:
            time.sleep(0.5)
            elapsed = time.monotonic() - started
            reason = (f"machine memory available < {min_free_gb} GB" if _available_gb() < min_free_gb else
                      f"still running after {max_seconds:.0f} s" if max_seconds and elapsed > max_seconds else "")
            if reason:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                stderr.seek(0)
                tail = stderr.read()[-1500:]
                print(f"  {impl}: stopped after {elapsed:.0f} s: {reason}; its last output:\n{tail}", file=sys.stderr)
                return reason
        stdout.seek(0), stderr.seek(0)
        if proc.returncode:
            raise SystemExit(f"{impl} failed:\n{stderr.read()[-3000:]}")
        return json.loads(stdout.read().strip().splitlines()[-1])


def _table(folder: Path, name: str) -> Path:
    """``name/`` (partitioned parquet from the workers) or ``name.parquet``."""
    return folder / name if (folder / name).is_dir() else folder / f"{name}.parquet"


def assert_equal(ref: Path, other: Path, label: str) -> None:
    """Every output column equal, one column in memory at a time (50M rows fit): partitioned
    outputs are put in input row order (``__row__``) or key order (hist) first."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for name in ("rows", "hist", "genres"):
        a_path, b_path = _table(ref, name), _table(other, name)
        a_cols = pq.read_schema(a_path).names if a_path.is_file() else pq.ParquetDataset(a_path).schema.names
        b_cols = pq.read_schema(b_path).names if b_path.is_file() else pq.ParquetDataset(b_path).schema.names
        b_data = [c for c in b_cols if c != "__row__"]
        assert a_cols == b_data, (label, name, a_cols, b_cols)
        order = None
        if "__row__" in b_cols:
            order = np.argsort(pq.read_table(b_path, columns=["__row__"]).column(0).to_numpy(), kind="stable")
        elif b_path.is_dir():
            order = np.argsort(pq.read_table(b_path, columns=[b_data[0]]).column(0).to_numpy(), kind="stable")
        for col in a_cols:
            x = pq.read_table(a_path, columns=[col]).column(0).combine_chunks()
            y = pq.read_table(b_path, columns=[col]).column(0).combine_chunks()
            assert len(x) == len(y), (label, name, col, len(x), len(y))
            if order is not None:
                y = y.take(order)
            if pa.types.is_list(x.type):
                np.testing.assert_array_equal(pc.list_value_length(x).to_numpy(zero_copy_only=False),
                                              pc.list_value_length(y).to_numpy(zero_copy_only=False),
                                              err_msg=f"{label} {name} {col} lengths")
                x, y = pc.list_flatten(x), pc.list_flatten(y)
            xs, ys = x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False)
            if xs.dtype.kind == "f":
                np.testing.assert_allclose(xs, ys, rtol=1e-5, atol=1e-5, err_msg=f"{label} {name} {col}")
            else:
                np.testing.assert_array_equal(xs, ys.astype(xs.dtype), err_msg=f"{label} {name} {col}")
            del x, y, xs, ys


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(r["size"] for r in results))
    impls = list(dict.fromkeys(r["impl"] for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        mine = {r["size"]: r for r in results if r["impl"] == impl}
        xs = [i + k * width for i, s in enumerate(sizes) if s in mine]
        axes[0].bar(xs, [mine[s]["rows_per_s"] / 1e6 for s in sizes if s in mine], width, label=impl)
        axes[1].bar(xs, [(mine[s]["peak_mb"] + sum(mine[s].get("worker_peak_mb", []))) / 1024 for s in sizes if s in mine],
                    width, label=impl)
    for ax, title in zip(axes, ("million rows / s (higher is better)", "peak memory GB (Dask: client + workers)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], sizes)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plan(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(implementation label, extra child arguments) in run order."""
    plan = [(impl, []) for impl in args.impls.split(",") if impl]
    unknown = [impl for impl, _ in plan if impl not in ("pandas", "polars", "recstack")]
    if unknown:
        raise SystemExit(f"--impls: unknown {unknown}; known: pandas, polars, recstack")
    memory = ["--worker-memory", args.worker_memory] if args.worker_memory else []
    for n in [int(w) for w in args.workers.split(",") if w]:
        plan.append((f"recstack-dask-{n}w", ["--dask-workers", str(n), *memory]))
    if args.scheduler:
        plan.append(("recstack-dask-sched", ["--scheduler", args.scheduler]))
    return plan


def report(results: list[dict]) -> None:
    """The table: seconds, rows/s, peak RSS (Dask: client + workers summed, and the largest
    process), ratios against pandas / Polars / the 1-worker cluster of the same size."""
    ok = [r for r in results if r.get("seconds")]
    base = {(r["size"], r["impl"]): r for r in ok}
    head = (f"{'size':>8} {'impl':>20} {'rows':>12} {'seconds':>8} {'Mrows/s':>8} {'peak MB':>8} {'max proc':>8} "
            f"{'vs pandas':>9} {'vs polars':>9} {'vs 1w':>6}")
    print("\n" + head)

    def ratio(r: dict, impl: str) -> str:
        other = base.get((r["size"], impl))
        return f"{other['seconds'] / r['seconds']:.2f}x" if other and r.get("seconds") else "-"

    for r in results:
        if not r.get("seconds"):
            print(f"{r['size']:>8} {r['impl']:>20} {r['rows']:>12,}   stopped: {r['stopped']}")
            continue
        procs = [r["peak_mb"], *r.get("worker_peak_mb", [])]
        print(f"{r['size']:>8} {r['impl']:>20} {r['rows']:>12,} {r['seconds']:>8.2f} {r['rows_per_s'] / 1e6:>8.2f} "
              f"{sum(procs):>8.0f} {max(procs):>8.0f} {ratio(r, 'pandas'):>9} {ratio(r, 'polars'):>9} "
              f"{ratio(r, 'recstack-dask-1w') if r['impl'].startswith('recstack-dask') else '-':>6}")
    print("(vs X = X's seconds / these seconds: >1 is faster than X. peak MB: peak RSS of the process, for Dask "
          "the sum over client + workers (scheduler and nannies live in the client); max proc: the largest "
          "one. seconds: the fastest of --repeat runs. recstack-dask times include writing the partitioned "
          "parquet output; the others stop before "
          "writing. All outputs asserted equal to the first implementation run.)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="ml-1m,10M", help="comma-separated: ml-100k, ml-1m, 500k, 10M, 50M ...")
    parser.add_argument("--impls", default="pandas,polars,recstack",
                        help="in-process implementations, the first is the reference (default: %(default)s)")
    parser.add_argument("--workers", default="", metavar="N[,N]",
                        help="also run recstack streaming on a Dask LocalCluster of N worker processes (e.g. 1,2)")
    parser.add_argument("--worker-memory", metavar="SIZE", help="memory limit per LocalCluster worker (e.g. 3GiB)")
    parser.add_argument("--scheduler", help="also run recstack streaming on this dask.distributed scheduler")
    parser.add_argument("--min-free-gb", type=float, default=2.0,
                        help="stop an implementation when the machine's available memory falls below this")
    parser.add_argument("--max-seconds", type=float, help="stop an implementation that runs longer than this")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per implementation; the fastest is reported (the machine is shared)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/recstack-etl-bench"))
    parser.add_argument("--png", type=Path, default=Path("benchmarks/etl_workflow.png"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--run", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--interactions", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--items", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dask-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        args.workers = args.dask_workers
        child(args)
        return
    plan = _plan(args)
    results = []
    for size in args.sizes.split(","):
        inter, items, rows = dataset(size, args.cache)
        reference = None
        for impl, extra in plan:
            out = args.cache / "out" / size / impl
            runs = []
            for _ in range(args.repeat):
                runs.append(measure(impl, inter, items, out, extra, args.min_free_gb, args.max_seconds))
                if isinstance(runs[-1], str):
                    break
            if isinstance(runs[-1], str):
                results.append({"size": size, "impl": impl, "rows": rows, "stopped": runs[-1]})
                continue
            m = min(runs, key=lambda r: r["seconds"])
            if args.repeat > 1:
                m = {**m, "all_seconds": [round(r["seconds"], 3) for r in runs]}
            if reference is None:
                reference = (impl, out)
            else:
                assert_equal(reference[1], out, f"{size} {impl} vs {reference[0]}")
            results.append({"size": size, "impl": impl, "rows": rows, **m, "rows_per_s": rows / m["seconds"]})
            workers = f", workers {', '.join(f'{w:.0f}' for w in m['worker_peak_mb'])} MB" if "worker_peak_mb" in m else ""
            same = "reference" if reference[0] == impl else f"outputs equal to {reference[0]}"
            every = f" (runs: {', '.join(f'{x:.2f}' for x in m['all_seconds'])} s)" if "all_seconds" in m else ""
            print(f"  {size} {impl}: {m['seconds']:.2f} s{every}, peak {m['peak_mb']:.0f} MB{workers} ({same})",
                  file=sys.stderr, flush=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    plot([r for r in results if r.get("seconds")], args.png)
    print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
