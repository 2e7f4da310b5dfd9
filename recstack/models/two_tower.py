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

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from recstack.ids import OOV
from recstack.models.layout import FeatureLayout, reads_history_times
from recstack.models.modules import Bag, HistoryPooling, embedding, masked_mean, mlp
from recstack.models.sequence import SequenceEncoder

USER_ENCODERS = ("auto", "sasrec", "pool")
SEQUENCE_MIN_ROWS = 300_000
"""``user_encoder="auto"`` picks the sequence encoder from this many training interactions on.
ML-100K (99k rows, CPU, valid NDCG@10): pool 0.139 after 4 epochs (test HR@10 / NDCG@10 .2153 /
.1138); sasrec 0.132 at its best epoch (19 of 29, early stopping; test .2185 / .1191, within the
run-to-run spread) at ~5x the pool's training time; chosen on validation and time, the small
dataset keeps the pool. ML-1M (~1M rows, ~165 items per user) is where a sequence model
is expected to pay off (published SASRec .285 / .160 HR / NDCG@10, .315 HR@10 with full
cross-entropy)."""
SOFTMAX_KINDS = ("auto", "full", "sampled")


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
    # "sasrec": causal self-attention over the ordered history (recstack.models.sequence), trained
    # on every position; "pool": the masked mean + recency-weighted mean of HistoryPooling;
    # "auto": sasrec from SEQUENCE_MIN_ROWS training rows on, else pool (resolved at training)
    user_encoder: str = "auto"
    blocks: int = 2               # sasrec: transformer blocks
    heads: int = 1                # sasrec: attention heads
    sequence_dropout: float = 0.2  # sasrec: dropout inside the encoder (SASRec's ML-1M value)
    sequence_mean: bool = False   # sasrec: also join the mean of the history's item embeddings (causal in training)
    # sasrec: add an embedding of the log-bucketed gap to the previous history item (input
    # ``history_times``, the online store's ``recent_times``); models saved before it load as False.
    # ML-100K valid NDCG@10, 30 epochs, 3 seeds: 0.1364 +- 0.0018 with, 0.1340 +- 0.0044 without
    time_gaps: bool = True
    # sasrec loss: "full" softmax over the catalogue, "sampled" (in-batch targets + uniform
    # negatives, logQ-corrected), "auto" = full up to full_softmax_max_items items
    softmax: str = "auto"
    full_softmax_max_items: int = 200_000
    sequence_epochs: int = 200    # sasrec: epoch cap when none is given (early stopping on valid NDCG@10)
    sequence_patience: int = 10   # sasrec: epochs without a validation gain before stopping
    # sasrec batch / lr, ML-100K valid NDCG@10 (CPU, L = 50), batch 64 (SASRec's 128 halves the
    # steps of a small dataset's epoch): lr 2e-3 with absolute positions 0.101 after 6 epochs, 0.121
    # after 14; lr 5e-3 0.090 after 4 (2e-3: 0.094); lr 3e-3 with relative positions 0.107 after 6,
    # 0.132 after 19
    sequence_batch_size: int = 64   # sasrec: sequences per step (each with up to history_length targets)
    sequence_lr: float = 3e-3     # sasrec: Adam learning rate
    id_dropout: float = 0.1       # training: a user / item id becomes OOV with this probability

    def __post_init__(self) -> None:
        if self.user_encoder not in USER_ENCODERS:
            raise ValueError(f"user_encoder: expected one of {USER_ENCODERS}, got {self.user_encoder!r}")
        if self.softmax not in SOFTMAX_KINDS:
            raise ValueError(f"softmax: expected one of {SOFTMAX_KINDS}, got {self.softmax!r}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout: expected a probability in [0, 1), got {self.id_dropout!r}")

    def resolved(self, n_train_rows: int) -> "TwoTowerConfig":
        """This config with ``user_encoder="auto"`` replaced by the encoder for that many training rows."""
        if self.user_encoder != "auto":
            return self
        return replace(self, user_encoder="sasrec" if n_train_rows >= SEQUENCE_MIN_ROWS else "pool")

    @property
    def reads_history_times(self) -> bool:
        """Whether the user tower takes the ``history_times`` input (the sequence encoder with time gaps)."""
        return reads_history_times({"user_encoder": self.user_encoder, "time_gaps": self.time_gaps})  # one rule

    def use_full_softmax(self, n_items: int) -> bool:
        return self.softmax == "full" or (self.softmax == "auto" and n_items <= self.full_softmax_max_items)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TwoTowerConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known.setdefault("user_encoder", "pool")  # saved before the sequence encoder existed
        known.setdefault("time_gaps", False)      # saved before the time-gap input existed
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
    item ids, oldest -> newest, 0 = pad on either side; any L), ``history_times`` [B, L] int64
    (unix seconds of the history items; sasrec with ``time_gaps`` only). The history is read with the
    shared item-id table: pooled into a masked mean and a recency-weighted mean
    (:class:`HistoryPooling`, [B, 2e]; ``user_encoder="pool"``), or encoded by causal
    self-attention (:class:`SequenceEncoder`, the newest position's output [B, e]; ``"sasrec"``).
    The user's own features join after it: [B, e * (Cu + n_lists) + (2e or e) + Du] -> MLP ->
    normalise -> [B, output_dim].
    """

    def __init__(self, layout: FeatureLayout, cfg: TwoTowerConfig, item_id_table: nn.Embedding):
        super().__init__()
        e = cfg.embedding_dim
        self.list_splits = [c.max_length for c in layout.user.lists]
        self.cat_tables = nn.ModuleList([embedding(c.cardinality, e) for c in layout.user.cat])
        self.list_bags = nn.ModuleList([Bag(embedding(c.cardinality, e)) for c in layout.user.lists])
        if cfg.user_encoder == "auto":
            raise ValueError('user_encoder "auto": resolve it first (TwoTowerConfig.resolved(n_train_rows))')
        self.sequential = cfg.user_encoder == "sasrec"
        if self.sequential:
            self.encoder = SequenceEncoder(item_id_table, layout.history_length, cfg.blocks, cfg.heads,
                                           cfg.sequence_dropout, time_gaps=cfg.time_gaps)
        else:
            self.history = HistoryPooling(item_id_table, cfg.max_recency)
        self.with_mean = self.sequential and cfg.sequence_mean
        self.n_cont = len(layout.user.cont)
        history_width = (2 * e if self.with_mean else e) if self.sequential else 2 * e
        in_dim = e * (len(self.cat_tables) + len(self.list_bags)) + history_width + self.n_cont
        self.mlp = mlp(in_dim, cfg.hidden, cfg.output_dim, cfg.dropout)

    def _join(self, read: torch.Tensor, user_cat: torch.Tensor, user_lists: torch.Tensor | None,
              user_cont: torch.Tensor | None) -> torch.Tensor:
        """[id + cat embeddings, list bags, ``read`` (the history's vector), continuous] along the last
        dim (the order saved models were trained with); ``read`` [B, h] or [B, L, h] (then the user's
        features repeat along L) -> [B, in_dim] or [B, L, in_dim]."""
        parts = [table(user_cat[:, i]) for i, table in enumerate(self.cat_tables)]
        if self.list_bags:
            for bag, ids in zip(self.list_bags, torch.split(user_lists, self.list_splits, dim=1)):
                parts.append(bag(ids))
        post = [user_cont] if self.n_cont else []
        if read.dim() == 3:
            parts = [p.unsqueeze(1).expand(-1, read.shape[1], -1) for p in parts]
            post = [p.unsqueeze(1).expand(-1, read.shape[1], -1) for p in post]
        return torch.cat(parts + [read] + post, dim=-1)

    def forward(self, user_cat: torch.Tensor, user_lists: torch.Tensor | None = None,
                user_cont: torch.Tensor | None = None, history: torch.Tensor | None = None,
                history_times: torch.Tensor | None = None) -> torch.Tensor:
        if not self.sequential:
            read = self.history(history)
        elif self.with_mean:
            read = torch.cat([self.encoder.last(history, history_times),
                              masked_mean(self.encoder.item_table(history), history)], 1)
        else:
            read = self.encoder.last(history, history_times)
        return F.normalize(self.mlp(self._join(read, user_cat, user_lists, user_cont)), dim=-1)

    def every_position(self, user_cat: torch.Tensor, user_lists: torch.Tensor | None,
                       user_cont: torch.Tensor | None, history: torch.Tensor,
                       history_times: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence encoder only: the user embedding after each history position, [B, L, output_dim]
        (position t has read history[:, :t + 1] and its times; ``history`` right-aligned, as training
        builds it)."""
        seq = self.encoder(history, history_times)                             # [B, L, e]
        if self.with_mean:  # the mean of history[:, :t + 1] at each t
            valid = (history > 0).unsqueeze(-1).to(seq.dtype)
            total = torch.cumsum(self.encoder.item_table(history) * valid, dim=1)
            seq = torch.cat([seq, total / torch.cumsum(valid, dim=1).clamp(min=1.0)], dim=2)
        return F.normalize(self.mlp(self._join(seq, user_cat, user_lists, user_cont)), dim=-1)


def drop_ids(cat: torch.Tensor, p: float) -> torch.Tensor:
    """Training-time id dropout: column 0 (the id) of ``cat`` [B, C] replaced by OOV with probability p
    (pad ids stay pad), so the OOV row learns to stand for an unseen user / item."""
    if p <= 0:
        return cat
    drop = (torch.rand(cat.shape[0], device=cat.device) < p) & (cat[:, 0] > 0)
    out = cat.clone()
    out[:, 0] = torch.where(drop, torch.full_like(out[:, 0], OOV), out[:, 0])
    return out


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
                               batch["history"], batch.get("history_times"))

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
