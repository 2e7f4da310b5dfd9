"""A causal self-attention encoder of a user's ordered item history (SASRec-like).

``history`` [B, L] int64 (encoded item ids, oldest -> newest, 0 = pad; the padding may sit on
either side, :func:`right_align` moves it to the left) -> ``[B, L, e]``: output ``t`` has read
the items at positions <= t only (a causal mask), so during training every position predicts
the next item, and at serving time the last position summarises the whole history.

Layers: the item-id embedding table **shared** with the item tower (scaled by sqrt(e)), plus a
learned embedding of "how many items ago" (0 = the most recent; capped at ``max_positions - 1``;
counting from the newest item makes a served history of any length mean the same as in
training) -> dropout -> ``blocks`` pre-LayerNorm transformer blocks (multi-head causal
self-attention, ReLU feed-forward, residuals, dropout) -> a final LayerNorm; pad positions
output zeros.

Time gaps between events are not an input: the online store keeps each user's recent item ids
but not their times (``user_history.recent_items``; only the newest event time is stored), so
serving could not build them; see docs/architecture.md.

Everything exports to ONNX with a dynamic batch and history length (attention is written
out with matmul / softmax, the re-alignment with cumsum / scatter).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from recstack.ids import FIRST_CODE


def right_align(history: torch.Tensor) -> torch.Tensor:
    """Move each row's non-zero ids to the right end, keeping their order: [B, L] -> [B, L].

    A row's pads go to the left. Rows already right-aligned come back unchanged.
    """
    valid = history > 0
    n_valid = valid.sum(dim=1, keepdim=True)
    length = history.shape[1]
    rank_valid = torch.cumsum(valid.to(torch.int64), dim=1) - 1     # 0.. among the valid ids
    rank_pad = torch.cumsum((~valid).to(torch.int64), dim=1) - 1    # 0.. among the pads
    target = torch.where(valid, length - n_valid + rank_valid, rank_pad)
    return torch.zeros_like(history).scatter(1, target, history)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention under a boolean mask: x [B, L, e], allowed [B, 1, L, L] -> [B, L, e]."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"sequence encoder: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, e = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)  # [B, h, L, e/h]
        scores = q @ k.transpose(-1, -2) / math.sqrt(e // self.heads)                        # [B, h, L, L]
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        mixed = (self.dropout(weights) @ v).transpose(1, 2).reshape(B, L, e)
        return self.out(mixed)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + FFN(LN(x)); [B, L, e] -> [B, L, e]."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), allowed))
        return x + self.dropout(self.ffn(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """Causal self-attention over the history: ``history`` [B, L] int64 -> [B, L, e] (e = the table's width).

    Output position t depends on history positions <= t only (after :func:`right_align`); pad
    positions output zeros. :meth:`last` gives the summary vector [B, e] (zeros for an empty history).
    """

    def __init__(self, item_table: nn.Embedding, max_positions: int, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2):
        super().__init__()
        dim = item_table.embedding_dim
        self.item_table = item_table
        self.max_positions = int(max_positions)
        self.positions = nn.Embedding(self.max_positions, dim)
        nn.init.normal_(self.positions.weight, std=0.05)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(dim, heads, dropout) for _ in range(blocks)])
        self.norm = nn.LayerNorm(dim)
        self.scale = math.sqrt(dim)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        history = right_align(history)
        valid = history > 0                                                        # [B, L]
        length = history.shape[1]
        steps = torch.arange(length, device=history.device)
        ago = (length - 1 - steps).clamp(max=self.max_positions - 1)               # [L]: 0 = newest
        x = self.item_table(history) * self.scale + self.positions(ago).unsqueeze(0)
        x = self.dropout(x) * valid.unsqueeze(-1).to(x.dtype)
        causal = steps.unsqueeze(0) <= steps.unsqueeze(1)                          # [L, L]: key j <= query i
        # a pad key is never read; every query may read itself, so no row is all -inf
        allowed = (causal & valid.unsqueeze(1)) | torch.eye(length, dtype=torch.bool, device=history.device)
        allowed = allowed.unsqueeze(1)                                             # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x) * valid.unsqueeze(-1).to(x.dtype)

    def last(self, history: torch.Tensor) -> torch.Tensor:
        """The newest position's output: [B, L] -> [B, e]."""
        return self.forward(history)[:, -1]


def full_softmax_loss(user_emb: torch.Tensor, all_item_emb: torch.Tensor, targets: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Cross-entropy over the whole catalogue: user_emb [P, d], all_item_emb [n_items, d] (row = encoded id;
    rows 0 / 1 = pad / OOV are never a target and are excluded), targets [P] encoded ids -> mean loss."""
    logits = user_emb @ all_item_emb[FIRST_CODE:].T / temperature
    return F.cross_entropy(logits, targets - FIRST_CODE)


def sampled_softmax_loss(user_emb: torch.Tensor, targets: torch.Tensor, cand_emb: torch.Tensor,
                         cand_ids: torch.Tensor, cand_log_q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sampled softmax with logQ correction over a candidate set shared by the batch.

    ``user_emb`` [P, d], ``targets`` [P] encoded ids; ``cand_emb`` [C, d], ``cand_ids`` [C] distinct
    ids containing every target, ``cand_log_q`` [C] log probability that each candidate is in the set
    (subtracted from its logit, which makes the sampled softmax an unbiased estimate of the full one).
    """
    logits = user_emb @ cand_emb.T / temperature - cand_log_q.unsqueeze(0)
    position = torch.searchsorted(cand_ids, targets)  # cand_ids sorted ascending
    return F.cross_entropy(logits, position)
