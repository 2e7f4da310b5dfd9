"""Serving ops chained with ``>>`` (Merlin Systems style) and exported as a Triton ensemble.

    graph = (QueryUserFeatures(paths) >> EmbedUser(paths) >> QueryIndex(paths, top_k=100)
             >> QueryItemFeatures(paths) >> Rank(paths) >> FilterTopN())
    export_ensemble(graph, paths.triton_repo)

Each op is one Triton python model running one step class of
:mod:`recstack.ensembles.steps`. Tensors are wired by name: an op's input is the
output of the latest earlier op with that name, or an ensemble input
(``user_id`` int64 [1], ``top_n`` int32 [1]). The ensemble's outputs are
``item_ids`` int64 [-1] and ``scores`` float32 [-1] (raw item ids, best first) and
``cold_start`` int32 [1] (1 when the user had no history and got popular items).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recstack.errors import InputError
from recstack.io import read_json
from recstack.models.layout import FeatureLayout
from recstack.paths import RunPaths
from recstack.serving.model_repo import TensorSpec, write_ensemble_model, write_python_model

ENSEMBLE_NAME = "recommend"
ENSEMBLE_INPUTS = [TensorSpec("user_id", np.int64, (1,)), TensorSpec("top_n", np.int32, (1,))]
ENSEMBLE_OUTPUTS = [TensorSpec("item_ids", np.int64, (-1,)), TensorSpec("scores", np.float32, (-1,)),
                    TensorSpec("cold_start", np.int32, (1,))]
MAX_BATCH_SIZE = 64
STEPS = "recstack.ensembles.steps"


@dataclass
class ServingOp:
    """One step of the serving graph: a Triton model name, its step class, params and tensor specs."""

    name: str
    step_class: str
    params: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    instance_count: int = 1

    def __rshift__(self, other: "ServingOp | ServingGraph") -> "ServingGraph":
        return ServingGraph([self]) >> other


@dataclass
class ServingGraph:
    """An ordered chain of ServingOps."""

    ops: list[ServingOp] = field(default_factory=list)

    def __rshift__(self, other: "ServingOp | ServingGraph") -> "ServingGraph":
        more = other.ops if isinstance(other, ServingGraph) else [other]
        return ServingGraph(self.ops + more)


def _layout(paths: RunPaths, model: str) -> FeatureLayout:
    config_path = paths.models / model / "config.json"
    if not config_path.exists():
        raise InputError(f"{config_path}: missing; run `recstack train --dataset {paths.root.name}` first")
    return FeatureLayout.from_dict(read_json(config_path)["layout"])


def _user_block_specs(layout: FeatureLayout) -> list[TensorSpec]:
    specs = [TensorSpec("user_cat", np.int64, (len(layout.user.cat),))]
    if layout.user.lists:
        specs.append(TensorSpec("user_lists", np.int64, (layout.user.list_width,)))
    if layout.user.cont:
        specs.append(TensorSpec("user_cont", np.float32, (len(layout.user.cont),)))
    specs.append(TensorSpec("history", np.int64, (layout.history_length,)))
    return specs


def _item_block_specs(layout: FeatureLayout, top_k: int) -> list[TensorSpec]:
    specs = [TensorSpec("item_cat", np.int64, (top_k, len(layout.item.cat)))]
    if layout.item.lists:
        specs.append(TensorSpec("item_lists", np.int64, (top_k, layout.item.list_width)))
    if layout.item.cont:
        specs.append(TensorSpec("item_cont", np.float32, (top_k, len(layout.item.cont))))
    return specs


SEEN = TensorSpec("seen_items", np.int64, (-1,))
KNOWN = TensorSpec("user_known", np.int32, (1,))


def QueryUserFeatures(paths: RunPaths) -> ServingOp:  # noqa: N802 (reads like a Merlin op)
    """Feast user features + history for a raw ``user_id``, encoded with the saved Workflow."""
    layout = _layout(paths, "two_tower")
    return ServingOp(
        "query_user_features", f"{STEPS}:QueryUserFeatures",
        {"feature_repo": str(paths.feature_repo), "workflow_dir": str(paths.workflow),
         "model_dir": str(paths.models / "two_tower")},
        [ENSEMBLE_INPUTS[0]], _user_block_specs(layout) + [SEEN, KNOWN])


def EmbedUser(paths: RunPaths) -> ServingOp:  # noqa: N802
    """The two-tower model's user tower (ONNX)."""
    layout = _layout(paths, "two_tower")
    dim = int(read_json(paths.models / "two_tower" / "config.json")["embedding_dim"])
    return ServingOp("user_tower", f"{STEPS}:EmbedUser", {"model_dir": str(paths.models / "two_tower")},
                     _user_block_specs(layout), [TensorSpec("user_embedding", np.float32, (dim,))])


