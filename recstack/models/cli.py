"""``recstack train``: fit the two-tower retriever and the DLRM ranker of one run and export them."""

from __future__ import annotations

import argparse
import json

from recstack.cliutil import add_dataset_argument, add_progress_argument
from recstack.errors import InputError
from recstack.paths import RunPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train the two-tower and DLRM models (selection on valid) and export them (ONNX)",
        description="Train the two-tower retriever, then the DLRM ranker (selected on reranking the "
                    "two-tower's candidates on the validation split); write runs/<ds>/models/{two_tower,dlrm}/.")
    add_dataset_argument(parser)
    add_progress_argument(parser)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda (default: auto)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="maximum epochs per model (default: 20 two-tower, 10 DLRM; early stopping on valid)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--refit", action="store_true",
                        help="after selection, retrain on train + valid for the selected epochs")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: $RECSTACK_THREADS or half the cores)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from recstack.models.device import resolve_device
    from recstack.models.recipe import train_all

    if args.epochs is not None and args.epochs < 1:
        raise InputError(f"--epochs: must be >= 1, got {args.epochs}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads: must be >= 1, got {args.threads}")
    resolve_device(args.device)  # bad --device fails before any work
    paths = RunPaths.for_dataset(args.dataset)
    if not paths.data.is_dir():
        raise InputError(f"--dataset {args.dataset}: no data folder {paths.data} (run `recstack data prepare` first)")
    summary = train_all(paths, device=args.device, epochs=args.epochs, seed=args.seed, refit=args.refit,
                        threads=args.threads, progress=args.progress)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"trained on {summary['dataset']} ({summary['train_rows']:,} train rows, {summary['n_items']:,} item ids) "
          f"on {summary['device']} in {summary['wall_s']:.1f} s")
    for name in ("two_tower", "dlrm"):
        s = summary[name]
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in s["valid"].items() if isinstance(v, float)
                            and k in ("ndcg@10", "hr@10", "valid_ndcg@10_rerank", "valid_hr@10_rerank", "valid_auc"))
        print(f"  {name:<9} best epoch {s['best_epoch']}/{s['epochs_run']}  {metrics}  "
              f"({s['wall_s']:.1f} s) -> {s['dir']}")
    return 0
