"""PyTorch inside the serving steps: the user tower, the DLRM ranker and exact retrieval on a device.

By default the steps run the exported ONNX models with onnxruntime on CPU and search the FAISS
index on CPU. When the environment variable ``RECSTACK_TORCH_DEVICE`` is ``cuda`` (or ``cpu`` /
``auto``) where the server (or in-process chain) starts, :class:`~recstack.ensembles.steps.EmbedUser`
and :class:`~recstack.ensembles.steps.Rank` load the saved state dicts (``model.pt``, exported
beside the ONNX files) into PyTorch on that device, and
:class:`~recstack.ensembles.steps.QueryIndex` runs exact top-K there
(:class:`recstack.retrieval.ExactItemIndex`: FAISS-GPU when installed, else PyTorch; FAISS need
not be installed). A GPU host without onnxruntime-gpu or FAISS-GPU thus serves the ensemble's
PyTorch parts on CUDA. Both paths compute the same functions (the ONNX files are checked against
PyTorch at export, max abs difference < 1e-4).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from recstack.errors import InputError

TORCH_DEVICE_ENV = "RECSTACK_TORCH_DEVICE"
"""Environment variable: empty/unset = onnxruntime + FAISS on CPU; ``cpu`` | ``cuda`` | ``auto`` = PyTorch there."""


def serving_torch_device() -> str | None:
    """``RECSTACK_TORCH_DEVICE`` (``cpu``, ``cuda`` or ``auto``), or None when unset or empty."""
    value = os.environ.get(TORCH_DEVICE_ENV, "").strip().lower()
    if not value:
        return None
    if value not in ("cpu", "cuda", "auto"):
        raise InputError(f"{TORCH_DEVICE_ENV}: expected cpu, cuda or auto (or unset), got {value!r}")
    return value


def _tensors(feeds: dict[str, np.ndarray], device) -> dict:
    from recstack.models.device import to_tensors

    return to_tensors(feeds, device)


class TorchUserTower:
    """The saved two-tower's user tower on ``device``: user blocks -> ``[B, d]`` float32 (L2-normalised)."""

    def __init__(self, model_dir: str | Path, device: str):
        from recstack.models.device import resolve_device
        from recstack.models.export import load_two_tower, user_tower_inputs

        self.device = resolve_device(device)
        self.model, _ = load_two_tower(Path(model_dir), self.device)
        self.input_names = user_tower_inputs(self.model)

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.user_embedding(_tensors(feeds, self.device))
        return np.ascontiguousarray(out.float().cpu().numpy(), dtype=np.float32)


class TorchRanker:
    """The saved DLRM on ``device``: user blocks ``[B, *]`` + candidate item blocks ``[B, K, *]`` -> logits ``[B, K]``."""

    def __init__(self, model_dir: str | Path, device: str):
        from recstack.models.device import resolve_device
        from recstack.models.export import load_dlrm

        self.device = resolve_device(device)
        self.model, _ = load_dlrm(Path(model_dir), self.device)
        layout = self.model.layout
        # the same inputs as dlrm.onnx: a multi-source ranker also reads the candidates' item_cross [B, K, 8]
        self.input_names = layout.user_blocks() + layout.item_blocks() + (["item_cross"] if self.model.n_cross else [])

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        from recstack.models.export import DLRM_ARGS

        blocks = _tensors(feeds, self.device)
        with torch.inference_mode():
            out = self.model.score_candidates(*[blocks.get(name) for name in DLRM_ARGS])
        return np.ascontiguousarray(out.float().cpu().numpy(), dtype=np.float32)
