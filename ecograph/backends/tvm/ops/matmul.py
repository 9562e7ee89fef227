"""Matrix-product lowerings: MatMul, MatMulInteger, Gemm and Einsum (quantized matmuls,
weight-only DequantizeMatMul and MatMulNBits, are in `quant.py`).

On CPU targets a float32 product with a constant 2-D weight (MatMul, Gemm, ecograph::Linear)
reads the weight packed at compile time in column panels, `[N / NR, K, NR]` (zero-padded),
so the NR columns a register tile needs are contiguous for every k; its rows are padded to a
multiple of the tile's MR, reading row min(i, rows - 1), so the schedule needs no row
predicate (schedules/matmul.py; `register_tile` gives both the same MR and NR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax

from ecograph.backends.tvm.context import (
    LowerContext,
    R,
    lowers,
)
from ecograph.backends.tvm.schedules.matmul import register_tile
from ecograph.backends.tvm.targets import TargetSpec
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value

# (domain, op) -> whether its weight (input 1) is used transposed, given the node
_WEIGHT_USES = {("", "MatMul"), ("", "Gemm"), ("ecograph", "Linear")}


@dataclass(frozen=True)
class PackedWeight:
    """A constant weight packed for the CPU matmul kernel: `array` is [ceil(N / nr), K, nr]."""

    array: np.ndarray
    nr: int


def _weight_orientation(node: Node) -> bool | None:
    """True if `node` reads its weight transposed ([N, K]), False if as [K, N], None if the
    node is not a product this packing serves."""
    if (node.domain, node.op_type) not in _WEIGHT_USES:
        return None
    a = node.input(0)
    if a is None or a.dtype != DType.FLOAT32 or a.type.rank < 1:
        return None
    if node.op_type == "Gemm":
        if node.attr("transA", 0):
            return None  # the packed kernel reads A as stored
        return bool(node.attr("transB", 0))
    return False


def packed_matmul_weights(
    graph: Graph, live: set[Node], target: TargetSpec
) -> dict[Value, PackedWeight]:
    """Float32 2-D weight constants every use of which is the weight of a live float32 product
    (all in the same orientation), packed for the CPU matmul kernel. Empty for GPU targets."""
    if target.is_gpu:
        return {}
    packed: dict[Value, PackedWeight] = {}
    for c in graph.constants.values():
        arr = c.const_value
        if c.dtype != DType.FLOAT32 or arr is None or arr.ndim != 2 or not c.uses:
            continue
        if c.is_graph_output or any(u.index != 1 or u.node not in live for u in c.uses):
            continue
        orientations = {_weight_orientation(u.node) for u in c.uses}
        if len(orientations) != 1 or None in orientations:
            continue
        w = arr.T if orientations.pop() else arr  # [K, N]
        first = c.uses[0].node.input(0)
        assert first is not None
        single = first.type.rank == 1 or first.type.shape[-2] == 1
        _, nr = register_tile(target, int(w.shape[1]), single_row=single)
        packed[c] = PackedWeight(pack_panels(w, nr), nr)
    return packed


def pack_panels(w: np.ndarray, nr: int) -> np.ndarray:
    """[K, N] -> [ceil(N / nr), K, nr], zero-padded columns."""
    k, n = w.shape
    n_pad = -(-n // nr) * nr
    padded = np.zeros((k, n_pad), np.float32)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, n_pad // nr, nr).transpose(1, 0, 2))


def emit_packed_matmul(ctx: LowerContext, a: relax.Expr, weight: Value) -> relax.Expr:
    """`a @ W` for a weight bound packed (`ctx.state.panels`): one TE kernel over the panels,
    rows padded to the register tile's MR and clamped (see the module doc)."""
    from tvm import te, tirx

    nr = ctx.state.panels[weight]
    wp = ctx.state.value_expr(weight)
    at = ctx.in_type(0)
    n_len = int(ctx.out_type().shape[-1])
    rows_dim = at.shape[-2] if at.rank >= 2 else 1
    single = rows_dim == 1
    mr, _ = register_tile(ctx.target, n_len, single_row=single, nr=nr)

    def compute(av: Any, wv: Any) -> Any:
        kk = te.reduce_axis((0, av.shape[-1]), "k")
        if len(av.shape) == 1:
            return te.compute(
                (n_len,),
                lambda j: te.sum(av[kk] * wv[j // nr, kk, j % nr], axis=kk),
                name="matmul",
            )
        *lead, rows, _ = av.shape
        static_rows = isinstance(rows, tirx.IntImm)
        if static_rows and int(rows) % mr == 0:
            return te.compute(
                (*lead, rows, n_len),
                lambda *ix: te.sum(av[(*ix[:-1], kk)] * wv[ix[-1] // nr, kk, ix[-1] % nr], axis=kk),
                name="matmul",
            )
        padded = (rows + (mr - 1)) // mr * mr
        tile = te.compute(
            (*lead, padded, n_len),
            lambda *ix: te.sum(
                av[(*ix[:-2], te.min(ix[-2], rows - 1), kk)] * wv[ix[-1] // nr, kk, ix[-1] % nr],
                axis=kk,
            ),
            name="matmul",
        )
        return te.compute((*lead, rows, n_len), lambda *ix: tile(*ix), name="matmul_rows")

    return ctx.bb.emit_te(compute, a, wp, primfunc_name_hint="matmul")


# ----------------------------------------------------------------- matmul family


@lowers("MatMul")
def lower_matmul(ctx: LowerContext) -> relax.Expr:
    dt = ctx.in_type(0).dtype
    weight = ctx.node.input(1)
    if weight is not None and weight in ctx.state.panels:
        return emit_packed_matmul(ctx, ctx.arg(0), weight)
    a, b = ctx.arg(0), ctx.arg(1)
    if dt in (DType.FLOAT16, DType.BFLOAT16):
        return R.astype(R.matmul(R.astype(a, "float32"), R.astype(b, "float32")), str(dt))
    return R.matmul(a, b)


@lowers("MatMulInteger")
def _matmul_integer(ctx: LowerContext) -> relax.Expr:
    a, b = ctx.arg(0), ctx.arg(1)
    at, bt = ctx.in_type(0), ctx.in_type(1)
    if not ctx.has(2) and not ctx.has(3) and at.dtype == bt.dtype == DType.INT8:
        if not ctx.options.widen_int8_matmul:
            # The int8 x int8 -> int32 product is emitted as one matmul (VNNI-friendly).
            return R.matmul(a, b, out_dtype="int32")
        ctx.notes.append(
            "int8 x int8 matmul widened to int32 operands (TVM 0.27 dlight Matmul rule "
            "crashes on the int8 form on CUDA); exact, but without int8 tensor cores"
        )
    a32 = R.astype(a, "int32")
    b32 = R.astype(b, "int32")
    if ctx.has(2):
        zp = R.astype(ctx.arg(2), "int32")
        zt = ctx.in_type(2)
        if zt.rank == 1 and zt.shape[0] != 1:
            shape = [1] * at.rank
            shape[-2] = -1
            zp = R.reshape(zp, shape)
        a32 = R.subtract(a32, zp)
    if ctx.has(3):
        b32 = R.subtract(b32, R.astype(ctx.arg(3), "int32"))
    return R.matmul(a32, b32, out_dtype="int32")


@lowers("Gemm")
def _gemm(ctx: LowerContext) -> relax.Expr:
    a = ctx.arg(0)
    dt = ctx.in_type(0).dtype
    weight = ctx.node.input(1)
    if weight is not None and weight in ctx.state.panels and not ctx.attrs["transA"]:
        y = emit_packed_matmul(ctx, a, weight)  # transB is in the packing
    else:
        if ctx.attrs["transA"]:
            a = R.permute_dims(a, [1, 0])
        b = ctx.arg(1)
        if ctx.attrs["transB"]:
            b = R.permute_dims(b, [1, 0])
        y = R.matmul(a, b)
    if ctx.attrs["alpha"] != 1.0:
        y = R.multiply(y, ctx.scalar(ctx.attrs["alpha"], dt))
    if ctx.has(2):
        c = ctx.arg(2)
        if ctx.attrs["beta"] != 1.0:
            c = R.multiply(c, ctx.scalar(ctx.attrs["beta"], dt))
        y = R.add(y, c)
    return y


@lowers("Einsum")
def _einsum(ctx: LowerContext) -> relax.Expr:
    return R.einsum([ctx.arg(i) for i in range(len(ctx.args))], ctx.attrs["equation"])
