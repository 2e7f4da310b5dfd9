"""Live items inside the serving steps: the registry's new rows, encoded and embedded with the
Workflow and item tower of the model version being served.

:class:`LiveItemFeed` polls :class:`recstack.features.LiveItems` (at most every
``poll_interval_s``; one indexed SQLite read) and returns only the rows added since its last
poll, so each step extends what it holds in memory (the FAISS index, the item-feature arrays, the
exploration pool) without a reload. See :mod:`recstack.features.live_items` for the code rule.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recstack.features.live_items import LiveItem, LiveItems, live_code
from recstack.ids import FIRST_CODE
from recstack.io import read_json
from recstack.models.layout import FeatureLayout

LIVE_POLL_S = 0.2
"""How often a step looks for new items: an added item is served within this (plus one request)."""


@dataclass
class LiveBatch:
    """Items added since the previous poll, ``n`` rows: ``codes`` int64 [n] (encoded ids, beyond
    the trained vocabulary), ``keys`` int64 [n] (raw ids), ``added_at`` float64 [n] (unix s),
    ``blocks``: the item blocks of the model layout (``item_cat`` int64 [n, Ci] whose id column is
    the out-of-vocabulary code, ``item_lists`` int64 [n, Li], ``item_cont`` float32 [n, Di])."""

    items: list[LiveItem]
    codes: np.ndarray
    keys: np.ndarray
    added_at: np.ndarray
    blocks: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.codes)


def model_layout(model_dir: Path | str) -> FeatureLayout:
    return FeatureLayout.from_dict(read_json(Path(model_dir) / "config.json")["layout"])


class LiveItemFeed:
    """New registry rows for one model version (``workflow_dir``, ``model_dir`` with its layout)."""

    def __init__(self, registry: Path | str, workflow_dir: Path | str, model_dir: Path | str,
                 poll_interval_s: float = LIVE_POLL_S):
        from recstack.workflows import Workflow

        self.registry = LiveItems(registry)
        self.workflow = Workflow.load(workflow_dir)
        self.layout = model_layout(model_dir)
        self.id_column = self.layout.item.id_column.name
        self.base = int(self.layout.item.id_column.cardinality)
        self.poll_interval_s = float(poll_interval_s)
        self.seq = 0
        self._next_poll = 0.0

    def poll(self, force: bool = False) -> LiveBatch | None:
        """The items added since the last poll (None when none, or when polled too recently)."""
        now = time.monotonic()
        if not force and now < self._next_poll:
            return None
        self._next_poll = now + self.poll_interval_s
        rows = self.registry.since(self.seq)
        if not rows:
            return None
        self.seq = rows[-1].seq
        try:
            return self.encode(rows)
        except Exception:  # noqa: BLE001  a row this version cannot encode must not fail the request
            logging.getLogger("recstack.live").exception("live items %d..%d skipped: cannot be encoded",
                                                         rows[0].seq, rows[-1].seq)
            return None

    def encode(self, rows: list[LiveItem]) -> LiveBatch | None:
        """Encode registry rows with this version's Workflow; rows whose raw id the Workflow
        already knows (trained since they were added) are left out."""
        frame = pd.DataFrame([{**r.features, self.id_column: r.item_id} for r in rows])
        encoded = self.workflow.transform(frame).reset_index(drop=True)
        fresh = encoded[self.id_column].to_numpy(np.int64) < FIRST_CODE
        if not fresh.any():
            return None
        kept = [r for r, f in zip(rows, fresh) if f]
        blocks = self.layout.tensors(encoded[fresh].reset_index(drop=True), sides=("item",))
        return LiveBatch(items=kept,
                         codes=np.array([live_code(r.seq, self.base) for r in kept], dtype=np.int64),
                         keys=np.array([r.item_id for r in kept], dtype=np.int64),
                         added_at=np.array([r.added_at for r in kept], dtype=np.float64),
                         blocks=blocks)


class ItemTower:
    """The two-tower model's item tower (``item_tower.onnx``): item blocks -> ``item_embedding``
    float32 [n, d], the same vectors the index was built from."""

    def __init__(self, model_dir: Path | str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(Path(model_dir) / "item_tower.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def embed(self, blocks: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(blocks[name], dtype=np.float32 if name.endswith("_cont") else np.int64)
                 for name in self.input_names}
        (embedding,) = self.session.run(["item_embedding"], feeds)
        return np.ascontiguousarray(embedding, dtype=np.float32)
