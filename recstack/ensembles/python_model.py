"""The generic Triton python-backend model: serves any recstack step class.

:func:`recstack.ensembles.model_repo.write_python_model` copies this file to
``<repo>/<model>/<version>/model.py``. Beside it, ``recstack_step.json`` names the step
class (``"package.module:ClassName"``), its constructor arguments (a JSON object) and its
artifacts: files exported with that version, named relative to the version folder and
made absolute here, so the repository serves wherever it is copied. The model's
``config.pbtxt`` parameter ``recstack_environment`` (``{param: ENV_VAR}``) names
deployment settings (e.g. the feature store's repository), read from the server's
environment when the model loads.

The Python environment is chosen when serving starts, not at export: when
``RECSTACK_PYTHON_ENV`` names a virtual environment (``recstack serve`` sets it to its
own), its site-packages are added before anything but the standard library is imported.

A step class is any class with ``__init__(**params)`` and
``execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` (arrays carry the
batch dimension first when the model batches); an optional ``close()`` runs at unload.

The requests Triton hands to one ``execute`` call (dynamic batching) are concatenated
along the batch dimension and the step runs once; its outputs are split back by rows.
Inputs whose non-batch sizes differ between requests (``-1`` dims, e.g. ``seen_items``)
are right-padded with 0, the padding id. If the concatenated batch fails (a bad request
in it, or requests that carry different inputs or dtypes), each request runs on its own,
so an exception (``recstack.errors.InputError`` or anything else) becomes an error
response with a one-line message for that request only, and the model keeps serving.
"""

from __future__ import annotations

import os
import site
import sys

PYTHON_ENV_VAR = "RECSTACK_PYTHON_ENV"
VERSION_OUTPUT = "model_version"
"""An output the model declares but its step does not return: filled with the served version [B, 1]."""

