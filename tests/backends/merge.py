"""Many small test graphs as one graph: one TVM build checks them all.

Compiling each one-op case alone costs ~0.3 s of TVM's fixed overhead; merged, the ~240 static
cases build in ~10 s, which makes compiling all of them for several CPU models affordable in CI.
Every case keeps its own kernels (cases share no values), so a miscompile in one is still a
wrong output of that case, reported under its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ecograph.ir import Graph, TensorType


@dataclass
class Merged:
    """A merged graph, its feeds, and for each of its outputs the case and output it came from."""

    graph: Graph
    feeds: dict[str, np.ndarray]
    origin: list[tuple[str, int]] = field(default_factory=list)  # (case id, output index)


def merge_graphs(cases: list[tuple[str, Graph, dict[str, np.ndarray]]], name: str) -> Merged:
    """One graph holding every `(case id, graph, feeds)`; names are prefixed per case.

    Every symbol is renamed per case (two cases may bind "s" to different sizes, and the fresh
    symbols of data-dependent shapes would collide); declared types are copied, not inferred
    again, so a case keeps the types its builder declared."""
    merged = Graph(name)
    feeds: dict[str, np.ndarray] = {}
    origin: list[tuple[str, int]] = []
    for k, (cid, graph, case_feeds) in enumerate(cases):
        values: dict[int, object] = {}
        for v in graph.inputs:
            nv = merged.add_input(f"k{k}_{v.name}", v.dtype, _renamed(v.type, f"k{k}_").shape)
            values[id(v)] = nv
            feeds[nv.name] = case_feeds[v.name]
        for c in graph.constants.values():
            values[id(c)] = merged.add_constant(c.const_value, f"k{k}_{c.name}")
        for node in graph.nodes:
            copy = merged.add_node(
                node.op_type,
                [None if v is None else values[id(v)] for v in node.inputs],  # type: ignore[misc]
                dict(node.attrs),
                domain=node.domain,
                output_types=[_renamed(o.type, f"k{k}_") for o in node.outputs],
                name=f"k{k}_{node.name}",
            )
            for old, new in zip(node.outputs, copy.outputs, strict=True):
                values[id(old)] = new
        for i, out in enumerate(graph.outputs):
            merged.add_output(values[id(out)])  # type: ignore[arg-type]
            origin.append((cid, i))
    return Merged(merged, feeds, origin)


_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _renamed(t: TensorType, prefix: str) -> TensorType:
    """`t` with every symbol in its dims prefixed (dims are canonical expression strings)."""
    dims = [
        d if isinstance(d, int) else _SYMBOL.sub(lambda m: prefix + m.group(0), d) for d in t.shape
    ]
    return TensorType(t.dtype, dims)
