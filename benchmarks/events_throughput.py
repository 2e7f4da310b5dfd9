"""Event log throughput (events/s accepted, durable) and event -> online-store latency.

    .venv/bin/python benchmarks/events_throughput.py [--events 20000] [--probes 200]

Throughput: the same pre-built events (dicts, as the gateway hands them over) appended in batches
of 100 and 1000 through ``EventLog.append`` (validation + idempotency check + durable commit) on
SQLite (WAL, synchronous=FULL) and on a real redis-server started here (AOF, appendfsync always,
then everysec), each against a baseline measured in the same run: the bare store write of the same
rows with no validation and no dedupe (SQLite executemany in one transaction with the same
pragmas; Redis XADD in one MULTI pipeline on the same server), plus a naive INSERT + COMMIT per event.

Latency: a synthetic run (real Workflow + Feast SQLite online store) with an ``EventService``
running its online updater and offline writer in a background thread. A probe event is appended
(durable) and the clock stops when the updater has committed its offset, which happens after the
Feast push, so the figure bounds "appended -> reflected in the next lookup" from above; a sample
of probes is checked with a real history lookup. Measured idle and under a background load of
``--load`` events/s, for appends through the service (which wakes the consumer thread, as the
gateway does) and from another log handle (what a separate process sees: the poll interval).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import redis

from _redis import start_redis
from recstack.events import EventService, OfflineWriter, OnlineUpdater, RedisEventLog, SqliteEventLog
from recstack.events.synthetic import build_synthetic_run
from recstack.features import OnlineFeatures


def make_events(n: int, tag: str, users: int = 50, items: int = 40) -> list[dict]:
    return [{"event_id": f"{tag}-{i}", "user": 1 + i % users, "item": 1001 + (i * 7) % items, "type": "click",
             "timestamp": 1.7e9 + i} for i in range(n)]


def rate(fn, events: list[dict], batch: int) -> float:
    start = time.perf_counter()
    for s in range(0, len(events), batch):
        fn(events[s:s + batch])
    return len(events) / (time.perf_counter() - start)


def sqlite_baseline(path: Path):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS ev (event_id TEXT, user_id INT, item_id INT, type TEXT, ts REAL)")

    def batch_insert(events: list[dict]) -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO ev VALUES (?,?,?,?,?)",
                         [(e["event_id"], e["user"], e["item"], e["type"], e["timestamp"]) for e in events])
        conn.execute("COMMIT")

    def per_event(events: list[dict]) -> None:
        for e in events:
            conn.execute("INSERT INTO ev VALUES (?,?,?,?,?)", (e["event_id"], e["user"], e["item"], e["type"],
                                                               e["timestamp"]))
    return batch_insert, per_event


def redis_baseline(client: redis.Redis, key: str):
    def pipeline_xadd(events: list[dict]) -> None:
        pipe = client.pipeline(transaction=True)
        for e in events:
            pipe.xadd(key, {"e": e["event_id"], "u": e["user"], "i": e["item"], "t": e["type"], "s": e["timestamp"]})
        pipe.execute()
    return pipeline_xadd


def throughput(tmp: Path, url: str, n: int, batches: list[int]) -> list[tuple[str, int, float, float]]:
    rows = []
    client = redis.Redis.from_url(url)
    for batch in batches:
        base_batch, base_loop = sqlite_baseline(tmp / f"baseline-{batch}.db")
        base = rate(base_batch, make_events(n, f"b{batch}"), batch)
        rows.append(("sqlite executemany, no checks (baseline)", batch, base, 1.0))
        if batch == batches[0]:
            loop = rate(base_loop, make_events(min(n, 2000), f"l{batch}"), batch)
            rows.append(("sqlite INSERT+COMMIT per event (naive)", 1, loop, loop / base))
        with SqliteEventLog(tmp / f"log-{batch}.db") as log:
            got = rate(log.append, make_events(n, f"s{batch}"), batch)
            rows.append(("recstack SqliteEventLog (WAL, FULL)", batch, got, got / base))
        for fsync in ("always", "everysec"):
            client.config_set("appendfsync", fsync)
            rbase = rate(redis_baseline(client, f"bench:base:{fsync}:{batch}"), make_events(n, f"r{batch}"), batch)
            rows.append((f"redis XADD MULTI, no checks (baseline, {fsync})", batch, rbase, 1.0))
            log = RedisEventLog(url, name=f"bench-{fsync}-{batch}")
            got = rate(log.append, make_events(n, f"x{fsync}{batch}"), batch)
            rows.append((f"recstack RedisEventLog (AOF {fsync})", batch, got, got / rbase))
            log.close()
    client.config_set("appendfsync", "always")
    return rows


def latency(service: EventService, appender, probes: int, load: float, check: OnlineFeatures) -> np.ndarray:
    """Seconds from append returning to the online updater's commit of the probe, per probe."""
    stop, tag = threading.Event(), uuid.uuid4().hex[:8]

    def background() -> None:
        i, per = 0, 50
        while not stop.is_set():
            appender(make_events(per, f"load{tag}-{i}"))
            i += 1
            stop.wait(per / load)

    if load:
        threading.Thread(target=background, daemon=True).start()
    out, log, rng = [], service.log, np.random.default_rng(0)
    for p in range(probes):
        user, item = 100_000 + p, 1001 + p % 40
        result = appender([{"event_id": f"probe{tag}-{p}", "user": user, "item": item, "type": "click"}])
        assert result.accepted == 1, "probe ids must be new"
        offset = result.offsets[0]
        t0 = time.perf_counter()
        while log.committed("online-store") < offset:
            time.sleep(0.0005)
        out.append(time.perf_counter() - t0)
        if p % 50 == 0:
            assert check.histories([user])[2][0], "probe not in the online store after its commit"
        time.sleep(rng.uniform(0, 0.02))
    stop.set()
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000, help="events per throughput measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--probes", type=int, default=200, help="latency probes per scenario")
    parser.add_argument("--load", type=float, default=2000.0, help="background events/s in the loaded scenario")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="events-bench-"))
    proc, url = start_redis(tmp, appendfsync="always")
    try:
        rows = throughput(tmp, url, args.events, args.batches)
        print(f"\nthroughput: {args.events} events per row, accepted = durable before append returns")
        print(f"{'store':<46} {'batch':>6} {'events/s':>10} {'vs baseline':>12}")
        for name, batch, r, ratio in rows:
            print(f"{name:<46} {batch:>6} {r:>10,.0f} {ratio:>11.2f}x")

        print("\nbuilding a synthetic run (Workflow + Feast SQLite online store) ...", flush=True)
        paths = build_synthetic_run(tmp / "home", n_users=50, n_items=40, n_rows=1500)
        check = OnlineFeatures(paths.feature_repo)
        results = []
        for backend in ("sqlite", "redis"):
            log = SqliteEventLog(tmp / f"lat-{backend}.db") if backend == "sqlite" else RedisEventLog(url, "lat")
            other = SqliteEventLog(log.path) if backend == "sqlite" else RedisEventLog(url, "lat")
            service = EventService(log, [OnlineUpdater.for_run(log, paths),
                                         OfflineWriter(log, tmp / f"offline-{backend}")], poll_interval_s=0.05)
            service.start()
            try:
                for label, appender in (("EventService.append (wakes consumer)", service.append),
                                        ("other handle (poll 50 ms)", other.append)):
                    for load in (0.0, args.load):
                        lat = latency(service, appender, args.probes, load, check)
                        results.append((backend, label, load, lat))
            finally:
                service.stop()
        print(f"\nevent -> applied to the online store ({args.probes} probes each; consumer thread running)")
        print(f"{'log':<7} {'append path':<38} {'load ev/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for backend, label, load, lat in results:
            print(f"{backend:<7} {label:<38} {load:>9,.0f} {np.percentile(lat, 50) * 1e3:>8.1f} "
                  f"{np.percentile(lat, 95) * 1e3:>8.1f} {lat.max() * 1e3:>8.1f}")
        best = max(r for name, b, r, _ in rows if name.startswith("recstack SqliteEventLog"))
        worst_p95 = max(np.percentile(lat, 95) for *_, lat in results)
        print(f"\ntargets: >= 5,000 events/s accepted (SQLite default, best batch: {best:,.0f}) "
              f"{'MET' if best >= 5000 else 'MISSED'}; event -> reflected p95 <= 1 s (worst: "
              f"{worst_p95 * 1e3:.0f} ms) {'MET' if worst_p95 <= 1.0 else 'MISSED'}")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
