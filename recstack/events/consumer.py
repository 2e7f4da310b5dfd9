"""Consumers of the event log: the online-store updater and the shared poll/commit loop.

A consumer reads the events after its committed offset, processes them, then commits the last
offset (at-least-once delivery). Processing is idempotent, so a crash between processing and
commit re-delivers events without applying any of them twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.events.log import EventLog, events_dir
from recstack.events.schema import EVENT_TYPES, EventBatch
from recstack.ids import FIRST_CODE
from recstack.io import read_json
from recstack.paths import RunPaths


@contextlib.contextmanager
def consumer_lock(lock_dir: Path | str | None, name: str) -> Iterator[None]:
    """An flock on ``<lock_dir>/<name>.lock`` (nothing when ``lock_dir`` is None), held while a
    consumer reads, applies and commits, so two processes (a `consume` daemon, `events push`, the
    gateway, `retrain`) never work on one consumer's events at once: two concurrent
    read-modify-writes of one user's history could lose an update."""
    if lock_dir is None:
        yield
        return
    path = Path(lock_dir) / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rewind_consumer(log: EventLog, name: str, offset: int, lock_dir: Path | str | None = None) -> int:
    """Move consumer ``name``'s committed offset back to ``offset`` (never forward) under its lock,
    so a poll in flight cannot commit over it; the events after it are delivered again."""
    with consumer_lock(lock_dir, name):
        return log.commit(name, min(int(offset), log.committed(name)), force=True)


class Consumer(ABC):
    """One named reader of the log with its own committed offset and counters."""

    name: str

    def __init__(self, log: EventLog, name: str, lock_dir: Path | str | None = None):
        self.log = log
        self.name = name
        self.counters: dict[str, int] = {"events": 0}
        self._lock = threading.Lock()  # one poll at a time per consumer object
        self._lock_dir = lock_dir

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock, consumer_lock(self._lock_dir, self.name):
            yield

    def ready(self, batch: EventBatch, force: bool) -> bool:
        """Whether to process ``batch`` now (a writer may wait for a bigger batch)."""
        return True

    @abstractmethod
    def process(self, batch: EventBatch) -> None:
        """Apply the events idempotently; raise to leave them uncommitted."""

    def poll(self, limit: int = 5000, force: bool = False) -> int:
        """Process the next (up to ``limit``) events and commit them; returns how many."""
        with self._exclusive():
            batch = self.log.read(self.log.committed(self.name), limit)
            if not len(batch) or not self.ready(batch, force):
                return 0
            self.process(batch)
            self.log.commit(self.name, batch.last_offset)
            self.counters["events"] += len(batch)
            return len(batch)

    def drain(self, limit: int = 5000) -> int:
        """Poll (forced) until caught up; returns events processed."""
        total = 0
        while n := self.poll(limit, force=True):
            total += n
        return total

    def catch_up(self, offset: int, limit: int = 5000) -> int:
        """Process (forced) until this consumer has committed ``offset``: how a caller applies the
        events it has just appended before answering, in log order and exactly once."""
        total = 0
        while self.log.committed(self.name) < offset:
            n = self.poll(limit, force=True)
            if not n:
                break
            total += n
        return total

    def rewind(self, offset: int) -> int:
        """:func:`rewind_consumer` for this consumer."""
        with self._lock:
            return rewind_consumer(self.log, self.name, offset, self._lock_dir)

    def lag(self) -> int:
        """Events appended but not yet committed by this consumer (last offset - committed)."""
        return self.log.last_offset() - self.log.committed(self.name)


