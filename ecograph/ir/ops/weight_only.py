"""Weight-only quantized matmul: `ecograph::DequantizeMatMul(A, W, scale, zero_point?)`.

Y = A @ W' where W' = DequantizeLinear(W, scale, zero_point; axis, block_size), transposed
first when `trans_b` (W stored [N, K], as Gemm's transB). W is a 2-D integer tensor whose
dtype says the code width (int4/uint4/int8/uint8, ...); `axis` and `block_size` say how the
scale and zero point apply to it, exactly as DequantizeLinear reads them (per tensor, per
row/column, or in blocks along `axis`). The `fuse-weight-dequantize` pass creates it from
DequantizeLinear feeding a matmul's weight input, so a backend can dequantize inside the
matmul kernel and keep the weights compressed; ONNX export expands it back to
DequantizeLinear + MatMul.

`activation_block` = B > 0 quantizes A at run time before the product, as ONNX Runtime's
MatMulNBits does at accuracy_level 4 and llama.cpp with its Q8 activation blocks: each row of
A (along K) in blocks of B, symmetric int8, one float32 scale per block,

    s = max(max |a| over the block, 1e-30) / 127,   A' = clip(round_half_even(a / s), -127, 127) * s

and Y = A' @ W'. A CPU kernel then multiplies 8-bit integers (ops/int4_a8.py in the TVM
backend); every backend computes this same A'. B = 0 (the default): A as given.
"""

from __future__ import annotations

import numpy as np

from ecograph.ir.ops.nn import matmul, matmul_shape
from ecograph.ir.ops.quant import QUANT_RANGES, dequantize_linear
from ecograph.ir.registry import Attr, InferContext, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType


def _may_equal(a: Dim, b: Dim) -> bool:
    return not (isinstance(a, int) and isinstance(b, int)) or a == b


def _param_shape_ok(param: TensorType, w: TensorType, axis: int, block: int) -> bool:
    """Whether a scale / zero point of type `param` fits W as DequantizeLinear reads it: a
    scalar, one value per index of `axis`, or one per block of `block` along `axis`."""
    if param.rank == 0 or (not block and param.numel == 1):
        return True
    if not block:
        return param.rank == 1 and _may_equal(param.shape[0], w.shape[axis])
    if param.rank != 2:
        return False
    want = list(w.shape)
    d = w.shape[axis]
    want[axis] = -(-d // block) if isinstance(d, int) else param.shape[axis]
    return all(_may_equal(p, q) for p, q in zip(param.shape, want, strict=True))


def _infer(ctx: InferContext) -> list[TensorType]:
    a, w, s = ctx.input(0), ctx.input(1), ctx.input(2)
    if w.rank != 2:
        ctx.fail(f"W must be a 2-D weight matrix, got {w}")
    if w.dtype not in QUANT_RANGES:
        ctx.fail(f"W dtype {w.dtype} is not a quantized integer type (int4/uint4/int8/uint8...)")
    if not s.dtype.is_float or a.dtype != s.dtype:
        ctx.fail(f"A ({a.dtype}) and scale ({s.dtype}) must have the same float dtype")
    axis, block = ctx.attr("axis"), ctx.attr("block_size")
    if axis not in (-2, -1, 0, 1):
        ctx.fail(f"axis={axis} is not an axis of the 2-D W")
    axis %= 2
    if block < 0:
        ctx.fail(f"block_size={block} must be >= 0")
    if ctx.attr("activation_block") < 0:
        ctx.fail(f"activation_block={ctx.attr('activation_block')} must be >= 0")
    if not _param_shape_ok(s, w, axis, block):
        ctx.fail(f"scale {s} does not fit W {w} with axis={axis}, block_size={block}")
    if ctx.has_input(3):
        z = ctx.input(3)
        if z.dtype != w.dtype or z.shape != s.shape:
            ctx.fail(f"zero_point {z} must have W's dtype {w.dtype} and the scale's shape")
    rows, cols = w.shape
    k, n = (cols, rows) if ctx.attr("trans_b") else (rows, cols)
    return [TensorType(a.dtype, matmul_shape(ctx, a, TensorType(a.dtype, [k, n])))]


@register_op(
    "DequantizeMatMul",
    domain="ecograph",
    inputs=["A", "W", "scale", "zero_point?"],
    outputs=["Y"],
    attrs={
        "axis": Attr("int", 1),
        "block_size": Attr("int", 0),
        "trans_b": Attr("int", 0),
        "activation_block": Attr("int", 0),
    },
    infer=_infer,
)
def dequantize_matmul(
    a: np.ndarray,
    w: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None = None,
    *,
    axis: int,
    block_size: int,
    trans_b: int,
    activation_block: int = 0,
) -> np.ndarray:
    """A @ DequantizeLinear(W, scale, zero_point) (W transposed first when `trans_b`): the
    DequantizeLinear and MatMul kernels themselves, so the fused op is bit-identical to the
    two ops it replaces; A quantized in blocks first when `activation_block` (module doc)."""
    if activation_block:
        a = quantize_activation_blocks(a, activation_block)
    weights = dequantize_linear(w, scale, zero_point, axis=axis, block_size=block_size,
                                output_dtype=0)  # fmt: skip
    return matmul(a, weights.T if trans_b else weights)


ACTIVATION_QMAX = 127.0
ACTIVATION_TINY = 1e-30


def quantize_activation_blocks(a: np.ndarray, block: int) -> np.ndarray:
    """A' of the module doc: `a` (float32, [..., K]) quantized to int8 in blocks of `block`
    along its last axis (the last block may be shorter) and dequantized again, in float32."""
    a = np.asarray(a, np.float32)
    k = a.shape[-1]
    out = np.empty_like(a)
    for start in range(0, k, block):
        part = a[..., start : start + block]
        amax = np.abs(part).max(axis=-1, keepdims=True) if part.size else part[..., :1]
        scale = np.maximum(amax, np.float32(ACTIVATION_TINY)) / np.float32(ACTIVATION_QMAX)
        q = np.clip(np.rint(part / scale), -ACTIVATION_QMAX, ACTIVATION_QMAX)
        out[..., start : start + block] = q * scale
    return out
