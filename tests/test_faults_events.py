"""Two processes push events for the same user at the same time (issue 11): none is lost.

Each process does what the gateway's ``POST /v1/users`` and `recstack events push` do: append an
event to the run's log (durable), then apply everything up to it to the online store
(``EventService.append(..., apply=True)``). A user's history is a read-modify-write of one store
row; the online updater's flock (``recstack.events.consumer_lock``) makes the two processes take
turns, and the stored ``applied_offset`` makes each event count once. Counted: the distinct items
in the user's ``seen_items`` afterwards must be every item either process pushed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from recstack.events import open_event_log
from recstack.events.consumer import WorkflowItemEncoder
from recstack.features import OnlineFeatures
from recstack.paths import RunPaths

pytestmark = pytest.mark.e2e

EVENTS_PER_PROCESS = 30

PRODUCER = """
import json, sys, time
from pathlib import Path
from recstack.events import EventService
from recstack.paths import RunPaths

home, user, items, tag, start = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
service = EventService.for_run(RunPaths.for_dataset("ml-100k", home=home), offline=False)
start.with_name(f"ready-{tag}").touch()
while not start.exists():  # both processes begin together
    time.sleep(0.005)
for n, item in enumerate(items):
    service.append([{"event_id": f"{tag}-{n}", "user": user, "item": item, "type": "view",
                     "timestamp": 1.5e9 + n}], apply=True)
service.close()
"""


def test_two_processes_pushing_for_one_user_lose_no_event(e2e_paths, tmp_path):
    root = tmp_path / "runs" / e2e_paths.root.name
    root.mkdir(parents=True)
    for name in ("data", "workflow", "features", "feature_repo", "models", "index", "reports"):
        (root / name).symlink_to(e2e_paths.root / name)  # own event log and locks, the e2e online store
    online = OnlineFeatures(e2e_paths.feature_repo)
    user = int(pd.read_parquet(e2e_paths.data / "interactions.parquet", columns=["user_id"])["user_id"].max()) + 70_000
    while online.histories([user])[2][0]:  # a user without a history: it will hold exactly what is pushed
        user += 1
    popular = pd.read_parquet(e2e_paths.features / "popularity.parquet")["item_key"].astype(int).tolist()
    halves = [popular[:EVENTS_PER_PROCESS], popular[EVENTS_PER_PROCESS: 2 * EVENTS_PER_PROCESS]]
    start = tmp_path / "start"
    procs = [subprocess.Popen([sys.executable, "-c", PRODUCER, str(tmp_path), str(user), str(items), tag, str(start)],
                              env=os.environ.copy(), stderr=subprocess.PIPE, text=True)
             for tag, items in (("a", halves[0]), ("b", halves[1]))]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{tag}").exists() for tag in "ab"):  # both have opened the log and store
        dead = [p.stderr.read() for p in procs if p.poll() is not None]
        assert time.monotonic() < deadline and not dead, f"a producer did not start: {dead}"
        time.sleep(0.05)
    t0 = time.monotonic()
    start.touch()
    for proc in procs:
        assert proc.wait(120) == 0, proc.stderr.read()[-3000:]
    elapsed = time.monotonic() - t0

    paths = RunPaths.for_dataset(e2e_paths.root.name, home=tmp_path)
    with open_event_log(paths) as log:
        logged, committed = log.last_offset(), log.committed("online-store")
    _, seen, known = online.histories([user])
    codes = WorkflowItemEncoder.load(e2e_paths.workflow)(halves[0] + halves[1]).tolist()
    lost = len(set(codes) - set(seen[0].tolist()))
    print(f"2 processes x {EVENTS_PER_PROCESS} events for user {user} in {elapsed:.1f} s: logged {logged}, "
          f"committed {committed}, in the history {len(seen[0])}, lost {lost}")
    assert logged == committed == 2 * EVENTS_PER_PROCESS
    assert known[0] and lost == 0 and len(seen[0]) == 2 * EVENTS_PER_PROCESS
