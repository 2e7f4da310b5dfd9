"""The event record, its validation, and the columnar batch every backend reads and writes.

An event is one interaction an app reports:

| field | type | meaning |
|---|---|---|
| ``event_id`` | str, required | the client's id for the event, the idempotency key (1..128 printable chars) |
| ``user`` | int | raw user id (int64; a new id is a new user) |
| ``item`` | int | raw item id (int64) |
| ``type`` | str | one of :data:`EVENT_TYPES` |
| ``value`` | float, optional | e.g. the rating of a ``rating`` event (required there), a price |
| ``timestamp`` | float, optional | unix seconds when it happened (default: when the log received it) |

The log adds ``offset`` (int64, 1, 2, ... in append order) and ``received`` (unix seconds).
A bad event raises :class:`recstack.errors.InputError` naming ``events[i].<field>`` and the
reason; a batch with one bad event is rejected whole.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "rating", "like", "dislike", "share")
"""Accepted event types. Every type is an interaction for histories and retraining."""

FIELDS: tuple[str, ...] = ("event_id", "user", "item", "type", "value", "timestamp")
MAX_EVENT_ID = 128
MAX_TIMESTAMP = 4_102_444_800.0
"""2100-01-01 UTC: later times are refused (pandas and the online stores keep nanosecond
timestamps, which end in 2262; a year-5000 event once stuck the online updater)."""
"""Unix seconds above this (year 5138) are rejected: such values are milliseconds by mistake."""
_INT64 = (-(2**63), 2**63 - 1)


@dataclass
class EventBatch:
    """Events as columns (numpy arrays of equal length). ``offset`` / ``received`` are 0 until the
    log has stored them; ``value`` is NaN where absent."""

    event_id: np.ndarray  # object (str)
    user: np.ndarray  # int64 raw user ids
    item: np.ndarray  # int64 raw item ids
    type: np.ndarray  # object (str)
    value: np.ndarray  # float64, NaN = none
    timestamp: np.ndarray  # float64 unix seconds
    offset: np.ndarray  # int64 log offsets
    received: np.ndarray  # float64 unix seconds

    def __len__(self) -> int:
        return len(self.event_id)

    @classmethod
    def empty(cls) -> "EventBatch":
        return cls(np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, object),
                   np.zeros(0, np.float64), np.zeros(0, np.float64), np.zeros(0, np.int64), np.zeros(0, np.float64))

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence[Any]]) -> "EventBatch":
        """From already-typed columns (as a backend reads them back)."""
        return cls(
            event_id=np.asarray(columns["event_id"], dtype=object),
            user=np.asarray(columns["user"], dtype=np.int64),
            item=np.asarray(columns["item"], dtype=np.int64),
            type=np.asarray(columns["type"], dtype=object),
            value=np.asarray(columns["value"], dtype=np.float64),
            timestamp=np.asarray(columns["timestamp"], dtype=np.float64),
            offset=np.asarray(columns["offset"], dtype=np.int64),
            received=np.asarray(columns["received"], dtype=np.float64),
        )

    def take(self, index: Any) -> "EventBatch":
        """The events at ``index`` (a mask or positions)."""
        return EventBatch(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    @property
    def last_offset(self) -> int:
        return int(self.offset[-1]) if len(self) else 0

    def to_frame(self) -> pd.DataFrame:
        """The offline (parquet) layout: offset, event_id, user_id, item_id, type, value, timestamp, received."""
        return pd.DataFrame({
            "offset": self.offset, "event_id": self.event_id.astype(str), "user_id": self.user,
            "item_id": self.item, "type": self.type.astype(str), "value": self.value,
            "timestamp": self.timestamp, "received": self.received,
        })

    def records(self) -> Iterator[dict[str, Any]]:
        """One JSON-ready dict per event (``value`` None where absent)."""
        for i in range(len(self)):
            v = float(self.value[i])
            yield {"offset": int(self.offset[i]), "event_id": str(self.event_id[i]), "user": int(self.user[i]),
                   "item": int(self.item[i]), "type": str(self.type[i]), "value": None if math.isnan(v) else v,
                   "timestamp": float(self.timestamp[i]), "received": float(self.received[i])}


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or value is None:
        raise InputError(f"{where}: expected an integer id, got {value!r}")
    if isinstance(value, (int, np.integer)):
        out = int(value)
    elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        out = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        out = int(value)
    else:
        raise InputError(f"{where}: expected an integer id, got {value!r}")
    if not _INT64[0] <= out <= _INT64[1]:
        raise InputError(f"{where}: {out} is outside the int64 range")
    return out


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{where}: expected a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise InputError(f"{where}: {value!r} is not a finite number")
    return out


def _event_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: required, a non-empty string (the idempotency key)")
    if len(value) > MAX_EVENT_ID:
        raise InputError(f"{where}: longer than {MAX_EVENT_ID} characters")
    if not value.isprintable():
        raise InputError(f"{where}: contains control characters")
    return value


def validate_events(events: Sequence[Mapping[str, Any]] | pd.DataFrame, now: float | None = None) -> EventBatch:
    """Check every event and return them as an :class:`EventBatch` (offsets 0, received ``now``).

    ``events``: a sequence of mappings with the fields of the module docstring, or a DataFrame with
    those columns. Unknown fields are an error (a typo must not silently drop a value).
    """
    if isinstance(events, pd.DataFrame):
        events = events.to_dict("records")
    if isinstance(events, Mapping) or not isinstance(events, Sequence) or isinstance(events, (str, bytes)):
        raise InputError("events: expected a list of event objects")
    now = time.time() if now is None else float(now)
    n = len(events)
    ids, users, items, types = [None] * n, np.empty(n, np.int64), np.empty(n, np.int64), [None] * n
    values, stamps = np.full(n, np.nan), np.empty(n, np.float64)
    for i, ev in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(ev, Mapping):
            raise InputError(f"{where}: expected an object with fields {', '.join(FIELDS)}")
        unknown = [k for k in ev if k not in FIELDS]
        if unknown:
            raise InputError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(FIELDS)})")
        for name in ("event_id", "user", "item", "type"):
            if ev.get(name) is None:
                raise InputError(f"{where}.{name}: required")
        ids[i] = _event_id(ev["event_id"], f"{where}.event_id")
        users[i] = _int(ev["user"], f"{where}.user")
        items[i] = _int(ev["item"], f"{where}.item")
        kind = ev["type"]
        if kind not in EVENT_TYPES:
            raise InputError(f"{where}.type: {kind!r} is not one of {', '.join(EVENT_TYPES)}")
        types[i] = kind
        value = ev.get("value")
        if value is not None and not (isinstance(value, float) and math.isnan(value) and kind != "rating"):
            values[i] = _float(value, f"{where}.value")
        elif kind == "rating":
            raise InputError(f"{where}.value: required for a rating event")
        ts = ev.get("timestamp")
        if ts is None or (isinstance(ts, float) and math.isnan(ts)):
            stamps[i] = now
        else:
            stamps[i] = _float(ts, f"{where}.timestamp")
            if stamps[i] < 0:
                raise InputError(f"{where}.timestamp: {ts!r} is before 1970 (unix seconds expected)")
            if stamps[i] > MAX_TIMESTAMP:
                raise InputError(f"{where}.timestamp: {ts!r} is after 2100 (unix seconds expected, not milliseconds)")
    return EventBatch(np.asarray(ids, dtype=object), users, items, np.asarray(types, dtype=object), values, stamps,
                      np.zeros(n, np.int64), np.full(n, now))


@dataclass
class AppendResult:
    """What :meth:`EventLog.append` stored. ``offsets[i]`` is input event ``i``'s log offset (for a
    duplicate: the offset of the copy stored first); ``duplicate[i]`` says whether it was one."""

    accepted: int
    duplicates: int
    offsets: list[int]
    duplicate: list[bool]

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "offsets": self.offsets,
                "duplicate": self.duplicate}
