"""More neural-network ONNX ops with numpy kernels: ConvTranspose, ConvInteger, QLinearMatMul,
LpPool, MaxUnpool, GroupNormalization, MeanVarianceNormalization, LpNormalization."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.ops._infer import normalize_axis, same_as_input
from ecograph.ir.ops.nn import (
    _CONV_ATTRS,
    _conv_geometry,
    _explicit_pads,
    _pool_out_spatial,
    _windows,
    conv,
    exact_int_matmul,
    matmul_shape,
)
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

# --------------------------------------------------------------- ConvTranspose


def _conv_transpose_pads(
    in_sp: list[Dim],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    out_pad: list[int],
    pads: list[int] | None,
    output_shape: list[int] | None,
    auto_pad: str,
) -> tuple[list[Dim], list[int] | None]:
    """Output spatial dims and explicit pads (None when they depend on symbolic dims)."""
    n = len(kernel)
    full = [
        symbolic.add(symbolic.mul(symbolic.sub(d, 1), strides[i]),
                     out_pad[i] + (kernel[i] - 1) * dilations[i] + 1)
        for i, d in enumerate(in_sp)
    ]  # fmt: skip
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [symbolic.mul(d, strides[i]) for i, d in enumerate(in_sp)]  # type: ignore[misc]
    if output_shape is not None:
        target: list[Dim] = list(output_shape[-n:])
        if not all(
            isinstance(f, int) and isinstance(t, int) for f, t in zip(full, target, strict=True)
        ):
            return target, None
        p = [0] * (2 * n)
        for i in range(n):
            total = int(full[i]) - int(target[i])  # both static, checked above
            if auto_pad == "SAME_UPPER":
                p[i], p[i + n] = total // 2, total - total // 2
            else:
                p[i], p[i + n] = total - total // 2, total // 2
        return target, p
    p = list(pads) if pads else [0] * (2 * n)
    return [symbolic.sub(full[i], p[i] + p[i + n]) for i in range(n)], p


def _conv_transpose_infer(ctx: InferContext) -> list[TensorType]:
    x, w = ctx.input(0), ctx.input(1)
    n = x.rank - 2
    kernel = ctx.attr("kernel_shape") or list(w.shape[2:])
    if not all(isinstance(k, int) for k in kernel):
        ctx.fail("kernel shape must be static")
    out_sp, _ = _conv_transpose_pads(
        list(x.shape[2:]),
        [int(k) for k in kernel],
        ctx.attr("strides") or [1] * n,
        ctx.attr("dilations") or [1] * n,
        ctx.attr("output_padding") or [0] * n,
        ctx.attr("pads"),
        ctx.attr("output_shape"),
        ctx.attr("auto_pad"),
    )
    return [TensorType(x.dtype, [x.shape[0], symbolic.mul(w.shape[1], ctx.attr("group")),
                                 *out_sp])]  # fmt: skip


@register_op(
    "ConvTranspose",
    inputs=["X", "W", "B?"],
    outputs=["Y"],
    attrs={
        **_CONV_ATTRS,
        "output_padding": Attr("ints", None),
        "output_shape": Attr("ints", None),
    },
    infer=_conv_transpose_infer,
)
def conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str,
    dilations: list[int] | None,
    group: int,
    kernel_shape: list[int] | None,
    output_padding: list[int] | None,
    output_shape: list[int] | None,
    pads: list[int] | None,
    strides: list[int] | None,
) -> np.ndarray:
    n = x.ndim - 2
    kernel = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    out_pad = list(output_padding or [0] * n)
    _, p = _conv_transpose_pads(
        list(x.shape[2:]), kernel, strides, dilations, out_pad, pads, output_shape, auto_pad
    )
    assert p is not None
    acc = np.float64 if x.dtype == np.float64 else np.float32
    batch, cin = x.shape[:2]
    mg = w.shape[1]
    cg = cin // group
    full = [(x.shape[2 + i] - 1) * strides[i] + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
            for i in range(n)]  # fmt: skip
    y = np.zeros((batch, mg * group, *full), dtype=acc)
    xs = x.astype(acc)
    ws = w.astype(acc)
    for g in range(group):
        xg = xs[:, g * cg : (g + 1) * cg]
        for kk in itertools.product(*[range(k) for k in kernel]):
            wk = ws[(slice(g * cg, (g + 1) * cg), slice(None), *kk)]  # (cg, mg)
            contrib = np.tensordot(xg, wk, axes=([1], [0]))  # (N, *in_sp, mg)
            contrib = np.moveaxis(contrib, -1, 1)
            index: list[Any] = [slice(None), slice(g * mg, (g + 1) * mg)]
            for i in range(n):
                start = kk[i] * dilations[i]
                index.append(slice(start, start + (x.shape[2 + i] - 1) * strides[i] + 1,
                                   strides[i]))  # fmt: skip
            y[tuple(index)] += contrib
    # Crop the pads (negative pads grow the output with zeros).
    width = [(0, 0), (0, 0)] + [(max(-p[i], 0), max(-p[i + n], 0)) for i in range(n)]
    if any(a or c for a, c in width):
        y = np.pad(y, width)
    crop = [slice(None), slice(None)] + [
        slice(max(p[i], 0), y.shape[2 + i] - max(p[i + n], 0)) for i in range(n)
    ]
    y = y[tuple(crop)]
    if b is not None:
        y = y + b.astype(acc).reshape(1, -1, *[1] * n)
    return y.astype(x.dtype)


# ------------------------------------------------------------ ConvInteger


def _conv_integer_infer(ctx: InferContext) -> list[TensorType]:
    from ecograph.ir.ops.nn import _conv_infer

    t = _conv_infer(ctx)[0]
    return [make_type(DType.INT32, t.shape)]


@register_op(
    "ConvInteger",
    inputs=["x", "w", "x_zero_point?", "w_zero_point?"],
    outputs=["y"],
    attrs=_CONV_ATTRS,
    infer=_conv_integer_infer,
)
def conv_integer(
    x: np.ndarray,
    w: np.ndarray,
    x_zp: np.ndarray | None = None,
    w_zp: np.ndarray | None = None,
    **attrs: Any,
) -> np.ndarray:
    # Exact: products and sums of 8-bit values stay far below 2**53 in float64.
    xd = x.astype(np.float64) - (0 if x_zp is None else x_zp.astype(np.float64))
    wd = w.astype(np.float64)
    if w_zp is not None:
        wz = w_zp.astype(np.float64)
        wd = wd - (wz.reshape(-1, *[1] * (w.ndim - 1)) if wz.ndim == 1 and wz.size > 1 else wz)
    return np.rint(conv(xd, wd, **attrs)).astype(np.int32)


# ------------------------------------------------------------ QLinearMatMul


def _qlinear_matmul_infer(ctx: InferContext) -> list[TensorType]:
    dtype = ctx.input(7).dtype
    return [TensorType(dtype, matmul_shape(ctx, ctx.input(0), ctx.input(3)))]


@register_op(
    "QLinearMatMul",
    inputs=[
        "a",
        "a_scale",
        "a_zero_point",
        "b",
        "b_scale",
        "b_zero_point",
        "y_scale",
        "y_zero_point",
    ],
    outputs=["y"],
    infer=_qlinear_matmul_infer,
)
def qlinear_matmul(
    a: np.ndarray,
    a_scale: np.ndarray,
    a_zp: np.ndarray,
    b: np.ndarray,
    b_scale: np.ndarray,
    b_zp: np.ndarray,
    y_scale: np.ndarray,
    y_zp: np.ndarray,
) -> np.ndarray:
    """Integer matmul of zero-point-shifted inputs, rescaled by a_scale*b_scale/y_scale,
    rounded half to even and saturated to y's type (as onnx.reference computes it)."""
    acc = exact_int_matmul(
        a.astype(np.int32) - a_zp.astype(np.int32), b.astype(np.int32) - b_zp.astype(np.int32)
    )
    scaled = acc * (a_scale * b_scale / y_scale) + y_zp
    info = np.iinfo(y_zp.dtype)
    return np.clip(np.rint(scaled), info.min, info.max).astype(y_zp.dtype)


