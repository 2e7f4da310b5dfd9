"""Where a Workflow's partitions come from: an in-memory pandas frame (optionally cut into
partitions of ``partition_rows``) or a Dask DataFrame (see :mod:`recstack.workflows.dask_exec`).

An engine maps a function over partitions, ``fn(part: pd.DataFrame, row_ids: int64 [n])``,
and returns the results in partition order; ``row_ids`` are global row numbers (the position
of the row in the whole table), so folds and tie orders do not depend on the partitioning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import pandas as pd

PartitionFn = Callable[[pd.DataFrame, np.ndarray], Any]

#: Column that carries global row numbers through a Dask shuffle.
ROW_ID = "__row__"


class Engine(Protocol):
    def columns(self) -> list[str]: ...
    def sample(self, n: int = 10_000) -> pd.DataFrame: ...
    def map(self, fn: PartitionFn, rows: bool = True) -> list[Any]: ...
    def unique_by(self, key: str) -> "Engine": ...
    def by_key(self, key: str) -> "Engine": ...


class PandasEngine:
    """A pandas frame, as one partition or as slices of ``partition_rows`` rows."""

    def __init__(self, df: pd.DataFrame, partition_rows: int | None = None, key: str | None = None) -> None:
        self.df = df
        self.partition_rows = partition_rows
        self.key = key

    def columns(self) -> list[str]:
        return [str(c) for c in self.df.columns]

    def sample(self, n: int = 10_000) -> pd.DataFrame:
        return self.df.head(n)

    def partitions(self) -> list[tuple[pd.DataFrame, np.ndarray]]:
        n = len(self.df)
        step = self.partition_rows or max(n, 1)
        if self.key is not None and step < n:  # every row of a key in one partition, rows in order
            parts = -(-n // step)
            bucket = pd.factorize(self.df[self.key])[0] % parts
            chosen = [np.flatnonzero(bucket == p) for p in range(parts)]
            return [(self.df.iloc[rows], rows.astype(np.int64)) for rows in chosen if len(rows)]
        return [(self.df.iloc[a:a + step], np.arange(a, min(a + step, n), dtype=np.int64))
                for a in range(0, max(n, 1), step)]

    def map(self, fn: PartitionFn, rows: bool = True) -> list[Any]:
        """``fn`` over partitions; ``rows=False``: the caller needs no global row numbers."""
        return [fn(part, rows) for part, rows in self.partitions()]

    def unique_by(self, key: str) -> "PandasEngine":
        return PandasEngine(self.df.drop_duplicates(subset=[key], keep="first"), self.partition_rows)

    def by_key(self, key: str) -> "PandasEngine":
        """Partitions that hold every row of a ``key`` value (DifferenceLag, Groupby)."""
        return PandasEngine(self.df, self.partition_rows, key)


def make_engine(data: Any, partition_rows: int | None = None) -> Engine:
    """A pandas DataFrame -> :class:`PandasEngine`; a Dask DataFrame -> its Dask engine."""
    if isinstance(data, pd.DataFrame):
        return PandasEngine(data, partition_rows)
    if type(data).__module__.startswith("dask"):
        from recstack.workflows.dask_exec import DaskEngine

        return DaskEngine(data)
    raise TypeError(f"workflow data: expected a pandas or Dask DataFrame, got {type(data).__name__}")
