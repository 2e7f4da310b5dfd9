"""The 1M-item row of issue 7: a synthetic ~1M-item catalogue, 128-d two-tower embeddings, 200
candidates ranked by the DLRM, served by the real tritonserver (python backend, the fused
``recommend_steps`` model) and, in the same run, the same chain called in this process.

    python benchmarks/million_items.py --home /tmp/m1home            # build the run, then measure
    python benchmarks/million_items.py --home /tmp/m1home --reuse    # measure an existing run again

Building (skipped with ``--reuse`` for every stage whose output exists) runs the ``recstack``
commands it prints: ``data synth`` (uniform item popularity so that ~5 interactions per item
put every item of the catalogue into the training vocabulary), ``workflow fit``,
``features build`` (Feast, SQLite online store), ``train`` (128-d, one epoch on a sample of the
training rows: quality is not what this row measures, latency and recall are), ``index build``
(IVF-Flat) and ``export --top-k 200``.

Measured, in this order, on the same machine:

1. recall of the served index against exact search (FAISS Flat over the same item embeddings)
   with **real user-tower queries**: the test users' embeddings as the serving chain computes
   them (online-store features and history -> user tower), for each nprobe of ``--nprobes``:
   recall@100 and one-query search time (CPU ``thread_time``, ms); the served nprobe's row is the
   one reported; recall@K of the served search (``top_k`` with the user's seen items excluded,
   as the ``retrieve`` step asks) too;
2. the chain in-process (:func:`recstack.ensembles.run_in_process`'s ``ChainStep``), one user
   at a time: total and per-step ms;
3. tritonserver (``recstack.serving.server.start_server``) driven by ``recstack bench serve``'s
   load generator (gRPC, closed loop, the same users): req/s and p50/p95/p99 per concurrency
   level; the RSS of tritonserver and of its python stub processes after the load;
4. the chain in-process again (to show drift from other work on a shared machine).

Triton's overhead is the ratio of the served p50 (p95) at concurrency 1 to the in-process p50
(p95) of step 2. ``uptime`` is recorded before and after: on a shared machine the load average
says how much other work ran. Writes ``runs/<dataset>/reports/million_items_<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recstack.io import read_json, write_json
from recstack.paths import RunPaths


def recstack_cmd(*args: str) -> list[str]:
    """The ``recstack`` console script next to this interpreter (the project's venv)."""
    return [str(Path(sys.executable).with_name("recstack")), *args]


def uptime() -> str:
    """``uptime``'s line: the machine's load averages (1, 5, 15 min) at this moment."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def run_command(cmd: list[str], env: dict[str, str], log: list[dict[str, Any]]) -> None:
    """Run one build command under ``nice -n 5``, echoing it; record its wall seconds in ``log``."""
    shown = " ".join(shlex.quote(c) for c in [Path(cmd[0]).name, *cmd[1:]])
    print(f"\n$ {shown}", flush=True)
    start = time.perf_counter()
    subprocess.run(["nice", "-n", "5", *cmd], env=env, check=True)
    log.append({"command": shown, "wall_s": round(time.perf_counter() - start, 1)})


def build(paths: RunPaths, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the build stages whose outputs are missing (all of them without ``--reuse``)."""
    env = dict(os.environ, RECSTACK_HOME=str(args.home))
    ds = ["--dataset", args.dataset]
    stages = [
        (paths.data / "test.parquet",
         ["data", "synth", "--name", args.dataset, "--rows", str(args.rows), "--users", str(args.users),
          "--items", str(args.items), "--item-alpha", "0", "--user-alpha", str(args.user_alpha), "--split"]),
        (paths.workflow / "workflow.json", ["workflow", "fit", *ds]),
        (paths.feature_repo / "feature_store.yaml", ["features", "build", *ds]),
        (paths.models / "dlrm" / "dlrm.onnx",
         ["train", *ds, "--embedding-dim", str(args.dim), "--epochs", "1", "--max-train-rows", str(args.train_rows),
          "--valid-users", str(args.valid_users), "--hard-negatives", "0"]),
        (paths.index / "index.json",
         ["index", "build", *ds, "--kind", "ivf_flat", "--nlist", str(args.nlist), "--nprobe", str(args.nprobe)]),
        (paths.triton_repo / "recommend" / "config.pbtxt", ["export", *ds, "--top-k", str(args.top_k)]),
    ]
    def index_differs() -> bool:  # a --reuse run asked for other index parameters than the built ones
        meta = read_json(paths.index / "index.json")
        return (meta.get("kind"), meta.get("nlist"), meta.get("nprobe")) != ("ivf_flat", args.nlist, args.nprobe)

    log: list[dict[str, Any]] = []
    rebuild = not args.reuse
    for output, cmd in stages:
        if rebuild or not output.exists() or (output == paths.index / "index.json" and index_differs()):
            rebuild = True  # every later stage reads this one's output
            run_command(recstack_cmd(*cmd), env, log)
    return log


# ----------------------------------------------------------------------------- in-process chain

def exported_chain(paths: RunPaths) -> tuple[Any, int]:
    """The served version of the exported ``recommend_steps`` built in this process by the same
    :meth:`recstack.ensembles.python_model.TritonPythonModel.initialize` that tritonserver's python
    backend calls (its config, ``recstack_step.json``, artifact files, and the environment
    ``recstack serve`` gives it). Returns ``(its ChainStep, the version)``."""
    from google.protobuf.json_format import MessageToDict

    from recstack.ensembles.graph import FUSED_NAME
    from recstack.ensembles.python_model import TritonPythonModel
    from recstack.ensembles.repo_runner import read_model_config, served_version
    from recstack.serving.server import serving_environment

    model_dir = paths.triton_repo / FUSED_NAME
    config = read_model_config(model_dir)
    version = served_version(model_dir, config)
    os.environ.update(serving_environment(paths.feature_repo))
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps(MessageToDict(config, preserving_proto_field_name=True)),
                      "model_repository": str(model_dir), "model_version": str(version), "model_name": FUSED_NAME})
    return model.step, version


