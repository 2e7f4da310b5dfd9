"""Write Triton model repositories: generic python models (one per serving step) and ensembles.

A python model is ``<repo>/<name>/config.pbtxt`` + ``<repo>/<name>/1/model.py``, where
``model.py`` is a copy of :mod:`recstack.ensembles.python_model`: it imports the step class
named in the config (``"package.module:ClassName"``), builds it with the JSON ``params``
and calls ``step.execute(dict[str, ndarray]) -> dict[str, ndarray]`` per request.

The repository holds no path of the machine that wrote it: files a step needs
(:class:`Artifact`) are copied into ``<repo>/<name>/1/<param>/`` and named relative to that
folder; deployment settings (``environment``: param -> environment variable) and the Python
environment (``RECSTACK_PYTHON_ENV``) are given when the server starts. Copy the folder to
another host or into a container and it serves there.

An ensemble is ``<repo>/<name>/config.pbtxt`` (platform ``ensemble``) + an empty ``1/``.
Each model folder also gets ``recstack_model.json`` (its input/output names and dtypes;
Triton ignores it) so later ensembles can be checked against the models they wire.

Keep tensors numeric: TYPE_STRING/BYTES do not survive the python backend under numpy 2
(see ``shared/TRITON.md``), so string dtypes are refused here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recstack.errors import InputError
from recstack.io import atomic_dir, atomic_write_bytes, read_json, write_json

#: numpy dtype -> Triton config data_type
NP_TO_TRITON = {
    np.dtype(np.bool_): "TYPE_BOOL",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.uint16): "TYPE_UINT16",
    np.dtype(np.uint32): "TYPE_UINT32",
    np.dtype(np.uint64): "TYPE_UINT64",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int16): "TYPE_INT16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float64): "TYPE_FP64",
}
TRITON_TO_NP = {v: k for k, v in NP_TO_TRITON.items()}

STEP_CLASS_KEY = "recstack_step_class"
PARAMS_KEY = "recstack_params"
ARTIFACTS_KEY = "recstack_artifacts"
ENVIRONMENT_KEY = "recstack_environment"
SIGNATURE_FILE = "recstack_model.json"
STEP_FILE = "recstack_step.json"
"""In each version folder: the step class, its params and its artifacts (relative paths)."""
GENERIC_MODEL_SOURCE = Path(__file__).with_name("python_model.py")


def to_numpy_dtype(dtype: Any) -> np.dtype:
    """np.dtype from a numpy dtype-like or a Triton name (``"TYPE_FP32"``, ``"FP32"``); InputError otherwise."""
    if isinstance(dtype, str):
        key = dtype.upper()
        key = key if key.startswith("TYPE_") else "TYPE_" + key
        if key in TRITON_TO_NP:
            return TRITON_TO_NP[key]
    try:
        result = np.dtype(dtype)
    except TypeError as exc:
        raise InputError(f"dtype: {dtype!r} is not a numpy dtype ({exc})") from None
    if result not in NP_TO_TRITON:
        raise InputError(
            f"dtype: {result} has no Triton equivalent that the python backend passes intact "
            "(use bool, (u)int8-64 or float16/32/64; keep ids numeric and map strings outside Triton)"
        )
    return result


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``dims`` exclude the batch dimension; -1 marks a variable size."""

    name: str
    dtype: Any
    dims: tuple[int, ...] = (-1,)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c in self.name for c in '"\\\n'):
            raise InputError(f"tensor name: {self.name!r} must be a non-empty string without quotes")
        object.__setattr__(self, "dtype", to_numpy_dtype(self.dtype))
        dims = tuple(int(d) for d in self.dims)
        if not dims or any(d < -1 or d == 0 for d in dims):
            raise InputError(f"tensor {self.name}: dims {self.dims!r} must be positive sizes or -1 (and at least one)")
        object.__setattr__(self, "dims", dims)

    @property
    def triton_dtype(self) -> str:
        return NP_TO_TRITON[self.dtype]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.name, "dims": list(self.dims)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "TensorSpec":
        return cls(obj["name"], obj["dtype"], tuple(obj["dims"]))


