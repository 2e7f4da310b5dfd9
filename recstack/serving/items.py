"""Adding items after training: ``recstack items add`` and the gateway's ``POST /v1/items``.

An item is checked against the run before it is registered: its id must not be in the trained
catalogue (the Workflow encodes it to a real code) nor already added; its features must be item
columns of the run's ``items.parquet`` that the Workflow reads, with values of that column's type;
and the Workflow and item tower must encode and embed it. Then it goes into the live-item
registry (:mod:`recstack.features.live_items`), which the serving steps poll: the item is in
the index, the item features and the exploration pool of every running model within
``LIVE_POLL_S`` (plus one request).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recstack.cliutil import add_dataset_argument
from recstack.errors import InputError
from recstack.features.live_items import DuplicateItem, LiveItem, LiveItems, live_items_path
from recstack.ids import FIRST_CODE
from recstack.paths import RunPaths

MAX_ITEMS_PER_REQUEST = 1000


class ItemAdder:
    """Validates new items against one run and registers them (see the module docstring)."""

    def __init__(self, paths: RunPaths, live_items: Path | None = None):
        from recstack.ensembles.live import ItemTower, LiveItemFeed
        from recstack.workflows import Tags, Workflow

        items_file = paths.data / "items.parquet"
        if not items_file.is_file():
            raise InputError(f"--dataset: {items_file} is missing (run the pipeline first)")
        self.workflow = Workflow.load(paths.workflow)
        self.id_column = self.workflow.output_schema.select_by_tag(Tags.ITEM_ID).names[0]
        schema = pq.read_schema(items_file)
        self.feature_types: dict[str, pa.DataType] = {
            f.name: f.type for f in schema if f.name in self.workflow.input_columns and f.name != self.id_column}
        self.registry = LiveItems(live_items or live_items_path(paths))
        tower_dir = paths.models / "two_tower"
        # encodes and embeds exactly as the serving steps will: a row that passes here serves
        self._feed = LiveItemFeed(self.registry.path, paths.workflow, tower_dir)
        self._tower = ItemTower(tower_dir)

    def _normalise(self, item: Mapping[str, Any], n: int) -> dict[str, Any]:
        where = f"items[{n}]"
        features = item.get("features") or {}
        if not isinstance(features, Mapping):
            raise InputError(f"{where}.features: expected an object of column -> value")
        unknown = [k for k in features if k not in self.feature_types]
        if unknown:
            raise InputError(f"{where}.features.{unknown[0]}: not an item feature of this run "
                             f"(known: {', '.join(self.feature_types) or 'none'})")
        row = {}
        for name, kind in self.feature_types.items():
            value = features.get(name)
            try:
                pa.array([value], type=kind)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                raise InputError(f"{where}.features.{name}: {value!r} is not a value of type {kind}") from None
            if isinstance(value, float) and not np.isfinite(value):
                raise InputError(f"{where}.features.{name}: {value!r} is not finite")
            row[name] = value
        return {"item_id": item.get("item_id"), "title": item.get("title"), "features": row}

    def add(self, items: Sequence[Mapping[str, Any]]) -> list[LiveItem]:
        """Check and register ``items`` (``{"item_id", "title"?, "features"?}``), all or none."""
        if not 1 <= len(items) <= MAX_ITEMS_PER_REQUEST:
            raise InputError(f"items: expected 1 to {MAX_ITEMS_PER_REQUEST} items, got {len(items)}")
        rows = [self._normalise(item, n) for n, item in enumerate(items)]
        ids = [r["item_id"] for r in rows]
        if any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            bad = next(n for n, i in enumerate(ids) if isinstance(i, bool) or not isinstance(i, int))
            raise InputError(f"items[{bad}].item_id: {ids[bad]!r} is not an integer")
        codes = self.workflow.transform(pd.DataFrame({self.id_column: np.asarray(ids, dtype=np.int64)}))
        trained = codes[self.id_column].to_numpy(np.int64) >= FIRST_CODE
        if trained.any():
            raise DuplicateItem(f"item_id: {ids[int(np.argmax(trained))]} is in the trained catalogue already")
        probe = [LiveItem(seq=n + 1, item_id=r["item_id"], title=r["title"], features=r["features"], added_at=0.0)
                 for n, r in enumerate(rows)]
        try:
            batch = self._feed.encode(probe)
            embeddings = self._tower.embed(batch.blocks) if batch is not None else None
        except InputError as exc:
            raise InputError(f"items: cannot be encoded: {exc}") from None
        if embeddings is None or not np.isfinite(embeddings).all():
            raise InputError("items: the item tower gave no finite embedding for these features")
        return self.registry.add(rows)

    def close(self) -> None:
        self.registry.close()


def _read_items(path: str) -> list[dict[str, Any]]:
    """A JSON list, or JSON lines, of ``{"item_id", "title", "features"}`` ('-' = stdin)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    text = text.strip()
    try:
        data = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()
                                                               if line.strip()]
    except json.JSONDecodeError as exc:
        raise InputError(f"--file: {path}: not JSON or JSON lines ({exc})") from None
    if not isinstance(data, list):
        raise InputError(f"--file: {path}: expected a list of items")
    return data


def register(subparsers: argparse._SubParsersAction) -> None:
    items = subparsers.add_parser("items", help="items added after training (live, no retraining)")
    verbs = items.add_subparsers(dest="items_command", required=True)
    add = verbs.add_parser("add", help="add items: embedded by the item tower, served within a second",
                           description="Register new items with their side features. A running server "
                           "embeds them with its item tower and adds them to its index and item features; "
                           "a share of each list explores them (see `recstack export --exploration-share`).")
    add_dataset_argument(add)
    add.add_argument("--file", help="JSON list or JSON lines of {item_id, title, features} ('-' = stdin)")
    add.add_argument("--item-id", type=int, help="one item's raw id (instead of --file)")
    add.add_argument("--title", help="with --item-id: its title")
    add.add_argument("--feature", action="append", default=[], metavar="NAME=JSON",
                     help='with --item-id: a side feature, e.g. --feature \'genres=["Comedy"]\' --feature year=2026')
    add.set_defaults(handler=_add_command)
    listing = verbs.add_parser("list", help="items added after training")
    add_dataset_argument(listing)
    listing.set_defaults(handler=_list_command)


def _feature(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise InputError(f"--feature: expected NAME=JSON, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value  # a bare word is a string


def _add_command(args: argparse.Namespace) -> int:
    paths = RunPaths.for_dataset(args.dataset)
    if (args.file is None) == (args.item_id is None):
        raise InputError("give --file or --item-id (one of them)")
    items = (_read_items(args.file) if args.file is not None else
             [{"item_id": args.item_id, "title": args.title, "features": dict(_feature(f) for f in args.feature)}])
    adder = ItemAdder(paths)
    try:
        added = adder.add(items)
    finally:
        adder.close()
    for item in added:
        print(f"added item {item.item_id} (#{item.seq}) {item.title or ''}".rstrip())
    return 0


def _list_command(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    registry = LiveItems(live_items_path(RunPaths.for_dataset(args.dataset)))
    rows = registry.since(0)
    registry.close()
    print(f"{len(rows)} item(s) added after training")
    for r in rows:
        when = datetime.fromtimestamp(r.added_at, tz=timezone.utc).isoformat(timespec="seconds")
        print(f"  #{r.seq} item {r.item_id} {when} {r.title or ''} {json.dumps(r.features)}")
    return 0
