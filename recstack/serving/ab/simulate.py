"""`recstack ab simulate`: replay held-out interactions as users of many simulated A/B tests.

Behaviour model: each test user (leave-one-out test split: the item the user really chose next)
arrives once, is shown the top-``k`` list of their variant, and clicks when that list holds
their next item. Users arrive in the order of their test timestamps, spread over ``days``
equal daily cohorts. Each arm's list per user is computed once (the serving chain in process,
:func:`recstack.ensembles.graph.run_in_process`, or popularity with seen items removed); each
simulated experiment then only re-draws the assignment with its own salt
(:func:`~recstack.serving.ab.experiments.unit_hash`), so 1000 experiments take seconds.

Per experiment three decisions at level α: the fixed-horizon z-test (one look after the last
day), the same z-test looked at every day and stopped at the first p < α (naive peeking), and
the mSPRT always-valid p-value looked at every day. Under A/A (both arms the same) the share of
experiments declared significant is the false-positive rate; under A/B it is the power.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.paths import RunPaths
from recstack.serving.ab.experiments import unit_hash
from recstack.serving.ab.stats import (
    DEFAULT_TAU,
    msprt,
    two_proportion_z_test,
    wilson_interval,
)

ARMS = ("pipeline", "popularity")


@dataclass
class Replay:
    """Test users (raw ids, arrival order), their arrival day (0..days-1) and each arm's click [U] bool."""

    users: np.ndarray
    day: np.ndarray
    clicks: dict[str, np.ndarray]


def pipeline_lists(paths: RunPaths, users: np.ndarray, k: int, params: dict[str, float] | None = None,
                   batch: int = 64) -> np.ndarray:
    """[U, k] raw item ids the serving chain returns for ``users`` (in process, no Triton);
    ``params`` are extra request inputs (e.g. ``diversity_lambda``), checked against the chain's inputs."""
    from recstack.ensembles.graph import recommendation_graph, run_in_process

    graph = recommendation_graph(paths)
    specs = {s.name: s for s in graph.fused().inputs}
    unknown = sorted(set(params or {}) - set(specs))
    if unknown:
        raise InputError(f"params: {unknown} are not inputs of the serving chain ({sorted(specs)})")
    steps: dict[str, Any] = {}
    out = np.full((len(users), k), -1, np.int64)
    for start in range(0, len(users), batch):
        rows = users[start:start + batch].reshape(-1, 1).astype(np.int64)
        inputs = {"user_id": rows, "top_n": np.full((len(rows), 1), k, np.int32)}
        for name, value in (params or {}).items():
            inputs[name] = np.full((len(rows), 1), value, specs[name].dtype)
        ids = run_in_process(graph, inputs, steps)["item_ids"][:, :k]
        out[start:start + len(rows), :ids.shape[1]] = ids
    return out


def popularity_lists(paths: RunPaths, users: np.ndarray, k: int) -> np.ndarray:
    """[U, k] the most popular items (train + valid counts) each user has not interacted with."""
    popular = pd.read_parquet(paths.features / "popularity.parquet")["item_key"].to_numpy(np.int64)
    seen = pd.concat([pd.read_parquet(paths.data / f"{s}.parquet", columns=["user_id", "item_id"])
                      for s in ("train", "valid")])
    seen_by_user = seen.groupby("user_id")["item_id"].apply(set).to_dict()
    out = np.empty((len(users), k), np.int64)
    for row, user in enumerate(users.tolist()):
        mine = seen_by_user.get(user, set())
        out[row] = [i for i in popular[: k + len(mine)] if i not in mine][:k]
    return out


