"""recstack.events against a real SQLite file, a real redis-server and a real Feast online store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recstack.errors import InputError
from recstack.events import (EventService, OfflineWriter, OnlineUpdater, RedisEventLog, SqliteEventLog,
                             events_to_interactions, fold_events, read_offline_events, write_partitions)
from recstack.events.synthetic import build_synthetic_run
from recstack.features import OnlineFeatures
from redis_fixture import REDIS_SERVER, RedisServer, redis_server  # noqa: F401 (fixture)

DAY = 86400.0
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.fixture(params=["sqlite", "redis"])
def event_log(request, tmp_path):
    if request.param == "sqlite":
        log = SqliteEventLog(tmp_path / "events" / "log.db")
    else:
        log = RedisEventLog(request.getfixturevalue("redis_server").url, name=f"t{uuid.uuid4().hex[:8]}")
    yield log
    log.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A synthetic run (data -> Workflow -> Feast SQLite online store); users 1..50, items 1001..1040."""
    return build_synthetic_run(tmp_path_factory.mktemp("home"), n_users=50, n_items=40, n_rows=1500)


def events(n: int, start: int = 0, user: int = 1, prefix: str = "e", item0: int = 1001, n_items: int = 40):
    return [{"event_id": f"{prefix}{i}", "user": user, "item": item0 + i % n_items, "type": "click",
             "timestamp": T0 + i} for i in range(start, start + n)]


# ---------------------------------------------------------------------------- the log


def test_append_read_commit(event_log):
    assert event_log.last_offset() == 0 and len(event_log.read()) == 0 and event_log.committed("c") == 0
    r = event_log.append(events(5) + [{"event_id": "r", "user": 2, "item": 7, "type": "rating", "value": 4.5}])
    assert (r.accepted, r.duplicates, r.offsets) == (6, 0, [1, 2, 3, 4, 5, 6])
    batch = event_log.read(0, 100)
    assert batch.offset.tolist() == [1, 2, 3, 4, 5, 6] and batch.event_id.tolist()[:2] == ["e0", "e1"]
    assert batch.item.tolist()[:5] == [1001, 1002, 1003, 1004, 1005] and batch.user.dtype == np.int64
    assert np.isnan(batch.value[0]) and batch.value[5] == 4.5 and batch.type[5] == "rating"
    assert batch.timestamp[1] == T0 + 1 and abs(batch.timestamp[5] - time.time()) < 60  # default: now
    assert event_log.read(2, 2).offset.tolist() == [3, 4] and len(event_log.read(6)) == 0
    assert event_log.last_offset() == 6
    assert event_log.commit("c", 4) == 4 and event_log.committed("c") == 4
    assert event_log.commit("c", 2) == 4  # commits only move forward ...
    assert event_log.commit("c", 2, force=True) == 2  # ... unless forced (retrain rewinds)
    event_log.commit("d", 6)
    assert event_log.consumers() == {"c": 2, "d": 6}
    with pytest.raises(InputError, match="offset: 7 is past"):
        event_log.commit("c", 7)
    with pytest.raises(InputError, match="consumer"):
        event_log.commit("", 1)


def test_duplicates_are_stored_once(event_log):
    r = event_log.append(events(3) + [events(1)[0]])  # a repeat inside the batch
    assert (r.accepted, r.duplicates, r.offsets, r.duplicate) == (3, 1, [1, 2, 3, 1], [False] * 3 + [True])
    r = event_log.append(events(5))  # e0..e2 again, e3 e4 new
    assert (r.accepted, r.duplicates, r.offsets) == (2, 3, [1, 2, 3, 4, 5])
    assert event_log.last_offset() == 5 and event_log.read(0, 100).event_id.tolist() == [f"e{i}" for i in range(5)]
    assert event_log.append([]).accepted == 0


