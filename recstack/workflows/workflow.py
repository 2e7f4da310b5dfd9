"""The Workflow: a graph of ops fitted on training data, saved without pickle, applied to
batches (``transform``) and to single serving requests (``transform_request``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import recstack.workflows.ops  # noqa: F401  (registers the built-in ops that load() reads by name)
from recstack.errors import InputError
from recstack.io import atomic_dir, read_json, write_json
from recstack.workflows.graph import Chain, Group, Node
from recstack.workflows.operator import Operator
from recstack.workflows.schema import Schema
from recstack.workflows.values import infer_column_schema

FORMAT = "recstack.workflow"
FORMAT_VERSION = 1


class Workflow:
    """Ops composed with ``>>`` / ``+`` (see :mod:`recstack.workflows.graph`).

    ``fit(train_df)`` collects statistics; ``transform(df)`` returns every output column
    whose input columns are present in ``df`` (in output-schema order); ``transform_request``
    does the same for one raw request dict with identical values.
    """

    def __init__(self, output: Node | Group | Sequence[Any]) -> None:
        self.output_node = Node.of(output)
        self.chains: list[Chain] = []
        for cols, ops in self.output_node.chains():
            if all(op.per_column for op in ops):
                self.chains.extend(((c,), ops) for c in cols)
            else:
                self.chains.append((cols, ops))
        self.ops: list[Operator] = []
        seen: set[int] = set()
        for _, ops in self.chains:
            for op in ops:
                if id(op) not in seen:
                    seen.add(id(op))
                    self.ops.append(op)
        names: list[str] = []
        for cols, ops in self.chains:
            out = list(cols)
            for op in ops:
                out = op.output_column_names(out)
            names.extend(out)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"workflow outputs these columns more than once: {dupes}")
        self._output_names = names
        self.input_schema: Schema | None = None
        self._output_schema: Schema | None = None

    # ------------------------------------------------------------------ properties
    @property
    def input_columns(self) -> list[str]:
        """Raw columns the workflow reads, in first-use order."""
        return list(dict.fromkeys(c for cols, _ in self.chains for c in cols))

    @property
    def output_columns(self) -> list[str]:
        return list(self._output_names)

    @property
    def fitted(self) -> bool:
        return self._output_schema is not None

    @property
    def output_schema(self) -> Schema:
        if self._output_schema is None:
            raise RuntimeError("workflow is not fitted: call fit() or Workflow.load()")
        return self._output_schema

    # ------------------------------------------------------------------ fit
    def fit(self, df: pd.DataFrame, progress: bool = True) -> "Workflow":
        """Fit every op chain on ``df`` (the training split), one pass per chain."""
        missing = [c for c in self.input_columns if c not in df.columns]
        if missing:
            raise InputError(f"workflow fit: input columns {missing} are missing from the training frame")
        self.input_schema = Schema(infer_column_schema(c, df[c]) for c in self.input_columns)
        for cols, ops in tqdm(self.chains, desc="fit workflow", unit="chain", disable=not progress):
            frame = df[list(cols)]
            for i, op in enumerate(ops):
                op.fit(frame)
                if i + 1 < len(ops):
                    frame = op.transform(frame)
        self._output_schema = self._compute_output_schema()
        return self

    def fit_transform(self, df: pd.DataFrame, keep: Sequence[str] = ()) -> pd.DataFrame:
        return self.fit(df).transform(df, keep=keep)

    def _compute_output_schema(self) -> Schema:
        assert self.input_schema is not None
        columns = []
        for cols, ops in self.chains:
            schemas = [self.input_schema[c] for c in cols]
            for op in ops:
                schemas = [op.compute_column_schema(s) for s in schemas]
            columns.extend(schemas)
        return Schema(columns)

    # ------------------------------------------------------------------ batch
    def transform(self, df: pd.DataFrame, keep: Sequence[str] = ()) -> pd.DataFrame:
        """Encoded frame: ``keep`` columns (raw, first), then every output column whose inputs are
        present in ``df``, in output-schema order. Other input columns are dropped."""
        self.output_schema  # noqa: B018 - raises when not fitted
        keep = list(keep)
        absent = [c for c in keep if c not in df.columns]
        if absent:
            raise InputError(f"transform keep: columns {absent} are not in the frame")
        parts: dict[str, pd.Series] = {c: df[c] for c in keep}
        for cols, ops in self.chains:
            if not all(c in df.columns for c in cols):
                continue
            frame = df[list(cols)]
            for op in ops:
                frame = op.transform(frame)
            for name in frame.columns:
                if name in parts:
                    raise InputError(f"transform keep: column {name!r} is also a workflow output")
                parts[name] = frame[name]
        return pd.DataFrame(parts, index=df.index)

    # ------------------------------------------------------------------ serving
    def transform_request(self, row: dict[str, Any], strict: bool = False) -> dict[str, Any]:
        """One raw request -> encoded values (Python ints / floats / lists of ints), equal to
        ``transform`` on a one-row frame. ``strict``: unknown keys raise :class:`InputError`."""
        self.output_schema  # noqa: B018
        if not isinstance(row, dict):
            raise InputError(f"request: expected an object of column -> value, got {type(row).__name__}")
        if strict:
            known = set(self.input_columns)
            unknown = [k for k in row if k not in known]
            if unknown:
                raise InputError(f"request: unknown column(s) {unknown}; known: {self.input_columns}")
        out: dict[str, Any] = {}
        for cols, ops in self.chains:
            if not all(c in row for c in cols):
                continue
            values = {c: row[c] for c in cols}
            for op in ops:
                values = op.transform_row(values)
            out.update(values)
        return out

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(workflow.json content, {file name: numeric array}) for :meth:`save`."""
        arrays: dict[str, np.ndarray] = {}
        op_index = {id(op): i for i, op in enumerate(self.ops)}
        ops_json = [_encode(op.to_dict(), arrays, f"op{i}") for i, op in enumerate(self.ops)]
        doc = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "chains": [{"columns": list(cols), "ops": [op_index[id(op)] for op in ops]}
                       for cols, ops in self.chains],
            "ops": ops_json,
            "input_schema": self.input_schema.to_dict() if self.input_schema else None,
            "output_schema": self.output_schema.to_dict(),
        }
        return doc, arrays

    def save(self, path: str | Path) -> Path:
        """Write ``workflow.json`` + ``*.npy`` into ``path`` (replaced atomically)."""
        doc, arrays = self.to_dict()
        path = Path(path)
        with atomic_dir(path) as tmp:
            for name, arr in arrays.items():
                np.save(tmp / name, arr, allow_pickle=False)
            write_json(tmp / "workflow.json", doc)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Workflow":
        path = Path(path)
        file = path / "workflow.json"
        if not file.is_file():
            raise InputError(f"{file}: no saved workflow here (run `recstack workflow fit` first)")
        try:
            doc = read_json(file)
        except ValueError as exc:
            raise InputError(f"{file}: not valid JSON ({exc})") from None
        if doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
            raise InputError(f"{file}: not a recstack workflow (format/version {doc.get('format')!r}/"
                             f"{doc.get('version')!r})")
        ops = [Operator.from_dict(_decode(o, path)) for o in doc["ops"]]
        nodes = []
        for chain in doc["chains"]:
            node = Node(chain["columns"])
            for i in chain["ops"]:
                node = node >> ops[i]
            nodes.append(node)
        wf = cls(Group(nodes))
        wf.input_schema = Schema.from_dict(doc["input_schema"]) if doc.get("input_schema") else None
        wf._output_schema = Schema.from_dict(doc["output_schema"])
        return wf

    def __repr__(self) -> str:
        return f"Workflow({self.output_node!r})"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:60]


def _encode(obj: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    """JSON-able copy of ``obj``: numeric arrays go to ``arrays`` (-> .npy), text arrays to lists."""
    if isinstance(obj, dict):
        return {str(k): _encode(v, arrays, f"{path}-{_safe(str(k))}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, arrays, f"{path}-{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        if obj.dtype == object or obj.dtype.kind in "US":
            return [None if v is None else str(v) for v in obj.tolist()]
        name = f"{path}.npy"
        n = 1
        while name in arrays:
            n += 1
            name = f"{path}-{n}.npy"
        arrays[name] = obj
        return {"__npy__": name}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
        return [_encode(v, arrays, f"{path}-{i}") for i, v in enumerate(obj)]
    return obj


def _decode(obj: Any, folder: Path) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__npy__"}:
            file = folder / obj["__npy__"]
            if not file.is_file() or file.parent.resolve() != folder.resolve():
                raise InputError(f"{folder / 'workflow.json'}: missing array file {obj['__npy__']!r}")
            return np.load(file, allow_pickle=False)
        return {k: _decode(v, folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, folder) for v in obj]
    return obj
