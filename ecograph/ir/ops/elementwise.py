"""Elementwise ONNX ops: unary math, activations, binary arithmetic, comparison, logic."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.special

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.ops._infer import broadcast_infer, broadcast_shapes, same_as_input
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

# ------------------------------------------------------------------ unary math


def _keep(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    """Wrap a numpy function so the result keeps the input's dtype (float16 stays float16)."""

    def kernel(x: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(fn(x)).astype(x.dtype, copy=False)

    return kernel


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Abs": np.abs,
    "Neg": np.negative,
    "Exp": np.exp,
    "Log": np.log,
    "Sqrt": np.sqrt,
    "Reciprocal": lambda x: np.reciprocal(x),
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Sin": np.sin,
    "Cos": np.cos,
    "Tan": np.tan,
    "Asin": np.arcsin,
    "Acos": np.arccos,
    "Atan": np.arctan,
    "Sinh": np.sinh,
    "Cosh": np.cosh,
    "Asinh": np.arcsinh,
    "Acosh": np.arccosh,
    "Atanh": np.arctanh,
    "Tanh": np.tanh,
    "Sign": np.sign,
    "Round": np.round,  # numpy rounds half to even, as ONNX Round does
    "Sigmoid": lambda x: sigmoid(x),
    "Relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Softplus": lambda x: np.logaddexp(np.zeros((), x.dtype), x),
    "Erf": lambda x: _erf(x),
    "Mish": lambda x: x * np.tanh(np.logaddexp(np.zeros((), x.dtype), x)),
}


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The Sigmoid kernel, stable for large |x|: exp only of non-positive numbers."""
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1 / (1 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1 + ex)
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    return scipy.special.erf(x.astype(np.float64) if x.dtype != np.float64 else x)


def _propagate_neg(ctx: InferContext) -> list[Dim] | None:
    x = ctx.symbolic(0)
    return None if x is None else [symbolic.sub(0, d) for d in x]


for _name, _fn in _UNARY.items():
    register_op(
        _name,
        inputs=["X"],
        outputs=["Y"],
        infer=same_as_input(0),
        propagate=_propagate_neg if _name == "Neg" else None,
    )(_keep(_fn))


@register_op("Not", inputs=["X"], outputs=["Y"], infer=same_as_input(0))
def not_(x: np.ndarray) -> np.ndarray:
    return np.logical_not(x)


@register_op("BitwiseNot", inputs=["X"], outputs=["Y"], infer=same_as_input(0))
def bitwise_not(x: np.ndarray) -> np.ndarray:
    return np.bitwise_not(x)


@register_op("IsNaN", inputs=["X"], outputs=["Y"], infer=lambda c: [c.input(0).with_dtype("bool")])
def isnan(x: np.ndarray) -> np.ndarray:
    return np.isnan(x)


@register_op(
    "IsInf",
    inputs=["X"],
    outputs=["Y"],
    attrs={"detect_negative": Attr("int", 1), "detect_positive": Attr("int", 1)},
    infer=lambda c: [c.input(0).with_dtype("bool")],
)
def isinf(x: np.ndarray, *, detect_negative: int, detect_positive: int) -> np.ndarray:
    out = np.zeros(x.shape, dtype=bool)
    if detect_negative:
        out |= np.isneginf(x)
    if detect_positive:
        out |= np.isposinf(x)
    return out


# ------------------------------------------------------ activations with attrs


def _act(name: str, attrs: dict[str, Attr]) -> Callable:
    return register_op(name, inputs=["X"], outputs=["Y"], attrs=attrs, infer=same_as_input(0))


@_act("LeakyRelu", {"alpha": Attr("float", 0.01)})
def leaky_relu(x: np.ndarray, *, alpha: float) -> np.ndarray:
    return np.where(x < 0, x * x.dtype.type(alpha), x).astype(x.dtype)


@_act("Elu", {"alpha": Attr("float", 1.0)})
def elu(x: np.ndarray, *, alpha: float) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(x < 0, alpha * (np.exp(x) - 1), x).astype(x.dtype)


_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214813232421875


@_act("Selu", {"alpha": Attr("float", _SELU_ALPHA), "gamma": Attr("float", _SELU_GAMMA)})
def selu(x: np.ndarray, *, alpha: float, gamma: float) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(x <= 0, gamma * (alpha * np.exp(x) - alpha), gamma * x).astype(x.dtype)


@_act("Celu", {"alpha": Attr("float", 1.0)})
def celu(x: np.ndarray, *, alpha: float) -> np.ndarray:
    with np.errstate(all="ignore"):
        neg = alpha * (np.exp(x / alpha) - 1)
        return (np.maximum(0, x) + np.minimum(0, neg)).astype(x.dtype)


@_act("ThresholdedRelu", {"alpha": Attr("float", 1.0)})
def thresholded_relu(x: np.ndarray, *, alpha: float) -> np.ndarray:
    return np.where(x > alpha, x, 0).astype(x.dtype)


@_act("HardSigmoid", {"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)})
def hard_sigmoid(x: np.ndarray, *, alpha: float, beta: float) -> np.ndarray:
    return np.clip(x * x.dtype.type(alpha) + x.dtype.type(beta), 0, 1).astype(x.dtype)


@_act("HardSwish", {})
def hard_swish(x: np.ndarray) -> np.ndarray:
    return (x * np.clip(x * x.dtype.type(1 / 6) + x.dtype.type(0.5), 0, 1)).astype(x.dtype)


@_act("Gelu", {"approximate": Attr("string", "none")})
def gelu(x: np.ndarray, *, approximate: str) -> np.ndarray:
    xd = x.astype(np.float64)
    if approximate == "tanh":
        y = 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd**3)))
    else:
        y = 0.5 * xd * (1 + _erf(xd / math.sqrt(2)))
    return y.astype(x.dtype)


@register_op("PRelu", inputs=["X", "slope"], outputs=["Y"], infer=lambda c: [c.input(0)])
def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    return np.where(x < 0, x * slope, x).astype(x.dtype)


@register_op(
    "Clip",
    inputs=["input", "min?", "max?"],
    outputs=["output"],
    infer=same_as_input(0),
)
def clip(x: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> np.ndarray:
    out = x
    if lo is not None:
        out = np.where(out < lo, lo, out)
    if hi is not None:
        out = np.where(out > hi, hi, out)
    return np.asarray(out).astype(x.dtype)


@register_op(
    "Shrink",
    inputs=["input"],
    outputs=["output"],
    attrs={"bias": Attr("float", 0.0), "lambd": Attr("float", 0.5)},
    infer=same_as_input(0),
)
def shrink(x: np.ndarray, *, bias: float, lambd: float) -> np.ndarray:
    xd = x.astype(np.float64)
    y = np.where(xd < -lambd, xd + bias, np.where(xd > lambd, xd - bias, 0))
    return y.astype(x.dtype)


# ---------------------------------------------------------------- binary ops


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        # ONNX integer division truncates toward zero (C semantics).
        with np.errstate(all="ignore"):
            q = np.trunc(np.true_divide(a.astype(np.float64), b.astype(np.float64)))
        return q.astype(a.dtype)
    with np.errstate(all="ignore"):
        return np.divide(a, b).astype(a.dtype)


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(fn(a, b)).astype(a.dtype, copy=False)

    return kernel


def _propagate_binary(fn: Callable[[Dim, Dim], Dim]) -> Callable[[InferContext], list | None]:
    def propagate(ctx: InferContext) -> list[Dim] | None:
        a, b = ctx.symbolic(0), ctx.symbolic(1)
        if a is None or b is None:
            return None
        if len(a) == 1 and len(b) > 1:
            a = a * len(b)
        if len(b) == 1 and len(a) > 1:
            b = b * len(a)
        if len(a) != len(b):
            return None
        return [fn(x, y) for x, y in zip(a, b, strict=True)]

    return propagate


def _dim_div(a: Dim, b: Dim) -> Dim:
    """ONNX integer Div truncates toward zero; symbolic dims are non-negative, so floor
    division is the same there."""
    if isinstance(a, int) and isinstance(b, int):
        if b == 0:
            raise ZeroDivisionError("dimension division by zero")
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b > 0) else -q
    return symbolic.floordiv(a, b)


# name: (kernel, symbolic rule, commutative)
_ARITH = {
    "Add": (np.add, symbolic.add, True),
    "Sub": (np.subtract, symbolic.sub, False),
    "Mul": (np.multiply, symbolic.mul, True),
    "Div": (_div, _dim_div, False),
}
for _name, (_fn, _sym, _commutative) in _ARITH.items():
    register_op(
        _name,
        inputs=["A", "B"],
        outputs=["C"],
        infer=broadcast_infer(),
        commutative=_commutative,
        propagate=_propagate_binary(_sym),
    )(_binary(_fn))


@register_op("Pow", inputs=["X", "Y"], outputs=["Z"], infer=broadcast_infer())
def pow_(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        if np.issubdtype(x.dtype, np.integer):
            return np.power(x.astype(np.int64), y.astype(np.int64)).astype(x.dtype)
        return np.power(x, y.astype(x.dtype)).astype(x.dtype)


@register_op(
    "Mod", inputs=["A", "B"], outputs=["C"], attrs={"fmod": Attr("int", 0)}, infer=broadcast_infer()
)
def mod(a: np.ndarray, b: np.ndarray, *, fmod: int) -> np.ndarray:
    with np.errstate(all="ignore"):
        if fmod:
            return np.fmod(a, b).astype(a.dtype)
        # Python semantics: the result takes the divisor's sign.
        return np.mod(a, b).astype(a.dtype)


for _name, _fn in {
    "BitwiseAnd": np.bitwise_and,
    "BitwiseOr": np.bitwise_or,
    "BitwiseXor": np.bitwise_xor,
}.items():
    register_op(_name, inputs=["A", "B"], outputs=["C"], infer=broadcast_infer())(_binary(_fn))


@register_op(
    "BitShift",
    inputs=["X", "Y"],
    outputs=["Z"],
    attrs={"direction": Attr("string")},
    infer=broadcast_infer(),
)
def bit_shift(x: np.ndarray, y: np.ndarray, *, direction: str) -> np.ndarray:
    fn = np.left_shift if direction == "LEFT" else np.right_shift
    return fn(x, y.astype(x.dtype)).astype(x.dtype)


def _dim_equal(a: Dim, b: Dim) -> Dim:
    """Equal on shape values (1 / 0): known when both are ints, or the same dim, or a plain
    symbol (a size, never negative) against a negative int (`Equal(shape, -1)`, which
    exporters write before Where to fill in a Reshape's -1)."""
    if isinstance(a, int) and isinstance(b, int):
        return int(a == b)
    if a == b:
        return 1
    for x, y in ((a, b), (b, a)):
        if isinstance(y, int) and y < 0 and symbolic.is_symbol_name(str(x)):
            return 0
    raise ValueError(f"cannot compare {a} and {b}")


register_op(
    "Equal",
    inputs=["A", "B"],
    outputs=["C"],
    infer=broadcast_infer(DType.BOOL),
    commutative=True,
    propagate=_propagate_binary(_dim_equal),
)(np.equal)
for _name, _fn in {
    "Less": np.less,
    "LessOrEqual": np.less_equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
}.items():
    register_op(_name, inputs=["A", "B"], outputs=["C"], infer=broadcast_infer(DType.BOOL))(_fn)

for _name, _fn in {"And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}.items():
    register_op(
        _name, inputs=["A", "B"], outputs=["C"], infer=broadcast_infer(DType.BOOL), commutative=True
    )(_fn)


# ---------------------------------------------------------- variadic reductions


def _variadic(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    def kernel(*xs: np.ndarray) -> np.ndarray:
        out = xs[0]
        with np.errstate(all="ignore"):
            for x in xs[1:]:
                out = fn(out, x)
        return np.asarray(out).astype(xs[0].dtype, copy=False)

    return kernel


# Commutative: a two-input node gives the same result with its inputs swapped (NaN
# propagation of Max / Min included: np.maximum and np.minimum return NaN from either side).
for _name, _fn in {"Sum": np.add, "Max": np.maximum, "Min": np.minimum}.items():
    register_op(
        _name, inputs=["data_0*"], outputs=["out"], infer=broadcast_infer(), commutative=True
    )(_variadic(_fn))


@register_op("Mean", inputs=["data_0*"], outputs=["out"], infer=broadcast_infer(), commutative=True)
def mean(*xs: np.ndarray) -> np.ndarray:
    total = _variadic(np.add)(*xs)
    return (total / xs[0].dtype.type(len(xs))).astype(xs[0].dtype)


def _where_type(ctx: InferContext) -> TensorType:
    if ctx.input(1).dtype != ctx.input(2).dtype:
        ctx.fail(f"X and Y dtypes differ: {ctx.input(1).dtype} and {ctx.input(2).dtype}")
    shape = broadcast_shapes([ctx.input(i).shape for i in range(3)], f"node {ctx.node.name}: ")
    return make_type(ctx.input(1).dtype, shape)


def _where_propagate(ctx: InferContext) -> list[Dim] | None:
    """Where on shape values, when the condition is known (1 / 0 per element)."""
    values = [ctx.symbolic(i) for i in range(3)]
    if any(v is None for v in values):
        return None
    n = max(len(v) for v in values if v is not None)
    cond, x, y = (v * n if v is not None and len(v) == 1 else v for v in values)
    if cond is None or x is None or y is None or not len(cond) == len(x) == len(y) == n:
        return None
    if not all(isinstance(c, int) for c in cond):
        return None
    return [a if c else b for c, a, b in zip(cond, x, y, strict=True)]


@register_op(
    "Where",
    inputs=["condition", "X", "Y"],
    outputs=["output"],
    infer=lambda c: [_where_type(c)],
    propagate=_where_propagate,
)
def where(cond: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(cond, x, y).astype(x.dtype)