class WorkflowItemEncoder:
    """Raw item ids -> encoded item ids with the run's saved Workflow (vectorised).

    Codes below ``FIRST_CODE`` (0 null, 1 out-of-vocabulary) mean "unknown item". ``extra`` maps
    raw ids to codes and wins over the Workflow. ``live`` (the live-item registry) gives items
    added after training their codes (:func:`recstack.features.live_code`), looked up when the
    Workflow does not know an id. Encoded ids are cached (the Workflow is fixed for the object's
    life); an unknown id is asked again next time, since it may be added meanwhile.
    """

    def __init__(self, workflow: Any, extra: Mapping[int, int] | None = None, live: Any = None):
        from recstack.workflows import Tags

        self.workflow = workflow
        self.column = workflow.output_schema.select_by_tag(Tags.ITEM_ID).names[0]
        self.base = int(workflow.output_schema[self.column].cardinality)
        self.extra: dict[int, int] = dict(extra or {})
        self.live = live
        self._cache: dict[int, int] = {}

    @classmethod
    def load(cls, workflow_dir: Path | str, live_items: Path | str | None = None) -> "WorkflowItemEncoder":
        from recstack.features.live_items import LiveItems
        from recstack.workflows import Workflow

        return cls(Workflow.load(workflow_dir), live=LiveItems(live_items) if live_items else None)

    def __call__(self, raw_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        raw = np.asarray(raw_ids, dtype=np.int64).tolist()
        missing = list({r for r in raw if r not in self._cache and r not in self.extra})
        if missing:
            codes = self.workflow.transform(pd.DataFrame({self.column: np.asarray(missing, dtype=np.int64)}))
            self._cache.update(zip(missing, codes[self.column].to_numpy(dtype=np.int64).tolist()))
        if self.live is not None:
            from recstack.features.live_items import live_code

            unknown = {r for r in raw if r not in self.extra and self._cache.get(r, 0) < FIRST_CODE}
            if unknown:
                self.extra.update({r: live_code(item.seq, self.base)
                                   for r, item in self.live.lookup(unknown).items()})
        return np.fromiter((self.extra.get(r, self._cache.get(r, 0)) for r in raw), dtype=np.int64, count=len(raw))


class OnlineUpdater(Consumer):
    """Applies logged events to the users' online histories (Feast push), exactly once per user.

    Per poll: encode the items (unknown items are skipped and counted in ``skipped_unknown``),
    then one ``apply_interactions`` call with the events' offsets; events at or below a user's
    stored ``applied_offset`` are skipped (``skipped_applied``), so re-delivered events are
    never applied twice. ``types``: which event types enter histories (default: all).
    """

    def __init__(self, log: EventLog, online: Any, encoder: Any, history_length: int,
                 name: str = "online-store", types: Iterable[str] | None = None,
                 lock_dir: Path | str | None = None):
        super().__init__(log, name, lock_dir)
        from recstack.features import OnlineFeatures

        self.online = online if isinstance(online, OnlineFeatures) else OnlineFeatures(online)
        self._repo_id = self._repo_identity()
        self.encoder = encoder
        self.history_length = int(history_length)
        self.types = frozenset(types) if types is not None else frozenset(EVENT_TYPES)
        unknown = sorted(self.types - set(EVENT_TYPES))
        if unknown:
            raise InputError(f"types: {unknown[0]!r} is not one of {', '.join(EVENT_TYPES)}")
        self.counters.update(applied=0, skipped_unknown=0, skipped_applied=0, skipped_type=0)

    @classmethod
    def for_run(cls, log: EventLog, paths: RunPaths, live_items: Path | str | None = None,
                **kwargs: Any) -> "OnlineUpdater":
        """The updater of a finished run: its Workflow, Feast repo, history length and live-item
        registry (``live_items``, default the run's)."""
        if not (paths.feature_repo / "feature_store.yaml").is_file():
            raise InputError(f"--dataset: {paths.feature_repo} has no Feast repo (run the pipeline first)")
        history_length = int(read_json(paths.features / "features.json")["history_length"])
        kwargs.setdefault("lock_dir", events_dir(paths))
        from recstack.features.live_items import live_items_path

        encoder = WorkflowItemEncoder.load(paths.workflow, live_items or live_items_path(paths))
        return cls(log, paths.feature_repo, encoder, history_length, **kwargs)

    def _repo_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.online.repo_dir)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _reopen_if_rebuilt(self) -> None:
        """A rebuilt Feast repo (`recstack retrain` / `features build` swap the folder) is a new
        folder: reopen it, or the pushes would go to the old, deleted SQLite file."""
        from recstack.features import OnlineFeatures

        now = self._repo_identity()
        if now is not None and now != self._repo_id:
            self.online = OnlineFeatures(self.online.repo_dir)
            self._repo_id = now
            self.counters["reopened"] = self.counters.get("reopened", 0) + 1

    def process(self, batch: EventBatch) -> None:
        self._reopen_if_rebuilt()
        self.apply(batch)

    def apply(self, batch: EventBatch) -> dict[str, int]:
        """Apply logged events (offsets set, in log order, none skipped before them: what
        :meth:`poll` reads); returns this call's counts. To reflect just-appended events at once,
        call :meth:`catch_up`, which applies everything before them too."""
        from recstack.features.history import apply_interactions

        wanted = np.fromiter((t in self.types for t in batch.type.tolist()), dtype=bool, count=len(batch))
        codes = self.encoder(batch.item)
        known = codes >= FIRST_CODE
        use = wanted & known
        counts = {"applied": 0, "skipped_unknown": int((wanted & ~known).sum()), "skipped_applied": 0,
                  "skipped_type": int((~wanted).sum())}
        if use.any():
            update = apply_interactions(self.online, batch.user[use], codes[use], batch.timestamp[use],
                                        self.history_length, offsets=batch.offset[use])
            counts["applied"], counts["skipped_applied"] = update.applied, update.skipped
        for k, v in counts.items():
            self.counters[k] += v
        return counts
