"""Items added after training: the live-item registry every serving process reads.

An app adds an item (``POST /v1/items``, ``recstack items add``) with its raw side features; the
registry stores that row durably (SQLite, WAL, ``synchronous=FULL``) and gives it a sequence
number ``seq`` (1, 2, 3, ... in add order). Nothing model-specific is stored: each reader (the
Triton retrieval and item-feature steps, the gateway's catalogue, the event encoder) encodes and
embeds the raw row with the Workflow and item tower of the model version it serves, so a deploy
or rollback never serves an embedding from another model.

Encoded ids of live items: the trained vocabulary has codes ``0 .. base-1`` (``base`` is the item
id column's cardinality in the Workflow's output schema), so live item ``seq`` gets code
``base + seq - 1`` (:func:`live_code`). Every reader with the same Workflow computes the same code
without asking anyone. A raw id the Workflow already encodes (an item that was in the training
data of a later model) is served as a trained item, and its registry row is ignored.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recstack.errors import InputError
from recstack.paths import RunPaths

LIVE_ITEMS_FILE = "live.db"
MAX_TITLE = 500
MAX_FEATURES_JSON = 10_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id  INTEGER NOT NULL UNIQUE,
    title    TEXT,
    features TEXT NOT NULL,
    added_at REAL NOT NULL
)"""


class DuplicateItem(InputError):
    """The item is in the catalogue already (trained, or added before): nothing was stored."""


def live_items_path(paths: RunPaths) -> Path:
    """``runs/<dataset>/items/live.db``: the run's live-item registry."""
    return paths.root / "items" / LIVE_ITEMS_FILE


def live_code(seq: int, base: int) -> int:
    """Encoded id of live item ``seq`` for a Workflow whose item vocabulary has ``base`` codes."""
    return int(base) + int(seq) - 1


@dataclass(frozen=True)
class LiveItem:
    """One added item: ``seq`` (add order, from 1), raw ``item_id``, ``title``, raw side
    ``features`` (column -> value, as the Workflow's input columns take them), ``added_at``
    (unix seconds)."""

    seq: int
    item_id: int
    title: str | None
    features: dict[str, Any]
    added_at: float


def _row(r: tuple) -> LiveItem:
    return LiveItem(seq=int(r[0]), item_id=int(r[1]), title=r[2], features=json.loads(r[3]), added_at=float(r[4]))


def _check_item(item: Mapping[str, Any], n: int) -> tuple[int, str | None, str]:
    where = f"items[{n}]"
    if not isinstance(item, Mapping):
        raise InputError(f"{where}: expected an object, got {type(item).__name__}")
    item_id = item.get("item_id")
    if isinstance(item_id, bool) or not isinstance(item_id, int) or not -(2**63) <= item_id < 2**63:
        raise InputError(f"{where}.item_id: {item_id!r} is not a 64-bit integer")
    title = item.get("title")
    if title is not None and (not isinstance(title, str) or len(title) > MAX_TITLE):
        raise InputError(f"{where}.title: expected text of at most {MAX_TITLE} characters")
    features = item.get("features") or {}
    if not isinstance(features, Mapping):
        raise InputError(f"{where}.features: expected an object of column -> value")
    try:
        text = json.dumps(dict(features), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}.features: not JSON-serialisable ({exc})") from None
    if len(text) > MAX_FEATURES_JSON:
        raise InputError(f"{where}.features: more than {MAX_FEATURES_JSON} characters of JSON")
    return item_id, title, text


class LiveItems:
    """The registry at ``path`` (created on the first :meth:`add`; readers see an empty registry
    until then). Thread-safe; one connection per object."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is None:
            if not self.path.is_file():
                if not create:
                    return None
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    def add(self, items: Iterable[Mapping[str, Any]], now: float | None = None) -> list[LiveItem]:
        """Store items ``{"item_id", "title"?, "features"?}``, all or none, durable on return.

        Raises InputError naming the item for a malformed row, an id given twice, or an id
        already in the registry (an added item is not replaced: its code is fixed).
        """
        rows = [_check_item(item, n) for n, item in enumerate(items)]
        ids = [r[0] for r in rows]
        if len(set(ids)) != len(ids):
            raise InputError(f"items: item_id {next(i for i in ids if ids.count(i) > 1)} is given twice")
        when = time.time() if now is None else float(now)
        if not math.isfinite(when):
            raise InputError("added_at: not a finite unix time")
        with self._lock:
            conn = self._connect(create=True)
            assert conn is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                clash = [i for i in ids if conn.execute("SELECT 1 FROM items WHERE item_id = ?", (i,)).fetchone()]
                if clash:
                    raise DuplicateItem(f"item_id: {clash[0]} was already added")
                seqs = [conn.execute("INSERT INTO items (item_id, title, features, added_at) VALUES (?, ?, ?, ?)",
                                     (i, t, f, when)).lastrowid for i, t, f in rows]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return [LiveItem(int(s), i, t, json.loads(f), when) for s, (i, t, f) in zip(seqs, rows)]

    def since(self, seq: int = 0) -> list[LiveItem]:
        """Items with ``seq`` greater than the given one, in add order."""
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return []
            rows = conn.execute("SELECT seq, item_id, title, features, added_at FROM items WHERE seq > ? "
                                "ORDER BY seq", (int(seq),)).fetchall()
        return [_row(r) for r in rows]

    def last_seq(self) -> int:
        """The newest item's ``seq`` (0 when none was added)."""
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return 0
            return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM items").fetchone()[0])

    def lookup(self, item_ids: Iterable[int]) -> dict[int, LiveItem]:
        """``{raw item id: LiveItem}`` for those of ``item_ids`` in the registry."""
        wanted = list(dict.fromkeys(int(i) for i in item_ids))
        found: dict[int, LiveItem] = {}
        with self._lock:
            conn = self._connect(create=False)
            if conn is None or not wanted:
                return found
            for start in range(0, len(wanted), 500):
                chunk = wanted[start: start + 500]
                marks = ",".join("?" * len(chunk))
                for r in conn.execute(f"SELECT seq, item_id, title, features, added_at FROM items "
                                      f"WHERE item_id IN ({marks})", chunk):
                    found[int(r[1])] = _row(r)
        return found

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
