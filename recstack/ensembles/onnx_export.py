"""`recstack export --backend onnxruntime`: the ensemble with its ONNX models served by Triton's
onnxruntime backend (NGC ``tritonserver`` images, GPU or CPU instances), the rest python models.

The python-backend export (the default; the only one the development machines' tritonserver
runs) runs the user tower and the DLRM inside python steps through onnxruntime. Here they
become ``platform: "onnxruntime_onnx"`` models and the python steps between them are fused into
one python model per stretch (:meth:`ServingGraph.fused`), so a request makes five hops::

    user_id [B,1], top_n [B,1] (+ optional request_time [B,1], device [B,1])
      -> request_context__query_user_features
                                         python       request context codes, online store read, Workflow encoding
      -> user_tower                      onnxruntime  user_tower.onnx: user blocks -> user_embedding [B,d]
      -> retrieve__query_item_features   python       FAISS top-K + item features from memory
      -> dlrm                            onnxruntime  dlrm.onnx: user [B,*] + item [B,K,*] -> score [B,K]
      -> fuse_scores__filter_top_n       python       dlrm_weight*logit + retrieval_weight*retrieval
                                                      score (FuseScores), seen filter, top N

The DLRM's output ``score`` (raw logits) is wired to the tensor ``dlrm_logits``; the fusion that
:class:`~recstack.ensembles.steps.Rank` does inside its step moves to
:class:`~recstack.ensembles.fuse_step.FuseScores`, with the same weights. Which ops become ONNX
models is decided by step class (:data:`ONNX_SPLITS`), so other ops added to the graph stay
python steps in the stretch they fall in. Every model is version 1 (numbered versions and
``recstack models deploy`` belong to the fused python export).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recstack.errors import InputError
from recstack.ensembles.fuse_step import LOGITS
from recstack.ensembles.graph import (
    ENSEMBLE_INPUTS, ENSEMBLE_NAME, ENSEMBLE_OUTPUTS, MAX_BATCH_SIZE, MAX_QUEUE_DELAY_US, OPTIONAL_INPUTS, STEPS,
    ServingGraph, ServingOp, setting_environment,
)
from recstack.io import atomic_dir
from recstack.ensembles.model_repo import Artifact, TensorSpec, write_ensemble_model, write_python_model
from recstack.ensembles.onnx_model import onnx_signature, write_onnx_model
from recstack.ensembles.python_model import VERSION_OUTPUT

FUSE_STEP = "recstack.ensembles.fuse_step:FuseScores"
BACKENDS = ("python", "onnxruntime")


@dataclass(frozen=True)
class OnnxOp:
    """One ONNX file served as a Triton onnxruntime model: ``inputs``/``outputs`` as in the file
    (dims without the batch axis), ``output_map``: ONNX output -> ensemble tensor."""

    name: str
    onnx_path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    output_map: dict[str, str] = field(default_factory=dict)


def _onnx_inputs(op: ServingOp, path: Path) -> list[TensorSpec]:
    """The op's input specs for the tensors the ONNX file reads, in the file's order."""
    inputs, _ = onnx_signature(path)
    specs = {s.name: s for s in op.inputs}
    missing = [t.name for t in inputs if t.name not in specs]
    if missing:
        raise InputError(f"{path}: ONNX input(s) {missing} are not inputs of step {op.name} "
                         f"({sorted(specs)}); re-export the models with `recstack train`")
    return [specs[t.name] for t in inputs]


def _model_dir(op: ServingOp) -> Path:
    if "model_dir" not in op.artifacts:
        raise InputError(f"step {op.name}: has no model_dir artifact to take the ONNX file from")
    return Path(op.artifacts["model_dir"].source)


def split_embed_user(op: ServingOp) -> list[OnnxOp | ServingOp]:
    """EmbedUser -> the user tower as an onnxruntime model (its output is ``user_embedding`` as is)."""
    path = _model_dir(op) / "user_tower.onnx"
    _, outputs = onnx_signature(path)
    names = [t.name for t in outputs]
    if names != [s.name for s in op.outputs]:
        raise InputError(f"{path}: ONNX outputs {names} are not the step's {[s.name for s in op.outputs]}")
    return [OnnxOp(op.name, path, _onnx_inputs(op, path), list(op.outputs), {s.name: s.name for s in op.outputs})]


def split_rank(op: ServingOp) -> list[OnnxOp | ServingOp]:
    """Rank -> the DLRM as an onnxruntime model (``score`` [K] -> ``dlrm_logits``) + FuseScores."""
    model_dir = _model_dir(op)
    path = model_dir / "dlrm.onnx"
    _, outputs = onnx_signature(path)
    if len(outputs) != 1 or len(op.outputs) != 1:
        raise InputError(f"{path}: expected one ONNX output (the score) and one step output, got "
                         f"{[t.name for t in outputs]} and {[s.name for s in op.outputs]}")
    (rank,) = op.outputs
    retrieval = [s for s in op.inputs if s.name == "retrieval_scores"]
    if not retrieval:
        raise InputError(f"step {op.name}: has no retrieval_scores input to fuse with")
    score = TensorSpec(outputs[0].name, np.float32, rank.dims)
    fuse = ServingOp("fuse_scores", FUSE_STEP, {}, [TensorSpec(LOGITS, np.float32, rank.dims), retrieval[0]], [rank],
                     artifacts={"model_dir": Artifact(model_dir, ("config.json",))})
    return [OnnxOp("dlrm", path, _onnx_inputs(op, path), [score], {score.name: LOGITS}), fuse]


ONNX_SPLITS: dict[str, Callable[[ServingOp], list[OnnxOp | ServingOp]]] = {
    f"{STEPS}:EmbedUser": split_embed_user,
    f"{STEPS}:Rank": split_rank,
}
"""Step class -> how that op becomes onnxruntime model(s) (+ python ops after it)."""


def split_graph(graph: ServingGraph, outputs: list[TensorSpec] = ENSEMBLE_OUTPUTS) -> list[OnnxOp | ServingOp]:
    """The graph as the models of the onnxruntime export, in order: ONNX ops split out, each
    stretch of python ops between them fused into one python op returning what later models or
    the ensemble read (the last one also returns ``model_version``)."""
    parts: list[OnnxOp | ServingOp] = []
    for op in graph.ops:
        split = ONNX_SPLITS.get(op.step_class)
        parts.extend(split(op) if split else [op])
    groups: list[OnnxOp | list[ServingOp]] = []
    for part in parts:
        if isinstance(part, OnnxOp):
            groups.append(part)
        elif groups and isinstance(groups[-1], list):
            groups[-1].append(part)
        else:
            groups.append([part])
    last_python = max(i for i, g in enumerate(groups) if isinstance(g, list))
    wanted_outputs = {s.name for s in outputs}
    models: list[OnnxOp | ServingOp] = []
    for index, group in enumerate(groups):
        if isinstance(group, OnnxOp):
            models.append(group)
            continue
        read_later = {s.name for later in groups[index + 1:]
                      for s in (later.inputs if isinstance(later, OnnxOp) else [i for op in later for i in op.inputs])}
        produced: dict[str, TensorSpec] = {}
        for op in group:
            produced.update({s.name: s for s in op.outputs})
        returned = [s for name, s in produced.items()
                    if name != VERSION_OUTPUT and (name in read_later or name in wanted_outputs)]
        if index == last_python:
            returned += [s for s in outputs if s.name == VERSION_OUTPUT]
        models.append(ServingGraph(group).fused("__".join(op.name for op in group), returned))
    return models


def export_onnxruntime_ensemble(graph: ServingGraph, repo_dir: Path, name: str = ENSEMBLE_NAME,
                                max_batch_size: int = MAX_BATCH_SIZE, *, instances: int = 1,
                                onnx_instances: int = 1, instance_kind: str = "KIND_GPU",
                                max_queue_delay_us: int | None = MAX_QUEUE_DELAY_US,
                                outputs: list[TensorSpec] = ENSEMBLE_OUTPUTS) -> Path:
    """Write ``repo_dir`` as the onnxruntime-backend ensemble ``name`` (see the module docstring).

    python models get ``instances`` CPU instances; the ONNX models ``onnx_instances`` of
    ``instance_kind`` (``KIND_GPU``: onnxruntime's CUDA provider, one set per GPU; ``KIND_CPU``).
    Every model has dynamic batching with a ``max_queue_delay_us`` window (None: off). The
    repository is built in a temporary folder and swapped in whole.
    """
    repo_dir = Path(repo_dir)
    with atomic_dir(repo_dir) as tmp:
        steps = []
        for model in split_graph(graph, outputs):
            if isinstance(model, OnnxOp):
                write_onnx_model(tmp, model.name, model.onnx_path, model.inputs, model.outputs,
                                 max_batch_size=max_batch_size, instance_count=onnx_instances,
                                 instance_kind=instance_kind, max_queue_delay_us=max_queue_delay_us)
                steps.append((model.name, {s.name: s.name for s in model.inputs}, dict(model.output_map)))
                continue
            write_python_model(tmp, model.name, model.step_class, model.params, model.inputs, model.outputs,
                               max_batch_size=max_batch_size, instance_count=instances,
                               max_queue_delay_us=max_queue_delay_us, artifacts=model.artifacts,
                               environment=setting_environment(model.settings), optional_inputs=model.optional)
            steps.append((model.name, {s.name: s.name for s in model.inputs}, {s.name: s.name for s in model.outputs}))
        write_ensemble_model(tmp, name, ENSEMBLE_INPUTS, outputs, steps, max_batch_size=max_batch_size,
                             optional_inputs=OPTIONAL_INPUTS)
    return repo_dir
