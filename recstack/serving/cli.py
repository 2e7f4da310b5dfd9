"""`recstack triton ...`: install check and a foreground server for a model repository."""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recstack.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("triton", help="tritonserver: install check, serve a model repository")
    sub = parser.add_subparsers(dest="triton_command", metavar="ACTION")
    sub.required = True

    check = sub.add_parser("check", help="start tritonserver with a tiny python model and round-trip tensors")
    check.add_argument("--requests", type=int, default=20, help="random requests per protocol (default 20)")
    check.add_argument("--timeout", type=float, default=120.0, help="server startup timeout in seconds")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(handler=run_check)

    serve = sub.add_parser("serve", help="serve a model repository on 127.0.0.1 until Ctrl-C")
    serve.add_argument("repo", type=Path, help="model repository folder (e.g. triton_repo/ml-100k)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--timeout", type=float, default=300.0, help="server startup timeout in seconds")
    serve.add_argument("--log", type=Path, default=None, help="server log file (default: a temp file)")
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
    from recstack.serving.examples import AFFINE_INPUTS, AFFINE_OUTPUTS, AFFINE_STEP_CLASS, AffineCheckStep
    from recstack.serving.model_repo import write_python_model
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
    from recstack.serving.tritonserver import TritonServer

    if not args.repo.is_dir():
        raise InputError(f"repo: {args.repo} is not a folder")
    server = TritonServer(
        args.repo,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_path=args.log,
        startup_timeout_s=args.timeout,
    )
    from recstack.serving.tritonserver import TritonStartError

    try:
        server.start()
    except TritonStartError as exc:
        print(f"recstack: error: {exc}", file=sys.stderr)
        return 1
    def _terminate(signum, frame):  # docker stop / kill: shut the server down like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    with server:
        print(f"tritonserver ready in {server.startup_seconds:.2f} s: http {server.http_url}, "
              f"grpc {server.grpc_url}, log {server.log_path}; Ctrl-C stops it", flush=True)
        try:
            while server.is_running():
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping tritonserver ...", file=sys.stderr)
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
        print("tritonserver exited; last log lines:\n" + server.log_tail(), file=sys.stderr)
    return 1
