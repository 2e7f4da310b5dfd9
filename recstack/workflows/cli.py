"""`recstack workflow fit|transform`: fit the default Workflow and export feature tables,
or encode one raw request with the saved Workflow."""

from __future__ import annotations

import argparse
import json
import logging

from recstack.cliutil import add_dataset_argument, add_progress_argument
from recstack.errors import InputError
from recstack.ids import HISTORY_LENGTH
from recstack.paths import RunPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("workflow", help="fit the feature workflow / encode a request")
    sub = parser.add_subparsers(dest="workflow_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True

    fit = sub.add_parser("fit", help="fit the default workflow on train and write the feature tables")
    add_dataset_argument(fit)
    add_progress_argument(fit)
    fit.add_argument("--history-length", type=int, default=HISTORY_LENGTH,
                     help="items kept in each user's recent history (default: %(default)s)")
    fit.add_argument("--scheduler", metavar="ADDRESS",
                     help="fit on this dask.distributed cluster (tcp://host:port) instead of in-process")
    fit.add_argument("--workers", type=int, metavar="N",
                     help="fit on a Dask LocalCluster of N worker processes (ignored with --scheduler)")
    fit.set_defaults(handler=_fit)

    tr = sub.add_parser("transform", help="encode one raw request with the saved workflow; prints JSON")
    add_dataset_argument(tr)
    tr.add_argument("--request", required=True, help='raw values as a JSON object, e.g. \'{"user_id": 1}\'')
    tr.set_defaults(handler=_transform)


def _fit(args: argparse.Namespace) -> int:
    from recstack.workflows.export import fit_and_export

    logging.basicConfig(level=logging.INFO, format="recstack: %(message)s")
    if args.history_length < 1:
        raise InputError(f"--history-length: must be >= 1, got {args.history_length}")
    paths = RunPaths.for_dataset(args.dataset)
    if not paths.data.is_dir():
        raise InputError(f"--dataset {args.dataset}: no data folder {paths.data} (run `recstack data prepare` first)")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers: must be >= 1, got {args.workers}")
    fit_and_export(paths.data, paths.workflow, paths.features, history_length=args.history_length,
                   progress=args.progress, scheduler=args.scheduler, workers=args.workers)
    return 0


def _transform(args: argparse.Namespace) -> int:
    from recstack.workflows.workflow import Workflow

    try:
        request = json.loads(args.request)
    except json.JSONDecodeError as exc:
        raise InputError(f"--request: invalid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(request, dict):
        raise InputError("--request: expected a JSON object of column -> raw value")
    workflow = Workflow.load(RunPaths.for_dataset(args.dataset).workflow)
    print(json.dumps(workflow.transform_request(request, strict=True)))
    return 0
