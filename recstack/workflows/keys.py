"""Category keys shared by every op that looks values up (Categorify, HashBucket, TargetEncoding,
JoinGroupby, JoinExternal, DifferenceLag): one canonical key type per column, the same on the
batch path and on one request.

A column's *kind* is fixed in fit: ``"int"`` (ints, bools, integral floats: ids), ``"float"`` or
``"str"``. Values are matched by kind: an ``int`` column accepts ``7``, ``7.0``, ``"7"``
(``7.5`` can never match, so it is out of vocabulary); a ``str`` column compares ``str(value)``.

    >>> kind = infer_kind(np.array([3, 7, 7]))            # "int"
    >>> keys, unmatched = canonical(kind, np.array([7.0, 7.5]), "user_id")
    >>> keys.tolist(), unmatched.tolist()
    ([7, 0], [False, True])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.workflows.values import coerce_float, reject_list

#: A key that cannot be in any vocabulary (e.g. 1.5 for integer ids).
UNMATCHABLE = object()
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
"""Integer keys are int64: a raw integer outside this range matches no key (OOV), it is not an error."""
KINDS = ("int", "float", "str")


def raw_values(series: pd.Series) -> np.ndarray:
    """A column as a numpy array: numeric dtypes as they are, everything else as objects."""
    dtype = series.dtype
    if isinstance(dtype, pd.api.extensions.ExtensionDtype) or dtype == object:
        if pd.api.types.is_integer_dtype(dtype) and not series.hasnans:
            return series.to_numpy(dtype=np.int64)
        if pd.api.types.is_float_dtype(dtype):
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        return series.to_numpy(dtype=object)
    return series.to_numpy()


def nonnull_mask(values: np.ndarray) -> np.ndarray:
    """True where a value is not None / NaN / NaT / pd.NA."""
    if values.dtype.kind in "iub":
        return np.ones(len(values), dtype=bool)
    return ~pd.isna(values)


def narrow_objects(values: np.ndarray) -> np.ndarray:
    """Object arrays of only ints / floats -> int64 / float64 arrays (nulls already removed)."""
    if values.dtype == object and len(values):
        inferred = pd.api.types.infer_dtype(values, skipna=True)
        if inferred in ("integer", "boolean"):
            try:
                return values.astype(np.int64)
            except OverflowError:  # an int beyond int64: left to coerce(), which makes it OOV
                return values
        if inferred in ("floating", "mixed-integer-float"):
            return values.astype(np.float64)
    return values


def _int_key(value: int) -> Any:
    return value if INT64_MIN <= value <= INT64_MAX else UNMATCHABLE


def infer_kind(values: np.ndarray) -> str:
    """Kind of non-null values: "int", "float" or "str"."""
    dtype = values.dtype
    if dtype.kind in "iub":
        return "int"
    if dtype.kind == "f":
        finite = values[np.isfinite(values)]
        return "int" if np.all(finite == np.floor(finite)) else "float"
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    if inferred in ("integer", "boolean"):
        return "int"
    if inferred in ("floating", "mixed-integer-float"):
        vals = np.asarray(values, dtype=np.float64)
        return "int" if np.all(vals == np.floor(vals)) else "float"
    return "str"


def merge_kinds(kinds: list[str]) -> str:
    """The kind of a column whose partitions were fitted separately: str > float > int."""
    present = [k for k in kinds if k]
    if not present:  # only nulls in fit: an empty vocabulary, where any value is unknown
        return "str"
    return max(present, key=KINDS.index)


def coerce(kind: str, value: Any, column: str) -> Any:
    """One non-null raw value -> the key type of ``kind``, or :data:`UNMATCHABLE`."""
    reject_list(value, column)
    if kind == "str":
        return value if isinstance(value, str) else str(value)
    if kind == "int":
        if isinstance(value, (bool, np.bool_, int, np.integer)):
            return _int_key(int(value))
        if isinstance(value, str):
            text = value.strip()
            try:
                return _int_key(int(text))
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    raise InputError(f"column {column!r}: expected an integer, got {value!r}") from None
        if isinstance(value, (float, np.floating)):
            return _int_key(int(value)) if math.isfinite(value) and float(value).is_integer() else UNMATCHABLE
        raise InputError(f"column {column!r}: expected an integer, got {value!r}")
    return coerce_float(value, column)


def canonical(kind: str, values: np.ndarray, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Non-null raw values ``[n]`` -> (keys ``[n]`` int64 / float64 / object, unmatchable mask ``[n]``)."""
    n = len(values)
    unmatched = np.zeros(n, dtype=bool)
    dk = values.dtype.kind
    if kind == "int" and dk in "iub":
        return values.astype(np.int64, copy=False), unmatched
    if kind == "int" and dk == "f":
        # 2**63 as a float is past int64 (the cast would wrap): such values are OOV too
        integral = np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) < 2.0 ** 63)
        return np.where(integral, values, 0).astype(np.int64), ~integral
    if kind == "float" and dk in "iubf":
        return values.astype(np.float64, copy=False), unmatched
    if kind == "str" and dk == "O" and pd.api.types.infer_dtype(values, skipna=False) == "string":
        return values, unmatched
    if kind == "str" and dk in "iub":
        return values.astype(str).astype(object), unmatched
    keys = [coerce(kind, v, column) for v in values]
    unmatched = np.fromiter((k is UNMATCHABLE for k in keys), dtype=bool, count=n)
    if kind == "str":
        out = np.empty(n, dtype=object)
        out[:] = keys
        return out, unmatched
    dtype = np.int64 if kind == "int" else np.float64
    return np.array([0 if k is UNMATCHABLE else k for k in keys], dtype=dtype), unmatched


