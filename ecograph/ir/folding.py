"""Constant folding's one home: whether a node can be computed now, and computing it.

`fold_node(node, inputs)` runs the node's reference kernel on arrays known before run time,
so a folded value is exactly what running the graph would produce. Its callers add their own
policy around it: the `fold-constants` pass folds nodes whose inputs are graph constants
(never graph outputs, with a byte cap); the TVM backend folds small all-known values while
lowering (shape math, axes, pads) and never folds weight (de)quantization, which would replace
compressed weights with float ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ecograph.ir.graph import Node
from ecograph.ir.interpreter import run_node
from ecograph.ir.registry import lookup_schema


def is_foldable_op(node: Node) -> bool:
    """True if the node's op has a reference kernel that is a function of its inputs: a
    registered schema that is not random (`OpSchema.random`)."""
    schema = lookup_schema(node.op_type, node.domain)
    return schema is not None and not schema.random


def fold_limit_reason(
    node: Node,
    inputs: Sequence[np.ndarray | None],
    *,
    max_elements: int | None = None,
    max_bytes: int | None = None,
) -> str | None:
    """Why computing `node` now from `inputs` would hold values larger than the limits, or
    None when it is within them (checked before computing).

    `max_elements`: no input, and no output whose type is static, may hold more elements.
    `max_bytes`: the outputs (by their declared types) may hold more bytes only when they are
    no larger than the inputs (folding must not grow the model).
    """
    if max_elements is not None:
        for a in inputs:
            if a is not None and a.size > max_elements:
                return f"an input of {a.size} elements exceeds max_elements={max_elements}"
        for out in node.outputs:
            t = out.type
            if t.is_static and math.prod(t.static_shape()) > max_elements:
                return f"output %{out.name} {t} exceeds max_elements={max_elements}"
    if max_bytes is not None:
        out_bytes = sum(o.type.nbytes() or 0 for o in node.outputs)
        in_bytes = sum(v.type.nbytes() or 0 for v in node.inputs if v is not None)
        if out_bytes > max_bytes and out_bytes > in_bytes:
            return (
                f"result {out_bytes} B exceeds max_bytes={max_bytes} and its inputs ({in_bytes} B)"
            )
    return None


def fold_node(
    node: Node,
    inputs: Sequence[np.ndarray | None],
    *,
    max_elements: int | None = None,
    max_bytes: int | None = None,
) -> list[np.ndarray] | None:
    """The node's outputs computed now by its reference kernel from `inputs` (one array per
    node input, None for an absent optional one), or None when it must not or cannot be
    folded: the op is unknown or random, a limit is exceeded (`fold_limit_reason`; outputs
    whose size the types leave open are checked after computing), or a result disagrees with
    the node's declared type (dtype, rank, static dims). A kernel error propagates (an
    `InterpreterError` naming the node); callers decide whether that is fatal.
    """
    if not is_foldable_op(node):
        return None
    if len(inputs) != len(node.inputs):
        raise ValueError(
            f"fold_node({node.name}): {len(inputs)} input arrays for {len(node.inputs)} inputs"
        )
    if fold_limit_reason(node, inputs, max_elements=max_elements, max_bytes=max_bytes):
        return None
    with np.errstate(all="ignore"):
        values = run_node(node, list(inputs))
    if max_elements is not None and any(a.size > max_elements for a in values):
        return None
    for out, arr in zip(node.outputs, values, strict=True):
        t = out.type
        if arr.dtype != t.dtype.numpy or arr.ndim != t.rank:
            return None
        if any(isinstance(d, int) and d != n for d, n in zip(t.shape, arr.shape, strict=True)):
            return None
    return values


__all__ = ["fold_limit_reason", "fold_node", "is_foldable_op"]
