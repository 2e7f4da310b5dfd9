"""The `recstack` command: one subcommand per pipeline stage, plus `run` for the whole pipeline.

Each stage's ``recstack/<stage>/cli.py`` exposes ``register(subparsers)``, which adds its
subcommand(s) with ``set_defaults(handler=fn)``; ``fn(args) -> int`` returns an exit code.
Bad input raises :class:`recstack.errors.InputError`: printed as one line, exit code 2. A full or
read-only disk (:func:`recstack.errors.storage_error`) is one line too, exit code 1.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys

from recstack.errors import InputError, storage_error

# Stage modules that contribute subcommands, in pipeline order.
STAGE_CLIS = (
    "recstack.data.cli",
    "recstack.workflows.cli",
    "recstack.features.cli",
    "recstack.events.cli",
    "recstack.models.cli",
    "recstack.retrieval.cli",
    "recstack.evaluation.cli",
    "recstack.ensembles.cli",
    "recstack.serving.cli",
    "recstack.serving.recommend",
    "recstack.serving.bench",
    "recstack.serving.gateway.cli",
    "recstack.serving.versions",
    "recstack.serving.items",
    "recstack.serving.ab.cli",
    "recstack.pipeline",
    "recstack.retrain",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"recstack: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recstack", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for module_name in STAGE_CLIS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except InputError as exc:
        sys.stderr.write(f"recstack: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("recstack: interrupted\n")
        return 130
    except (OSError, RuntimeError) as exc:
        reason = storage_error(exc)
        if reason is None:
            raise
        # stages write through recstack.io.atomic_dir / atomic_write_bytes: nothing was replaced
        sys.stderr.write(f"recstack: error: {reason}; {args.command} did not finish and left the "
                         "previous files as they were\n")
        return 1


def entry() -> None:
    """The console-script entry point: :func:`main`, then exit without native teardown.

    Python's own exit work (atexit handlers: servers stopped, logs flushed, temporary folders
    removed) runs as usual; only the C++ static destructors that follow are skipped. One of
    them, in pyarrow's threads, aborted about one process in 30 at exit ("terminate called
    without an active exception", SIGABRT) after the command had finished and printed.
    """
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
