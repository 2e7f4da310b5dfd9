"""List-column plumbing for ops: rows of lists <-> (flat values, offsets), for object columns
(Python lists / numpy arrays per row) and for Arrow list columns (``pd.ArrowDtype(list<...>)``,
what ``pd.read_parquet(..., dtype_backend="pyarrow")`` gives), without a Python loop on the
Arrow path. Outputs keep the input's representation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recstack.workflows.values import LIST_TYPES, flatten_lists, is_null, split_lists


def is_arrow_list(series: pd.Series) -> bool:
    dtype = series.dtype
    return isinstance(dtype, pd.ArrowDtype) and (pa.types.is_list(dtype.pyarrow_dtype)
                                                 or pa.types.is_large_list(dtype.pyarrow_dtype))


def is_list_column(series: pd.Series) -> bool:
    from recstack.workflows.values import is_list_series

    return is_arrow_list(series) or is_list_series(series)


def flatten(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A list column ``[n]`` -> (flat values ``[total]``, offsets int64 ``[n + 1]``).

    Null rows are empty lists; a scalar row is a one-element list.
    """
    if is_arrow_list(series):
        arr = series.array.__arrow_array__()
        arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
        offsets = np.asarray(arr.offsets, dtype=np.int64)
        if arr.null_count:
            lengths = np.diff(offsets)
            lengths[np.asarray(arr.is_null())] = 0
            flat = arr.filter(arr.is_valid()).flatten()
            offsets = np.zeros(len(arr) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
        else:
            flat = arr.flatten()
            offsets = offsets - offsets[0]
        values = flat.to_numpy(zero_copy_only=False)
        if values.dtype.kind in "OUS":
            values = values.astype(object)
        return values, offsets
    return flatten_lists(series.to_numpy(dtype=object))


def rebuild(like: pd.Series, codes: np.ndarray, offsets: np.ndarray, arrow_type: pa.DataType) -> pd.Series:
    """Flat results + offsets -> a list column shaped like ``like`` (Arrow in, Arrow out)."""
    if is_arrow_list(like):
        arr = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(codes, type=arrow_type))
        return pd.Series(pd.arrays.ArrowExtensionArray(arr), index=like.index)
    return pd.Series(split_lists(codes, offsets), index=like.index, dtype=object)


def row_list(value: Any) -> list[Any]:
    """One request value of a list column -> a Python list (null -> [], scalar -> [value])."""
    if isinstance(value, LIST_TYPES):
        return list(value)
    if is_null(value):
        return []
    return [value]
