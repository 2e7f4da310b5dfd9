"""Seed spread of a run's quality: train + evaluate one prepared run with several seeds; mean and standard
deviation of every evaluation row's HR@10 / NDCG@10, and the training times.

    PYTHONPATH=. python3 benchmarks/seeds.py --dataset ml-1m                       # seeds 0, 1, 2
    PYTHONPATH=. python3 benchmarks/seeds.py --dataset ml-100k --config configs/smoke.yaml --seeds 0,1

The run must be prepared (``recstack data prepare`` + ``recstack workflow fit``: ``runs/<ds>/data``,
``workflow``, ``features``). Each seed trains in its own folder ``<out>/seed<k>/runs/<ds>/`` (the
data, workflow and features folders are links to the prepared run's, whose models stay untouched;
``<work>`` defaults to ``runs/<ds>-seeds``), with the config file's settings (default: the recipe), no
ONNX export, then ``recstack evaluate``'s :func:`recstack.evaluation.evaluate_run` on the test split.
The table (markdown) and every number (JSON) go to ``<out>/seeds.md`` / ``seeds.json``, rewritten after
every seed. Each finished seed also leaves ``<work>/seed<k>/seed_result.json`` (its numbers, the training
config and the commit); a later invocation with the same config (and ``--epochs``) reuses it instead of
training again, so seeds can be run one at a time (several processes, several sessions, a short GPU
lease) and tabled together; ``--retrain`` ignores them. Reused seeds are named in the table with their
commit. ``<out>`` defaults to ``$OUT/seeds`` when ``$OUT`` is set, else ``<work>``. Standard
deviations are over the seeds (n - 1 in the denominator).

Needs torch, numpy, pandas, pyarrow, PyYAML, tqdm and matplotlib only (no FAISS, Feast or Triton), so it
runs with a bare PyTorch image's python3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("hr@10", "ndcg@10")
RESULT_FILE = "seed_result.json"


def git_commit() -> str:
    """The checkout's commit (``+dirty`` when tracked files under recstack/ differ from it), or ``unknown``
    outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", "recstack"]).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def reusable_result(home: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The seed's earlier result under ``home`` when it was trained with the same ``settings``
    (config and epochs override), else None."""
    path = home / RESULT_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved if saved.get("settings") == json.loads(json.dumps(settings, default=str)) else None


def seed_home(work: Path, dataset: str, source: Path, seed: int) -> Path:
    """``<work>/seed<k>`` with ``runs/<ds>/{data,workflow,features}`` linked to the prepared run."""
    home = work / f"seed{seed}"
    root = home / "runs" / dataset
    root.mkdir(parents=True, exist_ok=True)
    for name in ("data", "workflow", "features"):
        link = root / name
        if link.is_symlink() or link.exists():
            continue
        link.symlink_to((source / name).resolve(), target_is_directory=True)
    return home


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per evaluation row and metric: mean, std and the per-seed values; the same for training seconds."""
    rows: dict[str, dict[str, Any]] = {}
    names = [n for n in runs[0]["evaluation"] if all(n in r["evaluation"] for r in runs)]
    for name in names:
        rows[name] = {}
        for metric in METRICS:
            values = [r["evaluation"][name].get(metric) for r in runs]
            if all(isinstance(v, (int, float)) for v in values):
                m, s = mean_std(values)
                rows[name][metric] = {"mean": m, "std": s, "values": values}
    times = {"train_wall_s": [r["train"]["wall_s"] for r in runs]}
    for model in ("two_tower", "dlrm"):
        times[f"{model}_wall_s"] = [r["train"][model]["wall_s"] for r in runs]
    return {"rows": rows, "times": {k: {"mean": mean_std(v)[0], "std": mean_std(v)[1], "values": v}
                                    for k, v in times.items()}}


