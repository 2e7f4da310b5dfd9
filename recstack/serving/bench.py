"""`recstack bench serve`: drive a running ``recommend`` ensemble with load, perf_analyzer style.

tritonclient's asyncio clients (``tritonclient.grpc.aio`` / ``tritonclient.http.aio``) send
requests built from real user ids (``runs/<dataset>/data/test.parquet``, drawn with a seed),
either with N requests in flight (``--concurrency-range``, closed loop) or on a fixed schedule
(``--request-rate-range``, open loop; latency counted from the scheduled time). Per level it
prints req/s, p50/p90/p95/p99 latency (ms), errors, and time per ensemble step from Triton's
statistics API (queue and compute ms per request, deltas over the measurement window), and
writes to ``runs/<dataset>/reports/`` (or ``--out``):

- ``bench_serve_<protocol>.json``: configuration, users, every level, the perf_analyzer commands;
- ``bench_serve_<protocol>.png``: latency (p50, p95) against throughput;
- ``bench_serve_<protocol>_input_data.json``: the same users as perf_analyzer ``--input-data``
  (one entry per user, ``shape`` without the batch dimension, as perf_analyzer expects for a
  batching model; ``-b B`` groups B consecutive entries into one request, as this tool does).

Replay the same load with perf_analyzer (``--measurement-interval`` is in ms there;
``scripts/install_perf_analyzer.sh`` puts it in the venv, ``tests/test_perf_analyzer.py`` replays)::

    perf_analyzer -m recommend -i grpc -u 127.0.0.1:8001 -b 1 \\
        --input-data runs/ml-100k/reports/bench_serve_grpc_input_data.json \\
        --concurrency-range 1:16:1 --measurement-interval 5000 --percentile 95
    # open loop: --request-rate-range 50:200:50 instead of --concurrency-range; HTTP: -i http -u 127.0.0.1:8000

Only loopback targets are accepted unless ``--allow-remote``; every level stops by time or
count (see :mod:`recstack.serving.loadgen`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.cliutil import add_dataset_argument, add_progress_argument
from recstack.ensembles.graph import ENSEMBLE_NAME
from recstack.errors import InputError
from recstack.io import save_figure, write_json
from recstack.paths import RunPaths
from recstack.serving.loadgen import (
    LevelResult, check_target, parse_range, parse_statistics, run_closed_loop, run_open_loop, stats_delta, summarize,
)
from recstack.serving.recommend import check_top_n
from recstack.serving.server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT

OUTPUTS = ("item_ids", "scores", "cold_start")


@dataclass
class BenchConfig:
    """One `bench serve` run. ``users``: the pool of raw user ids, sent in order, ``batch_size``
    per request, cycling; ``concurrency`` xor ``request_rates`` (req/s) gives the levels."""

    url: str
    users: list[int]
    protocol: str = "grpc"
    concurrency: list[int] | None = None
    request_rates: list[float] | None = None
    k: int = 10
    batch_size: int = 1
    measurement_interval_s: float = 5.0
    warmup_s: float = 1.0
    timeout_s: float = 10.0
    max_in_flight: int = 256
    model: str = ENSEMBLE_NAME
    allow_remote: bool = False


@dataclass
class BenchReport:
    config: BenchConfig
    steps: list[str]                      # the ensemble's composing models, in order
    input_dims: dict[str, list[int]]      # model input dims without the batch dimension
    levels: list[LevelResult] = field(default_factory=list)


def draw_users(paths: RunPaths, count: int = 1000, seed: int = 0) -> list[int]:
    """``count`` raw user ids from the test split (``data/test.parquet`` ``user_id``): distinct
    when the split has that many, else drawn with replacement; seeded."""
    path = paths.data / "test.parquet"
    if not path.is_file():
        raise InputError(f"--dataset: {path} not found (run `recstack run --dataset ...` first)")
    unique = np.unique(pd.read_parquet(path, columns=["user_id"])["user_id"].to_numpy())
    if unique.size == 0:
        raise InputError(f"--dataset: {path} has no users")
    rng = np.random.default_rng(seed)
    return [int(u) for u in rng.choice(unique, size=int(count), replace=int(count) > unique.size)]


def perf_analyzer_input_data(users: list[int], k: int, input_dims: dict[str, list[int]]) -> dict[str, Any]:
    """perf_analyzer ``--input-data`` JSON for ``users``: one entry (a batch-1 request) per user."""
    return {"data": [{"user_id": {"content": [int(u)], "shape": input_dims["user_id"]},
                      "top_n": {"content": [int(k)], "shape": input_dims["top_n"]}} for u in users]}


def perf_analyzer_commands(report: BenchReport, input_data: Path) -> list[str]:
    """One perf_analyzer command per level, replaying this run's users."""
    cfg = report.config
    base = (f"perf_analyzer -m {cfg.model} -i {cfg.protocol} -u {check_target(cfg.url, True)} -b {cfg.batch_size} "
            f"--input-data {input_data} --measurement-interval {int(cfg.measurement_interval_s * 1000)} "
            "--percentile 95")
    if cfg.concurrency:
        return [f"{base} --concurrency-range {c}:{c}" for c in cfg.concurrency]
    return [f"{base} --request-rate-range {r:g}:{r:g}" for r in cfg.request_rates or []]


