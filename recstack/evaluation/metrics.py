"""Evaluation's own metric helpers, on top of the shared ranking protocol in :mod:`recstack.ranking`
(ranks, Recall/NDCG/HR@K, MRR, coverage: the same code model selection uses during training)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recstack.ranking import (
    RankingAccumulator,
    SeenCSR,
    catalogue_mask,
    coverage,
    exclude_seen,
    metrics_from_ranks,
    row_batches,
    score_batch_rows,
    top_k,
)


def ranks_from_topk(topk: np.ndarray, targets: np.ndarray, n_catalogue: int) -> np.ndarray:
    """Rank of each target inside a ranked top-k list ([U, k]); targets not in it get ``n_catalogue``."""
    hits = topk == np.asarray(targets)[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1), n_catalogue).astype(np.int64)


def evaluate_scores(score_fn: Callable[[np.ndarray], np.ndarray], users: np.ndarray, targets: np.ndarray,
                    n_items: int, seen: SeenCSR | None = None, k: int = 10, batch_size: int = 1024,
                    catalogue: np.ndarray | None = None) -> dict[str, float]:
    """Full-catalogue metrics of ``score_fn(row_indices) -> scores [b, n_items]`` over user batches.

    ``users`` [U] (ids for the seen lookup) and ``targets`` [U]; ``score_fn`` gets the row
    positions of the batch (so it can index its own per-row inputs).
    """
    acc = RankingAccumulator(n_items, k, catalogue)
    for rows in row_batches(len(users), score_batch_rows(batch_size, n_items)):
        acc.add(score_fn(rows), targets[rows], users[rows], seen)
    return acc.result()


# ----------------------------------------------------------------------- report metrics (issue 6)

def cutoffs_for(k: int, extra: tuple[int, ...] = (50,)) -> tuple[int, ...]:
    """The report's cut-offs: ``k`` and ``extra`` (sorted, unique)."""
    return tuple(sorted({int(k), *map(int, extra)}))


class ListQuality:
    """Beyond-accuracy measures of top-K lists [U, K] of encoded item ids.

    * ``novelty@K``: mean self-information ``-log2(p_i)`` of the listed items, ``p_i`` = share of
      the fit window's users who interacted with ``i`` (an item nobody touched counts as 1 user);
    * ``ild@K``: intra-list diversity, mean pairwise ``1 - cos(i, j)`` of the listed items, the
      cosine of their user-interaction columns in the fit window (``similarity`` [n, n] CSR,
      :func:`recstack.evaluation.baselines.cosine_similarity`): model-independent, so every row
      of a table is measured alike;
    * ``ild_genre@K`` (when item genres are known): mean pairwise Jaccard distance of genre sets.
    """

    def __init__(self, item_users: np.ndarray, n_users: int, similarity=None, genres: np.ndarray | None = None):
        counts = np.maximum(np.asarray(item_users, np.float64), 1.0)
        self.information = -np.log2(np.minimum(counts / max(int(n_users), 1), 1.0))
        self.similarity = similarity
        self.genres = genres

    def describe(self, lists: np.ndarray, k: int) -> dict[str, float]:
        lists = np.asarray(lists, np.int64)[:, :k]
        if lists.size == 0:
            return {}
        out = {f"novelty@{k}": float(self.information[lists].mean())}
        if self.similarity is not None and lists.shape[1] > 1:
            a, b = np.triu_indices(lists.shape[1], 1)
            left, right = lists[:, a].reshape(-1), lists[:, b].reshape(-1)
            cos = np.asarray(self.similarity[left, right]).reshape(-1)
            out[f"ild@{k}"] = float(1.0 - cos.mean())
        if self.genres is not None and lists.shape[1] > 1:
            from recstack.evaluation.diversity import genre_intra_list_distance

            ild = genre_intra_list_distance(lists, self.genres)
            out[f"ild_genre@{k}"] = float(np.nanmean(ild)) if np.isfinite(ild).any() else float("nan")
        return out


class ReportAccumulator(RankingAccumulator):
    """:class:`recstack.ranking.RankingAccumulator` (one target per row) reporting every cut-off in
    ``cutoffs`` (Recall/NDCG/HR@K, coverage@K), MRR, and the :class:`ListQuality` of the top-``k`` lists.

    ``coverage`` (no suffix) stays the coverage at ``k``, the key the older reports carry.
    """

    def __init__(self, n_items: int, k: int = 10, catalogue: np.ndarray | None = None,
                 cutoffs: tuple[int, ...] = (), quality: ListQuality | None = None):
        self.cutoffs = cutoffs_for(k, cutoffs)
        super().__init__(n_items, max(self.cutoffs), catalogue)
        self.report_k = int(k)
        self.quality = quality

    def result(self) -> dict[str, float]:
        ranks = np.concatenate(self.ranks) if self.ranks else np.zeros(0, np.int64)
        tops = np.concatenate(self.tops) if self.tops else np.zeros((0, self.k), np.int64)
        out: dict[str, float] = {}
        for cut in self.cutoffs:
            out.update(metrics_from_ranks(ranks, cut))
            out[f"coverage@{cut}"] = coverage(tops[:, :cut], self.n_catalogue)
        out["coverage"] = out[f"coverage@{self.report_k}"]
        if self.quality is not None:
            out.update(self.quality.describe(tops, self.report_k))
        out["users"] = len(ranks)
        return out


