"""The time-based leave-last-out split of shared/DATA.md."""

from __future__ import annotations

import numpy as np
import pandas as pd

MIN_INTERACTIONS = 3


def split_by_time(
    interactions: pd.DataFrame, min_interactions: int = MIN_INTERACTIONS
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split interactions into ``(train, valid, test)`` by time, per user.

    ``interactions`` needs ``user_id``, ``item_id`` and ``timestamp`` (unix seconds); its
    row order is the file order. The protocol (shared/DATA.md):

    1. order rows by ``timestamp``, ties by file order (a stable sort);
    2. keep only the first occurrence of each (user_id, item_id) pair in that order;
    3. keep users with at least ``min_interactions`` (default 3) remaining interactions;
    4. per user, the last interaction is test, the second-last validation, the rest train.

    Every output keeps all input columns and dtypes, rows in file order, index reset.
    ``test`` and ``valid`` hold exactly one row per kept user.
    """
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in interactions]
    if missing:
        raise KeyError(f"split_by_time: interactions lack column(s) {missing}")
    frame = interactions.reset_index(drop=True)
    order = np.lexsort((np.arange(len(frame)), frame["timestamp"].to_numpy()))
    chrono = frame.iloc[order]
    chrono = chrono[~chrono.duplicated(["user_id", "item_id"], keep="first")]
    sizes = chrono.groupby("user_id", sort=False)["user_id"].transform("size")
    chrono = chrono[sizes.to_numpy() >= min_interactions]
    # Position from the end within each user, in time order (0 = last).
    from_end = chrono.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    positions = chrono.index.to_numpy()

    def rows(mask: np.ndarray) -> pd.DataFrame:
        return frame.iloc[np.sort(positions[mask])].reset_index(drop=True)

    return rows(from_end >= 2), rows(from_end == 1), rows(from_end == 0)
