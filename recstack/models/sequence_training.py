"""Training the two-tower with the sequence user tower (``TwoTowerConfig.user_encoder = "sasrec"``):
next-item prediction at **every** position of each user's training sequence.

Each user's training items (time order) are cut into windows of ``history_length + 1`` items
from the newest backwards (:func:`training_windows`); a window's first ``L`` items are the
encoder's input (with their unix seconds when ``cfg.time_gaps``) and its last ``L`` the targets,
so position t predicts item t + 1 having read items <= t (the causal mask). The loss is the softmax over the whole catalogue (every item
tower output, each step) or, for catalogues above ``cfg.full_softmax_max_items``, a sampled
softmax over the batch's targets plus uniform negatives with the logQ correction
(:func:`recstack.models.sequence.sampled_softmax_loss`). User and item ids are replaced by OOV
with probability ``cfg.id_dropout`` (:func:`recstack.models.two_tower.drop_ids`). After every
epoch: full-catalogue NDCG@10 on the validation split; the best epoch's weights are kept.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from recstack.ids import FIRST_CODE
from recstack.models.data import Interactions, TrainingData
from recstack.models.device import resolve_device, seed_everything, to_tensors
from recstack.models.checkpoint import checkpoint_writer
from recstack.models.loop import PLAIN_STEP, EpochSelection, StepOptions, Trainer, warmup_cosine
from recstack.models.sequence import full_softmax_loss, sampled_softmax_loss
from recstack.models.two_tower import TwoTower, TwoTowerConfig, drop_ids
from recstack.models.validation import split_view, two_tower_epoch_score


def training_windows(rows: Interactions, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each user's items into next-item windows: ``(users [W], inputs [W, L], targets [W, L])``.

    ``rows`` in time order within each user (a user's rows need not be contiguous; their relative
    order is kept). Windows of up to L + 1 items end at the newest item, then every L items
    further back (consecutive windows share one item, so every item but a user's first is a
    target exactly once); both arrays right-aligned, 0 = pad. Users with one item give no window.
    """
    users, inputs, _, targets = timed_training_windows(rows, length)
    return users, inputs, targets


def timed_training_windows(rows: Interactions,
                           length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`training_windows` with the inputs' times: ``(users [W], inputs [W, L], input_times [W, L]
    (unix seconds of each input item, ``rows.times``; 0 = pad), targets [W, L])``."""
    L = int(length)
    order = np.argsort(rows.users, kind="stable")
    users, items, times = rows.users[order], rows.items[order], rows.times[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(users)].astype(np.int64)
    win_user, win_lo, win_hi = [], [], []
    for a, b in zip(starts.tolist(), ends.tolist()):
        hi = b
        while hi - a >= 2:
            lo = max(a, hi - L - 1)
            win_user.append(users[a])
            win_lo.append(lo)
            win_hi.append(hi)
            hi -= L
    n = len(win_user)
    inputs = np.zeros((n, L), np.int64)
    input_times = np.zeros((n, L), np.int64)
    targets = np.zeros((n, L), np.int64)
    for w, (lo, hi) in enumerate(zip(win_lo, win_hi)):
        chunk = items[lo:hi]
        inputs[w, L - len(chunk) + 1:] = chunk[:-1]
        input_times[w, L - len(chunk) + 1:] = times[lo:hi - 1]
        targets[w, L - len(chunk) + 1:] = chunk[1:]
    return np.asarray(win_user, np.int64), inputs, input_times, targets


class _Catalogue:
    """The item feature table on the device, and the log sampling probabilities of the sampled softmax."""

    def __init__(self, data: TrainingData, rows: Interactions, device: torch.device):
        self.features = to_tensors(data.item_features, device)
        counts = np.bincount(rows.items, minlength=data.n_items)[: data.n_items].astype(np.float64)
        counts[:FIRST_CODE] = 0.0
        self.log1m_p = torch.from_numpy(np.log1p(-counts / max(counts.sum(), 1.0))).to(device)
        self.n_items = data.n_items

    def embed(self, model: TwoTower, ids: torch.Tensor | None, id_dropout: float) -> torch.Tensor:
        """Item tower over ``ids`` (None: the whole table, row = encoded id) -> [C, d]."""
        blocks = self.features if ids is None else {k: v[ids] for k, v in self.features.items()}
        blocks = dict(blocks, item_cat=drop_ids(blocks["item_cat"], id_dropout))
        return model.item_tower(blocks["item_cat"], blocks.get("item_lists"), blocks.get("item_cont"))

    def sampled_candidates(self, targets: torch.Tensor, negatives: int,
                           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct ids (sorted) of the targets + ``negatives`` uniform draws, and log P(id in the set)."""
        neg = torch.randint(FIRST_CODE, self.n_items, (negatives,), generator=gen).to(targets.device)
        ids = torch.unique(torch.cat([targets, neg]))
        n_cat = self.n_items - FIRST_CODE
        log_miss = len(targets) * self.log1m_p[ids] + negatives * math.log1p(-1.0 / n_cat)
        return ids, torch.log(-torch.expm1(log_miss)).float()


