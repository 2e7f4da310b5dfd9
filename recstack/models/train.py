"""Training loops for the two-tower retriever and the DLRM ranker, with model selection on valid.

* :func:`train_two_tower`: in-batch sampled softmax (+ logQ correction, + catalogue-uniform
  negatives); after every epoch, full-catalogue NDCG@10 on the validation split (history =
  train, train items excluded); the best epoch's weights are kept (early stopping).
* :func:`train_dlrm`: binary cross-entropy or sampled softmax (``loss``), positives = train
  interactions with rating >= ``positive_min_rating`` (every interaction when None or when the
  dataset has no ratings), ``negatives`` sampled items per positive (half uniform over the
  catalogue, half popularity-proportional; ``hard_negatives`` of them from the two-tower's
  top-``hard_pool`` items instead); selection by validation NDCG@10 of the two-tower's
  top-``candidates`` reranked by the fused score (AUC of validation positives vs sampled
  negatives when no two-tower is available). :func:`train_all` uses ``DLRM_TRAIN``: every
  interaction a positive, softmax over 16 negatives, 8 of them from the two-tower's top-100
  (the candidates the DLRM reranks in serving), 2 epochs.
* Score fusion (:mod:`recstack.models.fusion`): after training, the weights of
  ``dlrm_weight * dlrm_logit + retrieval_weight * two_tower_inner_product`` are chosen on the
  validation candidates (retrieval_weight = 1/temperature, dlrm_weight > 0 from a grid) and
  stored in ``models/dlrm/config.json`` ``"fusion"``; evaluation and serving apply them.
* ``refit=True`` retrains on train + valid for the selected number of epochs (the DATA.md
  protocol); off by default: the validation rows are one per user (~1% of ML-100K) and
  already enter every test-time history, and a refit doubles the training time.

Both write their folder (:mod:`recstack.models.export`) and return a summary dict.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from recstack.errors import InputError
from recstack.evaluation.metrics import RankingAccumulator, exclude_seen
from recstack.models.data import Interactions, TrainingData, load_training_data
from recstack.models.dlrm import DLRM, DLRMConfig
from recstack.models.export import save_dlrm, save_two_tower
from recstack.models.fusion import fuse_scores, select_fusion
from recstack.models.predict import dlrm_scores, item_embeddings, rerank, user_embeddings
from recstack.models.two_tower import TwoTower, TwoTowerConfig, in_batch_softmax_loss
from recstack.paths import RunPaths


# ------------------------------------------------------------------------------ helpers

def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an InputError."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available (use --device cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"--device: expected auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def default_threads() -> int:
    """Threads for CPU training: $RECSTACK_THREADS, else half the cores (at least 1)."""
    env = os.environ.get("RECSTACK_THREADS")
    if env:
        return max(1, int(env))
    return max(1, (os.cpu_count() or 2) // 2)


def _tensors(blocks: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True) for k, v in blocks.items()}


@dataclass
class SplitView:
    """The rows a model is scored on: users, their histories, targets, and the seen items to exclude."""

    users: np.ndarray
    history: np.ndarray
    targets: np.ndarray
    seen: tuple[np.ndarray, np.ndarray]


def split_view(data: TrainingData, split: str) -> SplitView:
    """Validation: history and seen = train. Test: history and seen = train + valid."""
    x: Interactions = getattr(data, split)
    seen_splits = ("train",) if split == "valid" else ("train", "valid")
    return SplitView(x.users, x.history, x.items, data.seen(seen_splits))


def two_tower_full_scores(model: TwoTower, data: TrainingData, view: SplitView, rows: np.ndarray,
                          item_emb: np.ndarray) -> np.ndarray:
    """[b, n_items] dot products (seen items not yet excluded)."""
    u = user_embeddings(model, data, view.users[rows], view.history[rows])
    return u @ item_emb.T


def evaluate_two_tower(model: TwoTower, data: TrainingData, view: SplitView, k: int = 10,
                       batch_size: int = 1024) -> dict[str, float]:
    item_emb = item_embeddings(model, data)
    acc = RankingAccumulator(data.n_items, k)
    for s in range(0, len(view.users), batch_size):
        rows = np.arange(s, min(s + batch_size, len(view.users)))
        acc.add(two_tower_full_scores(model, data, view, rows, item_emb), view.targets[rows], view.users[rows],
                view.seen)
    return acc.result()


def evaluate_reranked(two_tower: TwoTower, dlrm: DLRM, data: TrainingData, view: SplitView, k: int = 10,
                      candidates: int = 100, batch_size: int = 512) -> dict[str, float]:
    """Metrics of DLRM reranking the two-tower's top-``candidates`` (the rest keep two-tower order)."""
    item_emb = item_embeddings(two_tower, data)
    acc = RankingAccumulator(data.n_items, k)
    catalogue = acc.catalogue
    for s in range(0, len(view.users), batch_size):
        rows = np.arange(s, min(s + batch_size, len(view.users)))
        first = two_tower_full_scores(two_tower, data, view, rows, item_emb).astype(np.float64)
        exclude_seen(first, view.users[rows], view.seen, view.targets[rows])
        first[:, ~catalogue] = -np.inf
        cands = top_candidates(first, candidates)
        second = dlrm_scores(dlrm, data, view.users[rows], view.history[rows], cands)
        acc.add(rerank(first, cands, second), view.targets[rows])
    return acc.result()


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


