"""Locating a numeric divergence: the first node whose value changed between two stages of a
graph, and the cone of values that reproduces it in a minimal before/after pair."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ecograph.ir.graph import Graph
from ecograph.ir.interpreter import interpret
from ecograph.passes.core import Tolerance
from ecograph.passes.sample import compare_arrays


def first_diverging_node(
    before: Graph,
    after: Graph,
    feeds: Mapping[str, np.ndarray],
    tolerance: Tolerance,
) -> tuple[str | None, str]:
    """Bisect to the first node of `after` (in order) whose output differs from the value of
    the same name in `before` (values that exist in both graphs are compared)."""
    try:
        a = interpret(before, dict(feeds), keep_all=True)
        b = interpret(after, dict(feeds), keep_all=True)
    except Exception as exc:
        return None, f"could not bisect: {exc}"
    for node in after.nodes:
        for out in node.outputs:
            if out.name in a and out.name in b:
                why = compare_arrays(a[out.name], b[out.name], tolerance)
                if why is not None:
                    return node.name, f"%{out.name}: {why}"
    # No value of the same name differs: blame the first new or edited node on the path to
    # a diverging output.
    ancestors: set[int] = set()
    stack = list(after.outputs)
    while stack:
        v = stack.pop()
        if v.producer is not None and id(v.producer) not in ancestors:
            ancestors.add(id(v.producer))
            stack.extend(x for x in v.producer.inputs if x is not None)
    old_nodes = {n.name: n for n in before.nodes}
    for node in after.nodes:
        if id(node) not in ancestors:
            continue
        old = old_nodes.get(node.name)
        if old is None:
            return node.name, f"new node {node.qualified_op}"
        if old.qualified_op != node.qualified_op or old.attrs != node.attrs:
            return node.name, f"edited node: was {old.qualified_op}, now {node.qualified_op}"
    return None, "no value shared by both graphs differs"


def extract_cone(graph: Graph, value_names: Iterable[str]) -> Graph:
    """A copy of `graph` that computes only `value_names` (their backward cone)."""
    g = graph.copy()
    g.set_outputs([g.value(n) for n in value_names])
    for node in reversed(list(g.nodes)):
        if not any(o.has_uses() for o in node.outputs):
            g.remove_node(node)
    for c in list(g.constants.values()):
        if not c.has_uses():
            g.remove_constant(c)
    return g
