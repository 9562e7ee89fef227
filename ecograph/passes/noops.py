"""eliminate-no-ops: remove nodes that compute their input unchanged, shorten op chains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value
from ecograph.passes.core import Pass, PassResult
from ecograph.passes.registry import register_pass
from ecograph.passes.utils import const_array, replace_value

# Ops that only reinterpret the shape of their first input (row-major order unchanged).
_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
# Ops that are the identity when their output type equals their input type.
_SAME_TYPE_IDENTITY = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand"})

# Exact integer range of each float type's significand.
_FLOAT_INT_BITS = {DType.FLOAT16: 11, DType.BFLOAT16: 8, DType.FLOAT32: 24, DType.FLOAT64: 53}
_FLOAT_ORDER = {
    DType.FLOAT16: {DType.FLOAT16, DType.FLOAT32, DType.FLOAT64},
    DType.BFLOAT16: {DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64},
    DType.FLOAT32: {DType.FLOAT32, DType.FLOAT64},
    DType.FLOAT64: {DType.FLOAT64},
}


def _int_range(dtype: DType) -> tuple[int, int]:
    bits = dtype.bitwidth
    if dtype.is_signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def cast_is_lossless(src: DType, dst: DType) -> bool:
    """True if every value of `src` is exactly representable in `dst`."""
    if src == dst:
        return True
    if DType.STRING in (src, dst) or dst == DType.BOOL:
        return False
    if src == DType.BOOL:
        return True
    if src.is_float:
        return dst.is_float and dst in _FLOAT_ORDER[src]
    lo, hi = _int_range(src)
    if dst.is_float:
        bits = max(abs(lo), hi).bit_length()
        return bits <= _FLOAT_INT_BITS[dst]
    dlo, dhi = _int_range(dst)
    return dlo <= lo and hi <= dhi


def _is_identity_perm(perm: list[int]) -> bool:
    return list(perm) == list(range(len(perm)))


def _perm(node: Node, rank: int) -> list[int]:
    perm = node.attr("perm")
    return list(perm) if perm is not None else list(range(rank))[::-1]


def _neutral(node: Node) -> Value | None:
    """x for Mul(x, 1), Div(x, 1), Sub(x, +0), Add(x, -0.0) (and Add(x, 0) for integers).

    Float x + (+0.0) is not the identity: -0.0 + 0.0 is +0.0. x * 1, x / 1 and x - (+0.0)
    are exact for every float including NaN, infinities and -0.0.
    """
    a, b = node.input(0), node.input(1)
    if a is None or b is None:
        return None
    out = node.outputs[0]
    candidates = [(a, b), (b, a)] if node.op_type in ("Mul", "Add") else [(a, b)]
    for x, c in candidates:
        arr = const_array(c)
        if arr is None or arr.size == 0 or x.type != out.type or arr.dtype == object:
            continue
        if node.op_type in ("Mul", "Div") and bool(np.all(arr == 1)):
            return x
        if node.op_type in ("Add", "Sub") and bool(np.all(arr == 0)):
            if not x.dtype.is_float:
                return x
            signs = np.signbit(arr)
            if node.op_type == "Add" and bool(np.all(signs)):
                return x
            if node.op_type == "Sub" and not bool(np.any(signs)):
                return x
    return None


@register_pass
@dataclass
class EliminateNoOps(Pass):
    """Identity(x) -> x; Dropout(x) -> x; x*1 -> x; Transpose(Transpose(x)) -> x; ...

    Also: x/1, x-(+0), x+(-0.0) (x+0 only for integers), Reshape-like ops whose output type
    is their input type, Reshape of a Reshape, Transpose chains (composed or removed),
    Cast to the same type, Cast chains whose first cast is lossless, Expand to the same
    shape, single-input Concat, whole-tensor Slice, Tile by ones, Pad by zeros.
    """

    name: ClassVar[str] = "eliminate-no-ops"

    def run(self, graph: Graph) -> PassResult:
        removed = shortened = 0
        notes: list[str] = []
        for node in graph.nodes:
            if node.is_removed or node.domain != "":
                continue
            replacement = self._identity_of(node)
            if replacement is not None:
                if replace_value(graph, node.outputs[0], replacement):
                    if not node.is_removed and not any(o.has_uses() for o in node.outputs):
                        graph.remove_node(node)
                    removed += 1
                else:
                    notes.append(
                        f"kept {node.name} ({node.op_type}): its output %{node.outputs[0].name} "
                        f"is a graph output that %{replacement.name} cannot take over"
                    )
                continue
            if self._shorten(graph, node):
                shortened += 1
                again = self._identity_of(node)
                if again is not None and replace_value(graph, node.outputs[0], again):
                    removed += 1
        stats = {k: v for k, v in (("removed", removed), ("shortened", shortened)) if v}
        return PassResult(bool(removed or shortened), stats, notes)

    # ------------------------------------------------------------------ identities

    def _identity_of(self, node: Node) -> Value | None:
        op = node.op_type
        x = node.input(0)
        if x is None or not node.outputs:
            return None
        out = node.outputs[0]
        if op == "Identity":
            return x
        if op == "Dropout":
            training = const_array(node.input(2))
            if node.input(2) is not None and (training is None or bool(np.any(training))):
                return None
            if len(node.outputs) > 1 and node.outputs[1].has_uses():
                return None
            return x
        if op in ("Mul", "Div", "Add", "Sub"):
            return _neutral(node)
        if op in _SAME_TYPE_IDENTITY and x.type == out.type:
            return x
        if op == "Transpose" and _is_identity_perm(_perm(node, x.type.rank)):
            return x
        if op == "Cast" and x.dtype == out.dtype:
            return x
        if op == "Concat" and len(node.inputs) == 1:
            return x
        if op == "Slice" and x.type == out.type and self._whole_slice(node):
            return x
        if op == "Pad" and x.type == out.type:
            pads = const_array(node.input(1))
            if pads is not None and not bool(np.any(pads)):
                return x
        if op == "Tile" and x.type == out.type:
            reps = const_array(node.input(1))
            if reps is not None and bool(np.all(reps == 1)):
                return x
        return None

    @staticmethod
    def _whole_slice(node: Node) -> bool:
        starts = const_array(node.input(1))
        steps = const_array(node.input(4))
        if starts is None or bool(np.any(starts != 0)):
            return False
        return node.input(4) is None or (steps is not None and bool(np.all(steps == 1)))

    # -------------------------------------------------------------------- chains

    def _shorten(self, graph: Graph, node: Node) -> bool:
        x = node.input(0)
        if x is None or x.producer is None:
            return False
        inner = x.producer
        op = node.op_type
        if op == "Reshape" and inner.op_type in _RESHAPES and inner.domain == "":
            target = const_array(node.input(1))
            if target is None or (0 in target.tolist() and not node.attr("allowzero", 0)):
                return False
            source = inner.input(0)
            assert source is not None
            return self._rewire(graph, node, source, inner)
        if op == "Transpose" and inner.op_type == "Transpose" and inner.domain == "":
            source = inner.input(0)
            assert source is not None
            rank = source.type.rank
            p1, p2 = _perm(inner, rank), _perm(node, rank)
            composed = [p1[i] for i in p2]
            node.attrs["perm"] = composed
            return self._rewire(graph, node, source, inner)
        if op == "Cast" and inner.op_type == "Cast" and inner.domain == "":
            source = inner.input(0)
            assert source is not None
            if not cast_is_lossless(source.dtype, inner.outputs[0].dtype):
                return False
            return self._rewire(graph, node, source, inner)
        return False

    @staticmethod
    def _rewire(graph: Graph, node: Node, source: Value, inner: Node) -> bool:
        graph.set_node_input(node, 0, source)
        if not any(o.has_uses() for o in inner.outputs):
            graph.remove_node(inner)
        return True
