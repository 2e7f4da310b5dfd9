"""`recstack index build`: the FAISS index over the two-tower item embeddings."""

from __future__ import annotations

import argparse

import numpy as np

from recstack.cli import add_dataset_argument
from recstack.errors import InputError
from recstack.paths import RunPaths

# Encoded ids 0 (padding) and 1 (out-of-vocabulary) are not real items.
FIRST_ITEM_ID = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index", help="build the FAISS item index")
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION")
    sub.required = True
    build = sub.add_parser("build", help="index models/two_tower/item_embeddings.npy into runs/<ds>/index")
    add_dataset_argument(build)
    build.add_argument("--kind", choices=("flat", "hnsw"), default="flat")
    build.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node (default 32)")
    build.set_defaults(handler=_build)


def load_item_embeddings(paths: RunPaths) -> tuple[np.ndarray, np.ndarray]:
    """Rows 2.. of the two-tower item embeddings and their encoded item ids."""
    path = paths.models / "two_tower" / "item_embeddings.npy"
    if not path.is_file():
        raise InputError(f"{path}: not found (train the two-tower model first)")
    try:
        emb = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from exc
    if emb.ndim != 2 or emb.shape[0] <= FIRST_ITEM_ID:
        raise InputError(f"{path}: expected [n_items, d] with n_items > {FIRST_ITEM_ID}, got shape {emb.shape}")
    ids = np.arange(FIRST_ITEM_ID, emb.shape[0], dtype=np.int64)
    return np.ascontiguousarray(emb[FIRST_ITEM_ID:], dtype=np.float32), ids


def _build(args: argparse.Namespace) -> int:
    from recstack.retrieval.index import build_index

    paths = RunPaths.for_dataset(args.dataset)
    emb, ids = load_item_embeddings(paths)
    meta = build_index(emb, ids, kind=args.kind, out_dir=paths.index, hnsw_m=args.hnsw_m)
    print(
        f"index: {paths.index} ({meta['kind']}, {meta['metric']}, d={meta['dimension']}, "
        f"{meta['count']} items, built in {meta['build_s']:.2f} s)"
    )
    return 0
