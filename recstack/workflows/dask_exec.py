"""Dask execution: fit on the partitions of a Dask DataFrame (each partition's partial statistics
computed where it lives, combined on the client), transform lazily partition by partition,
stream parquet in and partitioned parquet out. Works on any ``dask.distributed`` cluster:
:func:`dask_client` connects to ``--scheduler tcp://...`` or starts a ``LocalCluster``
(``LocalCUDACluster`` with ``gpu=True`` where dask-cuda is installed).

    with dask_client(workers=2):
        ddf = dd.read_parquet("train/")                      # never all in memory
        wf.fit(ddf)
        transform_to_parquet(wf, "train/", "train_features/")

Row numbers (for TargetEncoding folds and stable tie order) are global: partition offsets come
from one count per partition (a one-column read). Ops that need every row of a key in one
partition (DifferenceLag, Groupby) get a shuffle on that key first; the output then carries
the global row number in ``__row__`` so it can be put back in input order.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa

from recstack.errors import InputError
from recstack.workflows.engines import ROW_ID, PartitionFn

if TYPE_CHECKING:
    from recstack.workflows.workflow import Workflow

# Dask would otherwise turn every object column into Arrow strings, lists ("genres") included.
dask.config.set({"dataframe.convert-string": False})

#: Rows per parquet row group written by :func:`transform_to_parquet` (what training readers
#: read at once; ~1M rows keeps a group of a few dozen columns around 10-50 MB).
ROW_GROUP_ROWS = 1_048_576


def partition_offsets(parts: list[Any]) -> np.ndarray:
    """Global row number of the first row of each delayed partition, int64 ``[n]``.

    Counted on the partitions of ``to_delayed()`` (not ``map_partitions(len)`` on a projection,
    which the optimiser may fuse into fewer partitions than the frame it is used with)."""
    lengths = dask.compute(*[dask.delayed(len)(p) for p in parts])
    return np.r_[0, np.cumsum(np.asarray(lengths, dtype=np.int64))[:-1]].astype(np.int64)


def _assign_rows(part: pd.DataFrame, start: int) -> pd.DataFrame:
    return part.assign(**{ROW_ID: np.arange(start, start + len(part), dtype=np.int64)})


def with_row_ids(ddf: dd.DataFrame) -> dd.DataFrame:
    """``ddf`` plus ``__row__``: the global row number (partition order, then row order)."""
    parts = ddf.to_delayed()
    offsets = partition_offsets(parts)
    meta = ddf._meta.assign(**{ROW_ID: np.zeros(0, dtype=np.int64)})
    return dd.from_delayed([dask.delayed(_assign_rows)(p, int(o)) for p, o in zip(parts, offsets)],
                           meta=meta, verify_meta=False)


def _call(fn: PartitionFn, part: pd.DataFrame, offset: int) -> Any:
    rows = part[ROW_ID].to_numpy(np.int64) if ROW_ID in part.columns else np.arange(offset, offset + len(part), dtype=np.int64)
    return fn(part, rows)


class DaskEngine:
    """A Dask DataFrame as workflow partitions (see :mod:`recstack.workflows.engines`)."""

    def __init__(self, ddf: dd.DataFrame) -> None:
        self.ddf = ddf

    def columns(self) -> list[str]:
        return [str(c) for c in self.ddf.columns]

    def sample(self, n: int = 10_000) -> pd.DataFrame:
        """The first ``n`` rows of the first partition, cut where it is read (not sent whole)."""
        first = self.ddf.get_partition(0)
        return first.map_partitions(pd.DataFrame.head, n, meta=first._meta).compute()

    def map(self, fn: PartitionFn, rows: bool = True) -> list[Any]:
        parts = self.ddf.to_delayed()
        offsets = partition_offsets(parts) if rows and ROW_ID not in self.ddf.columns else np.zeros(len(parts), np.int64)
        shared = once(fn, "partial-fit")
        tasks = [dask.delayed(_call)(shared, part, int(off)) for part, off in zip(parts, offsets)]
        return list(dask.compute(*tasks))

    def unique_by(self, key: str) -> "DaskEngine":
        unique = self.ddf.drop_duplicates(subset=[key], keep="first", split_out=1)
        return DaskEngine(unique)

    def by_key(self, key: str) -> "DaskEngine":
        """Shuffled on ``key`` (every row of a key in one partition), global row numbers kept."""
        return DaskEngine(with_row_ids(self.ddf).shuffle(on=key))


def once(obj: Any, name: str) -> Any:
    """``obj`` as one key of the graph that every partition task depends on. Passed as a plain
    argument, a fitted workflow (vocabularies, per-key statistics: megabytes at 1M users) is
    serialised into every task and each queued task holds its own copy on the worker: 50
    partitions of 50M rows paused 3 GiB workers on memory."""
    return dask.delayed(obj, name=f"{name}-{uuid.uuid4().hex}", traverse=False)


def _transform_part(part: pd.DataFrame, workflow: "Workflow", keep: list[str], training: bool) -> pd.DataFrame:
    rows = part[ROW_ID].to_numpy(np.int64) if ROW_ID in part.columns else np.arange(len(part), dtype=np.int64)
    return workflow.transform_partition(part, rows, keep=keep, training=training)


def transform_dask(workflow: "Workflow", ddf: dd.DataFrame, keep: Sequence[str] = (),
                   training: bool = False) -> dd.DataFrame:
    """Lazy transform of every partition. With row-number ops the output keeps ``__row__``
    (global input row number); with a group key, rows are shuffled by it first."""
    if not hasattr(ddf, "map_partitions"):
        raise InputError(f"workflow transform: expected a pandas or Dask DataFrame, got {type(ddf).__name__}")
    keep = list(keep)
    keys = workflow.group_keys
    if len(keys) > 1:
        raise InputError(f"workflow transform: ops group rows by different keys {keys}; split the workflow")
    if workflow.uses_row_ids:
        ddf = with_row_ids(ddf)
        keep = keep + [ROW_ID] if ROW_ID not in keep else keep
    if workflow.groups_rows:
        keep = [k for k in keep if k != ROW_ID]
    sample = ddf.get_partition(0).head(64, compute=True)  # before the shuffle: one partition's read
    if keys:
        ddf = ddf.shuffle(on=keys[0])
    meta = _transform_part(sample, workflow, keep, training).iloc[:0]
    return ddf.map_partitions(_transform_part, once(workflow, "workflow"), keep, training, meta=meta)


def transform_to_parquet(workflow: "Workflow", source: str | Path | dd.DataFrame, out_dir: str | Path,
                         row_group_rows: int = ROW_GROUP_ROWS, blocksize: str | int = "128MiB",
                         training: bool = False, keep: Sequence[str] = ()) -> Path:
    """Read parquet partitions (or take a Dask DataFrame), transform, write ``part.N.parquet``
    files with row groups of ``row_group_rows``; nothing is held in memory beyond partitions."""
    ddf = dd.read_parquet(str(source), blocksize=blocksize) if isinstance(source, (str, Path)) else source
    out = transform_dask(workflow, ddf, keep=keep, training=training)
    out.to_parquet(str(out_dir), write_index=False, row_group_size=int(row_group_rows),
                   schema=arrow_schema(workflow, out._meta, ddf))
    return Path(out_dir)


def arrow_schema(workflow: "Workflow", meta: pd.DataFrame, source: dd.DataFrame) -> pa.Schema:
    """Parquet schema of the transformed columns: list columns as list<element>, text as string."""
    fields = []
    schema = workflow.output_schema
    for name, dtype in meta.dtypes.items():
        col = schema[name] if name in schema else None
        if col is not None and col.is_list:
            element = pa.string() if col.dtype == "str" else pa.from_numpy_dtype(np.dtype(col.dtype))
            fields.append(pa.field(name, pa.list_(element)))
        elif isinstance(dtype, pd.ArrowDtype):
            fields.append(pa.field(name, dtype.pyarrow_dtype))
        elif dtype == object:
            fields.append(pa.field(name, pa.string()))
        else:
            fields.append(pa.field(name, pa.from_numpy_dtype(dtype)))
    return pa.schema(fields)


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, gpu: bool = False,
                threads_per_worker: int = 1, memory_limit: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: connected to ``scheduler`` (``tcp://host:port``), else on a
    LocalCluster of ``workers`` processes (LocalCUDACluster, one worker per GPU, when ``gpu``).
    ``memory_limit`` (e.g. ``"3GiB"``, per local worker; default: the machine's memory shared
    out) is where a worker spills to disk and pauses, so larger-than-memory data streams.
    A local cluster listens on loopback only (scheduler, workers, dashboard)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        with client:
            yield client
        return
    if gpu:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise InputError("--gpu with Dask needs dask-cuda (pip install -e \".[gpu]\")") from None
        cluster = LocalCUDACluster(host="127.0.0.1", dashboard_address="127.0.0.1:0")
    else:
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=threads_per_worker,
                               processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                               memory_limit=memory_limit or "auto")
    with cluster, Client(cluster) as client:
        yield client
