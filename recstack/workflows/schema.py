"""Column schema and tags: what a fitted Workflow produces, and how later stages find columns.

Models and feature views are built from tags (``Tags.USER_ID``, ``Tags.CATEGORICAL``, ...),
never from column names. A :class:`Schema` is an ordered collection of :class:`ColumnSchema`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Tags(str, Enum):
    """Semantic tags attached to output columns."""

    USER_ID = "user_id"
    ITEM_ID = "item_id"
    USER = "user"
    ITEM = "item"
    CATEGORICAL = "categorical"
    CONTINUOUS = "continuous"
    LIST = "list"
    TARGET = "target"

    def __str__(self) -> str:  # "user_id", not "Tags.USER_ID"
        return self.value


def as_tag(tag: "Tags | str") -> Tags:
    """A :class:`Tags` member from a member, its value ("user_id") or its name ("USER_ID")."""
    if isinstance(tag, Tags):
        return tag
    try:
        return Tags(str(tag).lower())
    except ValueError:
        try:
            return Tags[str(tag).upper()]
        except KeyError:
            raise ValueError(f"unknown tag {tag!r}; known: {[t.value for t in Tags]}") from None


@dataclass(frozen=True)
class ColumnSchema:
    """One column: name, dtype ("int64", "float32", "str", ...; for lists the element dtype),
    tags, cardinality (categoricals: vocabulary size + FIRST_CODE, the padding and OOV codes), list flag and longest list seen in fit."""

    name: str
    dtype: str
    tags: frozenset[Tags] = field(default_factory=frozenset)
    cardinality: int | None = None
    is_list: bool = False
    max_length: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", frozenset(as_tag(t) for t in self.tags))

    def with_tags(self, *tags: "Tags | str") -> "ColumnSchema":
        return dataclasses.replace(self, tags=self.tags | {as_tag(t) for t in tags})

    def replace(self, **changes: Any) -> "ColumnSchema":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "tags": sorted(t.value for t in self.tags),
            "cardinality": self.cardinality,
            "is_list": self.is_list,
            "max_length": self.max_length,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ColumnSchema":
        return cls(
            name=d["name"],
            dtype=d["dtype"],
            tags=frozenset(as_tag(t) for t in d.get("tags", [])),
            cardinality=d.get("cardinality"),
            is_list=bool(d.get("is_list", False)),
            max_length=d.get("max_length"),
        )


class Schema:
    """An ordered collection of :class:`ColumnSchema`, addressed by name."""

    def __init__(self, columns: Iterable[ColumnSchema] = ()) -> None:
        self._columns: dict[str, ColumnSchema] = {}
        for col in columns:
            if col.name in self._columns:
                raise ValueError(f"duplicate column {col.name!r} in schema")
            self._columns[col.name] = col

    @property
    def names(self) -> list[str]:
        return list(self._columns)

    @property
    def columns(self) -> list[ColumnSchema]:
        return list(self._columns.values())

    def select_by_tag(self, *tags: "Tags | str") -> "Schema":
        """Columns that carry *all* of ``tags``, in schema order."""
        wanted = {as_tag(t) for t in tags}
        return Schema(c for c in self._columns.values() if wanted <= c.tags)

    def select_by_name(self, *names: str) -> "Schema":
        return Schema(self._columns[n] for n in names)

    def __getitem__(self, name: str) -> ColumnSchema:
        try:
            return self._columns[name]
        except KeyError:
            raise KeyError(f"no column {name!r} in schema (columns: {self.names})") from None

    def __iter__(self) -> Iterator[ColumnSchema]:
        return iter(self._columns.values())

    def __len__(self) -> int:
        return len(self._columns)

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __add__(self, other: "Schema") -> "Schema":
        return Schema([*self, *other])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.columns == other.columns

    def __repr__(self) -> str:
        return f"Schema({self.columns!r})"

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [c.to_dict() for c in self._columns.values()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schema":
        return cls(ColumnSchema.from_dict(c) for c in d["columns"])