@pytest.mark.parametrize("bad, message", [
    ({"user": 1.5}, r"events\[1\]\.user: expected an integer id"),
    ({"user": True}, r"events\[1\]\.user"),
    ({"item": None}, r"events\[1\]\.item: required"),
    ({"item": 2**64}, r"events\[1\]\.item: .* int64"),
    ({"type": "teleport"}, r"events\[1\]\.type: 'teleport' is not one of view, click"),
    ({"event_id": ""}, r"events\[1\]\.event_id: required"),
    ({"event_id": "x" * 200}, r"events\[1\]\.event_id: longer than 128"),
    ({"value": float("inf")}, r"events\[1\]\.value: inf is not a finite number"),
    ({"value": "5"}, r"events\[1\]\.value: expected a number"),
    ({"type": "rating"}, r"events\[1\]\.value: required for a rating event"),
    ({"timestamp": -5}, r"events\[1\]\.timestamp: -5 is before 1970"),
    ({"timestamp": 1.7e12}, r"events\[1\]\.timestamp: .*milliseconds"),
    ({"timestamp": 5e9}, r"events\[1\]\.timestamp: .*after 2100"),  # beyond pandas' ns range: stuck the updater
    ({"colour": "red"}, r"events\[1\]\.colour: unknown field"),
])
def test_bad_events_reject_the_whole_batch(event_log, bad, message):
    batch = events(3)
    batch[1] = {**batch[1], **bad}
    with pytest.raises(InputError, match=message):
        event_log.append(batch)
    assert event_log.last_offset() == 0  # all or nothing: the good events 0 and 2 are not stored
    with pytest.raises(InputError, match="events: expected a list"):
        event_log.append({"event_id": "a"})


def test_wait_wakes_on_append(event_log):
    assert not event_log.wait(0, 0.05)
    timer = threading.Timer(0.1, lambda: event_log.append(events(1)))
    timer.start()
    start = time.monotonic()
    assert event_log.wait(0, 5.0) and time.monotonic() - start < 2.0
    timer.join()


APPENDER = """
import sys
from recstack.events.log import SqliteEventLog
from recstack.events.redis_log import RedisEventLog
kind, where, name = sys.argv[1:4]
log = SqliteEventLog(where) if kind == "sqlite" else RedisEventLog(where, name=name)
for b in range(100000):
    r = log.append([{"event_id": f"{b}-{i}", "user": i, "item": b, "type": "view", "timestamp": 1e9}
                    for i in range(50)])
    print(f"ack {b} {r.accepted}", flush=True)
"""


def test_sigkill_appender_loses_no_acknowledged_event(event_log, tmp_path):
    sqlite = isinstance(event_log, SqliteEventLog)
    where = str(event_log.path) if sqlite else event_log.url
    name = "" if sqlite else event_log.name
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, "sqlite" if sqlite else "redis", where, name],
                            stdout=subprocess.PIPE, text=True)
    acked = []
    for line in proc.stdout:
        acked.append(int(line.split()[1]))
        if len(acked) == 40:
            break
    proc.send_signal(signal.SIGKILL)  # mid-batch, most likely: it appends without pausing
    proc.wait(10)
    for line in proc.stdout.read().splitlines():  # acknowledgements printed before the kill
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ack":
            acked.append(int(parts[1]))
    stored = set(event_log.read(0, 10**6).event_id.tolist())
    assert all(f"{b}-{i}" in stored for b in acked for i in range(50)), "an acknowledged event was lost"
    assert len(stored) % 50 == 0 and len(stored) >= 50 * len(acked)  # no half batch
    print(f"\nSIGKILL: {len(acked)} acknowledged batches, {len(stored) // 50} stored")


def test_redis_acknowledged_events_survive_a_server_kill(tmp_path):
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    try:
        log = RedisEventLog(server.url, name="durable")
        assert log.durability == "appendfsync always"
        log.require_durable()
        log.append(events(300))
        log.commit("c", 120)
        server.kill()  # SIGKILL: no shutdown save; only the fsynced AOF remains
        server.start()
        log = RedisEventLog(server.url, name="durable")
        assert log.last_offset() == 300 and log.committed("c") == 120
        assert log.append(events(301)).offsets[-1] == 301  # duplicates still known after the restart
        assert log.read(0, 1000).event_id.tolist() == [f"e{i}" for i in range(301)]
    finally:
        server.kill()


