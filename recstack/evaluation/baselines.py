"""Classical top-N baselines scored in the same run as the recstack models (issue 6).

Every model is fitted on a binary user x item matrix ``X`` (scipy CSR, [n_users, n_items], 1 =
the user interacted with the item in the fit window) and scores every item for a batch of
users: ``scores(users, X) -> [b, n_items]`` float64 (higher is better; seen items are excluded
by the caller).

* :class:`ItemKNN`: cosine item-item similarity of the columns of ``X``,
  ``sim(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|)`` (diagonal 0), each item keeping its
  ``neighbors`` most similar items (``None``: all); ``score(u, j) = sum_{i in X_u} sim(i, j)``.
  With ``last_item=True`` only the user's most recent item counts, ``score(u, j) = sim(last_u, j)``
  (the "last-item kNN" of shared/DATA.md).
* :class:`EASE` (Steck 2019): ``P = (X^T X + lambda I)^-1``, ``B = I - P diag(1 / diag(P))``
  (so ``diag(B) = 0``), ``score(u, .) = X_u B``. Dense ``n_items^2``: skipped above
  :data:`EASE_MAX_ITEMS`.
* :class:`IALS`: implicit-feedback ALS (Hu, Koren, Volinsky 2008) from the ``implicit``
  library (confidence ``1 + alpha * x``), ``score(u, .) = user_factors[u] . item_factors^T``.
* popularity stays in :mod:`recstack.evaluation.evaluate` (interaction counts of the fit window).

:data:`GRIDS` holds each model's hyper-parameter grid; :mod:`recstack.evaluation.baseline_runs`
chooses the setting on the validation split and refits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

EASE_MAX_ITEMS = 20_000
"""Largest catalogue EASE is fitted on: its dense [n, n] float64 Gram matrix and inverse take
``2 * 8 * n^2`` bytes (6.4 GB at 20k items) and one inversion ``~n^3`` flops."""


class Baseline(Protocol):
    name: str

    def fit(self, X: sp.csr_matrix) -> Baseline: ...

    def scores(self, users: np.ndarray, X: sp.csr_matrix, last: np.ndarray | None = None) -> np.ndarray: ...


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary CSR [n_users, n_items] float64 from (user, item) pairs (repeats count once)."""
    X = sp.csr_matrix((np.ones(len(users)), (np.asarray(users, np.int64), np.asarray(items, np.int64))),
                      shape=(int(n_users), int(n_items)))
    X.sum_duplicates()
    X.data[:] = 1.0
    return X


def cosine_similarity(X: sp.csr_matrix) -> sp.csr_matrix:
    """Item-item cosine of the columns of binary ``X`` [U, n] -> CSR [n, n] (diagonal 0, zeros dropped)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    gram = (X.T @ X).tocsr()
    norms = np.sqrt(np.asarray(gram.diagonal()))
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    sim = sp.csr_matrix(sp.diags(inv) @ gram @ sp.diags(inv))
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    return sim


def keep_top_per_row(matrix: sp.csr_matrix, k: int | None) -> sp.csr_matrix:
    """Each row of ``matrix`` keeps its ``k`` largest entries (ties: lower column first); ``None``: all."""
    matrix = sp.csr_matrix(matrix)
    if k is None:
        return matrix
    matrix.sort_indices()
    lengths = np.diff(matrix.indptr)
    keep = np.ones(matrix.nnz, dtype=bool)
    for row in np.flatnonzero(lengths > k):
        lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
        order = np.lexsort((matrix.indices[lo:hi], -matrix.data[lo:hi]))
        keep[lo + order[k:]] = False
    rows = np.repeat(np.arange(matrix.shape[0]), lengths)[keep]
    return sp.csr_matrix((matrix.data[keep], (rows, matrix.indices[keep])), shape=matrix.shape)


def _dense_rows(X: sp.csr_matrix, users: np.ndarray) -> sp.csr_matrix:
    return X[np.asarray(users, np.int64)]


@dataclass
class Popularity:
    """Interaction counts of the fit window: the same list for every user."""

    name: str = "popularity"
    counts: np.ndarray | None = field(default=None, repr=False)

    def fit(self, X: sp.csr_matrix) -> Popularity:
        self.counts = np.asarray(X.sum(axis=0), dtype=np.float64).reshape(-1)
        return self

    def scores(self, users: np.ndarray, X: sp.csr_matrix, last: np.ndarray | None = None) -> np.ndarray:
        return np.tile(self.counts, (len(users), 1))


@dataclass
class ItemKNN:
    """Cosine item-kNN over the user's history (``last_item``: over the most recent item only)."""

    neighbors: int | None = None
    last_item: bool = False
    similarity: sp.csr_matrix | None = None
    name: str = "item_knn"
    _neighbours: sp.csr_matrix | None = field(default=None, repr=False)

    def fit(self, X: sp.csr_matrix) -> ItemKNN:
        sim = self.similarity if self.similarity is not None else cosine_similarity(X)
        # row j keeps its own neighbours i; scoring sums column j of X_u @ N^T
        self._neighbours = keep_top_per_row(sim, self.neighbors).T.tocsr()
        return self

    def scores(self, users: np.ndarray, X: sp.csr_matrix, last: np.ndarray | None = None) -> np.ndarray:
        """[b, n_items]: summed similarities of each user's history items (or of ``last`` [b] item ids; < 0: none)."""
        if self.last_item:
            if last is None:
                raise ValueError("last-item kNN needs each row's most recent item")
            last = np.asarray(last, np.int64)
            has = last >= 0
            history = sp.csr_matrix((np.ones(int(has.sum())), (np.flatnonzero(has), last[has])),
                                    shape=(len(last), X.shape[1]))
        else:
            history = _dense_rows(X, users)
        return np.asarray((history @ self._neighbours).toarray(), dtype=np.float64)


