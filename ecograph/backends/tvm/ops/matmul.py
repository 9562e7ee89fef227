"""Matrix-product lowerings: MatMul, MatMulInteger, Gemm and Einsum (quantized matmuls,
weight-only DequantizeMatMul and MatMulNBits, are in `quant.py`).
"""

from __future__ import annotations

from tvm import relax

from ecograph.backends.tvm.context import (
    LowerContext,
    R,
    lowers,
)
from ecograph.ir.dtypes import DType

# ----------------------------------------------------------------- matmul family


@lowers("MatMul")
def lower_matmul(ctx: LowerContext) -> relax.Expr:
    dt = ctx.in_type(0).dtype
    a, b = ctx.arg(0), ctx.arg(1)
    if dt in (DType.FLOAT16, DType.BFLOAT16):
        return R.astype(R.matmul(R.astype(a, "float32"), R.astype(b, "float32")), str(dt))
    return R.matmul(a, b)


@lowers("MatMulInteger")
def _matmul_integer(ctx: LowerContext) -> relax.Expr:
    a, b = ctx.arg(0), ctx.arg(1)
    at, bt = ctx.in_type(0), ctx.in_type(1)
    if not ctx.has(2) and not ctx.has(3) and at.dtype == bt.dtype == DType.INT8:
        if not ctx.options.widen_int8_matmul:
            # The int8 x int8 -> int32 product is emitted as one matmul (VNNI-friendly).
            return R.matmul(a, b, out_dtype="int32")
        ctx.notes.append(
            "int8 x int8 matmul widened to int32 operands (TVM 0.27 dlight Matmul rule "
            "crashes on the int8 form on CUDA); exact, but without int8 tensor cores"
        )
    a32 = R.astype(a, "int32")
    b32 = R.astype(b, "int32")
    if ctx.has(2):
        zp = R.astype(ctx.arg(2), "int32")
        zt = ctx.in_type(2)
        if zt.rank == 1 and zt.shape[0] != 1:
            shape = [1] * at.rank
            shape[-2] = -1
            zp = R.reshape(zp, shape)
        a32 = R.subtract(a32, zp)
    if ctx.has(3):
        b32 = R.subtract(b32, R.astype(ctx.arg(3), "int32"))
    return R.matmul(a32, b32, out_dtype="int32")


@lowers("Gemm")
def _gemm(ctx: LowerContext) -> relax.Expr:
    a = ctx.arg(0)
    dt = ctx.in_type(0).dtype
    if ctx.attrs["transA"]:
        a = R.permute_dims(a, [1, 0])
    b = ctx.arg(1)
    if ctx.attrs["transB"]:
        b = R.permute_dims(b, [1, 0])
    y = R.matmul(a, b)
    if ctx.attrs["alpha"] != 1.0:
        y = R.multiply(y, ctx.scalar(ctx.attrs["alpha"], dt))
    if ctx.has(2):
        c = ctx.arg(2)
        if ctx.attrs["beta"] != 1.0:
            c = R.multiply(c, ctx.scalar(ctx.attrs["beta"], dt))
        y = R.add(y, c)
    return y


@lowers("Einsum")
def _einsum(ctx: LowerContext) -> relax.Expr:
    return R.einsum([ctx.arg(i) for i in range(len(ctx.args))], ctx.attrs["equation"])