def build_replay(paths: RunPaths, arms: dict[str, dict[str, Any]], k: int = 10, days: int = 14) -> Replay:
    """Each arm's clicks per test user. ``arms``: ``{name: {"kind": "pipeline"|"popularity",
    "params": {...}}}`` (params: pipeline inputs)."""
    test = pd.read_parquet(paths.data / "test.parquet", columns=["user_id", "item_id", "timestamp"])
    test = test.sort_values(["timestamp", "user_id"], kind="stable").drop_duplicates("user_id")
    users = test["user_id"].to_numpy(np.int64)
    targets = test["item_id"].to_numpy(np.int64)
    day = np.minimum((np.arange(len(users)) * days) // max(len(users), 1), days - 1)
    clicks = {}
    for name, arm in arms.items():
        if arm.get("kind") not in ARMS:
            raise InputError(f"arm {name}: kind {arm.get('kind')!r} must be one of {ARMS}")
        lists = (popularity_lists(paths, users, k) if arm["kind"] == "popularity"
                 else pipeline_lists(paths, users, k, arm.get("params")))
        clicks[name] = (lists == targets[:, None]).any(axis=1)
    return Replay(users, day, clicks)


def assignments(users: np.ndarray, salt: str, share_b: float = 0.5) -> np.ndarray:
    """[U] bool: True = arm B, by the same sticky hash the gateway uses."""
    return np.fromiter((unit_hash(salt, u) >= 1 - share_b for u in users.tolist()), dtype=bool, count=len(users))


def run_experiments(users: np.ndarray, day: np.ndarray, clicks_a: np.ndarray, clicks_b: np.ndarray, runs: int,
                    alpha: float = 0.05, tau: float = DEFAULT_TAU, share_b: float = 0.5,
                    salt_prefix: str = "sim") -> dict[str, Any]:
    """``runs`` simulated experiments (salt ``f"{salt_prefix}-{r}"``): how many were declared
    significant by each decision rule, with Wilson intervals on those rates."""
    days = int(day.max()) + 1 if len(day) else 0
    counts = {"fixed": 0, "naive_peeking": 0, "sequential": 0}
    stop_days: dict[str, list[int]] = {"naive_peeking": [], "sequential": []}  # 1-based day of the first p < α
    for run in range(runs):
        in_b = assignments(users, f"{salt_prefix}-{run}", share_b)
        looks = []
        for d in range(days):
            upto = day <= d
            a, b = upto & ~in_b, upto & in_b
            looks.append((int(clicks_a[a].sum()), int(a.sum()), int(clicks_b[b].sum()), int(b.sum())))
        daily_p = [two_proportion_z_test(*look, alpha=alpha).p for look in looks]
        counts["fixed"] += daily_p[-1] < alpha
        for rule, p_values in (("naive_peeking", daily_p), ("sequential", msprt(looks, tau))):
            first = next((d for d, p in enumerate(p_values, start=1) if p < alpha), None)
            counts[rule] += first is not None
            if first is not None:
                stop_days[rule].append(first)
    return {"runs": runs, "alpha": alpha, "tau": tau, "days": days, "users": len(users),
            "rate_a": float(clicks_a.mean()) if len(users) else 0.0,
            "rate_b": float(clicks_b.mean()) if len(users) else 0.0,
            "significant": {rule: {"count": int(n), "rate": n / runs, "ci": wilson_interval(int(n), runs),
                                   "mean_stop_day": float(np.mean(stop_days[rule])) if stop_days.get(rule) else None}
                            for rule, n in counts.items()}}


def format_simulation(name: str, result: dict[str, Any]) -> str:
    """One markdown table row per decision rule."""
    lines = [(f"{name}: {result['users']} users over {result['days']} days, click rate A {result['rate_a']:.3f} / "
              f"B {result['rate_b']:.3f}, {result['runs']} experiments, alpha {result['alpha']}"),
             "| rule | declared significant | 95% CI | mean day of the decision |", "|---|---|---|---|"]
    for rule, row in result["significant"].items():
        day = result["days"] if rule == "fixed" else row["mean_stop_day"]
        lines.append(f"| {rule} | {row['count']}/{result['runs']} = {100 * row['rate']:.1f}% | "
                     f"[{100 * row['ci'][0]:.1f}%, {100 * row['ci'][1]:.1f}%] | "
                     f"{'-' if day is None or not row['count'] else f'{day:.1f}'} |")
    return "\n".join(lines)


def plot_simulation(results: dict[str, dict[str, Any]], path) -> None:
    """Bars: share of experiments declared significant per scenario and rule, with 95% intervals
    and the nominal α as a line (PNG at ``path``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from recstack.io import save_figure

    rules = ["fixed", "naive_peeking", "sequential"]
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6))
    for ax, (name, result) in zip(np.atleast_1d(axes), results.items()):
        rates = [result["significant"][r]["rate"] for r in rules]
        low = [rate - result["significant"][r]["ci"][0] for r, rate in zip(rules, rates)]
        high = [result["significant"][r]["ci"][1] - rate for r, rate in zip(rules, rates)]
        bars = ax.bar(rules, rates, yerr=[low, high], capsize=4, color=["#3b6fd8", "#d8553b", "#3bb36f"])
        ax.bar_label(bars, labels=[f"{100 * r:.1f}%" for r in rates], fontsize=8)
        ax.axhline(result["alpha"], color="grey", linestyle="--", linewidth=1)
        ax.set_ylim(0, 1.05 if max(rates) > 0.5 else max(0.35, max(rates) * 1.3))
        ax.set_title(f"{name}\n{result['runs']} experiments, {result['days']} daily looks", fontsize=9)
        ax.set_ylabel("declared significant")
    fig.tight_layout()
    save_figure(fig, path)
