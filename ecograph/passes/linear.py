"""Linear-layer fusions: fold BatchNorm into Conv/Gemm, a zero Pad into the Conv it feeds,
MatMul+Add -> Gemm, and merge parallel MatMuls that share an input (Q/K/V projections) into
one MatMul + Split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.ops.tensor import pad_widths
from ecograph.passes.core import Pass, PassResult
from ecograph.passes.pattern import Const, Match, Op, Pattern, RewritePass, Rule, Var
from ecograph.passes.registry import register_pass
from ecograph.passes.utils import const_array, replace_value


def _bn_scale_shift(bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (s, t) with BN(y) = y * s + t, in float64."""
    scale, bias, mean, var = (np.asarray(v.const_value, np.float64) for v in bn.inputs[1:5])  # type: ignore[union-attr]
    s = scale / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
    return s, bias - mean * s


def _bn_ok(m: Match) -> bool | str:
    bn = m.root
    if bn.attr("training_mode", 0):
        return "BatchNormalization is in training mode"
    if len(bn.outputs) != 1:
        return "BatchNormalization has running-stat outputs"
    for v in bn.inputs[1:5]:
        if v is None or v.const_value is None:
            return "BatchNormalization statistics are not constants"
    producer = m["producer"]
    w = producer.input(1)
    if w is None or w.const_value is None:
        return f"{producer.op_type} weight is not a constant"
    b = producer.input(2)
    if b is not None and b.const_value is None:
        return f"{producer.op_type} bias is not a constant"
    if not w.dtype.is_float:
        return f"weight dtype {w.dtype} is not a float"
    if producer.op_type == "Gemm" and producer.attr("transA", 0) not in (0, 1):
        return "bad Gemm"
    return True


@register_pass
@dataclass
class FoldBatchNorm(RewritePass):
    """BatchNormalization(Conv(x, W, b)) -> Conv(x, W*s, (b-mean)*s+beta); same for Gemm"""

    name: ClassVar[str] = "fold-batchnorm"
    tolerance: ClassVar[tuple[float, float] | None] = (1e-4, 1e-5)

    def rules(self) -> list[Rule]:
        stats = [Const() for _ in range(4)]
        patterns = [
            Pattern(
                f"fold-batchnorm/{op.lower()}",
                Op(
                    "BatchNormalization",
                    Op(op, Var("x"), Var("w"), name="producer", extra_inputs=True),
                    *stats,
                ),
                _bn_ok,
            )
            for op in ("Conv", "Gemm")
        ]
        return [Rule(p, self._rewrite) for p in patterns]

    def _rewrite(self, graph: Graph, m: Match) -> Value | str:
        producer: Node = m["producer"]
        s, t = _bn_scale_shift(m.root)
        w = producer.input(1)
        b = producer.input(2)
        assert w is not None and w.const_value is not None
        w64 = np.asarray(w.const_value, np.float64)
        dtype = w.const_value.dtype
        if producer.op_type == "Conv":
            if w64.shape[0] != s.shape[0]:
                return f"Conv has {w64.shape[0]} output channels, BatchNorm {s.shape[0]}"
            new_w = w64 * s.reshape((-1,) + (1,) * (w64.ndim - 1))
            b64 = np.zeros(s.shape) if b is None else np.asarray(b.const_value, np.float64)
            new_b = b64 * s + t
            attrs = dict(producer.attrs)
        else:
            if producer.attr("transA", 0) or producer.outputs[0].type.rank != 2:
                return "Gemm with transA is not folded"
            trans_b = int(producer.attr("transB", 0))
            alpha = float(producer.attr("alpha", 1.0))
            beta = float(producer.attr("beta", 1.0))
            cols = w64.shape[0] if trans_b else w64.shape[1]
            if cols != s.shape[0]:
                return f"Gemm has {cols} output columns, BatchNorm {s.shape[0]}"
            new_w = w64 * (s[:, None] if trans_b else s[None, :])
            c64 = np.zeros(s.shape) if b is None else beta * np.asarray(b.const_value, np.float64)
            new_b = c64 * s + t
            attrs = {**producer.attrs, "alpha": alpha, "beta": 1.0}
        new_w_v = graph.add_constant(new_w.astype(dtype), f"{w.name}_bn")
        new_b_v = graph.add_constant(
            np.asarray(new_b, np.float64).astype(dtype), f"{producer.name}_bn_bias"
        )
        x = producer.input(0)
        assert x is not None
        return graph.add_node(
            producer.op_type,
            [x, new_w_v, new_b_v],
            attrs,
            name=f"{producer.name}_bn",
            before=m.root,
        ).output