@dataclass(frozen=True)
class Artifact:
    """A file or folder a step reads, copied into the model's version folder at export.

    ``files`` copies only those names out of a ``source`` folder (None: the whole file or folder).
    """

    source: Path
    files: tuple[str, ...] | None = None

    def copy_to(self, dest: Path) -> str:
        """Copy into the folder ``dest``; return the path the step gets, relative to ``dest``'s parent."""
        source = Path(self.source)
        if not source.exists():
            raise InputError(f"artifact {source}: missing (run the stage that writes it first)")
        dest.mkdir(parents=True)
        if source.is_file():
            shutil.copy2(source, dest / source.name)
            return f"{dest.name}/{source.name}"
        for name in self.files if self.files is not None else [p.name for p in source.iterdir()]:
            item = source / name
            if not item.exists():
                raise InputError(f"artifact {item}: missing (run the stage that writes it first)")
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, dest / name)
        return dest.name


def _pbtxt_str(value: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor_block(kind: str, specs: Sequence[TensorSpec], optional: Iterable[str] = ()) -> str:
    optional = set(optional)
    rows = []
    for spec in specs:
        dims = ", ".join(str(d) for d in spec.dims)
        opt = "\n    optional: true" if spec.name in optional else ""
        rows.append(
            f"  {{\n    name: {_pbtxt_str(spec.name)}\n    data_type: {spec.triton_dtype}\n    dims: [ {dims} ]{opt}\n  }}"
        )
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


def _check_specs(model: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> tuple[list, list]:
    inputs = [s if isinstance(s, TensorSpec) else TensorSpec(*s) for s in inputs]
    outputs = [s if isinstance(s, TensorSpec) else TensorSpec(*s) for s in outputs]
    if not inputs or not outputs:
        raise InputError(f"model {model}: needs at least one input and one output")
    names = [s.name for s in inputs] + [s.name for s in outputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"model {model}: tensor name(s) {dupes} used more than once among inputs and outputs")
    return inputs, outputs


def _check_model_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or any(c in name for c in '"\\\n '):
        raise InputError(f"model name: {name!r} must be a plain folder name")


SPARE_INSTANCE_PRIORITY = 1000
"""Rate-limiter priority of the instances after the preferred one. Triton weighs scheduling chances
by 1/priority, so with 1 against 1000 the preferred instance takes every request it is free for."""


def _instance_groups(count: int, preferred_instance: bool) -> str:
    """The ``instance_group`` block of a CPU python model (see ``write_python_model``)."""
    if not preferred_instance or count < 2:
        return f"instance_group [\n  {{\n    count: {count}\n    kind: KIND_CPU\n  }}\n]\n"
    return ("instance_group [\n"
            "  {\n    count: 1\n    kind: KIND_CPU\n    rate_limiter { priority: 1 }\n  },\n"
            f"  {{\n    count: {count - 1}\n    kind: KIND_CPU\n"
            f"    rate_limiter {{ priority: {SPARE_INSTANCE_PRIORITY} }}\n  }}\n]\n")


def write_python_model(
    repo_dir: str | Path,
    name: str,
    step_class: str,
    params: Mapping[str, Any] | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int = 64,
    instance_count: int = 1,
    optional_inputs: Iterable[str] = (),
    max_queue_delay_us: int | None = None,
    preferred_instance: bool = False,
    artifacts: Mapping[str, Artifact] | None = None,
    environment: Mapping[str, str] | None = None,
    version: int = 1,
    live_version: int | None = None,
    keep_versions_from: Path | None = None,
) -> Path:
    """Write ``<repo>/<name>/{config.pbtxt, 1/model.py}`` for a step class served by the python backend.

    ``step_class`` is ``"package.module:ClassName"``; the class is built inside Triton with
    ``**params`` (JSON-serialisable), plus one path per ``artifacts`` entry (copied into
    ``1/<param>/``) and one value per ``environment`` entry (``{param: ENV_VAR}``, read from
    the server's environment). ``max_batch_size=0`` turns batching off (``dims`` are then the
    full shape). ``max_queue_delay_us`` turns on Triton's dynamic batching: requests that
    arrive within that many microseconds of each other reach one ``execute`` call (None:
    off). Returns the model folder. The folder is replaced atomically.

    ``preferred_instance`` (with ``instance_count`` >= 2) writes the instances as two groups, one
    instance with rate-limiter priority 1 and the others with :data:`SPARE_INSTANCE_PRIORITY`.
    A tritonserver started with ``--rate-limit=execution_count`` then gives work to the first
    instance whenever it is free, so sequential requests keep its caches warm and the others
    take only what overlaps; without that flag Triton ignores the priorities.

    The step class, params and artifacts belong to ``version`` (``<version>/recstack_step.json``),
    so versions with different settings live side by side. ``keep_versions_from``: an existing
    folder of this model whose other versions are kept (hard links where possible);
    ``live_version`` (default ``version``) is the version Triton serves
    (``version_policy: specific``; ``recstack models deploy`` changes it).
    """
    _check_model_name(name)
    if not isinstance(step_class, str) or step_class.count(":") != 1 or not all(step_class.split(":")):
        raise InputError(f"model {name}: step_class {step_class!r} must look like 'package.module:ClassName'")
    params = dict(params or {})
    artifacts = dict(artifacts or {})
    environment = dict(environment or {})
    given = [*params, *artifacts, *environment]
    clash = sorted({param for param in given if given.count(param) > 1})
    if clash:
        raise InputError(f"model {name}: parameter(s) {clash} given more than once (params, artifacts, environment)")
    try:
        params_json = json.dumps(params, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"model {name}: params are not JSON-serialisable ({exc})") from None
    inputs, outputs = _check_specs(name, inputs, outputs)
    optional_inputs = list(optional_inputs)
    unknown = sorted(set(optional_inputs) - {s.name for s in inputs})
    if unknown:
        raise InputError(f"model {name}: optional_inputs {unknown} are not inputs of the model")
    if int(max_batch_size) < 0 or int(instance_count) < 1:
        raise InputError(f"model {name}: max_batch_size must be >= 0 and instance_count >= 1")
    if max_queue_delay_us is not None and int(max_queue_delay_us) < 0:
        raise InputError(f"model {name}: max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    if int(version) < 1:
        raise InputError(f"model {name}: version must be >= 1, got {version}")

    config = (
        f"name: {_pbtxt_str(name)}\n"
        'backend: "python"\n'
        f"max_batch_size: {int(max_batch_size)}\n"
        + _tensor_block("input", inputs, optional_inputs)
        + _tensor_block("output", outputs)
        + _instance_groups(int(instance_count), preferred_instance)
        + (f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(max_queue_delay_us)}\n}}\n"
           if max_queue_delay_us is not None and max_batch_size > 0 else "")
        + _parameter(ENVIRONMENT_KEY, json.dumps(environment))
    )
    repo_dir = Path(repo_dir)
    with atomic_dir(repo_dir / name) as tmp:
        kept = [int(v.name) for v in _version_dirs(keep_versions_from) if int(v.name) != int(version)]
        for v in kept:
            shutil.copytree(Path(keep_versions_from) / str(v), tmp / str(v), copy_function=_link_or_copy)
        folder = tmp / str(int(version))
        folder.mkdir()
        relative = {param: artifact.copy_to(folder / param) for param, artifact in artifacts.items()}
        write_json(folder / STEP_FILE, {STEP_CLASS_KEY: step_class, PARAMS_KEY: json.loads(params_json),
                                        ARTIFACTS_KEY: relative})
        shutil.copyfile(GENERIC_MODEL_SOURCE, folder / "model.py")
        (tmp / "config.pbtxt").write_text(config + version_policy(live_version or version))
        _write_signature(tmp, "python", inputs, outputs, max_batch_size, optional_inputs)
    return repo_dir / name


