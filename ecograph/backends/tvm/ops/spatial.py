"""TVM lowerings of spatial ops: DeformConv, Col2Im, CenterCropPad, MaxUnpool, LpPool and
ReverseSequence.

- DeformConv (2-D): one TE kernel samples the input bilinearly (zero outside, in the order
  onnx.reference's GridSample uses: along width, then height) at every kernel tap moved by its
  offset, times the mask; the columns then meet the weights in one grouped Relax matmul.
- Col2Im: one TE reduction that gathers, for each image pixel, the column entries of every
  kernel position that lands on it (a gather form of the reference's scatter-add).
- CenterCropPad: one TE kernel reading `x[i + trunc((cur - size) / 2)]` (zero outside), which
  is the crop start when cropping and minus the front pad when padding.
- MaxUnpool: `scatter_elements` into a flat zero tensor of the inferred shape; with
  `output_shape`, a TE kernel puts that tensor at the front of a zero tensor of that shape.
- LpPool: `|x|^p`, explicit zero padding (plus the extra right padding ceil_mode needs), an
  unpadded average pool times the window size, then the 1/p power.
- ReverseSequence: Relax `where`/`gather_elements` on source indices computed from the
  `sequence_lens` tensor at run time.

Shape inputs (Col2Im's image_shape/block_shape, CenterCropPad's shape, MaxUnpool's
output_shape) are folded when constant or statically known; a graph-input shape tensor becomes
Relax symbolic dims bound at run time (`tensor_to_shape` + `match_cast`), so the output shape
is whatever the values say, as in the reference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tvm import relax, te
from tvm import tirx as tir

from ecograph.backends.tvm.context import NN, LowerContext, R, lowers
from ecograph.backends.tvm.ops.pool import pool_geometry
from ecograph.ir import symbolic
from ecograph.ir.registry import symbolic_value

_COUNTER = [0]


# ------------------------------------------------------------------ helpers


def _compute_dtype(dtype: str) -> str:
    return "float64" if dtype == "float64" else "float32"


def _as(ctx: LowerContext, i: int, dtype: str) -> relax.Expr:
    x = ctx.arg(i)
    return x if str(ctx.in_type(i).dtype) == dtype else ctx.emit(R.astype(x, dtype))


def _shape_values(
    ctx: LowerContext, i: int, what: str, out_dims: list[Any] | None = None
) -> list[Any]:
    """Input `i` (a 1-D int tensor) as dims: ints when constant, the IR's symbolic dims when it
    is static shape math, else run-time dims (tir vars bound by a match_cast).

    `out_dims`: the IR's output dims these values become, one per value; where one is a bare
    symbol the run-time value binds that symbol itself, so the output needs no second
    match_cast (a CUDA build cannot plan memory for a tensor typed by vars bound later)."""
    arr = ctx.const(i)
    if arr is not None:
        return [int(v) for v in np.asarray(arr).reshape(-1)]
    v = ctx.node.input(i)
    assert v is not None
    sym = symbolic_value(v)
    if sym is not None:
        return [ctx.dim(d) for d in sym]
    t = ctx.in_type(i)
    if t.rank != 1 or not isinstance(t.shape[0], int):
        ctx.fail(f"{what} (input {i}) must be a 1-D tensor of static length")
    n = int(t.shape[0])
    x = ctx.arg(i)
    if str(t.dtype) != "int64":
        x = ctx.emit(R.astype(x, "int64"))
    shape = ctx.emit(R.tensor_to_shape(x))
    _COUNTER[0] += 1
    if out_dims is not None and len(out_dims) != n:
        out_dims = None
    dims = [
        ctx.dim(d)
        if out_dims is not None and isinstance(d, str) and symbolic.is_symbol_name(d)
        else tir.Var(f"{what}{_COUNTER[0]}_{k}", "int64")
        for k, d in enumerate(out_dims or [None] * n)
    ]
    ctx.bb.match_cast(shape, relax.ShapeType(dims))
    return dims


def _i64(v: Any) -> Any:
    return tir.IntImm("int64", v) if isinstance(v, int) else v


def _te_dims(t: te.Tensor) -> list[Any]:
    return list(t.shape)


# ------------------------------------------------------------------ DeformConv


@lowers("DeformConv")
def _deform_conv(ctx: LowerContext) -> relax.Expr:
    xt, wt = ctx.in_type(0), ctx.in_type(1)
    if xt.rank != 4:
        ctx.fail(f"only 2-D DeformConv is supported (input X has rank {xt.rank})")
    kernel = list(ctx.attrs["kernel_shape"] or wt.shape[2:])
    if not all(isinstance(k, int) for k in kernel):
        ctx.fail("the kernel shape (W's spatial dims or kernel_shape) must be static")
    kh, kw = (int(k) for k in kernel)
    sh, sw = ctx.attrs["strides"] or [1, 1]
    dh, dw = ctx.attrs["dilations"] or [1, 1]
    pads = ctx.attrs["pads"] or [0, 0, 0, 0]
    group, og = int(ctx.attrs["group"]), int(ctx.attrs["offset_group"])
    c_in, oc, cg = xt.shape[1], wt.shape[0], wt.shape[1]
    if not all(isinstance(d, int) for d in (c_in, oc, cg)):
        ctx.fail("channel counts (X dim 1, W dims 0 and 1) must be static")
    if c_in != cg * group or oc % group or c_in % og:
        ctx.fail(f"channels do not split: C={c_in}, W={wt.shape}, group={group}, "
                 f"offset_group={og}")  # fmt: skip
    dtype = str(xt.dtype)
    cdt = _compute_dtype(dtype)
    x, w, off = _as(ctx, 0, cdt), _as(ctx, 1, cdt), _as(ctx, 2, cdt)
    mask = _as(ctx, 4, cdt) if ctx.has(4) else None
    c_per_og = c_in // og
    top, left = pads[0], pads[1]

    def sample(xs: te.Tensor, offs: te.Tensor, *rest: te.Tensor) -> te.Tensor:
        n_, _, hh, ww = _te_dims(xs)
        oh, ow = _te_dims(offs)[2:]
        zero = tir.const(0, cdt)
        one = tir.const(1, cdt)

        def at(n: Any, c: Any, yy: Any, xx: Any) -> Any:
            inside = tir.all(yy >= 0, yy < hh, xx >= 0, xx < ww)
            yc = tir.max(tir.min(yy, hh - 1), 0)
            xc = tir.max(tir.min(xx, ww - 1), 0)
            return tir.if_then_else(inside, xs[n, c, yc, xc], zero)

        def f(n: Any, c: Any, a: Any, b: Any, i: Any, j: Any) -> Any:
            k = (tir.floordiv(c, c_per_og) * kh + a) * kw + b
            base_y = (i * sh + a * dh - top).astype(cdt)
            base_x = (j * sw + b * dw - left).astype(cdt)
            y = base_y + offs[n, k * 2, i, j]
            xx = base_x + offs[n, k * 2 + 1, i, j]
            y0f, x0f = tir.floor(y), tir.floor(xx)
            fy, fx = y - y0f, xx - x0f
            y0, x0 = y0f.astype("int64"), x0f.astype("int64")
            row0 = (one - fx) * at(n, c, y0, x0) + fx * at(n, c, y0, x0 + 1)
            row1 = (one - fx) * at(n, c, y0 + 1, x0) + fx * at(n, c, y0 + 1, x0 + 1)
            v = (one - fy) * row0 + fy * row1
            if rest:
                v = v * rest[0][n, k, i, j]
            return v

        return te.compute((n_, c_in, kh, kw, oh, ow), f, name="deform_sample")

    tensors = [x, off] + ([mask] if mask is not None else [])
    cols = ctx.bb.emit_te(sample, *tensors, primfunc_name_hint="deform_conv_sample")
    ot = ctx.out_type()
    n_dim, oh_dim, ow_dim = ctx.dim(ot.shape[0]), ctx.dim(ot.shape[2]), ctx.dim(ot.shape[3])
    cols = ctx.emit(R.reshape(cols, [n_dim, group, cg * kh * kw, oh_dim * ow_dim]))
    wm = ctx.emit(R.reshape(w, [1, group, oc // group, cg * kh * kw]))
    y = ctx.emit(R.matmul(wm, cols))  # (N, group, oc/group, OH*OW)
    y = ctx.emit(R.reshape(y, [n_dim, oc, oh_dim, ow_dim]))
    if ctx.has(3):
        y = ctx.emit(R.add(y, R.reshape(_as(ctx, 3, cdt), [1, oc, 1, 1])))
    return y if cdt == dtype else R.astype(y, dtype)


# ------------------------------------------------------------------ Col2Im


@lowers("Col2Im")
def _col2im(ctx: LowerContext) -> relax.Expr:
    out_shape = list(ctx.out_type().shape)
    image = _shape_values(ctx, 1, "image_shape", out_shape[2:])
    block = _shape_values(ctx, 2, "block_shape")
    n = len(image)
    if len(block) != n:
        ctx.fail(f"image_shape has {n} dims but block_shape {len(block)}")
    strides = list(ctx.attrs["strides"] or [1] * n)
    dil = list(ctx.attrs["dilations"] or [1] * n)
    pads = list(ctx.attrs["pads"] or [0] * (2 * n))
    if len(strides) != n or len(dil) != n or len(pads) != 2 * n:
        ctx.fail(f"strides/dilations/pads do not match the {n} image dims")
    image = [_i64(d) for d in image]
    block = [_i64(d) for d in block]
    ktotal = _prod(block)
    cols = [
        tir.floordiv(image[i] + (pads[i] + pads[i + n]) - (dil[i] * (block[i] - 1) + 1),
                     strides[i]) + 1
        for i in range(n)
    ]  # fmt: skip

    def f(data: te.Tensor) -> te.Tensor:
        nb, ck, length = _te_dims(data)
        rs = [te.reduce_axis((0, block[i]), name=f"k{i}") for i in range(n)]

        def body(b: Any, c: Any, *pix: Any) -> Any:
            conds, kflat, lflat = [], tir.IntImm("int64", 0), tir.IntImm("int64", 0)
            for i in range(n):
                t = pix[i] + pads[i] - rs[i] * dil[i]
                q = tir.floordiv(t, strides[i])
                conds += [t >= 0, tir.floormod(t, strides[i]) == 0, q < cols[i]]
                kflat = kflat * block[i] + rs[i]
                lflat = lflat * cols[i] + tir.max(tir.min(q, cols[i] - 1), 0)
            chan = c * ktotal + kflat
            lflat = tir.max(tir.min(lflat, length - 1), 0)
            val = tir.if_then_else(tir.all(*conds), data[b, chan, lflat], tir.const(0, data.dtype))
            return te.sum(val, axis=rs)

        return te.compute((nb, tir.floordiv(ck, ktotal), *image), body, name="col2im")

    return ctx.bb.emit_te(f, ctx.arg(0), primfunc_name_hint="col2im")


def _prod(dims: list[Any]) -> Any:
    out: Any = tir.IntImm("int64", 1)
    for d in dims:
        out = out * d
    return out


# --------------------------------------------------------------- CenterCropPad


@lowers("CenterCropPad")
def _center_crop_pad(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    axes = ctx.attrs["axes"]
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    if len(set(axes)) != len(axes) or not all(0 <= a < rank for a in axes):
        ctx.fail(f"axes {ctx.attrs['axes']} are out of range or repeated for rank {rank}")
    out_shape = ctx.out_type().shape
    sizes = _shape_values(ctx, 1, "shape", [out_shape[a] for a in axes])
    if len(axes) != len(sizes):
        ctx.fail(f"shape has {len(sizes)} values for {len(axes)} axes")
    want = dict(zip(axes, (_i64(s) for s in sizes), strict=True))

    def f(x: te.Tensor) -> te.Tensor:
        cur = _te_dims(x)
        out_shape = [want.get(a, cur[a]) for a in range(rank)]
        starts = {a: tir.truncdiv(cur[a] - want[a], 2) for a in want}

        def body(*idx: Any) -> Any:
            src, conds = list(idx), []
            for a, s in starts.items():
                p = idx[a] + s
                conds += [p >= 0, p < cur[a]]
                src[a] = tir.max(tir.min(p, cur[a] - 1), 0)
            if not conds:
                return x[tuple(src)]
            return tir.if_then_else(tir.all(*conds), x[tuple(src)], tir.const(0, x.dtype))

        return te.compute(out_shape, body, name="center_crop_pad")

    return ctx.bb.emit_te(f, ctx.arg(0), primfunc_name_hint="center_crop_pad")


# ------------------------------------------------------------------ MaxUnpool


@lowers("MaxUnpool")
def _max_unpool(ctx: LowerContext) -> relax.Expr:
    from ecograph.ir.ops.pooling import unpool_shape

    xt = ctx.in_type(0)
    inferred = [ctx.dim(d) for d in unpool_shape(list(xt.shape), ctx.attrs)]
    total = _prod(inferred)
    out_dims = None
    if ctx.has(2):
        # Bound first: a CUDA build plans the scatter's buffers ahead and needs these dims then.
        shape = _shape_values(ctx, 2, "output_shape", list(ctx.out_type().shape))
        out_dims = [_i64(d) for d in shape]
        if len(out_dims) != xt.rank:
            ctx.fail(f"output_shape has {len(out_dims)} values for an input of rank {xt.rank}")
    dtype = str(xt.dtype)
    zeros = ctx.emit(R.zeros(relax.ShapeExpr([total]), dtype))
    idx = ctx.arg(1)
    if str(ctx.in_type(1).dtype) != "int64":
        idx = ctx.emit(R.astype(idx, "int64"))
    # TOPI's scatter_elements shifts negative indices by the size, as numpy indexing does;
    # repeated indices keep the last update (it scatters serially), as the reference does.
    idx = ctx.emit(R.reshape(idx, [-1]))
    flat = ctx.emit(R.scatter_elements(zeros, idx, R.reshape(ctx.arg(0), [-1]), axis=0))
    y = ctx.emit(R.reshape(flat, relax.ShapeExpr(inferred)))
    if out_dims is None:
        return y

    def f(src: te.Tensor) -> te.Tensor:
        have = _te_dims(src)

        def body(*i: Any) -> Any:
            inside = tir.all(*[i[a] < have[a] for a in range(len(have))])
            at = [tir.min(i[a], have[a] - 1) for a in range(len(have))]
            return tir.if_then_else(inside, src[tuple(at)], tir.const(0, src.dtype))

        return te.compute(out_dims, body, name="max_unpool_place")

    return ctx.bb.emit_te(f, y, primfunc_name_hint="max_unpool_place")


# --------------------------------------------------------------------- LpPool


@lowers("LpPool")
def _lp_pool(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    n = xt.rank - 2
    kernel, strides, dil, pads = pool_geometry(ctx)
    pool = {1: NN.avg_pool1d, 2: NN.avg_pool2d, 3: NN.avg_pool3d}.get(n)
    if pool is None:
        ctx.fail(f"LpPool over {n} spatial dims is not supported")
    spatial = list(xt.shape[2:])
    out_sp: list[int] | None = None
    if ctx.attrs["ceil_mode"]:
        if not all(isinstance(d, int) for d in spatial):
            ctx.fail("ceil_mode=1 needs static spatial dims")
        out_sp = []
        for i, d in enumerate(spatial):
            eff = (kernel[i] - 1) * dil[i] + 1
            total = int(d) + pads[i] + pads[i + n] - eff
            o = -(-total // strides[i]) + 1
            if (o - 1) * strides[i] >= int(d) + pads[i]:
                o -= 1
            need = (o - 1) * strides[i] + eff
            have = int(d) + pads[i] + pads[i + n]
            pads[i + n] += max(0, need - have)
            out_sp.append(o)
    dtype = str(xt.dtype)
    cdt = _compute_dtype(dtype)
    x = _as(ctx, 0, cdt)
    p = int(ctx.attrs["p"])
    a = R.abs(x)
    powered = a if p == 1 else R.multiply(a, a) if p == 2 else R.power(a, ctx.scalar(p, cdt))
    powered = ctx.emit(powered)
    if any(pads):
        width = [0, 0, 0, 0] + [v for i in range(n) for v in (pads[i], pads[i + n])]
        powered = ctx.emit(NN.pad(powered, width, "constant", 0.0))
    y = ctx.emit(pool(powered, pool_size=kernel, strides=strides, padding=[0] * (2 * n),
                      dilation=dil, ceil_mode=False, count_include_pad=True))  # fmt: skip
    if out_sp is not None:
        y = ctx.emit(R.strided_slice(y, list(range(2, 2 + n)), [0] * n, out_sp))
    total_sum = R.multiply(y, ctx.scalar(math.prod(kernel), cdt))
    if p == 1:
        out = total_sum
    elif p == 2:
        out = R.sqrt(total_sum)
    else:
        out = R.power(total_sum, ctx.scalar(1.0 / p, cdt))
    return out if cdt == dtype else R.astype(ctx.emit(out), dtype)


# ------------------------------------------------------------ ReverseSequence


@lowers("ReverseSequence")
def _reverse_sequence(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    rank = xt.rank
    batch_axis, time_axis = int(ctx.attrs["batch_axis"]), int(ctx.attrs["time_axis"])
    batch_axis += rank if batch_axis < 0 else 0
    time_axis += rank if time_axis < 0 else 0
    if {batch_axis, time_axis} != {0, 1}:
        ctx.fail(f"batch_axis/time_axis must be 0 and 1 (got {batch_axis}, {time_axis})")
    steps = ctx.dim(xt.shape[time_axis])
    t = ctx.emit(R.arange(tir.IntImm("int64", 0), steps, tir.IntImm("int64", 1), "int64"))
    tshape = [1] * rank
    tshape[time_axis] = -1
    t = ctx.emit(R.reshape(t, tshape))
    lens = _as(ctx, 1, "int64")
    bshape = [1] * rank
    bshape[batch_axis] = -1
    lens = ctx.emit(R.reshape(lens, bshape))
    rev = R.subtract(R.subtract(lens, ctx.scalar(1, "int64")), t)
    src = ctx.emit(R.where(R.less(t, lens), rev, t))
    src = ctx.emit(R.broadcast_to(src, ctx.shape(xt.shape)))
    return R.gather_elements(ctx.arg(0), src, axis=time_axis)