class _Target:
    """A tritonclient aio connection with the requests pre-built (one per ``batch_size`` users)."""

    def __init__(self, cfg: BenchConfig, connections: int) -> None:
        self.grpc = cfg.protocol == "grpc"
        if self.grpc:
            import tritonclient.grpc.aio as module  # noqa: PLC0415
            self.client = module.InferenceServerClient(url=cfg.url)
        else:
            import tritonclient.http.aio as module  # noqa: PLC0415
            self.client = module.InferenceServerClient(url=cfg.url, conn_limit=max(connections, 1),
                                                       conn_timeout=cfg.timeout_s)
        self.module, self.cfg = module, cfg
        self.requests: list[list[Any]] = []
        self.outputs = [module.InferRequestedOutput(name) for name in OUTPUTS]

    async def model_config(self, model: str) -> dict[str, Any]:
        cfg = await self.client.get_model_config(model, **({"as_json": True} if self.grpc else {}))
        return cfg.get("config", cfg)

    async def statistics(self) -> dict[str, dict[str, int]]:
        return parse_statistics(await self.client.get_inference_statistics(
            "", **({"as_json": True} if self.grpc else {})))

    def build(self, users: list[int]) -> None:
        b, k = self.cfg.batch_size, self.cfg.k
        for start in range(0, len(users), b):
            batch = np.asarray(users[start:start + b], dtype=np.int64).reshape(-1, 1)
            user_in = self.module.InferInput("user_id", list(batch.shape), "INT64")
            user_in.set_data_from_numpy(batch)
            top_in = self.module.InferInput("top_n", [len(batch), 1], "INT32")
            top_in.set_data_from_numpy(np.full((len(batch), 1), k, dtype=np.int32))
            self.requests.append([user_in, top_in])

    async def send(self, index: int) -> None:
        result = await self.client.infer(self.cfg.model, self.requests[index % len(self.requests)],
                                         outputs=self.outputs)
        if result.as_numpy("item_ids") is None:
            raise RuntimeError("response has no item_ids")


