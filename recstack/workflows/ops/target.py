"""TargetEncoding: a category -> the smoothed mean of the target over the training rows that
have it, with k-fold out-of-fold encoding of the training rows themselves.

Fold of a row = ``splitmix64(global row number + fold_seed) % kfold`` (``Context.row_ids``),
so a Dask run and a pandas run give every row the same fold. In training mode
(``Workflow.fit_transform`` / ``transform(training=True)``) a row of fold ``f`` is encoded
with the statistics of the other folds only, its own label never counts; otherwise (valid,
test, serving) every training row counts:

    enc = (sum_y + p_smooth * prior) / (count + p_smooth),   prior = mean target of those rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.workflows.keys import (
    KeyIndex,
    as_key_array,
    canonical,
    convert_keys,
    infer_kind,
    merge_kinds,
    narrow_objects,
    nonnull_mask,
    raw_values,
)
from recstack.workflows.operator import Context, Operator, register_op
from recstack.workflows.ops.hashing import splitmix64
from recstack.workflows.schema import ColumnSchema, Tags
from recstack.workflows.values import to_float_array


def folds(row_ids: np.ndarray, kfold: int, seed: int) -> np.ndarray:
    """int64 ``[n]`` fold numbers in ``[0, kfold)`` for global row numbers ``[n]``."""
    h = splitmix64((row_ids.astype(np.int64) + np.int64(seed)).view(np.uint64))
    return (h % np.uint64(kfold)).astype(np.int64)


@register_op
class TargetEncoding(Operator):
    """Each input column -> ``TE_<column>_<target>`` float32 (CONTINUOUS).

    Unknown or null categories get the prior (the global target mean). Rows whose target is
    null are ignored in fit.

    Example::

        >>> te = ["item_id"] >> TargetEncoding("clicked", kfold=5, p_smooth=20)
        >>> wf = Workflow(te); train_enc = wf.fit_transform(train)  # out of fold
        >>> wf.transform(valid)                                      # all training rows
    """

    needs_fit = True
    uses_row_ids = True

    def __init__(self, target: str, kfold: int = 5, p_smooth: float = 20.0, fold_seed: int = 42) -> None:
        super().__init__()
        if int(kfold) < 2:
            raise ValueError(f"TargetEncoding: kfold must be >= 2, got {kfold}")
        self.target, self.kfold, self.p_smooth, self.fold_seed = target, int(kfold), float(p_smooth), int(fold_seed)
        self._index: dict[str, KeyIndex] = {}

    def get_config(self) -> dict[str, Any]:
        return {"target": self.target, "kfold": self.kfold, "p_smooth": self.p_smooth, "fold_seed": self.fold_seed}

    def dependencies(self) -> list[str]:
        return [self.target]

    def output_column_names(self, columns: Sequence[str]) -> list[str]:
        return [f"TE_{c}_{self.target}" for c in columns]

    # ---- fit: per (key, fold) count and sum of the target
    def fit_partial(self, df: pd.DataFrame, ctx: Context) -> Any:
        raw = ctx.raw
        y = to_float_array(raw[self.target], self.target, "float64")
        fold = folds(ctx.rows(len(df)), self.kfold, self.fold_seed)
        out = {}
        for c in df.columns:
            values = raw_values(df[c])
            ok = nonnull_mask(values) & ~np.isnan(y)
            vals = narrow_objects(values[ok])
            kind = infer_kind(vals) if len(vals) else ""
            keys, unmatched = canonical(kind or "int", vals, c)
            keep = ~unmatched
            frame = pd.DataFrame({"key": keys[keep], "fold": fold[ok][keep], "y": y[ok][keep]})
            agg = frame.groupby(["key", "fold"], sort=False)["y"].agg(["count", "sum"]).reset_index()
            out[c] = {"kind": kind, "agg": agg}
        return out

    def merge_column(self, column: str, partials: list[Any]) -> Any:
        kind = merge_kinds([p["kind"] for p in partials])
        frames = []
        for p in partials:
            agg = p["agg"].copy()
            agg["key"] = convert_keys(agg["key"].to_numpy(), p["kind"] or kind, kind)
            frames.append(agg)
        agg = pd.concat(frames).groupby(["key", "fold"], sort=False)[["count", "sum"]].sum().reset_index()
        return {"kind": kind, "agg": agg}

    def finalize_column(self, column: str, merged: Any) -> dict[str, Any]:
        agg = merged["agg"]
        keys = np.sort(agg["key"].unique()) if len(agg) else np.array([], dtype=np.int64)
        pos = pd.Index(keys).get_indexer(agg["key"])
        counts = np.zeros((self.kfold, len(keys)), dtype=np.float64)
        sums = np.zeros((self.kfold, len(keys)), dtype=np.float64)
        np.add.at(counts, (agg["fold"].to_numpy(), pos), agg["count"].to_numpy(np.float64))
        np.add.at(sums, (agg["fold"].to_numpy(), pos), agg["sum"].to_numpy(np.float64))
        self._index.pop(column, None)
        kind = merged["kind"]
        return {"kind": kind, "keys": as_key_array(kind, keys.tolist() if kind == "str" else keys),
                "fold_counts": counts, "fold_sums": sums}

    def _after_load(self) -> None:
        for st in self.stats.values():
            st["keys"] = as_key_array(st["kind"], st["keys"])
        self._index = {}

    # ---- encode
    def _encode(self, column: str, pos: np.ndarray, fold: np.ndarray | None) -> np.ndarray:
        st = self._stats(column)
        counts, sums = st["fold_counts"], st["fold_sums"]
        n_all, s_all = counts.sum(axis=0), sums.sum(axis=0)
        known = pos >= 0
        p = np.where(known, pos, 0)
        if fold is None:
            prior = s_all.sum() / n_all.sum() if n_all.sum() else 0.0
            n = np.where(known, n_all[p] if len(n_all) else 0.0, 0.0)
            s = np.where(known, s_all[p] if len(s_all) else 0.0, 0.0)
        else:  # out of fold: leave this row's fold out of the category and of the prior
            fold_n, fold_s = counts.sum(axis=1), sums.sum(axis=1)
            rest_n = n_all.sum() - fold_n[fold]
            prior = np.divide(s_all.sum() - fold_s[fold], rest_n, out=np.zeros(len(fold)), where=rest_n > 0)
            n = np.where(known, (n_all[p] - counts[fold, p]) if len(n_all) else 0.0, 0.0)
            s = np.where(known, (s_all[p] - sums[fold, p]) if len(s_all) else 0.0, 0.0)
        return ((s + self.p_smooth * prior) / (n + self.p_smooth)).astype(np.float32)

    def _key_index(self, column: str) -> KeyIndex:
        if column not in self._index:
            st = self._stats(column)
            self._index[column] = KeyIndex(st["kind"], st["keys"])
        return self._index[column]

    def transform(self, df: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        fold = folds(ctx.rows(len(df)), self.kfold, self.fold_seed) if ctx.training else None
        out = {}
        for c, name in zip(df.columns, self.output_column_names(list(df.columns))):
            pos = self._key_index(c).positions(raw_values(df[c]), c)
            out[name] = self._encode(c, pos, fold)
        return pd.DataFrame(out, index=df.index)

    def transform_row(self, values: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if ctx.training:
            raise InputError("TargetEncoding: a single request is never encoded out of fold")
        names = self.output_column_names(list(values))
        return {name: float(self._encode(c, np.array([self._key_index(c).position(v, c)]), None)[0])
                for (c, v), name in zip(values.items(), names)}

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return ColumnSchema(column.name, "float32", (column.tags - {Tags.CATEGORICAL, Tags.LIST}) | {Tags.CONTINUOUS})
