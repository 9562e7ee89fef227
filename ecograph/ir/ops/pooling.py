"""Pooling ONNX ops: MaxPool, AveragePool, LpPool, GlobalAveragePool, GlobalMaxPool and
MaxUnpool. Window geometry comes from `convolution.py`."""

from __future__ import annotations

from typing import Any

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.ops.convolution import conv_geometry, explicit_pads, sliding_windows
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

# ---------------------------------------- MaxPool, AveragePool, global pools


def _pool_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    kernel = ctx.attr("kernel_shape")
    spatial = conv_geometry(ctx, list(x.shape[2:]), kernel)
    t = make_type(x.dtype, [x.shape[0], x.shape[1], *spatial])
    if ctx.num_outputs > 1:
        return [t, make_type(DType.INT64, t.shape)]
    return [t]


_POOL_ATTRS = {
    "auto_pad": Attr("string", "NOTSET"),
    "ceil_mode": Attr("int", 0),
    "kernel_shape": Attr("ints"),
    "pads": Attr("ints", None),
    "strides": Attr("ints", None),
}


def _pool_out_spatial(
    x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int], pads: list[int],
    ceil_mode: int,
) -> list[int] | None:  # fmt: skip
    if not ceil_mode:
        return None
    n = len(kernel)
    out = []
    for i in range(n):
        eff = (kernel[i] - 1) * dilations[i] + 1
        total = x.shape[2 + i] + pads[i] + pads[i + n] - eff
        o = -(-total // strides[i]) + 1
        if (o - 1) * strides[i] >= x.shape[2 + i] + pads[i]:
            o -= 1
        out.append(o)
    return out


@register_op(
    "MaxPool",
    inputs=["X"],
    outputs=["Y", "Indices?"],
    attrs={**_POOL_ATTRS, "dilations": Attr("ints", None), "storage_order": Attr("int", 0)},
    infer=_pool_infer,
)
def max_pool(
    x: np.ndarray,
    *,
    auto_pad: str,
    ceil_mode: int,
    kernel_shape: list[int],
    pads: list[int] | None,
    strides: list[int] | None,
    dilations: list[int] | None,
    storage_order: int,
    _num_outputs: int = 1,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    n = x.ndim - 2
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    p = explicit_pads(x.shape[2:], list(kernel_shape), strides, dilations, pads, auto_pad)
    out_sp = _pool_out_spatial(x, list(kernel_shape), strides, dilations, p, ceil_mode)
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    win = sliding_windows(x, list(kernel_shape), strides, dilations, p, fill, out_sp)
    axes = tuple(range(-n, 0))
    y = win.max(axis=axes).astype(x.dtype)
    if _num_outputs < 2:
        return y
    # Indices: flat positions in the whole input tensor, padding not counted; storage_order 1
    # numbers the two spatial axes column-major.
    spatial = x.shape[2:]
    pos = np.arange(int(np.prod(spatial)), dtype=np.int64).reshape(spatial)
    if storage_order and n == 2:
        pos = np.arange(spatial[0])[:, None] + np.arange(spatial[1])[None, :] * spatial[0]
    pos_win = sliding_windows(
        pos[None, None], list(kernel_shape), strides, dilations, p, -1, out_sp
    )
    flat = win.reshape(*win.shape[: 2 + n], -1)
    arg = np.argmax(flat, axis=-1)
    pos_flat = pos_win.reshape(*pos_win.shape[: 2 + n], -1)
    local = np.take_along_axis(
        np.broadcast_to(pos_flat, (*flat.shape[:2], *pos_flat.shape[2:])), arg[..., None], -1
    )[..., 0]
    channel = np.arange(x.shape[0] * x.shape[1], dtype=np.int64).reshape(
        x.shape[0], x.shape[1], *[1] * n
    )
    return y, (channel * int(np.prod(spatial)) + local).astype(np.int64)


@register_op(
    "AveragePool",
    inputs=["X"],
    outputs=["Y"],
    attrs={**_POOL_ATTRS, "count_include_pad": Attr("int", 0), "dilations": Attr("ints", None)},
    infer=_pool_infer,
)
def average_pool(
    x: np.ndarray,
    *,
    auto_pad: str,
    ceil_mode: int,
    kernel_shape: list[int],
    pads: list[int] | None,
    strides: list[int] | None,
    count_include_pad: int,
    dilations: list[int] | None,
) -> np.ndarray:
    n = x.ndim - 2
    kernel = list(kernel_shape)
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    p = explicit_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    out_sp = _pool_out_spatial(x, kernel, strides, dilations, p, ceil_mode)
    axes = tuple(range(-n, 0))
    win = sliding_windows(x.astype(np.float64), kernel, strides, dilations, p, 0.0, out_sp)
    total = win.sum(axis=axes)
    if count_include_pad:
        # Padding counts, but the extra right padding added by ceil_mode does not.
        ones = np.pad(
            np.ones((1, 1, *x.shape[2:])),
            [(0, 0), (0, 0)] + [(p[i], p[i + n]) for i in range(n)],
            constant_values=1.0,
        )
        cnt = sliding_windows(ones, kernel, strides, dilations, [0] * (2 * n), 0.0, out_sp).sum(
            axes
        )
    else:
        ones = np.ones((1, 1, *x.shape[2:]))
        cnt = sliding_windows(ones, kernel, strides, dilations, p, 0.0, out_sp).sum(axis=axes)
    return (total / cnt).astype(x.dtype)


def _global_pool_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    return [x.with_shape([*x.shape[:2], *[1] * (x.rank - 2)])]


@register_op("GlobalAveragePool", inputs=["X"], outputs=["Y"], infer=_global_pool_infer)
def global_average_pool(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64).astype(x.dtype)


@register_op("GlobalMaxPool", inputs=["X"], outputs=["Y"], infer=_global_pool_infer)
def global_max_pool(x: np.ndarray) -> np.ndarray:
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


# -------------------------------------------------------------------- LpPool


def _lp_pool_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    spatial = conv_geometry(ctx, list(x.shape[2:]), ctx.attr("kernel_shape"))
    return [make_type(x.dtype, [x.shape[0], x.shape[1], *spatial])]


@register_op(
    "LpPool",
    inputs=["X"],
    outputs=["Y"],
    attrs={
        "auto_pad": Attr("string", "NOTSET"),
        "ceil_mode": Attr("int", 0),
        "dilations": Attr("ints", None),
        "kernel_shape": Attr("ints"),
        "p": Attr("int", 2),
        "pads": Attr("ints", None),
        "strides": Attr("ints", None),
    },
    infer=_lp_pool_infer,
)
def lp_pool(
    x: np.ndarray,
    *,
    auto_pad: str,
    ceil_mode: int,
    dilations: list[int] | None,
    kernel_shape: list[int],
    p: int,
    pads: list[int] | None,
    strides: list[int] | None,
) -> np.ndarray:
    n = x.ndim - 2
    kernel = list(kernel_shape)
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    pd = explicit_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    out_sp = _pool_out_spatial(x, kernel, strides, dilations, pd, ceil_mode)
    powered = np.power(np.abs(x.astype(np.float64)), p)
    win = sliding_windows(powered, kernel, strides, dilations, pd, 0.0, out_sp)
    total = win.sum(axis=tuple(range(-n, 0)))
    return np.power(total, 1.0 / p).astype(x.dtype)


# -------------------------------------------------------------------- MaxUnpool


def _max_unpool_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    if ctx.has_input(2):
        dims = ctx.symbolic(2)
        if dims is None:
            return [make_type(x.dtype, [None] * x.rank)]
        return [TensorType(x.dtype, dims)]
    return [TensorType(x.dtype, unpool_shape(list(x.shape), ctx.attrs))]


def unpool_shape(shape: list[Dim], attrs: dict[str, Any]) -> list[Dim]:
    kernel = attrs["kernel_shape"]
    n = len(kernel)
    strides = attrs.get("strides") or [1] * n
    pads = attrs.get("pads") or [0] * (2 * n)
    out = list(shape[:2])
    for i in range(n):
        d = symbolic.mul(symbolic.sub(shape[2 + i], 1), strides[i])
        out.append(symbolic.add(d, kernel[i] - pads[i] - pads[i + n]))
    return out


@register_op(
    "MaxUnpool",
    inputs=["X", "I", "output_shape?"],
    outputs=["output"],
    attrs={
        "kernel_shape": Attr("ints"),
        "pads": Attr("ints", None),
        "strides": Attr("ints", None),
    },
    infer=_max_unpool_infer,
)
def max_unpool(
    x: np.ndarray,
    indices: np.ndarray,
    output_shape: np.ndarray | None = None,
    *,
    kernel_shape: list[int],
    pads: list[int] | None,
    strides: list[int] | None,
) -> np.ndarray:
    attrs = {"kernel_shape": kernel_shape, "pads": pads, "strides": strides}
    inferred = [int(d) for d in unpool_shape(list(x.shape), attrs)]
    flat = np.zeros(int(np.prod(inferred)), dtype=x.dtype)
    flat[indices.reshape(-1).astype(np.int64)] = x.reshape(-1)
    y = flat.reshape(inferred)
    if output_shape is None:
        return y
    out = np.zeros(tuple(int(d) for d in output_shape), dtype=x.dtype)
    out[tuple(slice(0, d) for d in inferred)] = y
    return out
