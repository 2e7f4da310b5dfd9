"""Multi-source candidates and the ranker's cross features (numpy only: serving imports this module).

Retrieval merges three sources per request, de-duplicated, into one fixed-width list of
``W = two_tower + item_knn + popular`` slots (a duplicate or a missing candidate is ``PAD``)::

    two_tower  the two-tower's top-K (FAISS in serving, the full-catalogue scores offline)
    item_knn   item-to-item: cosine co-occurrence of train items (top ``neighbours`` per item),
               summed over the user's ``recent`` latest history items with weight decay**age
    popular    the train + valid window's most popular items

The user's seen items are excluded from every source. Each candidate carries
``CROSS_FEATURES`` (the ranker's ``item_cross`` block [B, W, F], float32)::

    two_tower_score       cosine of the unit user and item embeddings (0 for padding)
    in_two_tower          1 if the two-tower source proposed it, else 0 (missing-source indicator)
    item_knn_score        log1p of its summed item-kNN score over the recent history (0 = no co-occurrence)
    in_item_knn           1 if among the item-kNN source's top candidates
    in_popular            1 if among the popular source's candidates
    log_popularity        log1p(interactions of the item before the request) / log1p(max item count)
    genre_affinity        share of the user's history items sharing a genre with it (0..1)
    log_hours_since_last  log1p(hours since the item's last interaction before the request) / log1p(10 years),
                          1 when it had none

The artifact (``runs/<ds>/models/candidates/``, written at training time by :func:`build_sources`
and read by training, ``recstack evaluate`` and the serving step) holds ``config.json``,
``neighbours.npy`` int32 [n_items, M], ``neighbour_scores.npy`` float32 [n_items, M] (cosines),
``neighbour_counts.npy`` int32 [n_items, M] and ``item_users.npy`` int64 [n_items] (co-occurring
users of each pair and users of each item: training's leave-one-user-out scores, :mod:`recstack.models.item_knn`),
``event_keys.npy`` int64 (train + valid interactions as ``item * SPAN + seconds since t0``,
sorted, for popularity and last-interaction time *before* any request time), ``popular.npy``
int64 (item ids by train + valid count, most popular first) and ``item_genres.npy`` uint8
[n_items, G]. Every per-request step is a gather, a sort or a searchsorted over the batch: no
Python loop over users or items.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recstack.errors import InputError
from recstack.ids import FIRST_CODE, PAD
from recstack.models.item_knn import LeaveUserOut, in_sorted, item_knn

CROSS_BLOCK = "item_cross"
"""Name of the ranker's per-candidate dense block [B, K, F] (float32)."""
CROSS_FEATURES = ("two_tower_score", "in_two_tower", "item_knn_score", "in_item_knn", "in_popular",
                  "log_popularity", "genre_affinity", "log_hours_since_last")
RANKER_FEATURES = ("item_knn_score", "in_item_knn", "in_popular", "log_popularity", "genre_affinity",
                   "log_hours_since_last")
"""The columns the served DLRM reads by default. The two-tower's own score and flag are left out:
on its training rows the two-tower is overconfident (those rows trained it), so a ranker reading
them learned to trust them more than they deserve on new rows (ML-100K validation NDCG@10 of the
fused ranking 0.1405 with all eight, 0.1454 without them); the two-tower score reaches the
ranking through the fusion (:mod:`recstack.models.fusion`)."""
SOURCES = ("two_tower", "item_knn", "popular")
SOURCE_BITS = np.array([1, 2, 4], np.uint8)
"""One bit per source of :data:`SOURCES` (:func:`combine` ORs them per merged id)."""
SPAN = 1 << 34
"""Seconds per item in an event key (t - t0 < 2**34 s, ~540 years)."""
HOURS_CAP = 24.0 * 365 * 10
ARTIFACT = "candidates"
"""Folder name of the artifact under ``runs/<ds>/models/``."""


