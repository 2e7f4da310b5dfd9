"""``recstack evaluate``: full-catalogue leave-one-out metrics of one run's models."""

from __future__ import annotations

import argparse
import json

from recstack.cliutil import add_dataset_argument, add_progress_argument
from recstack.errors import InputError
from recstack.paths import RunPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score popularity, two-tower and two-tower+DLRM (full catalogue, leave-one-out)",
        description="Rank every item for every user (seen items excluded, ties ranked below the target) and "
                    "report Recall/NDCG/HR@K, MRR and coverage; writes runs/<ds>/reports/evaluation_<split>.{json,png}.")
    add_dataset_argument(parser)
    add_progress_argument(parser)
    parser.add_argument("--split", default="test", choices=("test", "valid"), help="split to score (default: test)")
    parser.add_argument("--k", type=int, default=10, help="cut-off K (default: 10)")
    parser.add_argument("--candidates", type=int, default=100, help="two-tower candidates the DLRM reranks (default: 100)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--baselines", default="all",
                        help="classical baselines besides popularity: 'all' (item_knn, last_item_knn, ease, ials), "
                             "'none', or a comma-separated list (default: all)")
    parser.add_argument("--no-temporal", action="store_true",
                        help="skip the global temporal split (baselines trained before the 90%% time quantile)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from recstack.evaluation.evaluate import evaluate_run, format_table

    if args.k < 1:
        raise InputError(f"--k: must be >= 1, got {args.k}")
    if args.candidates < 1:
        raise InputError(f"--candidates: must be >= 1, got {args.candidates}")
    paths = RunPaths.for_dataset(args.dataset)
    if not paths.data.is_dir():
        raise InputError(f"--dataset {args.dataset}: no data folder {paths.data} (run `recstack data prepare` first)")
    report = evaluate_run(paths, k=args.k, split=args.split, candidates=args.candidates, device=args.device,
                           progress=args.progress, baselines=_baselines(args.baselines), temporal=not args.no_temporal)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['dataset']} {report['split']}: {report['users']:,} users, {report['catalogue']:,} items, "
          f"{report['protocol']} ({report['wall_s']:.1f} s)")
    print(format_table(report))
    if report["files"].get("markdown"):
        print(f"full table (@10 and @50, MRR, coverage, diversity, novelty; temporal split; cold items): "
              f"{report['files']['markdown']}")
    if report.get("diversity"):
        from recstack.evaluation.tradeoff import format_tradeoff

        print(f"\ndiversity trade-off (MMR over the top {report['diversity']['candidates']} candidates; "
              "ILD(emb) = mean pairwise 1 - cosine of item-tower embeddings, ILD(genre) = mean pairwise "
              "Jaccard distance of genre sets):")
        print(format_tradeoff(report["diversity"]["rows"], report["k"]))
        print(f"plot:   {report['files']['diversity_png']}")
    print(f"report: {report['files']['json']}\nplot:   {report['files']['png']}")
    return 0


def _baselines(value: str) -> tuple[str, ...]:
    """``--baselines``: 'all', 'none' or a comma-separated list of known names (InputError otherwise)."""
    from recstack.evaluation.baseline_runs import BASELINES

    if value == "all":
        return tuple(b for b in BASELINES if b != "popularity")
    if value == "none":
        return ()
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise InputError(f"--baselines: unknown baseline(s) {unknown or [value]} (expected all, none or some of "
                         f"{', '.join(b for b in BASELINES if b != 'popularity')})")
    return names
