"""The evaluation report as markdown (``evaluation_<split>.md``) and the per-protocol bar charts.

One table per protocol, one row per model, the same columns everywhere:
HR / NDCG / Recall at each cut-off, MRR, coverage, intra-list diversity and novelty at K
(:class:`recstack.evaluation.metrics.ListQuality`), then the settings chosen on validation and
the cold-item protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recstack.io import save_figure


def metric_columns(k: int, cutoffs: list[int], extra: tuple[str, ...] = ()) -> list[str]:
    """Report keys in table order."""
    cols = []
    for cut in cutoffs:
        cols += [f"hr@{cut}", f"ndcg@{cut}", f"recall@{cut}"]
    return cols + ["mrr", f"coverage@{k}", f"ild@{k}", f"ild_genre@{k}", f"novelty@{k}", *extra]


def markdown_table(rows: dict[str, dict[str, float]], k: int, cutoffs: list[int]) -> str:
    """``rows`` {model: metrics} as a markdown table (columns no row has are left out)."""
    cols = [c for c in metric_columns(k, cutoffs) if any(c in m for m in rows.values())]
    lines = ["| model | " + " | ".join(c.replace("hr@", "HR@").replace("ndcg@", "NDCG@")
                                        .replace("recall@", "Recall@").replace("mrr", "MRR") for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, m in rows.items():
        cells = [f"{m[c]:.4f}" if isinstance(m.get(c), (int, float)) and np.isfinite(m[c]) else "" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _selection_lines(selection: dict[str, Any], k: int) -> list[str]:
    return [f"- {name}: {s['params'] or 'no settings'} (valid NDCG@{k} {s[f'valid_ndcg@{k}']:.4f} over "
            f"{len(s['trials'])} setting(s), {s['selection_rows']:,} validation rows; {s['wall_s']:.1f} s)"
            for name, s in selection.items()]


def format_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown: leave-one-out table, temporal table, choices, cold items."""
    k, cutoffs = report["k"], report.get("cutoffs", [report["k"]])
    out = [f"# {report['dataset']}: evaluation on {report['split']}", "",
           f"## Leave-one-out ({report['users']:,} users, {report['catalogue']:,} items)", "",
           f"{report['protocol']}.", "", markdown_table(report["models"], k, cutoffs), ""]
    for name, why in report.get("skipped", {}).items():
        out.append(f"- skipped {name}: {why}")
    if report.get("baselines"):
        out += ["", "Settings chosen on validation:", *_selection_lines(report["baselines"], k)]
    temporal = report.get("temporal")
    if temporal and temporal.get("models"):
        info = temporal["info"]
        side = info.get(report["split"], info.get("valid", {}))
        out += ["", f"## Global temporal split (T = {temporal['quantile']:.0%} quantile of timestamps)", "",
                (f"Fit window before T = {info['split_time']:.0f}, targets: each user's warm items after T "
                 f"({side.get('users', 0):,} users, {side.get('targets', 0):,} targets, "
                 f"{side.get('cold_targets', 0):,} interactions with items first seen after T left to the cold "
                 f"protocol); settings chosen on the window [T_v, T), T_v = {info['valid_time']:.0f} "
                 f"({temporal['valid_quantile']:.0%} quantile)."), "",
                markdown_table(temporal["models"], k, cutoffs), ""]
        for name, why in temporal.get("skipped", {}).items():
            out.append(f"- skipped {name}: {why}")
        out += ["", "Settings chosen on validation:", *_selection_lines(temporal["selection"], k)]
    cold = report.get("cold_items")
    if cold:
        out += ["", "## Cold items", "", (f"{cold['items']:,} items absent from the training split, "
                                          f"{cold['rows']:,} {report['split']} rows with one as target "
                                          f"({cold['definition']}).")]
        if "two_tower" in cold:
            out += ["", "| two_tower ranks among | Recall@10 | NDCG@10 | Recall@50 | MRR |", "|---|---:|---:|---:|---:|"]
            for where, m in cold["two_tower"].items():
                out.append(f"| {where} | " + " | ".join(f"{m[key]:.4f}" for key in
                                                      (f"recall@{k}", f"ndcg@{k}", "recall@50", "mrr")) + " |")
            out.append(f"\nA random order of the cold items alone: Recall@50 {cold['random_recall_at_50']:.4f}.")
    return "\n".join(out) + "\n"


def plot_rows(rows: dict[str, dict[str, float]], metrics: list[str], title: str, path: Path) -> None:
    """Grouped bar chart: one group per metric, one bar per model."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    models = list(rows)
    fig, ax = plt.subplots(figsize=(max(10, 1.2 * len(metrics) + 0.3 * len(models) + 3), 4.8))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(metrics))
    for i, name in enumerate(models):
        values = [rows[name].get(m, 0.0) for m in metrics]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90)
    ax.set_xticks(x, metrics)
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save_figure(fig, path)
