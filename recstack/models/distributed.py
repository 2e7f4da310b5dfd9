"""Data parallel training under ``torchrun`` (DistributedDataParallel), a no-op in one process.

``torchrun --nproc-per-node N -m recstack.cli train ...`` sets ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``; :func:`distributed_from_env` joins the process
group (NCCL on CUDA, gloo on CPU). Every rank draws the same global batch (same seed, same
permutation) and takes its contiguous share of the rows (:meth:`Distributed.shard`); losses are
weighted so that DDP's gradient average equals the gradient of the global batch's mean loss, and
the two-tower gathers every rank's item embeddings (with their gradients) so each user still sees
the whole global batch as in-batch negatives. Validation runs on every rank (same weights, same
decisions); only rank 0 writes files.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``rank`` of ``world`` (1 = plain single-process training)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """[start, end) of this rank's rows in a global batch of ``n`` rows (sizes differ by at most 1)."""
        edges = np.linspace(0, n, self.world + 1).round().astype(int) if self.world > 1 else np.array([0, n])
        return int(edges[self.rank]), int(edges[self.rank + 1])

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of a global batch's row indices."""
        start, end = self.bounds(len(rows))
        return rows[start:end]

    def loss_weight(self, local: int, global_: int) -> float:
        """Factor on a rank's mean loss so that the mean over ranks (DDP's gradient average) is the
        global batch's mean loss, also when the shares differ by a row."""
        return local * self.world / max(global_, 1)

    def gather(self, x: torch.Tensor, global_rows: int) -> torch.Tensor:
        """Every rank's ``x`` ([local rows, ...]) concatenated in rank order, gradients flowing back to
        each rank's own part; ``x`` itself in one process."""
        if not self.active:
            return x
        sizes = [e - s for s, e in (Distributed(r, self.world).bounds(global_rows) for r in range(self.world))]
        pad = max(sizes) - x.shape[0]
        padded = torch.cat([x, x.new_zeros((pad,) + tuple(x.shape[1:]))]) if pad else x
        if x.requires_grad:
            from torch.distributed.nn.functional import (
                all_gather,  # sums the gradients back to each rank
            )

            with warnings.catch_warnings():  # deprecated in favour of a private API; still the public one
                warnings.simplefilter("ignore", FutureWarning)
                parts = all_gather(padded)
        else:
            parts = _gather_no_grad(padded, self.world)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (a float on every rank)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in DistributedDataParallel when there are several ranks."""
        if not self.active:
            return model
        ids = [device.index] if device.type == "cuda" and device.index is not None else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


SINGLE_PROCESS = Distributed()
"""Plain training in one process (the default of the training functions)."""


def _gather_no_grad(x: torch.Tensor, world: int) -> list[torch.Tensor]:
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return parts


def distributed_from_env(device: torch.device | None = None) -> Distributed:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); else one process.

    Backend: NCCL when training on CUDA (``device``, default: CUDA when available), else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
        backend = "nccl" if cuda else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device, ddp: Distributed) -> torch.device:
    """``cuda`` -> this rank's GPU (``LOCAL_RANK``) under torchrun; other devices unchanged."""
    if ddp.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
