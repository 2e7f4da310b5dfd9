"""Read an exported Triton model repository and run its ensemble in this process, as Triton would.

For the repositories this machine's tritonserver cannot serve (``recstack export --backend
onnxruntime`` needs Triton's onnxruntime backend, which only NGC images carry), this is how they
are checked here: each ``config.pbtxt`` is parsed with Triton's own protobuf schema
(``tritonclient.grpc.model_config_pb2``), the ensemble's wiring is checked (every tensor a step
reads is an ensemble input or an earlier step's output), and the steps run in order on one
batch:

* a python-backend model is built by the same :class:`~recstack.ensembles.python_model.TritonPythonModel`
  ``initialize`` the server calls (step class, params and artifacts of its served version), and
  its step's outputs pass the same checks (``model_version`` filled in);
* an onnxruntime model (``platform: "onnxruntime_onnx"``) runs its ``<version>/model.onnx`` with
  onnxruntime's CPU provider; each input's dtype and dims are checked against the config as
  Triton checks a request.

Arrays carry the batch first. Settings the python models read from the server's environment
(``RECSTACK_FEATURE_REPO``, ``RECSTACK_LIVE_ITEMS``) are given as ``environment`` and set only while the models load.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recstack.errors import InputError
from recstack.ensembles.model_repo import TRITON_TO_NP, model_versions

Step = tuple[str, dict[str, str], dict[str, str]]


def read_model_config(model_dir: str | Path):
    """``<model_dir>/config.pbtxt`` parsed into Triton's ``ModelConfig`` message (InputError if it does not parse)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = Path(model_dir) / "config.pbtxt"
    if not path.is_file():
        raise InputError(f"{path}: missing (not a Triton model folder)")
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise InputError(f"{path}: not a valid Triton model config ({exc})") from None


def model_backend(config) -> str:
    """``"ensemble"``, ``"python"``, ``"onnxruntime"`` or another backend name, from backend / platform."""
    if config.platform == "ensemble":
        return "ensemble"
    if config.backend:
        return config.backend
    return {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch"}.get(
        config.platform, config.platform)


def served_version(model_dir: Path, config) -> int:
    """The version Triton serves: the ``specific`` policy's first version, else the newest folder."""
    if config.version_policy.HasField("specific") and config.version_policy.specific.versions:
        return int(config.version_policy.specific.versions[0])
    versions = model_versions(model_dir)
    if not versions:
        raise InputError(f"{model_dir}: no numbered version folder")
    return versions[-1]


def ensemble_steps(config) -> list[Step]:
    """``[(model_name, {model_input: tensor}, {model_output: tensor})]`` of an ensemble config, in order,
    after checking that every tensor a step reads exists by then and every output is produced."""
    available = {i.name for i in config.input}
    steps = []
    for step in config.ensemble_scheduling.step:
        inputs, outputs = dict(step.input_map), dict(step.output_map)
        missing = sorted(t for t in inputs.values() if t not in available)
        if missing:
            raise InputError(f"ensemble {config.name}: step {step.model_name} reads {missing}, which no earlier "
                             "step produces and the ensemble does not take")
        available.update(outputs.values())
        steps.append((step.model_name, inputs, outputs))
    unproduced = sorted(o.name for o in config.output if o.name not in available)
    if unproduced:
        raise InputError(f"ensemble {config.name}: output(s) {unproduced} are produced by no step")
    return steps


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _PythonModel:
    """A python-backend model built as Triton builds it; ``run`` = its step on one batch."""

    def __init__(self, model_dir: Path, config, environment: Mapping[str, str]):
        from google.protobuf.json_format import MessageToDict

        from recstack.ensembles.python_model import TritonPythonModel

        version = served_version(model_dir, config)
        args = {"model_config": json.dumps(MessageToDict(config, preserving_proto_field_name=True)),
                "model_repository": str(model_dir), "model_version": str(version), "model_name": config.name}
        self.model = TritonPythonModel()
        with _environment(environment):
            self.model.initialize(args)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model._check_outputs(self.model.step.execute(inputs))

    def close(self) -> None:
        self.model.finalize()


class _OnnxModel:
    """An onnxruntime-backend model: its ONNX file run by onnxruntime (CPU), inputs checked against the config."""

    def __init__(self, model_dir: Path, config):
        import onnxruntime as ort

        path = model_dir / str(served_version(model_dir, config)) / (config.default_model_filename or "model.onnx")
        if not path.is_file():
            raise InputError(f"model {config.name}: {path} is missing")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.name = config.name
        self.batched = config.max_batch_size > 0
        self.inputs = [(i.name, TRITON_TO_NP[model_config_type(i.data_type)], list(i.dims)) for i in config.input]
        self.outputs = [o.name for o in config.output]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {}
        for name, dtype, dims in self.inputs:
            if name not in inputs:
                raise InputError(f"model {self.name}: input {name!r} is missing")
            array = np.ascontiguousarray(inputs[name])
            shape = list(array.shape[1:] if self.batched else array.shape)
            if array.dtype != dtype or len(shape) != len(dims) or any(d not in (-1, s) for d, s in zip(dims, shape)):
                raise InputError(f"model {self.name}: input {name!r} is {array.dtype} {list(array.shape)}, the config "
                                 f"declares {np.dtype(dtype)} {dims}" + (" after the batch axis" if self.batched else ""))
            feeds[name] = array
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))

    def close(self) -> None:
        pass


def model_config_type(data_type: int) -> str:
    """A ``DataType`` enum value as its name (``TYPE_FP32``)."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(data_type)


class RepositoryRunner:
    """The ensemble ``name`` of ``repo_dir`` run in this process; ``execute(inputs) -> outputs``.

    ``environment``: the variables the server would have (e.g. ``RECSTACK_FEATURE_REPO``).
    Backends other than python and onnxruntime are refused with an InputError naming the model.
    """

    def __init__(self, repo_dir: str | Path, name: str = "recommend", environment: Mapping[str, str] | None = None):
        repo_dir = Path(repo_dir)
        self.config = read_model_config(repo_dir / name)
        if model_backend(self.config) != "ensemble":
            raise InputError(f"{repo_dir / name}: not an ensemble model")
        self.steps = ensemble_steps(self.config)
        self.models: dict[str, Any] = {}
        try:
            for model_name, _, _ in self.steps:
                if model_name in self.models:
                    continue
                config = read_model_config(repo_dir / model_name)
                backend = model_backend(config)
                if backend == "python":
                    self.models[model_name] = _PythonModel(repo_dir / model_name, config, environment or {})
                elif backend == "onnxruntime":
                    self.models[model_name] = _OnnxModel(repo_dir / model_name, config)
                else:
                    raise InputError(f"model {model_name}: backend {backend!r} cannot run in-process")
        except BaseException:
            self.close()
            raise
        self.backends = {m: type(model).__name__ for m, model in self.models.items()}

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = dict(inputs)
        for model_name, input_map, output_map in self.steps:
            results = self.models[model_name].run({key: tensors[tensor] for key, tensor in input_map.items()
                                                   if tensor in tensors})  # an optional input left out
            for key, tensor in output_map.items():
                if key not in results:
                    raise InputError(f"model {model_name}: returned no output {key!r}")
                tensors[tensor] = results[key]
        return {o.name: tensors[o.name] for o in self.config.output}

    def close(self) -> None:
        for model in self.models.values():
            model.close()
