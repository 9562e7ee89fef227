"""Reductions (axes as an input, opset 18+), ArgMax/ArgMin, CumSum, TopK."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.ops._infer import int_list, normalize_axis, reduce_shape, same_as_input
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.types import TensorType


def _reduce_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    if ctx.has_input(1):
        axes_arr = ctx.constant(1)
        if axes_arr is None:
            if ctx.attr("keepdims"):
                return [make_type(x.dtype, [None] * x.rank)]
            axes_t = ctx.input(1)
            if axes_t.rank == 1 and isinstance(axes_t.shape[0], int) and axes_t.shape[0] > 0:
                # ONNX axes are distinct, so k axes remove k dims; which ones is known at run
                # time only.
                return [make_type(x.dtype, [None] * (x.rank - axes_t.shape[0]))]
            ctx.fail("axes must be a constant, or a non-empty 1-D tensor of static length")
        axes = int_list(axes_arr)
    else:
        axes = []
    for a in axes:
        normalize_axis(a, x.rank, ctx)
    shape = reduce_shape(
        x.shape, axes, bool(ctx.attr("keepdims")), bool(ctx.attr("noop_with_empty_axes"))
    )
    return [TensorType(x.dtype, shape)]


def _reduce(fn: Callable[[np.ndarray, tuple[int, ...], bool], np.ndarray]) -> Callable:
    def kernel(
        x: np.ndarray, axes: np.ndarray | None = None, *, keepdims: int, noop_with_empty_axes: int
    ) -> np.ndarray:
        ax = int_list(axes) if axes is not None else []
        if not ax:
            if noop_with_empty_axes:
                return x
            ax = list(range(x.ndim))
        axis = tuple(a + x.ndim if a < 0 else a for a in ax)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mean of a size-0 slice is NaN
            return np.asarray(fn(x, axis, bool(keepdims))).astype(x.dtype)

    return kernel


def _lowest(dtype: np.dtype) -> object:
    if dtype.kind == "b":
        return False
    return -np.inf if dtype.kind == "f" or dtype.kind == "V" else np.iinfo(dtype).min


def _highest(dtype: np.dtype) -> object:
    if dtype.kind == "b":
        return True
    return np.inf if dtype.kind == "f" or dtype.kind == "V" else np.iinfo(dtype).max


def _max(x: np.ndarray, axis: tuple[int, ...], keep: bool) -> np.ndarray:
    if x.size == 0:
        fill = _lowest(x.dtype)
        shape = [1 if i in axis else d for i, d in enumerate(x.shape) if keep or i not in axis]
        return np.full(shape, fill, dtype=x.dtype)
    return np.max(x, axis=axis, keepdims=keep)


def _min(x: np.ndarray, axis: tuple[int, ...], keep: bool) -> np.ndarray:
    if x.size == 0:
        fill = _highest(x.dtype)
        shape = [1 if i in axis else d for i, d in enumerate(x.shape) if keep or i not in axis]
        return np.full(shape, fill, dtype=x.dtype)
    return np.min(x, axis=axis, keepdims=keep)


def _acc(x: np.ndarray) -> type:
    return np.float64 if x.dtype.kind == "f" else x.dtype.type


_REDUCTIONS: dict[str, Callable[[np.ndarray, tuple[int, ...], bool], Any]] = {
    "ReduceSum": lambda x, a, k: np.sum(x, axis=a, keepdims=k, dtype=_acc(x)),
    "ReduceMean": lambda x, a, k: np.mean(x, axis=a, keepdims=k, dtype=np.float64),
    "ReduceMax": _max,
    "ReduceMin": _min,
    "ReduceProd": lambda x, a, k: np.prod(x, axis=a, keepdims=k, dtype=_acc(x)),
    "ReduceL1": lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k, dtype=_acc(x)),
    "ReduceL2": lambda x, a, k: np.sqrt(
        np.sum(np.square(x.astype(np.float64)), axis=a, keepdims=k)
    ),
    "ReduceSumSquare": lambda x, a, k: np.sum(np.square(x), axis=a, keepdims=k, dtype=_acc(x)),
    "ReduceLogSum": lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k, dtype=np.float64)),
    "ReduceLogSumExp": lambda x, a, k: _logsumexp(x, a, k),
}


def _logsumexp(x: np.ndarray, axis: tuple[int, ...], keep: bool) -> np.ndarray:
    xd = x.astype(np.float64)
    m = np.max(xd, axis=axis, keepdims=True) if x.size else np.zeros(1)
    m = np.where(np.isfinite(m), m, 0)
    s = np.log(np.sum(np.exp(xd - m), axis=axis, keepdims=True)) + m
    return s if keep else np.squeeze(s, axis=axis)


for _name, _fn in _REDUCTIONS.items():
    register_op(
        _name,
        inputs=["data", "axes?"],
        outputs=["reduced"],
        attrs={"keepdims": Attr("int", 1), "noop_with_empty_axes": Attr("int", 0)},
        infer=_reduce_infer,
    )(_reduce(_fn))


def _arg_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis"), x.rank, ctx)
    shape = reduce_shape(x.shape, [axis], bool(ctx.attr("keepdims")))
    return [TensorType(DType.INT64, shape)]


def _arg(fn: Callable[..., np.ndarray]) -> Callable:
    def kernel(x: np.ndarray, *, axis: int, keepdims: int, select_last_index: int) -> np.ndarray:
        if select_last_index:
            flipped = np.flip(x, axis=axis)
            idx = x.shape[axis] - 1 - fn(flipped, axis=axis)
        else:
            idx = fn(x, axis=axis)
        if keepdims:
            idx = np.expand_dims(idx, axis)
        return np.asarray(idx).astype(np.int64)

    return kernel


for _name, _fn in (("ArgMax", np.argmax), ("ArgMin", np.argmin)):
    register_op(
        _name,
        inputs=["data"],
        outputs=["reduced"],
        attrs={
            "axis": Attr("int", 0),
            "keepdims": Attr("int", 1),
            "select_last_index": Attr("int", 0),
        },
        infer=_arg_infer,
    )(_arg(_fn))


@register_op(
    "CumSum",
    inputs=["x", "axis"],
    outputs=["y"],
    attrs={"exclusive": Attr("int", 0), "reverse": Attr("int", 0)},
    infer=same_as_input(0),
)
def cumsum(x: np.ndarray, axis: np.ndarray, *, exclusive: int, reverse: int) -> np.ndarray:
    a = int(axis)
    y = np.flip(x, a) if reverse else x
    out = np.cumsum(y, axis=a, dtype=x.dtype)
    if exclusive and out.shape[a]:
        out = np.concatenate(
            [np.zeros_like(np.take(out, [0], axis=a)), np.take(out, range(out.shape[a] - 1), a)],
            axis=a,
        )
    return np.flip(out, a) if reverse else out


def _topk_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis"), x.rank, ctx)
    k = ctx.symbolic(1)
    dims = list(x.shape)
    dims[axis] = k[0] if k is not None else None  # type: ignore[call-overload]
    return [make_type(x.dtype, dims), make_type(DType.INT64, dims)]


@register_op(
    "TopK",
    inputs=["X", "K"],
    outputs=["Values", "Indices"],
    attrs={"axis": Attr("int", -1), "largest": Attr("int", 1), "sorted": Attr("int", 1)},
    infer=_topk_infer,
)
def topk(
    x: np.ndarray,
    k: np.ndarray,
    *,
    axis: int,
    largest: int,
    sorted: int,
) -> tuple[np.ndarray, np.ndarray]:
    kk = int(np.asarray(k).reshape(-1)[0])
    # Stable sort; for equal values the lower index comes first (ONNX).
    keys = -x if largest else x
    if x.dtype.kind in "iu" and largest:
        # ~x reverses the order of any integer dtype without overflow (-x wraps at the
        # signed minimum, and unsigned values above the int64 range would go negative).
        keys = ~x
    idx = np.argsort(keys, axis=axis, kind="stable")
    idx = np.take(idx, range(kk), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)