# ---------------------------------------------------------------------------- consumers


def _history(run, user):
    recent, seen, known = OnlineFeatures(run.feature_repo).histories([user])
    return recent[0].tolist(), seen[0].tolist(), bool(known[0])


def _encoded(run, raw_items):
    from recstack.events import WorkflowItemEncoder

    return WorkflowItemEncoder.load(run.workflow)(raw_items).tolist()


def test_online_updater_applies_each_event_once(run, tmp_path, monkeypatch):
    from recstack.features import history

    adds = []
    real_add = history._UserState.add
    monkeypatch.setattr(history._UserState, "add", lambda self, item, *a: (adds.append(item), real_add(self, item, *a)))
    log = SqliteEventLog(tmp_path / "log.db")
    updater = OnlineUpdater.for_run(log, run, lock_dir=tmp_path)
    user = 5001  # a new user
    batch = events(4, user=user) + [{"event_id": "u", "user": user, "item": 999999, "type": "view"}]
    r = log.append(batch)
    log.append(events(4, user=user))  # the client retries: duplicates, not appended
    assert r.accepted == 5 and log.last_offset() == 5

    class CrashAfterPush(Exception):
        pass

    def crash(*args, **kwargs):
        raise CrashAfterPush

    log.commit = crash  # the process dies between the push and the commit
    with pytest.raises(CrashAfterPush):
        updater.poll()
    del log.commit
    assert log.committed("online-store") == 0 and len(adds) == 4
    recent, seen, known = _history(run, user)
    want = _encoded(run, [1001, 1002, 1003, 1004])
    assert known and recent == want and seen == want

    restarted = OnlineUpdater.for_run(log, run, lock_dir=tmp_path)  # reads events 1..5 again
    assert restarted.poll() == 5 and log.committed("online-store") == 5
    assert restarted.counters["applied"] == 0 and restarted.counters["skipped_applied"] == 4
    assert restarted.counters["skipped_unknown"] == 1  # item 999999 is not in the catalogue
    assert len(adds) == 4, "an event was applied twice"
    assert _history(run, user)[:2] == (want, want)
    values, _, _ = restarted.online._lookup("user_history", "user_key", [user])
    assert values["applied_offset"].tolist() == [4]

    log.append(events(2, start=4, user=user))  # e4, e5 -> offsets 6, 7
    assert restarted.poll() == 2 and len(adds) == 6 and restarted.lag() == 0
    assert _history(run, user)[0] == want + _encoded(run, [1005, 1006])


def test_event_service_reflects_events_in_background(run, tmp_path):
    log = SqliteEventLog(tmp_path / "log.db")
    service = EventService(log, [OnlineUpdater.for_run(log, run, lock_dir=tmp_path),
                                 OfflineWriter(log, tmp_path / "offline", min_rows=10_000, max_delay_s=0.2)],
                           poll_interval_s=0.02).start()
    try:
        user = 5002
        service.append(events(3, user=user, prefix="bg") + events(1, user=user, prefix="bg"))
        want = _encoded(run, [1001, 1002, 1003])
        deadline = time.monotonic() + 10
        while _history(run, user)[0] != want:
            assert time.monotonic() < deadline, "not reflected within 10 s"
            time.sleep(0.02)
        while service.lag():
            assert time.monotonic() < deadline, "offline writer did not flush after max_delay_s"
            time.sleep(0.05)
        stats = service.stats()
        assert (stats["accepted"], stats["duplicates"], stats["applied"], stats["lag"]) == (3, 1, 3, 0)
        assert stats["consumers"]["offline-parquet"]["rows"] == 3 and stats["errors"] == 0
        r = service.append(events(2, start=3, user=user, prefix="bg"), apply=True)  # reflected on return
        assert r.offsets == [4, 5] and _history(run, user)[0] == want + _encoded(run, [1004, 1005])
    finally:
        service.stop()
    assert not service.running
    assert read_offline_events(tmp_path / "offline")["offset"].tolist() == [1, 2, 3, 4, 5]  # flushed on stop


