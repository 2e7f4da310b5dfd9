"""Fit the default Workflow on the training split and write the feature tables for Feast
(docs/architecture.md, section 2)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from recstack.errors import InputError
from recstack.ids import HISTORY_LENGTH, SEEN_LIMIT
from recstack.io import atomic_dir, write_json
from recstack.workflows.defaults import default_workflow
from recstack.workflows.schema import Schema, Tags
from recstack.workflows.sequences import user_histories
from recstack.workflows.workflow import Workflow

log = logging.getLogger("recstack.workflows")

HISTORY_SPLITS = ("train", "valid")


def _read(data_dir: Path, name: str) -> pd.DataFrame:
    path = data_dir / f"{name}.parquet"
    if not path.is_file():
        raise InputError(f"{path}: not found (run `recstack data prepare` first)")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise InputError(f"{path}: cannot read parquet ({exc})") from None


def _arrow_type(col: Any) -> pa.DataType:
    if col.is_list:
        return pa.list_(pa.int64() if col.dtype == "int64" else pa.from_numpy_dtype(np.dtype(col.dtype)))
    return pa.from_numpy_dtype(np.dtype(col.dtype))


def _write(df: pd.DataFrame, path: Path, types: dict[str, pa.DataType]) -> None:
    """Write with explicit arrow types (so empty lists are list<int64>, never list<null>)."""
    arrays = []
    for name in df.columns:
        arrays.append(pa.array(df[name].tolist() if name in types and pa.types.is_list(types[name])
                               else df[name], type=types.get(name), from_pandas=True))
    pq.write_table(pa.Table.from_arrays(arrays, names=list(df.columns)), path)


def _feature_table(workflow: Workflow, table: pd.DataFrame, id_column: str, key_column: str,
                   side: Tags, event_ts: pd.Timestamp) -> tuple[pd.DataFrame, dict[str, pa.DataType]]:
    schema: Schema = workflow.output_schema.select_by_tag(side)
    enc = workflow.transform(table[[c for c in workflow.input_columns if c in table.columns]])
    enc = enc[[c for c in schema.names if c in enc.columns]]
    out = pd.DataFrame({key_column: table[id_column].to_numpy(dtype=np.int64),
                        "event_timestamp": pd.Series(event_ts, index=range(len(table)))})
    for name in enc.columns:
        out[name] = enc[name].to_numpy()
    types = {key_column: pa.int64(), "event_timestamp": pa.timestamp("us", tz="UTC")}
    types.update({c.name: _arrow_type(c) for c in schema if c.name in enc.columns})
    return out, types


def _fit_on_dask(workflow: Workflow, train_path: Path, users: pd.DataFrame, items: pd.DataFrame,
                 scheduler: str | None, workers: int | None) -> None:
    import dask.dataframe as dd

    from recstack.workflows.dask_exec import dask_client

    with dask_client(scheduler=scheduler, workers=workers):
        ddf = dd.read_parquet(str(train_path), split_row_groups=True)
        joined = ddf.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
        if "rating" not in joined.columns:
            joined = joined.assign(rating=np.float32(np.nan))
        workflow.fit(joined, progress=False)


def fit_and_export(data_dir: str | Path, workflow_dir: str | Path, features_dir: str | Path,
                   history_length: int = HISTORY_LENGTH, progress: bool = True,
                   scheduler: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """Fit ``default_workflow`` on train (joined with users and items), save it to
    ``workflow_dir`` and write ``user_features``, ``item_features``, ``user_history``,
    ``popularity`` parquet + ``features.json`` to ``features_dir``. Returns the summary dict.

    ``scheduler`` (``tcp://host:port``) or ``workers`` (a LocalCluster of that many processes):
    fit on Dask partitions of ``train.parquet`` instead of in this process (same statistics).
    """
    start = time.perf_counter()
    data_dir, workflow_dir, features_dir = Path(data_dir), Path(workflow_dir), Path(features_dir)
    if int(history_length) < 1:
        raise InputError(f"--history-length: must be >= 1, got {history_length}")
    steps = tqdm(total=7, desc="workflow export", unit="step", disable=not progress)

    steps.set_postfix_str("read")
    train, valid = _read(data_dir, "train"), _read(data_dir, "valid")
    users, items = _read(data_dir, "users"), _read(data_dir, "items")
    for name, frame, cols in (("train", train, ("user_id", "item_id", "timestamp")),
                              ("valid", valid, ("user_id", "item_id", "timestamp")),
                              ("users", users, ("user_id",)), ("items", items, ("item_id",))):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise InputError(f"{data_dir / (name + '.parquet')}: missing column(s) {missing}")
    steps.update()

    steps.set_postfix_str("fit")
    workflow = default_workflow(users, items)
    if scheduler or workers:
        _fit_on_dask(workflow, data_dir / "train.parquet", users, items, scheduler, workers)
    else:
        joined = train.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
        if "rating" not in joined.columns:
            joined["rating"] = np.float32(np.nan)
        workflow.fit(joined, progress=False)
    steps.update()

    steps.set_postfix_str("save workflow")
    workflow.save(workflow_dir)
    steps.update()

    last_ts = int(max(train["timestamp"].max() if len(train) else 0, valid["timestamp"].max() if len(valid) else 0))
    event_ts = pd.Timestamp(last_ts, unit="s", tz="UTC")

    with atomic_dir(features_dir) as tmp:
        steps.set_postfix_str("user features")
        user_df, user_types = _feature_table(workflow, users, "user_id", "user_key", Tags.USER, event_ts)
        _write(user_df, tmp / "user_features.parquet", user_types)
        steps.update()

        steps.set_postfix_str("item features")
        item_df, item_types = _feature_table(workflow, items, "item_id", "item_key", Tags.ITEM, event_ts)
        _write(item_df, tmp / "item_features.parquet", item_types)
        steps.update()

        steps.set_postfix_str("histories")
        history_src = pd.concat([train[["user_id", "item_id", "timestamp"]],
                                 valid[["user_id", "item_id", "timestamp"]]], ignore_index=True)
        item_codes = workflow.transform(history_src[["item_id"]])["item_id"].to_numpy()
        hist = user_histories(pd.DataFrame({"user_id": history_src["user_id"].to_numpy(dtype=np.int64),
                                            "item_id": item_codes,
                                            "timestamp": history_src["timestamp"].to_numpy()}), history_length)
        hist_df = pd.DataFrame({"user_key": hist["user_id"].to_numpy(dtype=np.int64),
                                "event_timestamp": pd.Series(event_ts, index=range(len(hist))),
                                "recent_items": hist["recent_items"],
                                "recent_times": hist["recent_times"],
                                "seen_items": [s[-SEEN_LIMIT:] for s in hist["seen_items"]]})
        _write(hist_df, tmp / "user_history.parquet",
               {"user_key": pa.int64(), "event_timestamp": pa.timestamp("us", tz="UTC"),
                "recent_items": pa.list_(pa.int64()), "recent_times": pa.list_(pa.int64()),
                "seen_items": pa.list_(pa.int64())})
        steps.update()

        steps.set_postfix_str("popularity")
        # The window the served histories end in (train + valid), which is also what
        # `recstack evaluate` ranks its popularity baseline by on the test split.
        counts = history_src["item_id"].value_counts(sort=False)
        pop = pd.DataFrame({"item_key": counts.index.to_numpy(dtype=np.int64),
                            "count": counts.to_numpy(dtype=np.int64)})
        pop = pop.sort_values(["count", "item_key"], ascending=[False, True], kind="mergesort")
        pop.insert(0, "item_id", workflow.transform(pop[["item_key"]].rename(columns={"item_key": "item_id"}))
                   ["item_id"].to_numpy(dtype=np.int64))
        pop = pop.reset_index(drop=True)
        _write(pop, tmp / "popularity.parquet", {"item_id": pa.int64(), "item_key": pa.int64(),
                                                  "count": pa.int64()})

        summary: dict[str, Any] = {
            "history_length": int(history_length),
            "history_splits": list(HISTORY_SPLITS),
            "fit_split": "train",
            "event_timestamp": event_ts.isoformat(),
            "rows": {"train": len(train), "valid": len(valid), "users": len(users), "items": len(items),
                     "user_features": len(user_df), "item_features": len(item_df),
                     "user_history": len(hist_df), "popularity": len(pop)},
            "user_columns": [c for c in user_df.columns if c not in ("user_key", "event_timestamp")],
            "item_columns": [c for c in item_df.columns if c not in ("item_key", "event_timestamp")],
            "workflow_dir": str(workflow_dir),
            "data_dir": str(data_dir),
        }
        write_json(tmp / "features.json", summary)
        steps.update()
    steps.close()

    wall = time.perf_counter() - start
    summary["wall_s"] = round(wall, 3)
    schema = workflow.output_schema
    cards = ", ".join(f"{c.name}={c.cardinality}" for c in schema.select_by_tag(Tags.CATEGORICAL))
    line = (f"workflow: fit on {len(train):,} train rows; {len(user_df):,} users, {len(item_df):,} items, "
            f"{len(hist_df):,} histories (L={history_length}); cardinalities {cards}; "
            f"-> {workflow_dir}, {features_dir} in {wall:.1f}s")
    summary["summary"] = line
    if progress:
        print(line, file=sys.stderr)
    else:
        log.info(line)
    return summary
