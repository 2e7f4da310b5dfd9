"""`recstack features build|get`: the Feast repository of a run and its online values."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from recstack.cliutil import add_dataset_argument
from recstack.errors import InputError
from recstack.paths import RunPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("features", help="build the Feast feature repository / read online features")
    sub = parser.add_subparsers(dest="features_command", metavar="ACTION")
    sub.required = True

    build = sub.add_parser("build", help="generate the Feast repo from runs/<ds>/features, apply, materialize")
    add_dataset_argument(build)
    build.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite")
    build.add_argument("--redis-url", default=None, help="redis://host:port/db (with --online-store redis)")
    build.set_defaults(handler=_build)

    get = sub.add_parser("get", help="print one user's online features and history as JSON")
    add_dataset_argument(get)
    get.add_argument("--user", type=int, required=True, help="raw user id (user_key)")
    get.set_defaults(handler=_get)


def _build(args: argparse.Namespace) -> int:
    from recstack.features.repo import build_feature_repo

    paths = RunPaths.for_dataset(args.dataset)
    if not paths.features.is_dir():
        raise InputError(f"--dataset: {paths.features} does not exist (run `recstack workflows` first)")
    info = build_feature_repo(paths.features, paths.feature_repo, args.online_store, args.redis_url)
    rows = ", ".join(f"{name} {v['rows']}" for name, v in info["views"].items())
    print(f"feature repo: {info['repo_dir']} ({info['online_store']} online store)")
    print(f"  rows: {rows}")
    print(f"  apply {info['apply_s']:.2f} s, materialize {info['materialize_s']:.2f} s, total {info['total_s']:.2f} s")
    return 0


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _get(args: argparse.Namespace) -> int:
    from recstack.features.online import OnlineFeatures

    paths = RunPaths.for_dataset(args.dataset)
    if not (paths.feature_repo / "feature_store.yaml").is_file():
        raise InputError(f"--dataset: {paths.feature_repo} has no Feast repo (run `recstack features build` first)")
    online = OnlineFeatures(paths.feature_repo)
    keys = np.array([args.user], dtype=np.int64)
    users, known_user = online.users(keys)
    recent, seen, known_history = online.histories(keys)
    if not known_user[0] and not known_history[0]:
        raise InputError(f"user {args.user} is not in the online store")
    out = {
        "user_key": args.user,
        "features": {k: _jsonable(v[0]) for k, v in users.items()} if known_user[0] else None,
        "recent_items": recent[0].tolist() if known_history[0] else None,
        "seen_items": seen[0].tolist() if known_history[0] else None,
    }
    if online.has_history_times:  # unix seconds of each recent item
        out["recent_times"] = online.history_times(keys)[1][0].tolist() if known_history[0] else None
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0
