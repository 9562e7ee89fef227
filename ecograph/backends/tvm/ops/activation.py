"""Activation lowerings: the ReLU family, ELU/CELU/SELU, hard sigmoid/swish, softplus,
softsign, Mish, Gelu, Shrink, Softmax/LogSoftmax and Hardmax. Half-precision inputs compute
in float32 (`float_compute`) and cast back.
"""

from __future__ import annotations

import math

from tvm import relax

from ecograph.backends.tvm.context import (
    NN,
    LowerContext,
    R,
    cast_back,
    float_compute,
    lowers,
    norm_axis,
)


@lowers("Relu")
def _relu(ctx: LowerContext) -> relax.Expr:
    return R.maximum(ctx.arg(0), ctx.scalar(0, ctx.in_type(0).dtype))


@lowers("LeakyRelu")
def _leaky_relu(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    return R.where(
        R.less(x, ctx.scalar(0, dt)), R.multiply(x, ctx.scalar(ctx.attrs["alpha"], dt)), x
    )


@lowers("PRelu")
def _prelu(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    return R.where(R.less(x, ctx.scalar(0, dt)), R.multiply(x, ctx.arg(1)), x)


@lowers("ThresholdedRelu")
def _thresholded_relu(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    return R.where(R.greater(x, ctx.scalar(ctx.attrs["alpha"], dt)), x, ctx.scalar(0, dt))


@lowers("Elu", "Celu", "Selu")
def _elu_family(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    op = ctx.node.op_type
    alpha = ctx.attrs["alpha"]
    zero, one = ctx.scalar(0, dt), ctx.scalar(1, dt)
    if op == "Celu":
        neg = R.multiply(
            ctx.scalar(alpha, dt),
            R.subtract(R.exp(R.divide(x, ctx.scalar(alpha, dt))), one),
        )
        return R.add(R.maximum(zero, x), R.minimum(zero, neg))
    expm1 = R.multiply(ctx.scalar(alpha, dt), R.subtract(R.exp(x), one))
    if op == "Elu":
        return R.where(R.less(x, zero), expm1, x)
    gamma = ctx.scalar(ctx.attrs["gamma"], dt)
    return R.multiply(gamma, R.where(R.less_equal(x, zero), expm1, x))


@lowers("HardSigmoid")
def _hard_sigmoid(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    y = R.add(R.multiply(x, ctx.scalar(ctx.attrs["alpha"], dt)), ctx.scalar(ctx.attrs["beta"], dt))
    return R.clip(y, 0, 1)


@lowers("HardSwish")
def _hard_swish(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    y = R.add(R.multiply(x, ctx.scalar(1 / 6, dt)), ctx.scalar(0.5, dt))
    return R.multiply(x, R.clip(y, 0, 1))


def _softplus_expr(ctx: LowerContext, x: relax.Expr, dt: str) -> relax.Expr:
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), stable for large |x|. Relax has no
    # log1p: Kahan's form log(w) * u / (w - 1) with w = 1 + u keeps small u exact.
    zero, one = ctx.scalar(0, dt), ctx.scalar(1, dt)
    u = ctx.emit(R.exp(R.negative(R.abs(x))))
    w = ctx.emit(R.add(one, u))
    log1p = R.where(R.equal(w, one), u, R.divide(R.multiply(R.log(w), u), R.subtract(w, one)))
    return R.add(R.maximum(x, zero), log1p)


@lowers("Softplus")
def _softplus(ctx: LowerContext) -> relax.Expr:
    x, dt = float_compute(ctx)
    return cast_back(_softplus_expr(ctx, x, "float32" if dt != "float64" else dt), dt)


@lowers("Softsign")
def _softsign(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    return R.divide(x, R.add(ctx.scalar(1, dt), R.abs(x)))


@lowers("Mish")
def _mish(ctx: LowerContext) -> relax.Expr:
    x, dt = float_compute(ctx)
    cdt = "float32" if dt != "float64" else dt
    return cast_back(R.multiply(x, R.tanh(_softplus_expr(ctx, x, cdt))), dt)


@lowers("Gelu")
def _gelu(ctx: LowerContext) -> relax.Expr:
    x, dt = float_compute(ctx)
    cdt = "float32" if dt != "float64" else dt
    half, one = ctx.scalar(0.5, cdt), ctx.scalar(1.0, cdt)
    if ctx.attrs["approximate"] == "tanh":
        inner = R.multiply(
            ctx.scalar(math.sqrt(2 / math.pi), cdt),
            R.add(x, R.multiply(ctx.scalar(0.044715, cdt), R.multiply(x, R.multiply(x, x)))),
        )
        y = R.multiply(R.multiply(half, x), R.add(one, R.tanh(inner)))
    else:
        y = R.multiply(
            R.multiply(half, x),
            R.add(one, R.erf(R.multiply(x, ctx.scalar(1 / math.sqrt(2), cdt)))),
        )
    return cast_back(y, dt)


@lowers("Softmax", "LogSoftmax")
def _softmax(ctx: LowerContext) -> relax.Expr:
    x, dt = float_compute(ctx)
    axis = norm_axis(ctx.attrs["axis"], ctx.rank(0))
    fn = NN.softmax if ctx.node.op_type == "Softmax" else NN.log_softmax
    return cast_back(fn(x, axis=axis), dt)


@lowers("Hardmax")
def _hardmax(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    axis = norm_axis(ctx.attrs["axis"], xt.rank)
    depth = xt.shape[axis]
    if not isinstance(depth, int):
        ctx.fail("Hardmax needs a static size along its axis")
    idx = R.argmax(ctx.arg(0), axis=axis, keepdims=False)
    hot = ctx.emit(R.one_hot(idx, 1.0, 0.0, depth, axis))
    return R.astype(hot, str(xt.dtype))


@lowers("Shrink")
def _shrink(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    lam, bias = ctx.attrs["lambd"], ctx.attrs["bias"]
    if dt.is_float:
        low = R.add(x, ctx.scalar(bias, dt))
        high = R.subtract(x, ctx.scalar(bias, dt))
        zero = ctx.scalar(0, dt)
        lo_c, hi_c = ctx.scalar(-lam, dt), ctx.scalar(lam, dt)
        return R.where(R.less(x, lo_c), low, R.where(R.greater(x, hi_c), high, zero))
    xf = R.astype(x, "float64")
    y = R.where(
        R.less(xf, ctx.scalar(-lam, "float64")),
        R.add(xf, ctx.scalar(bias, "float64")),
        R.where(
            R.greater(xf, ctx.scalar(lam, "float64")),
            R.subtract(xf, ctx.scalar(bias, "float64")),
            ctx.scalar(0, "float64"),
        ),
    )
    return R.astype(y, str(dt))
