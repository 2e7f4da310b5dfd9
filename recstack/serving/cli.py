"""`recstack serve` (a recommendation repository on tritonserver) and `recstack triton check`."""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recstack.cliutil import add_dataset_argument
from recstack.errors import InputError
from recstack.paths import RunPaths
from recstack.serving.server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("triton", help="tritonserver install check")
    sub = parser.add_subparsers(dest="triton_command", metavar="ACTION")
    sub.required = True

    check = sub.add_parser("check", help="start tritonserver with a tiny python model and round-trip tensors")
    check.add_argument("--requests", type=int, default=20, help="random requests per protocol (default 20)")
    check.add_argument("--timeout", type=float, default=120.0, help="server startup timeout in seconds")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(handler=run_check)

    serve = subparsers.add_parser(
        "serve", help="start tritonserver (CPU, loopback) with an exported recommendation repository",
        description="Start tritonserver on 127.0.0.1 with triton_repo/<dataset>/ (or --repo, a copy of it anywhere), "
                    "reading the online store of --feature-repo; serve until Ctrl-C or SIGTERM.")
    add_dataset_argument(serve)
    serve.add_argument("--repo", type=Path, default=None, help="model repository (default: triton_repo/<dataset>)")
    serve.add_argument("--feature-repo", type=Path, default=None,
                       help="Feast repository of the online store (default: runs/<dataset>/feature_repo)")
    serve.add_argument("--python-env", type=Path, default=None,
                       help="virtual environment whose packages the python models import (default: this one)")
    serve.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    serve.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    serve.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    serve.add_argument("--timeout", type=float, default=300.0, help="server startup timeout in seconds")
    serve.add_argument("--log", type=Path, default=None, help="server log file (default: runs/<dataset>/tritonserver.log)")
    serve.set_defaults(handler=run_serve)


def _random_case(rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
    floats = (rng.standard_normal((batch, length)) * 10.0 ** rng.integers(-3, 6)).astype(np.float32)
    ints = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=(batch, length), dtype=np.int64)
    if ints.size:
        ints.flat[0] = np.iinfo(np.int64).max - 7
        ints.flat[-1] = np.iinfo(np.int64).min
    return {"floats": floats, "ints": ints}


def run_check(args: argparse.Namespace) -> int:
    from recstack.serving.client import TritonClient
    from recstack.ensembles.examples import AFFINE_INPUTS, AFFINE_OUTPUTS, AFFINE_STEP_CLASS, AffineCheckStep
    from recstack.ensembles.model_repo import write_python_model
    from recstack.serving.tritonserver import TritonServer, TritonStartError

    if args.requests < 1:
        raise InputError("--requests: must be at least 1")
    rng = np.random.default_rng(args.seed)
    step = AffineCheckStep()
    tmp = Path(tempfile.mkdtemp(prefix="recstack-triton-check-"))
    failures: list[str] = []
    try:
        write_python_model(tmp / "repo", "affine_check", AFFINE_STEP_CLASS, {}, AFFINE_INPUTS, AFFINE_OUTPUTS)
        print("starting tritonserver ...", flush=True)
        try:
            server = TritonServer(tmp / "repo", startup_timeout_s=args.timeout).start()
        except TritonStartError as exc:
            print(f"FAIL: {exc}")
            return 1
        with server:
            print(f"tritonserver ready in {server.startup_seconds:.2f} s "
                  f"(http {server.http_url}, grpc {server.grpc_url})")
            for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
                latencies = []
                with TritonClient(url, protocol=protocol) as client:
                    for i in range(args.requests):
                        case = _random_case(rng, int(rng.integers(1, 65)), int(rng.integers(0, 300)))
                        expected = step.execute(case)
                        t0 = time.perf_counter()
                        got = client.infer("affine_check", case, list(expected))
                        latencies.append(time.perf_counter() - t0)
                        for name, want in expected.items():
                            if got[name].dtype != want.dtype or not np.array_equal(got[name], want):
                                failures.append(f"{protocol} request {i}: output {name} differs from in-process")
                ms = statistics.median(latencies) * 1e3
                bad = sum(f.startswith(protocol) for f in failures)
                print(f"{protocol:4s}: {args.requests - bad}/{args.requests} round-trips equal, median {ms:.2f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("FAIL: " + failures[0])
        return 1
    print("PASS: tritonserver python backend round-trips float32/int64 tensors over gRPC and HTTP")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from recstack.serving.server import query_help, start_server, wait_for_interrupt
    from recstack.serving.tritonserver import TritonStartError

    from recstack.features.live_items import live_items_path

    paths = RunPaths.for_dataset(args.dataset)
    log = args.log or paths.root / "tritonserver.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = start_server(args.repo or paths.triton_repo, args.feature_repo or paths.feature_repo,
                              args.http_port, args.grpc_port, args.metrics_port, python_env=args.python_env,
                              log_path=log, startup_timeout_s=args.timeout, live_items=live_items_path(paths))
    except TritonStartError as exc:
        print(f"recstack: error: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"tritonserver ready in {server.startup_seconds:.1f}s: HTTP {server.http_url}, "
              f"gRPC {server.grpc_url}, log {server.log_path}")
        print(query_help(server.http_url, server.grpc_url, args.dataset))
        print("serving until Ctrl-C", flush=True)
        wait_for_interrupt()
    finally:
        server.stop()
    return 0
