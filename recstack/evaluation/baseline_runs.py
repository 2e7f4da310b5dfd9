"""Scoring the classical baselines (:mod:`recstack.evaluation.baselines`) on a protocol's splits.

A protocol gives two :class:`RankingTask`s: *valid* (fit window = train, targets = validation)
and *test* (fit window = train + validation, targets = test). For each baseline every setting
of its grid is fitted on the valid task's window and scored on validation (NDCG@K, the first
cut-off); the best setting is refitted on the test task's window and scored on test once. For
``split="valid"`` the best validation scores are the reported ones (no test data is read).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from recstack.evaluation.baselines import GRIDS, cosine_similarity, make_baseline
from recstack.evaluation.metrics import (
    ListQuality,
    MultiTargetAccumulator,
    ReportAccumulator,
)
from recstack.ranking import row_batches, score_batch_rows

BASELINES = ("popularity", "item_knn", "last_item_knn", "ease", "ials")
MAX_SELECTION_ROWS = 20_000
"""Validation rows scored per grid setting (a seeded sample above this; all rows are scored for the report)."""


@dataclass
class RankingTask:
    """One scoring pass.

    ``X`` [n_users, n_items] binary CSR: the fit window, also each user's seen items (excluded);
    ``users`` [U] row user ids; ``targets``: [U] item ids (one per row: leave-one-out) or a list of
    U arrays (several per row: temporal); ``last`` [U] each row's most recent fit-window item (-1:
    none); ``catalogue`` [n_items] bool, the rankable items.
    """

    X: sp.csr_matrix
    users: np.ndarray
    targets: np.ndarray | list[np.ndarray]
    last: np.ndarray
    catalogue: np.ndarray

    @property
    def multi(self) -> bool:
        return isinstance(self.targets, list)

    def subset(self, rows: np.ndarray) -> RankingTask:
        targets = [self.targets[r] for r in rows] if self.multi else self.targets[rows]
        return RankingTask(self.X, self.users[rows], targets, self.last[rows], self.catalogue)

    def sample(self, n: int, seed: int = 0) -> RankingTask:
        if len(self.users) <= n:
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self.users), n, replace=False)))

    def quality(self, genres: np.ndarray | None = None, similarity: sp.csr_matrix | None = None) -> ListQuality:
        """List measures against this task's fit window (item popularity, co-occurrence cosine)."""
        item_users = np.asarray(self.X.sum(axis=0)).reshape(-1)
        n_users = int((np.diff(self.X.indptr) > 0).sum())
        return ListQuality(item_users, n_users, similarity if similarity is not None else cosine_similarity(self.X),
                           genres)


def score_task(model: Any, task: RankingTask, k: int, cutoffs: tuple[int, ...], quality: ListQuality | None = None,
               batch_size: int = 512) -> dict[str, float]:
    """Metrics of a fitted baseline on ``task`` (seen = the fit window's items of each row's user)."""
    n_items = task.X.shape[1]
    cls = MultiTargetAccumulator if task.multi else ReportAccumulator
    acc = cls(n_items, k, task.catalogue, cutoffs, quality)
    seen = (task.X.indptr, task.X.indices)
    for rows in row_batches(len(task.users), score_batch_rows(batch_size, n_items)):
        scores = model.scores(task.users[rows], task.X, task.last[rows])
        targets = [task.targets[r] for r in rows] if task.multi else task.targets[rows]
        acc.add(scores, targets, task.users[rows], seen)
    return acc.result()


def run_baselines(valid: RankingTask, test: RankingTask | None, k: int = 10, cutoffs: tuple[int, ...] = (50,),
                  names: tuple[str, ...] = BASELINES, genres: np.ndarray | None = None,
                  quality: ListQuality | None = None, progress: bool = True) -> tuple[dict[str, dict[str, float]], dict[str, Any], dict[str, str]]:
    """Choose each baseline's setting on ``valid``; score it on ``test`` (or report ``valid`` when None).

    ``quality``: the list measures of the reported split (default: from its fit window and ``genres``).
    Returns ``(rows {name: metrics}, selection {name: {"params", "valid_ndcg@k", "trials", "fit_s"}},
    skipped {name: reason})``.
    """
    key = f"ndcg@{k}"
    if len(valid.users) == 0 or (test is not None and len(test.users) == 0):
        why = "no validation rows to choose settings on" if len(valid.users) == 0 else "no test rows"
        return {}, {}, {name: why for name in names}
    valid_sim = cosine_similarity(valid.X)
    test_sim = cosine_similarity(test.X) if test is not None else valid_sim
    reported = test if test is not None else valid
    quality = quality if quality is not None else reported.quality(genres, test_sim)
    selection_task = valid.sample(MAX_SELECTION_ROWS)
    rows: dict[str, dict[str, float]] = {}
    selection: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    jobs = [(name, params) for name in names for params in GRIDS[name]]
    bar = tqdm(total=len(jobs) + len(names), desc="baselines", unit="fit", disable=not progress)
    for name in names:
        start = time.perf_counter()
        trials = []
        try:
            for params in GRIDS[name]:
                model = make_baseline(name, params, valid_sim).fit(valid.X)
                trials.append({"params": params, key: score_task(model, selection_task, k, ())[key]})
                bar.update()
            best = max(trials, key=lambda t: t[key])
            if test is None:
                model = make_baseline(name, best["params"], valid_sim).fit(valid.X)
            else:
                model = make_baseline(name, best["params"], test_sim).fit(test.X)
            rows[name] = score_task(model, reported, k, cutoffs, quality)
            bar.update()
        except MemoryError as err:
            skipped[name] = str(err)
            bar.update(len(GRIDS[name]) + 1 - len(trials))
            continue
        selection[name] = {"params": best["params"], f"valid_{key}": best[key], "trials": trials,
                           "selection_rows": len(selection_task.users),
                           "wall_s": round(time.perf_counter() - start, 2)}
    bar.close()
    return rows, selection, skipped
