"""The workflow operator base class and the registry that loads operators by name.

Every operator works three ways with identical results:

* ``fit(df)``: collect statistics from a pandas frame (the training split);
* ``transform(df)``: DataFrame -> DataFrame, vectorised (the batch / training path);
* ``transform_row(values)``: one request's raw Python values -> encoded Python values,
  without building a DataFrame (the serving path).

It also says what it does to the schema (``compute_column_schema``) and how it is saved
(``to_dict``: JSON-able config + statistics in which numeric ``np.ndarray`` values are
written as ``.npy`` files by the Workflow; no pickle anywhere).

New ops go in the :mod:`recstack.workflows.ops` module of their family, subclass
:class:`Operator`, override the ``*_column`` / ``*_value`` hooks (or the frame / row methods
for multi-column ops, with ``per_column = False``) and register with :func:`register_op`;
the class name is what ``workflow.json`` stores, so a registered op is never renamed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pandas as pd

from recstack.errors import InputError
from recstack.workflows.graph import Node
from recstack.workflows.schema import ColumnSchema

OP_REGISTRY: dict[str, type["Operator"]] = {}


def register_op(cls: type["Operator"]) -> type["Operator"]:
    """Class decorator: make an operator loadable by name from ``workflow.json``."""
    OP_REGISTRY[cls.__name__] = cls
    return cls


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

    # composition: "a" >> Op(), ["a", "b"] >> Op(), node >> Op(), (a + b) >> Op()
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
