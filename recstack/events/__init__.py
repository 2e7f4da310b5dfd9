"""recstack.events: the append-only event log (the source of truth for interactions) and its consumers.

    from recstack.events import EventService, open_event_log
    service = EventService.for_run(RunPaths.for_dataset("ml-100k")).start()
    service.append([{"event_id": "a1", "user": 7, "item": 50, "type": "click", "timestamp": 1.7e9}])

* :mod:`~recstack.events.log`: :class:`EventLog` (append / read / commit / committed), the SQLite
  backend (WAL, ``synchronous=FULL``; the default) and :func:`open_event_log`;
  :mod:`~recstack.events.redis_log`: Redis Streams (durability per ``appendfsync``).
* :mod:`~recstack.events.consumer`: :class:`OnlineUpdater` (histories in the Feast online store,
  exactly once per user via ``applied_offset``); :mod:`~recstack.events.offline`:
  :class:`OfflineWriter` (date-partitioned parquet); :mod:`~recstack.events.runner`:
  :class:`EventService` (background thread, lag, counters).
* :mod:`~recstack.events.fold`: offline events -> the data folder's interactions (`recstack retrain`).

Layer: above ``features`` (imports features, workflows, data and the bottom modules only).
Names are imported lazily so `recstack --help` does not import pandas / pyarrow for them.
"""

from __future__ import annotations

from recstack.lazy import lazy_exports

_EXPORTS = {
    "EVENT_TYPES": "schema", "AppendResult": "schema", "EventBatch": "schema", "validate_events": "schema",
    "EventLog": "log", "SqliteEventLog": "log", "events_dir": "log", "open_event_log": "log",
    "RedisEventLog": "redis_log",
    "Consumer": "consumer", "consumer_lock": "consumer", "rewind_consumer": "consumer", "OnlineUpdater": "consumer", "WorkflowItemEncoder": "consumer",
    "OfflineWriter": "offline", "read_offline_events": "offline", "write_partitions": "offline",
    "EventService": "runner",
    "blank_rows": "fold", "events_to_interactions": "fold", "fold_events": "fold",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
