"""Item-to-item cosine co-occurrence neighbours (the item-kNN candidate source), sparse, and the
leave-one-user-out view of their scores that the ranker's training rows read.

``cos(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|)`` over distinct users. :func:`item_knn` multiplies the
sparse item x user and user x item matrices (scipy.sparse) a chunk of items at a time, so time
and memory follow the co-occurring pairs, not ``n_items ** 2``.

Leakage: the neighbours are built from the train rows, the ranker's own training rows among
them, so a training row's positive co-occurs with the row's history partly *because of that
user*. :class:`LeaveUserOut` recomputes each kept neighbour's cosine without the row's user
(``(c_ij - x_ui x_uj) / sqrt((n_i - x_ui)(n_j - x_uj))``, ``x_u*`` = the user is among the item's
users): exact for the stored neighbours, while the neighbour lists themselves stay those of all
users (a pair that only this user formed drops to 0 and out of the source).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recstack.ids import FIRST_CODE, PAD

CHUNK_ENTRIES = 1 << 24
"""Co-occurrence entries per chunk of items (~16M: ~200 MB of scipy's int64 indices + float64 values)."""


def distinct_pairs(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Distinct (user, item) rows int64 [E, 2], sorted by user then item."""
    return np.unique(np.stack([np.asarray(users, np.int64), np.asarray(items, np.int64)], 1), axis=0)


def item_knn(users: np.ndarray, items: np.ndarray, n_items: int, neighbours: int,
             chunk_entries: int = CHUNK_ENTRIES) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-``neighbours`` cosine co-occurrence neighbours of every item from (user, item) pairs.

    An item is not its own neighbour; ties go to the lower id. Returns ``(ids int32 [n_items, M],
    scores float32 [n_items, M], counts int32 [n_items, M] (co-occurring users), item_users int64
    [n_items] (distinct users per item))``, best first, ``PAD`` / 0 where an item has fewer
    co-occurring items. Memory: the pairs twice as CSR plus one chunk of at most ``chunk_entries``
    co-occurrence entries (an item whose own entries exceed it is a chunk alone).
    """
    import scipy.sparse as sp

    pairs = distinct_pairs(users, items)
    n_users = int(pairs[:, 0].max()) + 1 if len(pairs) else 1
    ones = np.ones(len(pairs), np.int64)
    x = sp.csr_matrix((ones, (pairs[:, 0], pairs[:, 1])), shape=(n_users, n_items))
    xt = x.T.tocsr()
    item_users = np.bincount(pairs[:, 1], minlength=n_items).astype(np.int64)[:n_items]
    norms = np.sqrt(item_users.astype(np.float64))
    m = min(int(neighbours), max(n_items - 1, 1))
    ids = np.full((n_items, m), PAD, np.int32)
    scores = np.zeros((n_items, m), np.float32)
    counts = np.zeros((n_items, m), np.int32)
    # upper bound of each item's co-occurrence entries: its users' summed history sizes, at most n_items
    bound = np.minimum(xt @ np.diff(x.indptr).astype(np.int64), n_items)
    cum = np.cumsum(bound)
    start = 0
    while start < n_items:
        base = int(cum[start - 1]) if start else 0
        stop = min(n_items, max(start + 1, int(np.searchsorted(cum, base + chunk_entries, side="right"))))
        _top_rows(xt[start:stop] @ x, start, norms, m, ids, scores, counts)
        start = stop
    return ids, scores, counts, item_users


def _top_rows(co, start: int, norms: np.ndarray, m: int, ids: np.ndarray, scores: np.ndarray,
              counts: np.ndarray) -> None:
    """Write the top-``m`` cosines of the co-occurrence rows ``co`` (CSR [c, n_items], items
    ``start ..``) into ``ids`` / ``scores`` / ``counts`` (best first, ties to the lower id)."""
    c, n_items = co.shape
    if co.nnz * 4 >= c * n_items:  # mostly filled (a dense catalogue like MovieLens): a dense block
        _top_dense_rows(co.toarray(), start, norms, m, ids, scores, counts)
        return
    co = co.tocoo()
    rows, cols, co_counts = co.row.astype(np.int64), co.col.astype(np.int64), co.data.astype(np.int64)
    items = rows + start
    keep = (cols != items) & (cols >= FIRST_CODE) & (co_counts > 0)
    rows, cols, co_counts, items = rows[keep], cols[keep], co_counts[keep], items[keep]
    cos = co_counts / (norms[items] * norms[cols])  # the same float64 operations as a dense [c, n] division
    order = np.lexsort((cols, -cos, rows))
    rows, cols, cos, co_counts = rows[order], cols[order], cos[order], co_counts[order]
    first = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - first
    take = rank < m
    ids[rows[take] + start, rank[take]] = cols[take]
    scores[rows[take] + start, rank[take]] = cos[take]
    counts[rows[take] + start, rank[take]] = co_counts[take]


def _top_dense_rows(co: np.ndarray, start: int, norms: np.ndarray, m: int, ids: np.ndarray, scores: np.ndarray,
                    counts: np.ndarray) -> None:
    """:func:`_top_rows` for a dense block ``co`` [c, n_items] of co-occurrence counts."""
    import torch

    from recstack.models.exact_topk import top_k_exact

    items = np.arange(start, start + len(co))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = co / (norms[items, None] * norms[None, :])
    cos[~np.isfinite(cos)] = 0.0
    cos[np.arange(len(co)), items] = 0.0
    cos[:, :FIRST_CODE] = 0.0
    values, top = (t.numpy() for t in top_k_exact(torch.from_numpy(cos), m, floor=0.0))
    found = values > 0
    ids[items] = np.where(found, top, PAD)
    scores[items] = np.where(found, values, 0.0)
    counts[items] = np.where(found, np.take_along_axis(co, top, 1), 0)


@dataclass
class LeaveUserOut:
    """Each row's user taken out of the co-occurrence: ``users`` [B] the rows' users, ``keys`` sorted
    ``user * n_items + item`` of the (user, item) pairs the neighbours were built from."""

    users: np.ndarray
    keys: np.ndarray

    def membership(self, row_of: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
        """Whether the user of row ``row_of`` [...] had ``items`` [...] among the pairs (same shape)."""
        return user_item_membership(self.users, self.keys, n_items, row_of, items)

    def cosines(self, row_of: np.ndarray, src: np.ndarray, neighbours: np.ndarray, counts: np.ndarray,
                item_users: np.ndarray, n_items: int) -> np.ndarray:
        """Cosines without the row's user of each history item ``src`` [E] (in row ``row_of`` [E]) and its
        ``neighbours`` [E, M] (co-occurrence ``counts`` [E, M]) -> float64 [E, M] (rounded through float32,
        as the stored scores are; 0 where nothing co-occurs any more)."""
        has_src = self.membership(row_of, src, n_items)  # [E]
        has_nb = self.membership(np.broadcast_to(row_of[:, None], neighbours.shape), neighbours, n_items)
        co = counts - (has_src[:, None] & has_nb)
        roots = np.sqrt(np.stack([item_users, np.maximum(item_users - 1, 0)]).astype(np.float64))  # [2, n_items]
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = co / (roots[has_src.view(np.uint8), src][:, None] * roots[has_nb.view(np.uint8), neighbours])
        cos[(co <= 0) | (neighbours == PAD)] = 0.0
        return cos.astype(np.float32).astype(np.float64)


def user_item_membership(users: np.ndarray, keys: np.ndarray, n_items: int, row_of: np.ndarray,
                         items: np.ndarray) -> np.ndarray:
    """Whether ``(users[row_of], items)`` is among the sorted ``user * n_items + item`` ``keys`` (shape of
    ``items``). A bitmap [distinct users, n_items] of the rows' users and a gather: training rows come
    grouped by user, so a batch has few users; past 64M bitmap cells, a binary search per key."""
    users = np.asarray(users, np.int64)
    batch_users, inverse = np.unique(users, return_inverse=True)
    if len(batch_users) * n_items > 1 << 26:
        return in_sorted(users[row_of] * n_items + items, keys)
    lo = np.searchsorted(keys, batch_users * n_items)
    lengths = np.searchsorted(keys, (batch_users + 1) * n_items) - lo
    owner = np.repeat(np.arange(len(batch_users)), lengths)
    flat = keys[np.repeat(lo - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())]
    bitmap = np.zeros(len(batch_users) * n_items, bool)
    bitmap[owner * n_items + flat - batch_users[owner] * n_items] = True
    return bitmap[inverse[row_of] * n_items + items]  # items: valid ids (PAD included), never >= n_items


def in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each key occurs in ``sorted_keys`` (a sorted 1-d array); same shape as ``keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(np.shape(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys
