"""Tiny step classes used to check the Triton plumbing end to end (``recstack triton check``, tests)."""

from __future__ import annotations

import numpy as np

from recstack.errors import InputError
from recstack.ensembles.model_repo import TensorSpec

AFFINE_STEP_CLASS = "recstack.ensembles.examples:AffineCheckStep"
AFFINE_INPUTS = (TensorSpec("floats", np.float32, (-1,)), TensorSpec("ints", np.int64, (-1,)))
AFFINE_OUTPUTS = (
    TensorSpec("floats_out", np.float32, (-1,)),
    TensorSpec("ints_out", np.int64, (-1,)),
    TensorSpec("count", np.int64, (1,)),
)
SUM_STEP_CLASS = "recstack.ensembles.examples:SumStep"
SUM_INPUTS = (TensorSpec("values", np.float32, (-1,)), TensorSpec("weights", np.float32, (-1,)))
SUM_OUTPUTS = (TensorSpec("total", np.float32, (1,)),)
SUM_OPTIONAL = ("weights",)


class AffineCheckStep:
    """``floats_out = floats * scale + shift``, ``ints_out = ints + int_shift`` (wrapping int64),
    ``count[b] = number of floats in row b``.

    Raises InputError when the request carries ``ints`` equal to ``reject_value`` (if set), so
    tests can check that a step's InputError reaches the client as an error response.
    """

    def __init__(self, scale: float = 2.0, shift: float = 1.0, int_shift: int = 7, reject_value: int | None = None):
        self.scale = np.float32(scale)
        self.shift = np.float32(shift)
        self.int_shift = np.int64(int_shift)
        self.reject_value = reject_value

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        floats = np.asarray(inputs["floats"], dtype=np.float32)
        ints = np.asarray(inputs["ints"], dtype=np.int64)
        if floats.ndim != 2 or ints.ndim != 2:
            raise InputError(f"floats/ints: expected [batch, n] arrays, got shapes {floats.shape} and {ints.shape}")
        if self.reject_value is not None and np.any(ints == self.reject_value):
            raise InputError(f"ints: value {self.reject_value} is rejected by this check model")
        with np.errstate(over="ignore"):
            ints_out = ints + self.int_shift  # wraps around at the int64 limits, like C
        return {
            "floats_out": floats * self.scale + self.shift,
            "ints_out": ints_out,
            "count": np.full((floats.shape[0], 1), floats.shape[1], dtype=np.int64),
        }


class SumStep:
    """``total[b] = sum(values[b] * weights[b]) + offset`` as float32; ``weights`` is optional (default 1).

    The second step of the two-model check ensemble, and the check model for optional inputs.
    """

    def __init__(self, offset: float = 0.0):
        self.offset = np.float32(offset)

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = np.asarray(inputs["values"], dtype=np.float32)
        if "weights" in inputs:
            weights = np.asarray(inputs["weights"], dtype=np.float32)
            if weights.shape != values.shape:
                raise InputError(f"weights: shape {weights.shape} differs from values {values.shape}")
            values = values * weights
        return {"total": values.sum(axis=1, keepdims=True, dtype=np.float32) + self.offset}
