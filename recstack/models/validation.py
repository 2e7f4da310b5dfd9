"""Scoring the models on a split during training: the rows of a split, the two-tower's
full-catalogue metrics, its top-``C`` candidate sets, the DLRM's validation metrics and the
choice of the fusion weights (:mod:`recstack.models.fusion`) on the validation candidates.

The ranking protocol itself (seen items excluded, pessimistic ties, top-K) is
:mod:`recstack.ranking`, the one ``recstack evaluate`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recstack.ids import FIRST_CODE
from recstack.models.candidates import CandidateSources, offline_candidates
from recstack.models.data import Interactions, TrainingData
from recstack.models.dlrm import DLRM
from recstack.models.fusion import LEGACY_FUSION, fuse_scores, select_fusion
from recstack.models.predict import dlrm_scores, item_embeddings, user_embeddings
from recstack.models.two_tower import TwoTower
from recstack.ranking import (
    RankingAccumulator, SeenCSR, catalogue_mask, mask_unrankable, row_batches, score_batch_rows, top_k,
)


@dataclass
class SplitView:
    """The rows a model is scored on: users, their histories, targets, the seen items to exclude, and
    the context of each row (the (hour, weekday, device) codes of the target interaction's time)."""

    users: np.ndarray
    history: np.ndarray
    targets: np.ndarray
    seen: SeenCSR
    context: np.ndarray | None = None
    times: np.ndarray | None = None
    """[U] unix seconds of each target interaction (the request time)."""
    history_times: np.ndarray | None = None
    """[U, L] unix seconds of each history item (0 = pad), the sequence tower's time-gap input."""


def split_view(data: TrainingData, split: str) -> SplitView:
    """Validation: history and seen = train. Test: history and seen = train + valid."""
    x: Interactions = getattr(data, split)
    seen_splits = ("train",) if split == "valid" else ("train", "valid")
    return SplitView(x.users, x.history, x.items, data.seen(seen_splits), x.context, x.times, x.history_times)


def two_tower_full_scores(model: TwoTower, data: TrainingData, view: SplitView, rows: np.ndarray,
                          item_emb: np.ndarray) -> np.ndarray:
    """[b, n_items] dot products (seen items not yet excluded)."""
    u = user_embeddings(model, data, view.users[rows], view.history[rows], view.history_times[rows])
    return u @ item_emb.T


def evaluate_two_tower(model: TwoTower, data: TrainingData, view: SplitView, k: int = 10,
                       batch_size: int = 1024) -> dict[str, float]:
    """Full-catalogue metrics of the two-tower on ``view`` (:class:`recstack.ranking.RankingAccumulator`)."""
    item_emb = item_embeddings(model, data)
    acc = RankingAccumulator(data.n_items, k)
    for rows in row_batches(len(view.users), score_batch_rows(batch_size, data.n_items)):
        acc.add(two_tower_full_scores(model, data, view, rows, item_emb), view.targets[rows], view.users[rows],
                view.seen)
    return acc.result()


def two_tower_epoch_score(model: TwoTower, data: TrainingData, view: SplitView, record: dict[str, Any]) -> float:
    """Validation of one training epoch: adds ``valid_ndcg@10`` / ``valid_hr@10`` to ``record``, returns the NDCG@10."""
    model.eval()
    metrics = evaluate_two_tower(model, data, view)
    record.update({"valid_ndcg@10": metrics["ndcg@10"], "valid_hr@10": metrics["hr@10"]})
    return metrics["ndcg@10"]


@dataclass
class CandidateSet:
    """The two-tower's top-``C`` candidates of a split's rows (seen items excluded), fixed while the DLRM trains.

    ``cands`` [U, C] encoded item ids (best first), ``retrieval`` [U, C] their two-tower inner
    products (L2-normalised embeddings: what FAISS returns in serving), ``targets`` [U].
    """

    users: np.ndarray
    history: np.ndarray
    targets: np.ndarray
    cands: np.ndarray
    retrieval: np.ndarray
    context: np.ndarray | None = None
    cross: np.ndarray | None = None
    """[U, C, F] the candidates' ``item_cross`` features (multi-source candidates only)."""


def candidate_set(two_tower: TwoTower, data: TrainingData, view: SplitView, candidates: int = 100,
                  batch_size: int = 1024, sources: CandidateSources | None = None) -> CandidateSet:
    """The candidates the served chain would rank for the view's rows: the two-tower's top-``candidates``,
    or with ``sources`` the merged multi-source list (:func:`recstack.models.candidates.offline_candidates`)."""
    item_emb = item_embeddings(two_tower, data)
    catalogue = catalogue_mask(data.n_items)
    cands, retr, cross = [], [], []
    for rows in row_batches(len(view.users), score_batch_rows(batch_size, data.n_items)):
        first = two_tower_full_scores(two_tower, data, view, rows, item_emb).astype(np.float64)
        mask_unrankable(first, view.users[rows], view.seen, view.targets[rows], catalogue)
        if sources is not None:
            c, r, x = offline_candidates(sources, first, view.history[rows], view.times[rows], candidates)
            cross.append(x)
        else:
            c = top_k(first, candidates)
            r = np.take_along_axis(first, c, axis=1)
        cands.append(c)
        retr.append(r)
    return CandidateSet(view.users, view.history, view.targets, np.concatenate(cands), np.concatenate(retr),
                        view.context, np.concatenate(cross) if cross else None)


def candidate_ndcg(cset: CandidateSet, scores: np.ndarray, k: int = 10) -> float:
    """NDCG@k of ranking each row's candidates by ``scores`` [U, C] (ties pessimistic; target outside = miss).

    Candidates rank above every other item, so for k <= C this equals the full-catalogue NDCG@k.
    """
    hit = cset.cands == cset.targets[:, None]
    scores = np.where(np.isfinite(cset.retrieval), scores, -np.inf)
    t_score = np.where(hit.any(1), np.where(hit, scores, 0.0).sum(1), -np.inf)
    rank = (scores >= t_score[:, None]).sum(1) - 1
    ok = hit.any(1) & np.isfinite(t_score) & (rank < k)
    return float(np.where(ok, 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0).mean())


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count against it); NaN if either is empty."""
    scores = np.concatenate([pos, neg])
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable") + 1.0
    n_pos, n_neg = len(pos), len(neg)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def dlrm_valid_metric(model: DLRM, data: TrainingData, view: SplitView, cset: CandidateSet | None,
                      record: dict[str, Any], temperature: float = 1.0) -> float:
    """The DLRM's selection score on valid, recording the metrics in ``record``: AUC of the targets vs
    4 uniform items per user; with a two-tower's ``cset``, NDCG@10 of reranking by the DLRM alone
    and by the best fusion (the returned score)."""
    if not model.n_cross:  # a cross-feature ranker scores only candidates retrieval produced
        rng = np.random.default_rng(123)
        neg = rng.integers(FIRST_CODE, data.n_items, (len(view.users), 4))
        pos_s = dlrm_scores(model, data, view.users, view.history, view.targets[:, None], view.context)[:, 0]
        neg_s = dlrm_scores(model, data, view.users, view.history, neg, view.context).reshape(-1)
        record["valid_auc"] = auc(pos_s, neg_s)
    if cset is None:
        return record["valid_auc"]
    logits = dlrm_scores(model, data, cset.users, cset.history, cset.cands, cset.context, cross=cset.cross)
    record["valid_ndcg@10_rerank"] = candidate_ndcg(cset, logits.astype(np.float64))
    fusion, _ = choose_fusion(cset, logits, temperature)
    record["valid_ndcg@10_fused"] = fusion["valid_ndcg@10"]
    record["fusion_dlrm_weight"] = fusion["dlrm_weight"]
    return fusion["valid_ndcg@10"]


def choose_fusion(cset: CandidateSet, dlrm_logits: np.ndarray, temperature: float,
                  grid: tuple[float, ...] | None = None) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Fusion weights (retrieval_weight = 1/temperature, dlrm_weight > 0 from a grid) with the best valid NDCG@10."""
    kwargs = {"grid": grid} if grid else {}
    return select_fusion(lambda f: candidate_ndcg(cset, fuse_scores(dlrm_logits, cset.retrieval, f)
                                                   .astype(np.float64)), temperature, **kwargs)


def fusion_on_valid(model: DLRM, two_tower: TwoTower | None, data: TrainingData, candidates: int = 100,
                    sources: CandidateSources | None = None) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """The fusion weights for ``config.json``, chosen on the validation split's two-tower candidates.

    Without a two-tower there is nothing to fuse with: the DLRM score alone (``selected_on: default``).
    """
    if two_tower is None:
        return dict(LEGACY_FUSION), []
    cset = candidate_set(two_tower, data, split_view(data, "valid"), candidates, sources=sources)
    logits = dlrm_scores(model, data, cset.users, cset.history, cset.cands, cset.context, cross=cset.cross)
    fusion, trials = choose_fusion(cset, logits, two_tower.cfg.temperature)
    fusion["valid_ndcg@10_dlrm_only"] = candidate_ndcg(cset, logits.astype(np.float64))
    fusion["valid_ndcg@10_two_tower"] = candidate_ndcg(cset, cset.retrieval)
    fusion["candidates"] = int(cset.cands.shape[1])
    return fusion, trials
