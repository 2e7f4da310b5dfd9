"""Training throughput of each model: samples/s of one training step (forward, loss, backward, optimiser),
with the data already in device memory, next to the FLOPs per sample (torch.utils.flop_counter).

    PYTHONPATH=. python3 benchmarks/train_throughput.py                  # CPU, a short sweep
    PYTHONPATH=. python3 benchmarks/train_throughput.py --device cuda    # GPU sweep, under ~90 s

Each model trains on an ML-1M-shaped layout (6,040 users with 4 side features, 3,706 items with
genres and year, 50-item histories; the DLRM also reads hour + weekday) filled with random valid ids,
as the recipe's training step does (two-tower: in-batch softmax + logQ + 512 uniform negatives; ``dlrm``:
the ranker's default listwise step, softmax over groups of one positive and 16 negatives of the same user
row with the candidates' cross features, the user side computed once per group; ``dlrm_bce``: the
``loss: bce`` variant, binary cross-entropy over independent (user, item) rows, each pooling its own
history). A sample is one training row: one (user, positive) pair of the two-tower's batch, one scored
(user, item) pair of the DLRM's (a group of 17 is 17 samples; the DLRM batch sizes are multiples of 17).
On CUDA, fp32 matrix products may use TF32 (``allow_tf32``, recorded in the JSON).

The sweep tries what should make a step faster on a GPU, one setting per row: Adam's default
(foreach) vs ``fused=True``; sparse gradients for the embedding tables with SparseAdam (the rest fused
Adam); the whole step captured in a CUDA graph (fused, capturable Adam); bf16 autocast; larger
batches; ``torch.compile`` of the step last (compiling costs tens of seconds; rows that would pass
``--budget-s`` are listed as skipped). Results print as a table and go to JSON (``--out``; default
``$OUT/train_throughput_<device>.json`` when ``$OUT`` is set, else ``benchmarks/``).

Only ``recstack.models`` modules that need nothing beyond torch / numpy / pandas are imported, so the
script runs with a bare PyTorch image's python3. To add a model, add a :class:`Workload` to
``WORKLOADS`` (its step module returns the loss of one batch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from recstack.models.candidates import CROSS_FEATURES, RANKER_FEATURES
from recstack.models.dlrm import DLRM, DLRMConfig
from recstack.models.export import random_inputs
from recstack.models.layout import FeatureLayout
from recstack.models.sequence import full_softmax_loss
from recstack.models.two_tower import TwoTower, TwoTowerConfig, in_batch_softmax_loss
from recstack.workflows import ColumnSchema, Schema, Tags

N_USERS, N_ITEMS, HISTORY = 6_042, 3_708, 50  # ML-1M + the pad / OOV codes
DLRM_GROUP = 1 + 16
"""Candidates per user row of the ranker's softmax groups: one positive + ``dlrm.negatives`` (default 16)."""
DISTINCT_BATCHES = 4  # batches cycled through (all resident in device memory)


def ml1m_layout() -> FeatureLayout:
    """The shape of ML-1M's workflow output: user id, gender, age, occupation, zip; item id, genres, year."""
    T = Tags
    user = [("user_id", N_USERS, {T.USER_ID}), ("gender", 4, set()), ("age", 9, set()), ("occupation", 23, set()),
            ("zip", 3_441, set())]
    cols = [ColumnSchema(n, "int64", {T.USER, T.CATEGORICAL} | extra, cardinality=c) for n, c, extra in user]
    cols += [ColumnSchema("item_id", "int64", {T.ITEM_ID, T.ITEM, T.CATEGORICAL}, cardinality=N_ITEMS),
             ColumnSchema("genres", "int64", {T.ITEM, T.CATEGORICAL, T.LIST}, cardinality=20, is_list=True,
                          max_length=6),
             ColumnSchema("year", "float32", {T.ITEM, T.CONTINUOUS})]
    return FeatureLayout.from_schema(Schema(cols), history_length=HISTORY)


# ------------------------------------------------------------------------------ workloads

