"""The last serving step with diversity, freshness and explanations: :class:`RerankTopN`.

It is :class:`~recstack.ensembles.steps.FilterTopN` (seen/padding filter, top N, exploration
slots for new items) whose list order comes from :func:`recstack.evaluation.diversity.mmr_order`
(the function ``recstack evaluate`` measures the trade-off with), and which says why each item is
on the list.

Per-request inputs (optional ensemble inputs; absent = the export-time defaults):
``diversity_lambda`` float32 [B, 1] in [0, 1] (1 = the ranker's order), ``freshness_weight``
float32 [B, 1] >= 0 (weight of the item's time-decayed popularity, in units of the scaled ranker
score), ``genre_cap`` int32 [B, 1] >= 0 (most items per genre in one list; 0 = no cap).

Explanation outputs, one per list slot: ``reason_code`` int32 [B, N] (:data:`REASONS`),
``reason_item`` int64 [B, N] (raw id of the history item behind ``because_you_watched``, else -1)
and ``reason_score`` float32 [B, N] (that item's cosine similarity in the item tower's space; the
item's trend ratio for ``trending``; its popularity share for ``popular_in_genre``; NaN otherwise).
An item is *trending* when its share of the time-decayed interactions is at least
:data:`TRENDING_RATIO` times its share of all train + valid interactions (it is rising) and its
freshness is at least :data:`TRENDING_MIN_FRESHNESS` (not a handful of clicks).
Rules, first match wins: an empty slot is ``none``; an exploration slot is ``new``; with a positive
``freshness_weight`` a trending item is ``trending``; for a user with history, the history item
(the model's ``history`` input) closest to the item in embedding space is named when that cosine
similarity is positive; otherwise ``trending`` for a trending item, else ``popular_in_genre``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from recstack.ensembles.steps import FilterTopN, _require
from recstack.errors import InputError
from recstack.evaluation.diversity import (
    decayed_popularity,
    genre_matrix,
    mmr_order,
    unit_rows,
)
from recstack.ids import FIRST_CODE, PAD
from recstack.io import atomic_write_bytes

REASONS = {0: "none", 1: "because_you_watched", 2: "popular_in_genre", 3: "new", 4: "trending"}
NONE, BECAUSE_YOU_WATCHED, POPULAR_IN_GENRE, NEW, TRENDING = range(5)
TRENDING_RATIO = 1.5
"""Decayed-interaction share / overall share from which an item counts as trending."""
TRENDING_MIN_FRESHNESS = 0.1
"""Least freshness (decayed popularity / the catalogue's maximum) of a trending item."""
TRENDS_FILE = "item_trends.parquet"
GENRE_COLUMN = "genres"
HALF_LIFE_DAYS = 14.0


def write_item_trends(data_dir: Path, features_dir: Path, item_id_column: str,
                      half_life_days: float = HALF_LIFE_DAYS) -> Path:
    """``features_dir/item_trends.parquet``: per encoded item id, ``freshness`` (train + valid
    interactions decayed with ``half_life_days`` from the last one, / the maximum) and ``popularity``
    (share of those interactions) and ``trend_ratio`` (share of the decayed interactions / share of
    all; > 1: rising). Written at export so the served step reads a small table."""
    if half_life_days <= 0:
        raise InputError(f"half_life_days: must be > 0, got {half_life_days}")
    table = pd.read_parquet(Path(features_dir) / "item_features.parquet", columns=["item_key", item_id_column])
    code_of = pd.Series(table[item_id_column].to_numpy(np.int64), index=table["item_key"].to_numpy(np.int64))
    frames = [pd.read_parquet(Path(data_dir) / f"{s}.parquet", columns=["item_id", "timestamp"])
              for s in ("train", "valid") if (Path(data_dir) / f"{s}.parquet").is_file()]
    rows = pd.concat(frames) if frames else pd.DataFrame({"item_id": [], "timestamp": []})
    codes = code_of.reindex(rows["item_id"].to_numpy(np.int64)).to_numpy()
    known = ~np.isnan(codes)
    n_rows = int(code_of.max()) + 1 if len(code_of) else 1
    items, times = codes[known].astype(np.int64), rows["timestamp"].to_numpy(np.float64)[known]
    freshness = decayed_popularity(items, times, n_rows, half_life_days * 86400.0)
    counts = np.bincount(items, minlength=n_rows)[:n_rows]
    popularity = counts / max(counts.sum(), 1)
    decayed_share = freshness / max(float(freshness.sum()), 1e-12)
    ratio = np.divide(decayed_share, popularity, out=np.zeros(n_rows), where=popularity > 0)
    out = pd.DataFrame({item_id_column: np.arange(n_rows), "freshness": freshness,
                        "popularity": popularity.astype(np.float32), "trend_ratio": ratio.astype(np.float32)})
    path = Path(features_dir) / TRENDS_FILE
    buffer = io.BytesIO()
    out.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())  # an export running beside a server never shows half a file
    return path


