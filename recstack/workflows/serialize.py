"""Saved workflow format: ``workflow.json`` (graph, op configs, schemas) + ``*.npy`` for numeric
statistics; text arrays are JSON lists. No pickle: ``np.load(..., allow_pickle=False)``.

Format version 2 (this one) stores the graph as nodes in dependency order::

    {"format": "recstack.workflow", "version": 2,
     "nodes": [{"columns": [...], "schema": ...}, {"parent": 0, "op": 0, "schema": ...},
               {"members": [1, 3], "schema": ...}],
     "output": 4, "ops": [{"op": "Categorify", "config": {...}, "stats": {...}}],
     "input_schema": ..., "output_schema": ...}

A file of another version is refused with an :class:`InputError` that says which versions
are involved (version 1, the chain format, is read by no current code: refit the workflow).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recstack.errors import InputError
from recstack.io import atomic_dir, read_json, write_json
from recstack.workflows.graph import Group, Node

if TYPE_CHECKING:
    from recstack.workflows.workflow import Workflow

FORMAT = "recstack.workflow"
FORMAT_VERSION = 2


def dump(workflow: "Workflow", path: Path) -> Path:
    plan = workflow.plan
    arrays: dict[str, np.ndarray] = {}
    op_index = {id(op): i for i, op in enumerate(plan.ops)}
    nodes = []
    for node in plan.nodes:
        spec: dict[str, Any]
        if isinstance(node, Group):
            spec = {"members": [plan.pos(m) for m in node.members]}
        elif node.columns is not None:
            spec = {"columns": list(node.columns)}
        else:
            spec = {"parent": plan.pos(node.parent), "op": op_index[id(node.op)]}  # type: ignore[arg-type]
        spec["schema"] = plan.schemas[plan.pos(node)].to_dict()
        nodes.append(spec)
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "nodes": nodes,
        "output": plan.pos(workflow.output_node),
        "ops": [_encode(op.to_dict(), arrays, f"op{i}") for i, op in enumerate(plan.ops)],
        "input_schema": workflow.input_schema.to_dict() if workflow.input_schema else None,
        "output_schema": workflow.output_schema.to_dict(),
    }
    with atomic_dir(path) as tmp:
        for name, arr in arrays.items():
            np.save(tmp / name, arr, allow_pickle=False)
        write_json(tmp / "workflow.json", doc)
    return path


def load_doc(path: Path) -> tuple[dict[str, Any], Path]:
    file = path / "workflow.json"
    if not file.is_file():
        raise InputError(f"{file}: no saved workflow here (run `recstack workflow fit` first)")
    try:
        doc = read_json(file)
    except ValueError as exc:
        raise InputError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{file}: not a recstack workflow (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    if doc.get("version") != FORMAT_VERSION:
        raise InputError(f"{file}: saved workflow format version {doc.get('version')!r}, this recstack reads "
                         f"version {FORMAT_VERSION}: refit it (`recstack workflow fit`)")
    return doc, path


def undump(obj: Any, folder: Path) -> Any:
    """Inverse of :func:`_encode`: ``{"__npy__": name}`` -> the array read from ``folder``."""
    if isinstance(obj, dict):
        if set(obj) == {"__npy__"}:
            file = folder / obj["__npy__"]
            if not file.is_file() or file.parent.resolve() != folder.resolve():
                raise InputError(f"{folder / 'workflow.json'}: missing array file {obj['__npy__']!r}")
            return np.load(file, allow_pickle=False)
        return {k: undump(v, folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [undump(v, folder) for v in obj]
    return obj


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
            return [None if v is None else (v if isinstance(v, (int, float)) else str(v)) for v in obj.tolist()]
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


__all__ = ["FORMAT", "FORMAT_VERSION", "Node", "dump", "load_doc", "undump"]
