"""`recstack events push|consume|status`: the event log of a run from the command line.

* ``push``: append one event to the log (durable), then apply it (and anything before it) to the
  user's online history at once; the next request for that user sees it.
* ``consume``: run the online-store updater and the offline parquet writer until Ctrl-C / SIGTERM
  (``--once``: process what is logged and exit).
* ``status``: last offset and each consumer's committed offset and lag.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from typing import Any

from recstack.cliutil import add_dataset_argument
from recstack.errors import InputError
from recstack.paths import RunPaths


def _add_log_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--event-log", default=None, metavar="URL",
                        help="sqlite:///path or redis://host:port/db (default: $RECSTACK_EVENT_LOG, else "
                             "runs/<dataset>/events/log.db)")


def register(subparsers: argparse._SubParsersAction) -> None:
    from recstack.events.schema import EVENT_TYPES

    parser = subparsers.add_parser("events", help="the event log: push events, run its consumers",
                                   description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="events_command", metavar="ACTION")
    sub.required = True

    push = sub.add_parser("push", help="log one (user, item) event and apply it to the user's online history")
    add_dataset_argument(push)
    _add_log_argument(push)
    push.add_argument("--user", type=int, required=True, help="raw user id (a new id creates a new user)")
    push.add_argument("--item", type=int, required=True, help="raw item id (must be in the catalogue)")
    push.add_argument("--timestamp", type=float, default=None, help="unix seconds (default: now)")
    push.add_argument("--type", default="view", choices=EVENT_TYPES, help="event type (default: view)")
    push.add_argument("--value", type=float, default=None, help="e.g. the rating of a rating event")
    push.add_argument("--event-id", default=None, help="idempotency key (default: a new UUID)")
    push.set_defaults(handler=_push)

    consume = sub.add_parser("consume", help="apply logged events to the online store and write parquet")
    add_dataset_argument(consume)
    _add_log_argument(consume)
    consume.add_argument("--once", action="store_true", help="process what is logged, then exit")
    consume.add_argument("--poll-interval", type=float, default=0.2, help="seconds between idle polls (default 0.2)")
    consume.add_argument("--flush-rows", type=int, default=1000, help="parquet file at >= this many events")
    consume.add_argument("--flush-seconds", type=float, default=5.0,
                         help="... or when the oldest unwritten event is this old (default 5 s)")
    consume.set_defaults(handler=_consume)

    status = sub.add_parser("status", help="print the log's last offset and consumer lags as JSON")
    add_dataset_argument(status)
    _add_log_argument(status)
    status.set_defaults(handler=_status)


def _push(args: argparse.Namespace) -> int:
    from recstack.events.consumer import OnlineUpdater
    from recstack.events.log import open_event_log
    from recstack.ids import FIRST_CODE

    paths = RunPaths.for_dataset(args.dataset)
    if not (paths.feature_repo / "feature_store.yaml").is_file():
        raise InputError(f"--dataset: {paths.feature_repo} has no Feast repo (run the pipeline first)")
    event_log = open_event_log(paths, args.event_log)
    try:
        updater = OnlineUpdater.for_run(event_log, paths)
        encoded = int(updater.encoder([args.item])[0])
        if encoded < FIRST_CODE:
            raise InputError(f"--item: item {args.item} is not in the catalogue the models were trained on")
        event: dict[str, Any] = {"event_id": args.event_id or uuid.uuid4().hex, "user": args.user,
                                 "item": args.item, "type": args.type,
                                 "timestamp": args.timestamp if args.timestamp is not None else time.time()}
        if args.value is not None:
            event["value"] = args.value
        result = event_log.append([event])
        updater.catch_up(result.offsets[0])
        recent, seen, _ = updater.online.histories([args.user])
    finally:
        event_log.close()
    note = " (duplicate event id: already logged)" if result.duplicates else ""
    print(f"pushed: user {args.user} item {args.item} (encoded {encoded}); "
          f"history now {len(recent[0])} recent / {len(seen[0])} seen items; log offset {result.offsets[0]}{note}")
    return 0


def _consume(args: argparse.Namespace) -> int:
    from recstack.events.log import events_dir
    from recstack.events.offline import OfflineWriter
    from recstack.events.runner import EventService

    if args.poll_interval <= 0:
        raise InputError(f"--poll-interval: must be > 0, got {args.poll_interval}")
    if args.flush_rows < 1:
        raise InputError(f"--flush-rows: must be >= 1, got {args.flush_rows}")
    paths = RunPaths.for_dataset(args.dataset)
    service = EventService.for_run(paths, args.event_log, offline=False, poll_interval_s=args.poll_interval)
    service.consumers.append(OfflineWriter(service.log, events_dir(paths), min_rows=args.flush_rows,
                                           max_delay_s=args.flush_seconds))
    print(f"events consume: {service.log.url}, last offset {service.log.last_offset()}, "
          f"lag {service.lag()}", flush=True)
    try:
        if args.once:
            stats = service.run_once()
        else:
            stop = threading.Event()
            previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                service.run_forever(stop)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            stats = service.stats()
    finally:
        service.log.close()
    for name, c in stats["consumers"].items():
        counts = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("committed", "lag"))
        print(f"  {name}: committed {c['committed']}, lag {c['lag']}; {counts}")
    if stats["last_error"]:
        print(f"  last error: {stats['last_error']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from recstack.events.log import open_event_log

    with open_event_log(RunPaths.for_dataset(args.dataset), args.event_log) as event_log:
        last = event_log.last_offset()
        out = {"log": event_log.url, "last_offset": last,
               "consumers": {k: {"committed": v, "lag": last - v} for k, v in event_log.consumers().items()}}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0
