"""A synthetic interactions generator in the section-1 shape, streamed to parquet chunk by
chunk, so 100M+ rows never sit in memory (`recstack data synth --rows N`).

What it models:

* item popularity and user activity follow power laws (``p(rank r) ~ (r + 1) ** -alpha``),
  ranks mapped to ids by a fixed random permutation (popular items are not the low ids);
* timestamps: a uniform day over ``days`` days, an hour from a daily cycle (quiet nights, an
  evening peak), a uniform second within the hour;
* ratings 1..5 from user and item biases plus noise (float32);
* users: ``age`` float32 (5% NaN), ``gender``, ``occupation``, ``zip_code``; items: ``title``,
  ``year`` float32 (3% NaN), ``release_date`` text, ``genres`` (1-3 of 18, list<str>).

Each chunk has its own seed (``seed``, chunk number), so the file is the same for the same
arguments whatever the chunk size used to read it. Example::

    >>> summary = write_synthetic(Path("runs/synth/data"), rows=1_000_000, seed=0)
    >>> pd.read_parquet("runs/synth/data/interactions.parquet").shape
    (1000000, 4)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from recstack.errors import InputError
from recstack.io import atomic_dir, write_json

GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
OCCUPATIONS = [f"occupation_{i}" for i in range(21)]
#: Relative interaction volume per hour of day (UTC): quiet nights, an evening peak.
HOURLY = np.array([3, 2, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6, 6, 5, 5, 6, 7, 9, 11, 12, 11, 8, 5], dtype=np.float64)
START = 1_577_836_800  # 2020-01-01 UTC
SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float32()),
                    ("timestamp", pa.int64())])


class PowerLaw:
    """Sample ids ``[0, n)`` with ``p(rank) ~ (rank + 1) ** -alpha`` through a fixed permutation."""

    def __init__(self, n: int, alpha: float, rng: np.random.Generator) -> None:
        weights = (np.arange(n, dtype=np.float64) + 1.0) ** -alpha
        self.cdf = np.cumsum(weights / weights.sum())
        self.cdf[-1] = 1.0
        self.ids = rng.permutation(n).astype(np.int64)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.ids[np.searchsorted(self.cdf, rng.random(size), side="right")]


def default_sizes(rows: int) -> tuple[int, int]:
    """(users, items) for ``rows`` interactions: about 50 per user and 200 per item."""
    return max(rows // 50, 100), max(rows // 200, 50)


def users_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    age = rng.integers(15, 75, n).astype(np.float32)
    age[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame({
        "user_id": np.arange(1, n + 1, dtype=np.int64),
        "age": age,
        "gender": rng.choice(np.array(["M", "F"], dtype=object), n, p=[0.6, 0.4]),
        "occupation": rng.choice(np.array(OCCUPATIONS, dtype=object), n),
        "zip_code": pd.Series(rng.integers(0, 100_000, n)).map("{:05d}".format).to_numpy(dtype=object),
    })


def items_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    year = rng.integers(1930, 2020, n).astype(np.float32)
    release = pd.to_datetime(year.astype(np.int64).astype(str), format="%Y") + pd.to_timedelta(
        rng.integers(0, 365, n), unit="D")
    release_text = release.strftime("%d-%b-%Y").to_numpy(dtype=object)
    year[rng.random(n) < 0.03] = np.nan
    genres = np.array(GENRES, dtype=object)
    picks = [sorted(rng.choice(len(GENRES), k, replace=False).tolist()) for k in rng.integers(1, 4, n)]
    return pd.DataFrame({
        "item_id": np.arange(1, n + 1, dtype=np.int64),
        "title": [f"Item {i}" for i in range(1, n + 1)],
        "year": year,
        "release_date": release_text,
        "genres": [genres[p].tolist() for p in picks],
    })


def chunk(rows: int, number: int, seed: int, users: PowerLaw, items: PowerLaw, user_bias: np.ndarray,
          item_bias: np.ndarray, days: int) -> pa.Table:
    """One chunk of ``rows`` interactions (its own seed: ``(seed, number)``)."""
    rng = np.random.default_rng([seed, number])
    u = users.sample(rng, rows)
    i = items.sample(rng, rows)
    hour = np.searchsorted(np.cumsum(HOURLY / HOURLY.sum()), rng.random(rows), side="right")
    ts = START + rng.integers(0, days, rows) * 86_400 + hour * 3600 + rng.integers(0, 3600, rows)
    rating = np.clip(np.rint(3.5 + user_bias[u] + item_bias[i] + rng.normal(0, 0.9, rows)), 1, 5)
    return pa.Table.from_arrays([pa.array(u + 1), pa.array(i + 1), pa.array(rating.astype(np.float32)),
                                 pa.array(ts.astype(np.int64))], schema=SCHEMA)


def write_synthetic(out_dir: Path, rows: int, users: int | None = None, items: int | None = None,
                    seed: int = 0, days: int = 365, chunk_rows: int = 1_000_000, user_alpha: float = 0.8,
                    item_alpha: float = 1.0, progress: bool = True) -> dict[str, Any]:
    """Write ``interactions.parquet`` (row groups of ``chunk_rows``), ``users.parquet``,
    ``items.parquet`` and ``dataset.json`` into ``out_dir`` (replaced atomically)."""
    if rows < 1 or chunk_rows < 1 or days < 1:
        raise InputError(f"synth: --rows, --chunk-rows and --days must be >= 1 (got {rows}, {chunk_rows}, {days})")
    for name, alpha in (("user-alpha", user_alpha), ("item-alpha", item_alpha)):
        if not np.isfinite(alpha) or alpha < 0:
            raise InputError(f"synth: --{name} must be a finite number >= 0, got {alpha}")
    du, di = default_sizes(rows)
    n_users, n_items = users or du, items or di
    if n_users < 1 or n_items < 1:
        raise InputError(f"synth: --users and --items must be >= 1 (got {n_users}, {n_items})")
    start = time.perf_counter()
    rng = np.random.default_rng([seed, 2**31])
    user_law, item_law = PowerLaw(n_users, user_alpha, rng), PowerLaw(n_items, item_alpha, rng)
    user_bias, item_bias = rng.normal(0, 0.5, n_users), rng.normal(0, 0.6, n_items)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        bar = tqdm(total=rows, desc="synth interactions", unit="row", unit_scale=True, disable=not progress)
        with pq.ParquetWriter(tmp / "interactions.parquet", SCHEMA) as writer:
            for number, lo in enumerate(range(0, rows, chunk_rows)):
                n = min(chunk_rows, rows - lo)
                writer.write_table(chunk(n, number, seed, user_law, item_law, user_bias, item_bias, days),
                                   row_group_size=n)
                bar.update(n)
        bar.close()
        users_table(n_users, rng).to_parquet(tmp / "users.parquet", index=False)
        items_table(n_items, rng).to_parquet(tmp / "items.parquet", index=False)
        meta = {"name": out_dir.parent.name if out_dir.name == "data" else out_dir.name, "source": "synthetic",
                "seed": seed, "counts": {"rows": rows, "users": n_users, "items": n_items},
                "params": {"days": days, "chunk_rows": chunk_rows, "user_alpha": user_alpha,
                           "item_alpha": item_alpha}}
        write_json(tmp / "synth.json", meta)
    return {**meta, "out_dir": str(out_dir.resolve()), "wall_s": time.perf_counter() - start}


def split_synthetic(data_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Add the time split (train/valid/test + dataset.json) to a synthetic folder that fits in
    memory, so `recstack run --dataset <name>` can use it."""
    from recstack.data.dataset import Dataset
    from recstack.data.prepare import write_dataset

    frames = {n: pd.read_parquet(data_dir / f"{n}.parquet") for n in ("interactions", "users", "items")}
    dataset = Dataset(name=data_dir.parent.name, interactions=frames["interactions"], users=frames["users"],
                      items=frames["items"], source="synthetic")
    return write_dataset(dataset, data_dir, progress=progress)
