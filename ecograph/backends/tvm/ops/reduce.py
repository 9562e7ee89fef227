"""Reduction lowerings: the Reduce* ops, ArgMax/ArgMin and CumSum."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax

from ecograph.backends.tvm.context import (
    LowerContext,
    R,
    lowers,
    norm_axes,
    norm_axis,
)
from ecograph.ir.dtypes import DType

# ----------------------------------------------------------------- reductions


def _reduce_axes(ctx: LowerContext) -> list[int] | None:
    """The reduced axes, or None when the op is a no-op (empty axes with noop flag)."""
    rank = ctx.rank(0)
    axes = ctx.ints(1, "axes") if ctx.has(1) else None
    if not axes:
        if ctx.attrs["noop_with_empty_axes"]:
            return None
        return list(range(rank))
    return norm_axes(axes, rank)


@lowers(
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)
def _reduce(ctx: LowerContext) -> relax.Expr:
    op = ctx.node.op_type
    axes = _reduce_axes(ctx)
    x = ctx.arg(0)
    dt = ctx.in_type(0).dtype
    if axes is None:
        return x
    keep = bool(ctx.attrs["keepdims"])
    if op in ("ReduceMax", "ReduceMin"):
        out = ctx.out_type()
        if any(ctx.in_type(0).shape[a] == 0 for a in axes):
            # Over an empty set: the lowest (max) or highest (min) value of the dtype.
            info = np.finfo if dt.is_float else np.iinfo
            if dt == DType.BOOL:
                fill: Any = op == "ReduceMin"
            elif dt.is_float:
                fill = -np.inf if op == "ReduceMax" else np.inf
            else:
                fill = info(dt.numpy).min if op == "ReduceMax" else info(dt.numpy).max
            return R.broadcast_to(ctx.scalar(fill, dt), ctx.shape(out.shape))
        if dt == DType.BOOL:
            fn = R.max if op == "ReduceMax" else R.min
            return R.astype(fn(R.astype(x, "uint8"), axis=axes, keepdims=keep), "bool")
    if op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"):
        fn = {
            "ReduceSum": R.sum,
            "ReduceMean": R.mean,
            "ReduceMax": R.max,
            "ReduceMin": R.min,
            "ReduceProd": R.prod,
        }[op]
        return fn(x, axis=axes, keepdims=keep)
    if op == "ReduceL1":
        return R.sum(R.abs(x), axis=axes, keepdims=keep)
    if op == "ReduceSumSquare":
        return R.sum(R.multiply(x, x), axis=axes, keepdims=keep)
    if op == "ReduceL2":
        y = R.sqrt(R.sum(R.multiply(x, x), axis=axes, keepdims=keep))
        return y if dt.is_float else R.astype(R.round(y), str(dt))
    if op == "ReduceLogSum":
        return R.log(R.sum(x, axis=axes, keepdims=keep))
    m = ctx.emit(R.max(x, axis=axes, keepdims=True))
    s = R.log(R.sum(R.exp(R.subtract(x, m)), axis=axes, keepdims=True))
    y = R.add(s, m)
    if not keep:
        y = R.squeeze(y, axes)
    return y


@lowers("ArgMax", "ArgMin")
def _arg(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    axis = norm_axis(ctx.attrs["axis"], xt.rank)
    keep = bool(ctx.attrs["keepdims"])
    fn = R.argmax if ctx.node.op_type == "ArgMax" else R.argmin
    x = ctx.arg(0)
    if not ctx.attrs["select_last_index"]:
        return R.astype(fn(x, axis=axis, keepdims=keep), "int64")
    n = xt.shape[axis]
    if not isinstance(n, int):
        ctx.fail("select_last_index needs a static size along the axis")
    flipped = R.flip(x, axis)
    idx = R.astype(fn(flipped, axis=axis, keepdims=keep), "int64")
    return R.subtract(ctx.scalar(n - 1, "int64"), idx)


@lowers("CumSum")
def _cumsum(ctx: LowerContext) -> relax.Expr:
    axis_v = ctx.ints(1, "axis")
    assert axis_v is not None
    axis = norm_axis(axis_v[0], ctx.rank(0))
    x = ctx.arg(0)
    if ctx.attrs["reverse"]:
        x = R.flip(x, axis)
    y = R.cumsum(x, axis=axis, exclusive=bool(ctx.attrs["exclusive"]))
    if ctx.attrs["reverse"]:
        y = R.flip(y, axis)
    return y
