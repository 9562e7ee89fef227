"""Quantization lowerings: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
QLinearMatMul, and the weight-only matmuls that dequantize inside their kernel:
ecograph::DequantizeMatMul and com.microsoft::MatMulNBits.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

import numpy as np
from tvm import relax
from tvm import tirx as tir

from ecograph.backends.tvm.context import (
    OPAQUE_ATTR,
    LowerContext,
    R,
    carrier,
    lowers,
    norm_axis,
    round_half_even,
)
from ecograph.backends.tvm.ops import int4_a8
from ecograph.backends.tvm.ops.matmul import emit_by_column_matmul, emit_packed_integer_matmul
from ecograph.backends.tvm.ops.weight_panels import FUSED_WEIGHT_OP, emit_panel_dequantize_matmul
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.ops.quant import QUANT_RANGES

# ----------------------------------------------------------------- quantization


def _qparam(ctx: LowerContext, i: int, rank: int, axis: int, block: int) -> relax.Expr:
    """A scale or zero point reshaped (and for blocks, repeated) to broadcast against x."""
    pt = ctx.in_type(i)
    p = ctx.arg(i)
    if pt.rank == 0 or (pt.numel == 1 and not block):
        return R.reshape(p, []) if pt.rank else p
    axis = norm_axis(axis, rank)
    if not block:
        shape = [1] * rank
        shape[axis] = -1
        return R.reshape(p, shape)
    size = ctx.in_type(0).shape[axis]
    rep = R.repeat(p, block, axis=axis)
    if not isinstance(size, int):
        ctx.fail("blocked quantization needs a static size along the blocked axis")
    return R.strided_slice(rep, [axis], [0], [size], assume_inbound=True)


@lowers("QuantizeLinear")
def _quantize_linear(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    out = ctx.out_type().dtype
    lo, hi = QUANT_RANGES[out]
    axis, block = ctx.attrs["axis"], ctx.attrs["block_size"]
    cdt = str(xt.dtype)
    if ctx.attrs["precision"]:
        cdt = str(DType.from_onnx(ctx.attrs["precision"]))
    x = ctx.arg(0) if cdt == str(xt.dtype) else R.astype(ctx.arg(0), cdt)
    s = _qparam(ctx, 1, xt.rank, axis, block)
    if str(ctx.in_type(1).dtype) != cdt:
        s = R.astype(s, cdt)
    scaled = ctx.emit(R.divide(x, s))
    q = round_half_even(ctx, scaled, cdt)
    # q + zero point, clipped: float32 is exact (|q| <= 2**24 adds exactly; beyond, the sum
    # stays far outside every 8/16-bit range and clips the same), and twice float64's lanes
    acc = "float64" if cdt == "float64" else "float32"
    q = R.astype(q, acc)
    if ctx.has(2):
        zp = _qparam(ctx, 2, xt.rank, axis, block)
        q = R.add(q, R.astype(zp, acc))
    q = R.where(R.isnan(q), ctx.scalar(0.0, acc), q)
    return R.astype(R.clip(q, lo, hi), carrier(out))


@lowers("DequantizeLinear")
def _dequantize_linear(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    axis, block = ctx.attrs["axis"], ctx.attrs["block_size"]
    dx = R.astype(ctx.arg(0), "float32")
    if ctx.has(2):
        zp = _qparam(ctx, 2, xt.rank, axis, block)
        dx = R.subtract(dx, R.astype(zp, "float32"))
    s = _qparam(ctx, 1, xt.rank, axis, block)
    sdt = str(ctx.in_type(1).dtype)
    if sdt != "float32":
        # numpy promotes float32 * float16 to float32; * float64 to float64.
        if sdt == "float64":
            y = R.multiply(R.astype(dx, "float64"), s)
        else:
            y = R.multiply(dx, R.astype(s, "float32"))
    else:
        y = R.multiply(dx, s)
    out = str(ctx.out_type().dtype)
    return y if _dtype_of(ctx, y) == out else R.astype(y, out)


def _dtype_of(ctx: LowerContext, e: relax.Expr) -> str:
    v = ctx.emit(e)
    return str(v.ty.dtype)


@lowers("DynamicQuantizeLinear")
def _dynamic_quantize_linear(ctx: LowerContext) -> list[relax.Expr]:
    xt = ctx.in_type(0)
    if not ctx.target.is_gpu and xt.dtype == DType.FLOAT32 and xt.rank > 0:
        return _dynamic_quantize_kernels(ctx)
    dt = str(xt.dtype)
    x = ctx.arg(0)
    zero = ctx.scalar(0, dt)
    maxx = ctx.emit(R.maximum(zero, R.max(x)))
    minx = ctx.emit(R.minimum(zero, R.min(x)))
    rng = R.subtract(maxx, minx)
    scale = ctx.emit(
        R.divide(R.where(R.equal(maxx, minx), ctx.scalar(1.0, dt), rng), ctx.scalar(255.0, dt))
    )
    zp_f = R.clip(R.subtract(zero, R.divide(minx, scale)), 0, 255)
    zp = ctx.emit(round_half_even(ctx, zp_f, dt))
    y = R.add(round_half_even(ctx, R.divide(x, scale), dt), zp)
    y = R.astype(R.clip(y, 0, 255), "uint8")
    return [y, scale, R.astype(zp, "uint8")]


def _dynamic_quantize_kernels(ctx: LowerContext) -> list[relax.Expr]:
    """DynamicQuantizeLinear of a float32 tensor as two TE kernels the CPU schedules vectorize
    (schedules/int8.py): the range (min and max over the whole tensor, then the scale and the
    zero point) and the element-wise quantization. Same arithmetic as the reference: float32
    throughout, `x / scale` divided (not multiplied by a reciprocal), rounding half to even
    (TIR's `round` is LLVM's `nearbyint`, which rounds half to even in the default rounding mode;
    TIR's own `nearbyint` is the same instruction but TVM 0.27 does not vectorize it).

    When the last dim is a static multiple of W = 4 vectors, min and max are found in one pass
    as W partial results each (`part[c]` over the elements `c mod W` of each row, which the
    schedule computes in four independent vector registers), then reduced over those W."""
    from tvm import te

    f32 = lambda v: tir.const(v, "float32")  # noqa: E731
    last = ctx.in_type(0).shape[-1]
    lanes = max(1, ctx.target.vector_bits // 32)
    width = next(
        (w for w in (4 * lanes, lanes) if isinstance(last, int) and lanes > 1 and last % w == 0),
        None,
    )

    def extremes(xv: Any) -> tuple[Any, Any]:
        """min(x) and max(x): in one pass over W partial results when the last dim allows."""
        if width is None:

            def whole(reduce: Any, name: str) -> Any:
                axes = [te.reduce_axis((0, d), f"r{i}") for i, d in enumerate(xv.shape)]
                return te.compute((), lambda: reduce(xv[tuple(axes)], axis=axes), name=name)

            return whole(te.min, "x_min"), whole(te.max, "x_max")
        both = te.comm_reducer(
            lambda a, b: (tir.min(a[0], b[0]), tir.max(a[1], b[1])),
            lambda t0, t1: (tir.max_value(t0), tir.min_value(t1)),
            name="min_max",
        )
        lead = [te.reduce_axis((0, d), f"r{i}") for i, d in enumerate(xv.shape[:-1])]
        o = te.reduce_axis((0, last // width), "o")

        def part(c: Any) -> Any:
            v = xv[(*lead, o * width + c)]
            return both((v, v), axis=[*lead, o])

        lo_part, hi_part = te.compute((width,), part, name="x_range_part")
        c_lo, c_hi = te.reduce_axis((0, width), "c"), te.reduce_axis((0, width), "c")
        lo = te.compute((), lambda: te.min(lo_part[c_lo], axis=c_lo), name="x_min")
        hi = te.compute((), lambda: te.max(hi_part[c_hi], axis=c_hi), name="x_max")
        return lo, hi

    def scalars(xv: Any) -> list[Any]:
        lo, hi = extremes(xv)
        minx = lambda: tir.min(f32(0.0), lo[()])  # noqa: E731
        maxx = lambda: tir.max(f32(0.0), hi[()])  # noqa: E731
        rng = lambda: tir.Select(maxx() == minx(), f32(1.0), maxx() - minx())  # noqa: E731
        scale = te.compute((), lambda: rng() / f32(255.0), name="y_scale")
        zp = te.compute(
            (),
            lambda: tir.round(
                tir.max(tir.min(f32(0.0) - minx() / scale[()], f32(255.0)), f32(0.0))
            ).astype("uint8"),
            name="y_zero_point",
        )
        return [scale, zp]

    def quantize(xv: Any, sv: Any, zv: Any) -> Any:
        def q(*ix: Any) -> Any:
            y = tir.round(xv[ix] / sv[()]) + zv[()].astype("float32")
            return tir.max(tir.min(y, f32(255.0)), f32(0.0)).astype("uint8")

        return te.compute(xv.shape, q, name="y")

    x = ctx.arg(0)
    params = ctx.bb.emit_te(scalars, x, primfunc_name_hint="dynamic_quantize_range")
    scale = ctx.emit(relax.TupleGetItem(params, 0))
    zp = ctx.emit(relax.TupleGetItem(params, 1))
    y = ctx.bb.emit_te(quantize, x, scale, zp, primfunc_name_hint="dynamic_quantize")
    return [y, scale, zp]


@lowers("QLinearMatMul")
def _qlinear_matmul(ctx: LowerContext) -> relax.Expr:
    weight = ctx.node.input(3)
    if weight is not None and weight in ctx.state.panels:
        # A constant weight packed for the CPU's 8-bit kernel (ops/matmul.py).
        acc = emit_packed_integer_matmul(ctx)
    else:
        a32 = R.subtract(R.astype(ctx.arg(0), "int32"), R.astype(ctx.arg(2), "int32"))
        b32 = R.subtract(R.astype(ctx.arg(3), "int32"), R.astype(ctx.arg(5), "int32"))
        acc = R.matmul(a32, b32, out_dtype="int32")
    # Rounded before the zero point is added, as ONNX Runtime and the reference kernel
    # (ir/ops/nn.py) do: that leaves no multiply-add for FMA contraction to fuse.
    sdt = str(ctx.in_type(1).dtype)
    mult = R.divide(R.multiply(ctx.arg(1), ctx.arg(4)), ctx.arg(6))
    q = round_half_even(ctx, ctx.emit(R.multiply(R.astype(acc, sdt), mult)), sdt)
    out = ctx.out_type().dtype
    lo, hi = QUANT_RANGES[out]
    return R.astype(R.clip(R.add(q, R.astype(ctx.arg(7), sdt)), lo, hi), str(out))


@lowers("MatMulNBits", domain="com.microsoft")
def _matmul_nbits(ctx: LowerContext) -> relax.Expr:
    """Blockwise n-bit weights stay packed in memory and are dequantized inside the kernel:
    one TE kernel reads the packed bytes, scales and zero points in its reduction loop (no
    float copy of the weights exists, so FoldConstant cannot unpack them into float32)."""
    if ctx.has(4):
        ctx.fail("g_idx (act-order) is not supported")
    adt = str(ctx.in_type(0).dtype)
    plan = ctx.state.weight_panels.get(ctx.node)
    # CPU: repacked for the register-blocked kernel (ops/weight_panels.py)
    y = emit_panel_dequantize_matmul(ctx, plan) if plan is not None else _nbits_kernel(ctx, adt)
    if ctx.has(5):
        y = R.add(y, R.astype(ctx.arg(5), "float32"))
    return y if adt == "float32" else R.astype(y, adt)


def _nbits_kernel(ctx: LowerContext, adt: str) -> relax.Expr:
    """MatMulNBits' product (float32, before the bias) by one TE kernel reading ONNX Runtime's
    packed layout as it is ([N, K / 2] codes: a one-row product is dlight's GEMV on GPUs);
    on GPUs with several rows, the weights decoded first (`_decoded_then_multiplied`)."""
    k_len, n_len, bits, block = (ctx.attrs[a] for a in ("K", "N", "bits", "block_size"))
    k_blocks = -(-k_len // block)
    sdt = str(ctx.in_type(2).dtype)
    a = ctx.arg(0) if adt == "float32" else ctx.emit(R.astype(ctx.arg(0), "float32"))
    packed = ctx.emit(R.reshape(ctx.arg(1), [n_len, -1]))
    scales = ctx.emit(R.astype(R.reshape(ctx.arg(2), [n_len, k_blocks]), "float32"))
    zp_kind = "none"
    args = [a, packed, scales]
    if ctx.has(3):
        zp_kind = "packed" if ctx.in_type(3).dtype == DType.UINT8 else "float"
        z = R.reshape(ctx.arg(3), [n_len, -1])
        args.append(ctx.emit(z if zp_kind == "packed" else R.astype(z, "float32")))

    def weight_of(bt: Any, st: Any, zt: Any = None) -> Callable[[Any, Any], Any]:
        def weight(kk: Any, n: Any) -> Any:
            kb = tir.floordiv(kk, block)
            q = _packed_code(bt, n, kk, bits).astype("float32")
            if zp_kind == "none":
                zp: Any = tir.const(float(1 << (bits - 1)), "float32")
            elif zp_kind == "packed":
                zp = _packed_code(zt, n, kb, bits).astype("float32")
            else:
                zp = zt[n, kb]
            w = (q - zp) * st[n, kb]
            # The reference rounds the dequantized weights to the scales' dtype.
            return w if sdt == "float32" else w.astype(sdt).astype("float32")

        return weight

    if ctx.target.is_gpu and not _one_row(ctx.in_type(0)):
        return _decoded_then_multiplied(ctx, a, args[1:], weight_of, k_len, n_len)

    def compute(at: Any, *params: Any) -> Any:
        return dequantizing_matmul(at, weight_of(*params), k_len, n_len, "dequantize_matmul_nbits")

    return ctx.bb.emit_te(compute, *args, primfunc_name_hint="dequantize_matmul_nbits")


def _one_row(at: Any) -> bool:
    """A product whose A (TensorType) has one row: a decode step's matrix-vector product."""
    return at.rank == 1 or at.shape[-2] == 1


# ------------------------------------------- weight-only: dequantize inside the matmul
#
# ecograph::DequantizeMatMul (made by the fuse-weight-dequantize pass, which the driver runs)
# is one kernel that reads the integer weights and dequantizes them in its reduction loop.
# The float weights never exist, so TVM's FoldConstant cannot fold them into float32
# constants (which would undo the compression) and no float copy is materialized at run time;
# 4-bit weights are stored packed two per byte. On CPUs the weights (and scales) are packed in
# the matmul rule's column panels instead (ops/weight_panels.py) and the kernel below is only
# for what that layout does not cover. On GPUs the weights are stored [N, K]
# (transpose-dequantize-weights), so dlight's GEMV rule schedules a one-row product; with
# several rows the weights are decoded first (`_decoded_then_multiplied`, as for MatMulNBits).


def packed_weights(
    graph: Graph, live: set[Node], skip: Container[Value] = ()
) -> dict[Value, np.ndarray]:
    """4-bit weight constants read only as W (input 1) by live DequantizeMatMul nodes, packed
    two per byte (`pack_int4`); the DequantizeMatMul lowering reads them packed. Constants in
    `skip` (already packed otherwise: CPU panels) are left out."""
    packed: dict[Value, np.ndarray] = {}
    for c in graph.constants.values():
        if c.dtype not in (DType.INT4, DType.UINT4) or not c.uses or c in skip:
            continue
        if all(
            u.index == 1 and u.node in live and (u.node.domain, u.node.op_type) == FUSED_WEIGHT_OP
            for u in c.uses
        ):
            assert c.const_value is not None
            packed[c] = pack_int4(c.const_value)
    return packed


def pack_int4(q: np.ndarray) -> np.ndarray:
    """[rows, cols] 4-bit codes -> uint8 [rows, ceil(cols / 2)], column 2j in the low nibble."""
    codes = np.asarray(q).astype(np.int16) & 0xF
    if codes.shape[1] % 2:
        codes = np.concatenate([codes, np.zeros((codes.shape[0], 1), np.int16)], axis=1)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def _packed_code(buf: Any, row: Any, i: Any, bits: int) -> Any:
    """Code `i` of row `row` in a uint8 buffer of `bits`-bit codes packed low bits first."""
    per_byte = 8 // bits
    byte = buf[row, tir.floordiv(i, per_byte)].astype("int32")
    return tir.bitwise_and(tir.shift_right(byte, tir.floormod(i, per_byte) * bits), (1 << bits) - 1)


def dequantizing_matmul(at: Any, weight: Callable[[Any, Any], Any], k_len: int, n_len: int,
                         name: str) -> Any:  # fmt: skip
    """TE: `at` [..., K] times the weights `weight(k, n)` [K, N] computes, one reduction."""
    from tvm import te

    k = te.reduce_axis((0, k_len), "k")
    return te.compute(
        [*at.shape[:-1], n_len],
        lambda *i: te.sum(at[(*i[:-1], k)] * weight(k, i[-1]), axis=k),
        name=name,
    )


@lowers("DequantizeMatMul", domain="ecograph")
def _dequantize_matmul(ctx: LowerContext) -> relax.Expr:
    """`A @ DequantizeLinear(W, scale, zero point)` (W transposed when `trans_b`) as one TE
    kernel reading the integer (or packed 4-bit) weights."""
    at, wt, st = ctx.in_type(0), ctx.in_type(1), ctx.in_type(2)
    if at.dtype != DType.FLOAT32 or st.dtype != DType.FLOAT32:
        ctx.fail("the fused kernel computes in float32: A and the scale must be float32")
    plan = ctx.state.weight_panels.get(ctx.node)
    if plan is not None and plan.kernel == int4_a8.RULE:
        return int4_a8.emit_int4_a8_matmul(ctx, plan)
    a = ctx.arg(0)
    a_block = int(ctx.attrs["activation_block"] or 0)
    if a_block:  # A' (ecograph/ir/ops/weight_only.py) in float32, for the float kernels
        if at.rank < 1 or not isinstance(at.shape[-1], int):
            ctx.fail("activation_block needs A's last dimension (K) to be static")
        a = int4_a8.fake_quantize_blocks(ctx, a_block, int(at.shape[-1]))
    if plan is not None:  # CPU: the weights are packed for the register-blocked kernel
        return emit_panel_dequantize_matmul(ctx, plan, a)
    if not wt.is_static:
        ctx.fail(f"the weight matrix W {wt} needs a static shape")
    rows, cols = wt.static_shape()
    trans_b = bool(ctx.attrs["trans_b"])
    k_len, n_len = (cols, rows) if trans_b else (rows, cols)
    packed = ctx.node.input(1) in ctx.state.packed
    signed4 = wt.dtype == DType.INT4
    axis = norm_axis(ctx.attrs["axis"], 2)
    block = int(ctx.attrs["block_size"] or 0)
    s_rank = st.rank
    per_tensor = s_rank == 0 or (st.numel == 1 and not block)
    args = [a, ctx.arg(1), ctx.arg(2)]
    if ctx.has(3):
        args.append(ctx.arg(3))

    def qindex(r: Any, c: Any) -> tuple[Any, ...]:
        if per_tensor:
            return (0,) * s_rank
        if not block:
            return (r,) if axis == 0 else (c,)
        return (r // block, c) if axis == 0 else (r, c // block)

    def weight_of(w: Any, s: Any, z: Any = None) -> Callable[[Any, Any], Any]:
        """W'[k, n], dequantized from the stored codes."""

        def weight(kk: Any, n: Any) -> Any:
            r, c = (n, kk) if trans_b else (kk, n)
            if packed:
                nib = _packed_code(w, r, c, 4)
                q = tir.if_then_else(nib >= 8, nib - 16, nib) if signed4 else nib
            else:
                q = w[r, c].astype("int32")
            idx = qindex(r, c)
            if z is not None:
                q = q - z[idx].astype("int32")
            return q.astype("float32") * s[idx]

        return weight

    if ctx.target.is_gpu and not _one_row(at):
        return _decoded_then_multiplied(ctx, a, args[1:], weight_of, k_len, n_len)

    def compute(a: Any, *params: Any) -> Any:
        return dequantizing_matmul(a, weight_of(*params), k_len, n_len, "dequantize_matmul")

    return ctx.bb.emit_te(compute, *args, primfunc_name_hint="dequantize_matmul")


def _decoded_then_multiplied(
    ctx: LowerContext,
    a: relax.Expr,
    params: list[relax.Expr],
    weight_of: Callable[..., Callable[[Any, Any], Any]],
    k_len: int,
    n_len: int,
) -> relax.Expr:
    """GPU, several rows (prefill): W' decoded once per call into float32 [N, K] by a kernel
    of its own (OPAQUE_ATTR keeps it out of fusion), then a plain product, which dlight's
    Matmul rule schedules; fused into one kernel, dlight has no rule for it but Fallback."""
    from tvm import te

    def decode(*ps: Any) -> Any:
        weight = weight_of(*ps)
        return te.compute((n_len, k_len), lambda n, kk: weight(kk, n), name="dequantize")

    decoded = ctx.bb.emit_te(decode, *params, primfunc_name_hint="dequantize_weights")
    gv = ctx.bb.lookup_binding(decoded).args[0]
    ctx.bb.update_func(gv, ctx.bb.get()[gv].with_attr(OPAQUE_ATTR, True))
    return emit_by_column_matmul(ctx, a, decoded)
