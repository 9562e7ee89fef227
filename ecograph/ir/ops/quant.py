"""Quantization ops with ONNX opset-23 semantics: QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear.

Rounding is half-to-even (`np.rint`) and saturation clips to the integer range, exactly as
ONNX specifies; the division `x / scale` happens in the input's float type (float32 for
float32 input), which is what ONNX's reference does and what the bit-exact tests compare to.
"""

from __future__ import annotations

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.registry import Attr, InferContext, register_op
from ecograph.ir.types import TensorType

QUANT_RANGES: dict[DType, tuple[int, int]] = {
    DType.UINT8: (0, 255),
    DType.INT8: (-128, 127),
    DType.UINT16: (0, 65535),
    DType.INT16: (-32768, 32767),
    DType.UINT4: (0, 15),
    DType.INT4: (-8, 7),
}


def broadcast_param(
    value: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int
) -> np.ndarray:
    """Reshape a scale or zero point (scalar, per-axis or blocked) to broadcast to `shape`."""
    if value.ndim == 0:
        return value
    if value.size == 1 and not block_size:
        return value.reshape(())
    axis = axis + len(shape) if axis < 0 else axis
    if not block_size:
        dims = [1] * len(shape)
        dims[axis] = value.size
        return value.reshape(dims)
    rep = np.repeat(value, block_size, axis=axis)
    return rep.take(range(shape[axis]), axis=axis)


def _quant_dtype(ctx: InferContext) -> DType:
    if ctx.has_input(2):
        return ctx.input(2).dtype
    out = ctx.attr("output_dtype")
    return DType.from_onnx(out) if out else DType.UINT8


def _quantize_infer(ctx: InferContext) -> list[TensorType]:
    dtype = _quant_dtype(ctx)
    if dtype not in QUANT_RANGES:
        ctx.fail(f"quantized type {dtype} is not supported (int4/uint4/int8/uint8/int16/uint16)")
    return [ctx.input(0).with_dtype(dtype)]


@register_op(
    "QuantizeLinear",
    inputs=["x", "y_scale", "y_zero_point?"],
    outputs=["y"],
    attrs={
        "axis": Attr("int", 1),
        "block_size": Attr("int", 0),
        "output_dtype": Attr("int", 0),
        "precision": Attr("int", 0),
        "saturate": Attr("int", 1),
    },
    infer=_quantize_infer,
)
def quantize_linear(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None = None,
    *,
    axis: int,
    block_size: int,
    output_dtype: int,
    precision: int,
    saturate: int,
) -> np.ndarray:
    if zero_point is not None:
        dtype = DType.from_numpy(zero_point.dtype)
    else:
        dtype = DType.from_onnx(output_dtype) if output_dtype else DType.UINT8
    lo, hi = QUANT_RANGES[dtype]
    s = broadcast_param(scale, x.shape, axis, block_size)
    if precision:
        p = DType.from_onnx(precision).numpy
        scaled = x.astype(p) / s.astype(p)
    else:
        scaled = x / s
    with np.errstate(all="ignore"):
        q = np.rint(scaled).astype(np.float64)
    if zero_point is not None:
        q = q + broadcast_param(zero_point, x.shape, axis, block_size).astype(np.float64)
    return np.clip(np.nan_to_num(q, nan=0.0), lo, hi).astype(dtype.numpy)


def _dequantize_infer(ctx: InferContext) -> list[TensorType]:
    out = ctx.attr("output_dtype")
    dtype = DType.from_onnx(out) if out else ctx.input(1).dtype
    return [ctx.input(0).with_dtype(dtype)]


@register_op(
    "DequantizeLinear",
    inputs=["x", "x_scale", "x_zero_point?"],
    outputs=["y"],
    attrs={"axis": Attr("int", 1), "block_size": Attr("int", 0), "output_dtype": Attr("int", 0)},
    infer=_dequantize_infer,
)
def dequantize_linear(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None = None,
    *,
    axis: int,
    block_size: int,
    output_dtype: int,
) -> np.ndarray:
    dx = x.astype(np.float32)
    if zero_point is not None:
        dx = dx - broadcast_param(zero_point, x.shape, axis, block_size).astype(np.float32)
    y = dx * broadcast_param(scale, x.shape, axis, block_size)
    out = DType.from_onnx(output_dtype).numpy if output_dtype else scale.dtype
    return y.astype(out)


def _dynamic_quantize_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    return [x.with_dtype(DType.UINT8), TensorType(x.dtype, []), TensorType(DType.UINT8, [])]


@register_op(
    "DynamicQuantizeLinear",
    inputs=["x"],
    outputs=["y", "y_scale", "y_zero_point"],
    infer=_dynamic_quantize_infer,
)
def dynamic_quantize_linear(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    qmin, qmax = 0, 255
    maxx = np.float32(np.maximum(0, np.max(x))) if x.size else np.float32(0)
    minx = np.float32(np.minimum(0, np.min(x))) if x.size else np.float32(0)
    scale = np.float32(1.0 if maxx == minx else (maxx - minx)) / np.float32(qmax - qmin)
    zp = np.rint(max(qmin, min(qmax, np.float32(qmin) - minx / scale)))
    y = np.clip(np.rint(x / scale) + zp, qmin, qmax)
    return y.astype(np.uint8), np.array(scale.astype(x.dtype)), np.array(zp.astype(np.uint8))
