"""Training / evaluation arrays for the models, built from the data and workflow stages' artifacts.

:func:`load_training_data` reads ``runs/<ds>/data`` (train/valid/test, users, items), encodes
them with the saved Workflow and returns a :class:`TrainingData`:

* ``user_features`` / ``item_features``: the layout's blocks as lookup tables, row = encoded id
  (so a batch is a gather by id);
* ``train`` / ``valid`` / ``test``: :class:`Interactions` with, for every row, the user's
  history at that moment (``history`` [N, L]: encoded item ids of the user's *earlier*
  interactions, oldest -> newest, right-aligned: the most recent in the last column,
  left-padded with 0, the last L kept; train rows use
  :func:`recstack.workflows.history_before_each`). Valid rows
  see the train items; test rows see train + valid, like a served user (features.json);
  ``context`` [N, 3]: the (hour, weekday, device) codes of each interaction's own timestamp (UTC),
  from :func:`recstack.workflows.request_context.context_codes`, the function serving applies to the
  request time; ``history_times`` [N, L]: the unix seconds of each ``history`` item (0 = pad), the
  sequence tower's time-gap input (the online store's ``recent_times``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.ids import FIRST_CODE, HISTORY_LENGTH
from recstack.io import read_json
from recstack.models.layout import FeatureLayout
from recstack.paths import RunPaths
from recstack.workflows import Workflow, history_before_each
from recstack.workflows.request_context import CONTEXT_COLUMNS, context_codes


@dataclass
class Interactions:
    """Encoded interactions sorted by (user, time): ``users``/``items`` [N] int64, ``ratings`` [N]
    float32 (NaN without ratings), ``history`` [N, L] int64, ``context`` [N, 3] int64 (hour,
    weekday, device codes of the interaction time; all 0 = unknown when not given), ``times`` [N]
    int64 unix seconds of each interaction (0 when not given), ``history_times`` [N, L] int64 unix
    seconds of each history item (0 = pad or not given)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    history: np.ndarray
    context: np.ndarray | None = None
    times: np.ndarray | None = None
    history_times: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.context is None:
            self.context = np.zeros((len(self.users), len(CONTEXT_COLUMNS)), np.int64)
        if self.times is None:
            self.times = np.zeros(len(self.users), np.int64)
        if self.history_times is None:
            self.history_times = np.zeros(self.history.shape, np.int64)

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, index: np.ndarray) -> "Interactions":
        return Interactions(self.users[index], self.items[index], self.ratings[index], self.history[index],
                            self.context[index], self.times[index], self.history_times[index])

    @staticmethod
    def concat(parts: list["Interactions"]) -> "Interactions":
        return Interactions(*(np.concatenate([getattr(p, f) for p in parts])
                              for f in ("users", "items", "ratings", "history", "context", "times",
                                        "history_times")))


