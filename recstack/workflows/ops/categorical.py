"""Categorical operators: values -> contiguous int64 codes (:data:`recstack.ids.PAD` for
null, :data:`recstack.ids.OOV` for unseen values, vocabulary from
:data:`recstack.ids.FIRST_CODE`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.ids import FIRST_CODE, OOV, PAD
from recstack.workflows.operator import Operator, register_op
from recstack.workflows.schema import ColumnSchema, Tags
from recstack.workflows.values import (
    LIST_TYPES,
    coerce_float,
    flatten_lists,
    is_list_series,
    is_null,
    reject_list,
    split_lists,
)

_UNMATCHABLE = object()  # a key that cannot be in the vocabulary (e.g. 1.5 for integer ids)


@register_op
class Categorify(Operator):
    """Encode categories as contiguous int64 codes.

    ``PAD`` (0) = null / padding, ``OOV`` (1) = out-of-vocabulary (unseen in fit, or cut by
    ``freq_threshold`` / ``max_size``), ``FIRST_CODE`` (2) on = vocabulary ordered by training
    frequency (descending, ties by value). Cardinality = vocabulary size + ``FIRST_CODE``.

    List columns (detected in fit: values are lists / arrays) are encoded element-wise;
    null / empty lists become ``[]``; ``max_length`` records the longest list seen in fit
    (transform does not truncate).

    Values are matched by the kind seen in fit: integer vocabularies accept ints,
    integral floats and numeric strings ("7"); text vocabularies compare ``str(value)``.

    freq_threshold: int or {column: int}; values seen fewer times map to ``OOV``.
    max_size: int or {column: int}; keep at most this many vocabulary values (excluding PAD/OOV).
    """

    def __init__(self, freq_threshold: int | dict[str, int] = 0,
                 max_size: int | dict[str, int] | None = None) -> None:
        super().__init__()
        self.freq_threshold = freq_threshold
        self.max_size = max_size
        self._index: dict[str, pd.Index] = {}
        self._lookup: dict[str, dict[Any, int]] = {}

    def get_config(self) -> dict[str, Any]:
        return {"freq_threshold": self.freq_threshold, "max_size": self.max_size}

    def _param(self, value: Any, column: str, default: Any) -> Any:
        if isinstance(value, dict):
            return value.get(column, default)
        return default if value is None else value

    # ---- canonical values
    @staticmethod
    def _infer_kind(values: np.ndarray) -> str:
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

    @staticmethod
    def _coerce(kind: str, value: Any, column: str) -> Any:
        """One non-null raw value -> the vocabulary's key type, or _UNMATCHABLE."""
        reject_list(value, column)
        if kind == "str":
            return value if isinstance(value, str) else str(value)
        if kind == "int":
            if isinstance(value, (bool, np.bool_, int, np.integer)):
                return int(value)
            if isinstance(value, str):
                text = value.strip()
                try:
                    return int(text)
                except ValueError:
                    try:
                        value = float(text)
                    except ValueError:
                        raise InputError(f"column {column!r}: expected an integer, got {value!r}") from None
            if isinstance(value, (float, np.floating)):
                return int(value) if math.isfinite(value) and float(value).is_integer() else _UNMATCHABLE
            raise InputError(f"column {column!r}: expected an integer, got {value!r}")
        # float vocabulary
        return coerce_float(value, column)

    def _canonical(self, kind: str, values: np.ndarray, column: str) -> tuple[np.ndarray, np.ndarray]:
        """Non-null raw values -> (keys array in the vocabulary's dtype, out-of-vocabulary mask)."""
        n = len(values)
        oov = np.zeros(n, dtype=bool)
        dk = values.dtype.kind
        if kind == "int" and dk in "iub":
            return values.astype(np.int64), oov
        if kind == "int" and dk == "f":
            integral = np.isfinite(values) & (values == np.floor(values))
            return np.where(integral, values, 0).astype(np.int64), ~integral
        if kind == "float" and dk in "iubf":
            return values.astype(np.float64), oov
        if kind == "str" and dk == "O" and pd.api.types.infer_dtype(values, skipna=False) == "string":
            return values, oov
        keys = [self._coerce(kind, v, column) for v in values]
        oov = np.fromiter((k is _UNMATCHABLE for k in keys), dtype=bool, count=n)
        if kind == "str":
            out = np.empty(n, dtype=object)
            out[:] = keys
            return out, oov
        dtype = np.int64 if kind == "int" else np.float64
        return np.array([0 if k is _UNMATCHABLE else k for k in keys], dtype=dtype), oov

    @staticmethod
    def _nonnull_mask(values: np.ndarray) -> np.ndarray:
        return ~pd.isna(values)

    # ---- fit
    def fit_column(self, column: str, series: pd.Series) -> dict[str, Any]:
        is_list = is_list_series(series)
        raw = series.to_numpy(dtype=object) if (is_list or series.dtype == object
                                                 or isinstance(series.dtype, pd.api.extensions.ExtensionDtype)) \
            else series.to_numpy()
        max_length = None
        if is_list:
            raw, offsets = flatten_lists(raw)
            max_length = int(np.diff(offsets).max()) if len(offsets) > 1 else 0
        values = raw[self._nonnull_mask(raw)]
        if values.dtype == object and len(values):
            inferred = pd.api.types.infer_dtype(values, skipna=True)
            if inferred in ("integer", "boolean"):
                values = values.astype(np.int64)
            elif inferred in ("floating", "mixed-integer-float"):
                values = values.astype(np.float64)
        kind = self._infer_kind(values)
        keys, oov = self._canonical(kind, values, column)
        keys = keys[~oov]
        vc = pd.Series(keys, dtype=object if kind == "str" else None).value_counts(sort=False)
        table = pd.DataFrame({"value": vc.index.to_numpy(), "count": vc.to_numpy(dtype=np.int64)})
        table = table.sort_values(["count", "value"], ascending=[False, True], kind="mergesort")
        threshold = int(self._param(self.freq_threshold, column, 0) or 0)
        if threshold > 0:
            table = table[table["count"] >= threshold]
        max_size = self._param(self.max_size, column, None)
        if max_size is not None:
            table = table.head(int(max_size))
        if kind == "str":
            vocab: Any = np.array(table["value"].tolist(), dtype=object)
        else:
            vocab = table["value"].to_numpy(dtype=np.int64 if kind == "int" else np.float64)
        self._index.pop(column, None)
        self._lookup.pop(column, None)
        return {
            "kind": kind,
            "vocab": vocab,
            "counts": table["count"].to_numpy(dtype=np.int64),
            "is_list": is_list,
            "max_length": max_length,
        }

    def _after_load(self) -> None:
        for st in self.stats.values():
            if st["kind"] == "str":
                vocab = np.empty(len(st["vocab"]), dtype=object)
                vocab[:] = list(st["vocab"])
                st["vocab"] = vocab
            else:
                st["vocab"] = np.asarray(st["vocab"], dtype=np.int64 if st["kind"] == "int" else np.float64)
            st["counts"] = np.asarray(st["counts"], dtype=np.int64)
        self._index = {}
        self._lookup = {}

    def vocabulary(self, column: str) -> np.ndarray:
        """Vocabulary values in code order (code = position + ``FIRST_CODE``)."""
        return self._stats(column)["vocab"]

    def cardinality(self, column: str) -> int:
        """Number of codes: vocabulary size + ``FIRST_CODE`` (PAD and OOV included)."""
        return len(self._stats(column)["vocab"]) + FIRST_CODE

    # ---- encode
    def _get_index(self, column: str) -> pd.Index:
        idx = self._index.get(column)
        if idx is None:
            vocab = self._stats(column)["vocab"]
            idx = self._index[column] = pd.Index(vocab, dtype=vocab.dtype)
        return idx

    def _get_lookup(self, column: str) -> dict[Any, int]:
        lookup = self._lookup.get(column)
        if lookup is None:
            vocab = self._stats(column)["vocab"].tolist()
            lookup = self._lookup[column] = dict(zip(vocab, range(FIRST_CODE, len(vocab) + FIRST_CODE)))
        return lookup

    def encode_array(self, column: str, values: np.ndarray) -> np.ndarray:
        """Raw scalar values (any dtype, nulls allowed) -> int64 codes."""
        st = self._stats(column)
        codes = np.full(len(values), PAD, dtype=np.int64)
        nonnull = self._nonnull_mask(values) if values.dtype.kind in "OfmMUS" else np.ones(len(values), bool)
        if not nonnull.any():
            return codes
        keys, oov = self._canonical(st["kind"], values[nonnull], column)
        pos = self._get_index(column).get_indexer(keys)
        enc = np.where(pos < 0, OOV, pos + FIRST_CODE).astype(np.int64)
        enc[oov] = OOV
        codes[nonnull] = enc
        return codes

    def encode_value(self, column: str, value: Any) -> int:
        """One raw scalar value -> its code (same rules as :meth:`encode_array`)."""
        if is_null(value):
            return PAD
        key = self._coerce(self._stats(column)["kind"], value, column)
        if key is _UNMATCHABLE:
            return OOV
        return self._get_lookup(column).get(key, OOV)

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        st = self._stats(column)
        raw = series.to_numpy(dtype=object) if (st["is_list"] or series.dtype == object or isinstance(
            series.dtype, pd.api.extensions.ExtensionDtype)) else series.to_numpy()
        if st["is_list"]:
            flat, offsets = flatten_lists(raw)
            codes = self.encode_array(column, flat)
            return pd.Series(split_lists(codes, offsets), index=series.index, dtype=object)
        return pd.Series(self.encode_array(column, raw), index=series.index, dtype=np.int64)

    def transform_value(self, column: str, value: Any) -> Any:
        if self._stats(column)["is_list"]:
            if isinstance(value, LIST_TYPES):
                return [self.encode_value(column, v) for v in value]
            if is_null(value):
                return []
            return [self.encode_value(column, value)]
        return self.encode_value(column, value)

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        st = self._stats(column.name)
        tags = {Tags.CATEGORICAL} | ({Tags.LIST} if st["is_list"] else set())
        return column.replace(dtype="int64", cardinality=self.cardinality(column.name), is_list=bool(st["is_list"]),
                              max_length=st["max_length"] if st["is_list"] else None,
                              tags=column.tags | tags)
