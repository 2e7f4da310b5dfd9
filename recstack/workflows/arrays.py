"""The array path: a fitted Workflow applied to columns held as device arrays (CuPy arrays or
PyTorch tensors on a GPU; numpy or CPU tensors work too), without going through pandas.

    >>> cols = {"user_id": torch.as_tensor(ids, device="cuda"), "age": torch.as_tensor(age, device="cuda")}
    >>> out = transform_arrays(workflow, cols)      # same values as workflow.transform(frame)

Supported ops (numeric / integer-id columns; text and list columns stay on the pandas path):
Categorify (integer or float vocabulary, single encoding), FillMissing, Normalize,
NormalizeMinMax, Clip, LogOp, Bucketize, JoinGroupby, HashBucket (CuPy / numpy only: uint64
arithmetic), and the schema ops (AddTags, SelectByTag, SelectColumns, Rename). The fitted
statistics are copied to the device once per call; lookups are ``searchsorted`` on the sorted
vocabulary, so no hash table is needed on the device. Another op raises :class:`InputError`
naming it. cuDF frames can be passed as ``{name: cudf_series.values}`` (CuPy arrays).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recstack.errors import InputError
from recstack.ids import FIRST_CODE, OOV, PAD
from recstack.workflows.graph import Group, Node

SCHEMA_OPS = {"AddTags", "SelectByTag", "SelectColumns", "Rename"}


class Namespace:
    """The few array functions the kernels need, for numpy, CuPy and torch."""

    def __init__(self, like: Any) -> None:
        mod = type(like).__module__.split(".")[0]
        self.kind = "torch" if mod == "torch" else ("cupy" if mod == "cupy" else "numpy")
        if self.kind == "torch":
            import torch

            self.m, self.device = torch, like.device
        elif self.kind == "cupy":
            import cupy

            self.m, self.device = cupy, None
        else:
            self.m, self.device = np, None

    def asarray(self, values: Any, dtype: Any = None) -> Any:
        if self.kind == "torch":
            t = self.m.as_tensor(np.asarray(values) if not hasattr(values, "device") else values, device=self.device)
            return t.to(getattr(self.m, np.dtype(dtype).name)) if dtype is not None else t
        return self.m.asarray(values, dtype=dtype)

    def is_float(self, x: Any) -> bool:
        return bool(x.is_floating_point()) if self.kind == "torch" else x.dtype.kind == "f"

    def f64(self, x: Any) -> Any:
        return x.to(self.m.float64) if self.kind == "torch" else x.astype(np.float64)

    def f32(self, x: Any) -> Any:
        return x.to(self.m.float32) if self.kind == "torch" else x.astype(np.float32)

    def i64(self, x: Any) -> Any:
        return x.to(self.m.int64) if self.kind == "torch" else x.astype(np.int64)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        if self.kind == "torch":
            a = a if hasattr(a, "device") else self.m.tensor(a, device=self.device)
            b = b if hasattr(b, "device") else self.m.tensor(b, device=self.device)
            return self.m.where(cond, a, b)
        return self.m.where(cond, a, b)

    def searchsorted(self, sorted_: Any, values: Any, right: bool = False) -> Any:
        if self.kind == "torch":
            return self.m.searchsorted(sorted_, values.contiguous(), right=right)
        return self.m.searchsorted(sorted_, values, side="right" if right else "left")

    def clip(self, x: Any, lo: float, hi: float) -> Any:
        return self.m.clamp(x, lo, hi) if self.kind == "torch" else self.m.clip(x, lo, hi)

    def lookup(self, keys: np.ndarray, values: Any) -> tuple[Any, Any]:
        """(positions into ``keys`` order, found mask) for device ``values`` (sorted search)."""
        order = np.argsort(keys, kind="stable")
        sorted_keys = self.asarray(keys[order])
        pos = self.searchsorted(sorted_keys, values)
        n = len(keys)
        safe = self.clip(pos, 0, max(n - 1, 0))
        found = (pos < n) & (sorted_keys[safe] == values) if n else values != values
        return self.asarray(order.astype(np.int64))[safe] if n else safe, found


def _keys(xp: Namespace, kind: str, x: Any) -> tuple[Any, Any, Any]:
    """Device values -> (keys in the vocabulary's dtype, null mask or None, unmatchable mask or None)."""
    if not xp.is_float(x):
        return (xp.i64(x) if kind == "int" else xp.f64(x)), None, None
    xf = xp.f64(x)
    null = xf != xf
    if kind == "float":
        return xf, null, None
    integral = xf == xp.m.floor(xf)
    return xp.i64(xp.where(integral, xf, 0.0 * xf)), null, ~integral & ~null


def _float_in(xp: Namespace, x: Any, dtype: str) -> Any:
    x = xp.f64(x)
    return xp.f64(xp.f32(x)) if dtype == "float32" else x


def _column(xp: Namespace, op: Any, name: str, x: Any) -> dict[str, Any]:
    kind = op.name
    if kind in ("Categorify", "JoinGroupby", "HashBucket"):
        st = op._stats(name)
        if st.get("kind") == "str" or st.get("is_list"):
            raise InputError(f"{kind}: column {name!r}: text / list columns have no array kernel; use transform()")
    if kind == "Categorify":
        if op.encode_type != "single":
            raise InputError(f"Categorify: column {name!r}: only single encoding has an array kernel")
        st = op._stats(name)
        values, null, unmatched = _keys(xp, st["kind"], x)
        pos, found = xp.lookup(st["vocab"], values)
        codes = xp.i64(xp.where(found, pos + FIRST_CODE, OOV))
        if unmatched is not None:
            codes = xp.where(unmatched, OOV, codes)
        return {name: xp.where(null, PAD, codes) if null is not None else codes}
    if kind == "JoinGroupby":
        st = op._stats(name)
        values, null, unmatched = _keys(xp, st["kind"], x)
        pos, found = xp.lookup(st["keys"], values)
        for mask in (null, unmatched):
            if mask is not None:
                found = found & ~mask
        out = {}
        names = iter(op._names(name))
        if "count" in op.stat_names:
            out[next(names)] = xp.i64(xp.where(found, xp.asarray(st["count"])[pos] if len(st["count"]) else 0, 0))
        for c in op.cont_cols:
            for stat in op.stat_names:
                if stat != "count":
                    arr = xp.asarray(st[f"{c}_{stat}"])
                    out[next(names)] = xp.f32(xp.where(found, arr[pos] if len(arr) else 0.0, float("nan")))
        return out
    if kind == "HashBucket":
        if xp.kind == "torch":
            raise InputError("HashBucket: needs uint64 arithmetic (CuPy / numpy), not torch tensors")
        from recstack.workflows.ops.hashing import splitmix64

        h = splitmix64(xp.i64(x).view(np.uint64))
        return {name: xp.i64(h % np.uint64(op.buckets(name))) + FIRST_CODE}
    dtype = op.stats.get(name, {}).get("dtype", "float64") if hasattr(op, "stats") else "float64"
    xf = _float_in(xp, x, dtype)
    if kind == "FillMissing":
        st = op._stats(name)
        filled = xp.where(xf != xf, st["fill"], xf)
        return {name: xp.f32(filled) if st["dtype"] == "float32" else filled}
    if kind == "Normalize":
        st = op._stats(name)
        return {name: xp.f32((xf - st["mean"]) / st["std"])}
    if kind == "NormalizeMinMax":
        st = op._stats(name)
        return {name: xp.f32((xf - st["min"]) / st["span"])}
    if kind == "Clip":
        lo = op.min_value if op.min_value is not None else -np.inf
        hi = op.max_value if op.max_value is not None else np.inf
        return {name: xp.where(xf != xf, xf, xp.clip(xf, lo, hi))}
    if kind == "LogOp":
        return {name: xp.m.log1p(xp.where(xf > 0, xf, 0.0 * xf))}
    if kind == "Bucketize":
        codes = xp.i64(xp.searchsorted(xp.asarray(op._bounds(name)), xf, right=True)) + FIRST_CODE
        return {name: xp.where(xf != xf, PAD, codes)}
    raise InputError(f"{kind}: no array kernel for this op; use transform() on a DataFrame")


def _apply(xp: Namespace, op: Any, cols: dict[str, Any]) -> dict[str, Any]:
    if op.name in SCHEMA_OPS:
        names = op.output_column_names(list(cols))
        if op.name == "Rename":
            return dict(zip(names, cols.values()))
        return {c: cols[c] for c in names}
    out: dict[str, Any] = {}
    for name, x in cols.items():
        out.update(_column(xp, op, name, x))
    return out


def transform_arrays(workflow: Any, columns: dict[str, Any]) -> dict[str, Any]:
    """Raw columns ``{name: 1-d array [n]}`` (all on one device) -> output columns on that device,
    for every output whose inputs are given; values equal ``workflow.transform`` (float32 for
    Normalize, int64 codes)."""
    if not columns:
        return {}
    xp = Namespace(next(iter(columns.values())))
    plan = workflow.plan
    memo: dict[int, dict[str, Any]] = {}
    for node in plan.nodes:
        pos = plan.pos(node)
        if isinstance(node, Group):
            memo[pos] = {k: v for m in node.members for k, v in memo[plan.pos(m)].items()}
        elif isinstance(node, Node) and node.columns is not None:
            memo[pos] = {c: columns[c] for c in node.columns if c in columns}
        else:
            parent = memo[plan.pos(node.parent)]
            if node.op.per_column is False or not parent:
                if parent:
                    raise InputError(f"{node.op.name}: no array kernel for this op; use transform() on a DataFrame")
                memo[pos] = {}
                continue
            memo[pos] = _apply(xp, node.op, parent)
    return memo[plan.pos(workflow.output_node)]
