"""Small building blocks shared by the two-tower and DLRM models.

Everything here exports to ONNX (``torch.onnx.export(..., dynamo=True)``): bags are
``nn.Embedding`` + a masked mean (``nn.EmbeddingBag`` with ``padding_idx`` does not
export), and the recency pooling uses only flip / cumsum / gather.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden: list[int] | tuple[int, ...], out_dim: int, dropout: float = 0.0,
        final_activation: bool = False) -> nn.Sequential:
    """Linear -> ReLU (-> Dropout) per hidden width, then Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_dim))
    if final_activation:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def masked_mean(emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``emb`` [B, L, d] over positions whose id is non-zero -> [B, d] (zeros for empty bags)."""
    mask = (ids > 0).to(emb.dtype).unsqueeze(-1)
    total = (emb * mask).sum(dim=1)
    count = mask.sum(dim=1).clamp(min=1.0)
    return total / count


class Bag(nn.Module):
    """Multi-hot feature -> one vector: ``nn.Embedding`` + masked mean over non-zero ids.

    Input ``ids`` [B, L] int64 (0 = pad); output [B, dim].
    """

    def __init__(self, table: nn.Embedding):
        super().__init__()
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return masked_mean(self.table(ids), ids)


class HistoryPooling(nn.Module):
    """Pool a user's item history into two vectors: masked mean and recency-weighted mean.

    ``history`` [B, L] int64, encoded item ids, oldest -> newest, 0 = pad (padding may sit on
    either side: positions are counted from the most recent non-pad item, so the result does
    not depend on where the padding is). The recency weights are a learned softmax over
    "how many items ago" (1 = most recent, capped at ``max_recency``), so the most recent
    items can weigh more than the mean gives them. Output [B, 2 * dim].
    """

    def __init__(self, table: nn.Embedding, max_recency: int = 64):
        super().__init__()
        self.table = table
        self.max_recency = int(max_recency)
        self.recency_logit = nn.Embedding(self.max_recency, 1)
        with torch.no_grad():  # start as a gentle decay toward older items
            self.recency_logit.weight.copy_(-0.1 * torch.arange(self.max_recency, dtype=torch.float32).unsqueeze(1))

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        emb = self.table(history)  # [B, L, d]
        valid = history > 0
        maskf = valid.to(emb.dtype)
        mean = masked_mean(emb, history)
        # items-ago index: 0 for the most recent valid item, 1 for the one before, ...
        ago = torch.flip(torch.cumsum(torch.flip(maskf, dims=[1]), dim=1), dims=[1]) - 1.0
        ago = ago.clamp(min=0.0, max=float(self.max_recency - 1)).to(torch.int64)
        logits = self.recency_logit(ago).squeeze(-1)  # [B, L]
        logits = torch.where(valid, logits, torch.full_like(logits, -1e4))
        weights = torch.softmax(logits, dim=1) * maskf  # all-pad rows -> zeros
        recent = (emb * weights.unsqueeze(-1)).sum(dim=1)
        return torch.cat([mean, recent], dim=1)


def embedding(cardinality: int, dim: int, init_std: float = 0.05) -> nn.Embedding:
    table = nn.Embedding(int(cardinality), int(dim))
    nn.init.normal_(table.weight, std=init_std)
    with torch.no_grad():
        table.weight[0].zero_()  # row 0 = padding; masked out everywhere, kept at zero for clarity
    return table
