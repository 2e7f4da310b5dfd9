"""Which encoded columns feed which model input block, decided from the workflow schema's tags.

A model never looks at column names: :meth:`FeatureLayout.from_schema` reads the
``Tags`` of ``workflow.output_schema`` and sorts every column into one of the
blocks below (docs/architecture.md section 4)::

    user_cat   [B, Cu] int64    USER_ID column first, then the other non-list USER categoricals
    user_lists [B, Lu] int64    USER LIST columns, each padded with 0 to its max_length, concatenated
    user_cont  [B, Du] float32  USER CONTINUOUS columns
    history    [B, L]  int64    the user's earlier items (encoded item ids, oldest -> newest, most recent
                                in the last column, left-padded with 0; the models give the same result
                                for either padding side)
    item_cat   [B, Ci] int64    ITEM_ID column first, then the other non-list ITEM categoricals
    item_lists [B, Li] int64    ITEM LIST columns (e.g. genres), padded and concatenated
    item_cont  [B, Di] float32  ITEM CONTINUOUS columns
    context    [B, 3]  int64    the request's (hour, weekday, device) codes (recstack.workflows.request_context);
                                only in a layout whose ``context`` names the columns the model reads (the DLRM's)

Blocks with no column (e.g. ``user_lists`` for MovieLens) are left out of the tensors
dict and of the ONNX inputs. The layout serialises to a plain dict stored in each model's
``config.json``, so serving builds the same blocks without the workflow's Python objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.workflows.request_context import CONTEXT_CARDINALITY, CONTEXT_COLUMNS

DEFAULT_LIST_LENGTH = 16  # used only when a LIST column's schema has no max_length

USER_BLOCKS = ("user_cat", "user_lists", "user_cont", "history", "context")
ITEM_BLOCKS = ("item_cat", "item_lists", "item_cont")


@dataclass(frozen=True)
class CatColumn:
    name: str
    cardinality: int


@dataclass(frozen=True)
class ListColumn:
    name: str
    cardinality: int
    max_length: int


@dataclass
class SideLayout:
    """The columns of one side (user or item), in block order."""

    cat: list[CatColumn] = field(default_factory=list)
    lists: list[ListColumn] = field(default_factory=list)
    cont: list[str] = field(default_factory=list)

    @property
    def id_column(self) -> CatColumn:
        return self.cat[0]

    @property
    def list_width(self) -> int:
        return sum(c.max_length for c in self.lists)

    def to_dict(self) -> dict[str, Any]:
        return {"cat": [asdict(c) for c in self.cat], "lists": [asdict(c) for c in self.lists],
                "cont": list(self.cont)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SideLayout":
        return cls(cat=[CatColumn(**c) for c in d.get("cat", [])],
                   lists=[ListColumn(**c) for c in d.get("lists", [])],
                   cont=list(d.get("cont", [])))


def _tag_names(column: Any) -> set[str]:
    """Tags of a ColumnSchema as upper-case names, whether they are enum members or strings."""
    names: set[str] = set()
    for tag in getattr(column, "tags", ()) or ():
        for attr in ("name", "value"):
            value = getattr(tag, attr, None)
            if isinstance(value, str):
                names.add(value.upper())
        if isinstance(tag, str):
            names.add(tag.upper())
    return names


def _columns(schema: Any) -> list[Any]:
    if hasattr(schema, "columns"):
        cols = schema.columns
        return list(cols.values()) if isinstance(cols, Mapping) else list(cols)
    return list(schema)


@dataclass
class FeatureLayout:
    """Per side: categorical, list and continuous columns; plus the history length and the context
    columns the model reads (names of :data:`~recstack.workflows.request_context.CONTEXT_COLUMNS`
    with their cardinality; empty: the model takes no ``context`` block)."""

    user: SideLayout
    item: SideLayout
    history_length: int
    context: list[CatColumn] = field(default_factory=list)

    # ----------------------------------------------------------------- building
    @classmethod
    def from_schema(cls, schema: Any, history_length: int) -> "FeatureLayout":
        """Sort the schema's columns into blocks by their tags (USER/ITEM, *_ID, CATEGORICAL, LIST, CONTINUOUS).

        Raises :class:`InputError` when the schema has no USER_ID or no ITEM_ID column.
        TARGET columns are skipped; a column tagged with neither side is ignored.
        """
        if int(history_length) < 1:
            raise InputError(f"history_length: must be >= 1, got {history_length}")
        sides = {"USER": SideLayout(), "ITEM": SideLayout()}
        ids: dict[str, CatColumn] = {}
        for col in _columns(schema):
            tags = _tag_names(col)
            if "TARGET" in tags:
                continue
            side = None
            for s in ("USER", "ITEM"):
                if s in tags or f"{s}_ID" in tags:
                    side = s
            if side is None:
                continue
            name = str(col.name)
            is_list = bool(getattr(col, "is_list", False)) or "LIST" in tags
            if f"{side}_ID" in tags:
                card = getattr(col, "cardinality", None)
                if not card:
                    raise InputError(f"schema column {name!r}: {side}_ID column has no cardinality")
                ids[side] = CatColumn(name, int(card))
            elif "CATEGORICAL" in tags:
                card = getattr(col, "cardinality", None)
                if not card:
                    raise InputError(f"schema column {name!r}: CATEGORICAL column has no cardinality")
                if is_list:
                    max_len = getattr(col, "max_length", None) or DEFAULT_LIST_LENGTH
                    sides[side].lists.append(ListColumn(name, int(card), int(max_len)))
                else:
                    sides[side].cat.append(CatColumn(name, int(card)))
            elif "CONTINUOUS" in tags and not is_list:
                sides[side].cont.append(name)
        for side in ("USER", "ITEM"):
            if side not in ids:
                raise InputError(f"schema: no column tagged {side}_ID (tags decide the model inputs)")
            sides[side].cat.insert(0, ids[side])
        return cls(user=sides["USER"], item=sides["ITEM"], history_length=int(history_length))

    # ----------------------------------------------------------- serialising
    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user.to_dict(), "item": self.item.to_dict(),
                "history_length": self.history_length, "context": [asdict(c) for c in self.context]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureLayout":
        return cls(user=SideLayout.from_dict(d["user"]), item=SideLayout.from_dict(d["item"]),
                   history_length=int(d["history_length"]),
                   context=[CatColumn(**c) for c in d.get("context", [])])

    def with_context(self, names: Iterable[str]) -> FeatureLayout:
        """This layout reading the context columns ``names`` (e.g. ``("hour", "weekday")``) too."""
        unknown = [n for n in names if n not in CONTEXT_COLUMNS]
        if unknown:
            raise InputError(f"context: unknown column(s) {unknown}, expected among {list(CONTEXT_COLUMNS)}")
        columns = [CatColumn(n, CONTEXT_CARDINALITY[n]) for n in CONTEXT_COLUMNS if n in set(names)]
        return FeatureLayout(self.user, self.item, self.history_length, columns)

    @property
    def context_index(self) -> list[int]:
        """Positions of the model's context columns in the ``context`` block."""
        return [CONTEXT_COLUMNS.index(c.name) for c in self.context]

    # ------------------------------------------------------------- properties
    @property
    def n_items(self) -> int:
        """Cardinality of the item id column (rows of the item embedding table, incl. 0 = pad, 1 = OOV)."""
        return self.item.id_column.cardinality

    @property
    def n_users(self) -> int:
        return self.user.id_column.cardinality

    def user_blocks(self) -> list[str]:
        """Names of the user-side input blocks that exist, in ONNX input order."""
        out = ["user_cat"]
        if self.user.lists:
            out.append("user_lists")
        if self.user.cont:
            out.append("user_cont")
        out.append("history")
        if self.context:
            out.append("context")
        return out

    def item_blocks(self) -> list[str]:
        out = ["item_cat"]
        if self.item.lists:
            out.append("item_lists")
        if self.item.cont:
            out.append("item_cont")
        return out

    # ---------------------------------------------------------------- tensors
    def tensors(self, df_encoded: pd.DataFrame, history: np.ndarray | None = None,
                sides: Iterable[str] = ("user", "item")) -> dict[str, np.ndarray]:
        """Build the input blocks from encoded columns (the output of ``workflow.transform``).

        A side is built when all of its columns are in ``df_encoded``; ``history`` ([B, L]
        encoded item ids, or a sequence of lists oldest -> newest such as the feature store's
        ``recent_items``) is added when given: the most recent ``history_length`` kept,
        right-aligned (left-padded with 0). Missing continuous values become 0.
        """
        out: dict[str, np.ndarray] = {}
        n = len(df_encoded)
        for side_name in sides:
            side = self.user if side_name == "user" else self.item
            needed = [c.name for c in side.cat] + [c.name for c in side.lists] + side.cont
            missing = [c for c in needed if c not in df_encoded.columns]
            if missing:
                if len(missing) == len(needed):
                    continue  # this side is not in the frame
                raise InputError(f"encoded frame: {side_name} column(s) {missing} missing")
            out[f"{side_name}_cat"] = np.stack(
                [_as_int64(df_encoded[c.name], c.name) for c in side.cat], axis=1) if side.cat else \
                np.zeros((n, 0), np.int64)
            if side.lists:
                out[f"{side_name}_lists"] = np.concatenate(
                    [pad_lists(df_encoded[c.name], c.max_length, keep="first") for c in side.lists], axis=1)
            if side.cont:
                cont = np.stack([pd.to_numeric(df_encoded[c], errors="coerce").to_numpy(np.float32)
                                 for c in side.cont], axis=1)
                out[f"{side_name}_cont"] = np.nan_to_num(cont, nan=0.0, posinf=0.0, neginf=0.0)
        if history is not None:
            out["history"] = pad_lists(history, self.history_length, keep="last", align="right")
        return out


