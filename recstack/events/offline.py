"""The offline writer: logged events -> date-partitioned parquet under ``runs/<ds>/events/``.

Layout: ``date=YYYY-MM-DD/part-<first>-<last>.parquet`` (the UTC date of the event
``timestamp``; ``first`` / ``last`` the smallest and largest log offset in the file, zero-padded to
12 digits so names sort in log order). Columns: ``offset`` int64, ``event_id`` str, ``user_id``
int64, ``item_id`` int64, ``type`` str, ``value`` float64 (NaN = none), ``timestamp`` float64
(unix seconds), ``received`` float64 (unix seconds).

Each file is written to a temporary name, fsynced and renamed (then the folder is fsynced) before
the writer commits its offset. A crash between a rename and the commit writes the same events
again on restart, possibly into a file with other bounds, so :func:`read_offline_events` drops
repeated offsets: every logged event is read back exactly once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recstack.errors import InputError
from recstack.events.consumer import Consumer
from recstack.events.log import EventLog
from recstack.events.schema import EventBatch

SCHEMA = pa.schema([("offset", pa.int64()), ("event_id", pa.string()), ("user_id", pa.int64()),
                    ("item_id", pa.int64()), ("type", pa.string()), ("value", pa.float64()),
                    ("timestamp", pa.float64()), ("received", pa.float64())])


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_partitions(batch: EventBatch, out_dir: Path | str) -> list[Path]:
    """Write ``batch`` as one parquet file per UTC date under ``out_dir``; returns the files."""
    out_dir = Path(out_dir)
    frame = batch.to_frame()
    days = (frame["timestamp"].to_numpy() // 86400).astype(np.int64)
    written = []
    for day in np.unique(days):
        part = frame[days == day]
        date = pd.Timestamp(int(day) * 86400, unit="s").strftime("%Y-%m-%d")
        folder = out_dir / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        first, last = int(part["offset"].iloc[0]), int(part["offset"].iloc[-1])
        path = folder / f"part-{first:012d}-{last:012d}.parquet"
        tmp = folder / f".{path.name}.tmp-{os.getpid()}"
        pq.write_table(pa.Table.from_pandas(part, schema=SCHEMA, preserve_index=False), tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
        written.append(path)
    return written


def read_offline_events(events_dir: Path | str, after_offset: int = 0) -> pd.DataFrame:
    """Every offline event with offset > ``after_offset``, each once, in offset order (the columns of
    the module docstring; an empty frame with those columns when there is none)."""
    files = sorted(Path(events_dir).glob("date=*/part-*.parquet"))
    if not files:
        return SCHEMA.empty_table().to_pandas()
    try:
        tables = [pq.read_table(f, schema=SCHEMA) for f in files]
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise InputError(f"{events_dir}: unreadable event parquet ({exc})") from None
    frame = pa.concat_tables(tables).to_pandas()
    frame = frame[frame["offset"] > int(after_offset)]
    frame = frame.drop_duplicates("offset").sort_values("offset", kind="mergesort")
    return frame.reset_index(drop=True)


class OfflineWriter(Consumer):
    """Consumer writing events to date-partitioned parquet under ``out_dir``.

    To avoid one tiny file per poll, a poll writes only when at least ``min_rows`` events wait or
    the oldest waiting one was received ``max_delay_s`` seconds ago (or when forced: ``--once``,
    shutdown). Counters: ``files``, ``rows``.
    """

    def __init__(self, log: EventLog, out_dir: Path | str, name: str = "offline-parquet",
                 min_rows: int = 1000, max_delay_s: float = 5.0, lock_dir: Path | str | None = None):
        super().__init__(log, name, lock_dir if lock_dir is not None else out_dir)
        self.out_dir = Path(out_dir)
        self.min_rows = int(min_rows)
        self.max_delay_s = float(max_delay_s)
        self.counters.update(files=0, rows=0)

    def ready(self, batch: EventBatch, force: bool) -> bool:
        return force or len(batch) >= self.min_rows or time.time() - float(batch.received[0]) >= self.max_delay_s

    def poll(self, limit: int = 5000, force: bool = False) -> int:
        return super().poll(max(limit, self.min_rows), force)

    def process(self, batch: EventBatch) -> None:
        files = write_partitions(batch, self.out_dir)
        self.counters["files"] += len(files)
        self.counters["rows"] += len(batch)

    def summary(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), **self.counters}
