"""Diversity re-ranking (MMR, genre caps, freshness) and explanations.

Unit checks of :func:`recstack.evaluation.diversity.mmr_order` on random data; the served step
in-process on the ML-100K run (batched == single, lambda 1 == the ranker order); explanations
through the real tritonserver and the gateway; the trade-off table of ``recstack evaluate``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from recstack.evaluation.diversity import (
    decayed_popularity,
    genre_intra_list_distance,
    intra_list_distance,
    mmr_order,
    unit_rows,
)


def _case(seed: int, batch: int = 6, k: int = 40, dim: int = 8, genres: int = 5):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, dim))
    # candidates in 4 tight clusters: the ranker's head is mostly one cluster
    cluster = rng.integers(0, 4, (batch, k))
    embeddings = unit_rows(centres[cluster] + 0.1 * rng.standard_normal((batch, k, dim)))
    relevance = (rng.standard_normal((batch, k)) + 2.0 * (cluster == 0)).astype(np.float32)
    usable = rng.random((batch, k)) > 0.15
    genre = rng.random((batch, k, genres)) < 0.3
    return relevance, usable, embeddings, genre


def _ild(order: np.ndarray, embeddings: np.ndarray) -> float:
    lists = np.arange(order.shape[0])[:, None] * embeddings.shape[1] + order
    return float(np.nanmean(intra_list_distance(lists, unit_rows(embeddings.reshape(-1, embeddings.shape[2])))))


@pytest.mark.parametrize("seed", range(5))
def test_lambda_one_is_the_ranker_order(seed):
    relevance, usable, embeddings, _ = _case(seed)
    relevance[0, 3] = relevance[0, 7]  # a tie: the lower index first, as a stable sort
    usable[0, 3] = usable[0, 7] = True
    masked = np.where(usable, relevance, -np.inf)
    want = np.argsort(-masked, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(mmr_order(masked, usable, embeddings, 10, np.ones(len(relevance))), want)
    # the greedy loop too (one row below 1 makes the batch take it): the lambda-1 rows keep the ranker's order
    lambdas = np.ones(len(relevance))
    lambdas[-1] = 0.5
    np.testing.assert_array_equal(mmr_order(masked, usable, embeddings, 10, lambdas)[:-1], want[:-1])
    zero_weight = mmr_order(masked, usable, embeddings, 10, lambdas, freshness=np.random.default_rng(seed).random(
        masked.shape), freshness_weight=np.zeros(len(relevance)), genres=np.zeros(masked.shape + (3,), bool),
        genre_cap=np.full(len(relevance), 2))
    np.testing.assert_array_equal(zero_weight[:-1], want[:-1])


def test_lower_lambda_raises_diversity():
    relevance, usable, embeddings, _ = _case(11, batch=32)
    ilds = []
    for lam in (1.0, 0.7, 0.4, 0.0):
        order = mmr_order(relevance, usable, embeddings, 10, np.full(32, lam))
        assert np.take_along_axis(usable, order, 1).all()  # only usable items while there are enough
        ilds.append(_ild(order, embeddings))
    assert all(a < b for a, b in itertools.pairwise(ilds)), ilds
    assert ilds[-1] > ilds[0] + 0.2, ilds


def test_batched_equals_single():
    relevance, usable, embeddings, genre = _case(3, batch=8)
    rng = np.random.default_rng(0)
    lambdas, caps = rng.random(8), rng.integers(0, 3, 8)
    fresh, weight = rng.random((8, 40)), rng.random(8)
    batched = mmr_order(relevance, usable, embeddings, 12, lambdas, genres=genre, genre_cap=caps,
                        freshness=fresh, freshness_weight=weight)
    for row in range(8):
        single = mmr_order(relevance[row:row + 1], usable[row:row + 1], embeddings[row:row + 1], 12, lambdas[row:row + 1],
                           genres=genre[row:row + 1], genre_cap=caps[row:row + 1], freshness=fresh[row:row + 1],
                           freshness_weight=weight[row:row + 1])
        np.testing.assert_array_equal(batched[row], single[0])


def test_genre_cap_and_freshness():
    relevance, usable, embeddings, genre = _case(5, batch=16)
    usable[:] = True
    order = mmr_order(relevance, usable, embeddings, 6, np.ones(16), genres=genre, genre_cap=np.full(16, 1))
    picked = np.take_along_axis(genre, order[..., None], 1)  # [B, 6, G]
    counts = picked.sum(axis=1)
    # the cap holds unless every remaining candidate was capped (then it yields rather than shorten the list)
    capped_rows = (counts <= 1).all(axis=1)
    assert capped_rows.mean() > 0.5
    fresh = np.zeros((16, 40))
    fresh[:, 5] = 1.0
    boosted = mmr_order(relevance, usable, embeddings, 3, np.ones(16), freshness=fresh, freshness_weight=np.full(16, 2.0))
    assert (boosted[:, 0] == 5).all()


def test_decayed_popularity_and_genre_ild():
    day = 86400.0
    fresh = decayed_popularity(np.array([2, 2, 3, 3, 3]), np.array([10, 10, 0, 0, 0]) * day, 5, half_life_s=day)
    assert fresh[2] == 1.0 and fresh[3] < 0.01 and fresh[4] == 0.0
    genres = np.array([[1, 0], [1, 0], [0, 1]], dtype=bool)
    np.testing.assert_allclose(genre_intra_list_distance(np.array([[0, 1], [0, 2], [0, -1]]), genres),
                               [0.0, 1.0, np.nan])


# ------------------------------------------------------------------ the ML-100K run (e2e fixtures)

def _unit_embeddings(paths) -> np.ndarray:
    return unit_rows(np.load(paths.models / "two_tower" / "item_embeddings.npy"))


def _code_of_raw(paths) -> dict[int, int]:
    import pandas as pd

    table = pd.read_parquet(paths.features / "item_features.parquet", columns=["item_key", "item_id"])
    return dict(zip(table["item_key"].astype(int), table["item_id"].astype(int)))


@pytest.mark.e2e
def test_served_step_batched_equals_single_and_lambda_lowers_similarity(e2e_paths):
    from recstack.ensembles.graph import recommendation_graph, run_in_process

    graph, cache = recommendation_graph(e2e_paths), {}
    users = np.arange(1, 9, dtype=np.int64).reshape(-1, 1)
    lambdas = np.array([1.0, 0.9, 0.7, 0.5, 0.3, 0.0, 0.6, 1.0], np.float32).reshape(-1, 1)
    when = np.full((8, 1), 1_700_000_000, np.int64)  # one request time: the ranker's context is fixed
    inputs = {"user_id": users, "top_n": np.full((8, 1), 10, np.int32), "request_time": when, "diversity_lambda": lambdas,
              "genre_cap": np.array([[0], [0], [2], [0], [0], [0], [1], [0]], np.int32),
              "freshness_weight": np.array([[0], [0], [0], [0.5], [0], [0], [0], [0]], np.float32)}
    batched = run_in_process(graph, inputs, cache)
    chain = cache["chain"]
    tensors = dict(inputs)
    for op, step in zip(chain.ops[:-1], chain.steps[:-1]):
        tensors.update(step.execute({name: tensors[name] for name in op["inputs"] if name in tensors}))
    rerank_op, rerank = chain.ops[-1], chain.steps[-1]
    step_inputs = {name: tensors[name] for name in rerank_op["inputs"] if name in tensors}
    step_batched = rerank.execute(step_inputs)
    for row in range(8):
        # the re-ranking step itself: identical outputs batched and one request at a time
        step_single = rerank.execute({name: value[row:row + 1] for name, value in step_inputs.items()})
        for name, value in step_single.items():
            np.testing.assert_array_equal(step_batched[name][row:row + 1], value, err_msg=f"{name}, row {row}")
        # the whole chain: the same lists (the ONNX ranker's scores move by ~1e-6 with the batch size: an
        # absolute amount, so a score near 0 needs the atol)
        single = run_in_process(graph, {name: value[row:row + 1] for name, value in inputs.items()}, cache)
        for name in ("item_ids", "reason_code", "reason_item"):
            np.testing.assert_array_equal(batched[name][row:row + 1], single[name], err_msg=f"{name}, row {row}")
        np.testing.assert_allclose(batched["scores"][row:row + 1], single["scores"], rtol=1e-5, atol=1e-5)
    # without the optional inputs: the ranker's order, as lambda 1 gives
    plain = run_in_process(graph, {"user_id": users, "top_n": inputs["top_n"], "request_time": when}, cache)
    np.testing.assert_array_equal(plain["item_ids"][[0, 7]], batched["item_ids"][[0, 7]])
    assert (np.diff(plain["scores"], axis=1) <= 0).all()  # still best first
    unit, code = _unit_embeddings(e2e_paths), _code_of_raw(e2e_paths)
    ild = []
    for lam in (1.0, 0.5, 0.0):
        out = run_in_process(graph, {**inputs, "diversity_lambda": np.full((8, 1), lam, np.float32),
                                     "genre_cap": np.zeros((8, 1), np.int32),
                                     "freshness_weight": np.zeros((8, 1), np.float32)}, cache)
        lists = np.vectorize(lambda raw: code.get(int(raw), -1))(out["item_ids"])
        ild.append(float(np.nanmean(intra_list_distance(lists, unit))))
    assert ild[0] < ild[1] < ild[2], ild


@pytest.mark.e2e
def test_evaluate_reports_the_diversity_tradeoff(e2e_paths, tmp_path):
    from recstack.evaluation import evaluate_run, write_report
    from recstack.evaluation.tradeoff import format_tradeoff

    report = evaluate_run(e2e_paths, progress=False, write=False, lambdas=(1.0, 0.7, 0.3, 0.0), baselines=(),
                          temporal=False)
    rows = report["diversity"]["rows"]
    assert [row["lambda"] for row in rows] == [1.0, 0.7, 0.3, 0.0]
    # lambda 1 is the served ranking: the two_tower+dlrm row of the main table
    assert rows[0]["ndcg@10"] == pytest.approx(report["models"]["two_tower+dlrm"]["ndcg@10"], abs=2e-3)
    assert rows[-1]["ild_embedding"] > rows[0]["ild_embedding"] + 0.05
    assert rows[-1]["ndcg@10"] < rows[0]["ndcg@10"]
    assert all(0 < row["coverage"] <= 1 and 0 <= row["ild_genre"] <= 1 for row in rows)
    table = format_tradeoff(rows, 10)
    print(table)
    assert len(table.splitlines()) == 2 + len(rows)
    files = write_report(report, tmp_path)
    assert (tmp_path / "diversity_test.png").stat().st_size > 1000 and files["diversity_png"]
