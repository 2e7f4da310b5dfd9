"""The ``>>`` / ``+`` graph that chains workflow operators (NVTabular style).

Composition::

    user_cat = ["gender", "occupation"] >> Categorify() >> AddTags(Tags.USER)
    user_cont = ["age"] >> FillMissing() >> Normalize() >> AddTags(Tags.USER)
    workflow = Workflow(user_cat + user_cont + (["rating"] >> AddTags(Tags.TARGET)))

``x >> op`` is resolved by :meth:`Operator.__rrshift__ <recstack.workflows.operator.Operator>`
for every left-hand side (a column name, a list of names, a :class:`Node` or a
:class:`Group`), so this module does not depend on the operators. A group followed by an
op (``(a + b) >> Op()``) gives the op the members' outputs side by side (so a multi-column
op such as ``HashedCross`` or ``Groupby`` sees all of them).

Tag selectors: ``node.select_by_tag(Tags.CONTINUOUS) >> Normalize()`` keeps the node's output
columns that carry the tags (resolved in fit from the computed schema).

Per-entity statistics: ``(["age"] >> FillMissing() >> Normalize()).fit_per("user_id")`` fits
those ops on one row per user (the first), so side statistics are not weighted by activity.
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

    def fit_per(self, key: str) -> "Node":
        """Fit every op of this node and its ancestors on one row per ``key`` value."""
        node: Node | Group | None = self
        stack: list[Node | Group] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, Group):
                stack.extend(node.members)
            elif node.op is not None:
                node.op.fit_per = key
                assert node.parent is not None
                stack.append(node.parent)
        return self

    def __getitem__(self, columns: str | Sequence[str]) -> "Node":
        """Some output columns of this node by name: ``grouped[["item_id_list"]]``."""
        from recstack.workflows.ops.tags import SelectColumns

        return Node(parent=self, op=SelectColumns([columns] if isinstance(columns, str) else list(columns)))

    def select_by_tag(self, *tags: Any) -> "Node":
        """The output columns of this node that carry all ``tags`` (resolved in fit)."""
        from recstack.workflows.ops.tags import SelectByTag

        return Node(parent=self, op=SelectByTag(*tags))

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

    def fit_per(self, key: str) -> "Group":
        for m in self.members:
            m.fit_per(key)
        return self

    def select_by_tag(self, *tags: Any) -> "Node":
        from recstack.workflows.ops.tags import SelectByTag

        return Node(parent=self, op=SelectByTag(*tags))

    def __repr__(self) -> str:
        return " + ".join(f"({m!r})" for m in self.members)