def markdown(dataset: str, seeds: list[int], summary: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    lines = [f"{dataset}, test split, seeds {', '.join(map(str, seeds))} (mean ± std over seeds)", "",
             "| row | HR@10 | NDCG@10 | HR@10 per seed |", "|---|---|---|---|"]
    for name, metrics in summary["rows"].items():
        if not all(m in metrics for m in METRICS):
            continue
        hr, nd = metrics["hr@10"], metrics["ndcg@10"]
        lines.append(f"| {name} | {hr['mean']:.4f} ± {hr['std']:.4f} | {nd['mean']:.4f} ± {nd['std']:.4f} | "
                     + " / ".join(f"{v:.4f}" for v in hr["values"]) + " |")
    lines += ["", "| training | mean s | std s | per seed |", "|---|---|---|---|"]
    for name, t in summary["times"].items():
        lines.append(f"| {name} | {t['mean']:.1f} | {t['std']:.1f} | " + " / ".join(f"{v:.1f}" for v in t["values"])
                     + " |")
    epochs = ["/".join(f"{r['train'][m]['epochs_run']}" for r in runs) for m in ("two_tower", "dlrm")]
    stops = sorted({r["train"][m]["stop_reason"] for r in runs for m in ("two_tower", "dlrm")})
    commits = " / ".join(str(r.get("commit", "unknown")) for r in runs)
    lines += ["", (f"epochs run per seed: two-tower {epochs[0]}, DLRM {epochs[1]}; stop reasons: {', '.join(stops)}; "
                   f"device {runs[0]['train']['device']}; commit per seed: {commits}")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a prepared run under runs/ ($RECSTACK_HOME or .)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--config", default=None, help="training config file (default: the recipe)")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (default: the config's, auto)")
    parser.add_argument("--epochs", type=int, default=None, help="override both models' maximum epochs")
    parser.add_argument("--work", default=None, help="folder of the seeds' runs (default runs/<ds>-seeds)")
    parser.add_argument("--out", default=None, help="folder of the tables (default $OUT/seeds, else the work folder)")
    parser.add_argument("--retrain", action="store_true", help="train every seed even when its result is saved")
    parser.add_argument("--progress", action="store_true", help="show the training progress bars")
    args = parser.parse_args(argv)

    from recstack.errors import InputError
    from recstack.evaluation.evaluate import evaluate_run
    from recstack.models.recipe import train_all
    from recstack.models.train_config import TrainConfig, load_train_config
    from recstack.paths import RunPaths

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if not seeds or any(s < 0 for s in seeds):
            raise ValueError(args.seeds)
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers >= 0, got {args.seeds!r}")
    try:
        cfg = load_train_config(args.config) if args.config else TrainConfig()
    except InputError as exc:
        parser.error(str(exc))
    cfg = replace(cfg, onnx=False, **({"device": args.device} if args.device else {}))
    source = RunPaths.for_dataset(args.dataset)
    missing = [n for n in ("data", "workflow", "features") if not (source.root / n).is_dir()]
    if missing:
        parser.error(f"--dataset {args.dataset}: {source.root} lacks {', '.join(missing)} "
                     "(run `recstack data prepare` and `recstack workflow fit` first)")
    work = Path(args.work) if args.work else source.root.parent / f"{args.dataset}-seeds"
    out = Path(args.out) if args.out else (Path(os.environ["OUT"]) / "seeds" if os.environ.get("OUT") else work)
    settings = {"config": cfg.to_dict(), "epochs": args.epochs}
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        home = seed_home(work, args.dataset, source.root, seed)
        saved = None if args.retrain else reusable_result(home, settings)
        if saved is not None:
            run = saved["run"]
            print(f"[seed {seed}] reused {home / RESULT_FILE} (commit {saved['commit']})", flush=True)
        else:
            paths = RunPaths.for_dataset(args.dataset, home=home)
            print(f"[seed {seed}] training in {paths.root}", flush=True)
            commit = git_commit()
            train = train_all(paths, config=cfg, seed=seed, epochs=args.epochs, progress=args.progress)
            start = time.perf_counter()
            report = evaluate_run(paths, device=cfg.device, progress=args.progress)
            evaluation = {name: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
                          for name, metrics in report["models"].items()}
            run = {"seed": seed, "commit": commit, "train": {k: v for k, v in train.items() if k != "config"},
                   "evaluation": evaluation, "evaluate_s": round(time.perf_counter() - start, 2)}
            (home / RESULT_FILE).write_text(json.dumps({"settings": settings, "commit": commit, "run": run},
                                                       indent=2, default=str))
            print(f"[seed {seed}] trained in {train['wall_s']:.1f} s: " + ", ".join(
                f"{n} HR@10 {m.get('hr@10', float('nan')):.4f}" for n, m in evaluation.items()), flush=True)
        runs.append(run)
        text = write_tables(out, args.dataset, [r["seed"] for r in runs], cfg.to_dict(), runs)  # after every seed:
        # a run stopped by a time limit still leaves the seeds it finished
    print("\n" + text + f"\n\nwrote {out / 'seeds.md'} and seeds.json")
    return 0


def write_tables(out: Path, dataset: str, seeds: list[int], config: dict[str, Any],
                 runs: list[dict[str, Any]]) -> str:
    """Write ``seeds.json`` and ``seeds.md`` for the seeds done so far; returns the markdown."""
    summary = summarise(runs)
    text = markdown(dataset, seeds, summary, runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps({"dataset": dataset, "seeds": seeds, "config": config,
                                                "summary": summary, "runs": runs}, indent=2, default=str))
    (out / "seeds.md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    sys.exit(main())
