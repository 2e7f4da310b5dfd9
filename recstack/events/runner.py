"""Run the log's consumers: in a background thread (the gateway) or in the foreground (`events consume`).

    service = EventService.for_run(paths)          # SQLite log + online updater + offline writer
    service.start()                                # background thread
    result = service.append(events, apply=True)    # durable, then reflected in the online store
    service.stats()                                # lag, accepted / duplicates / applied / skipped
    service.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from recstack.events.consumer import Consumer, OnlineUpdater
from recstack.events.log import EventLog, events_dir, open_event_log
from recstack.events.offline import OfflineWriter
from recstack.events.schema import AppendResult, EventBatch
from recstack.paths import RunPaths

log = logging.getLogger("recstack.events")


class EventService:
    """An event log and its consumers, polled by one background thread.

    ``poll_interval_s``: how long the thread sleeps when every consumer is caught up (an
    :meth:`append` through this object wakes it at once). A consumer that raises is retried after
    ``error_backoff_s`` (its events stay uncommitted: at-least-once); the error is counted and kept
    in ``stats()["last_error"]``.
    """

    def __init__(self, log: EventLog, consumers: Sequence[Consumer], poll_interval_s: float = 0.05,
                 batch_limit: int = 5000, error_backoff_s: float = 1.0):
        self.log = log
        self.consumers = list(consumers)
        self.poll_interval_s = float(poll_interval_s)
        self.batch_limit = int(batch_limit)
        self.error_backoff_s = float(error_backoff_s)
        self.counters = {"accepted": 0, "duplicates": 0, "errors": 0}
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_run(cls, paths: RunPaths, url: str | None = None, online: bool = True, offline: bool = True,
                live_items: Path | str | None = None, **kwargs: Any) -> "EventService":
        """The run's log (``url`` / $RECSTACK_EVENT_LOG / SQLite default) with the online updater and
        the offline writer (to ``runs/<ds>/events/``); ``live_items``: the live-item registry whose
        items events may name (default: the run's)."""
        event_log = open_event_log(paths, url)
        consumers: list[Consumer] = []
        if online:
            consumers.append(OnlineUpdater.for_run(event_log, paths, live_items=live_items))
        if offline:
            consumers.append(OfflineWriter(event_log, events_dir(paths)))
        return cls(event_log, consumers, **kwargs)

    @property
    def online(self) -> OnlineUpdater | None:
        return next((c for c in self.consumers if isinstance(c, OnlineUpdater)), None)

    # ------------------------------------------------------------------ writes
    def append(self, events: Sequence[Mapping[str, Any]] | pd.DataFrame | EventBatch,
               apply: bool = False) -> AppendResult:
        """Append (durable before returning) and wake the consumers; with ``apply``, also apply
        every event up to this batch to the online store before returning."""
        result = self.log.append(events)
        self.counters["accepted"] += result.accepted
        self.counters["duplicates"] += result.duplicates
        if result.offsets and apply and self.online is not None:
            self.online.catch_up(max(result.offsets), self.batch_limit)
        self._wake.set()
        return result

    # ------------------------------------------------------------------ polling
    def poll_once(self, force: bool = False) -> int:
        """One poll of every consumer; returns events processed (errors are counted, not raised)."""
        done = 0
        for consumer in self.consumers:
            try:
                done += consumer.poll(self.batch_limit, force=force)
            except Exception as exc:  # noqa: BLE001 - keep consuming; the events stay uncommitted
                self.counters["errors"] += 1
                self.last_error = f"{consumer.name}: {type(exc).__name__}: {exc}"
                log.exception("event consumer %s failed; retrying in %.1fs", consumer.name, self.error_backoff_s)
                self._stop.wait(self.error_backoff_s)
        return done

    def run_once(self) -> dict[str, Any]:
        """Process every event logged so far (forced: the offline writer flushes), then return stats."""
        for consumer in self.consumers:
            consumer.drain(self.batch_limit)
        return self.stats()

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Poll until ``stop`` (default: :meth:`stop`) is set; flush the offline writer on the way out."""
        stop = stop or self._stop
        while not stop.is_set() and not self._stop.is_set():
            if self.poll_once() == 0:
                self._wake.wait(self.poll_interval_s)
                self._wake.clear()
        self.poll_once(force=True)

    def start(self) -> "EventService":
        """Start the background thread (daemon); idempotent."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run_forever, name="recstack-events", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the thread (after its current poll and a final flush) and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.log.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ metrics
    def lag(self) -> int:
        """The largest consumer lag (events appended but not committed)."""
        last = self.log.last_offset()
        return max((last - self.log.committed(c.name) for c in self.consumers), default=0)

    def stats(self) -> dict[str, Any]:
        """``last_offset``, this object's ``accepted`` / ``duplicates`` / ``errors``, the online
        updater's ``applied`` / ``skipped`` (unknown item + already applied + type), the max ``lag``,
        and per consumer its committed offset, lag and counters."""
        last = self.log.last_offset()
        per = {}
        for c in self.consumers:
            committed = self.log.committed(c.name)
            per[c.name] = {"committed": committed, "lag": last - committed, **c.counters}
        online = self.online
        applied = online.counters["applied"] if online else 0
        skipped = (sum(online.counters[k] for k in ("skipped_unknown", "skipped_applied", "skipped_type"))
                   if online else 0)
        return {"log": self.log.url, "last_offset": last, **self.counters, "applied": applied, "skipped": skipped,
                "lag": max((v["lag"] for v in per.values()), default=0), "consumers": per,
                "last_error": self.last_error, "time": time.time()}
