"""Serving ops chained with ``>>`` (Merlin Systems style) and exported as a Triton ensemble.

    graph = (RequestContextOp() >> QueryUserFeatures(paths) >> EmbedUser(paths) >> QueryIndex(paths, top_k=100)
             >> QueryItemFeatures(paths) >> Rank(paths) >> FilterTopN(paths))
    export_ensemble(graph, paths.triton_repo)

Each op is one Triton python model running one step class of
:mod:`recstack.ensembles.steps`. The files a step reads (saved Workflow, ONNX models,
FAISS index, popularity, item keys) are exported inside its model folder; the online
feature store is a deployment setting (``RECSTACK_FEATURE_REPO``, set by ``recstack serve``),
so the repository can be copied to a serving host. Tensors are wired by name: an op's input is the
output of the latest earlier op with that name, or an ensemble input
(``user_id`` int64 [1], ``top_n`` int32 [1]; optional: ``request_time`` int64 [1], unix seconds,
default now, and ``device`` int64 [1], a device code: the request context the ranker reads,
:mod:`recstack.ensembles.context_step`; ``diversity_lambda`` float32 [1], ``freshness_weight``
float32 [1], ``genre_cap`` int32 [1]: re-ranking settings, :mod:`recstack.ensembles.rerank`).
The ensemble's outputs are
``item_ids`` int64 [-1] and ``scores`` float32 [-1] (raw item ids, best first; NaN score for an
exploration slot), ``cold_start`` int32 [1] (1 when the user had no history and got popular
items), ``explored`` int32 [-1] (1 where a new item was placed to collect feedback),
``store_fallback`` int32 [1] (1 when the online store could not be reached and the popularity
list was served instead of a personal one) and ``model_version`` int64 [1], and per item a
reason: ``reason_code`` int32 [-1], ``reason_item`` int64 [-1], ``reason_score`` float32 [-1].
Items added after training (the live-item registry,
``RECSTACK_LIVE_ITEMS``) are picked up by the retrieval, item-feature and filter steps while
they serve.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recstack.errors import InputError
from recstack.io import atomic_dir, read_json
from recstack.models.layout import HISTORY_TIMES, FeatureLayout, reads_history_times
from recstack.paths import RunPaths
from recstack.ensembles.checksums import MANIFEST_FILE, write_manifest  # noqa: F401 (MANIFEST_FILE: re-exported)
from recstack.ensembles.model_repo import (
    Artifact, TensorSpec, live_version, model_versions, write_ensemble_model, write_python_model,
)
from recstack.ensembles.python_model import VERSION_OUTPUT

ENSEMBLE_NAME = "recommend"
CONTEXT_INPUTS = [TensorSpec("request_time", np.int64, (1,)), TensorSpec("device", np.int64, (1,))]
RERANK_INPUTS = [TensorSpec("diversity_lambda", np.float32, (1,)), TensorSpec("freshness_weight", np.float32, (1,)),
                 TensorSpec("genre_cap", np.int32, (1,))]
"""Per-request re-ranking settings (:mod:`recstack.ensembles.rerank`): optional, absent = export defaults."""
ENSEMBLE_INPUTS = [TensorSpec("user_id", np.int64, (1,)), TensorSpec("top_n", np.int32, (1,)), *CONTEXT_INPUTS,
                   *RERANK_INPUTS]
OPTIONAL_INPUTS = tuple(s.name for s in CONTEXT_INPUTS + RERANK_INPUTS)
"""Ensemble inputs a request may leave out (Triton 2.51 ensembles pass an absent optional input on
as absent): the request context then is the server's current time and no device, the re-ranking
settings the export's defaults."""
CONTEXT = TensorSpec("context", np.int64, (3,))
REASON_OUTPUTS = [TensorSpec("reason_code", np.int32, (-1,)), TensorSpec("reason_item", np.int64, (-1,)),
                  TensorSpec("reason_score", np.float32, (-1,))]
