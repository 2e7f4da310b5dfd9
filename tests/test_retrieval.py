"""recstack.retrieval: FAISS flat/HNSW index build, search with exclusions, add, save/load, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recstack.cli import main as cli_main
from recstack.errors import InputError
from recstack.paths import RunPaths
from recstack.retrieval import ItemIndex, build_index

D = 16


def _data(n=500, b=20, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, D)).astype(np.float32)
    ids = np.arange(2, n + 2, dtype=np.int64)
    q = rng.standard_normal((b, D)).astype(np.float32)
    return emb, ids, q


def _brute(emb, ids, q, k):
    scores = q @ emb.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def test_flat_equals_brute_force(tmp_path):
    emb, ids, q = _data()
    meta = build_index(emb, ids, kind="flat", out_dir=tmp_path / "index")
    assert meta["kind"] == "flat" and meta["metric"] == "inner_product"
    assert meta["dimension"] == D and meta["count"] == len(ids)
    index = ItemIndex.load(tmp_path / "index")
    got_ids, got_scores = index.search(q, 10)
    want_ids, want_scores = _brute(emb, ids, q, 10)
    assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32
    assert got_ids.shape == (len(q), 10)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_ids, want_ids)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_exclusion(tmp_path, kind):
    emb, ids, q = _data()
    build_index(emb, ids, kind=kind, out_dir=tmp_path / "index")
    index = ItemIndex.load(tmp_path / "index")
    top, _ = index.search(q, 20)
    exclude = [top[b, : 3 + b] for b in range(len(q))]  # the best ones, varying lengths
    got, scores = index.search(q, 10, exclude=exclude)
    for b in range(len(q)):
        assert not np.isin(got[b], exclude[b]).any()
        assert (got[b] >= 0).all() and np.all(np.diff(scores[b]) <= 1e-6)
    if kind == "flat":
        want_ids, _ = _brute(emb, ids, q, 40)
        for b in range(len(q)):
            expected = [i for i in want_ids[b] if i not in set(exclude[b].tolist())][:10]
            np.testing.assert_array_equal(got[b], expected)


def test_padding_when_too_few_remain(tmp_path):
    emb, ids, q = _data(n=5, b=2)
    build_index(emb, ids, kind="flat", out_dir=tmp_path / "index")
    index = ItemIndex.load(tmp_path / "index")
    got, scores = index.search(q, 4, exclude=[ids[:3], np.array([], dtype=np.int64)])
    assert sorted(got[0, :2].tolist()) == sorted(ids[3:].tolist())
    assert got[0, 2:].tolist() == [-1, -1] and np.isneginf(scores[0, 2:]).all()
    got, scores = index.search(q, 8)
    assert (got[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert (got[:, :5] >= 0).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_add_and_round_trip(tmp_path, kind):
    emb, ids, q = _data(n=300)
    build_index(emb[:200], ids[:200], kind=kind, out_dir=tmp_path / "index")
    index = ItemIndex.load(tmp_path / "index")
    assert len(index) == 200
    index.add(emb[200:], ids[200:])
    assert len(index) == 300 and int(ids[250]) in index
    # a new item equal to a query is that query's best match
    new = q[:1] * 10
    index.add(new, np.array([10_000]))
    got, _ = index.search(q[:1], 1)
    assert got[0, 0] == 10_000
    with pytest.raises(InputError, match="already in the index"):
        index.add(emb[:1], ids[:1])
    index.save(tmp_path / "index")
    again = ItemIndex.load(tmp_path / "index")
    assert len(again) == 301 and again.kind == kind
    assert json.loads((tmp_path / "index" / "index.json").read_text())["count"] == 301
    a_ids, a_scores = index.search(q, 10)
    b_ids, b_scores = again.search(q, 10)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_allclose(a_scores, b_scores)


def test_hnsw_recall_vs_flat(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((5000, 32)).astype(np.float32)
    ids = np.arange(2, 5002, dtype=np.int64)
    q = rng.standard_normal((200, 32)).astype(np.float32)
    build_index(emb, ids, kind="flat", out_dir=tmp_path / "flat")
    build_index(emb, ids, kind="hnsw", out_dir=tmp_path / "hnsw")
    flat_ids, _ = ItemIndex.load(tmp_path / "flat").search(q, 10)
    hnsw_ids, _ = ItemIndex.load(tmp_path / "hnsw").search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(flat_ids.tolist(), hnsw_ids.tolist())])
    print(f"HNSW recall@10 vs flat: {recall:.3f}")
    assert recall >= 0.9


def test_bad_input(tmp_path):
    emb, ids, q = _data(n=50)
    build_index(emb, ids, kind="flat", out_dir=tmp_path / "index")
    index = ItemIndex.load(tmp_path / "index")
    with pytest.raises(InputError, match="k:"):
        index.search(q, 0)
    with pytest.raises(InputError, match="k:"):
        index.search(q, -3)
    with pytest.raises(InputError, match="dimension"):
        index.search(q[:, :5], 5)
    with pytest.raises(InputError, match="dimension"):
        index.add(emb[:2, :5], np.array([900, 901]))
    with pytest.raises(InputError, match="exclude"):
        index.search(q, 5, exclude=[np.array([2])])
    with pytest.raises(InputError, match="kind"):
        build_index(emb, ids, kind="bogus", out_dir=tmp_path / "other")
    with pytest.raises(InputError, match="duplicate"):
        build_index(emb[:2], np.array([3, 3]), out_dir=tmp_path / "other")
    with pytest.raises(InputError, match="not found|no items.faiss"):
        ItemIndex.load(tmp_path / "missing")
    # the failed builds left the existing index alone
    assert len(ItemIndex.load(tmp_path / "index")) == 50


def test_cli_index_build(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    paths = RunPaths.for_dataset("toy")
    assert cli_main(["index", "build", "--dataset", "toy"]) == 2
    assert "item_embeddings.npy" in capsys.readouterr().err
    emb, _, q = _data(n=40)
    (paths.models / "two_tower").mkdir(parents=True)
    np.save(paths.models / "two_tower" / "item_embeddings.npy", emb)
    assert cli_main(["index", "build", "--dataset", "toy", "--kind", "hnsw"]) == 0
    index = ItemIndex.load(paths.index)
    assert len(index) == 38 and index.kind == "hnsw"
    assert sorted(index.ids.tolist()) == list(range(2, 40))