# -------------------------------------------------------------------- LpPool


def _lp_pool_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    spatial = _conv_geometry(ctx, list(x.shape[2:]), ctx.attr("kernel_shape"))
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
    pd = _explicit_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    out_sp = _pool_out_spatial(x, kernel, strides, dilations, pd, ceil_mode)
    powered = np.power(np.abs(x.astype(np.float64)), p)
    win = _windows(powered, kernel, strides, dilations, pd, 0.0, out_sp)
    total = win.sum(axis=tuple(range(-n, 0)))
    return np.power(total, 1.0 / p).astype(x.dtype)


# ------------------------------------------------------------------ MaxUnpool


def _max_unpool_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    if ctx.has_input(2):
        dims = ctx.symbolic(2)
        if dims is None:
            return [make_type(x.dtype, [None] * x.rank)]
        return [TensorType(x.dtype, dims)]
    return [TensorType(x.dtype, _unpool_shape(list(x.shape), ctx.attrs))]


def _unpool_shape(shape: list[Dim], attrs: dict[str, Any]) -> list[Dim]:
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
    inferred = [int(d) for d in _unpool_shape(list(x.shape), attrs)]
    flat = np.zeros(int(np.prod(inferred)), dtype=x.dtype)
    flat[indices.reshape(-1).astype(np.int64)] = x.reshape(-1)
    y = flat.reshape(inferred)
    if output_shape is None:
        return y
    out = np.zeros(tuple(int(d) for d in output_shape), dtype=x.dtype)
    out[tuple(slice(0, d) for d in inferred)] = y
    return out


