"""Neural-network ONNX ops: MatMul, Gemm, Conv, pooling, normalization, softmax."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.ops._infer import broadcast_shapes, normalize_axis, same_as_input
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

# ---------------------------------------------------------------------- MatMul


def matmul_shape(ctx: InferContext, a: TensorType, b: TensorType) -> list[Dim]:
    if a.rank == 0 or b.rank == 0:
        ctx.fail("MatMul inputs must have rank >= 1")
    sa, sb = list(a.shape), list(b.shape)
    if len(sa) == 1:
        sa = [1, *sa]
    if len(sb) == 1:
        sb = [*sb, 1]
    k1, k2 = sa[-1], sb[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        ctx.fail(f"inner dims differ: {a} @ {b}")
    batch = broadcast_shapes([sa[:-2], sb[:-2]], f"node {ctx.node.name}: ")
    out: list[Dim] = [d if d is not None else 1 for d in batch] + [sa[-2], sb[-1]]
    if a.rank == 1:
        out.pop(-2)
    if b.rank == 1:
        out.pop(-1)
    return out


def _matmul_infer(ctx: InferContext) -> list[TensorType]:
    a, b = ctx.input(0), ctx.input(1)
    if a.dtype != b.dtype:
        ctx.fail(f"input dtypes differ: {a.dtype} and {b.dtype}")
    return [TensorType(a.dtype, matmul_shape(ctx, a, b))]


@register_op("MatMul", inputs=["A", "B"], outputs=["Y"], infer=_matmul_infer)
def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype in (np.float16,) or str(a.dtype) == "bfloat16":
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return np.matmul(a, b)


def _matmul_integer_infer(ctx: InferContext) -> list[TensorType]:
    return [TensorType(DType.INT32, matmul_shape(ctx, ctx.input(0), ctx.input(1)))]


@register_op(
    "MatMulInteger",
    inputs=["A", "B", "a_zero_point?", "b_zero_point?"],
    outputs=["Y"],
    infer=_matmul_integer_infer,
)
def matmul_integer(
    a: np.ndarray, b: np.ndarray, a_zp: np.ndarray | None = None, b_zp: np.ndarray | None = None
) -> np.ndarray:
    a32 = a.astype(np.int32) - (0 if a_zp is None else _zp_rows(a_zp, a.ndim, -2))
    b32 = b.astype(np.int32) - (0 if b_zp is None else b_zp.astype(np.int32))
    return exact_int_matmul(a32, b32)


def exact_int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matmul with int32 results, through float64 BLAS when that is exact.

    numpy's integer matmul has no BLAS path and is ~100x slower; float64 holds every partial
    sum exactly while K * max|a| * max|b| < 2^53 (always so for 8-bit operands).
    """
    k = a.shape[-1] if a.ndim else 1
    bound = k * int(np.abs(a).max(initial=0)) * int(np.abs(b).max(initial=0))
    if bound < 2**53:
        return (
            np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64).astype(np.int32)
        )
    return np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(np.int32)


