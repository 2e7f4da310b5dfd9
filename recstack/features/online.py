"""Online feature lookups (per serving request) and real-time history pushes.

The values are read straight from Feast's response protobuf (no DataFrame, no
``to_dict()``): a missing entity gives the proto default (0, 0.0, "", empty list),
which is exactly the zero / empty value reported for unknown keys.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.features.repo import PUSH_SOURCE

# FieldStatus.PRESENT in feast.protos.feast.serving.ServingService_pb2
_PRESENT = 1
_ONE_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class _Column:
    name: str
    attr: str  # the ValueProto oneof field holding the value
    dtype: Any  # numpy dtype of the values
    is_list: bool


def _column(name: str, dtype: Any) -> _Column:
    from feast.value_type import ValueType

    vt = dtype.to_value_type()
    table = {
        ValueType.INT64: ("int64_val", np.int64, False),
        ValueType.INT32: ("int32_val", np.int32, False),
        ValueType.FLOAT: ("float_val", np.float32, False),
        ValueType.DOUBLE: ("double_val", np.float64, False),
        ValueType.STRING: ("string_val", object, False),
        ValueType.BOOL: ("bool_val", np.bool_, False),
        ValueType.INT64_LIST: ("int64_list_val", np.int64, True),
        ValueType.INT32_LIST: ("int32_list_val", np.int32, True),
        ValueType.FLOAT_LIST: ("float_list_val", np.float32, True),
        ValueType.DOUBLE_LIST: ("double_list_val", np.float64, True),
        ValueType.STRING_LIST: ("string_list_val", object, True),
        ValueType.BOOL_LIST: ("bool_list_val", np.bool_, True),
    }
    if vt not in table:
        raise InputError(f"feature {name!r}: Feast type {dtype} is not supported by OnlineFeatures")
    attr, np_dtype, is_list = table[vt]
    return _Column(name, attr, np_dtype, is_list)


def _decode(values: Any, col: _Column) -> np.ndarray | list[np.ndarray]:
    """One feature's ValueProtos -> a numpy array (scalars) or a list of arrays (lists)."""
    attr = col.attr
    if col.is_list:
        return [np.asarray(getattr(v, attr).val, dtype=col.dtype) for v in values]
    if col.dtype is object:
        return np.array([getattr(v, attr) for v in values], dtype=object)
    return np.fromiter((getattr(v, attr) for v in values), dtype=col.dtype, count=len(values))


