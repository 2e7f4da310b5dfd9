"""A bounded soak: recommendations and events at fixed rates through the real gateway process and
tritonserver for a fixed time, with the resident memory of every process sampled throughout.

Two open loops (:func:`recstack.serving.loadgen.run_open_loop`, latency measured from each
request's scheduled time) share the window: ``GET /v1/users/{u}/recommendations`` at
``request_rate`` per second, and ``POST /v1/events`` batches at ``event_rate`` events per second.
A sampler reads ``VmRSS`` from ``/proc`` every ``sample_every_s`` for tritonserver, each of its
python-backend stubs (found as its child processes) and the gateway.

Memory drift of a process is the median RSS of the last fifth of the window minus the median of
the first fifth after the warm-up (MiB): allocator noise and one-off caches fill in the warm-up,
a leak keeps growing to the end. ``slope_mib_per_min`` is a least-squares fit over the same span.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recstack.paths import RunPaths
from recstack.serving.loadgen import RequestRecord, percentiles_ms, run_open_loop
from recstack.serving.procfs import child_pids, rss_mib

RUN_FOLDERS = ("data", "workflow", "features", "feature_repo", "models", "index", "reports")
EVENT_USER_OFFSET = 5_000_000
"""Events go to new users (raw ids above every real one): the soak's pushes leave real users alone."""


