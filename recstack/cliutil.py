"""Command-line helpers that every stage's ``cli.py`` shares (below every stage, so no stage
imports the top-level ``recstack.cli`` that imports it)."""

from __future__ import annotations

import argparse


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    """The `--dataset` option every stage shares: which `runs/<dataset>/` to read and write."""
    parser.add_argument("--dataset", default="ml-100k", help="dataset / run name (default: ml-100k)")


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """`--no-progress`: hide progress bars (logs, CI); sets ``args.progress`` to False."""
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="do not show progress bars")
