"""Validation NDCG@10 of the sequence (sasrec) user tower with and without the time-gap input,
same data, seed and epochs (the model-selection metric of training; the test split is not read).

    PYTHONPATH=. python3 benchmarks/time_gaps_quality.py --dataset ml-100k --epochs 8 --seed 0

Needs a run whose data and workflow stages are done (``recstack run --dataset ml-100k`` or
``recstack data prepare`` + ``recstack workflow fit``). Prints one line per variant and the JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from recstack.models.data import load_training_data
from recstack.models.sequence_training import fit_sequence_two_tower
from recstack.models.two_tower import TwoTowerConfig
from recstack.paths import RunPaths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_training_data(RunPaths.for_dataset(args.dataset))
    base = TwoTowerConfig(user_encoder="sasrec")
    results = {}
    for name, cfg in (("time_gaps", replace(base, time_gaps=True)), ("no_time_gaps", replace(base, time_gaps=False))):
        start = time.perf_counter()
        _, out = fit_sequence_two_tower(data, cfg, epochs=args.epochs, lr=cfg.sequence_lr, seed=args.seed,
                                        progress=False)
        scores = [round(r["valid_ndcg@10"], 4) for r in out["history"]]
        results[name] = {"best_valid_ndcg@10": max(scores), "per_epoch": scores, "best_epoch": out["best_epoch"],
                         "seconds": round(time.perf_counter() - start, 1)}
        print(name, results[name], flush=True)
    print(json.dumps({"dataset": args.dataset, "epochs": args.epochs, "seed": args.seed, **results}))


if __name__ == "__main__":
    main()
