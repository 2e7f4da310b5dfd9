"""DLRM ranking model (Naumov et al. 2019), in the shape of TorchRec's ``torchrec/models/dlrm.py``.

One small module per part::

    SparseArch       every sparse feature -> one embedding vector          [B, F, e]
    DenseArch        bottom MLP over the user + item continuous features   [B, e]
    InteractionArch  pairwise dot products of the F + 1 vectors (upper triangle) + dense
                                                                           [B, e + (F+1)F/2]
    OverArch         top MLP -> logit                                      [B]

Sparse features, in order: each user cat column, each user list column (masked-mean bag),
the history as two bags (masked mean and recency-weighted mean, :class:`HistoryPooling`),
each item cat column, each item list column (e.g. genres), then one per context column the layout
names (hour of day, weekday, device of the request: :mod:`recstack.workflows.request_context`; the
``context`` block [B, 3] carries all three, the model reads those ``layout.context`` names, so the
dot products in the interaction say "is this item good at this hour"). By default the history bags
share the candidate's item-id table, so their dot product in the interaction measures "is
the candidate like what the user watched" directly (on ML-100K this reranked better than a
separate history table, ``share_history_table=False``).

Trained with binary cross-entropy or a sampled softmax: positives (rating >= threshold, or every
interaction when there are no ratings) against sampled negatives (see recstack.models.dlrm_training).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from recstack.models.candidates import CROSS_FEATURES
from recstack.models.layout import FeatureLayout
from recstack.models.modules import Bag, HistoryPooling, embedding, mlp


@dataclass
class DLRMConfig:
    embedding_dim: int = 32
    dense_hidden: list[int] = field(default_factory=lambda: [64])
    over_hidden: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.1
    max_recency: int = 64
    share_history_table: bool = True  # the history bags use the candidate item-id table
    cross_features: list[str] = field(default_factory=list)
    """Which columns of the ``item_cross`` block (always every one of
    :data:`recstack.models.candidates.CROSS_FEATURES`) the model reads; empty: no such block."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DLRMConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class SparseArch(nn.Module):
    """Sparse inputs -> ``[B, F, e]``, one vector per sparse feature (see the module docstring)."""

    def __init__(self, layout: FeatureLayout, e: int, max_recency: int = 64, share_history_table: bool = True):
        super().__init__()
        self.user_list_splits = [c.max_length for c in layout.user.lists]
        self.item_list_splits = [c.max_length for c in layout.item.lists]
        self.item_tables = nn.ModuleList([embedding(c.cardinality, e) for c in layout.item.cat])
        self.user_tables = nn.ModuleList([embedding(c.cardinality, e) for c in layout.user.cat])
        self.user_bags = nn.ModuleList([Bag(embedding(c.cardinality, e)) for c in layout.user.lists])
        self.item_bags = nn.ModuleList([Bag(embedding(c.cardinality, e)) for c in layout.item.lists])
        table = self.item_tables[0] if share_history_table else embedding(layout.n_items, e)
        self.history = HistoryPooling(table, max_recency)
        self.context_tables = nn.ModuleList([embedding(c.cardinality, e) for c in layout.context])
        self.context_index = layout.context_index
        self.e = e
        self.num_features = (len(self.user_tables) + len(self.user_bags) + 2
                             + len(self.item_tables) + len(self.item_bags) + len(self.context_tables))

    def forward(self, user_cat: torch.Tensor, user_lists: torch.Tensor | None, history: torch.Tensor,
                item_cat: torch.Tensor, item_lists: torch.Tensor | None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([self.user_vectors(user_cat, user_lists, history, context),
                          self.item_vectors(item_cat, item_lists)], dim=1)

    def user_vectors(self, user_cat: torch.Tensor, user_lists: torch.Tensor | None,
                     history: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The request's sparse features (user cat columns, list bags, the two history bags, the
        context columns the layout reads from ``context`` [B, 3]) -> ``[B, Fu, e]``."""
        parts = [t(user_cat[:, i]) for i, t in enumerate(self.user_tables)]
        if self.user_bags:
            parts += [bag(ids) for bag, ids in zip(self.user_bags, torch.split(user_lists, self.user_list_splits, 1))]
        hist = self.history(history)  # [B, 2e]
        parts += [hist[:, : self.e], hist[:, self.e:]]
        if self.context_tables:
            if context is None:
                raise ValueError("DLRM: the layout reads context columns but no 'context' block was given")
            parts += [t(context[:, i]) for i, t in zip(self.context_index, self.context_tables)]
        return torch.stack(parts, dim=1)

    def item_vectors(self, item_cat: torch.Tensor, item_lists: torch.Tensor | None) -> torch.Tensor:
        """The item's sparse features (cat columns, list bags) -> ``[B, Fi, e]``."""
        parts = [t(item_cat[:, i]) for i, t in enumerate(self.item_tables)]
        if self.item_bags:
            parts += [bag(ids) for bag, ids in zip(self.item_bags, torch.split(item_lists, self.item_list_splits, 1))]
        return torch.stack(parts, dim=1)


class DenseArch(nn.Module):
    """``[B, Du + Di]`` float32 -> ``[B, e]`` (a learned constant vector when there is no dense feature)."""

    def __init__(self, in_dim: int, hidden: list[int], e: int):
        super().__init__()
        self.in_dim = in_dim
        if in_dim > 0:
            self.mlp = mlp(in_dim, hidden, e, final_activation=True)
        else:
            self.const = nn.Parameter(torch.zeros(e))

    def forward(self, dense: torch.Tensor, batch_like: torch.Tensor) -> torch.Tensor:
        if self.in_dim > 0:
            return self.mlp(dense)
        return self.const.unsqueeze(0).expand(batch_like.shape[0], -1)


class InteractionArch(nn.Module):
    """Dense [B, e] + sparse [B, F, e] -> [B, e + (F+1)F/2]: dense vector, then the dots of every pair."""

    def __init__(self, num_sparse: int):
        super().__init__()
        n = num_sparse + 1
        rows, cols = torch.triu_indices(n, n, offset=1)
        self.register_buffer("pair_index", rows * n + cols, persistent=False)

    def output_dim(self, e: int) -> int:
        return e + int(self.pair_index.numel())

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        combined = torch.cat([dense.unsqueeze(1), sparse], dim=1)  # [B, F+1, e]
        dots = torch.bmm(combined, combined.transpose(1, 2)).flatten(1)  # [B, (F+1)^2]
        return torch.cat([dense, dots[:, self.pair_index]], dim=1)


class OverArch(nn.Module):
    """``[B, in_dim]`` -> top MLP -> logit ``[B]``."""

    def __init__(self, in_dim: int, hidden: list[int], dropout: float):
        super().__init__()
        self.mlp = mlp(in_dim, hidden, 1, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)


SCORE_ARGS = ("user_cat", "user_lists", "user_cont", "history", "item_cat", "item_lists", "item_cont", "context",
              "item_cross")
"""The batch blocks :meth:`DLRM.score` and :meth:`DLRM.score_candidates` take, in their order."""


class DLRM(nn.Module):
    """Score (user, candidate item) pairs: ``forward(batch) -> logit [B]`` (sigmoid = click probability).

    ``batch`` holds ``user_cat, user_lists?, user_cont?, history, item_cat, item_lists?, item_cont?``,
    ``context`` [B, 3] when ``layout.context`` names columns, and ``item_cross`` [B, F] float32 (the
    candidate's source scores and cross features, :mod:`recstack.models.candidates`) when
    ``cfg.cross_features`` names them; they join the dense (bottom MLP) input.
    """

    def __init__(self, layout: FeatureLayout, cfg: DLRMConfig | None = None):
        super().__init__()
        self.layout = layout
        self.cfg = cfg or DLRMConfig()
        e = self.cfg.embedding_dim
        self.n_user_cont = len(layout.user.cont)
        self.n_item_cont = len(layout.item.cont)
        self.n_cross = len(self.cfg.cross_features)
        unknown = [n for n in self.cfg.cross_features if n not in CROSS_FEATURES]
        if unknown:
            raise ValueError(f"DLRMConfig.cross_features: unknown {unknown}; known: {list(CROSS_FEATURES)}")
        # the item_cross block always carries every CROSS_FEATURES column; the model reads its own
        self.register_buffer("cross_index", torch.tensor([CROSS_FEATURES.index(n) for n in self.cfg.cross_features],
                                                         dtype=torch.long), persistent=False)
        self.sparse_arch = SparseArch(layout, e, self.cfg.max_recency, self.cfg.share_history_table)
        self.dense_arch = DenseArch(self.n_user_cont + self.n_item_cont + self.n_cross, self.cfg.dense_hidden, e)
        self.inter_arch = InteractionArch(self.sparse_arch.num_features)
        self.over_arch = OverArch(self.inter_arch.output_dim(e), self.cfg.over_hidden, self.cfg.dropout)

    def score(self, user_cat: torch.Tensor, user_lists: torch.Tensor | None, user_cont: torch.Tensor | None,
              history: torch.Tensor, item_cat: torch.Tensor, item_lists: torch.Tensor | None,
              item_cont: torch.Tensor | None, context: torch.Tensor | None = None,
              item_cross: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_cross:
            item_cross = item_cross[:, self.cross_index]
        dense_parts = [x for x, n in ((user_cont, self.n_user_cont), (item_cont, self.n_item_cont),
                                      (item_cross, self.n_cross)) if n]
        dense_in = torch.cat(dense_parts, dim=1) if dense_parts else item_cat
        dense = self.dense_arch(dense_in, item_cat)
        sparse = self.sparse_arch(user_cat, user_lists, history, item_cat, item_lists, context)
        return self.over_arch(self.inter_arch(dense, sparse))

    def score_candidates(self, user_cat: torch.Tensor, user_lists: torch.Tensor | None,
                         user_cont: torch.Tensor | None, history: torch.Tensor, item_cat: torch.Tensor,
                         item_lists: torch.Tensor | None, item_cont: torch.Tensor | None,
                         context: torch.Tensor | None = None, item_cross: torch.Tensor | None = None) -> torch.Tensor:
        """Serving form of :meth:`score`: user blocks (and ``context``) ``[B, *]`` once per request, candidate item blocks
        ``[B, K, *]`` -> logits ``[B, K]``. The user's sparse vectors (history pooling included) are
        computed once per user, not once per candidate; the logits equal :meth:`score` on the
        user rows repeated K times."""
        b, k = item_cat.shape[0], item_cat.shape[1]

        def per_candidate(x: torch.Tensor) -> torch.Tensor:  # [B, *] -> [B*K, *]
            return x.unsqueeze(1).expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])

        def flat(x: torch.Tensor | None) -> torch.Tensor | None:  # [B, K, *] -> [B*K, *]
            return None if x is None else x.reshape(b * k, x.shape[2])

        item_cat, item_lists, item_cont, item_cross = flat(item_cat), flat(item_lists), flat(item_cont), flat(item_cross)
        if self.n_cross:
            item_cross = item_cross[:, self.cross_index]
        dense_parts = [x for x, n in ((user_cont, self.n_user_cont), (item_cont, self.n_item_cont),
                                      (item_cross, self.n_cross)) if n]
        if self.n_user_cont:
            dense_parts[0] = per_candidate(user_cont)
        dense_in = torch.cat(dense_parts, dim=1) if dense_parts else item_cat
        dense = self.dense_arch(dense_in, item_cat)
        sparse = torch.cat([per_candidate(self.sparse_arch.user_vectors(user_cat, user_lists, history, context)),
                            self.sparse_arch.item_vectors(item_cat, item_lists)], dim=1)
        return self.over_arch(self.inter_arch(dense, sparse)).reshape(b, k)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``batch`` (see the class docstring) -> logits ``[B]``; grouped, when the item blocks are
        ``[B, K, *]`` (K candidates of each user row, ``item_cross`` [B, K, F] too): logits ``[B, K]``
        by :meth:`score_candidates`, the user's vectors computed once per row (listwise training)."""
        if batch["item_cat"].dim() == 3:
            return self.score_candidates(*[batch.get(name) for name in SCORE_ARGS])
        return self.score(batch["user_cat"], batch.get("user_lists"), batch.get("user_cont"), batch["history"],
                          batch["item_cat"], batch.get("item_lists"), batch.get("item_cont"), batch.get("context"),
                          batch.get("item_cross"))