@dataclass
class SoakResult:
    """What one soak measured. Latencies in ms; ``rss_mib``: process label -> [(t_s, MiB)]."""

    duration_s: float
    request_rate: float
    event_rate: float
    requests: int = 0
    request_errors: int = 0
    events_sent: int = 0
    event_errors: int = 0
    first_error: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    event_latency_ms: dict[str, float] = field(default_factory=dict)
    rss_mib: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    warmup_s: float = 0.0

    @property
    def errors(self) -> int:
        return self.request_errors + self.event_errors

    def drift(self) -> dict[str, dict[str, float]]:
        """Per process: ``start_mib``, ``end_mib``, ``drift_mib`` (end - start), ``slope_mib_per_min``."""
        out = {}
        for label, series in self.rss_mib.items():
            pts = np.array([p for p in series if p[0] >= self.warmup_s])
            if len(pts) < 5:
                continue
            fifth = max(1, len(pts) // 5)
            start, end = float(np.median(pts[:fifth, 1])), float(np.median(pts[-fifth:, 1]))
            slope = float(np.polyfit(pts[:, 0], pts[:, 1], 1)[0]) * 60 if np.ptp(pts[:, 0]) > 0 else 0.0
            out[label] = {"start_mib": start, "end_mib": end, "drift_mib": end - start, "slope_mib_per_min": slope}
        return out

    def summary(self) -> dict[str, Any]:
        return {"duration_s": self.duration_s, "request_rate": self.request_rate, "event_rate": self.event_rate,
                "requests": self.requests, "request_errors": self.request_errors, "events_sent": self.events_sent,
                "event_errors": self.event_errors, "first_error": self.first_error, "latency_ms": self.latency_ms,
                "event_latency_ms": self.event_latency_ms, "warmup_s": self.warmup_s, "drift": self.drift()}


def scratch_home(paths: RunPaths, folder: Path) -> Path:
    """A RECSTACK_HOME whose run links the artifacts of ``paths`` but keeps its own event log,
    consumer locks and live-item registry (so a soak adds nothing to the run it reads)."""
    root = folder / "runs" / paths.root.name
    root.mkdir(parents=True)
    for name in RUN_FOLDERS:
        if (paths.root / name).exists():
            (root / name).symlink_to((paths.root / name).resolve())
    return folder


def start_gateway(home: Path, dataset: str, triton_url: str, port: int, timeout_s: float = 120.0) -> subprocess.Popen:
    """`recstack gateway` as its own process on 127.0.0.1:``port``; returns once /healthz answers."""
    import httpx

    cli = Path(sys.executable).with_name("recstack")
    proc = subprocess.Popen([str(cli), "gateway", "--dataset", dataset, "--triton-url", triton_url,
                             "--port", str(port)], env={**os.environ, "RECSTACK_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the gateway did not start (exit code {proc.poll()})")
        time.sleep(0.2)


def process_labels(server_pid: int, gateway_pid: int) -> dict[str, int]:
    """label -> pid: ``tritonserver``, ``stub <model> #<n>`` for each python-backend stub, ``gateway``."""
    labels = {"tritonserver": server_pid, "gateway": gateway_pid}
    counts: dict[str, int] = {}
    for pid in sorted(child_pids(server_pid)):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        model = next((a.decode(errors="replace").split("/")[-3] for a in args if a.endswith(b"model.py")), "stub")
        counts[model] = counts.get(model, 0) + 1
        labels[f"stub {model} #{counts[model]}"] = pid
    return labels


async def _sample(labels: dict[str, int], out: dict[str, list[tuple[float, float]]], t0: float, every_s: float,
                  stop: asyncio.Event) -> None:
    while not stop.is_set():
        now = time.perf_counter() - t0
        for label, pid in labels.items():
            value = rss_mib(pid)
            if value is not None:
                out.setdefault(label, []).append((now, value))
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass


async def _soak(gateway_url: str, labels: dict[str, int], users: list[int], items: list[int], duration_s: float,
                warmup_s: float,
                request_rate: float, event_rate: float, event_batch: int, sample_every_s: float,
                timeout_s: float) -> SoakResult:
    import httpx

    result = SoakResult(duration_s, request_rate, event_rate, warmup_s=warmup_s)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=gateway_url, limits=limits, timeout=timeout_s) as client:
        async def recommend(index: int) -> None:
            resp = await client.get(f"/v1/users/{users[index % len(users)]}/recommendations", params={"k": 10})
            if resp.status_code != 200 or not resp.json()["items"]:
                raise RuntimeError(f"GET recommendations: {resp.status_code} {resp.text[:200]}")

        async def post_events(index: int) -> None:
            events = [{"event_id": f"soak-{index}-{j}", "user": EVENT_USER_OFFSET + (index * event_batch + j) % 5000,
                       "item": items[(index * event_batch + j) % len(items)], "type": "view"}
                      for j in range(event_batch)]
            resp = await client.post("/v1/events", json={"events": events})
            if resp.status_code != 200:
                raise RuntimeError(f"POST events: {resp.status_code} {resp.text[:200]}")

        stop, t0 = asyncio.Event(), time.perf_counter()
        sampler = asyncio.ensure_future(_sample(labels, result.rss_mib, t0, sample_every_s, stop))
        measure_s = duration_s - warmup_s
        loops = [run_open_loop(recommend, request_rate, warmup_s, measure_s, timeout_s=timeout_s)]
        if event_rate > 0:
            loops.append(run_open_loop(post_events, event_rate / event_batch, warmup_s, measure_s, timeout_s=timeout_s))
        outcomes = await asyncio.gather(*loops)
        stop.set()
        await sampler

    def split(records: list[RequestRecord], window_start: float) -> tuple[list[RequestRecord], list[float]]:
        failed = [r for r in records if r.error]
        return failed, [r.end_s - r.start_s for r in records if not r.error and r.start_s >= window_start]

    failed, latencies = split(outcomes[0][0], outcomes[0][1])
    result.requests, result.request_errors = len(outcomes[0][0]), len(failed)
    result.latency_ms = percentiles_ms(latencies)
    first = [r.error for r in failed[:1]]
    if event_rate > 0:
        failed_ev, ev_latencies = split(outcomes[1][0], outcomes[1][1])
        result.events_sent, result.event_errors = len(outcomes[1][0]) * event_batch, len(failed_ev) * event_batch
        result.event_latency_ms = percentiles_ms(ev_latencies)
        first += [r.error for r in failed_ev[:1]]
    result.first_error = first[0] if first else None
    return result


def run_soak(paths: RunPaths, home: Path, duration_s: float, request_rate: float, event_rate: float, *,
             warmup_s: float | None = None, event_batch: int = 10, sample_every_s: float = 1.0,
             timeout_s: float = 10.0, users: list[int] | None = None) -> SoakResult:
    """Start tritonserver on ``paths``' repository and the gateway process on a scratch home in
    ``home`` (see :func:`scratch_home`), soak them for ``duration_s`` and stop both.

    ``warmup_s`` (default: a fifth of the duration) is left out of latencies and memory drift.
    """
    from recstack.serving.bench import draw_users
    from recstack.serving.server import start_server
    from recstack.serving.tritonserver import free_port

    warmup_s = duration_s / 5 if warmup_s is None else warmup_s
    import pandas as pd

    users = users or draw_users(paths, 500, seed=3)
    items = pd.read_parquet(paths.features / "popularity.parquet")["item_key"].astype(int).tolist()[:500]
    scratch = scratch_home(paths, home)
    scratch_paths = RunPaths.for_dataset(paths.root.name, home=scratch)
    server = start_server(paths.triton_repo, paths.feature_repo, live_items=scratch_paths.root / "items" / "live.db")
    gateway = None
    try:
        port = free_port()
        gateway = start_gateway(scratch, paths.root.name, server.grpc_url, port)
        labels = process_labels(server._proc.pid, gateway.pid)
        return asyncio.run(_soak(f"http://127.0.0.1:{port}", labels, users, items, duration_s, warmup_s, request_rate,
                                 event_rate, event_batch, sample_every_s, timeout_s))
    finally:
        if gateway is not None:
            gateway.terminate()
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
        server.stop()


def plot_memory(result: SoakResult, path: Path) -> None:
    """PNG: RSS (MiB) of every process over the soak, the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recstack.io import save_figure

    fig, ax = plt.subplots(figsize=(9, 5))
    for label, series in sorted(result.rss_mib.items()):
        pts = np.array(series)
        ax.plot(pts[:, 0], pts[:, 1], label=label)
    ax.axvspan(0, result.warmup_s, color="0.9", label="warm-up")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(f"soak: {result.request_rate:g} recommendations/s + {result.event_rate:g} events/s, "
                 f"{result.requests} requests, {result.errors} errors")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