ENSEMBLE_OUTPUTS = [TensorSpec("item_ids", np.int64, (-1,)), TensorSpec("scores", np.float32, (-1,)),
                    TensorSpec("cold_start", np.int32, (1,)), TensorSpec("explored", np.int32, (-1,)),
                    TensorSpec("store_fallback", np.int32, (1,)), TensorSpec(VERSION_OUTPUT, np.int64, (1,)),
                    *REASON_OUTPUTS]
MAX_BATCH_SIZE = 64
STEPS = "recstack.ensembles.steps"
CHAIN_STEP = "recstack.ensembles.chain:ChainStep"
FUSED_NAME = "recommend_steps"
KEEP_VERSIONS = 5
INSTANCES = 2
"""Default CPU instances per python model: on the 2-core machine, ML-1M, two instances served
1,214 req/s at p95 42 ms at concurrency 32 against 913 req/s at p95 49 ms with one (one
instance computes while the other's batch crosses the shared-memory hop). Each instance holds
its own copy of the step data (about 1.9 GiB at 1M items): lower it for big catalogues."""
PREFERRED_INSTANCE = True
"""Default: the first instance of each python model has rate-limiter priority, so sequential
requests stay on one stub with warm caches. ML-1M on the 2-core machine, three interleaved rounds
against two plain instances: concurrency 1 p95 5.6-6.9 ms against 7.1-7.9 (perf_analyzer 4.7-5.3
against 5.4-7.3), stub CPU per request 2.9-3.9 ms against 4.0-4.6, and concurrency 32 kept its
throughput (982-1,137 req/s against 876-1,036)."""
MAX_QUEUE_DELAY_US = 0
"""Default dynamic-batching window (µs). With 0, Triton still batches: requests that queue while
every instance is busy go to the next free instance as one batch (under load nothing waits for a
window anyway), and a lone request is not held back. With 200 µs (the default before), every
request at concurrency 1 waited the whole window: Triton's queue time per request 0.4-1.4 ms
against 0.03-0.7 ms with 0, on this shared 2-core machine (ML-100K and a no-op step alike)."""
FEATURE_REPO_ENV = "RECSTACK_FEATURE_REPO"
"""Environment variable naming the Feast repository (online store) the served steps read."""
LIVE_ITEMS_ENV = "RECSTACK_LIVE_ITEMS"
"""Environment variable naming the live-item registry (items added after training) the steps poll."""
SETTING_ENV = {"feature_repo": FEATURE_REPO_ENV, "live_items": LIVE_ITEMS_ENV}
EXPLORATION_SHARE = 0.1
"""Default share of each list given to items added in the exploration window."""
EXPLORATION_WINDOW_S = 7 * 86400.0


def setting_environment(settings: dict[str, str]) -> dict[str, str]:
    """``{"<op>.<setting>": ENV_VAR}``: where a python model reads each deployment setting."""
    return {k: SETTING_ENV[k.rsplit(".", 1)[-1]] for k in settings}


