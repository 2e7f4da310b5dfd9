"""Saving, loading and ONNX export of the trained models (docs/architecture.md section 4).

A model folder ``runs/<ds>/models/<name>/`` holds::

    config.json           {"model", "hyperparameters", "layout", "metrics", "training", "onnx"}
                          (+ dlrm: "fusion", the DLRM / retrieval score weights, recstack.models.fusion)
    model.pt              the state dict (load with torch.load(..., weights_only=True))
    user_tower.onnx       two_tower: user blocks (+ history_times [B, L] int64 unix seconds, sequence
                          tower with time gaps) -> user_embedding [B, d]
    item_tower.onnx       two_tower: item blocks -> item_embedding [B, d]
    item_embeddings.npy   two_tower: [n_items, d] float32, row = encoded item id (rows 0/1 = pad/OOV: zeros)
    dlrm.onnx             dlrm: user blocks [B, *] + candidate item blocks [B, K, *] -> score [B, K] (logits)

Every ONNX file is exported with ``torch.onnx.export(..., dynamo=True)`` with a dynamic batch
(and dynamic history length), then checked against PyTorch through onnxruntime on random
inputs (max abs difference < 1e-4) before the folder is committed with ``atomic_dir``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recstack.errors import InputError
from recstack.ids import FIRST_CODE
from recstack.io import atomic_dir, read_json, write_json
from recstack.models.candidates import CROSS_FEATURES
from recstack.models.device import to_tensors
from recstack.models.dlrm import DLRM, SCORE_ARGS, DLRMConfig
from recstack.models.layout import HISTORY_TIMES, FeatureLayout
from recstack.models.two_tower import TwoTower, TwoTowerConfig
from recstack.workflows.request_context import CONTEXT_CARDINALITY, CONTEXT_COLUMNS

ONNX_TOLERANCE = 1e-4
OPSET = 18


class _Positional(nn.Module):
    """Wrap ``fn(**blocks)`` as ``forward(*blocks)`` in a fixed order, for ONNX export."""

    def __init__(self, module: nn.Module, method: str, names: list[str], all_names: list[str]):
        super().__init__()
        self.module = module
        self.method = method
        self.names = list(names)
        self.all_names = list(all_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.names, inputs))
        args = [given.get(n) for n in self.all_names]
        return getattr(self.module, self.method)(*args)


def random_inputs(layout: FeatureLayout, names: list[str], batch: int, seed: int = 0,
                  history_length: int | None = None, candidates: int | None = None,
                  cross_width: int = 0) -> dict[str, np.ndarray]:
    """Random but valid input blocks (ids within cardinality, some padding) for export checks.

    ``candidates``: item blocks get the shape ``[batch, candidates, *]`` (DLRM serving form).
    ``cross_width``: features of the ``item_cross`` block.
    """
    rng = np.random.default_rng(seed)
    if candidates is not None:
        out = random_inputs(layout, [n for n in names if not n.startswith("item")], batch, seed, history_length)
        items = random_inputs(layout, [n for n in names if n.startswith("item")], batch * candidates, seed + 1,
                              cross_width=cross_width)
        out.update({n: v.reshape(batch, candidates, -1) for n, v in items.items()})
        return out
    out: dict[str, np.ndarray] = {}
    for name in names:
        side = layout.user if name.startswith("user") or name == "history" else layout.item
        if name == "item_cross":
            out[name] = rng.random((batch, cross_width)).astype(np.float32)
        elif name == "context":
            out[name] = np.stack([rng.integers(0, CONTEXT_CARDINALITY[c], batch) for c in CONTEXT_COLUMNS],
                                 1).astype(np.int64)
        elif name.endswith("_cat"):
            out[name] = np.stack([rng.integers(0, c.cardinality, batch) for c in side.cat], 1).astype(np.int64)
        elif name.endswith("_lists"):
            cols = []
            for c in side.lists:
                block = rng.integers(0, c.cardinality, (batch, c.max_length))
                block[rng.random(block.shape) < 0.5] = 0
                cols.append(block)
            out[name] = np.concatenate(cols, 1).astype(np.int64)
        elif name.endswith("_cont"):
            out[name] = rng.normal(size=(batch, len(side.cont))).astype(np.float32)
        elif name == "history":
            length = history_length or layout.history_length
            hist = rng.integers(1, layout.n_items, (batch, length))
            lengths = rng.integers(0, length + 1, batch)
            hist[np.arange(length)[None, :] >= lengths[:, None]] = 0
            out[name] = hist.astype(np.int64)
        elif name == HISTORY_TIMES:  # increasing unix seconds, gaps from under a second to years
            length = history_length or layout.history_length
            gaps = np.exp(rng.uniform(-1.0, np.log(10 ** 8.5), (batch, length))).astype(np.int64)
            out[name] = (1_000_000_000 + np.cumsum(gaps, axis=1)).astype(np.int64)
    return out


def export_onnx(module: nn.Module, method: str, names: list[str], all_names: list[str],
                layout: FeatureLayout, output_name: str, path: Path, candidates: bool = False,
                cross_width: int = 0) -> float:
    """Export ``module.method`` over the input blocks ``names`` to ``path``; return the max abs diff vs PyTorch.

    ``candidates``: item blocks carry a second dynamic dimension, K candidates per user.
    """
    import onnxruntime as ort

    module = copy.deepcopy(module).cpu().eval()
    wrapper = _Positional(module, method, names, all_names).eval()
    example = random_inputs(layout, names, batch=3, seed=1, candidates=4 if candidates else None,
                            cross_width=cross_width)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    hist_len = torch.export.Dim("history_length", min=1, max=4096)
    k = torch.export.Dim("candidates", min=1, max=1 << 16)
    dynamic = tuple({0: batch, 1: hist_len} if n in ("history", HISTORY_TIMES) else {0: batch, 1: k} if candidates and
                    n.startswith("item") else {0: batch} for n in names)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, args, dynamo=True, input_names=names, output_names=[output_name],
                                    dynamic_shapes=(dynamic,), opset_version=OPSET, verbose=False)
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = 0.0
    for seed, size, length in ((7, 5, None), (8, 17, max(1, layout.history_length // 2 + 1))):
        feeds = random_inputs(layout, names, batch=size, seed=seed, history_length=length,
                              candidates=size % 7 + 2 if candidates else None, cross_width=cross_width)
        got = session.run([output_name], feeds)[0]
        with torch.no_grad():
            want = wrapper(*[torch.from_numpy(feeds[n]) for n in names]).numpy()
        if got.shape != want.shape:
            raise RuntimeError(f"{path.name}: ONNX output shape {got.shape} != PyTorch {want.shape}")
        diff = max(diff, float(np.abs(got - want).max()))
    if diff >= ONNX_TOLERANCE:
        raise RuntimeError(f"{path.name}: ONNX differs from PyTorch by {diff:.2e} (>= {ONNX_TOLERANCE})")
    return diff


USER_ARGS = ["user_cat", "user_lists", "user_cont", "history", HISTORY_TIMES]
ITEM_ARGS = ["item_cat", "item_lists", "item_cont"]
DLRM_ARGS = list(SCORE_ARGS)


def user_tower_inputs(model: TwoTower) -> list[str]:
    """The user tower's input names, in ONNX order: the layout's user blocks (+ ``history_times``)."""
    return model.layout.user_blocks() + ([HISTORY_TIMES] if model.cfg.reads_history_times else [])


def save_two_tower(model: TwoTower, target: Path, item_features: dict[str, np.ndarray],
                   metrics: dict[str, Any], training: dict[str, Any], onnx: bool = True) -> Path:
    """Write the two-tower folder (config, state dict, item embeddings, both tower ONNX files)."""
    model = copy.deepcopy(model).cpu().eval()
    layout = model.layout
    item_emb = compute_item_embeddings(model, item_features)
    with atomic_dir(Path(target)) as tmp:
        torch.save(model.state_dict(), tmp / "model.pt")
        np.save(tmp / "item_embeddings.npy", item_emb)
        onnx_info: dict[str, Any] = {}
        if onnx:
            user_names, item_names = user_tower_inputs(model), layout.item_blocks()
            d1 = export_onnx(model.user_tower, "forward", user_names, USER_ARGS, layout, "user_embedding",
                             tmp / "user_tower.onnx")
            d2 = export_onnx(model.item_tower, "forward", item_names, ITEM_ARGS, layout, "item_embedding",
                             tmp / "item_tower.onnx")
            onnx_info = {"user_tower.onnx": {"inputs": user_names, "outputs": ["user_embedding"], "max_abs_diff": d1},
                         "item_tower.onnx": {"inputs": item_names, "outputs": ["item_embedding"], "max_abs_diff": d2}}
        write_json(tmp / "config.json", {
            "model": "two_tower", "hyperparameters": model.cfg.to_dict(), "layout": layout.to_dict(),
            "embedding_dim": int(item_emb.shape[1]), "n_items": int(item_emb.shape[0]),
            "metrics": metrics, "training": training, "onnx": onnx_info, "opset": OPSET})
    return Path(target)


def save_dlrm(model: DLRM, target: Path, metrics: dict[str, Any], training: dict[str, Any],
              onnx: bool = True, fusion: dict[str, Any] | None = None) -> Path:
    """Write the DLRM folder (config, state dict, dlrm.onnx); ``fusion``: see :mod:`recstack.models.fusion`."""
    model = copy.deepcopy(model).cpu().eval()
    layout = model.layout
    with atomic_dir(Path(target)) as tmp:
        torch.save(model.state_dict(), tmp / "model.pt")
        onnx_info: dict[str, Any] = {}
        if onnx:
            names = layout.user_blocks() + layout.item_blocks() + (["item_cross"] if model.n_cross else [])
            diff = export_onnx(model, "score_candidates", names, DLRM_ARGS, layout, "score", tmp / "dlrm.onnx",
                               candidates=True, cross_width=len(CROSS_FEATURES) if model.n_cross else 0)
            onnx_info = {"dlrm.onnx": {"inputs": names, "outputs": ["score"], "max_abs_diff": diff}}
        write_json(tmp / "config.json", {
            "model": "dlrm", "hyperparameters": model.cfg.to_dict(), "layout": layout.to_dict(),
            "metrics": metrics, "training": training, "onnx": onnx_info, "opset": OPSET,
            **({"fusion": fusion} if fusion is not None else {})})
    return Path(target)


@torch.no_grad()
def compute_item_embeddings(model: TwoTower, item_features: dict[str, np.ndarray],
                            batch_size: int = 8192) -> np.ndarray:
    """Item tower over the item feature table (row = encoded id) -> [n_items, d]; pad / OOV rows zeroed."""
    model.eval()
    device = next(model.parameters()).device
    n = len(item_features["item_cat"])
    out = []
    for start in range(0, n, batch_size):
        batch = to_tensors({k: v[start:start + batch_size] for k, v in item_features.items()}, device)
        out.append(model.item_embedding(batch).float().cpu().numpy())
    emb = np.concatenate(out, 0).astype(np.float32)
    emb[:FIRST_CODE] = 0.0
    return emb


def _read_config(model_dir: Path, kind: str) -> dict[str, Any]:
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.exists():
        raise InputError(f"{cfg_path}: missing (train the models first: recstack train)")
    config = read_json(cfg_path)
    if config.get("model") != kind:
        raise InputError(f"{cfg_path}: model is {config.get('model')!r}, expected {kind!r}")
    return config


def load_two_tower(model_dir: Path, device: str | torch.device = "cpu") -> tuple[TwoTower, dict[str, Any]]:
    """Rebuild a saved two-tower model (eval mode) and return it with its config dict."""
    config = _read_config(model_dir, "two_tower")
    model = TwoTower(FeatureLayout.from_dict(config["layout"]), TwoTowerConfig.from_dict(config["hyperparameters"]))
    state = torch.load(Path(model_dir) / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), config


def load_dlrm(model_dir: Path, device: str | torch.device = "cpu") -> tuple[DLRM, dict[str, Any]]:
    """Rebuild a saved DLRM (eval mode) and return it with its config dict."""
    config = _read_config(model_dir, "dlrm")
    model = DLRM(FeatureLayout.from_dict(config["layout"]), DLRMConfig.from_dict(config["hyperparameters"]))
    state = torch.load(Path(model_dir) / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), config
