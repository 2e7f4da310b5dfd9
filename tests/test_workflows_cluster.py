"""`recstack workflow fit --scheduler tcp://...` against a real dask.distributed cluster: a
`dask scheduler` and a `dask worker` process (2 worker processes) started here on loopback.
The saved workflow, the feature tables and `workflow transform` answers equal those of the
in-process fit; both workers ran tasks; an address nobody listens on is a one-line error."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recstack.cli import main
from recstack.serving.tritonserver import free_port

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the workers import this checkout's recstack
    return subprocess.Popen([sys.executable, "-m", *args], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env=env, cwd=log.parent)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A `dask scheduler` + `dask worker --nworkers 2` on 127.0.0.1; yields the scheduler address."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    procs = [_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                     "--no-dashboard"], folder / "scheduler.log")]
    try:
        procs.append(_start(["distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--nworkers", str(WORKERS),
                             "--nthreads", "1", "--memory-limit", "1GiB", "--no-dashboard",
                             "--local-directory", str(folder)], folder / "worker.log"))
        deadline = time.monotonic() + 60
        with Client(address, timeout="30s") as client:
            while len(client.scheduler_info(n_workers=-1)["workers"]) < WORKERS:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    logs = "\n".join(f.read_text()[-2000:] for f in folder.glob("*.log"))
                    raise RuntimeError(f"dask workers did not register with {address}:\n{logs}")
                time.sleep(0.2)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tasks_per_worker(address: str) -> dict[str, int]:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        return client.run(lambda dask_worker: dask_worker.state.transition_counter)


def _same_json(a, b, where: str = "") -> None:
    """Equal documents; floats (statistics combined from partials) to 1e-9 relative."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            _same_json(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_json(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (where, a, b)
    else:
        assert a == b, (where, a, b)


def _same_frame(a: pd.DataFrame, b: pd.DataFrame, name: str) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b), name
    for col in a.columns:
        x, y = a[col], b[col]
        if x.dtype == object:
            assert [list(v) for v in x] == [list(v) for v in y], (name, col)
        elif x.dtype.kind == "f":
            np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=1e-6, atol=1e-6, err_msg=f"{name}.{col}")
        else:
            assert x.tolist() == y.tolist(), (name, col)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Two runs of the same synthetic data: `local` (fit in-process) and `cluster`; the training
    split rewritten in row groups of 1,000 rows, so Dask reads it as many partitions."""
    home = tmp_path_factory.mktemp("home")
    os.environ["RECSTACK_HOME"] = str(home)
    try:
        assert main(["data", "synth", "--rows", "20000", "--name", "local", "--split", "--no-progress"]) == 0
        data = home / "runs" / "local" / "data"
        train = pd.read_parquet(data / "train.parquet")
        train.to_parquet(data / "train.parquet", index=False, row_group_size=1000)
        shutil.copytree(data, home / "runs" / "cluster" / "data")
        yield home
    finally:
        del os.environ["RECSTACK_HOME"]


def test_cli_fit_on_scheduler_equals_local(scheduler, home, capsys):
    assert main(["workflow", "fit", "--dataset", "local", "--no-progress"]) == 0
    before = _tasks_per_worker(scheduler)
    assert main(["workflow", "fit", "--dataset", "cluster", "--scheduler", scheduler, "--no-progress"]) == 0
    after = _tasks_per_worker(scheduler)
    assert len(after) == WORKERS
    assert all(after[w] > before.get(w, 0) for w in after), (before, after)  # both workers ran tasks

    local, cluster = home / "runs" / "local", home / "runs" / "cluster"
    _same_json(json.loads((local / "workflow" / "workflow.json").read_text()),
               json.loads((cluster / "workflow" / "workflow.json").read_text()), "workflow.json")
    arrays = sorted(p.name for p in (local / "workflow").glob("*.npy"))
    assert arrays and arrays == sorted(p.name for p in (cluster / "workflow").glob("*.npy"))
    for name in arrays:
        a, b = np.load(local / "workflow" / name), np.load(cluster / "workflow" / name)
        np.testing.assert_allclose(a, b, rtol=1e-9, err_msg=name) if a.dtype.kind == "f" else \
            np.testing.assert_array_equal(a, b, err_msg=name)
    tables = sorted(p.name for p in (local / "features").glob("*.parquet"))
    assert tables == ["item_features.parquet", "popularity.parquet", "user_features.parquet", "user_history.parquet"]
    for name in tables:
        _same_frame(pd.read_parquet(local / "features" / name), pd.read_parquet(cluster / "features" / name), name)

    users = pd.read_parquet(local / "data" / "users.parquet")
    items = pd.read_parquet(local / "data" / "items.parquet")
    capsys.readouterr()
    for user, item in [(0, 0), (7, 3), (len(users) - 1, len(items) - 1)]:
        request = {"user_id": int(users.user_id[user]), "gender": users.gender[user], "age": None,
                   "occupation": "no-such-occupation", "item_id": int(items.item_id[item]),
                   "genres": list(items.genres[item]), "year": float(items.year[item])}
        answers = []
        for dataset in ("local", "cluster"):
            assert main(["workflow", "transform", "--dataset", dataset, "--request", json.dumps(request)]) == 0
            answers.append(json.loads(capsys.readouterr().out))
        assert answers[0] == answers[1] and answers[0]["occupation"] == 1, answers  # unknown -> OOV


def test_cli_unreachable_scheduler_is_one_line(home, capsys):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["workflow", "fit", "--dataset", "cluster", "--scheduler", address, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"recstack: error: --scheduler {address}: cannot connect") and "\n" not in err
