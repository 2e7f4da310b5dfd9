"""Writing a dataset folder (``runs/<ds>/data/``, section 1 of docs/architecture.md).

Files written (atomically, through :func:`recstack.io.atomic_dir`, so a failed run leaves the
previous folder intact): ``interactions.parquet``, ``users.parquet``, ``items.parquet``,
``train.parquet``, ``valid.parquet``, ``test.parquet`` and ``dataset.json`` (name, source,
sha256 of every source file, row/user/item counts and split sizes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from recstack.data.dataset import Dataset
from recstack.data.generic import load_interactions_file
from recstack.data.movielens import load_movielens
from recstack.data.registry_ratings import REGISTRY_RATINGS, load_registry_ratings
from recstack.data.sources import KNOWN_DATASETS, SourceName, fetch_movielens
from recstack.data.split import MIN_INTERACTIONS, split_by_time
from recstack.errors import InputError
from recstack.io import atomic_dir, write_json

DATASET_JSON = "dataset.json"
PREPARABLE_DATASETS: tuple[str, ...] = (*KNOWN_DATASETS, *REGISTRY_RATINGS)
"""Every dataset `recstack data prepare` / `recstack run` fetch by name (MovieLens, then registry ratings)."""
SPLIT_PROTOCOL = (
    "implicit feedback; first of repeated (user, item) pairs kept (by time, ties by file order); "
    f"users with >= {MIN_INTERACTIONS} interactions; per user sorted by timestamp (ties by file "
    "order): last = test, second-last = valid, rest = train"
)


def write_dataset(dataset: Dataset, out_dir: Path, *, progress: bool = True,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Split ``dataset`` by time and write the data folder ``out_dir``; return dataset.json's content."""
    out_dir = Path(out_dir)
    train, valid, test = split_by_time(dataset.interactions)
    counts = dataset.counts()
    counts.update({"train": len(train), "valid": len(valid), "test": len(test),
                   "split_users": int(test["user_id"].nunique())})
    meta: dict[str, Any] = {
        "name": dataset.name,
        "source": dataset.source,
        **(extra or {}),
        "files": dict(dataset.files),
        "counts": {k: int(v) for k, v in counts.items()},
        "split": {"min_interactions": MIN_INTERACTIONS, "protocol": SPLIT_PROTOCOL},
    }
    frames = {"interactions": dataset.interactions, "users": dataset.users, "items": dataset.items,
              "train": train, "valid": valid, "test": test}
    with atomic_dir(out_dir) as tmp:
        for name, frame in tqdm(frames.items(), desc=f"write {out_dir.name}", unit="file",
                                disable=not progress, leave=False):
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(tmp / DATASET_JSON, meta)
    return meta


def prepare_dataset(name: str, out_dir: Path, *, source: SourceName = "auto",
                    progress: bool = True) -> dict[str, Any]:
    """Fetch + verify MovieLens ``name`` ("ml-100k" or "ml-1m") or a registry ratings file
    (:data:`recstack.data.registry_ratings.REGISTRY_RATINGS`, e.g. "ciao") and write its data folder.

    Returns dataset.json's content plus ``out_dir`` (str) and ``wall_s`` (seconds).
    Unknown names raise InputError listing the known ones.
    """
    start = time.perf_counter()
    if name in REGISTRY_RATINGS:
        if source == "grouplens":
            raise InputError(f"source: {name} has no GroupLens source; use auto or registry")
        dataset, cached = load_registry_ratings(name, progress=progress)
        extra = {"archive": cached.archive, "about": REGISTRY_RATINGS[name].about}
    else:
        if name not in KNOWN_DATASETS:
            known = ", ".join(f'"{n}"' for n in PREPARABLE_DATASETS)
            raise InputError(f"dataset: unknown dataset {name!r}; known datasets: {known}")
        cached = fetch_movielens(name, source=source, progress=progress)
        dataset = load_movielens(name, source=cached.kind, progress=progress)
        extra = {"archive": cached.archive}
    meta = write_dataset(dataset, out_dir, progress=progress, extra=extra)
    return {**meta, "out_dir": str(Path(out_dir).resolve()), "wall_s": time.perf_counter() - start}


def prepare_from_file(name: str, out_dir: Path, interactions_path: Path | str, user_col: str,
                      item_col: str, timestamp_col: str, rating_col: str | None = None, *,
                      progress: bool = True, **options: Any) -> dict[str, Any]:
    """Load a generic interactions file (see :func:`load_interactions_file`, whose keyword
    ``options`` pass through: users_path, user_key_col, items_path, item_key_col, sep, title_col,
    year_col, genres_col, genres_sep, header, columns, users_columns, items_columns) and write its
    data folder like :func:`prepare_dataset`."""
    start = time.perf_counter()
    dataset = load_interactions_file(interactions_path, user_col, item_col, timestamp_col, rating_col,
                                     name=name, **options)
    columns = {"user": user_col, "item": item_col, "timestamp": timestamp_col, "rating": rating_col}
    meta = write_dataset(dataset, out_dir, progress=progress, extra={"columns": columns})
    return {**meta, "out_dir": str(Path(out_dir).resolve()), "wall_s": time.perf_counter() - start}