@dataclass
class ServingOp:
    """One step of the serving graph: a Triton model name, its step class, params and tensor specs."""

    name: str
    step_class: str
    params: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    """Deployment settings (keys of ``SETTING_ENV``) with their values in this process."""
    optional: tuple[str, ...] = ()
    """Names of inputs a request may leave out."""

    def step_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the step in this process (artifacts at their source paths)."""
        return {**self.params, **{k: str(a.source) for k, a in self.artifacts.items()}, **self.settings}

    def __rshift__(self, other: "ServingOp | ServingGraph") -> "ServingGraph":
        return ServingGraph([self]) >> other


@dataclass
class ServingGraph:
    """An ordered chain of ServingOps."""

    ops: list[ServingOp] = field(default_factory=list)

    def __rshift__(self, other: "ServingOp | ServingGraph") -> "ServingGraph":
        more = other.ops if isinstance(other, ServingGraph) else [other]
        return ServingGraph(self.ops + more)

    def fused(self, name: str = FUSED_NAME, outputs: list[TensorSpec] = ENSEMBLE_OUTPUTS) -> ServingOp:
        """The whole chain as one op (:class:`~recstack.ensembles.chain.ChainStep`): one Triton hop.

        Its inputs are the tensors no earlier op produces; artifacts and settings keep their
        files and values under ``"<op name>.<param>"``.
        """
        produced: set[str] = set()
        inputs: dict[str, TensorSpec] = {}
        for op in self.ops:
            inputs.update({s.name: s for s in op.inputs if s.name not in produced and s.name not in inputs})
            produced.update(s.name for s in op.outputs)
        chain = [{"name": op.name, "step_class": op.step_class, "params": op.params,
                  "inputs": [s.name for s in op.inputs], "outputs": [s.name for s in op.outputs],
                  **({"optional": list(op.optional)} if op.optional else {})} for op in self.ops]
        optional = tuple(n for n in inputs if any(n in op.optional for op in self.ops))
        return ServingOp(
            name, CHAIN_STEP, {"ops": chain, "outputs": [s.name for s in outputs if s.name != VERSION_OUTPUT]},
            list(inputs.values()), list(outputs),
            artifacts={f"{op.name}.{k}": a for op in self.ops for k, a in op.artifacts.items()},
            settings={f"{op.name}.{k}": v for op in self.ops for k, v in op.settings.items()}, optional=optional)


def _layout(paths: RunPaths, model: str) -> FeatureLayout:
    config_path = paths.models / model / "config.json"
    if not config_path.exists():
        raise InputError(f"{config_path}: missing; run `recstack train --dataset {paths.root.name}` first")
    return FeatureLayout.from_dict(read_json(config_path)["layout"])


def _model_files(paths: RunPaths, model: str, *onnx: str) -> Artifact:
    """A model folder's ``config.json`` (layout, fusion) and the named files (ONNX; ``model.pt`` for the
    PyTorch path of ``RECSTACK_TORCH_DEVICE``): what a step loads."""
    return Artifact(paths.models / model, ("config.json", *onnx))


def _history_times_specs(paths: RunPaths, layout: FeatureLayout) -> list[TensorSpec]:
    """``history_times`` [L] int64 when the two-tower's user tower reads it (sequence tower, time gaps)."""
    hyper = read_json(paths.models / "two_tower" / "config.json").get("hyperparameters", {})
    return [TensorSpec(HISTORY_TIMES, np.int64, (layout.history_length,))] if reads_history_times(hyper) else []


def _user_block_specs(layout: FeatureLayout) -> list[TensorSpec]:
    specs = [TensorSpec("user_cat", np.int64, (len(layout.user.cat),))]
    if layout.user.lists:
        specs.append(TensorSpec("user_lists", np.int64, (layout.user.list_width,)))
    if layout.user.cont:
        specs.append(TensorSpec("user_cont", np.float32, (len(layout.user.cont),)))
    specs.append(TensorSpec("history", np.int64, (layout.history_length,)))
    if layout.context:
        specs.append(CONTEXT)
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
STORE_UNAVAILABLE = TensorSpec("store_unavailable", np.int32, (1,))


REQUEST_SECONDS = TensorSpec("request_seconds", np.int64, (1,))


def RequestContextOp(request_seconds: bool = False) -> ServingOp:
    """Request time (default now) and device -> the ``context`` codes the ranker reads (and with
    ``request_seconds`` the time itself, for the multi-source retrieval's features)."""
    return ServingOp("request_context", "recstack.ensembles.context_step:RequestContext", {},
                     [ENSEMBLE_INPUTS[0], *CONTEXT_INPUTS], [CONTEXT] + ([REQUEST_SECONDS] if request_seconds else []),
                     optional=tuple(s.name for s in CONTEXT_INPUTS))


