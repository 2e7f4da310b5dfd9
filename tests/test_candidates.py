"""Multi-source candidates (recstack.models.candidates): item-kNN against hand-computed cosines,
the merge (de-duplication, source flags, seen items excluded), the features at a request time,
and the offline computation against the serving one."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.ids import PAD
from recstack.models.candidates import (
    CROSS_FEATURES,
    RANKER_FEATURES,
    CandidateSources,
    SourceConfig,
    build_sources,
    combine,
    item_knn,
    offline_candidates,
    padded_seen_keys,
    source_flags,
)

# users x items (encoded ids 2..6): u0 {2,3}, u1 {2,3,4}, u2 {4,5}, u3 {6}
PAIRS = np.array([[0, 2], [0, 3], [1, 2], [1, 3], [1, 4], [2, 4], [2, 5], [3, 6]])
N_ITEMS = 7


def test_item_knn_is_cosine_of_co_occurrence():
    ids, scores, _, _ = item_knn(PAIRS[:, 0], PAIRS[:, 1], N_ITEMS, neighbours=3)
    # item 2: users {0,1}; item 3: {0,1} -> cos 1; item 4: {1,2} -> 1/2; items 5, 6: 0
    assert ids[2].tolist() == [3, 4, PAD] and np.allclose(scores[2], [1.0, 0.5, 0.0])
    # item 4: {1,2}; 2 and 3 share user 1 (1/2 each, lower id first); 5 shares user 2: 1/sqrt(2)
    assert ids[4].tolist() == [5, 2, 3] and np.allclose(scores[4], [1 / np.sqrt(2), 0.5, 0.5])
    assert (ids[6] == PAD).all() and (scores[6] == 0).all()  # no co-occurrence: no neighbour


@pytest.fixture()
def sources(tmp_path) -> CandidateSources:
    cfg = SourceConfig(two_tower=2, item_knn=2, popular=2, neighbours=3, recent=2, decay=0.5)
    # events (item, unix seconds): item 2 three times, item 4 twice, item 3 once
    items = np.array([2, 2, 4, 3, 2, 4])
    times = np.array([100, 200, 250, 300, 400, 500])
    genres = np.array([[0, 0], [0, 0], [2, 0], [2, 3], [3, 0], [4, 0], [2, 4]])  # codes >= 2 are genres
    folder = build_sources(tmp_path / "candidates", cfg, N_ITEMS, PAIRS[:, 0], PAIRS[:, 1], items, times, genres)
    return CandidateSources(folder)


def test_merge_dedups_keeps_flags_and_excludes_seen(sources):
    history = np.array([[0, 2], [0, 0]])  # row 0 watched item 2; row 1 nothing
    seen = np.array([[2], [0]])
    two_tower = np.array([[3, 5], [6, 4]])
    cands = sources.merge(two_tower, history, padded_seen_keys(seen, N_ITEMS))
    assert cands.ids.shape == (2, sources.width)
    # row 0: two-tower 3, 5; item-kNN of 2: 3 (dup -> PAD), 4; popular unseen: 4 (dup), 3 (dup)
    assert cands.ids[0].tolist() == [3, 5, PAD, 4, PAD, PAD]
    assert cands.sources[0, 0].tolist() == [True, True, True]  # 3: two-tower, item-kNN and popular
    assert cands.sources[0, 3].tolist() == [False, True, True]
    assert cands.sources[0, 1].tolist() == [True, False, False]
    # row 1: no history -> no item-kNN; popular 2, 4 (4 already from the two-tower)
    assert cands.ids[1].tolist() == [6, 4, PAD, PAD, 2, PAD]
    assert not (cands.ids[0] == 2).any()  # seen: never a candidate
    flags = source_flags(cands.ids, cands.sources, np.array([[4, 2], [2, 5]]))
    assert flags[0].tolist() == [[False, True, True], [False, False, False]]
    assert flags[1].tolist() == [[False, False, True], [False, False, False]]


def test_combine_equals_a_first_occurrence_reference():
    """combine: each id keeps its first slot, later copies and PAD become empty slots, and the first
    slot carries every source that proposed the id; against a plain loop, small ids (many repeats)."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        batch, n = int(rng.integers(1, 5)), int(rng.integers(1, 12))
        parts = [rng.integers(0, n, (batch, int(rng.integers(0, 6)))) for _ in range(3)]
        if not sum(p.shape[1] for p in parts):
            continue
        ids, sources = combine(parts)
        joined = np.concatenate(parts, axis=1)
        part_of = np.repeat(np.arange(3), [p.shape[1] for p in parts])
        for b in range(batch):
            first: dict[int, int] = {}
            want_ids = np.full(joined.shape[1], PAD)
            want_sources = np.zeros((joined.shape[1], 3), bool)
            for slot, item in enumerate(joined[b]):
                if item == PAD:
                    continue
                if item not in first:
                    first[int(item)] = slot
                    want_ids[slot] = item
                want_sources[first[int(item)], part_of[slot]] = True
            assert np.array_equal(ids[b], want_ids) and np.array_equal(sources[b], want_sources)