def test_online_updater_on_redis(run, redis_server, tmp_path):
    log = RedisEventLog(redis_server.url, name=f"svc{uuid.uuid4().hex[:6]}")
    service = EventService(log, [OnlineUpdater.for_run(log, run, lock_dir=tmp_path)])
    user = 5003
    r = service.append(events(3, user=user) + events(2, user=user), apply=True)
    assert (r.accepted, r.duplicates) == (3, 2) and service.stats()["applied"] == 3
    assert _history(run, user)[0] == _encoded(run, [1001, 1002, 1003])
    assert service.run_once()["lag"] == 0 and log.committed("online-store") == 3


def test_updater_follows_a_rebuilt_repo_after_a_rewind(run, tmp_path):
    from recstack.events import rewind_consumer
    from recstack.features import build_feature_repo

    log = SqliteEventLog(tmp_path / "log.db")
    updater = OnlineUpdater.for_run(log, run, lock_dir=tmp_path)
    user = 5006
    log.append(events(2, user=user, prefix="rb"))
    assert updater.poll() == 2 and _history(run, user)[2]
    build_feature_repo(run.features, run.feature_repo)  # what `recstack retrain` does: a new folder
    assert not _history(run, user)[2]  # the rebuilt store has only the training data
    assert rewind_consumer(log, "online-store", 5, tmp_path) == 2  # never forward
    assert rewind_consumer(log, "online-store", 0, tmp_path) == 0
    log.append(events(1, start=2, user=user, prefix="rb"))
    assert updater.poll() == 3 and updater.counters["reopened"] == 1
    assert _history(run, user)[0] == _encoded(run, [1001, 1002, 1003])  # in the new store, each once


# ---------------------------------------------------------------------------- offline + retrain folding


def test_offline_writer_parquet_round_trips(tmp_path):
    log = SqliteEventLog(tmp_path / "log.db")
    batch = [{"event_id": "a", "user": 1, "item": 10, "type": "rating", "value": 3.5, "timestamp": T0},
             {"event_id": "b", "user": 2, "item": 11, "type": "purchase", "value": 9.99, "timestamp": T0 + DAY},
             {"event_id": "c", "user": 1, "item": 12, "type": "view", "timestamp": T0 + 5}]
    log.append(batch)
    writer = OfflineWriter(log, tmp_path / "events", min_rows=100, max_delay_s=3600)
    assert writer.poll() == 0 and writer.lag() == 3  # waits for a bigger batch ...
    assert writer.poll(force=True) == 3 and writer.lag() == 0  # ... unless forced
    files = sorted(p.relative_to(tmp_path / "events").as_posix() for p in (tmp_path / "events").rglob("*.parquet"))
    assert files == ["date=2023-11-14/part-000000000001-000000000003.parquet",
                     "date=2023-11-15/part-000000000002-000000000002.parquet"]
    got = read_offline_events(tmp_path / "events")
    assert got["offset"].tolist() == [1, 2, 3] and got["event_id"].tolist() == ["a", "b", "c"]
    assert got["user_id"].dtype == np.int64 and got["item_id"].tolist() == [10, 11, 12]
    assert got["type"].tolist() == ["rating", "purchase", "view"] and got["timestamp"].tolist() == [T0, T0 + DAY, T0 + 5]
    assert got["value"].iloc[0] == 3.5 and np.isnan(got["value"].iloc[2])
    # a writer that crashed after its files but before its commit writes them again: read once
    write_partitions(log.read(1, 10), tmp_path / "events")
    assert read_offline_events(tmp_path / "events")["offset"].tolist() == [1, 2, 3]
    assert read_offline_events(tmp_path / "events", after_offset=2)["event_id"].tolist() == ["c"]
    assert read_offline_events(tmp_path / "nothing").empty