def QueryUserFeatures(paths: RunPaths) -> ServingOp:  # noqa: N802 (reads like a Merlin op)
    """Feast user features + history for a raw ``user_id``, encoded with the saved Workflow."""
    layout = _layout(paths, "two_tower")
    return ServingOp(
        "query_user_features", f"{STEPS}:QueryUserFeatures", {},
        [ENSEMBLE_INPUTS[0]], _user_block_specs(layout) + _history_times_specs(paths, layout)
        + [SEEN, KNOWN, STORE_UNAVAILABLE],
        artifacts={"workflow_dir": Artifact(paths.workflow), "model_dir": _model_files(paths, "two_tower")},
        settings={"feature_repo": str(paths.feature_repo)})


def EmbedUser(paths: RunPaths) -> ServingOp:  # noqa: N802
    """The two-tower model's user tower (ONNX)."""
    layout = _layout(paths, "two_tower")
    dim = int(read_json(paths.models / "two_tower" / "config.json")["embedding_dim"])
    return ServingOp("user_tower", f"{STEPS}:EmbedUser", {},
                     _user_block_specs(layout) + _history_times_specs(paths, layout),
                     [TensorSpec("user_embedding", np.float32, (dim,))],
                     artifacts={"model_dir": _model_files(paths, "two_tower", "user_tower.onnx", "model.pt")})


def _live_items(paths: RunPaths) -> dict[str, str]:
    from recstack.features.live_items import live_items_path

    return {"live_items": str(live_items_path(paths))}


def QueryIndex(paths: RunPaths, top_k: int = 100) -> ServingOp:  # noqa: N802
    """FAISS top-K candidates, seen items excluded; popular items for cold-start users; live items
    embedded by the item tower and added to the index as they are registered."""
    dim = int(read_json(paths.models / "two_tower" / "config.json")["embedding_dim"])
    return ServingOp(
        "retrieve", f"{STEPS}:QueryIndex", {"top_k": int(top_k), "dimension": dim},
        [TensorSpec("user_embedding", np.float32, (dim,)), SEEN, KNOWN],
        [TensorSpec("candidate_ids", np.int64, (top_k,)), TensorSpec("retrieval_scores", np.float32, (top_k,))],
        artifacts={"index_dir": Artifact(paths.index),
                   "popularity_path": Artifact(paths.features / "popularity.parquet"),
                   "model_dir": _model_files(paths, "two_tower", "item_tower.onnx"),
                   "workflow_dir": Artifact(paths.workflow)},
        settings=_live_items(paths))


def multi_source_width(paths: RunPaths, top_k: int) -> int | None:
    """W of the multi-source candidates (``top_k`` FAISS + the item-kNN and popular slots) when the run
    serves them (``models/candidates/`` and a DLRM that reads their ``item_cross`` features), else None."""
    from recstack.models.candidates import ARTIFACT

    config = paths.models / ARTIFACT / "config.json"
    dlrm = paths.models / "dlrm" / "config.json"
    if not (config.is_file() and dlrm.is_file()) or not read_json(dlrm)["hyperparameters"].get("cross_features"):
        return None
    sources = read_json(config)["sources"]
    return int(top_k) + int(sources["item_knn"]) + int(sources["popular"])


def MultiSourceRetrieve(paths: RunPaths, top_k: int = 100) -> ServingOp:
    """:func:`QueryIndex` merged with the item-kNN and popular sources
    (:class:`~recstack.ensembles.multi_source.MultiSourceIndex`): W candidates with their ``item_cross`` features."""
    from recstack.models.candidates import ARTIFACT, CROSS_FEATURES

    index = QueryIndex(paths, top_k)
    width = multi_source_width(paths, top_k)
    if width is None:
        raise InputError(f"{paths.models / ARTIFACT}: no candidate sources, or a DLRM that does not read them "
                         "(retrain: recstack train)")
    layout = _layout(paths, "two_tower")
    return ServingOp(
        index.name, "recstack.ensembles.multi_source:MultiSourceIndex", index.params,
        index.inputs + [TensorSpec("history", np.int64, (layout.history_length,)), REQUEST_SECONDS],
        [TensorSpec("candidate_ids", np.int64, (width,)), TensorSpec("retrieval_scores", np.float32, (width,)),
         TensorSpec("item_cross", np.float32, (width, len(CROSS_FEATURES)))],
        artifacts={**index.artifacts, "sources_dir": Artifact(paths.models / ARTIFACT),
                   "embeddings_dir": Artifact(paths.models / "two_tower", ("item_embeddings.npy",))},
        settings=index.settings)


