"""Real-time updates of the users' online histories (the ``user_history`` feature view).

``recent_items`` keeps a user's last ``history_length`` encoded items (oldest -> newest; a
repeated item moves to the end), ``recent_times`` (repositories that have it) the unix seconds of
each of them (an event's own time, whole seconds; the same moves and truncation), ``seen_items`` every item once, the newest
:data:`recstack.ids.SEEN_LIMIT` of them (in first-interaction order). A batch costs one online read
and one Feast ``push`` whatever its size.

Idempotent application: repositories built by :func:`recstack.features.build_feature_repo`
carry an int64 ``applied_offset`` per user, the event-log offset of the last event applied to
that history (0 = none). :func:`apply_interactions` given ``offsets`` skips every event at or
below it and writes the new maximum in the same push as the history, so a consumer that
crashes between the push and its offset commit re-applies nothing when it reads the events
again.

OnlineFeatures is imported inside the functions: ``recstack.features.online`` re-exports
:func:`push_interactions` / :func:`push_interaction` from here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.features.repo import APPLIED_OFFSET, PUSH_SOURCE, RECENT_TIMES
from recstack.ids import SEEN_LIMIT

_ONE_TICK = timedelta(microseconds=1)


@dataclass
class HistoryUpdate:
    """What :func:`apply_interactions` did: ``written`` = ``{user_key: (recent_items, seen_items)}``
    for every user written, ``applied`` / ``skipped`` = events applied / skipped because their
    offset was at or below the user's stored ``applied_offset``."""

    written: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)
    applied: int = 0
    skipped: int = 0


def _online(target: Any) -> Any:
    from recstack.features.online import OnlineFeatures

    if isinstance(target, OnlineFeatures):
        return target
    if isinstance(target, (str, Path)):
        return OnlineFeatures(target)
    return OnlineFeatures(store=target)  # a feast.FeatureStore


def _to_datetime(timestamp: Any, field: str = "timestamp") -> datetime:
    if timestamp is None:
        return datetime.now(timezone.utc)
    if isinstance(timestamp, (int, float, np.integer, np.floating)) and not isinstance(timestamp, bool):
        if not np.isfinite(timestamp):
            raise InputError(f"{field}: {timestamp!r} is not a finite unix time")
        return datetime.fromtimestamp(float(timestamp), tz=timezone.utc)
    try:
        ts = pd.Timestamp(timestamp)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{field}: {timestamp!r} is not a unix time or a datetime") from exc
    if ts is pd.NaT:
        raise InputError(f"{field}: missing")
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.to_pydatetime()


class _UserState:
    """One user's history while a batch is applied: lists + a set for O(1) 'seen' checks."""

    __slots__ = ("recent", "recent_times", "seen", "seen_set", "when", "applied", "dirty")

    def __init__(self, recent: np.ndarray, seen: np.ndarray, when: datetime | None, applied: int,
                 recent_times: np.ndarray | None = None):
        self.recent = [int(x) for x in recent]
        times = [int(x) for x in (recent_times if recent_times is not None else [])][-len(self.recent):]
        # a history stored without its times (or a shorter list): the missing ones are 0 = unknown
        self.recent_times = [0] * (len(self.recent) - len(times)) + times if self.recent else []
        self.seen = [int(x) for x in seen]
        self.seen_set = set(self.seen)
        self.when = when
        self.applied = applied
        self.dirty = False

    def add(self, item: int, when: datetime, history_length: int) -> None:
        if item in self.recent:
            del self.recent_times[self.recent.index(item)]
            self.recent.remove(item)
        self.recent.append(item)
        self.recent_times.append(int(when.timestamp()))  # the event's own time, before the tick below
        del self.recent[:-history_length]
        del self.recent_times[:-history_length]
        if item not in self.seen_set:
            self.seen_set.add(item)
            self.seen.append(item)
            if len(self.seen) > SEEN_LIMIT:  # bounded: the oldest first-interaction drops out
                self.seen_set.discard(self.seen.pop(0))
        # Online stores keep the newest write by event time (Redis drops a write that is not
        # newer than the stored one): keep each user's timestamps strictly increasing.
        if self.when is not None and when <= self.when:
            when = self.when + _ONE_TICK
        self.when = when
        self.dirty = True


def _check_inputs(user_keys: Any, item_ids: Any, timestamps: Any, offsets: Any,
                  history_length: int) -> tuple[list[int], list[int], list[datetime], list[int] | None]:
    from recstack.features.online import _as_keys

    if isinstance(history_length, bool) or not isinstance(history_length, (int, np.integer)) or history_length < 1:
        raise InputError(f"history_length: {history_length!r} is not a positive integer")
    users = _as_keys(user_keys, "user_key")
    items = _as_keys(item_ids, "item_id")
    if len(users) != len(items):
        raise InputError(f"item_id: {len(items)} values for {len(users)} user keys")
    bad = [i for i in items if i < 1]
    if bad:
        raise InputError(f"item_id: {bad[0]} is not an encoded item id (0 is padding)")
    if timestamps is None:
        times = [_to_datetime(None)] * len(users)
    else:
        ts_list = list(timestamps) if not np.isscalar(timestamps) else [timestamps]
        if len(ts_list) != len(users):
            raise InputError(f"timestamp: {len(ts_list)} values for {len(users)} user keys")
        times = [_to_datetime(t) for t in ts_list]
    offs = None
    if offsets is not None:
        offs = _as_keys(offsets, "offset")
        if len(offs) != len(users):
            raise InputError(f"offset: {len(offs)} values for {len(users)} user keys")
        if any(o < 1 for o in offs):
            raise InputError("offset: event-log offsets start at 1")
    return users, items, times, offs


