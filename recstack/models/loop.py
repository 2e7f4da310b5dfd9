"""What both training loops share: the training step (autocast, NaN check, backward, optimiser, LR
schedule), the learning-rate schedule and the per-epoch model selection (best epoch's weights,
early stopping on validation, a wall-clock safety stop that is reported, the last good checkpoint)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from recstack.models.distributed import SINGLE_PROCESS, Distributed

AUTO_ON_CUDA = {"bf16": False, "compile": False}
"""What ``precision: auto`` / ``compile: auto`` turn on on CUDA (always off on CPU). bf16 autocast
measured slower on one H100 with these models (two-tower B=8192 609k vs 872k samples/s fp32, DLRM
B=65536 1.97M vs 2.1M); torch.compile stays off until benchmarks/train_throughput.py measures a gain."""

STOP_REASONS = ("max_epochs", "early_stopping", "wall_clock_limit", "non_finite_loss")


@dataclass(frozen=True)
class StepOptions:
    """GPU switches of the training step: bf16 autocast of forward + loss, torch.compile of the forward."""

    bf16: bool = False
    compile: bool = False


def resolve_step_options(precision: str, compile_: Any, device: torch.device) -> StepOptions:
    """``precision`` auto/fp32/bf16 and ``compile_`` auto/True/False -> the switches for ``device``."""
    cuda = device.type == "cuda"
    bf16 = precision == "bf16" or (precision == "auto" and cuda and AUTO_ON_CUDA["bf16"])
    comp = compile_ is True or (compile_ == "auto" and cuda and AUTO_ON_CUDA["compile"])
    return StepOptions(bool(bf16), bool(comp))


PLAIN_STEP = StepOptions()
"""fp32, eager: the default of the training functions."""


class NonFiniteLoss(RuntimeError):
    """A training step's loss was NaN or infinite (every rank raises it at the same step)."""

    def __init__(self, value: float, step: int):
        super().__init__(f"loss {value} at step {step}")
        self.value, self.step = value, step


class Trainer:
    """One optimiser step per batch. ``forward`` is the model to call (DDP-wrapped under torchrun,
    compiled when asked); parameters and state dicts stay those of ``model``."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, device: torch.device,
                 options: StepOptions = PLAIN_STEP, ddp: Distributed = SINGLE_PROCESS):
        self.model, self.opt, self.sched, self.device, self.options, self.ddp = model, opt, sched, device, options, ddp
        wrapped = ddp.wrap(model, device)
        self.forward: Any = torch.compile(wrapped) if options.compile else wrapped
        self.steps = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast around forward + loss when switched on, else nothing."""
        if not self.options.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def step(self, loss: torch.Tensor) -> float:
        """Backward + optimiser + schedule; returns the (global, under DDP) loss value.

        A NaN / inf loss raises :class:`NonFiniteLoss` before the weights change."""
        value = self.ddp.mean(float(loss.detach()))
        if not math.isfinite(value):
            raise NonFiniteLoss(value, self.steps + 1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.steps += 1
        return value


def settings_summary(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Training keyword arguments as JSON values for a model's ``config.json`` "training"."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if isinstance(value, Distributed):
            out["world_size"] = value.world
        elif isinstance(value, StepOptions):
            out.update({"bf16": value.bf16, "compile": value.compile})
        elif key == "checkpoint_dir":
            out[key] = None if value is None else str(value)
        else:
            out[key] = value
    return out


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
    """Model selection shared by both training loops: keep the best epoch's weights by a validation
    score, stop after ``patience`` epochs without gain; ``max_wall_s`` is a safety stop only (checked
    at epoch ends, reported as ``stop_reason: wall_clock_limit``). ``checkpoint(model, record)``, when
    given, is called after every completed epoch (the last good checkpoint on disk)."""

    def __init__(self, model: torch.nn.Module, select: bool, patience: int, max_wall_s: float | None,
                 bar: Any, shown: tuple[str, ...], checkpoint: Callable[[torch.nn.Module, dict], None] | None = None):
        self.model, self.select, self.patience, self.max_wall_s = model, select, patience, max_wall_s
        self.bar, self.shown, self.checkpoint = bar, shown, checkpoint
        self.history: list[dict[str, Any]] = []
        initial = _state_copy(model)
        self.best = (-math.inf, 0, initial)
        self.last_good = (0, initial)
        self.stop_reason = "max_epochs"
        self.non_finite: dict[str, Any] | None = None
        self.start = time.perf_counter()

    def end_epoch(self, record: dict[str, Any], score: float | None) -> bool:
        """Record one epoch (``score`` = validation score when selecting); True when training should stop."""
        epoch = record["epoch"]
        if self.select and score is not None and score > self.best[0]:
            self.best = (score, epoch, _state_copy(self.model))
        self.last_good = (epoch, _state_copy(self.model))
        record["elapsed_s"] = round(time.perf_counter() - self.start, 2)
        self.history.append(record)
        self.bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in self.shown})
        if self.checkpoint is not None:
            self.checkpoint(self.model, record)
        if self.select and epoch - self.best[1] >= self.patience:
            self.stop_reason = "early_stopping"
            return True
        if self.max_wall_s is not None and time.perf_counter() - self.start > self.max_wall_s:
            self.stop_reason = "wall_clock_limit"
            return True
        return False

    def step(self, trainer: "Trainer", loss: torch.Tensor) -> float | None:
        """``trainer.step(loss)``; None (training stops, the last good weights kept) when the loss is NaN / inf."""
        try:
            return trainer.step(loss)
        except NonFiniteLoss as exc:
            self.stop_non_finite(exc)
            return None

    def stop_non_finite(self, exc: NonFiniteLoss) -> None:
        """A NaN / inf loss in epoch ``len(history) + 1``: stop, keep the last good weights."""
        self.stop_reason = "non_finite_loss"
        self.non_finite = {"epoch": len(self.history) + 1, "step": exc.step, "loss": str(exc.value)}

    def finish(self) -> dict[str, Any]:
        """Restore the best weights (when selecting; else the last completed epoch's); the training summary."""
        self.bar.close()
        self.model.load_state_dict(self.best[2] if self.select else self.last_good[1])
        self.model.eval()
        best_epoch = self.best[1] if self.select else self.last_good[0]
        return {"epochs_run": len(self.history), "best_epoch": best_epoch, "history": self.history,
                "train_s": round(time.perf_counter() - self.start, 2), "stop_reason": self.stop_reason,
                "max_wall_s": self.max_wall_s,
                **({"non_finite_loss": self.non_finite} if self.non_finite else {})}
