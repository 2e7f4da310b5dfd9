"""Partitioned execution: several partitions (pandas slices, Dask, a distributed LocalCluster
started here) give the same statistics and outputs as one partition; per-entity fits; fit
passes; partitioned parquet output; save/load of a Dask-fitted workflow."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recstack.workflows import (
    Categorify,
    DateTimeParts,
    DifferenceLag,
    FillMissing,
    Groupby,
    HashBucket,
    JoinGroupby,
    ListSlice,
    Normalize,
    Rename,
    TargetEncoding,
    Workflow,
)
from recstack.workflows.dask_exec import dask_client, transform_to_parquet
from recstack.workflows.engines import ROW_ID


def interactions(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    genres = np.array(["A", "B", "C", "D"], dtype=object)
    return pd.DataFrame({
        "user_id": rng.integers(0, 120, n), "item_id": (rng.zipf(1.4, n) % 400).astype(np.int64),
        "timestamp": rng.integers(0, 5_000_000, n), "rating": rng.integers(1, 6, n).astype(np.float32),
        "age": np.where(rng.random(n) < 0.1, np.nan, rng.integers(15, 70, n)).astype(np.float32),
        "gender": rng.choice(np.array(["M", "F", None], dtype=object), n),
        "genres": [list(genres[rng.random(4) < 0.4]) for _ in range(n)],
    })


def graph():
    return ((["user_id", "item_id", "gender"] >> Categorify(freq_threshold=2)) + (["genres"] >> Categorify())
            + (["item_id"] >> JoinGroupby(["rating"], ["count", "mean"])) + (["user_id"] >> JoinGroupby())
            + (["timestamp"] >> DifferenceLag("user_id") >> FillMissing(0.0) >> Normalize())
            + (["timestamp"] >> DateTimeParts(["hour", "weekday"]))
            + (["item_id"] >> TargetEncoding("rating", kfold=4)) + (["age"] >> FillMissing() >> Normalize())
            + (["gender"] >> HashBucket(8) >> Rename(postfix="_h")))


def by_row(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.sort_values(ROW_ID).set_index(ROW_ID)
    frame.index.name = None
    return frame


def assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    b = b[list(a.columns)]
    for col in a.columns:
        x, y = a[col], b[col]
        if x.dtype == object:
            assert [list(v) for v in x] == [list(v) for v in y], col
        elif x.dtype.kind == "f":
            np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=2e-6, atol=1e-6, err_msg=col)
        else:
            assert x.tolist() == y.tolist(), col


@pytest.fixture(scope="module")
def data():
    return interactions()


@pytest.fixture(scope="module")
def reference(data):
    wf = Workflow(graph()).fit(data, progress=False)
    return wf, wf.transform(data, training=True), wf.transform(data)


def test_pandas_slices_equal_one_partition(data, reference):
    wf, train_ref, ref = reference
    sliced = Workflow(graph()).fit(data, progress=False, partition_rows=333)
    assert sliced.output_schema == wf.output_schema
    assert_same(ref, sliced.transform(data))
    assert_same(train_ref, sliced.transform(data, training=True))


def test_dask_partitions_equal_one_partition(data, reference, tmp_path):
    wf, train_ref, ref = reference
    ddf = dd.from_pandas(data, npartitions=7)
    with dask.config.set(scheduler="synchronous"):
        multi = Workflow(graph()).fit(ddf, progress=False)
        assert multi.output_schema == wf.output_schema
        assert_same(train_ref, by_row(multi.transform(ddf, training=True).compute()))
        assert_same(ref, by_row(multi.transform(ddf).compute()))
    multi.save(tmp_path / "wf")
    assert_same(ref, Workflow.load(tmp_path / "wf").transform(data))


def test_distributed_local_cluster(data, reference, tmp_path):
    _, train_ref, _ = reference
    data.to_parquet(tmp_path / "in.parquet", row_group_size=500)
    with dask_client(workers=2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        ddf = dd.read_parquet(tmp_path / "in.parquet", split_row_groups=True)
        assert ddf.npartitions > 1
        wf = Workflow(graph()).fit(ddf, progress=False)
        out_dir = transform_to_parquet(wf, ddf, tmp_path / "out", row_group_rows=700, training=True)
    files = sorted(out_dir.glob("*.parquet"))
    assert files and all(pq.ParquetFile(f).metadata.row_group(0).num_rows <= 700 for f in files)
    got = by_row(pd.read_parquet(out_dir))
    assert len(got) == len(data)
    assert_same(train_ref, got)


def test_groupby_histories_over_dask_shuffle(data):
    node = (["user_id", "item_id", "timestamp"] >> Groupby("user_id", ["timestamp"], {"item_id": ["list", "count"]})
            >> ListSlice(-5))
    ref = Workflow(node).fit(data, progress=False).transform(data)
    ddf = dd.from_pandas(data, npartitions=5)
    with dask.config.set(scheduler="synchronous"):
        wf = Workflow(node).fit(ddf, progress=False)
        got = wf.transform(ddf).compute().sort_values("user_id").reset_index(drop=True)
    assert got["user_id"].tolist() == ref["user_id"].tolist()
    assert [list(v) for v in got["item_id_list"]] == [list(v) for v in ref["item_id_list"]]
    assert all(len(v) <= 5 for v in got["item_id_list"])
    # the hand-written reference: each user's items by (timestamp, row order), the last 5
    order = data.assign(_pos=np.arange(len(data))).sort_values(["user_id", "timestamp", "_pos"])
    expected = order.groupby("user_id")["item_id"].apply(lambda s: s.tolist()[-5:])
    assert [list(v) for v in ref["item_id_list"]] == expected.tolist()


def test_fit_per_entity_and_passes():
    # user 1 has 8 interactions, users 2 and 3 one each: per-entity mean age is (10+40+70)/3
    df = pd.DataFrame({"user_id": [1] * 8 + [2, 3], "age": [10.0] * 8 + [40.0, 70.0],
                       "gender": ["M"] * 8 + ["F", "F"]})
    per_user = Workflow((["age"] >> Normalize()).fit_per("user_id") + (["gender"] >> Categorify()).fit_per("user_id"))
    per_user.fit(df, progress=False)
    age = per_user.ops[0].stats["age"]
    assert age["mean"] == pytest.approx(40.0) and per_user.transform_request({"gender": "F"}) == {"gender": 2}
    weighted = Workflow(["age"] >> Normalize()).fit(df, progress=False)
    assert weighted.ops[0].stats["age"]["mean"] == pytest.approx(19.0)
    with dask.config.set(scheduler="synchronous"):
        again = Workflow((["age"] >> Normalize()).fit_per("user_id")).fit(dd.from_pandas(df, npartitions=3), progress=False)
    assert again.ops[0].stats["age"]["mean"] == pytest.approx(40.0)
    # two chained statistics ops need two passes; independent ones share a pass
    wf = Workflow((["a"] >> FillMissing() >> Normalize()) + (["b"] >> Categorify()))
    assert [len(nodes) for _, nodes in wf._passes()] == [2, 1]