@dataclass
class SourceConfig:
    """How many candidates each source gives, and the item-kNN settings."""

    two_tower: int = 100
    item_knn: int = 30
    popular: int = 10
    neighbours: int = 50
    recent: int = 20
    decay: float = 0.85
    leave_user_out: bool = True
    """Training rows read item-kNN scores without their own user's co-occurrence (:mod:`recstack.models.item_knn`);
    serving always reads the stored ones. ML-100K validation NDCG@10 of the fused ranking 0.1420 with,
    0.1394 without (DLRM alone 0.1091 / 0.1037; seed 0)."""

    @property
    def width(self) -> int:
        """W: slots of the merged candidate list."""
        return self.two_tower + self.item_knn + self.popular

    def check(self) -> SourceConfig:
        for name in ("two_tower", "neighbours", "recent"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"candidates.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("item_knn", "popular"):
            if int(getattr(self, name)) < 0:
                raise InputError(f"candidates.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0.0 < float(self.decay) <= 1.0:
            raise InputError(f"candidates.decay: must be in (0, 1], got {self.decay}")
        if not isinstance(self.leave_user_out, bool):
            raise InputError(f"candidates.leave_user_out: must be true or false, got {self.leave_user_out!r}")
        return self


# ------------------------------------------------------------------------------------- build

def event_keys(items: np.ndarray, times: np.ndarray, t0: int) -> np.ndarray:
    """Sorted int64 keys ``item * SPAN + (time - t0)`` of interactions (for :meth:`CandidateSources.item_stats`)."""
    return np.sort(np.asarray(items, np.int64) * SPAN + np.clip(np.asarray(times, np.int64) - t0, 0, SPAN - 1))


def genre_matrix(item_lists: np.ndarray | None, n_items: int) -> np.ndarray:
    """uint8 [n_items, G] multi-hot of the first item list column's codes (genres); [n_items, 1] zeros without one."""
    if item_lists is None or item_lists.size == 0:
        return np.zeros((n_items, 1), np.uint8)
    width = int(item_lists.max()) + 1
    out = np.zeros((n_items, width), np.uint8)
    rows = np.repeat(np.arange(len(item_lists)), item_lists.shape[1])
    codes = item_lists.reshape(-1)
    keep = codes >= FIRST_CODE
    out[rows[keep], codes[keep]] = 1
    return out[:, FIRST_CODE:] if width > FIRST_CODE else np.zeros((n_items, 1), np.uint8)


def build_sources(target: Path, cfg: SourceConfig, n_items: int, knn_users: np.ndarray, knn_items: np.ndarray,
                  event_items: np.ndarray, event_times: np.ndarray, genre_lists: np.ndarray | None) -> Path:
    """Write the artifact folder (see the module docstring). ``knn_*``: the (user, item) pairs the
    neighbours come from (train); ``event_*``: the interactions serving knows (train + valid);
    ``genre_lists`` [n_items, Lg] genre codes per item (None: no genres)."""
    from recstack.io import atomic_dir, write_json

    cfg.check()
    ids, scores, co_counts, item_users = item_knn(knn_users, knn_items, n_items, cfg.neighbours)
    t0 = int(np.min(event_times)) if len(event_times) else 0
    keys = event_keys(event_items, event_times, t0)
    counts = np.bincount(np.asarray(event_items, np.int64), minlength=n_items)[:n_items]
    counts[:FIRST_CODE] = 0
    popular = np.lexsort((np.arange(n_items), -counts))
    popular = popular[counts[popular] > 0].astype(np.int64)
    with atomic_dir(Path(target)) as tmp:
        np.save(tmp / "neighbours.npy", ids)
        np.save(tmp / "neighbour_scores.npy", scores)
        np.save(tmp / "neighbour_counts.npy", co_counts)
        np.save(tmp / "item_users.npy", item_users)
        np.save(tmp / "event_keys.npy", keys)
        np.save(tmp / "popular.npy", popular)
        np.save(tmp / "item_genres.npy", genre_matrix(genre_lists, n_items))
        write_json(tmp / "config.json", {"sources": asdict(cfg), "n_items": int(n_items), "t0": t0,
                                         "max_count": int(counts.max()) if len(counts) else 0,
                                         "features": list(CROSS_FEATURES), "width": cfg.width})
    return Path(target)


# ------------------------------------------------------------------------------------- serve

def row_keys(ids: np.ndarray, n_items: int) -> np.ndarray:
    """``[B, J]`` item ids -> ``b * n_items + id`` keys (same shape), the per-row item identity."""
    return np.arange(ids.shape[0], dtype=np.int64)[:, None] * n_items + ids


def padded_seen_keys(seen: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted row keys of the non-padding entries of ``seen`` [B, S] (0-padded)."""
    keys = row_keys(seen, n_items)
    return np.unique(keys[(seen != PAD) & (seen < n_items)])


def csr_seen_keys(indptr: np.ndarray, indices: np.ndarray, users: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted row keys of each row's user's items in a CSR (``users`` [B]: row b's user)."""
    users = np.asarray(users, np.int64)
    starts, ends = indptr[users], indptr[users + 1]
    lengths = ends - starts
    rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
    offs = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    items = indices[np.repeat(starts, lengths) + offs].astype(np.int64)
    keep = items < n_items
    return np.unique(rows[keep] * n_items + items[keep])


@dataclass
class KnnScores:
    """Each row's summed item-kNN scores: ``dense`` [B, n_items] float64 (0 = no co-occurrence) when the
    batch is small enough (:data:`DENSE_LIMIT`), else a sparse map ``keys`` (row keys, sorted, unique) ->
    ``values``. Both sum each key's contributions in the same order, so they hold the same floats."""

    keys: np.ndarray | None = None
    values: np.ndarray | None = None
    dense: np.ndarray | None = None

    def lookup(self, ids: np.ndarray, n_items: int) -> np.ndarray:
        """``[B, J]`` ids -> their summed scores (0 where the row has none)."""
        if self.dense is not None:
            return np.take_along_axis(self.dense, np.clip(ids, 0, n_items - 1), 1)
        keys = row_keys(ids, n_items)
        if len(self.keys) == 0:
            return np.zeros(ids.shape, np.float64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, self.values[pos], 0.0)


DENSE_LIMIT = 1 << 23
"""Batches with at most this many (row, item) cells keep their item-kNN scores dense (ML-1M: 2,200 rows)."""
DENSE_ITEMS = 1 << 16
"""Catalogues above this many items always use the sparse item-kNN scores (a request of a 1M-item
catalogue would otherwise fill and partition a 1M-wide row). Both forms select the same items."""
PARTITION_ABOVE = 1 << 14
"""top_knn over dense scores partitions each row to its m best before sorting only when the batch
has more scored items than this (training batches); a request's few hundred are sorted as they are
(a partition of a whole catalogue-wide row cost ~65 us of ~95 on ML-1M)."""


@dataclass
class Candidates:
    """A batch's merged candidates: ``ids`` int64 [B, W] (PAD = empty slot), ``sources`` bool [B, W, 3]
    (proposed by two_tower / item_knn / popular) and the rows' item-kNN scores."""

    ids: np.ndarray
    sources: np.ndarray
    knn: KnnScores


class CandidateSources:
    """The artifact in memory: item-kNN neighbours, popularity, event times, genres."""

    def __init__(self, folder: str | Path):
        from recstack.io import read_json

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise InputError(f"{folder}: no candidate sources (retrain: recstack train)")
        config = read_json(folder / "config.json")
        self.cfg = SourceConfig(**config["sources"]).check()
        self.n_items = int(config["n_items"])
        self.t0 = int(config["t0"])
        self.log_max_count = float(np.log1p(max(int(config["max_count"]), 1)))
        load = lambda name: np.load(folder / name, allow_pickle=False)
        self.neighbours = load("neighbours.npy").astype(np.int64)
        self.neighbour_scores = load("neighbour_scores.npy").astype(np.float64)
        # training only (leave-one-user-out); an artifact written before they existed serves without them
        self.neighbour_counts = load("neighbour_counts.npy").astype(np.int64) \
            if (folder / "neighbour_counts.npy").is_file() else None
        self.item_users = load("item_users.npy") if (folder / "item_users.npy").is_file() else None
        self.event_keys = load("event_keys.npy")
        # each item's slice of event_keys and its newest event (s since t0, -1: none): a request
        # after an item's last event (every served request) counts it without a binary search
        self.item_start = np.searchsorted(self.event_keys, np.arange(self.n_items + 1, dtype=np.int64) * SPAN)
        has_events = np.diff(self.item_start) > 0
        self.item_last = np.where(has_events, self.event_keys[np.maximum(self.item_start[1:] - 1, 0)]
                                  - np.arange(self.n_items, dtype=np.int64) * SPAN, -1)
        self.popular = load("popular.npy")
        self.genres = load("item_genres.npy").astype(np.float32)
        # up to 64 genres: one bit per genre, so "shares a genre" is an AND of two integers
        self.genre_bits = (self.genres.astype(bool) @ (np.uint64(1) << np.arange(self.genres.shape[1], dtype=np.uint64))
                           if self.genres.shape[1] <= 64 else None)
        self.cache: dict[Any, Any] = {}
        """Training's per-(model, rows) candidate pools (:mod:`recstack.models.candidate_pool`)."""

    @property
    def width(self) -> int:
        return self.cfg.width

    # -- sources
    def knn_scores(self, history: np.ndarray, leave_out: LeaveUserOut | None = None) -> KnnScores:
        """Summed neighbour scores of each row's ``recent`` latest history items (``history`` [B, L],
        oldest -> newest, 0-padded on either side: training's histories are right-aligned, the
        online store's left-aligned; the latest item weighs 1, the one before ``decay``, ...).
        ``leave_out`` (training rows): the cosines without each row's user (:class:`LeaveUserOut`)."""
        present = history != PAD
        age = np.cumsum(present[:, ::-1], axis=1)[:, ::-1] - 1  # items after it in the row
        valid = present & (age < self.cfg.recent) & (history >= FIRST_CODE) & (history < self.n_items)
        rows = np.broadcast_to(np.arange(len(history))[:, None], history.shape)[valid]
        src = history[valid]
        w = self.cfg.decay ** age[valid].astype(np.float64)
        nb = self.neighbours[src]  # [E, M]
        cos = self.neighbour_scores[src]
        if leave_out is not None:
            if self.neighbour_counts is None or self.item_users is None:
                raise InputError("candidate sources: no neighbour_counts.npy / item_users.npy (retrain: recstack train)")
            cos = leave_out.cosines(rows, src, nb, self.neighbour_counts[src], self.item_users, self.n_items)
        keep = (nb != PAD) & (cos > 0)
        keys = (rows[:, None] * self.n_items + nb)[keep]
        values = (cos * w[:, None])[keep]
        cells = len(history) * self.n_items
        if cells <= DENSE_LIMIT and self.n_items <= DENSE_ITEMS:
            return KnnScores(dense=np.bincount(keys, weights=values, minlength=cells).reshape(len(history), -1))
        unique, inverse = np.unique(keys, return_inverse=True)
        return KnnScores(unique, np.bincount(inverse.reshape(-1), weights=values, minlength=len(unique)))

    def top_knn(self, knn: KnnScores, seen_keys: np.ndarray, batch: int) -> np.ndarray:
        """The item-kNN source: each row's ``item_knn`` best unseen items -> [B, M] (PAD past the end;
        order: score, then the lower id)."""
        m = self.cfg.item_knn
        out = np.full((batch, m), PAD, np.int64)
        if m == 0:
            return out
        if knn.dense is not None:  # the m best of each row, ties to the lower id, exactly as the sparse path
            positive = knn.dense > 0
            positive.reshape(-1)[seen_keys] = False
            if positive.sum() > PARTITION_ABOVE:  # many scored items (training batches): cut rows to their m best first
                scores = np.where(positive, knn.dense, 0.0)
                m_eff = min(m, scores.shape[1])
                kth = -np.partition(-scores, m_eff - 1, axis=1)[:, m_eff - 1:m_eff]  # [B, 1] m-th best score
                above = scores > kth
                tied = (scores == kth) & (np.cumsum(scores == kth, axis=1) <= m_eff - above.sum(1, keepdims=True))
                positive &= above | tied
            rows, items = np.nonzero(positive)
            values = knn.dense[rows, items]
        else:
            if len(knn.keys) == 0:
                return out
            keep = ~in_sorted(knn.keys, seen_keys)
            keys, values = knn.keys[keep], knn.values[keep]
            rows, items = keys // self.n_items, keys % self.n_items
        order = np.lexsort((items, -values, rows))
        rows, items = rows[order], items[order]
        first = np.searchsorted(rows, np.arange(batch))
        rank = np.arange(len(rows)) - first[rows]
        take = rank < m
        out[rows[take], rank[take]] = items[take]
        return out

    def top_popular(self, seen_keys: np.ndarray, batch: int) -> np.ndarray:
        """The popular source: each row's ``popular`` most popular unseen items -> [B, P]."""
        p = self.cfg.popular
        out = np.full((batch, p), PAD, np.int64)
        if p == 0 or len(self.popular) == 0:
            return out
        counts = np.bincount(seen_keys // self.n_items, minlength=batch)[:batch] if len(seen_keys) else \
            np.zeros(batch, np.int64)
        head = self.popular[: p + int(counts.max(initial=0))]  # enough to have p left after the seen ones
        cand = np.broadcast_to(head[None, :], (batch, len(head)))
        ok = ~in_sorted(row_keys(cand, self.n_items), seen_keys)
        rank = np.cumsum(ok, axis=1) - 1
        take = ok & (rank < p)
        rows = np.broadcast_to(np.arange(batch)[:, None], cand.shape)
        out[rows[take], rank[take]] = cand[take]
        return out

    def merge(self, two_tower_ids: np.ndarray, history: np.ndarray, seen_keys: np.ndarray) -> Candidates:
        """Two-tower top-K ids [B, K] (seen excluded, PAD past the end) + item-kNN + popular,
        de-duplicated (the first occurrence keeps its slot, later ones become PAD) -> :class:`Candidates`
        with W = K + item_knn + popular slots. ``seen_keys``: sorted row keys of the excluded items."""
        batch = len(two_tower_ids)
        seen_keys = seen_keys[seen_keys < batch * self.n_items]
        knn = self.knn_scores(history)
        parts = [np.asarray(two_tower_ids, np.int64), self.top_knn(knn, seen_keys, batch),
                 self.top_popular(seen_keys, batch)]
        ids, sources = combine(parts)
        return Candidates(ids, sources, knn)

    # -- features
    def item_stats(self, items: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interactions of each item strictly before each time and the seconds since the latest of
        them (-1 when none): ``items`` [B, J], ``times`` [B] unix seconds -> two [B, J] arrays."""
        items = np.asarray(items, np.int64)
        t = np.broadcast_to(np.clip(np.asarray(times, np.int64) - self.t0, 0, SPAN - 1)[:, None], items.shape)
        lo = self.item_start[items]
        count = self.item_start[items + 1] - lo
        last = self.item_last[items].copy()
        search = last >= t  # the item has events at or after t: count only those before it
        if search.any():
            base = items[search] * SPAN
            hi = np.searchsorted(self.event_keys, base + t[search])
            count[search] = hi - lo[search]
            last[search] = np.where(hi > lo[search], self.event_keys[np.maximum(hi - 1, 0)] - base, -1)
        since = np.where(count > 0, t - last, -1)
        return count, since

    def genre_affinity(self, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Share of each row's history items that share a genre with each item: [B, L], [B, J] -> [B, J]."""
        hist_valid = (history >= FIRST_CODE) & (history < self.n_items)
        if self.genre_bits is not None:
            h_bits = np.where(hist_valid, self.genre_bits[np.where(hist_valid, history, 0)], np.uint64(0))  # [B, L]
            c_bits = self.genre_bits[np.clip(items, 0, self.n_items - 1)]  # [B, J]
            share = ((h_bits[:, :, None] & c_bits[:, None, :]) != 0).sum(1)
            return share / np.maximum(hist_valid.sum(1, keepdims=True), 1)
        h = self.genres[np.where(hist_valid, history, 0)] * hist_valid[:, :, None]  # [B, L, G]
        c = self.genres[np.clip(items, 0, self.n_items - 1)]  # [B, J, G]
        # einsum's own loop, not BLAS: a per-request matmul woke BLAS's thread pool, ~4 ms stalls on 2 cores
        share = (np.einsum("blg,bjg->blj", h, c) > 0).sum(1)  # [B, J]
        return share / np.maximum(hist_valid.sum(1, keepdims=True), 1)

    def features(self, items: np.ndarray, two_tower_scores: np.ndarray, sources: np.ndarray, knn: KnnScores,
                 history: np.ndarray, times: np.ndarray) -> np.ndarray:
        """``CROSS_FEATURES`` of each row's ``items`` [B, J] -> float32 [B, J, F] (PAD items: zeros).

        ``two_tower_scores`` [B, J] cosines, ``sources`` bool [B, J, 3] (:meth:`source_flags`),
        ``knn`` the rows' item-kNN scores, ``history`` [B, L], ``times`` [B] request unix seconds.
        """
        items = np.asarray(items, np.int64)
        real = (items >= FIRST_CODE) & (items < self.n_items)
        count, since = self.item_stats(np.where(real, items, 0), times)
        hours = np.where(since >= 0, since / 3600.0, HOURS_CAP)
        out = np.stack([
            np.where(np.isfinite(two_tower_scores), two_tower_scores, 0.0),
            sources[..., 0], np.log1p(knn.lookup(items, self.n_items)), sources[..., 1], sources[..., 2],
            np.log1p(count) / self.log_max_count,
            self.genre_affinity(history, items),
            np.log1p(np.minimum(hours, HOURS_CAP)) / np.log1p(HOURS_CAP),
        ], axis=-1)
        return np.where(real[..., None], out, 0.0).astype(np.float32)


def combine(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The three sources' ids (two_tower [B, K], item_knn [B, M], popular [B, P]; PAD = none) -> the merged
    ``ids`` int64 [B, W] (the first occurrence of an id keeps its slot, later ones become PAD) and
    ``sources`` bool [B, W, 3] (which sources proposed each id)."""
    ids = np.concatenate([np.asarray(p, np.int64) for p in parts], axis=1)
    batch, width = ids.shape
    order = np.argsort(ids, axis=1, kind="stable")
    flat = (order + (np.arange(batch) * width)[:, None]).reshape(-1)  # sorted slot -> its index in ids.ravel()
    sorted_ids = ids.reshape(-1)[flat].reshape(batch, width)
    starts = np.ones((batch, width), bool)  # a row's first slot always starts a run: runs never cross rows
    starts[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    starts = starts.reshape(-1)
    # which sources proposed each id: a bit per source, OR-ed over the id's run of equal values
    part_bit = np.repeat(SOURCE_BITS, [p.shape[1] for p in parts])
    bits = np.where(ids != PAD, part_bit, np.uint8(0)).reshape(-1)[flat]
    run_bits = np.bitwise_or.reduceat(bits, np.flatnonzero(starts))[np.cumsum(starts) - 1]
    slot_bits = np.empty(batch * width, np.uint8)
    slot_bits[flat] = run_bits
    dup = np.empty(batch * width, bool)
    dup[flat] = ~starts
    empty = dup.reshape(batch, width) | (ids == PAD)
    sources = (slot_bits.reshape(batch, width, 1) & SOURCE_BITS) != 0
    sources &= ~empty[:, :, None]  # an id's first occurrence keeps its run's sources
    return np.where(empty, PAD, ids), sources


def source_flags(pool_ids: np.ndarray, pool_sources: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Which sources proposed each of ``items`` [B, J] in each row's merged pool ([B, W], [B, W, 3]) -> [B, J, 3]."""
    match = (items[:, :, None] == pool_ids[:, None, :]) & (pool_ids != PAD)[:, None, :]  # [B, J, W]
    return np.matmul(match.astype(np.float32), pool_sources.astype(np.float32)) > 0


def cross_features(sources: CandidateSources, cands: Candidates, two_tower_scores: np.ndarray,
                   history: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The ``item_cross`` block of the merged candidates themselves: [B, W, F]."""
    return sources.features(cands.ids, two_tower_scores, cands.sources, cands.knn, history, times)


def describe(folder: str | Path) -> dict[str, Any]:
    """The artifact's config.json (sources, width, features)."""
    from recstack.io import read_json

    return read_json(Path(folder) / "config.json")


def offline_candidates(sources: CandidateSources, first: np.ndarray, history: np.ndarray, times: np.ndarray,
                       two_tower: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the serving chain computes, from full-catalogue two-tower scores (training, evaluation).

    ``first`` [B, n_items] float64 cosines with every unrankable item (seen, padding) already at -inf
    (:func:`recstack.ranking.mask_unrankable`): the -inf entries are the excluded items of every
    source. Returns ``(ids [B, W], retrieval [B, W] float64 two-tower cosines, -inf for empty slots,
    cross [B, W, F] float32)``.
    """
    from recstack.ranking import top_k

    if first.shape[1] != sources.n_items:
        raise InputError(f"candidate sources: built for {sources.n_items} items, the scores have {first.shape[1]}")
    seen_keys = np.flatnonzero(np.isneginf(first))  # row-major flat index == b * n_items + item
    tt = top_k(first, two_tower or sources.cfg.two_tower)
    tt = np.where(np.isfinite(np.take_along_axis(first, tt, 1)), tt, PAD)
    cands = sources.merge(tt, history, seen_keys)
    retrieval = np.take_along_axis(first, cands.ids, 1)
    retrieval = np.where(cands.ids == PAD, -np.inf, retrieval)
    return cands.ids, retrieval, cross_features(sources, cands, retrieval, history, times)
