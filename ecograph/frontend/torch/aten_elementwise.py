"""ATen converters for elementwise ops: arithmetic and comparisons (in the dtype torch
promotes to), unary math and activations, clamp, where / masked_fill, and the ops that pass a
tensor through or only cast it (clone, eval-mode dropout, `.to(dtype)`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ecograph.frontend.torch.converter import (
    Converter,
    ConvertFn,
    NotConvertedError,
    aten,
    target_name,
)
from ecograph.frontend.torch.types import torch_dtype_to_ir
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Value

# ------------------------------------------------------------ pass-through and casts


@aten(
    "aten.clone.default",
    "aten.alias.default",
    "aten.detach.default",
    "aten.lift_fresh_copy.default",
    "aten.contiguous.default",
    "aten.dropout.default",
    "aten.alias_copy.default",
)
def _passthrough(cx: Converter, node: Any) -> Any:
    return cx.tensor(node.args[0])


@aten("aten.native_dropout.default")
def _native_dropout(cx: Converter, node: Any) -> tuple[Value, None]:
    if cx.args(node).get("train"):
        raise NotConvertedError("dropout in training mode (call module.eval())")
    return cx.tensor(node.args[0]), None


@aten(
    "aten._to_copy.default",
    "aten.to.dtype",
    "aten.to.dtype_layout",
    "aten._to_dtype.default",
    "aten.type_as.default",
)
def _to_copy(cx: Converter, node: Any) -> Value:
    return cx.tensor(node.args[0], cx.out_dtype(node))


# ------------------------------------------------------------ binary


def _promote(cx: Converter, node: Any, names: Sequence[str]) -> DType:
    """The dtype torch computes a binary op in (before a comparison makes it bool)."""
    import torch

    a = cx.args(node)
    dummies = []
    for n in names:
        x = a[n]
        v = cx.val(x)
        if isinstance(v, torch.Tensor):
            dummies.append(torch.zeros((1,) if v.dim() else (), dtype=v.dtype))
        elif isinstance(v, torch.SymInt):
            dummies.append(1)
        else:
            dummies.append(v)
    if len(dummies) == 1:
        d = dummies[0]
        return torch_dtype_to_ir(d.dtype if isinstance(d, torch.Tensor) else torch.tensor(d).dtype)
    result = torch.result_type(dummies[0], dummies[1])
    return torch_dtype_to_ir(result)


def _binary(onnx_op: str, *, scale_other: bool = False, compare: bool = False) -> ConvertFn:
    def convert(cx: Converter, node: Any) -> Value:
        a = cx.args(node)
        first, second = ("self", "other") if "other" in a else list(a)[:2]
        dtype = _promote(cx, node, [first, second]) if compare else cx.out_dtype(node)
        x = cx.tensor(a[first], dtype)
        y = cx.tensor(a[second], dtype)
        alpha = a.get("alpha", 1)
        if scale_other and alpha not in (None, 1):
            y = cx.op("Mul", y, cx.tensor(alpha, dtype))
        return cx.op(onnx_op, x, y)

    return convert


for _names, _op, _kw in [
    (("aten.add.Tensor", "aten.add.Scalar"), "Add", {"scale_other": True}),
    (("aten.sub.Tensor", "aten.sub.Scalar"), "Sub", {"scale_other": True}),
    (("aten.mul.Tensor", "aten.mul.Scalar"), "Mul", {}),
    (("aten.maximum.default",), "Max", {}),
    (("aten.minimum.default",), "Min", {}),
    (("aten.eq.Tensor", "aten.eq.Scalar"), "Equal", {"compare": True}),
    (("aten.lt.Tensor", "aten.lt.Scalar"), "Less", {"compare": True}),
    (("aten.le.Tensor", "aten.le.Scalar"), "LessOrEqual", {"compare": True}),
    (("aten.gt.Tensor", "aten.gt.Scalar"), "Greater", {"compare": True}),
    (("aten.ge.Tensor", "aten.ge.Scalar"), "GreaterOrEqual", {"compare": True}),
    (("aten.logical_and.default",), "And", {"compare": True}),
    (("aten.logical_or.default",), "Or", {"compare": True}),
    (("aten.logical_xor.default",), "Xor", {"compare": True}),
]:
    aten(*_names)(_binary(_op, **_kw))


@aten("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    x, y = cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype)
    if a.get("alpha", 1) not in (None, 1):
        x = cx.op("Mul", x, cx.tensor(a["alpha"], dtype))
    return cx.op("Sub", y, x)


@aten("aten.ne.Tensor", "aten.ne.Scalar")
def _ne(cx: Converter, node: Any) -> Value:
    return cx.op("Not", _binary("Equal", compare=True)(cx, node))


@aten("aten.div.Tensor", "aten.div.Scalar", "aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    mode = a.get("rounding_mode")
    dtype = cx.out_dtype(node)
    if mode is None or dtype.is_float:
        x, y = cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype)
        out = cx.op("Div", x, y)
        if mode == "floor":
            out = cx.op("Floor", out)
        elif mode == "trunc":
            out = cx.op("Where", cx.op("Less", out, cx.tensor(0.0, dtype)),
                        cx.op("Ceil", out), cx.op("Floor", out))  # fmt: skip
        return out
    x, y = cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype)
    if mode == "trunc":
        return cx.op("Div", x, y)  # ONNX integer Div truncates
    # Floor division of integers: truncate, then step down where the signs differ inexactly.
    q = cx.op("Div", x, y)
    r = cx.op("Sub", x, cx.op("Mul", q, y))
    zero = cx.tensor(0, dtype)
    signs_differ = cx.op("Xor", cx.op("Less", x, zero), cx.op("Less", y, zero))
    adjust = cx.op("And", signs_differ, cx.op("Not", cx.op("Equal", r, zero)))
    return cx.op("Where", adjust, cx.op("Sub", q, cx.tensor(1, dtype)), q)


@aten("aten.remainder.Tensor", "aten.remainder.Scalar", "aten.fmod.Tensor", "aten.fmod.Scalar")
def _remainder(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    x, y = cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype)
    if "fmod" in target_name(node.target):
        return cx.op("Mod", x, y, fmod=1)
    if dtype.is_float:  # Python-style remainder: x - floor(x / y) * y
        return cx.op("Sub", x, cx.op("Mul", cx.op("Floor", cx.op("Div", x, y)), y))
    return cx.op("Mod", x, y, fmod=0)


@aten("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def _pow(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    return cx.op("Pow", cx.tensor(a["self"], dtype), cx.tensor(a["exponent"], dtype))


@aten("aten.bitwise_and.Tensor", "aten.bitwise_and.Scalar", "aten.bitwise_or.Tensor",
      "aten.bitwise_or.Scalar", "aten.bitwise_xor.Tensor", "aten.bitwise_xor.Scalar")  # fmt: skip
def _bitwise(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    kind = target_name(node.target).split(".")[1].split("_")[1]
    op = {"and": "And", "or": "Or", "xor": "Xor"}[kind] if dtype == DType.BOOL else (
        {"and": "BitwiseAnd", "or": "BitwiseOr", "xor": "BitwiseXor"}[kind]
    )  # fmt: skip
    return cx.op(op, cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype))


# ------------------------------------------------------------ unary


def _unary(onnx_op: str, **attrs: Any) -> ConvertFn:
    def convert(cx: Converter, node: Any) -> Value:
        return cx.op(onnx_op, cx.tensor(node.args[0], cx.out_dtype(node)), **attrs)

    return convert


for _name, _op in [
    ("neg", "Neg"), ("abs", "Abs"), ("exp", "Exp"), ("log", "Log"), ("sqrt", "Sqrt"),
    ("reciprocal", "Reciprocal"), ("sin", "Sin"), ("cos", "Cos"), ("tan", "Tan"),
    ("tanh", "Tanh"), ("sigmoid", "Sigmoid"), ("relu", "Relu"), ("erf", "Erf"),
    ("floor", "Floor"), ("ceil", "Ceil"), ("sign", "Sign"), ("asin", "Asin"),
    ("acos", "Acos"), ("atan", "Atan"), ("sinh", "Sinh"), ("cosh", "Cosh"),
    ("hardswish", "HardSwish"), ("mish", "Mish"), ("acosh", "Acosh"), ("asinh", "Asinh"),
    ("atanh", "Atanh"),
]:  # fmt: skip
    aten(f"aten.{_name}.default")(_unary(_op))


aten("aten.hardsigmoid.default")(_unary("HardSigmoid", alpha=1.0 / 6.0, beta=0.5))


@aten("aten.round.default")
def _round(cx: Converter, node: Any) -> Value:
    return cx.op("Round", cx.tensor(node.args[0]))  # both round half to even


@aten("aten.rsqrt.default")
def _rsqrt(cx: Converter, node: Any) -> Value:
    return cx.op("Reciprocal", cx.op("Sqrt", cx.tensor(node.args[0], cx.out_dtype(node))))


@aten("aten.log1p.default")
def _log1p(cx: Converter, node: Any) -> Value:
    dtype = cx.out_dtype(node)
    return cx.op("Log", cx.op("Add", cx.tensor(node.args[0], dtype), cx.tensor(1.0, dtype)))


@aten("aten.expm1.default")
def _expm1(cx: Converter, node: Any) -> Value:
    dtype = cx.out_dtype(node)
    return cx.op("Sub", cx.op("Exp", cx.tensor(node.args[0], dtype)), cx.tensor(1.0, dtype))


@aten("aten.trunc.default")
def _trunc(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    return cx.op("Mul", cx.op("Sign", x), cx.op("Floor", cx.op("Abs", x)))


@aten("aten.log2.default", "aten.log10.default")
def _log_base(cx: Converter, node: Any) -> Value:
    dtype = cx.out_dtype(node)
    base = 2.0 if "log2" in target_name(node.target) else 10.0
    x = cx.op("Log", cx.tensor(node.args[0], dtype))
    return cx.op("Div", x, cx.tensor(math.log(base), dtype))


@aten("aten.silu.default")
def _silu(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    return cx.op("Mul", x, cx.op("Sigmoid", x))


@aten("aten.gelu.default")
def _gelu(cx: Converter, node: Any) -> Value:
    return cx.op("Gelu", cx.tensor(node.args[0]), approximate=cx.arg(node, "approximate"))


@aten("aten.leaky_relu.default")
def _leaky_relu(cx: Converter, node: Any) -> Value:
    return cx.op("LeakyRelu", cx.tensor(node.args[0]), alpha=float(cx.arg(node, "negative_slope")))


@aten("aten.elu.default")
def _elu(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    if a["scale"] != 1 or a["input_scale"] != 1:
        raise NotConvertedError("elu with scale or input_scale other than 1")
    return cx.op("Elu", cx.tensor(a["self"]), alpha=float(a["alpha"]))


@aten("aten.softplus.default")
def _softplus(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    x = cx.tensor(a["self"])
    beta, threshold = float(a["beta"]), float(a["threshold"])
    scaled = x if beta == 1 else cx.op("Mul", x, cx.tensor(beta, dtype))
    soft = cx.op("Softplus", scaled)
    if beta != 1:
        soft = cx.op("Div", soft, cx.tensor(beta, dtype))
    # torch switches to the identity above the threshold.
    return cx.op("Where", cx.op("Greater", scaled, cx.tensor(threshold, dtype)), x, soft)


@aten("aten.clamp.default", "aten.clamp.Tensor", "aten.clamp_min.default",
      "aten.clamp_max.default", "aten.hardtanh.default", "aten.relu6.default")  # fmt: skip
def _clamp(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    name = target_name(node.target)
    x = cx.tensor(a["self"], dtype)
    if name.startswith("aten.hardtanh"):
        lo, hi = a["min_val"], a["max_val"]
    elif name.startswith("aten.relu6"):
        lo, hi = 0.0, 6.0
    elif name.startswith("aten.clamp_min"):
        lo, hi = a["min"], None
    elif name.startswith("aten.clamp_max"):
        lo, hi = None, a["max"]
    else:
        lo, hi = a["min"], a["max"]
    if (lo is None or not hasattr(lo, "op")) and (hi is None or not hasattr(hi, "op")):
        lo_v = None if lo is None else cx.tensor(lo, dtype)
        hi_v = None if hi is None else cx.tensor(hi, dtype)
        return cx.op("Clip", x, lo_v, hi_v)
    if lo is not None:
        x = cx.op("Max", x, cx.tensor(lo, dtype))
    if hi is not None:
        x = cx.op("Min", x, cx.tensor(hi, dtype))
    return x


@aten("aten.logical_not.default")
def _logical_not(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    if x.dtype != DType.BOOL:
        x = cx.op("Not", cx.op("Equal", x, cx.tensor(0, x.dtype)))
    return cx.op("Not", x)


@aten("aten.bitwise_not.default")
def _bitwise_not(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    return cx.op("Not" if x.dtype == DType.BOOL else "BitwiseNot", x)


@aten("aten.isnan.default")
def _isnan(cx: Converter, node: Any) -> Value:
    return cx.op("IsNaN", cx.tensor(node.args[0]))


@aten("aten.isinf.default")
def _isinf(cx: Converter, node: Any) -> Value:
    return cx.op("IsInf", cx.tensor(node.args[0]))


# ------------------------------------------------------------ select


@aten("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther",
      "aten.where.Scalar")  # fmt: skip
def _where(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    cond = cx.tensor(a["condition"], DType.BOOL)
    return cx.op("Where", cond, cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype))


@aten("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def _masked_fill(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    mask = cx.tensor(a["mask"], DType.BOOL)
    return cx.op("Where", mask, cx.tensor(a["value"], dtype), cx.tensor(a["self"], dtype))
