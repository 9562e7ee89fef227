"""Tensor-shaping ONNX ops: Shape, Reshape, Transpose, Concat, Slice, Gather, Cast, ...

Ops that take part in shape arithmetic have `propagate` rules, so that Reshape after a
Shape→Gather→Concat chain gets a symbolic output shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.ops._infer import broadcast_shapes, int_list, normalize_axis, same_as_input
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType
from ecograph.ir.unify import note_equal_dims

# --------------------------------------------------------------------- Identity


def _propagate_identity(ctx: InferContext) -> list[Dim] | None:
    return ctx.symbolic(0)


@register_op(
    "Identity", inputs=["input"], outputs=["output"], infer=same_as_input(0),
    propagate=_propagate_identity,
)  # fmt: skip
def identity(x: np.ndarray) -> np.ndarray:
    return x


def _dropout_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    return [x, x.with_dtype(DType.BOOL)]


# Dropout is flagged random: the flag is per op, and in training mode (training_mode true,
# ratio > 0) Dropout draws a mask, so two such nodes must never merge or fold. In inference
# mode it is the identity and this kernel is deterministic; eliminate-no-ops removes it there,
# so the flag costs nothing in inference graphs.
@register_op(
    "Dropout",
    inputs=["data", "ratio?", "training_mode?"],
    outputs=["output", "mask?"],
    attrs={"seed": Attr("int", None)},
    infer=_dropout_infer,
    random=True,
)
def dropout(
    x: np.ndarray,
    ratio: np.ndarray | None = None,
    training_mode: np.ndarray | None = None,
    *,
    seed: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    training = training_mode is not None and bool(training_mode)
    if training and ratio is not None and float(ratio) != 0.0:
        raise NotImplementedError(
            "Dropout in training mode with ratio > 0 is random; ecograph runs inference only"
        )
    return x, np.ones(x.shape, dtype=bool)


# ------------------------------------------------------------------ Shape, Size


def _shape_slice(ctx: InferContext) -> tuple[int, int]:
    rank = ctx.input(0).rank
    start = ctx.attr("start")
    end = ctx.attr("end")
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = rank if end is None else max(0, min(rank, end + rank if end < 0 else end))
    return start, max(start, end)


def _shape_infer(ctx: InferContext) -> list[TensorType]:
    start, end = _shape_slice(ctx)
    return [TensorType(DType.INT64, [end - start])]


def _shape_propagate(ctx: InferContext) -> list[Dim] | None:
    start, end = _shape_slice(ctx)
    return list(ctx.input(0).shape[start:end])


@register_op(
    "Shape",
    inputs=["data"],
    outputs=["shape"],
    attrs={"start": Attr("int", 0), "end": Attr("int", None)},
    infer=_shape_infer,
    propagate=_shape_propagate,
)
def shape(x: np.ndarray, *, start: int, end: int | None) -> np.ndarray:
    dims = x.shape[start:end] if end is not None else x.shape[start:]
    return np.array(dims, dtype=np.int64)


@register_op(
    "Size",
    inputs=["data"],
    outputs=["size"],
    infer=lambda c: [TensorType(DType.INT64, [])],
    propagate=lambda c: [c.input(0).numel],
)
def size(x: np.ndarray) -> np.ndarray:
    return np.array(x.size, dtype=np.int64)


# --------------------------------------------------------------------- Reshape


def _reshape_target(
    ctx: InferContext, in_shape: tuple[Dim, ...], target: list[Dim], allowzero: int
) -> list[Dim | None]:
    out: list[Dim | None] = []
    infer_at = None
    for i, d in enumerate(target):
        if d == -1:
            if infer_at is not None:
                ctx.fail("more than one -1 in the target shape")
            infer_at = i
            out.append(None)
        elif d == 0 and not allowzero:
            if i >= len(in_shape):
                ctx.fail(f"0 at position {i} copies a dim the input (rank {len(in_shape)}) lacks")
            out.append(in_shape[i])
        else:
            out.append(d)
    if infer_at is not None:
        known = symbolic.product([d for d in out if d is not None])
        total = symbolic.product(in_shape)
        if known == 0:
            out[infer_at] = 0
        else:
            if isinstance(total, int) and isinstance(known, int) and total % known:
                ctx.fail(f"cannot reshape {list(in_shape)} to {target}")
            out[infer_at] = symbolic.floordiv(total, known)
    elif (
        ctx.input(0).is_static
        and all(isinstance(d, int) for d in out)
        and symbolic.product(in_shape) != symbolic.product(out)  # type: ignore[arg-type]
    ):
        ctx.fail(f"cannot reshape {list(in_shape)} to {target}")
    return out


def _reshape_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    target = ctx.symbolic(1)
    if target is None:
        shape_t = ctx.input(1)
        if not shape_t.is_static or shape_t.rank != 1:
            ctx.fail("the target shape must be a 1-D tensor of static length")
        return [make_type(x.dtype, [None] * int(shape_t.shape[0]))]
    return [make_type(x.dtype, _reshape_target(ctx, x.shape, target, ctx.attr("allowzero")))]


def _reshape_propagate(ctx: InferContext) -> list[Dim] | None:
    return ctx.symbolic(0)


@register_op(
    "Reshape",
    inputs=["data", "shape"],
    outputs=["reshaped"],
    attrs={"allowzero": Attr("int", 0)},
    infer=_reshape_infer,
    propagate=_reshape_propagate,
)
def reshape(x: np.ndarray, shape: np.ndarray, *, allowzero: int) -> np.ndarray:
    target = [int(d) for d in shape]
    if not allowzero:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


def _flatten_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    axis = ctx.attr("axis")
    axis = axis + x.rank if axis < 0 else axis
    if not 0 <= axis <= x.rank:
        ctx.fail(f"axis {ctx.attr('axis')} out of range for rank {x.rank}")
    return [
        TensorType(x.dtype, [symbolic.product(x.shape[:axis]), symbolic.product(x.shape[axis:])])
    ]


@register_op(
    "Flatten",
    inputs=["input"],
    outputs=["output"],
    attrs={"axis": Attr("int", 1)},
    infer=_flatten_infer,
)
def flatten(x: np.ndarray, *, axis: int) -> np.ndarray:
    axis = axis + x.ndim if axis < 0 else axis
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(lead, -1) if x.size or lead else x.reshape(lead, int(np.prod(x.shape[axis:])))


# ------------------------------------------------------------------- Transpose


def _perm(ctx: InferContext, rank: int) -> list[int]:
    perm = ctx.attr("perm")
    if perm is None:
        return list(range(rank))[::-1]
    if sorted(perm) != list(range(rank)):
        ctx.fail(f"perm {list(perm)} is not a permutation of {rank} axes")
    return list(perm)


def _transpose_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    return [x.with_shape([x.shape[p] for p in _perm(ctx, x.rank)])]


@register_op(
    "Transpose",
    inputs=["data"],
    outputs=["transposed"],
    attrs={"perm": Attr("ints", None)},
    infer=_transpose_infer,
)
def transpose(x: np.ndarray, *, perm: list[int] | None) -> np.ndarray:
    return np.transpose(x, perm)


# ------------------------------------------------------- Squeeze / Unsqueeze


def _axes_input(ctx: InferContext, index: int) -> list[int] | None:
    if not ctx.has_input(index):
        return None
    arr = ctx.constant(index)
    if arr is None:
        ctx.fail("axes must be a constant")
    return int_list(arr)


def _runtime_axes_count(ctx: InferContext, index: int) -> int | None:
    """How many axes a non-constant axes input holds, if its length is static."""
    if not ctx.has_input(index) or ctx.constant(index) is not None:
        return None
    t = ctx.input(index)
    if t.rank == 1 and isinstance(t.shape[0], int):
        return t.shape[0]
    return None


def _squeeze_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    k = _runtime_axes_count(ctx, 1)
    if k is not None:
        return [make_type(x.dtype, [None] * (x.rank - k))]
    axes = _axes_input(ctx, 1)
    if axes is None:
        if not all(isinstance(d, int) for d in x.shape):
            ctx.fail("Squeeze without axes needs a static shape")
        return [x.with_shape([d for d in x.shape if d != 1])]
    norm = {normalize_axis(a, x.rank, ctx) for a in axes}
    for a in norm:
        if isinstance(x.shape[a], int) and x.shape[a] != 1:
            ctx.fail(f"cannot squeeze axis {a} of size {x.shape[a]}")
    return [x.with_shape([d for i, d in enumerate(x.shape) if i not in norm])]


@register_op(
    "Squeeze",
    inputs=["data", "axes?"],
    outputs=["squeezed"],
    infer=_squeeze_infer,
    propagate=_propagate_identity,
)
def squeeze(x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(int(a) for a in axes))


def _unsqueeze_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    k = _runtime_axes_count(ctx, 1)
    if k is not None:
        return [make_type(x.dtype, [None] * (x.rank + k))]
    axes = _axes_input(ctx, 1)
    assert axes is not None
    rank = x.rank + len(axes)
    norm = sorted(normalize_axis(a, rank, ctx) for a in axes)
    if len(set(norm)) != len(norm):
        ctx.fail(f"repeated axes {axes}")
    dims = list(x.shape)
    for a in norm:
        dims.insert(a, 1)
    return [x.with_shape(dims)]


@register_op(
    "Unsqueeze",
    inputs=["data", "axes"],
    outputs=["expanded"],
    infer=_unsqueeze_infer,
    propagate=_propagate_identity,
)
def unsqueeze(x: np.ndarray, axes: np.ndarray) -> np.ndarray:
    rank = x.ndim + axes.size
    out = x
    for a in sorted(int(a) + rank if a < 0 else int(a) for a in axes):
        out = np.expand_dims(out, a)
    return out


# ---------------------------------------------------------------------- Concat


def _concat_infer(ctx: InferContext) -> list[TensorType]:
    types = ctx.inputs()
    rank = types[0].rank
    axis = normalize_axis(ctx.attr("axis"), rank, ctx)
    dims = list(types[0].shape)
    total: Dim = 0
    for t in types:
        if t.rank != rank or t.dtype != types[0].dtype:
            ctx.fail(f"inputs disagree: {types[0]} and {t}")
        for i in range(rank):
            if i != axis:
                note_equal_dims(dims[i], t.shape[i])
        total = symbolic.add(total, t.shape[axis])
    dims[axis] = total
    return [types[0].with_shape(dims)]


def _concat_propagate(ctx: InferContext) -> list[Dim] | None:
    out: list[Dim] = []
    for i in range(ctx.num_inputs):
        part = ctx.symbolic(i)
        if part is None:
            return None
        out.extend(part)
    return out


@register_op(
    "Concat",
    inputs=["inputs*"],
    outputs=["concat_result"],
    attrs={"axis": Attr("int")},
    infer=_concat_infer,
    propagate=_concat_propagate,
)
def concat(*xs: np.ndarray, axis: int) -> np.ndarray:
    return np.concatenate(xs, axis=axis)


# ----------------------------------------------------------------------- Split


def _split_sizes(ctx: InferContext, dim: Dim) -> list[Dim | None]:
    n = ctx.num_outputs
    if ctx.has_input(1):
        sizes = ctx.constant(1)
        if sizes is None:
            return [None] * n
        return list(int_list(sizes))
    num = ctx.attr("num_outputs") or n
    if isinstance(dim, int):
        chunk = -(-dim // num)
        return [min(chunk, max(0, dim - chunk * i)) for i in range(num)]
    return [symbolic.floordiv(dim, num)] * num


def _split_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis"), x.rank, ctx)
    sizes = _split_sizes(ctx, x.shape[axis])
    out = []
    for s in sizes:
        dims: list[Dim | None] = list(x.shape)
        dims[axis] = s
        out.append(make_type(x.dtype, dims))
    return out


@register_op(
    "Split",
    inputs=["input", "split?"],
    outputs=["outputs*"],
    attrs={"axis": Attr("int", 0), "num_outputs": Attr("int", None)},
    infer=_split_infer,
)
def split(
    x: np.ndarray,
    sizes: np.ndarray | None = None,
    *,
    axis: int,
    num_outputs: int | None,
    _num_outputs: int,
) -> tuple[np.ndarray, ...]:
    if sizes is None:
        n = num_outputs or _num_outputs
        chunk = -(-x.shape[axis] // n)
        sizes = np.array([min(chunk, max(0, x.shape[axis] - chunk * i)) for i in range(n)])
    bounds = np.cumsum([int(s) for s in sizes])[:-1]
    return tuple(np.split(x, bounds, axis=axis))


# ----------------------------------------------------------------------- Slice


def _slice_params(
    ctx: InferContext, rank: int
) -> tuple[list[int], list[int], list[int], list[int]] | None:
    starts, ends = ctx.constant(1), ctx.constant(2)
    if starts is None or ends is None:
        return None
    axes_arr = ctx.constant(3) if ctx.has_input(3) else np.arange(len(int_list(starts)))
    steps_arr = ctx.constant(4) if ctx.has_input(4) else np.ones(len(int_list(starts)), np.int64)
    if axes_arr is None or steps_arr is None:
        return None
    axes = [normalize_axis(a, rank, ctx) for a in int_list(axes_arr)]
    return int_list(starts), int_list(ends), axes, int_list(steps_arr)


def _sliced_axes(ctx: InferContext, rank: int) -> set[int] | None:
    """The axes a Slice slices, when they are known (its `axes`, or the first len(starts)),
    else None."""
    if ctx.has_input(3):
        axes = ctx.constant(3)
        return None if axes is None else {normalize_axis(a, rank, ctx) for a in int_list(axes)}
    count = ctx.input(1).shape
    return set(range(count[0])) if len(count) == 1 and isinstance(count[0], int) else None


def _slice_dim(d: Dim, start: int, end: int, step: int) -> Dim | None:
    if not isinstance(d, int):
        # Common static cases over a symbolic dim: x[0:] or x[:k] with k not beyond it is
        # unknown in general; whole-range slices keep the dim.
        if step == 1 and start == 0 and end >= 2**62:
            return d
        if step == 1 and start >= 0 and 0 <= end < 2**62 and end >= start:
            return None
        return None
    return len(range(*slice(start, end, step).indices(d)))


def _slice_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    params = _slice_params(ctx, x.rank)
    if params is None:  # bounds known at run time: the axes not sliced keep their dims
        sliced = _sliced_axes(ctx, x.rank)
        dims = [None if sliced is None or a in sliced else d for a, d in enumerate(x.shape)]
        return [make_type(x.dtype, dims)]
    starts, ends, axes, steps = params
    dims: list[Dim | None] = list(x.shape)
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        if st == 0:
            ctx.fail("slice step 0")
        dims[a] = _slice_dim(x.shape[a], s, e, st)
    return [make_type(x.dtype, dims)]


def _slice_propagate(ctx: InferContext) -> list[Dim] | None:
    data = ctx.symbolic(0)
    if data is None or ctx.input(0).rank != 1:
        return None
    params = _slice_params(ctx, 1)
    if params is None:
        return None
    starts, ends, _, steps = params
    return list(data[slice(starts[0], ends[0], steps[0])])


@register_op(
    "Slice",
    inputs=["data", "starts", "ends", "axes?", "steps?"],
    outputs=["output"],
    infer=_slice_infer,
    propagate=_slice_propagate,
)
def slice_(
    x: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    axes: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> np.ndarray:
    index: list[Any] = [slice(None)] * x.ndim
    axes_l = int_list(axes) if axes is not None else list(range(starts.size))
    steps_l = int_list(steps) if steps is not None else [1] * starts.size
    for s, e, a, st in zip(int_list(starts), int_list(ends), axes_l, steps_l, strict=True):
        a = a + x.ndim if a < 0 else a
        index[a] = slice(s, e, st)
    return x[tuple(index)]


# ---------------------------------------------------------------------- Gather


def _gather_infer(ctx: InferContext) -> list[TensorType]:
    data, idx = ctx.input(0), ctx.input(1)
    axis = normalize_axis(ctx.attr("axis"), data.rank, ctx)
    shape = list(data.shape[:axis]) + list(idx.shape) + list(data.shape[axis + 1 :])
    return [data.with_shape(shape)]


def _gather_propagate(ctx: InferContext) -> list[Dim] | None:
    data = ctx.symbolic(0)
    idx = ctx.constant(1)
    if data is None or idx is None or ctx.input(0).rank != 1:
        return None
    n = len(data)
    return [data[int(i) + n if i < 0 else int(i)] for i in np.asarray(idx).reshape(-1)]


@register_op(
    "Gather",
    inputs=["data", "indices"],
    outputs=["output"],
    attrs={"axis": Attr("int", 0)},
    infer=_gather_infer,
    propagate=_gather_propagate,
)
def gather(data: np.ndarray, indices: np.ndarray, *, axis: int) -> np.ndarray:
    idx = indices.astype(np.int64)
    size = data.shape[axis]
    if np.any((idx < -size) | (idx >= size)):
        raise IndexError(f"Gather index out of range [-{size}, {size})")
    return np.take(data, np.where(idx < 0, idx + size, idx), axis=axis)


@register_op(
    "GatherElements",
    inputs=["data", "indices"],
    outputs=["output"],
    attrs={"axis": Attr("int", 0)},
    infer=lambda c: [c.input(1).with_dtype(c.input(0).dtype)],
)
def gather_elements(data: np.ndarray, indices: np.ndarray, *, axis: int) -> np.ndarray:
    size = data.shape[axis]
    idx = np.where(indices < 0, indices + size, indices)
    return np.take_along_axis(data, idx.astype(np.int64), axis=axis)


# ---------------------------------------------------------------------- Cast


def _cast_infer(ctx: InferContext) -> list[TensorType]:
    return [ctx.input(0).with_dtype(DType.from_onnx(ctx.attr("to")))]


def cast_array(x: np.ndarray, dtype: DType, saturate: bool = True) -> np.ndarray:
    """ONNX Cast semantics for the dtypes the IR models."""
    target = dtype.numpy
    if dtype == DType.STRING:
        return np.vectorize(_float_to_onnx_str, otypes=[object])(x) if x.size else x.astype(object)
    if x.dtype == object:
        return (
            np.array([float(s) if dtype.is_float else int(s) for s in x.reshape(-1)])
            .astype(target)
            .reshape(x.shape)
        )
    if dtype in (DType.INT4, DType.UINT4):
        lo, hi = (-8, 7) if dtype == DType.INT4 else (0, 15)
        xi = x.astype(np.int64) if x.dtype.kind != "f" else np.trunc(x).astype(np.int64)
        # ONNX wraps out-of-range integers into 4 bits (two's complement).
        wrapped = ((xi - lo) % 16) + lo
        return np.clip(wrapped, lo, hi).astype(target)
    with np.errstate(all="ignore"):
        return x.astype(target)


def _float_to_onnx_str(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if np.isnan(f):
            return "NaN"
        if np.isinf(f):
            return "INF" if f > 0 else "-INF"
    return str(v)


def _cast_propagate(ctx: InferContext) -> list[Dim] | None:
    if not DType.from_onnx(ctx.attr("to")).is_integer:
        return None
    return ctx.symbolic(0)


@register_op(
    "Cast",
    inputs=["input"],
    outputs=["output"],
    attrs={"to": Attr("int"), "saturate": Attr("int", 1), "round_mode": Attr("string", "up")},
    infer=_cast_infer,
    propagate=_cast_propagate,
)
def cast(x: np.ndarray, *, to: int, saturate: int, round_mode: str) -> np.ndarray:
    return cast_array(x, DType.from_onnx(to), bool(saturate))


@register_op(
    "CastLike",
    inputs=["input", "target_type"],
    outputs=["output"],
    attrs={"saturate": Attr("int", 1), "round_mode": Attr("string", "up")},
    infer=lambda c: [c.input(0).with_dtype(c.input(1).dtype)],
)
def cast_like(x: np.ndarray, like: np.ndarray, *, saturate: int, round_mode: str) -> np.ndarray:
    return cast_array(x, DType.from_numpy(like.dtype), bool(saturate))


# ---------------------------------------------------------------------- Expand


def _expand_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    target = ctx.symbolic(1)
    if target is None:
        n = ctx.input(1).shape[0] if ctx.input(1).rank == 1 else None
        if not isinstance(n, int):
            ctx.fail("the shape input must be a 1-D tensor of static length")
        return [make_type(x.dtype, [None] * max(n, x.rank))]
    shape = broadcast_shapes([x.shape, target], f"node {ctx.node.name}: ")
    return [make_type(x.dtype, shape)]


@register_op("Expand", inputs=["input", "shape"], outputs=["output"], infer=_expand_infer)
def expand(x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    target = np.broadcast_shapes(x.shape, tuple(int(d) for d in shape))
    return np.broadcast_to(x, target).copy()


# ------------------------------------------------------------------------ Tile


def _tile_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    reps = ctx.symbolic(1)
    if reps is None:
        return [make_type(x.dtype, [None] * x.rank)]
    return [x.with_shape([symbolic.mul(d, r) for d, r in zip(x.shape, reps, strict=True)])]


@register_op("Tile", inputs=["input", "repeats"], outputs=["output"], infer=_tile_infer)
def tile(x: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    return np.tile(x, tuple(int(r) for r in repeats))


# ------------------------------------------------------------------------ Trilu


@register_op(
    "Trilu",
    inputs=["input", "k?"],
    outputs=["output"],
    attrs={"upper": Attr("int", 1)},
    infer=same_as_input(0),
)
def trilu(x: np.ndarray, k: np.ndarray | None = None, *, upper: int) -> np.ndarray:
    kk = 0 if k is None else int(k)
    return np.triu(x, kk) if upper else np.tril(x, kk)


# -------------------------------------------------------------------------- Pad


def pad_widths(pads: Any, axes: Any, rank: int) -> list[tuple[int, int]]:
    """Pad's (begin, end) amounts for each axis of a rank-`rank` input: `pads` holds the
    begins then the ends over `axes` (every axis when None; a negative axis counts from the
    end). Shared by the reference kernel, the backends' lowering and fold-pad-into-conv."""
    given = list(range(rank)) if axes is None else int_list(axes)
    axes_l = [a + rank if a < 0 else a for a in given]
    n = len(axes_l)
    p = int_list(pads)
    width = [(0, 0)] * rank
    for j, a in enumerate(axes_l):
        width[a] = (p[j], p[j + n])
    return width


