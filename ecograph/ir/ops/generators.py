"""ONNX ops that make a tensor from attributes or sizes alone: Constant, ConstantOfShape,
Range, EyeLike and the window functions (HannWindow, HammingWindow, BlackmanWindow). They are
deterministic; the random generators are in `sampling.py`.

Constant, ConstantOfShape and Range have `propagate` rules, so shape math through them stays
symbolic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

# ------------------------------------------------------------ Constant family


def _constant_value(attrs: dict[str, Any]) -> np.ndarray:
    given = {k: v for k, v in attrs.items() if v is not None}
    if len(given) != 1:
        raise ValueError(f"Constant needs exactly one value attribute, got {sorted(given)}")
    key, v = next(iter(given.items()))
    if key == "value":
        return v
    if key == "value_float":
        return np.array(v, dtype=np.float32)
    if key == "value_int":
        return np.array(v, dtype=np.int64)
    if key == "value_floats":
        return np.array(v, dtype=np.float32).reshape(-1)
    if key == "value_ints":
        return np.array(v, dtype=np.int64).reshape(-1)
    if key == "value_string":
        return np.array(v, dtype=object)
    if key == "value_strings":
        return np.array(list(v), dtype=object).reshape(-1)
    raise ValueError(f"unknown Constant attribute {key}")


_CONSTANT_ATTRS = {
    k: Attr(kind, None)
    for k, kind in {
        "value": "tensor",
        "value_float": "float",
        "value_floats": "floats",
        "value_int": "int",
        "value_ints": "ints",
        "value_string": "string",
        "value_strings": "strings",
    }.items()
}


def _constant_infer(ctx: InferContext) -> list[TensorType]:
    return [TensorType.of(_constant_value(ctx.attrs))]


def _constant_propagate(ctx: InferContext) -> list[Dim] | None:
    arr = _constant_value(ctx.attrs)
    if arr.dtype.kind not in "iu" or arr.ndim > 1:
        return None
    return [int(x) for x in arr.reshape(-1)]


@register_op(
    "Constant",
    inputs=[],
    outputs=["output"],
    attrs=_CONSTANT_ATTRS,
    infer=_constant_infer,
    propagate=_constant_propagate,
)
def constant(**attrs: Any) -> np.ndarray:
    return _constant_value(attrs)


def _constant_of_shape_infer(ctx: InferContext) -> list[TensorType]:
    value = ctx.attr("value")
    dtype = DType.FLOAT32 if value is None else DType.from_numpy(value.dtype)
    dims = ctx.symbolic(0)
    if dims is None:
        n = ctx.input(0).shape[0] if ctx.input(0).rank == 1 else None
        if not isinstance(n, int):
            ctx.fail("the shape input must be a 1-D tensor of static length")
        return [make_type(dtype, [None] * n)]
    return [TensorType(dtype, dims)]


def _constant_of_shape_propagate(ctx: InferContext) -> list[Dim] | None:
    value = ctx.attr("value")
    dims = ctx.symbolic(0)
    if value is None or value.dtype.kind not in "iu" or dims is None or len(dims) != 1:
        return None
    if not isinstance(dims[0], int):
        return None
    out: list[Dim] = [int(value.reshape(-1)[0])] * dims[0]
    return out


@register_op(
    "ConstantOfShape",
    inputs=["input"],
    outputs=["output"],
    attrs={"value": Attr("tensor", None)},
    infer=_constant_of_shape_infer,
    propagate=_constant_of_shape_propagate,
)
def constant_of_shape(shape: np.ndarray, *, value: np.ndarray | None) -> np.ndarray:
    fill = np.zeros(1, np.float32) if value is None else value
    return np.full(tuple(int(d) for d in shape), fill.reshape(-1)[0], dtype=fill.dtype)


# ----------------------------------------------------------------------- Range


def _range_infer(ctx: InferContext) -> list[TensorType]:
    dtype = ctx.input(0).dtype
    start, limit, delta = ctx.constant(0), ctx.constant(1), ctx.constant(2)
    if start is None or limit is None or delta is None:
        s, lim, d = ctx.symbolic(0), ctx.symbolic(1), ctx.symbolic(2)
        if s == [0] and d == [1] and lim is not None:
            return [TensorType(dtype, [lim[0]])]
        return [make_type(dtype, [None])]
    n = max(int(np.ceil((limit.item() - start.item()) / delta.item())), 0)
    return [TensorType(dtype, [n])]


@register_op("Range", inputs=["start", "limit", "delta"], outputs=["output"], infer=_range_infer)
def range_(start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> np.ndarray:
    n = max(int(np.ceil((limit.item() - start.item()) / delta.item())), 0)
    return (start + np.arange(n).astype(start.dtype) * delta).astype(start.dtype)


# ------------------------------------------------------------------- EyeLike


def _eye_like_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    if x.rank != 2:
        ctx.fail(f"input must be 2-D, got {x}")
    dtype = ctx.attr("dtype")
    return [x.with_dtype(DType.from_onnx(dtype) if dtype else x.dtype)]


@register_op(
    "EyeLike",
    inputs=["input"],
    outputs=["output"],
    attrs={"dtype": Attr("int", None), "k": Attr("int", 0)},
    infer=_eye_like_infer,
)
def eye_like(x: np.ndarray, *, dtype: int | None, k: int) -> np.ndarray:
    out = DType.from_onnx(dtype).numpy if dtype else x.dtype
    return np.eye(x.shape[0], x.shape[1], k=k).astype(out)


# ------------------------------------------------------------ window functions


def _window_infer(ctx: InferContext) -> list[TensorType]:
    dtype = DType.from_onnx(ctx.attr("output_datatype"))
    size = ctx.symbolic(0)
    return [make_type(dtype, [size[0] if size is not None else None])]


def _window(name: str, coeffs: tuple[float, ...]) -> None:
    def kernel(size: np.ndarray, *, output_datatype: int, periodic: int) -> np.ndarray:
        n = int(np.asarray(size).reshape(-1)[0])
        denom = n if periodic else n - 1
        k = np.arange(n, dtype=np.float64)
        w = np.zeros(n)
        for i, a in enumerate(coeffs):
            w = w + (-1) ** i * a * np.cos(2 * np.pi * i * k / denom)
        return w.astype(DType.from_onnx(output_datatype).numpy)

    register_op(
        name,
        inputs=["size"],
        outputs=["output"],
        attrs={"output_datatype": Attr("int", 1), "periodic": Attr("int", 1)},
        infer=_window_infer,
        doc=f"ONNX {name}: a generalized cosine window with coefficients {coeffs}.",
    )(kernel)


_window("HannWindow", (0.5, 0.5))
_window("HammingWindow", (25 / 46, 21 / 46))
_window("BlackmanWindow", (0.42, 0.5, 0.08))
