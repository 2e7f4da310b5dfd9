"""Sequence operators: Groupby (one row per key with its rows' values as time-ordered lists:
a user's item history) and ListSlice (the last / first N elements of list columns).

``Groupby`` lists are Arrow list columns (``pd.ArrowDtype``), built from offsets without Python
objects per element; ``ListSlice`` keeps the input's list representation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recstack.errors import InputError
from recstack.workflows.lists import flatten, rebuild, row_list
from recstack.workflows.operator import Context, Operator, register_op
from recstack.workflows.schema import ColumnSchema, Schema, Tags
from recstack.workflows.values import group_time_order

AGGS = ("list", "count", "first", "last", "sum", "mean", "min", "max")


def slice_bounds(lengths: np.ndarray, start: int, end: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Python ``lst[start:end]`` per row, vectorised: (begin ``[n]``, stop ``[n]``) within each row."""
    def norm(v: int | None, default: np.ndarray) -> np.ndarray:
        if v is None:
            return default
        return np.clip(lengths + v, 0, None) if v < 0 else np.minimum(v, lengths)

    begin = norm(start, np.zeros_like(lengths))
    stop = norm(end, lengths)
    return begin, np.maximum(stop, begin)


def _py(value: Any) -> Any:
    """A cell -> plain Python (lists of Python scalars)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_py(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


@register_op
class ListSlice(Operator):
    """Slice every list like ``lst[start:end]`` (``ListSlice(-20)``: the last 20 items).

    Example: [5, 6, 7, 8] >> ListSlice(-2) -> [7, 8]; ListSlice(0, 2) -> [5, 6].
    """

    def __init__(self, start: int = 0, end: int | None = None) -> None:
        super().__init__()
        self.start, self.end = int(start), end if end is None else int(end)

    def get_config(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end}

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        flat, offsets = flatten(series)
        lengths = np.diff(offsets)
        begin, stop = slice_bounds(lengths, self.start, self.end)
        new_len = stop - begin
        new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(new_len, out=new_offsets[1:])
        take = np.repeat(offsets[:-1] + begin - new_offsets[:-1], new_len) + np.arange(new_offsets[-1])
        values = flat[take]
        arrow_type = pa.from_numpy_dtype(values.dtype) if values.dtype != object else pa.string()
        return rebuild(series, values, new_offsets, arrow_type)

    def transform_value(self, column: str, value: Any) -> list[Any]:
        return row_list(value)[self.start:self.end]

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        length = len(range(10**9)[self.start:self.end]) if self.start < 0 or self.end is not None else None
        if column.max_length is not None and length is not None:
            length = min(length, column.max_length)
        return column.replace(is_list=True, max_length=length if length is not None else column.max_length,
                              tags=column.tags | {Tags.LIST})


@register_op
class Groupby(Operator):
    """One row per ``groupby_col`` value; for each column in ``aggs`` and each aggregation
    (list, count, first, last, sum, mean, min, max) a column ``<col>_<agg>``; rows are ordered
    by ``sort_cols`` then by row number before aggregating, keys come out in ascending order.

    A request is one group: every column's value is the list of that key's row values.

    Example::

        >>> ["user_id", "item_id", "timestamp"] >> Groupby("user_id", sort_cols=["timestamp"],
        ...                                               aggs={"item_id": ["list", "count"]})
        # -> user_id, item_id_list (oldest -> newest), item_id_count
    """

    per_column = False
    groups_rows = True

    def __init__(self, groupby_col: str, sort_cols: Sequence[str] = (), aggs: dict[str, Sequence[str]] | None = None) -> None:
        super().__init__()
        self.groupby_col, self.sort_cols = groupby_col, list(sort_cols)
        self.aggs = {c: list(a) for c, a in (aggs or {}).items()}
        bad = [a for v in self.aggs.values() for a in v if a not in AGGS]
        if bad:
            raise ValueError(f"Groupby: unknown aggregations {bad}; known: {list(AGGS)}")

    def get_config(self) -> dict[str, Any]:
        return {"groupby_col": self.groupby_col, "sort_cols": self.sort_cols, "aggs": self.aggs}

    @property
    def group_key(self) -> str:
        return self.groupby_col

    def output_column_names(self, columns: Sequence[str]) -> list[str]:
        return [self.groupby_col] + [f"{c}_{a}" for c, aggs in self.aggs.items() for a in aggs]

    def transform(self, df: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        needed = [self.groupby_col, *self.sort_cols, *self.aggs]
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise InputError(f"column {missing[0]!r} is not an input of this Groupby")
        keys = df[self.groupby_col].to_numpy()
        rows = ctx.rows(len(df))
        if len(self.sort_cols) == 1 and keys.dtype.kind in "iu" and df[self.sort_cols[0]].dtype.kind in "iuf":
            order = group_time_order(keys, df[self.sort_cols[0]].to_numpy(), rows)
        else:
            order = np.lexsort([rows] + [df[c].to_numpy() for c in reversed(self.sort_cols)] + [keys])
        k = keys[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, np.int64)
        offsets = np.r_[starts, len(k)].astype(np.int64)
        out: dict[str, Any] = {self.groupby_col: k[starts]}
        for col, aggs in self.aggs.items():
            values = df[col].to_numpy()[order]
            for agg in aggs:
                out[f"{col}_{agg}"] = self._agg(agg, values, starts, offsets)
        return pd.DataFrame(out)

    @staticmethod
    def _agg(agg: str, values: np.ndarray, starts: np.ndarray, offsets: np.ndarray) -> Any:
        if agg == "list":
            arrow = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, from_pandas=True))
            return pd.arrays.ArrowExtensionArray(arrow)
        if agg == "count":
            return np.diff(offsets)
        if agg == "first":
            return values[starts]
        if agg == "last":
            return values[offsets[1:] - 1]
        vals = values.astype(np.float64)
        if agg in ("sum", "mean"):
            sums = np.add.reduceat(vals, starts) if len(starts) else np.zeros(0)
            return sums if agg == "sum" else sums / np.diff(offsets)
        return (np.minimum if agg == "min" else np.maximum).reduceat(vals, starts) if len(starts) else np.zeros(0)

    def transform_row(self, values: dict[str, Any], ctx: Context) -> dict[str, Any]:
        lists = {c: row_list(v) for c, v in values.items()}
        n = max((len(v) for v in lists.values()), default=0)
        frame = pd.DataFrame({c: v if len(v) == n else v * n for c, v in lists.items()})
        out = self.transform(frame, Context(raw=frame))
        if len(out) != 1:
            raise InputError(f"a Groupby request is one group: {self.groupby_col!r} has {len(out)} values")
        return {c: _py(out[c].iloc[0]) for c in out.columns}

    def compute_output_schema(self, schema: Schema) -> Schema:
        cols = [schema[self.groupby_col]]
        for col, aggs in self.aggs.items():
            src = schema[col]
            for agg in aggs:
                name = f"{col}_{agg}"
                if agg == "list":
                    cols.append(src.replace(name=name, is_list=True, tags=src.tags | {Tags.LIST}))
                elif agg == "count":
                    cols.append(ColumnSchema(name, "int64", frozenset({Tags.CONTINUOUS})))
                elif agg in ("first", "last"):
                    cols.append(src.replace(name=name))
                else:
                    cols.append(ColumnSchema(name, "float64", frozenset({Tags.CONTINUOUS})))
        return Schema(cols)
