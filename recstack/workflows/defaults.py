"""The default Workflow, derived from the data stage's user and item side tables by dtype."""

from __future__ import annotations

import logging
import warnings

import pandas as pd

from recstack.workflows.graph import Group, Node
from recstack.workflows.ops import AddTags, Categorify, FillMissing, Normalize
from recstack.workflows.schema import Tags
from recstack.workflows.values import is_list_series
from recstack.workflows.workflow import Workflow

log = logging.getLogger("recstack.workflows")

#: A text column is skipped when its distinct values exceed this share of rows ...
NEAR_UNIQUE_SHARE = 0.30
#: ... or this count (zip codes, titles, original string ids).
NEAR_UNIQUE_MAX = 5_000
#: ... but a column with at most this many distinct values is always kept (tiny tables).
NEAR_UNIQUE_FLOOR = 20
TARGET_COLUMN = "rating"


def _looks_like_dates(series: pd.Series, sample: int = 1000) -> bool:
    """Text whose distinct values mostly parse as dates (ML-100K's release_date): left for a
    DateTime op rather than encoded as categories."""
    values = pd.Series(series.dropna().unique()[:sample], dtype=object)
    values = values[values.map(lambda v: isinstance(v, str) and not v.strip().isdigit())]
    if values.empty:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(values, errors="coerce", format="mixed")
    return bool(parsed.notna().mean() >= 0.9)


def _side_nodes(table: pd.DataFrame, id_column: str, side: Tags, id_tag: Tags,
                taken: frozenset[str] = frozenset()) -> list[Node]:
    if id_column not in table.columns:
        raise ValueError(f"side table has no {id_column!r} column")
    ids = [id_column] >> Categorify() >> AddTags(id_tag, side, Tags.CATEGORICAL)
    cats: list[str] = []
    lists: list[str] = []
    conts: list[str] = []
    n_rows = max(len(table), 1)
    for col in table.columns:
        if col == id_column or col == TARGET_COLUMN:
            continue
        if col in taken:
            log.info("default workflow: skipping %s column %r: name already used by the other side", side.value, col)
            continue
        s = table[col]
        if is_list_series(s):
            lists.append(col)
        elif pd.api.types.is_bool_dtype(s):
            cats.append(col)
        elif pd.api.types.is_numeric_dtype(s):
            conts.append(col)
        elif s.dtype == object or isinstance(s.dtype, (pd.StringDtype, pd.CategoricalDtype)):
            n_unique = int(s.nunique(dropna=True))
            if n_unique > NEAR_UNIQUE_FLOOR and (n_unique > NEAR_UNIQUE_SHARE * n_rows
                                                 or n_unique > NEAR_UNIQUE_MAX):
                log.info("default workflow: skipping %s column %r: %d distinct values in %d rows (near-unique)",
                         side.value, col, n_unique, len(table))
                continue
            if _looks_like_dates(s):
                log.info("default workflow: skipping %s column %r: date text (no DateTime op in the default "
                         "workflow)", side.value, col)
                continue
            cats.append(col)
        else:
            log.info("default workflow: skipping %s column %r of dtype %s", side.value, col, s.dtype)
    nodes: list[Node] = [ids]
    # side statistics per entity (one row per user / item), not weighted by interaction count
    if cats:
        nodes.append((cats >> Categorify() >> AddTags(side, Tags.CATEGORICAL)).fit_per(id_column))
    if lists:
        nodes.append((lists >> Categorify() >> AddTags(side, Tags.CATEGORICAL, Tags.LIST)).fit_per(id_column))
    if conts:
        nodes.append((conts >> FillMissing() >> Normalize() >> AddTags(side, Tags.CONTINUOUS)).fit_per(id_column))
    return nodes


def default_workflow(users: pd.DataFrame, items: pd.DataFrame) -> Workflow:
    """Workflow for the data stage's ``users`` / ``items`` tables (plus ``rating`` as target).

    * ``user_id`` / ``item_id``: Categorify, tags USER_ID|ITEM_ID + USER|ITEM + CATEGORICAL;
    * text columns: Categorify + USER|ITEM + CATEGORICAL, except near-unique ones (distinct
      values > 30% of rows or > 5,000, and more than 20: zip codes, titles), skipped with a
      log line; date-like text (release_date) is skipped too;
    * numeric columns: FillMissing (median) >> Normalize, + CONTINUOUS;
    * list columns: Categorify element-wise, + LIST + CATEGORICAL;
    * ``rating``: passed through, tagged TARGET.

    Ids are fitted on the training interactions (vocabulary by training frequency); side
    columns are fitted per entity (``fit_per``: one row per user / item that appears in train),
    so a very active user does not weigh more in the gender vocabulary or the age mean.

    Output order per side: id, categoricals, lists, continuous. For MovieLens:
    user_id, gender, occupation, age, item_id, genres, year, rating.
    """
    nodes = _side_nodes(users, "user_id", Tags.USER, Tags.USER_ID)
    nodes += _side_nodes(items, "item_id", Tags.ITEM, Tags.ITEM_ID, taken=frozenset(users.columns))
    nodes.append([TARGET_COLUMN] >> AddTags(Tags.TARGET))
    return Workflow(Group(nodes))
