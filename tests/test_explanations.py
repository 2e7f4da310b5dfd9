"""Explanations through the real tritonserver and the gateway: a "because you watched X" reason names
an item of the user's history, the closest one to the recommended item in the item tower's space."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest

from recstack.evaluation.diversity import intra_list_distance, unit_rows
from recstack.serving.client import TritonClient

pytestmark = pytest.mark.e2e
USERS = list(range(1, 13))


@pytest.fixture(scope="module")
def gateway(gateway_url):
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def model_view(e2e_paths):
    """What the served model sees: each user's ``history`` input (from the online store, encoded)
    and the item embeddings, plus raw <-> encoded item ids."""
    from recstack.ensembles.graph import QueryUserFeatures
    from recstack.ensembles.python_model import import_step_class

    op = QueryUserFeatures(e2e_paths)
    step = import_step_class(op.step_class)(**op.step_kwargs())
    history = step.execute({"user_id": np.array(USERS, np.int64).reshape(-1, 1)})["history"]
    table = pd.read_parquet(e2e_paths.features / "item_features.parquet", columns=["item_key", "item_id"])
    code_of = dict(zip(table["item_key"].astype(int), table["item_id"].astype(int)))
    raw_of = {c: r for r, c in code_of.items()}
    unit = unit_rows(np.load(e2e_paths.models / "two_tower" / "item_embeddings.npy"))
    return {"history": dict(zip(USERS, history)), "code_of": code_of, "raw_of": raw_of, "unit": unit}


def test_because_you_watched_names_the_closest_history_item(gateway, model_view):
    named = 0
    for user in USERS:
        body = gateway.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
        assert body["cold_start"] is False and len(body["items"]) == 10
        history = [int(c) for c in model_view["history"][user] if c >= 2]
        for item in body["items"]:
            reason = item["reason"]
            assert reason is not None and reason["text"], item
            if reason["kind"] != "because_you_watched":
                assert reason["kind"] in ("popular_in_genre", "trending"), reason
                continue
            named += 1
            # really in the user's history: the stored one the model read (train + valid, plus any events
            # other tests applied to this user in the shared store)
            assert reason["item_id"] in {model_view["raw_of"][c] for c in history}
            assert reason["text"] == f"because you watched {reason['title']}"
            similarity = model_view["unit"][history] @ model_view["unit"][model_view["code_of"][item["item_id"]]]
            closest = model_view["raw_of"][history[int(np.argmax(similarity))]]
            assert reason["item_id"] == closest, (user, item["item_id"])
            assert reason["similarity"] == pytest.approx(float(similarity.max()), abs=1e-5)
    assert named >= len(USERS) * 5  # known users get mostly history-based reasons


def test_cold_users_get_popular_or_trending_reasons(gateway):
    body = gateway.get("/v1/users/987654321/recommendations", params={"k": 10}).json()
    assert body["cold_start"] is True
    assert {item["reason"]["kind"] for item in body["items"]} <= {"popular_in_genre", "trending"}
    assert any(item["reason"]["kind"] == "popular_in_genre" and item["reason"]["genre"] for item in body["items"])


def test_optional_rerank_inputs_through_triton(e2e_server, model_view):
    users = np.array(USERS[:6], np.int64).reshape(-1, 1)
    top_n = np.full((6, 1), 10, np.int32)
    names = ["item_ids", "scores", "reason_code", "reason_item", "reason_score"]
    with TritonClient(e2e_server.grpc_url) as client:
        plain = client.infer("recommend", {"user_id": users, "top_n": top_n}, names)
        ones = client.infer("recommend", {"user_id": users, "top_n": top_n,
                                          "diversity_lambda": np.ones((6, 1), np.float32)}, names)
        np.testing.assert_array_equal(plain["item_ids"], ones["item_ids"])  # lambda 1 = the ranker's order
        lambdas = np.array([[1.0], [0.8], [0.5], [0.3], [0.0], [0.5]], np.float32)
        mixed = client.infer("recommend", {"user_id": users, "top_n": top_n, "diversity_lambda": lambdas}, names)
        for row in range(6):  # batched == single through the server
            single = client.infer("recommend", {"user_id": users[row:row + 1], "top_n": top_n[row:row + 1],
                                                "diversity_lambda": lambdas[row:row + 1]}, names)
            for name in ("item_ids", "reason_code", "reason_item"):
                np.testing.assert_array_equal(mixed[name][row:row + 1], single[name], err_msg=f"{name} row {row}")
            for name in ("scores", "reason_score"):  # the ONNX ranker's scores move by ~1e-6 with the batch size
                np.testing.assert_allclose(mixed[name][row:row + 1], single[name], rtol=1e-5, atol=1e-5)
        diverse = client.infer("recommend", {"user_id": users, "top_n": top_n,
                                             "diversity_lambda": np.zeros((6, 1), np.float32)}, names)
        with pytest.raises(Exception, match="diversity_lambda"):
            client.infer("recommend", {"user_id": users[:1], "top_n": top_n[:1],
                                       "diversity_lambda": np.full((1, 1), 1.5, np.float32)}, names)
    to_codes = np.vectorize(lambda raw: model_view["code_of"].get(int(raw), -1))
    ild = [float(np.nanmean(intra_list_distance(to_codes(out["item_ids"]), model_view["unit"])))
           for out in (plain, diverse)]
    assert ild[1] > ild[0] + 0.05, ild


def test_gateway_passes_the_rerank_parameters(gateway):
    default = gateway.get("/v1/users/3/recommendations", params={"k": 10}).json()["items"]
    same = gateway.get("/v1/users/3/recommendations", params={"k": 10, "diversity_lambda": 1}).json()["items"]
    diverse = gateway.get("/v1/users/3/recommendations",
                          params={"k": 10, "diversity_lambda": 0, "genre_cap": 2}).json()["items"]
    assert [i["item_id"] for i in same] == [i["item_id"] for i in default]
    assert [i["item_id"] for i in diverse] != [i["item_id"] for i in default]
    for params in ({"diversity_lambda": 1.5}, {"freshness_weight": -1}, {"genre_cap": -2}):
        response = gateway.get("/v1/users/3/recommendations", params=params)
        assert response.status_code == 422 and next(iter(params)) in response.text, params