async def _run(cfg: BenchConfig, progress: bool) -> BenchReport:
    levels = [("concurrency", c) for c in cfg.concurrency or []] + \
             [("request_rate", r) for r in cfg.request_rates or []]
    target = _Target(cfg, max([int(c) for c in cfg.concurrency or []] + [cfg.max_in_flight]))
    try:
        try:
            ready = await target.client.is_model_ready(cfg.model)
        except Exception as exc:  # noqa: BLE001  refused / unreachable
            raise InputError(f"--url: no tritonserver answering {cfg.protocol} at {cfg.url} "
                             f"({type(exc).__name__}; start one with `recstack serve`)") from None
        if not ready:
            raise InputError(f"--url: model {cfg.model!r} is not ready on {cfg.url}")
        config = await target.model_config(cfg.model)
        max_batch = int(config.get("max_batch_size", 0))
        if max_batch and cfg.batch_size > max_batch:
            raise InputError(f"--batch-size: {cfg.batch_size} is above the model's max_batch_size {max_batch}")
        steps = [s["model_name"] for s in config.get("ensemble_scheduling", {}).get("step", [])]
        dims = {i["name"]: [int(d) for d in i.get("dims", [])] for i in config.get("input", [])}
        report = BenchReport(cfg, steps, dims)
        target.build(cfg.users)
        for mode, level in levels:
            snapshot, cpu0 = target.statistics, time.process_time()
            if mode == "concurrency":
                records, ws, we, snaps = await run_closed_loop(
                    target.send, int(level), cfg.warmup_s, cfg.measurement_interval_s,
                    timeout_s=cfg.timeout_s, snapshot=snapshot)
            else:
                records, ws, we, snaps = await run_open_loop(
                    target.send, float(level), cfg.warmup_s, cfg.measurement_interval_s,
                    timeout_s=cfg.timeout_s, max_in_flight=cfg.max_in_flight, snapshot=snapshot)
            result = summarize(records, ws, we, mode=mode, level=level)
            result.client_cpu_ms = (time.process_time() - cpu0) * 1e3 / max(result.sent, 1)
            delta = stats_delta(snaps[0], snaps[1])
            result.steps = {m: delta[m] for m in [cfg.model, *steps] if m in delta}
            report.levels.append(result)
            if progress:
                lat = result.latency_ms
                print(f"  {mode} {level:g}: {result.throughput_rps:.1f} req/s, p50 {lat['p50']:.1f} ms, "
                      f"p95 {lat['p95']:.1f} ms, errors {result.errors}", flush=True)
        return report
    finally:
        await target.client.close()


def bench_serve(cfg: BenchConfig, progress: bool = False) -> BenchReport:
    """Run every level of ``cfg`` against the server (bounded: levels x (warm-up + interval)
    plus at most ``timeout_s`` of tail each) and return what was measured."""
    cfg.url = check_target(cfg.url, cfg.allow_remote)
    if cfg.protocol not in ("grpc", "http"):
        raise InputError(f"--protocol: {cfg.protocol!r} must be grpc or http")
    if bool(cfg.concurrency) == bool(cfg.request_rates):
        raise InputError("--concurrency-range / --request-rate-range: give exactly one")
    check_top_n(cfg.k)
    for name, value, low, high in (("--batch-size", cfg.batch_size, 1, 4096),
                                   ("--measurement-interval", cfg.measurement_interval_s, 0.1, 3600),
                                   ("--warmup", cfg.warmup_s, 0, 600), ("--timeout", cfg.timeout_s, 0.1, 600),
                                   ("--max-in-flight", cfg.max_in_flight, 1, 4096),
                                   ("--concurrency-range", max(cfg.concurrency or [1]), 1, 4096),
                                   ("--request-rate-range", max(cfg.request_rates or [1]), 1e-3, 1e5)):
        if not low <= value <= high:
            raise InputError(f"{name}: {value} is outside {low:g}..{high:g}")
    if not cfg.users:
        raise InputError("--users: no users to send")
    pad = -len(cfg.users) % cfg.batch_size          # whole requests only, so perf_analyzer -b B groups alike
    cfg.users = list(cfg.users) + list(cfg.users[:pad])
    return asyncio.run(_run(cfg, progress))


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def format_table(report: BenchReport) -> str:
    """One row per level: achieved req/s, latency percentiles (ms), errors, the load generator's CPU
    ms per request, the server's time in the ensemble per request (ms) and, per step, queue+compute
    ms per request (Triton statistics, deltas over the window)."""
    cfg = report.config
    head = ["concurrency" if cfg.concurrency else "req/s sched", "req/s"] + \
           (["users/s"] if cfg.batch_size > 1 else []) + \
           ["p50 ms", "p90 ms", "p95 ms", "p99 ms", "errors", "client cpu ms", "server ms", *report.steps]
    rows = []
    for lv in report.levels:
        cells = [f"{lv.level:g}", f"{lv.throughput_rps:.1f}"]
        cells += [f"{lv.throughput_rps * cfg.batch_size:.1f}"] if cfg.batch_size > 1 else []
        cells += [f"{lv.latency_ms[p]:.1f}" for p in ("p50", "p90", "p95", "p99")]
        cells += [str(lv.errors), f"{lv.client_cpu_ms:.2f}"]
        for m in [cfg.model, *report.steps]:
            s = lv.steps.get(m)
            cells.append("-" if s is None or not s["requests"] else f"{s['total_ms']:.2f}" if m == cfg.model
                         else f"{s['queue_ms']:.2f}+{s['compute_ms']:.2f}")
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{cfg.protocol} {cfg.url}, batch {cfg.batch_size}, top {cfg.k}, {cfg.measurement_interval_s:g} s "
                 f"per level after {cfg.warmup_s:g} s warm-up. server ms: time in `{cfg.model}` per request; step "
                 "columns: queue+compute ms per request (Triton statistics over the window)")
    lines += [f"first error at {lv.mode} {lv.level:g}: {lv.first_error}" for lv in report.levels if lv.first_error]
    return "\n".join(lines)


