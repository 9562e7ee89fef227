"""Normalization lowerings: BatchNormalization (inference and training), Layer/RMS/Instance/
Group normalization, LRN, MeanVarianceNormalization and LpNormalization.
"""

from __future__ import annotations

import math

from tvm import relax

from ecograph.backends.tvm.context import (
    NN,
    LowerContext,
    R,
    lowers,
    norm_axes,
    norm_axis,
    reshape_bias,
)
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType

# ----------------------------------------------------------------- normalization


@lowers("BatchNormalization")
def _batch_norm(ctx: LowerContext) -> relax.Expr | list[relax.Expr]:
    rank = ctx.rank(0)
    dt = ctx.in_type(0).dtype
    x = ctx.arg(0)
    if ctx.attrs["training_mode"]:
        # Batch statistics (population variance, in float64 like the reference); the running
        # statistics blend in with `momentum`.
        acc = "float64"
        axes = [0, *range(2, rank)]
        x64 = ctx.emit(R.astype(x, acc))
        batch_mean = ctx.emit(R.mean(x64, axis=axes))
        centered = ctx.emit(R.subtract(x64, reshape_bias(ctx, batch_mean, rank)))
        batch_var = ctx.emit(R.mean(R.multiply(centered, centered), axis=axes))
        m = ctx.attrs["momentum"]
        outs: list[relax.Expr] = []
        for i, stat in ((3, batch_mean), (4, batch_var)):
            old = R.astype(ctx.arg(i), acc)
            blended = R.add(
                R.multiply(old, ctx.scalar(m, acc)), R.multiply(stat, ctx.scalar(1 - m, acc))
            )
            outs.append(R.astype(blended, str(ctx.in_type(i).dtype)))
        inv = R.divide(
            R.astype(reshape_bias(ctx, ctx.arg(1), rank), acc),
            R.sqrt(
                R.add(reshape_bias(ctx, batch_var, rank), ctx.scalar(ctx.attrs["epsilon"], acc))
            ),
        )
        y = R.add(R.multiply(centered, inv), R.astype(reshape_bias(ctx, ctx.arg(2), rank), acc))
        return [R.astype(y, str(dt)), *outs]
    scale, bias, mean, var = (reshape_bias(ctx, ctx.arg(i), rank) for i in range(1, 5))
    inv = R.divide(scale, R.sqrt(R.add(var, ctx.scalar(ctx.attrs["epsilon"], dt))))
    return R.add(R.multiply(R.subtract(x, mean), inv), bias)


@lowers("LayerNormalization")
def _layer_norm(ctx: LowerContext) -> list[relax.Expr]:
    rank = ctx.rank(0)
    axis = norm_axis(ctx.attrs["axis"], rank)
    axes = list(range(axis, rank))
    stash = str(DType.from_onnx(ctx.attrs["stash_type"]))
    dt = str(ctx.in_type(0).dtype)
    x = ctx.arg(0)
    xs = x if dt == stash else R.astype(x, stash)
    mean = ctx.emit(R.mean(xs, axis=axes, keepdims=True))
    centered = ctx.emit(R.subtract(xs, mean))
    var = R.mean(R.multiply(centered, centered), axis=axes, keepdims=True)
    inv = ctx.emit(
        R.divide(ctx.scalar(1, stash), R.sqrt(R.add(var, ctx.scalar(ctx.attrs["epsilon"], stash))))
    )
    y = R.multiply(centered, inv)
    if dt != stash:
        y = R.astype(y, dt)
    y = R.multiply(y, ctx.arg(1))
    if ctx.has(2):
        y = R.add(y, ctx.arg(2))
    return [y, mean, inv]


