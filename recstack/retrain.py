"""`recstack retrain`: fold the logged events into the data folder and re-run every stage after `data`.

    events log -> (offline writer, drained) runs/<ds>/events/date=*/part-*.parquet
               -> recstack.events.fold_events: interactions + new users/items, re-split
               -> workflow -> features (Feast) -> train -> index -> evaluate -> export

The stages are those of `recstack run` (:data:`recstack.pipeline.STAGES`) minus `data`, which would
fetch the dataset again and drop the folded events. The rebuilt online store holds the histories of
the folded data only, so the online updater's committed offset is moved back to the last folded
offset: events logged after it are applied again to the new store (once per user, by offset).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from recstack.cliutil import add_dataset_argument, add_progress_argument
from recstack.errors import InputError
from recstack.ids import HISTORY_LENGTH
from recstack.io import write_json
from recstack.paths import RunPaths

ONLINE_CONSUMER = "online-store"


def retrain(paths: RunPaths, args: argparse.Namespace) -> dict[str, Any]:
    """Fold, then run the stages; returns ``{"fold": ..., "wall_s": {stage: seconds}}``.

    ``args`` carries the `recstack run` stage options (device, epochs, history_length, index_kind,
    top_k, progress) plus ``event_log`` (URL or None) and ``force`` (retrain with no new events).
    """
    from recstack.events import OfflineWriter, events_dir, fold_events, open_event_log, rewind_consumer
    from recstack.pipeline import STAGES, run_stages

    if not (paths.data / "dataset.json").is_file():
        raise InputError(f"--dataset: {paths.data} does not exist (run `recstack run` first)")
    times: dict[str, float] = {}
    with open_event_log(paths, getattr(args, "event_log", None)) as event_log:
        start = time.perf_counter()
        OfflineWriter(event_log, events_dir(paths)).drain()
        from recstack.features.live_items import live_items_path

        fold = fold_events(paths.data, events_dir(paths), progress=args.progress,
                           live_items=live_items_path(paths))
        times["fold events"] = round(time.perf_counter() - start, 2)
        print(f"[retrain] folded {fold['rows']} events (through log offset {fold['folded_through']}; "
              f"{fold['new_users']} new users, {fold['new_items']} new items) into {paths.data}", flush=True)
        if not fold["rows"] and not getattr(args, "force", False):
            print("[retrain] no new events since the last retrain: nothing to do (--force retrains anyway)")
            return {"fold": fold, "wall_s": times}
        times.update(run_stages(paths, args, [(name, stage) for name, stage in STAGES if name != "data"]))
        rewind_consumer(event_log, ONLINE_CONSUMER, fold["folded_through"], events_dir(paths))
    summary = {"dataset": paths.root.name, "fold": fold, "wall_s": times}
    write_json(paths.root / "retrain.json", summary)
    width = max(len(n) for n in times)
    print("\nretrain wall times:\n" + "\n".join(f"  {n:<{width}}  {s:7.1f}s" for n, s in times.items())
          + f"\n  {'total':<{width}}  {sum(times.values()):7.1f}s")
    return summary


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("retrain", help="fold logged events into the data and re-run the pipeline",
                                   description=__doc__.splitlines()[0])
    add_dataset_argument(parser)
    add_progress_argument(parser)
    parser.add_argument("--event-log", default=None, metavar="URL",
                        help="sqlite:///path or redis://host:port/db (default: $RECSTACK_EVENT_LOG, else "
                             "runs/<dataset>/events/log.db)")
    parser.add_argument("--force", action="store_true", help="re-run the stages even with no new events")
    parser.add_argument("--device", default="auto", help="training device: auto|cpu|cuda (default auto)")
    parser.add_argument("--epochs", type=int, default=None, help="override training epochs")
    parser.add_argument("--history-length", type=int, default=HISTORY_LENGTH, help="recent items per user")
    parser.add_argument("--index-kind", choices=("flat", "hnsw"), default="flat", help="FAISS index kind")
    parser.add_argument("--top-k", type=int, default=100, help="candidates retrieved per request")
    parser.set_defaults(handler=_retrain)


def _retrain(args: argparse.Namespace) -> int:
    retrain(RunPaths.for_dataset(args.dataset), args)
    return 0
