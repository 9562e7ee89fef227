"""ONNX ops whose kernels delegate to onnx.reference (exact for these ops) and whose types come
from ONNX's own shape inference: resampling, detection, spectral, loss and string ops (the
recurrent ops have their own kernels, in `recurrent.py`), and QLinearConv, whose kernel here
requantizes in float32 as ONNX Runtime does (`qlinear_conv`). See `_onnx_ref.py` for how they are
wired, and `python -m ecograph.conformance` for the node tests that check each of them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.ops._onnx_ref import onnx_infer, register_reference_op
from ecograph.ir.ops.convolution import conv_integer, conv_macs
from ecograph.ir.ops.quant import QUANT_RANGES
from ecograph.ir.registry import InferContext, make_type
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType


def _resize_infer(ctx: InferContext) -> list[TensorType]:
    """Resize keeps symbolic dims where it can: integer scales multiply a symbolic dim, other
    scales floor a static one, and `sizes` (stretch policy) are taken as given. Anything else
    goes to ONNX's inference."""
    x = ctx.input(0)
    axes = ctx.attr("axes")
    axes_l = [a + x.rank if a < 0 else a for a in axes] if axes else list(range(x.rank))
    dims: list[Dim | None] = list(x.shape)
    scales = ctx.constant(2) if ctx.has_input(2) else None
    sizes = ctx.symbolic(3) if ctx.has_input(3) else None
    if ctx.attr("coordinate_transformation_mode") == "tf_crop_and_resize":
        return onnx_infer("Resize")(ctx)  # the roi changes the output size
    if scales is not None and scales.size == len(axes_l) and not ctx.has_input(3):
        for a, sc in zip(axes_l, scales.reshape(-1).tolist(), strict=True):
            d = x.shape[a]
            if float(sc).is_integer():
                dims[a] = symbolic.mul(d, int(sc))
            elif isinstance(d, int):
                dims[a] = int(np.floor(d * float(sc)))  # float64 product, as ONNX's
            else:
                dims[a] = None
        return [make_type(x.dtype, dims)]
    if (
        sizes is not None
        and len(sizes) == len(axes_l)
        and ctx.attr("keep_aspect_ratio_policy") == "stretch"
    ):
        for a, d in zip(axes_l, sizes, strict=True):
            dims[a] = d
        return [make_type(x.dtype, dims)]
    return onnx_infer("Resize")(ctx)


REFERENCE_OPS = (
    "AffineGrid",
    "Col2Im",
    "DFT",
    "DeformConv",
    "GridSample",
    "RegexFullMatch",
    "RoiAlign",
    "RotaryEmbedding",
    "SoftmaxCrossEntropyLoss",
    "StringConcat",
    "StringNormalizer",
    "StringSplit",
)

for _op in REFERENCE_OPS:
    register_reference_op(_op)


def _stft_infer(ctx: InferContext) -> list[TensorType]:
    # [batch, frames, unique bins, 2]; frames and bins depend on run-time scalars.
    signal = ctx.input(0)
    return [make_type(signal.dtype, [signal.shape[0], None, None, 2])]


def _mel_infer(ctx: InferContext) -> list[TensorType]:
    return [make_type(DType.from_onnx(ctx.attr("output_datatype")), [None, None])]


def qlinear_conv(
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray | None,
    w: np.ndarray,
    w_scale: np.ndarray,
    w_zero_point: np.ndarray | None,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    **attrs: Any,
) -> np.ndarray:
    """QLinearConv as ONNX Runtime computes it (MLAS's requantization): the exact int32
    convolution plus the int32 bias, times x_scale * w_scale / y_scale in float32 (per output
    channel where w_scale is), rounded half to even, plus y_zero_point, clipped.
    (onnx.reference scales in float64, which rounds a value within a float32 rounding error of
    a tie otherwise than ONNX Runtime does, and costs compiled code twice the vector width.)"""
    acc = conv_integer(x, w, x_zero_point, w_zero_point, **attrs)
    channels = (1, -1, *[1] * (x.ndim - 2))
    if bias is not None:
        acc = acc + bias.astype(np.int32).reshape(channels)
    f32 = np.float32
    mult = (np.asarray(x_scale, f32) * np.asarray(w_scale, f32)) / np.asarray(y_scale, f32)
    y = np.rint(acc.astype(f32) * (mult.reshape(channels) if mult.size > 1 else mult.reshape(())))
    out = x.dtype if y_zero_point is None else y_zero_point.dtype
    if y_zero_point is not None:
        y = y + np.asarray(y_zero_point, f32).reshape(())
    lo, hi = QUANT_RANGES[DType.from_numpy(out)]
    return np.clip(y, lo, hi).astype(out)


register_reference_op(  # the weight is input 3
    "QLinearConv", macs=conv_macs(3), kernel=qlinear_conv, kernel_source=__name__
)
register_reference_op("Resize", infer=_resize_infer)
register_reference_op("STFT", infer=_stft_infer)
register_reference_op("MelWeightMatrix", infer=_mel_infer)
