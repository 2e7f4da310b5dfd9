"""The multi-source retrieval step: FAISS top-K + item-kNN + popular, merged, with the ranker's cross features.

Replaces :class:`recstack.ensembles.steps.QueryIndex` in the chain when the run has candidate
sources (``models/candidates/``) and a DLRM that reads them (``item_cross``). The merge and the
features are :mod:`recstack.models.candidates`, the functions ``recstack evaluate`` and the DLRM's
training call, so the served candidates are the evaluated ones. Shapes for a batch of B requests::

    user_embedding float32 [B, d], seen_items int64 [B, S], user_known int32 [B, 1],
    history int64 [B, L], request_seconds int64 [B, 1] (unix seconds of the request)
    -> candidate_ids int64 [B, W] (encoded, PAD = empty slot), retrieval_scores float32 [B, W]
       (two-tower cosine of every candidate, -inf for an empty slot; cold users: the popularity
       list of QueryIndex, unchanged), item_cross float32 [B, W, F]

W = ``top_k`` (the FAISS source; ``recstack evaluate`` ranks ``sources.two_tower``, 100, the export's
default) + the item-kNN and popular slots of ``models/candidates/config.json``. The two-tower
score of a candidate another source proposed is the inner product with the exported item
embeddings (``item_embeddings.npy``), the value FAISS returns for the ones it found.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recstack.ensembles.steps import QueryIndex, _require
from recstack.errors import InputError
from recstack.ids import PAD
from recstack.models.candidates import (
    CROSS_FEATURES,
    CandidateSources,
    padded_seen_keys,
)


class MultiSourceIndex(QueryIndex):
    """:class:`QueryIndex` (``top_k`` = the two-tower source's K) followed by the merge with the other sources."""

    def __init__(self, index_dir: str, popularity_path: str, sources_dir: str, embeddings_dir: str,
                 top_k: int = 100, dimension: int | None = None, model_dir: str | None = None,
                 workflow_dir: str | None = None, live_items: str | None = None):
        super().__init__(index_dir, popularity_path, top_k, dimension, model_dir, workflow_dir, live_items)
        self.sources = CandidateSources(sources_dir)
        self.width = self.top_k + self.sources.cfg.item_knn + self.sources.cfg.popular
        self.item_emb = np.load(Path(embeddings_dir) / "item_embeddings.npy", allow_pickle=False).astype(np.float64)
        if len(self.item_emb) != self.sources.n_items:
            raise InputError(f"{embeddings_dir}: {len(self.item_emb)} item embeddings, the candidate sources have "
                             f"{self.sources.n_items} items (retrain: recstack train)")

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        found = super().execute(inputs)
        queries = inputs["user_embedding"]
        seen = inputs["seen_items"]
        known = inputs["user_known"][:, 0].astype(bool)
        history = _require(inputs, "history", np.int64, 2)
        times = _require(inputs, "request_seconds", np.int64, 2)[:, 0]
        batch, k, width, n = len(queries), self.top_k, self.width, self.sources.n_items
        ids = np.zeros((batch, width), np.int64)
        scores = np.full((batch, width), -np.inf, np.float32)
        cross = np.zeros((batch, width, len(CROSS_FEATURES)), np.float32)
        ids[:, :k], scores[:, :k] = found["candidate_ids"], found["retrieval_scores"]
        if known.any():
            rows = np.flatnonzero(known)
            faiss_ids, faiss_scores = found["candidate_ids"][rows], found["retrieval_scores"][rows]
            live = faiss_ids >= n  # items added after training: no embedding row, no source features
            cands = self.sources.merge(np.where(live, PAD, faiss_ids), history[rows],
                                       padded_seen_keys(seen[rows], n))
            merged = cands.ids
            cos = np.einsum("bd,bwd->bw", queries[rows].astype(np.float64), self.item_emb[merged])
            cos = np.where(merged == PAD, -np.inf, cos)
            cross[rows] = self.sources.features(merged, cos, cands.sources, cands.knn, history[rows], times[rows])
            merged[:, :k] = np.where(live, faiss_ids, merged[:, :k])
            cos[:, :k] = np.where(live, faiss_scores, cos[:, :k])
            ids[rows], scores[rows] = merged, cos.astype(np.float32)
        return {"candidate_ids": ids, "retrieval_scores": scores, "item_cross": cross}
