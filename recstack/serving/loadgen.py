"""The load engine behind `recstack bench serve`: bounded async load loops, latency and rate
bookkeeping, and Triton statistics deltas.

Two load modes, as in perf_analyzer:

- closed loop (:func:`run_closed_loop`): ``concurrency`` workers, each sends a request and
  waits for its answer before sending the next, so exactly N requests are in flight;
  latency is measured from when the request was sent.
- open loop (:func:`run_open_loop`): request ``i`` is due at ``t0 + i / rate`` whatever the
  server does; latency is measured from the *scheduled* time, so time spent waiting for a
  free slot (client or server queueing) counts (no coordinated omission).

Both are bounded by construction: the closed loop issues no request after its window ends,
the open loop issues exactly ``ceil(rate * (warm-up + interval))`` requests, every request
is cut off after ``timeout_s`` (an error), and in-flight requests are capped.

Times are seconds from ``time.perf_counter`` unless a name says ``_ms`` or ``_ns``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recstack.errors import InputError

PERCENTILES = (50, 90, 95, 99)
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class RequestRecord:
    """One request: ``start_s`` (sent, or scheduled in open loop), ``end_s`` (answered or
    failed), ``error`` (None when it succeeded)."""

    start_s: float
    end_s: float
    error: str | None = None


@dataclass
class LevelResult:
    """What one load level measured (latencies in ms, rates per second)."""

    mode: str                       # "concurrency" or "request_rate"
    level: float                    # N in flight, or requests/s scheduled
    window_s: float                 # measurement window length
    requests: int                   # successful requests that completed inside the window
    throughput_rps: float           # requests / window_s
    latency_ms: dict[str, float]    # "p50", "p90", "p95", "p99", "mean", "max"
    errors: int = 0                 # failed requests over the whole level (warm-up and tail included)
    first_error: str | None = None
    sent: int = 0                   # every request the level issued
    client_cpu_ms: float = math.nan  # load generator's own CPU time per sent request (it shares the machine)
    steps: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> stats_delta row


def parse_range(text: str, option: str, kind: type = int) -> list:
    """perf_analyzer's ``START:END:STEP`` (END inclusive, STEP default 1; END default START),
    or comma-separated values/ranges (``1,4,16``). Values must be > 0; at most 64 levels."""
    values: list = []
    try:
        for part in str(text).split(","):
            bits = [kind(b) for b in part.strip().split(":")]
            if len(bits) == 1:
                values.append(bits[0])
                continue
            if len(bits) > 3:
                raise ValueError
            start, end = bits[0], bits[1]
            step = bits[2] if len(bits) == 3 else kind(1)
            if step <= 0 or end < start:
                raise ValueError
            count = int(math.floor((end - start) / step + 1e-9)) + 1
            values.extend(kind(start + i * step) for i in range(count))
    except ValueError:
        raise InputError(f"{option}: {text!r} is not START:END:STEP (END >= START, STEP > 0) "
                         "or a comma-separated list") from None
    if not values or any(v <= 0 for v in values):
        raise InputError(f"{option}: every level must be > 0, got {text!r}")
    if len(values) > 64:
        raise InputError(f"{option}: {len(values)} levels; at most 64")
    return values


def split_url(url: str) -> tuple[str, int]:
    """``[scheme://]host:port`` -> (host, port); IPv6 hosts in brackets."""
    for prefix in ("http://", "https://", "grpc://"):
        if url.startswith(prefix):
            url = url[len(prefix):]
    url = url.rstrip("/")
    host, sep, port = url.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InputError(f"--url: {url!r} is not host:port")
    return host.strip("[]"), int(port)


def check_target(url: str, allow_remote: bool = False) -> str:
    """Refuse a non-loopback target unless ``allow_remote``: load tests here must only hit
    this machine. Only ``localhost`` and loopback IP literals pass (no DNS lookup).
    Returns the url without a scheme."""
    host, port = split_url(url)
    if not allow_remote and host.lower() not in LOOPBACK_NAMES:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise InputError(f"--url: {host} is not a loopback address (127.0.0.0/8, ::1, localhost); "
                             "load tests target this machine only (pass --allow-remote to override)")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def percentiles_ms(latencies_s: np.ndarray | list[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p95/p99 (the smallest sample with at least p% of samples at or
    below it, as perf_analyzer reports), mean and max, in milliseconds; NaN when empty."""
    lat = np.sort(np.asarray(latencies_s, dtype=np.float64)) * 1e3
    if lat.size == 0:
        return {**{f"p{p}": math.nan for p in PERCENTILES}, "mean": math.nan, "max": math.nan}
    out = {f"p{p}": float(lat[max(math.ceil(p / 100 * lat.size) - 1, 0)]) for p in PERCENTILES}
    out.update(mean=float(lat.mean()), max=float(lat[-1]))
    return out


def summarize(records: list[RequestRecord], window_start_s: float, window_end_s: float, *,
              mode: str, level: float) -> LevelResult:
    """Bookkeeping of one level: successes *completing* inside [start, end) give latency and
    throughput (req/s = count / window length); errors are counted over all records."""
    window = window_end_s - window_start_s
    if window <= 0:
        raise ValueError("summarize: window_end_s must be after window_start_s")
    done = [r for r in records if r.error is None and window_start_s <= r.end_s < window_end_s]
    failed = [r for r in records if r.error is not None]
    latencies = [r.end_s - r.start_s for r in done]
    return LevelResult(mode=mode, level=level, window_s=window, requests=len(done),
                       throughput_rps=len(done) / window, latency_ms=percentiles_ms(latencies),
                       errors=len(failed), first_error=failed[0].error if failed else None,
                       sent=len(records))


# ---------------------------------------------------------------- Triton statistics

STAT_KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def parse_statistics(response: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """``get_inference_statistics`` (HTTP dict, or gRPC ``as_json=True`` where int64s are
    strings and zero fields are omitted) -> model -> flat counters (``<kind>_count``,
    ``<kind>_ns``, ``inference_count``, ``execution_count``); versions are summed."""
    out: dict[str, dict[str, int]] = {}
    for model in response.get("model_stats", []):
        row = out.setdefault(model["name"], {})
        stats = model.get("inference_stats", {})
        for kind in STAT_KINDS:
            for unit in ("count", "ns"):
                key = f"{kind}_{unit}"
                row[key] = row.get(key, 0) + int(stats.get(kind, {}).get(unit, 0))
        for key in ("inference_count", "execution_count"):
            row[key] = row.get(key, 0) + int(model.get(key, 0))
    return out


def stats_delta(before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]]
                ) -> dict[str, dict[str, float]]:
    """Per model, over the window: ``requests`` (successful), ``executions``, ``avg_batch``
    (inferences per execution), and per request ``queue_ms``, ``compute_ms`` (input + infer +
    output) and ``total_ms`` (request time in that model, queue included)."""
    out = {}
    for name, end in after.items():
        start = before.get(name, {})
        d = {k: end.get(k, 0) - start.get(k, 0) for k in end}
        n = d["success_count"]
        per = (lambda ns: ns / n / 1e6) if n > 0 else (lambda ns: math.nan)
        out[name] = {
            "requests": n,
            "executions": d["execution_count"],
            "avg_batch": d["inference_count"] / d["execution_count"] if d["execution_count"] > 0 else math.nan,
            "queue_ms": per(d["queue_ns"]),
            "compute_ms": per(d["compute_input_ns"] + d["compute_infer_ns"] + d["compute_output_ns"]),
            "total_ms": per(d["success_ns"]),
        }
    return out


# ---------------------------------------------------------------- load loops

Send = Callable[[int], Awaitable[Any]]          # request index -> awaitable that raises on error
Snapshot = Callable[[], Awaitable[Any]]         # called at window start and end (statistics)


def _error_text(exc: BaseException) -> str:
    message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    return f"{type(exc).__name__}: {message}".strip()


async def _timed(send: Send, index: int, timeout_s: float) -> str | None:
    try:
        await asyncio.wait_for(send(index), timeout_s)
        return None
    except asyncio.TimeoutError:
        return f"timeout: no answer within {timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001  every failure is counted and the first reported
        return _error_text(exc)


async def run_closed_loop(send: Send, concurrency: int, warmup_s: float, measure_s: float, *,
                          timeout_s: float = 10.0, snapshot: Snapshot | None = None,
                          clock: Callable[[], float] = time.perf_counter
                          ) -> tuple[list[RequestRecord], float, float, list[Any]]:
    """N workers, each one request at a time, for ``warmup_s + measure_s`` seconds.

    Returns (records, window start, window end, [snapshot at start, snapshot at end]).
    Request indices run 0, 1, 2, ... in send order (the caller maps them to users).
    """
    records: list[RequestRecord] = []
    counter = iter(range(1 << 62))
    t0 = clock()
    window_start, window_end = t0 + warmup_s, t0 + warmup_s + measure_s

    async def worker() -> None:
        while clock() < window_end:
            index = next(counter)
            start = clock()
            error = await _timed(send, index, timeout_s)
            records.append(RequestRecord(start, clock(), error))

    snaps = await _with_snapshots(snapshot, window_start, window_end, clock,
                                  [worker() for _ in range(int(concurrency))])
    return records, window_start, window_end, snaps


async def run_open_loop(send: Send, rate: float, warmup_s: float, measure_s: float, *,
                        timeout_s: float = 10.0, max_in_flight: int = 256, snapshot: Snapshot | None = None,
                        clock: Callable[[], float] = time.perf_counter
                        ) -> tuple[list[RequestRecord], float, float, list[Any]]:
    """Request ``i`` is due at ``t0 + i / rate`` for ``i < ceil(rate * (warmup_s + measure_s))``;
    at most ``max_in_flight`` at once (a request waiting for a slot is late, and its latency,
    measured from its due time, shows it). Same return value as :func:`run_closed_loop`."""
    records: list[RequestRecord] = []
    total = math.ceil(rate * (warmup_s + measure_s))
    slots = asyncio.Semaphore(int(max_in_flight))
    t0 = clock()
    window_start, window_end = t0 + warmup_s, t0 + warmup_s + measure_s

    async def one(index: int, due: float) -> None:
        try:
            error = await _timed(send, index, timeout_s)
            records.append(RequestRecord(due, clock(), error))
        finally:
            slots.release()

    async def scheduler() -> None:
        tasks = []
        for index in range(total):
            due = t0 + index / rate
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            tasks.append(asyncio.ensure_future(one(index, due)))
        await asyncio.gather(*tasks)

    snaps = await _with_snapshots(snapshot, window_start, window_end, clock, [scheduler()])
    return records, window_start, window_end, snaps


async def _with_snapshots(snapshot: Snapshot | None, window_start: float, window_end: float,
                          clock: Callable[[], float], loops: list[Awaitable[None]]) -> list[Any]:
    """Run ``loops`` while taking ``snapshot()`` at the window's start and end."""
    snaps: list[Any] = []

    async def snapper() -> None:
        for at in (window_start, window_end):
            delay = at - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            snaps.append(await snapshot() if snapshot is not None else None)

    await asyncio.gather(snapper(), *loops)
    return snaps
