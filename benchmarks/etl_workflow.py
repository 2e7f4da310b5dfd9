"""ETL benchmark: fit + transform of a representative feature workflow with recstack, and the
same outputs from a hand-written pandas pipeline and a hand-written Polars pipeline, in the
same run, asserted equal. Prints rows/s and peak memory per size and writes a PNG.

The workflow: Categorify user_id and item_id (interactions) and genres (items table),
JoinGroupby counts per user and per item, DifferenceLag (time since the user's previous
interaction; 0 for a first one) >> Normalize, Normalize rating, and each user's last 20
encoded items ordered by time (Groupby >> ListSlice).

    .venv/bin/python benchmarks/etl_workflow.py --sizes ml-1m,10M,50M
    .venv/bin/python benchmarks/etl_workflow.py --sizes 1M --workers 2      # + recstack on Dask

Each (size, implementation) runs in its own process, so its peak RSS (ru_maxrss, measured
before its outputs are written for the comparison) is its own. Synthetic sizes are made with
`recstack data synth` into --cache (reused across runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HISTORY = 20
IMPLS = ("recstack", "pandas", "polars")


# ----------------------------------------------------------------------------- implementations
def run_recstack(inter_path: Path, items_path: Path, dask_workers: int = 0, scheduler: str = "") -> dict:
    from recstack.workflows import (Categorify, DifferenceLag, FillMissing, Groupby, JoinGroupby, ListSlice,
                                    Normalize, Rename, Workflow)

    rows = Workflow((["user_id", "item_id"] >> Categorify()) + (["user_id", "item_id"] >> JoinGroupby())
                    + (["timestamp"] >> DifferenceLag("user_id") >> FillMissing(0.0) >> Normalize())
                    + (["rating"] >> Normalize() >> Rename(postfix="_norm")))
    grouped = (["user_id", "timestamp"] + (["item_id"] >> Categorify())) >> Groupby(
        "user_id", ["timestamp"], {"item_id": ["list"]})
    hist = Workflow(grouped[["user_id"]] + (grouped[["item_id_list"]] >> ListSlice(-HISTORY)))
    genres = Workflow(["genres"] >> Categorify())
    items = pd.read_parquet(items_path, columns=["item_id", "genres"])
    if dask_workers or scheduler:
        import dask.dataframe as dd

        from recstack.workflows.dask_exec import dask_client

        with dask_client(scheduler=scheduler or None, workers=dask_workers or None):
            ddf = dd.read_parquet(str(inter_path), split_row_groups=True)
            out = rows.fit(ddf, progress=False).transform(ddf).compute()
            out = out.sort_values("__row__").drop(columns="__row__").reset_index(drop=True)
            h = hist.fit(ddf, progress=False).transform(ddf).compute().sort_values("user_id").reset_index(drop=True)
    else:
        inter = pd.read_parquet(inter_path)
        out = rows.fit_transform(inter, progress=False)
        h = hist.fit_transform(inter, progress=False)
    g = genres.fit_transform(items, progress=False)
    return {"rows": out, "hist": h, "genres": g}


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
    start = time.perf_counter()
    if args.run == "polars":
        out = run_polars(args.interactions, args.items)
    elif args.run == "pandas":
        out = run_pandas(args.interactions, args.items)
    else:
        out = run_recstack(args.interactions, args.items, dask_workers=args.workers, scheduler=args.scheduler or "")
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in out.items():
        frame = frame.copy()
        for col in frame.columns:
            if frame[col].dtype == object or isinstance(frame[col].dtype, pd.ArrowDtype):
                frame[col] = [list(map(int, v)) for v in frame[col]]
        frame.to_parquet(args.out / f"{name}.parquet", index=False)
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


# ----------------------------------------------------------------------------- parent
def dataset(size: str, cache: Path) -> tuple[Path, Path, int]:
    """(interactions parquet, items parquet, rows) for "ml-1m", "ml-100k" or "10M" / "500k"."""
    if size.startswith("ml-"):
        home = cache / "home"
        data = home / "runs" / size / "data"
        if not (data / "interactions.parquet").is_file():
            subprocess.run([sys.executable, "-m", "recstack.cli", "data", "prepare", "--dataset", size,
                            "--home", str(home), "--no-progress"], check=True)
        inter = data / "interactions.parquet"
        return inter, data / "items.parquet", pd.read_parquet(inter, columns=["user_id"]).shape[0]
    scale = {"k": 1_000, "M": 1_000_000}[size[-1]]
    rows = int(float(size[:-1]) * scale)
    data = cache / f"synth-{size}"
    if not (data / "interactions.parquet").is_file():
        from recstack.data.synth import write_synthetic

        write_synthetic(data, rows, seed=0, progress=False)
    return data / "interactions.parquet", data / "items.parquet", rows


def measure(impl: str, inter: Path, items: Path, out: Path, extra: list[str]) -> dict:
    run = "recstack" if impl.startswith("recstack") else impl
    cmd = [sys.executable, __file__, "--run", run, "--interactions", str(inter), "--items", str(items),
           "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    if proc.returncode:
        raise SystemExit(f"{impl} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_equal(ref: Path, other: Path, label: str) -> None:
    for name in ("rows", "hist", "genres"):
        a, b = pd.read_parquet(ref / f"{name}.parquet"), pd.read_parquet(other / f"{name}.parquet")
        assert list(a.columns) == list(b.columns) and len(a) == len(b), (label, name, list(a.columns), list(b.columns))
        for col in a.columns:
            x, y = a[col], b[col]
            if x.dtype == object:
                assert all(np.array_equal(p, q) for p, q in zip(x, y)), (label, name, col)
            elif x.dtype.kind == "f":
                np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=1e-5, atol=1e-5, err_msg=f"{label} {col}")
            else:
                np.testing.assert_array_equal(x.to_numpy(), y.to_numpy(), err_msg=f"{label} {name} {col}")


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
        axes[1].bar(xs, [mine[s]["peak_mb"] / 1024 for s in sizes if s in mine], width, label=impl)
    for ax, title in zip(axes, ("million rows / s (higher is better)", "peak memory GB")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], sizes)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="ml-1m,10M", help="comma-separated: ml-100k, ml-1m, 500k, 10M, 50M ...")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/recstack-etl-bench"))
    parser.add_argument("--png", type=Path, default=Path("benchmarks/etl_workflow.png"))
    parser.add_argument("--workers", type=int, default=0, help="also run recstack on a Dask LocalCluster")
    parser.add_argument("--scheduler", help="also run recstack on this dask.distributed scheduler")
    parser.add_argument("--run", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--interactions", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--items", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        child(args)
        return
    results = []
    for size in args.sizes.split(","):
        inter, items, rows = dataset(size, args.cache)
        impls = ["pandas", "polars", "recstack"]
        extra = {"recstack": []}
        if args.workers or args.scheduler:
            impls.append("recstack-dask")
            extra["recstack-dask"] = ["--workers", str(args.workers)] + (["--scheduler", args.scheduler]
                                                                       if args.scheduler else [])
        for impl in impls:
            out = args.cache / "out" / size / impl
            m = measure(impl, inter, items, out, extra.get(impl, []))
            if impl != "pandas":
                assert_equal(args.cache / "out" / size / "pandas", out, f"{size} {impl} vs pandas")
            results.append({"size": size, "impl": impl, "rows": rows, **m, "rows_per_s": rows / m["seconds"]})
            print(f"  {size} {impl}: {m['seconds']:.2f} s, peak {m['peak_mb']:.0f} MB (outputs equal)", file=sys.stderr)
    base = {(r["size"], r["impl"]): r for r in results}
    print(f"\n{'size':>8} {'impl':>14} {'rows':>12} {'seconds':>8} {'Mrows/s':>8} {'peak MB':>8} "
          f"{'vs pandas':>9} {'vs polars':>9}")
    for r in results:
        pandas, polars = base[(r["size"], "pandas")], base[(r["size"], "polars")]
        print(f"{r['size']:>8} {r['impl']:>14} {r['rows']:>12,} {r['seconds']:>8.2f} {r['rows_per_s'] / 1e6:>8.2f} "
              f"{r['peak_mb']:>8.0f} {pandas['seconds'] / r['seconds']:>8.2f}x {polars['seconds'] / r['seconds']:>8.2f}x")
    print("(vs X = X's seconds / these seconds: >1 is faster than X; all outputs asserted equal to pandas)")
    plot(results, args.png)
    print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
