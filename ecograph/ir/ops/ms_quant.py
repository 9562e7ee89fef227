"""ONNX Runtime's contrib MatMulNBits (domain com.microsoft): a matmul with block-quantized
low-bit weights, as written by onnxruntime's MatMul4BitsQuantizer / int4 model builders.

B holds N rows of K weights each, in k_blocks = ceil(K / block_size) blocks of `bits`-bit
codes packed low bits first; scales are per (row, block); zero points (optional) are packed
the same way, defaulting to 2^(bits-1). Y = A @ dequantize(B)^T (+ bias).
"""

from __future__ import annotations

import numpy as np

from ecograph.ir.ops.nn import matmul_shape
from ecograph.ir.registry import Attr, InferContext, register_op
from ecograph.ir.types import TensorType

MS_DOMAIN = "com.microsoft"


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unpack `bits`-bit codes (low bits first within each byte) into int64, `count` per row."""
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    rows = packed.reshape(packed.shape[0], -1).astype(np.int64)
    parts = [(rows >> (bits * i)) & mask for i in range(per_byte)]
    codes = np.stack(parts, axis=-1).reshape(rows.shape[0], -1)
    return codes[:, :count]


def dequantize_nbits(
    b: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    *,
    k: int,
    n: int,
    bits: int,
    block_size: int,
) -> np.ndarray:
    """The float weight matrix [N, K] that MatMulNBits multiplies by (dtype of `scales`)."""
    k_blocks = -(-k // block_size)
    codes = unpack_codes(b.reshape(n, -1), bits, k_blocks * block_size)
    codes = codes.reshape(n, k_blocks, block_size)
    s = scales.reshape(n, k_blocks).astype(np.float32)
    if zero_points is None:
        zp = np.full((n, k_blocks), 1 << (bits - 1), np.float32)
    elif zero_points.dtype == np.uint8:
        zp = unpack_codes(zero_points.reshape(n, -1), bits, k_blocks).astype(np.float32)
    else:  # zero points given in the scale's float type
        zp = zero_points.reshape(n, k_blocks).astype(np.float32)
    w = (codes.astype(np.float32) - zp[:, :, None]) * s[:, :, None]
    return w.reshape(n, k_blocks * block_size)[:, :k].astype(scales.dtype)


def _infer(ctx: InferContext) -> list[TensorType]:
    a = ctx.input(0)
    n = ctx.attr("N")
    k = ctx.attr("K")
    if isinstance(a.shape[-1], int) and a.shape[-1] != k:
        ctx.fail(f"A's last dim {a.shape[-1]} differs from K={k}")
    if ctx.attr("bits") not in (2, 4, 8):
        ctx.fail(f"bits={ctx.attr('bits')} is not 2, 4 or 8")
    return [TensorType(a.dtype, [*matmul_shape(ctx, a, TensorType(a.dtype, [k, n]))])]


@register_op(
    "MatMulNBits",
    domain=MS_DOMAIN,
    inputs=["A", "B", "scales", "zero_points?", "g_idx?", "bias?"],
    outputs=["Y"],
    attrs={
        "K": Attr("int"),
        "N": Attr("int"),
        "bits": Attr("int", 4),
        "block_size": Attr("int"),
        "accuracy_level": Attr("int", 0),
    },
    infer=_infer,
)
def matmul_nbits(
    a: np.ndarray,
    b: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None = None,
    g_idx: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    *,
    K: int,
    N: int,
    bits: int,
    block_size: int,
    accuracy_level: int,
) -> np.ndarray:
    if g_idx is not None:
        raise NotImplementedError("MatMulNBits with g_idx (act-order) is not supported")
    w = dequantize_nbits(b, scales, zero_points, k=K, n=N, bits=bits, block_size=block_size)
    y = np.matmul(a.astype(np.float32), w.astype(np.float32).T)
    if bias is not None:
        y = y + bias.astype(np.float32)
    return y.astype(a.dtype)
