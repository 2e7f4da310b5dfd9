"""Serve a prepared run with tritonserver, the ensemble's PyTorch parts on a device, and measure it
(the serving section of scripts/gpu_check.sh; the run, server and Python packages come from
``scripts/gpu_bundle.sh``).

    RECSTACK_TRITONSERVER_DIR=<bundle> python scripts/gpu_serve.py --home <run home> \
        --python-env <env> --device cuda --levels 1,16,64 --seconds 4

Prints, in order:
  0. ``packages``: the versions this process imports (the carried site folder shadows the host's);
  1. ``in-process``: the exported repository run in this process (``RepositoryRunner``) with the steps'
     PyTorch parts on ``--device`` and on cpu: how many users got the same top-10 on both;
  2. ``served``: tritonserver's startup time, then how many of 20 users got the same top-10 from
     the server as in this process (same device, same request time);
  3. the load tool's table (``recstack bench serve``: gRPC, closed loop, real test users; per
     level req/s, latency percentiles, errors, time per step from Triton's statistics);
  4. the README's load table (configuration | concurrency | req/s | p50 | p95 | p99 | errors),
     with the same chain in-process on ``--device``, one user at a time, as the last row.
Exit status 1 when a check fails or a request errs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from recstack.ensembles.repo_runner import RepositoryRunner
from recstack.ensembles.torch_steps import TORCH_DEVICE_ENV
from recstack.paths import RunPaths
from recstack.serving import bench
from recstack.serving.client import TritonClient
from recstack.serving.server import serving_environment, start_server

REQUEST_TIME = 1_700_000_000  # a fixed request time: the ranker reads its hour and weekday
OUTPUTS = ("item_ids",)


def request(users: list[int], k: int) -> dict[str, np.ndarray]:
    """One ensemble request for ``users`` (batch = len(users))."""
    n = len(users)
    return {"user_id": np.array(users, np.int64).reshape(n, 1), "top_n": np.full((n, 1), k, np.int32),
            "request_time": np.full((n, 1), REQUEST_TIME, np.int64)}


def runner(paths: RunPaths, device: str) -> RepositoryRunner:
    env = {**serving_environment(paths.feature_repo), TORCH_DEVICE_ENV: device}
    return RepositoryRunner(paths.triton_repo, environment=env)


def top_lists(run: RepositoryRunner, users: list[int], k: int) -> list[list[int]]:
    return [run.execute(request([u], k))["item_ids"].reshape(-1).tolist() for u in users]


def package_versions() -> str:
    """Versions of what the served steps import (where they come from matters on a borrowed host)."""
    from importlib import metadata

    import torch

    names = ("numpy", "pandas", "pyarrow", "feast", "protobuf", "grpcio", "tritonclient", "torch")
    found = [f"{name} {metadata.version(name)}" for name in names]
    return ", ".join(found) + f"; torch.cuda.is_available() {torch.cuda.is_available()}"


def where_steps_run(run: RepositoryRunner) -> str:
    """``user_tower: torch cuda:0, retrieve: torch-cuda, ...``: where each step's model runs."""
    found = []
    for model in run.models.values():
        step = getattr(getattr(model, "model", None), "step", None)
        for one in getattr(step, "steps", [step]):
            torch_model = getattr(one, "torch", None)
            index = getattr(one, "index", None)
            if torch_model is not None:
                found.append(f"{type(one).__name__}: torch {torch_model.device}")
            elif getattr(one, "session", None) is not None:
                found.append(f"{type(one).__name__}: onnxruntime cpu")
            if index is not None:
                found.append(f"{type(one).__name__}: {getattr(index, 'backend', 'faiss-cpu')}")
    return ", ".join(found) or "no model steps found"


def in_process_ms(run: RepositoryRunner, users: list[int], k: int) -> np.ndarray:
    """Milliseconds per single-user call of the chain (the first call, a warm-up, left out)."""
    run.execute(request(users[:1], k))
    times = []
    for user in users:
        start = time.perf_counter()
        run.execute(request([user], k))
        times.append((time.perf_counter() - start) * 1e3)
    return np.array(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="folder holding runs/ and triton_repo/")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--python-env", type=Path, required=True, help="environment the python models import from")
    parser.add_argument("--device", default="cuda", help="RECSTACK_TORCH_DEVICE of the steps: cuda or cpu")
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per level")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    paths = RunPaths.for_dataset(args.dataset, home=args.home)
    print(f"packages: {package_versions()}", flush=True)
    users = bench.draw_users(paths, 500, seed=0)
    ok = True

    start = time.perf_counter()
    on_device = runner(paths, args.device)
    print(f"in-process: repository loaded with steps on {args.device} in {time.perf_counter() - start:.1f}s "
          f"({where_steps_run(on_device)})", flush=True)
    want = top_lists(on_device, users[:20], args.k)
    if args.device != "cpu":
        on_cpu = runner(paths, "cpu")
        same = sum(a == b for a, b in zip(want, top_lists(on_cpu, users[:20], args.k)))
        on_cpu.close()
        print(f"in-process: {same}/20 users get the same top-{args.k} with the steps on {args.device} and on cpu",
              flush=True)
        ok &= same >= 18  # float rounding may swap two near-equal scores of a user; more is a bug
    base = in_process_ms(on_device, users[:200], args.k)

    os.environ[TORCH_DEVICE_ENV] = args.device  # the server's python models read it when they load
    server = start_server(paths.triton_repo, paths.feature_repo, python_env=args.python_env,
                          log_path=args.home / "tritonserver.log", startup_timeout_s=180)
    try:
        print(f"served: tritonserver ready in {server.startup_seconds:.1f}s (grpc {server.grpc_url})", flush=True)
        with TritonClient(server.grpc_url) as client:
            got = [client.infer("recommend", request([u], args.k), OUTPUTS)["item_ids"].reshape(-1).tolist()
                   for u in users[:20]]
        same = sum(a == b for a, b in zip(want, got))
        print(f"served: {same}/20 users get the same top-{args.k} from the server as in-process", flush=True)
        ok &= same >= 19  # same device and batch shapes: at most a near-tie swapped by a different kernel choice
        levels = [int(x) for x in args.levels.split(",")]
        report = bench.bench_serve(bench.BenchConfig(url=server.grpc_url, users=users, concurrency=levels, k=args.k,
                                                     measurement_interval_s=args.seconds, warmup_s=1.0))
    finally:
        server.stop()
        on_device.close()
    print(f"\nrecstack bench serve ({args.dataset}, steps on {args.device}):\n{bench.format_table(report)}")
    name = f"fused model, SQLite, PyTorch steps on {args.device}"
    print("\n| configuration | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|")
    for level in report.levels:
        lat = level.latency_ms
        print(f"| {name} | {level.level:g} | {level.throughput_rps:,.0f} | {lat['p50']:.1f} | {lat['p95']:.1f} | "
              f"{lat['p99']:.1f} | {level.errors} |")
        ok &= level.errors == 0
    print(f"| the same chain in-process on {args.device} (baseline) | 1 | {1e3 / base.mean():,.0f} | "
          f"{np.percentile(base, 50):.1f} | {np.percentile(base, 95):.1f} | {np.percentile(base, 99):.1f} | 0 |")
    c1 = next((lv for lv in report.levels if lv.level == 1), None)
    if c1 is not None:
        print(f"Triton / in-process at concurrency 1, p50: {c1.latency_ms['p50'] / np.percentile(base, 50):.1f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
