"""Request context (hour, weekday, device): one function for training and serving, through the real
Triton server and the gateway, and the ablation row of `recstack evaluate` (ML-100K e2e run)."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from recstack.ensembles.context_step import RequestContext
from recstack.errors import InputError
from recstack.serving.client import TritonClient
from recstack.serving.recommend import parse_time, recommend
from recstack.workflows import DateTimeParts, Workflow
from recstack.workflows.request_context import DEVICES, context_codes, device_code

TUESDAY_22H = 1_700_000_000  # 2023-11-14 22:13:20 UTC
SATURDAY_9H = 1_700_298_000  # 2023-11-18 09:00:00 UTC


def test_context_codes_are_utc_hour_weekday_and_device():
    got = context_codes([TUESDAY_22H, SATURDAY_9H, np.nan], ["ios", "smart-fridge", None])
    np.testing.assert_array_equal(got, [[2 + 22, 2 + 1, 2 + 1], [2 + 9, 2 + 5, 1], [0, 0, 0]])
    assert [device_code(d) for d in (None, "", "web", "OTHER", "fridge")] == [0, 0, 2, 2 + DEVICES.index("other"), 1]


def test_context_matches_the_datetime_parts_op():
    """The context is the DateTimeParts op's hour and weekday (the Workflow's own code), shifted to codes."""
    stamps = np.random.default_rng(0).integers(0, 4_000_000_000, 500)
    frame = pd.DataFrame({"ts": stamps})
    parts = Workflow(["ts"] >> DateTimeParts(("hour", "weekday"))).fit(frame, progress=False).transform(frame)
    codes = context_codes(stamps)  # integer seconds, as requests send them: the integer path
    np.testing.assert_array_equal(context_codes(stamps.astype(np.float64)), codes)  # the float path agrees
    np.testing.assert_array_equal(codes[:, 0], parts["ts_hour"].to_numpy() + 2)
    np.testing.assert_array_equal(codes[:, 1], parts["ts_weekday"].to_numpy() + 2)


def test_serving_step_validates_and_defaults_to_now():
    step = RequestContext()
    users = np.array([[1], [2]], np.int64)
    out = step.execute({"user_id": users, "request_time": np.array([[TUESDAY_22H], [SATURDAY_9H]], np.int64),
                        "device": np.array([[3], [0]], np.int64)})["context"]
    np.testing.assert_array_equal(out, context_codes([TUESDAY_22H, SATURDAY_9H], np.array([3, 0])))
    now = step.execute({"user_id": users})["context"]
    assert (now[:, :2] >= 2).all() and (now[:, 2] == 0).all()
    for bad in ({"request_time": np.array([[-5], [1]], np.int64)}, {"request_time": np.array([[1.5], [1]])},
                {"device": np.array([[99], [0]], np.int64)}, {"request_time": np.array([1, 2], np.int64)}):
        with pytest.raises(InputError):
            step.execute({"user_id": users, **bad})
    assert parse_time("2023-11-14T22:13:20Z") == parse_time("2023-11-14 22:13:20") == TUESDAY_22H
    with pytest.raises(InputError, match="--at"):
        parse_time("tomorrow-ish")



@pytest.mark.e2e
def test_training_context_equals_serving_context_for_the_same_timestamps(e2e_paths):
    """Every test interaction's context in the training data equals what the serving step computes
    from the same time sent as ``request_time``."""
    from recstack.models.data import load_training_data
    from recstack.workflows import Workflow as Saved

    data = load_training_data(e2e_paths)
    test = pd.read_parquet(e2e_paths.data / "test.parquet", columns=["user_id", "timestamp"])
    encoded = Saved.load(e2e_paths.workflow).transform(test[["user_id"]])["user_id"].to_numpy()
    by_user = dict(zip(data.test.users.tolist(), data.test.context.tolist()))
    trained = np.array([by_user[u] for u in encoded])
    served = RequestContext().execute({"user_id": test[["user_id"]].to_numpy(np.int64),
                                       "request_time": test[["timestamp"]].to_numpy(np.int64)})["context"]
    np.testing.assert_array_equal(served, trained)
    assert len(np.unique(trained[:, 0])) == 24 and len(np.unique(trained[:, 1])) == 7


@pytest.mark.e2e
def test_ranker_reads_context_and_the_server_uses_it(e2e_paths, e2e_server):
    """Through the real tritonserver: the ranker takes the context block; the same request at another
    hour / weekday gets other scores, the same time gets the same scores, no time = now."""
    config = json.loads((e2e_paths.models / "dlrm" / "config.json").read_text())
    assert [c["name"] for c in config["layout"]["context"]] == ["hour", "weekday"]
    assert "context" in config["onnx"]["dlrm.onnx"]["inputs"]
    users = [1, 2, 3, 4, 5]
    with TritonClient(e2e_server.grpc_url) as client:
        tuesday = recommend(client, users, k=20, request_time=TUESDAY_22H)
        again = recommend(client, users, k=20, request_time=TUESDAY_22H, device="ios")  # no device in training
        saturday = recommend(client, users, k=20, request_time=SATURDAY_9H)
        plain = recommend(client, users, k=20)  # an old caller: user_id and top_n only
    for a, b in zip(tuesday, again):
        assert a.item_ids == b.item_ids and a.scores == b.scores
    changed = [a.scores != b.scores for a, b in zip(tuesday, saturday) if not a.cold_start]
    assert changed and all(changed)
    assert all(len(p.item_ids) == 20 for p in plain)


@pytest.mark.e2e
def test_gateway_accepts_context_and_rejects_bad_values(gateway_url, e2e_server):
    with httpx.Client(base_url=gateway_url, timeout=30) as gateway, TritonClient(e2e_server.grpc_url) as direct:
        resp = gateway.get("/v1/users/1/recommendations", params={"k": 10, "request_time": "2023-11-18T09:00:00Z",
                                                                   "device": "android"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["context"] == {"request_time": SATURDAY_9H, "hour": 9, "weekday": 5, "device": "android"}
        (want,) = recommend(direct, [1], k=10, request_time=SATURDAY_9H, device="android")
        assert [i["item_id"] for i in body["items"]] == want.item_ids
        unix = gateway.get("/v1/users/1/recommendations", params={"k": 10, "request_time": str(SATURDAY_9H)}).json()
        assert unix["items"] == body["items"]
        now = gateway.get("/v1/users/1/recommendations").json()["context"]
        assert now["device"] is None and abs(now["request_time"] - time.time()) < 60
        for params, field in (({"device": "fridge"}, "device"), ({"request_time": "yesterday"}, "request_time"),
                              ({"request_time": "2023-11-18T09:00:00"}, "request_time"),
                              ({"request_time": "2200-01-01T00:00:00Z"}, "request_time")):
            resp = gateway.get("/v1/users/1/recommendations", params=params)
            assert resp.status_code == 422 and field in resp.text, (params, resp.text)
        metrics = gateway.get("/metrics").text
        assert 'recstack_recommendations_by_device_total{device="android"}' in metrics


@pytest.mark.e2e
def test_evaluate_reports_the_context_ablation(e2e_paths):
    from recstack.evaluation import format_table

    report = json.loads((e2e_paths.reports / "evaluation_test.json").read_text())
    assert report["context"]["ranker"] == ["hour", "weekday"]
    ablation = json.loads((e2e_paths.models / "dlrm_no_context" / "config.json").read_text())
    assert ablation["layout"]["context"] == [] and ablation["training"]["context"] is False
    rows = report["models"]
    assert {"two_tower+dlrm", "two_tower+dlrm_no_context", "dlrm_only", "dlrm_only_no_context"} <= set(rows)
    for name in ("two_tower+dlrm", "two_tower+dlrm_no_context", "dlrm_only", "dlrm_only_no_context"):
        assert 0 < rows[name]["ndcg@10"] <= rows[name]["hr@10"] <= 1
    assert "two_tower+dlrm_no_context" in format_table(report)
