"""Shared fixtures: one ML-100K pipeline build, a real redis-server, and real tritonservers for
the end-to-end tests (SQLite and Redis online stores)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from recstack.ids import HISTORY_LENGTH
from recstack.paths import RunPaths


def _pipeline_args(**overrides) -> argparse.Namespace:
    defaults = dict(dataset="ml-100k", serve=0, device="cpu", epochs=None, history_length=HISTORY_LENGTH,
                    index_kind="flat", top_k=100, progress=False)
    defaults.update(overrides)
    return argparse.Namespace(**defaults)


@pytest.fixture(scope="session")
def e2e_home(tmp_path_factory) -> Path:
    """A RECSTACK_HOME holding runs/ml-100k and triton_repo/ml-100k, built once per test session."""
    from recstack.pipeline import run_stages

    home = tmp_path_factory.mktemp("recstack_home")
    paths = RunPaths.for_dataset("ml-100k", home=home)
    times = run_stages(paths, _pipeline_args())
    print("pipeline stage wall times:", times)
    return home


@pytest.fixture(scope="session")
def e2e_paths(e2e_home) -> RunPaths:
    return RunPaths.for_dataset("ml-100k", home=e2e_home)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A real redis-server (Debian package `redis-server`; `.ci/run` installs it) on a free loopback port."""
    import redis

    from recstack.serving.tritonserver import free_port

    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed: apt-get install redis-server (scripts/setup.sh says how)"
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(200):
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{port}")
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Store:
    """One online store of the e2e run: its kind, its Feast repository and a tritonserver reading it."""

    kind: str
    feature_repo: Path
    server: object


def _serve(repo: Path, feature_repo: Path):
    from recstack.serving.server import start_server

    server = start_server(repo, feature_repo)
    print(f"tritonserver startup ({feature_repo.name}): {server.startup_seconds:.2f}s")
    return server


@pytest.fixture(scope="session")
def e2e_server(e2e_paths):
    """tritonserver on free loopback ports serving the exported ML-100K ensemble (SQLite online store)."""
    server = _serve(e2e_paths.triton_repo, e2e_paths.feature_repo)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_store(e2e_paths, redis_url, tmp_path_factory) -> Store:
    """The same run's features in Feast's Redis online store, and a tritonserver reading them."""
    from recstack.features import build_feature_repo

    repo = tmp_path_factory.mktemp("redis_store") / "feature_repo"
    build_feature_repo(e2e_paths.features, repo, online_store="redis", redis_url=redis_url)
    server = _serve(e2e_paths.triton_repo, repo)
    try:
        yield Store("redis", repo, server)
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store(request, e2e_paths) -> Store:
    """Each end-to-end test that takes it runs once per online store."""
    if request.param == "sqlite":
        return Store("sqlite", e2e_paths.feature_repo, request.getfixturevalue("e2e_server"))
    return request.getfixturevalue("redis_store")


def run_gateway(config):
    """Serve a gateway app under uvicorn on a free loopback port in a thread; yields its URL."""
    import uvicorn

    from recstack.serving.gateway import create_app
    from recstack.serving.tritonserver import free_port

    port = free_port()
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "gateway did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="session")
def gateway_url(e2e_paths, e2e_server, tmp_path_factory):
    """`recstack gateway`'s app in a thread of this process, in front of ``e2e_server``.

    Items it is given (the fuzzer adds some) go to a registry of their own, which ``e2e_server``
    does not read: the shared server's lists stay free of exploration slots.
    """
    from recstack.serving.gateway import GatewayConfig

    registry = tmp_path_factory.mktemp("gateway_items") / "live.db"
    yield from run_gateway(GatewayConfig(e2e_paths, e2e_server.grpc_url, api_key=None, live_items=registry))


@pytest.fixture()
def cli_env(e2e_home, monkeypatch):
    """Run `recstack.cli.main` against the e2e home."""
    monkeypatch.setenv("RECSTACK_HOME", str(e2e_home))
    return os.environ
