"""What diversity costs: NDCG@K against intra-list diversity and coverage for several MMR lambdas.

``recstack evaluate`` feeds every user batch of the served ranking (the two-tower's candidates
ordered by the fused DLRM score, seen items excluded) to :class:`DiversityTradeoff`, which
re-ranks each user's candidates with :func:`recstack.evaluation.diversity.mmr_order` (the
function the served step calls) for each lambda and scores the top K lists:

* ``ndcg@K``: leave-one-out, the target's position in the re-ranked list (a miss past K);
  lambda 1 reproduces the ``two_tower+dlrm`` row of the main table;
* ``ild_embedding``: mean pairwise cosine distance ``1 - cos`` of the listed items' item-tower
  embeddings (the space MMR works in; 0 = identical directions);
* ``ild_genre``: mean pairwise Jaccard distance of the listed items' genre sets (a measure MMR
  does not optimise directly; 0 = same genres, 1 = disjoint);
* ``coverage``: share of the catalogue in at least one user's list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recstack.evaluation.diversity import (
    genre_intra_list_distance,
    intra_list_distance,
    mmr_order,
    unit_rows,
)
from recstack.io import save_figure

LAMBDAS = (1.0, 0.9, 0.8, 0.7, 0.5, 0.3, 0.0)


class DiversityTradeoff:
    """Collects, per lambda, the re-ranked top-K lists of user batches and their metrics."""

    def __init__(self, item_embeddings: np.ndarray, genres: np.ndarray | None, n_catalogue: int, k: int = 10,
                 lambdas: tuple[float, ...] = LAMBDAS):
        self.unit = unit_rows(item_embeddings)
        self.genres = genres
        self.n_catalogue, self.k, self.lambdas = int(n_catalogue), int(k), tuple(float(x) for x in lambdas)
        self.parts: dict[float, dict[str, list[np.ndarray]]] = {
            lam: {"ndcg": [], "ild_embedding": [], "ild_genre": [], "lists": []} for lam in self.lambdas}

    def add(self, candidates: np.ndarray, scores: np.ndarray, targets: np.ndarray) -> None:
        """``candidates`` [b, C] encoded item ids with ranker ``scores`` [b, C] (-inf = unusable), ``targets`` [b]."""
        usable = np.isfinite(scores)
        embeddings = self.unit[candidates]
        for lam in self.lambdas:
            order = mmr_order(scores, usable, embeddings, self.k, np.full(len(scores), lam))
            lists = np.where(np.take_along_axis(usable, order, 1), np.take_along_axis(candidates, order, 1), -1)
            hits = lists == targets[:, None]
            position = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
            part = self.parts[lam]
            part["ndcg"].append(np.where(position >= 0, 1.0 / np.log2(np.maximum(position, 0) + 2.0), 0.0))
            part["ild_embedding"].append(intra_list_distance(lists, self.unit))
            if self.genres is not None:
                part["ild_genre"].append(genre_intra_list_distance(lists, self.genres))
            part["lists"].append(lists)

    def result(self) -> list[dict[str, Any]]:
        """One row per lambda: ``lambda``, ``ndcg@K``, ``ild_embedding``, ``ild_genre``, ``coverage``."""
        rows = []
        for lam in self.lambdas:
            part = self.parts[lam]
            lists = np.concatenate(part["lists"]) if part["lists"] else np.zeros((0, self.k), np.int64)
            listed = np.unique(lists[lists >= 0])
            rows.append({
                "lambda": lam,
                f"ndcg@{self.k}": float(np.mean(np.concatenate(part["ndcg"]))) if part["ndcg"] else float("nan"),
                "ild_embedding": float(np.nanmean(np.concatenate(part["ild_embedding"]))) if part["ndcg"] else float("nan"),
                "ild_genre": (float(np.nanmean(np.concatenate(part["ild_genre"]))) if part["ild_genre"]
                              else float("nan")),
                "coverage": len(listed) / max(self.n_catalogue, 1),
            })
        return rows


def format_tradeoff(rows: list[dict[str, Any]], k: int) -> str:
    """The trade-off rows as a fixed-width text table."""
    headers = ["lambda", f"NDCG@{k}", "ILD(emb)", "ILD(genre)", "coverage"]
    keys = ["lambda", f"ndcg@{k}", "ild_embedding", "ild_genre", "coverage"]
    cells = [[f"{row[key]:.2f}" if key == "lambda" else f"{row[key]:.4f}" for key in keys] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in cells])


def plot_tradeoff(rows: list[dict[str, Any]], k: int, title: str, path: Path) -> None:
    """NDCG@K against ILD (embedding and genre) and coverage, one point per lambda, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ndcg = [row[f"ndcg@{k}"] for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
    for ax, key, label in zip(axes, ("ild_embedding", "ild_genre", "coverage"),
                              ("intra-list distance (item-tower cosine)", "intra-list distance (genre Jaccard)",
                               "catalogue coverage")):
        values = [row[key] for row in rows]
        ax.plot(values, ndcg, marker="o")
        for value, score, row in zip(values, ndcg, rows):
            ax.annotate(f"λ={row['lambda']:g}", (value, score), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(label)
    axes[0].set_ylabel(f"NDCG@{k}")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
