"""Model versions: numbered exports with manifests, deploy and rollback on a running tritonserver
under steady load: zero failed requests, and the expected version in every response after each
switch."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from recstack.ensembles.graph import FUSED_NAME, MANIFEST_FILE, export_ensemble, recommendation_graph, run_manifest
from recstack.errors import InputError
from recstack.io import read_json, sha256_file
from recstack.serving.client import TritonClient
from recstack.serving.server import start_server
from recstack.serving.versions import deploy, list_versions, rollback

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_versions(e2e_paths, tmp_path_factory):
    """A repository with versions 1 (live) and 2 (exported with --no-deploy)."""
    repo = tmp_path_factory.mktemp("versions") / "triton_repo"
    graph = recommendation_graph(e2e_paths)
    export_ensemble(graph, repo, manifest=run_manifest(e2e_paths))
    export_ensemble(graph, repo, manifest=run_manifest(e2e_paths), deploy=False)
    return repo


def test_each_export_is_a_version_with_a_manifest(two_versions, e2e_paths):
    rows = list_versions(two_versions)
    assert [(r["version"], r["live"]) for r in rows] == [(1, True), (2, False)]
    manifest = read_json(two_versions / FUSED_NAME / "2" / MANIFEST_FILE)
    assert manifest["dataset"] == "ml-100k" and manifest["metrics"]["two_tower+dlrm"]["ndcg@10"] > 0
    assert manifest["data_window_unix_s"][0] < manifest["data_window_unix_s"][1]
    for name, digest in manifest["sha256"].items():  # every file of the version, as exported
        assert sha256_file(two_versions / FUSED_NAME / "2" / name) == digest
    with pytest.raises(InputError, match="--version: 7 is not a version"):
        deploy(two_versions, 7)


def test_deploy_and_rollback_under_load_lose_no_request(two_versions, e2e_paths):
    server = start_server(two_versions, e2e_paths.feature_repo)
    stop = threading.Event()
    results: list[tuple[float, object]] = []  # (request start, served version or the exception)

    def load() -> None:
        inputs = {"user_id": np.array([[1]], np.int64), "top_n": np.array([[10]], np.int32)}
        with TritonClient(server.grpc_url) as client:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    out = client.infer("recommend", inputs, ["item_ids", "model_version"])
                    results.append((start, int(out["model_version"][0, 0])))
                except Exception as exc:  # noqa: BLE001  counted: the test asserts there are none
                    results.append((start, exc))

    threads = [threading.Thread(target=load) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        deployed = deploy(two_versions, 2, server.http_url)
        after_deploy = time.monotonic()
        time.sleep(1.0)
        rolled = rollback(two_versions, server.http_url)
        after_rollback = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        server.stop()
    assert deployed == {"version": 2, "previous": 1, "reloaded": True}
    assert rolled == {"version": 1, "previous": 2, "reloaded": True}
    errors = [r for _, r in results if isinstance(r, Exception)]
    assert errors == [], errors[:3]
    between = [v for t, v in results if after_deploy < t < after_rollback - 0.5]
    after = [v for t, v in results if t > after_rollback]
    print(f"{len(results)} requests through deploy and rollback, 0 failed; "
          f"{len(between)} started on v2, {len(after)} after rollback")
    assert between and set(between) == {2}
    assert after and set(after) == {1}
    assert [r["live"] for r in list_versions(two_versions)] == [True, False]