# -------------------------------------------------------------- normalizations


@register_op(
    "GroupNormalization",
    inputs=["X", "scale", "bias"],
    outputs=["Y"],
    attrs={
        "epsilon": Attr("float", 1e-5),
        "num_groups": Attr("int"),
        "stash_type": Attr("int", 1),
    },
    infer=same_as_input(0),
)
def group_norm(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    *,
    epsilon: float,
    num_groups: int,
    stash_type: int,
) -> np.ndarray:
    stash = DType.from_onnx(stash_type).numpy
    xs = x.astype(stash).reshape(x.shape[0], num_groups, -1)
    mean = xs.mean(axis=-1, keepdims=True)
    var = xs.var(axis=-1, keepdims=True)
    normed = ((xs - mean) / np.sqrt(var + stash.type(epsilon))).reshape(x.shape)
    shape = [1, -1] + [1] * (x.ndim - 2)
    y = normed * scale.astype(stash).reshape(shape) + bias.astype(stash).reshape(shape)
    return y.astype(x.dtype)


@register_op(
    "MeanVarianceNormalization",
    inputs=["X"],
    outputs=["Y"],
    attrs={"axes": Attr("ints", [0, 2, 3])},
    infer=same_as_input(0),
)
def mean_variance_norm(x: np.ndarray, *, axes: list[int]) -> np.ndarray:
    """(X - E[X]) / (sqrt(E[X²] - E[X]²) + 1e-9), the ONNX function body's formula."""
    ax = tuple(a + x.ndim if a < 0 else a for a in axes)
    xd = x.astype(np.float64)
    mean = xd.mean(axis=ax, keepdims=True)
    std = np.sqrt(np.maximum((xd * xd).mean(axis=ax, keepdims=True) - mean * mean, 0))
    return ((xd - mean) / (std + 1e-9)).astype(x.dtype)


def _lp_norm_infer(ctx: InferContext) -> list[TensorType]:
    normalize_axis(ctx.attr("axis"), ctx.input(0).rank, ctx)
    if ctx.attr("p") not in (1, 2):
        ctx.fail(f"p must be 1 or 2, got {ctx.attr('p')}")
    return [ctx.input(0)]


@register_op(
    "LpNormalization",
    inputs=["input"],
    outputs=["output"],
    attrs={"axis": Attr("int", -1), "p": Attr("int", 2)},
    infer=_lp_norm_infer,
)
def lp_norm(x: np.ndarray, *, axis: int, p: int) -> np.ndarray:
    xd = x.astype(np.float64)
    if p == 1:
        norm = np.abs(xd).sum(axis=axis, keepdims=True)
    else:
        norm = np.sqrt((xd * xd).sum(axis=axis, keepdims=True))
    with np.errstate(all="ignore"):
        y = np.where(norm == 0, 0, xd / norm)
    return y.astype(x.dtype)
