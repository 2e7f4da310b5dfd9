"""`recstack bench dashboard`: a PNG snapshot of the gateway's and Triton's Prometheus metrics while
load runs through the gateway (recommendations and events), so no Grafana is needed to see them.

Both ``/metrics`` endpoints are scraped every ``interval_s``; each panel plots the change between
consecutive scrapes: requests/s per endpoint, latency p50/p95 of the recommendations endpoint
(from histogram bucket deltas), events accepted and applied per second with the consumer lag,
cold-start and exploration shares, errors by kind, and Triton's successful inferences per second
with queue and compute time per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout_s: float = 5.0) -> Series:
    """``{(sample name, sorted labels): value}`` of one Prometheus text endpoint."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=timeout_s).text
    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(series: Series, name: str, **labels: str) -> float:
    """Sum of ``name`` over the label sets that carry ``labels`` (the parser names counters
    ``<name>_total`` whether or not the exporter did)."""
    names = {name, f"{name}_total"}
    return sum(v for (n, ls), v in series.items() if n in names and all((k, w) in ls for k, w in labels.items()))


def histogram_quantile(q: float, before: Series, after: Series, name: str, **labels: str) -> float:
    """Quantile ``q`` of the observations of histogram ``name`` between two scrapes (seconds;
    linear inside the bucket, NaN when nothing was observed)."""
    bounds: dict[float, float] = {}
    for (n, ls), v in after.items():
        if n != f"{name}_bucket" or not all((k, w) in ls for k, w in labels.items()):
            continue
        le = float(dict(ls)["le"])
        bounds[le] = bounds.get(le, 0.0) + v - before.get((n, ls), 0.0)
    if not bounds or bounds.get(float("inf"), 0.0) <= 0:
        return float("nan")
    edges = sorted(bounds)
    rank = q * bounds[float("inf")]
    lower, below = 0.0, 0.0
    for le in edges:
        if bounds[le] >= rank:
            if np.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / max(bounds[le] - below, 1e-12)
        lower, below = le, bounds[le]
    return lower


@dataclass
class Snapshot:
    """Scrapes over time: ``times`` (s since start), ``gateway`` and ``triton`` series per scrape."""

    times: list[float] = field(default_factory=list)
    gateway: list[Series] = field(default_factory=list)
    triton: list[Series] = field(default_factory=list)


def record(gateway_metrics_url: str, triton_metrics_url: str | None, seconds: float, interval_s: float = 1.0,
           progress: Callable[[str], None] | None = None) -> Snapshot:
    """Scrape both endpoints every ``interval_s`` for ``seconds``."""
    snap = Snapshot()
    start = time.perf_counter()
    while True:
        now = time.perf_counter() - start
        snap.times.append(now)
        snap.gateway.append(scrape(gateway_metrics_url))
        snap.triton.append(scrape(triton_metrics_url) if triton_metrics_url else {})
        if progress:
            progress(f"[dashboard] {now:5.1f}/{seconds:.0f} s scraped")
        if now >= seconds:
            return snap
        time.sleep(max(0.0, interval_s - (time.perf_counter() - start - now)))


