"""Training the two-tower retriever: in-batch sampled softmax (+ logQ correction, + catalogue-uniform
negatives); after every epoch, full-catalogue NDCG@10 on the validation split (history = train,
train items excluded); the best epoch's weights are kept (early stopping).

``refit=True`` retrains on train + valid for the selected number of epochs (the DATA.md
protocol); off by default: the validation rows are one per user (~1% of ML-100K) and already
enter every test-time history, and a refit doubles the training time.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from recstack.errors import InputError
from recstack.ids import FIRST_CODE
from recstack.models.checkpoint import checkpoint_writer
from recstack.models.data import Interactions, TrainingData, load_training_data
from recstack.models.device import resolve_device, seed_everything, to_tensors
from recstack.models.distributed import SINGLE_PROCESS, Distributed, local_device
from recstack.models.export import save_two_tower
from recstack.models.loop import (
    PLAIN_STEP, EpochSelection, StepOptions, Trainer, settings_summary, warmup_cosine,
)
from recstack.models.sequence_training import fit_sequence_two_tower
from recstack.models.two_tower import TwoTower, TwoTowerConfig, drop_ids, in_batch_softmax_loss
from recstack.models.validation import evaluate_two_tower, split_view, two_tower_epoch_score
from recstack.paths import RunPaths


def fit_two_tower(data: TrainingData, cfg: TwoTowerConfig | None = None, *, epochs: int = 20,
                  batch_size: int = 512, lr: float = 2e-3, weight_decay: float = 0.0, patience: int = 3,
                  device: str | torch.device = "cpu", seed: int = 0, max_wall_s: float | None = None,
                  train_rows: Interactions | None = None, select: bool = True,
                  progress: bool = True, checkpoint_dir: Path | None = None,
                  step_options: StepOptions = PLAIN_STEP,
                  ddp: Distributed = SINGLE_PROCESS) -> tuple[TwoTower, dict[str, Any]]:
    """Train a two-tower model on ``train_rows`` (default: data.train); select the epoch on valid.

    Returns the model with the best validation NDCG@10 (``select=True``) or the last epoch's
    weights, and a history dict (per-epoch loss / metrics, best epoch, seconds, ``stop_reason``:
    :data:`recstack.models.loop.STOP_REASONS`). ``max_wall_s`` is a safety stop only; a NaN / inf
    loss stops training with the last good epoch's weights. Under torchrun (``ddp``) each rank
    trains on its share of every global batch of ``batch_size`` rows. A config with
    ``user_encoder="sasrec"`` trains with :func:`recstack.models.sequence_training.fit_sequence_two_tower`
    (every position of each user's sequence; ``batch_size`` / ``patience`` / ``lr`` from the config's
    ``sequence_*`` fields instead; one process: torchrun is refused there).
    """
    rows = train_rows if train_rows is not None else data.train
    cfg = (cfg or TwoTowerConfig()).resolved(len(rows))
    if cfg.user_encoder == "sasrec":
        if ddp.world > 1:
            raise InputError("torchrun: the sequence user tower trains in one process (user_encoder: pool for DDP)")
        return fit_sequence_two_tower(data, cfg, epochs=epochs, lr=cfg.sequence_lr, weight_decay=weight_decay,
                                      device=device, seed=seed, max_wall_s=max_wall_s, train_rows=train_rows,
                                      select=select, progress=progress, checkpoint_dir=checkpoint_dir,
                                      step_options=step_options)
    seed_everything(seed)
    dev = local_device(resolve_device(device), ddp)
    model = TwoTower(data.layout, cfg).to(dev)
    counts = np.bincount(rows.items, minlength=data.n_items).astype(np.float64)
    log_p = torch.from_numpy(np.log(np.maximum(counts, 1.0) / max(counts.sum(), 1.0))).float().to(dev)
    n_cat = data.n_items - FIRST_CODE
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(rows) / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(epochs * steps_per_epoch))
    rng = np.random.default_rng(seed)
    view = split_view(data, "valid")
    bar = tqdm(range(epochs), desc="two-tower", unit="epoch", disable=not (progress and ddp.is_main))
    trainer = Trainer(model, opt, sched, dev, step_options, ddp)
    selection = EpochSelection(model, select, patience, max_wall_s, bar, ("loss", "valid_ndcg@10"),
                               checkpoint_writer(checkpoint_dir, "two_tower", opt, ddp.is_main))
    for epoch in bar:
        model.train()
        perm = rng.permutation(len(rows))
        total, n_batches = 0.0, 0
        for s in range(0, len(perm), batch_size):
            if len(perm) - s < ddp.world:
                break  # fewer rows than ranks: not a batch every rank can share
            idx = perm[s:s + batch_size]
            local = ddp.shard(idx)
            batch = to_tensors(data.batch(rows.users[local], rows.history[local], rows.items[local]), dev)
            item_ids = ddp.gather(batch["item_cat"][:, 0], len(idx))
            batch["user_cat"] = drop_ids(batch["user_cat"], cfg.id_dropout)
            batch["item_cat"] = drop_ids(batch["item_cat"], cfg.id_dropout)
            with trainer.autocast():
                user_emb, item_emb = trainer.forward(batch)
            user_emb, item_emb = user_emb.float(), item_emb.float()
            item_emb = ddp.gather(item_emb, len(idx))
            log_q = (log_p[item_ids] + math.log(len(idx))) if cfg.logq_correction else None
            neg_emb = neg_ids = neg_log_q = None
            if cfg.uniform_negatives > 0:
                neg = rng.integers(FIRST_CODE, data.n_items, cfg.uniform_negatives)
                neg_batch = to_tensors({k: v[neg] for k, v in data.item_features.items()}, dev)
                neg_ids = neg_batch["item_cat"][:, 0]
                neg_batch["item_cat"] = drop_ids(neg_batch["item_cat"], cfg.id_dropout)
                neg_emb = model.item_embedding(neg_batch)
                if cfg.logq_correction:
                    neg_log_q = torch.full((len(neg),), math.log(cfg.uniform_negatives / n_cat), device=dev)
            loss = in_batch_softmax_loss(user_emb, item_emb, item_ids, cfg.temperature, log_q,
                                         neg_emb, neg_ids, neg_log_q, row_offset=ddp.bounds(len(idx))[0])
            value = selection.step(trainer, loss * ddp.loss_weight(len(local), len(idx)))
            if value is None:
                break
            total += value
            n_batches += 1
        if selection.non_finite:
            break
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": total / max(n_batches, 1)}
        score = two_tower_epoch_score(model, data, view, record) if select else None
        if selection.end_epoch(record, score):
            break
    return model, selection.finish()


def train_two_tower(paths: RunPaths, data: TrainingData | None = None, *, device: str = "auto",
                    epochs: int | None = None, cfg: TwoTowerConfig | None = None, refit: bool = False,
                    seed: int = 0, progress: bool = True, onnx: bool = True,
                    max_wall_s: float | None = None, **fit_kwargs: Any) -> dict[str, Any]:
    """Train, select on valid, (optionally refit on train + valid), save ``models/two_tower/``; return a summary.

    ``fit_kwargs`` go to :func:`fit_two_tower` (``checkpoint_dir``, ``step_options``, ``ddp`` among them);
    under torchrun only rank 0 saves the model folder."""
    start = time.perf_counter()
    data = data or load_training_data(paths)
    cfg = cfg or TwoTowerConfig()
    rows: Interactions | None = fit_kwargs.pop("train_rows", None)  # a sample of train (train_all's max_train_rows)
    if refit and rows is not None:
        raise InputError("refit: retrains on all of train + valid, not on a sample of train_rows")
    cfg = cfg.resolved(len(rows) if rows is not None else len(data.train))
    default_epochs = cfg.sequence_epochs if cfg.user_encoder == "sasrec" else 20
    model, hist = fit_two_tower(data, cfg, epochs=epochs or default_epochs, device=device, seed=seed, progress=progress,
                                max_wall_s=max_wall_s, train_rows=rows, **fit_kwargs)
    valid_metrics = evaluate_two_tower(model, data, split_view(data, "valid"))
    if refit:
        both = Interactions.concat([data.train, data.valid])
        model, _ = fit_two_tower(data, cfg, epochs=hist["best_epoch"], device=device, seed=seed, progress=progress,
                                 train_rows=both, select=False, **fit_kwargs)
    training = {"device": str(resolve_device(device)), "seed": seed, "refit_on_train_valid": refit,
                "rows": len(data.train), "fit_rows": len(rows) if rows is not None else len(data.train),
                "valid_rows": len(data.valid), **hist, **settings_summary(fit_kwargs)}
    out = paths.models / "two_tower"
    if fit_kwargs.get("ddp", SINGLE_PROCESS).is_main:
        save_two_tower(model, out, data.item_features, {"valid": valid_metrics}, training, onnx=onnx)
    return {"model": "two_tower", "dir": str(out), "valid": valid_metrics, "best_epoch": hist["best_epoch"],
            "epochs_run": hist["epochs_run"], "stop_reason": hist["stop_reason"], "non_finite_loss": hist.get("non_finite_loss"),
            "wall_s": round(time.perf_counter() - start, 2), "_model": model}