def QueryItemFeatures(paths: RunPaths, top_k: int = 100) -> ServingOp:  # noqa: N802
    """Item features of the candidates, from the exported item feature table held in memory
    (extended with live items as they are registered)."""
    layout = _layout(paths, "dlrm")
    return ServingOp(
        "query_item_features", f"{STEPS}:QueryItemFeatures", {},
        [TensorSpec("candidate_ids", np.int64, (top_k,))],
        _item_block_specs(layout, top_k) + [TensorSpec("candidate_keys", np.int64, (top_k,))],
        artifacts={"features_dir": Artifact(paths.features, ("item_features.parquet",)),
                   "model_dir": _model_files(paths, "dlrm"), "workflow_dir": Artifact(paths.workflow)},
        settings=_live_items(paths))


def Rank(paths: RunPaths, top_k: int = 100) -> ServingOp:  # noqa: N802
    """The DLRM ranker (ONNX) over user x candidate features, fused with the retrieval score."""
    layout = _layout(paths, "dlrm")
    from recstack.models.candidates import CROSS_FEATURES

    cross = read_json(paths.models / "dlrm" / "config.json")["hyperparameters"].get("cross_features")
    return ServingOp("ranker", f"{STEPS}:Rank", {},
                     _user_block_specs(layout) + _item_block_specs(layout, top_k)
                     + ([TensorSpec("item_cross", np.float32, (top_k, len(CROSS_FEATURES)))] if cross else [])
                     + [TensorSpec("retrieval_scores", np.float32, (top_k,))],
                     [TensorSpec("rank_scores", np.float32, (top_k,))],
                     artifacts={"model_dir": _model_files(paths, "dlrm", "dlrm.onnx", "model.pt")})


def FilterTopN(paths: RunPaths, top_k: int = 100, max_top_n: int = 100,  # noqa: N802
               exploration_share: float = EXPLORATION_SHARE,
               exploration_window_s: float = EXPLORATION_WINDOW_S, diversity_lambda: float = 1.0,
               freshness_weight: float = 0.0, genre_cap: int = 0) -> ServingOp:
    """Seen/padding filter, order by ranker score (popularity for cold users) re-ranked by MMR /
    genre caps / freshness (:class:`~recstack.ensembles.rerank.RerankTopN`; the three settings are
    the defaults of the optional per-request inputs), top N with ``exploration_share`` of the
    slots for items added in the last ``exploration_window_s``, and a reason per item."""
    from recstack.ensembles.rerank import check_settings, write_item_trends
    if not 0.0 <= exploration_share <= 1.0:
        raise InputError(f"exploration_share: must be between 0 and 1, got {exploration_share}")
    if exploration_window_s <= 0:
        raise InputError(f"exploration_window_s: must be > 0, got {exploration_window_s}")
    check_settings(diversity_lambda, freshness_weight, genre_cap)
    k = (top_k,)
    layout = _layout(paths, "two_tower")
    write_item_trends(paths.data, paths.features, layout.item.id_column.name)
    return ServingOp(
        "filter_top_n", "recstack.ensembles.rerank:RerankTopN",
        {"max_top_n": int(max_top_n), "exploration_share": float(exploration_share),
         "exploration_window_s": float(exploration_window_s), "diversity_lambda": float(diversity_lambda),
         "freshness_weight": float(freshness_weight), "genre_cap": int(genre_cap),
         "item_id_column": layout.item.id_column.name},
        [TensorSpec("candidate_keys", np.int64, k), TensorSpec("candidate_ids", np.int64, k),
         TensorSpec("rank_scores", np.float32, k), TensorSpec("retrieval_scores", np.float32, k),
         SEEN, KNOWN, ENSEMBLE_INPUTS[1], STORE_UNAVAILABLE,
         TensorSpec("history", np.int64, (layout.history_length,)), *RERANK_INPUTS],
        ENSEMBLE_OUTPUTS,
        artifacts={"workflow_dir": Artifact(paths.workflow), "model_dir": _model_files(paths, "dlrm"),
                   "embeddings_dir": Artifact(paths.models / "two_tower", ("item_embeddings.npy",)),
                   "features_dir": Artifact(paths.features, ("item_features.parquet", "item_trends.parquet"))},
        settings=_live_items(paths), optional=tuple(s.name for s in RERANK_INPUTS))


