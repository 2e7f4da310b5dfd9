"""``recstack train``: fit the two-tower retriever and the DLRM ranker of one run and export them."""

from __future__ import annotations

import argparse
import json
import os

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
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="the experiment's training settings, YAML or JSON (README 'Training', configs/); "
                             "the options below override its keys when given")
    parser.add_argument("--device", default=None, help="auto (cuda if available), cpu or cuda (default: auto)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="maximum epochs per model (default: 20 two-tower, 2 DLRM; early stopping on valid)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    parser.add_argument("--max-wall-s", type=float, default=None, metavar="S",
                        help="safety stop per model in seconds, reported when hit (default 7200; quality comes "
                             "from epochs + early stopping, not from this)")
    parser.add_argument("--refit", action="store_true", default=None,
                        help="after selection, retrain on train + valid for the selected epochs")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: $RECSTACK_THREADS or half the cores)")
    parser.add_argument("--embedding-dim", type=int, default=None,
                        help="d of the two-tower's user and item embeddings, the vectors FAISS indexes (default 64)")
    parser.add_argument("--max-train-rows", type=int, default=None, metavar="N",
                        help="fit both models on a random sample of N training interactions (large catalogues: "
                             "every step updates the whole item table); the vocabulary and catalogue stay whole")
    parser.add_argument("--valid-users", type=int, default=None, metavar="N",
                        help="select epochs and fusion weights on a random sample of N validation users "
                             "(each costs a full-catalogue scoring; default all)")
    parser.add_argument("--hard-negatives", type=int, default=None, metavar="K",
                        help="DLRM negatives per positive from the two-tower's top items (default 8 of 16; "
                             "0 for large catalogues: each positive costs a full-catalogue scoring)")
    parser.add_argument("--context-ablation", action=argparse.BooleanOptionalAction, default=None,
                        help="also train models/dlrm_no_context, the ranker without the request context, for "
                             "recstack evaluate's ablation row (default: on below 300k train rows)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from recstack.models.device import resolve_device
    from recstack.models.recipe import train_all
    from recstack.models.train_config import load_train_config

    if args.epochs is not None and args.epochs < 1:
        raise InputError(f"--epochs: must be >= 1, got {args.epochs}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads: must be >= 1, got {args.threads}")
    if args.max_wall_s is not None and not args.max_wall_s > 0:
        raise InputError(f"--max-wall-s: must be > 0, got {args.max_wall_s}")
    config = load_train_config(args.config) if args.config else None  # bad keys fail before any work
    resolve_device(args.device or (config.device if config else "auto"))  # bad --device fails before any work
    paths = RunPaths.for_dataset(args.dataset)
    if not paths.data.is_dir():
        raise InputError(f"--dataset {args.dataset}: no data folder {paths.data} (run `recstack data prepare` first)")
    extra = {"max_wall_s": args.max_wall_s} if args.max_wall_s is not None else {}
    summary = train_all(paths, device=args.device, epochs=args.epochs, seed=args.seed, refit=args.refit, config=config,
                        threads=args.threads, progress=args.progress, embedding_dim=args.embedding_dim,
                        max_train_rows=args.max_train_rows, valid_users=args.valid_users,
                        hard_negatives=args.hard_negatives, context_ablation=args.context_ablation, **extra)
    if summary.get("world_size", 1) > 1 and os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun rank 0 reports
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    sample = (f", fit on a sample of {summary['fit_rows']:,}" if summary["fit_rows"] < summary["train_rows"] else "")
    print(f"trained on {summary['dataset']} ({summary['train_rows']:,} train rows{sample}, "
          f"{summary['n_items']:,} item ids, selection on {summary['valid_rows']:,} validation users) "
          f"on {summary['device']} in {summary['wall_s']:.1f} s")
    for name in ("two_tower", "dlrm", "dlrm_no_context"):
        if name not in summary:
            continue
        s = summary[name]
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in s["valid"].items() if isinstance(v, float)
                            and k in ("ndcg@10", "hr@10", "valid_ndcg@10_rerank", "valid_hr@10_rerank", "valid_auc"))
        print(f"  {name:<15} best epoch {s['best_epoch']}/{s['epochs_run']} ({s['stop_reason']})  {metrics}  "
              f"({s['wall_s']:.1f} s) -> {s['dir']}")
    for name in summary.get("safety_stops", []):
        print(f"  WARNING: {name} hit the wall-clock safety stop (max_wall_s {summary['config']['max_wall_s']} s) "
              "before its epochs or early stopping: its quality depends on this machine's speed")
    for name in summary.get("non_finite_stops", []):
        info = summary[name].get("non_finite_loss", {})
        print(f"  WARNING: {name} stopped on a non-finite loss ({info}); kept the last good epoch's weights")
    return 0
