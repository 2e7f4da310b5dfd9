"""Training the DLRM ranker: binary cross-entropy or sampled softmax (``loss``), positives = train
interactions with rating >= ``positive_min_rating`` (every interaction when None or when the
dataset has no ratings), ``negatives`` sampled items per positive (:mod:`recstack.models.negatives`:
half uniform over the catalogue, half popularity-proportional; ``hard_negatives`` of them from
the two-tower's top-``hard_pool`` items instead); selection by validation NDCG@10 of the
two-tower's top-``candidates`` reranked by the fused score (AUC of validation positives vs
sampled negatives when no two-tower is available).

After training, the weights of ``dlrm_weight * dlrm_logit + retrieval_weight * two_tower_inner_product``
are chosen on the validation candidates (:func:`recstack.models.validation.fusion_on_valid`) and
stored in ``models/dlrm/config.json`` ``"fusion"``; evaluation and serving apply them.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from recstack.errors import InputError
from recstack.models.checkpoint import checkpoint_writer
from recstack.models.candidate_pool import build_training_pool, own_item_keys, softmax_groups
from recstack.models.candidates import (
    ARTIFACT, CROSS_BLOCK, RANKER_FEATURES, CandidateSources, SourceConfig, build_sources,
)
from recstack.models.data import Interactions, TrainingData, load_training_data
from recstack.models.device import resolve_device, seed_everything, to_tensors
from recstack.models.distributed import SINGLE_PROCESS, Distributed, local_device
from recstack.models.dlrm import DLRM, DLRMConfig
from recstack.models.export import load_two_tower, save_dlrm
from recstack.models.loop import (
    PLAIN_STEP, EpochSelection, StepOptions, Trainer, settings_summary, warmup_cosine,
)
from recstack.models.negatives import dlrm_examples, hard_negative_pool, positive_rows
from recstack.models.predict import item_embeddings, user_embeddings
from recstack.models.two_tower import TwoTower
from recstack.models.validation import candidate_set, dlrm_valid_metric, fusion_on_valid, split_view
from recstack.paths import RunPaths
from recstack.workflows.request_context import TIME_CONTEXT


def fit_dlrm(data: TrainingData, cfg: DLRMConfig | None = None, *, two_tower: TwoTower | None = None,
             epochs: int = 10, batch_size: int = 1024, lr: float = 2e-3, weight_decay: float = 0.0,
             negatives: int = 4, pop_share: float = 0.5, hard_negatives: int = 0, hard_pool: int = 50,
             positive_min_rating: float | None = 4.0, patience: int = 2,
             candidates: int = 100, loss: str = "bce", retrieval_offset: bool = False,
             device: str | torch.device = "cpu", seed: int = 0,
             max_wall_s: float | None = None, train_rows: Interactions | None = None, select: bool = True,
             context: bool = True, progress: bool = True, checkpoint_dir: Path | None = None,
             step_options: StepOptions = PLAIN_STEP, ddp: Distributed = SINGLE_PROCESS,
             sources: CandidateSources | None = None) -> tuple[DLRM, dict[str, Any]]:
    """Train a DLRM on positives vs sampled negatives; select the epoch on valid.

    ``loss="bce"``: binary cross-entropy per (user, item); ``loss="softmax"``: each positive
    against its own ``negatives`` (sampled softmax, listwise). ``retrieval_offset`` (softmax
    only, needs the two-tower) adds the fixed two-tower logit (inner product / temperature)
    to every score, so the DLRM learns a correction on top of retrieval (the fusion it will
    be served with). With a two-tower, each epoch records the validation NDCG@10 of the DLRM
    alone (``valid_ndcg@10_rerank``) and of the best fusion (``valid_ndcg@10_fused``), and the
    epoch is selected on the fused one (what is served).

    ``context``: the DLRM reads the request context of each interaction (hour and weekday of its
    timestamp in UTC, and the device where the training data has one: :func:`context_columns`);
    False trains the ablation variant without it.

    ``max_wall_s`` (a safety stop), ``checkpoint_dir``, ``step_options`` and ``ddp``: as in
    :func:`recstack.models.two_tower_training.fit_two_tower` (a global batch holds ``batch_size``
    examples; under torchrun each rank scores its share of the groups).

    ``sources`` (multi-source retrieval, :mod:`recstack.models.candidates`; needs the two-tower and
    ``loss="softmax"``): the DLRM reads the ``item_cross`` block (source scores, genre affinity,
    popularity, time since the item's last interaction; ``cfg.cross_features``, default
    :data:`~recstack.models.candidates.RANKER_FEATURES`), every negative comes from the merged
    candidates of the positive's moment (:mod:`recstack.models.candidate_pool`), never from the
    user's own train items, and selection and fusion score the validation split's merged candidates.
    """
    if loss not in ("bce", "softmax"):
        raise InputError(f"loss: expected bce or softmax, got {loss!r}")
    seed_everything(seed)
    dev = local_device(resolve_device(device), ddp)
    cfg = cfg or DLRMConfig()
    if sources is not None:
        if two_tower is None or loss != "softmax":
            raise InputError("sources: multi-source training needs a two-tower and loss='softmax'")
        if not cfg.cross_features:
            cfg = replace(cfg, cross_features=list(RANKER_FEATURES))
    rows = train_rows if train_rows is not None else data.train
    layout = data.layout.with_context(context_columns(data)) if context else data.layout
    model = DLRM(layout, cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    pos_rows = positive_rows(rows, positive_min_rating)
    pool = hard_negative_pool(two_tower, data, rows, pos_rows, hard_pool) \
        if (two_tower is not None and hard_negatives and sources is None) else None
    tpool = None
    if sources is not None:  # the context ablation trains on the same pool: built once per (two-tower, rows, seed)
        key = (id(two_tower), id(rows), len(pos_rows), seed)
        tpool = sources.cache.get(key)
        if tpool is None:
            own_keys = own_item_keys(rows.users, rows.items, data.n_items)
            knn_keys = None  # the pairs build_candidate_sources counted: the train rows
            if sources.cfg.leave_user_out:
                knn_keys = own_keys if rows is data.train else own_item_keys(data.train.users, data.train.items,
                                                                              data.n_items)
            tpool = sources.cache[key] = build_training_pool(
                sources, user_embeddings(two_tower, data, rows.users[pos_rows], rows.history[pos_rows],
                                         rows.history_times[pos_rows]),
                item_embeddings(two_tower, data), rows.users[pos_rows], rows.history[pos_rows], rows.items[pos_rows],
                rows.times[pos_rows], own_keys, rng, knn_keys=knn_keys, device=dev)
    n_examples = len(pos_rows) * (1 + negatives)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(epochs * max(1, math.ceil(n_examples / batch_size))))
    view = split_view(data, "valid")
    cset = candidate_set(two_tower, data, view, candidates, sources=sources) \
        if (two_tower is not None and select) else None
    offset = _retrieval_offset(two_tower, data, rows) if (retrieval_offset and two_tower is not None) else None
    if retrieval_offset and (two_tower is None or loss != "softmax"):
        raise InputError("retrieval_offset: needs a two-tower and loss='softmax'")
    loss_fn = torch.nn.BCEWithLogitsLoss()
    metric_name = "valid_ndcg@10_fused" if two_tower is not None else "valid_auc"
    bar = tqdm(range(epochs), desc="dlrm", unit="epoch", disable=not (progress and ddp.is_main))
    trainer = Trainer(model, opt, sched, dev, step_options, ddp)
    selection = EpochSelection(model, select, patience, max_wall_s, bar, ("loss", metric_name),
                               checkpoint_writer(checkpoint_dir, "dlrm", opt, ddp.is_main))
    for epoch in bar:
        model.train()
        row_idx, items, labels = dlrm_examples(data, rows, rng, negatives, pos_rows, pop_share, hard_negatives, pool)
        total, n_batches = 0.0, 0
        if loss == "softmax":  # group k = (positive k, its negatives): [P, 1 + negatives]
            P = len(pos_rows)
            groups_rows = np.concatenate([row_idx[:P, None], row_idx[P:].reshape(P, negatives)], 1)
            groups_items = np.concatenate([items[:P, None], items[P:].reshape(P, negatives)], 1)
            dup = np.concatenate([np.zeros((P, 1), bool), labels[P:].reshape(P, negatives) > 0], 1)
            if tpool is not None:  # every negative from the positive's merged candidates
                groups_items, group_flags, dup = softmax_groups(tpool, rows.items[pos_rows], rng, negatives)
                groups_rows = np.repeat(pos_rows[:, None], 1 + negatives, 1)
            perm = rng.permutation(P)
            step = max(1, batch_size // (1 + negatives))
        else:
            perm = rng.permutation(len(row_idx))
            step = batch_size
        for s in range(0, len(perm), step):
            if len(perm) - s < ddp.world:
                break  # fewer rows than ranks: not a batch every rank can share
            b_global = perm[s:s + step]
            b = ddp.shard(b_global)
            if loss == "softmax":
                # a group's rows are one user row: its blocks once, the group's items [G, 1 + negatives, *]
                # (the DLRM's grouped forward pools the history once per group, not once per item)
                g = groups_rows[b, 0]
                blocks = data.batch(rows.users[g], rows.history[g], groups_items[b], rows.context[g])
                if tpool is not None:
                    p = pos_rows[b]
                    blocks[CROSS_BLOCK] = tpool.features(sources, b, groups_items[b], rows.history[p], rows.times[p],
                                                         group_flags[b])
                batch = to_tensors(blocks, dev)
                with trainer.autocast():
                    logits = trainer.forward(batch).float()
                if offset is not None:
                    r, it = groups_rows[b].reshape(-1), groups_items[b].reshape(-1)
                    logits = logits + torch.from_numpy(offset(r, it).reshape(len(b), 1 + negatives)).to(dev)
                logits = logits.masked_fill(torch.from_numpy(dup[b]).to(dev), float("-inf"))
                loss_value = torch.nn.functional.cross_entropy(logits, torch.zeros(len(b), dtype=torch.long,
                                                                                   device=dev))
            else:
                r = row_idx[b]
                batch = to_tensors(data.batch(rows.users[r], rows.history[r], items[b], rows.context[r]), dev)
                with trainer.autocast():
                    scores = trainer.forward(batch).float()
                loss_value = loss_fn(scores, torch.from_numpy(labels[b]).to(dev))
            value = selection.step(trainer, loss_value * ddp.loss_weight(len(b), len(b_global)))
            if value is None:
                break
            total += value
            n_batches += 1
        if selection.non_finite:
            break
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": total / max(n_batches, 1)}
        score = None
        if select:
            model.eval()
            score = dlrm_valid_metric(model, data, view, cset, record,
                                      two_tower.cfg.temperature if two_tower is not None else 1.0)
        if selection.end_epoch(record, score):
            break
    return model, {**selection.finish(), "selection_metric": metric_name}


def context_columns(data: TrainingData) -> tuple[str, ...]:
    """The context columns a DLRM trained on ``data`` reads: hour and weekday always; device only
    when the training interactions carry one (no bundled dataset does: a device the model never saw
    in training would only add an untrained embedding)."""
    return TIME_CONTEXT + (("device",) if data.has_device else ())


def _retrieval_offset(two_tower: TwoTower, data: TrainingData,
                      rows: Interactions) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``fn(row_index, items) -> two-tower logits`` (inner product / temperature) for training rows."""
    item_emb = item_embeddings(two_tower, data)
    user_emb = user_embeddings(two_tower, data, rows.users, rows.history, rows.history_times)
    inv_t = 1.0 / float(two_tower.cfg.temperature)

    def fn(r: np.ndarray, items: np.ndarray) -> np.ndarray:
        return (np.einsum("nd,nd->n", user_emb[r], item_emb[items]) * inv_t).astype(np.float32)
    return fn


