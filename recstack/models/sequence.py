"""A causal self-attention encoder of a user's ordered item history (SASRec-like).

``history`` [B, L] int64 (encoded item ids, oldest -> newest, 0 = pad; the padding may sit on
either side, :func:`right_align` moves it to the left) -> ``[B, L, e]``: output ``t`` has read
the items at positions <= t only (a causal mask), so during training every position predicts
the next item, and at serving time the last position summarises the whole history.

Layers: the item-id embedding table **shared** with the item tower (scaled by sqrt(e)) ->
dropout -> ``blocks`` pre-LayerNorm transformer blocks (multi-head causal self-attention with a
learned bias per head for each query-key distance "j items earlier", capped at
``max_positions - 1``; ReLU feed-forward; residuals; dropout) -> a final LayerNorm; pad positions
output zeros. Positions are **relative** (no absolute position embedding): output t is exactly
what the encoder gives for the history cut after t, so what training scores at every position
is what serving computes at the last one, whatever the history length.

Time gaps (``time_gaps=True``): ``times`` [B, L] int64 (unix seconds of each history item, the
online store's ``user_history.recent_times``) -> the gap to the **previous** history item, bucketed
on a log scale (:data:`TIME_GAP_EDGES_S`, :func:`time_gap_buckets`) -> a learned embedding added to
the item input. Position t's gap reads the times of t and t - 1 only, so causality and "training
position t = the served history cut after t" both hold; the oldest item of a window has no known
predecessor (bucket 0, like padding). The gap to the request time is deliberately not an input:
in training it would be the next (target) item's time, and the item tower is not time-aware.

Everything exports to ONNX with a dynamic batch and history length (attention is written
out with matmul / softmax, the re-alignment with cumsum / scatter).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from recstack.ids import FIRST_CODE

TIME_GAP_EDGES_S = (1, 10, 60, 600, 3_600, 86_400, 604_800, 2_592_000, 31_536_000)
"""Lower edges (seconds) of the time-gap buckets: 1 s, 10 s, 1 min, 10 min, 1 h, 1 day, 1 week,
30 days, 365 days. Bucket 0 = padding or unknown (a window's oldest item); bucket 1 = under 1 s
(same second; an out-of-order negative gap also lands here); bucket k + 1 = [edge k - 1, edge k)
for k = 1..8; bucket 10 = one year or more."""
TIME_GAP_BUCKETS = len(TIME_GAP_EDGES_S) + 2


def right_align(history: torch.Tensor, *aligned_with: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Move each row's non-zero ids to the right end, keeping their order: [B, L] -> [B, L].

    A row's pads go to the left. Rows already right-aligned come back unchanged. Tensors in
    ``aligned_with`` ([B, L] each, e.g. the items' times) move the same way and come back after
    the history, as a tuple.
    """
    valid = history > 0
    n_valid = valid.sum(dim=1, keepdim=True)
    length = history.shape[1]
    rank_valid = torch.cumsum(valid.to(torch.int64), dim=1) - 1     # 0.. among the valid ids
    rank_pad = torch.cumsum((~valid).to(torch.int64), dim=1) - 1    # 0.. among the pads
    target = torch.where(valid, length - n_valid + rank_valid, rank_pad)
    moved = torch.zeros_like(history).scatter(1, target, history)
    if not aligned_with:
        return moved
    return (moved,) + tuple(torch.zeros_like(t).scatter(1, target, t) for t in aligned_with)


def time_gap_buckets(history: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Bucket of the gap to the previous history item: ``history`` [B, L] (0 = pad), ``times`` [B, L]
    int64 unix seconds, both right-aligned -> [B, L] int64 in 0 .. TIME_GAP_BUCKETS - 1
    (:data:`TIME_GAP_EDGES_S`; 0 where the item or its predecessor is padding)."""
    valid = history > 0
    gap = times[:, 1:] - times[:, :-1]                                              # [B, L - 1]
    edges = torch.tensor(TIME_GAP_EDGES_S, dtype=torch.int64, device=times.device)
    bucket = 1 + (gap.unsqueeze(-1) >= edges).sum(dim=-1)
    bucket = torch.where(valid[:, 1:] & valid[:, :-1], bucket, torch.zeros_like(bucket))
    return torch.cat([torch.zeros_like(bucket[:, :1]), bucket], dim=1)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a learned bias per head and query-key distance.

    x [B, L, e], ``allowed`` [B, 1, L, L] bool, ``distance`` [L, L] int64 (query - key, clamped to
    0 .. max_positions - 1) -> [B, L, e].
    """

    def __init__(self, dim: int, heads: int, dropout: float, max_positions: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"sequence encoder: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.distance_bias = nn.Embedding(max_positions, heads)
        nn.init.zeros_(self.distance_bias.weight)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        B, L, e = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)  # [B, h, L, e/h]
        scores = q @ k.transpose(-1, -2) / math.sqrt(e // self.heads)                        # [B, h, L, L]
        scores = scores + self.distance_bias(distance).permute(2, 0, 1).unsqueeze(0)         # [1, h, L, L]
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        mixed = (self.dropout(weights) @ v).transpose(1, 2).reshape(B, L, e)
        return self.out(mixed)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + FFN(LN(x)); [B, L, e] -> [B, L, e]."""

    def __init__(self, dim: int, heads: int, dropout: float, max_positions: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout, max_positions)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), allowed, distance))
        return x + self.dropout(self.ffn(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """Causal self-attention over the history: ``history`` [B, L] int64 (+ ``times`` [B, L] int64 unix
    seconds when ``time_gaps``) -> [B, L, e] (e = the table's width).

    Output position t depends on history positions <= t only (after :func:`right_align`); pad
    positions output zeros. :meth:`last` gives the summary vector [B, e] (zeros for an empty history).
    """

    def __init__(self, item_table: nn.Embedding, max_positions: int, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2, time_gaps: bool = False):
        super().__init__()
        dim = item_table.embedding_dim
        self.item_table = item_table
        self.time_gaps = bool(time_gaps)
        if self.time_gaps:  # zero start: training begins from the gap-blind encoder
            self.gap_table = nn.Embedding(TIME_GAP_BUCKETS, dim)
            nn.init.zeros_(self.gap_table.weight)
        self.max_positions = int(max_positions)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(dim, heads, dropout, self.max_positions) for _ in range(blocks)])
        self.norm = nn.LayerNorm(dim)
        self.scale = math.sqrt(dim)

    def forward(self, history: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        if self.time_gaps:
            if times is None:
                raise ValueError("sequence encoder with time_gaps: the history's times are required")
            history, times = right_align(history, times)
        else:
            history = right_align(history)
        valid = history > 0                                                        # [B, L]
        length = history.shape[1]
        steps = torch.arange(length, device=history.device)
        distance = steps.unsqueeze(1) - steps.unsqueeze(0)                         # [L, L]: query i - key j
        x = self.item_table(history) * self.scale
        if self.time_gaps:
            x = x + self.gap_table(time_gap_buckets(history, times))
        x = self.dropout(x)
        x = x * valid.unsqueeze(-1).to(x.dtype)
        # a key after the query or a pad key is never read; every query may read itself (no all -inf row)
        allowed = ((distance >= 0) & valid.unsqueeze(1)) | (distance == 0)
        allowed = allowed.unsqueeze(1)                                             # [B, 1, L, L]
        distance = distance.clamp(0, self.max_positions - 1)
        for block in self.blocks:
            x = block(x, allowed, distance)
        return self.norm(x) * valid.unsqueeze(-1).to(x.dtype)

    def last(self, history: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        """The newest position's output: [B, L] (+ times [B, L]) -> [B, e]."""
        return self.forward(history, times)[:, -1]


def full_softmax_loss(user_emb: torch.Tensor, all_item_emb: torch.Tensor, targets: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Cross-entropy over the whole catalogue: user_emb [P, d], all_item_emb [n_items, d] (row = encoded id;
    rows 0 / 1 = pad / OOV are never a target and are excluded), targets [P] encoded ids -> mean loss."""
    # temperature scales the [P, d] side, not the [P, n_items] logits: one pass over the large
    # matrix less, forward and backward (ML-1M, CPU: the division was 13% of a step)
    logits = (user_emb / temperature) @ all_item_emb[FIRST_CODE:].T
    return F.cross_entropy(logits, targets - FIRST_CODE)


def sampled_softmax_loss(user_emb: torch.Tensor, targets: torch.Tensor, cand_emb: torch.Tensor,
                         cand_ids: torch.Tensor, cand_log_q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sampled softmax with logQ correction over a candidate set shared by the batch.

    ``user_emb`` [P, d], ``targets`` [P] encoded ids; ``cand_emb`` [C, d], ``cand_ids`` [C] distinct
    ids containing every target, ``cand_log_q`` [C] log probability that each candidate is in the set
    (subtracted from its logit, which makes the sampled softmax an unbiased estimate of the full one).
    """
    logits = (user_emb / temperature) @ cand_emb.T - cand_log_q.unsqueeze(0)
    position = torch.searchsorted(cand_ids, targets)  # cand_ids sorted ascending
    return F.cross_entropy(logits, position)
