"""The gateway process is killed (SIGKILL) after acknowledging events and before applying them:
after a restart every acknowledged event is applied, exactly once, and nothing is lost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from recstack.events import consumer_lock, events_dir, open_event_log
from recstack.features import OnlineFeatures
from recstack.paths import RunPaths
from recstack.serving.tritonserver import free_port

pytestmark = pytest.mark.e2e

USERS, ITEMS_PER_USER, BATCH = 20, 40, 100


@pytest.fixture()
def run_home(e2e_paths, tmp_path) -> Path:
    """A home whose ml-100k run shares the e2e run's artifacts and online store (links) but has an
    event log, consumer locks and live-item registry of its own."""
    root = tmp_path / "runs" / e2e_paths.root.name
    root.mkdir(parents=True)
    for name in ("data", "workflow", "features", "feature_repo", "models", "index", "reports"):
        (root / name).symlink_to(e2e_paths.root / name)
    return tmp_path


def _start_gateway(home: Path, triton_url: str, port: int) -> subprocess.Popen:
    cli = Path(sys.executable).with_name("recstack")
    proc = subprocess.Popen([str(cli), "gateway", "--dataset", "ml-100k", "--triton-url", triton_url,
                             "--port", str(port)], env={**os.environ, "RECSTACK_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "gateway did not start"
        time.sleep(0.2)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_acknowledged_events_survive_a_sigkill_before_they_are_applied(run_home, e2e_paths, e2e_server):
    paths = RunPaths.for_dataset(e2e_paths.root.name, home=run_home)
    top = int(pd.read_parquet(e2e_paths.data / "interactions.parquet", columns=["user_id"])["user_id"].max())
    users = [top + 80_000 + u for u in range(USERS)]
    popular = pd.read_parquet(e2e_paths.features / "popularity.parquet")["item_key"].astype(int).tolist()
    events = [{"event_id": f"kill-{u}-{i}", "user": u, "item": item, "type": "view", "timestamp": 1e9 + i}
              for u in users for i, item in enumerate(popular[:ITEMS_PER_USER])]
    port = free_port()
    acknowledged = 0
    # holding the online updater's lock stands for a consumer that has not got to the events yet:
    # the gateway acknowledges them (durable in the log) but cannot apply them before it dies
    with consumer_lock(events_dir(paths), "online-store"):
        gateway = _start_gateway(run_home, e2e_server.grpc_url, port)
        try:
            for start in range(0, len(events), BATCH):
                resp = httpx.post(f"http://127.0.0.1:{port}/v1/events", json={"events": events[start: start + BATCH]},
                                  timeout=30)
                assert resp.status_code == 200, resp.text
                acknowledged += resp.json()["accepted"]
            with open_event_log(paths) as log:
                assert log.last_offset() == acknowledged == len(events) and log.committed("online-store") == 0
        finally:
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(30)
    online = OnlineFeatures(paths.feature_repo)
    _, seen, known = online.histories(users)
    assert not known.any()  # nothing was applied before the kill

    restarted = time.time()
    gateway = _start_gateway(run_home, e2e_server.grpc_url, port)
    try:
        deadline = time.time() + 60
        while True:
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            if _metric(metrics, "recstack_events_lag") == 0:
                break
            assert time.time() < deadline, "the restarted gateway did not catch up"
            time.sleep(0.2)
        caught_up = time.time() - restarted
        applied = _metric(metrics, "recstack_events_applied")
        with open_event_log(paths) as log:
            committed, last = log.committed("online-store"), log.last_offset()
        _, seen, known = online.histories(users)
        lost = sum(ITEMS_PER_USER - len(s) for s in seen)
        print(f"acknowledged {acknowledged}, applied after restart {applied:.0f}, lost {lost}, "
              f"log offsets committed {committed}/{last}; caught up {caught_up:.1f} s after the restart began")
        assert known.all() and applied == acknowledged and committed == last == acknowledged
        assert all(len(s) == len(set(s.tolist())) == ITEMS_PER_USER for s in seen)
        # exactly once: a second restart finds nothing left to apply
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(30)
        gateway = _start_gateway(run_home, e2e_server.grpc_url, port)
        time.sleep(1.0)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert _metric(metrics, "recstack_events_applied") == 0 and _metric(metrics, "recstack_events_lag") == 0
        assert np.array_equal(np.sort(online.histories(users)[1][0]), np.sort(seen[0]))
    finally:
        gateway.terminate()
        gateway.wait(30)
