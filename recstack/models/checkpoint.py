"""The last good epoch of a training run on disk: ``runs/<ds>/checkpoints/<model>/``.

Written after every completed epoch (never after a NaN / inf loss, which stops training first),
with :func:`recstack.io.atomic_dir`, so a crash mid-write leaves the previous one::

    config.json    {"model", "hyperparameters", "layout", "checkpoint": {"epoch", "loss", valid metrics...}}
    model.pt       the model's state dict (torch.load(..., weights_only=True))
    optimizer.pt   the optimiser's state dict (tensors and numbers only), to resume

``config.json`` has the fields of an exported model folder, so
:func:`recstack.models.export.load_two_tower` / ``load_dlrm`` load a checkpoint as they load a model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recstack.io import atomic_dir, write_json


def write_checkpoint(target: Path, kind: str, model: torch.nn.Module, opt: torch.optim.Optimizer | None,
                     record: dict[str, Any]) -> Path:
    """Save ``model`` (a TwoTower or DLRM: ``.cfg``, ``.layout``) and ``opt`` after the epoch ``record``."""
    with atomic_dir(Path(target)) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
        if opt is not None:
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
        write_json(tmp / "config.json", {"model": kind, "hyperparameters": model.cfg.to_dict(),
                                         "layout": model.layout.to_dict(), "checkpoint": dict(record)})
    return Path(target)


def checkpoint_writer(target: Path | None, kind: str, opt: torch.optim.Optimizer,
                      is_main: bool = True) -> Callable[[torch.nn.Module, dict], None] | None:
    """The ``checkpoint`` callback of :class:`recstack.models.loop.EpochSelection` (None: no checkpoints;
    under torchrun only rank 0 writes)."""
    if target is None or not is_main:
        return None

    def write(model: torch.nn.Module, record: dict[str, Any]) -> None:
        write_checkpoint(target, kind, model, opt, record)
    return write
