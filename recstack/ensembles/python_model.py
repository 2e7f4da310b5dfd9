"""The generic Triton python-backend model: serves any recstack step class.

:func:`recstack.serving.model_repo.write_python_model` copies this file to
``<repo>/<model>/1/model.py``. The model's ``config.pbtxt`` names the step class
(parameter ``recstack_step_class``, ``"package.module:ClassName"``) and its
constructor arguments (parameter ``recstack_params``, a JSON object).

A step class is any class with ``__init__(**params)`` and
``execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` (arrays carry the
batch dimension first when the model batches); an optional ``close()`` runs at unload.

Each request is handled on its own: an exception (``recstack.errors.InputError`` or
anything else) becomes an error response with a one-line message for that request only,
and the model keeps serving.
"""

from __future__ import annotations

import importlib
import json
import traceback

import numpy as np

from recstack.errors import InputError
from recstack.serving import triton_io
from recstack.serving.model_repo import PARAMS_KEY, STEP_CLASS_KEY
from recstack.serving.model_repo import TRITON_TO_NP as _TRITON_TO_NP


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
        try:
            step_class = params[STEP_CLASS_KEY]["string_value"]
        except KeyError:
            raise InputError(f"model {self.model_name}: config.pbtxt has no {STEP_CLASS_KEY} parameter") from None
        kwargs = json.loads(params.get(PARAMS_KEY, {}).get("string_value") or "{}")
        inputs = config.get("input", [])
        self.optional_inputs = [i["name"] for i in inputs if i.get("optional")]
        self.required_inputs = [i["name"] for i in inputs if not i.get("optional")]
        self.output_dtypes = {
            o["name"]: np.dtype(_TRITON_TO_NP[o["data_type"]]) for o in config.get("output", []) if o["data_type"] in _TRITON_TO_NP
        }
        self.output_names = [o["name"] for o in config.get("output", [])]
        self.step = import_step_class(step_class)(**kwargs)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                inputs = triton_io.read_inputs(request, self.required_inputs, self.optional_inputs)
                outputs = self.step.execute(inputs)
                responses.append(triton_io.make_response(self._check_outputs(outputs)))
            except Exception as exc:  # noqa: BLE001  one bad request must never take the model down
                if not isinstance(exc, (InputError, triton_io.MissingInputError)):
                    self._log_error(traceback.format_exc())
                responses.append(triton_io.error_response(one_line(exc)))
        return responses

    def _check_outputs(self, outputs: dict) -> dict:
        if not isinstance(outputs, dict):
            raise TypeError(f"step of model {self.model_name} returned {type(outputs).__name__}, expected dict")
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
