"""Tensor lowerings: shape-producing ops (Shape, Size, Constant, ConstantOfShape, Range),
reshaping and layout (Reshape, Flatten, Squeeze, Transpose, Expand, Tile, Concat, Split,
DepthToSpace, SpaceToDepth), indexing (Slice, Gather*, Scatter*, OneHot, Trilu, EyeLike) and Pad.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax

from ecograph.backends.tvm.context import (
    NN,
    LowerContext,
    R,
    carrier,
    contiguous,
    lowers,
    norm_axis,
)
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.interpreter import run_node
from ecograph.ir.ops.tensor import pad_widths
from ecograph.ir.registry import symbolic_value
from ecograph.ir.symbolic import Dim

# ---------------------------------------------------------- shape-producing ops


def _shape_tensor(ctx: LowerContext, dims: Sequence[Dim]) -> relax.Expr:
    if all(isinstance(d, int) for d in dims):
        return relax.const(np.array(dims, dtype=np.int64), "int64")
    return R.shape_to_tensor(ctx.shape(dims))


@lowers("Shape")
def _shape(ctx: LowerContext) -> relax.Expr:
    dims = ctx.node.input(0).shape  # type: ignore[union-attr]
    rank = len(dims)
    start, end = ctx.attrs["start"], ctx.attrs["end"]
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = rank if end is None else max(0, min(rank, end + rank if end < 0 else end))
    return _shape_tensor(ctx, list(dims[start : max(start, end)]))


@lowers("Size")
def _size(ctx: LowerContext) -> relax.Expr:
    n = ctx.in_type(0).numel
    if isinstance(n, int):
        return relax.const(np.array(n, dtype=np.int64), "int64")
    return R.reshape(R.shape_to_tensor(ctx.shape([n])), [])


@lowers("Constant")
def _constant(ctx: LowerContext) -> relax.Expr:
    arr = run_node(ctx.node, [])[0]
    if arr.dtype == object:
        ctx.fail("string constants cannot be lowered to TVM")
    return relax.const(contiguous(arr), str(ctx.out_type().dtype))


@lowers("ConstantOfShape")
def _constant_of_shape(ctx: LowerContext) -> relax.Expr:
    value = ctx.attrs["value"]
    out = ctx.out_type()
    fill = np.zeros((), out.dtype.numpy) if value is None else np.asarray(value).reshape(())
    return R.full(ctx.shape(out.shape), relax.const(fill, str(out.dtype)), str(out.dtype))


@lowers("Range")
def _range(ctx: LowerContext) -> relax.Expr:
    out = ctx.out_type()
    vals = [ctx.const(i) for i in range(3)]
    if all(v is not None for v in vals):
        # Known bounds: fold with the reference kernel (the length is static anyway).
        return relax.const(run_node(ctx.node, vals)[0], str(out.dtype))
    # start + delta * iota over the (symbolic) output length.
    dt = str(out.dtype)
    d = out.shape[0]
    if isinstance(d, str) and symbolic.is_symbol_name(d) and d not in ctx.symbols.vars:
        # A value-dependent length: max(ceil((limit - start) / delta), 0) computed at run
        # time and bound to the IR's symbol, so later shapes refer to it.
        f64 = [R.astype(ctx.arg(i), "float64") for i in range(3)]
        steps = R.ceil(R.divide(R.subtract(f64[1], f64[0]), f64[2]))
        length = R.astype(R.maximum(steps, ctx.scalar(0.0, "float64")), "int64")
        shape = ctx.emit(R.tensor_to_shape(ctx.emit(R.reshape(length, [1]))))
        ctx.bb.match_cast(shape, relax.ShapeType([ctx.symbols.var(d)]))
    n = ctx.dim(d)
    iota = R.arange(0, n, 1, dt)
    return R.add(ctx.arg(0), R.multiply(ctx.arg(2), iota))


# ------------------------------------------------------------------ reshaping


@lowers("Reshape")
def _reshape(ctx: LowerContext) -> relax.Expr:
    out = ctx.out_type()
    if 0 in out.shape:
        # Relax's reshape reads a 0 as "keep the input's dim" (ONNX's allowzero=0); a
        # zero-size result holds no data, so make it directly.
        return R.zeros(ctx.shape(out.shape), carrier(out.dtype))
    return R.reshape(ctx.arg(0), ctx.shape(out.shape))


@lowers("Flatten")
def _flatten(ctx: LowerContext) -> relax.Expr:
    return R.reshape(ctx.arg(0), ctx.shape(ctx.out_type().shape))


@lowers("Squeeze", "Unsqueeze")
def _squeeze(ctx: LowerContext) -> relax.Expr:
    return R.reshape(ctx.arg(0), ctx.shape(ctx.out_type().shape))


@lowers("Transpose")
def _transpose(ctx: LowerContext) -> relax.Expr:
    perm = ctx.attrs["perm"]
    rank = ctx.rank(0)
    perm = list(reversed(range(rank))) if perm is None else [norm_axis(p, rank) for p in perm]
    return R.permute_dims(ctx.arg(0), perm)


@lowers("Expand")
def _expand(ctx: LowerContext) -> relax.Expr:
    return R.broadcast_to(ctx.arg(0), ctx.shape(ctx.out_type().shape))


@lowers("Tile")
def _tile(ctx: LowerContext) -> relax.Expr:
    if ctx.const(1) is not None:
        return R.tile(ctx.arg(0), ctx.ints(1, "repeats"))
    # repeats from the shapes of dynamic dims (GPT-J's and BLOOM's `t.repeat(batch, ...)`):
    # each repeated axis gets a new axis of `r` copies before it, broadcast, then merged
    repeats = symbolic_value(ctx.node.inputs[1])  # type: ignore[arg-type]
    if repeats is None:
        ctx.fail(
            "repeats (input 1) are computed from tensor data, which the compiled code cannot "
            "size its output by; they must be constants or computed from shapes"
        )
    single: list[Dim] = []  # x with an axis of 1 before each repeated axis
    copies: list[Dim] = []  # ... broadcast to r there
    for d, r in zip(ctx.in_type(0).shape, repeats, strict=True):
        if r != 1:
            single.append(1)
            copies.append(r)
        single.append(d)
        copies.append(d)
    spread = R.broadcast_to(R.reshape(ctx.arg(0), ctx.shape(single)), ctx.shape(copies))
    return R.reshape(spread, ctx.shape(ctx.out_type().shape))


@lowers("Concat")
def _concat(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    return R.concat(
        [ctx.arg(i) for i in range(len(ctx.args))], axis=norm_axis(ctx.attrs["axis"], rank)
    )


@lowers("Split")
def _split(ctx: LowerContext) -> list[relax.Expr]:
    rank = ctx.rank(0)
    axis = norm_axis(ctx.attrs["axis"], rank)
    x = ctx.arg(0)
    outs = ctx.node.outputs
    begin: Any = 0
    result = []
    for out in outs:
        size = out.shape[axis]
        end = symbolic.add(begin, size)
        result.append(
            R.strided_slice(x, [axis], [ctx.dim(begin)], [ctx.dim(end)], assume_inbound=True)
        )
        begin = end
    return result


@lowers("Slice")
def _slice(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    starts = _bounds(ctx, 1, "starts")
    ends = _bounds(ctx, 2, "ends")
    axes = [norm_axis(a, rank) for a in (ctx.ints(3, "axes") or list(range(len(starts))))]
    steps = ctx.ints(4, "steps") or [1] * len(starts)
    if all(isinstance(b, int) for b in starts + ends):
        return R.strided_slice(ctx.arg(0), axes, starts, ends, steps)
    # Symbolic or run-time bounds: TVM 0.27's FoldConstant segfaults on strided_slice of a
    # constant with symbolic bounds, so pass the bounds as tensors (dynamic_strided_slice)
    # instead; a size the IR could not know is bound to its symbol by the driver's match_cast.
    dims = ctx.in_type(0).shape
    begin: list[Any] = [0] * rank
    end: list[Any] = [d if isinstance(d, int) else ctx.dim(d) for d in dims]
    stride = [1] * rank
    for a, b, e, st in zip(axes, starts, ends, steps, strict=True):
        begin[a], end[a], stride[a] = b, e, st
    return R.dynamic_strided_slice(
        ctx.arg(0), _index_tensor(ctx, begin), _index_tensor(ctx, end), _index_tensor(ctx, stride)
    )


@dataclass(frozen=True)
class _RunTime:
    """A slice bound known at run time only: an int64 tensor [1] (a class of its own: TVM's
    TIR variables are Relax variables too)."""

    tensor: relax.Expr


def _index_tensor(ctx: LowerContext, values: list[Any]) -> relax.Expr:
    """A 1-D int64 tensor of ints, TIR expressions and `_RunTime` bounds."""
    parts = []
    for v in values:
        if isinstance(v, int):
            parts.append(relax.const(np.array([v], np.int64), "int64"))
        elif isinstance(v, _RunTime):
            parts.append(v.tensor)
        else:
            parts.append(R.shape_to_tensor(relax.ShapeExpr([v])))
    return parts[0] if len(parts) == 1 else R.concat(parts, axis=0)


def _bounds(ctx: LowerContext, i: int, what: str) -> list[Any]:
    """Slice bounds as ints (clamped to int64 range), TIR expressions for symbolic ones, or
    `_RunTime` tensors of the input's elements where they are known at run time only (MPT's
    ALiBi bias sliced from max(0, positions - length))."""
    v = ctx.node.input(i)
    dims = symbolic_value(v) if v is not None else None
    if dims is None:
        if ctx.const(i) is None:
            count = ctx.in_type(i).shape[0] if ctx.in_type(i).rank == 1 else None
            if not isinstance(count, int):
                ctx.fail(f"{what} (input {i}) must be a 1-D tensor of static length")
            bounds = R.astype(ctx.arg(i), "int64")
            return [_RunTime(R.strided_slice(bounds, [0], [k], [k + 1])) for k in range(count)]
        dims = ctx.ints(i, what)  # type: ignore[assignment]
    big = 2**62
    return [max(-big, min(big, d)) if isinstance(d, int) else ctx.dim(d) for d in dims]  # type: ignore[misc]


def _normalize_indices(ctx: LowerContext, idx: relax.Expr, dim: Dim, dtype: DType) -> relax.Expr:
    """Negative indices count from the end (ONNX); TVM takes them as they are."""
    if dtype.is_signed:
        zero = ctx.scalar(0, dtype)
        if isinstance(dim, int):
            n = ctx.scalar(dim, dtype)
        else:
            n = R.astype(R.reshape(R.shape_to_tensor(ctx.shape([dim])), []), str(dtype))
        idx = R.where(R.less(idx, zero), R.add(idx, n), idx)
    return idx


@lowers("Gather")
def _gather(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    axis = norm_axis(ctx.attrs["axis"], rank)
    dim = ctx.in_type(0).shape[axis]
    at = _constant_position(ctx.const(1), dim)
    if at is not None:
        # One known position (a layer's keys selected from a KV cache, a class token): a
        # slice, which fuses with what reads it; take is opaque to FuseOps (its index is
        # data), so it was a kernel and a copy of its own.
        sliced = R.strided_slice(ctx.arg(0), axes=[axis], begin=[at], end=[at + 1])
        return R.squeeze(sliced, axis=[axis]) if ctx.in_type(1).rank == 0 else sliced
    idx = _normalize_indices(ctx, ctx.arg(1), dim, ctx.in_type(1).dtype)
    return R.take(ctx.arg(0), idx, axis=axis)


def _constant_position(indices: Any, dim: Dim) -> int | None:
    """The position a constant Gather index of one element selects on an axis of static
    size `dim` (negative counted from the end), or None (not one constant, or outside)."""
    if indices is None or not isinstance(dim, int):
        return None
    arr = np.asarray(indices)
    if arr.ndim > 1 or arr.size != 1 or arr.dtype.kind not in "iu":
        return None
    at = int(arr.reshape(()))
    at = at + dim if at < 0 else at
    return at if 0 <= at < dim else None


@lowers("GatherElements")
def _gather_elements(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    axis = norm_axis(ctx.attrs["axis"], rank)
    dim = ctx.in_type(0).shape[axis]
    idx = _normalize_indices(ctx, ctx.arg(1), dim, ctx.in_type(1).dtype)
    return R.gather_elements(ctx.arg(0), idx, axis=axis)


@lowers("Trilu")
def _trilu(ctx: LowerContext) -> relax.Expr:
    k = 0
    if ctx.has(1):
        kv = ctx.const(1)
        if kv is None:
            ctx.fail("k must be a constant")
        k = int(np.asarray(kv).reshape(()))
    return R.triu(ctx.arg(0), k) if ctx.attrs["upper"] else R.tril(ctx.arg(0), k)


@lowers("Pad")
def _pad(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    pads = ctx.ints(1, "pads")
    assert pads is not None
    axes = ctx.ints(3, "axes")
    axes = None if axes is None else [norm_axis(a, rank) for a in axes]
    width = [w for pair in pad_widths(pads, axes, rank) for w in pair]
    mode = ctx.attrs["mode"]
    if any(w < 0 for w in width):
        ctx.fail("negative pads (cropping) are not lowered yet; use Slice")
    value = 0.0
    if ctx.has(2):
        cv = ctx.const(2)
        if cv is None:
            ctx.fail("constant_value must be a constant")
        value = np.asarray(cv).reshape(()).item()
    if mode == "constant":
        return NN.pad(ctx.arg(0), width, "constant", value)
    if mode not in ("reflect", "edge", "wrap"):
        ctx.fail(f"pad mode {mode!r} is not supported")
    # Relax's pad legalizes only constant padding; build the borders from slices.
    x = ctx.arg(0)
    for a in range(rank):
        before, after = width[2 * a], width[2 * a + 1]
        parts = []
        if before:
            parts.append(_pad_border(ctx, x, a, before, mode, left=True))
        parts.append(x)
        if after:
            parts.append(_pad_border(ctx, x, a, after, mode, left=False))
        if len(parts) > 1:
            x = ctx.emit(R.concat(parts, axis=a))
    return x


def _pad_border(
    ctx: LowerContext, x: relax.Expr, axis: int, n: int, mode: str, *, left: bool
) -> relax.Expr:
    def piece(begin: int, end: int) -> relax.Expr:
        return ctx.emit(R.strided_slice(x, [axis], [begin], [end]))

    big = 2**62
    if mode == "edge":
        return R.repeat(piece(0, 1) if left else piece(-1, big), n, axis=axis)
    if mode == "reflect":
        return R.flip(piece(1, n + 1) if left else piece(-n - 1, -1), axis)
    return piece(-n, big) if left else piece(0, n)


@lowers("EyeLike")
def _eye_like(ctx: LowerContext) -> relax.Expr:
    n, m = ctx.in_type(0).shape
    if not (isinstance(n, int) and isinstance(m, int)):
        ctx.fail("EyeLike needs a static shape")
    out = ctx.out_type().dtype
    return relax.const(np.eye(n, m, k=ctx.attrs["k"]).astype(out.numpy), str(out))


@lowers("DepthToSpace")
def _depth_to_space(ctx: LowerContext) -> relax.Expr:
    b, c, h, w = ctx.in_type(0).shape
    bs = ctx.attrs["blocksize"]
    c2 = symbolic.floordiv(c, bs * bs)
    if ctx.attrs["mode"] == "DCR":
        t = R.reshape(ctx.arg(0), ctx.shape([b, bs, bs, c2, h, w]))
        t = R.permute_dims(t, [0, 3, 4, 1, 5, 2])
    else:
        t = R.reshape(ctx.arg(0), ctx.shape([b, c2, bs, bs, h, w]))
        t = R.permute_dims(t, [0, 1, 4, 2, 5, 3])
    return R.reshape(t, ctx.shape(ctx.out_type().shape))


@lowers("SpaceToDepth")
def _space_to_depth(ctx: LowerContext) -> relax.Expr:
    b, c, h, w = ctx.in_type(0).shape
    bs = ctx.attrs["blocksize"]
    h2, w2 = symbolic.floordiv(h, bs), symbolic.floordiv(w, bs)
    t = R.reshape(ctx.arg(0), ctx.shape([b, c, h2, bs, w2, bs]))
    t = R.permute_dims(t, [0, 3, 5, 1, 2, 4])
    return R.reshape(t, ctx.shape(ctx.out_type().shape))


@lowers("GatherND")
def _gather_nd(ctx: LowerContext) -> relax.Expr:
    dt, it = ctx.in_type(0), ctx.in_type(1)
    b = ctx.attrs["batch_dims"]
    k = it.shape[-1]
    assert isinstance(k, int)
    idx = R.astype(ctx.arg(1), "int64")
    # Negative indices count from the end of their data axis.
    dims = dt.shape[b : b + k]
    if all(isinstance(d, int) for d in dims):
        sizes = relax.const(np.array(dims, np.int64), "int64")
        idx = R.where(R.less(idx, ctx.scalar(0, "int64")), R.add(idx, sizes), idx)
    return R.gather_nd(ctx.arg(0), idx, batch_dims=b)


_SCATTER_REDUCTION = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


@lowers("ScatterElements")
def _scatter_elements(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    axis = norm_axis(ctx.attrs["axis"], rank)
    dim = ctx.in_type(0).shape[axis]
    idx = _normalize_indices(ctx, ctx.arg(1), dim, ctx.in_type(1).dtype)
    red = _SCATTER_REDUCTION[ctx.attrs["reduction"]]
    return R.scatter_elements(ctx.arg(0), idx, ctx.arg(2), axis=axis, reduction=red)


@lowers("ScatterND")
def _scatter_nd(ctx: LowerContext) -> relax.Expr:
    red = _SCATTER_REDUCTION[ctx.attrs["reduction"]]
    return R.scatter_nd(ctx.arg(0), R.astype(ctx.arg(1), "int64"), ctx.arg(2), red)


@lowers("OneHot")
def _one_hot(ctx: LowerContext) -> relax.Expr:
    depth_v = ctx.const(1)
    values = ctx.const(2)
    if depth_v is None:
        ctx.fail("depth must be a constant")
    depth = int(np.asarray(depth_v).reshape(-1)[0])
    rank = ctx.rank(0) + 1
    axis = norm_axis(ctx.attrs["axis"], rank)
    idx = R.astype(ctx.arg(0), "int64")
    idx = R.where(R.less(idx, ctx.scalar(0, "int64")), R.add(idx, ctx.scalar(depth, "int64")), idx)
    classes_shape = [depth if i == axis else 1 for i in range(rank)]
    classes = relax.const(np.arange(depth, dtype=np.int64).reshape(classes_shape), "int64")
    hot = R.equal(R.expand_dims(idx, [axis]), classes)
    out = ctx.out_type().dtype
    if values is not None:
        off = ctx.scalar(np.asarray(values).reshape(-1)[0], out)
        on = ctx.scalar(np.asarray(values).reshape(-1)[1], out)
    else:
        vals = ctx.arg(2)
        off = R.take(vals, relax.const(np.array(0, np.int64), "int64"), axis=0)
        on = R.take(vals, relax.const(np.array(1, np.int64), "int64"), axis=0)
    return R.where(hot, on, off)
