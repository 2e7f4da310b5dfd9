"""Two-tower retrieval model: a user tower and an item tower mapping to one L2-normalised space.

Score of (user, item) = dot(user_embedding, item_embedding) (a cosine); retrieval = inner
product search over ``item_embeddings.npy`` (a FAISS index, built by the retrieval stage).

Layout of the inputs: :mod:`recstack.models.layout`. The item-id embedding table is
**shared**: the item tower embeds the candidate's id with it and the user tower pools the
user's history with the same table, so "items like the ones you watched" is learnt once
(and a history item and a candidate live in the same space). ``user_tower.onnx`` carries
its own copy of the table's weights.

Training: in-batch sampled softmax (:func:`in_batch_softmax_loss`) with a temperature,
logQ correction for the popularity bias of in-batch negatives, optional extra negatives
drawn uniformly from the catalogue, and duplicates of a row's positive masked out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from recstack.models.layout import FeatureLayout
from recstack.models.modules import Bag, HistoryPooling, embedding, mlp


@dataclass
class TwoTowerConfig:
    embedding_dim: int = 64       # width of every embedding table
    output_dim: int = 64          # d of the user / item embeddings
    hidden: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.1
    temperature: float = 0.07
    logq_correction: bool = True
    uniform_negatives: int = 512  # extra catalogue-uniform negatives shared by a batch (0 = in-batch only)
    max_recency: int = 64

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TwoTowerConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ItemTower(nn.Module):
    """Item features -> L2-normalised embedding.

    Inputs: ``item_cat`` [B, Ci] int64 (col 0 = item id), ``item_lists`` [B, Li] int64
    (optional), ``item_cont`` [B, Di] float32 (optional). Output [B, output_dim].
    Each cat column has a table [cardinality, e]; each list column a masked-mean bag.
    Concatenated [B, e * (Ci + n_lists) + Di] -> MLP -> normalise.
    """

    def __init__(self, layout: FeatureLayout, cfg: TwoTowerConfig):
        super().__init__()
        e = cfg.embedding_dim
        self.list_splits = [c.max_length for c in layout.item.lists]
        self.cat_tables = nn.ModuleList([embedding(c.cardinality, e) for c in layout.item.cat])
        self.list_bags = nn.ModuleList([Bag(embedding(c.cardinality, e)) for c in layout.item.lists])
        self.n_cont = len(layout.item.cont)
        in_dim = e * (len(self.cat_tables) + len(self.list_bags)) + self.n_cont
        self.mlp = mlp(in_dim, cfg.hidden, cfg.output_dim, cfg.dropout)

    @property
    def id_table(self) -> nn.Embedding:
        return self.cat_tables[0]

    def forward(self, item_cat: torch.Tensor, item_lists: torch.Tensor | None = None,
                item_cont: torch.Tensor | None = None) -> torch.Tensor:
        parts = [table(item_cat[:, i]) for i, table in enumerate(self.cat_tables)]
        if self.list_bags:
            for bag, ids in zip(self.list_bags, torch.split(item_lists, self.list_splits, dim=1)):
                parts.append(bag(ids))
        if self.n_cont:
            parts.append(item_cont)
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


class UserTower(nn.Module):
    """User features + history -> L2-normalised embedding.

    Inputs: ``user_cat`` [B, Cu] int64 (col 0 = user id), ``user_lists`` [B, Lu] int64
    (optional), ``user_cont`` [B, Du] float32 (optional), ``history`` [B, L] int64 (encoded
    item ids, 0 = pad; any L). The history is pooled with the shared item-id table into a
    masked mean and a recency-weighted mean (:class:`HistoryPooling`, [B, 2e]).
    Concatenated [B, e * (Cu + n_lists + 2) + Du] -> MLP -> normalise -> [B, output_dim].
    """

    def __init__(self, layout: FeatureLayout, cfg: TwoTowerConfig, item_id_table: nn.Embedding):
        super().__init__()
        e = cfg.embedding_dim
        self.list_splits = [c.max_length for c in layout.user.lists]
        self.cat_tables = nn.ModuleList([embedding(c.cardinality, e) for c in layout.user.cat])
        self.list_bags = nn.ModuleList([Bag(embedding(c.cardinality, e)) for c in layout.user.lists])
        self.history = HistoryPooling(item_id_table, cfg.max_recency)
        self.n_cont = len(layout.user.cont)
        in_dim = e * (len(self.cat_tables) + len(self.list_bags) + 2) + self.n_cont
        self.mlp = mlp(in_dim, cfg.hidden, cfg.output_dim, cfg.dropout)

    def forward(self, user_cat: torch.Tensor, user_lists: torch.Tensor | None = None,
                user_cont: torch.Tensor | None = None, history: torch.Tensor | None = None) -> torch.Tensor:
        parts = [table(user_cat[:, i]) for i, table in enumerate(self.cat_tables)]
        if self.list_bags:
            for bag, ids in zip(self.list_bags, torch.split(user_lists, self.list_splits, dim=1)):
                parts.append(bag(ids))
        parts.append(self.history(history))
        if self.n_cont:
            parts.append(user_cont)
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


class TwoTower(nn.Module):
    """The two towers, sharing the item-id table. ``forward(batch) -> (user_emb [B, d], item_emb [B, d])``."""

    def __init__(self, layout: FeatureLayout, cfg: TwoTowerConfig | None = None):
        super().__init__()
        self.layout = layout
        self.cfg = cfg or TwoTowerConfig()
        self.item_tower = ItemTower(layout, self.cfg)
        self.user_tower = UserTower(layout, self.cfg, self.item_tower.id_table)

    def user_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_tower(batch["user_cat"], batch.get("user_lists"), batch.get("user_cont"),
                               batch["history"])

    def item_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.item_tower(batch["item_cat"], batch.get("item_lists"), batch.get("item_cont"))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding(batch), self.item_embedding(batch)


def in_batch_softmax_loss(user_emb: torch.Tensor, item_emb: torch.Tensor, item_ids: torch.Tensor,
                          temperature: float, log_q: torch.Tensor | None = None,
                          neg_emb: torch.Tensor | None = None, neg_ids: torch.Tensor | None = None,
                          neg_log_q: torch.Tensor | None = None, row_offset: int = 0) -> torch.Tensor:
    """Sampled softmax where row i's positive is item ``row_offset + i`` and the other items are negatives.

    ``user_emb``/``item_emb`` [B, d]; ``item_ids`` [B] (encoded ids: a column holding the
    same item as row i's positive is masked, so a duplicate is never a negative);
    ``log_q`` [B]: log sampling probability of each in-batch item (logQ correction,
    subtracted from the logits); ``neg_*``: extra negatives [N, d] / [N] / [N] (e.g. drawn
    uniformly from the catalogue) appended as columns. ``row_offset``: under data parallel
    training ``user_emb`` holds this rank's b rows and ``item_emb`` / ``item_ids`` / ``log_q`` the whole
    global batch [B_global, ...] (:meth:`recstack.models.distributed.Distributed.gather`); row i's
    positive is column ``row_offset + i``. Returns the mean cross-entropy over the rows.
    """
    logits = user_emb @ item_emb.T / temperature  # [b, B]
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    target = torch.arange(user_emb.shape[0], device=item_ids.device) + row_offset
    own_ids = item_ids[target]
    same = item_ids.unsqueeze(0) == own_ids.unsqueeze(1)
    own = torch.arange(len(item_ids), device=item_ids.device).unsqueeze(0) == target.unsqueeze(1)
    logits = logits.masked_fill(same & ~own, float("-inf"))
    if neg_emb is not None:
        extra = user_emb @ neg_emb.T / temperature  # [b, N]
        if neg_log_q is not None:
            extra = extra - neg_log_q.unsqueeze(0)
        if neg_ids is not None:
            extra = extra.masked_fill(neg_ids.unsqueeze(0) == own_ids.unsqueeze(1), float("-inf"))
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits, target)