# one BLAS thread per model instance, as onnxruntime and FAISS have: instances scale with cores,
# and numpy's OpenBLAS threads fighting the other instances made a 16-query matmul 10x slower
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if os.environ.get(PYTHON_ENV_VAR):  # before numpy / recstack: they may live only in that environment
    site.addsitedir(os.path.join(os.environ[PYTHON_ENV_VAR], "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                                 "site-packages"))

import gc  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402

from recstack.ensembles import triton_io  # noqa: E402
from recstack.ensembles.checksums import verify_manifest  # noqa: E402
from recstack.ensembles.model_repo import (  # noqa: E402
    ARTIFACTS_KEY, ENVIRONMENT_KEY, PARAMS_KEY, STEP_CLASS_KEY, STEP_FILE, TRITON_TO_NP,
)
from recstack.errors import InputError  # noqa: E402


def import_step_class(path: str) -> type:
    """The class named by ``"package.module:ClassName"``."""
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise InputError(f"{STEP_CLASS_KEY}: {path!r} must look like 'package.module:ClassName'")
    module = importlib.import_module(module_name)
    obj = module
    for part in class_name.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{STEP_CLASS_KEY}: module {module_name} has no attribute {class_name!r}")
        obj = getattr(obj, part)
    return obj


def _json_param(params: dict, key: str, default):
    text = params.get(key, {}).get("string_value")
    return json.loads(text) if text else default


def resolve_artifacts(artifacts: dict[str, str], version_dir: str) -> dict[str, str]:
    """``{param: path relative to the version folder}`` -> ``{param: absolute path}``."""
    return {param: os.path.join(version_dir, relative) for param, relative in artifacts.items()}


def read_environment(environment: dict[str, str], model_name: str) -> dict[str, str]:
    """``{param: ENV_VAR}`` -> ``{param: value}``; an unset variable is an InputError naming it."""
    values = {}
    for param, variable in environment.items():
        value = os.environ.get(variable)
        if not value:
            raise InputError(f"model {model_name}: environment variable {variable} ({param}) is not set; "
                             "start the server with `recstack serve`, which sets it")
        values[param] = value
    return values


def concat_requests(requests: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[int]] | None:
    """Requests' inputs joined along axis 0, and each request's row count; None when they
    cannot be joined (different input names, dtypes or ranks). Smaller non-batch dims are
    right-padded with 0 (the padding id) to the largest in the batch."""
    names = set(requests[0])
    if any(set(r) != names for r in requests):
        return None
    merged = {}
    for name in names:
        arrays = [r[name] for r in requests]
        if len({(a.dtype, a.ndim) for a in arrays}) != 1 or arrays[0].ndim == 0:
            return None
        width = np.max([a.shape[1:] for a in arrays], axis=0) if arrays[0].ndim > 1 else ()
        merged[name] = np.concatenate([
            np.pad(a, [(0, 0)] + [(0, int(w) - d) for w, d in zip(width, a.shape[1:])]) for a in arrays])
    return merged, [len(r[next(iter(names))]) for r in requests]


def split_rows(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Batch outputs cut back into one dict per request (``sizes`` rows each, in order)."""
    bounds = np.cumsum([0] + sizes)
    return [{name: np.ascontiguousarray(arr[bounds[i]:bounds[i + 1]]) for name, arr in outputs.items()}
            for i in range(len(sizes))]


def one_line(exc: BaseException) -> str:
    """A one-line message: InputError text as is, other exceptions prefixed with their type."""
    text = " ".join(str(exc).split()) or repr(exc)
    if isinstance(exc, (InputError, triton_io.MissingInputError)):
        return text
    return f"{type(exc).__name__}: {text}"


class TritonPythonModel:
    """Triton's entry point: builds the step in ``initialize`` and calls it per request in ``execute``."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.model_name = config.get("name") or args.get("model_name", "?")
        params = config.get("parameters", {})
        version_dir = os.path.join(args["model_repository"], str(args["model_version"]))
        verify_manifest(version_dir, self.model_name)  # before any artifact is read
        step_file = os.path.join(version_dir, STEP_FILE)
        if not os.path.isfile(step_file):
            raise InputError(f"model {self.model_name}: {step_file} is missing (export the model again)")
        with open(step_file) as handle:
            step = json.load(handle)
        step_class = step[STEP_CLASS_KEY]
        kwargs = dict(step[PARAMS_KEY])
        kwargs.update(resolve_artifacts(step[ARTIFACTS_KEY], version_dir))
        kwargs.update(read_environment(_json_param(params, ENVIRONMENT_KEY, {}), self.model_name))
        inputs = config.get("input", [])
        self.optional_inputs = [i["name"] for i in inputs if i.get("optional")]
        self.required_inputs = [i["name"] for i in inputs if not i.get("optional")]
        self.output_dtypes = {
            o["name"]: np.dtype(TRITON_TO_NP[o["data_type"]]) for o in config.get("output", []) if o["data_type"] in TRITON_TO_NP
        }
        self.output_names = [o["name"] for o in config.get("output", [])]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.version = int(args["model_version"])
        self.step = import_step_class(step_class)(**kwargs)
        # everything loaded so far lives as long as the model: keep it out of the cyclic GC, whose full
        # passes over it (feast, pandas, onnxruntime: ~340k objects) took 170-250 ms mid-request
        gc.collect()
        gc.freeze()

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        ready = []
        for index, request in enumerate(requests):
            try:
                ready.append((index, triton_io.read_inputs(request, self.required_inputs, self.optional_inputs)))
            except Exception as exc:  # noqa: BLE001  one bad request must never take the model down
                responses[index] = self._error_response(exc)
        if self.batched and len(ready) > 1:
            merged = concat_requests([inputs for _, inputs in ready])
            if merged is not None:
                try:
                    outputs = self._check_outputs(self.step.execute(merged[0]))
                    for (index, _), part in zip(ready, split_rows(outputs, merged[1])):
                        responses[index] = triton_io.make_response(part)
                    return responses
                except Exception:  # noqa: BLE001  find the bad request: run each on its own below
                    pass
        for index, inputs in ready:
            try:
                responses[index] = triton_io.make_response(self._check_outputs(self.step.execute(inputs)))
            except Exception as exc:  # noqa: BLE001
                responses[index] = self._error_response(exc)
        return responses

    def _error_response(self, exc: Exception):
        if not isinstance(exc, (InputError, triton_io.MissingInputError)):
            self._log_error(traceback.format_exc())
        return triton_io.error_response(one_line(exc))

    def _check_outputs(self, outputs: dict) -> dict:
        if not isinstance(outputs, dict):
            raise TypeError(f"step of model {self.model_name} returned {type(outputs).__name__}, expected dict")
        if VERSION_OUTPUT in self.output_names and VERSION_OUTPUT not in outputs and outputs:
            rows = len(next(iter(outputs.values())))
            outputs = {**outputs, VERSION_OUTPUT: np.full((rows, 1), self.version, np.int64)}
        missing = [n for n in self.output_names if n not in outputs]
        if missing:
            raise RuntimeError(f"step of model {self.model_name} did not return output(s) {missing}")
        checked = {}
        for name in self.output_names:
            arr = np.asarray(outputs[name])
            want = self.output_dtypes.get(name)
            if want is not None and arr.dtype != want:
                if not np.can_cast(arr.dtype, want, casting="same_kind"):
                    raise TypeError(f"output {name}: step returned {arr.dtype}, the model declares {want}")
                arr = arr.astype(want)
            checked[name] = arr
        return checked

    def _log_error(self, text: str) -> None:
        try:
            logger = triton_io.pb_utils().Logger
            logger.log_error(f"model {self.model_name}: {text}")
        except Exception:  # noqa: BLE001
            pass

    def finalize(self) -> None:
        close = getattr(getattr(self, "step", None), "close", None)
        if callable(close):
            close()
