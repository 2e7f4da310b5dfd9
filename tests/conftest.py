"""Shared fixtures: one ML-100K pipeline build and one real tritonserver for the end-to-end tests."""

from __future__ import annotations

import argparse
import os
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
def e2e_server(e2e_paths):
    """tritonserver on free loopback ports serving the exported ML-100K ensemble."""
    from recstack.serving.server import start_server

    server = start_server(e2e_paths.triton_repo, e2e_paths.feature_repo)
    print(f"tritonserver startup: {server.startup_seconds:.2f}s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def cli_env(e2e_home, monkeypatch):
    """Run `recstack.cli.main` against the e2e home."""
    monkeypatch.setenv("RECSTACK_HOME", str(e2e_home))
    return os.environ
