"""The workflow operator base class and the registry that loads operators by name.

Every operator works three ways with identical results:

* fit, in partitions: ``fit_partial(df, ctx)`` per partition -> ``merge_partials([...])`` ->
  ``finalize(merged)`` (``fit(df)`` does the three on one frame); partial statistics are small
  (value counts, sums), so a Dask run fits each partition on its worker and combines them;
* ``transform(df, ctx)``: DataFrame -> DataFrame, vectorised (the batch / training path);
* ``transform_row(values, ctx)``: one request's raw Python values -> encoded Python values,
  without building a DataFrame (the serving path).

``df`` holds the op's input columns (its parent node's outputs); columns an op reads besides
them (a target, a key to group by) are its ``dependencies`` and come from ``ctx.raw`` (the raw
partition frame, or the raw request dict).

It also says what it does to the schema (``compute_output_schema``) and how it is saved
(``to_dict``: JSON-able config + statistics in which numeric ``np.ndarray`` values are written
as ``.npy`` files by the Workflow; no pickle anywhere).

New ops go in the :mod:`recstack.workflows.ops` module of their family, subclass
:class:`Operator` and register with :func:`register_op`; the class name is what
``workflow.json`` stores, so a registered op is never renamed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.workflows.graph import Node
from recstack.workflows.schema import ColumnSchema, Schema

OP_REGISTRY: dict[str, type["Operator"]] = {}


def register_op(cls: type["Operator"]) -> type["Operator"]:
    """Class decorator: make an operator loadable by name from ``workflow.json``."""
    OP_REGISTRY[cls.__name__] = cls
    return cls


@dataclass
class Context:
    """What an op may need besides its input columns.

    raw: the raw partition frame (batch) or request dict (serving), for ``dependencies``;
    row_ids: int64 ``[n]`` global row numbers of the batch rows (folds, stable tie order);
    training: True in ``fit_transform`` / ``transform(training=True)``: TargetEncoding then
    encodes each row out of fold.
    """

    raw: Any = None
    row_ids: np.ndarray | None = None
    training: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self, n: int) -> np.ndarray:
        return self.row_ids if self.row_ids is not None else np.arange(n, dtype=np.int64)


class Operator:
    """Base class: a per-column op with statistics in ``self.stats[column]``."""

    #: True when the op only changes the schema (tags), never values.
    schema_only: ClassVar[bool] = False
    #: True when each input column gives one output column on its own (so a frame or request
    #: with some of the columns still gets those); ops combining columns set False.
    per_column: ClassVar[bool] = True
    #: True when the op collects statistics in fit (a pass over the data).
    needs_fit: ClassVar[bool] = False
    #: True when the op changes which rows there are (Filter keeps the surviving index).
    changes_rows: ClassVar[bool] = False
    #: True when the op outputs one row per group key (Groupby).
    groups_rows: ClassVar[bool] = False

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}
        #: Fit this op on one row per value of this column (side statistics per entity).
        self.fit_per: str | None = None

    # composition: "a" >> Op(), ["a", "b"] >> Op(), node >> Op(), (a + b) >> Op()
    def __rrshift__(self, other: Any) -> Node:
        return Node(parent=Node.of(other), op=self)

    @property
    def name(self) -> str:
        return type(self).__name__

    # ---- columns
    def dependencies(self) -> list[str]:
        """Raw columns read at fit time besides the input (a target, a value to aggregate)."""
        return []

    def transform_dependencies(self) -> list[str]:
        """Raw columns read at transform time besides the input (a key to group by)."""
        return []

    @property
    def group_key(self) -> str | None:
        """A column whose rows must be in one partition (Dask shuffles on it first)."""
        return None

    def output_column_names(self, columns: Sequence[str]) -> list[str]:
        return list(columns)

    def column_dependencies(self, columns: Sequence[str]) -> dict[str, list[str]]:
        """Output column -> the input columns it needs. Per-column ops: one each; others: all."""
        outs = self.output_column_names(columns)
        if self.per_column and len(outs) == len(columns):
            return {o: [c] for o, c in zip(outs, columns)}
        return {o: list(columns) for o in outs}

    # ---- fit
    def fit_partial(self, df: pd.DataFrame, ctx: Context) -> Any:
        """Statistics of one partition (small, combinable)."""
        return {c: self.partial_column(c, df[c], ctx) for c in df.columns}

    def partial_column(self, column: str, series: pd.Series, ctx: Context) -> Any:
        return None

    def merge_partials(self, partials: list[Any]) -> Any:
        columns = list(dict.fromkeys(c for p in partials for c in p))
        return {c: self.merge_column(c, [p[c] for p in partials if c in p]) for c in columns}

    def merge_column(self, column: str, partials: list[Any]) -> Any:
        return partials[0] if partials else None

    def finalize(self, merged: Any) -> None:
        for c, m in merged.items():
            self.stats[c] = self.finalize_column(c, m)

    def finalize_column(self, column: str, merged: Any) -> dict[str, Any]:
        return {}

    def fit(self, df: pd.DataFrame, ctx: Context | None = None) -> None:
        """Fit on one frame: the three steps above on a single partition."""
        ctx = ctx or Context(raw=df)
        self.finalize(self.merge_partials([self.fit_partial(df, ctx)]))

    def _stats(self, column: str) -> dict[str, Any]:
        try:
            return self.stats[column]
        except KeyError:
            raise RuntimeError(f"{self.name} is not fitted for column {column!r}") from None

    # ---- batch
    def transform(self, df: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        if self.schema_only:
            return df
        # no copy of the new columns (Workflow.transform_partition copies any that is an input's array)
        return pd.DataFrame({o: self.transform_column(c, df[c]) for c, o in
                             zip(df.columns, self.output_column_names(list(df.columns)))}, index=df.index, copy=False)

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        return series

    # ---- one request
    def transform_row(self, values: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if self.schema_only:
            return values
        names = self.output_column_names(list(values))
        return {o: self.transform_value(c, v) for (c, v), o in zip(values.items(), names)}

    def transform_value(self, column: str, value: Any) -> Any:
        return value

    # ---- schema
    def compute_output_schema(self, schema: Schema) -> Schema:
        """Input schema (the parent's outputs) -> output schema."""
        names = self.output_column_names(schema.names)
        return Schema(self.compute_column_schema(c).replace(name=n) for c, n in zip(schema.columns, names))

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column

    # ---- saving
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-able."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.name, "config": self.get_config(), "stats": self.stats, "fit_per": self.fit_per}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Operator":
        op_cls = OP_REGISTRY.get(d["op"])
        if op_cls is None:
            raise InputError(f"workflow.json: unknown operator {d['op']!r}")
        op = op_cls(**d.get("config", {}))
        op.stats = {c: (dict(s) if isinstance(s, dict) else s) for c, s in d.get("stats", {}).items()}
        op.fit_per = d.get("fit_per")
        op._after_load()
        return op

    def _after_load(self) -> None:
        """Rebuild caches / array types after loading statistics."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.name}({args})"


def check_numeric(op: Operator, column: str, series: pd.Series) -> None:
    """Raise :class:`InputError` naming the op and column for list / non-numeric text columns."""
    if series.dtype == object and len(series):
        first = series.dropna()
        if len(first) and isinstance(first.iloc[0], (list, tuple, np.ndarray)):
            raise InputError(f"{op.name}: column {column!r}: expected numbers, got lists")