def test_features_use_only_interactions_before_the_request(sources):
    history = np.array([[3, 2]])
    items = np.array([[2, 4, 5, PAD]])
    flags = np.zeros((1, 4, 3), bool)
    feats = sources.features(items, np.array([[0.5, -0.25, 0.1, -np.inf]]), flags, sources.knn_scores(history),
                             history, np.array([400]))
    assert feats.shape == (1, 4, len(CROSS_FEATURES))
    f = dict(zip(CROSS_FEATURES, feats[0].T))
    assert np.allclose(f["two_tower_score"], [0.5, -0.25, 0.1, 0.0])
    log_max = np.log1p(3)  # item 2: 3 events in all
    # strictly before t=400: item 2 twice (100, 200), item 4 once (250), item 5 never
    assert np.allclose(f["log_popularity"], [np.log1p(2) / log_max, np.log1p(1) / log_max, 0, 0], atol=1e-6)
    cap = np.log1p(24 * 365 * 10)
    assert np.allclose(f["log_hours_since_last"], [np.log1p(200 / 3600) / cap, np.log1p(150 / 3600) / cap, 1, 0],
                       atol=1e-6)
    # history {3: genres 2,3; 2: genre 2}: item 2 (genre 2) shares with both; 4 (3) with item 3; 5 (4) none
    assert np.allclose(f["genre_affinity"], [1.0, 0.5, 0.0, 0.0])
    # item-kNN: latest item 2 (weight 1) -> 4: 0.5; item 3 (weight 0.5) -> 4: 0.5 * 0.5
    assert np.allclose(f["item_knn_score"][1], np.log1p(0.5 + 0.25), atol=1e-6)


def test_offline_candidates_equal_the_serving_merge(sources):
    rng = np.random.default_rng(0)
    first = rng.normal(size=(3, N_ITEMS))
    first[:, :2] = -np.inf
    seen = np.array([[2, 5], [0, 0], [6, 0]])
    for row, s in enumerate(seen):
        first[row, s[s != PAD]] = -np.inf
    history = np.array([[2, 5], [0, 0], [0, 6]])
    times = np.array([450, 450, 50])
    ids, retrieval, cross = offline_candidates(sources, first, history, times)
    top = np.argsort(-first, axis=1, kind="stable")[:, :2]
    served = sources.merge(top, history, padded_seen_keys(seen, N_ITEMS))
    assert (ids == served.ids).all()
    assert np.isneginf(retrieval[ids == PAD]).all() and np.isfinite(retrieval[ids != PAD]).all()
    assert np.allclose(cross, sources.features(served.ids, np.take_along_axis(first, served.ids, 1), served.sources,
                                               served.knn, history, times))


