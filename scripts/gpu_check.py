"""Run every GPU code path of recstack once and print a table (scripts/gpu_check.sh calls this).

Rows: CUDA visible; two-tower and DLRM forward/backward on CUDA equal to CPU for the same
weights; one optimiser step on CUDA lowers the loss; the training loop's device resolution;
FAISS GPU and onnxruntime CUDA where installed. A row that cannot run says why (skip), so
the table is useful on a machine with only PyTorch + CUDA.
"""

from __future__ import annotations

import sys
import time
import traceback

rows: list[tuple[str, str, str]] = []
STEPS = 30  # optimiser steps of the CUDA training check


def check(name):
    def wrap(fn):
        start = time.perf_counter()
        try:
            detail = fn()
            status = "ok" if not str(detail).startswith("skip") else "skip"
        except Exception as exc:  # the table must show every failure, not stop at the first
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        rows.append((name, status, f"{detail} ({time.perf_counter() - start:.2f}s)"))
        return fn
    return wrap


@check("torch cuda")
def _cuda():
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False")
    return f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}"


def _synthetic_layout():
    from recstack.models.layout import CatColumn, FeatureLayout, ListColumn, SideLayout
    user = SideLayout(cat=[CatColumn("user_id", 1000), CatColumn("gender", 4)], cont=["age"])
    item = SideLayout(cat=[CatColumn("item_id", 500)], lists=[ListColumn("genres", 21, 6)], cont=["year"])
    return FeatureLayout(user=user, item=item, history_length=20)


def _batch(layout, n, device):
    import torch
    from recstack.models.export import random_inputs
    names = layout.user_blocks() + layout.item_blocks()
    return {k: torch.from_numpy(v).to(device) for k, v in random_inputs(layout, names, batch=n, seed=3).items()}


def _cpu_vs_cuda(model_cls, cfg_cls):
    import torch
    layout = _synthetic_layout()
    torch.manual_seed(0)
    cfg = cfg_cls(user_encoder="pool") if model_cls.__name__ == "TwoTower" else cfg_cls()
    model = model_cls(layout, cfg).eval()
    with torch.no_grad():
        cpu = model(_batch(layout, 64, "cpu"))
        gpu = model.to("cuda")(_batch(layout, 64, "cuda"))
    cpu = cpu if isinstance(cpu, tuple) else (cpu,)
    gpu = gpu if isinstance(gpu, tuple) else (gpu,)
    diff = max(float((a - b.cpu()).abs().max()) for a, b in zip(cpu, gpu))
    if diff > 1e-3:
        raise RuntimeError(f"CUDA output differs from CPU by {diff:.2e}")
    # the training objectives on one fixed batch (fixed targets: row i's item / random labels),
    # small steps: the loss must go down, as when the real loop fits a batch
    from recstack.models.two_tower import in_batch_softmax_loss
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = _batch(layout, 256, "cuda")
    labels = torch.randint(0, 2, (256,), generator=torch.Generator().manual_seed(0)).float().to("cuda")
    losses = []
    for _ in range(STEPS):
        out = model(batch)
        if isinstance(out, tuple):
            loss = in_batch_softmax_loss(out[0], out[1], batch["item_cat"][:, 0], 0.1)
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    if not sum(losses[-3:]) < sum(losses[:3]):
        raise RuntimeError(f"loss did not decrease on CUDA in {STEPS} steps: {losses[:3]} ... {losses[-3:]}")
    return f"max |cpu-cuda| {diff:.1e}; loss {losses[0]:.3f} -> {losses[-1]:.3f} in {STEPS} steps"


@check("two-tower on cuda")
def _two_tower():
    from recstack.models.two_tower import TwoTower, TwoTowerConfig
    return _cpu_vs_cuda(TwoTower, TwoTowerConfig)


@check("dlrm on cuda")
def _dlrm():
    from recstack.models.dlrm import DLRM, DLRMConfig
    return _cpu_vs_cuda(DLRM, DLRMConfig)


@check("train --device auto")
def _device():
    from recstack.models.device import resolve_device
    device = resolve_device("auto")
    if device.type != "cuda":
        raise RuntimeError(f"auto resolved to {device}")
    return f"auto -> {device}"


@check("faiss gpu")
def _faiss():
    try:
        import faiss
    except ImportError:
        return "skip: faiss not installed"
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return f"{n} GPU(s) visible to faiss" if n else "skip: faiss-cpu build (install faiss-gpu for GPU indexes)"


