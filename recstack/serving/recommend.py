"""Client side of the recommendation ensemble: `recstack recommend`.

Apps call the ``recommend`` ensemble over Triton's KServe v2 gRPC/HTTP API with
``user_id`` int64 [B, 1] and ``top_n`` int32 [B, 1] (and optionally the request context:
``request_time`` int64 [B, 1] unix seconds, default the server's now, and ``device`` int64
[B, 1], a code of :func:`recstack.workflows.request_context.device_code`); they get raw ``item_ids`` int64
[B, N], ``scores`` float32 [B, N] and ``cold_start`` int32 [B, 1]. Titles are mapped
here, outside the ensemble (strings do not cross the python backend safely).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recstack.cliutil import add_dataset_argument
from recstack.ensembles.graph import ENSEMBLE_NAME
from recstack.errors import InputError
from recstack.ids import OOV
from recstack.paths import RunPaths
from recstack.serving.server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from recstack.workflows.request_context import DEVICES, check_request_times, device_code

MAX_TOP_N = 100


@dataclass
class Recommendation:
    """Top-N for one user: raw item ids, scores (ranker logits, or popularity share when cold)."""

    user_id: int
    item_ids: list[int]
    scores: list[float]
    cold_start: bool
    reasons: list[tuple[int, int]] = field(default_factory=list)
    """Per item (reason code, raw history item id or -1): see :mod:`recstack.ensembles.rerank`."""


def check_top_n(k: int) -> int:
    if not 1 <= int(k) <= MAX_TOP_N:
        raise InputError(f"-k: must be between 1 and {MAX_TOP_N}, got {k}")
    return int(k)


def recommend(client, user_ids: list[int] | np.ndarray, k: int = 10, request_time: int | np.ndarray | None = None,
              device: str | None = None, diversity_lambda: float | None = None) -> list[Recommendation]:
    """Ask the ensemble for the top ``k`` items of each user (one request, batch = len(user_ids)).

    ``request_time``: unix seconds (one for all users, or one per user) whose hour and weekday (UTC)
    the ranker reads; None: the server's current time. ``device``: a name of
    :data:`~recstack.workflows.request_context.DEVICES` (None: not sent). ``diversity_lambda``
    (None: the export's default) re-ranks for diversity."""
    k = check_top_n(k)
    users = np.asarray(user_ids, dtype=np.int64).reshape(-1, 1)
    inputs = {"user_id": users, "top_n": np.full((len(users), 1), k, dtype=np.int32)}
    if request_time is not None:
        times = np.broadcast_to(np.asarray(request_time, dtype=np.int64).reshape(-1, 1), users.shape)
        inputs["request_time"] = check_request_times(np.ascontiguousarray(times), "--at")
    if device is not None:
        code = device_code(device)
        if code == OOV:
            raise InputError(f"--device: {device!r} is not one of {list(DEVICES)}")
        inputs["device"] = np.full((len(users), 1), code, dtype=np.int64)
    if diversity_lambda is not None:
        if not 0.0 <= diversity_lambda <= 1.0:
            raise InputError(f"--diversity-lambda: must be between 0 and 1, got {diversity_lambda}")
        inputs["diversity_lambda"] = np.full((len(users), 1), diversity_lambda, dtype=np.float32)
    out = client.infer(ENSEMBLE_NAME, inputs, ["item_ids", "scores", "cold_start", "reason_code", "reason_item"])
    results = []
    for row, user in enumerate(users[:, 0]):
        keep = out["item_ids"][row] >= 0
        reasons = list(zip(out["reason_code"][row][keep][:k].tolist(), out["reason_item"][row][keep][:k].tolist()))
        results.append(Recommendation(int(user), out["item_ids"][row][keep][:k].tolist(),
                                      out["scores"][row][keep][:k].tolist(), bool(out["cold_start"][row, 0]), reasons))
    return results


def parse_time(text: str) -> int:
    """``--at``: unix seconds or ISO 8601 (a time without zone is UTC) -> unix seconds; InputError otherwise."""
    text = str(text).strip()
    if text.lstrip("-").isdigit():
        return int(check_request_times(np.array([int(text)]), "--at")[0])
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise InputError(f"--at: {text!r} is neither unix seconds nor an ISO 8601 time") from None
    if stamp is pd.NaT:
        raise InputError(f"--at: {text!r} is not a time")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
    return int(check_request_times(np.array([stamp.value // 10**9]), "--at")[0])


class ItemTitles:
    """Raw item id -> title, from the run's ``data/items.parquet``."""

    def __init__(self, paths: RunPaths):
        items = pd.read_parquet(paths.data / "items.parquet", columns=["item_id", "title"])
        self._titles = dict(zip(items["item_id"].tolist(), items["title"].astype(str).tolist()))

    def __getitem__(self, item_id: int) -> str:
        return self._titles.get(int(item_id), f"item {item_id}")


def format_recommendation(rec: Recommendation, titles: ItemTitles) -> str:
    head = f"user {rec.user_id}" + (" (cold start: most popular items)" if rec.cold_start else "")
    lines = [head]
    words = {2: "popular", 3: "new", 4: "trending"}
    for rank, (item, score) in enumerate(zip(rec.item_ids, rec.scores), start=1):
        code, because = rec.reasons[rank - 1] if rank <= len(rec.reasons) else (0, -1)
        why = f"because you watched {titles[because]}" if code == 1 else words.get(code, "")
        lines.append(f"  {rank:2d}. {titles[item]}  [item {item}, score {score:.3f}]" + (f"  ({why})" if why else ""))
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    rec = subparsers.add_parser("recommend", help="top-N recommendations for a user from the running server",
                                description="Query the `recommend` ensemble over gRPC (default) or HTTP and "
                                            "print titles and scores.")
    add_dataset_argument(rec)
    rec.add_argument("--user", type=int, required=True, help="raw user id")
    rec.add_argument("-k", type=int, default=10, help=f"how many items (1..{MAX_TOP_N}, default 10)")
    rec.add_argument("--http", action="store_true", help="use HTTP instead of gRPC")
    rec.add_argument("--url", default=None, help="server address (default 127.0.0.1:8001 gRPC / :8000 HTTP)")
    rec.add_argument("--diversity-lambda", type=float, default=None,
                     help="MMR lambda 0..1 (1 = the ranker's order; default: the export's setting)")
    rec.add_argument("--at", default=None, metavar="TIME",
                     help="request time whose hour / weekday (UTC) the ranker reads: unix seconds or ISO 8601 "
                          "(no zone = UTC; default: the server's now)")
    rec.add_argument("--device", default=None, choices=DEVICES, help="the app's device / platform (default: not sent)")
    rec.add_argument("--new-user", action="store_true",
                     help="accept a user the online store does not know (cold start: popular items)")
    rec.set_defaults(handler=_recommend)


def _recommend(args: argparse.Namespace) -> int:
    from recstack.serving.client import TritonClient

    check_top_n(args.k)
    protocol = "http" if args.http else "grpc"
    url = args.url or f"127.0.0.1:{DEFAULT_HTTP_PORT if args.http else DEFAULT_GRPC_PORT}"
    paths = RunPaths.for_dataset(args.dataset)
    with TritonClient(url, protocol=protocol) as client:
        if not client.is_ready():
            raise InputError(f"--url: no ready tritonserver at {url} (start it with `recstack serve`)")
        (rec,) = recommend(client, [args.user], args.k, parse_time(args.at) if args.at else None, args.device,
                           args.diversity_lambda)
    if rec.cold_start and not args.new_user:
        raise InputError(f"--user: user {args.user} is unknown to the online store "
                         "(pass --new-user for cold-start recommendations)")
    print(format_recommendation(rec, ItemTitles(paths)))
    return 0
