"""Online store per-core figures for the scaling plan (docs/scaling.md): reads per batch, memory per
entity in Redis, and events applied per second.

    .venv/bin/python benchmarks/online_store.py --home /tmp/hm --dataset ml-100k [--calls 300] [--events 20000]

On a finished run (`recstack run --serve 0`), against its SQLite online store and a Redis one built
here from the same feature tables on a real `redis-server` (loopback, AOF `everysec`: the online
store can be rebuilt from the event log, so it does not need `always`):

- reads: ``OnlineFeatures.users_with_histories(keys)`` (user features + recent items and times + seen items,
  the one online-store read the serving chain makes per batch) for batches of 1, 16 and 64 random
  known users: median / p95 ms per call and ms per user (this process, one thread); and the raw read
  of both views in one round trip (``recstack.features.view_reads``) against Feast's ``online_read``
  once per view, interleaved in this process, with their ratio;
- memory: Redis ``used_memory`` after materialize minus before, per stored user + item, with the
  mean history lengths it holds;
- apply: events (clicks of real users on real items) applied to the Redis online store by the
  ``OnlineUpdater`` (encode, read history, append, write back), events/s on one thread, the
  event log (SQLite) read included, and the redis-server CPU per event;
- event log memory: Redis bytes per event appended through ``RedisEventLog`` (stream entry +
  idempotency hash).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import redis

from _redis import start_redis
from recstack.paths import RunPaths


def server_cpu_s(client: redis.Redis) -> float:
    """CPU seconds the redis-server process has used (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def key_bytes(client: redis.Redis, history: pd.DataFrame) -> dict[str, float]:
    """Redis ``MEMORY USAGE`` of the user and item hashes Feast wrote. User bytes are fitted as
    ``a + b * n`` over users, n = recent + seen items stored for the user (least squares); the
    user key is read from Feast's serialised entity key (``user_key`` + int64 little-endian)."""
    lengths = dict(zip(history["user_key"].tolist(),
                       (history["recent_items"].map(len) + history["seen_items"].map(len)).tolist()))
    marker = b"user_key\x04\x00\x00\x00\x08\x00\x00\x00"
    users, items = [], []
    for key in client.scan_iter(count=1000):
        size = client.memory_usage(key, samples=0)
        at = key.find(marker)
        if at < 0:
            items.append(size)
            continue
        user = int.from_bytes(key[at + len(marker):at + len(marker) + 8], "little", signed=True)
        users.append((lengths.get(user, 0), size))
    n, size = np.array(users, dtype=np.float64).T
    b, a = np.polyfit(n, size, 1)
    return {"user_mean": float(size.mean()), "user_a": float(a), "user_b": float(b), "users": len(users),
            "item_mean": float(np.mean(items)) if items else float("nan"), "items": len(items),
            "n_mean": float(n.mean())}


def read_times(repo: Path, users: np.ndarray, batch: int, calls: int) -> np.ndarray:
    """Seconds per ``users_with_histories`` call of ``batch`` random users."""
    from recstack.features import OnlineFeatures

    online, rng, out = OnlineFeatures(repo), np.random.default_rng(batch), []
    for _ in range(5):
        online.users_with_histories(rng.choice(users, batch))
    for _ in range(calls):
        keys = rng.choice(users, batch)
        start = time.perf_counter()
        online.users_with_histories(keys)
        out.append(time.perf_counter() - start)
    return np.asarray(out)


def raw_read_ratio(repo: Path, users: np.ndarray, batch: int, calls: int) -> tuple[float, float]:
    """Median ms of the raw read of both user views: one read (``view_reads.read_views``, what serving
    makes) and, interleaved with it, Feast's ``online_read`` once per view (the baseline)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from recstack.features import OnlineFeatures
    from recstack.features.view_reads import read_views

    online, rng = OnlineFeatures(repo), np.random.default_rng(batch)
    views = [online._views[v] for v in ("user_features", "user_history")]
    names = [[c.name for c in online.columns[v]] for v in ("user_features", "user_history")]
    config, provider = online.store.config, online._provider

    def one(keys: list) -> None:
        read_views(online.store, provider, views, keys, names)

    def per_view(keys: list) -> None:  # a fresh list each call: Feast appends its timestamp key to it
        for view, features in zip(views, names):
            provider.online_read(config=config, table=view, entity_keys=keys, requested_features=list(features))

    times: dict = {one: [], per_view: []}
    for call in range(calls + 5):
        keys = [EntityKey(join_keys=["user_key"], entity_values=[Value(int64_val=int(k))])
                for k in rng.choice(users, batch)]
        for read in ((one, per_view) if call % 2 else (per_view, one)):
            start = time.perf_counter()
            read(keys)
            if call >= 5:
                times[read].append(time.perf_counter() - start)
    return float(np.median(times[one]) * 1e3), float(np.median(times[per_view]) * 1e3)


def apply_rate(paths: RunPaths, repo: Path, users: np.ndarray, items: np.ndarray, n: int, folder: Path) -> float:
    """Events/s the OnlineUpdater applies to ``repo`` (one thread), from a SQLite event log."""
    from recstack.events import OnlineUpdater, SqliteEventLog
    from recstack.events.consumer import WorkflowItemEncoder
    from recstack.features import OnlineFeatures
    from recstack.io import read_json

    rng = np.random.default_rng(1)
    log = SqliteEventLog(folder / "log.db")
    events = [{"event_id": f"bench-{i}", "user": int(u), "item": int(it), "type": "click", "timestamp": 1.8e9 + i}
              for i, (u, it) in enumerate(zip(rng.choice(users, n), rng.choice(items, n)))]
    for start in range(0, n, 1000):
        log.append(events[start:start + 1000])
    history_length = int(read_json(paths.features / "features.json")["history_length"])
    updater = OnlineUpdater(log, OnlineFeatures(repo), WorkflowItemEncoder.load(paths.workflow), history_length,
                            lock_dir=folder)
    start = time.perf_counter()
    applied = updater.drain(limit=1000)
    seconds = time.perf_counter() - start
    log.close()
    counts = updater.counters  # items the Workflow never saw (test-only items) are skipped, not applied
    if applied != n or counts["applied"] + counts["skipped_unknown"] != n or counts["applied"] < 0.9 * n:
        raise RuntimeError(f"processed {applied} of {n} events: {counts}")
    return n / seconds


def stream_bytes_per_event(client: redis.Redis, url: str, n: int) -> float:
    """Redis memory per event of the RedisEventLog (stream entry + idempotency hash), batches of 1000."""
    from recstack.events import RedisEventLog

    before = int(client.info("memory")["used_memory"])
    log = RedisEventLog(url, name="memory-bench")
    for start in range(0, n, 1000):
        log.append([{"event_id": f"ev-{i:08d}-memory", "user": 1_000_000 + i % 5000, "item": 10_000 + i % 3000,
                     "type": "click", "timestamp": 1.8e9 + i} for i in range(start, min(start + 1000, n))])
    log.close()
    return (int(client.info("memory")["used_memory"]) - before) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("."))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--calls", type=int, default=300, help="timed reads per batch size and store")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--events", type=int, default=20000, help="events applied in the apply measurement")
    args = parser.parse_args()

    from recstack.features import build_feature_repo

    paths = RunPaths.for_dataset(args.dataset, home=args.home)
    users_table = pd.read_parquet(paths.features / "user_history.parquet")
    users = users_table["user_key"].to_numpy(np.int64)
    items = pd.read_parquet(paths.features / "item_features.parquet", columns=["item_key"])["item_key"].to_numpy()
    n_users = len(pd.read_parquet(paths.features / "user_features.parquet", columns=["user_key"]))
    recent = users_table["recent_items"].map(len).mean()
    seen = users_table["seen_items"].map(len).mean()
    folder = Path(tempfile.mkdtemp(prefix="online-store-bench-"))
    proc, url = start_redis(folder, appendfsync="everysec")
    try:
        client = redis.Redis.from_url(url)
        before = int(client.info("memory")["used_memory"])
        build_feature_repo(paths.features, folder / "feature_repo", online_store="redis", redis_url=url)
        used = int(client.info("memory")["used_memory"]) - before
        keys = int(client.dbsize())
        print(f"\nRedis memory after materialize: {used / 2**20:.2f} MiB for {n_users} users (features + history, "
              f"mean {recent:.1f} recent / {seen:.1f} seen items) and {len(items)} items in {keys} keys: "
              f"{used / (n_users + len(items)):,.0f} B per entity")
        sizes = key_bytes(client, users_table)
        print(f"MEMORY USAGE per user hash: mean {sizes['user_mean']:.0f} B over {sizes['users']} users "
              f"(mean {sizes['n_mean']:.1f} history ids) = {sizes['user_a']:.0f} B + {sizes['user_b']:.2f} B "
              f"x history ids (least squares); per item hash: mean {sizes['item_mean']:.0f} B")
        print(f"\nusers_with_histories per call ({args.calls} calls, random known users, one thread)")
        print("raw read of both views, p50 ms: one read (serving) / Feast's online_read per view (baseline)")
        print(f"{'store':<8} {'batch':>6} {'p50 ms':>8} {'p95 ms':>8} {'ms/user':>8} {'redis-server CPU us/user':>25} "
              f"{'raw: one read':>14} {'per view':>9} {'ratio':>6}")
        for store, repo in (("sqlite", paths.feature_repo), ("redis", folder / "feature_repo")):
            for batch in (int(b) for b in args.batches.split(",")):
                cpu0 = server_cpu_s(client)
                t = read_times(repo, users, batch, args.calls) * 1e3
                server = (server_cpu_s(client) - cpu0) / ((args.calls + 5) * batch) * 1e6 if store == "redis" else 0
                one, per_view = raw_read_ratio(repo, users, batch, args.calls)
                print(f"{store:<8} {batch:>6} {np.median(t):>8.2f} {np.percentile(t, 95):>8.2f} "
                      f"{np.median(t) / batch:>8.3f} {server:>25.1f} {one:>14.3f} {per_view:>9.3f} "
                      f"{per_view / one:>5.2f}x")
        cpu0 = server_cpu_s(client)
        rate = apply_rate(paths, folder / "feature_repo", users, items, args.events, folder)
        server = (server_cpu_s(client) - cpu0) / args.events * 1e6
        print(f"\nOnlineUpdater -> Redis online store: {args.events} events processed at {rate:,.0f} events/s "
              f"(one thread, batches of 1000); redis-server CPU {server:.1f} us per event")
        per_event = stream_bytes_per_event(client, url, args.events)
        print(f"RedisEventLog: {per_event:.0f} B of Redis memory per logged event ({args.events} events)")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