def _as_keys(keys: Any, field: str) -> list[int]:
    arr = np.asarray(keys)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InputError(f"{field}: expected a 1-d array of int64 keys, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{field}: expected int64 keys, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False).tolist()


def open_store(repo_dir: Path | str) -> Any:
    """A ``feast.FeatureStore`` for a repository built by :func:`build_feature_repo`."""
    from feast import FeatureStore

    repo_dir = Path(repo_dir)
    if not (repo_dir / "feature_store.yaml").is_file():
        raise InputError(f"{repo_dir}: not a Feast repository (run `recstack features build` first)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FeatureStore(repo_path=str(repo_dir))


class OnlineFeatures:
    """Reads users / items / histories from the online store for arrays of raw keys.

    The FeatureStore and the feature lists are loaded once; each method makes one
    ``get_online_features`` call. Columns come in feature-view order.
    """

    def __init__(self, repo_dir: Path | str | None = None, store: Any = None):
        if store is None:
            if repo_dir is None:
                raise InputError("OnlineFeatures: give repo_dir or store")
            store = open_store(repo_dir)
        self.store = store
        self.repo_dir = Path(store.repo_path)
        self.columns: dict[str, list[_Column]] = {}
        self._refs: dict[str, list[str]] = {}
        for view in ("user_features", "item_features", "user_history"):
            fv = store.get_feature_view(view)
            cols = [_column(f.name, f.dtype) for f in fv.features]
            self.columns[view] = cols
            self._refs[view] = [f"{view}:{c.name}" for c in cols]
        names = [c.name for c in self.columns["user_history"]]
        if "recent_items" not in names or "seen_items" not in names:
            raise InputError(f"{self.repo_dir}: user_history view lacks recent_items / seen_items")

    def _lookup(self, view: str, join_key: str, keys: list[int]) -> tuple[dict[str, Any], np.ndarray, list[Any]]:
        (out, known, timestamps), = self._lookup_views((view,), join_key, keys)
        return out, known, timestamps

    def _lookup_views(self, views: Sequence[str], join_key: str,
                      keys: list[int]) -> list[tuple[dict[str, Any], np.ndarray, list[Any]]]:
        """One ``get_online_features`` call for several views of one entity: per view
        ``(columns, known [B] bool, event timestamps)``."""
        if not keys:
            return [({c.name: ([] if c.is_list else np.zeros(0, dtype=c.dtype)) for c in self.columns[v]},
                     np.zeros(0, dtype=bool), []) for v in views]
        refs = [ref for v in views for ref in self._refs[v]]
        proto = self.store.get_online_features(features=refs, entity_rows={join_key: keys}).proto
        by_name = {name: res for name, res in zip(proto.metadata.feature_names.val, proto.results)}
        results = []
        for view in views:
            cols = self.columns[view]
            out = {c.name: _decode(by_name[c.name].values, c) for c in cols}
            first = by_name[cols[0].name]
            known = np.fromiter((s == _PRESENT for s in first.statuses), dtype=bool, count=len(keys))
            results.append((out, known, list(first.event_timestamps)))
        return results

    def users(self, user_keys: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``user_features`` columns for raw user keys, and which keys are known."""
        out, known, _ = self._lookup("user_features", "user_key", _as_keys(user_keys, "user_keys"))
        return out, known

    def items(self, item_keys: Any) -> tuple[dict[str, np.ndarray | list[np.ndarray]], np.ndarray]:
        """``item_features`` columns for raw item keys (list columns as lists of arrays), and which are known."""
        out, known, _ = self._lookup("item_features", "item_key", _as_keys(item_keys, "item_keys"))
        return out, known

    def histories(self, user_keys: Any) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """``(recent_items, seen_items, known)``: encoded item ids per user, oldest -> newest."""
        out, known, _ = self._lookup("user_history", "user_key", _as_keys(user_keys, "user_keys"))
        return out["recent_items"], out["seen_items"], known

    def users_with_histories(self, user_keys: Any) -> tuple[dict[str, Any], np.ndarray, list[np.ndarray],
                                                             list[np.ndarray], np.ndarray]:
        """:meth:`users` and :meth:`histories` in one online-store read:
        ``(features, has_features, recent_items, seen_items, has_history)``."""
        (features, has_features, _), (history, has_history, _) = self._lookup_views(
            ("user_features", "user_history"), "user_key", _as_keys(user_keys, "user_keys"))
        return features, has_features, history["recent_items"], history["seen_items"], has_history

    def _histories_with_ts(self, keys: list[int]) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[Any]]:
        out, known, ts = self._lookup("user_history", "user_key", keys)
        return out["recent_items"], out["seen_items"], known, ts


# ---------------------------------------------------------------------------------------
# real-time history updates


def _online(target: Any) -> OnlineFeatures:
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


def _updated(recent: np.ndarray, seen: np.ndarray, item: int, history_length: int) -> tuple[list[int], list[int]]:
    """Append ``item``: recent keeps the last ``history_length`` (a repeat moves to the end), seen has no duplicates."""
    r = [int(x) for x in recent if int(x) != item]
    r.append(item)
    s = [int(x) for x in seen]
    if item not in s:
        s.append(item)
    return r[-history_length:], s


def push_interactions(
    target: Any,
    user_keys: Sequence[int] | np.ndarray,
    item_ids: Sequence[int] | np.ndarray,
    timestamps: Sequence[Any] | np.ndarray | None,
    history_length: int,
) -> dict[int, tuple[list[int], list[int]]]:
    """Append a batch of interactions (applied in order) to the users' online histories.

    ``target`` is a repo folder, a ``feast.FeatureStore`` or an :class:`OnlineFeatures`;
    ``item_ids`` are *encoded* item ids; ``timestamps`` unix seconds / datetimes (None:
    now). One read and one ``push`` for the whole batch. Users the store has never seen
    get a new history. Returns ``{user_key: (recent_items, seen_items)}`` as written.
    """
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
    if not users:
        return {}

    online = _online(target)
    distinct = list(dict.fromkeys(users))
    recent, seen, known, stored_ts = online._histories_with_ts(distinct)
    state: dict[int, list[Any]] = {}
    for i, u in enumerate(distinct):
        prev = None
        if known[i]:
            t = stored_ts[i]
            prev = datetime.fromtimestamp(t.seconds, tz=timezone.utc) + timedelta(microseconds=t.nanos // 1000)
        state[u] = [recent[i], seen[i], prev]
    for u, item, when in zip(users, items, times):
        r, s, prev = state[u]
        r, s = _updated(np.asarray(r), np.asarray(s), item, int(history_length))
        # Online stores keep the newest write by event time (Redis drops a write that is
        # not newer than the stored one): keep each user's timestamps strictly increasing.
        if prev is not None and when <= prev:
            when = prev + _ONE_TICK
        state[u] = [r, s, when]

    df = pd.DataFrame(
        {
            "user_key": np.asarray(distinct, dtype=np.int64),
            "event_timestamp": pd.to_datetime([state[u][2] for u in distinct], utc=True),
            "recent_items": [np.asarray(state[u][0], dtype=np.int64) for u in distinct],
            "seen_items": [np.asarray(state[u][1], dtype=np.int64) for u in distinct],
        }
    )
    from feast.data_source import PushMode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        online.store.push(PUSH_SOURCE, df, to=PushMode.ONLINE)
    return {u: (list(state[u][0]), list(state[u][1])) for u in distinct}


def push_interaction(
    target: Any,
    user_key: int,
    item_id: int,
    timestamp: Any,
    history_length: int,
) -> None:
    """Append one interaction (encoded ``item_id``) to ``user_key``'s online history.

    ``recent_items`` keeps the last ``history_length`` items (oldest -> newest; a
    repeated item moves to the end), ``seen_items`` gains the item unless already there.
    Works for users the store has never seen. Readers (this process or another one on
    the same SQLite file) see the new history at their next lookup.
    """
    push_interactions(target, [user_key], [item_id], [timestamp], history_length)
