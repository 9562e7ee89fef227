"""Weight-only quantized matmuls: fold a weight decoder into the matmul that reads it.

A weight-only quantized model holds `MatMul(x, DequantizeLinear(W_q, scale, zp))` with
constant integer weights; a palettized one `MatMul(x, ecograph::PaletteDequantize(codes,
palette))`. Executed as written, the float weights exist (a backend folds them into float32
constants, or decodes them on every call, and the compression is gone).
`ecograph::DequantizeMatMul` and `ecograph::PaletteMatMul` say what is meant, one op a backend
can run as one kernel that decodes inside its reduction loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.ops.ms_quant import MS_DOMAIN, unpack_codes
from ecograph.passes.core import CosineTolerance, Pass, PassResult, Tolerance
from ecograph.passes.registry import register_pass
from ecograph.passes.utils import const_array, replace_value

# Integer weight types the fused kernels read (4-bit ones are stored packed by backends).
WEIGHT_DTYPES = frozenset({DType.INT8, DType.UINT8, DType.INT4, DType.UINT4})
# The ops whose input 1 (B) may be a weight-only dequantization.
MATMUL_OPS = frozenset({("", "MatMul"), ("", "Gemm"), ("ecograph", "Linear")})


def _known(value: Value | None) -> bool:
    """A constant, or the output of an ONNX Constant node."""
    if value is None:
        return False
    producer = value.producer
    return value.is_constant or (
        producer is not None and producer.op_type == "Constant" and producer.domain == ""
    )


# The weight decoders the pass folds into their matmuls, and the fused op each one makes.
DECODERS = {
    ("", "DequantizeLinear"): "DequantizeMatMul",
    ("ecograph", "PaletteDequantize"): "PaletteMatMul",
}


def why_not_fused(dq: Node) -> str | None:
    """Why the weight decoder `dq` (DequantizeLinear or ecograph::PaletteDequantize) cannot
    become part of its matmuls, or None if it can.

    DequantizeLinear must dequantize a constant 2-D int8/uint8/int4/uint4 weight matrix with a
    known float32 scale (and a known zero point, if any); PaletteDequantize must look up a
    constant 2-D uint4/uint8 code matrix in a known float32 palette. Either must produce
    float32, and every use of its result must be input B of a MatMul, Gemm or ecograph::Linear
    on float32 activations.
    """
    why = _palette_reason(dq) if dq.op_type == "PaletteDequantize" else _dequantize_reason(dq)
    if why is not None:
        return why
    out = dq.outputs[0]
    if out.dtype != DType.FLOAT32:
        return f"it decodes to {out.dtype}, not float32"
    if out.is_graph_output or not out.uses:
        return "its float weights are a graph output or unused"
    for use in out.uses:
        consumer = use.node
        if (consumer.domain, consumer.op_type) not in MATMUL_OPS or use.index != 1:
            return f"{consumer.name} ({consumer.qualified_op}) uses it, not as a matmul weight"
        a = consumer.input(0)
        if a is None or a is out or a.dtype != DType.FLOAT32:
            return f"{consumer.name} has no float32 activations"
    return None


def _dequantize_reason(dq: Node) -> str | None:
    w, s, z = dq.input(0), dq.input(1), dq.input(2)
    if w is None or w.const_value is None or w.type.rank != 2:
        return "the quantized input is not a constant 2-D weight matrix"
    if w.dtype not in WEIGHT_DTYPES:
        return f"weight dtype {w.dtype} is not int8/uint8/int4/uint4"
    if s is None or s.dtype != DType.FLOAT32 or not _known(s):
        return "the scale is not a known float32 tensor"
    if z is not None and not _known(z):
        return "the zero point is not known"
    return None


def _palette_reason(dq: Node) -> str | None:
    codes, palette = dq.input(0), dq.input(1)
    if codes is None or codes.const_value is None or codes.type.rank != 2:
        return "the codes are not a constant 2-D weight matrix"
    if palette is None or palette.dtype != DType.FLOAT32 or not _known(palette):
        return "the palette is not a known float32 tensor"
    return None


@register_pass
@dataclass
class FuseWeightDequantize(Pass):
    """MatMul(x, DequantizeLinear(W_q, s, zp)) -> ecograph::DequantizeMatMul(x, W_q, s, zp);
    MatMul(x, PaletteDequantize(codes, palette)) -> ecograph::PaletteMatMul(x, codes, palette)

    W_q is a constant 2-D int8/uint8/int4/uint4 matrix, s a known float32 scale (per tensor,
    per axis or blocked: axis and block_size carry over) and x float32; codes a constant 2-D
    uint4/uint8 matrix and the palette known float32 (axis and group_size carry over). Gemm
    becomes [Transpose(A) for transA ->] fused op(trans_b=transB) [-> Mul by alpha]
    [-> Add(C, times beta)]; ecograph::Linear becomes fused op -> Add(bias). The decoder must
    have no other use (its float weights would have to exist anyway). The result is
    bit-identical: the new op's kernel is the decoder's then MatMul's.
    """

    name: ClassVar[str] = "fuse-weight-dequantize"

    def run(self, graph: Graph) -> PassResult:
        fused = 0
        notes: list[str] = []
        for dq in graph.nodes:
            if (dq.domain, dq.op_type) not in DECODERS:
                continue
            why = why_not_fused(dq)
            if why is not None:
                notes.append(f"near miss: {dq.name}: {why}")
                continue
            fused += fuse_weight_decoder(graph, dq)
        return PassResult(fused > 0, {"fused": fused} if fused else {}, notes)


def fuse_weight_decoder(graph: Graph, dq: Node, *, activation_block: int = 0) -> int:
    """FuseWeightDequantize's rewrite of one weight decoder `dq` (one `why_not_fused` accepts):
    each matmul reading it becomes the fused op (`activation_block` for a DequantizeMatMul: see
    ecograph/ir/ops/weight_only.py), then `dq` is removed. Returns how many matmuls."""
    consumers = dq.outputs[0].users
    for mm in consumers:
        _fuse_into(graph, dq, mm, activation_block)
    graph.remove_node(dq)
    return len(consumers)


def _fuse_into(graph: Graph, dq: Node, mm: Node, activation_block: int) -> None:
    """Replace the matmul `mm` (whose input 1 is `dq`'s output) by the fused op."""
    a = mm.input(0)
    assert a is not None
    fused_op = DECODERS[dq.domain, dq.op_type]
    if fused_op == "PaletteMatMul":
        attrs = {"axis": int(dq.attr("axis", 0)), "group_size": int(dq.attr("group_size", 0))}
    else:
        attrs = {
            "axis": int(dq.attr("axis", 1)),
            "block_size": int(dq.attr("block_size", 0) or 0),
        }
    attrs["trans_b"] = 0
    if activation_block:
        attrs["activation_block"] = activation_block
    is_gemm = mm.op_type == "Gemm"
    if is_gemm:
        attrs["trans_b"] = int(mm.attr("transB", 0))
        if mm.attr("transA", 0):
            a = graph.add_node(
                "Transpose", [a], {"perm": [1, 0]}, name=f"{mm.name}_a_t", before=mm
            ).output
    y = graph.add_node(
        fused_op,
        [a, *dq.inputs],
        attrs,
        domain="ecograph",
        name=f"{mm.name}_dq",
        before=mm,
    ).output
    if is_gemm:
        y = _gemm_epilogue(graph, mm, y)
    elif mm.op_type == "Linear" and mm.input(2) is not None:
        y = graph.add_node("Add", [y, mm.input(2)], name=f"{mm.name}_bias", before=mm).output
    replaced = replace_value(graph, mm.outputs[0], y)
    assert replaced, f"{mm.name}: the fused value cannot take over its output"


def _gemm_epilogue(graph: Graph, gemm: Node, y: Value) -> Value:
    """alpha * y + beta * C, as Gemm's kernel computes it (each factor only when not 1)."""
    alpha, beta = float(gemm.attr("alpha", 1.0)), float(gemm.attr("beta", 1.0))
    if alpha != 1.0:
        factor = graph.add_constant(np.array(alpha, np.float32), f"{gemm.name}_alpha")
        y = graph.add_node("Mul", [y, factor], name=f"{gemm.name}_alpha", before=gemm).output
    c = gemm.input(2)
    if c is None:
        return y
    if beta != 1.0:
        factor = graph.add_constant(np.array(beta, np.float32), f"{gemm.name}_beta")
        c = graph.add_node("Mul", [c, factor], name=f"{gemm.name}_beta", before=gemm).output
    return graph.add_node("Add", [y, c], name=f"{gemm.name}_c", before=gemm).output


# ------------------------------------------------------------------ MatMulNBits


def why_not_blocked(node: Node) -> str | None:
    """Why the com.microsoft::MatMulNBits `node` cannot become a DequantizeMatMul with
    activation blocks (`nbits_with_activation_blocks`), or None if it can: it needs 4-bit
    codes, no g_idx, float32 A and scales, and known codes, scales and (uint8-packed) zero
    points."""
    bits = int(node.attr("bits", 4))
    a, b, s, z = (node.input(i) for i in range(4))
    if bits != 4:
        return f"{bits}-bit codes (the int8-activation kernel reads 4-bit ones)"
    if node.input(4) is not None:
        return "it has g_idx (act-order)"
    if a is None or a.dtype != DType.FLOAT32 or s is None or s.dtype != DType.FLOAT32:
        return "A and the scales must be float32"
    if any(const_array(v) is None for v in (b, s, z) if v is not None) or b is None:
        return "its codes, scales and zero points must be constants"
    if z is not None and z.dtype != DType.UINT8:
        return f"zero points in {z.dtype} (integer codes need uint8-packed ones)"
    return None


def nbits_with_activation_blocks(
    graph: Graph, node: Node, converted: dict[tuple[Any, ...], list[Value]] | None = None
) -> Node:
    """The com.microsoft::MatMulNBits `node` (one `why_not_blocked` accepts) as
    ecograph::DequantizeMatMul(A, W [N, K], scales [N, K / block], zero points, trans_b=1,
    axis=1, block_size=block, activation_block=block) [-> Add(bias)]: the same weights
    (unsigned codes with their zero points; without zero points, the default 8 as signed
    int4 codes, code - 8), and A quantized to int8 in blocks of `block_size` as ONNX
    Runtime's CPU kernel does at accuracy_level 4 (ecograph/ir/ops/weight_only.py). The
    node's packed constants go once nothing else reads them; `converted` (shared between
    calls) gives nodes that read the same packed constants the same new ones. Returns the
    new DequantizeMatMul."""
    a, b, s, z, _, bias = (node.input(i) for i in range(6))
    assert a is not None and b is not None and s is not None
    block = int(node.attr("block_size"))
    key = (b.name, s.name, z.name if z is not None else "", node.attr("K"), node.attr("N"), block)
    cache = converted if converted is not None else {}
    if key not in cache:
        cache[key] = _nbits_weights(graph, node)
    name = node.name
    attrs = {"axis": 1, "block_size": block, "trans_b": 1, "activation_block": block}
    fused = graph.add_node(
        "DequantizeMatMul", [a, *cache[key]], attrs, domain="ecograph", name=f"{name}_dq",
        before=node,
    )  # fmt: skip
    y = fused.output
    if bias is not None:
        y = graph.add_node("Add", [y, bias], name=f"{name}_bias", before=node).output
    replaced = replace_value(graph, node.outputs[0], y)
    assert replaced, f"{name}: the rewritten value cannot take over its output"
    for packed_value in (b, s, z):  # the packed originals, once nothing else reads them
        if packed_value is not None and not packed_value.has_uses():
            graph.remove_constant(packed_value)
    return fused


def _nbits_weights(graph: Graph, node: Node) -> list[Value]:
    """The MatMulNBits node's weights as new constants: codes [N, K], scales [N, K / block]
    and, when it has them, zero points [N, K / block] (`nbits_with_activation_blocks`)."""
    b, s, z = node.input(1), node.input(2), node.input(3)
    k_len, n_len, block = int(node.attr("K")), int(node.attr("N")), int(node.attr("block_size"))
    k_blocks = -(-k_len // block)  # a short last block: ONNX Runtime pads A's with zeros
    packed, scales, zero_points = const_array(b), const_array(s), const_array(z)
    assert packed is not None and scales is not None  # why_not_blocked
    codes = unpack_codes(packed.reshape(n_len, -1), 4, k_len)
    name = node.name
    scale = graph.add_constant(scales.reshape(n_len, k_blocks).astype(np.float32), f"{name}_scale")
    if zero_points is None:
        return [graph.add_constant((codes - 8).astype(DType.INT4.numpy), f"{name}_w"), scale]
    zp = unpack_codes(zero_points.reshape(n_len, -1), 4, k_blocks)
    return [
        graph.add_constant(codes.astype(DType.UINT4.numpy), f"{name}_w"),
        scale,
        graph.add_constant(zp.astype(DType.UINT4.numpy), f"{name}_zp"),
    ]


def block_nbits_activations(
    graph: Graph, notes: list[str], skip: Callable[[Node], str | None]
) -> int:
    """`nbits_with_activation_blocks` on each com.microsoft::MatMulNBits of `graph` that
    `skip` passes (None; "" skips it in silence, other text with a note) and
    `why_not_blocked` accepts (else a note says why). Returns how many were rewritten."""
    count = 0
    converted: dict[tuple[Any, ...], list[Value]] = {}  # one copy of shared packed weights
    for node in graph.nodes:
        if (node.domain, node.op_type) != (MS_DOMAIN, "MatMulNBits"):
            continue
        why = skip(node)
        if why is None:
            why = why_not_blocked(node)
            why = None if why is None else f"activations stay float ({why})"
        if why is not None:
            if why:
                notes.append(f"{node.name} (MatMulNBits): {why}")
            continue
        nbits_with_activation_blocks(graph, node, converted)
        count += 1
    return count


@register_pass
@dataclass
class NBitsActivationBlocks(Pass):
    """com.microsoft::MatMulNBits (accuracy_level 4) -> ecograph::DequantizeMatMul with int8
    activation blocks

    A MatMulNBits whose accuracy_level is 4 allows int8 activations, and ONNX Runtime's CPU
    kernel computes it so: each row of A quantized to int8 in blocks of block_size, the
    products summed in integers. This pass makes that explicit
    (`nbits_with_activation_blocks`), so that CPU builds run the 4-bit x 8-bit kernel
    (backends/tvm/ops/int4_a8.py) and match ONNX Runtime's results; without it ecograph
    computes the node in float32 (more exact, slower). `any_accuracy_level=True` rewrites
    every 4-bit MatMulNBits whatever its level. Lossy: A's int8 rounding (relative error
    about 1/254 of each block's largest |a|), checked against a cosine of 0.999. A node that
    cannot be rewritten stays as it is, with a note saying why.
    """

    name: ClassVar[str] = "nbits-activation-blocks"
    tolerance: ClassVar[Tolerance] = CosineTolerance(0.999)
    any_accuracy_level: bool = False

    def run(self, graph: Graph) -> PassResult:
        def skip(node: Node) -> str | None:
            level = int(node.attr("accuracy_level", 0))
            return "" if level != 4 and not self.any_accuracy_level else None

        notes: list[str] = []
        rewritten = block_nbits_activations(graph, notes, skip)
        return PassResult(rewritten > 0, {"rewritten": rewritten} if rewritten else {}, notes)


@register_pass
@dataclass
class TransposeDequantizeWeights(Pass):
    """ecograph::DequantizeMatMul reading W stored [K, N] -> the same product reading W
    stored [N, K] (trans_b=1), its blocked scales and zero points transposed alike: each
    output column's weights contiguous along the reduction.

    For GPU backends, which run it before lowering: dlight's GEMV rule (TVM 0.27) schedules
    a product reduced along its weights' contiguous axis (neighbouring threads read
    neighbouring bytes) and on CUDA declines the [K, N] form, which then fell to the
    Reduction rule, each thread of a reduction reading one byte per row of W. Exact: the
    same codes, scales and sums in another layout. A node whose W, scale or zero point is
    not a constant of its own stays as it is.
    """

    name: ClassVar[str] = "transpose-dequantize-weights"

    def run(self, graph: Graph) -> PassResult:
        done = sum(
            transpose_dequantize_weights(graph, node)
            for node in list(graph.nodes)
            if (node.domain, node.op_type) == ("ecograph", "DequantizeMatMul")
        )
        return PassResult(done > 0, {"transposed": done} if done else {})


def transpose_dequantize_weights(graph: Graph, node: Node) -> bool:
    """Store the DequantizeMatMul `node`'s W as [N, K] (see TransposeDequantizeWeights);
    False, changing nothing, when it already is or its weights are not its own constants."""
    if node.attr("trans_b"):
        return False
    params = [node.input(i) for i in (1, 2, 3)]
    if any(
        v is not None and (not v.is_constant or len(v.uses) != 1 or v.is_graph_output)
        for v in params
    ):
        return False
    block = int(node.attr("block_size") or 0)
    for index, v in zip((1, 2, 3), params, strict=True):
        if v is None:
            continue
        arr = const_array(v)
        assert arr is not None
        if index == 1 or (block and arr.ndim == 2):  # blocked parameters follow W's layout
            new = graph.add_constant(np.ascontiguousarray(arr.T), f"{v.name}_nk")
            graph.set_node_input(node, index, new)
            graph.remove_constant(v)
    node.attrs["axis"] = 1 - int(node.attr("axis")) % 2
    node.attrs["trans_b"] = 1
    return True


__all__ = [
    "DECODERS",
    "MATMUL_OPS",
    "WEIGHT_DTYPES",
    "FuseWeightDequantize",
    "NBitsActivationBlocks",
    "TransposeDequantizeWeights",
    "block_nbits_activations",
    "fuse_weight_decoder",
    "nbits_with_activation_blocks",
    "transpose_dequantize_weights",
    "why_not_blocked",
    "why_not_fused",
]
