"""The Workflow: a graph of ops fitted on training data, saved without pickle, applied to
batches (``transform``, pandas or Dask partitions) and to single serving requests
(``transform_request``) with identical values.

Fitting takes as few passes over the data as the graph allows: an op's statistics need its
inputs transformed by the fitted ops above it, so pass ``d`` fits every op whose deepest
fitted ancestor was fitted in pass ``d - 1`` (ops fitted per entity get their own pass over
one row per key). Each pass maps ``fit_partial`` over partitions and combines the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import recstack.workflows.ops  # noqa: F401  (registers the built-in ops that load() reads by name)
from recstack.errors import InputError
from recstack.workflows.engines import Engine, PandasEngine, make_engine
from recstack.workflows.graph import Group, Node
from recstack.workflows.operator import Context, Operator
from recstack.workflows.plan import Plan
from recstack.workflows.schema import Schema
from recstack.workflows.serialize import FORMAT, FORMAT_VERSION, dump, load_doc, undump
from recstack.workflows.values import check_request_value, infer_column_schema

__all__ = ["FORMAT", "FORMAT_VERSION", "Workflow", "detach", "positional"]


def detach(out: pd.DataFrame, raw: pd.DataFrame) -> pd.DataFrame:
    """``out`` with a copy of every column that shares memory with a column of ``raw``: ops read
    the raw columns without copying them (``plan.select``) and pass-through ops (AddTags) return
    them as they are, but an output written to in place must not change the caller's frame."""
    sources = [a for a in (raw[c].to_numpy() for c in raw.columns) if isinstance(a, np.ndarray)]
    shared = [c for c in out.columns if isinstance(arr := out[c].to_numpy(), np.ndarray)
              and any(np.may_share_memory(arr, a) for a in sources)]
    if not shared:
        return out
    return pd.DataFrame({c: out[c].copy() if c in shared else out[c] for c in out.columns}, index=out.index,
                        copy=False)


