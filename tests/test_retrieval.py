"""recstack.retrieval: FAISS flat / HNSW / IVF-Flat / IVF-PQ build, search with exclusions, add,
save/load with search parameters, exact search on PyTorch, the recall/latency sweep, CLI, bad input."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from recstack.cli import main as cli_main
from recstack.errors import InputError
from recstack.paths import RunPaths
from recstack.retrieval import ExactSearch, ItemIndex, build_index, exact_search
from recstack.retrieval.arrays import select_top
from recstack.retrieval.sweep import build_grid, choose, clustered_vectors, recall_at_k, sweep

D = 16
KINDS = ["flat", "hnsw", "ivf_flat", "ivf_pq"]
# small-data parameters per kind (IVF-PQ: 8 sub-quantizers of 4 bits, exact re-rank of 8k candidates)
PARAMS = {"flat": {}, "hnsw": {"hnsw_m": 16}, "ivf_flat": {"nlist": 8, "nprobe": 8},
          "ivf_pq": {"nlist": 8, "nprobe": 8, "pq_m": 8, "pq_nbits": 4, "refine_factor": 8}}


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


def _clustered(n=4000, dim=32, b=100):
    x = clustered_vectors(n, dim, clusters=40, seed=0)
    q = clustered_vectors(b, dim, clusters=40, seed=1)
    return x, np.arange(2, n + 2, dtype=np.int64), q


def test_flat_equals_brute_force(tmp_path):
    emb, ids, q = _data()
    meta = build_index(emb, ids, kind="flat", out_dir=tmp_path / "index")
    assert meta["kind"] == "flat" and meta["metric"] == "inner_product" and meta["factory"] == "IDMap2,Flat"
    assert meta["dimension"] == D and meta["count"] == len(ids)
    index = ItemIndex.load(tmp_path / "index")
    got_ids, got_scores = index.search(q, 10)
    want_ids, want_scores = _brute(emb, ids, q, 10)
    assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32
    assert got_ids.shape == (len(q), 10)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_ids, want_ids)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_builds_searches_saves_loads(tmp_path, kind):
    emb, ids, q = _data(n=600)
    meta = build_index(emb, ids, kind=kind, out_dir=tmp_path / "index", **PARAMS[kind])
    saved = json.loads((tmp_path / "index" / "index.json").read_text())
    assert saved["kind"] == kind and saved["count"] == 600 and saved["factory"] == meta["factory"]
    for name, value in PARAMS[kind].items():
        assert saved[name] == value
    built = ItemIndex.build(emb, ids, kind, **PARAMS[kind])
    loaded = ItemIndex.load(tmp_path / "index")
    assert loaded.kind == kind and len(loaded) == 600 and loaded.config == built.config
    a_ids, a_scores = built.search(q, 10)
    b_ids, b_scores = loaded.search(q, 10)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_allclose(a_scores, b_scores, rtol=1e-6)
    want, _ = _brute(emb, ids, q, 10)
    assert recall_at_k(b_ids, want) >= 0.9  # every kind with its widest search here is close to exact
    if kind in ("flat", "ivf_flat") or (kind == "ivf_pq" and PARAMS[kind]["refine_factor"]):
        # exact vectors scored exactly: the returned scores are true inner products
        np.testing.assert_allclose(b_scores, np.take_along_axis(q @ emb.T, b_ids - 2, axis=1), rtol=1e-4, atol=1e-4)


def test_search_parameters_at_load_and_per_call(tmp_path):
    x, ids, q = _clustered()
    build_index(x, ids, kind="ivf_flat", out_dir=tmp_path / "ivf", nlist=64, nprobe=64)
    exact, _ = _brute(x, ids, q, 50)
    full = ItemIndex.load(tmp_path / "ivf")
    narrow = ItemIndex.load(tmp_path / "ivf", nprobe=1)
    assert full.nprobe == 64 and narrow.nprobe == 1
    r_full = recall_at_k(full.search(q, 50)[0], exact)
    r_narrow = recall_at_k(narrow.search(q, 50)[0], exact)
    assert r_full == 1.0 and r_narrow < 0.9
    assert recall_at_k(narrow.search(q, 50, nprobe=64)[0], exact) == 1.0  # per call ...
    assert narrow.nprobe == 1  # ... without changing the default
    narrow.set_search_params(nprobe=64)
    narrow.save(tmp_path / "ivf")
    assert json.loads((tmp_path / "ivf" / "index.json").read_text())["nprobe"] == 64
    build_index(x, ids, kind="hnsw", out_dir=tmp_path / "hnsw", hnsw_m=4, ef_construction=8)
    assert ItemIndex.load(tmp_path / "hnsw", ef_search=300).ef_search == 300


@pytest.mark.parametrize("kind", KINDS)
def test_exclusion(tmp_path, kind):
    emb, ids, q = _data()
    build_index(emb, ids, kind=kind, out_dir=tmp_path / "index", **PARAMS[kind])
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


def test_select_top_matches_a_row_loop():
    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(60)[:30] for _ in range(25)]).astype(np.int64)
    ids[rng.random(ids.shape) < 0.1] = -1  # missing results
    scores = -np.sort(rng.random(ids.shape), axis=1).astype(np.float32)
    exclude = [np.append(rng.choice(60, rng.integers(0, 20)), [-1, 0]) for _ in range(25)]
    got_ids, got_scores = select_top(ids, scores, 12, exclude)
    for b in range(25):
        keep = (ids[b] >= 0) & ~np.isin(ids[b], exclude[b])
        want = ids[b][keep][:12]
        np.testing.assert_array_equal(got_ids[b, : want.size], want)
        np.testing.assert_array_equal(got_scores[b, : want.size], scores[b][keep][:12])
        assert (got_ids[b, want.size:] == -1).all() and np.isneginf(got_scores[b, want.size:]).all()


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


@pytest.mark.parametrize("kind", KINDS)
def test_add_and_round_trip(tmp_path, kind):
    emb, ids, q = _data(n=300)
    build_index(emb[:200], ids[:200], kind=kind, out_dir=tmp_path / "index", **PARAMS[kind])
    index = ItemIndex.load(tmp_path / "index")
    assert len(index) == 200
    if kind.startswith("ivf"):
        centroids = faiss.extract_index_ivf(index.index).quantizer.reconstruct_n(0, 8)
    index.add(emb[200:], ids[200:])
    assert len(index) == 300 and int(ids[250]) in index and 10_000 not in index
    # a new item equal to a (scaled) query is that query's best match on the very next search
    new = q[:3] * 10
    index.add(new, np.array([10_000, 10_001, 10_002]))
    got, _ = index.search(q[:3], 1)
    assert got[:, 0].tolist() == [10_000, 10_001, 10_002]
    with pytest.raises(InputError, match="ids: .*already in the index"):
        index.add(emb[:1], ids[:1])
    if kind.startswith("ivf"):  # added through the trained quantizer, not a retrain
        np.testing.assert_array_equal(faiss.extract_index_ivf(index.index).quantizer.reconstruct_n(0, 8), centroids)
    index.save(tmp_path / "index")
    again = ItemIndex.load(tmp_path / "index")
    assert len(again) == 303 and again.kind == kind and 10_001 in again
    assert json.loads((tmp_path / "index" / "index.json").read_text())["count"] == 303
    a_ids, a_scores = index.search(q, 10)
    b_ids, b_scores = again.search(q, 10)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_allclose(a_scores, b_scores)
    assert again.search(q[2:3], 1)[0][0, 0] == 10_002
    # a later add after load keeps working and persists too
    again.add(q[3:4] * 10, np.array([20_000]))
    again.save(tmp_path / "index")
    assert ItemIndex.load(tmp_path / "index").search(q[3:4], 1)[0][0, 0] == 20_000


def test_recall_grows_with_search_parameters():
    x, ids, q = _clustered()
    exact, _ = _brute(x, ids, q, 50)
    ivf = ItemIndex.build(x, ids, "ivf_flat", nlist=64)
    r_ivf = [recall_at_k(ivf.search(q, 50, nprobe=p)[0], exact) for p in (1, 2, 4, 8, 16, 64)]
    pq = ItemIndex.build(x, ids, "ivf_pq", nlist=64, pq_m=16, refine_factor=2)
    r_pq = [recall_at_k(pq.search(q, 50, nprobe=p)[0], exact) for p in (1, 4, 16, 64)]
    hnsw = ItemIndex.build(x, ids, "hnsw", hnsw_m=4, ef_construction=16)
    r_hnsw = [recall_at_k(hnsw.search(q, 50, ef_search=e)[0], exact) for e in (50, 100, 200, 400)]
    print("ivf_flat", r_ivf, "ivf_pq", r_pq, "hnsw", r_hnsw)
    for series in (r_ivf, r_pq, r_hnsw):
        assert all(b >= a - 0.005 for a, b in zip(series, series[1:])), series
        assert series[-1] > series[0] + 0.02, series
    assert r_ivf[0] < 0.8 and r_ivf[-1] == 1.0  # nprobe = nlist is exhaustive
    assert r_pq[-1] >= 0.95 and r_hnsw[-1] >= 0.95


def test_sweep_rows_and_choice(tmp_path):
    x, ids, q = _clustered(n=3000, b=40)
    grid = build_grid(["flat", "hnsw", "ivf_flat", "ivf_pq"], 32, hnsw_m=[8], ef_construction=40, nlist=[32],
                      pq_m=[8], refine=[0, 2])
    rows = sweep(x, ids, q, k=20, grid=grid, single=10, batch=8, batch_repeats=2, progress=False)
    assert rows[0]["kind"] == "flat" and rows[0]["recall"] == 1.0 and rows[0]["speedup"] == pytest.approx(1.0)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"flat", "hnsw", "ivf_flat", "ivf_pq"}
    ivf = [r for r in rows if r["kind"] == "ivf_flat"]
    assert [r["params"]["nprobe"] for r in ivf] == [1, 2, 4, 8, 16, 32]
    assert ivf[-1]["recall"] == 1.0 and ivf[0]["recall"] < ivf[-1]["recall"]
    for r in rows:
        assert 0 <= r["recall"] <= 1 and r["single_p50_ms"] > 0 and r["batch_p95_ms"] >= r["batch_p50_ms"] > 0
        assert r["size_mb"] > 0
    pq_plain = [r for r in rows if r["kind"] == "ivf_pq" and r["params"]["refine_factor"] == 0]
    pq_refined = [r for r in rows if r["kind"] == "ivf_pq" and r["params"]["refine_factor"] == 2]
    assert pq_plain[0]["size_mb"] < pq_refined[0]["size_mb"]  # PQ codes only vs codes + exact vectors
    best = choose(rows, 0.95)
    assert best is not None and best["recall"] >= 0.95
    assert best["single_p95_ms"] == min(r["single_p95_ms"] for r in rows if r["recall"] >= 0.95)
    assert choose(rows, 1.01) is None


def test_torch_exact_equals_faiss_flat():
    emb, ids, q = _data(n=700, b=33)
    flat = ItemIndex.build(emb, ids, "flat")
    want_ids, want_scores = flat.search(q, 25)
    got_ids, got_scores = exact_search(emb, ids, q, 25, device="cpu")
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    # the same path inside ItemIndex (what device="cuda" uses), with exclusions and a live add
    assert ExactSearch(emb, ids, "cpu").backend == "torch-cpu"
    assert flat.use_exact("cpu") == "torch-cpu"
    exclude = [want_ids[b, : b % 5] for b in range(len(q))]
    flat.add(q[:1] * 10, np.array([5_000]))
    reference = ItemIndex.build(np.vstack([emb, q[:1] * 10]), np.append(ids, 5_000), "flat")
    a_ids, a_scores = flat.search(q, 25, exclude=exclude)
    b_ids, b_scores = reference.search(q, 25, exclude=exclude)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_allclose(a_scores, b_scores, rtol=1e-5, atol=1e-5)
    assert a_ids[0, 0] == 5_000
    assert flat.use_device("cpu") == "faiss-cpu"


def test_device_choice():
    import torch

    emb, ids, _ = _data(n=50)
    flat, hnsw = ItemIndex.build(emb, ids, "flat"), ItemIndex.build(emb, ids, "hnsw")
    assert hnsw.use_device("auto") == "faiss-cpu"  # only exact search moves to a GPU
    with pytest.raises(InputError, match="device: cuda search is exact"):
        hnsw.use_device("cuda")
    with pytest.raises(InputError, match="device: expected auto, cpu or cuda"):
        flat.use_device("gpu")
    if not torch.cuda.is_available() and faiss.get_num_gpus() == 0:
        assert flat.use_device("auto") == "faiss-cpu"
        with pytest.raises(InputError, match="device: cuda requested but no CUDA GPU"):
            flat.use_device("cuda")


def test_bad_input(tmp_path):
    emb, ids, q = _data(n=50)
    build_index(emb, ids, kind="flat", out_dir=tmp_path / "index")
    index = ItemIndex.load(tmp_path / "index")
    with pytest.raises(InputError, match="k:"):
        index.search(q, 0)
    with pytest.raises(InputError, match="k:"):
        index.search(q, -3)
    with pytest.raises(InputError, match="queries: dimension 5 does not match the index dimension 16"):
        index.search(q[:, :5], 5)
    with pytest.raises(InputError, match="embeddings: dimension 5 does not match"):
        index.add(emb[:2, :5], np.array([900, 901]))
    bad = emb[:3].copy()
    bad[1, 4] = np.nan
    with pytest.raises(InputError, match="embeddings: row 1 contains NaN"):
        index.add(bad, np.array([900, 901, 902]))
    with pytest.raises(InputError, match="queries: row 0 contains NaN"):
        index.search(np.full((1, D), np.nan, np.float32), 5)
    with pytest.raises(InputError, match="ids: 2 is already in the index"):
        index.add(emb[:2], np.array([900, 2]))
    with pytest.raises(InputError, match="ids: contains duplicate"):
        index.add(emb[:2], np.array([900, 900]))
    with pytest.raises(InputError, match="ids: expected a 1-d array of 2"):
        index.add(emb[:2], np.array([900]))
    assert len(index) == 50 and 900 not in index  # nothing was added by the failed calls
    index.require_dimension(D)
    with pytest.raises(InputError, match="index: dimension 16 does not match the user tower's 32"):
        index.require_dimension(32, "the user tower")
    with pytest.raises(InputError, match="exclude"):
        index.search(q, 5, exclude=[np.array([2])])
    with pytest.raises(InputError, match="nprobe: not a search parameter of a flat index"):
        index.search(q, 5, nprobe=4)
    with pytest.raises(InputError, match="kind"):
        build_index(emb, ids, kind="bogus", out_dir=tmp_path / "other")
    with pytest.raises(InputError, match="nlist: not a parameter of a hnsw index"):
        build_index(emb, ids, kind="hnsw", out_dir=tmp_path / "other", nlist=4)
    with pytest.raises(InputError, match="nlist: 64 inverted lists need at least 64"):
        build_index(emb, ids, kind="ivf_flat", out_dir=tmp_path / "other", nlist=64)
    with pytest.raises(InputError, match="pq_m: 5 sub-quantizers do not divide the dimension 16"):
        build_index(emb, ids, kind="ivf_pq", out_dir=tmp_path / "other", nlist=2, pq_m=5)
    with pytest.raises(InputError, match="pq_nbits: 8 bits need at least 256"):
        build_index(emb, ids, kind="ivf_pq", out_dir=tmp_path / "other", nlist=2, pq_m=4)
    with pytest.raises(InputError, match="hnsw_m: expected an integer >= 2"):
        build_index(emb, ids, kind="hnsw", out_dir=tmp_path / "other", hnsw_m=1)
    pq = ItemIndex.build(emb, ids, "ivf_pq", nlist=2, pq_m=4, pq_nbits=4)
    with pytest.raises(InputError, match="refine_factor: this ivf_pq index was built without exact vectors"):
        pq.search(q, 5, refine_factor=2)
    with pytest.raises(InputError, match="index: this ivf_flat index is not trained"):
        ItemIndex.create(D, "ivf_flat", nlist=4).add(emb[:2], np.array([900, 901]))
    with pytest.raises(InputError, match="duplicate"):
        build_index(emb[:2], np.array([3, 3]), out_dir=tmp_path / "other")
    with pytest.raises(InputError, match="not found|no items.faiss"):
        ItemIndex.load(tmp_path / "missing")
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "items.faiss").write_bytes((tmp_path / "index" / "items.faiss").read_bytes())
    (tmp_path / "broken" / "index.json").write_text(json.dumps({**meta, "kind": "annoy"}))
    with pytest.raises(InputError, match="kind 'annoy' is not one of"):
        ItemIndex.load(tmp_path / "broken")
    # the failed builds left the existing index alone
    assert len(ItemIndex.load(tmp_path / "index")) == 50
    assert not (tmp_path / "other").exists()


def test_cli_index_build(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    paths = RunPaths.for_dataset("toy")
    assert cli_main(["index", "build", "--dataset", "toy"]) == 2
    assert "item_embeddings.npy" in capsys.readouterr().err
    emb, _, q = _data(n=400)
    (paths.models / "two_tower").mkdir(parents=True)
    np.save(paths.models / "two_tower" / "item_embeddings.npy", emb)
    assert cli_main(["index", "build", "--dataset", "toy", "--kind", "hnsw", "--no-progress"]) == 0
    index = ItemIndex.load(paths.index)
    assert len(index) == 398 and index.kind == "hnsw"
    assert sorted(index.ids.tolist()) == list(range(2, 400))
    assert cli_main(["index", "build", "--dataset", "toy", "--kind", "ivf_pq", "--nlist", "4", "--nprobe", "2",
                     "--pq-m", "4", "--pq-nbits", "6", "--refine-factor", "3", "--no-progress"]) == 0
    index = ItemIndex.load(paths.index)
    assert index.kind == "ivf_pq" and index.nprobe == 2 and index.config.refine_factor == 3
    assert index.meta["factory"] == "IDMap2,IVF4,PQ4x6np,RFlat"
    capsys.readouterr()
    assert cli_main(["index", "build", "--dataset", "toy", "--kind", "flat", "--nlist", "4"]) == 2
    assert "nlist: not a parameter of a flat index" in capsys.readouterr().err
    assert ItemIndex.load(paths.index).kind == "ivf_pq"  # the failed build kept the index


def test_cli_index_sweep_synthetic(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    out = tmp_path / "sweep.png"
    assert cli_main(["index", "sweep", "--synthetic", "2000", "--dim", "16", "--k", "10", "--queries", "30",
                     "--single", "5", "--batch", "8", "--batch-repeats", "2", "--kinds", "flat,ivf_flat,hnsw",
                     "--hnsw-m", "8", "--nlist", "16", "--nprobe", "1,4,16", "--ef-search", "10,40", "--out", str(out),
                     "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "recall@10" in text and "ivf_flat" in text and "fastest one-query setting" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["chosen"]["recall"] >= 0.95 and {r["kind"] for r in report["rows"]} == {"flat", "ivf_flat", "hnsw"}
    assert [r["search"] for r in report["rows"] if r["kind"] != "flat"] == \
        ["nprobe=1", "nprobe=4", "nprobe=16", "efSearch=10", "efSearch=40"]  # --kinds order
    assert cli_main(["index", "sweep", "--synthetic", "100", "--k", "0", "--no-progress"]) == 2
    with pytest.raises(SystemExit) as exit_info:  # argparse: one line, exit code 2
        cli_main(["index", "sweep", "--kinds", "flat,annoy"])
    assert exit_info.value.code == 2
    assert cli_main(["index", "sweep", "--dataset", "none", "--no-progress"]) == 2  # no run: one-line error
    assert "item_embeddings.npy" in capsys.readouterr().err


def test_masked_flat_search_equals_faiss_with_exclusions_and_live_adds(tmp_path):
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((500, 16)).astype(np.float32)
    ids = rng.permutation(np.arange(10, 2010, 4, dtype=np.int64))  # ids not in row order
    build_index(emb, ids, kind="flat", out_dir=tmp_path / "index")
    index = ItemIndex.load(tmp_path / "index", threads=1)
    assert index._dense is not None  # small flat index: the masked path serves excluded searches
    index.add(rng.standard_normal((3, 16)).astype(np.float32), np.array([5, 7, 9], np.int64))
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    exclude = [rng.choice(index.ids, size=int(rng.integers(0, 300)), replace=False) for _ in range(20)]
    exclude[0] = np.array([5, 999_999], np.int64)  # an id outside the index is ignored
    masked = index.search(queries, 50, exclude=exclude)
    index._dense = None  # the FAISS path: over-fetch, then drop the excluded ids
    plain = index.search(queries, 50, exclude=exclude)
    np.testing.assert_array_equal(masked[0], plain[0])
    np.testing.assert_allclose(masked[1], plain[1], atol=1e-5)
    assert all(not set(masked[0][b]) & set(exclude[b].tolist()) for b in range(20))
    short = ItemIndex.load(tmp_path / "index", threads=1).search(queries[:2], 600, exclude=exclude[:2])
    assert (short[0][:, -1] == -1).all() and np.isneginf(short[1][:, -1]).all()  # fewer than k left: padded
