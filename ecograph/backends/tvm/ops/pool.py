"""Pooling lowerings: MaxPool (with its Indices output), AveragePool and the global pools
(`pool_geometry` is shared with LpPool).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tvm import relax
from tvm import tirx as tir

from ecograph.backends.tvm.context import (
    NN,
    LowerContext,
    R,
    lowers,
)
from ecograph.backends.tvm.ops.conv import conv_pads


def pool_geometry(ctx: LowerContext) -> tuple[list[int], list[int], list[int], list]:
    """A pooling node's kernel, strides, dilations and explicit pads."""
    n = ctx.in_type(0).rank - 2
    kernel = list(ctx.attrs["kernel_shape"])
    strides = list(ctx.attrs["strides"] or [1] * n)
    dil = list(ctx.attrs["dilations"] or [1] * n)
    return kernel, strides, dil, list(conv_pads(ctx, kernel, strides, dil))  # a fresh list


def _pool(ctx: LowerContext, kind: str) -> relax.Expr:
    n = ctx.in_type(0).rank - 2
    kernel, strides, dil, pads = pool_geometry(ctx)
    ceil = bool(ctx.attrs["ceil_mode"])
    fns = {
        "max": {1: NN.max_pool1d, 2: NN.max_pool2d, 3: NN.max_pool3d},
        "avg": {1: NN.avg_pool1d, 2: NN.avg_pool2d, 3: NN.avg_pool3d},
    }[kind]
    fn = fns.get(n)
    if fn is None:
        ctx.fail(f"pooling over {n} spatial dims is not supported")
    include = bool(ctx.attrs.get("count_include_pad", 0))
    return fn(
        ctx.arg(0),
        pool_size=kernel,
        strides=strides,
        padding=pads,
        dilation=dil,
        ceil_mode=ceil,
        count_include_pad=include,
    )


@lowers("MaxPool")
def _max_pool(ctx: LowerContext) -> list[relax.Expr | None]:
    # storage_order only numbers the Indices output.
    wants_indices = len(ctx.node.outputs) > 1 and ctx.node.outputs[1].has_uses()
    return [_pool(ctx, "max"), _max_pool_indices(ctx) if wants_indices else None]


def _max_pool_indices(ctx: LowerContext) -> relax.Expr:
    """MaxPool's Indices: the flat input position of each window's first maximum (row-major,
    or column-major over the two spatial axes with storage_order=1), padding never chosen."""
    from tvm import te

    xt = ctx.in_type(0)
    if not xt.is_static:
        ctx.fail("MaxPool's Indices output needs static input dims")
    n = xt.rank - 2
    kernel, strides, dil, pads = pool_geometry(ctx)
    spatial = [int(d) for d in xt.static_shape()[2:]]
    out_shape = [int(d) for d in ctx.out_type(1).static_shape()]
    column_major = bool(ctx.attrs["storage_order"]) and n == 2
    window = math.prod(kernel)

    def coords(o: Sequence[Any], flat: Any) -> list[Any]:
        ks, rest = [], flat
        for k in reversed(kernel):
            ks.append(tir.floormod(rest, k))
            rest = tir.floordiv(rest, k)
        ks.reverse()
        return [o[i] * strides[i] - pads[i] + ks[i] * dil[i] for i in range(n)]

    def compute(x: Any) -> Any:
        def combine(a: Any, b: Any) -> Any:
            take_b = tir.any(b[1] > a[1], tir.all(b[1] == a[1], b[0] < a[0]))
            return tir.Select(take_b, b[0], a[0]), tir.Select(take_b, b[1], a[1])

        def identity(t0: Any, t1: Any) -> Any:
            return tir.const(window, t0), tir.min_value(t1)

        argmax = te.comm_reducer(combine, identity, name="window_argmax")
        r = te.reduce_axis((0, window), "w")

        def body(*o: Any) -> Any:
            c = coords(o[2:], r)
            inside = tir.all(*[tir.all(c[i] >= 0, c[i] < spatial[i]) for i in range(n)])
            val = tir.if_then_else(inside, x[(o[0], o[1], *c)], tir.min_value(x.dtype))
            return argmax((r.var.astype("int64"), val), axis=r)

        best, _ = te.compute(out_shape, body, name="max_pool_argmax")

        def index(*o: Any) -> Any:
            c = [v.astype("int64") for v in coords(o[2:], best[o])]
            if column_major:
                local = c[0] + c[1] * spatial[0]
            else:
                local = c[0]
                for i in range(1, n):
                    local = local * spatial[i] + c[i]
            channel = o[0].astype("int64") * xt.static_shape()[1] + o[1].astype("int64")
            return channel * math.prod(spatial) + local

        return te.compute(out_shape, index, name="max_pool_indices")

    return ctx.bb.emit_te(compute, ctx.arg(0), primfunc_name_hint="max_pool_indices")


@lowers("AveragePool")
def _average_pool(ctx: LowerContext) -> relax.Expr:
    return _pool(ctx, "avg")


@lowers("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: LowerContext) -> relax.Expr:
    axes = list(range(2, ctx.rank(0)))
    fn = R.mean if ctx.node.op_type == "GlobalAveragePool" else R.max
    return fn(ctx.arg(0), axis=axes, keepdims=True)