def write_reports(report: BenchReport, out_dir: Path) -> dict[str, str]:
    """Write the JSON, the latency-vs-throughput PNG and the perf_analyzer input data; returns paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench_serve_{report.config.protocol}"
    paths = {"json": out_dir / f"{stem}.json", "png": out_dir / f"{stem}.png",
             "input_data": out_dir / f"{stem}_input_data.json"}
    write_json(paths["input_data"], perf_analyzer_input_data(report.config.users, report.config.k, report.input_dims))
    files = {k: str(v) for k, v in paths.items()}
    body = {"tool": "recstack bench serve", "created_unix_s": time.time(), "config": asdict(report.config),
            "steps": report.steps, "levels": [asdict(lv) for lv in report.levels], "files": files,
            "perf_analyzer_commands": perf_analyzer_commands(report, paths["input_data"])}
    write_json(paths["json"], _nan_to_none(body))
    _plot(report, paths["png"])
    return files


def _plot(report: BenchReport, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cfg = report.config
    x = [lv.throughput_rps for lv in report.levels]
    fig, ax = plt.subplots(figsize=(7, 4))
    for p, style in (("p50", "o-"), ("p95", "s--")):
        ax.plot(x, [lv.latency_ms[p] for lv in report.levels], style, label=p)
    tag = "c" if cfg.concurrency else "r"
    for lv in report.levels:
        ax.annotate(f"{tag}={lv.level:g}", (lv.throughput_rps, lv.latency_ms["p95"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{cfg.model} over {cfg.protocol}, batch {cfg.batch_size}, top {cfg.k}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` with subcommand ``serve``."""
    bench = subparsers.add_parser("bench", help="load tests")
    sub = bench.add_subparsers(dest="bench_command", metavar="ACTION")
    sub.required = True
    serve = sub.add_parser("serve", help="drive the running `recommend` ensemble with load (perf_analyzer style)",
                           description=__doc__.split("\n\n")[1])
    add_dataset_argument(serve)
    serve.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    serve.add_argument("--url", default=None, help="server host:port (default 127.0.0.1:8001 gRPC / :8000 HTTP); "
                                                   "loopback only unless --allow-remote")
    serve.add_argument("--allow-remote", action="store_true", help="accept a non-loopback --url")
    levels = serve.add_mutually_exclusive_group()
    levels.add_argument("--concurrency-range", default=None,
                        help="START:END:STEP requests in flight, or a list like 1,4,16 (default 1,4,16)")
    levels.add_argument("--request-rate-range", default=None, help="START:END:STEP requests/s (open loop)")
    serve.add_argument("--measurement-interval", type=float, default=5.0, help="seconds measured per level")
    serve.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    serve.add_argument("--batch-size", type=int, default=1, help="users per request (default 1)")
    serve.add_argument("-k", type=int, default=10, help="top_n per user (default 10)")
    serve.add_argument("--users", type=int, default=1000, help="test users drawn (default 1000)")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as failed")
    serve.add_argument("--max-in-flight", type=int, default=256, help="open-loop cap on requests in flight")
    serve.add_argument("--model", default=ENSEMBLE_NAME, help=f"ensemble to load (default {ENSEMBLE_NAME})")
    serve.add_argument("--out", type=Path, default=None, help="report folder (default runs/<dataset>/reports)")
    serve.set_defaults(handler=_bench_serve)
    dash = sub.add_parser("dashboard", help="load through the gateway and a PNG of its and Triton's metrics",
                          description="Drive the running gateway (recommendations and events) while scraping its "
                                      "/metrics and Triton's; write a six-panel PNG dashboard snapshot.")
    add_dataset_argument(dash)
    dash.add_argument("--gateway-url", default="http://127.0.0.1:8080", help="the gateway (loopback only)")
    dash.add_argument("--triton-metrics-url", default="http://127.0.0.1:8002/metrics",
                      help="Triton's metrics endpoint ('' to leave Triton out)")
    dash.add_argument("--seconds", type=float, default=30.0, help="how long to record (default 30)")
    dash.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (default 1)")
    dash.add_argument("--rate", type=float, default=50.0, help="recommendation requests/s to send (0: none)")
    dash.add_argument("--events-per-second", type=int, default=200, help="events/s to post (0: none)")
    dash.add_argument("--out", type=Path, default=None, help="report folder (default runs/<dataset>/reports)")
    add_progress_argument(dash)
    dash.set_defaults(handler=_bench_dashboard)