class TwoTowerStep(nn.Module):
    """The recipe's two-tower step: in-batch softmax with logQ correction + uniform catalogue negatives."""

    def __init__(self, layout: FeatureLayout):
        super().__init__()
        self.model = TwoTower(layout, TwoTowerConfig(user_encoder="pool"))
        counts = torch.from_numpy(np.random.default_rng(0).zipf(1.5, layout.n_items).astype(np.float32))
        self.register_buffer("log_p", torch.log(counts / counts.sum()))

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        user, item = self.model(b)
        neg = self.model.item_embedding({"item_cat": b["neg_item_cat"], "item_lists": b["neg_item_lists"],
                                         "item_cont": b["neg_item_cont"]})
        ids, neg_ids = b["item_cat"][:, 0], b["neg_item_cat"][:, 0]
        cfg = self.model.cfg
        log_q = self.log_p[ids] + math.log(ids.shape[0])
        neg_log_q = torch.full_like(neg[:, 0], math.log(neg_ids.shape[0] / (self.model.layout.n_items - 2)),
                                    dtype=torch.float32)
        return in_batch_softmax_loss(user.float(), item.float(), ids, cfg.temperature, log_q, neg.float(), neg_ids,
                                     neg_log_q)


SEQUENCE_HISTORY = 200  # SASRec's ML-1M history length (README "Models")


class SequenceTwoTowerStep(nn.Module):
    """The sequence user tower's step (``user_encoder="sasrec"``): next-item prediction at every one of the
    ``SEQUENCE_HISTORY`` positions, full softmax over the whole ML-1M catalogue (the item tower re-embeds
    every item each step). One sample = one sequence of 200 positions."""

    def __init__(self, layout: FeatureLayout):
        super().__init__()
        self.model = TwoTower(replace(layout, history_length=SEQUENCE_HISTORY), TwoTowerConfig(user_encoder="sasrec"))

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        tower = self.model.user_tower
        user = tower.every_position(b["user_cat"], b.get("user_lists"), b.get("user_cont"), b["history"],
                                    b.get("history_times"))
        items = self.model.item_embedding({"item_cat": b["all_item_cat"], "item_lists": b["all_item_lists"],
                                           "item_cont": b["all_item_cont"]})
        return full_softmax_loss(user.reshape(-1, user.shape[-1]).float(), items.float(), b["targets"].reshape(-1),
                                 self.model.cfg.temperature)


class DLRMStep(nn.Module):
    """The ranker's default training step (``dlrm.loss: softmax``): groups of one positive and
    ``DLRM_GROUP - 1`` negatives of the same user row, with the candidates' cross features; the grouped
    forward computes each user row's vectors once per group. Softmax cross-entropy, the positive first."""

    def __init__(self, layout: FeatureLayout):
        super().__init__()
        self.model = DLRM(layout.with_context(("hour", "weekday")), DLRMConfig(cross_features=list(RANKER_FEATURES)))

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(b).float()  # [G, DLRM_GROUP]
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


class DLRMRowsStep(nn.Module):
    """The DLRM scoring independent (user, item, context) rows, binary cross-entropy on the labels
    (``dlrm.loss: bce``): every row pools its own history."""

    def __init__(self, layout: FeatureLayout):
        super().__init__()
        self.model = DLRM(layout.with_context(("hour", "weekday")), DLRMConfig())

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.model(b).float(), b["label"])


@dataclass(frozen=True)
class Workload:
    """A model to benchmark: its step module and a batch of random valid inputs (numpy)."""

    name: str
    make_step: Callable[[FeatureLayout], nn.Module]
    make_batch: Callable[[FeatureLayout, int, int], dict[str, np.ndarray]]
    loss: str


def two_tower_batch(layout: FeatureLayout, size: int, seed: int) -> dict[str, np.ndarray]:
    names = layout.user_blocks() + layout.item_blocks()
    out = random_inputs(layout, names, size, seed=seed)
    neg = random_inputs(layout, layout.item_blocks(), TwoTowerConfig().uniform_negatives, seed=seed + 100)
    out.update({f"neg_{k}": v for k, v in neg.items()})
    return out


