"""Seconds to build the ranker's multi-source training pool (``build_training_pool``) on a prepared run.

The pool's cost does not depend on the two-tower's weights, so fixed random unit embeddings stand
in for them (the user embeddings of the rows are timed apart by ``recstack train``). Prepare the run
first (``recstack data prepare --dataset ml-1m`` and ``recstack workflow fit --dataset ml-1m`` with
the same ``RECSTACK_HOME``), then::

    python benchmarks/training_pool.py --dataset ml-1m --rows 100000 [--no-leave-user-out] [--device cuda]

prints the candidate sources' build time, the pool's seconds for the sampled rows (extrapolated to
every training row) and the cross features' milliseconds per training step (240 rows x 17 items).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from recstack.models.candidate_pool import build_training_pool, own_item_keys
from recstack.models.candidates import SourceConfig
from recstack.models.data import load_training_data
from recstack.models.dlrm_training import build_candidate_sources
from recstack.paths import RunPaths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--rows", type=int, default=100_000, help="sampled positive rows (0: every train row)")
    parser.add_argument("--no-leave-user-out", action="store_true")
    parser.add_argument("--device", default="cpu", help="where the two-tower top-K runs")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = RunPaths.for_dataset(args.dataset)
    data = load_training_data(paths)
    cfg = replace(SourceConfig(), leave_user_out=not args.no_leave_user_out)
    start = time.perf_counter()
    sources = build_candidate_sources(paths, data, cfg)
    sources_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    rows = data.train
    n = len(rows.items)
    pos = np.arange(n) if args.rows in (0, None) or args.rows >= n else np.sort(rng.choice(n, args.rows, replace=False))
    user_emb = rng.standard_normal((len(pos), 64)).astype(np.float32)
    user_emb /= np.linalg.norm(user_emb, axis=1, keepdims=True)
    item_emb = rng.standard_normal((data.n_items, 64)).astype(np.float32)
    item_emb /= np.linalg.norm(item_emb, axis=1, keepdims=True)
    knn_keys = own_item_keys(rows.users, rows.items, data.n_items) if cfg.leave_user_out else None
    start = time.perf_counter()
    pool = build_training_pool(sources, user_emb, item_emb, rows.users[pos], rows.history[pos], rows.items[pos],
                               rows.times[pos], own_item_keys(rows.users, rows.items, data.n_items),
                               np.random.default_rng(0), knn_keys=knn_keys, device=args.device)
    pool_s = time.perf_counter() - start
    b = np.arange(min(240, len(pos)))
    items = np.where(pool.negatives[b, :17] != 0, pool.negatives[b, :17], 2).astype(np.int64)
    start = time.perf_counter()
    for _ in range(20):
        pool.features(sources, b, items, rows.history[pos[b]], rows.times[pos[b]], pool.negative_sources[b, :17])
    step_ms = (time.perf_counter() - start) / 20 * 1000
    print(f"{args.dataset}: candidate sources {sources_s:.1f} s; pool {len(pos):,} rows {pool_s:.1f} s "
          f"(~{pool_s / len(pos) * n:.0f} s for {n:,} rows); features {step_ms:.1f} ms per step (240 x 17); "
          f"leave_user_out={cfg.leave_user_out}, device={args.device}, threads={args.threads}")


if __name__ == "__main__":
    main()