def test_ranker_trains_on_merged_candidates_and_exports_the_cross_block(tmp_path):
    """fit_dlrm with sources: negatives from the merged candidates, never the user's train items; the
    DLRM reads item_cross [B, K, F]; dlrm.onnx takes it and equals PyTorch; selection saw merged lists."""
    import onnxruntime as ort
    import torch
    from test_models import make_schema, synthetic_data

    from recstack.models.candidate_pool import build_training_pool, own_item_keys
    from recstack.models.dlrm import DLRMConfig
    from recstack.models.dlrm_training import build_candidate_sources, fit_dlrm
    from recstack.models.export import random_inputs, save_dlrm
    from recstack.models.layout import FeatureLayout
    from recstack.models.predict import item_embeddings, user_embeddings
    from recstack.models.two_tower import TwoTowerConfig
    from recstack.models.two_tower_training import fit_two_tower
    from recstack.models.validation import candidate_set, split_view
    from recstack.paths import RunPaths

    torch.set_num_threads(1)
    layout = FeatureLayout.from_schema(make_schema(), history_length=8)
    data = synthetic_data(layout)
    tt, _ = fit_two_tower(data, TwoTowerConfig(embedding_dim=8, output_dim=8, hidden=[16], uniform_negatives=8),
                          epochs=2, batch_size=64, progress=False)
    sources = build_candidate_sources(RunPaths.for_dataset("tiny", home=tmp_path), data,
                                      SourceConfig(two_tower=10, item_knn=5, popular=3))
    rows = data.train
    rng = np.random.default_rng(0)
    pool = build_training_pool(sources, user_embeddings(tt, data, rows.users, rows.history), item_embeddings(tt, data),
                               rows.users, rows.history, rows.items, rows.times,
                               own_item_keys(rows.users, rows.items, data.n_items), rng, sample=12)
    own = {(int(u), int(i)) for u, i in zip(rows.users, rows.items)}
    negatives = [(int(u), int(i)) for u, row in zip(rows.users, pool.negatives) for i in row if i != PAD]
    assert negatives and not own.intersection(negatives)

    model, hist = fit_dlrm(data, DLRMConfig(embedding_dim=8, dense_hidden=[8], over_hidden=[16]), two_tower=tt,
                           epochs=2, batch_size=68, negatives=4, loss="softmax", progress=False, sources=sources)
    assert model.cfg.cross_features == list(RANKER_FEATURES) and "valid_ndcg@10_fused" in hist["history"][0]
    cset = candidate_set(tt, data, split_view(data, "valid"), 10, sources=sources)
    assert cset.cands.shape[1] == sources.width and cset.cross.shape == (*cset.cands.shape, len(CROSS_FEATURES))

    folder = save_dlrm(model, tmp_path / "dlrm", {"valid": {}}, {})
    session = ort.InferenceSession(str(folder / "dlrm.onnx"))
    assert session.get_inputs()[-1].name == "item_cross"
    names = [i.name for i in session.get_inputs()]
    feeds = random_inputs(model.layout, names, 3, seed=4, candidates=5, cross_width=len(CROSS_FEATURES))
    got = session.run(None, feeds)[0]
    flat = {k: torch.from_numpy(v.reshape(15, -1) if k.startswith("item") else np.repeat(v, 5, axis=0))
            for k, v in feeds.items()}
    with torch.no_grad():
        want = model(flat).numpy().reshape(3, 5)
    assert np.abs(got - want).max() < 1e-4


def test_dense_and_sparse_item_knn_select_the_same_candidates(sources, monkeypatch):
    """Small batches keep item-kNN scores dense, big ones sparse: the same items, ties to the lower id."""
    from recstack.models import candidates

    rng = np.random.default_rng(3)
    history = rng.integers(0, N_ITEMS, (40, 4))
    seen = padded_seen_keys(history, N_ITEMS)
    tt = np.zeros((40, 2), np.int64)
    monkeypatch.setattr(candidates, "PARTITION_ABOVE", 0)  # dense rows cut to their m best by a partition first
    partitioned = sources.merge(tt, history, seen)
    monkeypatch.setattr(candidates, "PARTITION_ABOVE", 10**9)  # every scored item sorted as it is
    dense = sources.merge(tt, history, seen)
    assert dense.knn.dense is not None
    monkeypatch.setattr(candidates, "DENSE_LIMIT", 0)
    sparse = sources.merge(tt, history, seen)
    assert sparse.knn.dense is None
    assert (dense.ids == sparse.ids).all() and (dense.sources == sparse.sources).all()
    assert (partitioned.ids == sparse.ids).all() and (partitioned.sources == sparse.sources).all()
    assert np.array_equal(dense.knn.lookup(dense.ids, N_ITEMS), sparse.knn.lookup(dense.ids, N_ITEMS))


def test_rerank_skips_empty_candidate_slots():
    """A merged list's empty slot (PAD id, -inf score) ranks nowhere and does not disturb the others."""
    from recstack.models.predict import rerank

    first = np.array([[-np.inf, -np.inf, 0.9, 0.5, 0.1, 0.3]])
    final = rerank(first, np.array([[3, 0, 4, 0]]), np.array([[2.0, -np.inf, 5.0, -np.inf]]))
    assert np.isfinite(final[0, 2:]).all() and np.isneginf(final[0, :2]).all()
    assert np.argsort(-final[0], kind="stable")[:4].tolist() == [4, 3, 2, 5]


def test_history_alignment_does_not_change_the_sources(sources):
    """Training histories are right-aligned, the online store's left-aligned: same candidates and scores."""
    right = np.array([[0, 0, 3, 4, 2], [0, 0, 0, 0, 5]])
    left = np.array([[3, 4, 2, 0, 0], [5, 0, 0, 0, 0]])
    seen = padded_seen_keys(right, N_ITEMS)
    a = sources.merge(np.zeros((2, 2), np.int64), right, seen)
    b = sources.merge(np.zeros((2, 2), np.int64), left, seen)
    assert (a.ids == b.ids).all() and (a.sources == b.sources).all()
    assert np.array_equal(a.knn.lookup(a.ids, N_ITEMS), b.knn.lookup(a.ids, N_ITEMS))
    times = np.array([450, 450])
    assert np.array_equal(sources.features(a.ids, np.zeros(a.ids.shape), a.sources, a.knn, right, times),
                          sources.features(b.ids, np.zeros(b.ids.shape), b.sources, b.knn, left, times))


