"""The two evaluation protocols as :class:`recstack.evaluation.baseline_runs.RankingTask` pairs.

**Leave-one-out** (shared/DATA.md, what training selects with): per user, the last interaction
is test and the second-last validation; the valid task fits on train, the test task on train +
valid (encoded ids of the run's workflow, so the rows line up with the two-tower's).

**Global temporal split**: one time ``T`` for everybody (the ``quantile`` of all interaction
timestamps, 0.9 by default), so no model sees anything after ``T``:

* test task: fit window = interactions before ``T``; a user with at least one of them has as
  targets every item they first interact with at or after ``T`` that exists before ``T`` (items
  first seen after ``T`` are the cold items, :mod:`recstack.evaluation.cold_items`);
* valid task (settings are chosen on it): the same construction one step back, fit window before
  ``T_v`` (the ``valid_quantile``, 0.8), targets in ``[T_v, T)``.

Interactions are deduplicated as in :func:`recstack.data.split.split_by_time` (ordered by time,
ties by file order, a (user, item) pair's first occurrence kept). Ids here are positions in the
interactions file's own factorisation, not the workflow's encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.evaluation.baseline_runs import RankingTask
from recstack.evaluation.baselines import interaction_matrix
from recstack.ids import FIRST_CODE
from recstack.ranking import catalogue_mask

TEMPORAL_QUANTILE = 0.9
VALID_QUANTILE = 0.8


def loo_tasks(data, split: str) -> tuple[RankingTask, RankingTask | None]:
    """(valid task, test task) of a run's :class:`recstack.models.data.TrainingData`; test is None for
    ``split="valid"`` (nothing of test is built)."""
    n_users, n_items = data.layout.n_users, data.n_items
    catalogue = catalogue_mask(n_items)

    def task(fit_splits: tuple[str, ...], rows) -> RankingTask:
        users = np.concatenate([getattr(data, s).users for s in fit_splits])
        items = np.concatenate([getattr(data, s).items for s in fit_splits])
        last = rows.history[:, -1].astype(np.int64)  # right-aligned histories: the newest item last
        last = np.where(last >= FIRST_CODE, last, -1)
        return RankingTask(interaction_matrix(users, items, n_users, n_items), rows.users, rows.items, last, catalogue)

    valid = task(("train",), data.valid)
    return valid, (task(("train", "valid"), data.test) if split == "test" else None)


@dataclass
class TemporalSplit:
    """The deduplicated interactions with integer ids and the two split times (unix seconds)."""

    users: np.ndarray  # [N] 0..n_users-1, rows in time order
    items: np.ndarray  # [N] 0..n_items-1
    times: np.ndarray  # [N] float64
    item_ids: np.ndarray  # [n_items] the original item ids
    split_time: float
    valid_time: float

    @property
    def n_users(self) -> int:
        return int(self.users.max()) + 1 if len(self.users) else 0

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def first_seen(self) -> np.ndarray:
        """[n_items] time of each item's first interaction."""
        first = np.full(self.n_items, np.inf)
        np.minimum.at(first, self.items, self.times)
        return first

    def task(self, start: float, end: float) -> tuple[RankingTask, dict[str, int]]:
        """Fit window ``time < start``; targets = warm items first interacted with in ``[start, end)``."""
        before = self.times < start
        window = (self.times >= start) & (self.times < end)
        X = interaction_matrix(self.users[before], self.items[before], self.n_users, self.n_items)
        catalogue = np.zeros(self.n_items, dtype=bool)
        catalogue[self.items[before]] = True
        active = np.zeros(self.n_users, dtype=bool)
        active[self.users[before]] = True
        warm = window & catalogue[self.items] & active[self.users]
        frame = pd.DataFrame({"u": self.users[warm], "i": self.items[warm]})
        grouped = frame.groupby("u", sort=True)["i"]
        users = np.array(list(grouped.groups.keys()), np.int64)
        targets = [np.asarray(g, np.int64) for _, g in grouped]
        last = np.full(self.n_users, -1, np.int64)
        last[self.users[before]] = self.items[before]  # rows are in time order: the newest wins
        stats = {"fit_interactions": int(before.sum()), "users": len(users),
                 "targets": int(warm.sum()), "cold_targets": int((window & ~catalogue[self.items]).sum()),
                 "catalogue": int(catalogue.sum())}
        return RankingTask(X, users, targets, last[users], catalogue), stats


def temporal_split(interactions: pd.DataFrame, quantile: float = TEMPORAL_QUANTILE,
                   valid_quantile: float = VALID_QUANTILE) -> TemporalSplit:
    """Deduplicate and factorise ``interactions`` (user_id, item_id, timestamp) and place ``T`` / ``T_v``."""
    if not 0.0 < valid_quantile < quantile < 1.0:
        raise InputError(f"temporal split: need 0 < valid quantile ({valid_quantile}) < quantile ({quantile}) < 1")
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in interactions]
    if missing:
        raise InputError(f"interactions: column(s) {missing} missing")
    times = pd.to_numeric(interactions["timestamp"], errors="coerce").to_numpy(np.float64)
    order = np.lexsort((np.arange(len(times)), times))
    frame = interactions.iloc[order][["user_id", "item_id"]].assign(t=times[order])
    frame = frame[~frame.duplicated(["user_id", "item_id"], keep="first")]
    users, _ = pd.factorize(frame["user_id"])
    items, item_ids = pd.factorize(frame["item_id"])
    t = frame["t"].to_numpy(np.float64)
    split_time, valid_time = float(np.quantile(t, quantile)), float(np.quantile(t, valid_quantile))
    return TemporalSplit(users.astype(np.int64), items.astype(np.int64), t, np.asarray(item_ids), split_time,
                         valid_time)


def temporal_tasks(split: TemporalSplit, which: str = "test") -> tuple[RankingTask, RankingTask | None, dict]:
    """(valid task, test task or None for ``which="valid"``, counts) of a :class:`TemporalSplit`."""
    valid, valid_stats = split.task(split.valid_time, split.split_time)
    info = {"split_time": split.split_time, "valid_time": split.valid_time, "valid": valid_stats}
    if which == "valid":
        return valid, None, info
    test, test_stats = split.task(split.split_time, np.inf)
    info["test"] = test_stats
    return valid, test, info


def temporal_report(paths, split: str, k: int, cutoffs: tuple[int, ...], names: tuple[str, ...],
                    quantile: float = TEMPORAL_QUANTILE, valid_quantile: float = VALID_QUANTILE,
                    progress: bool = True) -> dict:
    """The baselines under the global temporal split of ``runs/<ds>/data/interactions.parquet``.

    The run's trained models are not scored here: they were trained on the leave-one-out train
    split, which holds interactions after ``T``, so their numbers would not be a temporal test.
    """
    from recstack.evaluation.baseline_runs import run_baselines

    path = paths.data / "interactions.parquet"
    if not path.is_file():
        return {"skipped": {"temporal": f"{path} missing"}}
    interactions = pd.read_parquet(path, columns=["user_id", "item_id", "timestamp"])
    split_obj = temporal_split(interactions, quantile, valid_quantile)
    valid, test, info = temporal_tasks(split_obj, split)
    rows, selection, skipped = run_baselines(valid, test, k, cutoffs, names=names, progress=progress)
    why = "trained on the leave-one-out train split, which holds interactions after T"
    skipped.update({name: why for name in ("two_tower", "dlrm_only", "two_tower+dlrm")})
    return {"quantile": quantile, "valid_quantile": valid_quantile, "info": info, "models": rows,
            "selection": selection, "skipped": skipped}
