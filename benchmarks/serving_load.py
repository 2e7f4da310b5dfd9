"""Serving load on one machine: the same run served three ways, against the same steps in-process.

    python benchmarks/serving_load.py --home /tmp/hm --dataset ml-100k --levels 1,4,16,64

For each configuration (fused model + SQLite online store, fused + Redis, one model per step +
SQLite) it starts a real tritonserver, drives it with `recstack bench serve`'s load generator
(gRPC, closed loop, real test users) and prints req/s and latency percentiles per concurrency
level. The baseline is the same chain called in this process, one user at a time: Triton's
overhead is reported as the ratio of the served p50 at concurrency 1 to the in-process p50.
The load generator runs on the same cores as the server.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from _redis import start_redis
from recstack.ensembles import export_ensemble, recommendation_graph, run_in_process
from recstack.paths import RunPaths
from recstack.serving import bench
from recstack.serving.server import start_server


def in_process_ms(paths: RunPaths, users: list[int], k: int) -> np.ndarray:
    graph, steps = recommendation_graph(paths), {}
    run_in_process(graph, {"user_id": np.array([[users[0]]], np.int64), "top_n": np.array([[k]], np.int32)}, steps)
    times = []
    for user in users:
        start = time.perf_counter()
        run_in_process(graph, {"user_id": np.array([[user]], np.int64), "top_n": np.array([[k]], np.int32)}, steps)
        times.append((time.perf_counter() - start) * 1e3)
    return np.array(times)


def redis_feature_repo(paths: RunPaths, folder: Path) -> tuple[Path, subprocess.Popen]:
    from recstack.features import build_feature_repo

    proc, url = start_redis(folder, appendfsync=None)
    repo = folder / "feature_repo"
    build_feature_repo(paths.features, repo, online_store="redis", redis_url=url)
    return repo, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("."))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement window per level")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    paths = RunPaths.for_dataset(args.dataset, home=args.home)
    users = bench.draw_users(paths, 500, seed=0)
    levels = [int(x) for x in args.levels.split(",")]

    base = in_process_ms(paths, users[:200], args.k)
    print(f"in-process chain, one user at a time: p50 {np.percentile(base, 50):.2f} ms, "
          f"p95 {np.percentile(base, 95):.2f} ms")

    tmp = Path(tempfile.mkdtemp(prefix="recstack-load-"))
    redis_repo, redis_proc = redis_feature_repo(paths, tmp)
    export_ensemble(recommendation_graph(paths), tmp / "per_step", fuse=False)
    configs = [("fused, SQLite", paths.triton_repo, paths.feature_repo),
               ("fused, Redis", paths.triton_repo, redis_repo),
               ("per step, SQLite", tmp / "per_step", paths.feature_repo)]
    rows = []
    try:
        for name, repo, feature_repo in configs:
            server = start_server(repo, feature_repo)
            try:
                report = bench.bench_serve(bench.BenchConfig(
                    url=server.grpc_url, users=users, concurrency=levels, k=args.k,
                    measurement_interval_s=args.seconds, warmup_s=1.0))
            finally:
                server.stop()
            print(f"\n== {name}\n{bench.format_table(report)}")
            for level in report.levels:
                rows.append((name, level.level, level.throughput_rps, level.latency_ms["p50"],
                             level.latency_ms["p95"], level.latency_ms["p99"], level.errors))
    finally:
        redis_proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    base_p50 = float(np.percentile(base, 50))
    print("\n| configuration | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | p50 / in-process p50 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, level, rps, p50, p95, p99, errors in rows:
        print(f"| {name} | {level} | {rps:.0f} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {errors} | {p50 / base_p50:.2f}x |")
    print(f"| in-process chain (baseline) | 1 | {1e3 / base.mean():.0f} | {base_p50:.1f} | "
          f"{np.percentile(base, 95):.1f} | {np.percentile(base, 99):.1f} | 0 | 1.00x |")


if __name__ == "__main__":
    main()