def sequence_batch(layout: FeatureLayout, size: int, seed: int) -> dict[str, np.ndarray]:
    lay = replace(layout, history_length=SEQUENCE_HISTORY)
    out = random_inputs(lay, lay.user_blocks() + ["history_times"], size, seed=seed)  # the default time gaps
    rng = np.random.default_rng(seed)
    out["history"] = rng.integers(2, N_ITEMS, (size, SEQUENCE_HISTORY))  # full sequences: every position a target
    out["targets"] = rng.integers(2, N_ITEMS, (size, SEQUENCE_HISTORY))
    catalogue = random_inputs(lay, lay.item_blocks(), N_ITEMS, seed=seed + 200)
    catalogue["item_cat"][:, 0] = np.arange(N_ITEMS)
    out.update({f"all_{k}": v for k, v in catalogue.items()})
    return out


def dlrm_group_batch(layout: FeatureLayout, size: int, seed: int) -> dict[str, np.ndarray]:
    """``size // DLRM_GROUP`` user rows, each with DLRM_GROUP candidates: item blocks [G, DLRM_GROUP, *]."""
    lay = layout.with_context(("hour", "weekday"))
    groups = size // DLRM_GROUP
    out = random_inputs(lay, lay.user_blocks(), groups, seed=seed)
    items = random_inputs(lay, lay.item_blocks(), groups * DLRM_GROUP, seed=seed + 1)
    out.update({k: v.reshape(groups, DLRM_GROUP, -1) for k, v in items.items()})
    rng = np.random.default_rng(seed)
    out["item_cross"] = rng.random((groups, DLRM_GROUP, len(CROSS_FEATURES)), dtype=np.float32)
    return out


def dlrm_rows_batch(layout: FeatureLayout, size: int, seed: int) -> dict[str, np.ndarray]:
    lay = layout.with_context(("hour", "weekday"))
    out = random_inputs(lay, lay.user_blocks() + lay.item_blocks(), size, seed=seed)
    out["label"] = (np.random.default_rng(seed).random(size) < 1 / 17).astype(np.float32)
    return out


WORKLOADS: dict[str, Workload] = {
    "two_tower": Workload("two_tower", TwoTowerStep, two_tower_batch, "in-batch softmax + logQ + 512 negatives"),
    "dlrm": Workload("dlrm", DLRMStep, dlrm_group_batch, f"softmax over groups of {DLRM_GROUP}, cross features"),
    "dlrm_bce": Workload("dlrm_bce", DLRMRowsStep, dlrm_rows_batch, "BCE over independent rows"),
    "two_tower_seq": Workload("two_tower_seq", SequenceTwoTowerStep, sequence_batch,
                              "full softmax at 200 positions per sequence"),
}


# ------------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class Setting:
    model: str
    batch: int
    optimizer: str = "adam"   # adam (foreach default) | fused | sparse (SparseAdam on tables + fused Adam)
    bf16: bool = False
    cuda_graph: bool = False
    compile: bool = False

    @property
    def label(self) -> str:
        parts = [self.optimizer] + (["bf16"] if self.bf16 else []) + (["cuda-graph"] if self.cuda_graph else []) \
            + (["compile"] if self.compile else [])
        return "+".join(parts)


def _round_robin(per_model: list[list[Setting]]) -> list[Setting]:
    """One setting of each model in turn, so a budget cut leaves rows of every model."""
    out: list[Setting] = []
    for i in range(max((len(p) for p in per_model), default=0)):
        out += [p[i] for p in per_model if i < len(p)]
    return out