@dataclass
class EASE:
    """Closed-form linear item-item model with an L2 penalty ``lam`` and a zero diagonal."""

    lam: float = 100.0
    name: str = "ease"
    weights: np.ndarray | None = field(default=None, repr=False)

    def fit(self, X: sp.csr_matrix) -> EASE:
        n = X.shape[1]
        if n > EASE_MAX_ITEMS:
            raise MemoryError(f"EASE: {n} items > EASE_MAX_ITEMS={EASE_MAX_ITEMS} (dense n^2 inverse)")
        gram = np.asarray((X.T @ X).toarray(), dtype=np.float64)
        gram[np.diag_indices(n)] += self.lam
        P = np.linalg.inv(gram)
        del gram
        B = P / (-np.diag(P))[None, :]
        B[np.diag_indices(n)] = 0.0
        self.weights = B
        return self

    def scores(self, users: np.ndarray, X: sp.csr_matrix, last: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(_dense_rows(X, users) @ self.weights, dtype=np.float64)


@dataclass
class IALS:
    """``implicit``'s CPU AlternatingLeastSquares; ``alpha`` scales the confidence of an interaction."""

    factors: int = 64
    regularization: float = 0.1
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 0
    name: str = "ials"
    user_factors: np.ndarray | None = field(default=None, repr=False)
    item_factors: np.ndarray | None = field(default=None, repr=False)

    def fit(self, X: sp.csr_matrix) -> IALS:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):  # implicit parallelises itself; nested BLAS threads slow it down
            model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization,
                                            alpha=self.alpha, iterations=self.iterations, random_state=self.seed,
                                            calculate_training_loss=False)
            model.fit(sp.csr_matrix(X, dtype=np.float32), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, np.float32)
        self.item_factors = np.asarray(model.item_factors, np.float32)
        return self

    def scores(self, users: np.ndarray, X: sp.csr_matrix, last: np.ndarray | None = None) -> np.ndarray:
        return (self.user_factors[np.asarray(users, np.int64)] @ self.item_factors.T).astype(np.float64)


GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}],
    "item_knn": [{"neighbors": k} for k in (20, 100, 400, None)],
    "last_item_knn": [{"neighbors": None}],
    "ease": [{"lam": lam} for lam in (20.0, 100.0, 300.0, 1000.0, 3000.0)],
    "ials": [{"factors": f, "regularization": r, "alpha": a}
             for f in (64, 128) for r in (0.01, 1.0) for a in (1.0, 10.0)],
}
"""Hyper-parameter grid per baseline (each setting fitted on the fit window, scored on validation)."""


def make_baseline(name: str, params: dict[str, Any], similarity: sp.csr_matrix | None = None) -> Baseline:
    """A fresh baseline ``name`` with ``params`` (``similarity``: a precomputed cosine for the kNNs)."""
    if name == "popularity":
        return Popularity(**params)
    if name == "item_knn":
        return ItemKNN(similarity=similarity, **params)
    if name == "last_item_knn":
        return ItemKNN(similarity=similarity, last_item=True, name=name, **params)
    if name == "ease":
        return EASE(**params)
    if name == "ials":
        return IALS(**params)
    raise ValueError(f"unknown baseline {name!r} (expected one of {sorted(GRIDS)})")