def test_events_to_interactions_rows():
    frame = pd.DataFrame({"offset": [1, 2, 3], "event_id": ["a", "b", "c"], "user_id": [7, 7, 8],
                          "item_id": [50, 51, 52], "type": ["rating", "click", "view"],
                          "value": [4.0, 2.5, np.nan], "timestamp": [T0 + 0.9, T0 + 1.2, T0 + 2]})
    rows = events_to_interactions(frame)
    assert rows.dtypes.astype(str).to_dict() == {"user_id": "int64", "item_id": "int64", "rating": "float32",
                                                 "timestamp": "int64"}
    assert rows["user_id"].tolist() == [7, 7, 8] and rows["item_id"].tolist() == [50, 51, 52]
    assert rows["rating"].iloc[0] == 4.0 and rows["rating"].iloc[1:].isna().all()  # only ratings rate
    assert rows["timestamp"].tolist() == [int(T0), int(T0) + 1, int(T0) + 2]
    assert events_to_interactions(frame, types=["view"])["item_id"].tolist() == [52]


def test_fold_events_into_the_data_folder(tmp_path):
    from recstack.data.prepare import write_dataset
    from recstack.events.synthetic import synthetic_dataset

    data = tmp_path / "data"
    write_dataset(synthetic_dataset("toy", n_users=10, n_items=8, n_rows=60), data, progress=False)
    before = pd.read_parquet(data / "interactions.parquet")
    log = SqliteEventLog(tmp_path / "log.db")
    log.append([{"event_id": "a", "user": 3, "item": 1002, "type": "click", "timestamp": T0},
                {"event_id": "b", "user": 77, "item": 1003, "type": "rating", "value": 5, "timestamp": T0 + 1},
                {"event_id": "c", "user": 77, "item": 4242, "type": "view", "timestamp": T0 + 2},
                {"event_id": "d", "user": 77, "item": 1004, "type": "purchase", "timestamp": T0 + 3}])
    OfflineWriter(log, tmp_path / "events").drain()
    out = fold_events(data, tmp_path / "events")
    assert (out["rows"], out["new_users"], out["new_items"], out["folded_through"]) == (4, 1, 1, 4)
    after = pd.read_parquet(data / "interactions.parquet")
    pd.testing.assert_frame_equal(after.iloc[:len(before)], before)
    added = after.iloc[len(before):].reset_index(drop=True)
    expected = pd.DataFrame({"user_id": [3, 77, 77, 77], "item_id": [1002, 1003, 4242, 1004],
                             "rating": np.array([np.nan, 5, np.nan, np.nan], np.float32),
                             "timestamp": [int(T0) + i for i in range(4)]})
    pd.testing.assert_frame_equal(added, expected)
    users, items = pd.read_parquet(data / "users.parquet"), pd.read_parquet(data / "items.parquet")
    new_user = users[users["user_id"] == 77].iloc[0]
    assert np.isnan(new_user["age"]) and new_user["gender"] is None and users["age"].dtype == np.float32
    new_item = items[items["item_id"] == 4242].iloc[0]
    assert new_item["title"] == "" and len(new_item["genres"]) == 0 and np.isnan(new_item["year"])
    test = pd.read_parquet(data / "test.parquet")  # re-split: user 77's last event is its test row
    assert test[test["user_id"] == 77]["item_id"].tolist() == [1004]
    meta = json.loads((data / "dataset.json").read_text())
    assert meta["events"]["folded_through"] == 4 and meta["counts"]["rows"] == len(before) + 4
    assert meta["source"] == "synthetic"
    assert fold_events(data, tmp_path / "events")["rows"] == 0  # folded once only
    log.append([{"event_id": "e", "user": 3, "item": 1005, "type": "view", "timestamp": T0 + 4}])
    OfflineWriter(log, tmp_path / "events").drain()
    assert fold_events(data, tmp_path / "events")["rows"] == 1
    assert len(pd.read_parquet(data / "interactions.parquet")) == len(before) + 5


