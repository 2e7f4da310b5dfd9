"""What both training loops share: the optimiser step, the learning-rate schedule and the
per-epoch model selection (best epoch's weights, early stopping, time budget)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch


def optimiser_step(opt: torch.optim.Optimizer, sched: Any, loss: torch.Tensor) -> float:
    """One backward + optimiser + LR-schedule step; returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def warmup_cosine(total_steps: int, warmup: int = 50) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up over ``warmup`` steps, then cosine decay to 0.1."""
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return fn


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class EpochSelection:
    """Model selection shared by both training loops: keep the best epoch's weights by a
    validation score, stop after ``patience`` epochs without gain or past ``time_budget_s``."""

    def __init__(self, model: torch.nn.Module, select: bool, patience: int, time_budget_s: float | None,
                 bar: Any, shown: tuple[str, ...]):
        self.model, self.select, self.patience, self.time_budget_s = model, select, patience, time_budget_s
        self.bar, self.shown = bar, shown
        self.history: list[dict[str, Any]] = []
        self.best = (-1.0, 0, _state_copy(model))
        self.start = time.perf_counter()

    def end_epoch(self, record: dict[str, Any], score: float | None) -> bool:
        """Record one epoch (``score`` = validation score when selecting); True when training should stop."""
        epoch = record["epoch"]
        if self.select and score is not None and score > self.best[0]:
            self.best = (score, epoch, _state_copy(self.model))
        record["elapsed_s"] = round(time.perf_counter() - self.start, 2)
        self.history.append(record)
        self.bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in self.shown})
        if self.select and epoch - self.best[1] >= self.patience:
            return True
        return self.time_budget_s is not None and time.perf_counter() - self.start > self.time_budget_s

    def finish(self) -> dict[str, Any]:
        """Restore the best weights (when selecting); the training summary."""
        self.bar.close()
        if self.select:
            self.model.load_state_dict(self.best[2])
        self.model.eval()
        return {"epochs_run": len(self.history), "best_epoch": self.best[1] if self.select else len(self.history),
                "history": self.history, "train_s": round(time.perf_counter() - self.start, 2)}
