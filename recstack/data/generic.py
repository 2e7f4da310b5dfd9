"""Loading any interactions file (CSV/TSV/parquet) with a column mapping into the contract.

Ids: integer ids (ints, or floats with integral values) are kept as they are. Otherwise ids are
treated as strings and get int64 ids 1, 2, ... in order of first appearance in the
interactions file (then side-table-only keys, in side-table order); the original string is
kept as ``original_id`` in ``users``/``items``.

Timestamps: numbers are unix seconds (fractions are floored); strings are parsed as dates
(no time zone means UTC); parquet datetime columns are converted to unix seconds.

Header: a CSV/TSV's first line names its columns, unless ``header=False`` (columns are then
named by position: ``"0"``, ``"1"``, ...) or ``columns`` gives the names (implies no header
row; their count must match the file's fields).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.data.dataset import Dataset, check_contract, normalise_interactions
from recstack.errors import InputError
from recstack.io import sha256_file

PARQUET_SUFFIXES = (".parquet", ".pq")
MAX_UNIX_SECONDS = 10**11  # year ~5138: larger numbers are not seconds
MAX_LISTED_COLUMNS = 30  # an error lists at most this many of a file's columns: it stays one short line


# --------------------------------------------------------------------------- reading


def parse_column_names(names: Sequence[str] | str, option: str = "--columns") -> list[str]:
    """Column names from a comma-separated string (or a sequence); InputError on an empty or
    repeated name, naming ``option``."""
    text = names if isinstance(names, str) else ",".join(map(str, names))
    parsed = [str(n).strip() for n in (names.split(",") if isinstance(names, str) else names)]
    if not parsed or any(not n for n in parsed):
        raise InputError(f"{option}: empty column name in {text!r} (give comma-separated names)")
    seen: set[str] = set()
    for name in parsed:
        if name in seen:
            raise InputError(f"{option}: column name {name!r} is given twice in {text!r}")
        seen.add(name)
    return parsed


def read_table(path: Path | str, sep: str | None = None, *, header: bool = True,
               columns: Sequence[str] | str | None = None, columns_option: str = "--columns",
               header_option: str = "--no-header") -> pd.DataFrame:
    """Read a CSV/TSV (optionally compressed) or parquet file; InputError on any problem.

    ``sep`` defaults to a tab for ``.tsv`` files and a comma otherwise; a separator of more
    than one character (``::``) is taken literally, except ``\\s+`` (any whitespace).
    ``header=False``: the CSV has no header row, columns are named ``"0"``, ``"1"``, ...
    ``columns``: names for the columns of a CSV without a header row (implies ``header=False``);
    a count that differs from the file's fields is an InputError naming ``columns_option``.
    Parquet files always name their columns, so both are an InputError for them.
    """
    path = Path(path)
    names = None if columns is None else parse_column_names(columns, columns_option)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    suffixes = [s.lower() for s in path.suffixes]
    headerless = names is not None or not header
    if suffixes and suffixes[-1] in PARQUET_SUFFIXES:
        if headerless:
            option = columns_option if names is not None else header_option
            raise InputError(f"{option}: {path} is a parquet file, whose columns always have names; "
                             "drop the option and use those names")
        frame = _read_parquet(path)
    else:
        if sep is None:
            sep = "\t" if ".tsv" in suffixes else ","
        frame = _read_csv(path, sep, headerless)
        if headerless:
            frame.columns = [str(i) for i in range(frame.shape[1])]
        else:
            frame.attrs["first_line_is_header"] = True
        if names is not None:
            if len(names) != frame.shape[1]:
                raise InputError(f"{columns_option}: {len(names)} names given ({','.join(names)}) but "
                                 f"{path} has {frame.shape[1]} fields per row")
            frame.columns = names
    if len(frame) == 0:
        raise InputError(f"{path}: file has no data rows")
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"{path}: not a readable parquet file: {_one_line(exc)}") from None


def _read_csv(path: Path, sep: str, headerless: bool = False) -> pd.DataFrame:
    options: dict[str, Any] = {"header": None} if headerless else {}
    if len(sep) > 1 and sep != r"\s+":  # pandas would take it as a regex and need its python engine
        options.update(sep=re.escape(sep), engine="python")
    else:
        options.update(sep=sep, low_memory=False)
    try:
        return pd.read_csv(path, **options)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty") from None
    except pd.errors.ParserError as exc:
        raise InputError(f"{path}: malformed CSV: {_one_line(exc)}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    except (OSError, EOFError, ValueError) as exc:  # e.g. a corrupt .gz
        raise InputError(f"{path}: cannot read as CSV: {_one_line(exc)}") from None


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a gigantic field keeps an error one short line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return text.removeprefix("Error tokenizing data. ") or type(exc).__name__


def require_columns(frame: pd.DataFrame, path: Path, columns: dict[str, str | None],
                    headerless_options: str = "--no-header (columns 0, 1, ...) or --columns NAMES") -> None:
    """InputError naming the first missing column (and its option) and listing available ones.

    If the file's first line was read as a header but looks like data (every name a number),
    the message suggests ``headerless_options``.
    """
    for option, column in columns.items():
        if column is not None and column not in frame.columns:
            names = list(map(str, frame.columns))
            available = ", ".join(names[:MAX_LISTED_COLUMNS]) + (
                f", ... ({len(names)} columns in all)" if len(names) > MAX_LISTED_COLUMNS else "")
            hint = ""
            if frame.attrs.get("first_line_is_header") and _looks_like_data(frame.columns):
                hint = ("; its first line looks like data: for a file without a header row use "
                        f"{headerless_options}")
            raise InputError(f"{path}: no column {column!r} (given as {option}); "
                             f"available columns: {available}{hint}")


def _looks_like_data(names: pd.Index) -> bool:
    return bool(pd.to_numeric(pd.Series(list(map(str, names))), errors="coerce").notna().all())


# --------------------------------------------------------------------------- ids


def _is_integer_like(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_integer_dtype(values):
        return True
    if pd.api.types.is_float_dtype(values):
        array = values.to_numpy()
        return bool(np.all(np.isfinite(array)) and np.all(array == np.floor(array)))
    return False


def _as_strings(values: pd.Series) -> pd.Series:
    if _is_integer_like(values):
        return values.astype(np.int64).astype(str)
    return values.astype(str)


def check_scalars(values: pd.Series, path: Path, column: str) -> None:
    """InputError when an id / timestamp column holds bytes, lists or objects (a parquet file can)."""
    if values.dtype != object:
        return
    kinds = values.map(lambda v: isinstance(v, (bytes, bytearray, list, tuple, dict, np.ndarray))).to_numpy()
    if kinds.any():
        row = int(np.flatnonzero(kinds)[0])
        raise InputError(f"{path}: column {column!r} holds {type(values.iloc[row]).__name__} values, expected "
                         f"numbers or text (data row {row + 1})")


def _check_no_missing(values: pd.Series, path: Path, column: str) -> None:
    missing = values.isna().to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0]) + 1
        raise InputError(f"{path}: column {column!r} has {int(missing.sum())} empty value(s), first in data row {first}")


class IdMapping:
    """Raw ids of one entity (user or item) -> int64 ids, shared by interactions and side table."""

    def __init__(self, ids: pd.Series, side_keys: pd.Series | None) -> None:
        self.numeric = _is_integer_like(ids) and (side_keys is None or _is_integer_like(side_keys))
        if self.numeric:
            self.lookup: pd.Series | None = None
            return
        raw = _as_strings(ids)
        if side_keys is not None:
            raw = pd.concat([raw, _as_strings(side_keys)], ignore_index=True)
        uniques = pd.unique(raw.to_numpy())
        self.lookup = pd.Series(np.arange(1, len(uniques) + 1, dtype=np.int64), index=uniques)

    def encode(self, values: pd.Series) -> np.ndarray:
        """int64 ids of ``values`` (raw ids of this entity)."""
        if self.numeric:
            return values.to_numpy().astype(np.int64)
        return _as_strings(values).map(self.lookup).to_numpy(dtype=np.int64)

    def originals(self, ids: np.ndarray) -> np.ndarray:
        """The original string of each int64 id (string mode only)."""
        assert self.lookup is not None
        reverse = pd.Series(self.lookup.index.to_numpy(dtype=object), index=self.lookup.to_numpy())
        return reverse.loc[ids].to_numpy(dtype=object)


# --------------------------------------------------------------------------- values


def parse_timestamps(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """int64 unix seconds from numbers (seconds), datetimes or date strings; InputError otherwise."""
    _check_no_missing(values, path, column)
    if pd.api.types.is_datetime64_any_dtype(values):
        return _datetimes_to_seconds(values)
    if pd.api.types.is_bool_dtype(values):
        raise InputError(f"{path}: column {column!r} holds booleans, not timestamps")
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.to_numpy(dtype=np.float64)  # checked before the cast: a cast past int64 wraps
        if not np.isfinite(numbers).all():
            row = int(np.flatnonzero(~np.isfinite(numbers))[0])
            raise InputError(f"{path}: column {column!r} has {numbers[row]} (data row {row + 1}), not unix seconds")
        if len(numbers) and numbers.max() > MAX_UNIX_SECONDS:
            raise InputError(
                f"{path}: column {column!r} holds numbers up to {numbers.max():.0f}, too large for unix "
                "seconds (milliseconds?); convert the timestamps to seconds"
            )
        if pd.api.types.is_float_dtype(values):
            return np.floor(numbers).astype(np.int64)
        return values.to_numpy().astype(np.int64)
    check_scalars(values, path, column)
    as_numbers = pd.to_numeric(values, errors="coerce")
    if as_numbers.notna().all():
        return parse_timestamps(as_numbers, path, column)
    if as_numbers.notna().any():
        first_number, first_text = int(np.flatnonzero(as_numbers.notna())[0]), int(np.flatnonzero(as_numbers.isna())[0])
        raise InputError(f"{path}: column {column!r} mixes unix seconds ({shown(values.iloc[first_number])}, data row "
                         f"{first_number + 1}) and text ({shown(values.iloc[first_text])}, data row "
                         f"{first_text + 1}); give all timestamps in one form")
    text = values.astype(str)
    try:
        parsed = pd.to_datetime(text, utc=True, errors="coerce")
    except (ValueError, TypeError):
        parsed = pd.Series(pd.NaT, index=text.index)
    if parsed.isna().any():
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path}: column {column!r} has a value that is neither unix seconds nor a date: "
            f"{shown(text.iloc[row])} (data row {row + 1})"
        )
    return _datetimes_to_seconds(parsed)


def _datetimes_to_seconds(values: pd.Series) -> np.ndarray:
    stamps = pd.to_datetime(values, utc=True)
    delta = stamps - pd.Timestamp(0, tz="UTC")
    return (delta // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def parse_ratings(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """float32 ratings; empty cells become NaN, anything non-numeric is an InputError."""
    if pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.float32)
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float32)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = (numbers.isna() & values.notna() & (values.astype(str).str.strip() != "")).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: column {column!r} has a non-numeric rating {shown(values.iloc[row])} (data row {row + 1})")
    return numbers.to_numpy(dtype=np.float32)


def _genre_list(value: Any, sep: str) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if v is not None and str(v) != ""]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [g.strip() for g in str(value).split(sep) if g.strip()]


# --------------------------------------------------------------------------- side tables


def _side_table(
    path: Path | None,
    key_col: str | None,
    frame: pd.DataFrame | None,
    id_column: str,
    mapping: IdMapping,
    interaction_ids: np.ndarray,
) -> pd.DataFrame:
    """``id_column`` int64 (+ ``original_id``) + the file's other columns; one row per id.

    Ids seen in the interactions but absent from the file get a row of nulls.
    """
    if frame is None:
        ids = pd.unique(interaction_ids)
        table = pd.DataFrame({id_column: ids.astype(np.int64)})
    else:
        assert path is not None and key_col is not None
        keys = frame[key_col]
        _check_no_missing(keys, path, key_col)
        check_scalars(keys, path, key_col)
        ids = mapping.encode(keys)
        duplicated = pd.Series(ids).duplicated().to_numpy()
        if duplicated.any():
            row = int(np.flatnonzero(duplicated)[0])
            raise InputError(f"{path}: key column {key_col!r} repeats {shown(keys.iloc[row])} (data row {row + 1})")
        others = frame.drop(columns=[key_col])
        if id_column in others.columns:
            raise InputError(f"{path}: has a column {id_column!r} besides the key column {key_col!r}; rename one")
        table = pd.concat([pd.DataFrame({id_column: ids}), others.reset_index(drop=True)], axis=1)
        extra = np.setdiff1d(pd.unique(interaction_ids), ids)
        if len(extra):
            table = pd.concat([table, pd.DataFrame({id_column: extra.astype(np.int64)})], ignore_index=True)
    if not mapping.numeric:
        table.insert(1, "original_id", mapping.originals(table[id_column].to_numpy()))
    table[id_column] = table[id_column].astype(np.int64)
    return table


def _complete_items(items: pd.DataFrame, title_col: str | None, year_col: str | None,
                    genres_col: str | None, genres_sep: str) -> pd.DataFrame:
    """Give ``items`` the contract columns ``title`` (str), ``year`` (float32), ``genres`` (list)."""
    items = items.copy()
    fallback = items["original_id"] if "original_id" in items else items["item_id"].astype(str)
    title_src = title_col or ("title" if "title" in items else None)
    title = items[title_src] if title_src else pd.Series(None, index=items.index, dtype=object)
    items["title"] = title.where(title.notna(), fallback).astype(str).to_numpy(dtype=object)
    year_src = year_col or ("year" if "year" in items else None)
    items["year"] = (pd.to_numeric(items[year_src], errors="coerce").to_numpy(dtype=np.float32)
                     if year_src else np.full(len(items), np.nan, dtype=np.float32))
    genres_src = genres_col or ("genres" if "genres" in items else None)
    items["genres"] = ([_genre_list(v, genres_sep) for v in items[genres_src]]
                       if genres_src else [[] for _ in range(len(items))])
    front = ["item_id", *(["original_id"] if "original_id" in items else []), "title", "year", "genres"]
    return items[front + [c for c in items.columns if c not in front]]


# --------------------------------------------------------------------------- entry point


def load_interactions_file(
    path: Path | str,
    user_col: str,
    item_col: str,
    timestamp_col: str,
    rating_col: str | None = None,
    users_path: Path | str | None = None,
    user_key_col: str | None = None,
    items_path: Path | str | None = None,
    item_key_col: str | None = None,
    *,
    name: str = "custom",
    sep: str | None = None,
    title_col: str | None = None,
    year_col: str | None = None,
    genres_col: str | None = None,
    genres_sep: str = "|",
    header: bool = True,
    columns: Sequence[str] | str | None = None,
    users_columns: Sequence[str] | str | None = None,
    items_columns: Sequence[str] | str | None = None,
) -> Dataset:
    """Load an interactions CSV/TSV/parquet (+ optional user/item side tables) into a Dataset.

    ``user_col``/``item_col``/``timestamp_col``/``rating_col`` name the interaction columns;
    other columns are ignored. ``users_path``/``items_path`` are side tables keyed by
    ``user_key_col``/``item_key_col`` (default: the same name as in the interactions); their
    other columns are kept. Without them minimal tables are created (ids, ``original_id``
    for string ids; items also get ``title`` = the original id, ``year`` NaN, ``genres`` []).
    Items always get ``title``/``year``/``genres``: taken from ``title_col``/``year_col``/
    ``genres_col`` (default: columns of those names, if present; genre strings are split on
    ``genres_sep``).

    A CSV/TSV interactions file without a header row: ``header=False`` names its columns by
    position (``"0"``, ``"1"``, ...; so ``user_col="0"``), or ``columns`` names them (a
    comma-separated string or a sequence; implies no header row). The side tables always
    have a header row unless ``users_columns``/``items_columns`` name their columns.
    Every problem raises :class:`InputError` naming the file and, for a bad column, its
    command-line option (``--user-col``, ``--columns``, ...).
    """
    path = Path(path)
    # column names are strings, also those of a file without a header row ("0", "1", ...)
    user_col, item_col, timestamp_col = str(user_col), str(item_col), str(timestamp_col)
    rating_col, user_key_col, item_key_col, title_col, year_col, genres_col = (
        None if c is None else str(c)
        for c in (rating_col, user_key_col, item_key_col, title_col, year_col, genres_col))
    frame = read_table(path, sep, header=header, columns=columns)
    require_columns(frame, path, {"--user-col": user_col, "--item-col": item_col,
                                  "--timestamp-col": timestamp_col, "--rating-col": rating_col})
    for column in (user_col, item_col):
        _check_no_missing(frame[column], path, column)
        check_scalars(frame[column], path, column)
    files = {str(path.resolve()): sha256_file(path)}

    side: dict[str, tuple[Path | None, str | None, pd.DataFrame | None]] = {}
    for role, side_path, key, default_key, names in (
            ("users", users_path, user_key_col, user_col, users_columns),
            ("items", items_path, item_key_col, item_col, items_columns)):
        if side_path is None:
            if names is not None:
                raise InputError(f"--{role}-columns: given without a --{role} file")
            side[role] = (None, None, None)
            continue
        side_path = Path(side_path)
        table = read_table(side_path, sep, columns=names, columns_option=f"--{role}-columns")
        key_option = f"--{role[:-1]}-key-col" + ("" if key else f" (default: --{role[:-1]}-col)")
        key = key or default_key
        hint = f"--{role}-columns NAMES"
        require_columns(table, side_path, {key_option: key}, hint)
        if role == "items":
            require_columns(table, side_path, {"--title-col": title_col, "--year-col": year_col,
                                               "--genres-col": genres_col}, hint)
        side[role] = (side_path, key, table)
        files[str(side_path.resolve())] = sha256_file(side_path)

    user_map = IdMapping(frame[user_col], None if side["users"][2] is None else side["users"][2][side["users"][1]])
    item_map = IdMapping(frame[item_col], None if side["items"][2] is None else side["items"][2][side["items"][1]])
    interactions = normalise_interactions(pd.DataFrame({
        "user_id": user_map.encode(frame[user_col]),
        "item_id": item_map.encode(frame[item_col]),
        "rating": (parse_ratings(frame[rating_col], path, rating_col) if rating_col
                   else np.full(len(frame), np.nan, dtype=np.float32)),
        "timestamp": parse_timestamps(frame[timestamp_col], path, timestamp_col),
    }))
    users = _side_table(*side["users"], "user_id", user_map, interactions["user_id"].to_numpy())
    items = _side_table(*side["items"], "item_id", item_map, interactions["item_id"].to_numpy())
    items = _complete_items(items, title_col, year_col, genres_col, genres_sep)
    dataset = Dataset(name, interactions, users, items, "file", files)
    check_contract(dataset)
    return dataset