@lowers("RMSNormalization")
def _rms_norm(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    axes = list(range(norm_axis(ctx.attrs["axis"], rank), rank))
    stash = str(DType.from_onnx(ctx.attrs["stash_type"]))
    dt = str(ctx.in_type(0).dtype)
    x = ctx.arg(0)
    xs = x if dt == stash else R.astype(x, stash)
    ms = R.mean(R.multiply(xs, xs), axis=axes, keepdims=True)
    y = R.divide(xs, R.sqrt(R.add(ms, ctx.scalar(ctx.attrs["epsilon"], stash))))
    if dt != stash:
        y = R.astype(y, dt)
    return R.multiply(y, ctx.arg(1))


@lowers("InstanceNormalization")
def _instance_norm(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    dt = ctx.in_type(0).dtype
    axes = list(range(2, rank))
    x = ctx.arg(0)
    mean = R.mean(x, axis=axes, keepdims=True)
    centered = ctx.emit(R.subtract(x, mean))
    var = R.mean(R.multiply(centered, centered), axis=axes, keepdims=True)
    y = R.divide(centered, R.sqrt(R.add(var, ctx.scalar(ctx.attrs["epsilon"], dt))))
    return R.add(
        R.multiply(y, reshape_bias(ctx, ctx.arg(1), rank)), reshape_bias(ctx, ctx.arg(2), rank)
    )


@lowers("LRN")
def _lrn(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    c = xt.shape[1]
    if not isinstance(c, int):
        ctx.fail("LRN needs a static channel count")
    size = ctx.attrs["size"]
    lo, hi = (size - 1) // 2, math.ceil((size - 1) / 2)
    dt = xt.dtype
    x = ctx.arg(0)
    sq = ctx.emit(R.multiply(x, x))
    width = [0] * (2 * xt.rank)
    width[2], width[3] = lo, hi
    padded = ctx.emit(NN.pad(sq, width, "constant", 0.0))
    total = None
    for i in range(size):
        part = R.strided_slice(padded, [1], [i], [i + c], assume_inbound=True)
        total = part if total is None else R.add(total, part)
    denom = R.add(
        ctx.scalar(ctx.attrs["bias"], dt),
        R.multiply(ctx.scalar(ctx.attrs["alpha"] / size, dt), total),
    )
    return R.divide(x, R.power(denom, ctx.scalar(ctx.attrs["beta"], dt)))


@lowers("GroupNormalization")
def _group_norm(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    g = ctx.attrs["num_groups"]
    stash = str(DType.from_onnx(ctx.attrs["stash_type"]))
    dt = str(xt.dtype)
    x = ctx.arg(0) if dt == stash else R.astype(ctx.arg(0), stash)
    n = xt.shape[0]
    rest = symbolic.floordiv(symbolic.product(xt.shape[1:]), g)
    xs = ctx.emit(R.reshape(x, ctx.shape([n, g, rest])))
    mean = ctx.emit(R.mean(xs, axis=[2], keepdims=True))
    centered = ctx.emit(R.subtract(xs, mean))
    var = R.mean(R.multiply(centered, centered), axis=[2], keepdims=True)
    normed = R.divide(centered, R.sqrt(R.add(var, ctx.scalar(ctx.attrs["epsilon"], stash))))
    normed = R.reshape(normed, ctx.shape(xt.shape))
    scale, bias = ctx.arg(1), ctx.arg(2)
    if str(ctx.in_type(1).dtype) != stash:
        scale, bias = R.astype(scale, stash), R.astype(bias, stash)
    y = R.add(
        R.multiply(normed, reshape_bias(ctx, scale, xt.rank)), reshape_bias(ctx, bias, xt.rank)
    )
    return y if dt == stash else R.astype(y, dt)


@lowers("MeanVarianceNormalization")
def _mvn(ctx: LowerContext) -> relax.Expr:
    x = ctx.arg(0)
    dt = ctx.in_type(0).dtype
    axes = norm_axes(ctx.attrs["axes"], ctx.rank(0))
    mean = ctx.emit(R.mean(x, axis=axes, keepdims=True))
    sq = R.mean(R.multiply(x, x), axis=axes, keepdims=True)
    std = R.sqrt(R.maximum(R.subtract(sq, R.multiply(mean, mean)), ctx.scalar(0, dt)))
    return R.divide(R.subtract(x, mean), R.add(std, ctx.scalar(1e-9, dt)))


@lowers("LpNormalization")
def _lp_norm(ctx: LowerContext) -> relax.Expr:
    x = ctx.arg(0)
    axis = norm_axis(ctx.attrs["axis"], ctx.rank(0))
    if ctx.attrs["p"] == 1:
        norm = R.sum(R.abs(x), axis=[axis], keepdims=True)
    else:
        norm = R.sqrt(R.sum(R.multiply(x, x), axis=[axis], keepdims=True))
    dt = ctx.in_type(0).dtype
    # x / norm where norm is 0 gives 0 (the kernel's convention for empty directions).
    safe = R.where(R.equal(norm, ctx.scalar(0, dt)), ctx.scalar(1, dt), norm)
    return R.divide(x, safe)
