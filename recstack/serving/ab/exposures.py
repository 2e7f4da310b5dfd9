"""Exposures: which list each user was shown, under which experiment and variant.

They go to an event log of their own (the same :class:`~recstack.events.EventLog` machinery:
SQLite ``runs/<ds>/events/exposures.db`` by default, or a Redis stream ``<ds>.exposures``),
not to the interaction log: an exposure is not an interaction, and the online-store consumer
would otherwise add every shown item to the user's history (and filter it out of the next list).

One shown list is one event per item, stored atomically as one batch:
``event_id = "exp:<experiment>:<variant>:<request id>:<rank>"``, ``user``, ``item``,
``type = "view"``, ``value = rank`` (1 = first), ``timestamp`` = when it was served.
Outcomes (clicks, conversions) are the apps' ordinary events in the interaction log
(`POST /v1/events`); the report joins the two by user, item and time.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from recstack.errors import InputError
from recstack.paths import RunPaths

EXPOSURE_FILE = "exposures.db"
PREFIX = "exp"


def open_exposure_log(paths: RunPaths | None, url: str | None = None, event_log_url: str | None = None):
    """The exposure log: ``url`` (``sqlite:///path`` or ``redis://...``), else a Redis stream next
    to a Redis interaction log (``event_log_url``), else ``runs/<ds>/events/exposures.db``."""
    from recstack.events.log import ENV_URL, SqliteEventLog, events_dir

    event_log_url = event_log_url or os.environ.get(ENV_URL)
    url = url or (event_log_url if event_log_url and not event_log_url.startswith("sqlite:") else None)
    if url is None:
        if paths is None:
            raise InputError("--exposure-log: give a run or a log url")
        return SqliteEventLog(events_dir(paths) / EXPOSURE_FILE)
    if url.startswith("sqlite:///"):
        return SqliteEventLog(url[len("sqlite:///"):])
    if url.startswith(("redis://", "rediss://", "unix://")):
        from recstack.events.redis_log import RedisEventLog

        return RedisEventLog(url, name=f"{paths.root.name if paths is not None else 'default'}.exposures")
    raise InputError(f"--exposure-log: {url!r} is not sqlite:///<path> or redis://host:port/db")


def exposure_events(experiment: str, variant: str, user_id: int, item_ids: list[int],
                    request_id: str | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """The events recording that ``user_id`` was shown ``item_ids`` (in order) under ``variant``."""
    request_id = request_id or uuid.uuid4().hex[:16]
    now = time.time() if now is None else now
    return [{"event_id": f"{PREFIX}:{experiment}:{variant}:{request_id}:{rank}", "user": int(user_id),
             "item": int(item), "type": "view", "value": float(rank), "timestamp": now}
            for rank, item in enumerate(item_ids, start=1)]


@dataclass(frozen=True)
class ExposureId:
    experiment: str
    variant: str
    request_id: str
    rank: int


def parse_exposure_id(event_id: str) -> ExposureId | None:
    """The parts of an exposure ``event_id`` (None for any other id)."""
    parts = event_id.split(":")
    if len(parts) != 5 or parts[0] != PREFIX or not parts[4].isdigit():
        return None
    return ExposureId(parts[1], parts[2], parts[3], int(parts[4]))
