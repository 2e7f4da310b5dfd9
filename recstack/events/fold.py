"""Fold the offline events into a run's data folder (section 1), so `recstack retrain` refits on them.

Each event becomes one ``interactions`` row: ``user_id`` = the raw user, ``item_id`` = the raw
item, ``rating`` = the value of a ``rating`` event (NaN for other types), ``timestamp`` = the event
time floored to whole unix seconds. Rows are appended after the existing ones in log order (the
file order the split uses to break timestamp ties), then the folder is re-split and rewritten
atomically by :func:`recstack.data.prepare.write_dataset`.

New users get a ``users`` row and new items an ``items`` row (the contract needs every id there):
numeric side columns NaN, text None, list columns ``[]``, ``title`` "". Items added after training
(the live-item registry) get their registered title and side features instead, whether or not
events name them, so the retrained models see their features. ``dataset.json`` records
``events.folded_through`` (the last folded log offset), so folding twice adds nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.events.offline import read_offline_events
from recstack.events.schema import EVENT_TYPES
from recstack.io import read_json

DATASET_JSON = "dataset.json"


def events_to_interactions(events: pd.DataFrame, types: Iterable[str] | None = None) -> pd.DataFrame:
    """Offline events (``read_offline_events`` columns) -> interactions rows in the section-1 contract."""
    keep = set(EVENT_TYPES if types is None else types)
    ev = events[events["type"].isin(keep)]
    rating = np.where(ev["type"].to_numpy() == "rating", ev["value"].to_numpy(dtype=np.float64), np.nan)
    return pd.DataFrame({
        "user_id": ev["user_id"].to_numpy(dtype=np.int64),
        "item_id": ev["item_id"].to_numpy(dtype=np.int64),
        "rating": rating.astype(np.float32),
        "timestamp": np.floor(ev["timestamp"].to_numpy(dtype=np.float64)).astype(np.int64),
    })


def _is_list_column(values: pd.Series) -> bool:
    sample = values.dropna()
    return bool(len(sample)) and isinstance(sample.iloc[0], (list, tuple, np.ndarray))


def blank_rows(table: pd.DataFrame, key: str, ids: np.ndarray) -> pd.DataFrame:
    """``table`` plus one row per id in ``ids`` (not already there) with empty side values."""
    new = np.setdiff1d(np.unique(np.asarray(ids, dtype=np.int64)), table[key].to_numpy(dtype=np.int64))
    if not len(new):
        return table
    cols: dict[str, Any] = {}
    for name in table.columns:
        col = table[name]
        if name == key:
            cols[name] = new
        elif name == "title":
            cols[name] = [""] * len(new)
        elif _is_list_column(col):
            cols[name] = [[] for _ in new]
        elif pd.api.types.is_float_dtype(col):
            cols[name] = np.full(len(new), np.nan, dtype=col.dtype)
        elif pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            cols[name] = np.full(len(new), np.nan)  # int side column: becomes float with NaN = unknown
        else:
            cols[name] = [None] * len(new)
    out = pd.concat([table, pd.DataFrame(cols)], ignore_index=True)
    for name in table.columns:  # keep float32 / int64 ids as the contract has them
        if pd.api.types.is_float_dtype(table[name]) or name == key:
            out[name] = out[name].astype(table[name].dtype)
    return out


def with_live_items(table: pd.DataFrame, live: Iterable[Any]) -> pd.DataFrame:
    """``items`` plus a row per live item (:class:`recstack.features.LiveItem`) not in it, with the
    item's title and the registered values of the table's columns (blank where not given)."""
    have = set(table["item_id"].tolist())
    by_id = {int(r.item_id): r for r in live if int(r.item_id) not in have}
    if not by_id:
        return table
    out = blank_rows(table, "item_id", np.fromiter(by_id, dtype=np.int64))
    tail = out.iloc[len(table):]
    ids = tail["item_id"].tolist()
    for name in table.columns:
        if name == "item_id":
            continue
        given = [by_id[i].title if name == "title" else by_id[i].features.get(name) for i in ids]
        if all(v is None for v in given):
            continue
        values = [old if v is None else v for v, old in zip(given, tail[name].tolist())]
        if table[name].dtype == object:
            out[name] = pd.Series(table[name].tolist() + values, index=out.index, dtype=object)
        else:
            out.loc[tail.index, name] = np.asarray(values, dtype=table[name].dtype)
    return out


def fold_events(data_dir: Path | str, events_dir: Path | str, *, types: Iterable[str] | None = None,
                progress: bool = False, live_items: Path | str | None = None) -> dict[str, Any]:
    """Append the offline events not folded yet to ``data_dir``'s interactions and rewrite the folder.

    Returns ``{"events", "rows", "new_users", "new_items", "folded_through", "counts"}``; when there is
    nothing new the folder is left as it is (``rows`` 0). ``live_items``: the live-item registry whose
    items join ``items`` with their features.
    """
    from recstack.data.dataset import Dataset
    from recstack.data.prepare import write_dataset

    data_dir = Path(data_dir)
    meta_path = data_dir / DATASET_JSON
    if not meta_path.is_file():
        raise InputError(f"--dataset: {data_dir} has no {DATASET_JSON} (run `recstack data prepare` first)")
    meta = read_json(meta_path)
    through = int(meta.get("events", {}).get("folded_through", 0))
    events = read_offline_events(events_dir, after_offset=through)
    summary = {"events": len(events), "rows": 0, "new_users": 0, "new_items": 0, "folded_through": through,
               "counts": meta.get("counts", {})}
    if events.empty:
        return summary
    frames = {name: pd.read_parquet(data_dir / f"{name}.parquet") for name in ("interactions", "users", "items")}
    rows = events_to_interactions(events, types)
    users = blank_rows(frames["users"], "user_id", rows["user_id"].to_numpy())
    items = frames["items"]
    if live_items is not None:
        from recstack.features.live_items import LiveItems

        registry = LiveItems(live_items)
        items = with_live_items(items, registry.since(0))
        registry.close()
    items = blank_rows(items, "item_id", rows["item_id"].to_numpy())
    interactions = pd.concat([frames["interactions"], rows], ignore_index=True)
    last = int(events["offset"].iloc[-1])
    previous = meta.get("events", {})
    extra = {k: v for k, v in meta.items() if k not in ("name", "source", "files", "counts", "split", "events")}
    extra["events"] = {"folded_through": last, "rows": int(previous.get("rows", 0)) + len(rows),
                       "source": str(Path(events_dir).resolve())}
    dataset = Dataset(name=meta.get("name", data_dir.parent.name), interactions=interactions, users=users,
                      items=items, source=meta.get("source", "file"), files=meta.get("files", {}))
    written = write_dataset(dataset, data_dir, progress=progress, extra=extra)
    summary.update(rows=len(rows), new_users=len(users) - len(frames["users"]),
                   new_items=len(items) - len(frames["items"]), folded_through=last, counts=written["counts"])
    return summary
