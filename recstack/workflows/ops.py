"""Workflow operators (NVTabular style) and the ``>>`` / ``+`` graph that chains them.

Every operator works three ways with identical results:

* ``fit(df)``: collect statistics from a pandas frame (the training split);
* ``transform(df)``: DataFrame -> DataFrame, vectorised (the batch / training path);
* ``transform_row(values)``: one request's raw Python values -> encoded Python values,
  without building a DataFrame (the serving path).

It also says what it does to the schema (``compute_column_schema``) and how it is saved
(``to_dict``: JSON-able config + statistics in which numeric ``np.ndarray`` values are
written as ``.npy`` files by the Workflow; no pickle anywhere).

Composition::

    user_cat = ["gender", "occupation"] >> Categorify() >> AddTags(Tags.USER)
    user_cont = ["age"] >> FillMissing() >> Normalize() >> AddTags(Tags.USER)
    workflow = Workflow(user_cat + user_cont + (["rating"] >> AddTags(Tags.TARGET)))

A group followed by an op (``(a + b) >> Op()``) applies the op to every member's columns.
The ops here are per-column: one instance keeps its statistics in ``stats[column]``.
New ops subclass :class:`Operator`, override the ``*_column`` / ``*_value`` hooks (or the
frame / row methods for multi-column ops) and register with :func:`register_op`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.workflows.schema import ColumnSchema, Tags, as_tag

OP_REGISTRY: dict[str, type["Operator"]] = {}


def register_op(cls: type["Operator"]) -> type["Operator"]:
    """Class decorator: make an operator loadable by name from ``workflow.json``."""
    OP_REGISTRY[cls.__name__] = cls
    return cls


# --------------------------------------------------------------------------- value helpers

_LIST_TYPES = (list, tuple, np.ndarray)


def is_null(value: Any) -> bool:
    """None, NaN, pd.NA and NaT are null; list-likes never are."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(value != value)
    return False


def is_list_series(series: pd.Series) -> bool:
    """An object column whose first non-null value is a list / tuple / array."""
    if series.dtype != object:
        return False
    for value in series:
        if isinstance(value, _LIST_TYPES):
            return True
        if not is_null(value):
            return False
    return False


def element_dtype(values: np.ndarray | pd.Series) -> str:
    """A dtype name for the schema: numpy dtypes by name, text as "str"."""
    dtype = values.dtype
    if dtype == object or isinstance(dtype, pd.StringDtype):
        inferred = pd.api.types.infer_dtype(values, skipna=True)
        return {"integer": "int64", "floating": "float64", "mixed-integer-float": "float64",
                "boolean": "bool"}.get(inferred, "str")
    if isinstance(dtype, pd.api.extensions.ExtensionDtype):
        return str(np.dtype(dtype.numpy_dtype)) if hasattr(dtype, "numpy_dtype") else str(dtype)
    return str(dtype)


def infer_column_schema(name: str, series: pd.Series) -> ColumnSchema:
    """Schema of a raw input column (dtype, list flag)."""
    if is_list_series(series):
        flat, _ = flatten_lists(series.to_numpy(dtype=object))
        return ColumnSchema(name, element_dtype(flat), is_list=True)
    return ColumnSchema(name, element_dtype(series))


