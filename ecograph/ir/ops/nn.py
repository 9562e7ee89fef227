"""Neural-network ONNX ops over whole axes: the matrix products (MatMul, MatMulInteger,
QLinearMatMul, Gemm, Einsum, Det) and the softmax family (Softmax, LogSoftmax, Hardmax).

The products carry a `macs` rule (multiply-accumulates, see `ecograph.ir.stats`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.ops._infer import broadcast_shapes, same_as_input
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType
from ecograph.ir.unify import note_equal_dims

if TYPE_CHECKING:
    from ecograph.ir.graph import Node

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
    note_equal_dims(k1, k2)
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


def matmul_macs(node: Node, bindings: Mapping[str, int]) -> int:
    """MACs of a matrix product Y = A·B (input 0 is A): every element of Y sums K products,
    K being A's last dim."""
    a = node.inputs[0]
    assert a is not None
    out = symbolic.evaluate(symbolic.product(node.outputs[0].shape), bindings)
    return out * symbolic.evaluate(a.shape[-1], bindings)


@register_op("MatMul", inputs=["A", "B"], outputs=["Y"], infer=_matmul_infer, macs=matmul_macs)
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
    macs=matmul_macs,
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
    note_equal_dims(
        a.shape[0 if ctx.attr("transA") else 1], b.shape[1 if ctx.attr("transB") else 0]
    )
    return [TensorType(a.dtype, [m, n])]


def gemm_macs(node: Node, bindings: Mapping[str, int]) -> int:
    """M·N outputs of K products each; K is A's first dim when transA is set."""
    a = node.inputs[0]
    assert a is not None
    k = a.shape[0] if node.attr("transA", 0) else a.shape[-1]
    out = symbolic.evaluate(symbolic.product(node.outputs[0].shape), bindings)
    return out * symbolic.evaluate(k, bindings)


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
    macs=gemm_macs,
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
    macs=matmul_macs,
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
    """Integer matmul of zero-point-shifted inputs as ONNX Runtime computes it (MLAS's
    requantization, as QLinearConv, reference_ops.qlinear_conv): the int32 product times
    a_scale * b_scale / y_scale in float32, rounded half to even, plus y_zero_point, clipped
    to y's type. (onnx.reference scales in float64 and adds the zero point before rounding,
    which rounds a value within a float32 rounding error of a tie otherwise.)"""
    acc = exact_int_matmul(
        a.astype(np.int32) - a_zp.astype(np.int32), b.astype(np.int32) - b_zp.astype(np.int32)
    )
    f32 = np.float32
    mult = (np.asarray(a_scale, f32) * np.asarray(b_scale, f32)) / np.asarray(y_scale, f32)
    y = np.rint(acc.astype(f32) * mult) + np.asarray(y_zp, f32)
    info = np.iinfo(y_zp.dtype)
    return np.clip(y, info.min, info.max).astype(y_zp.dtype)


# --------------------------------------------------------------------- Einsum


def _einsum_terms(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"equation {equation!r} has {len(terms)} terms for {len(ranks)} inputs")
    if not arrow:
        letters = [c for c in re.sub(r"\.\.\.", "", lhs) if c.isalpha()]
        singles = sorted(c for c in set(letters) if letters.count(c) == 1)
        rhs = ("..." if "..." in lhs else "") + "".join(singles)
    return terms, rhs


def _einsum_infer(ctx: InferContext) -> list[TensorType]:
    types = ctx.inputs()
    terms, rhs = _einsum_terms(ctx.attr("equation"), [t.rank for t in types])
    sizes: dict[str, Dim] = {}
    ellipsis_shapes: list[list[Dim]] = []
    for term, t in zip(terms, types, strict=True):
        letters = term.replace("...", "")
        n_ell = t.rank - len(letters)
        pos = term.find("...")
        shape = list(t.shape)
        if pos >= 0:
            ellipsis_shapes.append(shape[pos : pos + n_ell])
            shape = shape[:pos] + shape[pos + n_ell :]
        for c, d in zip(letters, shape, strict=True):
            if sizes.get(c, 1) == 1:
                sizes[c] = d
    ellipsis = broadcast_shapes(ellipsis_shapes, f"node {ctx.node.name}: ")
    out: list[Dim | None] = []
    for part in re.split(r"(\.\.\.)", rhs):
        out.extend(ellipsis if part == "..." else [sizes[c] for c in part])
    return [make_type(types[0].dtype, out)]


@register_op(
    "Einsum",
    inputs=["Inputs*"],
    outputs=["Output"],
    attrs={"equation": Attr("string")},
    infer=_einsum_infer,
)
def einsum(*xs: np.ndarray, equation: str) -> np.ndarray:
    # numpy's einsum has no bfloat16 loop; 16-bit floats accumulate in float32.
    acc = [x.astype(np.float32) if x.dtype.itemsize == 2 and x.dtype.kind != "i" and
           x.dtype.kind != "u" else x for x in xs]  # fmt: skip
    return np.asarray(np.einsum(equation.replace(" ", ""), *acc)).astype(xs[0].dtype)


# ------------------------------------------------------------------------ Det


@register_op(
    "Det",
    inputs=["X"],
    outputs=["Y"],
    infer=lambda c: [c.input(0).with_shape(c.input(0).shape[:-2])],
)
def det(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.linalg.det(x.astype(np.float64))).astype(x.dtype)


# --------------------------------------------------------------------- softmax


def _softmax_kernel(log: bool) -> Any:
    def kernel(x: np.ndarray, *, axis: int) -> np.ndarray:
        if x.size == 0:  # nothing to normalize (np.max has no identity for empty axes)
            return x.copy()
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
    if x.size == 0:
        return x.copy()
    idx = np.argmax(x, axis=axis)
    out = np.zeros_like(x)
    np.put_along_axis(out, np.expand_dims(idx, axis), 1, axis=axis)
    return out
