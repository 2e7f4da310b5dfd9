"""Per-step latency of the served step chain in-process (no Triton), one request at a time.

    .venv/bin/python benchmarks/chain_step_latency.py --dataset ml-100k --requests 200

Needs a finished run (`SERVE=0 make run`). Builds the same ChainStep the fused Triton model runs,
sends the test split's users at their test interaction times and prints median / p95 ms of
every step, so a change to one step (e.g. the multi-source retrieval) shows where its cost lands.
On a loaded machine only the medians mean much: a descheduled step shows up in the p95.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from recstack.ensembles import recommendation_graph
from recstack.ensembles.chain import ChainStep
from recstack.paths import RunPaths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    paths = RunPaths.for_dataset(args.dataset)
    test = pd.read_parquet(paths.data / "test.parquet", columns=["user_id", "timestamp"])
    op = recommendation_graph(paths).fused()
    chain = ChainStep(**op.step_kwargs())
    times: dict[str, list[float]] = {o["name"]: [] for o in chain.ops}
    for i in range(args.requests + 1):  # request 0 warms up
        row = test.iloc[i % len(test)]
        tensors = {"user_id": np.array([[row.user_id]], np.int64), "top_n": np.array([[10]], np.int32),
                   "request_time": np.array([[row.timestamp]], np.int64)}
        for spec, step in zip(chain.ops, chain.steps):
            start = time.perf_counter()
            tensors.update(step.execute({k: tensors[k] for k in spec["inputs"] if k in tensors}))
            if i:
                times[spec["name"]].append((time.perf_counter() - start) * 1e3)
    print(f"{args.dataset}: {args.requests} requests, batch 1, ms per step")
    for name, values in times.items():
        print(f"{name:22s} p50 {np.percentile(values, 50):6.2f}  p95 {np.percentile(values, 95):6.2f}")
    total = np.sum(list(times.values()), axis=0)
    print(f"{'chain':22s} p50 {np.percentile(total, 50):6.2f}  p95 {np.percentile(total, 95):6.2f}")


if __name__ == "__main__":
    main()