def flatten_lists(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Row values of a list column -> (flat object array, offsets [n+1]).

    Null -> empty list; a scalar -> one-element list (same rule as the row path).
    """
    n = len(values)
    lengths = np.zeros(n, dtype=np.int64)
    parts: list[Any] = []
    for i, value in enumerate(values):
        if isinstance(value, _LIST_TYPES):
            part = value
        elif is_null(value):
            continue
        else:
            part = (value,)
        lengths[i] = len(part)
        parts.append(part)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    flat = np.fromiter(itertools.chain.from_iterable(parts), dtype=object, count=total)
    return flat, offsets


def split_lists(codes: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    """Inverse of :func:`flatten_lists` for encoded codes: Python lists of ints per row."""
    flat = codes.tolist()
    bounds = offsets.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _reject_list(value: Any, column: str) -> None:
    if isinstance(value, _LIST_TYPES):
        raise InputError(f"column {column!r}: expected a single value, got a list")


def coerce_float(value: Any, column: str) -> float:
    """A raw request value -> float (NaN when null); text must parse as a number."""
    if is_null(value):
        return math.nan
    _reject_list(value, column)
    if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise InputError(f"column {column!r}: expected a number, got {value!r}")


def to_float_array(series: pd.Series, column: str, dtype: str) -> np.ndarray:
    """A column -> float64 array, values first rounded to ``dtype`` (the dtype seen in fit)."""
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        arr = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        arr = np.fromiter((coerce_float(v, column) for v in series.to_numpy(dtype=object)),
                          dtype=np.float64, count=len(series))
    if dtype == "float32":
        arr = arr.astype(np.float32).astype(np.float64)
    return arr


def round_float(value: float, dtype: str) -> float:
    return float(np.float32(value)) if dtype == "float32" else float(value)


def value_dtype_of(series: pd.Series) -> str:
    """float32 columns keep float32 rounding; everything else computes in float64."""
    return "float32" if series.dtype == np.float32 else "float64"


# --------------------------------------------------------------------------- graph


class _Composable:
    """``>> Operator`` applies an op; ``+`` joins outputs side by side (shared by Node and Group)."""

    def __rshift__(self, op: "Operator") -> "Node":
        if not isinstance(op, Operator):
            return NotImplemented
        return Node(parent=self, op=op)

    def __add__(self, other: Any) -> "Group":
        return Group([self, Node.of(other)])

    def __radd__(self, other: Any) -> "Group":
        return Group([Node.of(other), self])


class Node(_Composable):
    """A column selection, or an operator applied to a parent node / group."""

    def __init__(self, columns: Sequence[str] | None = None, parent: "Node | Group | None" = None,
                 op: "Operator | None" = None) -> None:
        if (columns is None) == (parent is None):
            raise ValueError("a Node has either columns or a parent")
        self.columns = list(columns) if columns is not None else None
        self.parent = parent
        self.op = op

    @staticmethod
    def of(value: Any) -> "Node | Group":
        if isinstance(value, (Node, Group)):
            return value
        if isinstance(value, str):
            return Node([value])
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            if not value:
                raise ValueError("empty column selection")
            return Node(list(value))
        if isinstance(value, (list, tuple)):
            return Group([Node.of(v) for v in value])
        raise TypeError(f"cannot select columns from {value!r}")

    def chains(self) -> list[tuple[tuple[str, ...], tuple["Operator", ...]]]:
        """Flatten to (input columns, ops in order) chains."""
        if self.columns is not None:
            return [(tuple(self.columns), ())]
        assert self.parent is not None and self.op is not None
        return [(cols, ops + (self.op,)) for cols, ops in self.parent.chains()]

    def __repr__(self) -> str:
        if self.columns is not None:
            return f"{self.columns!r}"
        return f"{self.parent!r} >> {self.op!r}"


class Group(_Composable):
    """Nodes joined with ``+``: their outputs side by side."""

    def __init__(self, members: Iterable["Node | Group"]) -> None:
        self.members: list[Node] = []
        for m in members:
            self.members.extend(m.members if isinstance(m, Group) else [m])

    def chains(self) -> list[tuple[tuple[str, ...], tuple["Operator", ...]]]:
        return [chain for m in self.members for chain in m.chains()]

    def __repr__(self) -> str:
        return " + ".join(f"({m!r})" for m in self.members)


# --------------------------------------------------------------------------- operators


class Operator:
    """Base class: a per-column op with statistics in ``self.stats[column]``."""

    #: True when the op only changes the schema (tags), never values.
    schema_only: ClassVar[bool] = False
    #: True when each column is handled on its own (the Workflow then splits multi-column
    #: chains per column, so a request with some of the columns still gets those encoded).
    #: Ops that combine columns (crosses, joins, group-bys) set this to False.
    per_column: ClassVar[bool] = True

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, Any]] = {}

    # composition: ["a", "b"] >> Op()
    def __rrshift__(self, other: Any) -> Node:
        return Node(parent=Node.of(other), op=self)

    # ---- fit
    def fit(self, df: pd.DataFrame) -> None:
        """Collect statistics for every column of ``df`` (other columns' stats are kept)."""
        for col in df.columns:
            self.stats[col] = self.fit_column(col, df[col])

    def fit_column(self, column: str, series: pd.Series) -> dict[str, Any]:
        return {}

    def _stats(self, column: str) -> dict[str, Any]:
        try:
            return self.stats[column]
        except KeyError:
            raise RuntimeError(f"{type(self).__name__} is not fitted for column {column!r}") from None

    # ---- batch
    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        if self.schema_only:
            return df
        return pd.DataFrame({c: self.transform_column(c, df[c]) for c in df.columns}, index=df.index)

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        return series

    # ---- one request
    def transform_row(self, values: dict[str, Any]) -> dict[str, Any]:
        if self.schema_only:
            return values
        return {c: self.transform_value(c, v) for c, v in values.items()}

    def transform_value(self, column: str, value: Any) -> Any:
        return value

    # ---- schema
    def output_column_names(self, columns: Sequence[str]) -> list[str]:
        return list(columns)

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column

    # ---- saving
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-able."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"op": type(self).__name__, "config": self.get_config(), "stats": self.stats}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Operator":
        op_cls = OP_REGISTRY.get(d["op"])
        if op_cls is None:
            raise InputError(f"workflow.json: unknown operator {d['op']!r}")
        op = op_cls(**d.get("config", {}))
        op.stats = {c: dict(s) for c, s in d.get("stats", {}).items()}
        op._after_load()
        return op

    def _after_load(self) -> None:
        """Rebuild caches / array types after loading statistics."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


_OOV = object()  # a value that cannot be in the vocabulary (e.g. 1.5 for integer ids)


@register_op
class Categorify(Operator):
    """Encode categories as contiguous int64 codes.

    ``0`` = null / padding, ``1`` = out-of-vocabulary (unseen in fit, or cut by
    ``freq_threshold`` / ``max_size``), ``2..`` = vocabulary ordered by training frequency
    (descending, ties by value). Cardinality = vocabulary size + 2.

    List columns (detected in fit: values are lists / arrays) are encoded element-wise;
    null / empty lists become ``[]``; ``max_length`` records the longest list seen in fit
    (transform does not truncate).

    Values are matched by the kind seen in fit: integer vocabularies accept ints,
    integral floats and numeric strings ("7"); text vocabularies compare ``str(value)``.

    freq_threshold: int or {column: int}; values seen fewer times map to 1.
    max_size: int or {column: int}; keep at most this many vocabulary values (excluding 0/1).
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
        """One non-null raw value -> the vocabulary's key type, or _OOV."""
        _reject_list(value, column)
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
                return int(value) if math.isfinite(value) and float(value).is_integer() else _OOV
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
        oov = np.fromiter((k is _OOV for k in keys), dtype=bool, count=n)
        if kind == "str":
            out = np.empty(n, dtype=object)
            out[:] = keys
            return out, oov
        dtype = np.int64 if kind == "int" else np.float64
        return np.array([0 if k is _OOV else k for k in keys], dtype=dtype), oov

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
        """Vocabulary values in code order (code = position + 2)."""
        return self._stats(column)["vocab"]

    def cardinality(self, column: str) -> int:
        return len(self._stats(column)["vocab"]) + 2

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
            lookup = self._lookup[column] = dict(zip(vocab, range(2, len(vocab) + 2)))
        return lookup

    def encode_array(self, column: str, values: np.ndarray) -> np.ndarray:
        """Raw scalar values (any dtype, nulls allowed) -> int64 codes."""
        st = self._stats(column)
        codes = np.zeros(len(values), dtype=np.int64)
        nonnull = self._nonnull_mask(values) if values.dtype.kind in "OfmMUS" else np.ones(len(values), bool)
        if not nonnull.any():
            return codes
        keys, oov = self._canonical(st["kind"], values[nonnull], column)
        pos = self._get_index(column).get_indexer(keys)
        enc = np.where(pos < 0, 1, pos + 2).astype(np.int64)
        enc[oov] = 1
        codes[nonnull] = enc
        return codes

    def encode_value(self, column: str, value: Any) -> int:
        """One raw scalar value -> its code (same rules as :meth:`encode_array`)."""
        if is_null(value):
            return 0
        key = self._coerce(self._stats(column)["kind"], value, column)
        if key is _OOV:
            return 1
        return self._get_lookup(column).get(key, 1)

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
            if isinstance(value, _LIST_TYPES):
                return [self.encode_value(column, v) for v in value]
            if is_null(value):
                return []
            return [self.encode_value(column, value)]
        return self.encode_value(column, value)

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        st = self._stats(column.name)
        tags = {Tags.CATEGORICAL} | ({Tags.LIST} if st["is_list"] else set())
        return column.replace(dtype="int64", cardinality=len(st["vocab"]) + 2, is_list=bool(st["is_list"]),
                              max_length=st["max_length"] if st["is_list"] else None,
                              tags=column.tags | tags)


@register_op
class FillMissing(Operator):
    """Replace nulls in numeric columns by the training median (default) or ``fill_value``.

    Output keeps float32 for float32 inputs, float64 otherwise. Non-numeric values raise
    :class:`InputError` naming the column.
    """

    def __init__(self, fill_value: float | None = None) -> None:
        super().__init__()
        self.fill_value = fill_value

    def get_config(self) -> dict[str, Any]:
        return {"fill_value": self.fill_value}

    def fit_column(self, column: str, series: pd.Series) -> dict[str, Any]:
        dtype = value_dtype_of(series)
        if self.fill_value is not None:
            fill = float(self.fill_value)
        else:
            arr = to_float_array(series, column, dtype)
            arr = arr[~np.isnan(arr)]
            fill = float(np.median(arr)) if len(arr) else 0.0
        return {"fill": round_float(fill, dtype), "dtype": dtype}

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        st = self._stats(column)
        arr = to_float_array(series, column, st["dtype"])
        arr[np.isnan(arr)] = st["fill"]
        return pd.Series(arr.astype(st["dtype"]), index=series.index)

    def transform_value(self, column: str, value: Any) -> float:
        st = self._stats(column)
        x = coerce_float(value, column)
        return st["fill"] if math.isnan(x) else round_float(x, st["dtype"])

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.replace(dtype=self._stats(column.name)["dtype"])


@register_op
class Normalize(Operator):
    """Standardise numeric columns: ``(x - mean) / std`` as float32 (population std; std 0 -> 1).

    Nulls stay NaN (put :class:`FillMissing` first to fill them).
    """

    def fit_column(self, column: str, series: pd.Series) -> dict[str, Any]:
        dtype = value_dtype_of(series)
        arr = to_float_array(series, column, dtype)
        arr = arr[~np.isnan(arr)]
        mean = float(arr.mean()) if len(arr) else 0.0
        std = float(arr.std()) if len(arr) else 1.0
        if not math.isfinite(std) or std <= 1e-12:
            std = 1.0
        return {"mean": mean, "std": std, "dtype": dtype}

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        st = self._stats(column)
        arr = to_float_array(series, column, st["dtype"])
        return pd.Series(((arr - st["mean"]) / st["std"]).astype(np.float32), index=series.index)

    def transform_value(self, column: str, value: Any) -> float:
        st = self._stats(column)
        x = round_float(coerce_float(value, column), st["dtype"])
        return float(np.float32((x - st["mean"]) / st["std"]))

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.replace(dtype="float32", tags=column.tags | {Tags.CONTINUOUS})


@register_op
class AddTags(Operator):
    """Schema-only: add tags to the columns (values pass through unchanged)."""

    schema_only = True

    def __init__(self, *tags: Tags | str, tags_list: Sequence[str] | None = None) -> None:
        super().__init__()
        self.tags = tuple(as_tag(t) for t in (*tags, *(tags_list or ())))

    def fit(self, df: pd.DataFrame) -> None:
        return None

    def get_config(self) -> dict[str, Any]:
        return {"tags_list": [t.value for t in self.tags]}

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.with_tags(*self.tags)

    def __repr__(self) -> str:
        return f"AddTags({', '.join(t.name for t in self.tags)})"
