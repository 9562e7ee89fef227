"""Shared inference helpers for the op library (broadcasting, reductions, axes)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ecograph.errors import TypeInferenceError
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.registry import InferContext, make_type
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType
from ecograph.ir.unify import note_equal_dims


def broadcast_shapes(shapes: Sequence[Sequence[Dim | None]], where: str = "") -> list[Dim | None]:
    """Numpy-style multidirectional broadcasting over possibly symbolic dims.

    A symbolic dim broadcast against 1 stays; two different symbols cannot be proven equal,
    so the result takes the first (ONNX requires them equal at run time, which the
    interpreter checks) and the pair is noted for `ecograph.ir.unify`.
    """
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim | None] = []
    for axis in range(rank):
        dim: Dim | None = 1
        for s in shapes:
            k = axis - (rank - len(s))
            if k < 0:
                continue
            d = s[k]
            if d == 1:
                continue
            if dim == 1:
                dim = d
            elif d is None or dim is None:
                dim = dim if d is None else d
            elif isinstance(d, int) and isinstance(dim, int) and d != dim:
                raise TypeInferenceError(
                    f"{where}cannot broadcast shapes {[list(x) for x in shapes]} (axis {axis})"
                )
            elif isinstance(dim, str) and isinstance(d, int):
                dim = d
            else:
                note_equal_dims(dim, d)
        out.append(dim)
    return out


def same_as_input(i: int = 0) -> Callable[[InferContext], list[TensorType]]:
    """Inference for ops whose single output has input `i`'s type."""

    def infer(ctx: InferContext) -> list[TensorType]:
        return [ctx.input(i)]

    return infer


def broadcast_infer(out_dtype: DType | str | None = None) -> Callable[[InferContext], list]:
    """Inference for elementwise ops over broadcast inputs; dtype of input 0 unless given."""

    def infer(ctx: InferContext) -> list[TensorType]:
        types = ctx.inputs()
        dtype = out_dtype or types[0].dtype
        if out_dtype is None or out_dtype == DType.BOOL:
            first = types[0].dtype
            for t in types[1:]:
                if t.dtype != first and ctx.schema.op_type not in _MIXED_DTYPE_OPS:
                    ctx.fail(f"input dtypes differ: {first} and {t.dtype}")
        shape = broadcast_shapes([t.shape for t in types], f"node {ctx.node.name}: ")
        return [make_type(dtype, shape)]

    return infer


_MIXED_DTYPE_OPS = {"Pow", "BitShift", "Where", "Expand"}


def normalize_axis(axis: int, rank: int, ctx: InferContext | None = None) -> int:
    if not -rank <= axis < max(rank, 1):
        msg = f"axis {axis} is out of range for rank {rank}"
        if ctx is not None:
            ctx.fail(msg)
        raise TypeInferenceError(msg)
    return axis + rank if axis < 0 else axis


def reduce_shape(
    shape: Sequence[Dim], axes: Sequence[int] | None, keepdims: bool, noop_empty: bool = False
) -> list[Dim]:
    rank = len(shape)
    if not axes:
        if noop_empty:
            return list(shape)
        axes = list(range(rank))
    norm = {normalize_axis(a, rank) for a in axes}
    out: list[Dim] = []
    for i, d in enumerate(shape):
        if i in norm:
            if keepdims:
                out.append(1)
        else:
            out.append(d)
    return out


def int_list(array: Any) -> list[int]:
    return [int(x) for x in np.asarray(array).reshape(-1)]


def dims_from_symbolic(values: Sequence[Dim]) -> list[Dim]:
    return [symbolic.canonical(v) for v in values]
