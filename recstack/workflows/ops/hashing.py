"""Hashing operators: categories -> ``FIRST_CODE + hash % num_buckets`` without a vocabulary
(HashBucket), and crosses of several columns (HashedCross). Null -> ``PAD``.

Hashes are stable across processes and machines: integers (and integral floats / numeric text
of an integer column) go through splitmix64; text through ``pd.util.hash_array`` (SipHash with
a fixed key). The integer path is plain uint64 arithmetic, so it also runs on CuPy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from recstack.ids import FIRST_CODE, PAD
from recstack.workflows.keys import (
    UNMATCHABLE,
    canonical,
    coerce,
    infer_kind,
    merge_kinds,
    narrow_objects,
    nonnull_mask,
    raw_values,
)
from recstack.workflows.operator import Context, Operator, register_op
from recstack.workflows.schema import ColumnSchema, Schema, Tags
from recstack.workflows.values import is_null

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: Any) -> Any:
    """uint64 ``[n]`` -> uint64 ``[n]`` (numpy or CuPy; wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        z = x + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def hash_keys(kind: str, values: np.ndarray, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw values ``[n]`` -> (uint64 hashes ``[n]``, null mask ``[n]``)."""
    mask = nonnull_mask(values)
    out = np.zeros(len(values), dtype=np.uint64)
    if not mask.any():
        return out, mask
    vals = narrow_objects(values[mask]) if kind != "str" else values[mask]
    keys, unmatched = canonical(kind, vals, column)
    if kind == "str":
        h = pd.util.hash_array(keys.astype(object), categorize=False)
    elif kind == "float":
        h = splitmix64(keys.astype(np.float64).view(np.uint64))
    else:
        h = splitmix64(keys.astype(np.int64).view(np.uint64))
    h[unmatched] = np.uint64(1)  # a fixed bucket for ids that can never be integers (7.5)
    out[mask] = h
    return out, mask


def hash_value(kind: str, value: Any, column: str) -> int | None:
    """One raw value -> its uint64 hash as int (None for null): same as :func:`hash_keys`."""
    if is_null(value):
        return None
    key = coerce(kind, value, column)
    if key is UNMATCHABLE:
        return 1
    dtype = object if kind == "str" else (np.float64 if kind == "float" else np.int64)
    h, _ = hash_keys(kind, np.array([key], dtype=dtype), column)
    return int(h[0])


class _KindOp(Operator):
    """Fit records each column's key kind (int / float / str), nothing else."""

    needs_fit = True

    def partial_column(self, column: str, series: pd.Series, ctx: Context) -> Any:
        values = narrow_objects(raw_values(series)[nonnull_mask(raw_values(series))])
        return infer_kind(values) if len(values) else ""

    def merge_column(self, column: str, partials: list[Any]) -> Any:
        return merge_kinds(partials)

    def finalize_column(self, column: str, merged: Any) -> dict[str, Any]:
        return {"kind": merged}


@register_op
class HashBucket(_KindOp):
    """``FIRST_CODE + hash(value) % num_buckets`` (int64), null -> ``PAD``; cardinality
    ``num_buckets + FIRST_CODE``. No vocabulary: unseen values get a bucket too.

    Example::

        >>> wf = Workflow(["zip"] >> HashBucket(1000)).fit(df)
        >>> wf.transform_request({"zip": "10001"})   # {"zip": 2 + stable hash % 1000}
    """

    def __init__(self, num_buckets: int | dict[str, int] = 1024) -> None:
        super().__init__()
        self.num_buckets = num_buckets

    def get_config(self) -> dict[str, Any]:
        return {"num_buckets": self.num_buckets}

    def buckets(self, column: str) -> int:
        n = self.num_buckets.get(column) if isinstance(self.num_buckets, dict) else self.num_buckets
        if not n or int(n) < 1:
            raise ValueError(f"HashBucket: no num_buckets >= 1 for column {column!r}")
        return int(n)

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        h, mask = hash_keys(self._stats(column)["kind"], raw_values(series), column)
        codes = (h % np.uint64(self.buckets(column))).astype(np.int64) + FIRST_CODE
        return pd.Series(np.where(mask, codes, PAD), index=series.index, dtype=np.int64)

    def transform_value(self, column: str, value: Any) -> int:
        h = hash_value(self._stats(column)["kind"], value, column)
        return PAD if h is None else h % self.buckets(column) + FIRST_CODE

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.replace(dtype="int64", cardinality=self.buckets(column.name) + FIRST_CODE,
                              tags=column.tags | {Tags.CATEGORICAL})


@register_op
class HashedCross(_KindOp):
    """Cross of 2+ columns hashed into ``num_buckets``: output ``"a_x_b"`` int64 codes
    ``FIRST_CODE + h % num_buckets``, PAD when any part is null.

    Example::

        >>> ["gender", "occupation"] >> HashedCross(64)   # one column "gender_x_occupation"
    """

    per_column = False

    def __init__(self, num_buckets: int = 1024) -> None:
        super().__init__()
        self.num_buckets = int(num_buckets)

    def get_config(self) -> dict[str, Any]:
        return {"num_buckets": self.num_buckets}

    def output_column_names(self, columns: Sequence[str]) -> list[str]:
        return ["_x_".join(columns)]

    def transform(self, df: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        acc = np.zeros(len(df), dtype=np.uint64)
        valid = np.ones(len(df), dtype=bool)
        for c in df.columns:
            h, mask = hash_keys(self._stats(c)["kind"], raw_values(df[c]), c)
            acc = splitmix64(acc ^ h)
            valid &= mask
        codes = (acc % np.uint64(self.num_buckets)).astype(np.int64) + FIRST_CODE
        name = self.output_column_names(list(df.columns))[0]
        return pd.DataFrame({name: np.where(valid, codes, PAD)}, index=df.index)

    def transform_row(self, values: dict[str, Any], ctx: Context) -> dict[str, Any]:
        name = self.output_column_names(list(values))[0]
        acc = np.zeros(1, dtype=np.uint64)
        for c, v in values.items():
            h = hash_value(self._stats(c)["kind"], v, c)
            if h is None:
                return {name: PAD}
            acc = splitmix64(acc ^ np.array([h], dtype=np.uint64))
        return {name: int(acc[0] % np.uint64(self.num_buckets)) + FIRST_CODE}

    def compute_output_schema(self, schema: Schema) -> Schema:
        name = self.output_column_names(schema.names)[0]
        tags = frozenset().union(*(c.tags for c in schema)) | {Tags.CATEGORICAL}
        return Schema([ColumnSchema(name, "int64", tags, cardinality=self.num_buckets + FIRST_CODE)])
