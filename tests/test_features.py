"""recstack.features against a real Feast 0.67 repo with its SQLite online store (no mocks)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recstack.cli import main as cli_main
from recstack.errors import InputError
from recstack.features import OnlineFeatures, build_feature_repo, open_store, push_interaction, push_interactions
from recstack.paths import RunPaths

N_USERS, N_ITEMS, HISTORY = 30, 40, 5
TS = pd.Timestamp("1998-04-22 23:10:38", tz="UTC")


def write_feature_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Small section-2 feature tables (encoded values, raw ids as keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    user_keys = np.arange(1, N_USERS + 1, dtype=np.int64) * 3  # raw ids are not encoded ids
    item_keys = np.arange(1, N_ITEMS + 1, dtype=np.int64) * 7
    ts = pa.array([TS] * N_USERS, pa.timestamp("us", tz="UTC"))
    users = pa.table(
        {
            "user_key": user_keys,
            "event_timestamp": ts,
            "user_id": pa.array(np.arange(2, N_USERS + 2), pa.int64()),
            "gender": pa.array(rng.integers(2, 4, N_USERS), pa.int64()),
            "occupation": pa.array(rng.integers(2, 20, N_USERS), pa.int64()),
            "age": pa.array(rng.random(N_USERS), pa.float32()),
        }
    )
    genres = [rng.choice(np.arange(2, 12), size=i % 4, replace=False).tolist() for i in range(N_ITEMS)]
    items = pa.table(
        {
            "item_key": item_keys,
            "event_timestamp": pa.array([TS] * N_ITEMS, pa.timestamp("us", tz="UTC")),
            "item_id": pa.array(np.arange(2, N_ITEMS + 2), pa.int64()),
            "genres": pa.array(genres, pa.list_(pa.int64())),
            "year": pa.array(rng.random(N_ITEMS), pa.float32()),
        }
    )
    seen = [rng.choice(np.arange(2, N_ITEMS + 2), size=i % 9, replace=False).tolist() for i in range(N_USERS)]
    history = pa.table(
        {
            "user_key": user_keys,
            "event_timestamp": ts,
            "recent_items": pa.array([s[-HISTORY:] for s in seen], pa.list_(pa.int64())),
            "seen_items": pa.array(seen, pa.list_(pa.int64())),
        }
    )
    out = {}
    for name, table in (("user_features", users), ("item_features", items), ("user_history", history)):
        pq.write_table(table, folder / f"{name}.parquet")
        out[name] = table.to_pandas()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast")
    tables = write_feature_tables(root / "features")
    info = build_feature_repo(root / "features", root / "repo")
    print(f"\nbuild: apply {info['apply_s']:.3f} s, materialize {info['materialize_s']:.3f} s, total {info['total_s']:.3f} s")
    return root, tables, info


def _timed(fn, *args, n=100):
    fn(*args)
    t0 = time.perf_counter()
    for _ in range(n):
        fn(*args)
    return (time.perf_counter() - t0) / n * 1e3


def test_repo_layout(built):
    root, _, info = built
    repo = root / "repo"
    for name in ("feature_store.yaml", "definitions.py", "registry.db", "online_store.db", "build.json"):
        assert (repo / name).is_file(), name
    for name in ("user_features", "item_features", "user_history"):
        assert (repo / "data" / f"{name}.parquet").is_file()
    yaml = (repo / "feature_store.yaml").read_text()
    assert "project: recstack" in yaml and "type: sqlite" in yaml and "online_store.db" in yaml
    assert info["views"]["item_features"]["fields"] == [["item_id", "Int64"], ["genres", "Array(Int64)"], ["year", "Float32"]]
    store = open_store(repo)
    assert {e.name for e in store.list_entities()} == {"user", "item"}
    assert {fv.name for fv in store.list_feature_views()} == {"user_features", "item_features", "user_history"}
    assert store.get_data_source("user_history_push").batch_source.name == "user_history_source"


def test_users_items_match_parquet(built):
    root, tables, _ = built
    online = OnlineFeatures(root / "repo")
    users = tables["user_features"]
    keys = users["user_key"].to_numpy()
    cols, known = online.users(keys)
    assert list(cols) == ["user_id", "gender", "occupation", "age"]  # feature-view order
    assert known.all()
    for c in ("user_id", "gender", "occupation"):
        assert cols[c].dtype == np.int64
        np.testing.assert_array_equal(cols[c], users[c].to_numpy())
    assert cols["age"].dtype == np.float32
    np.testing.assert_array_equal(cols["age"], users["age"].to_numpy())

    items = tables["item_features"]
    cols, known = online.items(items["item_key"].to_numpy()[::-1])
    assert list(cols) == ["item_id", "genres", "year"] and known.all()
    np.testing.assert_array_equal(cols["item_id"], items["item_id"].to_numpy()[::-1])
    np.testing.assert_array_equal(cols["year"], items["year"].to_numpy()[::-1])
    for got, want in zip(cols["genres"], items["genres"].to_list()[::-1]):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, np.asarray(want, dtype=np.int64))

    t_users = _timed(online.users, keys[:1])
    t_users32 = _timed(online.users, keys[:32])
    t_items = _timed(online.items, items["item_key"].to_numpy()[:32])
    t_hist = _timed(online.histories, keys[:1])
    print(f"\nlookup latency: users(1) {t_users:.3f} ms, users(32) {t_users32:.3f} ms, "
          f"items(32) {t_items:.3f} ms, histories(1) {t_hist:.3f} ms")


def test_histories_and_unknown(built):
    root, tables, _ = built
    online = OnlineFeatures(root / "repo")
    hist = tables["user_history"]
    keys = np.concatenate([hist["user_key"].to_numpy()[:10], [1, 2]])  # 1, 2 are not user keys (3, 6, ...)
    recent, seen, known = online.histories(keys)
    assert known.tolist() == [True] * 10 + [False, False]
    for i in range(10):
        np.testing.assert_array_equal(recent[i], np.asarray(hist["recent_items"][i], dtype=np.int64))
        np.testing.assert_array_equal(seen[i], np.asarray(hist["seen_items"][i], dtype=np.int64))
    assert recent[10].size == 0 and seen[11].size == 0 and recent[10].dtype == np.int64
    cols, known = online.users(np.array([3, 4], dtype=np.int64))
    assert known.tolist() == [True, False]
    assert cols["user_id"][1] == 0 and cols["age"][1] == 0.0
    cols, known = online.items(np.array([1], dtype=np.int64))
    assert not known[0] and cols["genres"][0].size == 0 and cols["item_id"][0] == 0
    cols, known = online.users(np.zeros(0, dtype=np.int64))
    assert known.shape == (0,) and cols["user_id"].shape == (0,)
    with pytest.raises(InputError, match="user_keys"):
        online.users(np.array([1.5]))


def test_push_then_lookup(built):
    root, tables, _ = built
    repo = root / "repo"
    online = OnlineFeatures(repo)
    hist = tables["user_history"]
    user = int(hist["user_key"][8])  # 8 seen items, recent = last 5
    before_recent = list(hist["recent_items"][8])
    before_seen = list(hist["seen_items"][8])
    t0 = time.perf_counter()
    push_interaction(online, user, 999, 1_000_000_000, HISTORY)
    t_push = (time.perf_counter() - t0) * 1e3
    recent, seen, known = online.histories([user])
    assert known[0]
    assert recent[0].tolist() == (before_recent + [999])[-HISTORY:]
    assert seen[0].tolist() == before_seen + [999]
    # a repeated item: seen keeps one copy, recent moves it to the end
    push_interaction(online, user, int(before_recent[-2]), 1_000_000_001, HISTORY)
    recent, seen, _ = online.histories([user])
    assert recent[0][-1] == before_recent[-2] and len(set(recent[0].tolist())) == len(recent[0])
    assert seen[0].tolist() == before_seen + [999]

    # a user the store has never seen, pushed with an old timestamp and a repo path
    push_interaction(repo, 12345, 7, 0, HISTORY)
    push_interaction(repo, 12345, 8, None, HISTORY)
    recent, seen, known = online.histories([12345])
    assert known[0] and recent[0].tolist() == [7, 8] and seen[0].tolist() == [7, 8]

    # batch variant: one read and one push, applied in order
    written = push_interactions(online, [12345, 54321, 12345], [9, 10, 11], [5, 6, 7], HISTORY)
    assert written[12345] == ([7, 8, 9, 11], [7, 8, 9, 11]) and written[54321] == ([10], [10])
    recent, seen, known = online.histories([12345, 54321])
    assert recent[0].tolist() == [7, 8, 9, 11] and recent[1].tolist() == [10]

    n = 20
    t0 = time.perf_counter()
    for i in range(n):
        push_interaction(online, 54321, 100 + i, None, HISTORY)
    t_push_avg = (time.perf_counter() - t0) / n * 1e3
    recent, seen, _ = online.histories([54321])
    assert recent[0].tolist() == list(range(115, 120)) and seen[0].size == 21
    print(f"\npush latency: first {t_push:.2f} ms, mean of {n} {t_push_avg:.2f} ms")

    # a fresh FeatureStore and another process (as a server would) see the pushed values
    recent, _, _ = OnlineFeatures(repo).histories([54321, 12345])
    assert recent[0].tolist() == list(range(115, 120)) and recent[1].tolist() == [7, 8, 9, 11]
    code = (
        "import sys; from recstack.features import OnlineFeatures;"
        "r, s, k = OnlineFeatures(sys.argv[1]).histories([54321]); print(r[0].tolist(), k.tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == f"{list(range(115, 120))} [True]"

    with pytest.raises(InputError, match="item_id"):
        push_interaction(online, user, 0, None, HISTORY)
    with pytest.raises(InputError, match="history_length"):
        push_interaction(online, user, 5, None, 0)
    with pytest.raises(InputError, match="timestamp"):
        push_interaction(online, user, 5, "not a time", HISTORY)


def test_failed_build_keeps_previous_repo(built, tmp_path):
    root, tables, _ = built
    features = tmp_path / "features"
    write_feature_tables(features)
    repo = tmp_path / "repo"
    build_feature_repo(features, repo)
    before = sorted(p.name for p in repo.iterdir())

    (features / "item_features.parquet").unlink()
    with pytest.raises(InputError, match="item_features.parquet"):
        build_feature_repo(features, repo)
    # a parquet file that lacks the entity key: fails schema checks
    pq.write_table(pa.table({"x": [1]}), features / "item_features.parquet")
    with pytest.raises(InputError, match="item_key"):
        build_feature_repo(features, repo)
    assert sorted(p.name for p in repo.iterdir()) == before
    assert not list(tmp_path.glob(".repo.*"))
    recent, seen, known = OnlineFeatures(repo).histories(tables["user_history"]["user_key"].to_numpy()[:3])
    assert known.all()
    with pytest.raises(InputError, match="online_store"):
        build_feature_repo(root / "features", repo, online_store="cassandra")


def test_cli_build_and_get(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    paths = RunPaths.for_dataset("toy")
    assert cli_main(["features", "build", "--dataset", "toy"]) == 2
    assert "does not exist" in capsys.readouterr().err
    tables = write_feature_tables(paths.features)
    assert cli_main(["features", "build", "--dataset", "toy"]) == 0
    assert "materialize" in capsys.readouterr().out
    assert cli_main(["features", "get", "--dataset", "toy", "--user", "6"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["user_key"] == 6 and got["features"]["user_id"] == int(tables["user_features"]["user_id"][1])
    assert got["seen_items"] == list(tables["user_history"]["seen_items"][1])
    assert "recent_times" not in got  # a repository built without them
    assert cli_main(["features", "get", "--dataset", "toy", "--user", "1"]) == 2
    assert capsys.readouterr().err.strip() == "recstack: error: user 1 is not in the online store"


def test_seen_items_are_bounded(built):
    """A user's stored seen list keeps the newest SEEN_LIMIT distinct items (first-interaction order)."""
    from recstack.ids import SEEN_LIMIT

    root, _, _ = built
    online = OnlineFeatures(root / "repo")
    user, extra = 77_777, 7
    items = list(range(2, SEEN_LIMIT + extra + 2))
    push_interactions(online, [user] * len(items), items, [1e9 + n for n in range(len(items))], HISTORY)
    push_interactions(online, [user], [items[-1]], [2e9], HISTORY)  # a repeat changes nothing
    _, seen, _ = online.histories([user])
    assert seen[0].tolist() == items[extra:]