BINCOUNT_MAX_SPAN = 1 << 26
"""Non-negative integer keys up to this value (and up to 4x the row count) are counted with
``np.bincount``: no hash table, and a fraction of ``value_counts``' transient memory (which
costs ~26 bytes a row on int64 columns)."""


def count_keys(kind: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``keys`` and their counts (in no particular order)."""
    if kind != "str" and keys.dtype.kind in "iu" and len(keys):
        lo, hi = int(keys.min()), int(keys.max())
        if lo >= 0 and hi < min(BINCOUNT_MAX_SPAN, 4 * len(keys) + 1024):
            counts = np.bincount(keys)
            present = np.flatnonzero(counts)
            return present.astype(keys.dtype), counts[present].astype(np.int64)
    vc = pd.Series(keys, dtype=object if kind == "str" else None).value_counts(sort=False)
    return vc.index.to_numpy(), vc.to_numpy(dtype=np.int64)


def key_dtype(kind: str) -> Any:
    return object if kind == "str" else (np.int64 if kind == "int" else np.float64)


def as_key_array(kind: str, values: Any) -> np.ndarray:
    """Saved keys (a list from JSON or an array from .npy) -> the array type of ``kind``."""
    if kind == "str":
        out = np.empty(len(values), dtype=object)
        out[:] = [str(v) for v in values]
        return out
    return np.asarray(values, dtype=key_dtype(kind))


def convert_keys(keys: np.ndarray, from_kind: str, to_kind: str) -> np.ndarray:
    """Keys of one partition re-keyed to the merged kind (int -> float -> str)."""
    if from_kind == to_kind:
        return keys
    if to_kind == "float":
        return keys.astype(np.float64)
    return np.array([str(k) for k in keys.tolist()], dtype=object)


class KeyIndex:
    """Position lookup in a key array, vectorised (``pd.Index``) and for one value (dict)."""

    def __init__(self, kind: str, keys: np.ndarray) -> None:
        self.kind = kind
        self.keys = keys
        self._index = pd.Index(keys, dtype=keys.dtype)
        self._dict: dict[Any, int] | None = None
        self._table = self._dense_table(kind, keys)

    @staticmethod
    def _dense_table(kind: str, keys: np.ndarray) -> np.ndarray | None:
        """``table[key] = position`` (-1: absent) for non-negative int keys of a compact range (ids
        numbered from 0 or 1): one gather per row instead of a hash lookup, at a few times the
        key array's memory; None for anything else."""
        if kind != "int" or not len(keys) or int(keys.min()) < 0 or int(keys.max()) > 8 * len(keys) + 1024:
            return None
        table = np.full(int(keys.max()) + 1, -1, dtype=np.int64)
        table[keys] = np.arange(len(keys), dtype=np.int64)
        return table

    def positions(self, values: np.ndarray, column: str) -> np.ndarray:
        """Raw values ``[n]`` (nulls allowed) -> int64 positions, -1 for null / unknown."""
        if self._table is not None and values.dtype.kind in "iu":
            top = len(self._table) - 1
            found = self._table[np.clip(values, 0, top)]
            outside = (values < 0) | (values > top)
            if outside.any():
                found[outside] = -1
            return found
        pos = np.full(len(values), -1, dtype=np.int64)
        mask = nonnull_mask(values)
        if not mask.any():
            return pos
        vals = values if mask.all() else values[mask]
        keys, unmatched = canonical(self.kind, narrow_objects(vals) if self.kind != "str" else vals, column)
        found = self._index.get_indexer(keys).astype(np.int64)
        found[unmatched] = -1
        pos[mask] = found
        return pos

    def position(self, value: Any, column: str) -> int:
        """One raw value -> position, -1 for null / unknown."""
        from recstack.workflows.values import is_null

        if is_null(value):
            return -1
        key = coerce(self.kind, value, column)
        if key is UNMATCHABLE:
            return -1
        if self._dict is None:
            self._dict = dict(zip(self.keys.tolist(), range(len(self.keys))))
        return self._dict.get(key, -1)
