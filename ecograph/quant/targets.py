"""What the Quantize pass quantizes: its targets (a node with a float constant weight, and the
weight's axes), the exclusion patterns that keep nodes out, and how a target's activation is
found."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from ecograph.ir import Graph, Node, Value

QUANTIZABLE = ("MatMul", "Gemm", "Conv", "Linear")  # Linear: ecograph's fused MatMul+Add
DYNAMIC_OPS = ("MatMul", "Gemm", "Linear")
# Ops that only move or relabel an activation's elements (followed when tracing a value back).
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast"})


@dataclass
class Target:
    """A node to quantize: which input is the weight and along which axes."""

    node: Node
    weight_index: int
    channel_axis: int  # output channels of the weight
    reduce_axis: int  # the contraction axis (groups run along it)


def excluded(node: Node, patterns: Iterable[str]) -> bool:
    """Whether an exclusion pattern names `node`: its op type exactly, or its name by glob."""
    return any(node.op_type == p or fnmatch.fnmatchcase(node.name, p) for p in patterns)


def unmatched_exclusions(graph: Graph, patterns: Iterable[str]) -> list[str]:
    """Notes for the exclusion patterns that name no node of `graph` (a mistyped pattern, or
    a name the graph does not use: a torch capture names nodes by module and op,
    `model.layers.0.mlp.down_proj.mat_mul`, an ONNX export by its exporter's scheme)."""
    names = [n.name for n in graph.nodes]
    ops = {n.op_type for n in graph.nodes}
    matmuls = [n.name for n in graph.nodes if n.op_type in ("MatMul", "Gemm", "Linear")]
    sample = ", ".join(matmuls[:3]) + (", ..." if len(matmuls) > 3 else "")
    notes = []
    for p in patterns:
        if p in ops or p in names or fnmatch.filter(names, p):
            continue
        notes.append(
            f"exclude {p!r} matches no node's op type or name, so it excludes nothing "
            f"(matmul nodes here: {sample or 'none'})"
        )
    return notes


def find_targets(
    graph: Graph, exclude: Iterable[str] = (), ops: Iterable[str] = QUANTIZABLE
) -> tuple[list[Target], list[str]]:
    """Quantizable nodes (float weight constant) and notes on those skipped, with why."""
    patterns = list(exclude)
    targets: list[Target] = []
    notes: list[str] = []
    for node in graph.nodes:
        if node.op_type not in ops or node.domain not in ("", "ecograph"):
            continue
        if (node.domain == "ecograph") != (node.op_type == "Linear"):
            continue
        if excluded(node, patterns):
            notes.append(f"{node.name} ({node.op_type}): excluded")
            continue
        target = _target(node)
        if target is None:
            notes.append(f"{node.name} ({node.op_type}): no float constant weight")
            continue
        targets.append(target)
    return targets, notes


def left_out(graph: Graph, exclude: Iterable[str], ops: Iterable[str], why: str) -> list[str]:
    """One note for the nodes another mode would quantize (a float constant weight, not
    excluded) that `ops` leaves out, named (the first five) with their op types and `why`."""
    patterns, ops = list(exclude), set(ops)
    names = [
        f"{n.name} ({n.op_type})"
        for n in graph.nodes
        if n.op_type in QUANTIZABLE
        and n.op_type not in ops
        and n.domain == ""
        and not excluded(n, patterns)
        and _target(n) is not None
    ]
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [f"{len(names)} node(s) kept in float: {shown}; {why}"]


def _target(node: Node) -> Target | None:
    w = node.input(1)
    if w is None or not w.is_constant or not w.dtype.is_float:
        return None
    if node.op_type in ("MatMul", "Linear"):
        if w.type.rank != 2:
            return None
        return Target(node, 1, channel_axis=1, reduce_axis=0)
    if node.op_type == "Gemm":
        if node.attr("transA", 0):
            return None
        trans_b = bool(node.attr("transB", 0))
        return Target(node, 1, channel_axis=0 if trans_b else 1, reduce_axis=1 if trans_b else 0)
    if node.op_type == "Conv":
        return Target(node, 1, channel_axis=0, reduce_axis=1)
    return None


def activation(t: Target) -> Value:
    """The activation input of a target (input 0)."""
    x = t.node.input(0)
    assert x is not None
    return x
