"""The gateway against the real tritonserver, online store and event log (ML-100K e2e run)."""

from __future__ import annotations

import time

import httpx
import pytest

from recstack.serving.client import TritonClient
from recstack.serving.recommend import recommend

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateway(gateway_url):
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def fresh_users(e2e_paths):
    import itertools

    import pandas as pd

    top = int(pd.read_parquet(e2e_paths.data / "interactions.parquet", columns=["user_id"])["user_id"].max())
    return itertools.count(top + 50_000)


def test_recommendations_match_triton_and_carry_titles(gateway, e2e_server):
    body = gateway.get("/v1/users/1/recommendations", params={"k": 10}).json()
    with TritonClient(e2e_server.grpc_url) as direct:
        (want,) = recommend(direct, [1], k=10)
    assert [i["item_id"] for i in body["items"]] == want.item_ids
    assert all(i["title"] and not i["title"].startswith("item ") for i in body["items"])
    assert body["cold_start"] is False and body["model_version"] >= 1
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_exclude_removes_items_and_still_fills_k(gateway):
    first = [i["item_id"] for i in gateway.get("/v1/users/2/recommendations", params={"k": 5}).json()["items"]]
    again = gateway.get("/v1/users/2/recommendations", params={"k": 5, "exclude": ",".join(map(str, first[:2]))})
    ids = [i["item_id"] for i in again.json()["items"]]
    assert len(ids) == 5 and not set(ids) & set(first[:2]) and ids[:3] == first[2:]


def test_posted_event_is_in_the_next_recommendations(gateway, fresh_users):
    user = next(fresh_users)
    cold = gateway.get(f"/v1/users/{user}/recommendations").json()
    assert cold["cold_start"] is True
    item = cold["items"][0]["item_id"]
    sent = time.perf_counter()
    resp = gateway.post("/v1/events", json={"events": [
        {"event_id": f"t-{user}-1", "user": user, "item": item, "type": "click"}]})
    assert resp.status_code == 200 and resp.json()["accepted"] == 1
    while True:  # applied by the gateway's consumer thread: within a second
        warm = gateway.get(f"/v1/users/{user}/recommendations").json()
        if not warm["cold_start"]:
            break
        assert time.perf_counter() - sent < 1.0, "event not reflected within 1 s"
        time.sleep(0.02)
    assert item not in [i["item_id"] for i in warm["items"]]


def test_duplicate_event_ids_are_stored_once(gateway, fresh_users):
    user = next(fresh_users)
    event = {"event_id": f"dup-{user}", "user": user, "item": 50, "type": "view"}
    first = gateway.post("/v1/events", json={"events": [event, event]}).json()
    second = gateway.post("/v1/events", json={"events": [event]}).json()
    assert (first["accepted"], first["duplicates"]) == (1, 1)
    assert (second["accepted"], second["duplicates"]) == (0, 1)
    assert len(set(first["offsets"] + second["offsets"])) == 1


def test_new_user_with_genres_is_personalised_at_once(gateway, fresh_users):
    user = next(fresh_users)
    resp = gateway.post("/v1/users", json={"user_id": user, "genres": ["Horror"]})
    assert resp.status_code == 201
    picked = resp.json()["onboarding_items"]
    assert len(picked) == 3
    body = gateway.get(f"/v1/users/{user}/recommendations").json()
    assert body["cold_start"] is False and not set(picked) & {i["item_id"] for i in body["items"]}


def test_similar_items(gateway):
    body = gateway.get("/v1/items/50/similar", params={"k": 5}).json()
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 5 and 50 not in ids
    assert gateway.get("/v1/items/99999999/similar").status_code == 404


@pytest.mark.parametrize("method, url, payload, field", [
    ("get", "/v1/users/1/recommendations?k=0", None, "k"),
    ("get", "/v1/users/1/recommendations?k=101", None, "k"),
    ("get", "/v1/users/abc/recommendations", None, "user_id"),
    ("get", "/v1/users/1/recommendations?exclude=1,x", None, "exclude"),
    ("post", "/v1/events", {"events": []}, "events"),
    ("post", "/v1/events", {"events": [{"event_id": "x", "user": 1, "item": 2, "type": "teleport"}]}, "type"),
    ("post", "/v1/events", {"events": [{"event_id": "x", "user": 1, "type": "view"}]}, "item"),
    ("post", "/v1/events", {"events": [{"event_id": "x", "user": 1, "item": 2, "type": "rating"}]}, "value"),
    ("post", "/v1/users", {"user_id": 5, "genres": ["Not-a-genre"]}, "genres"),
    ("post", "/v1/users", {"user_id": 5, "items": [99999999]}, "items"),
])
def test_bad_input_is_a_422_naming_the_field(gateway, method, url, payload, field):
    resp = getattr(gateway, method)(url, **({"json": payload} if payload is not None else {}))
    assert resp.status_code == 422, resp.text
    assert field in resp.text


def test_health_readiness_and_metrics(gateway):
    assert gateway.get("/healthz").json()["status"] == "ok"
    ready = gateway.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"triton": "ok", "online_store": "ok",
                                                                     "event_log": "ok"}
    text = gateway.get("/metrics").text
    for name in ("recstack_gateway_request_seconds_bucket", "recstack_events_accepted_total",
                 "recstack_events_lag", "recstack_recommendations_total"):
        assert name in text


def test_write_endpoints_need_the_api_key_when_one_is_set(e2e_paths, e2e_server):
    from fastapi.testclient import TestClient

    from recstack.serving.gateway import GatewayConfig, create_app

    app = create_app(GatewayConfig(e2e_paths, e2e_server.grpc_url, api_key="s3cret"))
    event = {"events": [{"event_id": "key-1", "user": 1, "item": 50, "type": "view"}]}
    with TestClient(app) as client:
        assert client.post("/v1/events", json=event).status_code == 401
        assert client.post("/v1/events", json=event, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/v1/events", json=event, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/v1/users/1/recommendations").status_code == 200  # reads stay open


def test_dashboard_snapshot_under_load(gateway_url, e2e_server, cli_env, tmp_path, capsys):
    from recstack.cli import main

    assert main(["bench", "dashboard", "--dataset", "ml-100k", "--gateway-url", gateway_url,
                 "--triton-metrics-url", e2e_server.metrics_url, "--seconds", "4", "--interval", "0.5",
                 "--rate", "20", "--events-per-second", "50", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    stats = dict(kv.split("=") for kv in out.splitlines()[-2].split())
    assert float(stats["recommendations_per_s"]) > 5 and float(stats["errors"]) == 0
    assert float(stats["events_accepted"]) >= 150 and int(stats["sent_errors"]) == 0
    assert 0 < float(stats["p50_ms"]) <= float(stats["p95_ms"])
    assert (tmp_path / "bench_dashboard.png").stat().st_size > 20_000