def recommendation_graph(paths: RunPaths, top_k: int = 100, exploration_share: float = EXPLORATION_SHARE,
                         exploration_window_s: float = EXPLORATION_WINDOW_S,
                         rerank: dict[str, float] | None = None) -> ServingGraph:
    """The full retrieval + ranking chain of DESIGN.md for one run; ``rerank``: export-time defaults
    of ``diversity_lambda`` / ``freshness_weight`` / ``genre_cap`` (see :func:`FilterTopN`).

    ``top_k``: the two-tower's FAISS candidates; a run with candidate sources and a DLRM reading them
    retrieves multi-source candidates (:func:`MultiSourceRetrieve`, W = K + item-kNN + popular slots)."""
    if top_k <= 0:
        raise InputError(f"top_k: must be > 0, got {top_k}")
    width = multi_source_width(paths, top_k)
    retrieve = QueryIndex(paths, top_k) if width is None else MultiSourceRetrieve(paths, top_k)
    top_k = width or top_k  # the steps after retrieval see W multi-source candidates
    return (RequestContextOp(request_seconds=width is not None) >> QueryUserFeatures(paths) >> EmbedUser(paths) >> retrieve
            >> QueryItemFeatures(paths, top_k) >> Rank(paths, top_k)
            >> FilterTopN(paths, top_k, exploration_share=exploration_share,
                          exploration_window_s=exploration_window_s, **(rerank or {})))


