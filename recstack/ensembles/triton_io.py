"""Move tensors in and out of a Triton python-backend model, through DLPack only.

Used inside the python backend (``recstack.ensembles.python_model``); imports
``triton_python_backend_utils`` lazily so this module also imports outside Triton.

Findings (measured on this machine: Triton 2.51 python backend from nvidia-pytriton 0.7.0,
python 3.11 stub, numpy 2.4, torch 2.13 CPU; random values through the real server,
dtypes int64/int32/int8/uint8/float16/float32/float64/bool, shapes (1,1), (2,3), (3,5),
(64,1000), (1,0), (2,0)):

* the input tensor's ``as_numpy`` accessor returns the right shape and dtype but
  WRONG VALUES for any tensor with more than one element: every element equals the first one
  (a zero-stride view). Only 1-element tensors come out right. Silent; never use it.
* ``np.from_dlpack(tensor)`` and ``torch.from_dlpack(tensor.to_dlpack())`` both give correct
  values for every dtype above, bool included, and for empty (size-0) tensors. We use
  ``np.from_dlpack`` (no torch import needed) and copy the result, so a step owns a
  writable array that does not alias Triton's shared memory after the response is sent.
* ``pb_utils.Tensor(name, ndarray)`` produces an output with the right shape but NO DATA
  (the client sees 0 bytes) for any non-empty array.
* ``pb_utils.Tensor.from_dlpack(name, ndarray)`` (or a torch tensor) is correct for every dtype
  above when the array is C-contiguous, but REJECTS size-0 arrays ("DLPack tensor is not
  contiguous"). Size-0 outputs therefore go through ``pb_utils.Tensor(name, ndarray)``,
  which is harmless there because there is no data to lose.
* ``pb_utils.Tensor.from_dlpack`` renames the producer's capsule to ``"used_dlpack"``, not the
  standard ``"used_dltensor"``. numpy's capsule destructor then fails to find its tensor and reports
  ``ValueError: PyCapsule_GetPointer called with incorrect name`` as an unraisable exception: a full
  traceback, source line included, written to the server log for EVERY output tensor. That cost
  0.07-0.2 ms per output tensor inside the stub (9 outputs per request) and left 14,700 tracebacks
  in one CI run's log. No memory is lost either way (the stub calls the tensor's deleter itself:
  300 outputs of 8 MB grew the stub's RSS by 1 MB). :func:`numpy_to_tensor` therefore hands the stub a capsule
  and renames it to ``"used_dltensor"`` afterwards, which numpy's destructor accepts as consumed:
  about 0.02 ms per output, nothing in the log.
* ``tensor.triton_dtype()`` raises "Unable to convert function return value" (the enum is
  not registered in the stub); the dtype comes from the DLPack read instead.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

_pb_utils = None

_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]
_capsule_set_name = ctypes.pythonapi.PyCapsule_SetName
_capsule_set_name.restype = ctypes.c_int
_capsule_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
STUB_CONSUMED_NAME = b"used_dlpack"
"""What the python backend stub renames a DLPack capsule to once it owns the tensor."""
CONSUMED_NAME = b"used_dltensor"
"""The DLPack standard's name of a consumed capsule (PyCapsule_SetName keeps this pointer: a
module constant, alive as long as any capsule)."""


def pb_utils():
    """``triton_python_backend_utils``, imported on first use (only exists inside Triton)."""
    global _pb_utils
    if _pb_utils is None:
        import triton_python_backend_utils  # noqa: PLC0415  (provided by the python backend stub)

        _pb_utils = triton_python_backend_utils
    return _pb_utils


class MissingInputError(ValueError):
    """A required input tensor is absent from the request."""


def tensor_to_numpy(tensor: Any) -> np.ndarray:
    """A pb_utils.Tensor as an owned, writable, C-contiguous ndarray (read through DLPack)."""
    view = np.from_dlpack(tensor)
    return np.array(view, copy=True, order="C")


def read_inputs(
    request: Any, names: Iterable[str], optional: Iterable[str] = ()
) -> dict[str, np.ndarray]:
    """Read the named inputs of one request as numpy arrays.

    ``names`` are required (a missing one raises :class:`MissingInputError` naming it);
    ``optional`` names are included only when the request carries them.
    """
    utils = pb_utils()
    out: dict[str, np.ndarray] = {}
    for name in names:
        tensor = utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise MissingInputError(f"input {name}: missing from the request")
        out[name] = tensor_to_numpy(tensor)
    for name in optional:
        if name in out:
            continue
        tensor = utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            out[name] = tensor_to_numpy(tensor)
    return out


def numpy_to_tensor(name: str, array: np.ndarray) -> Any:
    """A pb_utils.Tensor output from an ndarray: DLPack for data, the constructor only for size 0."""
    arr = np.asarray(array)
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise TypeError(f"output {name}: dtype {arr.dtype} cannot cross the python backend; keep outputs numeric")
    arr = np.ascontiguousarray(arr)
    if not (arr.flags.writeable and arr.flags.owndata):
        arr = arr.copy()
    utils = pb_utils()
    if arr.size == 0:
        return utils.Tensor(name, arr)  # from_dlpack rejects size-0 tensors; no data to lose here
    capsule = arr.__dlpack__()
    tensor = utils.Tensor.from_dlpack(name, capsule)
    mark_consumed(capsule)
    return tensor


def mark_consumed(capsule: Any) -> bool:
    """Rename a capsule the stub consumed (``"used_dlpack"``) to the standard ``"used_dltensor"``,
    so numpy's destructor does not report it (see the module notes); returns whether it renamed."""
    if _capsule_name(capsule) != STUB_CONSUMED_NAME:
        return False
    if _capsule_set_name(capsule, CONSUMED_NAME) != 0:
        raise RuntimeError("PyCapsule_SetName failed on a consumed DLPack capsule")
    return True


def make_response(outputs: Mapping[str, np.ndarray]) -> Any:
    """An InferenceResponse carrying ``outputs`` (name -> array)."""
    utils = pb_utils()
    return utils.InferenceResponse(output_tensors=[numpy_to_tensor(n, a) for n, a in outputs.items()])


def error_response(message: str) -> Any:
    """An InferenceResponse that reports ``message`` as this request's error (the server keeps serving)."""
    utils = pb_utils()
    return utils.InferenceResponse(output_tensors=[], error=utils.TritonError(str(message)))