def _zp_rows(zp: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    zp32 = zp.astype(np.int32)
    if zp32.ndim == 1 and zp32.size > 1:
        shape = [1] * ndim
        shape[axis] = zp32.size
        return zp32.reshape(shape)
    return zp32


# ------------------------------------------------------------------------ Gemm


def _gemm_infer(ctx: InferContext) -> list[TensorType]:
    a, b = ctx.input(0), ctx.input(1)
    if a.rank != 2 or b.rank != 2:
        ctx.fail(f"Gemm takes 2-D inputs, got {a} and {b}")
    m = a.shape[1] if ctx.attr("transA") else a.shape[0]
    n = b.shape[0] if ctx.attr("transB") else b.shape[1]
    return [TensorType(a.dtype, [m, n])]


@register_op(
    "Gemm",
    inputs=["A", "B", "C?"],
    outputs=["Y"],
    attrs={
        "alpha": Attr("float", 1.0),
        "beta": Attr("float", 1.0),
        "transA": Attr("int", 0),
        "transB": Attr("int", 0),
    },
    infer=_gemm_infer,
)
def gemm(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None = None,
    *,
    alpha: float,
    beta: float,
    transA: int,
    transB: int,
) -> np.ndarray:
    aa = a.T if transA else a
    bb = b.T if transB else b
    y = np.matmul(aa, bb)
    if alpha != 1.0:
        y = y * a.dtype.type(alpha)
    if c is not None:
        y = y + (c * a.dtype.type(beta) if beta != 1.0 else c)
    return np.asarray(y).astype(a.dtype)


# ------------------------------------------------------------- Conv and pooling


def _conv_geometry(ctx: InferContext, spatial: list[Dim], kernel: list[int]) -> list[Dim | None]:
    n = len(spatial)
    strides = ctx.attr("strides") or [1] * n
    dilations = ctx.attrs.get("dilations") or [1] * n
    pads = ctx.attr("pads") or [0] * (2 * n)
    auto_pad = ctx.attr("auto_pad")
    ceil_mode = ctx.attrs.get("ceil_mode") or 0
    out: list[Dim | None] = []
    for i, d in enumerate(spatial):
        eff = (kernel[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(symbolic.floordiv(symbolic.add(d, strides[i] - 1), strides[i]))
        elif auto_pad == "VALID":
            out.append(symbolic.add(symbolic.floordiv(symbolic.sub(d, eff), strides[i]), 1))
        else:
            total = symbolic.add(d, pads[i] + pads[i + n] - eff)
            if ceil_mode and isinstance(total, int):
                o = -(-total // strides[i]) + 1
                # The last window must start inside the input or left padding.
                if (o - 1) * strides[i] >= d + pads[i]:  # type: ignore[operator]
                    o -= 1
                out.append(o)
            elif ceil_mode:
                # Ceil division with the last-window rule is not a polynomial in a symbol:
                # the dim is left unknown (a fresh symbol) rather than wrong.
                out.append(None)
            else:
                out.append(symbolic.add(symbolic.floordiv(total, strides[i]), 1))
    return out


def _conv_infer(ctx: InferContext) -> list[TensorType]:
    x, w = ctx.input(0), ctx.input(1)
    if x.rank < 3 or w.rank != x.rank:
        ctx.fail(f"Conv needs input and weight of equal rank >= 3, got {x} and {w}")
    kernel = ctx.attr("kernel_shape") or list(w.shape[2:])
    if not all(isinstance(k, int) for k in kernel):
        ctx.fail("kernel shape must be static")
    spatial = _conv_geometry(ctx, list(x.shape[2:]), [int(k) for k in kernel])
    return [make_type(x.dtype, [x.shape[0], w.shape[0], *spatial])]


_CONV_ATTRS = {
    "auto_pad": Attr("string", "NOTSET"),
    "dilations": Attr("ints", None),
    "group": Attr("int", 1),
    "kernel_shape": Attr("ints", None),
    "pads": Attr("ints", None),
    "strides": Attr("ints", None),
}


def _explicit_pads(
    in_spatial: tuple[int, ...],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    pads: list[int] | None,
    auto_pad: str,
) -> list[int]:
    n = len(in_spatial)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [0] * (2 * n)
        for i, d in enumerate(in_spatial):
            o = -(-d // strides[i])
            total = max(0, (o - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - d)
            small, big = total // 2, total - total // 2
            out[i], out[i + n] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return out
    if auto_pad == "VALID":
        return [0] * (2 * n)
    return list(pads) if pads else [0] * (2 * n)


def _windows(
    x: np.ndarray,
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    pads: list[int],
    fill: Any,
    out_spatial: list[int] | None = None,
) -> np.ndarray:
    """Sliding windows over the trailing spatial axes: (N, C, *out, *kernel)."""
    n = len(kernel)
    width = [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)]
    if out_spatial is not None:
        # ceil_mode: pad on the right as far as the last window needs.
        for i in range(n):
            need = (out_spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
            have = x.shape[2 + i] + pads[i] + pads[i + n]
            if need > have:
                width[2 + i] = (pads[i], pads[i + n] + need - have)
    xp = np.pad(x, width, mode="constant", constant_values=fill)
    eff = [(kernel[i] - 1) * dilations[i] + 1 for i in range(n)]
    win = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=tuple(range(2, 2 + n)))
    sl: list[Any] = [slice(None), slice(None)]
    sl += [slice(None, None, strides[i]) for i in range(n)]
    sl += [slice(None, None, dilations[i]) for i in range(n)]
    win = win[tuple(sl)]
    if out_spatial is not None:
        win = win[(slice(None), slice(None), *[slice(0, o) for o in out_spatial])]
    return win


@register_op("Conv", inputs=["X", "W", "B?"], outputs=["Y"], attrs=_CONV_ATTRS, infer=_conv_infer)
def conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str,
    dilations: list[int] | None,
    group: int,
    kernel_shape: list[int] | None,
    pads: list[int] | None,
    strides: list[int] | None,
) -> np.ndarray:
    n = x.ndim - 2
    kernel = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    p = _explicit_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    acc = np.float64 if x.dtype == np.float64 else np.float32
    win = _windows(x.astype(acc), kernel, strides, dilations, p, 0)
    batch, cin = x.shape[:2]
    cout = w.shape[0]
    cg, og = cin // group, cout // group
    out_sp = win.shape[2 : 2 + n]
    letters = "abcdefgh"[:n]
    klet = "pqrstuvw"[:n]
    outs = []
    for g in range(group):
        wg = w[g * og : (g + 1) * og].astype(acc)
        xg = win[:, g * cg : (g + 1) * cg]
        outs.append(np.einsum(f"nc{letters}{klet},oc{klet}->no{letters}", xg, wg, optimize=True))
    y = np.concatenate(outs, axis=1) if group > 1 else outs[0]
    if b is not None:
        y = y + b.astype(acc).reshape(1, cout, *[1] * n)
    return y.reshape(batch, cout, *out_sp).astype(x.dtype)


def _pool_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    kernel = ctx.attr("kernel_shape")
    spatial = _conv_geometry(ctx, list(x.shape[2:]), kernel)
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
    p = _explicit_pads(x.shape[2:], list(kernel_shape), strides, dilations, pads, auto_pad)
    out_sp = _pool_out_spatial(x, list(kernel_shape), strides, dilations, p, ceil_mode)
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    win = _windows(x, list(kernel_shape), strides, dilations, p, fill, out_sp)
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
    pos_win = _windows(pos[None, None], list(kernel_shape), strides, dilations, p, -1, out_sp)
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
    p = _explicit_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    out_sp = _pool_out_spatial(x, kernel, strides, dilations, p, ceil_mode)
    axes = tuple(range(-n, 0))
    win = _windows(x.astype(np.float64), kernel, strides, dilations, p, 0.0, out_sp)
    total = win.sum(axis=axes)
    if count_include_pad:
        # Padding counts, but the extra right padding added by ceil_mode does not.
        ones = np.pad(
            np.ones((1, 1, *x.shape[2:])),
            [(0, 0), (0, 0)] + [(p[i], p[i + n]) for i in range(n)],
            constant_values=1.0,
        )
        cnt = _windows(ones, kernel, strides, dilations, [0] * (2 * n), 0.0, out_sp).sum(axes)
    else:
        ones = np.ones((1, 1, *x.shape[2:]))
        cnt = _windows(ones, kernel, strides, dilations, p, 0.0, out_sp).sum(axis=axes)
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


# --------------------------------------------------------------- normalization


def _bn_infer(ctx: InferContext) -> list[TensorType]:
    if ctx.num_outputs > 1 and not ctx.attr("training_mode"):
        ctx.fail("running_mean / running_var outputs exist only with training_mode=1")
    return [ctx.input(0), ctx.input(3), ctx.input(4)][: max(ctx.num_outputs, 1)]


@register_op(
    "BatchNormalization",
    inputs=["X", "scale", "B", "input_mean", "input_var"],
    outputs=["Y", "running_mean?", "running_var?"],
    attrs={
        "epsilon": Attr("float", 1e-5),
        "momentum": Attr("float", 0.9),
        "training_mode": Attr("int", 0),
    },
    infer=_bn_infer,
)
def batch_norm(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    *,
    epsilon: float,
    momentum: float,
    training_mode: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = [1, -1] + [1] * (x.ndim - 2)
    acc = np.float64
    use_mean, use_var = mean.astype(acc), var.astype(acc)
    run_mean, run_var = mean, var
    if training_mode:
        # Batch statistics (population variance); running stats blend in with `momentum`.
        axes = (0, *range(2, x.ndim))
        use_mean = x.astype(acc).mean(axis=axes)
        use_var = x.astype(acc).var(axis=axes)
        run_mean = (mean.astype(acc) * momentum + use_mean * (1 - momentum)).astype(mean.dtype)
        run_var = (var.astype(acc) * momentum + use_var * (1 - momentum)).astype(var.dtype)
    y = (x.astype(acc) - use_mean.reshape(shape)) / np.sqrt(
        use_var.reshape(shape) + epsilon
    ) * scale.astype(acc).reshape(shape) + bias.astype(acc).reshape(shape)
    return y.astype(x.dtype), run_mean, run_var


def _layer_norm_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    axis = normalize_axis(ctx.attr("axis"), x.rank, ctx)
    stash = DType.from_onnx(ctx.attr("stash_type"))
    red = [d if i < axis else 1 for i, d in enumerate(x.shape)]
    return [x, TensorType(stash, red), TensorType(stash, red)][: max(ctx.num_outputs, 1)]


@register_op(
    "LayerNormalization",
    inputs=["X", "Scale", "B?"],
    outputs=["Y", "Mean?", "InvStdDev?"],
    attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5), "stash_type": Attr("int", 1)},
    infer=_layer_norm_infer,
)
def layer_norm(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    axis: int,
    epsilon: float,
    stash_type: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axis = axis + x.ndim if axis < 0 else axis
    stash = DType.from_onnx(stash_type).numpy
    xs = x.astype(stash)
    axes = tuple(range(axis, x.ndim))
    with warnings.catch_warnings():  # size-0 inputs: "mean of empty slice" is expected
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = xs.mean(axis=axes, keepdims=True)
        var = ((xs - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + stash.type(epsilon))
    y = ((xs - mean) * inv).astype(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype), mean, inv


@register_op(
    "RMSNormalization",
    inputs=["X", "scale"],
    outputs=["Y"],
    attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5), "stash_type": Attr("int", 1)},
    infer=same_as_input(0),
)
def rms_norm(
    x: np.ndarray, scale: np.ndarray, *, axis: int, epsilon: float, stash_type: int
) -> np.ndarray:
    axis = axis + x.ndim if axis < 0 else axis
    stash = DType.from_onnx(stash_type).numpy
    xs = x.astype(stash)
    ms = (xs * xs).mean(axis=tuple(range(axis, x.ndim)), keepdims=True)
    y = (xs / np.sqrt(ms + stash.type(epsilon))).astype(x.dtype) * scale
    return y.astype(x.dtype)


@register_op(
    "InstanceNormalization",
    inputs=["input", "scale", "B"],
    outputs=["output"],
    attrs={"epsilon": Attr("float", 1e-5)},
    infer=same_as_input(0),
)
def instance_norm(x: np.ndarray, scale: np.ndarray, b: np.ndarray, *, epsilon: float) -> np.ndarray:
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    shape = [1, -1] + [1] * (x.ndim - 2)
    y = (x - mean) / np.sqrt(var + epsilon) * scale.reshape(shape) + b.reshape(shape)
    return y.astype(x.dtype)


# --------------------------------------------------------------------- softmax


def _softmax_kernel(log: bool) -> Any:
    def kernel(x: np.ndarray, *, axis: int) -> np.ndarray:
        xd = x.astype(np.float64) if x.dtype != np.float64 else x
        m = np.max(xd, axis=axis, keepdims=True)
        with np.errstate(all="ignore"):
            e = np.exp(xd - m)
            s = e.sum(axis=axis, keepdims=True)
            y = (xd - m - np.log(s)) if log else e / s
        return y.astype(x.dtype)

    return kernel


for _name, _log in (("Softmax", False), ("LogSoftmax", True)):
    register_op(
        _name,
        inputs=["input"],
        outputs=["output"],
        attrs={"axis": Attr("int", -1)},
        infer=same_as_input(0),
    )(_softmax_kernel(_log))


@register_op(
    "Hardmax",
    inputs=["input"],
    outputs=["output"],
    attrs={"axis": Attr("int", -1)},
    infer=same_as_input(0),
)
def hardmax(x: np.ndarray, *, axis: int) -> np.ndarray:
    idx = np.argmax(x, axis=axis)
    out = np.zeros_like(x)
    np.put_along_axis(out, np.expand_dims(idx, axis), 1, axis=axis)
    return out


# ---------------------------------------------------------------------- LRN etc.


@register_op(
    "LRN",
    inputs=["X"],
    outputs=["Y"],
    attrs={
        "alpha": Attr("float", 1e-4),
        "beta": Attr("float", 0.75),
        "bias": Attr("float", 1.0),
        "size": Attr("int"),
    },
    infer=same_as_input(0),
)
def lrn(x: np.ndarray, *, alpha: float, beta: float, bias: float, size: int) -> np.ndarray:
    c = x.shape[1]
    sq = (x.astype(np.float64)) ** 2
    out = np.zeros_like(sq)
    lo, hi = (size - 1) // 2, math.ceil((size - 1) / 2)
    for i in range(c):
        out[:, i] = sq[:, max(0, i - lo) : min(c, i + hi + 1)].sum(axis=1)
    return (x / (bias + alpha / size * out) ** beta).astype(x.dtype)