def _spatial_pads(pad: Node, rank: int) -> list[int] | None:
    """The [begins..., ends...] a constant zero Pad adds to the spatial axes of a rank-`rank`
    tensor; None when it pads the batch or channel axis, crops, pads otherwise than with
    zeros, or its pads / axes / value are not constants."""
    if pad.attr("mode", "constant") != "constant":
        return None
    pads = const_array(pad.input(1))
    value = const_array(pad.input(2)) if pad.input(2) is not None else np.zeros(())
    axes = const_array(pad.input(3)) if pad.input(3) is not None else np.arange(rank)
    if pads is None or value is None or axes is None or bool(np.any(value != 0)):
        return None
    if pads.size != 2 * np.asarray(axes).size or bool(np.any(pads < 0)):
        return None
    widths = pad_widths(pads, axes, rank)
    if any(widths[0]) or any(widths[1]):
        return None
    return [b for b, _ in widths[2:]] + [e for _, e in widths[2:]]


def _pad_conv_ok(m: Match) -> bool | str:
    conv, pad = m.root, m["pad"]
    if conv.attr("auto_pad", "NOTSET") != "NOTSET":
        return f"{conv.name} pads itself with auto_pad={conv.attr('auto_pad')}"
    if _spatial_pads(pad, m["x"].type.rank) is None:
        return f"{pad.name} is not a constant zero padding of the spatial axes"
    return True


@register_pass
@dataclass
class FoldPadIntoConv(RewritePass):
    """Conv(Pad(x, zeros on the spatial axes)) -> Conv(x) with the Pad's amounts added to its
    pads (TensorFlow-style "same" padding, as Hugging Face's MobileNets and EfficientNets
    write it): one copy of the activations fewer, and the conv kernel pads as it reads. The
    Pad stays for its other consumers, if any."""

    name: ClassVar[str] = "fold-pad-into-conv"

    def rules(self) -> list[Rule]:
        pad = Op("Pad", Var("x"), Const(), name="pad", extra_inputs=True, single_use=False)
        pattern = Pattern(
            "fold-pad-into-conv", Op("Conv", pad, Var("w"), extra_inputs=True), _pad_conv_ok
        )
        return [Rule(pattern, self._rewrite)]

    def _rewrite(self, graph: Graph, m: Match) -> Value | str:
        conv, x = m.root, m["x"]
        added = _spatial_pads(m["pad"], x.type.rank)
        assert added is not None
        own = list(conv.attr("pads") or [0] * len(added))
        attrs = {**conv.attrs, "pads": [a + b for a, b in zip(own, added, strict=True)]}
        return graph.add_node(
            "Conv", [x, *conv.inputs[1:]], attrs, name=f"{conv.name}_padded", before=conv
        ).output


def _gemm_ok(m: Match) -> bool | str:
    a, b, c = m["a"], m["b"], m["c"]
    mm = m.root.input(0) if m.root.input(0) is not c else m.root.input(1)
    if a.type.rank != 2 or b.type.rank != 2:
        return f"MatMul operands {a.type} / {b.type} are not both 2-D (Gemm is 2-D only)"
    if c.type.rank > 2 or c.dtype != a.dtype:
        return f"bias %{c.name} {c.type} does not fit Gemm's C"
    if mm is None or m.root.outputs[0].type != mm.type:
        return "the bias broadcasts the product to a larger shape"
    return True


def _linear_ok(m: Match) -> bool | str:
    a, b, c = m["a"], m["b"], m["c"]
    mm = m.root.input(0) if m.root.input(0) is not c else m.root.input(1)
    if a.type.rank < 3:
        return "2-D MatMul+Add becomes Gemm"
    if not b.is_constant or b.type.rank != 2:
        return f"weight %{b.name} is not a constant 2-D matrix"
    if not c.is_constant or c.type.rank != 1 or c.dtype != a.dtype or c.shape[0] != b.shape[1]:
        return f"bias %{c.name} {c.type} is not a constant vector of the output width"
    if mm is None or m.root.outputs[0].type != mm.type:
        return "the bias broadcasts the product to a larger shape"
    return True