# ---------------------------------------------------------------------------- CLI


@pytest.fixture()
def cli(run, monkeypatch):
    import recstack.cli as top

    if "recstack.events.cli" not in top.STAGE_CLIS:  # until recstack.cli registers it
        monkeypatch.setattr(top, "STAGE_CLIS", (*top.STAGE_CLIS, "recstack.events.cli"))
    monkeypatch.setenv("RECSTACK_HOME", str(run.root.parent.parent))
    monkeypatch.delenv("RECSTACK_EVENT_LOG", raising=False)
    return top.main


def test_cli_push_consume_status(cli, run, capsys):
    assert cli(["events", "push", "--dataset", run.root.name, "--user", "5004", "--item", "1007",
                "--event-id", "cli-1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pushed: user 5004 item 1007 (encoded ") and "history now 1 recent / 1 seen" in out
    assert _history(run, 5004)[0] == _encoded(run, [1007])
    assert cli(["events", "push", "--dataset", run.root.name, "--user", "5004", "--item", "1007",
                "--event-id", "cli-1"]) == 0
    assert "duplicate event id" in capsys.readouterr().out
    assert cli(["events", "push", "--dataset", run.root.name, "--user", "1", "--item", "999999"]) == 2
    assert "not in the catalogue" in capsys.readouterr().err
    assert cli(["events", "push", "--dataset", "nope", "--user", "1", "--item", "1001"]) == 2
    assert cli(["events", "consume", "--dataset", run.root.name, "--once"]) == 0
    assert "offline-parquet: committed" in capsys.readouterr().out
    assert cli(["events", "status", "--dataset", run.root.name]) == 0
    status = json.loads(capsys.readouterr().out)
    last = status["last_offset"]
    assert last >= 1 and status["consumers"]["online-store"] == {"committed": last, "lag": 0}
    assert cli(["events", "consume", "--dataset", run.root.name, "--poll-interval", "0"]) == 2


CONSUME = """
import sys
import recstack.cli as top
if "recstack.events.cli" not in top.STAGE_CLIS:
    top.STAGE_CLIS = (*top.STAGE_CLIS, "recstack.events.cli")
raise SystemExit(top.main(sys.argv[1:]))
"""


def test_cli_consume_stops_cleanly_on_sigterm(run, tmp_path):
    env = {**os.environ, "RECSTACK_HOME": str(run.root.parent.parent)}
    env.pop("RECSTACK_EVENT_LOG", None)
    log = SqliteEventLog(run.root / "events" / "log.db")
    log.append(events(3, user=5005, prefix="sig"))
    proc = subprocess.Popen([sys.executable, "-c", CONSUME, "events", "consume", "--dataset", run.root.name,
                             "--poll-interval", "0.05", "--flush-seconds", "3600"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while log.committed("online-store") < log.last_offset():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "online-store: committed" in out and log.committed("offline-parquet") == log.last_offset()  # flushed


def test_two_processes_opening_a_new_sqlite_log_at_once_both_succeed(tmp_path):
    """Both switch the new file to WAL at the same moment: SQLite may answer "database is locked"
    without calling its busy handler there (6 of 30 such pairs failed before the retry)."""
    opener = ("import sys, time; from pathlib import Path; from recstack.events.log import SqliteEventLog\n"
              "go = Path(sys.argv[2])\nwhile not go.exists(): time.sleep(0.001)\nSqliteEventLog(Path(sys.argv[1]))\n")
    failures = []
    for attempt in range(12):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        procs = [subprocess.Popen([sys.executable, "-c", opener, str(folder / "log.db"), str(folder / "go")],
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        time.sleep(0.4)  # both waiting on the start file
        (folder / "go").touch()
        failures += [p.communicate(timeout=60)[1] for p in procs if p.wait(timeout=60) != 0]
    assert not failures, failures[0][-500:]
