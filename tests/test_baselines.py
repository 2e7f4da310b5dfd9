"""recstack.evaluation.baselines / metrics / baseline_runs: each baseline and report metric against a
matrix small enough to compute by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recstack.evaluation.baseline_runs import RankingTask, run_baselines, score_task
from recstack.evaluation.baselines import (
    EASE,
    IALS,
    ItemKNN,
    Popularity,
    cosine_similarity,
    interaction_matrix,
    keep_top_per_row,
)
from recstack.evaluation.metrics import (
    ListQuality,
    MultiTargetAccumulator,
    ReportAccumulator,
)

# users x items:   i0 i1 i2
#   u0              1  1  0
#   u1              1  1  1
#   u2              0  0  1
# columns: i0 = i1 = {u0, u1}, i2 = {u1, u2} -> cos(i0, i1) = 1, cos(i0, i2) = cos(i1, i2) = 1/2
TINY = interaction_matrix(np.array([0, 0, 1, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 2, 2, 2]), 3, 3)


def test_interaction_matrix_is_binary():
    assert TINY.toarray().tolist() == [[1, 1, 0], [1, 1, 1], [0, 0, 1]]  # u2's repeated i2 counts once


def test_cosine_similarity_by_hand():
    assert cosine_similarity(TINY).toarray() == pytest.approx(np.array([[0, 1, .5], [1, 0, .5], [.5, .5, 0]]))


def test_item_knn_by_hand():
    knn = ItemKNN().fit(TINY)
    # u2 (history {i2}) -> sim(i2, .) = [.5, .5, 0]; u0 (history {i0, i1}) -> [1, 1, .5 + .5]
    assert knn.scores(np.array([2, 0]), TINY) == pytest.approx(np.array([[.5, .5, 0], [1, 1, 1]]))
    # one neighbour per item: i0 keeps i1, i1 keeps i0, i2 keeps i0 (tie with i1: lower id)
    pruned = ItemKNN(neighbors=1).fit(TINY)
    assert pruned.scores(np.array([2, 0]), TINY) == pytest.approx(np.array([[0, 0, 0], [1, 1, .5]]))
    assert keep_top_per_row(cosine_similarity(TINY), 1).toarray() == pytest.approx(np.array([[0, 1, 0], [1, 0, 0], [.5, 0, 0]]))
    # last-item kNN: only the most recent item counts (-1: no history -> all zero)
    last = ItemKNN(last_item=True).fit(TINY)
    assert last.scores(np.array([0, 1]), TINY, np.array([2, -1])) == pytest.approx(np.array([[.5, .5, 0], [0, 0, 0]]))


def test_ease_by_hand():
    # X = [[1, 1], [1, 0]]: G = X^T X = [[2, 1], [1, 1]]; with lambda 1, P = inv([[3, 1], [1, 2]]) =
    # [[2, -1], [-1, 3]] / 5 and B_ij = -P_ij / P_jj: B_01 = 1/3, B_10 = 1/2, diagonal 0
    X = interaction_matrix(np.array([0, 0, 1]), np.array([0, 1, 0]), 2, 2)
    ease = EASE(lam=1.0).fit(X)
    assert ease.weights == pytest.approx(np.array([[0, 1 / 3], [1 / 2, 0]]))
    assert ease.scores(np.array([0, 1]), X) == pytest.approx(np.array([[1 / 2, 1 / 3], [0, 1 / 3]]))


def test_popularity_by_hand():
    assert Popularity().fit(TINY).scores(np.array([0, 2]), TINY).tolist() == [[2, 2, 2], [2, 2, 2]]
    X = interaction_matrix(np.array([0, 1, 1]), np.array([1, 1, 2]), 2, 3)
    assert Popularity().fit(X).scores(np.array([0]), X).tolist() == [[0, 2, 1]]


def test_ials_separates_two_blocks():
    """Two disjoint tastes (users 0-2 on items 0-2, users 3-5 on items 3-5): each user's unseen items
    of its own block score above every item of the other block."""
    users = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 5])
    items = np.array([0, 1, 1, 2, 0, 1, 2, 3, 4, 4, 5, 3, 4, 5])
    X = interaction_matrix(users, items, 6, 6)
    model = IALS(factors=4, regularization=0.01, alpha=10.0, iterations=30).fit(X)
    scores = model.scores(np.array([0, 3]), X)
    assert scores.shape == (2, 6)
    assert scores[0, 2] > scores[0, 3:].max()  # user 0 (saw 0, 1) -> item 2
    assert scores[1, 5] > scores[1, :3].max()  # user 3 (saw 3, 4) -> item 5
    assert scores == pytest.approx(model.user_factors[[0, 3]] @ model.item_factors.T, rel=1e-5)


def test_report_accumulator_cutoffs_and_quality():
    # 6 items (0, 1 = pad / OOV); two rows, targets 3 (rank 1) and 5 (rank 3)
    scores = np.array([[0, 0, 3, 2, 1, 0.5], [0, 0, 1, 3, 2, 0.5]], dtype=float)
    popularity = np.array([0, 0, 4, 2, 1, 1])  # users per item, of 4 users
    acc = ReportAccumulator(6, k=2, cutoffs=(3,), quality=ListQuality(popularity, 4))
    acc.add(scores.copy(), np.array([3, 5]))
    r = acc.result()
    assert r["hr@2"] == pytest.approx(.5) and r["ndcg@2"] == pytest.approx(.5 / math.log2(3))
    assert r["hr@3"] == pytest.approx(.5) and r["recall@3"] == r["hr@3"]
    assert r["mrr"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    # top-2 lists [2, 3] and [3, 4]: coverage 3 of 4; top-3 lists add 4 and 2 -> still 3 of 4
    assert r["coverage@2"] == r["coverage"] == pytest.approx(3 / 4) and r["coverage@3"] == pytest.approx(3 / 4)
    # novelty@2: -log2 of p = 4/4, 2/4 | 2/4, 1/4 -> (0 + 1 + 1 + 2) / 4
    assert r["novelty@2"] == pytest.approx(1.0)


def test_list_quality_ild_by_hand():
    # the TINY cosine: lists [0, 1] (cos 1) and [0, 2] (cos 1/2) -> ILD = 1 - (1 + 1/2) / 2
    quality = ListQuality(np.array([2, 2, 2]), 3, cosine_similarity(TINY),
                          genres=np.array([[1, 0], [1, 1], [0, 1]], dtype=bool))
    out = quality.describe(np.array([[0, 1], [0, 2]]), 2)
    assert out["ild@2"] == pytest.approx(0.25)
    # Jaccard distances: {g0} vs {g0, g1} = 1/2; {g0} vs {g1} = 1
    assert out["ild_genre@2"] == pytest.approx(0.75)
    assert out["novelty@2"] == pytest.approx(-math.log2(2 / 3))


def test_multi_target_accumulator_by_hand():
    scores = np.array([[0, 0, 5, 4, 3, 2, 1], [0, 0, 1, 1, 1, 1, 1]], dtype=float)
    acc = MultiTargetAccumulator(7, k=2, cutoffs=(3,))
    # row 0: targets {3, 6}: list [2, 3, 4] -> hit at position 1; best target (3) has 1 item above
    # row 1: constant scores, target {2}: ties rank it below the 4 others -> miss, MRR 1/5
    acc.add(scores.copy(), [np.array([3, 6]), np.array([2])])
    r = acc.result()
    ideal2 = 1 + 1 / math.log2(3)
    assert r["recall@2"] == pytest.approx((1 / 2 + 0) / 2) and r["hr@2"] == pytest.approx(.5)
    assert r["ndcg@2"] == pytest.approx((1 / math.log2(3) / ideal2) / 2)
    assert r["recall@3"] == pytest.approx(.25)
    assert r["mrr"] == pytest.approx((1 / 2 + 1 / 5) / 2)
    # seen items are excluded: user 0 saw item 2 -> target 3 first
    acc = MultiTargetAccumulator(7, k=2)
    acc.add(scores[:1].copy(), [np.array([3])], np.array([0]), (np.array([0, 1]), np.array([2])))
    assert acc.result()["ndcg@2"] == pytest.approx(1.0)


def test_run_baselines_selects_on_valid_only():
    """Settings are chosen by validation NDCG (the reported test numbers come from the refit)."""
    rng = np.random.default_rng(0)
    n_users, n_items = 60, 12
    users = np.repeat(np.arange(n_users), 4)
    items = (users % 3) * 4 + rng.integers(0, 4, len(users))  # three tastes of four items
    X = interaction_matrix(users, items, n_users, n_items)
    cat = np.ones(n_items, dtype=bool)
    targets = (np.arange(n_users) % 3) * 4 + rng.integers(0, 4, n_users)
    valid = RankingTask(X, np.arange(n_users), targets, np.full(n_users, -1), cat)
    rows, selection, skipped = run_baselines(valid, None, k=5, cutoffs=(), names=("popularity", "item_knn", "ease"),
                                             progress=False)
    assert not skipped and set(rows) == {"popularity", "item_knn", "ease"}
    for name in ("item_knn", "ease"):
        chosen = selection[name]
        assert chosen["valid_ndcg@5"] == max(t["ndcg@5"] for t in chosen["trials"])
    # block structure: the co-occurrence models beat popularity by far
    assert rows["item_knn"]["hr@5"] > rows["popularity"]["hr@5"] + 0.2
    again = score_task(ItemKNN(**selection["item_knn"]["params"]).fit(X), valid, 5, ())
    assert again["ndcg@5"] == pytest.approx(rows["item_knn"]["ndcg@5"])


def test_temporal_split_by_hand():
    """One split time for everybody: the fit window is everything before T, targets are the warm items
    each user first meets at or after T; items first seen after T go to the cold-item count."""
    import pandas as pd

    from recstack.evaluation.protocols import temporal_split, temporal_tasks

    frame = pd.DataFrame({
        "user_id": ["a", "a", "b", "b", "a", "b", "c", "a", "b", "a"],
        "item_id": ["x", "y", "x", "z", "z", "y", "x", "w", "x", "y"],  # b-x again at t=9, a-y at t=10: repeats
        "timestamp": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    })
    split = temporal_split(frame, quantile=0.6, valid_quantile=0.3)
    # after dropping the two repeats, 8 interactions at t = 1..8: T = quantile 0.6 = 5.2, T_v = 3.1
    assert split.split_time == pytest.approx(5.2) and split.valid_time == pytest.approx(3.1)
    _, test, info = temporal_tasks(split)
    ids = {name: i for i, name in enumerate(split.item_ids)}
    # test: fit on t < 5.2 (a: x, y, z; b: x, z); after T: b-y (warm), c-x (c has no history), a-w (w is new)
    assert test.users.tolist() == [1] and [t.tolist() for t in test.targets] == [[ids["y"]]]
    assert test.last.tolist() == [ids["z"]] and test.X.sum() == 5
    assert info["test"] == {"fit_interactions": 5, "users": 1, "targets": 1, "cold_targets": 1, "catalogue": 3}
    # valid: fit on t < 3.1 (a: x, y; b: x), targets in [3.1, 5.2): b-z and a-z are new items -> none warm
    assert info["valid"]["targets"] == 0 and info["valid"]["cold_targets"] == 2
    assert not test.catalogue[ids["w"]] and test.catalogue[ids["z"]]


def test_evaluate_cli_rejects_an_unknown_baseline():
    from recstack.errors import InputError
    from recstack.evaluation.cli import _baselines

    assert _baselines("all") == ("item_knn", "last_item_knn", "ease", "ials")
    assert _baselines("none") == () and _baselines("ease, ials") == ("ease", "ials")
    with pytest.raises(InputError, match="--baselines: unknown baseline.*'slim'"):
        _baselines("ease,slim")


def test_run_baselines_without_validation_rows_skips_with_a_reason():
    empty = RankingTask(TINY, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                        np.ones(3, dtype=bool))
    rows, selection, skipped = run_baselines(empty, None, k=2, names=("popularity", "ease"), progress=False)
    assert rows == {} and selection == {} and set(skipped) == {"popularity", "ease"}
    assert "no validation rows" in skipped["ease"]
