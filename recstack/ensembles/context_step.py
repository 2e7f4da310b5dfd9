"""The request-context step of the ensemble: request time and device -> the ``context`` block the ranker reads.

Runs first in the ``recommend`` chain (:func:`recstack.ensembles.graph.RequestContextOp`). Both
inputs are optional ensemble inputs, so a caller that sends only ``user_id`` / ``top_n`` is served
as before, at the server's current time:

    user_id      int64 [B, 1]  (only for the batch size)
    request_time int64 [B, 1]  unix seconds of the request (optional; default: now, per batch)
    device       int64 [B, 1]  device code (optional; 0 = not sent, 1 = other,
                               2.. = ``recstack.workflows.request_context.DEVICES``)
    -> context   int64 [B, 3]  (hour, weekday, device) codes, UTC
       request_seconds int64 [B, 1] the request time used (unix seconds; the multi-source
                               retrieval's features count interactions before it)

The codes come from :func:`recstack.workflows.request_context.context_codes`, the function the
ranker's training data went through for each interaction's timestamp.
"""

from __future__ import annotations

import time

import numpy as np

from recstack.errors import InputError
from recstack.workflows.request_context import (
    check_device_codes,
    check_request_times,
    context_codes,
)


def _column(inputs: dict[str, np.ndarray], name: str, batch: int) -> np.ndarray | None:
    """An optional ``[B, 1]`` input as ``[B]``, or None when the request did not send it."""
    if name not in inputs:
        return None
    array = np.asarray(inputs[name])
    if array.shape != (batch, 1):
        raise InputError(f"input {name!r}: expected shape [batch, 1] = [{batch}, 1], got {list(array.shape)}")
    return array[:, 0]


class RequestContext:
    """``user_id`` [B, 1], optional ``request_time`` / ``device`` [B, 1] -> ``context`` int64 [B, 3]."""

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "user_id" not in inputs:
            raise InputError("input 'user_id' is missing")
        batch = len(inputs["user_id"])
        times = _column(inputs, "request_time", batch)
        times = check_request_times(times) if times is not None else np.full(batch, int(time.time()), np.int64)
        devices = _column(inputs, "device", batch)
        devices = check_device_codes(devices) if devices is not None else np.zeros(batch, np.int64)
        return {"context": context_codes(times, devices), "request_seconds": times.astype(np.int64).reshape(batch, 1)}
