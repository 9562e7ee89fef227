"""ONNX Runtime's quantized contrib ops (domain com.microsoft) that its `quantize_static` writes
in QOperator format, as the ONNX Model Zoo's int8 models hold them: QLinearAdd, QLinearMul,
QLinearSigmoid, QLinearLeakyRelu, QLinearConcat, QLinearAveragePool, QLinearGlobalAveragePool,
QLinearSoftmax, QLinearWhere and QGemm. (QLinearConv and QLinearMatMul are
standard ONNX ops, in reference_ops.py and nn.py.)

Each op is defined once, as its expansion into standard ONNX ops (`EXPANSIONS`), which gives
its type inference (the expansion built over the input types), its reference kernel (the
expansion run by the interpreter) and the rewrite backends lower
(`ecograph.passes.qlinear.ExpandQLinear`):

- the element-wise, pooling and softmax ops are `quantize(f(dequantize(x)))`, the
  semantics ONNX Runtime's operator documentation states: DequantizeLinear of each input,
  the float op, QuantizeLinear with the output's scale and zero point;
- QGemm is an integer product as ONNX Runtime computes it: MatMulInteger of A and B with
  their zero points, plus the int32 bias C, times alpha * a_scale * b_scale (per output
  column when b_scale is), then quantized with y_scale / y_zero_point or left float32 when
  they are absent.

ONNX Runtime computes several of these by other routes (256-entry lookup tables for Sigmoid
and LeakyRelu, precomputed scale ratios for Add and Mul, integer sums for the pools), which
round differently where a value lies near the middle between two codes: its results and
these differ there by one code (tests/quant/test_ms_qlinear.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.ops.ms_quant import MS_DOMAIN
from ecograph.ir.ops.nn import gemm_macs
from ecograph.ir.registry import Attr, InferContext, register_op
from ecograph.ir.types import TensorType


class Emitter:
    """Adds the nodes of an expansion to `graph` (before `before`, when given), named after
    `prefix`. An op whose inputs are all constants is computed now and added as a constant
    (a QGemm's transposed weight stays one int8 constant, not a kernel run on every call)."""

    def __init__(self, graph: Graph, prefix: str, before: Node | None = None) -> None:
        self.graph = graph
        self.prefix = prefix
        self.before = before

    def op(self, op_type: str, *inputs: Value | None, **attrs: Any) -> Value:
        node = self.graph.add_node(
            op_type, list(inputs), attrs, name=f"{self.prefix}/{op_type}", before=self.before
        )
        if inputs and all(v is None or v.is_constant for v in inputs):
            from ecograph.ir.interpreter import run_node

            args = [None if v is None else v.const_value for v in inputs]
            (arr,) = run_node(node, args)
            self.graph.remove_node(node)
            return self.const(arr)
        return node.outputs[0]

    def const(self, array: np.ndarray) -> Value:
        return self.graph.add_constant(array, f"{self.prefix}/const")


Expansion = Callable[[Emitter, Sequence["Value | None"], dict[str, Any]], Value]


def _input(ins: Sequence[Value | None], i: int) -> Value | None:
    return ins[i] if i < len(ins) else None


def _dequantize(e: Emitter, x: Value | None, scale: Value | None, zp: Value | None) -> Value:
    assert x is not None and scale is not None
    return e.op("DequantizeLinear", x, scale, *([zp] if zp is not None else []))


def _quantize(e: Emitter, y: Value, scale: Value | None, zp: Value | None, dtype: DType) -> Value:
    """QuantizeLinear to `dtype` (the quantized input's type: without a zero point,
    QuantizeLinear's own default would be uint8)."""
    assert scale is not None
    if zp is not None:
        return e.op("QuantizeLinear", y, scale, zp)
    return e.op("QuantizeLinear", y, scale, output_dtype=dtype.onnx)


def _dtype(ins: Sequence[Value | None], i: int = 0) -> DType:
    v = ins[i]
    assert v is not None
    return v.dtype


def _binary(op_type: str) -> Expansion:
    """A, A_scale, A_zero_point?, B, B_scale, B_zero_point?, C_scale, C_zero_point?"""

    def expand(e: Emitter, ins: Sequence[Value | None], attrs: dict[str, Any]) -> Value:
        a = _dequantize(e, ins[0], ins[1], _input(ins, 2))
        b = _dequantize(e, ins[3], ins[4], _input(ins, 5))
        return _quantize(e, e.op(op_type, a, b), ins[6], _input(ins, 7), _dtype(ins))

    return expand


def _unary(op_type: str, **fixed: str) -> Expansion:
    """X, X_scale, X_zero_point?, Y_scale, Y_zero_point? (attributes in `fixed` passed on)."""

    def expand(e: Emitter, ins: Sequence[Value | None], attrs: dict[str, Any]) -> Value:
        x = _dequantize(e, ins[0], ins[1], _input(ins, 2))
        y = e.op(op_type, x, **{k: attrs[a] for k, a in fixed.items()})
        return _quantize(e, y, ins[3], _input(ins, 4), _dtype(ins))

    return expand


def _to_channels_first(e: Emitter, x: Value) -> Value:
    r = x.type.rank
    return e.op("Transpose", x, perm=[0, r - 1, *range(1, r - 1)])


def _to_channels_last(e: Emitter, x: Value) -> Value:
    r = x.type.rank
    return e.op("Transpose", x, perm=[0, *range(2, r), 1])


def _average_pool(e: Emitter, ins: Sequence[Value | None], attrs: dict[str, Any]) -> Value:
    x = _dequantize(e, ins[0], ins[1], _input(ins, 2))
    if attrs["channels_last"]:
        x = _to_channels_first(e, x)
    pool = {k: v for k, v in attrs.items() if k != "channels_last" and v is not None}
    y = e.op("AveragePool", x, **pool)
    if attrs["channels_last"]:
        y = _to_channels_last(e, y)
    return _quantize(e, y, ins[3], _input(ins, 4), _dtype(ins))


def _global_average_pool(e: Emitter, ins: Sequence[Value | None], attrs: dict[str, Any]) -> Value:
    x = _dequantize(e, ins[0], ins[1], ins[2])
    if attrs["channels_last"]:
        axes = np.arange(1, x.type.rank - 1, dtype=np.int64)
        y = e.op("ReduceMean", x, e.const(axes), keepdims=1)
    else:
        y = e.op("GlobalAveragePool", x)
    return _quantize(e, y, ins[3], ins[4], _dtype(ins))


def _softmax(e: Emitter, ins: Sequence[Value | None], attrs: dict[str, Any]) -> Value:
    """Softmax over `axis` (opset >= 13), or over the dims from `axis` on, the input seen as
    a matrix (the opset 1-12 semantics the `opset` attribute selects)."""
    x = _dequantize(e, ins[0], ins[1], _input(ins, 2))
    if attrs["opset"] >= 13:
        y = e.op("Softmax", x, axis=attrs["axis"])
    else:
        flat = e.op("Flatten", x, axis=attrs["axis"])
        y = e.op("Reshape", e.op("Softmax", flat, axis=1), e.op("Shape", x))
    return _quantize(e, y, ins[3], ins[4], _dtype(ins))


def _concat(e: Emitter, ins: Sequence[Value | None], attrs: dict[str, Any]) -> Value:
    """Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) for each input."""
    parts = [_dequantize(e, *ins[i : i + 3]) for i in range(2, len(ins), 3)]
    y = e.op("Concat", *parts, axis=attrs["axis"])
    return _quantize(e, y, ins[0], ins[1], _dtype(ins, 1))


def _where(e: Emitter, ins: Sequence[Value | None], attrs: dict[str, Any]) -> Value:
    x = _dequantize(e, ins[1], ins[2], ins[3])
    y = _dequantize(e, ins[4], ins[5], ins[6])
    return _quantize(e, e.op("Where", ins[0], x, y), ins[7], ins[8], _dtype(ins, 1))


def _gemm(e: Emitter, ins: Sequence[Value | None], attrs: dict[str, Any]) -> Value:
    """A, a_scale, a_zero_point, B, b_scale, b_zero_point, C?, y_scale?, y_zero_point?"""
    a, a_scale, a_zp, b, b_scale, b_zp = ins[:6]
    assert a is not None and b is not None and a_scale is not None and b_scale is not None
    if attrs["transA"]:
        a = e.op("Transpose", a, perm=[1, 0])
    if attrs["transB"]:
        b = e.op("Transpose", b, perm=[1, 0])
    acc = e.op("MatMulInteger", a, b, a_zp, b_zp)
    c = _input(ins, 6)
    if c is not None:
        acc = e.op("Add", acc, c)
    scale = e.op("Mul", a_scale, b_scale)
    if attrs["alpha"] != 1.0:
        scale = e.op("Mul", scale, e.const(np.array(attrs["alpha"], np.float32)))
    y = e.op("Mul", e.op("Cast", acc, to=DType.FLOAT32.onnx), scale)
    y_scale = _input(ins, 7)
    if y_scale is None:
        return y
    return _quantize(e, y, y_scale, _input(ins, 8), _dtype(ins))


_UNARY = "X X_scale X_zero_point? Y_scale Y_zero_point?"
_POOL_ATTRS = {
    "kernel_shape": Attr("ints"),
    "auto_pad": Attr("string", "NOTSET"),
    "ceil_mode": Attr("int", 0),
    "count_include_pad": Attr("int", 0),
    "pads": Attr("ints", None),
    "strides": Attr("ints", None),
    "channels_last": Attr("int", 0),
}
# (op, its inputs as ONNX Runtime names them, its attributes, its expansion)
_OPS: list[tuple[str, str, dict[str, Attr], Expansion]] = [
    ("QLinearAdd", "A A_scale A_zero_point? B B_scale B_zero_point? C_scale C_zero_point?", {},
     _binary("Add")),
    ("QLinearMul", "A A_scale A_zero_point? B B_scale B_zero_point? C_scale C_zero_point?", {},
     _binary("Mul")),
    ("QLinearSigmoid", _UNARY, {}, _unary("Sigmoid")),
    ("QLinearLeakyRelu", _UNARY, {"alpha": Attr("float", 0.01)},
     _unary("LeakyRelu", alpha="alpha")),
    ("QLinearAveragePool", "X x_scale x_zero_point? y_scale y_zero_point?", _POOL_ATTRS,
     _average_pool),
    ("QLinearGlobalAveragePool", "X x_scale x_zero_point y_scale y_zero_point",
     {"channels_last": Attr("int", 0)}, _global_average_pool),
    ("QLinearSoftmax", "X X_scale x_zero_point? y_scale y_zero_point",
     {"opset": Attr("int"), "axis": Attr("int", -1)}, _softmax),
    ("QLinearConcat", "Y_scale Y_zero_point inputs*", {"axis": Attr("int")}, _concat),
    ("QLinearWhere",
     "condition X x_scale x_zero_point Y y_scale y_zero_point z_scale z_zero_point", {},
     _where),
    ("QGemm", "A a_scale a_zero_point B b_scale b_zero_point C? y_scale? y_zero_point?",
     {"alpha": Attr("float", 1.0), "transA": Attr("int", 0), "transB": Attr("int", 0)},
     _gemm),
]  # fmt: skip

EXPANSIONS: dict[tuple[str, str], Expansion] = {(MS_DOMAIN, op): f for op, _, _, f in _OPS}


def _check_inputs(op_type: str, count: int) -> str | None:
    """Why `count` inputs do not fit `op_type`, or None."""
    if op_type == "QLinearConcat" and (count < 5 or (count - 2) % 3):
        return (
            f"takes Y_scale, Y_zero_point and then (X, X_scale, X_zero_point) per input; "
            f"got {count} inputs"
        )
    return None


def _scratch(name: str, types: Sequence[TensorType | None]) -> tuple[Graph, list[Value | None]]:
    graph = Graph(name)
    ins = [None if t is None else graph.add_input(f"in{i}", t.dtype, t.shape) for i, t in
           enumerate(types)]  # fmt: skip
    return graph, ins


def _infer(op_type: str, expand: Expansion) -> Callable[[InferContext], list[TensorType]]:
    def infer(ctx: InferContext) -> list[TensorType]:
        why = _check_inputs(op_type, ctx.num_inputs)
        if why:
            ctx.fail(why)
        types = [ctx.input(i) if ctx.has_input(i) else None for i in range(ctx.num_inputs)]
        graph, ins = _scratch(op_type, types)
        try:
            out = expand(Emitter(graph, op_type), ins, dict(ctx.attrs))
        except Exception as exc:  # the inner op's own message, named for this node
            ctx.fail(f"{type(exc).__name__}: {exc}")
        return [out.type]

    return infer


def _kernel(op_type: str, expand: Expansion) -> Callable[..., np.ndarray]:
    def kernel(*args: np.ndarray | None, **attrs: Any) -> np.ndarray:
        from ecograph.ir.interpreter import interpret

        types = [None if a is None else TensorType.of(np.asarray(a)) for a in args]
        graph, ins = _scratch(op_type, types)
        graph.add_output(expand(Emitter(graph, op_type), ins, attrs))
        feeds = {v.name: a for v, a in zip(ins, args, strict=True) if v is not None}
        (out,) = interpret(graph, feeds).values()
        return out

    return kernel


for _op, _inputs, _attrs, _expand in _OPS:
    register_op(
        _op,
        domain=MS_DOMAIN,
        inputs=_inputs.split(),
        outputs=["Y"],
        attrs=_attrs,
        infer=_infer(_op, _expand),
        doc=f"ONNX Runtime's {_op}: see {__name__}.",
        macs=gemm_macs if _op == "QGemm" else None,
    )(_kernel(_op, _expand))
