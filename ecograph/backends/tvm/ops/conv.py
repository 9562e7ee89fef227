"""Convolution lowerings: Conv, ConvTranspose and ConvInteger (`conv_setup`, `integer_conv`
are shared with QLinearConv).
"""

from __future__ import annotations

from typing import Any

from tvm import relax

from ecograph.backends.tvm.context import (
    NN,
    LowerContext,
    R,
    lowers,
    reshape_bias,
)

# ----------------------------------------------------------------- conv and pooling


def conv_pads(ctx: LowerContext, kernel: list[int], strides: list[int], dil: list[int]) -> list:
    from ecograph.ir.ops.convolution import explicit_pads

    spatial = ctx.in_type(0).shape[2:]
    auto_pad = ctx.attrs["auto_pad"]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and not all(isinstance(d, int) for d in spatial):
        ctx.fail("auto_pad SAME needs static spatial dims")
    static = tuple(d if isinstance(d, int) else 0 for d in spatial)
    return explicit_pads(static, kernel, strides, dil, ctx.attrs["pads"], auto_pad)


def conv_setup(ctx: LowerContext, weight: int = 1) -> tuple[Any, list[int], list[int], list]:
    """For a Conv-like node (weight at input `weight`): Relax's conv function for its rank,
    strides, dilations and explicit pads."""
    xt, wt = ctx.in_type(0), ctx.in_type(weight)
    n = xt.rank - 2
    kernel = ctx.attrs["kernel_shape"] or list(wt.shape[2:])
    strides = ctx.attrs["strides"] or [1] * n
    dil = ctx.attrs["dilations"] or [1] * n
    pads = conv_pads(ctx, kernel, strides, dil)
    fn = {1: NN.conv1d, 2: NN.conv2d, 3: NN.conv3d}.get(n)
    if fn is None:
        ctx.fail(f"{ctx.node.op_type} over {n} spatial dims is not supported")
    return fn, strides, dil, pads


@lowers("Conv")
def _conv(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    fn, strides, dil, pads = conv_setup(ctx)
    y = fn(
        ctx.arg(0),
        ctx.arg(1),
        strides=strides,
        padding=pads,
        dilation=dil,
        groups=ctx.attrs["group"],
    )
    if ctx.has(2):
        y = R.add(y, reshape_bias(ctx, ctx.arg(2), xt.rank))
    return y


@lowers("ConvTranspose")
def _conv_transpose(ctx: LowerContext) -> relax.Expr:
    from ecograph.ir.ops.convolution import conv_transpose_pads

    xt, wt = ctx.in_type(0), ctx.in_type(1)
    n = xt.rank - 2
    kernel = list(ctx.attrs["kernel_shape"] or wt.shape[2:])
    strides = list(ctx.attrs["strides"] or [1] * n)
    dil = list(ctx.attrs["dilations"] or [1] * n)
    out_pad = list(ctx.attrs["output_padding"] or [0] * n)
    _, pads = conv_transpose_pads(
        list(xt.shape[2:]),
        kernel,
        strides,
        dil,
        out_pad,
        ctx.attrs["pads"],
        ctx.attrs["output_shape"],
        ctx.attrs["auto_pad"],
    )
    if pads is None:
        ctx.fail("ConvTranspose with output_shape needs static spatial dims")
    fn = {1: NN.conv1d_transpose, 2: NN.conv2d_transpose, 3: NN.conv3d_transpose}.get(n)
    if fn is None:
        ctx.fail(f"ConvTranspose over {n} spatial dims is not supported")
    y = fn(
        ctx.arg(0),
        ctx.arg(1),
        strides=strides,
        padding=pads,
        output_padding=out_pad,
        dilation=dil,
        groups=ctx.attrs["group"],
    )
    if ctx.has(2):
        y = R.add(y, reshape_bias(ctx, ctx.arg(2), xt.rank))
    return y


def integer_conv(ctx: LowerContext, x: int, x_zp: int, w: int, w_zp: int) -> relax.Expr:
    """The int32 convolution of (input `x` - its zero point) and (weights `w` - theirs, per
    tensor or per output channel): ConvInteger, and QLinearConv before requantization."""
    wt = ctx.in_type(w)
    fn, strides, dil, pads = conv_setup(ctx, weight=w)
    xs = R.astype(ctx.arg(x), "int32")
    ws = R.astype(ctx.arg(w), "int32")
    if ctx.has(x_zp):
        xs = R.subtract(xs, R.astype(ctx.arg(x_zp), "int32"))
    if ctx.has(w_zp):
        zp = R.astype(ctx.arg(w_zp), "int32")
        if ctx.in_type(w_zp).rank == 1 and ctx.in_type(w_zp).shape[0] != 1:
            zp = reshape_bias(ctx, zp, wt.rank, axis=0)
        ws = R.subtract(ws, zp)
    return fn(
        ctx.emit(xs),
        ctx.emit(ws),
        strides=strides,
        padding=pads,
        dilation=dil,
        groups=ctx.attrs["group"],
        out_dtype="int32",
    )


@lowers("ConvInteger")
def _conv_integer(ctx: LowerContext) -> relax.Expr:
    return integer_conv(ctx, x=0, x_zp=2, w=1, w_zp=3)


# Ops that cannot lower to TVM at all, with the reason (reported by missing_lowerings users).
