"""The tuned training recipe of ``recstack train``: two-tower, then the DLRM reranking its candidates.

:func:`train_all` trains the two-tower (:mod:`recstack.models.two_tower_training`), then the
DLRM (:mod:`recstack.models.dlrm_training`) with ``DLRM_TRAIN``: every interaction a positive,
softmax over 16 negatives, 8 of them from the two-tower's top-100 (the candidates the DLRM
reranks in serving), ``DLRM_EPOCHS`` epochs, selected on the fused validation NDCG@10.
Both write their folder (:mod:`recstack.models.export`); it returns a summary dict.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from recstack.errors import InputError
from recstack.models.data import Interactions, TrainingData, load_training_data
from recstack.models.device import default_threads, resolve_device
from recstack.models.dlrm_training import train_dlrm
from recstack.models.two_tower import TwoTowerConfig
from recstack.models.two_tower_training import train_two_tower
from recstack.paths import RunPaths

# DLRM training settings of train_all, chosen on ML-100K validation (fused NDCG@10 of reranking the
# two-tower's top-100; two-tower alone 0.130): BCE, rating >= 4 positives, 4 random negatives
# (the old default) 0.134 (DLRM alone 0.070); every interaction a positive 0.136 (0.089);
# sampled softmax over 16 random negatives 0.140 (0.092; 3 min); + the two-tower logit as a fixed
# offset (learn a residual) 0.133 (0.034: the two-tower is overconfident on its own training
# rows); softmax over 16 negatives of which 8 from the two-tower's top-100, 3 epochs 0.150 (0.120).
DLRM_TRAIN = {"positive_min_rating": None, "loss": "softmax", "negatives": 16, "hard_negatives": 8,
              "hard_pool": 100}
MULTI_SOURCE = True
"""The DLRM ranks multi-source candidates (two-tower + item-kNN + popular, :mod:`recstack.models.candidates`)
with their source scores and cross features, trained on those candidates (its negatives drawn from them)."""
DLRM_EPOCHS = 2  # 3 epochs: valid fused 0.150 but ML-100K `recstack train` ~118 s; 2 epochs: 0.143, ~90 s

ABLATION_MODEL = "dlrm_no_context"
ABLATION_MAX_ROWS = 300_000
"""train_all trains the no-context ranker by default below this many train rows (ML-100K, not ML-1M)."""

TWO_TOWER_BUDGET_S = 330.0  # per-model training time budgets (epochs stop early past them): ML-1M
DLRM_BUDGET_S = 180.0       # fits ~10 min on a 2-core CPU, ML-100K stops on its own long before


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


def train_all(paths: RunPaths, device: str = "auto", epochs: int | None = None, *, seed: int = 0,
              refit: bool = False, progress: bool = True, threads: int | None = None,
              onnx: bool = True, time_budget_s: tuple[float, float] | None = (TWO_TOWER_BUDGET_S, DLRM_BUDGET_S),
              embedding_dim: int | None = None, max_train_rows: int | None = None,
              valid_users: int | None = None, hard_negatives: int | None = None,
              context_ablation: bool | None = None,
              ) -> dict[str, Any]:
    """Two-tower then DLRM (selected on reranking the two-tower's candidates); returns the summary.

    ``time_budget_s`` = (two-tower, DLRM) seconds after which no new epoch starts.
    ``embedding_dim``: d of the two-tower's user / item embeddings (the FAISS vectors; default
    ``TwoTowerConfig.output_dim``, 64). For large catalogues, where every full-catalogue pass and
    every step's dense update of the item tables are costly: ``max_train_rows`` and
    ``valid_users`` (:func:`sample_rows`), and ``hard_negatives`` (the DLRM's negatives from the
    two-tower's top items per positive, ``DLRM_TRAIN``'s 8 by default; each positive costs a
    full-catalogue scoring, so 0 turns them off for a 1M-item catalogue).

    The DLRM reads the request context (hour, weekday of each interaction in UTC).
    ``context_ablation`` also trains ``models/dlrm_no_context``, the same DLRM recipe (same data,
    seed, two-tower) without the context, for ``recstack evaluate``'s ablation row; None: only
    for small datasets (under ``ABLATION_MAX_ROWS`` train rows, ML-100K: about +90 s on 2 cores).
    """
    for name, value in (("embedding-dim", embedding_dim), ("max-train-rows", max_train_rows),
                        ("valid-users", valid_users)):
        _check_positive(name, value)
    if hard_negatives is not None and (isinstance(hard_negatives, bool) or not isinstance(hard_negatives, int)
                                       or not 0 <= hard_negatives <= DLRM_TRAIN["negatives"]):
        raise InputError(f"--hard-negatives: must be an integer in 0..{DLRM_TRAIN['negatives']}, "
                         f"got {hard_negatives!r}")
    if refit and max_train_rows is not None:
        raise InputError("--refit retrains on all of train + valid: it does not combine with --max-train-rows")
    start = time.perf_counter()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    try:
        data = load_training_data(paths)
        data, rows = sample_rows(data, max_train_rows, valid_users, seed)
        sampled = {"train_rows": rows} if rows is not None else {}
        tt_batch, dl_batch = batch_sizes(len(data.train))
        budgets = time_budget_s or (None, None)
        tt_cfg = TwoTowerConfig(output_dim=embedding_dim) if embedding_dim else None
        dlrm_train = dict(DLRM_TRAIN, **({"hard_negatives": hard_negatives} if hard_negatives is not None else {}))
        tt = train_two_tower(paths, data, device=device, epochs=epochs, seed=seed, refit=refit, cfg=tt_cfg,
                             progress=progress, onnx=onnx, batch_size=tt_batch, time_budget_s=budgets[0],
                             **sampled)
        dl = train_dlrm(paths, data, device=device, epochs=epochs or DLRM_EPOCHS, seed=seed, refit=refit,
                        progress=progress, two_tower=tt["_model"], onnx=onnx, batch_size=dl_batch,
                        time_budget_s=budgets[1], multi_source=MULTI_SOURCE, **dlrm_train, **sampled)
        if context_ablation is None:
            context_ablation = len(data.train) < ABLATION_MAX_ROWS
        ablation = None
        if context_ablation:
            # as many epochs as the served ranker ran (its time budget may have cut them), no budget of its
            # own: the two rankers differ by the context block only
            ablation = train_dlrm(paths, data, device=device, epochs=dl["epochs_run"], seed=seed, refit=refit,
                                  progress=progress, two_tower=tt["_model"], onnx=False, batch_size=dl_batch,
                                  time_budget_s=None, model_name=ABLATION_MODEL, context=False,
                                  multi_source=dl["_sources"] or False, **dlrm_train, **sampled)
        elif (paths.models / ABLATION_MODEL).exists():  # a stale ablation of earlier models is not comparable
            import shutil

            shutil.rmtree(paths.models / ABLATION_MODEL)
    finally:
        torch.set_num_threads(prev_threads)
    summary = {"dataset": paths.root.name, "device": str(resolve_device(device)),
               "train_rows": len(data.train), "n_items": data.n_items,
               "fit_rows": len(rows) if rows is not None else len(data.train), "valid_rows": len(data.valid),
               "two_tower": {k: v for k, v in tt.items() if not k.startswith("_")},
               "dlrm": {k: v for k, v in dl.items() if not k.startswith("_")},
               **({"dlrm_no_context": {k: v for k, v in ablation.items() if not k.startswith("_")}}
                  if ablation is not None else {}),
               "wall_s": round(time.perf_counter() - start, 2)}
    return summary
