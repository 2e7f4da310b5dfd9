"""A/B experiments and the web page through the real stack: a tritonserver serving two versions of
the fused model (the experiment's version loaded beside the live one), the gateway running an
experiments file, its exposure log, and the page driven in headless Chromium (Playwright)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from recstack.errors import InputError
from recstack.serving.ab.experiments import load_experiment

pytestmark = pytest.mark.e2e

EXPERIMENTS = """\
name: versions-test
salt: e2e-salt
variants:
  - {name: control, share: 0.5}
  - {name: v2, share: 0.5, model_version: 2}
"""
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "web_page.png"


@pytest.fixture(scope="module")
def ab_stack(e2e_paths, tmp_path_factory):
    """(server, gateway client, experiments path, folder): versions 1 (live) and 2 (the experiment's),
    loaded on the running server by `load_versions`; gateway and server share a live-item registry."""
    from conftest import run_gateway

    from recstack.ensembles.graph import (
        export_ensemble,
        recommendation_graph,
        run_manifest,
    )
    from recstack.serving.gateway import GatewayConfig
    from recstack.serving.server import start_server
    from recstack.serving.versions import load_versions

    folder = tmp_path_factory.mktemp("ab_stack")
    repo = folder / "triton_repo"
    graph = recommendation_graph(e2e_paths)
    export_ensemble(graph, repo, manifest=run_manifest(e2e_paths))
    export_ensemble(graph, repo, manifest=run_manifest(e2e_paths), deploy=False)
    experiments = folder / "experiments.yaml"
    experiments.write_text(EXPERIMENTS)
    registry = folder / "live.db"
    server = start_server(repo, e2e_paths.feature_repo, live_items=registry)
    try:
        loaded = load_versions(repo, load_experiment(experiments).model_versions(), server.http_url)
        assert loaded == {"live": 1, "loaded": [1, 2], "reloaded": True}
        gateway = run_gateway(GatewayConfig(e2e_paths, server.grpc_url, api_key=None, live_items=registry,
                                            event_log=f"sqlite:///{folder / 'log.db'}", experiments=experiments,
                                            exposure_log=f"sqlite:///{folder / 'exposures.db'}"))
        url = next(gateway)
        with httpx.Client(base_url=url, timeout=30) as client:
            yield server, client, experiments, folder
        next(gateway, None)
    finally:
        server.stop()


def test_ensemble_stays_on_the_live_version_while_the_experiment_version_is_loaded(ab_stack):
    import numpy as np

    from recstack.serving.client import TritonClient

    server, *_ = ab_stack
    inputs = {"user_id": np.array([[1]], np.int64), "top_n": np.array([[5]], np.int32)}
    with TritonClient(server.grpc_url) as client:
        assert int(client.infer("recommend", inputs, ["model_version"])["model_version"][0, 0]) == 1
        assert client.is_ready("recommend_steps")
    from tritonclient import grpc

    direct = grpc.InferenceServerClient(server.grpc_url)
    try:
        assert direct.is_model_ready("recommend_steps", "1") and direct.is_model_ready("recommend_steps", "2")
    finally:
        direct.close()


def test_every_recommendation_carries_its_sticky_variant_and_is_served_by_its_version(ab_stack):
    from recstack.events import SqliteEventLog
    from recstack.serving.ab.exposures import parse_exposure_id
    from recstack.serving.ab.report import read_all

    _, gateway, experiments, folder = ab_stack
    experiment = load_experiment(experiments)
    served = {}
    for user in range(1, 41):
        body = gateway.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
        want = experiment.assign(user).name
        assert body["experiment"] == "versions-test" and body["variant"] == want, body
        assert body["model_version"] == (2 if want == "v2" else 1)
        served[user] = [i["item_id"] for i in body["items"]]
    assert {experiment.assign(u).name for u in served} == {"control", "v2"}
    again = gateway.get("/v1/users/7/recommendations", params={"k": 5}).json()
    assert again["variant"] == experiment.assign(7).name  # sticky
    exposures = read_all(SqliteEventLog(folder / "exposures.db"))
    for user, items in served.items():
        mine = exposures[exposures["user_id"] == user]
        first = mine[mine["event_id"].map(lambda e: parse_exposure_id(e).request_id) ==
                     parse_exposure_id(mine["event_id"].iloc[0]).request_id]
        assert first["item_id"].tolist() == items and first["value"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert {parse_exposure_id(e).variant for e in mine["event_id"]} == {experiment.assign(user).name}


def test_ab_report_counts_a_click_on_a_shown_item(ab_stack, cli_env, capsys, e2e_paths):
    from recstack.cli import main

    _, gateway, experiments, folder = ab_stack
    user = 3
    shown = gateway.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
    resp = gateway.post("/v1/events", json={"events": [
        {"event_id": f"ab-click-{user}", "user": user, "item": shown["items"][1]["item_id"], "type": "click"}]})
    assert resp.status_code == 200
    args = ["ab", "report", "--dataset", "ml-100k", "--experiments", str(experiments), "--json",
            "--event-log", f"sqlite:///{folder / 'log.db'}", "--exposure-log", f"sqlite:///{folder / 'exposures.db'}"]
    assert main(args) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    mine = report["variants"][shown["variant"]]
    assert mine["click"]["users"] == 1 and mine["users"] >= 1 and report["mismatched"] == 0
    assert sum(v["users"] for v in report["variants"].values()) == 40  # users 1..40 of the test above


def test_variants_are_checked_against_the_served_model_metadata(ab_stack, tmp_path):
    from recstack.serving.ab.experiments import parse_experiment
    from recstack.serving.ab.exposures import open_exposure_log
    from recstack.serving.gateway.app import Recommender
    from recstack.serving.gateway.experiment import ExperimentRouter

    server, *_ = ab_stack

    async def check(variant: dict) -> dict:
        recommender = Recommender(server.grpc_url, 10.0)
        router = ExperimentRouter(parse_experiment({"name": "x", "salt": "s", "variants": [
            {"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, **variant}]}),
            open_exposure_log(None, f"sqlite:///{tmp_path / 'x.db'}"))
        try:
            await router.check(recommender)
            return router.routes
        finally:
            router.close()
            await recommender.close()

    routes = asyncio.run(check({"model_version": 2}))
    assert (routes["b"].model, routes["b"].version) == ("recommend_steps", "2") and routes["a"].model == "recommend"
    with pytest.raises(InputError, match="variant b: model recommend_steps version 3 is not loaded"):
        asyncio.run(check({"model_version": 3}))
    routes = asyncio.run(check({"params": {"diversity_lambda": 0.3}}))  # an optional input of the ensemble
    sent = routes["b"].inputs["diversity_lambda"]
    assert sent.dtype == np.float32 and sent.shape == (1, 1) and sent[0, 0] == np.float32(0.3)
    with pytest.raises(InputError, match=r"variant b: params.no_such_input is not an input of model recommend "
                                         r"\(inputs: .*top_n, user_id"):
        asyncio.run(check({"params": {"no_such_input": 0.5}}))


def test_web_page_click_changes_the_list_and_a_new_item_is_explored(ab_stack):
    """Headless Chromium (Debian's, through Playwright): create a user, click, add an item."""
    from playwright.sync_api import sync_playwright

    _, gateway, *_ = ab_stack
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(f"{gateway.base_url}/ui")
            page.wait_for_selector("body[data-ready='1']")
            page.select_option("#genres", ["Comedy", "Romance"])
            page.click("#new-user")
            page.wait_for_function("document.querySelectorAll('#recs li').length === 10", timeout=15_000)
            before = page.get_attribute("body", "data-list").split(",")
            assert page.text_content("#variant").startswith("variant ")
            page.click("#recs li:first-child button.click")
            page.wait_for_function(f"document.body.dataset.list !== {','.join(before)!r}", timeout=15_000)
            after = page.get_attribute("body", "data-list").split(",")
            assert after != before and before[0] not in after  # the clicked item is seen now: not offered again
            assert "the list changed" in page.text_content("#status")

            page.fill("#item-id", "991234")
            page.fill("#item-title", "A Brand New Comedy (2026)")
            page.select_option("#item-genres", ["Comedy"])
            page.click("#add-item")
            page.wait_for_selector("#recs li[data-item-id='991234'] .badge.explored", timeout=15_000)
            time.sleep(0.2)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
