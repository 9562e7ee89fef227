"""Lowerings of Det (batched determinant) and QLinearConv (quantized convolution).

Det: Gaussian elimination with partial pivoting, unrolled in Relax over the static matrix size
`n` (each step works on the trailing `(n-k) x (n-k)` block: pick the row with the largest
|pivot| by argmax, swap it to the top with one-hot masks, eliminate below it). Batch dims may
be symbolic. It computes in float64 (as the reference does) and casts back, so it matches
numpy's LAPACK determinant to float64 rounding.

QLinearConv: an int32 convolution of `x - x_zero_point` and `w - w_zero_point` (per-tensor or
per-output-channel zero point) plus the int32 bias, then requantized exactly as the reference
does it: the float32 multiplier `x_scale * w_scale / y_scale` (per channel for a 1-D
`w_scale`), the product and the `y_zero_point` added in float64, rounding half to even and
saturating to the output type's range. Pads, SAME auto_pad and the rounding come from the
helpers of the Conv, ConvInteger and QuantizeLinear lowerings in `lowering.py`.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ecograph.backends.tvm.context import LowerContext, R, lowers, reshape_bias, round_half_even
from ecograph.backends.tvm.ops.conv import conv_integer_product
from ecograph.ir.ops.quant import QUANT_RANGES

# The unrolled elimination emits O(n) Relax ops; past this size the module gets unwieldy.
_DET_MAX_N = 64


@lowers("Det")
def _det(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    dtype = str(xt.dtype)
    n, m = xt.shape[-2], xt.shape[-1]
    if not isinstance(n, int) or n != m:
        ctx.fail(f"the matrices must be square with a static size, not {n!r} x {m!r}")
    if n > _DET_MAX_N:
        ctx.fail(f"matrices of size {n} exceed the unrolled elimination's limit ({_DET_MAX_N})")
    a = ctx.arg(0) if dtype == "float64" else ctx.emit(R.astype(ctx.arg(0), "float64"))
    if n == 0:
        return R.ones(ctx.shape(ctx.out_type().shape), dtype)
    det: relax.Expr | None = None
    # Non-negative axes (legalization rejects negative ones with symbolic batch dims): rr/cc
    # are the row/column axes of a matrix, and rr is the last axis of a per-row vector.
    rr, cc = xt.rank - 2, xt.rank - 1
    one, zero = ctx.scalar(1.0, "float64"), ctx.scalar(0.0, "float64")
    for k in range(n):
        size = n - k
        # a holds the trailing size x size block [..., size, size].
        col = ctx.emit(R.squeeze(R.strided_slice(a, [cc], [0], [1], assume_inbound=True), [cc]))
        if size == 1:
            det = col if det is None else ctx.emit(R.multiply(det, col))  # [..., 1]
            break
        p = ctx.emit(R.argmax(R.abs(col), axis=rr, keepdims=True))  # [..., 1]
        rows = relax.const(np.arange(size, dtype=np.int64), "int64")
        at_p = ctx.emit(R.astype(R.equal(rows, p), "float64"))  # [..., size]
        at_0 = relax.const(np.eye(1, size, dtype=np.float64).reshape(size), "float64")
        row_p = ctx.emit(R.sum(R.multiply(R.expand_dims(at_p, [cc]), a), axis=[rr]))  # [.., size]
        row_0 = ctx.emit(R.squeeze(R.strided_slice(a, [rr], [0], [1], assume_inbound=True), [rr]))
        diff = ctx.emit(R.expand_dims(R.subtract(row_p, row_0), [rr]))  # [..., 1, size]
        swapped = ctx.emit(
            R.subtract(
                R.add(a, R.multiply(R.reshape(at_0, [size, 1]), diff)),
                R.multiply(R.expand_dims(at_p, [cc]), diff),
            )
        )
        pivot = ctx.emit(R.strided_slice(row_p, [rr], [0], [1], assume_inbound=True))  # [..., 1]
        sign = ctx.emit(R.where(R.equal(p, relax.const(0, "int64")), one, R.negative(one)))
        factor = ctx.emit(R.multiply(sign, pivot))
        det = factor if det is None else ctx.emit(R.multiply(det, factor))
        # A zero pivot means a zero column below it: det is 0 and dividing by 1 keeps it finite.
        safe = ctx.emit(R.where(R.equal(pivot, zero), one, pivot))
        below = R.strided_slice(swapped, [rr, cc], [1, 0], [size, 1], assume_inbound=True)
        ratio = ctx.emit(R.divide(below, R.expand_dims(safe, [cc])))  # [..., size-1, 1]
        top = R.strided_slice(row_p, [rr], [1], [size], assume_inbound=True)  # [..., size-1]
        rest = R.strided_slice(swapped, [rr, cc], [1, 1], [size, size], assume_inbound=True)
        a = ctx.emit(R.subtract(rest, R.multiply(ratio, R.expand_dims(top, [rr]))))
    assert det is not None
    out = ctx.emit(R.squeeze(det, [rr]))
    return out if dtype == "float64" else R.astype(out, dtype)


@lowers("QLinearConv")
def _qlinear_conv(ctx: LowerContext) -> relax.Expr:
    rank = ctx.in_type(0).rank
    acc = conv_integer_product(ctx, x=0, x_zp=2, w=3, w_zp=5)
    if ctx.has(8):
        acc = R.add(acc, reshape_bias(ctx, R.astype(ctx.arg(8), "int32"), rank))
    # ONNX Runtime's requantization (MLAS): round(float32(acc) * multiplier) + y_zero_point,
    # clipped, the multiplier x_scale * w_scale / y_scale in float32; the reference kernel
    # computes the same (ir/ops/reference_ops.py `qlinear_conv`). Rounding before the zero
    # point is added leaves no multiply-add that FMA contraction could fuse.
    for i in (1, 4, 6):
        if str(ctx.in_type(i).dtype) != "float32":
            ctx.fail(f"input {i} (a scale) must be float32, not {ctx.in_type(i).dtype}")
    wst = ctx.in_type(4)
    mult = ctx.emit(R.divide(R.multiply(ctx.arg(1), ctx.arg(4)), ctx.arg(6)))
    if wst.rank == 1 and wst.shape[0] != 1:
        mult = reshape_bias(ctx, mult, rank)
    q = round_half_even(ctx, ctx.emit(R.multiply(R.astype(acc, "float32"), mult)), "float32")
    if ctx.has(7):
        q = R.add(q, R.astype(ctx.arg(7), "float32"))
    out = ctx.out_type().dtype
    lo, hi = QUANT_RANGES[out]
    q = R.clip(q, lo, hi)
    return R.astype(q, str(out))