def test_item_stats_equal_a_scan_of_the_events(tmp_path):
    """Counts and seconds-since-last strictly before each request time, against a plain scan; request
    times before, between, on and after the events (the shortcut for requests after an item's last event)."""
    rng = np.random.default_rng(3)
    n_items = 40
    items = rng.integers(2, n_items - 5, 600)  # the last items never occur
    times = rng.integers(10_000, 20_000, 600)
    folder = build_sources(tmp_path / "c", SourceConfig(two_tower=2, item_knn=2, popular=2), n_items,
                           rng.integers(0, 50, 600), items, items, times, None)
    src = CandidateSources(folder)
    ask_items = rng.integers(0, n_items, (30, 12))
    ask_times = np.concatenate([rng.integers(9_000, 21_000, 26), [times[0], times.max(), times.max() + 1, 0]])
    count, since = src.item_stats(ask_items, ask_times)
    for b, t in enumerate(ask_times):
        for j, item in enumerate(ask_items[b]):
            before = times[(items == item) & (times < t)]
            assert count[b, j] == len(before)
            assert since[b, j] == (t - before.max() if len(before) else -1)


# ------------------------------------------------------------------ fast paths against plain references

def reference_item_knn(pairs: np.ndarray, n_items: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine co-occurrence neighbours by sets and a full sort (score desc, then id): ids, float32 scores."""
    users_of = [set() for _ in range(n_items)]
    for u, i in pairs:
        users_of[i].add(u)
    ids = np.zeros((n_items, m), np.int32)
    scores = np.zeros((n_items, m), np.float32)
    for i in range(n_items):
        cand = []
        for j in range(2, n_items):
            co = len(users_of[i] & users_of[j])
            if j != i and co:
                cand.append((-co / (np.sqrt(float(len(users_of[i]))) * np.sqrt(float(len(users_of[j])))), j))
        for rank, (neg, j) in enumerate(sorted(cand)[:m]):
            ids[i, rank], scores[i, rank] = j, -neg
    return ids, scores


def random_pairs(rng: np.random.Generator, n_users: int, n_items: int, count: int) -> np.ndarray:
    pairs = np.stack([rng.integers(0, n_users, count), rng.integers(2, n_items, count)], 1)
    return np.unique(pairs, axis=0)


def sources_of_pairs(folder, cfg: SourceConfig, n_items: int, pairs: np.ndarray) -> CandidateSources:
    """Candidate sources whose neighbours and events are ``pairs`` (user, item), event time = row number."""
    return CandidateSources(build_sources(folder, cfg, n_items, pairs[:, 0], pairs[:, 1], pairs[:, 1],
                                          np.arange(len(pairs)), None))


@pytest.mark.parametrize("chunk_entries", [1, 1 << 24])
def test_sparse_item_knn_equals_a_set_based_reference(chunk_entries):
    """Sparse (chunked CSR) and dense-block paths: the reference's neighbours, ties to the lower id."""
    rng = np.random.default_rng(5)
    for n_users, n_items, count in [(30, 40, 120), (200, 25, 900)]:  # sparse co-occurrence, then dense
        pairs = random_pairs(rng, n_users, n_items, count)
        ids, scores, counts, item_users = item_knn(pairs[:, 0], pairs[:, 1], n_items, 6, chunk_entries=chunk_entries)
        want_ids, want_scores = reference_item_knn(pairs, n_items, 6)
        assert np.array_equal(ids, want_ids) and np.array_equal(scores, want_scores)
        assert np.array_equal(item_users, np.bincount(pairs[:, 1], minlength=n_items))
        members = {(int(u), int(i)) for u, i in pairs}
        for item, nb in [(i, j) for i in range(n_items) for j in ids[i] if j != PAD][:50]:
            want = sum((u, item) in members and (u, nb) in members for u in range(n_users))
            assert counts[item, list(ids[item]).index(nb)] == want


def test_leave_one_user_out_equals_the_cosines_without_that_user(tmp_path):
    """A training row's item-kNN score (LeaveUserOut) is the score of neighbours counted without its user:
    the reference rebuilds each stored pair's cosine from the other users' pairs."""
    from recstack.models.candidate_pool import own_item_keys
    from recstack.models.item_knn import LeaveUserOut

    rng = np.random.default_rng(11)
    n_users, n_items = 25, 30
    pairs = random_pairs(rng, n_users, n_items, 220)
    cfg = SourceConfig(two_tower=3, item_knn=4, popular=2, neighbours=8, recent=3, decay=0.5)
    src = sources_of_pairs(tmp_path / "c", cfg, n_items, pairs)
    keys = own_item_keys(pairs[:, 0], pairs[:, 1], n_items)
    users = np.arange(8)
    history = np.zeros((len(users), 5), np.int64)
    for row, u in enumerate(users):  # each row: the latest (up to) 5 of its user's own items, right-aligned
        own = pairs[pairs[:, 0] == u, 1][-5:]
        history[row, 5 - len(own):] = own
    got = src.knn_scores(history, LeaveUserOut(users, keys)).dense
    plain = src.knn_scores(history).dense
    users_of = [set(pairs[pairs[:, 1] == i, 0].tolist()) for i in range(n_items)]
    want = np.zeros_like(got)
    for row, u in enumerate(users):
        items = [int(i) for i in history[row] if i != PAD][-cfg.recent:]
        for age, i in enumerate(reversed(items)):
            for j in src.neighbours[i]:
                if j == PAD:
                    continue
                ui, uj = users_of[i] - {int(u)}, users_of[j] - {int(u)}
                co = len(ui & uj)
                if co:
                    cos = np.float32(co / (np.sqrt(float(len(ui))) * np.sqrt(float(len(uj)))))
                    want[row, j] += float(cos) * cfg.decay ** age
    assert np.allclose(got, want, rtol=1e-12, atol=0)
    assert (got <= plain + 1e-12).any() and not np.array_equal(got, plain)  # the user's own pairs did count
    other = src.knn_scores(history, LeaveUserOut(np.full(len(users), n_users + 5), keys)).dense
    assert np.array_equal(other, plain)  # a user without pairs: exactly the served scores


def test_training_pool_merges_what_serving_merges(tmp_path):
    """build_training_pool's PyTorch selections (two-tower top-K, item-kNN top) pick exactly the ids of
    the numpy serving merge (offline_candidates over the same float64 scores), ties included."""
    import torch

    from recstack.models import candidate_pool
    from recstack.models.candidate_pool import knn_top, sorted_seen_keys, two_tower_top


    rng = np.random.default_rng(2)
    n_users, n_items = 40, 60
    pairs = random_pairs(rng, n_users, n_items, 500)
    cfg = SourceConfig(two_tower=7, item_knn=6, popular=4, neighbours=10, recent=4, decay=0.85)
    src = sources_of_pairs(tmp_path / "c", cfg, n_items, pairs)
    history = rng.integers(0, n_items, (64, 6))
    history[:5] = 0  # no history
    user_emb = rng.integers(-2, 3, (64, 4)).astype(np.float32)  # small integers: many exactly tied scores
    item_emb = rng.integers(-2, 3, (n_items, 4)).astype(np.float32)
    first = user_emb.astype(np.float64) @ item_emb.T.astype(np.float64)
    first[:, :2] = -np.inf
    np.put_along_axis(first, history, -np.inf, 1)
    want_tt = np.argsort(-first, axis=1, kind="stable")[:, :cfg.two_tower]  # full stable sort: ties to lower id
    want_tt = np.where(np.isfinite(np.take_along_axis(first, want_tt, 1)), want_tt, PAD)
    seen = padded_seen_keys(history, n_items)
    want = src.merge(want_tt, history, seen)
    item_t = torch.from_numpy(item_emb.astype(np.float64)).T
    tt = two_tower_top(user_emb, item_t, history, cfg.two_tower)
    assert np.array_equal(tt, want_tt)
    assert np.array_equal(np.unique(sorted_seen_keys(history, n_items)), seen)  # repeats kept twice
    knn = src.knn_scores(history)
    ids, flags = combine([tt, knn_top(src, knn, seen, len(history)), src.top_popular(seen, len(history))])
    assert np.array_equal(ids, want.ids) and np.array_equal(flags, want.sources)
    pool = candidate_pool.build_training_pool(src, user_emb, item_emb, np.arange(64) % n_users, history,
                                              history[:, -1], np.zeros(64, np.int64), np.zeros(0, np.int64),
                                              np.random.default_rng(0), sample=200)
    got = [set(r[r != PAD].tolist()) for r in pool.negatives]
    assert got == [set(r[r != PAD].tolist()) for r in want.ids]  # no own items: every merged candidate kept
