"""Serving load on one machine: the same run served three ways, against the same steps in-process.

    python benchmarks/serving_load.py --home /tmp/hm --dataset ml-100k --levels 1,4,16,64
    python benchmarks/serving_load.py --dataset ml-1m --levels 1,32 --seconds 6 --configs fused-sqlite

For each configuration (``fused-sqlite``: fused model + SQLite online store, ``fused-redis``,
``per-step-sqlite``: one model per step, ``preferred-sqlite``: ``--preferred-instance`` whatever
the default, ``one-instance-sqlite``: one instance per model) it exports the run with this
checkout's defaults into a temporary folder, starts a real tritonserver, drives it with `recstack bench serve`'s load
generator (gRPC, closed loop, real test users) and prints req/s and latency percentiles per
concurrency level; ``--rounds N`` repeats the configurations N times, interleaved, so that a
comparison between them sees the same drift of a shared host. The baseline is the same chain
called in this process, one user at a time: Triton's overhead is reported as the ratio of the served p50 at concurrency 1 to the in-process p50.
The load generator runs on the same cores as the server.

Each row also gives the CPU time per request (ms, user + system, from ``/proc``) of the load
generator, of tritonserver and of its python-backend stubs: unlike latency, CPU time barely moves
when other jobs share the cores, so it compares two code versions on a busy machine.

With ``--perf-analyzer`` each level is also driven by NVIDIA's perf_analyzer (the C++ client;
``scripts/install_perf_analyzer.sh`` puts it in the venv) on the same server with the same users
(`recstack bench serve`'s input data and command), and its row is printed under ours.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _redis import start_redis
from recstack.ensembles import export_ensemble, recommendation_graph, run_in_process
from recstack.paths import RunPaths
from recstack.serving import bench, procfs
from recstack.serving.server import start_server


CONFIGS = {"fused-sqlite": ("fused, SQLite", {}, "sqlite"), "fused-redis": ("fused, Redis", {}, "redis"),
           "per-step-sqlite": ("per step, SQLite", {"fuse": False}, "sqlite"),
           "preferred-sqlite": ("fused, SQLite, preferred instance", {"preferred_instance": True}, "sqlite"),
           "one-instance-sqlite": ("fused, SQLite, 1 instance", {"instances": 1}, "sqlite")}
"""--configs name -> (table label, export_ensemble options, online store)."""


def in_process_ms(paths: RunPaths, users: list[int], k: int) -> np.ndarray:
    graph, steps = recommendation_graph(paths), {}
    run_in_process(graph, {"user_id": np.array([[users[0]]], np.int64), "top_n": np.array([[k]], np.int32)}, steps)
    times = []
    for user in users:
        start = time.perf_counter()
        run_in_process(graph, {"user_id": np.array([[user]], np.int64), "top_n": np.array([[k]], np.int32)}, steps)
        times.append((time.perf_counter() - start) * 1e3)
    return np.array(times)


def group_cpu_ms(pgid: int) -> tuple[float, float]:
    """CPU ms (user + system) so far of process group ``pgid``: (tritonserver, its python-backend
    stubs). Processes that ended are not counted."""
    members = procfs.group_processes(pgid)
    return (sum(p.cpu_s for p in members if not p.is_stub) * 1e3, sum(p.cpu_s for p in members if p.is_stub) * 1e3)


def perf_analyzer_row(report: bench.BenchReport, folder: Path) -> tuple[float, float, float, float] | str:
    """Replay ``report``'s level with perf_analyzer (the command `bench serve` writes: windows of the
    same length; it reports three merged, any spread accepted, so a busy machine gives a row, not
    an error): (req/s, p50, p95, p99 ms), or its error text when it failed."""
    exe = Path(sys.prefix) / "bin" / "perf_analyzer"
    if not exe.is_file():
        return f"{exe} not found: run scripts/install_perf_analyzer.sh"
    files = bench.write_reports(report, folder)
    (command,) = bench.perf_analyzer_commands(report, Path(files["input_data"]))
    out = folder / "perf_analyzer.csv"
    run = subprocess.run([str(exe), *shlex.split(command)[1:], "--stability-percentage", "1000", "--max-trials", "3",
                          "-f", str(out)], check=False, capture_output=True, text=True)
    if run.returncode:
        return (run.stdout + run.stderr).strip().splitlines()[-1]
    (row,) = csv.DictReader(out.open())
    return (float(row["Inferences/Second"]), *(int(row[f"{p} latency"]) / 1e3 for p in ("p50", "p95", "p99")))


def redis_feature_repo(paths: RunPaths, folder: Path) -> tuple[Path, subprocess.Popen]:
    from recstack.features import build_feature_repo

    proc, url = start_redis(folder, appendfsync=None)
    repo = folder / "feature_repo"
    build_feature_repo(paths.features, repo, online_store="redis", redis_url=url)
    return repo, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("."))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement window per level")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--max-queue-delay-us", type=int, default=None,
                        help="dynamic-batching window of the exports (default: recstack export's)")
    parser.add_argument("--instances", type=int, default=None, help="instances per model (default: recstack export's)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of the configurations")
    parser.add_argument("--perf-analyzer", action="store_true",
                        help="also drive each level with NVIDIA's perf_analyzer (C++ client) and print its row")
    args = parser.parse_args()
    chosen = args.configs.split(",")
    if set(chosen) - set(CONFIGS):
        parser.error(f"--configs: {sorted(set(chosen) - set(CONFIGS))} not among {CONFIGS}")
    paths = RunPaths.for_dataset(args.dataset, home=args.home)
    users = bench.draw_users(paths, 500, seed=0)
    levels = [int(x) for x in args.levels.split(",")]

    base = in_process_ms(paths, users[:200], args.k)
    print(f"in-process chain, one user at a time: p50 {np.percentile(base, 50):.2f} ms, "
          f"p95 {np.percentile(base, 95):.2f} ms")

    tmp = Path(tempfile.mkdtemp(prefix="recstack-load-"))
    redis_proc = None
    export_options = {k: v for k, v in (("max_queue_delay_us", args.max_queue_delay_us),
                                        ("instances", args.instances)) if v is not None}
    rows, perf_rows = [], []
    try:
        repos = {config: export_ensemble(recommendation_graph(paths), tmp / config,
                                         **{**export_options, **CONFIGS[config][1]}) for config in chosen}
        for round_, config in [(r, c) for r in range(args.rounds) for c in chosen]:
            name, _, online = CONFIGS[config]
            name = f"{name} (round {round_ + 1})" if args.rounds > 1 else name
            if online == "redis" and redis_proc is None:
                redis_repo, redis_proc = redis_feature_repo(paths, tmp)
            server = start_server(repos[config], redis_repo if online == "redis" else paths.feature_repo)
            try:
                for level in levels:  # one level at a time: CPU per request per level
                    cpu0 = group_cpu_ms(server.pid)
                    report = bench.bench_serve(bench.BenchConfig(
                        url=server.grpc_url, users=users, concurrency=[level], k=args.k,
                        measurement_interval_s=args.seconds, warmup_s=1.0))
                    cpu = [(b - a) / max(report.levels[0].sent, 1) for a, b in zip(cpu0, group_cpu_ms(server.pid))]
                    print(f"\n== {name}\n{bench.format_table(report)}")
                    lv = report.levels[0]
                    rows.append((name, lv.level, lv.throughput_rps, lv.latency_ms["p50"], lv.latency_ms["p95"],
                                 lv.latency_ms["p99"], lv.errors, lv.client_cpu_ms, *cpu))
                    if args.perf_analyzer:
                        perf_rows.append((name, level, perf_analyzer_row(report, tmp / f"pa-{config}-{level}-{round_}")))
            finally:
                server.stop()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    base_p50 = float(np.percentile(base, 50))
    print("\n| configuration | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | p50 / in-process p50 "
          "| CPU ms/request: load generator, tritonserver, stubs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, level, rps, p50, p95, p99, errors, client, server_cpu, stubs in rows:
        print(f"| {name} | {level} | {rps:.0f} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {errors} | {p50 / base_p50:.2f}x "
              f"| {client:.2f}, {server_cpu:.2f}, {stubs:.2f} |")
    print(f"| in-process chain (baseline) | 1 | {1e3 / base.mean():.0f} | {base_p50:.1f} | "
          f"{np.percentile(base, 95):.1f} | {np.percentile(base, 99):.1f} | 0 | 1.00x | |")
    if perf_rows:
        print("\n| configuration | concurrency | load generator | req/s | p50 ms | p95 ms | p99 ms |\n"
              "|---|---|---|---|---|---|---|")
        ours = {(name, level): (rps, p50, p95, p99) for name, level, rps, p50, p95, p99, *_ in rows}
        for name, level, theirs in perf_rows:
            rps, p50, p95, p99 = ours[name, level]
            print(f"| {name} | {level} | recstack bench serve (Python, asyncio) | {rps:.0f} | {p50:.1f} | {p95:.1f} "
                  f"| {p99:.1f} |")
            print(f"| {name} | {level} | perf_analyzer 2.41.0 (C++) | " + (
                theirs if isinstance(theirs, str) else
                f"{theirs[0]:.0f} | {theirs[1]:.1f} | {theirs[2]:.1f} | {theirs[3]:.1f} |"))


if __name__ == "__main__":
    main()
