"""The request context the ranker reads: hour of day, weekday and device of a request or an interaction.

One function, :func:`context_codes`, turns timestamps (unix seconds) and device names into the
``context`` block ``[N, 3]`` int64 that the DLRM is trained on (from each interaction's
timestamp, :mod:`recstack.models.data`) and served with (from the request time,
:class:`recstack.ensembles.context_step.RequestContext`), so both get the same codes for the
same time. The calendar parts come from :func:`recstack.workflows.ops.datetime.calendar_parts`,
the code of the ``DateTimeParts`` op, in **UTC** (MovieLens gives unix seconds and no time zone).

Codes follow Categorify's convention (``recstack.ids``): ``0`` = unknown / not sent,
``1`` = out of vocabulary, ``2..`` = the value::

    hour     2 + hour (0..23)                 -> 2..25   cardinality 26
    weekday  2 + weekday (Monday = 0)         -> 2..8    cardinality 9
    device   2 + DEVICES.index(name)          -> 2..7    cardinality 8; a name outside DEVICES -> 1

Example: 1700000000 (Tuesday 2023-11-14 22:13:20 UTC), "ios" -> ``[24, 3, 3]``.

Device is fixed-vocabulary so that every stage agrees on its codes without a fitted table; a
model uses it only where its training data had a ``device`` column (none of the bundled
datasets has one: there the DLRM's layout leaves device out, see ``FeatureLayout.context``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recstack.errors import InputError
from recstack.ids import FIRST_CODE, OOV, PAD
from recstack.workflows.ops.datetime import calendar_parts

CONTEXT_COLUMNS: tuple[str, ...] = ("hour", "weekday", "device")
"""Columns of the ``context`` block, in order."""
TIME_CONTEXT: tuple[str, ...] = ("hour", "weekday")
"""The context columns every timestamped dataset can train on."""
DEVICES: tuple[str, ...] = ("web", "ios", "android", "tv", "desktop", "other")
"""Device / platform names a client may send (lower case)."""
CONTEXT_CARDINALITY: dict[str, int] = {"hour": 24 + FIRST_CODE, "weekday": 7 + FIRST_CODE,
                                       "device": len(DEVICES) + FIRST_CODE}
TIMEZONE = "UTC"
MAX_REQUEST_TIME = 4_102_444_800
"""2100-01-01 UTC, the event log's bound on timestamps; later request times are refused."""


def device_code(name: str | None) -> int:
    """A device name -> its code (``0`` for None / empty, ``1`` for a name outside :data:`DEVICES`)."""
    if name is None or name == "":
        return PAD
    name = str(name).strip().lower()
    return FIRST_CODE + DEVICES.index(name) if name in DEVICES else OOV


def check_device_codes(codes: np.ndarray, field: str = "device") -> np.ndarray:
    """Device codes as sent to the ensemble: int64, each in ``0 .. cardinality - 1``; InputError otherwise."""
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise InputError(f"input {field!r}: expected integer device codes, got {codes.dtype.name}")
    bad = (codes < PAD) | (codes >= CONTEXT_CARDINALITY["device"])
    if bad.any():
        raise InputError(f"input {field!r}: device code {int(codes[bad][0])} is outside 0..{CONTEXT_CARDINALITY['device'] - 1}"
                         f" (0 = not sent, 1 = other, 2.. = {list(DEVICES)})")
    return codes.astype(np.int64)


def check_request_times(seconds: np.ndarray, field: str = "request_time") -> np.ndarray:
    """Request times as unix seconds int64 in ``0 .. MAX_REQUEST_TIME``; InputError otherwise."""
    seconds = np.asarray(seconds)
    if seconds.dtype.kind not in "iu":
        raise InputError(f"input {field!r}: expected integer unix seconds, got {seconds.dtype.name}")
    bad = (seconds < 0) | (seconds > MAX_REQUEST_TIME)
    if bad.any():
        raise InputError(f"input {field!r}: {int(seconds[bad][0])} is outside 0..{MAX_REQUEST_TIME} (unix seconds)")
    return seconds.astype(np.int64)


def context_codes(timestamps: np.ndarray, devices: np.ndarray | Sequence[str | None] | None = None) -> np.ndarray:
    """Unix seconds ``[N]`` (float or int; NaN = unknown) and device codes or names ``[N]`` (None:
    not sent) -> the ``context`` block ``[N, 3]`` int64 (hour, weekday, device codes; see the module
    docstring)."""
    secs = np.asarray(timestamps).reshape(-1)
    out = np.zeros((len(secs), len(CONTEXT_COLUMNS)), np.int64)
    if secs.dtype.kind in "iu":  # served requests: whole seconds, none unknown; no float / NaN round trip
        for col, values in enumerate(calendar_parts(secs, TIME_CONTEXT).values()):
            out[:, col] = values + FIRST_CODE
    else:
        parts = calendar_parts(secs.astype(np.float64), TIME_CONTEXT)
        for col, name in enumerate(TIME_CONTEXT):
            values = parts[name]
            out[:, col] = np.where(np.isnan(values), PAD, np.nan_to_num(values) + FIRST_CODE).astype(np.int64)
    if devices is not None:
        arr = np.asarray(devices)
        if arr.dtype.kind in "iu":
            out[:, 2] = check_device_codes(arr.reshape(-1))
        else:
            out[:, 2] = [device_code(None if d is None or (isinstance(d, float) and np.isnan(d)) else d)
                         for d in arr.reshape(-1)]
    return out
