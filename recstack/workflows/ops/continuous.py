"""Continuous (numeric) operators: fill nulls, standardise, scale, clip, log, bucketize.

Statistics are computed in float64 after rounding values to the dtype seen in fit, so a
float32 column gives the same result on the batch path and on one request. Fit is partial
per partition: exact value counts for the median, (count, mean, M2) for the mean / std
(Chan et al.'s parallel update), min / max for NormalizeMinMax.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from recstack.ids import FIRST_CODE, PAD
from recstack.workflows.operator import Context, Operator, check_numeric, register_op
from recstack.workflows.schema import ColumnSchema, Tags
from recstack.workflows.values import coerce_float, round_float, to_float_array, value_dtype_of


class _Numeric(Operator):
    """Shared: read a column as float64 after rounding to the fitted dtype."""

    def _array(self, column: str, series: pd.Series, dtype: str | None = None) -> np.ndarray:
        check_numeric(self, column, series)
        return to_float_array(series, column, dtype or value_dtype_of(series))


@register_op
class FillMissing(_Numeric):
    """Replace nulls by ``fill_value``, or by the training median (default) or mean.

    Output keeps float32 for float32 inputs, float64 otherwise. Example::

        >>> wf = Workflow(["age"] >> FillMissing()).fit(pd.DataFrame({"age": [1.0, None, 5.0, 9.0]}))
        >>> wf.transform_request({"age": None})
        {'age': 5.0}
    """

    needs_fit = True

    def __init__(self, fill_value: float | None = None, strategy: str = "median") -> None:
        super().__init__()
        if strategy not in ("median", "mean"):
            raise ValueError(f"FillMissing: strategy must be median or mean, got {strategy!r}")
        self.fill_value = fill_value
        self.strategy = strategy

    def get_config(self) -> dict[str, Any]:
        return {"fill_value": self.fill_value, "strategy": self.strategy}

    def partial_column(self, column: str, series: pd.Series, ctx: Context) -> Any:
        dtype = value_dtype_of(series)
        arr = self._array(column, series, dtype)
        arr = arr[~np.isnan(arr)]
        if self.fill_value is not None or self.strategy == "mean":
            return {"dtype": dtype, "n": len(arr), "sum": float(arr.sum())}
        values, counts = np.unique(arr, return_counts=True)
        return {"dtype": dtype, "values": values, "counts": counts}

    def merge_column(self, column: str, partials: list[Any]) -> Any:
        dtype = "float32" if all(p["dtype"] == "float32" for p in partials) else "float64"
        if "sum" in partials[0]:
            return {"dtype": dtype, "n": sum(p["n"] for p in partials), "sum": math.fsum(p["sum"] for p in partials)}
        vc = pd.Series(np.concatenate([p["counts"] for p in partials]),
                       index=np.concatenate([p["values"] for p in partials])).groupby(level=0).sum()
        return {"dtype": dtype, "values": vc.index.to_numpy(np.float64), "counts": vc.to_numpy(np.int64)}

    def finalize_column(self, column: str, merged: Any) -> dict[str, Any]:
        dtype = merged["dtype"]
        if self.fill_value is not None:
            fill = float(self.fill_value)
        elif "sum" in merged:
            fill = merged["sum"] / merged["n"] if merged["n"] else 0.0
        else:
            fill = _weighted_median(merged["values"], merged["counts"])
        return {"fill": round_float(fill, dtype), "dtype": dtype}

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        st = self._stats(column)
        arr = self._array(column, series, st["dtype"])  # may be the input's own array: not written to
        return pd.Series(np.where(np.isnan(arr), st["fill"], arr).astype(st["dtype"], copy=False), index=series.index)

    def transform_value(self, column: str, value: Any) -> float:
        st = self._stats(column)
        x = coerce_float(value, column)
        return st["fill"] if math.isnan(x) else round_float(x, st["dtype"])

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.replace(dtype=self._stats(column.name)["dtype"])


def _weighted_median(values: np.ndarray, counts: np.ndarray) -> float:
    """``np.median`` of the multiset (sorted values, counts); 0.0 when empty."""
    n = int(counts.sum())
    if n == 0:
        return 0.0
    cum = np.cumsum(counts)
    lo = values[np.searchsorted(cum, (n - 1) // 2, side="right")]
    hi = values[np.searchsorted(cum, n // 2, side="right")]
    return float((lo + hi) / 2.0)


@register_op
class Normalize(_Numeric):
    """Standardise: ``(x - mean) / std`` as float32 (population std; std 0 -> 1). Nulls stay NaN.

    Example: values [1, 2, 3] -> mean 2, std 0.8165 -> [-1.2247, 0, 1.2247].
    """

    needs_fit = True

    def partial_column(self, column: str, series: pd.Series, ctx: Context) -> Any:
        dtype = value_dtype_of(series)
        arr = self._array(column, series, dtype)
        arr = arr[~np.isnan(arr)]
        mean = float(arr.mean()) if len(arr) else 0.0
        return {"dtype": dtype, "n": len(arr), "mean": mean, "m2": float(((arr - mean) ** 2).sum())}

    def merge_column(self, column: str, partials: list[Any]) -> Any:
        n, mean, m2 = 0, 0.0, 0.0
        for p in partials:
            if not p["n"]:
                continue
            total = n + p["n"]
            delta = p["mean"] - mean
            mean = mean + delta * p["n"] / total
            m2 = m2 + p["m2"] + delta * delta * n * p["n"] / total
            n = total
        dtype = "float32" if all(p["dtype"] == "float32" for p in partials) else "float64"
        return {"dtype": dtype, "n": n, "mean": mean, "m2": m2}

    def finalize_column(self, column: str, merged: Any) -> dict[str, Any]:
        std = math.sqrt(merged["m2"] / merged["n"]) if merged["n"] else 1.0
        if not math.isfinite(std) or std <= 1e-12:
            std = 1.0
        return {"mean": merged["mean"], "std": std, "dtype": merged["dtype"]}

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        st = self._stats(column)
        arr = self._array(column, series, st["dtype"])
        return pd.Series(((arr - st["mean"]) / st["std"]).astype(np.float32), index=series.index)

    def transform_value(self, column: str, value: Any) -> float:
        st = self._stats(column)
        x = round_float(coerce_float(value, column), st["dtype"])
        return float(np.float32((x - st["mean"]) / st["std"]))

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.replace(dtype="float32", tags=column.tags | {Tags.CONTINUOUS})


@register_op
class NormalizeMinMax(_Numeric):
    """Scale to [0, 1]: ``(x - min) / (max - min)`` as float32 (range 0 -> 1). Nulls stay NaN.

    Example: fit on [2, 4, 10] -> 4 becomes 0.25; 12 (beyond max) becomes 1.25.
    """

    needs_fit = True

    def partial_column(self, column: str, series: pd.Series, ctx: Context) -> Any:
        dtype = value_dtype_of(series)
        arr = self._array(column, series, dtype)
        arr = arr[~np.isnan(arr)]
        return {"dtype": dtype, "min": float(arr.min()) if len(arr) else math.inf,
                "max": float(arr.max()) if len(arr) else -math.inf}

    def merge_column(self, column: str, partials: list[Any]) -> Any:
        dtype = "float32" if all(p["dtype"] == "float32" for p in partials) else "float64"
        return {"dtype": dtype, "min": min(p["min"] for p in partials), "max": max(p["max"] for p in partials)}

    def finalize_column(self, column: str, merged: Any) -> dict[str, Any]:
        lo, hi = merged["min"], merged["max"]
        if not math.isfinite(lo):
            lo, hi = 0.0, 1.0
        span = hi - lo if hi - lo > 1e-12 else 1.0
        return {"min": lo, "span": span, "dtype": merged["dtype"]}

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        st = self._stats(column)
        arr = self._array(column, series, st["dtype"])
        return pd.Series(((arr - st["min"]) / st["span"]).astype(np.float32), index=series.index)

    def transform_value(self, column: str, value: Any) -> float:
        st = self._stats(column)
        x = round_float(coerce_float(value, column), st["dtype"])
        return float(np.float32((x - st["min"]) / st["span"]))

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.replace(dtype="float32", tags=column.tags | {Tags.CONTINUOUS})


class _Elementwise(_Numeric):
    """No statistics: a float64 function of each value, output float64 (NaN stays NaN)."""

    def _apply(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        return pd.Series(self._apply(self._array(column, series, "float64")), index=series.index)

    def transform_value(self, column: str, value: Any) -> float:
        return float(self._apply(np.array([coerce_float(value, column)], dtype=np.float64))[0])

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.replace(dtype="float64", tags=column.tags | {Tags.CONTINUOUS})


@register_op
class Clip(_Elementwise):
    """Clip to ``[min_value, max_value]`` (either may be None). Example: Clip(0, 5): 7 -> 5.0."""

    def __init__(self, min_value: float | None = None, max_value: float | None = None) -> None:
        super().__init__()
        if min_value is None and max_value is None:
            raise ValueError("Clip: give min_value, max_value or both")
        self.min_value, self.max_value = min_value, max_value

    def get_config(self) -> dict[str, Any]:
        return {"min_value": self.min_value, "max_value": self.max_value}

    def _apply(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.min_value if self.min_value is not None else -np.inf,
                       self.max_value if self.max_value is not None else np.inf)


@register_op
class LogOp(_Elementwise):
    """``log(1 + max(x, 0))`` as float64 (counts, durations). Example: 0 -> 0.0, e - 1 -> 1.0."""

    def _apply(self, x: np.ndarray) -> np.ndarray:
        return np.log1p(np.maximum(x, 0.0))


@register_op
class Bucketize(_Numeric):
    """Bucket index by sorted ``boundaries``: ``FIRST_CODE + #(boundaries <= x)``, null -> PAD;
    tagged CATEGORICAL with cardinality ``len(boundaries) + 1 + FIRST_CODE``.

    Example: Bucketize([18, 30, 50]): 17 -> 2, 18 -> 3, 45 -> 4, 80 -> 5, None -> 0.
    """

    def __init__(self, boundaries: list[float] | dict[str, list[float]]) -> None:
        super().__init__()
        self.boundaries = boundaries

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries}

    def _bounds(self, column: str) -> np.ndarray:
        b = self.boundaries.get(column) if isinstance(self.boundaries, dict) else self.boundaries
        if b is None:
            raise ValueError(f"Bucketize: no boundaries for column {column!r}")
        return np.sort(np.asarray(b, dtype=np.float64))

    def transform_column(self, column: str, series: pd.Series) -> pd.Series:
        x = self._array(column, series, "float64")
        codes = np.searchsorted(self._bounds(column), x, side="right").astype(np.int64) + FIRST_CODE
        return pd.Series(np.where(np.isnan(x), PAD, codes), index=series.index, dtype=np.int64)

    def transform_value(self, column: str, value: Any) -> int:
        x = coerce_float(value, column)
        return PAD if math.isnan(x) else int(np.searchsorted(self._bounds(column), x, side="right")) + FIRST_CODE

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.replace(dtype="int64", cardinality=len(self._bounds(column.name)) + 1 + FIRST_CODE,
                              tags=(column.tags - {Tags.CONTINUOUS}) | {Tags.CATEGORICAL})
