"""Where and how the models run: device choice, seeding, CPU threads, numpy blocks -> tensors."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from recstack.errors import InputError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an InputError."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available (use --device cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"--device: expected auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def default_threads() -> int:
    """Threads for CPU training: $RECSTACK_THREADS, else half the cores (at least 1)."""
    env = os.environ.get("RECSTACK_THREADS")
    if env:
        return max(1, int(env))
    return max(1, (os.cpu_count() or 2) // 2)


def to_tensors(blocks: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Model input blocks (numpy) as tensors on ``device``."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True) for k, v in blocks.items()}
