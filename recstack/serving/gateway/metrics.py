"""Prometheus metrics of one gateway (own registry, so several apps in one process don't mix)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayMetrics:
    """Request latency per endpoint, errors by kind, events accepted / duplicates / applied / lag,
    recommendations by cold start and by fallback, recommended items by exploration, items added."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("recstack_gateway_request_seconds", "Request latency by endpoint",
                                 ["endpoint", "method", "status"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.errors = Counter("recstack_gateway_errors_total", "Errors by kind (input, auth, triton = "
                              "unreachable, recommendation = a step failed)", ["kind"], registry=r)
        self.accepted = Counter("recstack_events_accepted_total", "Events stored in the log", registry=r)
        self.duplicates = Counter("recstack_events_duplicates_total", "Events whose id was already stored",
                                  registry=r)
        self.applied = Gauge("recstack_events_applied", "Events applied to the online store by this gateway",
                             registry=r)
        self.lag = Gauge("recstack_events_lag", "Events logged but not yet applied by every consumer", registry=r)
        self.served = Counter("recstack_recommendations_total", "Recommendation lists served", ["cold_start"],
                              registry=r)
        self.items_served = Counter("recstack_recommended_items_total", "Items in served lists, by whether "
                                    "they were exploration slots", ["explored"], registry=r)
        self.fallbacks = Counter("recstack_recommendation_fallbacks_total", "Recommendation lists served by a "
                                 "fallback (kind: popularity = the online store was unreachable)", ["kind"],
                                 registry=r)
        self.items_added = Counter("recstack_items_added_total", "Items added after training", registry=r)
        self.by_device = Counter("recstack_recommendations_by_device_total", "Recommendation lists served, by "
                                 "the device the request sent (none = not sent)", ["device"], registry=r)
        self._service: Any = None

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.latency.labels(endpoint, method, str(status)).observe(seconds)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def events(self, accepted: int, duplicates: int) -> None:
        self.accepted.inc(accepted)
        self.duplicates.inc(duplicates)

    def recommended(self, cold_start: bool, items: int = 0, explored: int = 0, fallback: str | None = None) -> None:
        """One list served: ``items`` long, ``explored`` of them exploration slots (the exploration
        share is explored / all items); ``fallback``: which fallback served it, if any."""
        self.served.labels("true" if cold_start else "false").inc()
        if fallback is not None:
            self.fallbacks.labels(fallback).inc()
        self.items_served.labels("false").inc(items - explored)
        self.items_served.labels("true").inc(explored)

    def context(self, device: str | None) -> None:
        """One list served to a request from ``device`` (None: the app sent none)."""
        self.by_device.labels(device or "none").inc()

    def watch_events(self, service: Any) -> None:
        """Read applied / lag from this event service at each scrape."""
        self._service = service

    def render(self) -> bytes:
        if self._service is not None:
            stats = self._service.stats()
            self.applied.set(stats.get("applied", 0))
            self.lag.set(stats.get("lag", 0))
        return generate_latest(self.registry)