def _as_int64(series: pd.Series, name: str) -> np.ndarray:
    values = pd.to_numeric(series, errors="coerce")
    if values.isna().any():
        values = values.fillna(0)
    return values.to_numpy(np.int64)


HISTORY_TIMES = "history_times"
"""The sequence user tower's time input: int64 [B, L], unix seconds of each ``history`` item (0 = pad)."""


def reads_history_times(hyperparameters: Mapping[str, Any]) -> bool:
    """Whether a saved two-tower (its ``config.json`` ``hyperparameters``) takes :data:`HISTORY_TIMES`:
    the sequence encoder with ``time_gaps`` (models saved before that switch do not)."""
    return hyperparameters.get("user_encoder") == "sasrec" and bool(hyperparameters.get("time_gaps", False))


def pad_lists(values: Any, length: int, keep: str = "first", align: str = "left") -> np.ndarray:
    """Lists (or a 2-D array with 0 = pad) -> ``[B, length]`` int64 padded with 0.

    ``keep="last"`` keeps the last ``length`` elements of a longer list (histories:
    the most recent items), ``"first"`` the first ones. ``align="left"`` puts the values
    first and the padding after them; ``"right"`` pads on the left.
    """
    if isinstance(values, np.ndarray) and values.ndim == 2:
        arr = values.astype(np.int64, copy=False)
        if arr.shape[1] == length and align == "left" and keep == "first":
            return np.ascontiguousarray(arr)
        values = [row[row != 0] for row in arr]
    out = np.zeros((len(values), length), dtype=np.int64)
    for i, row in enumerate(values):
        if row is None or (isinstance(row, float) and np.isnan(row)):
            continue
        row = np.asarray(row, dtype=np.int64).ravel()
        if row.size == 0:
            continue
        row = row[-length:] if keep == "last" else row[:length]
        if align == "right":
            out[i, length - row.size:] = row
        else:
            out[i, : row.size] = row
    return out
