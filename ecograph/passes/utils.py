"""Small graph-edit helpers every pass needs: replace a value keeping graph-output names,
remove what became dead, read constant scalars."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ecograph.ir.graph import Graph, Node, Value


def can_replace(old: Value, new: Value) -> bool:
    """True if `replace_value(old, new)` can keep the graph's interface intact.

    A graph output keeps its name: the replacement takes it over by renaming, which needs
    `new` to be a node output that is not already a graph input, output or constant.
    """
    if old is new:
        return False
    if not old.is_graph_output:
        return True
    return new.producer is not None and not new.is_graph_output and new.dtype == old.dtype


def replace_value(graph: Graph, old: Value, new: Value) -> bool:
    """Point every use of `old` at `new`; a graph output `old` hands its name to `new`.

    The producer of `old` is removed when it becomes dead. Returns False (and changes
    nothing) when `can_replace` says no.
    """
    if not can_replace(old, new):
        return False
    was_output = old.is_graph_output
    old_name = old.name
    graph.replace_all_uses_with(old, new)
    producer = old.producer
    if producer is not None and not any(o.has_uses() for o in producer.outputs):
        graph.remove_node(producer)
    if was_output and not graph.has_value(old_name):
        graph.rename_value(new, old_name)
    return True


def remove_dead(graph: Graph, nodes: Iterable[Node]) -> int:
    """Remove those of `nodes` (and, transitively, their producers among `nodes`) whose
    outputs have no uses. Returns how many were removed."""
    pending = [n for n in nodes if not n.is_removed]
    removed = 0
    progress = True
    while progress:
        progress = False
        for n in pending:
            if n.is_removed or n.graph is not graph:
                continue
            if not any(o.has_uses() for o in n.outputs):
                graph.remove_node(n)
                removed += 1
                progress = True
    return removed


def const_array(value: Value | None) -> np.ndarray | None:
    """The array of a constant value, else None."""
    if value is None or value.const_value is None:
        return None
    return np.asarray(value.const_value)


def scalar_of(value: Value | None) -> float | None:
    """The single element of a constant whose elements are all equal (any shape), else None."""
    arr = const_array(value)
    if arr is None or arr.size == 0 or arr.dtype == object:
        return None
    flat = arr.reshape(-1)
    first = flat[0]
    if not np.all((flat == first) | (np.isnan(flat) & np.isnan(first))):
        return None
    return float(first)


def is_const_all(value: Value | None, target: float, rel: float = 0.0) -> bool:
    """True if `value` is a constant whose every element equals `target` (within `rel`)."""
    s = scalar_of(value)
    if s is None:
        return False
    if rel == 0.0:
        return s == target
    return abs(s - target) <= rel * abs(target)