def _pad_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    pads = ctx.constant(1)
    if pads is None:
        return [make_type(x.dtype, [None] * x.rank)]
    pads_l = int_list(pads)
    axes = (
        [normalize_axis(a, x.rank, ctx) for a in int_list(ctx.constant(3))]
        if ctx.has_input(3) and ctx.constant(3) is not None
        else list(range(x.rank))
    )
    n = len(axes)
    dims: list[Dim] = list(x.shape)
    for j, a in enumerate(axes):
        dims[a] = symbolic.add(dims[a], pads_l[j] + pads_l[j + n])
    return [x.with_shape(dims)]


@register_op(
    "Pad",
    inputs=["data", "pads", "constant_value?", "axes?"],
    outputs=["output"],
    attrs={"mode": Attr("string", "constant")},
    infer=_pad_infer,
)
def pad(
    x: np.ndarray,
    pads: np.ndarray,
    value: np.ndarray | None = None,
    axes: np.ndarray | None = None,
    *,
    mode: str,
) -> np.ndarray:
    width = pad_widths(pads, axes, x.ndim)
    # Negative pads crop.
    crop = tuple(
        slice(-b if b < 0 else 0, x.shape[i] + e if e < 0 else None)
        for i, (b, e) in enumerate(width)
    )
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in width]
    if mode == "constant":
        fill = 0 if value is None or value.size == 0 else value.reshape(-1)[0]
        return np.pad(x, width, mode="constant", constant_values=fill)
    if mode not in ("reflect", "edge", "wrap"):
        raise ValueError(f"unknown Pad mode {mode!r}")
    return np.pad(x, width, mode=mode)  # type: ignore[call-overload]
