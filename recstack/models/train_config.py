"""One experiment's training settings (``recstack train --config FILE``): both models' hyper-parameters
and how they are trained, read from YAML or JSON and checked before any training starts.

A file names only what it changes; every other key keeps the default below (the recipe of
:mod:`recstack.models.recipe`). Keys (see ``configs/*.yaml`` and README "Training")::

    seed, device, threads, precision, compile, max_wall_s, checkpoints, refit, onnx,
    context_ablation, max_train_rows, valid_users,
    two_tower: {epochs, patience, batch_size, lr, weight_decay, model: {TwoTowerConfig fields}}
    dlrm:      {epochs, patience, batch_size, lr, weight_decay, loss, negatives, hard_negatives,
                hard_pool, positive_min_rating, multi_source, model: {DLRMConfig fields}}

An unknown key or an impossible value is an :class:`~recstack.errors.InputError` naming the
dotted key (``two_tower.model.dropout: expected a number in [0, 1), got 1.5``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from recstack.errors import InputError
from recstack.models.dlrm import DLRMConfig
from recstack.models.two_tower import TwoTowerConfig

ZERO_ALLOWED = {"uniform_negatives", "hard_negatives", "weight_decay", "seed", "positive_min_rating"}
"""Integer / float keys that may be 0 (every other count must be >= 1, every rate > 0)."""

UNIT_INTERVAL = {"dropout", "sequence_dropout", "id_dropout"}  # [0, 1)
CHOICES = {"device": ("auto", "cpu", "cuda"), "user_encoder": ("auto", "sasrec", "pool"),
           "softmax": ("auto", "full", "sampled"), "precision": ("auto", "fp32", "bf16"),
           "compile": ("auto", True, False), "loss": ("bce", "softmax")}


@dataclass
class TwoTowerTraining:
    epochs: int | None = None   # at most this many epochs (None: 20 for the pooled user tower, the model's
                                # sequence_epochs for the sequence tower); early stopping on valid NDCG@10
    patience: int = 3           # epochs without a better valid score before stopping
    batch_size: int | None = None  # None: 512 below 300k train rows, else 2048
    lr: float = 2e-3
    weight_decay: float = 0.0
    model: TwoTowerConfig = field(default_factory=TwoTowerConfig)


@dataclass
class DLRMTraining:
    epochs: int = 2             # chosen on ML-100K valid (fused NDCG@10, recstack.models.recipe)
    patience: int = 2
    batch_size: int | None = None  # None: 1024 below 300k train rows, else 4096
    lr: float = 2e-3
    weight_decay: float = 0.0
    loss: str = "softmax"
    negatives: int = 16
    hard_negatives: int = 8     # of ``negatives``, from the two-tower's top-``hard_pool`` items
    hard_pool: int = 100
    positive_min_rating: float | None = None  # None: every interaction is a positive
    multi_source: bool = True   # rank multi-source candidates with their cross features (models.candidates)
    model: DLRMConfig = field(default_factory=DLRMConfig)


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"
    threads: int | None = None          # CPU threads (None: $RECSTACK_THREADS or half the cores)
    precision: str = "auto"             # bf16 autocast: auto (see loop.AUTO_ON_CUDA), fp32, bf16
    compile: Any = "auto"               # torch.compile of the forward: auto, true, false
    max_wall_s: float | None = 7200.0   # per-model safety stop (s), reported when hit; None: none
    checkpoints: bool = True            # keep the last good epoch under runs/<ds>/checkpoints/<model>/
    refit: bool = False
    onnx: bool = True
    context_ablation: bool | None = None
    max_train_rows: int | None = None
    valid_users: int | None = None
    two_tower: TwoTowerTraining = field(default_factory=TwoTowerTraining)
    dlrm: DLRMTraining = field(default_factory=DLRMTraining)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fail(key: str, want: str, value: Any) -> InputError:
    return InputError(f"{key}: expected {want}, got {value!r}")


def _check_value(key: str, name: str, default: Any, value: Any) -> Any:
    """``value`` for the field ``name`` whose default is ``default``, or an InputError naming ``key``."""
    if name in CHOICES:
        if not any(value is c or (isinstance(c, str) and value == c) for c in CHOICES[name]):
            raise _fail(key, "one of " + ", ".join(str(c).lower() for c in CHOICES[name]), value)
        return value
    if value is None:
        if default is None or name in ("max_wall_s", "threads", "batch_size", "positive_min_rating") \
                or key == "two_tower.epochs":
            return None
        raise _fail(key, f"a value like {default!r}", value)
    if isinstance(default, bool) or name in ("checkpoints", "refit", "onnx", "context_ablation"):
        if not isinstance(value, bool):
            raise _fail(key, "true or false", value)
        return value
    if name == "cross_features":
        from recstack.models.candidates import CROSS_FEATURES

        if not isinstance(value, list) or not all(v in CROSS_FEATURES for v in value):
            raise _fail(key, "a list of names from " + ", ".join(CROSS_FEATURES), value)
        return value
    if isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                  for v in value):
            raise _fail(key, "a list of integers >= 1", value)
        return value
    if isinstance(default, str):
        if not isinstance(value, str) or not value:
            raise _fail(key, "a non-empty string", value)
        return value
    is_int = isinstance(default, int) or name in ("threads", "batch_size", "max_train_rows", "valid_users", "epochs")
    if is_int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, "an integer", value)
        low = 0 if name in ZERO_ALLOWED else 1
        if value < low:
            raise _fail(key, f"an integer >= {low}", value)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(key, "a finite number", value)
    value = float(value)
    if name in UNIT_INTERVAL and not 0.0 <= value < 1.0:
        raise _fail(key, "a number in [0, 1)", value)
    if name not in UNIT_INTERVAL and name not in ZERO_ALLOWED and value <= 0:
        raise _fail(key, "a number > 0", value)
    if value < 0:
        raise _fail(key, "a number >= 0", value)
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``raw``, defaults for keys it omits."""
    if not isinstance(raw, dict):
        raise _fail(prefix.rstrip(".") or "config", "a mapping of keys", raw)
    default = cls()
    known = {f.name for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise InputError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(known))})")
    values = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        current = getattr(default, f.name)
        if hasattr(current, "__dataclass_fields__"):
            values[f.name] = _build(type(current), raw[f.name], f"{prefix}{f.name}.")
        else:
            values[f.name] = _check_value(f"{prefix}{f.name}", f.name, current, raw[f.name])
    return cls(**values)


def parse_train_config(raw: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a parsed mapping; unknown keys / impossible values -> InputError."""
    cfg = _build(TrainConfig, {} if raw is None else raw, "")
    if cfg.dlrm.hard_negatives > cfg.dlrm.negatives:
        raise _fail("dlrm.hard_negatives", f"at most dlrm.negatives ({cfg.dlrm.negatives})", cfg.dlrm.hard_negatives)
    if cfg.dlrm.hard_negatives and cfg.dlrm.hard_pool < 1:
        raise _fail("dlrm.hard_pool", "an integer >= 1", cfg.dlrm.hard_pool)
    if cfg.refit and cfg.max_train_rows is not None:
        raise InputError("refit: retrains on all of train + valid, it does not combine with max_train_rows")
    return cfg


def load_train_config(path: str | Path, option: str = "--config") -> TrainConfig:
    """Read ``path`` (``.json``; anything else as YAML) into a checked :class:`TrainConfig`; errors name
    ``option`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{option} {path}: no such file")
    import yaml

    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        reason = " ".join(str(exc).split())
        raise InputError(f"{option} {path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} "
                         f"({reason[:200]})") from None
    try:
        return parse_train_config(raw)
    except InputError as exc:
        raise InputError(f"{option} {path}: {exc}") from None