def export_ensemble(graph: ServingGraph, repo_dir: Path, name: str = ENSEMBLE_NAME,
                    max_batch_size: int = MAX_BATCH_SIZE, *, fuse: bool = True, instances: int = INSTANCES,
                    max_queue_delay_us: int | None = MAX_QUEUE_DELAY_US, manifest: dict[str, Any] | None = None,
                    deploy: bool = True, keep_versions: int = KEEP_VERSIONS, backend: str = "python",
                    onnx_instance_kind: str = "KIND_GPU", preferred_instance: bool = PREFERRED_INSTANCE) -> Path:
    """Write the graph as python models plus an ensemble model ``name`` wiring them into ``repo_dir``.

    ``backend="onnxruntime"`` writes the ONNX models (user tower, DLRM) as Triton onnxruntime-backend
    models with ``onnx_instance_kind`` instances instead (for NGC images; see
    :mod:`recstack.ensembles.onnx_export`, where ``fuse`` and the version arguments do not apply).

    ``fuse`` writes the whole chain as one python model (one hop per request; the default,
    measured faster on CPU), else one model per op. Every python model gets ``instances``
    CPU instances and dynamic batching with a ``max_queue_delay_us`` window (None: off).
    ``preferred_instance`` (default on; python backend only) gives the first instance of each
    python model rate-limiter priority over the others (see
    :func:`~recstack.ensembles.model_repo.write_python_model`; the server needs
    ``--rate-limit=execution_count``, which ``recstack serve`` adds when it sees them).

    Fused exports are numbered versions: each export adds ``recommend_steps/<N>/`` (N = last
    + 1) with a ``manifest.json`` (``manifest`` + version, creation time and the sha256 of
    every file of the version), keeps the last ``keep_versions`` versions for rollback, and
    makes the new one live unless ``deploy`` is False. The whole repository is rebuilt in a
    temporary folder and swapped in at the end, so a running server's repository is never
    left half-written.
    """
    if backend != "python":
        from recstack.ensembles.onnx_export import BACKENDS, export_onnxruntime_ensemble

        if backend not in BACKENDS:
            raise InputError(f"--backend: {backend!r} must be one of {BACKENDS}")
        return export_onnxruntime_ensemble(graph, repo_dir, name, max_batch_size, instances=instances,
                                           instance_kind=onnx_instance_kind, max_queue_delay_us=max_queue_delay_us)
    repo_dir = Path(repo_dir)
    with atomic_dir(repo_dir) as tmp:
        steps = []
        previous = repo_dir / FUSED_NAME if fuse and (repo_dir / FUSED_NAME).is_dir() else None
        versions = model_versions(previous) if previous else []
        version = max(versions, default=0) + 1
        live = version if deploy or previous is None else live_version(previous)
        for op in [graph.fused()] if fuse else graph.ops:
            write_python_model(tmp, op.name, op.step_class, op.params, op.inputs, op.outputs,
                               max_batch_size=max_batch_size, instance_count=instances,
                               max_queue_delay_us=max_queue_delay_us, preferred_instance=preferred_instance,
                               artifacts=op.artifacts,
                               environment=setting_environment(op.settings), optional_inputs=op.optional,
                               version=version, live_version=live, keep_versions_from=previous)
            steps.append((op.name, {s.name: s.name for s in op.inputs}, {s.name: s.name for s in op.outputs}))
        if fuse:
            _prune_versions(tmp / FUSED_NAME, keep_versions, live)
            write_manifest(tmp / FUSED_NAME / str(version), version, manifest or {})
        write_ensemble_model(tmp, name, ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS, steps, max_batch_size=max_batch_size,
                             optional_inputs=OPTIONAL_INPUTS)
    return repo_dir


def _prune_versions(model_dir: Path, keep: int, live: int | None) -> None:
    """Keep the newest ``keep`` versions (and the live one)."""
    versions = model_versions(model_dir)
    for version in versions[: max(0, len(versions) - keep)]:
        if version != live:
            shutil.rmtree(model_dir / str(version))


def run_manifest(paths: RunPaths) -> dict[str, Any]:
    """What a version manifest records about the run it was exported from: the dataset, the data
    window (first and last interaction time of train + valid) and the evaluate metrics."""
    import pandas as pd

    window = None
    frames = [pd.read_parquet(paths.data / f"{s}.parquet", columns=["timestamp"]) for s in ("train", "valid")
              if (paths.data / f"{s}.parquet").is_file()]
    if frames:
        ts = pd.concat(frames)["timestamp"]
        window = [int(ts.min()), int(ts.max())]
    report = paths.reports / "evaluation_test.json"
    metrics = read_json(report)["models"] if report.is_file() else None
    return {"dataset": paths.root.name, "data_window_unix_s": window, "metrics": metrics}


def run_in_process(graph: ServingGraph, inputs: dict[str, np.ndarray],
                   steps: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Run the graph in this process (no Triton) through the same ChainStep the fused model runs.

    ``steps`` caches the built chain across calls (pass the same dict again).
    """
    from recstack.ensembles.chain import ChainStep

    steps = {} if steps is None else steps
    if "chain" not in steps:
        op = graph.fused()
        steps["chain"] = ChainStep(**op.step_kwargs())
    return steps["chain"].execute(inputs)
