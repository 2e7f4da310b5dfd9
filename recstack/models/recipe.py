"""The tuned training recipe of ``recstack train``: two-tower, then the DLRM reranking its candidates.

:func:`train_all` trains the two-tower (:mod:`recstack.models.two_tower_training`), then the
DLRM (:mod:`recstack.models.dlrm_training`): every interaction a positive, softmax over 16
negatives, 8 of them from the two-tower's top-100 (the candidates the DLRM reranks in serving), at
most 2 epochs, selected on the fused validation NDCG@10. The settings are the defaults of
:class:`recstack.models.train_config.TrainConfig` (``recstack train --config FILE`` changes them).
Both write their folder (:mod:`recstack.models.export`) and the last good epoch under
``runs/<ds>/checkpoints/`` (:mod:`recstack.models.checkpoint`); the summary goes to ``runs/<ds>/train.json``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from recstack.errors import InputError
from recstack.io import write_json
from recstack.models.data import Interactions, TrainingData, load_training_data
from recstack.models.device import default_threads, resolve_device
from recstack.models.distributed import distributed_from_env, local_device
from recstack.models.dlrm_training import train_dlrm
from recstack.models.loop import resolve_step_options
from recstack.models.train_config import TrainConfig
from recstack.models.two_tower_training import train_two_tower
from recstack.paths import RunPaths

# DLRM training settings (TrainConfig.dlrm's defaults), chosen on ML-100K validation (fused NDCG@10 of reranking the
# two-tower's top-100; two-tower alone 0.130): BCE, rating >= 4 positives, 4 random negatives
# (the old default) 0.134 (DLRM alone 0.070); every interaction a positive 0.136 (0.089);
# sampled softmax over 16 random negatives 0.140 (0.092; 3 min); + the two-tower logit as a fixed
# offset (learn a residual) 0.133 (0.034: the two-tower is overconfident on its own training
# rows); softmax over 16 negatives of which 8 from the two-tower's top-100, 3 epochs 0.150 (0.120).
# 3 epochs: valid fused 0.150 but ML-100K `recstack train` ~118 s; 2 epochs: 0.143, ~90 s.
# TrainConfig.dlrm.multi_source (default on): the DLRM ranks multi-source candidates (two-tower + item-kNN +
# popular, recstack.models.candidates) with their cross features, its negatives drawn from those candidates.

ABLATION_MODEL = "dlrm_no_context"
ABLATION_MAX_ROWS = 300_000
"""train_all trains the no-context ranker by default below this many train rows (ML-100K, not ML-1M)."""


def batch_sizes(n_rows: int) -> tuple[int, int]:
    """(two-tower, DLRM) batch sizes: bigger batches for big datasets (fewer steps per epoch)."""
    return (512, 1024) if n_rows < 300_000 else (2048, 4096)


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"--{name}: must be an integer >= 1, got {value!r}")


def sample_rows(data: TrainingData, max_train_rows: int | None, valid_users: int | None,
                seed: int = 0) -> tuple[TrainingData, Interactions | None]:
    """Smaller training / selection sets for a large catalogue, the catalogue itself unchanged.

    ``max_train_rows``: a random sample of that many training interactions (in their original
    order) for the models to fit on, returned separately: ``data.train`` stays whole, so the
    validation still excludes every train item a user saw. ``valid_users``: model selection and the
    fusion weights on a random sample of that many validation rows (one per user). Returns
    ``(data with the sampled valid split, the sampled train rows or None)``.
    """
    rng = np.random.default_rng([seed, 7])
    rows = None
    if max_train_rows is not None and max_train_rows < len(data.train):
        rows = data.train.subset(np.sort(rng.choice(len(data.train), max_train_rows, replace=False)))
    if valid_users is not None and valid_users < len(data.valid):
        data = replace(data, valid=data.valid.subset(np.sort(rng.choice(len(data.valid), valid_users,
                                                                           replace=False))))
    return data, rows


def _overridden(cfg: TrainConfig, device: str | None, epochs: int | None, seed: int | None, refit: bool | None,
                threads: int | None, onnx: bool | None, embedding_dim: int | None, max_train_rows: int | None,
                valid_users: int | None, hard_negatives: int | None, context_ablation: bool | None,
                max_wall_s: float | None | str) -> TrainConfig:
    """``cfg`` with the command-line / keyword values that were given (None = keep the config's)."""
    top = {k: v for k, v in (("device", device), ("seed", seed), ("refit", refit), ("threads", threads),
                             ("onnx", onnx), ("max_train_rows", max_train_rows), ("valid_users", valid_users),
                             ("context_ablation", context_ablation)) if v is not None}
    if max_wall_s != "config":
        top["max_wall_s"] = max_wall_s
    tt_model = replace(cfg.two_tower.model, output_dim=embedding_dim) if embedding_dim else cfg.two_tower.model
    tt = replace(cfg.two_tower, model=tt_model, **({"epochs": epochs} if epochs else {}))
    dl = replace(cfg.dlrm, **({"epochs": epochs} if epochs else {}),
                 **({"hard_negatives": hard_negatives} if hard_negatives is not None else {}))
    return replace(cfg, two_tower=tt, dlrm=dl, **top)


def train_all(paths: RunPaths, device: str | None = None, epochs: int | None = None, *,
              config: TrainConfig | None = None, seed: int | None = None, refit: bool | None = None,
              progress: bool = True, threads: int | None = None, onnx: bool | None = None,
              embedding_dim: int | None = None, max_train_rows: int | None = None,
              valid_users: int | None = None, hard_negatives: int | None = None,
              context_ablation: bool | None = None, max_wall_s: float | None | str = "config",
              ) -> dict[str, Any]:
    """Two-tower then DLRM (selected on reranking the two-tower's candidates); returns the summary.

    ``config``: the experiment's settings (:class:`recstack.models.train_config.TrainConfig`, default:
    the recipe); every other keyword, when given, overrides its config key (``epochs``: both models'
    maximum epochs; ``max_wall_s``: the per-model safety stop, None for none). Training runs at most
    the configured epochs with early stopping on validation, so the result does not depend on the
    machine's speed; the safety stop, when hit, is reported (``stop_reason: wall_clock_limit``).
    ``embedding_dim``: d of the two-tower's user / item embeddings (the FAISS vectors). For large
    catalogues, where every full-catalogue pass and every step's dense update of the item tables are
    costly: ``max_train_rows`` and ``valid_users`` (:func:`sample_rows`), and ``hard_negatives`` (the
    DLRM's negatives from the two-tower's top items per positive, 8 by default; each positive costs a
    full-catalogue scoring, so 0 turns them off for a 1M-item catalogue).

    The DLRM reads the request context (hour, weekday of each interaction in UTC).
    ``context_ablation`` also trains ``models/dlrm_no_context``, the same DLRM recipe (same data,
    seed, two-tower) without the context, for ``recstack evaluate``'s ablation row; None: only
    for small datasets (under ``ABLATION_MAX_ROWS`` train rows, ML-100K: about +90 s on 2 cores).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) both models train with DistributedDataParallel
    (:mod:`recstack.models.distributed`); rank 0 writes the folders.
    """
    for name, value in (("embedding-dim", embedding_dim), ("max-train-rows", max_train_rows),
                        ("valid-users", valid_users)):
        _check_positive(name, value)
    base = config or TrainConfig()
    if hard_negatives is not None and (isinstance(hard_negatives, bool) or not isinstance(hard_negatives, int)
                                       or not 0 <= hard_negatives <= base.dlrm.negatives):
        raise InputError(f"--hard-negatives: must be an integer in 0..{base.dlrm.negatives}, "
                         f"got {hard_negatives!r}")
    if (refit or (refit is None and base.refit)) and (max_train_rows or base.max_train_rows) is not None:
        raise InputError("--refit retrains on all of train + valid: it does not combine with --max-train-rows")
    cfg = _overridden(base, device, epochs, seed, refit, threads, onnx, embedding_dim, max_train_rows,
                      valid_users, hard_negatives, context_ablation, max_wall_s)
    requested = resolve_device(cfg.device)
    ddp = distributed_from_env(requested)
    dev = local_device(requested, ddp)
    options = resolve_step_options(cfg.precision, cfg.compile, dev)
    checkpoints = paths.root / "checkpoints" if cfg.checkpoints else None
    start = time.perf_counter()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or default_threads())
    try:
        data = load_training_data(paths)
        data, rows = sample_rows(data, cfg.max_train_rows, cfg.valid_users, cfg.seed)
        common = {"device": str(dev), "seed": cfg.seed, "refit": cfg.refit, "progress": progress,
                  "max_wall_s": cfg.max_wall_s, "step_options": options, "ddp": ddp,
                  **({"train_rows": rows} if rows is not None else {})}
        tt_batch, dl_batch = batch_sizes(len(data.train))
        t = cfg.two_tower
        tt = train_two_tower(paths, data, epochs=t.epochs, cfg=t.model, onnx=cfg.onnx,
                             batch_size=t.batch_size or tt_batch, lr=t.lr, weight_decay=t.weight_decay,
                             patience=t.patience, checkpoint_dir=checkpoints and checkpoints / "two_tower", **common)
        d = cfg.dlrm
        dlrm_train = {"positive_min_rating": d.positive_min_rating, "loss": d.loss, "negatives": d.negatives,
                      "hard_negatives": d.hard_negatives, "hard_pool": d.hard_pool, "lr": d.lr,
                      "weight_decay": d.weight_decay, "patience": d.patience, "batch_size": d.batch_size or dl_batch}
        dl = train_dlrm(paths, data, epochs=d.epochs, cfg=d.model, two_tower=tt["_model"], onnx=cfg.onnx,
                        checkpoint_dir=checkpoints and checkpoints / "dlrm", multi_source=d.multi_source,
                        **dlrm_train, **common)
        context_ablation = cfg.context_ablation
        if context_ablation is None:
            context_ablation = len(data.train) < ABLATION_MAX_ROWS
        ablation = None
        if context_ablation:
            # as many epochs as the served ranker ran (early stopping may have cut them): the two
            # rankers differ by the context block only
            ablation = train_dlrm(paths, data, epochs=max(1, dl["epochs_run"]), cfg=d.model, two_tower=tt["_model"],
                                  onnx=False, model_name=ABLATION_MODEL, context=False,
                                  checkpoint_dir=checkpoints and checkpoints / ABLATION_MODEL,
                                  multi_source=dl["_sources"] or False, **dlrm_train, **common)
        elif (paths.models / ABLATION_MODEL).exists() and ddp.is_main:  # a stale ablation is not comparable
            import shutil

            shutil.rmtree(paths.models / ABLATION_MODEL)
    finally:
        torch.set_num_threads(prev_threads)
    models = {"two_tower": tt, "dlrm": dl, **({ABLATION_MODEL: ablation} if ablation is not None else {})}
    summary = {"dataset": paths.root.name, "device": str(dev), "world_size": ddp.world,
               "bf16": options.bf16, "compile": options.compile,
               "train_rows": len(data.train), "n_items": data.n_items,
               "fit_rows": len(rows) if rows is not None else len(data.train), "valid_rows": len(data.valid),
               **{name: {k: v for k, v in s.items() if not k.startswith("_")} for name, s in models.items()},
               "safety_stops": [name for name, s in models.items() if s["stop_reason"] == "wall_clock_limit"],
               "non_finite_stops": [name for name, s in models.items() if s["stop_reason"] == "non_finite_loss"],
               "config": cfg.to_dict(), "wall_s": round(time.perf_counter() - start, 2)}
    if ddp.is_main:
        write_json(paths.root / "train.json", summary)
    return summary
