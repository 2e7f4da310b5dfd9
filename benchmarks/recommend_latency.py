"""Latency of sequential `recommend` calls: Triton gRPC and HTTP against the same steps in-process.

    .venv/bin/python benchmarks/recommend_latency.py --dataset ml-100k --requests 100

Needs a finished run (`SERVE=0 make run`). Starts its own tritonserver on free loopback
ports, sends one request at a time (like perf_analyzer with concurrency 1) for users
cycling through the test split, and prints median / p95 / p99 per path with the ratio to
the in-process baseline (the identical step objects called directly, no server), so the
table says what the server and protocol cost.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from recstack.ensembles import recommendation_graph, run_in_process
from recstack.paths import RunPaths
from recstack.serving.client import TritonClient
from recstack.serving.recommend import recommend
from recstack.serving.server import start_server


def _timed(fn, users: list[int], label: str) -> np.ndarray:
    fn(users[0])  # warm-up: first call loads lazily-initialised state
    out = []
    for user in tqdm(users, desc=label, leave=False):
        start = time.perf_counter()
        fn(user)
        out.append((time.perf_counter() - start) * 1000.0)
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()

    paths = RunPaths.for_dataset(args.dataset)
    test_users = pd.read_parquet(paths.data / "test.parquet", columns=["user_id"])["user_id"].unique()
    users = [int(test_users[i % len(test_users)]) for i in range(args.requests)]

    graph = recommendation_graph(paths)
    steps: dict = {}

    def in_process(user: int) -> None:
        run_in_process(graph, {"user_id": np.array([[user]], np.int64), "top_n": np.array([[args.k]], np.int32)},
                       steps)

    results = {"in-process steps (baseline)": _timed(in_process, users, "in-process")}
    server = start_server(paths.triton_repo, paths.feature_repo)
    try:
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            with TritonClient(url, protocol=protocol) as client:
                results[f"tritonserver {protocol}"] = _timed(lambda u: recommend(client, [u], args.k), users, protocol)
    finally:
        server.stop()

    base = float(np.median(results["in-process steps (baseline)"]))
    print(f"\n{args.requests} sequential requests, top-{args.k}, dataset {args.dataset} "
          f"(server startup {server.startup_seconds:.1f}s)")
    print(f"{'path':<30} {'median ms':>10} {'p95 ms':>8} {'p99 ms':>8} {'x baseline':>11}")
    for name, ms in results.items():
        print(f"{name:<30} {np.median(ms):>10.2f} {np.percentile(ms, 95):>8.2f} {np.percentile(ms, 99):>8.2f} "
              f"{np.median(ms) / base:>11.2f}")


if __name__ == "__main__":
    main()