class GatewayLoad:
    """Background load through the gateway: ``rate`` recommendation requests/s (one thread, paced)
    and ``events_per_s`` events/s posted once a second (another thread); counts what it sent."""

    def __init__(self, base_url: str, users: list[int], items: list[int], rate: float, events_per_s: int,
                 api_key: str | None = None, seed: int = 0):
        self.base_url, self.users, self.items = base_url.rstrip("/"), users, items
        self.rate, self.events_per_s = float(rate), int(events_per_s)
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.rng = np.random.default_rng(seed)
        self.sent = {"recommendations": 0, "events": 0, "errors": 0}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _recommendations(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            next_at = time.perf_counter()
            while not self._stop.is_set():
                user = int(self.users[self.rng.integers(len(self.users))])
                try:
                    ok = client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.sent["recommendations" if ok else "errors"] += 1
                next_at += 1.0 / self.rate
                self._stop.wait(max(0.0, next_at - time.perf_counter()))

    def _events(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base_url, timeout=10, headers=self.headers) as client:
            batch_no = 0
            while not self._stop.wait(1.0 if batch_no else 0.0):
                batch = [{"event_id": f"dash-{time.time_ns()}-{n}", "type": "view",
                          "user": int(self.users[self.rng.integers(len(self.users))]),
                          "item": int(self.items[self.rng.integers(len(self.items))])}
                         for n in range(self.events_per_s)]
                try:
                    ok = client.post("/v1/events", json={"events": batch}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.sent["events" if ok else "errors"] += len(batch) if ok else 1
                batch_no += 1

    def __enter__(self) -> "GatewayLoad":
        targets = ([self._recommendations] if self.rate > 0 else []) + ([self._events] if self.events_per_s else [])
        self._threads = [threading.Thread(target=t, daemon=True) for t in targets]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _rates(snap: Snapshot, source: str, name: str, **labels: str) -> np.ndarray:
    """Per-interval increase of counter ``name`` divided by the interval (per second)."""
    series = getattr(snap, source)
    values = np.array([total(s, name, **labels) for s in series])
    return np.diff(values) / np.maximum(np.diff(snap.times), 1e-9)


def _label_values(series: list[Series], name: str, label: str) -> list[str]:
    names = {name, f"{name}_total"}
    return sorted({dict(ls).get(label, "") for s in series for (n, ls) in s if n in names})


def plot(snap: Snapshot, path: Path, title: str = "recstack gateway + Triton") -> Path:
    """Six panels of the snapshot (see the module docstring) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recstack.io import save_figure

    t = np.asarray(snap.times[1:])
    fig, axes = plt.subplots(3, 2, figsize=(13, 11))
    fig.suptitle(title)
    ax = axes[0, 0]
    name = "recstack_gateway_request_seconds_count"
    for endpoint in _label_values(snap.gateway, name, "endpoint"):
        ax.plot(t, _rates(snap, "gateway", name, endpoint=endpoint), label=endpoint)
    ax.set(title="gateway requests/s by endpoint", xlabel="s", ylabel="req/s")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    hist, endpoint = "recstack_gateway_request_seconds", "/v1/users/{user_id}/recommendations"
    for q in (0.5, 0.95):
        ms = [1000 * histogram_quantile(q, a, b, hist, endpoint=endpoint)
              for a, b in zip(snap.gateway[:-1], snap.gateway[1:])]
        ax.plot(t, ms, label=f"p{int(q * 100)}")
    ax.set(title="recommendations latency (gateway)", xlabel="s", ylabel="ms")
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    ax.plot(t, _rates(snap, "gateway", "recstack_events_accepted_total"), label="accepted/s")
    applied = np.array([total(s, "recstack_events_applied") for s in snap.gateway])
    ax.plot(t, np.diff(applied) / np.maximum(np.diff(snap.times), 1e-9), label="applied/s")
    twin = ax.twinx()
    twin.plot(t, [total(s, "recstack_events_lag") for s in snap.gateway[1:]], "k:",
              label="lag (max over consumers; the parquet writer flushes in batches)")
    twin.set_ylabel("lag")
    ax.set(title="events", xlabel="s", ylabel="events/s")
    ax.legend(fontsize=7, loc="upper left")
    twin.legend(fontsize=7, loc="upper right")

    ax = axes[1, 1]
    lists = _rates(snap, "gateway", "recstack_recommendations_total")
    cold = _rates(snap, "gateway", "recstack_recommendations_total", cold_start="true")
    items = _rates(snap, "gateway", "recstack_recommended_items_total")
    explored = _rates(snap, "gateway", "recstack_recommended_items_total", explored="true")
    with np.errstate(invalid="ignore", divide="ignore"):
        ax.plot(t, 100 * cold / lists, label="cold-start lists %")
        ax.plot(t, 100 * explored / items, label="exploration slots %")
    ax.set(title="cold start and exploration", xlabel="s", ylabel="%")
    ax.legend(fontsize=7)

    ax = axes[2, 0]
    kinds = _label_values(snap.gateway, "recstack_gateway_errors_total", "kind")
    for kind in kinds:
        ax.plot(t, _rates(snap, "gateway", "recstack_gateway_errors_total", kind=kind), label=kind)
    ax.set(title="gateway errors/s by kind" + ("" if kinds else " (none)"), xlabel="s", ylabel="errors/s")
    if kinds:
        ax.legend(fontsize=7)

    ax = axes[2, 1]
    if snap.triton and snap.triton[0]:
        success = _rates(snap, "triton", "nv_inference_request_success", model="recommend")
        ax.plot(t, success, label="recommend inferences/s")
        twin = ax.twinx()
        steps = [m for m in _label_values(snap.triton, "nv_inference_request_success", "model") if m != "recommend"]
        for model in steps:  # the python models behind the ensemble (one when fused)
            done = _rates(snap, "triton", "nv_inference_request_success", model=model)
            for metric, label in (("nv_inference_queue_duration_us", "queue"),
                                  ("nv_inference_compute_infer_duration_us", "compute")):
                with np.errstate(invalid="ignore", divide="ignore"):
                    per = _rates(snap, "triton", metric, model=model) / done
                twin.plot(t, per / 1000, ":", label=f"{model} {label} ms/request")
        twin.set_ylabel("ms")
        twin.legend(fontsize=7, loc="upper right")
        ax.legend(fontsize=7, loc="upper left")
    ax.set(title="Triton", xlabel="s", ylabel="inferences/s")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def summary(snap: Snapshot) -> dict[str, float]:
    """Totals over the whole snapshot (first scrape to last)."""
    first, last = snap.gateway[0], snap.gateway[-1]
    seconds = max(snap.times[-1] - snap.times[0], 1e-9)
    endpoint = "/v1/users/{user_id}/recommendations"
    lists = total(last, "recstack_recommendations_total") - total(first, "recstack_recommendations_total")
    items = total(last, "recstack_recommended_items_total") - total(first, "recstack_recommended_items_total")
    explored = (total(last, "recstack_recommended_items_total", explored="true")
                - total(first, "recstack_recommended_items_total", explored="true"))
    return {
        "seconds": round(seconds, 2),
        "recommendations_per_s": round(lists / seconds, 1),
        "p50_ms": round(1000 * histogram_quantile(0.5, first, last, "recstack_gateway_request_seconds",
                                                  endpoint=endpoint), 2),
        "p95_ms": round(1000 * histogram_quantile(0.95, first, last, "recstack_gateway_request_seconds",
                                                  endpoint=endpoint), 2),
        "events_accepted": total(last, "recstack_events_accepted_total") - total(first, "recstack_events_accepted_total"),
        "exploration_share": round(explored / items, 4) if items else 0.0,
        "errors": total(last, "recstack_gateway_errors_total") - total(first, "recstack_gateway_errors_total"),
        "final_lag": total(last, "recstack_events_lag"),
    }
