"""A small synthetic run for the event-log tests and benchmark: data -> Workflow -> Feast repo.

No models: the online updater needs only the saved Workflow (item encoding), ``features.json``
(history length) and the Feast repository (online histories), all built by the real stage
functions (:func:`recstack.data.prepare.write_dataset`, :func:`recstack.workflows.fit_and_export`,
:func:`recstack.features.build_feature_repo`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recstack.paths import RunPaths

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")


def synthetic_dataset(name: str, n_users: int = 50, n_items: int = 40, n_rows: int = 1500, seed: int = 0):
    """A :class:`recstack.data.dataset.Dataset` with MovieLens-like side tables. Raw ids are
    ``user 1..n_users`` and ``item 1001..1000+n_items``; every user has >= 3 interactions."""
    from recstack.data.dataset import Dataset

    rng = np.random.default_rng(seed)
    users = np.concatenate([np.repeat(np.arange(1, n_users + 1), 3),
                            rng.integers(1, n_users + 1, max(n_rows - 3 * n_users, 0))])
    items = 1000 + rng.integers(1, n_items + 1, len(users))
    inter = pd.DataFrame({"user_id": users.astype(np.int64), "item_id": items.astype(np.int64),
                          "rating": rng.integers(1, 6, len(users)).astype(np.float32),
                          "timestamp": (880_000_000 + rng.integers(0, 10_000_000, len(users))).astype(np.int64)})
    user_table = pd.DataFrame({"user_id": np.arange(1, n_users + 1, dtype=np.int64),
                               "age": rng.integers(18, 70, n_users).astype(np.float32),
                               "gender": rng.choice(["M", "F"], n_users).astype(object),
                               "occupation": rng.choice(["student", "artist", "other"], n_users).astype(object)})
    item_table = pd.DataFrame({"item_id": np.arange(1001, 1001 + n_items, dtype=np.int64),
                               "title": [f"Film {i}" for i in range(n_items)],
                               "year": rng.integers(1950, 2000, n_items).astype(np.float32),
                               "genres": [list(rng.choice(GENRES, 1 + i % 3, replace=False)) for i in range(n_items)]})
    return Dataset(name=name, interactions=inter, users=user_table, items=item_table, source="synthetic")


def build_synthetic_run(home: Path | str, name: str = "synthetic", history_length: int = 20,
                        **sizes: int) -> RunPaths:
    """Write ``runs/<name>/{data,workflow,features,feature_repo}`` under ``home``; returns the paths."""
    from recstack.data.prepare import write_dataset
    from recstack.features import build_feature_repo
    from recstack.workflows import fit_and_export

    paths = RunPaths.for_dataset(name, home=Path(home))
    write_dataset(synthetic_dataset(name, **sizes), paths.data, progress=False)
    fit_and_export(paths.data, paths.workflow, paths.features, history_length=history_length, progress=False)
    build_feature_repo(paths.features, paths.feature_repo)
    return paths