LIVE_MARK = "# recstack live version: "
"""Marks the live version in config.pbtxt when more than one version is loaded (an A/B experiment)."""


def version_policy(version: int, also: Iterable[int] = ()) -> str:
    """The config.pbtxt line(s) that make Triton serve exactly ``version`` of a model, plus the
    versions ``also`` (e.g. an experiment's): then a comment line marks which one is live, the one
    the ensemble forwards to (:func:`pin_ensemble_version`)."""
    versions = sorted({int(version), *(int(v) for v in also)})
    line = f"version_policy: {{ specific: {{ versions: [ {', '.join(map(str, versions))} ] }} }}\n"
    return line if len(versions) == 1 else f"{LIVE_MARK}{int(version)}\n{line}"


def _version_dirs(model_dir: Path | None) -> list[Path]:
    if model_dir is None or not Path(model_dir).is_dir():
        return []
    return sorted((p for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def model_versions(model_dir: Path) -> list[int]:
    """The numbered version folders of a model, ascending."""
    return [int(p.name) for p in _version_dirs(model_dir)]


def live_version(model_dir: Path) -> int | None:
    """The version a model's config.pbtxt tells Triton to serve (None: no such model or policy)."""
    config = Path(model_dir) / "config.pbtxt"
    if not config.is_file():
        return None
    text = config.read_text()
    marked = re.search(r"^" + re.escape(LIVE_MARK) + r"(\d+)$", text, re.MULTILINE)
    if marked:
        return int(marked.group(1))
    match = re.search(r"version_policy: \{ specific: \{ versions: \[ (\d+) \] \} \}", text)
    return int(match.group(1)) if match else None


def served_versions(model_dir: Path) -> list[int]:
    """Every version the model's policy loads (the live one and any experiment's), ascending."""
    config = Path(model_dir) / "config.pbtxt"
    match = re.search(r"version_policy: \{ specific: \{ versions: \[ ([\d, ]+) \] \} \}",
                      config.read_text() if config.is_file() else "")
    return sorted(int(v) for v in match.group(1).split(",")) if match else []


def set_live_version(model_dir: Path, version: int, also: Iterable[int] | None = None) -> None:
    """Rewrite the model's version policy to serve ``version`` (atomically); the folder must exist.
    ``also``: versions loaded beside it (None: keep those loaded now that still exist)."""
    model_dir = Path(model_dir)
    existing = model_versions(model_dir)
    if int(version) not in existing:
        raise InputError(f"--version: {version} is not a version of {model_dir.name} ({existing})")
    if also is None:
        also = [v for v in served_versions(model_dir) if v != live_version(model_dir) and v in existing]
    missing = sorted({int(v) for v in also} - set(existing))
    if missing:
        raise InputError(f"versions: {missing} are not versions of {model_dir.name} ({existing})")
    config = (model_dir / "config.pbtxt").read_text()
    config = re.sub(r"(version_policy: .*|" + re.escape(LIVE_MARK) + r".*)\n", "", config)
    config += version_policy(version, also)
    atomic_write_bytes(model_dir / "config.pbtxt", config.encode())


def pin_ensemble_version(ensemble_dir: Path, model: str, version: int) -> bool:
    """Make the ensemble's step calling ``model`` ask for ``version`` (-1: the newest loaded, the
    default). Triton's -1 means the highest loaded version, so while an experiment loads versions
    beside the live one the ensemble is pinned to the live one. Returns whether the file changed."""
    path = Path(ensemble_dir) / "config.pbtxt"
    text = path.read_text()
    pattern = r"(model_name: " + re.escape(_pbtxt_str(model)) + r"\n\s*model_version: )-?\d+"
    new = re.sub(pattern, lambda m: m.group(1) + str(int(version)), text)
    if new != text:
        atomic_write_bytes(path, new.encode())
    return new != text


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _parameter(key: str, value: str) -> str:
    return f"parameters: {{\n  key: {_pbtxt_str(key)}\n  value: {{ string_value: {_pbtxt_str(value)} }}\n}}\n"


def _write_signature(folder: Path, kind: str, inputs, outputs, max_batch_size: int, optional=()) -> None:
    write_json(
        folder / SIGNATURE_FILE,
        {
            "kind": kind,
            "max_batch_size": int(max_batch_size),
            "inputs": [s.to_json() for s in inputs],
            "outputs": [s.to_json() for s in outputs],
            "optional_inputs": list(optional),
        },
    )


def read_signature(model_dir: str | Path) -> dict[str, Any] | None:
    """The inputs/outputs recorded next to a model written here (None for models written elsewhere)."""
    path = Path(model_dir) / SIGNATURE_FILE
    if not path.exists():
        return None
    sig = read_json(path)
    sig["inputs"] = [TensorSpec.from_json(s) for s in sig["inputs"]]
    sig["outputs"] = [TensorSpec.from_json(s) for s in sig["outputs"]]
    return sig


Step = tuple[str, Mapping[str, str], Mapping[str, str]]


def write_ensemble_model(
    repo_dir: str | Path,
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    steps: Sequence[Step],
    max_batch_size: int = 64,
    optional_inputs: Iterable[str] = (),
) -> Path:
    """Write an ``ensemble`` model wiring ``steps`` = [(model_name, {model_input: tensor}, {model_output: tensor})].

    Checks, with a clear InputError, that each tensor a step reads is an ensemble input or
    produced by an earlier step, that no tensor is produced twice, and that every ensemble
    output is produced. Where a step's model folder already holds a model written by
    :func:`write_python_model`, its input/output names, dtypes and max_batch_size are checked too.
    ``optional_inputs`` (names of ``inputs``) may be left out of a request (Triton 2.51 passes an
    absent optional ensemble input on as absent; the step's model must declare it optional too).
    """
    _check_model_name(name)
    inputs, outputs = _check_specs(name, inputs, outputs)
    optional_inputs = list(optional_inputs)
    if not steps:
        raise InputError(f"ensemble {name}: needs at least one step")
    repo_dir = Path(repo_dir)
    dtypes: dict[str, np.dtype] = {s.name: s.dtype for s in inputs}
    available = set(dtypes)
    blocks = []
    for index, step in enumerate(steps):
        try:
            model_name, input_map, output_map = step
        except (TypeError, ValueError):
            raise InputError(
                f"ensemble {name}: step {index} must be (model_name, input_map, output_map), got {step!r}"
            ) from None
        where = f"ensemble {name}, step {index} ({model_name})"
        if model_name == name:
            raise InputError(f"{where}: an ensemble cannot call itself")
        if not output_map:
            raise InputError(f"{where}: output_map is empty")
        for model_input, tensor in input_map.items():
            if tensor not in available:
                raise InputError(
                    f"{where}: input {model_input!r} reads tensor {tensor!r}, which is neither an ensemble input "
                    f"nor produced by an earlier step (available: {sorted(available)})"
                )
        sig = read_signature(repo_dir / model_name)
        if sig is not None:
            in_specs = {s.name: s for s in sig["inputs"]}
            out_specs = {s.name: s for s in sig["outputs"]}
            missing = sorted(set(in_specs) - set(sig["optional_inputs"]) - set(input_map))
            if missing:
                raise InputError(f"{where}: required model input(s) {missing} are not mapped")
            for model_input, tensor in input_map.items():
                if model_input not in in_specs:
                    raise InputError(f"{where}: {model_input!r} is not an input of the model ({sorted(in_specs)})")
                if tensor in dtypes and dtypes[tensor] != in_specs[model_input].dtype:
                    raise InputError(
                        f"{where}: input {model_input!r} is {in_specs[model_input].dtype} "
                        f"but tensor {tensor!r} is {dtypes[tensor]}"
                    )
            for model_output in output_map:
                if model_output not in out_specs:
                    raise InputError(f"{where}: {model_output!r} is not an output of the model ({sorted(out_specs)})")
            if max_batch_size > sig["max_batch_size"]:
                raise InputError(
                    f"{where}: ensemble max_batch_size {max_batch_size} exceeds the model's {sig['max_batch_size']}"
                )
        for model_output, tensor in output_map.items():
            if tensor in available:
                raise InputError(f"{where}: output {model_output!r} writes tensor {tensor!r}, which already exists")
            available.add(tensor)
            if sig is not None:
                dtypes[tensor] = {s.name: s for s in sig["outputs"]}[model_output].dtype
        blocks.append(
            "    {\n"
            f"      model_name: {_pbtxt_str(model_name)}\n"
            "      model_version: -1\n"
            + "".join(
                f"      input_map {{ key: {_pbtxt_str(k)} value: {_pbtxt_str(v)} }}\n" for k, v in input_map.items()
            )
            + "".join(
                f"      output_map {{ key: {_pbtxt_str(k)} value: {_pbtxt_str(v)} }}\n" for k, v in output_map.items()
            )
            + "    }"
        )
    for spec in outputs:
        if spec.name not in available - {s.name for s in inputs}:
            raise InputError(f"ensemble {name}: output {spec.name!r} is not produced by any step")
        if spec.name in dtypes and dtypes[spec.name] != spec.dtype:
            raise InputError(
                f"ensemble {name}: output {spec.name!r} is declared {spec.dtype} but its step produces {dtypes[spec.name]}"
            )
    config = (
        f"name: {_pbtxt_str(name)}\n"
        'platform: "ensemble"\n'
        f"max_batch_size: {int(max_batch_size)}\n"
        + _tensor_block("input", inputs, optional_inputs)
        + _tensor_block("output", outputs)
        + "ensemble_scheduling {\n  step [\n"
        + ",\n".join(blocks)
        + "\n  ]\n}\n"
    )
    with atomic_dir(repo_dir / name) as tmp:
        (tmp / "config.pbtxt").write_text(config)
        (tmp / "1").mkdir()
        _write_signature(tmp, "ensemble", inputs, outputs, max_batch_size, optional_inputs)
    return repo_dir / name
