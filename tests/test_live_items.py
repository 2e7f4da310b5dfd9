"""Items added after training: the registry, the serving steps that take them in without a reload,
exploration slots, and the whole path through the real tritonserver and gateway."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pandas as pd
import pytest

from recstack.ensembles.live import LIVE_POLL_S, ItemTower, LiveItemFeed, model_layout
from recstack.ensembles.steps import FilterTopN, QueryIndex, QueryItemFeatures
from recstack.errors import InputError
from recstack.features.live_items import DuplicateItem, LiveItems, live_code
from recstack.io import read_json
from recstack.serving.items import ItemAdder

NEW_ITEM = {"item_id": 990_001, "title": "A New Comedy (2026)", "features": {"genres": ["Comedy", "Romance"],
                                                                          "year": 2026.0}}


def test_registry_keeps_order_refuses_repeats_and_is_empty_before_the_first_add(tmp_path):
    registry = LiveItems(tmp_path / "items" / "live.db")
    assert registry.since(0) == [] and registry.last_seq() == 0 and not registry.path.exists()
    first = registry.add([{"item_id": 7, "title": "a"}, {"item_id": -3, "features": {"x": [1, 2]}}], now=100.0)
    assert [(i.seq, i.item_id) for i in first] == [(1, 7), (2, -3)]
    with pytest.raises(DuplicateItem, match="item_id: 7 was already added"):
        registry.add([{"item_id": 8}, {"item_id": 7}])
    with pytest.raises(InputError, match="given twice"):
        registry.add([{"item_id": 9}, {"item_id": 9}])
    with pytest.raises(InputError, match=r"items\[0\].item_id"):
        registry.add([{"item_id": "9"}])
    assert registry.last_seq() == 2  # the refused batches stored nothing
    other = LiveItems(registry.path)  # another process's view
    assert [i.item_id for i in other.since(1)] == [-3] and other.since(1)[0].features == {"x": [1, 2]}
    assert set(other.lookup([7, 8, -3])) == {7, -3}
    assert live_code(1, 1680) == 1680 and live_code(3, 1680) == 1682


def test_item_tower_reproduces_the_trained_item_embeddings(e2e_paths):
    tower_dir = e2e_paths.models / "two_tower"
    layout = model_layout(tower_dir)
    from recstack.workflows import Workflow

    items = pd.read_parquet(e2e_paths.data / "items.parquet")
    encoded = Workflow.load(e2e_paths.workflow).transform(items)
    blocks = layout.tensors(encoded, sides=("item",))
    codes = blocks["item_cat"][:, 0]
    trained = np.load(tower_dir / "item_embeddings.npy")
    ok = codes >= 2
    got = ItemTower(tower_dir).embed({k: v[ok] for k, v in blocks.items()})
    np.testing.assert_allclose(got, trained[codes[ok]], atol=1e-4)


@pytest.fixture()
def adder(e2e_paths, tmp_path):
    adder = ItemAdder(e2e_paths, tmp_path / "live.db")
    yield adder
    adder.close()


def test_adder_checks_ids_and_features_against_the_run(adder):
    with pytest.raises(DuplicateItem, match="item_id: 50 is in the trained catalogue"):
        adder.add([{"item_id": 50}])
    with pytest.raises(InputError, match=r"items\[0\].features.genre: not an item feature"):
        adder.add([{"item_id": 990_002, "features": {"genre": ["Comedy"]}}])
    with pytest.raises(InputError, match=r"items\[0\].features.year: 'soon' is not a value of type float"):
        adder.add([{"item_id": 990_002, "features": {"year": "soon"}}])
    with pytest.raises(InputError, match="features.year"):
        adder.add([{"item_id": 990_002, "features": {"year": float("nan")}}])
    assert adder.registry.last_seq() == 0
    (added,) = adder.add([NEW_ITEM])
    assert added.seq == 1 and added.features == {"year": 2026.0, "genres": ["Comedy", "Romance"]}
    with pytest.raises(DuplicateItem):
        adder.add([NEW_ITEM])


def _steps(e2e_paths, registry):
    tower = str(e2e_paths.models / "two_tower")
    dim = int(read_json(e2e_paths.models / "two_tower" / "config.json")["embedding_dim"])
    index = QueryIndex(str(e2e_paths.index), str(e2e_paths.features / "popularity.parquet"), top_k=10,
                       dimension=dim, model_dir=tower, workflow_dir=str(e2e_paths.workflow), live_items=str(registry))
    features = QueryItemFeatures(str(e2e_paths.features), str(e2e_paths.models / "dlrm"),
                                 workflow_dir=str(e2e_paths.workflow), live_items=str(registry))
    return index, features


def test_an_added_item_is_retrievable_on_the_next_query_without_a_reload(e2e_paths, adder):
    index, features = _steps(e2e_paths, adder.registry.path)
    size = len(index.index)
    (added,) = adder.add([NEW_ITEM])
    feed = LiveItemFeed(adder.registry.path, e2e_paths.workflow, e2e_paths.models / "two_tower")
    batch = feed.poll()
    query = ItemTower(e2e_paths.models / "two_tower").embed(batch.blocks)  # a user who wants exactly it
    time.sleep(LIVE_POLL_S + 0.05)
    out = index.execute({"user_embedding": query, "seen_items": np.zeros((1, 1), np.int64),
                         "user_known": np.ones((1, 1), np.int32)})
    code = live_code(added.seq, feed.base)
    assert len(index.index) == size + 1 and out["candidate_ids"][0, 0] == code
    assert out["retrieval_scores"][0, 0] == pytest.approx(1.0, abs=1e-4)  # unit vectors
    seen = index.execute({"user_embedding": query, "seen_items": np.array([[code]], np.int64),
                          "user_known": np.ones((1, 1), np.int32)})
    assert code not in seen["candidate_ids"][0]
    rows = features.execute({"candidate_ids": out["candidate_ids"]})
    assert rows["candidate_keys"][0, 0] == NEW_ITEM["item_id"]
    assert rows["item_cat"][0, 0, 0] == 1  # the models have no id embedding for it: out of vocabulary
    np.testing.assert_array_equal(rows["item_lists"][0, 0], batch.blocks["item_lists"][0])
    before = features.execute({"candidate_ids": out["candidate_ids"][:, 1:]})  # trained rows unchanged
    assert (before["candidate_keys"] >= 0).all()


def _filter_inputs(n_rows: int, top_n: int, seen_code: int | None = None) -> dict[str, np.ndarray]:
    k = 20
    seen = np.zeros((n_rows, 1), np.int64) if seen_code is None else np.full((n_rows, 1), seen_code, np.int64)
    return {"candidate_keys": np.tile(np.arange(100, 100 + k, dtype=np.int64), (n_rows, 1)),
            "candidate_ids": np.tile(np.arange(2, 2 + k, dtype=np.int64), (n_rows, 1)),
            "rank_scores": np.tile(np.linspace(1, 0, k, dtype=np.float32), (n_rows, 1)),
            "retrieval_scores": np.zeros((n_rows, k), np.float32), "seen_items": seen,
            "user_known": np.ones((n_rows, 1), np.int32), "top_n": np.full((n_rows, 1), top_n, np.int32)}


def test_exploration_gives_new_items_their_share_of_slots_and_never_a_seen_one(e2e_paths, adder):
    adder.add([NEW_ITEM, {"item_id": 990_003, "features": {"genres": ["Drama"]}}])
    kwargs = dict(workflow_dir=str(e2e_paths.workflow), model_dir=str(e2e_paths.models / "dlrm"),
                  live_items=str(adder.registry.path), seed=0)
    step = FilterTopN(exploration_share=0.2, **kwargs)
    out = step.execute(_filter_inputs(50, 10))
    assert (out["explored"].sum(axis=1) == 2).all()  # 0.2 x 10 slots, exactly, in every list
    assert (out["explored"][:, -2:] == 1).all() and (out["explored"][:, :8] == 0).all()  # the ranked head stays
    assert set(np.unique(out["item_ids"][:, -2:])) == {990_001, 990_003}
    assert np.isnan(out["scores"][:, -2:]).all() and np.isfinite(out["scores"][:, :8]).all()
    np.testing.assert_array_equal(out["item_ids"][:, :8], np.tile(np.arange(100, 108), (50, 1)))

    base = model_layout(e2e_paths.models / "dlrm").item.id_column.cardinality
    seen = step.execute(_filter_inputs(20, 10, seen_code=live_code(1, base)))
    assert 990_001 not in seen["item_ids"] and (seen["item_ids"][seen["explored"] == 1] == 990_003).all()

    fractional = FilterTopN(exploration_share=0.15, **kwargs).execute(_filter_inputs(400, 10))
    assert 1.3 < fractional["explored"].sum(axis=1).mean() < 1.7  # 1.5 slots on average

    off = FilterTopN(exploration_share=0.0, **kwargs).execute(_filter_inputs(5, 10))
    assert not off["explored"].any()
    old = FilterTopN(exploration_share=0.5, exploration_window_s=1e-3, **kwargs)
    time.sleep(0.01)
    assert not old.execute(_filter_inputs(5, 10))["explored"].any()  # past the exploration window


def test_events_for_an_added_item_are_encoded_with_its_live_code(e2e_paths, adder):
    from recstack.events import WorkflowItemEncoder

    encoder = WorkflowItemEncoder.load(e2e_paths.workflow, adder.registry.path)
    assert encoder([990_001]).tolist() == [1]  # not added yet: out of vocabulary (skipped by the updater)
    (added,) = adder.add([NEW_ITEM])
    codes = encoder([50, 990_001]).tolist()
    assert codes[0] >= 2 and codes[1] == live_code(added.seq, encoder.base)


def test_retrain_folds_added_items_with_their_features():
    from recstack.events.fold import with_live_items
    from recstack.features.live_items import LiveItem

    table = pd.DataFrame({"item_id": np.array([1, 2], np.int64), "title": ["a", "b"],
                          "year": np.array([1990, 1991], np.float32), "genres": [["Drama"], ["Comedy"]]})
    live = [LiveItem(1, 2, "dup", {}, 0.0), LiveItem(2, 9, "new", {"genres": ["Horror"]}, 0.0)]
    out = with_live_items(table, live)
    assert out["item_id"].tolist() == [1, 2, 9] and out["title"].tolist() == ["a", "b", "new"]
    assert out["genres"].iloc[2] == ["Horror"] and np.isnan(out["year"].iloc[2]) and out["year"].dtype == np.float32


# ------------------------------------------------------------------ through tritonserver and the gateway


@pytest.fixture(scope="module")
def live_stack(e2e_paths, tmp_path_factory):
    """A tritonserver and a gateway sharing a live-item registry (and an event log) of their own."""
    from conftest import run_gateway

    from recstack.serving.gateway import GatewayConfig
    from recstack.serving.server import start_server

    folder = tmp_path_factory.mktemp("live_stack")
    registry = folder / "live.db"
    server = start_server(e2e_paths.triton_repo, e2e_paths.feature_repo, live_items=registry)
    try:
        gateway = run_gateway(GatewayConfig(e2e_paths, server.grpc_url, api_key=None, live_items=registry,
                                            event_log=f"sqlite:///{folder / 'log.db'}"))
        url = next(gateway)
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
        next(gateway, None)
    finally:
        server.stop()


def _items_added(gateway: httpx.Client) -> float:
    import re

    return float(re.search(r"^recstack_items_added_total (\S+)$", gateway.get("/metrics").text, re.M).group(1))


@pytest.mark.e2e
def test_a_posted_item_is_served_within_a_second_and_found_by_similar(live_stack, e2e_paths):
    gateway = live_stack
    added_before = _items_added(gateway)
    before = gateway.get("/v1/users/1/recommendations", params={"k": 10}).json()
    assert before["explored"] == 0 and all(not i["explored"] for i in before["items"])
    assert gateway.post("/v1/items", json={"item_id": 990_001, "features": {"genre": []}}).status_code == 422
    resp = gateway.post("/v1/items", json=NEW_ITEM)
    assert resp.status_code == 201, resp.text
    added_at = time.perf_counter()
    assert gateway.post("/v1/items", json=NEW_ITEM).status_code == 409
    assert gateway.post("/v1/items", json={"item_id": 50}).status_code == 409
    while True:  # the steps poll the registry every LIVE_POLL_S
        body = gateway.get("/v1/users/1/recommendations", params={"k": 10}).json()
        if body["explored"]:
            break
        assert time.perf_counter() - added_at < 1.0, "the new item was not served within a second"
        time.sleep(0.02)
    print(f"item added -> served: {1000 * (time.perf_counter() - added_at):.0f} ms")
    (slot,) = [i for i in body["items"] if i["explored"]]
    assert slot == {"item_id": 990_001, "title": NEW_ITEM["title"], "score": None, "explored": True,
                    "reason": {"kind": "new", "text": "new: recently added", "item_id": None, "title": None,
                               "similarity": None, "genre": None, "score": None}}
    assert body["items"][:9] == before["items"][:9]  # the ranked head is untouched (share 0.1 of 10)

    similar = gateway.get("/v1/items/990001/similar", params={"k": 5}).json()["items"]
    assert len(similar) == 5 and all(i["item_id"] != 990_001 for i in similar)

    user = 990_500  # a new user clicks the new item: the item is seen, not offered again
    events = {"events": [{"event_id": "live-1", "user": user, "item": 990_001, "type": "click"}]}
    assert gateway.post("/v1/events", json=events).json()["accepted"] == 1
    deadline = time.perf_counter() + 5
    while True:
        body = gateway.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
        if not body["cold_start"]:
            break
        assert time.perf_counter() < deadline, "the event on the new item was not applied"
        time.sleep(0.05)
    assert 990_001 not in [i["item_id"] for i in body["items"]] and len(body["items"]) == 10
    metrics = gateway.get("/metrics").text
    assert 'recstack_recommended_items_total{explored="true"}' in metrics
    assert _items_added(gateway) == added_before + 1
