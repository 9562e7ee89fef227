"""Indexing ONNX ops beyond Gather (which `tensor.py` holds with the shape math): GatherND,
ScatterND, ScatterElements, OneHot, NonZero, Compress."""

from __future__ import annotations

from typing import Any

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.ops._infer import normalize_axis, same_as_input
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

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