def QueryIndex(paths: RunPaths, top_k: int = 100) -> ServingOp:  # noqa: N802
    """FAISS top-K candidates, seen items excluded; popular items for cold-start users."""
    dim = int(read_json(paths.models / "two_tower" / "config.json")["embedding_dim"])
    return ServingOp(
        "retrieve", f"{STEPS}:QueryIndex",
        {"index_dir": str(paths.index), "popularity_path": str(paths.features / "popularity.parquet"),
         "top_k": int(top_k)},
        [TensorSpec("user_embedding", np.float32, (dim,)), SEEN, KNOWN],
        [TensorSpec("candidate_ids", np.int64, (top_k,)), TensorSpec("retrieval_scores", np.float32, (top_k,))])


def QueryItemFeatures(paths: RunPaths, top_k: int = 100) -> ServingOp:  # noqa: N802
    """Feast item features of the candidates."""
    layout = _layout(paths, "dlrm")
    return ServingOp(
        "query_item_features", f"{STEPS}:QueryItemFeatures",
        {"feature_repo": str(paths.feature_repo), "features_dir": str(paths.features),
         "model_dir": str(paths.models / "dlrm")},
        [TensorSpec("candidate_ids", np.int64, (top_k,))],
        _item_block_specs(layout, top_k) + [TensorSpec("candidate_keys", np.int64, (top_k,))])


def Rank(paths: RunPaths, top_k: int = 100) -> ServingOp:  # noqa: N802
    """The DLRM ranker (ONNX) over user x candidate features, fused with the retrieval score."""
    layout = _layout(paths, "dlrm")
    return ServingOp("ranker", f"{STEPS}:Rank", {"model_dir": str(paths.models / "dlrm")},
                     _user_block_specs(layout) + _item_block_specs(layout, top_k)
                     + [TensorSpec("retrieval_scores", np.float32, (top_k,))],
                     [TensorSpec("rank_scores", np.float32, (top_k,))])


def FilterTopN(top_k: int = 100, max_top_n: int = 100) -> ServingOp:  # noqa: N802
    """Seen/padding filter, sort by ranker score (popularity for cold users), top N."""
    k = (top_k,)
    return ServingOp(
        "filter_top_n", f"{STEPS}:FilterTopN", {"max_top_n": int(max_top_n)},
        [TensorSpec("candidate_keys", np.int64, k), TensorSpec("candidate_ids", np.int64, k),
         TensorSpec("rank_scores", np.float32, k), TensorSpec("retrieval_scores", np.float32, k),
         SEEN, KNOWN, ENSEMBLE_INPUTS[1]],
        ENSEMBLE_OUTPUTS)


def recommendation_graph(paths: RunPaths, top_k: int = 100) -> ServingGraph:
    """The full retrieval + ranking chain of DESIGN.md for one run."""
    if top_k <= 0:
        raise InputError(f"top_k: must be > 0, got {top_k}")
    return (QueryUserFeatures(paths) >> EmbedUser(paths) >> QueryIndex(paths, top_k)
            >> QueryItemFeatures(paths, top_k) >> Rank(paths, top_k) >> FilterTopN(top_k))


def export_ensemble(graph: ServingGraph, repo_dir: Path, name: str = ENSEMBLE_NAME,
                    max_batch_size: int = MAX_BATCH_SIZE) -> Path:
    """Write one python model per op and an ensemble model ``name`` wiring them into ``repo_dir``.

    The whole repository is rebuilt in a temporary folder and swapped in at the end, so a
    running server's repository is never left half-written.
    """
    repo_dir = Path(repo_dir)
    tmp = repo_dir.with_name(f".{repo_dir.name}.export")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        steps = []
        for op in graph.ops:
            write_python_model(tmp, op.name, op.step_class, op.params, op.inputs, op.outputs,
                               max_batch_size=max_batch_size, instance_count=op.instance_count)
            steps.append((op.name, {s.name: s.name for s in op.inputs}, {s.name: s.name for s in op.outputs}))
        write_ensemble_model(tmp, name, ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS, steps, max_batch_size=max_batch_size)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = repo_dir.with_name(f".{repo_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if repo_dir.exists():
        repo_dir.rename(old)
    tmp.rename(repo_dir)
    shutil.rmtree(old, ignore_errors=True)
    return repo_dir


def run_in_process(graph: ServingGraph, inputs: dict[str, np.ndarray],
                   steps: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Run the graph's steps in this process (no Triton), for tests and offline checks.

    ``steps`` caches built step objects by op name across calls.
    """
    import importlib

    steps = {} if steps is None else steps
    tensors = dict(inputs)
    for op in graph.ops:
        if op.name not in steps:
            module, cls = op.step_class.split(":")
            steps[op.name] = getattr(importlib.import_module(module), cls)(**op.params)
        tensors.update(steps[op.name].execute({s.name: tensors[s.name] for s in op.inputs}))
    return {s.name: tensors[s.name] for s in ENSEMBLE_OUTPUTS}