def apply_interactions(
    target: Any,
    user_keys: Sequence[int] | np.ndarray,
    item_ids: Sequence[int] | np.ndarray,
    timestamps: Sequence[Any] | np.ndarray | None,
    history_length: int,
    offsets: Sequence[int] | np.ndarray | None = None,
) -> HistoryUpdate:
    """Append a batch of interactions (applied in order) to the users' online histories.

    ``target`` is a repo folder, a ``feast.FeatureStore`` or an ``OnlineFeatures``; ``item_ids``
    are *encoded* item ids; ``timestamps`` unix seconds / datetimes (None: now); ``offsets`` the
    events' log offsets (>= 1, increasing per user), or None for pushes outside the event log.
    With offsets, events at or below the user's stored ``applied_offset`` are skipped and the
    largest applied offset is stored with the history (repositories without that column raise
    InputError: rebuild them with ``recstack features build``). One read and one push.
    """
    users, items, times, offs = _check_inputs(user_keys, item_ids, timestamps, offsets, history_length)
    if not users:
        return HistoryUpdate()
    online = _online(target)
    names = [c.name for c in online.columns["user_history"]]
    has_offset = APPLIED_OFFSET in names
    has_times = RECENT_TIMES in names
    if offs is not None and not has_offset:
        raise InputError(f"{online.repo_dir}: user_history has no {APPLIED_OFFSET!r} column, so logged events "
                         "cannot be applied exactly once; rebuild it with `recstack features build`")

    distinct = list(dict.fromkeys(users))
    values, known, stored_ts = online._lookup("user_history", "user_key", distinct)
    applied_col = values[APPLIED_OFFSET] if has_offset else np.zeros(len(distinct), dtype=np.int64)
    state: dict[int, _UserState] = {}
    for i, u in enumerate(distinct):
        prev = stored_ts[i] if known[i] else None  # the store's datetime; naive ones are UTC (Feast's convention)
        if prev is not None:
            prev = prev.replace(tzinfo=timezone.utc) if prev.tzinfo is None else prev.astimezone(timezone.utc)
        state[u] = _UserState(values["recent_items"][i], values["seen_items"][i], prev, int(applied_col[i]),
                              values[RECENT_TIMES][i] if has_times else None)

    update = HistoryUpdate()
    hl = int(history_length)
    for n, (u, item, when) in enumerate(zip(users, items, times)):
        st = state[u]
        if offs is not None:
            if offs[n] <= st.applied:
                update.skipped += 1
                continue
            st.applied = offs[n]
        st.add(item, when, hl)
        update.applied += 1

    written = [u for u in distinct if state[u].dirty]
    if not written:
        return update
    frame: dict[str, Any] = {
        "user_key": np.asarray(written, dtype=np.int64),
        "event_timestamp": pd.to_datetime([state[u].when for u in written], utc=True),
        "recent_items": [np.asarray(state[u].recent, dtype=np.int64) for u in written],
        "seen_items": [np.asarray(state[u].seen, dtype=np.int64) for u in written],
    }
    if has_times:
        frame[RECENT_TIMES] = [np.asarray(state[u].recent_times, dtype=np.int64) for u in written]
    if has_offset:
        frame[APPLIED_OFFSET] = np.asarray([state[u].applied for u in written], dtype=np.int64)
    from feast.data_source import PushMode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        online.store.push(PUSH_SOURCE, pd.DataFrame(frame), to=PushMode.ONLINE)
    update.written = {u: (list(state[u].recent), list(state[u].seen)) for u in written}
    return update


def push_interactions(
    target: Any,
    user_keys: Sequence[int] | np.ndarray,
    item_ids: Sequence[int] | np.ndarray,
    timestamps: Sequence[Any] | np.ndarray | None,
    history_length: int,
    offsets: Sequence[int] | np.ndarray | None = None,
) -> dict[int, tuple[list[int], list[int]]]:
    """:func:`apply_interactions`, returning ``{user_key: (recent_items, seen_items)}`` as written."""
    return apply_interactions(target, user_keys, item_ids, timestamps, history_length, offsets).written


def push_interaction(target: Any, user_key: int, item_id: int, timestamp: Any, history_length: int) -> None:
    """Append one interaction (encoded ``item_id``) to ``user_key``'s online history.

    Works for users the store has never seen. Readers (this process or another one on the same
    SQLite file) see the new history at their next lookup.
    """
    push_interactions(target, [user_key], [item_id], [timestamp], history_length)
