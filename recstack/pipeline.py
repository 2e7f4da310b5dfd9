"""`recstack run`: every stage in order on one dataset, then serve it with tritonserver.

    data -> workflow -> features (Feast) -> train (two-tower + DLRM) -> index (FAISS)
         -> evaluate -> export (Triton repo) -> serve (tritonserver) -> top-10 for three users

Each stage reads the previous stage's files (recstack.paths.RunPaths) and prints its
wall time; the run ends with a one-screen summary, also written to
``runs/<dataset>/pipeline.json``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from recstack.cliutil import add_dataset_argument, add_progress_argument
from recstack.errors import InputError
from recstack.ids import HISTORY_LENGTH
from recstack.io import read_json, write_json
from recstack.paths import RunPaths


def _data(paths: RunPaths, args: argparse.Namespace) -> str:
    """MovieLens and the registry ratings files are fetched and split; a dataset made by `recstack data import` is used as imported."""
    from recstack.data import PREPARABLE_DATASETS, prepare_dataset

    if args.dataset in PREPARABLE_DATASETS:
        info = prepare_dataset(args.dataset, paths.data, progress=args.progress)
    elif (paths.data / "dataset.json").is_file():
        info = read_json(paths.data / "dataset.json")
    else:
        known = ", ".join(PREPARABLE_DATASETS)
        raise InputError(f"--dataset: {args.dataset!r} is neither a known dataset ({known}) nor imported "
                         f"(`recstack data import --name {args.dataset} ...` writes {paths.data})")
    counts = info.get("counts", {})
    return f"{counts.get('rows', '?')} interactions from {info.get('source', '?')}"


def _workflow(paths: RunPaths, args: argparse.Namespace) -> str:
    from recstack.workflows import fit_and_export

    fit_and_export(paths.data, paths.workflow, paths.features, history_length=args.history_length,
                   progress=args.progress)
    return f"workflow fit on train, features written to {paths.features}"


def _features(paths: RunPaths, args: argparse.Namespace) -> str:
    from recstack.features import build_feature_repo

    info = build_feature_repo(paths.features, paths.feature_repo)
    return f"Feast repo applied + materialized ({info['online_store']} online store)"


def _train(paths: RunPaths, args: argparse.Namespace) -> str:
    from recstack.models import train_all

    summary = train_all(paths, device=args.device, epochs=args.epochs, progress=args.progress,
                        config=getattr(args, "train_config_parsed", None))
    return f"two-tower + DLRM trained on {summary['device']}"


def _index(paths: RunPaths, args: argparse.Namespace) -> str:
    from recstack.retrieval import build_index, load_item_embeddings

    embeddings, ids = load_item_embeddings(paths)
    meta = build_index(embeddings, ids, kind=args.index_kind, out_dir=paths.index)
    return f"FAISS {meta['kind']} index, {meta['count']} items x {meta['dimension']}"


def _evaluate(paths: RunPaths, args: argparse.Namespace) -> str:
    from recstack.evaluation import evaluate_run, format_table

    report = evaluate_run(paths, progress=args.progress)
    print(format_table(report))
    return "evaluated on the test split (full catalogue, seen items excluded)"


def _export(paths: RunPaths, args: argparse.Namespace) -> str:
    from recstack.ensembles.graph import export_ensemble, recommendation_graph, run_manifest

    export_ensemble(recommendation_graph(paths, top_k=args.top_k), paths.triton_repo, manifest=run_manifest(paths))
    return f"Triton repository {paths.triton_repo}"


STAGES: list[tuple[str, Callable[[RunPaths, argparse.Namespace], str]]] = [
    ("data", _data), ("workflow", _workflow), ("features", _features), ("train", _train),
    ("index", _index), ("evaluate", _evaluate), ("export", _export),
]


def run_stages(paths: RunPaths, args: argparse.Namespace,
               stages: list[tuple[str, Callable[[RunPaths, argparse.Namespace], str]]] = STAGES) -> dict[str, float]:
    """Run ``stages`` (default: every stage) in order, printing a header and wall time for each;
    returns {stage: seconds}."""
    times: dict[str, float] = {}
    for number, (name, stage) in enumerate(stages, start=1):
        print(f"\n[{number}/{len(stages)}] {name}", flush=True)
        start = time.perf_counter()
        detail = stage(paths, args)
        times[name] = round(time.perf_counter() - start, 2)
        print(f"[{number}/{len(stages)}] {name}: {detail} ({times[name]:.1f}s)", flush=True)
    return times


def serve_and_show(paths: RunPaths, args: argparse.Namespace, times: dict[str, float]) -> dict[str, Any]:
    """Start tritonserver, print top-10 with titles for three users, and serve until Ctrl-C if asked."""
    import pandas as pd

    from recstack.serving.client import TritonClient
    from recstack.serving.recommend import ItemTitles, format_recommendation, recommend
    from recstack.serving.server import (
        DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, query_help, start_server, wait_for_interrupt,
    )

    ports = (DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT) if args.serve else (0, 0, 0)
    print("\n[serve] starting tritonserver", flush=True)
    server = start_server(paths.triton_repo, paths.feature_repo, *ports, log_path=paths.root / "tritonserver.log")
    try:
        times["serve (startup)"] = round(server.startup_seconds, 2)
        print(f"[serve] tritonserver ready in {server.startup_seconds:.1f}s "
              f"(HTTP {server.http_url}, gRPC {server.grpc_url})")
        test_users = pd.read_parquet(paths.data / "test.parquet", columns=["user_id"])["user_id"]
        users = sorted(test_users.unique().tolist())[:3]
        titles = ItemTitles(paths)
        with TritonClient(server.grpc_url, protocol="grpc") as client:
            for rec in recommend(client, users, k=10):
                print(format_recommendation(rec, titles))
        print(summary_table(times))
        write_json(paths.root / "pipeline.json", {"dataset": args.dataset, "wall_s": times})
        if args.serve:
            print(query_help(server.http_url, server.grpc_url, args.dataset))
            print("serving until Ctrl-C", flush=True)
            wait_for_interrupt()
    finally:
        server.stop()
    return times


def summary_table(times: dict[str, float]) -> str:
    width = max(len(name) for name in times)
    lines = ["", "stage wall times:"] + [f"  {name:<{width}}  {seconds:7.1f}s" for name, seconds in times.items()]
    lines.append(f"  {'total':<{width}}  {sum(times.values()):7.1f}s")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run the whole pipeline, then serve it",
                                   description=__doc__.splitlines()[0])
    add_dataset_argument(parser)
    add_progress_argument(parser)
    parser.add_argument("--serve", type=int, choices=(0, 1), default=1,
                        help="1: keep serving until Ctrl-C (default); 0: stop after printing recommendations")
    parser.add_argument("--device", default=None, help="training device: auto|cpu|cuda (default auto)")
    parser.add_argument("--epochs", type=int, default=None, help="override training epochs")
    parser.add_argument("--history-length", type=int, default=HISTORY_LENGTH, help="recent items per user")
    parser.add_argument("--index-kind", choices=("flat", "hnsw", "ivf_flat", "ivf_pq"), default="flat",
                        help="FAISS index kind")
    parser.add_argument("--top-k", type=int, default=100, help="candidates retrieved per request")
    parser.add_argument("--train-config", default=None, metavar="FILE",
                        help="training settings file for the train stage (as `recstack train --config`)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.train_config:  # a bad file fails before the first stage
        from recstack.models.train_config import load_train_config

        args.train_config_parsed = load_train_config(args.train_config, option="--train-config")
    paths = RunPaths.for_dataset(args.dataset)
    print(f"recstack run: dataset {args.dataset} -> {paths.root}")
    times = run_stages(paths, args)
    serve_and_show(paths, args, times)
    return 0