def fit_sequence_two_tower(data: TrainingData, cfg: TwoTowerConfig, *, epochs: int, lr: float = 1e-3,
                           weight_decay: float = 0.0, patience: int | None = None,
                           device: str | torch.device = "cpu", seed: int = 0, max_wall_s: float | None = None,
                           train_rows: Interactions | None = None, select: bool = True,
                           progress: bool = True, checkpoint_dir: Path | None = None,
                           step_options: StepOptions = PLAIN_STEP, **_unused: Any) -> tuple[TwoTower, dict[str, Any]]:
    """Train a two-tower whose user tower is the sequence encoder; same contract as ``fit_two_tower``
    (``max_wall_s`` a safety stop, a NaN / inf loss stops with the last good epoch, ``checkpoint_dir``,
    bf16 autocast of ``step_options``; one process).

    Batches hold ``cfg.sequence_batch_size`` windows (every non-pad target position counts).
    """
    seed_everything(seed)
    dev = resolve_device(device)
    rows = train_rows if train_rows is not None else data.train
    model = TwoTower(data.layout, cfg).to(dev)
    users, inputs, input_times, targets = timed_training_windows(rows, data.layout.history_length)
    times_input = cfg.reads_history_times
    catalogue = _Catalogue(data, rows, dev)
    full = cfg.use_full_softmax(data.n_items)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    batch = cfg.sequence_batch_size
    total_steps = epochs * max(1, math.ceil(len(users) / batch))
    # a small dataset has few windows per epoch: warm up over at most 5% of the run
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total_steps, warmup=min(50, total_steps // 20 + 1)))
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    view = split_view(data, "valid")
    bar = tqdm(range(epochs), desc="two-tower (sasrec)", unit="epoch", disable=not progress)
    trainer = Trainer(model, opt, sched, dev, step_options)
    selection = EpochSelection(model, select, patience or cfg.sequence_patience, max_wall_s, bar,
                               ("loss", "valid_ndcg@10"), checkpoint_writer(checkpoint_dir, "two_tower", opt, True))
    for epoch in bar:
        model.train()
        perm = rng.permutation(len(users))
        total, n_batches = 0.0, 0
        for s in range(0, len(perm), batch):
            idx = perm[s:s + batch]
            blocks = to_tensors(data.batch(users[idx], inputs[idx],
                                           history_times=input_times[idx] if times_input else None), dev)
            tgt = torch.from_numpy(targets[idx]).to(dev)
            with trainer.autocast():
                user_seq = model.user_tower.every_position(drop_ids(blocks["user_cat"], cfg.id_dropout),
                                                           blocks.get("user_lists"), blocks.get("user_cont"),
                                                           blocks["history"], blocks.get("history_times"))
                mask = tgt > 0
                user_emb, tgt = user_seq[mask].float(), tgt[mask]                    # [P, d], [P]
                if full:
                    loss = full_softmax_loss(user_emb, catalogue.embed(model, None, cfg.id_dropout).float(), tgt,
                                             cfg.temperature)
                else:
                    ids, log_q = catalogue.sampled_candidates(tgt, cfg.uniform_negatives, gen)
                    loss = sampled_softmax_loss(user_emb, tgt, catalogue.embed(model, ids, cfg.id_dropout).float(),
                                                ids, log_q if cfg.logq_correction else torch.zeros_like(log_q),
                                                cfg.temperature)
            value = selection.step(trainer, loss)
            if value is None:
                break
            total += value
            n_batches += 1
        if selection.non_finite:
            break
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": total / max(n_batches, 1)}
        score = two_tower_epoch_score(model, data, view, record) if select else None
        if selection.end_epoch(record, score):
            break
    out = selection.finish()
    out["softmax"] = "full" if full else "sampled"
    out["windows"] = len(users)
    return model, out
