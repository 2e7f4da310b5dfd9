"""recstack.evaluation: metrics on hand-computed cases; the popularity anchor and model quality on ML-100K."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from recstack.evaluation.metrics import (RankingAccumulator, catalogue_mask, coverage, exclude_seen,
                                         metrics_from_ranks, ranks_from_topk, target_ranks, top_k)
from recstack.paths import RunPaths


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


# ------------------------------------------------------------------------------------- ML-100K

@pytest.fixture(scope="module")
def ml100k(tmp_path_factory) -> RunPaths:
    data = pytest.importorskip("recstack.data")
    workflows = pytest.importorskip("recstack.workflows")
    if not hasattr(data, "prepare_dataset") or not hasattr(workflows, "fit_and_export"):
        pytest.skip("data / workflows stages not available")
    paths = RunPaths.for_dataset("ml-100k", home=tmp_path_factory.mktemp("eval_home"))
    data.prepare_dataset("ml-100k", paths.data, progress=False)
    workflows.fit_and_export(paths.data, paths.workflow, paths.features, history_length=50, progress=False)
    return paths


def test_popularity_matches_the_data_md_anchor(ml100k):
    from recstack.evaluation import evaluate_run

    report = evaluate_run(ml100k, progress=False)
    pop = report["models"]["popularity"]
    assert pop["hr@10"] == pytest.approx(0.086, abs=0.01)
    assert pop["ndcg@10"] == pytest.approx(0.044, abs=0.01)
    assert report["users"] == 943 and "two_tower" in report["skipped"]
    assert json.loads((ml100k.reports / "evaluation_test.json").read_text())["models"]["popularity"] == pop
    assert (ml100k.reports / "evaluation_test.png").stat().st_size > 1000


def test_trained_models_beat_popularity(ml100k):
    """A short training run (3 epochs each, no ONNX) already beats popularity on NDCG@10."""
    from recstack.evaluation import evaluate_run, format_table
    from recstack.models.train import train_all

    train_all(ml100k, device="cpu", epochs=3, progress=False, onnx=False, threads=1)
    report = evaluate_run(ml100k, progress=False)
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
    assert fusion["valid_ndcg@10"] >= fusion["valid_ndcg@10_dlrm_only"]
    # the weights are read from config.json and applied: the two extremes reproduce the other rows
    path = ml100k.models / "dlrm" / "config.json"
    try:
        for weights, same_as in (({"dlrm_weight": 0.0, "retrieval_weight": 1.0}, "two_tower"),
                                 ({"dlrm_weight": 1.0, "retrieval_weight": 0.0}, "dlrm_only")):
            path.write_text(json.dumps({**config, "fusion": weights}))
            again = evaluate_run(ml100k, progress=False, write=False)["models"]
            assert again["two_tower+dlrm"]["ndcg@10"] == pytest.approx(ndcg[same_as], abs=1e-9)
    finally:
        path.write_text(json.dumps(config))
