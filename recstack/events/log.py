"""The append-only event log: one interface, an embedded SQLite backend (default) and Redis Streams.

Offsets are int64, 1, 2, 3, ... in append order; a consumer stores the last offset it has fully
processed with :meth:`EventLog.commit` and resumes after :meth:`EventLog.committed` (0 = from
the start). Delivery is at least once: a consumer that dies before committing reads the same
events again, so consumers apply them idempotently.

SQLite durability: the file is in WAL mode with ``synchronous=FULL``, so the WAL is fsynced at
every commit: once :meth:`append` returns, the batch survives the process being killed and a
power loss (given a disk that honours fsync). A batch is one transaction: all of it or none of it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.events.schema import AppendResult, EventBatch, validate_events
from recstack.paths import RunPaths

LOG_FILE = "log.db"
ENV_URL = "RECSTACK_EVENT_LOG"
_ID_CHUNK = 500  # event ids per "IN (...)" lookup (below SQLite's bound-parameter limit)


class EventLog(ABC):
    """Append-only, durable, idempotent (by ``event_id``) log of events with consumer offsets."""

    url: str

    def append(self, events: Sequence[Mapping[str, Any]] | pd.DataFrame | EventBatch) -> AppendResult:
        """Validate and store a batch, all or nothing, durable before returning.

        An ``event_id`` already in the log (or earlier in the batch) is not stored again; it is
        counted in ``duplicates`` and its ``offsets`` entry is the stored copy's offset.
        """
        batch = events if isinstance(events, EventBatch) else validate_events(events)
        if not len(batch):
            return AppendResult(0, 0, [], [])
        return self._append(batch)

    @abstractmethod
    def _append(self, batch: EventBatch) -> AppendResult: ...

    @abstractmethod
    def read(self, after_offset: int = 0, limit: int = 1000) -> EventBatch:
        """Up to ``limit`` events with offset > ``after_offset``, in offset order."""

    @abstractmethod
    def last_offset(self) -> int:
        """The offset of the newest event (0 when empty)."""

    @abstractmethod
    def commit(self, consumer: str, offset: int, *, force: bool = False) -> int:
        """Record that ``consumer`` has processed every event up to ``offset``; returns the stored
        offset. Commits only move forward (a smaller offset is ignored) unless ``force``."""

    @abstractmethod
    def committed(self, consumer: str) -> int:
        """The last offset ``consumer`` committed (0 if never)."""

    @abstractmethod
    def consumers(self) -> dict[str, int]:
        """Every consumer's committed offset."""

    def wait(self, after_offset: int, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` seconds until an event with offset > ``after_offset`` exists."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.last_offset() > after_offset:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.005, left))

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @staticmethod
    def _check_commit(consumer: str, offset: int, last: int) -> tuple[str, int]:
        if not isinstance(consumer, str) or not consumer:
            raise InputError("consumer: a non-empty name is required")
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise InputError(f"offset: {offset!r} is not a non-negative integer")
        if offset > last:
            raise InputError(f"offset: {offset} is past the newest event ({last})")
        return consumer, int(offset)


class SqliteEventLog(EventLog):
    """The embedded default: one SQLite file in WAL mode with ``synchronous=FULL``.

    Safe for several threads (one connection per thread) and several processes (SQLite locks:
    appends serialise on the write lock, readers never block). ``path`` is created if missing.
    """

    def __init__(self, path: Path | str, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{self.path.resolve()}"
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        conn.executescript(
            "CREATE TABLE IF NOT EXISTS events (pos INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,"
            " user_id INTEGER NOT NULL, item_id INTEGER NOT NULL, type TEXT NOT NULL, value REAL,"
            " timestamp REAL NOT NULL, received REAL NOT NULL);"
            "CREATE TABLE IF NOT EXISTS consumers (name TEXT PRIMARY KEY, pos INTEGER NOT NULL, updated REAL);"
        )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=self._busy_ms / 1000)
                mode = self._wal_mode(conn)
            except sqlite3.DatabaseError as exc:
                raise InputError(f"{self.path}: not an event log ({exc})") from None
            if mode.lower() != "wal":
                raise InputError(f"{self.path}: cannot switch to WAL mode (journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _wal_mode(self, conn: sqlite3.Connection) -> str:
        """Switch to WAL. Two processes opening a new log at once can get "database is locked"
        here without SQLite's busy handler being called (seen in CI): retry until the busy timeout."""
        deadline = time.monotonic() + self._busy_ms / 1000
        while True:
            try:
                return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _append(self, batch: EventBatch) -> AppendResult:
        conn = self._conn()
        ids = batch.event_id.tolist()
        conn.execute("BEGIN IMMEDIATE")  # the write lock: offsets are assigned without races
        try:
            stored: dict[str, int] = {}
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start:start + _ID_CHUNK]
                marks = ",".join("?" * len(chunk))
                stored.update(conn.execute(f"SELECT event_id, pos FROM events WHERE event_id IN ({marks})", chunk))
            nxt = conn.execute("SELECT COALESCE(MAX(pos), 0) FROM events").fetchone()[0] + 1
            offsets, dup, rows = [], [], []
            users, items, types = batch.user.tolist(), batch.item.tolist(), batch.type.tolist()
            values, stamps, received = batch.value.tolist(), batch.timestamp.tolist(), batch.received.tolist()
            for i, eid in enumerate(ids):
                pos = stored.get(eid)
                if pos is not None:
                    offsets.append(pos)
                    dup.append(True)
                    continue
                stored[eid] = nxt
                v = values[i]
                rows.append((nxt, eid, users[i], items[i], types[i], None if v != v else v, stamps[i], received[i]))
                offsets.append(nxt)
                dup.append(False)
                nxt += 1
            conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?)", rows)
            conn.execute("COMMIT")  # WAL fsync (synchronous=FULL): durable from here
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return AppendResult(len(rows), len(ids) - len(rows), offsets, dup)

    def read(self, after_offset: int = 0, limit: int = 1000) -> EventBatch:
        rows = self._conn().execute(
            "SELECT pos, event_id, user_id, item_id, type, value, timestamp, received FROM events"
            " WHERE pos > ? ORDER BY pos LIMIT ?", (int(after_offset), int(limit))).fetchall()
        if not rows:
            return EventBatch.empty()
        pos, eid, user, item, kind, value, ts, rec = zip(*rows)
        return EventBatch.from_columns({
            "offset": pos, "event_id": eid, "user": user, "item": item, "type": kind,
            "value": [np.nan if v is None else v for v in value], "timestamp": ts, "received": rec})

    def last_offset(self) -> int:
        return int(self._conn().execute("SELECT COALESCE(MAX(pos), 0) FROM events").fetchone()[0])

    def commit(self, consumer: str, offset: int, *, force: bool = False) -> int:
        consumer, offset = self._check_commit(consumer, offset, self.last_offset())
        keep = "excluded.pos" if force else "MAX(pos, excluded.pos)"
        conn = self._conn()
        conn.execute(f"INSERT INTO consumers VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET pos = {keep},"
                     " updated = excluded.updated", (consumer, offset, time.time()))
        return self.committed(consumer)

    def committed(self, consumer: str) -> int:
        row = self._conn().execute("SELECT pos FROM consumers WHERE name = ?", (consumer,)).fetchone()
        return int(row[0]) if row else 0

    def consumers(self) -> dict[str, int]:
        return {name: int(pos) for name, pos in self._conn().execute("SELECT name, pos FROM consumers ORDER BY name")}

    def count(self) -> int:
        """Events stored (equals :meth:`last_offset`: nothing is ever deleted)."""
        return int(self._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()


def events_dir(paths: RunPaths) -> Path:
    """``runs/<ds>/events/``: the SQLite log file and the offline parquet partitions."""
    return paths.root / "events"


def open_event_log(paths: RunPaths | None = None, url: str | None = None) -> EventLog:
    """The log named by ``url`` (``sqlite:///path`` or ``redis://host:port/db``), else by
    ``$RECSTACK_EVENT_LOG``, else the SQLite file ``runs/<ds>/events/log.db`` of ``paths``.

    A Redis log's stream keys are prefixed with the run's dataset name.
    """
    url = url or os.environ.get(ENV_URL) or None
    if url is None:
        if paths is None:
            raise InputError("event log: give a run (paths) or a url")
        return SqliteEventLog(events_dir(paths) / LOG_FILE)
    if url.startswith("sqlite:///"):
        return SqliteEventLog(Path(url[len("sqlite:///"):]))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from recstack.events.redis_log import RedisEventLog

        return RedisEventLog(url, name=paths.root.name if paths is not None else "default")
    raise InputError(f"event log url: {url!r} is not sqlite:///<path> or redis://host:port/db")