def _bench_dashboard(args: argparse.Namespace) -> int:
    import os

    from recstack.serving.dashboard import GatewayLoad, plot, record, summary

    paths = RunPaths.for_dataset(args.dataset)
    check_target(args.gateway_url)
    if args.triton_metrics_url:
        check_target(args.triton_metrics_url.split("/metrics")[0])
    if not 1 <= args.seconds <= 3600 or not 0.1 <= args.interval <= args.seconds:
        raise InputError("--seconds: 1..3600 and --interval: 0.1..seconds")
    users = draw_users(paths, 1000, 0)
    items = pd.read_parquet(paths.features / "popularity.parquet")["item_key"].astype(np.int64).tolist()[:500]
    progress = print if args.progress else None
    with GatewayLoad(args.gateway_url, users, items, args.rate, args.events_per_second,
                     api_key=os.environ.get("RECSTACK_API_KEY")) as load:
        snap = record(f"{args.gateway_url.rstrip('/')}/metrics", args.triton_metrics_url or None, args.seconds,
                      args.interval, progress)
    out = (args.out or paths.reports) / "bench_dashboard.png"
    plot(snap, out, title=f"recstack gateway + Triton, {args.dataset}: {args.rate:g} req/s, "
                          f"{args.events_per_second} events/s")
    print(" ".join(f"{k}={v}" for k, v in {**summary(snap), **{f"sent_{k}": v for k, v in load.sent.items()}}.items()))
    print(f"dashboard: {out}")
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    if not 1 <= args.users <= 1_000_000:
        raise InputError(f"--users: {args.users} is outside 1..1000000")
    paths = RunPaths.for_dataset(args.dataset)
    check_target(args.url or "127.0.0.1:1", args.allow_remote)   # refuse a remote target before any work
    default_port = DEFAULT_GRPC_PORT if args.protocol == "grpc" else DEFAULT_HTTP_PORT
    rates = parse_range(args.request_rate_range, "--request-rate-range", float) if args.request_rate_range else None
    conc = None if rates else parse_range(args.concurrency_range or "1,4,16", "--concurrency-range", int)
    cfg = BenchConfig(url=args.url or f"127.0.0.1:{default_port}", users=draw_users(paths, args.users, args.seed),
                      protocol=args.protocol, concurrency=conc, request_rates=rates, k=args.k,
                      batch_size=args.batch_size, measurement_interval_s=args.measurement_interval,
                      warmup_s=args.warmup, timeout_s=args.timeout, max_in_flight=args.max_in_flight,
                      model=args.model, allow_remote=args.allow_remote)
    print(f"bench serve: {args.protocol} {cfg.url}, {len(cfg.users)} users of {args.dataset}", flush=True)
    report = bench_serve(cfg, progress=True)
    files = write_reports(report, args.out or paths.reports)
    print(format_table(report))
    print("wrote " + ", ".join(files.values()))
    return 1 if any(lv.errors for lv in report.levels) else 0