def timed_chain(chain: Any, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``chain.execute(inputs)`` (a :class:`recstack.ensembles.chain.ChainStep`), step by step as it
    runs them, with each step's wall ms."""
    tensors, times = dict(inputs), {}
    for op, step in zip(chain.ops, chain.steps):
        start = time.perf_counter()
        tensors.update(step.execute({name: tensors[name] for name in op["inputs"] if name in tensors}))  # optional ones too
        times[op["name"]] = (time.perf_counter() - start) * 1e3
    return {name: tensors[name] for name in chain.outputs}, times


def in_process(chain: Any, users: list[int], top_n: int) -> dict[str, Any]:
    """One user at a time through the chain: total ms (``chain.execute``) and per-step ms (a second,
    timed pass); p50 / p95 / mean of each."""
    def request(user: int) -> dict[str, np.ndarray]:
        return {"user_id": np.array([[user]], np.int64), "top_n": np.array([[top_n]], np.int32)}

    for user in users[:5]:
        chain.execute(request(user))  # warm-up: first-call allocations, onnxruntime arenas
    total = []
    for user in users:
        start = time.perf_counter()
        chain.execute(request(user))
        total.append((time.perf_counter() - start) * 1e3)
    steps: dict[str, list[float]] = {}
    for user in users:
        for name, ms in timed_chain(chain, request(user))[1].items():
            steps.setdefault(name, []).append(ms)
    return {"total": summary(np.array(total)), "steps": {n: summary(np.array(v)) for n, v in steps.items()}}


def summary(ms: np.ndarray) -> dict[str, float]:
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "n": int(ms.size)}


# ----------------------------------------------------------------------------- recall

