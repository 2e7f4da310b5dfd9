"""Client side of the recommendation ensemble: `recstack serve` and `recstack recommend`.

Apps call the ``recommend`` ensemble over Triton's KServe v2 gRPC/HTTP API with
``user_id`` int64 [B, 1] and ``top_n`` int32 [B, 1]; they get raw ``item_ids`` int64
[B, N], ``scores`` float32 [B, N] and ``cold_start`` int32 [B, 1]. Titles are mapped
here, outside the ensemble (strings do not cross the python backend safely).
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.paths import RunPaths

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
ENSEMBLE = "recommend"
MAX_TOP_N = 100


@dataclass
class Recommendation:
    """Top-N for one user: raw item ids, scores (ranker logits, or popularity share when cold)."""

    user_id: int
    item_ids: list[int]
    scores: list[float]
    cold_start: bool


def check_top_n(k: int) -> int:
    if not 1 <= int(k) <= MAX_TOP_N:
        raise InputError(f"-k: must be between 1 and {MAX_TOP_N}, got {k}")
    return int(k)


def recommend(client, user_ids: list[int] | np.ndarray, k: int = 10) -> list[Recommendation]:
    """Ask the ensemble for the top ``k`` items of each user (one request, batch = len(user_ids))."""
    k = check_top_n(k)
    users = np.asarray(user_ids, dtype=np.int64).reshape(-1, 1)
    inputs = {"user_id": users, "top_n": np.full((len(users), 1), k, dtype=np.int32)}
    out = client.infer(ENSEMBLE, inputs, ["item_ids", "scores", "cold_start"])
    results = []
    for row, user in enumerate(users[:, 0]):
        keep = out["item_ids"][row] >= 0
        results.append(Recommendation(int(user), out["item_ids"][row][keep][:k].tolist(),
                                      out["scores"][row][keep][:k].tolist(), bool(out["cold_start"][row, 0])))
    return results


class ItemTitles:
    """Raw item id -> title, from the run's ``data/items.parquet``."""

    def __init__(self, paths: RunPaths):
        items = pd.read_parquet(paths.data / "items.parquet", columns=["item_id", "title"])
        self._titles = dict(zip(items["item_id"].tolist(), items["title"].astype(str).tolist()))

    def __getitem__(self, item_id: int) -> str:
        return self._titles.get(int(item_id), f"item {item_id}")


def format_recommendation(rec: Recommendation, titles: ItemTitles) -> str:
    head = f"user {rec.user_id}" + (" (cold start: most popular items)" if rec.cold_start else "")
    lines = [head]
    for rank, (item, score) in enumerate(zip(rec.item_ids, rec.scores), start=1):
        lines.append(f"  {rank:2d}. {titles[item]}  [item {item}, score {score:.3f}]")
    return "\n".join(lines)


def query_help(http_url: str, grpc_url: str, dataset: str) -> str:
    """How to query a running server, printed by `serve` and `run`."""
    return (
        f"query it:\n"
        f"  .venv/bin/recstack recommend --dataset {dataset} --user 1 -k 10          (gRPC {grpc_url})\n"
        f"  .venv/bin/recstack recommend --dataset {dataset} --user 1 -k 10 --http   (HTTP {http_url})\n"
        f"  curl -s {http_url}/v2/models/{ENSEMBLE}/infer -d "
        "'{\"inputs\":[{\"name\":\"user_id\",\"shape\":[1,1],\"datatype\":\"INT64\",\"data\":[1]},"
        "{\"name\":\"top_n\",\"shape\":[1,1],\"datatype\":\"INT32\",\"data\":[10]}]}'\n"
        f"  .venv/bin/recstack events push --dataset {dataset} --user 1 --item 50   (real-time update)"
    )


def _check_port_free(option: str, port: int) -> None:
    """A fixed port must be free on 127.0.0.1, else a one-line error instead of Triton's log dump."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise InputError(f"{option}: 127.0.0.1:{port} is already in use (another server? stop it or "
                             f"choose another port)") from None


def start_server(paths: RunPaths, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0):
    """Start tritonserver on the run's exported repository (loopback only) and wait until ready."""
    from recstack.serving.tritonserver import TritonServer

    for option, port in (("--http-port", http_port), ("--grpc-port", grpc_port), ("--metrics-port", metrics_port)):
        _check_port_free(option, port)

    if not (paths.triton_repo / ENSEMBLE / "config.pbtxt").is_file():
        raise InputError(f"{paths.triton_repo}: no exported ensemble (run `recstack export --dataset "
                         f"{paths.root.name}` first)")
    paths.root.mkdir(parents=True, exist_ok=True)
    server = TritonServer(paths.triton_repo, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, log_path=paths.root / "tritonserver.log")
    server.start()
    return server


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM.

    Both handlers are installed explicitly: a process started in the background by a
    non-interactive shell inherits SIGINT as ignored, so Ctrl-C semantics can't be assumed.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def register(subparsers: argparse._SubParsersAction) -> None:
    from recstack.cli import add_dataset_argument

    serve = subparsers.add_parser("serve", help="start tritonserver (CPU, loopback) with the exported ensemble",
                                  description="Start tritonserver on 127.0.0.1 with triton_repo/<dataset>/, wait "
                                              "until ready, report the startup time, serve until Ctrl-C.")
    add_dataset_argument(serve)
    serve.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    serve.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    serve.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    serve.set_defaults(handler=_serve)

    rec = subparsers.add_parser("recommend", help="top-N recommendations for a user from the running server",
                                description="Query the `recommend` ensemble over gRPC (default) or HTTP and "
                                            "print titles and scores.")
    add_dataset_argument(rec)
    rec.add_argument("--user", type=int, required=True, help="raw user id")
    rec.add_argument("-k", type=int, default=10, help=f"how many items (1..{MAX_TOP_N}, default 10)")
    rec.add_argument("--http", action="store_true", help="use HTTP instead of gRPC")
    rec.add_argument("--url", default=None, help="server address (default 127.0.0.1:8001 gRPC / :8000 HTTP)")
    rec.add_argument("--new-user", action="store_true",
                     help="accept a user the online store does not know (cold start: popular items)")
    rec.set_defaults(handler=_recommend)


def _serve(args: argparse.Namespace) -> int:
    paths = RunPaths.for_dataset(args.dataset)
    server = start_server(paths, args.http_port, args.grpc_port, args.metrics_port)
    try:
        print(f"tritonserver ready in {server.startup_seconds:.1f}s: HTTP {server.http_url}, gRPC {server.grpc_url}")
        print(query_help(server.http_url, server.grpc_url, args.dataset))
        print("serving until Ctrl-C")
        wait_for_interrupt()
    finally:
        server.stop()
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from recstack.serving.client import TritonClient

    check_top_n(args.k)
    protocol = "http" if args.http else "grpc"
    url = args.url or f"127.0.0.1:{DEFAULT_HTTP_PORT if args.http else DEFAULT_GRPC_PORT}"
    paths = RunPaths.for_dataset(args.dataset)
    with TritonClient(url, protocol=protocol) as client:
        if not client.is_ready():
            raise InputError(f"--url: no ready tritonserver at {url} (start it with `recstack serve`)")
        (rec,) = recommend(client, [args.user], args.k)
    if rec.cold_start and not args.new_user:
        raise InputError(f"--user: user {args.user} is unknown to the online store "
                         "(pass --new-user for cold-start recommendations)")
    print(format_recommendation(rec, ItemTitles(paths)))
    return 0
