"""End to end on ML-100K: the pipeline builds, a real tritonserver serves the exported ensemble
(Feast SQLite online store, FAISS, ONNX towers and ranker inside Triton python models), and
known, unknown and just-updated users behave as the README says. No mocks."""

from __future__ import annotations

import importlib
import itertools
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from recstack.cli import main as cli_main
from recstack.ensembles import export_ensemble, recommendation_graph
from recstack.ensembles.graph import MAX_BATCH_SIZE
from recstack.ensembles.python_model import VERSION_OUTPUT
from recstack.features import OnlineFeatures
from recstack.features.events import push_event
from recstack.io import read_json
from recstack.models.layout import FeatureLayout
from recstack.paths import RunPaths
from recstack.serving.client import TritonClient, TritonRequestError
from recstack.serving.recommend import recommend
from recstack.serving.server import start_server
from recstack.workflows import Workflow

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(store):
    """A gRPC client of the server of ``store``: tests taking it run once per online store (SQLite, Redis)."""
    with TritonClient(store.server.grpc_url, protocol="grpc") as grpc_client:
        yield grpc_client


@pytest.fixture(scope="module")
def sqlite_client(e2e_server):
    with TritonClient(e2e_server.grpc_url, protocol="grpc") as grpc_client:
        yield grpc_client


@pytest.fixture(scope="module")
def seen_raw(e2e_paths) -> dict[int, set[int]]:
    """Raw item ids each user interacted with in train + valid (what serving must exclude)."""
    frames = [pd.read_parquet(e2e_paths.data / f"{s}.parquet", columns=["user_id", "item_id"]) for s in ("train", "valid")]
    both = pd.concat(frames)
    return {int(u): set(g.tolist()) for u, g in both.groupby("user_id")["item_id"]}


def test_known_user_gets_personalised_unseen_items(client, seen_raw):
    recs = recommend(client, [1, 2, 3], k=10)
    for rec in recs:
        assert not rec.cold_start
        assert len(rec.item_ids) == 10 and len(set(rec.item_ids)) == 10
        assert not set(rec.item_ids) & seen_raw[rec.user_id], "a seen item was recommended"
        assert rec.scores == sorted(rec.scores, reverse=True)
    assert recs[0].item_ids != recs[1].item_ids, "two users got identical lists: not personalised"


def test_unknown_user_gets_the_popularity_that_evaluate_ranks_by(client, e2e_paths):
    (rec,) = recommend(client, [987_654_321], k=10)
    popular = pd.read_parquet(e2e_paths.features / "popularity.parquet")
    assert rec.cold_start
    assert rec.item_ids == popular["item_key"].head(10).tolist()


@pytest.fixture(scope="module")
def new_user_ids(e2e_paths) -> itertools.count:
    """Raw user ids above every id in the data: a test that pushes events takes its own, so by
    construction no other test reads a user whose history it changes."""
    top = int(pd.read_parquet(e2e_paths.data / "interactions.parquet", columns=["user_id"])["user_id"].max())
    return itertools.count(top + 1_000)


def _push(e2e_paths, store, user: int, item: int, timestamp: float | None = None) -> dict:
    return push_event(e2e_paths, user, item, timestamp, online=OnlineFeatures(store.feature_repo))


def _copy_of_user(e2e_paths, store, new_user_ids, source_user: int) -> int:
    """A new user whose online history is ``source_user``'s train + valid items, pushed as events."""
    user = next(new_user_ids)
    rows = pd.concat([pd.read_parquet(e2e_paths.data / f"{s}.parquet") for s in ("train", "valid")])
    rows = rows[rows["user_id"] == source_user].sort_values("timestamp", kind="stable")
    online, workflow = OnlineFeatures(store.feature_repo), Workflow.load(e2e_paths.workflow)
    for item, ts in zip(rows["item_id"], rows["timestamp"]):
        push_event(e2e_paths, user, int(item), float(ts), online=online, workflow=workflow)
    return user


