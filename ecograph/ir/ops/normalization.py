"""Normalization ONNX ops: BatchNormalization, LayerNormalization, RMSNormalization,
InstanceNormalization, GroupNormalization, MeanVarianceNormalization, LpNormalization and LRN
(local response normalization)."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.ops._infer import normalize_axis, same_as_input
from ecograph.ir.registry import Attr, InferContext, register_op
from ecograph.ir.types import TensorType

# ----------------------------------------------- batch, layer, RMS, instance


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


# -------------------------------------------------- group, mean-variance, Lp


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


# ----------------------------------------------------------------------- LRN


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
