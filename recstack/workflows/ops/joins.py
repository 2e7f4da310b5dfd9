"""Join operators: per-key statistics of the training rows (JoinGroupby: item popularity, user
activity, a user's mean rating) and columns of an external table (JoinExternal).

Both keep their table in the saved statistics (keys + value arrays), so a loaded workflow
needs nothing else; a key that is null or unseen gets count 0 and NaN statistics / nulls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.workflows.keys import (
    KeyIndex,
    as_key_array,
    canonical,
    convert_keys,
    count_keys,
    infer_kind,
    merge_kinds,
    narrow_objects,
    nonnull_mask,
    raw_values,
)
from recstack.workflows.operator import Context, Operator, register_op
from recstack.workflows.schema import ColumnSchema, Schema, Tags
from recstack.workflows.values import to_float_array

STATS = ("count", "sum", "mean", "min", "max", "std")


@register_op
class JoinGroupby(Operator):
    """For each key column: ``<key>_count`` (int64 rows per key in fit) and, for each of
    ``cont_cols`` and each of ``stats`` other than count, ``<key>_<col>_<stat>`` (float32).

    Only the key is read at transform time. Example::

        >>> ["item_id"] >> JoinGroupby(cont_cols=["rating"], stats=["count", "mean"])
        # -> item_id_count, item_id_rating_mean
    """

    needs_fit = True

    def __init__(self, cont_cols: Sequence[str] = (), stats: Sequence[str] = ("count",)) -> None:
        super().__init__()
        bad = [s for s in stats if s not in STATS]
        if bad:
            raise ValueError(f"JoinGroupby: unknown stats {bad}; known: {list(STATS)}")
        self.cont_cols, self.stat_names = list(cont_cols), list(stats)
        self._index: dict[str, KeyIndex] = {}

    def get_config(self) -> dict[str, Any]:
        return {"cont_cols": self.cont_cols, "stats": self.stat_names}

    def dependencies(self) -> list[str]:
        return list(self.cont_cols)

    def _names(self, key: str) -> list[str]:
        names = [f"{key}_count"] if "count" in self.stat_names else []
        return names + [f"{key}_{c}_{s}" for c in self.cont_cols for s in self.stat_names if s != "count"]

    def output_column_names(self, columns: Sequence[str]) -> list[str]:
        return [n for c in columns for n in self._names(c)]

    def column_dependencies(self, columns: Sequence[str]) -> dict[str, list[str]]:
        return {n: [c] for c in columns for n in self._names(c)}

    def fit_partial(self, df: pd.DataFrame, ctx: Context) -> Any:
        out = {}
        for key in df.columns:
            values = raw_values(df[key])
            ok = nonnull_mask(values)
            vals = narrow_objects(values if ok.all() else values[ok])
            kind = infer_kind(vals) if len(vals) else ""
            keys, unmatched = canonical(kind or "int", vals, key)
            if not self.cont_cols:  # counts only: one count, no frame to filter and group
                distinct, counts = count_keys(kind or "int", keys[~unmatched] if unmatched.any() else keys)
                out[key] = {"kind": kind, "agg": pd.DataFrame({"_n": counts}, index=pd.Index(distinct, name="key"))}
                continue
            frame = pd.DataFrame({"key": keys}).assign(_n=1)
            for c in self.cont_cols:
                x = to_float_array(ctx.raw[c], c, "float64")[ok]
                frame[f"{c}:sum"], frame[f"{c}:sq"] = x, x * x
                frame[f"{c}:min"], frame[f"{c}:max"], frame[f"{c}:n"] = x, x, ~np.isnan(x)
            frame = frame[~unmatched]
            how = {"sum": "sum", "sq": "sum", "n": "sum", "min": "min", "max": "max"}
            aggs = {"_n": "sum", **{col: how[col.split(":")[1]] for col in frame.columns if ":" in col}}
            out[key] = {"kind": kind, "agg": frame.groupby("key", sort=False).agg(aggs)}
        return out

    def merge_column(self, column: str, partials: list[Any]) -> Any:
        kind = merge_kinds([p["kind"] for p in partials])
        frames = []
        for p in partials:
            agg = p["agg"]
            frames.append(agg.set_axis(convert_keys(agg.index.to_numpy(), p["kind"] or kind, kind), axis=0))
        both = pd.concat(frames)
        aggs = {c: ("min" if c.endswith(":min") else "max" if c.endswith(":max") else "sum") for c in both.columns}
        return {"kind": kind, "agg": both.groupby(level=0, sort=True).agg(aggs)}

    def finalize_column(self, column: str, merged: Any) -> dict[str, Any]:
        agg, kind = merged["agg"], merged["kind"]
        n = agg["_n"].to_numpy(np.int64)
        stats: dict[str, Any] = {"kind": kind, "keys": as_key_array(kind, agg.index.tolist()), "count": n}
        for c in self.cont_cols:
            cnt = agg[f"{c}:n"].to_numpy(np.float64)
            s = agg[f"{c}:sum"].to_numpy(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(cnt > 0, s / cnt, np.nan)
                var = np.where(cnt > 0, agg[f"{c}:sq"].to_numpy(np.float64) / cnt - mean * mean, np.nan)
            values = {"sum": s, "mean": mean, "min": agg[f"{c}:min"].to_numpy(np.float64),
                      "max": agg[f"{c}:max"].to_numpy(np.float64), "std": np.sqrt(np.maximum(var, 0.0))}
            for stat in self.stat_names:
                if stat != "count":
                    stats[f"{c}_{stat}"] = values[stat].astype(np.float32)
        self._index.pop(column, None)
        return stats

    def _after_load(self) -> None:
        for st in self.stats.values():
            st["keys"] = as_key_array(st["kind"], st["keys"])
        self._index = {}

    def _lookup(self, key: str, pos: np.ndarray) -> dict[str, np.ndarray]:
        st = self._stats(key)
        known = pos >= 0
        p = np.where(known, pos, 0)
        out: dict[str, np.ndarray] = {}
        names = iter(self._names(key))
        if "count" in self.stat_names:
            counts = st["count"][p] if len(st["count"]) else np.zeros(len(p), np.int64)
            out[next(names)] = np.where(known, counts, 0).astype(np.int64, copy=False)
        for c in self.cont_cols:
            for stat in self.stat_names:
                if stat != "count":
                    arr = st[f"{c}_{stat}"]
                    vals = arr[p] if len(arr) else np.zeros(len(p), np.float32)
                    out[next(names)] = np.where(known, vals, np.float32(np.nan)).astype(np.float32)
        return out

    def _key_index(self, key: str) -> KeyIndex:
        if key not in self._index:
            st = self._stats(key)
            self._index[key] = KeyIndex(st["kind"], st["keys"])
        return self._index[key]

    def transform(self, df: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        out: dict[str, np.ndarray] = {}
        for key in df.columns:
            out.update(self._lookup(key, self._key_index(key).positions(raw_values(df[key]), key)))
        return pd.DataFrame(out, index=df.index)

    def transform_row(self, values: dict[str, Any], ctx: Context) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, v in values.items():
            looked = self._lookup(key, np.array([self._key_index(key).position(v, key)]))
            out.update({n: a[0].item() for n, a in looked.items()})
        return out

    def compute_output_schema(self, schema: Schema) -> Schema:
        cols = []
        for col in schema:
            side = col.tags & {Tags.USER, Tags.ITEM}
            for name in self._names(col.name):
                dtype = "int64" if name.endswith("_count") and name == f"{col.name}_count" else "float32"
                cols.append(ColumnSchema(name, dtype, side | {Tags.CONTINUOUS}))
        return Schema(cols)


@register_op
class JoinExternal(Operator):
    """Columns of an external table joined on the input key column (left join): outputs the
    ``columns`` of ``table`` (a DataFrame or a parquet path) for each row's key, null where the
    key is unknown. The table is copied into the saved workflow.

    Example::

        >>> ["item_id"] >> JoinExternal(items_df, on="item_id", columns=["brand", "price"])
    """

    def __init__(self, table: pd.DataFrame | str | Path | None = None, on: str = "", columns: Sequence[str] = ()) -> None:
        super().__init__()
        self.on, self.columns = on, list(columns)
        if table is not None:
            df = pd.read_parquet(table) if isinstance(table, (str, Path)) else table
            missing = [c for c in [on, *self.columns] if c not in df.columns]
            if missing:
                raise InputError(f"JoinExternal: the external table has no column {missing[0]!r}")
            df = df.drop_duplicates(subset=[on], keep="first")
            keys = narrow_objects(raw_values(df[on]))
            kind = infer_kind(keys[nonnull_mask(keys)])
            keys, _ = canonical(kind, keys, on)
            self.stats = {"kind": kind, "keys": keys,
                          "values": {c: raw_values(df[c]) for c in self.columns}}
        self._index: KeyIndex | None = None

    def get_config(self) -> dict[str, Any]:
        return {"on": self.on, "columns": self.columns}

    def output_column_names(self, columns: Sequence[str]) -> list[str]:
        return list(self.columns)

    def column_dependencies(self, columns: Sequence[str]) -> dict[str, list[str]]:
        return {c: list(columns) for c in self.columns}

    def _after_load(self) -> None:
        self.stats["keys"] = as_key_array(self.stats["kind"], self.stats["keys"])
        self.stats["values"] = {c: (np.array(v, dtype=object) if isinstance(v, list) else v)
                                for c, v in self.stats["values"].items()}

    def _positions(self, values: np.ndarray, column: str) -> np.ndarray:
        if self._index is None:
            self._index = KeyIndex(self.stats["kind"], self.stats["keys"])
        return self._index.positions(values, column)

    def _take(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for c in self.columns:
            src = self.stats["values"][c]
            taken = src[np.where(pos >= 0, pos, 0)] if len(src) else np.zeros(len(pos), src.dtype)
            if src.dtype.kind == "f":
                out[c] = np.where(pos >= 0, taken, np.nan).astype(src.dtype)
            else:
                taken = taken.astype(object)
                taken[pos < 0] = None
                out[c] = taken
        return out

    def transform(self, df: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        col = df.columns[0]
        return pd.DataFrame(self._take(self._positions(raw_values(df[col]), col)), index=df.index)

    def transform_row(self, values: dict[str, Any], ctx: Context) -> dict[str, Any]:
        col, value = next(iter(values.items()))
        pos = self._positions(np.array([value], dtype=object), col)
        return {c: (v[0].item() if isinstance(v[0], np.generic) else v[0]) for c, v in self._take(pos).items()}

    def compute_output_schema(self, schema: Schema) -> Schema:
        from recstack.workflows.values import element_dtype

        return Schema(ColumnSchema(c, element_dtype(pd.Series(self.stats["values"][c][:1000]))) for c in self.columns)