def test_pushed_event_changes_next_request_without_restart(client, store, e2e_paths, new_user_ids):
    user = _copy_of_user(e2e_paths, store, new_user_ids, source_user=7)
    (before,) = recommend(client, [user], k=10)
    assert not before.cold_start
    item = before.item_ids[0]
    pushed = _push(e2e_paths, store, user, item)
    (after,) = recommend(client, [user], k=10)
    assert item not in after.item_ids
    recent, _, known = OnlineFeatures(store.feature_repo).histories([user])
    assert known[0] and recent[0][-1] == pushed["encoded_item_id"]
    # the user is re-embedded from the new history: items in both lists change score
    both = set(before.item_ids) & set(after.item_ids)
    score = lambda rec: dict(zip(rec.item_ids, rec.scores))  # noqa: E731
    assert both and any(abs(score(before)[i] - score(after)[i]) > 1e-6 for i in both)


def test_new_user_with_one_event_leaves_cold_start(client, store, e2e_paths, new_user_ids):
    user = next(new_user_ids)
    (cold,) = recommend(client, [user], k=5)
    assert cold.cold_start
    _push(e2e_paths, store, user, cold.item_ids[0])
    (warm,) = recommend(client, [user], k=5)
    assert not warm.cold_start and cold.item_ids[0] not in warm.item_ids


def test_two_tower_plus_dlrm_beats_popularity(e2e_paths):
    report = read_json(e2e_paths.reports / "evaluation_test.json")
    ndcg = {name: row["ndcg@10"] for name, row in report["models"].items()}
    print("NDCG@10 on ML-100K test:", ndcg)
    assert ndcg["two_tower+dlrm"] > ndcg["popularity"]
    assert ndcg["two_tower"] > ndcg["popularity"]


# ---------------------------------------------------------------- numpy-2 / DLPack guard

def _random_inputs(op, layout: FeatureLayout, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    """Random but valid values for every input of one serving step."""
    bounds = {"history": layout.n_items, "seen_items": layout.n_items, "candidate_ids": layout.n_items,
              "candidate_keys": 1683, "user_id": 1000, "request_time": 4_000_000_000, "request_seconds": 4_000_000_000,
              "device": 8, "context": 8}  # context: codes below every context column's cardinality
    out = {}
    for spec in op.inputs:
        shape = (batch,) + tuple(7 if d == -1 else d for d in spec.dims)
        if spec.name in ("diversity_lambda", "freshness_weight"):  # valid: 0..1
            out[spec.name] = rng.random(shape).astype(np.float32)
        elif spec.dtype == np.float32:
            out[spec.name] = rng.normal(size=shape).astype(np.float32)
        elif spec.name in ("user_cat", "item_cat"):
            side = layout.user if spec.name == "user_cat" else layout.item
            cols = [rng.integers(0, c.cardinality, shape[:-1]) for c in side.cat]
            out[spec.name] = np.stack(cols, axis=-1).astype(np.int64)
        elif spec.name == "item_lists":
            out[spec.name] = rng.integers(0, layout.item.lists[0].cardinality, shape).astype(np.int64)
        elif spec.name in ("user_known", "store_unavailable"):
            out[spec.name] = rng.integers(0, 2, shape).astype(np.int32)
        elif spec.name == "top_n":
            out[spec.name] = rng.integers(1, 20, shape).astype(np.int32)
        elif spec.name == "history_times":  # a time-gap user tower: increasing unix seconds
            out[spec.name] = (1_000_000_000 + np.cumsum(rng.integers(0, 10**7, shape), axis=-1)).astype(np.int64)
        elif spec.name == "genre_cap":
            out[spec.name] = rng.integers(0, 4, shape).astype(np.int32)
        else:
            out[spec.name] = rng.integers(0, bounds[spec.name], shape).astype(spec.dtype)
    return out


@pytest.fixture(scope="module")
def per_step_server(e2e_paths, tmp_path_factory):
    """The same graph exported one python model per step (not fused), on a server of its own."""
    repo = tmp_path_factory.mktemp("per_step") / "triton_repo"
    export_ensemble(recommendation_graph(e2e_paths), repo, fuse=False)
    server = start_server(repo, e2e_paths.feature_repo)
    try:
        yield server
    finally:
        server.stop()


def test_every_python_model_round_trips_random_tensors_through_the_server(per_step_server, e2e_paths):
    layout = FeatureLayout.from_dict(read_json(e2e_paths.models / "dlrm" / "config.json")["layout"])
    rng = np.random.default_rng(0)
    graph = recommendation_graph(e2e_paths)
    with TritonClient(per_step_server.grpc_url) as step_client:
        for op in graph.ops:
            module, cls = op.step_class.split(":")
            step = getattr(importlib.import_module(module), cls)(**op.step_kwargs())
            for batch in (1, 4):
                inputs = _random_inputs(op, layout, rng, batch)
                want = step.execute(inputs)
                got = step_client.infer(op.name, inputs, [s.name for s in op.outputs])
                if VERSION_OUTPUT in got:  # added by the python model: the version it serves
                    assert got.pop(VERSION_OUTPUT).tolist() == [[1]] * batch
                for spec in [s for s in op.outputs if s.name != VERSION_OUTPUT]:
                    assert got[spec.name].dtype == want[spec.name].dtype, (op.name, spec.name)
                    np.testing.assert_allclose(got[spec.name], want[spec.name], rtol=1e-5, atol=1e-5,
                                               err_msg=f"{op.name}.{spec.name} differs through Triton")


def test_fused_and_per_step_repositories_serve_the_same_lists(per_step_server, sqlite_client):
    users = [1, 2, 3, 4, 5, 6, 987_654_321]
    with TritonClient(per_step_server.grpc_url) as step_client:
        per_step = recommend(step_client, users, k=10)
    fused = recommend(sqlite_client, users, k=10)
    assert [(r.item_ids, r.cold_start) for r in per_step] == [(r.item_ids, r.cold_start) for r in fused]


def test_concurrent_requests_batched_by_triton_equal_sequential_ones(client, store):
    """Under concurrent load Triton's dynamic batching hands several requests to one execute():
    each user's list is the one it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    users = list(range(1, 41))
    alone = {r.user_id: r.item_ids for r in (recommend(client, [u], k=10)[0] for u in users)}

    def one(user: int) -> tuple[int, list[int]]:
        with TritonClient(store.server.grpc_url) as own:
            (rec,) = recommend(own, [user], k=10)
        return user, rec.item_ids

    with ThreadPoolExecutor(max_workers=8) as pool:
        together = dict(pool.map(one, users))
    assert together == alone


# ---------------------------------------------------------------- bad requests

def test_malformed_requests_get_errors_and_server_keeps_serving(sqlite_client):
    client = sqlite_client
    good = {"user_id": np.array([[1]], np.int64), "top_n": np.array([[5]], np.int32)}
    bad_requests = {  # reason: (request, what the error message must say)
        "wrong dtype": ({"user_id": np.array([[1.0]], np.float32), "top_n": good["top_n"]}, "FP32.*INT64"),
        "missing input": ({"user_id": good["user_id"]}, "missing required input.*top_n"),
        "lambda out of range": ({**good, "diversity_lambda": np.array([[2.0]], np.float32)},
                                "diversity_lambda.*between 0 and 1, got 2"),
        "bad request_time": ({**good, "request_time": np.array([[-1]], np.int64)}, "request_time.*outside"),
        "bad device": ({**good, "device": np.array([[99]], np.int64)}, "device.*outside"),
        "batch too large": ({"user_id": np.ones((MAX_BATCH_SIZE + 1, 1), np.int64),
                             "top_n": np.full((MAX_BATCH_SIZE + 1, 1), 5, np.int32)}, f"<= {MAX_BATCH_SIZE}"),
        "top_n <= 0": ({"user_id": good["user_id"], "top_n": np.array([[0]], np.int32)},
                       "top_n.*between 1 and 100, got 0"),
    }
    for reason, (inputs, message) in bad_requests.items():
        with pytest.raises(TritonRequestError, match=message):
            client.infer("recommend", inputs, ["item_ids"])
        out = client.infer("recommend", good, ["item_ids", "scores"])
        assert out["item_ids"].shape == (1, 5), f"server not serving after {reason}"


# ---------------------------------------------------------------- CLI bad input

def test_cli_recommend_prints_titles(cli_env, e2e_server, capsys):
    assert cli_main(["recommend", "--user", "1", "-k", "3", "--url", e2e_server.grpc_url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("user 1") and out.count("\n") == 4


def test_cli_recommend_over_http(cli_env, e2e_server, capsys):
    url = e2e_server.http_url.replace("http://", "")
    assert cli_main(["recommend", "--user", "1", "-k", "2", "--http", "--url", url]) == 0
    assert capsys.readouterr().out.count("\n") == 3


@pytest.mark.parametrize("argv, needle", [
    (["recommend", "--user", "987654321", "-k", "5"], "unknown"),
    (["recommend", "--user", "1", "-k", "0"], "-k"),
    (["recommend", "--user", "1", "-k", "-3"], "-k"),
    (["recommend", "--user", "abc"], "invalid int"),
    (["events", "push", "--user", "1", "--item", "999999"], "not in the catalogue"),
])
def test_cli_bad_input_exits_2_with_one_line(cli_env, e2e_server, capsys, argv, needle):
    if argv[0] == "recommend":
        argv = argv + ["--url", e2e_server.grpc_url]
    with pytest.raises(SystemExit) as info:
        raise SystemExit(cli_main(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_failed_run_keeps_existing_artifacts(cli_env, e2e_paths, capsys):
    """A bad dataset name fails with exit 2 and leaves every stage's files as they were."""
    before = {p: p.stat().st_mtime_ns for p in e2e_paths.root.rglob("*") if p.is_file()}
    assert cli_main(["data", "prepare", "--dataset", "ml-nope"]) == 2
    assert cli_main(["run", "--dataset", "ml-nope", "--serve", "0"]) == 2
    after = {p: p.stat().st_mtime_ns for p in e2e_paths.root.rglob("*") if p.is_file()}
    changed = {p for p in before if after.get(p) != before[p]}
    # the online store and its registry are written by the event tests; everything else is untouched
    assert {p for p in changed if "feature_repo" not in p.parts} == set()
    assert "ml-nope" in capsys.readouterr().err


def test_served_ranking_equals_offline_evaluation_ranking(client, e2e_paths):
    """What `recstack evaluate` measures for two_tower+dlrm is what the ensemble serves (same users,
    histories, seen items, multi-source candidates with their cross features, and fusion; PyTorch in float64 offline vs ONNX and FAISS in
    float32 in Triton). The top-10 lists are equal; two items may trade places only where their
    offline scores tie to 1e-4, and every served score equals the offline one to 1e-4. The request
    is sent at each user's test interaction time, so the ranker's context (hour, weekday) computed by
    the serving step from ``request_time`` is the one evaluation computed from that timestamp."""
    import torch

    from recstack.models.candidates import (
        ARTIFACT,
        CandidateSources,
        offline_candidates,
    )
    from recstack.models.data import load_training_data
    from recstack.models.export import load_dlrm, load_two_tower
    from recstack.models.fusion import fuse_scores
    from recstack.models.predict import dlrm_scores, rerank, user_embeddings
    from recstack.models.validation import split_view
    from recstack.ranking import catalogue_mask, mask_unrankable, top_k
    from recstack.workflows import Workflow

    data = load_training_data(e2e_paths)
    view = split_view(data, "test")
    two_tower, _ = load_two_tower(e2e_paths.models / "two_tower")
    dlrm, dlrm_config = load_dlrm(e2e_paths.models / "dlrm")
    item_emb = np.load(e2e_paths.models / "two_tower" / "item_embeddings.npy")
    workflow = Workflow.load(e2e_paths.workflow)
    items = pd.read_parquet(e2e_paths.features / "item_features.parquet", columns=["item_key", "item_id"])
    raw_of = dict(zip(items["item_id"], items["item_key"]))

    raw_users = [11, 12, 13, 14, 15]
    encoded = [workflow.transform_request({"user_id": u})["user_id"] for u in raw_users]
    rows = np.array([int(np.flatnonzero(view.users == e)[0]) for e in encoded])
    with torch.no_grad():
        first = user_embeddings(two_tower, data, view.users[rows], view.history[rows]).astype(np.float64) @ item_emb.T
    mask_unrankable(first, view.users[rows], view.seen, view.targets[rows], catalogue_mask(data.n_items))
    if dlrm.n_cross:  # multi-source candidates (two-tower + item-kNN + popular) with their cross features
        sources = CandidateSources(e2e_paths.models / ARTIFACT)
        cands, retrieval, cross = offline_candidates(sources, first, view.history[rows], view.times[rows], 100)
        assert (cands[:, 100:] != 0).any(), "the other sources added no candidate"
    else:
        cands, cross = top_k(first, 100), None
        retrieval = np.take_along_axis(first, cands, axis=1)
    with torch.no_grad():
        logits = dlrm_scores(dlrm, data, view.users[rows], view.history[rows], cands, view.context[rows], cross=cross)
    fused = fuse_scores(logits, retrieval, dlrm_config["fusion"])
    final = rerank(first, cands, fused)  # the candidates in fused order, ahead of every other item

    test_rows = pd.read_parquet(e2e_paths.data / "test.parquet", columns=["user_id", "timestamp"])
    when = test_rows.set_index("user_id").loc[raw_users, "timestamp"].to_numpy(np.int64)
    served = recommend(client, raw_users, k=10, request_time=when)
    swaps = 0
    for user, rec, row, cand_row, fused_row in zip(raw_users, served, final, cands, fused):
        want = [raw_of[i] for i in np.argsort(-row, kind="stable")[:10]]
        score_of = {raw_of[int(c)]: float(f) for c, f in zip(cand_row, fused_row) if int(c) in raw_of and np.isfinite(f)}
        assert len(rec.item_ids) == 10, (user, rec.item_ids)
        for got_item, want_item in zip(rec.item_ids, want):
            if got_item != want_item:
                swaps += 1
                assert abs(score_of[got_item] - score_of[want_item]) < 1e-4, (user, rec.item_ids, want)
        np.testing.assert_allclose(rec.scores, [score_of[i] for i in rec.item_ids], rtol=1e-4, atol=1e-4)
    print(f"served == offline top-10 for {len(raw_users)} users; near-tie swaps: {swaps}")


def test_serve_on_a_busy_port_exits_2(cli_env, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli_main(["serve", "--grpc-port", str(port), "--http-port", "0", "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already in use" in err


def test_many_cli_recommend_calls_all_exit_0(e2e_home, e2e_server):
    """`recstack recommend` run again and again in new processes: every call exits 0 (once it aborted
    at exit with SIGABRT after printing its results)."""
    env = {**os.environ, "RECSTACK_HOME": str(e2e_home)}
    argv = [sys.executable, "-m", "recstack.cli", "recommend", "--user", "1", "-k", "3", "--url", e2e_server.grpc_url]
    codes = [subprocess.run(argv, env=env, capture_output=True, timeout=60).returncode for _ in range(60)]
    assert codes == [0] * 60


def test_relocated_repository_serves_the_same_top10(e2e_paths, sqlite_client, tmp_path):
    """Export, copy the repository to a new folder, delete the run's models, index, workflow and
    feature tables: the copy still serves, and serves the same top-10."""
    run = RunPaths.for_dataset("ml-100k", home=tmp_path / "home")
    shutil.copytree(e2e_paths.root, run.root, ignore=shutil.ignore_patterns("*.log"))
    export_ensemble(recommendation_graph(run), run.triton_repo)
    moved = tmp_path / "elsewhere" / "triton_repo"
    shutil.copytree(run.triton_repo, moved)
    shutil.rmtree(run.triton_repo)
    for stage in (run.models, run.index, run.workflow, run.features):
        shutil.rmtree(stage)
    for text_file in [*moved.rglob("*.pbtxt"), *moved.rglob("*.json"), *moved.rglob("*.py")]:
        assert str(tmp_path) not in text_file.read_text(), f"{text_file} names a path of the build machine"

    users = [1, 2, 3, 4, 5, 987_654_321]
    server = start_server(moved, run.feature_repo)
    try:
        with TritonClient(server.grpc_url) as moved_client:
            relocated = recommend(moved_client, users, k=10)
    finally:
        server.stop()
    original = recommend(sqlite_client, users, k=10)
    assert [(r.item_ids, r.cold_start) for r in relocated] == [(r.item_ids, r.cold_start) for r in original]
