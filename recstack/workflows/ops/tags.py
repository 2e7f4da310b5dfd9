"""Schema operators: add tags to columns (AddTags), or keep the columns that carry tags
(SelectByTag, what ``node.select_by_tag(...)`` builds). Values pass through unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from recstack.workflows.operator import Context, Operator, register_op
from recstack.workflows.schema import ColumnSchema, Schema, Tags, as_tag


@register_op
class AddTags(Operator):
    """Schema-only: add tags to the columns. Example: ["rating"] >> AddTags(Tags.TARGET)."""

    schema_only = True

    def __init__(self, *tags: Tags | str, tags_list: Sequence[str] | None = None) -> None:
        super().__init__()
        self.tags = tuple(as_tag(t) for t in (*tags, *(tags_list or ())))

    def get_config(self) -> dict[str, Any]:
        return {"tags_list": [t.value for t in self.tags]}

    def compute_column_schema(self, column: ColumnSchema) -> ColumnSchema:
        return column.with_tags(*self.tags)

    def __repr__(self) -> str:
        return f"AddTags({', '.join(t.name for t in self.tags)})"


@register_op
class SelectByTag(Operator):
    """Keep the input columns that carry all ``tags`` (decided from the schema in fit).

    Example: (user_cont + item_cont).select_by_tag(Tags.CONTINUOUS) >> Normalize().
    """

    def __init__(self, *tags: Tags | str, tags_list: Sequence[str] | None = None) -> None:
        super().__init__()
        self.tags = tuple(as_tag(t) for t in (*tags, *(tags_list or ())))

    def get_config(self) -> dict[str, Any]:
        return {"tags_list": [t.value for t in self.tags]}

    def output_column_names(self, columns: Sequence[str]) -> list[str]:
        chosen = self.stats.get("columns")
        return list(columns) if chosen is None else [c for c in columns if c in chosen]

    def column_dependencies(self, columns: Sequence[str]) -> dict[str, list[str]]:
        return {c: [c] for c in self.output_column_names(columns)}

    def compute_output_schema(self, schema: Schema) -> Schema:
        chosen = schema.select_by_tag(*self.tags)
        self.stats["columns"] = chosen.names
        return chosen

    def transform(self, df: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        return df[self.output_column_names(list(df.columns))]

    def transform_row(self, values: dict[str, Any], ctx: Context) -> dict[str, Any]:
        keep = set(self.output_column_names(list(values)))
        return {c: v for c, v in values.items() if c in keep}


@register_op
class SelectColumns(Operator):
    """Keep the named input columns (what ``node[["a", "b"]]`` builds).

    Example: grouped[["item_id_list"]] >> ListSlice(-20).
    """

    def __init__(self, columns: Sequence[str] = ()) -> None:
        super().__init__()
        self.columns = list(columns)

    def get_config(self) -> dict[str, Any]:
        return {"columns": self.columns}

    def output_column_names(self, columns: Sequence[str]) -> list[str]:
        return [c for c in self.columns if c in columns]

    def column_dependencies(self, columns: Sequence[str]) -> dict[str, list[str]]:
        return {c: [c] for c in self.output_column_names(columns)}

    def compute_output_schema(self, schema: Schema) -> Schema:
        missing = [c for c in self.columns if c not in schema]
        if missing:
            raise ValueError(f"SelectColumns: no column {missing[0]!r} among {schema.names}")
        return schema.select_by_name(*self.columns)

    def transform(self, df: pd.DataFrame, ctx: Context) -> pd.DataFrame:
        return df[self.output_column_names(list(df.columns))]

    def transform_row(self, values: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {c: values[c] for c in self.columns if c in values}
