"""Elementwise lowerings: unary math, binary arithmetic and comparisons, variadic
Max/Min/Sum/Mean, Where, Clip, Identity, Dropout (inference) and casts.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ecograph.backends.tvm.context import (
    LowerContext,
    R,
    carrier,
    lowers,
)
from ecograph.ir.dtypes import DType

# ------------------------------------------------------------------ elementwise

_UNARY = {
    "Abs": R.abs,
    "Neg": R.negative,
    "Exp": R.exp,
    "Log": R.log,
    "Sqrt": R.sqrt,
    "Floor": R.floor,
    "Ceil": R.ceil,
    "Sin": R.sin,
    "Cos": R.cos,
    "Tan": R.tan,
    "Asin": R.asin,
    "Acos": R.acos,
    "Atan": R.atan,
    "Sinh": R.sinh,
    "Cosh": R.cosh,
    "Asinh": R.asinh,
    "Acosh": R.acosh,
    "Atanh": R.atanh,
    "Tanh": R.tanh,
    "Sign": R.sign,
    "Sigmoid": R.sigmoid,
    "Erf": R.erf,
    "Not": R.logical_not,
    "BitwiseNot": R.bitwise_not,
    "IsNaN": R.isnan,
}


@lowers(*_UNARY)
def _unary(ctx: LowerContext) -> relax.Expr:
    fn = _UNARY[ctx.node.op_type]
    dtype = str(ctx.in_type(0).dtype)
    if dtype in ("float16", "bfloat16") and ctx.node.op_type not in ("Abs", "Neg", "Sign"):
        y = fn(R.astype(ctx.arg(0), "float32"))
        out = str(ctx.out_type().dtype)
        return y if out == "bool" else R.astype(y, out)
    return fn(ctx.arg(0))


@lowers("Round")
def _round(ctx: LowerContext) -> relax.Expr:
    # ONNX rounds half to even: x - 2*round(x/2) handles ties; simplest exact form below.
    x = ctx.arg(0)
    dtype = str(ctx.in_type(0).dtype)
    r = R.floor(R.add(x, ctx.scalar(0.5, dtype)))
    tie = R.equal(R.subtract(r, x), ctx.scalar(0.5, dtype))
    half = R.multiply(R.floor(R.multiply(r, ctx.scalar(0.5, dtype))), ctx.scalar(2.0, dtype))
    odd = R.not_equal(half, r)
    return R.where(R.logical_and(tie, odd), R.subtract(r, ctx.scalar(1.0, dtype)), r)


@lowers("Reciprocal")
def _reciprocal(ctx: LowerContext) -> relax.Expr:
    return R.divide(ctx.scalar(1, ctx.in_type(0).dtype), ctx.arg(0))


@lowers("Identity")
def _identity(ctx: LowerContext) -> relax.Expr:
    return ctx.arg(0)


@lowers("Dropout")
def _dropout(ctx: LowerContext) -> list[relax.Expr]:
    if ctx.has(2):
        mode = ctx.const(2)
        ratio = ctx.const(1) if ctx.has(1) else np.array(0.5)
        training = mode is None or bool(np.asarray(mode).reshape(-1)[0])
        # Training mode with ratio 0 drops nothing: deterministic, the same as inference.
        if training and (ratio is None or float(np.asarray(ratio).reshape(-1)[0]) != 0.0):
            ctx.fail(
                "Dropout in training mode (random masks) is not supported; inference only, "
                "or training_mode with a constant ratio of 0"
            )
    x = ctx.arg(0)
    mask = R.full(ctx.shape(ctx.in_type(0).shape), ctx.scalar(True, "bool"), "bool")
    return [x, mask]


@lowers("IsInf")
def _isinf(ctx: LowerContext) -> relax.Expr:
    x = ctx.arg(0)
    dtype = ctx.in_type(0).dtype
    pos, neg = ctx.attrs["detect_positive"], ctx.attrs["detect_negative"]
    inf = R.isinf(x)
    if pos and neg:
        return inf
    if not pos and not neg:
        return R.zeros_like(inf)
    sign = R.greater(x, ctx.scalar(0, dtype)) if pos else R.less(x, ctx.scalar(0, dtype))
    return R.logical_and(inf, sign)


@lowers("Clip")
def _clip(ctx: LowerContext) -> relax.Expr:
    out = ctx.arg(0)
    if ctx.has(1):
        lo = ctx.arg(1)
        out = R.where(R.less(out, lo), lo, out)
    if ctx.has(2):
        hi = ctx.arg(2)
        out = R.where(R.greater(out, hi), hi, out)
    return out


_BINARY = {
    "Add": R.add,
    "Sub": R.subtract,
    "Mul": R.multiply,
    "BitwiseAnd": R.bitwise_and,
    "BitwiseOr": R.bitwise_or,
    "BitwiseXor": R.bitwise_xor,
    "Equal": R.equal,
    "Less": R.less,
    "LessOrEqual": R.less_equal,
    "Greater": R.greater,
    "GreaterOrEqual": R.greater_equal,
    "And": R.logical_and,
    "Or": R.logical_or,
    "Xor": R.logical_xor,
}


@lowers(*_BINARY)
def _binary(ctx: LowerContext) -> relax.Expr:
    return _BINARY[ctx.node.op_type](ctx.arg(0), ctx.arg(1))


@lowers("Div")
def _div(ctx: LowerContext) -> relax.Expr:
    a, b = ctx.arg(0), ctx.arg(1)
    dt = ctx.in_type(0).dtype
    if dt.is_integer and dt.is_signed:
        # ONNX truncates toward zero; TVM's integer divide on tensors is floor division.
        q = R.floor_divide(a, b)
        r = R.subtract(a, R.multiply(q, b))
        adjust = R.logical_and(
            R.not_equal(r, ctx.scalar(0, dt)),
            R.logical_xor(R.less(a, ctx.scalar(0, dt)), R.less(b, ctx.scalar(0, dt))),
        )
        return R.where(adjust, R.add(q, ctx.scalar(1, dt)), q)
    if dt.is_integer:
        return R.floor_divide(a, b)
    return R.divide(a, b)


@lowers("Mod")
def _mod(ctx: LowerContext) -> relax.Expr:
    a, b = ctx.arg(0), ctx.arg(1)
    dt = ctx.in_type(0).dtype
    if dt.is_float:
        # C fmod: the remainder has the sign of the dividend; a finite dividend over an
        # infinite divisor is the dividend itself (the quotient formula would give nan).
        r = ctx.emit(R.subtract(a, R.multiply(R.trunc(R.divide(a, b)), b)))
        r = ctx.emit(R.where(R.logical_and(R.isinf(b), R.isfinite(a)), a, r))
        if ctx.attrs["fmod"]:
            return r
        # numpy / Python mod: the remainder takes the divisor's sign (zero included).
        zero = ctx.scalar(0, dt)
        wrong_sign = R.logical_and(
            R.not_equal(r, zero), R.logical_xor(R.less(r, zero), R.less(b, zero))
        )
        r = ctx.emit(R.where(wrong_sign, R.add(r, b), r))
        signed_zero = R.multiply(
            zero, R.where(R.less(b, zero), ctx.scalar(-1, dt), ctx.scalar(1, dt))
        )
        return R.where(R.equal(r, zero), signed_zero, r)
    if ctx.attrs["fmod"]:
        # fmod: the remainder has the sign of the dividend.
        r = R.floor_mod(a, b)
        fix = R.logical_and(
            R.not_equal(r, ctx.scalar(0, dt)),
            R.logical_xor(R.less(a, ctx.scalar(0, dt)), R.less(b, ctx.scalar(0, dt))),
        )
        return R.where(fix, R.subtract(r, b), r)
    return R.floor_mod(a, b)


@lowers("Pow")
def _pow(ctx: LowerContext) -> relax.Expr:
    x, y = ctx.arg(0), ctx.arg(1)
    dt = str(ctx.in_type(0).dtype)
    if ctx.in_type(0).dtype.is_integer:
        # Exact integer power by repeated squaring would need a loop; float64 is exact to 2**53.
        xf, yf = R.astype(x, "float64"), R.astype(y, "float64")
        return R.astype(R.round(R.power(xf, yf)), dt)
    if str(ctx.in_type(1).dtype) != dt:
        y = R.astype(y, dt)
    return R.power(x, y)


@lowers("BitShift")
def _bit_shift(ctx: LowerContext) -> relax.Expr:
    x, y = ctx.arg(0), ctx.arg(1)
    if ctx.attrs["direction"] == "LEFT":
        return R.left_shift(x, y)
    return R.right_shift(x, y)


@lowers("Max", "Min", "Sum", "Mean")
def _variadic(ctx: LowerContext) -> relax.Expr:
    op = ctx.node.op_type
    fn = {"Max": R.maximum, "Min": R.minimum, "Sum": R.add, "Mean": R.add}[op]
    out = ctx.arg(0)
    for i in range(1, len(ctx.args)):
        out = fn(out, ctx.arg(i))
    if op == "Mean":
        out = R.divide(out, ctx.scalar(len(ctx.args), ctx.in_type(0).dtype))
    return out


@lowers("Where")
def _where(ctx: LowerContext) -> relax.Expr:
    return R.where(ctx.arg(0), ctx.arg(1), ctx.arg(2))


# --------------------------------------------------------------- casts


def _cast_to(ctx: LowerContext, x: relax.Expr, src: DType, dst: DType) -> relax.Expr:
    if src == dst:
        return x
    if dst == DType.BOOL:
        return R.not_equal(x, ctx.scalar(0, src))
    if dst in (DType.INT4, DType.UINT4):
        # Casts to 4 bits wrap modulo 16 (ONNX reference and ml_dtypes alike).
        v = R.astype(R.trunc(x) if src.is_float else x, "int32")
        if dst == DType.UINT4:
            return R.astype(R.bitwise_and(v, ctx.scalar(15, "int32")), "uint8")
        wrapped = R.bitwise_and(R.add(v, ctx.scalar(8, "int32")), ctx.scalar(15, "int32"))
        return R.astype(R.subtract(wrapped, ctx.scalar(8, "int32")), "int8")
    if src.is_float and dst.is_integer:
        # ONNX (and numpy) truncate toward zero; saturating/out-of-range values are
        # implementation-defined and not compared.
        return R.astype(R.trunc(x), carrier(dst))
    return R.astype(x, carrier(dst))


@lowers("Cast")
def _cast(ctx: LowerContext) -> relax.Expr:
    return _cast_to(ctx, ctx.arg(0), ctx.in_type(0).dtype, ctx.out_type().dtype)


@lowers("CastLike")
def _cast_like(ctx: LowerContext) -> relax.Expr:
    return _cast_to(ctx, ctx.arg(0), ctx.in_type(0).dtype, ctx.in_type(1).dtype)