def pessimistic_topk(scores: np.ndarray, targets: list[np.ndarray], k: int, catalogue: np.ndarray) -> np.ndarray:
    """Top-``k`` lists [U, k] where each row's targets sit just below every non-target of the same score
    (a target tied with other items ranks below them, as in :func:`recstack.ranking.target_ranks`)."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    for row, t in enumerate(targets):
        scores[row, t] = np.nextafter(scores[row, t], -np.inf)
    return top_k(scores, k, catalogue)


class MultiTargetAccumulator:
    """Metrics for rows with several held-out items each (the temporal split: every item a user
    interacts with after the split time). Per row with targets ``T`` and top-K list ``L``:

        Recall@K = |L & T| / |T|           HR@K = [|L & T| > 0]
        NDCG@K   = sum_{pos p of L in T} 1/log2(p+2) / sum_{p < min(K, |T|)} 1/log2(p+2)
        MRR      = 1 / (1 + #non-target catalogue items scored >= the best target)

    averaged over rows; coverage@K as for one target. Ties rank targets below (pessimistic).
    """

    def __init__(self, n_items: int, k: int = 10, catalogue: np.ndarray | None = None,
                 cutoffs: tuple[int, ...] = (), quality: ListQuality | None = None):
        self.cutoffs = cutoffs_for(k, cutoffs)
        self.k = int(k)
        self.catalogue = catalogue if catalogue is not None else catalogue_mask(n_items)
        self.n_catalogue = int(self.catalogue.sum())
        self.quality = quality
        self.tops: list[np.ndarray] = []
        self.rows: dict[str, list[np.ndarray]] = {}

    def add(self, scores: np.ndarray, targets: list[np.ndarray], users: np.ndarray | None = None,
            seen: SeenCSR | None = None) -> None:
        """``scores`` [b, n_items] (seen items of ``users`` set to -inf here), ``targets``: b arrays of item ids."""
        scores = np.asarray(scores, dtype=np.float64)
        if seen is not None:
            exclude_seen(scores, users, seen)
        scores[:, ~self.catalogue] = -np.inf
        targets = [np.unique(np.asarray(t, np.int64)) for t in targets]
        top = pessimistic_topk(scores, targets, max(self.cutoffs), self.catalogue)
        self.tops.append(top)
        n_t = np.array([len(t) for t in targets], np.float64)
        hit = np.zeros(top.shape, dtype=bool)
        best_rank = np.empty(len(targets))
        for row, t in enumerate(targets):
            hit[row] = np.isin(top[row], t)
            t_scores = scores[row, t]
            finite = t_scores[np.isfinite(t_scores)]
            if len(finite) == 0:
                best_rank[row] = self.n_catalogue
                continue
            above = (scores[row] >= finite.max()) & self.catalogue
            above[t] = False
            best_rank[row] = above.sum()
        gains = 1.0 / np.log2(np.arange(top.shape[1]) + 2.0)
        for cut in self.cutoffs:
            h = hit[:, :cut]
            ideal = np.array([gains[: int(min(cut, n))].sum() for n in n_t])
            self.rows.setdefault(f"recall@{cut}", []).append(h.sum(1) / np.maximum(n_t, 1))
            self.rows.setdefault(f"hr@{cut}", []).append(h.any(1).astype(np.float64))
            self.rows.setdefault(f"ndcg@{cut}", []).append((h * gains[:cut]).sum(1) / np.maximum(ideal, 1e-12))
        self.rows.setdefault("mrr", []).append(1.0 / (best_rank + 1.0))

    def result(self) -> dict[str, float]:
        out = {name: float(np.concatenate(parts).mean()) for name, parts in self.rows.items()}
        tops = np.concatenate(self.tops) if self.tops else np.zeros((0, max(self.cutoffs)), np.int64)
        for cut in self.cutoffs:
            out[f"coverage@{cut}"] = coverage(tops[:, :cut], self.n_catalogue)
        out["coverage"] = out[f"coverage@{self.k}"]
        if self.quality is not None:
            out.update(self.quality.describe(tops, self.k))
        out["users"] = len(tops)
        return out
