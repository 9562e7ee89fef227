"""Dependency groups: the dims of a graph that must shrink together.

Every op contributes *ties* between the axes of its inputs and outputs (an elementwise op ties
each axis of an input to the output's, a MatMul ties A's last axis to B's rows and B's columns
to Y's last axis, a Reshape that splits hidden into [heads, head_dim] ties hidden to heads, a
Split or Concat ties a segment of one axis to another axis, ...). The connected components of
these ties are the groups; a component is reported when it holds a weight of a contraction
(MatMul, Gemm, ecograph::Linear, Conv). A group's `size` is the number of units that can be
removed independently (gcd of the extents of its members); each member removes `block`
contiguous elements per unit (a head removes head_dim columns of the Q projection).

A constant is tied per use (the node and input index), so a constant shared by two nodes is
rewritten per use and never frozen. A value that is a graph input or output, an op without a
rule, an axis a Softmax or norm reduces over, a Reshape whose target entry is computed at run
time, an axis a Reshape folds under another: these freeze the group, with the reason in
`Group.frozen`. Dims may be symbolic (dynamic batch and sequence); weight dims are static.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ecograph.errors import PassError
from ecograph.ir import symbolic
from ecograph.ir.graph import Graph, Node, Value

GroupKind = Literal["channels", "heads", "ffn", "layer", "residual"]

# A reference to a tensor whose axes can be tied: a value (graph input or node output) or one
# use of a constant (the consumer node and the input index).
Ref = Value | tuple[Node, int]
Slot = tuple[Ref, int]  # (ref, axis)


class PruningError(PassError):
    """A pruning analysis or rewrite that cannot go ahead; the message names the node."""


# Ops whose output is the broadcast of their inputs, each input axis aligned from the right.
_BROADCAST = """Abs Acos Acosh Add And Asin Asinh Atan Atanh BitwiseAnd BitwiseNot BitwiseOr Cast
Ceil Celu Clip Cos Cosh Div Dropout Elu Equal Erf Exp Floor Gelu Greater GreaterOrEqual HardSigmoid
HardSwish Identity IsInf IsNaN LeakyRelu Less LessOrEqual Log Max Mean Min Mish Mod Mul Neg Not Or
Pow PRelu Reciprocal Relu Round Selu Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Sub Sum Tan Tanh
ThresholdedRelu Where Xor SiLU SwiGLU"""
BROADCAST_OPS = frozenset(_BROADCAST.split())
CONTRACTIONS = frozenset({"MatMul", "Gemm", "Linear", "Conv"})
SHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_REDUCE = """ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceSumSquare"""
REDUCE_OPS = frozenset(_REDUCE.split())
POOL_OPS = frozenset(
    {"GlobalAveragePool", "GlobalMaxPool", "MaxPool", "AveragePool", "LpPool", "GlobalLpPool"}
)


def _is_weight_use(node: Node, index: int | None) -> bool:
    """Input `index` of `node` is a contraction operand (not a bias)."""
    return node.op_type in CONTRACTIONS and index in (0, 1)


@dataclass(frozen=True)
class Member:
    """One tensor axis (or a segment [start, stop) of it) that a group shrinks.

    `value` is the tensor; for a constant, `node` / `input_index` say which use (the rewrite
    replaces that input of that node). Each unit of the group is `block` contiguous elements
    of the segment."""

    value: Value
    axis: int
    start: int
    stop: int
    block: int
    node: Node | None = None
    input_index: int | None = None

    @property
    def is_constant(self) -> bool:
        return self.node is not None

    @property
    def is_weight(self) -> bool:
        """A constant operand of a contraction (MatMul / Gemm / Linear / Conv weight)."""
        return self.node is not None and _is_weight_use(self.node, self.input_index)

    def positions(self, units: Iterable[int]) -> np.ndarray:
        """The element indices along `axis` that `units` cover."""
        return np.array(
            [self.start + u * self.block + j for u in units for j in range(self.block)], np.int64
        )

    def __str__(self) -> str:
        where = f" in {self.node.name}[{self.input_index}]" if self.node is not None else ""
        seg = (
            f"[{self.start}:{self.stop}]"
            if self.start or self.stop != self.value.shape[self.axis]
            else ""
        )
        return f"%{self.value.name}{where} axis {self.axis}{seg} (block {self.block})"


@dataclass
class Group:
    """Dims that shrink together. `size` units; `members` the axes; `nodes` the nodes whose
    tensors change; `frozen` says why the group cannot shrink (None: it can).

    Layer groups (`kind == "layer"`) are residual branches `add = skip + f(skip)`: `nodes` is
    f's subgraph. `norm`, when set, is a post-norm block's norm on the sum (BERT:
    `LayerNorm(skip + f(skip))`) that goes with the branch, as when whole layers are dropped
    (`layer_groups(graph, post_norms=True)`). Removing the group leaves `skip` in place of
    `output` (the norm's output, else the Add's)."""

    kind: GroupKind
    size: int
    members: list[Member] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    frozen: str | None = None
    name: str = ""
    add: Node | None = None
    skip: Value | None = None
    norm: Node | None = None

    @property
    def weights(self) -> list[Member]:
        return [m for m in self.members if m.is_weight]

    @property
    def output(self) -> Value | None:
        """What a layer group computes from `skip`: its norm's output, else its Add's."""
        if self.norm is not None:
            return self.norm.outputs[0]
        return self.add.outputs[0] if self.add is not None else None

    def __str__(self) -> str:
        state = f"frozen: {self.frozen}" if self.frozen else "prunable"
        return f"{self.kind} group {self.name} ({self.size} units, {state})"


# ------------------------------------------------------------------------- ties


@dataclass
class _Ties:
    """What the op rules produce: ties between slots, frozen slots with their reasons."""

    equal: list[tuple[Slot, Slot]] = field(default_factory=list)
    # (merged, outer, inner): merged's units follow outer's (head split); inner > 1 is a split.
    outer: list[tuple[Slot, Slot, int]] = field(default_factory=list)
    # (big, start, stop, part): big[start:stop] is part.
    segment: list[tuple[Slot, int, int, Slot]] = field(default_factory=list)
    frozen: dict[Slot, str] = field(default_factory=dict)
    head_slots: set[Slot] = field(default_factory=set)
    norm_slots: set[Slot] = field(default_factory=set)
    residual_slots: set[Slot] = field(default_factory=set)
    depthwise: set[Node] = field(default_factory=set)
    # (slot, n): the group holding slot has a number of units that divides n (kv heads).
    constraints: list[tuple[Slot, int]] = field(default_factory=list)

    def freeze(self, slot: Slot, why: str) -> None:
        self.frozen.setdefault(slot, why)


def _ref(node: Node, i: int) -> Ref | None:
    v = node.inputs[i] if i < len(node.inputs) else None
    if v is None:
        return None
    return (node, i) if v.const_value is not None else v


def ref_value(ref: Ref) -> Value:
    if isinstance(ref, Value):
        return ref
    v = ref[0].inputs[ref[1]]
    assert v is not None
    return v


def _rank(ref: Ref) -> int:
    return ref_value(ref).type.rank


def _dim(ref: Ref, axis: int) -> int | str:
    return ref_value(ref).shape[axis]


def _const_ints(node: Node, i: int) -> list[int] | None:
    v = node.input(i) if i < len(node.inputs) else None
    if v is None or v.const_value is None:
        return None
    return [int(x) for x in np.asarray(v.const_value).reshape(-1)]


def _freeze_all(t: _Ties, node: Node, why: str) -> None:
    for i in range(len(node.inputs)):
        r = _ref(node, i)
        if r is not None and isinstance(r, Value):
            for a in range(_rank(r)):
                t.freeze((r, a), why)
    for o in node.outputs:
        for a in range(o.type.rank):
            t.freeze((o, a), why)


def _broadcast(t: _Ties, node: Node, inputs: Sequence[int], out: Value) -> None:
    rank = out.type.rank
    for i in inputs:
        r = _ref(node, i)
        if r is None:
            continue
        shift = rank - _rank(r)
        for a in range(_rank(r)):
            d, od = _dim(r, a), out.shape[a + shift]
            if d == od:
                t.equal.append(((r, a), (out, a + shift)))


def _block_end(
    src: Sequence[int | str], dst: Sequence[int | str], i: int, j: int
) -> tuple[int, int] | None:
    """The smallest (i2, j2) with product(src[i:i2]) == product(dst[j:j2]), dims symbolic or
    not (products are canonical strings), or None."""
    for total in range(2, len(src) - i + len(dst) - j + 1):
        for i2 in range(i + 1, min(len(src), i + total - 1) + 1):
            j2 = j + total - (i2 - i)
            if j < j2 <= len(dst) and symbolic.product(src[i:i2]) == symbolic.product(dst[j:j2]):
                return i2, j2
    return None


def _reshape_map(src: Sequence[int | str], dst: Sequence[int | str]):
    """Align two shapes of equal volume: (equal pairs, outer triples, unmatched src / dst axes).

    Outer triples are (merged axis side, merged axis, outer axis of the other side, inner)."""
    equal: list[tuple[int, int]] = []
    outer: list[tuple[str, int, int, int]] = []
    loose_src: list[int] = []
    loose_dst: list[int] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        if i < len(src) and j < len(dst) and src[i] == dst[j]:
            if src[i] != 1:
                equal.append((i, j))
            i, j = i + 1, j + 1
            continue
        if i < len(src) and src[i] == 1:
            i += 1
            continue
        if j < len(dst) and dst[j] == 1:
            j += 1
            continue
        ends = _block_end(src, dst, i, j) if i < len(src) and j < len(dst) else None
        if ends is None:
            loose_src += range(i, len(src))
            loose_dst += range(j, len(dst))
            break
        i2, j2 = ends
        s_axes = [a for a in range(i, i2) if src[a] != 1]
        d_axes = [a for a in range(j, j2) if dst[a] != 1]
        if len(s_axes) == 1 and len(d_axes) >= 1:
            inner = symbolic.product(dst[a] for a in d_axes[1:])
            outer.append(("src", s_axes[0], d_axes[0], inner if isinstance(inner, int) else 2))
            loose_dst += d_axes[1:]
        elif len(d_axes) == 1 and len(s_axes) >= 1:
            inner = symbolic.product(src[a] for a in s_axes[1:])
            outer.append(("dst", d_axes[0], s_axes[0], inner if isinstance(inner, int) else 2))
            loose_src += s_axes[1:]
        else:
            loose_src += s_axes
            loose_dst += d_axes
        i, j = i2, j2
    return equal, outer, loose_src, loose_dst


def _shape_op(t: _Ties, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    equal, outer, loose_x, loose_y = _reshape_map(x.shape, y.shape)
    # An axis folded into another one (head_dim under heads, heads under batch in a bmm) is
    # strided in the merged axis: pruning it is not a contiguous cut, so it stays.
    for ref, loose in ((x, loose_x), (y, loose_y)):
        for a in loose:
            t.freeze((ref, a), f"{node.op_type} {node.name} folds it into another axis")
    for a, b in equal:
        t.equal.append(((x, a), (y, b)))
    for side, merged, out_axis, inner in outer:
        if side == "src":
            t.outer.append(((x, merged), (y, out_axis), inner))
        else:
            t.outer.append(((y, merged), (x, out_axis), inner))
    if node.op_type == "Reshape" and node.input(1) is not None:
        _freeze_computed_shape_entries(t, node, "target shape")


def shape_entry(node: Node, axis: int) -> tuple[Node, int, int] | Literal["none"] | None:
    """Where the entry of a Reshape / Expand shape for output `axis` is a constant: (the node
    holding the constant, its input index, the offset in it), directly or through a Concat
    of 1-D pieces (dynamic shapes: Concat(Shape(x)[0:2], [heads, dim])). "none" when the
    shape has no entry for the axis (an Expand shape shorter than the output), None when the
    entry is computed."""
    target, y = node.inputs[1], node.outputs[0]
    assert target is not None
    index = axis - (y.type.rank - (target.shape[0] if isinstance(target.shape[0], int) else 0))
    if index < 0:
        return "none"
    if target.const_value is not None:
        return node, 1, index
    concat = target.producer
    if concat is None or concat.op_type != "Concat" or target.type.rank != 1:
        return None
    offset = 0
    for k, piece in enumerate(concat.inputs):
        if piece is None or piece.type.rank != 1 or not isinstance(piece.shape[0], int):
            return None
        if offset <= index < offset + piece.shape[0]:
            return (concat, k, index - offset) if piece.const_value is not None else None
        offset += piece.shape[0]
    return None


def _freeze_computed_shape_entries(t: _Ties, node: Node, what: str) -> None:
    y = node.outputs[0]
    for a in range(y.type.rank):
        if shape_entry(node, a) is None:
            t.freeze((y, a), f"{node.op_type} {node.name}'s {what} is computed at run time there")


def _rule(t: _Ties, node: Node) -> None:
    op, y = node.op_type, node.outputs[0] if node.outputs else None
    if y is None:
        return
    if op in BROADCAST_OPS and node.domain in ("", "ecograph"):
        _broadcast(t, node, range(len(node.inputs)), y)
        if op == "Add" and all(_ref(node, i) is not None for i in (0, 1)):
            a, b = node.inputs[0], node.inputs[1]
            assert a is not None and b is not None
            if a.const_value is None and b.const_value is None and a.type == b.type == y.type:
                t.residual_slots.update((y, ax) for ax in range(y.type.rank))
        return
    if op in SHAPE_OPS:
        _shape_op(t, node)
        return
    if op == "Transpose":
        x = node.inputs[0]
        assert x is not None
        perm = node.attr("perm") or list(range(x.type.rank))[::-1]
        for i, p in enumerate(perm):
            t.equal.append(((x, int(p)), (y, i)))
        return
    if op in ("MatMul", "Linear"):
        a, b = _ref(node, 0), _ref(node, 1)
        assert a is not None and b is not None
        ra, rb = _rank(a), _rank(b)
        if ra < 2 or rb < 2 or (op == "Linear" and rb != 2):
            _freeze_all(t, node, f"{op} {node.name} has a rank-1 operand")
            return
        t.equal.append(((a, ra - 1), (b, rb - 2)))
        t.equal.append(((a, ra - 2), (y, y.type.rank - 2)))
        t.equal.append(((b, rb - 1), (y, y.type.rank - 1)))
        for r, rank in ((a, ra), (b, rb)):
            shift = y.type.rank - rank
            for ax in range(rank - 2):
                if _dim(r, ax) == y.shape[ax + shift]:
                    t.equal.append(((r, ax), (y, ax + shift)))
        bias = _ref(node, 2) if op == "Linear" else None
        if bias is not None:
            t.equal.append(((bias, 0), (y, y.type.rank - 1)))
        return
    if op == "Gemm":
        a, b, c = _ref(node, 0), _ref(node, 1), _ref(node, 2)
        assert a is not None and b is not None
        ta, tb = int(node.attr("transA") or 0), int(node.attr("transB") or 0)
        a_k, a_m = (0, 1) if ta else (1, 0)
        b_k, b_n = (1, 0) if tb else (0, 1)
        t.equal += [((a, a_k), (b, b_k)), ((a, a_m), (y, 0)), ((b, b_n), (y, 1))]
        if c is not None:
            _broadcast(t, node, [2], y)
        return
    if op == "Conv":
        x, w, b = _ref(node, 0), _ref(node, 1), _ref(node, 2)
        assert x is not None and w is not None
        group = int(node.attr("group") or 1)
        t.equal.append(((x, 0), (y, 0)))
        channels_out: list[Slot] = [(w, 0), (y, 1)] + ([(b, 0)] if b is not None else [])
        for s in channels_out[1:]:
            t.equal.append((channels_out[0], s))
        if group == 1:
            t.equal.append(((x, 1), (w, 1)))
        elif group == _dim(x, 1) == _dim(w, 0) and _dim(w, 1) == 1:
            t.equal.append(((x, 1), (y, 1)))  # depthwise: the channel passes through
            t.depthwise.add(node)
        else:
            why = f"Conv {node.name} has group={group} (only depthwise groups are handled)"
            t.freeze((x, 1) if isinstance(x, Value) else (y, 1), why)
            t.freeze((y, 1), why)
        return
    if op in ("BatchNormalization", "InstanceNormalization"):
        x = node.inputs[0]
        assert x is not None
        for ax in range(x.type.rank):
            t.equal.append(((x, ax), (y, ax)))
        for i in range(1, len(node.inputs)):
            r = _ref(node, i)
            if r is not None:
                t.equal.append(((r, 0), (y, 1)))
        return
    if op in ("LayerNormalization", "RMSNormalization"):
        x = node.inputs[0]
        assert x is not None
        axis = int(node.attr("axis", -1)) % x.type.rank
        for ax in range(x.type.rank):
            t.equal.append(((x, ax), (y, ax)))
        _broadcast(t, node, range(1, len(node.inputs)), y)
        for ax in range(axis, x.type.rank):
            t.norm_slots.add((y, ax))
            t.freeze((y, ax), f"{op} {node.name} normalizes over it (pruning moves its statistics)")
        return
    if op in ("Softmax", "LogSoftmax"):
        x = node.inputs[0]
        assert x is not None
        for ax in range(x.type.rank):
            t.equal.append(((x, ax), (y, ax)))
        axis = int(node.attr("axis", -1)) % x.type.rank
        t.freeze((y, axis), f"{op} {node.name} normalizes over it")
        return
    if op in POOL_OPS:
        x = node.inputs[0]
        assert x is not None
        t.equal += [((x, 0), (y, 0)), ((x, 1), (y, 1))]
        return
    if op in REDUCE_OPS:
        x = node.inputs[0]
        assert x is not None
        axes = node.attr("axes") if node.attr("axes") is not None else _const_ints(node, 1)
        if axes is None:
            _freeze_all(t, node, f"{op} {node.name} reduces over unknown axes")
            return
        reduced = {int(a) % x.type.rank for a in axes}
        keep = int(node.attr("keepdims", 1))
        out_ax = 0
        for ax in range(x.type.rank):
            if ax in reduced:
                t.freeze((x, ax), f"{op} {node.name} reduces over it")
                out_ax += keep
                continue
            t.equal.append(((x, ax), (y, out_ax)))
            out_ax += 1
        return
    if op == "Split":
        x = node.inputs[0]
        assert x is not None
        axis = int(node.attr("axis", 0)) % x.type.rank
        offset = 0
        for o in node.outputs:
            ext = o.shape[axis]
            for ax in range(x.type.rank):
                if ax != axis:
                    t.equal.append(((x, ax), (o, ax)))
            if not isinstance(ext, int):
                _freeze_all(t, node, f"Split {node.name} has a symbolic part")
                return
            t.segment.append(((x, axis), offset, offset + ext, (o, axis)))
            offset += ext
        return
    if op == "Concat":
        axis = int(node.attr("axis")) % y.type.rank
        offset = 0
        for i in range(len(node.inputs)):
            r = _ref(node, i)
            if r is None:
                continue
            ext = _dim(r, axis)
            for ax in range(y.type.rank):
                if ax != axis:
                    t.equal.append(((r, ax), (y, ax)))
            if not isinstance(ext, int):
                _freeze_all(t, node, f"Concat {node.name} has a symbolic part")
                return
            t.segment.append(((y, axis), offset, offset + ext, (r, axis)))
            offset += ext
        return
    if op == "Expand":
        _broadcast(t, node, [0], y)
        _freeze_computed_shape_entries(t, node, "shape")
        return
    if op == "Gather":
        data = _ref(node, 0)
        idx = node.inputs[1]
        assert data is not None and idx is not None
        axis = int(node.attr("axis", 0)) % _rank(data)
        for ax in range(_rank(data)):
            if ax < axis:
                t.equal.append(((data, ax), (y, ax)))
            elif ax > axis:
                t.equal.append(((data, ax), (y, ax - 1 + idx.type.rank)))
        if isinstance(data, Value):
            t.freeze((data, axis), f"Gather {node.name} indexes it")
        return
    if op == "Slice":
        x = node.inputs[0]
        assert x is not None
        for ax in range(x.type.rank):
            if x.shape[ax] == y.shape[ax]:
                t.equal.append(((x, ax), (y, ax)))
            else:
                t.freeze((x, ax), f"Slice {node.name} cuts it")
        return
    if op == "Attention" and node.domain == "":
        _attention(t, node)
        return
    if op == "Shape":
        x = node.inputs[0]
        assert x is not None
        start = int(node.attr("start", 0) or 0)
        end = node.attr("end")
        for ax in range(x.type.rank)[start : end if end is not None else None]:
            t.freeze((x, ax), f"Shape {node.name} reads it")
        return
    _freeze_all(t, node, f"{node.qualified_op} {node.name} has no pruning rule")


def _attention(t: _Ties, node: Node) -> None:
    q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
    y = node.outputs[0]
    assert q is not None and k is not None and v is not None
    why_d = f"Attention {node.name}: head_dim is not prunable (it sets the softmax scale)"
    if len(node.outputs) > 1 or any(node.input(i) is not None for i in (4, 5)):
        _freeze_all(t, node, f"Attention {node.name} has a KV cache or extra outputs")
        return
    if q.type.rank == 4:
        t.equal += [((q, 0), (y, 0)), ((q, 2), (y, 2)), ((k, 2), (v, 2)), ((v, 3), (y, 3))]
        t.equal += [((q, 1), (y, 1)), ((k, 1), (v, 1)), ((q, 3), (k, 3))]
        # GQA: query head h reads kv head h // (Hq / Hkv): the kv heads are the units.
        t.outer.append(((q, 1), (k, 1), 1))
        t.head_slots.update({(q, 1), (k, 1), (v, 1), (y, 1)})
        for s in ((q, 3), (k, 3), (v, 3), (y, 3)):
            t.freeze(s, why_d)
        mask = node.input(3)
        if mask is not None and mask.type.rank == 4 and mask.shape[1] != 1:
            t.freeze((q, 1), f"Attention {node.name} has a per-head mask")
        return
    hq, hkv = int(node.attr("q_num_heads")), int(node.attr("kv_num_heads"))
    t.equal += [((q, 0), (y, 0)), ((q, 1), (y, 1)), ((k, 1), (v, 1))]
    if q.shape[2] == y.shape[2]:
        t.equal.append(((q, 2), (y, 2)))
    else:
        t.freeze((q, 2), f"Attention {node.name}: V's head_dim differs from Q's")
    if k.shape[2] == v.shape[2]:
        t.equal.append(((k, 2), (v, 2)))
    else:
        t.freeze((k, 2), f"Attention {node.name}: V's head_dim differs from K's")
    # q's hidden axis is [Hq * D] = [Hkv, n_rep * D] and k's [Hkv, D]: kv heads are the units.
    t.outer.append(((q, 2), (k, 2), int(q.shape[2]) // hkv if isinstance(q.shape[2], int) else 1))
    t.head_slots.update({(q, 2), (k, 2), (v, 2), (y, 2)})
    t.constraints.append(((k, 2), hkv))
    mask = node.input(3)
    if mask is not None and mask.type.rank == 4 and mask.shape[1] != 1:
        t.freeze((q, 2), f"Attention {node.name} has a per-head mask")
    if hq % hkv:
        t.freeze((q, 2), f"Attention {node.name}: {hq} query heads for {hkv} kv heads")


# ------------------------------------------------------------------- analysis


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[object, object] = {}

    def find(self, x: object) -> object:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: object, b: object) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _extent(slot: Slot) -> int | str:
    return _dim(slot[0], slot[1])


def _cuts(t: _Ties) -> dict[Slot, set[int]]:
    """Segment boundaries per slot: Split / Concat cut an axis, and the cuts travel through
    equal ties (a merged Q/K/V projection's weight is cut where its Split cuts the output)."""
    cuts: dict[Slot, set[int]] = {}
    for big, s, e, _ in t.segment:
        cuts.setdefault(big, set()).update((s, e))
    changed = True
    while changed:
        changed = False

        def add(slot: Slot, new: Iterable[int]) -> None:
            nonlocal changed
            have = cuts.setdefault(slot, set())
            ext = _extent(slot)
            fresh = {c for c in new if isinstance(ext, int) and 0 < c < ext} - have
            if fresh:
                have |= fresh
                changed = True

        for a, b in t.equal:
            add(a, cuts.get(b, ()))
            add(b, cuts.get(a, ()))
        for big, s, e, part in t.segment:
            add(big, (s + c for c in cuts.get(part, ())))
            add(part, (c - s for c in cuts.get(big, ()) if s < c < e))
    for slot, cs in cuts.items():
        ext = _extent(slot)
        cs.discard(0)
        if isinstance(ext, int):
            cs.discard(ext)
    return cuts


def _segments(slot: Slot, cuts: dict[Slot, set[int]]) -> list[tuple[int, int | str]]:
    ext = _extent(slot)
    if not isinstance(ext, int):
        return [(0, ext)]
    bounds = [0, *sorted(cuts.get(slot, ())), ext]
    return list(itertools.pairwise(bounds))


def groups(graph: Graph, *, layers: bool = True) -> list[Group]:
    """The dependency groups of `graph`: channel, head and FFN groups from the op ties (see the
    module docstring), residual-stream groups, and (with `layers`) residual branches."""
    t = _Ties()
    for node in graph.nodes:
        _rule(t, node)
    for v in graph.inputs:
        for ax in range(v.type.rank):
            t.freeze((v, ax), f"comes from graph input %{v.name}")
    for v in graph.outputs:
        for ax in range(v.type.rank):
            t.freeze((v, ax), f"reaches graph output %{v.name}")

    cuts = _cuts(t)
    uf = _UnionFind()
    split_keys: list[object] = []
    for a, b in t.equal:
        sa, sb = _segments(a, cuts), _segments(b, cuts)
        if len(sa) != len(sb):
            t.freeze(a, "Split / Concat boundaries disagree")
            t.freeze(b, "Split / Concat boundaries disagree")
        for (s1, _), (s2, _) in zip(sa, sb, strict=False):
            uf.union((a, s1), (b, s2))
    for big, s, _, part in t.segment:
        for ps, _ in _segments(part, cuts):
            uf.union((big, s + ps), (part, ps))
    for merged, outer, inner in t.outer:
        if cuts.get(merged) or cuts.get(outer):
            why = "a Split / Concat boundary falls inside a head split"
            t.freeze(merged, why)
            t.freeze(outer, why)
            continue
        uf.union((merged, 0), (outer, 0))
        if inner > 1:
            split_keys.append((merged, 0))

    # Every slot that any tie or freeze mentions, split into its segments.
    slots: set[Slot] = set(t.frozen) | t.head_slots | t.norm_slots | t.residual_slots
    for a, b in t.equal:
        slots.update((a, b))
    for big, _, _, part in t.segment:
        slots.update((big, part))
    for merged, outer, _ in t.outer:
        slots.update((merged, outer))
    components: dict[object, list[tuple[Slot, int, int | str]]] = {}
    for slot in slots:
        for start, stop in _segments(slot, cuts):
            components.setdefault(uf.find((slot, start)), []).append((slot, start, stop))

    order = {id(n): i for i, n in enumerate(graph.nodes)}
    result: list[Group] = []
    split_roots = {uf.find(k) for k in split_keys}
    for root, parts in components.items():
        found = _make_group(t, parts, root in split_roots, uf, cuts)
        if found is not None:
            result.append(found)
    result.sort(key=lambda g: min((order.get(id(n), 0) for n in g.nodes), default=0))
    if layers:
        result += layer_groups(graph)
    seen: dict[str, int] = {}
    for g in result:
        # Names come from a weight and an axis; a constant shared by several layers (CSE
        # merges equal arrays) can name more than one group, so later ones get a suffix.
        seen[g.name] = seen.get(g.name, 0) + 1
        if seen[g.name] > 1:
            g.name = f"{g.name}#{seen[g.name]}"
    return result


def _make_group(
    t: _Ties,
    parts: list[tuple[Slot, int, int | str]],
    has_split: bool,
    uf: _UnionFind,
    cuts: dict[Slot, set[int]],
) -> Group | None:
    members: list[tuple[Slot, int, int | str]] = sorted(
        parts, key=lambda p: (ref_value(p[0][0]).name, p[0][1], p[1])
    )
    weights = [p for p in members if not isinstance(p[0][0], Value) and _is_weight_use(*p[0][0])]
    if not weights:
        return None
    reasons = sorted(
        {t.frozen[p[0]] for p in members if p[0] in t.frozen},
        key=lambda r: (not r.startswith("reaches graph output"), not r.startswith("comes from"), r),
    )
    frozen = reasons[0] if reasons else None
    extents = [p[2] - p[1] for p in members if isinstance(p[2], int)]
    if len(extents) != len(members):
        frozen = frozen or "a member has a symbolic extent"
    root = uf.find((members[0][0], members[0][1]))
    for slot, n in t.constraints:
        if uf.find((slot, 0)) == root:
            extents.append(n)
    size = math.gcd(*extents) if extents else 0
    out: list[Member] = []
    nodes: dict[int, Node] = {}
    for (ref, axis), start, stop in members:
        if not isinstance(stop, int) or size == 0:
            continue
        block = (stop - start) // size
        if isinstance(ref, Value):
            out.append(Member(ref, axis, start, stop, block))
            if ref.producer is not None:
                nodes[id(ref.producer)] = ref.producer
            for u in ref.uses:
                nodes[id(u.node)] = u.node
        else:
            out.append(Member(ref_value(ref), axis, start, stop, block, ref[0], ref[1]))
            nodes[id(ref[0])] = ref[0]
    slots = {p[0] for p in members}
    weight_ops = {p[0][0][0].op_type for p in weights}  # type: ignore[index]
    kind: GroupKind
    if "Conv" in weight_ops:
        kind = "channels"
    elif slots & t.head_slots or has_split:
        kind = "heads"
    elif slots & (t.norm_slots | t.residual_slots):
        kind = "residual"
    else:
        kind = "ffn"
    (first, first_axis), _, _ = weights[0]
    name = f"{kind}:{ref_value(first).name}:{first_axis}"
    return Group(kind, size, out, list(nodes.values()), frozen, name)


# ---------------------------------------------------------------- layer groups


def ancestors(value: Value) -> set[int]:
    """ids of the nodes `value` depends on (its producer included)."""
    seen: set[int] = set()
    stack = [value.producer] if value.producer is not None else []
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack += [v.producer for v in n.inputs if v is not None and v.producer is not None]
    return seen


def layer_groups(graph: Graph, *, post_norms: bool = False) -> list[Group]:
    """Residual branches: Add(skip, f(skip)) where f's subgraph (the nodes that depend on skip
    and feed the Add) is used by nothing else, so removing it leaves skip + 0 = skip.

    With `post_norms`, the branches of a post-norm model (BERT) take the norm on their sum
    along (`Group.norm`, see `post_norm`): removing one leaves skip in place of
    Norm(skip + f(skip)), so that dropping both branches of a layer is deleting the layer.
    Without, the norm stays and keeps the stream normalized (drop-layers)."""
    found: list[Group] = []
    for add in graph.find_nodes("Add", ""):
        a, b = add.inputs[0], add.inputs[1]
        if a is None or b is None or a.const_value is not None or b.const_value is not None:
            continue
        if not (a.type == b.type == add.outputs[0].type):
            continue
        for skip, branch in ((a, b), (b, a)):
            cone = _branch_cone(graph, skip, branch, add)
            if cone:
                group = Group("layer", 1, [], cone, None, f"layer:{add.name}", add=add, skip=skip)
                group.norm = post_norm(add, skip, cone) if post_norms else None
                output = group.output
                assert output is not None
                if output.is_graph_output and skip.producer is None:
                    group.frozen = f"the block's input %{skip.name} and output are graph interface"
                found.append(group)
                break
    return found


POST_NORM_OPS = frozenset({"LayerNormalization", "RMSNormalization"})


def post_norm(add: Node, skip: Value, branch: Sequence[Node]) -> Node | None:
    """The norm of a post-norm residual block, `Norm(skip + f(skip))` (BERT), or None.

    It is the Add's only user, a LayerNormalization / RMSNormalization with constant scale and
    bias whose output has the Add's type. A branch that normalizes `skip` itself is pre-norm
    (Llama, GPT-2): a norm after its Add is the next block's or the model's final norm, not
    this block's."""
    out = add.outputs[0]
    if out.is_graph_output or len(out.uses) != 1:
        return None
    norm = out.uses[0].node
    if norm.op_type not in POST_NORM_OPS or norm.domain != "" or out.uses[0].index != 0:
        return None
    if len(norm.outputs) != 1 or norm.outputs[0].type != out.type:
        return None
    if any(v is not None and v.const_value is None for v in norm.inputs[1:]):
        return None
    pre_norm = any(n.op_type in POST_NORM_OPS and n.inputs[0] is skip for n in branch if n.inputs)
    return None if pre_norm else norm


def _branch_cone(graph: Graph, skip: Value, branch: Value, add: Node) -> list[Node]:
    """The nodes between `skip` and `branch` (depending on skip, feeding branch), if only the
    Add uses what they compute; else []."""
    if branch.producer is None:
        return []
    anc = ancestors(branch)
    if skip.producer is not None:
        feeds_branch = id(skip.producer) in anc
    else:
        feeds_branch = any(id(u.node) in anc for u in skip.uses)
    if not feeds_branch:
        return []
    depends: dict[int, bool] = {}
    cone: list[Node] = []
    for node in graph.nodes:
        if id(node) not in anc:
            continue
        dep = any(
            v is skip or (v is not None and v.producer is not None and depends.get(id(v.producer)))
            for v in node.inputs
        )
        depends[id(node)] = dep
        if dep:
            cone.append(node)
    inside = {id(n) for n in cone} | {id(add)}
    for node in cone:
        for o in node.outputs:
            if o.is_graph_output or any(id(u.node) not in inside for u in o.uses):
                return []
    return cone
