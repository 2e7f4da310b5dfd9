"""`recstack index build`: the FAISS index over the two-tower item embeddings."""

from __future__ import annotations

import argparse

from recstack.cliutil import add_dataset_argument
from recstack.paths import RunPaths

def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index", help="build the FAISS item index")
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION")
    sub.required = True
    build = sub.add_parser("build", help="index models/two_tower/item_embeddings.npy into runs/<ds>/index")
    add_dataset_argument(build)
    build.add_argument("--kind", choices=("flat", "hnsw"), default="flat")
    build.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node (default 32)")
    build.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    from recstack.retrieval.index import build_index, load_item_embeddings

    paths = RunPaths.for_dataset(args.dataset)
    emb, ids = load_item_embeddings(paths)
    meta = build_index(emb, ids, kind=args.kind, out_dir=paths.index, hnsw_m=args.hnsw_m)
    print(
        f"index: {paths.index} ({meta['kind']}, {meta['metric']}, d={meta['dimension']}, "
        f"{meta['count']} items, built in {meta['build_s']:.2f} s)"
    )
    return 0
