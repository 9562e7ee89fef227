"""Scalar TIR helpers shared by the hand-written TE kernels in `resize.py` and `sampling.py`
(constants, casts, clamps, sums, and the output dims a kernel is built over)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tvm import tirx as tir

from ecograph.backends.tvm.context import LowerContext
from ecograph.ir.dtypes import DType
from ecograph.ir.registry import symbolic_value

I64 = "int64"
F32 = "float32"
F64 = "float64"

PrimExpr = Any  # tir.PrimExpr (kept loose: TIR's Python operators return several classes)


def i64(v: int) -> PrimExpr:
    return tir.const(v, I64)


def fconst(v: float, dtype: str = F64) -> PrimExpr:
    return tir.const(float(v), dtype)


def cast(dtype: str, e: PrimExpr) -> PrimExpr:
    if isinstance(e, (int, float)):
        return tir.const(e, dtype)
    return e if str(e.ty) == dtype else tir.Cast(dtype, e)


def clamp(e: PrimExpr, lo: PrimExpr, hi: PrimExpr) -> PrimExpr:
    return tir.max(tir.min(e, hi), lo)


def compute_dtype(dtype: DType) -> str:
    """What the arithmetic runs in: float32 for the 32-bit-or-narrower floats, else float64."""
    return F32 if dtype in (DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16) else F64


def out_dims(ctx: LowerContext, what: str) -> list[PrimExpr]:
    shape = ctx.out_type(0).shape
    if any(d is None for d in shape):
        ctx.fail(f"the output shape {list(shape)} is not known before run time; {what}")
    return [ctx.dim(d) for d in shape]


def symbolic_input(ctx: LowerContext, i: int) -> bool:
    """Whether input `i` is an int tensor whose values are (possibly symbolic) dims."""
    v = ctx.node.input(i)
    return v is not None and symbolic_value(v) is not None


def seq_sum(terms: Sequence[PrimExpr]) -> PrimExpr:
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc
