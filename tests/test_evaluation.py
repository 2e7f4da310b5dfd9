"""recstack.ranking / recstack.evaluation: metrics on hand-computed cases; the popularity anchor and model
quality on ML-100K."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from recstack.data import prepare_dataset
from recstack.evaluation import evaluate_run, format_table
from recstack.evaluation.metrics import evaluate_scores, ranks_from_topk
from recstack.ids import FIRST_CODE, HISTORY_LENGTH
from recstack.models import train_all
from recstack.paths import RunPaths
from recstack.ranking import (RankingAccumulator, catalogue_mask, coverage, exclude_seen, mask_unrankable,
                              metrics_from_ranks, row_batches, target_ranks, top_k)
from recstack.workflows import fit_and_export


def test_ties_rank_below_the_target():
    scores = np.array([[0.0, 0.0, 0.5, 0.9, 0.5, 0.1]])
    cat = catalogue_mask(6)  # ids 0 / 1 are padding / OOV
    # target 2 (0.5): above it 3 (0.9) and, tied, 4 (0.5) -> rank 2
    assert target_ranks(scores, np.array([2]), cat).tolist() == [2]
    # a constant scorer gets no credit: every other catalogue item ranks above the target
    const = np.ones((1, 6))
    assert target_ranks(const, np.array([3]), cat).tolist() == [3]


def test_seen_items_are_excluded_and_oov_target_is_a_miss():
    scores = np.array([[0, 0, 0.9, 0.8, 0.7, 0.1], [0, 0, 0.9, 0.8, 0.7, 0.1]], dtype=float)
    seen = (np.array([0, 2, 2]), np.array([2, 3]))  # user 0 saw items 2 and 3; user 1 nothing
    s = exclude_seen(scores.copy(), np.array([0, 1]), seen, targets=np.array([4, 4]))
    ranks = target_ranks(s, np.array([4, 4]), catalogue_mask(6))
    assert ranks.tolist() == [0, 2]
    assert target_ranks(scores, np.array([1]), catalogue_mask(6))[0] == 4  # OOV id -> catalogue size
    # the target itself is never excluded, even when listed as seen
    s2 = exclude_seen(scores[:1].copy(), np.array([0]), seen, targets=np.array([3]))
    assert target_ranks(s2, np.array([3]), catalogue_mask(6))[0] == 0


def test_metric_formulas():
    ranks = np.array([0, 1, 4, 10, 50])
    m = metrics_from_ranks(ranks, k=10)
    assert m["hr@10"] == pytest.approx(3 / 5) and m["recall@10"] == m["hr@10"]
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 11 + 1 / 51) / 5)


def test_topk_coverage_and_accumulator():
    scores = np.array([[0, 0, 3, 2, 1, 0.5], [0, 0, 1, 3, 2, 0.5]], dtype=float)
    top = top_k(scores, 2, catalogue_mask(6))
    assert top.tolist() == [[2, 3], [3, 4]]
    assert ranks_from_topk(top, np.array([3, 5]), 4).tolist() == [1, 4]
    assert coverage(top, 4) == pytest.approx(3 / 4)
    acc = RankingAccumulator(6, k=2)
    acc.add(scores[:1].copy(), np.array([3]))
    acc.add(scores[1:].copy(), np.array([5]))
    r = acc.result()
    assert r["hr@2"] == pytest.approx(0.5) and r["ndcg@2"] == pytest.approx(0.5 / math.log2(3))
    assert r["users"] == 2 and r["coverage"] == pytest.approx(3 / 4)


def test_catalogue_starts_at_the_first_vocabulary_code():
    assert catalogue_mask(5).tolist() == [False] * FIRST_CODE + [True] * (5 - FIRST_CODE)


def test_candidates_exclude_seen_and_non_catalogue_items():
    """Candidate selection (two-tower top-C for the DLRM): seen items, except the row's target, and
    pad / OOV ids never become candidates; best first, ties by lower id."""
    scores = np.array([[9.0, 8, 1, 5, 5, 3], [9.0, 8, 1, 5, 5, 3]])
    seen = (np.array([0, 2, 2]), np.array([3, 2]))  # user 0 saw items 3 and 2; user 1 nothing
    first = mask_unrankable(scores.copy(), np.array([0, 1]), seen, np.array([2, 2]), catalogue_mask(6))
    assert np.isneginf(first[:, :FIRST_CODE]).all() and first[0, 3] == -np.inf and first[0, 2] == 1.0
    assert top_k(first, 3).tolist() == [[4, 5, 2], [3, 4, 5]]
    assert top_k(first, 10).shape == (2, 6)


def test_row_batches_and_evaluate_scores():
    assert [b.tolist() for b in row_batches(5, 2)] == [[0, 1], [2, 3], [4]]
    assert list(row_batches(0, 2)) == []
    scores = np.array([[0, 0, 3, 2, 1, 0.5], [0, 0, 1, 3, 2, 0.5], [0, 0, 1, 2, 3, 0.5]], dtype=float)
    seen = (np.array([0, 1, 1, 1]), np.array([2]))  # user 0 saw item 2
    out = evaluate_scores(lambda rows: scores[rows], np.array([0, 1, 2]), np.array([3, 5, 4]), 6, seen, k=2,
                          batch_size=2)
    # ranks: user 0 -> 0 (item 2 excluded), user 1 -> 3 (below 3, 4, 2), user 2 -> 0
    assert out["hr@2"] == pytest.approx(2 / 3) and out["mrr"] == pytest.approx((1 + 1 / 4 + 1) / 3)
    assert out["users"] == 3


# ------------------------------------------------------------------------------------- ML-100K

@pytest.fixture(scope="module")
def ml100k(tmp_path_factory) -> RunPaths:
    paths = RunPaths.for_dataset("ml-100k", home=tmp_path_factory.mktemp("eval_home"))
    prepare_dataset("ml-100k", paths.data, progress=False)
    fit_and_export(paths.data, paths.workflow, paths.features, history_length=HISTORY_LENGTH, progress=False)
    return paths


# shared/DATA.md's HR@10 / NDCG@10 of the classical baselines on ML-100K (same protocol)
DATA_MD_ANCHORS = {"popularity": (0.086, 0.044), "item_knn": (0.109, 0.056), "last_item_knn": (0.155, 0.083),
                   "ease": (0.149, 0.072), "ials": (0.136, 0.070)}


def test_baselines_match_the_data_md_anchors(ml100k):
    """Popularity, item-kNN, last-item kNN, EASE and iALS in one report, each near its DATA.md anchor,
    with settings chosen on validation; the temporal split and the markdown / PNG report alongside."""
    report = evaluate_run(ml100k, progress=False)
    models = report["models"]
    assert list(models)[:5] == list(DATA_MD_ANCHORS)
    for name, (hr, ndcg) in DATA_MD_ANCHORS.items():
        assert models[name]["hr@10"] == pytest.approx(hr, abs=0.015), name
        assert models[name]["ndcg@10"] == pytest.approx(ndcg, abs=0.008), name
        for key in ("hr@50", "ndcg@50", "recall@50", "mrr", "coverage@10", "ild@10", "ild_genre@10", "novelty@10"):
            assert 0 <= models[name][key] <= (20 if key.startswith("novelty") else 1), (name, key)
        assert models[name]["hr@50"] >= models[name]["hr@10"]
    for name, chosen in report["baselines"].items():  # the setting reported is the best on validation
        assert chosen["valid_ndcg@10"] == max(t["ndcg@10"] for t in chosen["trials"])
    assert report["users"] == 943 and "two_tower" in report["skipped"]
    temporal = report["temporal"]
    assert set(temporal["models"]) == set(DATA_MD_ANCHORS) and temporal["info"]["test"]["users"] > 50
    assert temporal["models"]["ease"]["ndcg@10"] > temporal["models"]["popularity"]["ndcg@10"] * 0.8
    assert json.loads((ml100k.reports / "evaluation_test.json").read_text())["models"]["popularity"] == \
        models["popularity"]
    for name in ("evaluation_test.png", "evaluation_test_temporal.png"):
        assert (ml100k.reports / name).stat().st_size > 1000
    markdown = (ml100k.reports / "evaluation_test.md").read_text()
    assert "| ials |" in markdown and "Global temporal split" in markdown and "NDCG@50" in markdown


def test_trained_models_beat_popularity(ml100k):
    """A short training run (3 epochs each, no ONNX) already beats popularity on NDCG@10."""
    # no context ablation and no diversity sweep here (tests/test_context.py and test_diversity.py
    # cover them): this test is about the fused ranker against popularity
    train_all(ml100k, device="cpu", epochs=3, progress=False, onnx=False, threads=1, context_ablation=False)
    report = evaluate_run(ml100k, progress=False, lambdas=(), baselines=(), temporal=False)
    print(format_table(report))
    ndcg = {name: m["ndcg@10"] for name, m in report["models"].items()}
    assert ndcg["two_tower"] > ndcg["popularity"] + 0.02
    assert ndcg["two_tower+dlrm"] > ndcg["popularity"]
    assert "dlrm_only" in ndcg  # the ranker alone stays in the report
    # two_tower+dlrm is the fusion stored at training time (chosen on valid, the ranker takes part)
    config = json.loads((ml100k.models / "dlrm" / "config.json").read_text())
    fusion = config["fusion"]
    assert fusion["selected_on"] == "valid" and fusion["dlrm_weight"] > 0 and fusion["retrieval_weight"] > 0
    assert report["fusion"] == fusion
    # cold items (absent from train, scored from their side features): ML-100K's test split has a few
    cold = report["cold_items"]
    assert cold["rows"] >= 1 and 0 <= cold["two_tower"]["full"]["recall@50"] <= 1
    assert cold["two_tower"]["cold_only"]["mrr"] > 0
    assert fusion["valid_ndcg@10"] >= fusion["valid_ndcg@10_dlrm_only"]
    # the weights are read from config.json and applied: the two extremes reproduce the other rows
    path = ml100k.models / "dlrm" / "config.json"
    try:
        for weights, same_as in (({"dlrm_weight": 0.0, "retrieval_weight": 1.0}, "two_tower"),
                                 ({"dlrm_weight": 1.0, "retrieval_weight": 0.0}, "dlrm_only")):
            path.write_text(json.dumps({**config, "fusion": weights}))
            again = evaluate_run(ml100k, progress=False, write=False, lambdas=(), baselines=(), temporal=False,
                                 cold_items=False)["models"]
            assert again["two_tower+dlrm"]["ndcg@10"] == pytest.approx(ndcg[same_as], abs=1e-9)
    finally:
        path.write_text(json.dumps(config))


def test_evaluate_cli_no_progress_hides_the_bar(ml100k, monkeypatch, capsys):
    import argparse

    from recstack.evaluation import cli

    monkeypatch.setenv("RECSTACK_HOME", str(ml100k.root.parent.parent))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    for extra, bar_shown in (([], True), (["--no-progress"], False)):
        args = parser.parse_args(["evaluate", "--dataset", "ml-100k", "--split", "valid", "--baselines", "none",
                                  "--no-temporal", *extra])
        assert args.handler(args) == 0
        out, err = capsys.readouterr()
        assert ("evaluate valid" in err) is bar_shown and "popularity" in out
