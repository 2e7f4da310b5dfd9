"""Serve an exported recommendation repository with a real tritonserver on loopback.

The repository (``triton_repo/<dataset>/`` or a copy of it anywhere) carries its own
artifacts; what depends on the host is given here, when the server starts: the Feast
repository of the online store (``RECSTACK_FEATURE_REPO``) and the Python environment
whose packages the python models import (``RECSTACK_PYTHON_ENV``, this interpreter's by
default).
"""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

from recstack.ensembles.graph import ENSEMBLE_NAME, FEATURE_REPO_ENV, LIVE_ITEMS_ENV
from recstack.errors import InputError
from recstack.serving.backends import check_backends, server_options

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002


def _check_port_free(option: str, port: int) -> None:
    """A fixed port must be free on 127.0.0.1, else a one-line error instead of Triton's log dump."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the servers bind: connections of a server that just stopped linger in TIME_WAIT on
        # its port, which stops a plain bind but not a restart of the server on the same port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise InputError(f"{option}: 127.0.0.1:{port} is already in use (another server? stop it or "
                             f"choose another port)") from None


def serving_environment(feature_repo: Path, live_items: Path | None = None) -> dict[str, str]:
    """The deployment settings the exported python models read when they load: the Feast
    repository of the online store and the live-item registry (default: the run folder's
    ``items/live.db`` beside ``feature_repo``; it need not exist yet)."""
    from recstack.features.live_items import LIVE_ITEMS_FILE

    feature_repo = Path(feature_repo).resolve()
    if not (feature_repo / "feature_store.yaml").is_file():
        raise InputError(f"--feature-repo: {feature_repo} has no feature_store.yaml (run `recstack features "
                         "build` first, or name the Feast repository of the online store)")
    live = Path(live_items).resolve() if live_items else feature_repo.parent / "items" / LIVE_ITEMS_FILE
    return {FEATURE_REPO_ENV: str(feature_repo), LIVE_ITEMS_ENV: str(live)}


def start_server(repo: Path, feature_repo: Path, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 *, python_env: str | Path | None = None, log_path: Path | None = None,
                 startup_timeout_s: float = 300.0, live_items: Path | None = None):
    """Start tritonserver on ``repo`` (loopback only) reading the online store of ``feature_repo``
    and the live-item registry ``live_items`` (see :func:`serving_environment`); block until it is
    ready. Returns the running :class:`~recstack.serving.tritonserver.TritonServer`."""
    from recstack.serving.tritonserver import TritonServer

    for option, port in (("--http-port", http_port), ("--grpc-port", grpc_port), ("--metrics-port", metrics_port)):
        _check_port_free(option, port)
    repo = Path(repo)
    if not (repo / ENSEMBLE_NAME / "config.pbtxt").is_file():
        raise InputError(f"{repo}: no exported ensemble `{ENSEMBLE_NAME}` (run `recstack export` first)")
    check_backends(repo)  # an onnxruntime-backend export needs an NGC image: say so before starting
    # explicit model control: every model is loaded at start, and `recstack models deploy`
    # can reload one with another version through the repository API
    server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          log_path=log_path, startup_timeout_s=startup_timeout_s, model_control_mode="explicit",
                          extra_args=("--load-model=*", *server_options(repo)),
                          env=serving_environment(feature_repo, live_items), python_env=python_env)
    server.start()
    return server


def query_help(http_url: str, grpc_url: str, dataset: str) -> str:
    """How to query a running server, printed by `serve` and `run`."""
    return (
        f"query it:\n"
        f"  .venv/bin/recstack recommend --dataset {dataset} --user 1 -k 10          (gRPC {grpc_url})\n"
        f"  .venv/bin/recstack recommend --dataset {dataset} --user 1 -k 10 --http   (HTTP {http_url})\n"
        f"  curl -s {http_url}/v2/models/{ENSEMBLE_NAME}/infer -d "
        "'{\"inputs\":[{\"name\":\"user_id\",\"shape\":[1,1],\"datatype\":\"INT64\",\"data\":[1]},"
        "{\"name\":\"top_n\",\"shape\":[1,1],\"datatype\":\"INT32\",\"data\":[10]}]}'\n"
        f"  .venv/bin/recstack events push --dataset {dataset} --user 1 --item 50   (real-time update)"
    )


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