@register_pass
@dataclass
class FuseMatMulAdd(RewritePass):
    """Add(MatMul(a, b), c) -> Gemm(a, b, c) for 2-D a and b; -> ecograph::Linear(a, b, c)
    for a of rank >= 3 with a constant 2-D weight b and a constant bias vector c"""

    name: ClassVar[str] = "fuse-matmul-add"
    tolerance: ClassVar[tuple[float, float] | None] = (1e-5, 1e-6)

    def rules(self) -> list[Rule]:
        gemm = Pattern(
            "matmul-add", Op("Add", Op("MatMul", Var("a"), Var("b")), Var("c")), _gemm_ok
        )
        linear = Pattern(
            "matmul-add-linear",
            Op("Add", Op("MatMul", Var("a"), Var("b")), Var("c")),
            _linear_ok,
        )

        def to_gemm(graph: Graph, m: Match) -> Value:
            return graph.add_node(
                "Gemm", [m["a"], m["b"], m["c"]], name=f"{m.root.name}_gemm", before=m.root
            ).output

        def to_linear(graph: Graph, m: Match) -> Value:
            return graph.add_node(
                "Linear",
                [m["a"], m["b"], m["c"]],
                domain="ecograph",
                name=f"{m.root.name}_linear",
                before=m.root,
            ).output

        return [Rule(gemm, to_gemm), Rule(linear, to_linear)]


def _mergeable(node: Node, kind: str, x: Value) -> bool:
    """A MatMul (or ecograph::Linear) of `x` by a constant 2-D weight (and constant bias)."""
    domain = "ecograph" if kind == "Linear" else ""
    w = node.input(1)
    if node.op_type != kind or node.domain != domain or w is None or w is x:
        return False
    if w.const_value is None or w.type.rank != 2:
        return False
    b = node.input(2) if kind == "Linear" else None
    return b is None or b.const_value is not None


@register_pass
@dataclass
class MergeParallelMatMuls(Pass):
    """MatMul(x, W1), MatMul(x, W2), ... -> Split(MatMul(x, concat(W1, W2, ...)))

    ecograph::Linear(x, Wi, bi) merge the same way (biases concatenated). Only constant 2-D
    weights of one dtype and inner size are merged, and at least
    `min_group` of them (Q/K/V projections share their input).
    """

    name: ClassVar[str] = "merge-parallel-matmuls"
    tolerance: ClassVar[tuple[float, float] | None] = (1e-4, 1e-5)

    min_group: int = 2

    def run(self, graph: Graph) -> PassResult:
        merged = 0
        notes: list[str] = []
        values = list(graph.inputs) + [o for n in graph.nodes for o in n.outputs]
        for x in values:
            for kind in ("MatMul", "Linear"):
                group = [u.node for u in x.uses if u.index == 0 and _mergeable(u.node, kind, x)]
                group = list({id(n): n for n in group}.values())
                if kind == "Linear" and len({n.input(2) is None for n in group}) > 1:
                    notes.append(f"near miss: Linears on %{x.name} mix biased and unbiased")
                    continue
                if len(group) < self.min_group:
                    continue
                ws = [n.input(1) for n in group]
                if len({(w.dtype, w.shape[0]) for w in ws if w is not None}) != 1:  # type: ignore[union-attr]
                    notes.append(f"near miss: {kind}s on %{x.name} have different weight shapes")
                    continue
                self._merge(graph, x, group, kind)
                merged += 1
        return PassResult(merged > 0, {"merged": merged} if merged else {}, notes)

    @staticmethod
    def _merge(graph: Graph, x: Value, group: list[Node], kind: str) -> None:
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        group.sort(key=lambda n: order[id(n)])
        arrays = [np.asarray(n.input(1).const_value) for n in group]  # type: ignore[union-attr]
        w = graph.add_constant(np.concatenate(arrays, axis=1), f"{group[0].name}_merged_w")
        first = group[0]
        if kind == "Linear":
            inputs: list[Value | None] = [x, w]
            if group[0].input(2) is not None:
                biases = [np.asarray(n.input(2).const_value) for n in group]  # type: ignore[union-attr]
                inputs.append(graph.add_constant(np.concatenate(biases), f"{first.name}_merged_b"))
            mm = graph.add_node(
                "Linear", inputs, domain="ecograph", name=f"{first.name}_merged", before=first
            ).output
        else:
            mm = graph.add_node("MatMul", [x, w], name=f"{first.name}_merged", before=first).output
        sizes = graph.add_constant(
            np.array([a.shape[1] for a in arrays], np.int64), f"{first.name}_merged_split"
        )
        split = graph.add_node(
            "Split",
            [mm, sizes],
            {"axis": -1},
            name=f"{first.name}_split",
            num_outputs=len(group),
            before=first,
        )
        for node, part in zip(group, split.outputs, strict=True):
            # A Split output is a fresh node output, so it can always take over the name.
            replaced = replace_value(graph, node.outputs[0], part)
            assert replaced, f"could not replace %{node.outputs[0].name}"
