"""What a gateway serves and how: one run's catalogue, a Triton server, an event log, an API key."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from recstack.errors import InputError
from recstack.paths import RunPaths

API_KEY_ENV = "RECSTACK_API_KEY"
"""Environment variable holding the API key write endpoints require (unset: no key needed)."""
MAX_K = 100
MAX_EVENTS_PER_REQUEST = 10_000


@dataclass
class GatewayConfig:
    """``paths``: the run (titles, workflow, popularity, item embeddings); ``triton_url``: the
    gRPC address of the tritonserver serving its repository (``host:port``); ``event_log``: the
    log URL (None: the run's SQLite log, or $RECSTACK_EVENT_LOG); ``api_key``: required in the
    ``X-API-Key`` header of write endpoints (default: $RECSTACK_API_KEY; None: open);
    ``onboarding_per_genre``: items logged as likes per genre a new user picks; ``live_items``: the
    live-item registry new items go to (default: the run's ``items/live.db``, which `recstack serve`
    points Triton at too); ``experiments``: an A/B experiments file (:mod:`recstack.serving.ab.experiments`;
    None: no experiment); ``exposure_log``: where shown lists are logged (default: next to the event log,
    :func:`recstack.serving.ab.exposures.open_exposure_log`)."""

    paths: RunPaths
    triton_url: str
    event_log: str | None = None
    api_key: str | None = field(default_factory=lambda: os.environ.get(API_KEY_ENV) or None)
    onboarding_per_genre: int = 3
    triton_timeout_s: float = 5.0
    live_items: Path | None = None
    experiments: Path | None = None
    exposure_log: str | None = None

    def __post_init__(self) -> None:
        if not (Path(self.paths.data) / "items.parquet").is_file():
            raise InputError(f"--dataset: {self.paths.data} has no items.parquet (run the pipeline first)")
        if self.live_items is None:
            from recstack.features.live_items import live_items_path

            self.live_items = live_items_path(self.paths)
        if self.experiments is not None:
            from recstack.serving.ab.experiments import load_experiment

            load_experiment(self.experiments)  # a bad file fails here, before anything starts
        if not self.triton_url or "://" in self.triton_url:
            raise InputError(f"--triton-url: expected host:port of Triton's gRPC endpoint, got {self.triton_url!r}")
