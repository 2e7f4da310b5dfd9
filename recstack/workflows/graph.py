"""The ``>>`` / ``+`` graph that chains workflow operators (NVTabular style).

Composition::

    user_cat = ["gender", "occupation"] >> Categorify() >> AddTags(Tags.USER)
    user_cont = ["age"] >> FillMissing() >> Normalize() >> AddTags(Tags.USER)
    workflow = Workflow(user_cat + user_cont + (["rating"] >> AddTags(Tags.TARGET)))

``x >> op`` is resolved by :meth:`Operator.__rrshift__ <recstack.workflows.operator.Operator>`
for every left-hand side (a column name, a list of names, a :class:`Node` or a
:class:`Group`), so this module does not depend on the operators. A group followed by an
op (``(a + b) >> Op()``) applies the op to every member's columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recstack.workflows.operator import Operator

#: One chain of the graph: (input columns, ops applied to them in order).
Chain = tuple[tuple[str, ...], tuple["Operator", ...]]


class _Composable:
    """``+`` joins outputs side by side (shared by Node and Group)."""

    def __add__(self, other: Any) -> "Group":
        return Group([self, Node.of(other)])

    def __radd__(self, other: Any) -> "Group":
        return Group([Node.of(other), self])


class Node(_Composable):
    """A column selection, or an operator applied to a parent node / group."""

    def __init__(self, columns: Sequence[str] | None = None, parent: "Node | Group | None" = None,
                 op: "Operator | None" = None) -> None:
        if (columns is None) == (parent is None):
            raise ValueError("a Node has either columns or a parent")
        self.columns = list(columns) if columns is not None else None
        self.parent = parent
        self.op = op

    @staticmethod
    def of(value: Any) -> "Node | Group":
        """A node / group as is; a column name or a list of names as a selection; a list
        mixing nodes and selections as a group."""
        if isinstance(value, (Node, Group)):
            return value
        if isinstance(value, str):
            return Node([value])
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            if not value:
                raise ValueError("empty column selection")
            return Node(list(value))
        if isinstance(value, (list, tuple)):
            return Group([Node.of(v) for v in value])
        raise TypeError(f"cannot select columns from {value!r}")

    def chains(self) -> list[Chain]:
        """Flatten to (input columns, ops in order) chains."""
        if self.columns is not None:
            return [(tuple(self.columns), ())]
        assert self.parent is not None and self.op is not None
        return [(cols, ops + (self.op,)) for cols, ops in self.parent.chains()]

    def __repr__(self) -> str:
        if self.columns is not None:
            return f"{self.columns!r}"
        return f"{self.parent!r} >> {self.op!r}"


class Group(_Composable):
    """Nodes joined with ``+``: their outputs side by side."""

    def __init__(self, members: Iterable["Node | Group"]) -> None:
        self.members: list[Node] = []
        for m in members:
            self.members.extend(m.members if isinstance(m, Group) else [m])

    def chains(self) -> list[Chain]:
        return [chain for m in self.members for chain in m.chains()]

    def __repr__(self) -> str:
        return " + ".join(f"({m!r})" for m in self.members)