def sweep(device: str, models: list[str], quick: bool) -> list[Setting]:
    """The settings to try, cheapest and most telling first, compile last."""
    if device == "cpu":
        batches = {"two_tower": (512, 2048), "dlrm": (64 * DLRM_GROUP, 256 * DLRM_GROUP), "dlrm_bce": (1024, 4096),
                   "two_tower_seq": (64, 128)}
        sizes = {m: batches.get(m, (512, 2048)) for m in models}
        eager = [[Setting(m, b0), Setting(m, b0, "fused"), Setting(m, b0, "sparse")]
                 + ([] if quick else [Setting(m, b1, "fused"), Setting(m, b1, "sparse")])
                 for m, (b0, b1) in sizes.items()]
        return _round_robin(eager) + ([] if quick else [Setting(m, b0, "fused", compile=True)
                                                        for m, (b0, _) in sizes.items()])
    batches = {"two_tower": (8192, 16384), "dlrm": (4096 * DLRM_GROUP, 16384 * DLRM_GROUP),
               "dlrm_bce": (65536, 262144), "two_tower_seq": (64, 256)}
    sizes = {m: batches.get(m, (8192, 16384)) for m in models}
    # eager rows first, then CUDA graphs (a failed capture cannot spoil the eager rows), compile last
    eager = [[Setting(m, b0), Setting(m, b0, "fused"), Setting(m, b0, "sparse"), Setting(m, b1, "fused"),
              Setting(m, b1, "sparse")] for m, (b0, b1) in sizes.items()]
    graphs = [[Setting(m, b0, "fused", cuda_graph=True), Setting(m, b0, "fused", bf16=True, cuda_graph=True),
               Setting(m, b1, "fused", cuda_graph=True)] for m, (b0, b1) in sizes.items()]
    compiled = [] if quick else [Setting(m, b0, "fused", compile=True) for m, (b0, _) in sizes.items()]
    return _round_robin(eager) + _round_robin(graphs) + compiled


# ------------------------------------------------------------------------------ measuring

def optimizers(step: nn.Module, setting: Setting, device: torch.device) -> list[torch.optim.Optimizer]:
    lr = 2e-3
    if setting.optimizer == "sparse":
        tables = [m for m in step.modules() if isinstance(m, nn.Embedding)]
        for t in tables:
            t.sparse = True
        table_params = {id(t.weight) for t in tables}
        dense = [p for p in step.parameters() if id(p) not in table_params]
        return [torch.optim.SparseAdam([t.weight for t in tables], lr=lr),
                torch.optim.Adam(dense, lr=lr, fused=device.type == "cuda")]
    fused = setting.optimizer == "fused"
    return [torch.optim.Adam(step.parameters(), lr=lr, fused=fused or None,
                             capturable=setting.cuda_graph)]


