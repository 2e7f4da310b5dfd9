"""`recstack export`: write the Triton model repository of a run."""

from __future__ import annotations

import argparse
import time

from recstack.paths import RunPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    from recstack.cliutil import add_dataset_argument

    parser = subparsers.add_parser(
        "export", help="export the serving ensemble as a Triton model repository",
        description="Write triton_repo/<dataset>/: one python model per serving step "
                    "(Feast user features -> user tower -> FAISS -> Feast item features -> DLRM -> filter) "
                    "and an ensemble model `recommend` wiring them.")
    add_dataset_argument(parser)
    parser.add_argument("--top-k", type=int, default=100, help="candidates retrieved from FAISS (default 100)")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from recstack.ensembles.graph import ENSEMBLE_NAME, export_ensemble, recommendation_graph

    paths = RunPaths.for_dataset(args.dataset)
    start = time.perf_counter()
    graph = recommendation_graph(paths, top_k=args.top_k)
    repo = export_ensemble(graph, paths.triton_repo)
    names = " >> ".join(op.name for op in graph.ops)
    print(f"export: {repo} (ensemble `{ENSEMBLE_NAME}`: {names}) in {time.perf_counter() - start:.1f}s")
    return 0