@dataclass
class TrainingData:
    layout: FeatureLayout
    user_features: dict[str, np.ndarray]
    item_features: dict[str, np.ndarray]
    train: Interactions
    valid: Interactions
    test: Interactions
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_device(self) -> bool:
        """Whether any training interaction carries a device (a device vocabulary was seen in train)."""
        return bool((self.train.context[:, 2] != 0).any())

    @property
    def n_items(self) -> int:
        return self.layout.n_items

    def item_counts(self, splits: tuple[str, ...] = ("train",)) -> np.ndarray:
        """Interactions per encoded item id over ``splits`` -> [n_items] int64."""
        items = np.concatenate([getattr(self, s).items for s in splits])
        return np.bincount(items, minlength=self.n_items)[: self.n_items].astype(np.int64)

    def seen(self, splits: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Items each user interacted with in ``splits`` as CSR (indptr [n_users + 1], indices)."""
        users = np.concatenate([getattr(self, s).users for s in splits])
        items = np.concatenate([getattr(self, s).items for s in splits])
        order = np.argsort(users, kind="stable")
        counts = np.bincount(users, minlength=self.layout.n_users)
        indptr = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, items[order]

    def batch(self, users: np.ndarray, history: np.ndarray, items: np.ndarray | None = None,
              context: np.ndarray | None = None, history_times: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Model input blocks for rows (user id, history[, candidate item id][, context [N, 3]]
        [, history_times [N, L] unix seconds])."""
        out = {k: v[users] for k, v in self.user_features.items()}
        out["history"] = history
        if history_times is not None:
            out["history_times"] = history_times
        if context is not None:
            out["context"] = context
        if items is not None:
            out.update({k: v[items] for k, v in self.item_features.items()})
        return out


# ------------------------------------------------------------------------------- histories

def last_items(users: np.ndarray, items: np.ndarray, query_users: np.ndarray, history_length: int) -> np.ndarray:
    """For rows sorted by (user, time): the last ``history_length`` items of each query user -> [Q, L]
    (right-aligned like :func:`recstack.workflows.history_before_each`)."""
    L = int(history_length)
    out = np.zeros((len(query_users), L), np.int64)
    if len(users) == 0:
        return out
    left = np.searchsorted(users, query_users, side="left")
    right = np.searchsorted(users, query_users, side="right")
    n_hist = np.minimum(right - left, L)
    cols = np.arange(L)
    idx = right[:, None] - L + cols[None, :]
    valid = cols[None, :] >= (L - n_hist)[:, None]
    return np.where(valid, items[np.clip(idx, 0, len(items) - 1)], 0).astype(np.int64)


# ------------------------------------------------------------------------------- loading

def _train_history(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
                   L: int) -> tuple[np.ndarray, np.ndarray]:
    """History before each (already time-sorted) train row, as the workflows stage computes it, and
    the unix seconds of its items: ``([N, L], [N, L])``."""
    frame = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": timestamps})
    return (np.asarray(history_before_each(frame, L), dtype=np.int64),
            np.asarray(history_before_each(frame, L, values="timestamp"), dtype=np.int64))


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise InputError(f"{path}: missing (run the earlier stages: recstack data prepare, recstack workflow fit)")
    return pd.read_parquet(path)


def _side_table(layout: FeatureLayout, workflow: Workflow, raw: pd.DataFrame, side: str) -> dict[str, np.ndarray]:
    """Encode a side table (users.parquet / items.parquet) into blocks indexed by encoded id."""
    spec = layout.user if side == "user" else layout.item
    card = spec.id_column.cardinality
    encoded = workflow.transform(raw)
    blocks = layout.tensors(encoded, sides=(side,))
    if f"{side}_cat" not in blocks:
        raise InputError(f"{side}s.parquet: the workflow output lacks the {side} columns {spec.id_column.name!r}")
    ids = blocks[f"{side}_cat"][:, 0]
    table: dict[str, np.ndarray] = {}
    for name, block in blocks.items():
        full = np.zeros((card,) + block.shape[1:], dtype=block.dtype)
        keep = (ids >= FIRST_CODE) & (ids < card)  # the pad / OOV rows keep id-only features
        full[ids[keep]] = block[keep]
        table[name] = full
    table[f"{side}_cat"][:, 0] = np.arange(card)
    return table


def _encode_ids(layout: FeatureLayout, workflow: Workflow, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    encoded = workflow.transform(df[["user_id", "item_id"]])
    u, i = layout.user.id_column.name, layout.item.id_column.name
    for col in (u, i):
        if col not in encoded.columns:
            raise InputError(f"workflow output: id column {col!r} missing when encoding interactions")
    return encoded[u].to_numpy(np.int64), encoded[i].to_numpy(np.int64)


def build_training_data(layout: FeatureLayout, workflow: Workflow, train: pd.DataFrame, valid: pd.DataFrame,
                        test: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> TrainingData:
    """Encode raw frames (data-stage columns) with a fitted workflow into :class:`TrainingData`."""
    L = layout.history_length
    frames = []
    for split_no, df in enumerate((train, valid, test)):
        for col in ("user_id", "item_id", "timestamp"):
            if col not in df.columns:
                raise InputError(f"{('train', 'valid', 'test')[split_no]}.parquet: column {col!r} missing")
        part = df[["user_id", "item_id", "timestamp"]].copy()
        part["rating"] = (df["rating"].astype("float32") if "rating" in df.columns
                          else np.float32("nan"))
        part["split"] = split_no
        part["order"] = np.arange(len(df))
        frames.append(part)
    allf = pd.concat(frames, ignore_index=True)
    devices = [df["device"] if "device" in df.columns else pd.Series([None] * len(df), dtype=object)
               for df in (train, valid, test)]
    allf["device"] = pd.concat(devices, ignore_index=True).to_numpy(dtype=object)
    u_enc, i_enc = _encode_ids(layout, workflow, allf)
    allf["u"], allf["i"] = u_enc, i_enc
    # by user, then time; ties by split (train < valid < test) then by file order
    allf = allf.sort_values(["u", "timestamp", "split", "order"], kind="stable").reset_index(drop=True)
    splits = allf["split"].to_numpy()
    u = allf["u"].to_numpy(np.int64)
    i = allf["i"].to_numpy(np.int64)
    r = allf["rating"].to_numpy(np.float32)
    ctx = context_codes(allf["timestamp"].to_numpy(np.float64), allf["device"].to_numpy(dtype=object))
    times = allf["timestamp"].to_numpy(np.float64).astype(np.int64)

    tr = splits == 0
    train_hist, train_hist_times = _train_history(u[tr], i[tr], allf["timestamp"].to_numpy()[tr], L)
    train_x = Interactions(u[tr], i[tr], r[tr], train_hist, ctx[tr], times[tr], train_hist_times)
    out = {}
    for split_no, name in ((1, "valid"), (2, "test")):
        m = splits == split_no
        prior = splits < split_no
        hist = last_items(u[prior], i[prior], u[m], L)
        hist_times = last_items(u[prior], times[prior], u[m], L)  # the same positions' unix seconds
        out[name] = Interactions(u[m], i[m], r[m], hist, ctx[m], times[m], hist_times)
    user_feats = _side_table(layout, workflow, users, "user")
    item_feats = _side_table(layout, workflow, items, "item")
    return TrainingData(layout, user_feats, item_feats, train_x, out["valid"], out["test"],
                        meta={"n_train": int(tr.sum()), "n_valid": int(len(out["valid"])),
                              "n_test": int(len(out["test"]))})


def history_length_of(paths: RunPaths) -> int:
    """``history_length`` from features/features.json (the Feast histories' length), else the default."""
    cfg = paths.features / "features.json"
    if cfg.exists():
        value = read_json(cfg).get("history_length")
        if value:
            return int(value)
    return HISTORY_LENGTH


def load_workflow(paths: RunPaths) -> Workflow:
    """The run's fitted Workflow (``runs/<ds>/workflow/``)."""
    if not (paths.workflow / "workflow.json").exists():
        raise InputError(f"{paths.workflow}: no fitted workflow (run: recstack workflow fit)")
    return Workflow.load(paths.workflow)


def load_training_data(paths: RunPaths, history_length: int | None = None) -> TrainingData:
    """Read one run's data + workflow + features.json and build :class:`TrainingData`."""
    workflow = load_workflow(paths)
    layout = FeatureLayout.from_schema(workflow.output_schema, history_length or history_length_of(paths))
    frames = {n: _read_parquet(paths.data / f"{n}.parquet") for n in ("train", "valid", "test", "users", "items")}
    return build_training_data(layout, workflow, frames["train"], frames["valid"], frames["test"],
                               frames["users"], frames["items"])