def flops_per_sample(step: nn.Module, batch: dict[str, torch.Tensor], size: int) -> float:
    """FLOPs of forward + backward of one batch / its rows (matrix products; lookups count 0)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step(batch).backward()
    step.zero_grad(set_to_none=True)
    return counter.get_total_flops() / size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(setting: Setting, device: torch.device, min_time_s: float) -> dict[str, Any]:
    """samples/s of ``setting`` (warm-up steps excluded), FLOPs per sample, peak memory."""
    workload = WORKLOADS[setting.model]
    torch.manual_seed(0)
    layout = ml1m_layout()
    step = workload.make_step(layout).to(device).train()
    batches = [{k: torch.from_numpy(v).to(device) for k, v in workload.make_batch(layout, setting.batch, s).items()}
               for s in range(DISTINCT_BATCHES)]
    flops = flops_per_sample(step, batches[0], setting.batch)
    opts = optimizers(step, setting, device)
    # autocast's cast cache must be off while a CUDA graph is captured
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting.bf16,
                              cache_enabled=not setting.cuda_graph)
    forward = torch.compile(step) if setting.compile else step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def eager(b: dict[str, torch.Tensor]) -> torch.Tensor:
        for o in opts:
            o.zero_grad(set_to_none=True)
        with autocast:
            loss = forward(b)
        loss.backward()
        for o in opts:
            o.step()
        return loss

    run = eager
    start = time.perf_counter()
    if setting.cuda_graph:
        static = {k: v.clone() for k, v in batches[0].items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                eager(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        for o in opts:
            o.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            with autocast:
                static_loss = step(static)
            static_loss.backward()
            for o in opts:
                o.step()

        def replay(b: dict[str, torch.Tensor]) -> torch.Tensor:
            for k, v in b.items():
                static[k].copy_(v, non_blocking=True)
            graph.replay()
            return static_loss
        run = replay
    for i in range(3):  # warm-up (compiles under torch.compile)
        loss = run(batches[i % DISTINCT_BATCHES])
    _sync(device)
    warmup_s = time.perf_counter() - start
    steps, begin = 0, time.perf_counter()
    while True:
        loss = run(batches[steps % DISTINCT_BATCHES])
        steps += 1
        if steps % 5 == 0:
            _sync(device)
            if time.perf_counter() - begin >= min_time_s and steps >= 10:
                break
    _sync(device)
    seconds = time.perf_counter() - begin
    samples_per_s = steps * setting.batch / seconds
    return {**asdict(setting), "setting": setting.label, "loss": workload.loss, "steps": steps,
            "seconds": round(seconds, 3), "samples_per_s": round(samples_per_s), "flops_per_sample": round(flops),
            "tflops": round(samples_per_s * flops / 1e12, 3), "warmup_s": round(warmup_s, 2),
            "final_loss": round(float(loss.detach()), 4),
            "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'model':<10} {'batch':>7} {'setting':<26} {'samples/s':>12} {'MFLOP/sample':>13} {'TFLOP/s':>8} " \
           f"{'warm-up s':>9} {'peak GB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['model']:<10} {r['batch']:>7} {r['setting']:<26} {'skipped: ' + r['skipped']}")
            continue
        mem = "" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.2f}"
        lines.append(f"{r['model']:<10} {r['batch']:>7} {r['setting']:<26} {r['samples_per_s']:>12,} "
                     f"{r['flops_per_sample'] / 1e6:>13.2f} {r['tflops']:>8.3f} {r['warmup_s']:>9.1f} {mem:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip settings that would end past this many seconds (default 85 on cuda, 120 on cpu)")
    parser.add_argument("--min-time-s", type=float, default=None, help="timed seconds per setting "
                        "(default 1.0 cuda, 1.5 cpu)")
    parser.add_argument("--quick", action="store_true", help="fewer settings (no compile, one batch size on CPU)")
    parser.add_argument("--only", default=None, metavar="TEXT",
                        help="only the settings whose label holds TEXT (e.g. compile, cuda-graph, sparse)")
    parser.add_argument("--batch", type=int, default=None, help="only this batch size")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--out", default=None, help="JSON output path")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in WORKLOADS]
    if unknown:
        parser.error(f"--models: unknown {unknown} (known: {', '.join(WORKLOADS)})")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    budget = args.budget_s or (85.0 if device.type == "cuda" else 120.0)
    min_time = args.min_time_s or (1.0 if device.type == "cuda" else 1.5)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    settings = [s for s in sweep(device.type, models, args.quick and not args.only)
                if (args.only is None or args.only in s.label) and (args.batch is None or s.batch == args.batch)]
    for setting in settings:
        expected = (45.0 if setting.compile else 4.0) + min_time
        if time.perf_counter() - start + expected > budget:
            rows.append({**asdict(setting), "setting": setting.label, "skipped": f"over the {budget:.0f} s budget"})
            continue
        try:
            rows.append(measure(setting, device, min_time))
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # one failing setting does not end the sweep
            rows.append({**asdict(setting), "setting": setting.label, "skipped": " ".join(str(exc).split())[:120]})
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    best = {}
    for r in rows:
        if "samples_per_s" in r and r["samples_per_s"] > best.get(r["model"], {}).get("samples_per_s", 0):
            best[r["model"]] = r
    for model, r in best.items():
        print(f"best {model}: {r['samples_per_s']:,} samples/s at batch {r['batch']} ({r['setting']})")
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "python": sys.version.split()[0],
           "tf32_matmul": bool(device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
           "wall_s": round(time.perf_counter() - start, 1)}
    out = Path(args.out) if args.out else (Path(os.environ["OUT"]) if os.environ.get("OUT")
                                           else Path(__file__).parent) / f"train_throughput_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": env, "rows": rows,
                               "best": {m: r["setting"] + f" @ {r['batch']}" for m, r in best.items()}}, indent=2))
    print(f"wrote {out} ({env['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
