"""Write an ONNX model for Triton's onnxruntime backend (what NGC ``tritonserver`` images run).

A model is ``<repo>/<name>/config.pbtxt`` (``platform: "onnxruntime_onnx"``, ``backend:
"onnxruntime"``) + ``<repo>/<name>/<version>/model.onnx``. The ``tritonserver`` of the
``nvidia-pytriton`` wheel used on the development machines has the python backend only, so
such a model is served by an NGC image (``docker/Dockerfile.triton``); here it is checked, not
served (``recstack.ensembles.repo_runner`` runs it with onnxruntime in-process).

The config's inputs and outputs are checked against the ONNX file when it is written: every
ONNX graph input is declared with the same name and dtype, every declared output exists in
the graph, ranks agree (``dims`` exclude the batch axis, which must be dynamic in the ONNX
file when ``max_batch_size > 0``) and each size the ONNX file fixes is the declared one.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recstack.errors import InputError
from recstack.io import atomic_dir
from recstack.ensembles.model_repo import (
    TensorSpec, _check_model_name, _check_specs, _pbtxt_str, _tensor_block, _write_signature, version_policy,
)

ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
ONNX_FILE = "model.onnx"
INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU")
"""``instance_group`` kinds: KIND_GPU runs onnxruntime's CUDA provider inside Triton, KIND_CPU its CPU one."""


@dataclass(frozen=True)
class OnnxTensor:
    """One input or output of an ONNX graph: ``shape`` has an int per fixed size and None per
    dynamic (named or unnamed) axis, the batch axis included."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


def onnx_signature(path: str | Path) -> tuple[list[OnnxTensor], list[OnnxTensor]]:
    """The graph inputs (initializers left out) and outputs of an ONNX file, read with ``onnx``."""
    import onnx
    from onnx import helper

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ONNX file missing (run `recstack train` first)")
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}

    def tensors(values) -> list[OnnxTensor]:
        out = []
        for value in values:
            if value.name in initializers:
                continue
            kind = value.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim)
            out.append(OnnxTensor(value.name, np.dtype(helper.tensor_dtype_to_np_dtype(kind.elem_type)), shape))
        return out

    return tensors(graph.input), tensors(graph.output)


def check_against_onnx(model: str, specs: Sequence[TensorSpec], found: Sequence[OnnxTensor], kind: str,
                       batched: bool, every: bool) -> None:
    """InputError naming the tensor when ``specs`` (config dims, no batch axis) disagree with the
    ONNX file's ``found``. ``every``: each ONNX tensor must be declared (inputs)."""
    by_name = {t.name: t for t in found}
    declared = {s.name for s in specs}
    missing = sorted(set(by_name) - declared) if every else []
    if missing:
        raise InputError(f"model {model}: ONNX {kind}(s) {missing} are not declared in the config")
    for spec in specs:
        tensor = by_name.get(spec.name)
        if tensor is None:
            raise InputError(f"model {model}: {kind} {spec.name!r} is not in the ONNX file ({sorted(by_name)})")
        if tensor.dtype != spec.dtype:
            raise InputError(f"model {model}: {kind} {spec.name!r} is {tensor.dtype} in the ONNX file, "
                             f"declared {spec.dtype}")
        shape = tensor.shape[1:] if batched else tensor.shape
        if batched and (not tensor.shape or tensor.shape[0] is not None):
            raise InputError(f"model {model}: {kind} {spec.name!r} has no dynamic batch axis in the ONNX file "
                             f"(shape {tensor.shape}); export it with a dynamic first dimension or use "
                             "max_batch_size 0")
        if len(shape) != len(spec.dims) or any(f is not None and f != d for f, d in zip(shape, spec.dims)):
            raise InputError(f"model {model}: {kind} {spec.name!r} dims {list(spec.dims)} do not fit the ONNX "
                             f"shape {list(tensor.shape)} (None = dynamic)")


def write_onnx_model(repo_dir: str | Path, name: str, onnx_path: str | Path, inputs: Sequence[TensorSpec],
                     outputs: Sequence[TensorSpec], max_batch_size: int = 64, instance_count: int = 1,
                     instance_kind: str = "KIND_GPU", max_queue_delay_us: int | None = None,
                     version: int = 1) -> Path:
    """Write ``<repo>/<name>/{config.pbtxt, <version>/model.onnx}`` for the onnxruntime backend.

    ``inputs``/``outputs``: the config's tensors (names as in the ONNX file, ``dims`` without
    the batch axis when ``max_batch_size > 0``), checked against ``onnx_path`` first.
    ``instance_kind``: ``KIND_GPU`` or ``KIND_CPU``, ``instance_count`` instances of it (per GPU for
    KIND_GPU). ``max_queue_delay_us``: dynamic batching window (None: off). The folder is
    replaced atomically; a ``recstack_model.json`` signature lets ensembles be checked against it.
    """
    _check_model_name(name)
    inputs, outputs = _check_specs(name, inputs, outputs)
    if instance_kind not in INSTANCE_KINDS:
        raise InputError(f"model {name}: instance kind {instance_kind!r} must be one of {INSTANCE_KINDS}")
    if int(max_batch_size) < 0 or int(instance_count) < 1:
        raise InputError(f"model {name}: max_batch_size must be >= 0 and instance_count >= 1")
    if max_queue_delay_us is not None and int(max_queue_delay_us) < 0:
        raise InputError(f"model {name}: max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    onnx_inputs, onnx_outputs = onnx_signature(onnx_path)
    batched = int(max_batch_size) > 0
    check_against_onnx(name, inputs, onnx_inputs, "input", batched, every=True)
    check_against_onnx(name, outputs, onnx_outputs, "output", batched, every=False)
    config = (
        f"name: {_pbtxt_str(name)}\n"
        f"platform: {_pbtxt_str(ONNX_PLATFORM)}\n"
        f"backend: {_pbtxt_str(ONNX_BACKEND)}\n"
        f"max_batch_size: {int(max_batch_size)}\n"
        + _tensor_block("input", inputs)
        + _tensor_block("output", outputs)
        + f"instance_group [\n  {{\n    count: {int(instance_count)}\n    kind: {instance_kind}\n  }}\n]\n"
        + (f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(max_queue_delay_us)}\n}}\n"
           if max_queue_delay_us is not None and batched else "")
        + version_policy(version)
    )
    repo_dir = Path(repo_dir)
    with atomic_dir(repo_dir / name) as tmp:
        (tmp / str(int(version))).mkdir()
        shutil.copyfile(onnx_path, tmp / str(int(version)) / ONNX_FILE)
        (tmp / "config.pbtxt").write_text(config)
        _write_signature(tmp, ONNX_BACKEND, inputs, outputs, max_batch_size)
    return repo_dir / name