def served_queries(chain: Any, users: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """User embeddings [U, d] and seen-item lists as the serving chain computes them (its steps up to
    the user tower: request context, online-store features and history -> user tower), batched."""
    out: dict[str, np.ndarray] = {"user_id": np.array(users, np.int64).reshape(-1, 1)}
    for op, step in zip(chain.ops, chain.steps):
        out.update(step.execute({name: out[name] for name in op["inputs"] if name in out}))
        if "user_embedding" in out:
            break
    seen = [row[row != 0] for row in out["seen_items"]]
    known = out["user_known"][:, 0].astype(bool)
    return out["user_embedding"][known], [s for s, k in zip(seen, known) if k]


def recall_scan(paths: RunPaths, index: Any, queries: np.ndarray, seen: list[np.ndarray], k: int, top_k: int,
                nprobes: list[int]) -> dict[str, Any]:
    """Recall of ``index`` against exact inner-product search over the run's item embeddings.

    ``queries`` [U, d] float32, ``seen[u]`` encoded item ids. Per nprobe: recall@``k`` (no exclusions)
    and the CPU ms (``thread_time``, median and p95 over the queries) of one query for ``top_k``
    results; at the index's own nprobe also recall@``top_k`` with each user's seen items excluded
    (what the ``retrieve`` step asks FAISS for).
    """
    import faiss

    from recstack.retrieval import load_item_embeddings
    from recstack.retrieval.arrays import select_top

    emb, ids = load_item_embeddings(paths)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(emb.shape[1]))
    flat.add_with_ids(emb, ids)
    del emb

    fetch = max(k, top_k + max(len(s) for s in seen))
    scores, found = flat.search(queries, fetch)  # exact: one search gives both references
    exact_k = found[:, :k]
    exact_served = select_top(found, scores, top_k, seen)[0]
    rows = []
    for nprobe in nprobes:
        got = index.search(queries, k, nprobe=nprobe)[0]
        cpu = []
        for q in queries:
            t0 = time.thread_time()
            index.search(q[None, :], top_k, nprobe=nprobe)
            cpu.append((time.thread_time() - t0) * 1e3)
        rows.append({"nprobe": nprobe, f"recall@{k}": overlap(got, exact_k),
                     "cpu_ms_p50": float(np.median(cpu)), "cpu_ms_p95": float(np.percentile(cpu, 95))})
    served = index.search(queries, top_k, exclude=seen)[0]
    return {"queries": len(queries), "k": k, "rows": rows, "served_nprobe": index.nprobe,
            f"served_recall@{top_k}_seen_excluded": overlap(served, exact_served)}


