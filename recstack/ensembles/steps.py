"""The serving steps of the recommendation ensemble, as plain Python classes.

Each step is built from JSON-serialisable parameters (paths, sizes) and has
``execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]``; arrays carry
the batch as their first dimension. The same class runs in-process (tests,
``recstack evaluate``-style checks) and inside a Triton python model
(``recstack.ensembles.python_model``), so what is tested is what is served.

Flow for a batch of B requests (K candidates, N results)::

    user_id [B,1] ─► QueryUserFeatures ─► user_cat/user_cont/history, seen_items [B,S], user_known [B,1],
                                          store_unavailable [B,1]
                  ─► EmbedUser         ─► user_embedding [B,d]
                  ─► QueryIndex        ─► candidate_ids [B,K] (encoded), retrieval_scores [B,K]
                  ─► QueryItemFeatures ─► item_cat/item_lists/item_cont [B,K,*], candidate_keys [B,K] (raw)
                  ─► Rank              ─► rank_scores [B,K] (DLRM fused with retrieval score)
                  ─► FilterTopN        ─► item_ids [B,N] (raw, -1 = none), scores [B,N], cold_start [B,1],
                                          store_fallback [B,1]

Ids are int64 throughout: ``user_id``/``item_ids`` are the dataset's raw ids; encoded
ids (the Workflow's Categorify indices) stay inside. A user with no history in the
online store is a cold-start user: retrieval returns the train + valid window's most
popular items and FilterTopN keeps them in popularity order. When the online store cannot be
reached (Redis down), every user of the batch takes that same popularity path and the
``store_fallback`` output says so (``store_unavailable`` inside the ensemble).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.ids import OOV, PAD
from recstack.io import read_json
from recstack.models.layout import HISTORY_TIMES, FeatureLayout, pad_lists, reads_history_times



ROW_PATH_MAX_BATCH = 48
"""Batches up to this size encode user ids row by row (faster than a pandas frame below ~60 rows)."""


def _onnx_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one request at a time per instance; scale with instances
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _require(inputs: dict[str, np.ndarray], name: str, dtype: Any, ndim: int) -> np.ndarray:
    """Fetch an input, checking dtype and rank, with a one-line error naming the field."""
    if name not in inputs:
        raise InputError(f"input {name!r} is missing")
    array = np.asarray(inputs[name])
    if array.dtype != np.dtype(dtype):
        raise InputError(f"input {name!r}: expected {np.dtype(dtype).name}, got {array.dtype.name}")
    if array.ndim != ndim:
        raise InputError(f"input {name!r}: expected {ndim} dimensions, got shape {array.shape}")
    return array


def _rows_isin(values: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """``[B, K]`` bool: whether ``values[b, k]`` occurs among the non-padding ids of ``sets[b]`` ([B, S])."""
    if sets.shape[1] == 0:
        return np.zeros(values.shape, dtype=bool)
    return (values[:, :, None] == np.where(sets == PAD, -1, sets)[:, None, :]).any(axis=2)


def used_history_columns(history: np.ndarray) -> slice:
    """The columns of ``history`` [B, L] between the first and the last that is not PAD in some row;
    ``slice(0, 1)`` for an all-padding batch (at least one column is kept)."""
    used = np.flatnonzero((history != PAD).any(axis=0))
    return slice(0, 1) if len(used) == 0 else slice(int(used[0]), int(used[-1]) + 1)


def _model_layout(model_dir: Path) -> tuple[FeatureLayout, dict[str, Any]]:
    config = read_json(model_dir / "config.json")
    return FeatureLayout.from_dict(config["layout"]), config


class QueryUserFeatures:
    """Raw user id -> the user's encoded features and history from the online store (Feast).

    Inputs: ``user_id`` int64 [B, 1] (raw ids). Outputs: ``user_cat`` int64 [B, Cu],
    ``user_lists`` int64 [B, Lu] (if the layout has user lists), ``user_cont`` float32
    [B, Du] (if any), ``history`` int64 [B, L] (encoded, oldest -> newest, 0 = pad), ``history_times``
    int64 [B, L] (unix seconds of those items, the store's ``recent_times``; only when the two-tower's
    user tower reads them, :func:`recstack.models.layout.reads_history_times`),
    ``seen_items`` int64 [B, S] (every encoded item seen, 0-padded), ``user_known`` int32
    [B, 1] (1 if the online store has a history for the user), ``store_unavailable`` int32 [B, 1]
    (1 when the store could not be reached: every user of the batch is served as unknown, i.e.
    the popularity list; FilterTopN turns it into the ensemble's ``store_fallback``). Live items
    in the history (codes beyond the trained vocabulary) enter ``history`` as the
    out-of-vocabulary code.

    The raw id's code comes from the store with the other side features (the Workflow wrote
    it there); a user the store lacks is encoded with the saved Workflow (the same object the
    training data went through), and its other side features get the Workflow's encoding of
    missing values.
    """

    def __init__(self, feature_repo: str, workflow_dir: str, model_dir: str):
        from recstack.features import OnlineFeatures
        from recstack.features.online import store_unavailable_errors
        from recstack.workflows import Workflow

        self.online = OnlineFeatures(feature_repo)
        self.store_unavailable = store_unavailable_errors()
        self.workflow = Workflow.load(workflow_dir)
        self.layout, config = _model_layout(Path(model_dir))
        self.with_times = reads_history_times(config.get("hyperparameters", {}))
        if self.with_times and not self.online.has_history_times:
            raise InputError(f"{feature_repo}: user_history has no recent_times, which the user tower reads "
                             "(time gaps); rebuild it with `recstack workflow fit` + `recstack features build`")
        self.item_codes = int(self.layout.item.id_column.cardinality)
        side = self.layout.user
        self.id_column = side.id_column.name
        self.other_cat = [c.name for c in side.cat[1:]]
        self.list_columns = list(side.lists)
        self.cont_columns = list(side.cont)
        # What the Workflow gives a user whose side features are all missing.
        missing = {name: None for name in self.other_cat + [c.name for c in self.list_columns] + self.cont_columns}
        self.missing_values = self.workflow.transform_request(missing) if missing else {}

    def _encode_ids(self, keys: np.ndarray) -> np.ndarray:
        """Raw user ids [B] -> encoded ids [B] with the Workflow: per row for small batches (one
        request through ``transform_request`` takes ~0.02 ms, a one-row frame ~1.2 ms), as a frame
        for big ones. Both paths give the same codes (the Workflow's own contract)."""
        if len(keys) <= ROW_PATH_MAX_BATCH:
            rows = [self.workflow.transform_request({self.id_column: int(k)}) for k in keys]
            if all(r is not None for r in rows):
                return np.array([r[self.id_column] for r in rows], dtype=np.int64)
        return self.workflow.transform(pd.DataFrame({self.id_column: keys}))[self.id_column].to_numpy(np.int64)

    def outputs(self) -> list[str]:
        names = ["user_cat"]
        if self.list_columns:
            names.append("user_lists")
        if self.cont_columns:
            names.append("user_cont")
        return names + ["history"] + ([HISTORY_TIMES] if self.with_times else []) + [
            "seen_items", "user_known", "store_unavailable"]

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        user_ids = _require(inputs, "user_id", np.int64, 2)
        if user_ids.shape[1] != 1:
            raise InputError(f"input 'user_id': expected shape [batch, 1], got {list(user_ids.shape)}")
        keys = user_ids[:, 0]
        batch = len(keys)
        try:
            features, has_features, recent, times, seen, has_history = self.online.users_with_histories(keys)
            fallback = False
        except self.store_unavailable:
            # the store is down: serve these users as unknown (popular items, flagged) rather than
            # fail; the next batch asks the store again, so personalisation resumes when it is back
            features, has_features, recent, times, seen, has_history = self.online.nothing_known(batch)
            fallback = True
        has_features = np.asarray(has_features, dtype=bool)
        if self.id_column in features:  # the store holds the Workflow's code: encode only the users it lacks
            encoded_ids = np.where(has_features, np.asarray(features[self.id_column], dtype=np.int64), 0)
            if not has_features.all():
                encoded_ids[~has_features] = self._encode_ids(keys[~has_features])
        else:
            encoded_ids = self._encode_ids(keys)

        def column(name: str, dtype: Any) -> np.ndarray:
            values = np.asarray(features[name], dtype=dtype)
            return np.where(has_features, values, np.asarray(self.missing_values[name], dtype=dtype))

        cat = [encoded_ids] + [column(name, np.int64) for name in self.other_cat]
        out = {"user_cat": np.ascontiguousarray(np.stack(cat, axis=1).astype(np.int64))}
        if self.list_columns:
            blocks = []
            for col in self.list_columns:
                rows = [features[col.name][i] if has_features[i] else self.missing_values[col.name]
                        for i in range(batch)]
                blocks.append(pad_lists(rows, col.max_length, keep="first"))
            out["user_lists"] = np.concatenate(blocks, axis=1)
        if self.cont_columns:
            out["user_cont"] = np.stack([column(name, np.float32) for name in self.cont_columns], axis=1)
        history = pad_lists(recent, self.layout.history_length, keep="last")
        # live items (added after training) have codes beyond the towers' embedding tables: the
        # models read them as out-of-vocabulary; seen_items keeps their codes for the filters
        out["history"] = np.where(history >= self.item_codes, OOV, history)
        if self.with_times:
            out[HISTORY_TIMES] = pad_lists(_aligned_times(recent, times), self.layout.history_length, keep="last")
        width = max([1] + [len(s) for s in seen])
        out["seen_items"] = pad_lists(seen, width, keep="first")
        known = np.array([len(r) > 0 for r in recent]) & np.asarray(has_history, dtype=bool)
        out["user_known"] = known.astype(np.int32).reshape(batch, 1)
        out["store_unavailable"] = np.full((batch, 1), int(fallback), np.int32)
        return out


def _aligned_times(recent: list[np.ndarray], times: list[np.ndarray]) -> list[np.ndarray]:
    """Each user's item times cut or left-padded with 0 (unknown) to the length of its item list."""
    out = []
    for items, t in zip(recent, times):
        t = np.asarray(t, dtype=np.int64)[len(t) - len(items):] if len(t) >= len(items) else \
            np.concatenate([np.zeros(len(items) - len(t), np.int64), np.asarray(t, dtype=np.int64)])
        out.append(t)
    return out


class EmbedUser:
    """User tower (ONNX, onnxruntime): user blocks -> ``user_embedding`` float32 [B, d] (L2-normalised).

    With ``RECSTACK_TORCH_DEVICE`` set, the saved PyTorch tower runs on that device instead
    (:mod:`recstack.ensembles.torch_steps`)."""

    def __init__(self, model_dir: str):
        from recstack.ensembles.torch_steps import TorchUserTower, serving_torch_device

        model_dir = Path(model_dir)
        self.layout, config = _model_layout(model_dir)
        device = serving_torch_device()
        self.torch = TorchUserTower(model_dir, device) if device else None
        self.session = None if self.torch else _onnx_session(model_dir / "user_tower.onnx")
        self.input_names = self.torch.input_names if self.torch else [i.name for i in self.session.get_inputs()]
        self.dim = int(config["embedding_dim"])
        # the sequence encoder's positions are relative and pad keys are masked, so history columns
        # that are padding in every row change nothing but the cost (attention is quadratic in them)
        self.trim_history = config.get("hyperparameters", {}).get("user_encoder") == "sasrec"

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.input_names:
            dtype = np.float32 if name.endswith("_cont") else np.int64
            feeds[name] = _require(inputs, name, dtype, 2)
        if self.trim_history and "history" in feeds:
            columns = used_history_columns(feeds["history"])
            for name in ("history", HISTORY_TIMES):  # a pad's time is 0; gaps next to a pad are bucket 0
                if name in feeds:
                    feeds[name] = feeds[name][:, columns]
        if self.torch:
            embedding = self.torch(feeds)
        else:
            (embedding,) = self.session.run(["user_embedding"], feeds)
        return {"user_embedding": np.ascontiguousarray(embedding, dtype=np.float32)}


class QueryIndex:
    """FAISS top-K over item embeddings, the user's seen items excluded; popularity for cold users.
    With ``RECSTACK_TORCH_DEVICE`` set: exact top-K on that device (flat index only, no FAISS needed).

    Inputs: ``user_embedding`` float32 [B, d], ``seen_items`` int64 [B, S] (0 = pad),
    ``user_known`` int32 [B, 1]. Outputs: ``candidate_ids`` int64 [B, K] (encoded item ids,
    0 where fewer than K exist), ``retrieval_scores`` float32 [B, K] (inner products, or
    popularity share for cold users; -inf for padding).

    With ``live_items`` (the registry, :mod:`recstack.features.live_items`), ``model_dir`` (the
    two-tower folder with ``item_tower.onnx``) and ``workflow_dir``, items added after training
    are embedded by the item tower and added to the index without a rebuild, at most
    ``LIVE_POLL_S`` after they were registered.
    """

    def __init__(self, index_dir: str, popularity_path: str, top_k: int = 100, dimension: int | None = None,
                 model_dir: str | None = None, workflow_dir: str | None = None, live_items: str | None = None):
        from recstack.ensembles.torch_steps import serving_torch_device

        if top_k <= 0:
            raise InputError(f"top_k: must be > 0, got {top_k}")
        device = serving_torch_device()
        if device:  # exact top-K on that device (FAISS-GPU or PyTorch); FAISS need not be installed
            from recstack.retrieval import ExactItemIndex

            self.index = ExactItemIndex.load(index_dir, device)
        else:
            from recstack.retrieval import ItemIndex

            # one FAISS thread per model instance: OpenMP threads fighting over the cores made a
            # 64-query batch 10x slower on a 2-core machine; scale with instances instead
            self.index = ItemIndex.load(index_dir, threads=1)
        if dimension is not None:
            self.index.require_dimension(dimension, "the user tower")
        self.top_k = int(top_k)
        popularity = pd.read_parquet(popularity_path)
        self.popular_ids = popularity["item_id"].to_numpy(np.int64)
        counts = popularity["count"].to_numpy(np.float64)
        self.popular_scores = (counts / max(counts.sum(), 1.0)).astype(np.float32)
        self.live = None
        if live_items:
            from recstack.ensembles.live import ItemTower, LiveItemFeed

            if model_dir is None or workflow_dir is None:
                raise InputError("live_items: needs model_dir (item tower) and workflow_dir")
            self.live, self.tower = LiveItemFeed(live_items, workflow_dir, model_dir), ItemTower(model_dir)
            self._add_live(force=True)

    def _add_live(self, force: bool = False) -> None:
        batch = self.live.poll(force)
        if batch is not None:
            self.index.add(self.tower.embed(batch.blocks), batch.codes)

    def _popular(self, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = ~np.isin(self.popular_ids, seen[seen != PAD])
        ids = self.popular_ids[keep][: self.top_k]
        scores = self.popular_scores[keep][: self.top_k]
        out_ids = np.zeros(self.top_k, np.int64)
        out_scores = np.full(self.top_k, -np.inf, np.float32)
        out_ids[: len(ids)], out_scores[: len(ids)] = ids, scores
        return out_ids, out_scores

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.live is not None:
            self._add_live()
        queries = _require(inputs, "user_embedding", np.float32, 2)
        seen = _require(inputs, "seen_items", np.int64, 2)
        known = _require(inputs, "user_known", np.int32, 2)[:, 0].astype(bool)
        batch = len(queries)
        ids = np.zeros((batch, self.top_k), np.int64)
        scores = np.full((batch, self.top_k), -np.inf, np.float32)
        if known.any():
            rows = np.flatnonzero(known)
            found_ids, found_scores = self.index.search(
                np.ascontiguousarray(queries[rows]), self.top_k, exclude=[seen[r][seen[r] != PAD] for r in rows])
            valid = found_ids >= 0
            ids[rows] = np.where(valid, found_ids, PAD)
            scores[rows] = np.where(valid, found_scores, -np.inf)
        for row in np.flatnonzero(~known):
            ids[row], scores[row] = self._popular(seen[row])
        return {"candidate_ids": ids, "retrieval_scores": scores}


class QueryItemFeatures:
    """Candidate encoded item ids -> their encoded features, served from memory.

    Inputs: ``candidate_ids`` int64 [B, K]. Outputs: ``item_cat`` int64 [B, K, Ci],
    ``item_lists`` int64 [B, K, Li], ``item_cont`` float32 [B, K, Di] (those the layout
    has) and ``candidate_keys`` int64 [B, K] (raw item ids; -1 for padding).

    Item features are static for a model version: the feature table the workflow wrote
    (``item_features.parquet``, exported with the model) is loaded once into arrays indexed
    by encoded item id, so a batch is one gather. Encoded ids outside the table (padding,
    out-of-vocabulary) get the padding row: code 0 / 0.0 and raw key -1. With ``live_items``
    and ``workflow_dir``, items added after training get rows too (their id feature is the
    out-of-vocabulary code: the models have no embedding for them yet).
    """

    def __init__(self, features_dir: str, model_dir: str, workflow_dir: str | None = None,
                 live_items: str | None = None):
        self.layout, _ = _model_layout(Path(model_dir))
        side = self.layout.item
        table = pd.read_parquet(Path(features_dir) / "item_features.parquet")
        ids = table[side.id_column.name].to_numpy(np.int64)
        rows = int(ids.max()) + 2 if len(ids) else 2  # the last row is the padding row
        self.pad_row = rows - 1

        def scatter(values: np.ndarray, dtype: Any) -> np.ndarray:
            out = np.zeros((rows,) + values.shape[1:], dtype=dtype)
            out[ids] = values
            return out

        self.keys = scatter(table["item_key"].to_numpy(np.int64), np.int64)
        self.keys[self.pad_row] = -1
        self.keys[np.setdiff1d(np.arange(rows), ids)] = -1
        self.cat = scatter(np.stack([table[c.name].to_numpy(np.int64) for c in side.cat], axis=1), np.int64)
        self.lists = (scatter(np.concatenate([pad_lists(table[c.name].tolist(), c.max_length, keep="first")
                                              for c in side.lists], axis=1), np.int64) if side.lists else None)
        self.cont = (scatter(np.stack([table[c].to_numpy(np.float32) for c in side.cont], axis=1), np.float32)
                     if side.cont else None)
        self.live = None
        if live_items:
            from recstack.ensembles.live import LiveItemFeed

            if workflow_dir is None:
                raise InputError("live_items: needs workflow_dir")
            self.live = LiveItemFeed(live_items, workflow_dir, model_dir)
            self._add_live(force=True)

    def _add_live(self, force: bool = False) -> None:
        batch = self.live.poll(force)
        if batch is None:
            return
        rows = max(self.pad_row + 1, int(batch.codes.max()) + 2)

        def grown(array: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full((rows,) + array.shape[1:], fill, dtype=array.dtype)
            out[: self.pad_row] = array[: self.pad_row]
            return out

        self.keys = grown(self.keys, -1)
        self.keys[batch.codes] = batch.keys
        self.cat = grown(self.cat, 0)
        self.cat[batch.codes] = batch.blocks["item_cat"]
        if self.lists is not None:
            self.lists = grown(self.lists, 0)
            self.lists[batch.codes] = batch.blocks["item_lists"]
        if self.cont is not None:
            self.cont = grown(self.cont, 0.0)
            self.cont[batch.codes] = batch.blocks["item_cont"]
        self.pad_row = rows - 1

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.live is not None:
            self._add_live()
        candidates = _require(inputs, "candidate_ids", np.int64, 2)
        rows = np.where((candidates >= 0) & (candidates < self.pad_row), candidates, self.pad_row)
        out = {"item_cat": self.cat[rows]}
        if self.lists is not None:
            out["item_lists"] = self.lists[rows]
        if self.cont is not None:
            out["item_cont"] = self.cont[rows]
        out["candidate_keys"] = self.keys[rows]
        return out


class Rank:
    """DLRM (ONNX; PyTorch on ``RECSTACK_TORCH_DEVICE`` when set) scores every candidate, fused with the
    retrieval score as chosen on validation.

    Inputs: the user blocks [B, *], the item blocks [B, K, *] and ``retrieval_scores`` float32
    [B, K]. The exported DLRM takes that shape as it is (the user's vectors, history pooling
    included, are computed once per user rather than once per candidate). Output: ``rank_scores`` float32 [B, K] = ``dlrm_weight * dlrm_logit +
    retrieval_weight * retrieval_score`` (weights from the DLRM folder's config.json, the same
    :func:`recstack.models.fusion.fuse_scores` that ``recstack evaluate`` uses).
    """

    def __init__(self, model_dir: str):
        from recstack.ensembles.torch_steps import TorchRanker, serving_torch_device
        from recstack.models.fusion import read_fusion

        model_dir = Path(model_dir)
        self.layout, _ = _model_layout(model_dir)
        self.fusion = read_fusion(model_dir)
        device = serving_torch_device()
        self.torch = TorchRanker(model_dir, device) if device else None
        self.session = None if self.torch else _onnx_session(model_dir / "dlrm.onnx")
        self.input_names = self.torch.input_names if self.torch else [i.name for i in self.session.get_inputs()]
        self.output_name = None if self.torch else self.session.get_outputs()[0].name

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from recstack.models.fusion import fuse_scores

        retrieval_scores = _require(inputs, "retrieval_scores", np.float32, 2)
        feeds = {}
        for name in self.input_names:
            dtype = np.float32 if name.endswith("_cont") or name == "item_cross" else np.int64
            feeds[name] = _require(inputs, name, dtype, 3 if name.startswith("item_") else 2)
        if self.torch:
            logits = self.torch(feeds)
        else:
            (logits,) = self.session.run([self.output_name], feeds)  # [B, K]: user blocks read once per user
        fused = fuse_scores(logits.astype(np.float32), retrieval_scores, self.fusion)
        return {"rank_scores": np.ascontiguousarray(fused, dtype=np.float32)}


class FilterTopN:
    """Drop padding and seen items, order by ranker score (popularity for cold users), keep the top N;
    give a share of the slots to new items (exploration).

    Inputs: ``candidate_keys`` int64 [B, K] (raw ids, -1 = none), ``candidate_ids`` int64
    [B, K] (encoded), ``rank_scores`` and ``retrieval_scores`` float32 [B, K], ``seen_items``
    int64 [B, S], ``user_known`` int32 [B, 1], ``top_n`` int32 [B, 1] (1..max_top_n), and
    ``store_unavailable`` int32 [B, 1] (optional: 1 when QueryUserFeatures could not reach the store).
    Outputs: ``item_ids`` int64 [B, N] (raw ids, -1 past the end), ``scores`` float32 [B, N]
    (NaN for an exploration slot: it was not ranked), ``cold_start`` int32 [B, 1] (1 when the
    user had no history, or the store was unreachable: popular items were served), ``explored``
    int32 [B, N] (1 for an exploration slot), ``store_fallback`` int32 [B, 1] (1 when the online
    store was unreachable: the list is the popularity fallback; ``store_unavailable``, 0 when absent).

    Exploration: with the live-item registry (``live_items``, ``workflow_dir``, ``model_dir``),
    items added in the last ``exploration_window_s`` seconds form a pool; each request gets
    ``exploration_share * top_n`` slots (the fraction rounded at random, so the share holds on
    average), filled with pool items the user has not seen and the list does not hold, drawn at
    random. They take the list's last slots, so the ranked head is never displaced; a list shorter
    than ``top_n`` is filled first.
    """

    def __init__(self, max_top_n: int = 100, exploration_share: float = 0.0,
                 exploration_window_s: float = 7 * 86400.0, workflow_dir: str | None = None,
                 model_dir: str | None = None, live_items: str | None = None, seed: int | None = None):
        self.max_top_n = int(max_top_n)
        if not 0.0 <= float(exploration_share) <= 1.0:
            raise InputError(f"exploration_share: must be between 0 and 1, got {exploration_share}")
        self.exploration_share = float(exploration_share)
        self.exploration_window_s = float(exploration_window_s)
        self.rng = np.random.default_rng(seed)
        self.live = None
        self.pool_codes = np.zeros(0, np.int64)
        self.pool_keys = np.zeros(0, np.int64)
        self.pool_added = np.zeros(0, np.float64)
        if live_items and self.exploration_share > 0:
            from recstack.ensembles.live import LiveItemFeed

            if workflow_dir is None or model_dir is None:
                raise InputError("live_items: needs workflow_dir and model_dir")
            self.live = LiveItemFeed(live_items, workflow_dir, model_dir)

    def _pool(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes, raw keys) of the items still inside the exploration window."""
        import time

        batch = self.live.poll()
        if batch is not None:
            self.pool_codes = np.concatenate([self.pool_codes, batch.codes])
            self.pool_keys = np.concatenate([self.pool_keys, batch.keys])
            self.pool_added = np.concatenate([self.pool_added, batch.added_at])
        fresh = self.pool_added >= time.time() - self.exploration_window_s
        return self.pool_codes[fresh], self.pool_keys[fresh]

    def _explore(self, item_ids: np.ndarray, scores: np.ndarray, seen: np.ndarray,
                 top_n: np.ndarray) -> np.ndarray:
        """Put exploration picks into ``item_ids`` / ``scores`` (in place); returns ``explored``."""
        explored = np.zeros(item_ids.shape, np.int32)
        codes, keys = self._pool()
        if not len(codes):
            return explored
        for row in range(len(item_ids)):
            want = self.exploration_share * int(top_n[row])
            slots = int(want) + int(self.rng.random() < want - int(want))
            if not slots:
                continue
            allowed = ~np.isin(codes, seen[row]) & ~np.isin(keys, item_ids[row])
            picks = keys[allowed]
            if not len(picks):
                continue
            picks = self.rng.choice(picks, size=min(slots, len(picks)), replace=False)
            filled = int((item_ids[row, : top_n[row]] >= 0).sum())
            start = min(filled, int(top_n[row]) - len(picks))
            at = np.arange(start, start + len(picks))
            item_ids[row, at], scores[row, at], explored[row, at] = picks, np.nan, 1
        return explored

    def _order(self, masked: np.ndarray, n: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Candidate indices [B, min(n, K)] of each list, best first (unusable ones are -inf in
        ``masked``); here the score order. :class:`recstack.ensembles.rerank.RerankTopN` re-ranks."""
        return np.argsort(-masked, axis=1, kind="stable")[:, :n]

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = _require(inputs, "candidate_keys", np.int64, 2)
        encoded = _require(inputs, "candidate_ids", np.int64, 2)
        rank_scores = _require(inputs, "rank_scores", np.float32, 2)
        retrieval_scores = _require(inputs, "retrieval_scores", np.float32, 2)
        seen = _require(inputs, "seen_items", np.int64, 2)
        known = _require(inputs, "user_known", np.int32, 2)[:, 0].astype(bool)
        top_n = _require(inputs, "top_n", np.int32, 2)[:, 0]
        if (top_n <= 0).any() or (top_n > self.max_top_n).any():
            bad = int(top_n[(top_n <= 0) | (top_n > self.max_top_n)][0])
            raise InputError(f"input 'top_n': must be between 1 and {self.max_top_n}, got {bad}")
        n = int(top_n.max())
        batch = len(keys)
        usable = (keys >= 0) & (encoded != PAD) & np.isfinite(retrieval_scores)
        usable &= ~_rows_isin(encoded, seen)
        score = np.where(known[:, None], rank_scores, retrieval_scores)
        masked = np.where(usable, score, -np.inf)
        order = self._order(masked, n, inputs)
        picked = np.take_along_axis(masked, order, axis=1)
        if picked.shape[1] < n:  # fewer candidates than asked for: pad to N
            pad = n - picked.shape[1]
            order = np.pad(order, ((0, 0), (0, pad)))
            picked = np.pad(picked, ((0, 0), (0, pad)), constant_values=-np.inf)
        keep = np.isfinite(picked) & (np.arange(n)[None, :] < top_n[:, None])
        item_ids = np.where(keep, np.take_along_axis(keys, order, axis=1), -1)
        scores = np.where(keep, picked, -np.inf).astype(np.float32)
        explored = (self._explore(item_ids, scores, seen, top_n) if self.live is not None
                    else np.zeros(item_ids.shape, np.int32))
        cold_start = (~known).astype(np.int32).reshape(batch, 1)
        fallback = (_require(inputs, "store_unavailable", np.int32, 2) if "store_unavailable" in inputs
                    else np.zeros((batch, 1), np.int32))
        return {"item_ids": item_ids, "scores": scores, "cold_start": cold_start, "explored": explored,
                "store_fallback": fallback}