def test_pushed_events_update_recent_times_with_recent_items(tmp_path):
    """A repo whose user_history has recent_times (what `recstack workflow fit` writes): a pushed event
    appends its unix seconds next to its item, a repeated item moves with its new time, and both lists
    keep the last HISTORY; a repo without the column keeps working (times read as empty)."""
    tables = write_feature_tables(tmp_path / "features")
    hist = tables["user_history"]
    times = [[1_000 + 10 * k for k in range(len(r))] for r in hist["recent_items"]]
    table = pq.read_table(tmp_path / "features" / "user_history.parquet")
    table = table.append_column("recent_times", pa.array(times, pa.list_(pa.int64())))
    pq.write_table(table, tmp_path / "features" / "user_history.parquet")
    build_feature_repo(tmp_path / "features", tmp_path / "repo")
    online = OnlineFeatures(tmp_path / "repo")
    assert online.has_history_times
    user = int(hist["user_key"][8])  # 5 recent items
    before = list(hist["recent_items"][8])
    recent, got_times, known = online.history_times([user])
    assert known[0] and recent[0].tolist() == before and got_times[0].tolist() == times[8]

    push_interaction(online, user, 999, 1_000_000_000, HISTORY)
    recent, got_times, _ = online.history_times([user])
    assert recent[0].tolist() == (before + [999])[-HISTORY:]
    assert got_times[0].tolist() == (times[8] + [1_000_000_000])[-HISTORY:]
    moved = int(before[-2])  # a repeated item: to the end, with the new event's time
    push_interaction(online, user, moved, 1_000_000_050.7, HISTORY)
    recent, got_times, _ = online.history_times([user])
    keep = [i for i in range(len(before)) if before[i] != moved][-(HISTORY - 2):]
    assert recent[0].tolist() == [before[i] for i in keep] + [999, moved]
    assert got_times[0].tolist() == [times[8][i] for i in keep] + [1_000_000_000, 1_000_000_050]
    # a new user, a batch: one time per item, in order
    push_interactions(online, [777, 777], [5, 6], [2_000, 2_060], HISTORY)
    _, _, recent, got_times, _, known = online.users_with_histories([777])
    assert known[0] and recent[0].tolist() == [5, 6] and got_times[0].tolist() == [2_000, 2_060]


def test_repo_without_recent_times_reads_empty_times(built):
    root, tables, _ = built
    online = OnlineFeatures(root / "repo")
    assert not online.has_history_times
    keys = tables["user_history"]["user_key"].to_numpy()[:3]
    recent, times, known = online.history_times(keys)
    assert known.all() and all(t.size == 0 for t in times) and any(r.size for r in recent)
