"""Cold-item protocol: how well the two-tower retrieves items that first appear after its training window.

The run's models and workflow are fitted on the training split; an item whose first interaction
is in validation or test is outside the workflow's vocabulary, so it encodes to the
out-of-vocabulary id (:data:`recstack.ids.OOV`) and has no row in ``item_embeddings.npy``. Its
embedding is the item tower applied to its own side features (``items.parquet``: genres, year,
...) with the OOV id, what serving computes for a pushed new item. (Whether the OOV row of the
id table is trained, e.g. by id dropout, only changes how good that embedding is.)

For every row of the evaluated split whose target is such a cold item, the user embedding (the
row's user and history, as for the other rows) scores

* ``full``: the whole warm catalogue plus every cold item (seen warm items excluded), and
* ``cold_only``: the cold items alone (a "new arrivals" slot),

and the report gives Recall@10 / @50 (one target per row: = HR), NDCG@10 and MRR of each, with
the number of cold items and rows. Collaborative baselines have no signal for these items (zero
interactions in the fit window) and popularity ties them all at zero, which ranks a target below
every tie: they score 0 here by construction, so they are not listed. ``random_recall@50`` is
what a uniformly random order of the cold items gets (``min(50, n) / n``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from recstack.evaluation.metrics import ReportAccumulator
from recstack.ids import FIRST_CODE
from recstack.ranking import catalogue_mask, exclude_seen, row_batches

CUTOFFS = (50,)


def cold_item_rows(paths, data, split: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The ``split`` rows whose item is not in the training split: a frame (user_id, item_id raw, row =
    position in ``data.<split>``) and the distinct cold raw item ids (first-appearance order)."""
    train = pd.read_parquet(paths.data / "train.parquet", columns=["item_id"])
    raw = pd.read_parquet(paths.data / f"{split}.parquet", columns=["user_id", "item_id"])
    cold = raw[~raw["item_id"].isin(train["item_id"])].reset_index(drop=True)
    if cold.empty:
        return cold.assign(row=np.zeros(0, np.int64)), np.zeros(0, dtype=raw["item_id"].dtype)
    from recstack.models.data import load_workflow

    encoded = load_workflow(paths).transform(cold[["user_id", "item_id"]])
    users = encoded[data.layout.user.id_column.name].to_numpy(np.int64)
    rows_of = getattr(data, split)
    position = {int(u): r for r, u in enumerate(rows_of.users)}  # leave-one-out: one row per user
    cold["row"] = [position.get(int(u), -1) for u in users]
    cold = cold[cold["row"] >= 0].reset_index(drop=True)
    return cold, pd.unique(cold["item_id"])


def cold_item_embeddings(paths, data, two_tower, cold_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Item-tower embeddings [n, d] of the cold items that have a side-table row, and those ids [n]."""
    from recstack.models.data import load_workflow
    from recstack.models.export import compute_item_embeddings

    items = pd.read_parquet(paths.data / "items.parquet")
    items = items[items["item_id"].isin(cold_ids)].drop_duplicates("item_id").reset_index(drop=True)
    if items.empty:
        return np.zeros((0, 0), np.float32), items["item_id"].to_numpy()
    encoded = load_workflow(paths).transform(items)
    blocks = data.layout.tensors(encoded, sides=("item",))
    # compute_item_embeddings zeroes the pad / OOV rows of a table: put the cold items after them
    padded = {name: np.concatenate([np.zeros((FIRST_CODE,) + b.shape[1:], b.dtype), b]) for name, b in blocks.items()}
    return compute_item_embeddings(two_tower, padded)[FIRST_CODE:], items["item_id"].to_numpy()


def cold_item_report(paths, data, view, two_tower, item_emb: np.ndarray, split: str, k: int = 10,
                     batch_size: int = 512) -> dict[str, Any]:
    """The cold-item protocol's numbers for ``split`` (see the module doc); ``{"rows": 0}`` without cold items."""
    from recstack.models.predict import user_embeddings

    rows, cold_ids = cold_item_rows(paths, data, split)
    out: dict[str, Any] = {"rows": len(rows), "items": len(cold_ids),
                           "definition": "items absent from the training split, scored by the item tower "
                                         "from their side features with the out-of-vocabulary id"}
    if rows.empty:
        return out
    cold_emb, with_features = cold_item_embeddings(paths, data, two_tower, cold_ids)
    column = {item: i for i, item in enumerate(with_features)}
    rows = rows[rows["item_id"].isin(column)].reset_index(drop=True)
    out.update(rows=len(rows), items=len(with_features),
               random_recall_at_50=float(min(50, len(with_features)) / max(len(with_features), 1)))
    if rows.empty:
        return out
    n_items, n_cold = item_emb.shape[0], cold_emb.shape[0]
    catalogue = np.concatenate([catalogue_mask(n_items), np.ones(n_cold, dtype=bool)])
    full = ReportAccumulator(n_items + n_cold, k, catalogue, CUTOFFS)
    alone = ReportAccumulator(n_cold, k, np.ones(n_cold, dtype=bool), CUTOFFS)
    row_ids = rows["row"].to_numpy(np.int64)
    targets = np.array([column[i] for i in rows["item_id"]], np.int64)
    for batch in row_batches(len(rows), batch_size):
        r = row_ids[batch]
        u = user_embeddings(two_tower, data, view.users[r], view.history[r], view.history_times[r]).astype(np.float64)
        warm = exclude_seen(u @ item_emb.T.astype(np.float64), view.users[r], view.seen)
        cold = u @ cold_emb.T.astype(np.float64)
        full.add(np.concatenate([warm, cold], axis=1), n_items + targets[batch])
        alone.add(cold, targets[batch])
    keys = (f"recall@{k}", f"ndcg@{k}", "recall@50", "mrr")
    out["two_tower"] = {"full": {key: full.result()[key] for key in keys},
                        "cold_only": {key: alone.result()[key] for key in keys}}
    return out
