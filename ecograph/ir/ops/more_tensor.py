"""More tensor ONNX ops with numpy kernels: DepthToSpace, SpaceToDepth, GatherND, ScatterND,
ScatterElements, OneHot, NonZero, EyeLike, Compress, Shrink, ReverseSequence, Einsum, Det,
CenterCropPad and the window functions."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.ops._infer import broadcast_shapes, int_list, normalize_axis, same_as_input
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

# ------------------------------------------------------- DepthToSpace / SpaceToDepth


def _depth_to_space_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    bs = ctx.attr("blocksize")
    if x.rank != 4:
        ctx.fail(f"input must be 4-D, got {x}")
    n, c, h, w = x.shape
    return [x.with_shape([n, symbolic.floordiv(c, bs * bs), symbolic.mul(h, bs),
                          symbolic.mul(w, bs)])]  # fmt: skip


@register_op(
    "DepthToSpace",
    inputs=["input"],
    outputs=["output"],
    attrs={"blocksize": Attr("int"), "mode": Attr("string", "DCR")},
    infer=_depth_to_space_infer,
)
def depth_to_space(x: np.ndarray, *, blocksize: int, mode: str) -> np.ndarray:
    b, c, h, w = x.shape
    bs = blocksize
    if mode == "DCR":
        t = x.reshape(b, bs, bs, c // (bs * bs), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(b, c // (bs * bs), bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(b, c // (bs * bs), h * bs, w * bs)


def _space_to_depth_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    bs = ctx.attr("blocksize")
    if x.rank != 4:
        ctx.fail(f"input must be 4-D, got {x}")
    n, c, h, w = x.shape
    return [x.with_shape([n, symbolic.mul(c, bs * bs), symbolic.floordiv(h, bs),
                          symbolic.floordiv(w, bs)])]  # fmt: skip


@register_op(
    "SpaceToDepth",
    inputs=["input"],
    outputs=["output"],
    attrs={"blocksize": Attr("int")},
    infer=_space_to_depth_infer,
)
def space_to_depth(x: np.ndarray, *, blocksize: int) -> np.ndarray:
    b, c, h, w = x.shape
    bs = blocksize
    t = x.reshape(b, c, h // bs, bs, w // bs, bs).transpose(0, 3, 5, 1, 2, 4)
    return t.reshape(b, c * bs * bs, h // bs, w // bs)


# --------------------------------------------------------------- GatherND / Scatter


def _gather_nd_infer(ctx: InferContext) -> list[TensorType]:
    data, idx = ctx.input(0), ctx.input(1)
    b = ctx.attr("batch_dims")
    k = idx.shape[-1] if idx.rank else None
    if not isinstance(k, int):
        ctx.fail("the last dim of indices must be static")
    return [data.with_shape([*idx.shape[:-1], *data.shape[b + k :]])]


@register_op(
    "GatherND",
    inputs=["data", "indices"],
    outputs=["output"],
    attrs={"batch_dims": Attr("int", 0)},
    infer=_gather_nd_infer,
)
def gather_nd(data: np.ndarray, indices: np.ndarray, *, batch_dims: int) -> np.ndarray:
    b = batch_dims
    batch_shape = data.shape[:b]
    k = indices.shape[-1]
    nb = int(np.prod(batch_shape, dtype=np.int64))
    d = data.reshape(nb, *data.shape[b:])
    idx = indices.reshape(nb, -1, k).astype(np.int64)
    dims = np.array(data.shape[b : b + k], dtype=np.int64)
    idx = np.where(idx < 0, idx + dims, idx)
    out = np.stack([d[i][tuple(idx[i].T)] for i in range(nb)]) if nb else d[:0]
    return out.reshape(*indices.shape[:-1], *data.shape[b + k :])


def _reduce_into(target: np.ndarray, index: Any, update: np.ndarray, reduction: str) -> None:
    if reduction == "none":
        target[index] = update
    elif reduction == "add":
        target[index] = target[index] + update
    elif reduction == "mul":
        target[index] = target[index] * update
    elif reduction == "max":
        target[index] = np.maximum(target[index], update)
    elif reduction == "min":
        target[index] = np.minimum(target[index], update)
    else:
        raise ValueError(f"unknown reduction {reduction!r}")


@register_op(
    "ScatterND",
    inputs=["data", "indices", "updates"],
    outputs=["output"],
    attrs={"reduction": Attr("string", "none")},
    infer=same_as_input(0),
)
def scatter_nd(
    data: np.ndarray, indices: np.ndarray, updates: np.ndarray, *, reduction: str
) -> np.ndarray:
    out = data.copy()
    k = indices.shape[-1]
    idx = indices.reshape(-1, k).astype(np.int64)
    upd = updates.reshape(idx.shape[0], *data.shape[k:])
    for i in range(idx.shape[0]):  # sequential: duplicates reduce in order, as ONNX says
        _reduce_into(out, tuple(idx[i]), upd[i], reduction)
    return out


@register_op(
    "ScatterElements",
    inputs=["data", "indices", "updates"],
    outputs=["output"],
    attrs={"axis": Attr("int", 0), "reduction": Attr("string", "none")},
    infer=same_as_input(0),
)
def scatter_elements(
    data: np.ndarray, indices: np.ndarray, updates: np.ndarray, *, axis: int, reduction: str
) -> np.ndarray:
    out = data.copy()
    axis = axis + data.ndim if axis < 0 else axis
    idx = indices.astype(np.int64)
    idx = np.where(idx < 0, idx + data.shape[axis], idx)
    for pos in np.ndindex(*idx.shape):
        target = list(pos)
        target[axis] = int(idx[pos])
        _reduce_into(out, tuple(target), updates[pos], reduction)
    return out


# --------------------------------------------------------------------- OneHot


def _one_hot_infer(ctx: InferContext) -> list[TensorType]:
    idx, values = ctx.input(0), ctx.input(2)
    rank = idx.rank + 1
    axis = normalize_axis(ctx.attr("axis"), rank, ctx)
    depth = ctx.constant(1)
    dims: list[Dim | None] = list(idx.shape)
    dims.insert(axis, None if depth is None else int(np.asarray(depth).reshape(-1)[0]))
    return [make_type(values.dtype, dims)]


@register_op(
    "OneHot",
    inputs=["indices", "depth", "values"],
    outputs=["output"],
    attrs={"axis": Attr("int", -1)},
    infer=_one_hot_infer,
)
def one_hot(indices: np.ndarray, depth: np.ndarray, values: np.ndarray, *, axis: int) -> np.ndarray:
    d = int(np.asarray(depth).reshape(-1)[0])
    idx = indices.astype(np.int64)
    idx = np.where(idx < 0, idx + d, idx)
    rank = indices.ndim + 1
    axis = axis + rank if axis < 0 else axis
    classes = np.arange(d).reshape([d if i == axis else 1 for i in range(rank)])
    hot = np.expand_dims(idx, axis) == classes
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return np.where(hot, on, off).astype(values.dtype)


# ------------------------------------------------------------ NonZero, Compress


@register_op(
    "NonZero",
    inputs=["X"],
    outputs=["Y"],
    infer=lambda c: [make_type(DType.INT64, [c.input(0).rank, None])],
)
def non_zero(x: np.ndarray) -> np.ndarray:
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


def _compress_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    axis = ctx.attr("axis")
    if axis is None:
        return [make_type(x.dtype, [None])]
    a = normalize_axis(axis, x.rank, ctx)
    dims: list[Dim | None] = list(x.shape)
    dims[a] = None
    return [make_type(x.dtype, dims)]


@register_op(
    "Compress",
    inputs=["input", "condition"],
    outputs=["output"],
    attrs={"axis": Attr("int", None)},
    infer=_compress_infer,
)
def compress(x: np.ndarray, condition: np.ndarray, *, axis: int | None) -> np.ndarray:
    return np.compress(condition.astype(bool), x, axis=axis)


# ------------------------------------------------------------------- EyeLike


def _eye_like_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    if x.rank != 2:
        ctx.fail(f"input must be 2-D, got {x}")
    dtype = ctx.attr("dtype")
    return [x.with_dtype(DType.from_onnx(dtype) if dtype else x.dtype)]


@register_op(
    "EyeLike",
    inputs=["input"],
    outputs=["output"],
    attrs={"dtype": Attr("int", None), "k": Attr("int", 0)},
    infer=_eye_like_infer,
)
def eye_like(x: np.ndarray, *, dtype: int | None, k: int) -> np.ndarray:
    out = DType.from_onnx(dtype).numpy if dtype else x.dtype
    return np.eye(x.shape[0], x.shape[1], k=k).astype(out)


# -------------------------------------------------------------------- Shrink


@register_op(
    "Shrink",
    inputs=["input"],
    outputs=["output"],
    attrs={"bias": Attr("float", 0.0), "lambd": Attr("float", 0.5)},
    infer=same_as_input(0),
)
def shrink(x: np.ndarray, *, bias: float, lambd: float) -> np.ndarray:
    xd = x.astype(np.float64)
    y = np.where(xd < -lambd, xd + bias, np.where(xd > lambd, xd - bias, 0))
    return y.astype(x.dtype)


# ------------------------------------------------------------ ReverseSequence


@register_op(
    "ReverseSequence",
    inputs=["input", "sequence_lens"],
    outputs=["Y"],
    attrs={"batch_axis": Attr("int", 1), "time_axis": Attr("int", 0)},
    infer=same_as_input(0),
)
def reverse_sequence(
    x: np.ndarray, lens: np.ndarray, *, batch_axis: int, time_axis: int
) -> np.ndarray:
    out = x.copy()
    for b, n in enumerate(int_list(lens)):
        index: list[Any] = [slice(None)] * x.ndim
        index[batch_axis] = b
        index[time_axis] = slice(0, n)
        src = x[tuple(index)]
        t_axis = time_axis - (1 if batch_axis < time_axis else 0)
        out[tuple(index)] = np.flip(src, axis=t_axis)
    return out


# --------------------------------------------------------------------- Einsum


def _einsum_terms(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"equation {equation!r} has {len(terms)} terms for {len(ranks)} inputs")
    if not arrow:
        letters = [c for c in re.sub(r"\.\.\.", "", lhs) if c.isalpha()]
        singles = sorted(c for c in set(letters) if letters.count(c) == 1)
        rhs = ("..." if "..." in lhs else "") + "".join(singles)
    return terms, rhs


def _einsum_infer(ctx: InferContext) -> list[TensorType]:
    types = ctx.inputs()
    terms, rhs = _einsum_terms(ctx.attr("equation"), [t.rank for t in types])
    sizes: dict[str, Dim] = {}
    ellipsis_shapes: list[list[Dim]] = []
    for term, t in zip(terms, types, strict=True):
        letters = term.replace("...", "")
        n_ell = t.rank - len(letters)
        pos = term.find("...")
        shape = list(t.shape)
        if pos >= 0:
            ellipsis_shapes.append(shape[pos : pos + n_ell])
            shape = shape[:pos] + shape[pos + n_ell :]
        for c, d in zip(letters, shape, strict=True):
            if sizes.get(c, 1) == 1:
                sizes[c] = d
    ellipsis = broadcast_shapes(ellipsis_shapes, f"node {ctx.node.name}: ")
    out: list[Dim | None] = []
    for part in re.split(r"(\.\.\.)", rhs):
        out.extend(ellipsis if part == "..." else [sizes[c] for c in part])
    return [make_type(types[0].dtype, out)]


@register_op(
    "Einsum",
    inputs=["Inputs*"],
    outputs=["Output"],
    attrs={"equation": Attr("string")},
    infer=_einsum_infer,
)
def einsum(*xs: np.ndarray, equation: str) -> np.ndarray:
    # numpy's einsum has no bfloat16 loop; 16-bit floats accumulate in float32.
    acc = [x.astype(np.float32) if x.dtype.itemsize == 2 and x.dtype.kind != "i" and
           x.dtype.kind != "u" else x for x in xs]  # fmt: skip
    return np.asarray(np.einsum(equation.replace(" ", ""), *acc)).astype(xs[0].dtype)


# ------------------------------------------------------------------------ Det


@register_op(
    "Det",
    inputs=["X"],
    outputs=["Y"],
    infer=lambda c: [c.input(0).with_shape(c.input(0).shape[:-2])],
)
def det(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.linalg.det(x.astype(np.float64))).astype(x.dtype)


# --------------------------------------------------------------- CenterCropPad


def _center_crop_pad_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    shape = ctx.symbolic(1)
    axes = ctx.attr("axes") or list(range(x.rank))
    dims: list[Dim | None] = list(x.shape)
    for j, a in enumerate(axes):
        a = normalize_axis(a, x.rank, ctx)
        dims[a] = shape[j] if shape is not None else None
    return [make_type(x.dtype, dims)]


@register_op(
    "CenterCropPad",
    inputs=["input_data", "shape"],
    outputs=["output_data"],
    attrs={"axes": Attr("ints", None)},
    infer=_center_crop_pad_infer,
)
def center_crop_pad(x: np.ndarray, shape: np.ndarray, *, axes: list[int] | None) -> np.ndarray:
    axes_l = [a + x.ndim if a < 0 else a for a in (axes or range(x.ndim))]
    out = x
    for a, size in zip(axes_l, int_list(shape), strict=True):
        cur = out.shape[a]
        if size < cur:  # crop: the extra element goes to the end
            start = (cur - size) // 2
            out = np.take(out, range(start, start + size), axis=a)
        elif size > cur:  # pad: the extra element goes to the end
            before = (size - cur) // 2
            width = [(0, 0)] * out.ndim
            width[a] = (before, size - cur - before)
            out = np.pad(out, width)
    return out


# ------------------------------------------------------------ window functions


def _window_infer(ctx: InferContext) -> list[TensorType]:
    dtype = DType.from_onnx(ctx.attr("output_datatype"))
    size = ctx.symbolic(0)
    return [make_type(dtype, [size[0] if size is not None else None])]


def _window(name: str, coeffs: tuple[float, ...]) -> None:
    def kernel(size: np.ndarray, *, output_datatype: int, periodic: int) -> np.ndarray:
        n = int(np.asarray(size).reshape(-1)[0])
        denom = n if periodic else n - 1
        k = np.arange(n, dtype=np.float64)
        w = np.zeros(n)
        for i, a in enumerate(coeffs):
            w = w + (-1) ** i * a * np.cos(2 * np.pi * i * k / denom)
        return w.astype(DType.from_onnx(output_datatype).numpy)

    register_op(
        name,
        inputs=["size"],
        outputs=["output"],
        attrs={"output_datatype": Attr("int", 1), "periodic": Attr("int", 1)},
        infer=_window_infer,
        doc=f"ONNX {name}: a generalized cosine window with coefficients {coeffs}.",
    )(kernel)


_window("HannWindow", (0.5, 0.5))
_window("HammingWindow", (25 / 46, 21 / 46))
_window("BlackmanWindow", (0.42, 0.5, 0.08))