class RerankTopN(FilterTopN):
    """FilterTopN with an MMR / genre-cap / freshness list order and per-item reasons.

    Extra inputs: ``history`` int64 [B, L] (encoded; the model's input), the optional
    ``diversity_lambda``, ``freshness_weight``, ``genre_cap`` [B, 1]. Extra outputs:
    ``reason_code``, ``reason_item``, ``reason_score`` [B, N] (see the module docstring).
    ``embeddings_dir`` holds ``item_embeddings.npy`` (item tower, by encoded id), ``features_dir``
    ``item_features.parquet`` (raw keys, genres) and ``item_trends.parquet``.
    """

    def __init__(self, embeddings_dir: str, features_dir: str, diversity_lambda: float = 1.0,
                 freshness_weight: float = 0.0, genre_cap: int = 0, item_id_column: str = "item_id", **kwargs):
        super().__init__(**kwargs)
        self.defaults = check_settings(np.float32(diversity_lambda), np.float32(freshness_weight), np.int32(genre_cap))
        self.embeddings = unit_rows(np.load(Path(embeddings_dir) / "item_embeddings.npy", allow_pickle=False))
        rows = len(self.embeddings) + 1  # the last row: zeros, for padding / items added after training
        self.embeddings = np.concatenate([self.embeddings, np.zeros((1, self.embeddings.shape[1]), np.float32)])
        table = pd.read_parquet(Path(features_dir) / "item_features.parquet")
        codes = table[item_id_column].to_numpy(np.int64)
        keep = codes < rows - 1
        self.raw_keys = np.full(rows, -1, np.int64)
        self.raw_keys[codes[keep]] = table["item_key"].to_numpy(np.int64)[keep]
        by_key = np.argsort(self.raw_keys[: rows - 1], kind="stable")
        self.sorted_keys, self.sorted_codes = self.raw_keys[by_key], by_key.astype(np.int64)
        self.genres = (genre_matrix(codes[keep], table[GENRE_COLUMN].to_numpy()[keep].tolist(), rows)
                       if GENRE_COLUMN in table else np.zeros((rows, 1), dtype=bool))
        trends = pd.read_parquet(Path(features_dir) / TRENDS_FILE)
        trend_codes = trends[item_id_column].to_numpy(np.int64)
        inside = trend_codes < rows - 1
        self.freshness = np.zeros(rows, np.float32)
        self.popularity = np.zeros(rows, np.float32)
        self.trend_ratio = np.zeros(rows, np.float32)
        self.trend_ratio[trend_codes[inside]] = trends["trend_ratio"].to_numpy(np.float32)[inside]
        self.freshness[trend_codes[inside]] = trends["freshness"].to_numpy(np.float32)[inside]
        self.popularity[trend_codes[inside]] = trends["popularity"].to_numpy(np.float32)[inside]

    def _rows(self, codes: np.ndarray) -> np.ndarray:
        """Encoded ids -> rows of the step's tables (padding, out-of-vocabulary and items added after
        training -> the zero row: no embedding, no genres, no trend)."""
        last = len(self.embeddings) - 1
        return np.where((codes >= FIRST_CODE) & (codes < last), codes, last)

    def _settings(self, inputs: dict[str, np.ndarray], batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values = []
        for (name, dtype), default in zip((("diversity_lambda", np.float32), ("freshness_weight", np.float32),
                                           ("genre_cap", np.int32)), self.defaults):
            given = _require(inputs, name, dtype, 2)[:, 0] if name in inputs else None
            values.append(np.full(batch, default, dtype) if given is None else given)
        return check_settings(*values)

    def _order(self, masked: np.ndarray, n: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        lambdas, fresh_weight, cap = self._settings(inputs, len(masked))
        rows = self._rows(_require(inputs, "candidate_ids", np.int64, 2))
        return mmr_order(masked, np.isfinite(masked), self.embeddings[rows], n, lambdas,  # unit rows
                         genres=self.genres[rows], genre_cap=cap, freshness=self.freshness[rows],
                         freshness_weight=fresh_weight)

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().execute(inputs)
        history = _require(inputs, "history", np.int64, 2)
        _, fresh_weight, _ = self._settings(inputs, len(history))
        out.update(self.reasons(out["item_ids"], out["explored"], history, fresh_weight))
        return out

    def encode(self, raw_ids: np.ndarray) -> np.ndarray:
        """Raw item ids -> encoded ids (PAD for ids the trained catalogue lacks)."""
        at = np.minimum(np.searchsorted(self.sorted_keys, raw_ids), len(self.sorted_keys) - 1)
        return np.where((raw_ids >= 0) & (self.sorted_keys[at] == raw_ids), self.sorted_codes[at], PAD)

    def reasons(self, item_ids: np.ndarray, explored: np.ndarray, history: np.ndarray,
                freshness_weight: np.ndarray) -> dict[str, np.ndarray]:
        """``reason_code`` / ``reason_item`` / ``reason_score`` [B, N] for the served lists."""
        items = self._rows(self.encode(item_ids))                     # [B, N]
        past = self._rows(history)                                    # [B, L]
        similarity = np.matmul(self.embeddings[items], np.swapaxes(self.embeddings[past], 1, 2))  # [B, N, L]
        has_vector = (past < len(self.embeddings) - 1)[:, None, :] & (items < len(self.embeddings) - 1)[:, :, None]
        similarity = np.where(has_vector, similarity, -np.inf)
        closest = np.argmax(similarity, axis=2)                       # first of equals: the older slot
        best = np.take_along_axis(similarity, closest[..., None], axis=2)[..., 0]
        ratio = self.trend_ratio[items]
        trending = (ratio >= TRENDING_RATIO) & (self.freshness[items] >= TRENDING_MIN_FRESHNESS)
        watched = best > 0
        code = np.where(trending, TRENDING, POPULAR_IN_GENRE)
        code = np.where(watched, BECAUSE_YOU_WATCHED, code)
        code = np.where(trending & (freshness_weight[:, None] > 0), TRENDING, code)
        code = np.where(explored.astype(bool), NEW, code)
        code = np.where(item_ids < 0, NONE, code)
        history_raw = self.raw_keys[np.take_along_axis(past, closest, axis=1)]
        score = np.select([code == BECAUSE_YOU_WATCHED, code == TRENDING, code == POPULAR_IN_GENRE],
                          [best, ratio, self.popularity[items]], np.nan)
        return {"reason_code": code.astype(np.int32),
                "reason_item": np.where(code == BECAUSE_YOU_WATCHED, history_raw, -1).astype(np.int64),
                "reason_score": score.astype(np.float32)}


def check_settings(lambdas, freshness_weight, genre_cap):
    """The re-ranking settings, checked: InputError naming the field when out of range."""
    lambdas, freshness_weight, genre_cap = (np.asarray(v) for v in (lambdas, freshness_weight, genre_cap))
    inside = (lambdas >= 0) & (lambdas <= 1)
    if not np.all(inside):
        raise InputError(f"input 'diversity_lambda': must be between 0 and 1, got {float(lambdas[~inside].ravel()[0])}")
    if not np.all(np.isfinite(freshness_weight) & (freshness_weight >= 0)):
        raise InputError("input 'freshness_weight': must be a finite number >= 0")
    if not np.all(genre_cap >= 0):
        raise InputError("input 'genre_cap': must be >= 0 (0 = no cap)")
    return lambdas, freshness_weight, genre_cap