@check("exact top-k on cuda")
def _exact_topk():
    """PyTorch/FAISS-GPU exact top-100 on CUDA against an exact CPU reference (FAISS flat when
    installed, else a float64 numpy matmul), ties within float32 rounding allowed to swap."""
    import numpy as np
    from recstack.retrieval import ExactSearch
    rng = np.random.default_rng(0)
    items, queries = rng.standard_normal((200_000, 64), np.float32), rng.standard_normal((256, 64), np.float32)
    ids = np.arange(2, 200_002, dtype=np.int64)
    try:
        from recstack.retrieval import ItemIndex
        want_ids, want_scores = ItemIndex.build(items, ids, "flat").search(queries, 101)  # FAISS CPU, exact
        reference = "FAISS CPU flat"
    except ImportError:  # no FAISS on this host: numpy in float64
        scores = queries.astype(np.float64) @ items.astype(np.float64).T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :101]
        want_ids, want_scores = ids[top], np.take_along_axis(scores, top, axis=1).astype(np.float32)
        reference = "numpy CPU exact"
    gpu = ExactSearch(items, ids, "cuda")
    gpu.search(queries[:1], 100)  # CUDA / cuBLAS initialisation, not timed
    start = time.perf_counter()
    got_scores, got_ids = gpu.search(queries, 100)
    ms = (time.perf_counter() - start) * 1e3
    score_diff = float(np.abs(got_scores - want_scores[:, :100]).max())
    # ids must agree except where neighbouring scores tie within float32 rounding
    tie = np.abs(np.diff(want_scores, axis=1)) < 1e-4  # [B, 100]: rank j ties with rank j + 1
    swappable = tie | np.concatenate([np.zeros((len(tie), 1), bool), tie[:, :-1]], axis=1)
    mismatched = int(((got_ids != want_ids[:, :100]) & ~swappable).sum())
    if score_diff > 1e-3 or mismatched:
        raise RuntimeError(f"{gpu.backend} differs from {reference}: max |score diff| {score_diff:.1e}, "
                           f"{mismatched} ids")
    return f"{gpu.backend} == {reference} (200k x 64, 256 queries, top-100 in {ms:.1f} ms, " \
        f"max |score diff| {score_diff:.1e})"


@check("onnxruntime cuda")
def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        return "skip: onnxruntime not installed"
    providers = ort.get_available_providers()
    return "CUDAExecutionProvider available" if "CUDAExecutionProvider" in providers else \
        f"skip: providers {providers} (install onnxruntime-gpu)"



# ---- workflows: the array path on GPU arrays equals the pandas (CPU) path on the same data
def _workflow_case():
    import numpy as np
    import pandas as pd

    from recstack.workflows import (Bucketize, Categorify, Clip, FillMissing, JoinGroupby, LogOp, Normalize,
                                    NormalizeMinMax, Rename, Workflow)
    rng = np.random.default_rng(0)
    n = 2_000_000

    def frame(seed):
        r = np.random.default_rng(seed)
        age = r.normal(35, 12, n).astype(np.float32)
        age[r.random(n) < 0.1] = np.nan
        return pd.DataFrame({"user_id": r.integers(0, 100_000, n), "item_id": r.zipf(1.3, n) % 50_000,
                             "age": age, "price": r.exponential(20, n)})

    wf = Workflow((["user_id", "item_id"] >> Categorify(freq_threshold=2)) + (["age"] >> FillMissing() >> Normalize())
                  + (["price"] >> Clip(0, 60) >> LogOp() >> NormalizeMinMax())
                  + (["price"] >> Bucketize([5, 20, 50]) >> Rename(postfix="_b"))
                  + (["item_id"] >> JoinGroupby(["price"], ["count", "mean"]))).fit(frame(1), progress=False)
    del rng
    return wf, frame(2)


def _workflow_compare(to_device, to_host, label):
    from recstack.workflows.arrays import transform_arrays
    import numpy as np
    wf, test = _workflow_case()
    start = time.perf_counter()
    expected = wf.transform(test)
    cpu_s = time.perf_counter() - start
    cols = {c: to_device(test[c].to_numpy()) for c in wf.input_columns}
    transform_arrays(wf, cols)  # warm-up (kernels, copies of the statistics)
    start = time.perf_counter()
    got = transform_arrays(wf, cols)
    got = {k: to_host(v) for k, v in got.items()}
    gpu_s = time.perf_counter() - start
    for name in expected.columns:
        want = expected[name].to_numpy()
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got[name], want, rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want, err_msg=name)
    return (f"{len(expected.columns)} columns x {len(test):,} rows equal to CPU; pandas {cpu_s:.2f}s, "
            f"{label} {gpu_s:.3f}s")


@check("workflows torch cuda")
def _workflows_torch():
    import torch
    return _workflow_compare(lambda a: torch.as_tensor(a, device="cuda"), lambda t: t.cpu().numpy(), "torch cuda")


@check("workflows cupy")
def _workflows_cupy():
    try:
        import cupy
    except ImportError:
        return "skip: cupy not installed (pip install cupy-cuda12x)"
    return _workflow_compare(cupy.asarray, cupy.asnumpy, "cupy")

width = max(len(r[0]) for r in rows)
print(f"\n{'check':<{width}}  status  detail")
for name, status, detail in rows:
    print(f"{name:<{width}}  {status:<6}  {detail}")
sys.exit(1 if any(r[1] == "FAIL" for r in rows) else 0)