def candidate_set(two_tower: TwoTower, data: TrainingData, view: SplitView, candidates: int = 100,
                  batch_size: int = 1024) -> CandidateSet:
    item_emb = item_embeddings(two_tower, data)
    catalogue = np.zeros(data.n_items, bool)
    catalogue[2:] = True
    cands, retr = [], []
    for s in range(0, len(view.users), batch_size):
        rows = np.arange(s, min(s + batch_size, len(view.users)))
        first = two_tower_full_scores(two_tower, data, view, rows, item_emb).astype(np.float64)
        exclude_seen(first, view.users[rows], view.seen, view.targets[rows])
        first[:, ~catalogue] = -np.inf
        c = top_candidates(first, candidates)
        cands.append(c)
        retr.append(np.take_along_axis(first, c, axis=1))
    return CandidateSet(view.users, view.history, view.targets, np.concatenate(cands), np.concatenate(retr))


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


def top_candidates(scores: np.ndarray, n: int) -> np.ndarray:
    n = min(n, scores.shape[1])
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    scores = np.concatenate([pos, neg])
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable") + 1.0
    n_pos, n_neg = len(pos), len(neg)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _optimiser_step(opt: torch.optim.Optimizer, sched: Any, loss: torch.Tensor) -> float:
    """One backward + optimiser + LR-schedule step; returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


class _EpochSelection:
    """Model selection shared by both training loops: keep the best epoch's weights by a
    validation score, stop after ``patience`` epochs without gain or past ``time_budget_s``."""

    def __init__(self, model: torch.nn.Module, select: bool, patience: int, time_budget_s: float | None,
                 bar: Any, shown: tuple[str, ...]):
        self.model, self.select, self.patience, self.time_budget_s = model, select, patience, time_budget_s
        self.bar, self.shown = bar, shown
        self.history: list[dict[str, Any]] = []
        self.best = (-1.0, 0, _state_copy(model))
        self.start = time.perf_counter()

    def end_epoch(self, record: dict[str, Any], score: float | None) -> bool:
        """Record one epoch (``score`` = validation score when selecting); True when training should stop."""
        epoch = record["epoch"]
        if self.select and score is not None and score > self.best[0]:
            self.best = (score, epoch, _state_copy(self.model))
        record["elapsed_s"] = round(time.perf_counter() - self.start, 2)
        self.history.append(record)
        self.bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in self.shown})
        if self.select and epoch - self.best[1] >= self.patience:
            return True
        return self.time_budget_s is not None and time.perf_counter() - self.start > self.time_budget_s

    def finish(self) -> dict[str, Any]:
        """Restore the best weights (when selecting); the training summary."""
        self.bar.close()
        if self.select:
            self.model.load_state_dict(self.best[2])
        self.model.eval()
        return {"epochs_run": len(self.history), "best_epoch": self.best[1] if self.select else len(self.history),
                "history": self.history, "train_s": round(time.perf_counter() - self.start, 2)}


def _lr_lambda(total_steps: int, warmup: int = 50):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return fn


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------ two-tower

def fit_two_tower(data: TrainingData, cfg: TwoTowerConfig | None = None, *, epochs: int = 20,
                  batch_size: int = 512, lr: float = 2e-3, weight_decay: float = 0.0, patience: int = 3,
                  device: str | torch.device = "cpu", seed: int = 0, time_budget_s: float | None = None,
                  train_rows: Interactions | None = None, select: bool = True,
                  progress: bool = True) -> tuple[TwoTower, dict[str, Any]]:
    """Train a two-tower model on ``train_rows`` (default: data.train); select the epoch on valid.

    Returns the model with the best validation NDCG@10 (``select=True``) or the last epoch's
    weights, and a history dict (per-epoch loss / metrics, best epoch, seconds).
    """
    seed_everything(seed)
    dev = resolve_device(device)
    cfg = cfg or TwoTowerConfig()
    rows = train_rows if train_rows is not None else data.train
    model = TwoTower(data.layout, cfg).to(dev)
    counts = np.bincount(rows.items, minlength=data.n_items).astype(np.float64)
    log_p = torch.from_numpy(np.log(np.maximum(counts, 1.0) / max(counts.sum(), 1.0))).float().to(dev)
    n_cat = data.n_items - 2
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(rows) / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(epochs * steps_per_epoch))
    rng = np.random.default_rng(seed)
    view = split_view(data, "valid")
    bar = tqdm(range(epochs), desc="two-tower", unit="epoch", disable=not progress)
    selection = _EpochSelection(model, select, patience, time_budget_s, bar, ("loss", "valid_ndcg@10"))
    for epoch in bar:
        model.train()
        perm = rng.permutation(len(rows))
        total, n_batches = 0.0, 0
        for s in range(0, len(perm), batch_size):
            idx = perm[s:s + batch_size]
            items = rows.items[idx]
            batch = _tensors(data.batch(rows.users[idx], rows.history[idx], items), dev)
            item_ids = batch["item_cat"][:, 0]
            user_emb, item_emb = model(batch)
            log_q = (log_p[item_ids] + math.log(len(idx))) if cfg.logq_correction else None
            neg_emb = neg_ids = neg_log_q = None
            if cfg.uniform_negatives > 0:
                neg = rng.integers(2, data.n_items, cfg.uniform_negatives)
                neg_batch = _tensors({k: v[neg] for k, v in data.item_features.items()}, dev)
                neg_emb = model.item_embedding(neg_batch)
                neg_ids = neg_batch["item_cat"][:, 0]
                if cfg.logq_correction:
                    neg_log_q = torch.full((len(neg),), math.log(cfg.uniform_negatives / n_cat), device=dev)
            loss = in_batch_softmax_loss(user_emb, item_emb, item_ids, cfg.temperature, log_q,
                                         neg_emb, neg_ids, neg_log_q)
            total += _optimiser_step(opt, sched, loss)
            n_batches += 1
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": total / max(n_batches, 1)}
        score = None
        if select:
            model.eval()
            metrics = evaluate_two_tower(model, data, view)
            record.update({"valid_ndcg@10": metrics["ndcg@10"], "valid_hr@10": metrics["hr@10"]})
            score = metrics["ndcg@10"]
        if selection.end_epoch(record, score):
            break
    return model, selection.finish()


def train_two_tower(paths: RunPaths, data: TrainingData | None = None, *, device: str = "auto",
                    epochs: int | None = None, cfg: TwoTowerConfig | None = None, refit: bool = False,
                    seed: int = 0, progress: bool = True, onnx: bool = True,
                    time_budget_s: float | None = None, **fit_kwargs: Any) -> dict[str, Any]:
    """Train, select on valid, (optionally refit on train + valid), save ``models/two_tower/``; return a summary."""
    start = time.perf_counter()
    data = data or load_training_data(paths)
    cfg = cfg or TwoTowerConfig()
    model, hist = fit_two_tower(data, cfg, epochs=epochs or 20, device=device, seed=seed, progress=progress,
                                time_budget_s=time_budget_s, **fit_kwargs)
    valid_metrics = evaluate_two_tower(model, data, split_view(data, "valid"))
    if refit:
        both = Interactions.concat([data.train, data.valid])
        model, _ = fit_two_tower(data, cfg, epochs=hist["best_epoch"], device=device, seed=seed, progress=progress,
                                 train_rows=both, select=False, **fit_kwargs)
    training = {"device": str(resolve_device(device)), "seed": seed, "refit_on_train_valid": refit,
                "rows": len(data.train), **hist, **{k: v for k, v in fit_kwargs.items()}}
    out = save_two_tower(model, paths.models / "two_tower", data.item_features,
                         {"valid": valid_metrics}, training, onnx=onnx)
    return {"model": "two_tower", "dir": str(out), "valid": valid_metrics, "best_epoch": hist["best_epoch"],
            "epochs_run": hist["epochs_run"], "wall_s": round(time.perf_counter() - start, 2),
            "_model": model}


# ------------------------------------------------------------------------------ DLRM

def positive_rows(rows: Interactions, positive_min_rating: float | None) -> np.ndarray:
    """Rows that count as positives: rating >= threshold; every row when there are no ratings (or no threshold)."""
    if positive_min_rating is None or np.isnan(rows.ratings).all():
        return np.arange(len(rows))
    return np.flatnonzero(np.nan_to_num(rows.ratings, nan=np.inf) >= positive_min_rating)


@torch.no_grad()
def hard_negative_pool(two_tower: TwoTower, data: TrainingData, rows: Interactions, pos_rows: np.ndarray,
                       pool: int, batch_size: int = 2048) -> np.ndarray:
    """For each positive row, the two-tower's top-``pool`` items (not the positive, not in the history): [P, pool] int32."""
    item_emb = item_embeddings(two_tower, data)
    out = np.empty((len(pos_rows), pool), np.int32)
    for s in range(0, len(pos_rows), batch_size):
        r = pos_rows[s:s + batch_size]
        scores = user_embeddings(two_tower, data, rows.users[r], rows.history[r]) @ item_emb.T
        scores[:, :2] = -np.inf
        scores[np.arange(len(r))[:, None], rows.history[r]] = -np.inf
        scores[np.arange(len(r)), rows.items[r]] = -np.inf
        out[s:s + len(r)] = np.argpartition(-scores, pool - 1, axis=1)[:, :pool]
    return out


