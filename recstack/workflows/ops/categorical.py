"""Categorical operators: values -> contiguous int64 codes (:data:`recstack.ids.PAD` for
null, :data:`recstack.ids.OOV` for unseen values, vocabulary from :data:`recstack.ids.FIRST_CODE`).

Fit is partial per partition (value counts of canonical keys, see :mod:`recstack.workflows.keys`)
and combined by summing counts, so any partitioning gives the same vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recstack.ids import FIRST_CODE, OOV, PAD
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
from recstack.workflows.lists import flatten, is_list_column, rebuild, row_list
from recstack.workflows.operator import Context, Operator, register_op
from recstack.workflows.schema import ColumnSchema, Schema, Tags
from recstack.workflows.values import is_null

SEP = "\x1f"  # joins the parts of a combined ("combo") key


def combo_tokens(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """One column's part of a combined key: text tokens ``[n]`` (ints without ".0") + null mask."""
    values = raw_values(series)
    mask = nonnull_mask(values)
    out = np.empty(len(values), dtype=object)
    if values.dtype.kind in "iub":
        out[:] = values.astype(np.int64).astype(str)
    else:
        out[:] = [combo_token(v) for v in values.tolist()]
    return out, mask


def combo_token(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return str(value)




@register_op
class Categorify(Operator):
    """Encode categories as contiguous int64 codes.

    ``PAD`` (0) = null / padding, ``OOV`` (1) = out-of-vocabulary (unseen in fit, or cut by
    ``freq_threshold`` / ``max_size``), ``FIRST_CODE`` (2) on = vocabulary ordered by training
    frequency (descending, ties by value). Cardinality = vocabulary size + ``FIRST_CODE``.

    List columns (object lists or Arrow ``list<>``) are encoded element-wise; null / empty
    lists become ``[]``; ``max_length`` is the longest list seen in fit.

    encode_type: ``"single"`` (each column its own vocabulary), ``"joint"`` (all input columns
    share one vocabulary: e.g. item ids and history items), ``"combo"`` (the columns together
    are one category, output column ``"a_b"``; null in any part -> PAD).

    Example::

        >>> wf = Workflow(["c"] >> Categorify()).fit(pd.DataFrame({"c": ["b", "a", "b"]}))
        >>> wf.transform(pd.DataFrame({"c": ["b", "a", "z", None]}))["c"].tolist()
        [2, 3, 1, 0]
    """

    needs_fit = True

    def __init__(self, freq_threshold: int | dict[str, int] = 0, max_size: int | dict[str, int] | None = None,
                 encode_type: str = "single") -> None:
        super().__init__()
        if encode_type not in ("single", "joint", "combo"):
            raise ValueError(f"Categorify: encode_type must be single, joint or combo, got {encode_type!r}")
        self.freq_threshold = freq_threshold
        self.max_size = max_size
        self.encode_type = encode_type
        self._index: dict[str, KeyIndex] = {}

    @property
    def per_column(self) -> bool:  # type: ignore[override]
        return self.encode_type == "single"

    def get_config(self) -> dict[str, Any]:
        return {"freq_threshold": self.freq_threshold, "max_size": self.max_size, "encode_type": self.encode_type}

    def _param(self, value: Any, column: str, default: Any) -> Any:
        if isinstance(value, dict):
            return value.get(column, default)
        return default if value is None else value

    def output_column_names(self, columns: Sequence[str]) -> list[str]:
        return ["_".join(columns)] if self.encode_type == "combo" else list(columns)

    # ---- fit
    def fit_partial(self, df: pd.DataFrame, ctx: Context) -> Any:
        if self.encode_type == "combo":
            keys = self._combo_keys(df)
            return {self.output_column_names(list(df.columns))[0]: dict(
                zip(("keys", "counts"), count_keys("str", keys[keys != None])),  # noqa: E711
                kind="str", is_list=False, max_length=None)}
        return {c: self._partial_column(df[c]) for c in df.columns}

    def _partial_column(self, series: pd.Series) -> dict[str, Any]:
        is_list = is_list_column(series)
        max_length = None
        if is_list:
            raw, offsets = flatten(series)
            max_length = int(np.diff(offsets).max()) if len(offsets) > 1 else 0
        else:
            raw = raw_values(series)
        present = nonnull_mask(raw)
        values = narrow_objects(raw if present.all() else raw[present])
        kind = infer_kind(values) if len(values) else ""
        keys, unmatched = canonical(kind or "int", values, series.name)
        keys, counts = count_keys(kind or "int", keys[~unmatched] if unmatched.any() else keys)
        return {"kind": kind, "keys": keys, "counts": counts, "is_list": is_list, "max_length": max_length}

    def merge_partials(self, partials: list[Any]) -> Any:
        merged = super().merge_partials(partials)
        if self.encode_type == "joint":
            shared = self.merge_column("", list(merged.values()))
            return {c: shared for c in merged}
        return merged

    def merge_column(self, column: str, partials: list[Any]) -> Any:
        kind = merge_kinds([p["kind"] for p in partials])
        keys = [convert_keys(np.asarray(p["keys"]), p["kind"] or kind, kind) for p in partials]
        counts = pd.Series(np.concatenate([p["counts"] for p in partials]),
                           index=pd.Index(np.concatenate(keys) if keys else [], dtype=object if kind == "str" else None))
        counts = counts.groupby(level=0, sort=False).sum()
        lengths = [p["max_length"] for p in partials if p["max_length"] is not None]
        return {"kind": kind, "keys": counts.index.to_numpy(), "counts": counts.to_numpy(dtype=np.int64),
                "is_list": any(p["is_list"] for p in partials), "max_length": max(lengths) if lengths else None}

    def finalize_column(self, column: str, merged: Any) -> dict[str, Any]:
        kind = merged["kind"]
        table = pd.DataFrame({"value": merged["keys"], "count": merged["counts"]})
        table = table.sort_values(["count", "value"], ascending=[False, True], kind="mergesort")
        threshold = int(self._param(self.freq_threshold, column, 0) or 0)
        if threshold > 0:
            table = table[table["count"] >= threshold]
        max_size = self._param(self.max_size, column, None)
        if max_size is not None:
            table = table.head(int(max_size))
        self._index.pop(column, None)
        return {"kind": kind, "vocab": as_key_array(kind, table["value"].tolist() if kind == "str" else table["value"]),
                "counts": table["count"].to_numpy(dtype=np.int64), "is_list": bool(merged["is_list"]),
                "max_length": merged["max_length"]}

    def _after_load(self) -> None:
        for st in self.stats.values():
            st["vocab"] = as_key_array(st["kind"], st["vocab"])
            st["counts"] = np.asarray(st["counts"], dtype=np.int64)
        self._index = {}

    def vocabulary(self, column: str) -> np.ndarray:
        """Vocabulary values in code order (code = position + ``FIRST_CODE``)."""
        return self._stats(column)["vocab"]

    def cardinality(self, column: str) -> int:
        """Number of codes: vocabulary size + ``FIRST_CODE`` (PAD and OOV included)."""
        return len(self._stats(column)["vocab"]) + FIRST_CODE

    # ---- encode
    def key_index(self, column: str) -> KeyIndex:
        idx = self._index.get(column)
        if idx is None:
            st = self._stats(column)
            idx = self._index[column] = KeyIndex(st["kind"], st["vocab"])
        return idx

    def encode_array(self, column: str, values: np.ndarray) -> np.ndarray:
        """Raw scalar values ``[n]`` (any dtype, nulls allowed) -> int64 codes ``[n]``."""
        codes = self.key_index(column).positions(values, column)
        codes += FIRST_CODE  # in place: position -1 (unknown) becomes OOV
        if values.dtype.kind not in "iub":
            codes[~nonnull_mask(values)] = PAD
        return codes

    def encode_value(self, column: str, value: Any) -> int:
        """One raw scalar value -> its code (same rules as :meth:`encode_array`)."""
        if is_null(value):
            return PAD
        pos = self.key_index(column).position(value, column)
        return OOV if pos < 0 else pos + FIRST_CODE

    def _combo_keys(self, df: pd.DataFrame) -> np.ndarray:
        tokens = [combo_tokens(df[c]) for c in df.columns]
        valid = np.logical_and.reduce([m for _, m in tokens])
        keys = np.empty(len(df), dtype=object)
        if valid.any():
            joined = tokens[0][0][valid]
            for t, _ in tokens[1:]:
                joined = joined + SEP + t[valid]
            keys[valid] = joined
        return keys

    def transform(self, df: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        if self.encode_type == "combo":
            name = self.output_column_names(list(df.columns))[0]
            keys = self._combo_keys(df)
            return pd.DataFrame({name: self.encode_array(name, keys)}, index=df.index)
        return pd.DataFrame({c: self.transform_column(c, df[c]) for c in df.columns}, index=df.index)

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        if self._stats(column)["is_list"]:
            flat, offsets = flatten(series)
            return rebuild(series, self.encode_array(column, flat), offsets, pa.int64())
        return pd.Series(self.encode_array(column, raw_values(series)), index=series.index, dtype=np.int64)

    def transform_row(self, values: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if self.encode_type == "combo":
            name = self.output_column_names(list(values))[0]
            parts = list(values.values())
            if any(is_null(v) for v in parts):
                return {name: PAD}
            return {name: self.encode_value(name, SEP.join(combo_token(v) for v in parts))}
        return {c: self.transform_value(c, v) for c, v in values.items()}

    def transform_value(self, column: str, value: Any) -> Any:
        if self._stats(column)["is_list"]:
            return [self.encode_value(column, v) for v in row_list(value)]
        return self.encode_value(column, value)

    def compute_output_schema(self, schema: Schema) -> Schema:
        if self.encode_type == "combo":
            name = self.output_column_names(schema.names)[0]
            tags = frozenset().union(*(c.tags for c in schema)) | {Tags.CATEGORICAL}
            return Schema([ColumnSchema(name, "int64", tags, cardinality=self.cardinality(name))])
        return super().compute_output_schema(schema)

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        st = self._stats(column.name)
        tags = {Tags.CATEGORICAL} | ({Tags.LIST} if st["is_list"] else set())
        return column.replace(dtype="int64", cardinality=self.cardinality(column.name), is_list=bool(st["is_list"]),
                              max_length=st["max_length"] if st["is_list"] else None,
                              tags=column.tags | tags)
