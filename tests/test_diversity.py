"""Diversity re-ranking (MMR, genre caps, freshness) and explanations.

Unit checks of :func:`recstack.evaluation.diversity.mmr_order` on random data; the served step
in-process on the ML-100K run (batched == single, lambda 1 == the ranker order); explanations
through the real tritonserver and the gateway; the trade-off table of ``recstack evaluate``.
"""

from __future__ import annotations

import numpy as np
import pytest

from recstack.evaluation.diversity import (
    decayed_popularity, genre_intra_list_distance, intra_list_distance, mmr_order, unit_rows,
)


def _case(seed: int, batch: int = 6, k: int = 40, dim: int = 8, genres: int = 5):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, dim))
    # candidates in 4 tight clusters: the ranker's head is mostly one cluster
    cluster = rng.integers(0, 4, (batch, k))
    embeddings = (centres[cluster] + 0.1 * rng.standard_normal((batch, k, dim))).astype(np.float32)
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
    got = mmr_order(masked, usable, embeddings, 10, np.ones(len(relevance)))
    np.testing.assert_array_equal(got[np.take_along_axis(usable, want, 1)], want[np.take_along_axis(usable, want, 1)])
    np.testing.assert_array_equal(got, want)


def test_lower_lambda_raises_diversity():
    relevance, usable, embeddings, _ = _case(11, batch=32)
    ilds = []
    for lam in (1.0, 0.7, 0.4, 0.0):
        order = mmr_order(relevance, usable, embeddings, 10, np.full(32, lam))
        assert np.take_along_axis(usable, order, 1).all()  # only usable items while there are enough
        ilds.append(_ild(order, embeddings))
    assert all(a < b for a, b in zip(ilds, ilds[1:])), ilds
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
