"""Continuous (numeric) operators: fill nulls, standardise.

Statistics are computed in float64 after rounding values to the dtype seen in fit, so a
float32 column gives the same result on the batch path and on one request.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from recstack.workflows.operator import Operator, register_op
from recstack.workflows.schema import ColumnSchema, Tags
from recstack.workflows.values import coerce_float, round_float, to_float_array, value_dtype_of


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