def dlrm_examples(data: TrainingData, rows: Interactions, rng: np.random.Generator, negatives: int,
                  pos_rows: np.ndarray, pop_share: float = 0.5, hard: int = 0,
                  hard_pool: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index into ``rows``, candidate item, label) for the positives + freshly sampled negatives.

    Per positive: ``hard`` negatives drawn from its retrieval pool (``hard_pool`` rows align with
    ``pos_rows``), the rest split into popularity-proportional (``pop_share``) and uniform ones.
    """
    counts = np.bincount(rows.items, minlength=data.n_items).astype(np.float64)
    counts[:2] = 0
    pop = counts / counts.sum()
    n_hard = hard if hard_pool is not None else 0
    n_pop = int(round((negatives - n_hard) * pop_share))
    n_uni = negatives - n_hard - n_pop
    neg_rows = np.repeat(pos_rows, negatives)
    neg_items = np.empty((len(pos_rows), negatives), np.int64)
    if n_uni:
        neg_items[:, :n_uni] = rng.integers(2, data.n_items, (len(pos_rows), n_uni))
    if n_pop:
        neg_items[:, n_uni:n_uni + n_pop] = rng.choice(data.n_items, size=(len(pos_rows), n_pop), p=pop)
    if n_hard:
        pick = rng.integers(0, hard_pool.shape[1], (len(pos_rows), n_hard))
        neg_items[:, n_uni + n_pop:] = np.take_along_axis(hard_pool, pick, axis=1)
    row_idx = np.concatenate([pos_rows, neg_rows])
    items = np.concatenate([rows.items[pos_rows], neg_items.reshape(-1)])
    labels = np.concatenate([np.ones(len(pos_rows), np.float32), np.zeros(len(neg_rows), np.float32)])
    labels[len(pos_rows):][items[len(pos_rows):] == rows.items[neg_rows]] = 1.0  # sampled the positive itself
    return row_idx, items, labels


def fit_dlrm(data: TrainingData, cfg: DLRMConfig | None = None, *, two_tower: TwoTower | None = None,
             epochs: int = 10, batch_size: int = 1024, lr: float = 2e-3, weight_decay: float = 0.0,
             negatives: int = 4, pop_share: float = 0.5, hard_negatives: int = 0, hard_pool: int = 50,
             positive_min_rating: float | None = 4.0, patience: int = 2,
             candidates: int = 100, loss: str = "bce", retrieval_offset: bool = False,
             device: str | torch.device = "cpu", seed: int = 0,
             time_budget_s: float | None = None, train_rows: Interactions | None = None, select: bool = True,
             progress: bool = True) -> tuple[DLRM, dict[str, Any]]:
    """Train a DLRM on positives vs sampled negatives; select the epoch on valid.

    ``loss="bce"``: binary cross-entropy per (user, item); ``loss="softmax"``: each positive
    against its own ``negatives`` (sampled softmax, listwise). ``retrieval_offset`` (softmax
    only, needs the two-tower) adds the fixed two-tower logit (inner product / temperature)
    to every score, so the DLRM learns a correction on top of retrieval (the fusion it will
    be served with). With a two-tower, each epoch records the validation NDCG@10 of the DLRM
    alone (``valid_ndcg@10_rerank``) and of the best fusion (``valid_ndcg@10_fused``), and the
    epoch is selected on the fused one (what is served).
    """
    if loss not in ("bce", "softmax"):
        raise InputError(f"loss: expected bce or softmax, got {loss!r}")
    seed_everything(seed)
    dev = resolve_device(device)
    cfg = cfg or DLRMConfig()
    rows = train_rows if train_rows is not None else data.train
    model = DLRM(data.layout, cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    pos_rows = positive_rows(rows, positive_min_rating)
    pool = hard_negative_pool(two_tower, data, rows, pos_rows, hard_pool) if (two_tower is not None and hard_negatives) \
        else None
    n_examples = len(pos_rows) * (1 + negatives)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(epochs * max(1, math.ceil(n_examples / batch_size))))
    view = split_view(data, "valid")
    cset = candidate_set(two_tower, data, view, candidates) if (two_tower is not None and select) else None
    offset = _retrieval_offset(two_tower, data, rows) if (retrieval_offset and two_tower is not None) else None
    if retrieval_offset and (two_tower is None or loss != "softmax"):
        raise InputError("retrieval_offset: needs a two-tower and loss='softmax'")
    loss_fn = torch.nn.BCEWithLogitsLoss()
    metric_name = "valid_ndcg@10_fused" if two_tower is not None else "valid_auc"
    bar = tqdm(range(epochs), desc="dlrm", unit="epoch", disable=not progress)
    selection = _EpochSelection(model, select, patience, time_budget_s, bar, ("loss", metric_name))
    for epoch in bar:
        model.train()
        row_idx, items, labels = dlrm_examples(data, rows, rng, negatives, pos_rows, pop_share, hard_negatives, pool)
        total, n_batches = 0.0, 0
        if loss == "softmax":  # group k = (positive k, its negatives): [P, 1 + negatives]
            P = len(pos_rows)
            groups_rows = np.concatenate([row_idx[:P, None], row_idx[P:].reshape(P, negatives)], 1)
            groups_items = np.concatenate([items[:P, None], items[P:].reshape(P, negatives)], 1)
            dup = np.concatenate([np.zeros((P, 1), bool), labels[P:].reshape(P, negatives) > 0], 1)
            perm = rng.permutation(P)
            step = max(1, batch_size // (1 + negatives))
        else:
            perm = rng.permutation(len(row_idx))
            step = batch_size
        for s in range(0, len(perm), step):
            b = perm[s:s + step]
            if loss == "softmax":
                r, it = groups_rows[b].reshape(-1), groups_items[b].reshape(-1)
                batch = _tensors(data.batch(rows.users[r], rows.history[r], it), dev)
                logits = model(batch).view(len(b), 1 + negatives)
                if offset is not None:
                    logits = logits + torch.from_numpy(offset(r, it).reshape(len(b), 1 + negatives)).to(dev)
                logits = logits.masked_fill(torch.from_numpy(dup[b]).to(dev), float("-inf"))
                loss_value = torch.nn.functional.cross_entropy(logits, torch.zeros(len(b), dtype=torch.long,
                                                                                   device=dev))
            else:
                r = row_idx[b]
                batch = _tensors(data.batch(rows.users[r], rows.history[r], items[b]), dev)
                loss_value = loss_fn(model(batch), torch.from_numpy(labels[b]).to(dev))
            total += _optimiser_step(opt, sched, loss_value)
            n_batches += 1
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": total / max(n_batches, 1)}
        score = None
        if select:
            model.eval()
            score = _dlrm_valid_metric(model, data, view, cset, record,
                                       two_tower.cfg.temperature if two_tower is not None else 1.0)
        if selection.end_epoch(record, score):
            break
    return model, {**selection.finish(), "selection_metric": metric_name}


def _dlrm_valid_metric(model: DLRM, data: TrainingData, view: SplitView, cset: CandidateSet | None,
                       record: dict[str, Any], temperature: float = 1.0) -> float:
    rng = np.random.default_rng(123)
    neg = rng.integers(2, data.n_items, (len(view.users), 4))
    pos_s = dlrm_scores(model, data, view.users, view.history, view.targets[:, None])[:, 0]
    neg_s = dlrm_scores(model, data, view.users, view.history, neg).reshape(-1)
    record["valid_auc"] = _auc(pos_s, neg_s)
    if cset is None:
        return record["valid_auc"]
    logits = dlrm_scores(model, data, cset.users, cset.history, cset.cands)
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


def _retrieval_offset(two_tower: TwoTower, data: TrainingData, rows: Interactions):
    """``fn(row_index, items) -> two-tower logits`` (inner product / temperature) for training rows."""
    item_emb = item_embeddings(two_tower, data)
    user_emb = user_embeddings(two_tower, data, rows.users, rows.history)
    inv_t = 1.0 / float(two_tower.cfg.temperature)

    def fn(r: np.ndarray, items: np.ndarray) -> np.ndarray:
        return (np.einsum("nd,nd->n", user_emb[r], item_emb[items]) * inv_t).astype(np.float32)
    return fn


def train_dlrm(paths: RunPaths, data: TrainingData | None = None, *, device: str = "auto",
               epochs: int | None = None, cfg: DLRMConfig | None = None, two_tower: TwoTower | None = None,
               refit: bool = False, seed: int = 0, progress: bool = True, onnx: bool = True,
               time_budget_s: float | None = None, **fit_kwargs: Any) -> dict[str, Any]:
    """Train the DLRM (selection on valid reranking when a two-tower is given or saved), save ``models/dlrm/``."""
    start = time.perf_counter()
    data = data or load_training_data(paths)
    if two_tower is None and (paths.models / "two_tower" / "config.json").exists():
        from recstack.models.export import load_two_tower
        two_tower, _ = load_two_tower(paths.models / "two_tower", resolve_device(device))
    cfg = cfg or DLRMConfig()
    model, hist = fit_dlrm(data, cfg, two_tower=two_tower, epochs=epochs or 10, device=device, seed=seed,
                           progress=progress, time_budget_s=time_budget_s, **fit_kwargs)
    best_record = next((h for h in hist["history"] if h["epoch"] == hist["best_epoch"]), {})
    valid_metrics = {k: v for k, v in best_record.items() if k.startswith("valid_")}
    fusion, trials = fusion_on_valid(model, two_tower, data, fit_kwargs.get("candidates", 100))
    if refit:  # the weights chosen on valid (with the train-only model) carry over to the refit model
        both = Interactions.concat([data.train, data.valid])
        model, _ = fit_dlrm(data, cfg, two_tower=two_tower, epochs=hist["best_epoch"], device=device, seed=seed,
                            progress=progress, train_rows=both, select=False, **fit_kwargs)
        fusion["refit_after_selection"] = True
    training = {"device": str(resolve_device(device)), "seed": seed, "refit_on_train_valid": refit, **hist,
                "fusion_search": trials, **{k: v for k, v in fit_kwargs.items()}}
    out = save_dlrm(model, paths.models / "dlrm", {"valid": valid_metrics}, training, onnx=onnx, fusion=fusion)
    return {"model": "dlrm", "dir": str(out), "valid": valid_metrics, "fusion": fusion,
            "best_epoch": hist["best_epoch"], "epochs_run": hist["epochs_run"],
            "wall_s": round(time.perf_counter() - start, 2), "_model": model}


def fusion_on_valid(model: DLRM, two_tower: TwoTower | None, data: TrainingData,
                    candidates: int = 100) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """The fusion weights for ``config.json``, chosen on the validation split's two-tower candidates.

    Without a two-tower there is nothing to fuse with: the DLRM score alone (``selected_on: default``).
    """
    if two_tower is None:
        return {"dlrm_weight": 1.0, "retrieval_weight": 0.0, "selected_on": "default"}, []
    cset = candidate_set(two_tower, data, split_view(data, "valid"), candidates)
    logits = dlrm_scores(model, data, cset.users, cset.history, cset.cands)
    fusion, trials = choose_fusion(cset, logits, two_tower.cfg.temperature)
    fusion["valid_ndcg@10_dlrm_only"] = candidate_ndcg(cset, logits.astype(np.float64))
    fusion["valid_ndcg@10_two_tower"] = candidate_ndcg(cset, cset.retrieval)
    fusion["candidates"] = int(cset.cands.shape[1])
    return fusion, trials


# ------------------------------------------------------------------------------ both

# DLRM training settings of train_all, chosen on ML-100K validation (fused NDCG@10 of reranking the
# two-tower's top-100; two-tower alone 0.130): BCE, rating >= 4 positives, 4 random negatives
# (the old default) 0.134 (DLRM alone 0.070); every interaction a positive 0.136 (0.089);
# sampled softmax over 16 random negatives 0.140 (0.092; 3 min); + the two-tower logit as a fixed
# offset (learn a residual) 0.133 (0.034: the two-tower is overconfident on its own training
# rows); softmax over 16 negatives of which 8 from the two-tower's top-100, 3 epochs 0.150 (0.120).
DLRM_TRAIN = {"positive_min_rating": None, "loss": "softmax", "negatives": 16, "hard_negatives": 8,
              "hard_pool": 100}
DLRM_EPOCHS = 2  # 3 epochs: valid fused 0.150 but ML-100K `recstack train` ~118 s; 2 epochs: 0.143, ~90 s

TWO_TOWER_BUDGET_S = 330.0  # per-model training time budgets (epochs stop early past them): ML-1M
DLRM_BUDGET_S = 180.0       # fits ~10 min on a 2-core CPU, ML-100K stops on its own long before


def _batch_sizes(n_rows: int) -> tuple[int, int]:
    """(two-tower, DLRM) batch sizes: bigger batches for big datasets (fewer steps per epoch)."""
    return (512, 1024) if n_rows < 300_000 else (2048, 4096)


def train_all(paths: RunPaths, device: str = "auto", epochs: int | None = None, *, seed: int = 0,
              refit: bool = False, progress: bool = True, threads: int | None = None,
              onnx: bool = True, time_budget_s: tuple[float, float] | None = (TWO_TOWER_BUDGET_S, DLRM_BUDGET_S),
              ) -> dict[str, Any]:
    """Two-tower then DLRM (selected on reranking the two-tower's candidates); returns the summary.

    ``time_budget_s`` = (two-tower, DLRM) seconds after which no new epoch starts.
    """
    start = time.perf_counter()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    try:
        data = load_training_data(paths)
        tt_batch, dl_batch = _batch_sizes(len(data.train))
        budgets = time_budget_s or (None, None)
        tt = train_two_tower(paths, data, device=device, epochs=epochs, seed=seed, refit=refit,
                             progress=progress, onnx=onnx, batch_size=tt_batch, time_budget_s=budgets[0])
        dl = train_dlrm(paths, data, device=device, epochs=epochs or DLRM_EPOCHS, seed=seed, refit=refit,
                        progress=progress, two_tower=tt["_model"], onnx=onnx, batch_size=dl_batch,
                        time_budget_s=budgets[1], **DLRM_TRAIN)
    finally:
        torch.set_num_threads(prev_threads)
    summary = {"dataset": paths.root.name, "device": str(resolve_device(device)),
               "train_rows": len(data.train), "n_items": data.n_items,
               "two_tower": {k: v for k, v in tt.items() if not k.startswith("_")},
               "dlrm": {k: v for k, v in dl.items() if not k.startswith("_")},
               "wall_s": round(time.perf_counter() - start, 2)}
    return summary


def model_dirs(paths: RunPaths) -> dict[str, Path]:
    return {"two_tower": paths.models / "two_tower", "dlrm": paths.models / "dlrm"}