def train_dlrm(paths: RunPaths, data: TrainingData | None = None, *, device: str = "auto",
               epochs: int | None = None, cfg: DLRMConfig | None = None, two_tower: TwoTower | None = None,
               refit: bool = False, seed: int = 0, progress: bool = True, onnx: bool = True,
               max_wall_s: float | None = None, model_name: str = "dlrm",
               multi_source: bool | CandidateSources = False, **fit_kwargs: Any) -> dict[str, Any]:
    """Train the DLRM (selection on valid reranking when a two-tower is given or saved), save ``models/<model_name>/``
    (``dlrm``: the served ranker; ``dlrm_no_context`` with ``context=False``: the context ablation).

    ``multi_source``: True builds the candidate sources (``models/candidates/``,
    :func:`build_candidate_sources`) and trains on them (``fit_dlrm(sources=...)``); a loaded
    :class:`~recstack.models.candidates.CandidateSources` reuses one (returned as ``"_sources"``)."""
    start = time.perf_counter()
    data = data or load_training_data(paths)
    if two_tower is None and (paths.models / "two_tower" / "config.json").exists():
        two_tower, _ = load_two_tower(paths.models / "two_tower", resolve_device(device))
    cfg = cfg or DLRMConfig()
    rows: Interactions | None = fit_kwargs.pop("train_rows", None)  # a sample of train (train_all's max_train_rows)
    if refit and rows is not None:
        raise InputError("refit: retrains on all of train + valid, not on a sample of train_rows")
    sources = None
    if multi_source is not False and multi_source is not None and two_tower is not None:
        sources = multi_source if isinstance(multi_source, CandidateSources) else build_candidate_sources(paths, data)
    model, hist = fit_dlrm(data, cfg, two_tower=two_tower, epochs=epochs or 10, device=device, seed=seed,
                           progress=progress, max_wall_s=max_wall_s, train_rows=rows, sources=sources,
                           **fit_kwargs)
    best_record = next((h for h in hist["history"] if h["epoch"] == hist["best_epoch"]), {})
    valid_metrics = {k: v for k, v in best_record.items() if k.startswith("valid_")}
    fusion, trials = fusion_on_valid(model, two_tower, data, fit_kwargs.get("candidates", 100), sources=sources)
    if refit:  # the weights chosen on valid (with the train-only model) carry over to the refit model
        both = Interactions.concat([data.train, data.valid])
        model, _ = fit_dlrm(data, cfg, two_tower=two_tower, epochs=hist["best_epoch"], device=device, seed=seed,
                            progress=progress, train_rows=both, select=False, sources=sources, **fit_kwargs)
        fusion["refit_after_selection"] = True
    training = {"device": str(resolve_device(device)), "seed": seed, "refit_on_train_valid": refit,
                "fit_rows": len(rows) if rows is not None else len(data.train), "valid_rows": len(data.valid), **hist,
                "fusion_search": trials, **settings_summary(fit_kwargs)}
    out = paths.models / model_name
    if fit_kwargs.get("ddp", SINGLE_PROCESS).is_main:
        save_dlrm(model, out, {"valid": valid_metrics}, training, onnx=onnx, fusion=fusion)
    return {"model": model_name, "dir": str(out), "valid": valid_metrics, "fusion": fusion,
            "best_epoch": hist["best_epoch"], "epochs_run": hist["epochs_run"], "stop_reason": hist["stop_reason"],
            "non_finite_loss": hist.get("non_finite_loss"),
            "wall_s": round(time.perf_counter() - start, 2), "_model": model, "_sources": sources}


def build_candidate_sources(paths: RunPaths, data: TrainingData, cfg: SourceConfig | None = None) -> CandidateSources:
    """Write ``models/candidates/`` (item-kNN neighbours of train, train + valid interaction times and
    popularity, item genres: :func:`recstack.models.candidates.build_sources`) and load it."""
    cfg = cfg or SourceConfig()
    both = Interactions.concat([data.train, data.valid])
    lists = data.item_features.get("item_lists")
    genres = lists[:, : data.layout.item.lists[0].max_length] if lists is not None and data.layout.item.lists else None
    folder = build_sources(paths.models / ARTIFACT, cfg, data.n_items, data.train.users, data.train.items,
                           both.items, both.times, genres)
    return CandidateSources(folder)
