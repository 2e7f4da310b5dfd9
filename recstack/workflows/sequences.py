"""User interaction histories from encoded interactions, vectorised (numpy / pandas).

Time order everywhere: by ``timestamp``, ties broken by row order in the given frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.ids import PAD

_REQUIRED = ("user_id", "item_id", "timestamp")


def _check(interactions: pd.DataFrame, history_length: int) -> None:
    missing = [c for c in _REQUIRED if c not in interactions.columns]
    if missing:
        raise InputError(f"interactions: missing column(s) {missing}")
    if int(history_length) < 1:
        raise InputError(f"history_length: must be >= 1, got {history_length}")


def _time_order(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Permutation sorting rows by (user, timestamp, row position)."""
    return np.lexsort((np.arange(len(users)), timestamps, users))


def user_histories(interactions_encoded: pd.DataFrame, history_length: int) -> pd.DataFrame:
    """One row per user: ``user_id``, ``recent_items`` (last ``history_length`` items,
    oldest -> newest), ``recent_times`` (the unix seconds of those interactions, int64, same
    order and length), ``seen_items`` (every distinct item, in first-interaction order),
    ``last_timestamp``.

    ``user_id`` is only a grouping key (raw or encoded ids both work); ``item_id`` should
    be the encoded item ids. Users are returned in ascending ``user_id`` order; lists are
    Python lists of ints.
    """
    _check(interactions_encoded, history_length)
    L = int(history_length)
    users = interactions_encoded["user_id"].to_numpy()
    items = interactions_encoded["item_id"].to_numpy(dtype=np.int64)
    ts = interactions_encoded["timestamp"].to_numpy()
    if len(users) == 0:
        return pd.DataFrame({"user_id": pd.Series([], dtype=users.dtype), "recent_items": pd.Series([], dtype=object),
                             "recent_times": pd.Series([], dtype=object), "seen_items": pd.Series([], dtype=object),
                             "last_timestamp": pd.Series([], dtype=ts.dtype)})
    order = _time_order(users, ts)
    u, it, t = users[order], items[order], ts[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    ends = np.r_[starts[1:], len(u)]
    # recent: the last L positions of each user's run
    rec_starts = np.maximum(starts, ends - L)
    flat = it.tolist()
    recent = [flat[a:b] for a, b in zip(rec_starts.tolist(), ends.tolist())]
    tflat = _unix_seconds(t).tolist()
    recent_times = [tflat[a:b] for a, b in zip(rec_starts.tolist(), ends.tolist())]
    # seen: first occurrence of each (user, item) in time order
    first = ~pd.DataFrame({"u": u, "i": it}).duplicated().to_numpy()
    su, si = u[first], it[first]
    s_starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    s_ends = np.r_[s_starts[1:], len(su)]
    sflat = si.tolist()
    seen = [sflat[a:b] for a, b in zip(s_starts.tolist(), s_ends.tolist())]
    return pd.DataFrame({
        "user_id": u[starts],
        "recent_items": pd.Series(recent, dtype=object),
        "recent_times": pd.Series(recent_times, dtype=object),
        "seen_items": pd.Series(seen, dtype=object),
        "last_timestamp": t[ends - 1],
    })


def _unix_seconds(timestamps: np.ndarray) -> np.ndarray:
    """Timestamps (unix seconds as numbers, or datetime64) -> int64 unix seconds."""
    if np.issubdtype(timestamps.dtype, np.datetime64):
        return timestamps.astype("datetime64[s]").astype(np.int64)
    return np.asarray(timestamps, dtype=np.float64).astype(np.int64)


def history_before_each(interactions_encoded: pd.DataFrame, history_length: int,
                        chunk_rows: int = 262_144, values: str = "item_id") -> np.ndarray:
    """``[N, history_length]`` int64: for each row (in the given row order), the items that row's
    user interacted with strictly before it (time order, ties by row order), **right-aligned**:
    the most recent item is in the last column, shorter histories are left-padded with ``PAD`` (0).

    ``values="timestamp"``: the unix seconds of those interactions instead of their items (same
    positions, 0 = pad), the ``history_times`` the sequence tower's time-gap buckets read.
    """
    _check(interactions_encoded, history_length)
    L = int(history_length)
    users = interactions_encoded["user_id"].to_numpy()
    items = interactions_encoded["item_id"].to_numpy(dtype=np.int64)
    ts = interactions_encoded["timestamp"].to_numpy()
    n = len(users)
    out = np.full((n, L), PAD, dtype=np.int64)
    if n == 0:
        return out
    order = _time_order(users, ts)
    u, it = users[order], items[order]
    if values == "timestamp":
        it = _unix_seconds(ts)[order]
    elif values != "item_id":
        raise InputError(f"values: expected 'item_id' or 'timestamp', got {values!r}")
    new_user = np.r_[True, u[1:] != u[:-1]]
    group_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    offsets = np.arange(-L, 0, dtype=np.int64)  # positions k-L .. k-1
    for lo in range(0, n, chunk_rows):
        hi = min(lo + chunk_rows, n)
        k = np.arange(lo, hi, dtype=np.int64)
        idx = k[:, None] + offsets[None, :]
        valid = idx >= group_start[lo:hi, None]
        block = np.where(valid, it[np.clip(idx, 0, None)], PAD)
        out[order[lo:hi]] = block
    return out
