"""Schema-only operators: change a column's tags, never its values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from recstack.workflows.operator import Operator, register_op
from recstack.workflows.schema import ColumnSchema, Tags, as_tag


@register_op
class AddTags(Operator):
    """Schema-only: add tags to the columns (values pass through unchanged)."""

    schema_only = True

    def __init__(self, *tags: Tags | str, tags_list: Sequence[str] | None = None) -> None:
        super().__init__()
        self.tags = tuple(as_tag(t) for t in (*tags, *(tags_list or ())))

    def fit(self, df: pd.DataFrame) -> None:
        return None

    def get_config(self) -> dict[str, Any]:
        return {"tags_list": [t.value for t in self.tags]}

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.with_tags(*self.tags)

    def __repr__(self) -> str:
        return f"AddTags({', '.join(t.name for t in self.tags)})"
