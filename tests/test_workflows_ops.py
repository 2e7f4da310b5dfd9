"""Per-op correctness against hand-computed values, TargetEncoding without leakage, batch ==
single request for every op on generated rows (hypothesis), save/load of every op, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recstack.errors import InputError
from recstack.workflows import (
    AddTags,
    Bucketize,
    Categorify,
    Clip,
    DateTimeParts,
    DifferenceLag,
    FillMissing,
    Filter,
    Groupby,
    HashBucket,
    HashedCross,
    JoinExternal,
    JoinGroupby,
    LambdaOp,
    ListSlice,
    LogOp,
    Normalize,
    NormalizeMinMax,
    Rename,
    Tags,
    TargetEncoding,
    TimeSince,
    Workflow,
)


def fit(node, df, **kw):
    return Workflow(node).fit(df, progress=False, **kw)


def same(a, b) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None or (a is not None and pd.isna(a)) or (b is not None and pd.isna(b))
    if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        fa, fb = float(a), float(b)
        return (math.isnan(fa) and math.isnan(fb)) or np.float32(fa) == np.float32(fb)
    return a == b


def title_length(s: pd.Series) -> pd.Series:
    return s.astype(str).str.len()


def same_values(s: pd.Series) -> pd.Series:
    return s


def high_rating(df: pd.DataFrame) -> np.ndarray:
    return (df["rating"].astype(float) >= 3).to_numpy()


# ----------------------------------------------------------------------------- hand-computed values
def test_categorify_joint_and_combo():
    df = pd.DataFrame({"a": ["x", "y", "x", None], "b": ["y", "y", "z", "x"]})
    joint = fit(["a", "b"] >> Categorify(encode_type="joint"), df)
    # counts over both columns: y 3, x 3, z 1 -> x=2, y=3 (tie by value), z=4
    out = joint.transform(df)
    assert out["a"].tolist() == [2, 3, 2, 0] and out["b"].tolist() == [3, 3, 4, 2]
    assert joint.output_schema["a"].cardinality == joint.output_schema["b"].cardinality == 5
    combo = fit(["a", "b"] >> Categorify(encode_type="combo"), df)
    # pairs: (x,y), (y,y), (x,z), null -> each once: order by value x|y, x|z, y|y
    assert combo.transform(df)["a_b"].tolist() == [2, 4, 3, 0]
    assert combo.transform_request({"a": "x", "b": "z"}) == {"a_b": 3}
    assert combo.transform_request({"a": "q", "b": "z"}) == {"a_b": 1}


def test_hash_bucket_and_cross_are_stable():
    df = pd.DataFrame({"zip": ["10001", "94110", None], "n": [7, 8, 9]})
    wf = fit((["zip"] >> HashBucket(50)) + (["n"] >> HashBucket(50)) + (["zip", "n"] >> HashedCross(13)), df)
    out = wf.transform(df)
    assert out["zip"].iloc[2] == 0 and out["zip_x_n"].iloc[2] == 0
    assert all(2 <= v < 52 for v in out["zip"].iloc[:2]) and all(2 <= v < 15 for v in out["zip_x_n"].iloc[:2])
    assert wf.output_schema["zip"].cardinality == 52 and wf.output_schema["zip_x_n"].cardinality == 15
    # the integer hash is splitmix64: a value computed by hand from its definition
    z = (7 + 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    assert out["n"].iloc[0] == (z ^ (z >> 31)) % 50 + 2
    assert wf.transform_request({"n": "7"})["n"] == out["n"].iloc[0]  # numeric text of an int column


def test_normalize_minmax_clip_log_bucketize():
    df = pd.DataFrame({"x": [2.0, 4.0, 10.0, None]})
    wf = fit((["x"] >> NormalizeMinMax()) + (["x"] >> Clip(3, 5) >> Rename(postfix="_c"))
             + (["x"] >> LogOp() >> Rename(postfix="_l")) + (["x"] >> Bucketize([3, 5]) >> Rename(postfix="_b")), df)
    out = wf.transform(df)
    np.testing.assert_allclose(out["x"].iloc[:3], [0.0, 0.25, 1.0])
    assert math.isnan(out["x"].iloc[3])
    assert out["x_c"].iloc[:3].tolist() == [3.0, 4.0, 5.0]
    np.testing.assert_allclose(out["x_l"].iloc[:3], np.log1p([2.0, 4.0, 10.0]))
    assert out["x_b"].tolist() == [2, 3, 4, 0]
    assert wf.transform_request({"x": 12})["x"] == pytest.approx(1.25)
    assert wf.transform_request({"x": -5})["x_l"] == 0.0
    assert wf.output_schema["x_b"].cardinality == 5 and Tags.CATEGORICAL in wf.output_schema["x_b"].tags


def test_fillmissing_mean_and_median_even_count():
    df = pd.DataFrame({"x": [1.0, 2.0, 4.0, 10.0, None]})
    assert fit(["x"] >> FillMissing(), df).transform_request({"x": None}) == {"x": 3.0}
    assert fit(["x"] >> FillMissing(strategy="mean"), df).transform_request({"x": None}) == {"x": 4.25}


def test_target_encoding_values_and_no_leakage():
    df = pd.DataFrame({"c": ["a", "a", "a", "b", "b", "c"], "y": [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]})
    wf = Workflow(["c"] >> TargetEncoding("y", kfold=3, p_smooth=2))
    train_enc = wf.fit_transform(df, progress=False)["TE_c_y"].to_numpy()
    # serving: all rows. prior 0.5; a: (2 + 2*.5)/(3 + 2) = 0.6; b: (0 + 1)/(2 + 2) = 0.25; c: 2/3
    np.testing.assert_allclose(wf.transform(df)["TE_c_y"], [0.6, 0.6, 0.6, 0.25, 0.25, 2 / 3], rtol=1e-6)
    assert wf.transform_request({"c": "zzz"})["TE_c_y"] == pytest.approx(0.5)
    # out of fold: recompute by hand from the folds the op assigned
    from recstack.workflows.ops.target import folds

    f = folds(np.arange(6), 3, 42)
    for i in range(6):
        rest = df[f != f[i]]
        prior = rest["y"].mean() if len(rest) else 0.0
        mine = rest[rest["c"] == df["c"][i]]["y"]
        assert train_enc[i] == pytest.approx((mine.sum() + 2 * prior) / (len(mine) + 2), rel=1e-6), i
    # no leakage: flipping a row's own label never changes that row's training encoding
    rng = np.random.default_rng(0)
    big = pd.DataFrame({"c": rng.integers(0, 5, 200), "y": rng.integers(0, 2, 200).astype(float)})
    base = Workflow(["c"] >> TargetEncoding("y", kfold=5)).fit_transform(big, progress=False)["TE_c_y"].to_numpy()
    for i in rng.choice(200, 15, replace=False):
        flipped = big.copy()
        flipped.loc[i, "y"] = 1.0 - flipped.loc[i, "y"]
        enc = Workflow(["c"] >> TargetEncoding("y", kfold=5)).fit_transform(flipped, progress=False)["TE_c_y"]
        assert enc.iloc[i] == base[i], i
    # ... while the all-rows encoding (what valid/test/serving get) does see it
    one = pd.DataFrame({"c": ["a", "b"], "y": [1.0, 0.0]})
    solo = Workflow(["c"] >> TargetEncoding("y", kfold=2, p_smooth=0.0))
    assert solo.fit(one, progress=False).transform(one)["TE_c_y"].tolist() == [1.0, 0.0]


def test_joingroupby_per_key_stats():
    df = pd.DataFrame({"item": [1, 1, 2, 1], "rating": [4.0, 2.0, 5.0, None]})
    wf = fit(["item"] >> JoinGroupby(cont_cols=["rating"], stats=["count", "sum", "mean", "min", "max", "std"]), df)
    out = wf.transform(pd.DataFrame({"item": [1, 2, 3, None]}))
    assert out["item_count"].tolist() == [3, 1, 0, 0]
    assert out["item_rating_sum"].tolist()[:2] == [6.0, 5.0] and out["item_rating_mean"].tolist()[:2] == [3.0, 5.0]
    assert out["item_rating_min"].iloc[0] == 2.0 and out["item_rating_max"].iloc[0] == 4.0
    assert out["item_rating_std"].iloc[0] == pytest.approx(1.0)
    assert math.isnan(out["item_rating_mean"].iloc[2])
    assert wf.transform_request({"item": "2"}) == {"item_count": 1, "item_rating_sum": 5.0, "item_rating_mean": 5.0,
                                                   "item_rating_min": 5.0, "item_rating_max": 5.0, "item_rating_std": 0.0}


def test_join_external(tmp_path):
    ext = pd.DataFrame({"item": [1, 2], "brand": ["acme", "zed"], "price": [9.5, 3.0]})
    wf = fit(["item"] >> JoinExternal(ext, on="item", columns=["brand", "price"]), pd.DataFrame({"item": [1]}))
    out = wf.transform(pd.DataFrame({"item": [2, 5]}))
    assert out["brand"].tolist() == ["zed", None] and out["price"].iloc[0] == 3.0 and math.isnan(out["price"].iloc[1])
    wf.save(tmp_path / "wf")
    assert Workflow.load(tmp_path / "wf").transform_request({"item": 1}) == {"brand": "acme", "price": 9.5}


def test_datetime_parts_time_since_and_lag():
    df = pd.DataFrame({"user": [1, 1, 2, 1], "ts": [1_700_000_000, 1_700_000_600, 1_700_000_100, 1_700_003_600],
                       "release": ["2023-11-04", "2023-11-04", "01-Jan-2000", None]})
    wf = fit((["ts"] >> DateTimeParts(["year", "hour", "weekday"])) + (["ts"] >> TimeSince("release"))
             + (["ts"] >> DifferenceLag("user")), df)
    out = wf.transform(df)
    assert out["ts_year"].iloc[0] == 2023 and out["ts_hour"].iloc[0] == 22 and out["ts_weekday"].iloc[0] == 1
    assert out["release_age_days"].iloc[0] == pytest.approx((1_700_000_000 - 1_699_056_000) / 86400)
    assert math.isnan(out["release_age_days"].iloc[3])
    assert out["ts_difference_lag"].iloc[[1, 3]].tolist() == [600.0, 3000.0]
    assert out["ts_difference_lag"].iloc[[0, 2]].isna().all()
    # one request / a later batch: time since the user's last training interaction
    assert wf.transform_request({"user": 1, "ts": 1_700_004_000, "release": None})["ts_difference_lag"] == 400.0
    later = wf.transform(pd.DataFrame({"user": [1, 1, 9], "ts": [1_700_004_000, 1_700_004_100, 5], "release": None}))
    assert later["ts_difference_lag"].iloc[:2].tolist() == [400.0, 100.0] and math.isnan(later["ts_difference_lag"].iloc[2])
    with pytest.raises(InputError, match="TimeSince.*release"):
        wf.transform_request({"user": 1, "ts": 5, "release": "not a date"})


def test_groupby_listslice_histories():
    df = pd.DataFrame({"user": [2, 1, 1, 2, 1], "item": [20, 11, 10, 21, 12], "ts": [5, 3, 1, 5, 9]})
    wf = fit(["user", "item", "ts"] >> Groupby("user", ["ts"], {"item": ["list", "count"], "ts": ["last"]}), df)
    out = wf.transform(df)
    assert out["user"].tolist() == [1, 2]
    assert [list(x) for x in out["item_list"]] == [[10, 11, 12], [20, 21]]  # ties by row order
    assert out["item_count"].tolist() == [3, 2] and out["ts_last"].tolist() == [9, 5]
    last2 = fit(["item_list"] >> ListSlice(-2), out)
    assert [list(x) for x in last2.transform(out)["item_list"]] == [[11, 12], [20, 21]]
    assert last2.transform_request({"item_list": [1, 2, 3]}) == {"item_list": [2, 3]}
    objects = pd.DataFrame({"l": [[1, 2, 3], [], None, [4]]})
    assert fit(["l"] >> ListSlice(0, 2), objects).transform(objects)["l"].tolist() == [[1, 2], [], [], [4]]
    with pytest.raises(ValueError, match="Groupby"):
        Workflow((["user", "item", "ts"] >> Groupby("user", ["ts"], {"item": ["list"]})) + ["ts"])


def test_filter_lambda_rename_and_tag_selection(tmp_path):
    df = pd.DataFrame({"rating": [5.0, 1.0, 4.0], "title": ["ab", "abcd", "a"], "age": [10.0, 20.0, 30.0]})
    cont = (["age"] >> AddTags(Tags.CONTINUOUS, Tags.USER)) + (["title"] >> LambdaOp(title_length, dtype="float32"))
    wf = fit((["rating"] >> Filter(high_rating)) + cont.select_by_tag(Tags.CONTINUOUS) >> Normalize(), df)
    out = wf.transform(df)
    assert list(out.columns) == ["rating", "age"] and out.index.tolist() == [0, 2]  # row 1 filtered everywhere
    assert wf.transform_request({"rating": 1.0, "age": 3}) is None
    lam = fit(["title"] >> LambdaOp(title_length, dtype="float32", tags=["continuous"]) >> Rename({"title": "len"}), df)
    assert lam.transform(df)["len"].tolist() == [2.0, 4.0, 1.0] and lam.output_schema["len"].dtype == "float32"
    assert lam.transform_request({"title": "xyz"}) == {"len": 3.0}
    lam.save(tmp_path / "lam")
    assert Workflow.load(tmp_path / "lam").transform_request({"title": "xyzw"}) == {"len": 4.0}
    with pytest.raises(ValueError, match="lambda"):
        LambdaOp(lambda s: s, dtype="int64")


def test_transform_never_changes_or_aliases_the_input():
    # ops read the input columns without copying them: FillMissing must not fill the caller's
    # NaNs in place, and a passed-through column (AddTags) must not be the caller's array
    df = pd.DataFrame({"age": [10.0, np.nan, 30.0, np.nan], "rating": [1.0, 2.0, 3.0, 4.0],
                       "user_id": [1, 2, 1, 3]})
    before = df.copy()
    wf = fit((["age"] >> FillMissing(fill_value=-1.0)) + (["rating"] >> AddTags(Tags.TARGET))
             + (["user_id"] >> Categorify()) + (["rating"] >> LambdaOp(same_values, dtype="float64")
                                               >> Rename(postfix="_same")), df)
    out = wf.transform(df)
    assert out["age"].tolist() == [10.0, -1.0, 30.0, -1.0] and out["rating_same"].tolist() == df["rating"].tolist()
    pd.testing.assert_frame_equal(df, before)
    out["rating"] *= 10
    out["rating_same"] *= 10
    out.loc[0, "age"] = 99.0
    pd.testing.assert_frame_equal(df, before)
    trained = wf.fit_transform(df, progress=False)  # the fit-memo path
    trained["rating"] += 1
    trained["rating_same"] += 1
    pd.testing.assert_frame_equal(df, before)
    for node in (["age"] >> FillMissing(fill_value=-1.0), ["rating"] >> AddTags(Tags.TARGET),
                 ["rating"] >> LambdaOp(same_values, dtype="float64")):  # one op: no join that copies
        alone = fit(node, df).transform(df)
        alone.iloc[:, 0] = 0.0
        pd.testing.assert_frame_equal(df, before)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_names_op_and_column(tmp_path):
    df = pd.DataFrame({"user": [1, 2], "ts": [1, 2], "g": ["a", "b"], "l": [[1], [2]]})
    with pytest.raises(InputError, match="Normalize.*'nope'"):
        fit(["nope"] >> Normalize(), df)
    with pytest.raises(InputError, match="TargetEncoding.*'label'"):
        fit(["g"] >> TargetEncoding("label"), df)
    with pytest.raises(InputError, match="Normalize: column 'g'"):
        fit(["g"] >> Normalize(), df)
    with pytest.raises(InputError, match="Normalize: column 'l'.*lists"):
        fit(["l"] >> Normalize(), df)
    wf = fit((["ts"] >> DifferenceLag("user")) + (["user", "g"] >> HashedCross(5)), df)
    # partial requests get what their columns allow; complete=True names what is missing
    assert wf.transform_request({"ts": 3}) == {} and list(wf.transform(pd.DataFrame({"user": [1]})).columns) == []
    with pytest.raises(InputError, match="DifferenceLag: column 'user' is missing"):
        wf.transform_request({"ts": 3, "g": "a"}, complete=True)
    with pytest.raises(InputError, match="HashedCross: column 'g' is missing"):
        wf.check_request({"ts": 3, "user": 1})
    assert wf.transform(pd.DataFrame({"g": ["zzz"]})).empty  # nothing computable, no error
    cat = fit(["g"] >> Categorify(), df)
    assert cat.transform_request({"g": "never seen"}) == {"g": 1}
    cat.save(tmp_path / "wf")
    doc = json.loads((tmp_path / "wf" / "workflow.json").read_text())
    doc["version"] = 1
    (tmp_path / "wf" / "workflow.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="format version 1.*version 2"):
        Workflow.load(tmp_path / "wf")


# ----------------------------------------------------------------------------- batch == request
CATS = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "dd", "é"]))
ROW = st.fixed_dictionaries({
    "user": st.one_of(st.none(), st.integers(0, 6)),
    "item": st.integers(0, 30),
    "cat": CATS,
    "x": st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False), st.integers(-100, 100)),
    "ts": st.integers(1_600_000_000, 1_700_000_000),
    "genres": st.lists(st.sampled_from(["A", "B", "C", "D"]), max_size=4),
    "y": st.sampled_from([0.0, 1.0]),
})


def all_ops_workflow(train: pd.DataFrame) -> Workflow:
    graph = ((["user", "item"] >> Categorify(freq_threshold=2)) + (["cat"] >> Categorify(max_size=3))
             + (["genres"] >> Categorify() >> ListSlice(-2))
             + (["cat", "user"] >> Categorify(encode_type="combo"))
             + (["cat"] >> HashBucket(17) >> Rename(postfix="_h")) + (["cat", "item"] >> HashedCross(11))
             + (["x"] >> FillMissing() >> Normalize()) + (["x"] >> NormalizeMinMax() >> Rename(postfix="_mm"))
             + (["x"] >> Clip(-5, 5) >> LogOp() >> Rename(postfix="_log"))
             + (["x"] >> Bucketize([-1, 0, 1]) >> Rename(postfix="_b"))
             + (["item"] >> TargetEncoding("y", kfold=3)) + (["item"] >> JoinGroupby(["x"], ["count", "mean"]))
             + (["ts"] >> DateTimeParts(["hour", "weekday", "month"])) + (["ts"] >> DifferenceLag("user"))
             + (["cat"] >> LambdaOp(title_length, dtype="int64") >> Rename(postfix="_len")))
    return Workflow(graph).fit(train, progress=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(train=st.lists(ROW, min_size=1, max_size=25), requests=st.lists(ROW, min_size=1, max_size=6))
def test_every_op_batch_equals_single_request(train, requests):
    wf = all_ops_workflow(pd.DataFrame(train))
    for row in requests:
        batch = wf.transform(pd.DataFrame([row])).iloc[0]
        got = wf.transform_request(row)
        assert list(got) == list(batch.index)
        for name, value in got.items():
            assert same(value, batch[name]), (name, row, value, batch[name])
    # row-local ops: row i of a many-row batch equals request i
    frame = pd.DataFrame(requests)
    many = wf.transform(frame)
    for i, row in enumerate(requests):
        got = wf.transform_request(row)
        for name in got:
            if name != "ts_difference_lag":
                assert same(got[name], many[name].iloc[i]), (name, row)


@settings(max_examples=20, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9), st.integers(0, 5)), min_size=1, max_size=30))
def test_groupby_request_equals_batch_group(rows):
    df = pd.DataFrame(rows, columns=["user", "item", "ts"])
    wf = fit(["user", "item", "ts"] >> Groupby("user", ["ts"], {"item": ["list", "count", "first", "last", "mean"]}), df)
    out = wf.transform(df)
    for i, user in enumerate(out["user"]):
        mine = df[df["user"] == user]
        got = wf.transform_request({c: mine[c].tolist() for c in df.columns})
        for name, value in got.items():
            assert same(value, out[name].iloc[i]), name


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.integers(-5, 1000), min_size=1, max_size=200, unique=True),
       values=st.lists(st.integers(-2**40, 2**40) | st.integers(-10, 1010), max_size=300))
def test_key_index_dense_table_equals_hash_lookup(keys, values):
    """Compact non-negative int keys take the lookup-table path; any int values (negative,
    beyond the largest key, huge) get the same positions as the pd.Index lookup."""
    from recstack.workflows.keys import KeyIndex

    karr = np.asarray(keys, dtype=np.int64)
    vals = np.asarray(values, dtype=np.int64)
    index = KeyIndex("int", karr)
    expected = pd.Index(karr).get_indexer(vals)
    np.testing.assert_array_equal(index.positions(vals, "c"), expected)
    assert (index._table is not None) == (karr.min() >= 0)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers(0, 5000) | st.integers(-2**62, 2**62), min_size=1, max_size=400))
def test_count_keys_equals_value_counts(values):
    from recstack.workflows.keys import count_keys

    arr = np.asarray(values, dtype=np.int64)
    keys, counts = count_keys("int", arr)
    got = dict(zip(keys.tolist(), counts.tolist()))
    assert got == pd.Series(arr).value_counts().to_dict()