def positional(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` indexed 0..n-1: itself when it already is (``reset_index`` copies every column)."""
    index = df.index
    if isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1:
        return df
    return df.reset_index(drop=True)


class Workflow:
    """Ops composed with ``>>`` / ``+`` (see :mod:`recstack.workflows.graph`).

    ``fit(train)`` collects statistics; ``transform(df)`` returns every output column whose
    input columns are present in ``df`` (in output-schema order); ``transform_request`` does
    the same for one raw request dict with identical values. ``train`` may be a pandas or a
    Dask DataFrame (``transform`` of a Dask DataFrame is a lazy Dask DataFrame).
    """

    def __init__(self, output: Node | Group | Sequence[Any]) -> None:
        self.output_node = Node.of(output)
        self.plan = Plan(self.output_node)
        names = self.plan.static_columns(self.output_node)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"workflow outputs these columns more than once: {dupes}")
        self.input_schema: Schema | None = None
        self._output_schema: Schema | None = None
        self._fit_memo: tuple[Any, dict[int, pd.DataFrame]] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def ops(self) -> list[Operator]:
        return self.plan.ops

    @property
    def input_columns(self) -> list[str]:
        """Raw columns the workflow reads (selections, then dependencies)."""
        return self.plan.input_columns()

    @property
    def output_columns(self) -> list[str]:
        return self.output_schema.names if self.fitted else self.plan.static_columns(self.output_node)

    @property
    def fitted(self) -> bool:
        return self._output_schema is not None

    @property
    def output_schema(self) -> Schema:
        if self._output_schema is None:
            raise RuntimeError("workflow is not fitted: call fit() or Workflow.load()")
        return self._output_schema

    @property
    def group_keys(self) -> list[str]:
        """Columns whose rows an op needs in one partition (DifferenceLag, Groupby)."""
        return list(dict.fromkeys(op.group_key for op in self.ops if op.group_key))

    @property
    def groups_rows(self) -> bool:
        """True when the output has one row per group key (a Groupby), not one per input row."""
        return any(op.groups_rows for op in self.ops)

    @property
    def uses_row_ids(self) -> bool:
        return any(getattr(op, "uses_row_ids", False) for op in self.ops) or bool(self.group_keys)

    # ------------------------------------------------------------------ fit
    def fit(self, data: Any, progress: bool = True, partition_rows: int | None = None) -> "Workflow":
        """Fit every op on ``data`` (the training split: pandas or Dask DataFrame)."""
        engine = make_engine(data, partition_rows)
        if len(self.group_keys) > 1:
            raise InputError(f"workflow fit: ops group rows by different keys {self.group_keys}; split the workflow")
        grouped: Engine | None = None  # shuffled on the group key, made once and only for a pass that needs it
        present = set(engine.columns())
        for col in self.input_columns:
            if col not in present:
                raise InputError(f"workflow fit: {self.plan.consumer_of(col)}: column {col!r} is not in the data")
        sample = engine.sample()
        self.input_schema = Schema(infer_column_schema(c, sample[c]) for c in self.input_columns)
        self.plan.columns.clear()
        self.plan.schemas.clear()
        fitted: set[int] = {id(op) for op in self.ops if not op.needs_fit}
        self._update_schemas(fitted)
        passes = self._passes()
        # one in-memory partition: keep each node's frame across passes instead of recomputing it
        single = isinstance(engine, PandasEngine) and len(engine.partitions()) == 1
        shared: dict[str, dict[int, pd.DataFrame]] = {}
        bar = tqdm(total=len(passes), desc="fit workflow", unit="pass", disable=not progress)
        for key, nodes in passes:
            source = engine
            if self.group_keys and any(self._after_grouping(n) for n in nodes):
                grouped = grouped or engine.by_key(self.group_keys[0])
                source = grouped
            if key is not None:
                source = source.unique_by(key)

            def partial(part: pd.DataFrame, rows: np.ndarray, nodes: list[Node] = nodes) -> list[Any]:
                part = positional(part)  # unique positions (shuffled partitions repeat labels)
                ctx = Context(raw=part, row_ids=rows, training=True)
                memo: dict[int, pd.DataFrame] = shared.setdefault(key or "", {}) if single else {}
                out = []
                for node in nodes:
                    frame = self.plan.frame(node.parent, part, ctx, memo)  # type: ignore[arg-type]
                    try:
                        out.append(node.op.fit_partial(frame, ctx))  # type: ignore[union-attr]
                    except InputError as exc:
                        raise InputError(f"{node.op.name}: {exc}") from None  # type: ignore[union-attr]
                return out

            results = source.map(partial, rows=any(getattr(n.op, "uses_row_ids", False) for n in nodes))
            for op in {id(n.op): n.op for n in nodes}.values():
                parts = [r[i] for r in results for i, n in enumerate(nodes) if n.op is op]
                op.finalize(op.merge_partials(parts))  # type: ignore[union-attr]
                fitted.add(id(op))
            self._update_schemas(fitted)
            bar.update()
        bar.close()
        self._output_schema = self.plan.schemas[self.plan.pos(self.output_node)]
        self._fit_memo = (data, shared.get("", {})) if single else None
        return self

    def _after_grouping(self, node: Node) -> bool:
        """True when the frame ``node`` fits on comes through an op that needs every row of a key
        in one partition (DifferenceLag, Groupby). Other passes read the data as it is partitioned
        (on Dask: no shuffle; statistics such as a key's last time are combined from partials)."""
        stack: list[Node | Group] = [node.parent] if node.parent is not None else []
        while stack:
            current = stack.pop()
            if isinstance(current, Node) and current.op is not None and current.op.group_key:
                return True
            stack.extend(self.plan.parents(current))
        return False

    def _passes(self) -> list[tuple[str | None, list[Node]]]:
        """(fit source key, op nodes) per pass, in dependency order."""
        depth: dict[int, int] = {}
        for node in self.plan.nodes:
            parents = [depth[id(p)] for p in self.plan.parents(node)]
            d = max(parents, default=0)
            if isinstance(node, Node) and node.op is not None and node.op.needs_fit:
                d += 1
            depth[id(node)] = d
        by_pass: dict[tuple[int, str], list[Node]] = {}
        for node in self.plan.op_nodes():
            if node.op.needs_fit:  # type: ignore[union-attr]
                by_pass.setdefault((depth[id(node)], node.op.fit_per or ""), []).append(node)  # type: ignore[union-attr]
        return [(key or None, nodes) for (_, key), nodes in sorted(by_pass.items(), key=lambda kv: kv[0])]

    def _update_schemas(self, fitted: set[int]) -> None:
        plan = self.plan
        assert self.input_schema is not None
        for node in plan.nodes:
            pos = plan.pos(node)
            if pos in plan.schemas:
                continue
            if isinstance(node, Node) and node.columns is not None:
                schema = self.input_schema.select_by_name(*node.columns)
            elif isinstance(node, Group):
                if any(plan.pos(m) not in plan.schemas for m in node.members):
                    continue
                schema = Schema([c for m in node.members for c in plan.schemas[plan.pos(m)]])
            else:
                parent_pos = plan.pos(node.parent)  # type: ignore[arg-type]
                if parent_pos not in plan.schemas or id(node.op) not in fitted:
                    continue
                schema = node.op.compute_output_schema(plan.schemas[parent_pos])  # type: ignore[union-attr]
            plan.schemas[pos] = schema
            plan.columns[pos] = schema.names

    def fit_transform(self, data: Any, keep: Sequence[str] = (), progress: bool = True) -> Any:
        """Fit, then transform the same rows in training mode (TargetEncoding out of fold);
        an in-memory frame reuses the columns fit already computed."""
        self.fit(data, progress=progress)
        cached, self._fit_memo = self._fit_memo, None
        if cached is not None and cached[0] is data:
            rows = np.arange(len(data), dtype=np.int64)
            return self.transform_partition(data, rows, keep=keep, training=True, memo=cached[1])
        return self.transform(data, keep=keep, training=True)

    # ------------------------------------------------------------------ batch
    def transform(self, data: Any, keep: Sequence[str] = (), training: bool = False,
                  row_offset: int = 0) -> Any:
        """Encoded frame: ``keep`` columns (raw, first), then every output column whose inputs are
        present, in output-schema order. ``training``: encode each row as fit saw it (out of
        fold). A Dask DataFrame gives a lazy Dask DataFrame (see ``dask_exec.transform_dask``)."""
        self.output_schema  # noqa: B018 - raises when not fitted
        if not isinstance(data, pd.DataFrame):
            from recstack.workflows.dask_exec import transform_dask

            return transform_dask(self, data, keep=keep, training=training)
        rows = np.arange(row_offset, row_offset + len(data), dtype=np.int64)
        return self.transform_partition(data, rows, keep=keep, training=training)

    def transform_partition(self, df: pd.DataFrame, row_ids: np.ndarray, keep: Sequence[str] = (),
                            training: bool = False, memo: dict[int, pd.DataFrame] | None = None) -> pd.DataFrame:
        """One partition whose rows have global numbers ``row_ids``."""
        keep = list(keep)
        absent = [c for c in keep if c not in df.columns]
        if absent:
            raise InputError(f"transform keep: columns {absent} are not in the frame")
        labels = df.index
        df = positional(df)  # unique positions (shuffled partitions repeat labels)
        ctx = Context(raw=df, row_ids=row_ids, training=training)
        out = self.plan.frame(self.output_node, df, ctx, {} if memo is None else memo)
        clash = [c for c in keep if c in out.columns]
        if clash:
            raise InputError(f"transform keep: column {clash[0]!r} is also a workflow output")
        if keep and self.groups_rows:
            raise InputError("transform keep: a Groupby workflow has one row per key; keep is not possible")
        out = detach(out, df)
        if keep:
            out = pd.concat([df.loc[out.index, keep], out], axis=1)
        if not self.groups_rows:
            same_rows = out.index.equals(df.index)  # no Filter: keep the caller's labels as they are
            out.index = labels if same_rows else labels[out.index.to_numpy()]
        return out

    # ------------------------------------------------------------------ serving
    def transform_request(self, row: dict[str, Any], strict: bool = False,
                          complete: bool = False) -> dict[str, Any] | None:
        """One raw request -> encoded values (Python ints / floats / lists), equal to ``transform``
        on a one-row frame; None when a Filter drops it. ``strict``: unknown keys raise
        :class:`InputError`; ``complete``: so does a missing input column (naming the op)."""
        self.output_schema  # noqa: B018
        if not isinstance(row, dict):
            raise InputError(f"request: expected an object of column -> value, got {type(row).__name__}")
        if strict:
            known = set(self.input_columns)
            unknown = [k for k in row if k not in known]
            if unknown:
                raise InputError(f"request: unknown column(s) {unknown}; known: {self.input_columns}")
        if complete:
            self.check_request(row)
        inputs = set(self.input_columns)
        for column, value in row.items():
            if column in inputs:
                check_request_value(value, column)
        return self.plan.row(self.output_node, row, Context(raw=row), {})

    def check_request(self, row: dict[str, Any]) -> None:
        """Raise :class:`InputError` naming the op and column when ``row`` lacks an input column."""
        for col in self.input_columns:
            if col not in row:
                raise InputError(f"request: {self.plan.consumer_of(col)}: column {col!r} is missing")

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path) -> Path:
        """Write ``workflow.json`` + ``*.npy`` into ``path`` (replaced atomically)."""
        return dump(self, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "Workflow":
        """Read a saved workflow; another format version is an :class:`InputError`."""
        doc, folder = load_doc(Path(path))
        ops = [Operator.from_dict(o) for o in undump(doc["ops"], folder)]
        built: list[Node | Group] = []
        for spec in doc["nodes"]:
            if "columns" in spec:
                built.append(Node(spec["columns"]))
            elif "members" in spec:
                built.append(Group([built[i] for i in spec["members"]]))
            else:
                built.append(Node(parent=built[spec["parent"]], op=ops[spec["op"]]))
        wf = cls(built[doc["output"]])
        wf.input_schema = Schema.from_dict(doc["input_schema"])
        for node, spec in zip(built, doc["nodes"]):
            pos = wf.plan.pos(node)
            wf.plan.schemas[pos] = Schema.from_dict(spec["schema"])
            wf.plan.columns[pos] = wf.plan.schemas[pos].names
        wf._output_schema = Schema.from_dict(doc["output_schema"])
        return wf

    def __repr__(self) -> str:
        return f"Workflow({self.output_node!r})"
