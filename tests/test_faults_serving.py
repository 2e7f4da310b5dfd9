"""Faults injected into a running serving stack (issue 11): a real redis-server holding the ML-100K
run's online store, a tritonserver serving the run's ensemble over it, and the gateway in front.

* Redis is SIGKILLed under load: every list is still a 200, flagged ``"fallback": "popularity"`` and
  counted in /metrics; events posted meanwhile are acknowledged (durable in the log) and applied once
  Redis is back. Redis restarts from its append-only file (``appendfsync always``: the data
  survive the kill) and lists are personal again without restarting anything.
* One user's online features are corrupt (an id code beyond the user tower's table), so a step
  raises for that user's requests: each gets an error response (500, the step's message), the
  other users' requests in the same load are answered, and the gateway and Triton stay ready.
* tritonserver is SIGKILLed and restarted on the same ports: the gateway's /readyz says 503
  meanwhile, and it serves again after the restart without being restarted itself.

The figures (resume time, events lost) are printed; the README's "Reliability" table quotes them.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import run_gateway
from redis_fixture import RedisServer

from recstack.paths import RunPaths

pytestmark = pytest.mark.e2e

LOAD_THREADS = 3
FALLBACK_WINDOW_S = 2.0
RESUME_LIMIT_S = 10.0


@dataclass
class Stack:
    redis: RedisServer
    paths: RunPaths
    triton_repo: Path
    server: object
    gateway: str


@pytest.fixture(scope="module")
def stack(e2e_paths, tmp_path_factory):
    """A run home sharing the e2e run's artifacts (links) with its own Redis online store, event
    log and registry; tritonserver and the gateway on it."""
    from recstack.features import build_feature_repo
    from recstack.serving.gateway import GatewayConfig
    from recstack.serving.server import start_server

    folder = tmp_path_factory.mktemp("faults")
    (folder / "redis").mkdir()
    redis = RedisServer(folder / "redis").start()
    root = folder / "home" / "runs" / e2e_paths.root.name
    root.mkdir(parents=True)
    for name in ("data", "workflow", "features", "models", "index", "reports"):
        (root / name).symlink_to(e2e_paths.root / name)
    paths = RunPaths.for_dataset(e2e_paths.root.name, home=folder / "home")
    build_feature_repo(e2e_paths.features, paths.feature_repo, online_store="redis", redis_url=redis.url)
    server = start_server(e2e_paths.triton_repo, paths.feature_repo)
    gateway = run_gateway(GatewayConfig(paths, server.grpc_url, api_key=None, live_items=folder / "live.db"))
    try:
        yield Stack(redis, paths, e2e_paths.triton_repo, server, next(gateway))
    finally:
        next(gateway, None)
        server.stop()
        redis.kill()


@pytest.fixture(scope="module")
def known_users(e2e_paths) -> list[int]:
    users = pd.read_parquet(e2e_paths.data / "train.parquet", columns=["user_id"])["user_id"]
    return sorted(users.unique().astype(int).tolist())[:40]


def _metric(gateway: str, name: str, labels: str = "") -> float:
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class Load:
    """``LOAD_THREADS`` threads asking the gateway for ``users``' lists in a loop; every response is
    kept as ``(time.monotonic(), user, status, body)``."""

    def __init__(self, gateway: str, users: list[int]):
        self.gateway, self.users = gateway, users
        self.records: list[tuple[float, int, int, dict]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(LOAD_THREADS)]

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=self.gateway, timeout=30) as client:
            while not self._stop.is_set():
                user = int(rng.choice(self.users))
                resp = client.get(f"/v1/users/{user}/recommendations", params={"k": 10})
                body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
                self.records.append((time.monotonic(), user, resp.status_code, body))

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def since(self, t0: float) -> list[tuple[float, int, int, dict]]:
        return [r for r in list(self.records) if r[0] >= t0]


def _personal(record: tuple[float, int, int, dict]) -> bool:
    _, _, status, body = record
    return status == 200 and body.get("fallback") is None and body.get("cold_start") is False


def test_redis_down_serves_flagged_popularity_then_personal_again(stack, known_users):
    gateway, redis = stack.gateway, stack.redis
    fallback_before = _metric(gateway, "recstack_recommendation_fallbacks_total", '{kind="popularity"}')
    event_user = 990_001  # a user of its own: its history holds exactly the events posted for it
    items = pd.read_parquet(stack.paths.features / "popularity.parquet")["item_key"].astype(int).tolist()[:30]
    with Load(gateway, known_users) as load:
        time.sleep(1.0)
        before = load.since(0.0)
        assert before and all(_personal(r) for r in before), [r[2:] for r in before if not _personal(r)][:3]

        redis.kill()
        killed = time.monotonic()
        posted = 0
        for start in range(0, len(items), 10):  # acknowledged while the store is down
            events = [{"event_id": f"outage-{item}", "user": event_user, "item": item, "type": "view",
                       "timestamp": 1e9 + n} for n, item in enumerate(items[start:start + 10], start)]
            resp = httpx.post(f"{gateway}/v1/events", json={"events": events}, timeout=30)
            assert resp.status_code == 200, resp.text
            posted += resp.json()["accepted"]
        ready = httpx.get(f"{gateway}/readyz", timeout=30)
        time.sleep(FALLBACK_WINDOW_S)
        during = load.since(killed + 0.5)  # requests already past the store read when it died may be personal

        restarted = time.monotonic()
        redis.start()  # same folder and port: the append-only file brings the data back
        redis_up = time.monotonic()
        deadline = redis_up + RESUME_LIMIT_S
        while not any(_personal(r) for r in load.since(redis_up)) and time.monotonic() < deadline:
            time.sleep(0.02)
        resumed = min((r[0] for r in load.since(redis_up) if _personal(r)), default=None)
        time.sleep(0.5)
        after = load.since(resumed + 0.2) if resumed else []

    statuses = Counter(r[2] for r in during)
    flagged = sum(r[2] == 200 and r[3]["fallback"] == "popularity" for r in during)
    print(f"redis down {FALLBACK_WINDOW_S + 0.5:.1f} s: {len(during)} requests, statuses {dict(statuses)}, "
          f"{flagged} flagged popularity; redis restart {redis_up - restarted:.2f} s; personal again "
          f"{(resumed - redis_up) if resumed else float('nan'):.3f} s after redis answered")
    assert during and statuses == {200: len(during)}, [r[3] for r in during if r[2] != 200][:3]
    assert flagged == len(during)
    popular = during[0][3]["items"]
    assert all(r[3]["cold_start"] for r in during)  # the popular list is what a cold user gets
    assert [i["item_id"] for i in popular][:5] == items[:5]
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert _metric(gateway, "recstack_recommendation_fallbacks_total", '{kind="popularity"}') \
        - fallback_before >= len(during)
    assert resumed is not None, "lists did not become personal again after Redis came back"
    assert after and all(_personal(r) for r in after)
    assert httpx.get(f"{gateway}/readyz", timeout=30).json()["status"] == "ready"

    # the events acknowledged during the outage are applied once the store is back: none lost
    from recstack.features import OnlineFeatures

    deadline = time.monotonic() + 30
    online = OnlineFeatures(stack.paths.feature_repo)
    while True:
        _, seen, known = online.histories([event_user])
        if known[0] and len(seen[0]) >= posted or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    lost = posted - len(seen[0])
    print(f"events acknowledged while redis was down: {posted}, in the user's history after: {len(seen[0])}, "
          f"lost: {lost}")
    assert posted == len(items) and lost == 0


def test_a_step_raising_fails_only_its_own_requests(stack, known_users, e2e_paths):
    """A user whose stored id code is beyond the user tower's embedding table makes the tower's
    ONNX Gather raise: a real exception inside a step, not an InputError."""
    from recstack.features import open_store
    from recstack.io import read_json
    from recstack.models.layout import FeatureLayout

    layout = FeatureLayout.from_dict(read_json(e2e_paths.models / "two_tower" / "config.json")["layout"])
    row = pd.read_parquet(e2e_paths.features / "user_features.parquet").iloc[[0]].copy()
    corrupt_user = 990_002
    row["user_key"] = corrupt_user
    row[layout.user.id_column.name] = 10**9
    row["event_timestamp"] = pd.Timestamp.now(tz="UTC")
    open_store(stack.paths.feature_repo).write_to_online_store("user_features", row)

    gateway = stack.gateway
    with Load(gateway, known_users) as load, httpx.Client(base_url=gateway, timeout=30) as client:
        t0 = time.monotonic()
        bad = [client.get(f"/v1/users/{corrupt_user}/recommendations") for _ in range(10)]
        time.sleep(0.5)
        good = load.since(t0)
    ready = httpx.get(f"{gateway}/readyz", timeout=30)
    print(f"corrupt user: {Counter(r.status_code for r in bad)}; other users meanwhile: "
          f"{Counter(r[2] for r in good)}; readyz {ready.status_code}; error: {bad[0].json()['detail'][:160]}")
    assert all(r.status_code == 500 for r in bad) and "indices" in bad[0].json()["detail"].lower()
    assert good and all(_personal(r) for r in good)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_tritonserver_killed_and_restarted(stack, known_users):
    from recstack.serving.server import start_server

    gateway, server = stack.gateway, stack.server
    ports = (server.http_port, server.grpc_port, server.metrics_port)
    with httpx.Client(base_url=gateway, timeout=30) as client:
        assert client.get("/readyz").status_code == 200
        server._proc.send_signal(signal.SIGKILL)  # the process, not stop(): no graceful unload
        server._proc.wait(30)
        killed = time.monotonic()
        down = client.get(f"/v1/users/{known_users[0]}/recommendations")
        not_ready = client.get("/readyz")
        server.stop()  # tidy the killed server's files

        restart = time.monotonic()
        stack.server = start_server(stack.triton_repo, stack.paths.feature_repo, *ports)
        triton_ready = time.monotonic()
        while True:
            resp = client.get(f"/v1/users/{known_users[0]}/recommendations")
            if resp.status_code == 200 or time.monotonic() > triton_ready + 30:
                break
            time.sleep(0.05)
        serving = time.monotonic()
        ready = client.get("/readyz")
    print(f"tritonserver down: recommendations {down.status_code}, readyz {not_ready.status_code} "
          f"({not_ready.json()['checks']['triton']}); restart to ready {triton_ready - restart:.1f} s; gateway "
          f"serving {serving - triton_ready:.2f} s after Triton was ready ({serving - killed:.1f} s after the kill)")
    assert down.status_code == 503 and not_ready.status_code == 503
    assert resp.status_code == 200 and _personal((0.0, 0, resp.status_code, resp.json()))
    assert ready.status_code == 200


def _recommend(client: httpx.Client, user: int) -> tuple[float, int, int, dict]:
    start = time.monotonic()
    resp = client.get(f"/v1/users/{user}/recommendations", params={"k": 10})
    body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    return time.monotonic() - start, user, resp.status_code, body


def test_hung_redis_gets_the_fallback_within_the_read_timeout(stack, known_users):
    """A Redis that keeps its connections but never answers (SIGSTOP): each store read gives up after
    the client's socket timeout, so requests get the flagged popularity list in seconds instead of
    hanging past Triton's request timeout; after SIGCONT the lists are personal again."""
    from recstack.features.repo import REDIS_CLIENT_OPTIONS

    limit_s = float(REDIS_CLIENT_OPTIONS["socket_timeout"]) + 1.5
    with httpx.Client(base_url=stack.gateway, timeout=30) as client:
        assert _personal(_recommend(client, known_users[0]))
        stack.redis.proc.send_signal(signal.SIGSTOP)
        try:
            during = [_recommend(client, user) for user in known_users[1:4]]
        finally:
            stack.redis.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + RESUME_LIMIT_S
        while not _personal(after := _recommend(client, known_users[5])) and time.monotonic() < deadline:
            time.sleep(0.1)
    print("hung redis: " + ", ".join(f"{r[0]:.2f} s {r[2]} {r[3].get('fallback')}" for r in during))
    assert all(r[2] == 200 and r[3]["fallback"] == "popularity" for r in during), [r[2:] for r in during]
    assert max(r[0] for r in during) < limit_s
    assert _personal(after)
