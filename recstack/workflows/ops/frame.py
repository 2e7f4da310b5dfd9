"""Structural operators: Rename, Filter (drop rows) and LambdaOp (a user function with a
declared output dtype).

A user function is saved by reference, never pickled: a module-level function is stored as
``"module:qualname"`` and imported again by :meth:`Workflow.load`; a function registered with
:func:`register_function` is stored by its name. Lambdas and nested functions are refused.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.workflows.operator import Context, Operator, register_op
from recstack.workflows.schema import ColumnSchema, as_tag

FUNCTIONS: dict[str, Callable[..., Any]] = {}


def register_function(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make ``fn`` loadable by ``name`` in LambdaOp / Filter / Rename."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        FUNCTIONS[name] = fn
        return fn
    return wrap


def function_ref(fn: Callable[..., Any] | str) -> str:
    if isinstance(fn, str):
        return fn
    for name, registered in FUNCTIONS.items():
        if registered is fn:
            return name
    qual = getattr(fn, "__qualname__", "")
    if "<lambda>" in qual or "<locals>" in qual or not getattr(fn, "__module__", None):
        raise ValueError(f"{qual or fn!r}: a lambda or nested function cannot be saved; define it at module "
                         "level or use register_function")
    return f"{fn.__module__}:{qual}"


def resolve_function(ref: str) -> Callable[..., Any]:
    if ref in FUNCTIONS:
        return FUNCTIONS[ref]
    module, _, qual = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        raise InputError(f"workflow: cannot import function {ref!r}") from None
    return obj


class _FunctionOp(Operator):
    def __init__(self, f: Callable[..., Any] | str) -> None:
        super().__init__()
        self.ref = function_ref(f)
        self.f = f if callable(f) else resolve_function(f)


@register_op
class LambdaOp(_FunctionOp):
    """``f(series) -> series / array`` per column, cast to the declared ``dtype``; ``tags`` are
    added to the outputs. A request runs ``f`` on a one-element series (same values).

    Example::

        >>> def title_length(s): return s.str.len()
        >>> ["title"] >> LambdaOp(title_length, dtype="float32", tags=["continuous"])
    """

    def __init__(self, f: Callable[..., Any] | str, dtype: str, tags: Sequence[str] = ()) -> None:
        super().__init__(f)
        self.dtype = str(np.dtype(dtype)) if dtype != "str" else "str"
        self.tags = [as_tag(t).value for t in tags]

    def get_config(self) -> dict[str, Any]:
        return {"f": self.ref, "dtype": self.dtype, "tags": self.tags}

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        try:
            out = self.f(series)
            values = np.asarray(out, dtype=object if self.dtype == "str" else self.dtype)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"column {column!r}: {self.ref} failed ({type(exc).__name__}: {exc})") from None
        if values.shape != (len(series),):
            raise InputError(f"column {column!r}: {self.ref} returned shape {values.shape}, expected ({len(series)},)")
        return pd.Series(values, index=series.index)

    def transform_value(self, column: str, value: Any) -> Any:
        one = pd.Series([value], dtype=object if isinstance(value, str) or value is None else None)
        out = self.transform_column(column, one).iloc[0]
        return out.item() if isinstance(out, np.generic) else out

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.replace(dtype=self.dtype, cardinality=None).with_tags(*self.tags)


@register_op
class Filter(_FunctionOp):
    """Keep the rows where ``f(df) -> bool [n]`` is True (``df``: the op's input columns); the
    workflow drops the same rows from every other output column. A request that fails the
    filter gives ``None`` from ``transform_request``.

    Example::

        >>> def positive(df): return df["rating"] >= 4
        >>> ["rating", "item_id"] >> Filter(positive)
    """

    per_column = False
    changes_rows = True

    def get_config(self) -> dict[str, Any]:
        return {"f": self.ref}

    def _mask(self, df: pd.DataFrame) -> np.ndarray:
        try:
            mask = np.asarray(self.f(df))
        except Exception as exc:
            raise InputError(f"{self.ref} failed on columns {list(df.columns)} ({type(exc).__name__}: {exc})") from None
        if mask.dtype != bool or mask.shape != (len(df),):
            raise InputError(f"{self.ref} must return a boolean mask of {len(df)} rows, got {mask.dtype} {mask.shape}")
        return mask

    def transform(self, df: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        return df[self._mask(df)]

    def transform_row(self, values: dict[str, Any], ctx: Context) -> dict[str, Any] | None:
        one = pd.DataFrame({c: pd.Series([v], dtype=object if isinstance(v, str) or v is None else None)
                            for c, v in values.items()})
        return values if bool(self._mask(one)[0]) else None


@register_op
class Rename(Operator):
    """Rename columns by ``mapping`` ({old: new}), or add ``prefix`` / ``postfix``.

    Example: ["item_id"] >> Categorify() >> Rename(postfix="_code") -> item_id_code.
    """

    def __init__(self, mapping: dict[str, str] | None = None, prefix: str = "", postfix: str = "") -> None:
        super().__init__()
        if not (mapping or prefix or postfix):
            raise ValueError("Rename: give mapping, prefix or postfix")
        self.mapping, self.prefix, self.postfix = dict(mapping or {}), prefix, postfix

    def get_config(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "prefix": self.prefix, "postfix": self.postfix}

    def output_column_names(self, columns: Sequence[str]) -> list[str]:
        return [self.mapping.get(c, f"{self.prefix}{c}{self.postfix}") for c in columns]