def overlap(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |approx ∩ exact| / |exact| (ids; -1 padding never counts)."""
    hits = [np.intersect1d(a[a >= 0], e[e >= 0]).size / max((e >= 0).sum(), 1) for a, e in zip(approx, exact)]
    return float(np.mean(hits))


# ----------------------------------------------------------------------------- server

def server_memory(pid: int) -> dict[str, float]:
    """RSS in MiB of tritonserver (``pid``) and of each of its children (the python-backend stubs)."""
    import psutil

    proc = psutil.Process(pid)
    out = {"tritonserver": proc.memory_info().rss / 2**20}
    for child in proc.children(recursive=True):
        try:
            out[f"{child.name()}[{child.pid}]"] = child.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


def serve_and_load(paths: RunPaths, users: list[int], levels: list[int], seconds: float, top_n: int
                   ) -> tuple[Any, dict[str, float], float]:
    """Start tritonserver on the run's repository, run the load levels; (report, memory, startup s)."""
    from recstack.serving import bench
    from recstack.serving.server import start_server

    server = start_server(paths.triton_repo, paths.feature_repo, log_path=paths.root / "tritonserver_m1.log")
    try:
        report = bench.bench_serve(bench.BenchConfig(url=server.grpc_url, users=users, concurrency=levels, k=top_n,
                                                     measurement_interval_s=seconds, warmup_s=2.0), progress=True)
        memory = server_memory(server.pid)
    finally:
        server.stop()
    return report, memory, server.startup_seconds


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="RECSTACK_HOME of the run (runs/, triton_repo/)")
    parser.add_argument("--dataset", default="m1")
    parser.add_argument("--reuse", action="store_true", help="keep every stage whose output exists")
    parser.add_argument("--rows", type=int, default=5_000_000, help="synthetic interactions")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=1_010_000,
                        help="items generated (those that reach the train vocabulary form the catalogue)")
    parser.add_argument("--user-alpha", type=float, default=0.3, help="user activity power law")
    parser.add_argument("--dim", type=int, default=128, help="two-tower embedding dimension")
    parser.add_argument("--train-rows", type=int, default=100_000, help="training rows sampled (one epoch)")
    parser.add_argument("--valid-users", type=int, default=2_000)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--nprobe", type=int, default=96,
                        help="served nprobe (saved in index.json by `index build`; default 96: the smallest of the "
                             "scan with recall@100 >= 0.95 on this run's embeddings, stop 12; 64 was at stop 7)")
    parser.add_argument("--nprobes", default="8,16,32,48,64,96,128", help="nprobe values of the recall scan")
    parser.add_argument("--top-k", type=int, default=200, help="candidates retrieved and ranked")
    parser.add_argument("-k", "--top-n", type=int, default=10, help="results per request")
    parser.add_argument("--levels", default="1,4", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement interval per level")
    parser.add_argument("--bench-users", type=int, default=1000, help="test users in the load")
    parser.add_argument("--recall-queries", type=int, default=1000, help="users whose queries the recall uses")
    parser.add_argument("--in-process-users", type=int, default=300)
    args = parser.parse_args()
    args.home = args.home.resolve()
    os.environ["RECSTACK_HOME"] = str(args.home)
    paths = RunPaths.for_dataset(args.dataset, home=args.home)
    started = time.time()
    commands = build(paths, args)
    if commands:
        print("\nbuild: " + ", ".join(f"{c['command'].split()[1]} {c['command'].split()[2]} {c['wall_s']:.0f} s"
                                      for c in commands), flush=True)

    from recstack.serving import bench

    users = bench.draw_users(paths, args.bench_users, seed=0)
    load_before = uptime()
    print(f"\nuptime before: {load_before}", flush=True)

    chain, version = exported_chain(paths)
    names = [op["name"] for op in chain.ops]
    top_k = int(chain.ops[names.index("retrieve")]["params"]["top_k"])
    if top_k != args.top_k:
        raise SystemExit(f"{paths.triton_repo}: exported with top_k {top_k}, not --top-k {args.top_k} "
                         "(run without --reuse, or `recstack export --top-k ...`)")
    retrieve = chain.steps[names.index("retrieve")]
    index_meta = dict(retrieve.index.meta, nprobe=retrieve.index.nprobe)  # the served index's own index.json
    queries, seen = served_queries(chain, users[: args.recall_queries])
    recall = recall_scan(paths, retrieve.index, queries, seen, 100, args.top_k,
                         [int(x) for x in args.nprobes.split(",")])
    for row in recall["rows"]:
        print(f"nprobe {row['nprobe']:>4}: recall@100 {row['recall@100']:.4f}, one query "
              f"{row['cpu_ms_p50']:.2f} ms CPU (p95 {row['cpu_ms_p95']:.2f})", flush=True)
    print(f"served (nprobe {recall['served_nprobe']}, top {args.top_k}, seen items excluded): recall@{args.top_k} "
          f"{recall[f'served_recall@{args.top_k}_seen_excluded']:.4f}", flush=True)

    base = in_process(chain, users[: args.in_process_users], args.top_n)
    print(f"in-process: p50 {base['total']['p50']:.2f} ms, p95 {base['total']['p95']:.2f} ms; per step p50: "
          + ", ".join(f"{n} {s['p50']:.2f}" for n, s in base["steps"].items()), flush=True)
    chain.close()
    del chain, retrieve

    levels = [int(x) for x in args.levels.split(",")]
    report, memory, startup_s = serve_and_load(paths, users, levels, args.seconds, args.top_n)
    print(bench.format_table(report), flush=True)

    chain, _ = exported_chain(paths)
    after = in_process(chain, users[: args.in_process_users], args.top_n)
    chain.close()
    load_after = uptime()

    n_items = int(index_meta["count"])
    c1 = next((lv for lv in report.levels if lv.level == 1), report.levels[0])
    served_recall = next(r for r in recall["rows"] if r["nprobe"] == recall["served_nprobe"]) \
        if any(r["nprobe"] == recall["served_nprobe"] for r in recall["rows"]) else None
    stubs = {k: v for k, v in memory.items() if k != "tritonserver"}
    print("\n| catalogue | d | K ranked | index | level | req/s | p50 ms | p95 ms | p99 ms | errors | "
          "in-process p50 / p95 ms | p50 ratio | p95 ratio | recall@100 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for lv in report.levels:
        lat = lv.latency_ms
        print(f"| {n_items:,} | {index_meta['dimension']} | {args.top_k} | IVF-Flat nlist {index_meta['nlist']} "
              f"nprobe {index_meta['nprobe']} | c{lv.level:g} | {lv.throughput_rps:.1f} | {lat['p50']:.1f} | "
              f"{lat['p95']:.1f} | {lat['p99']:.1f} | {lv.errors} | {base['total']['p50']:.1f} / "
              f"{base['total']['p95']:.1f} | {lat['p50'] / base['total']['p50']:.2f}x | "
              f"{lat['p95'] / base['total']['p95']:.2f}x | "
              f"{served_recall['recall@100'] if served_recall else float('nan'):.4f} |")
    print(f"\nin-process after the load: p50 {after['total']['p50']:.2f} ms, p95 {after['total']['p95']:.2f} ms")
    print("memory (RSS MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in memory.items()))
    print(f"tritonserver ready in {startup_s:.1f} s; uptime before: {load_before}; after: {load_after}")
    target = c1.latency_ms["p95"] <= 25.0 and (served_recall or {}).get("recall@100", 0.0) >= 0.95
    print(f"issue 7 target (c1 p95 <= 25 ms, recall@100 >= 0.95): {'met' if target else 'NOT met'}")

    out = {
        "dataset": args.dataset, "home": str(args.home), "catalogue_items": n_items, "served_version": version,
        "dimension": int(index_meta["dimension"]), "top_k": args.top_k, "top_n": args.top_n,
        "index": {k: index_meta.get(k) for k in ("kind", "factory", "nlist", "nprobe", "count", "build_s")},
        "build_commands": commands, "recall": recall, "in_process_before": base, "in_process_after": after,
        "served": [{"level": lv.level, "req_s": lv.throughput_rps, "latency_ms": lv.latency_ms, "errors": lv.errors,
                    "steps": lv.steps} for lv in report.levels],
        "ratio_c1_p50": c1.latency_ms["p50"] / base["total"]["p50"],
        "ratio_c1_p95": c1.latency_ms["p95"] / base["total"]["p95"],
        "memory_rss_mib": memory, "python_stub_rss_mib": stubs, "startup_s": startup_s,
        "uptime_before": load_before, "uptime_after": load_after, "target_met": bool(target),
        "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/million_items.py", *sys.argv[1:]]),
    }
    paths.reports.mkdir(parents=True, exist_ok=True)
    target_path = paths.reports / f"million_items_{time.strftime('%Y%m%dT%H%M%S', time.gmtime(started))}.json"
    write_json(target_path, out)  # one file per run: a --reuse run keeps the build run's record
    print(f"wrote {target_path}")


if __name__ == "__main__":
    main()
