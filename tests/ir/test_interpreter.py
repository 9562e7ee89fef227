"""The reference interpreter's kernels against onnx.reference, op by op, and its checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from ecograph.errors import InterpreterError
from ecograph.ir import DType, Graph, GraphBuilder, interpret

rng = np.random.default_rng(42)


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def run_both(
    op: str, inputs: list[np.ndarray | None], attrs: dict[str, Any] | None = None, n_out: int = 1
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run one op in ecograph's interpreter and in onnx.reference (opset 23).

    int64 inputs after the first (axes, shapes, indices) are constants, as exporters emit them.
    """
    attrs = attrs or {}
    g = Graph()
    names = []
    ins = []
    initializers = []
    for i, arr in enumerate(inputs):
        if arr is None:
            names.append("")
            ins.append(None)
            continue
        names.append(f"in{i}")
        if i > 0 and arr.dtype == np.int64:
            ins.append(g.add_constant(arr, f"in{i}"))
            initializers.append(onnx.numpy_helper.from_array(arr, f"in{i}"))
        else:
            ins.append(g.add_input(f"in{i}", DType.from_numpy(arr.dtype), arr.shape))
    node = g.add_node(op, ins, attrs, num_outputs=n_out, name="n")
    g.set_outputs(list(node.outputs))
    feeds = {v.name: inputs[int(v.name[2:])] for v in g.inputs}
    ours = interpret(g, feeds)
    onnx_attrs = {
        k: onnx.numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
        for k, v in attrs.items()
    }
    onnx_node = helper.make_node(op, names, [v.name for v in node.outputs], **onnx_attrs)
    model = helper.make_model(
        helper.make_graph(
            [onnx_node],
            "g",
            [
                helper.make_tensor_value_info(f"in{i}", DType.from_numpy(a.dtype).onnx, a.shape)
                for i, a in enumerate(inputs)
                if a is not None and f"in{i}" in feeds
            ],
            [helper.make_tensor_value_info(v.name, v.dtype.onnx, None) for v in node.outputs],
            initializer=initializers,
        ),
        opset_imports=[helper.make_opsetid("", 23)],
    )
    theirs = ReferenceEvaluator(model).run(None, feeds)
    return [ours[v.name] for v in node.outputs], list(theirs)


def assert_match(op, inputs, attrs=None, n_out=1, rtol=1e-5, atol=1e-6):
    ours, theirs = run_both(op, inputs, attrs, n_out)
    for a, b in zip(ours, theirs, strict=True):
        b = np.asarray(b)
        assert a.shape == b.shape, (op, a.shape, b.shape)
        assert a.dtype == b.dtype, (op, a.dtype, b.dtype)
        if a.dtype.kind in "fc":
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True, err_msg=op)
        else:
            np.testing.assert_array_equal(a, b, err_msg=op)


I64 = np.int64

CASES: list[tuple[str, list, dict]] = [
    ("Add", [f32(2, 3), f32(3)], {}),
    ("Sub", [f32(4, 1, 3), f32(2, 1)], {}),
    ("Mul", [f32(2, 3), f32(1)], {}),
    ("Div", [f32(2, 3), f32(2, 3)], {}),
    ("Div", [np.array([7, -7, 7, -7], np.int32), np.array([2, 2, -2, -2], np.int32)], {}),
    ("Mod", [np.array([7, -7, 7, -7], I64), np.array([3, 3, -3, -3], I64)], {}),
    ("Mod", [np.array([7, -7, 7, -7], I64), np.array([3, 3, -3, -3], I64)], {"fmod": 1}),
    ("Mod", [np.array([5.5, -5.5], np.float32), np.array([2.0, 2.0], np.float32)], {"fmod": 1}),
    ("Pow", [np.abs(f32(3)) + 0.1, f32(3)], {}),
    ("Max", [np.array([1, np.nan, 3], np.float32), np.array([2, 1, np.nan], np.float32)], {}),
    ("Min", [f32(2, 3), f32(3), f32(1, 3)], {}),
    ("Sum", [f32(2, 3), f32(3)], {}),
    ("Mean", [f32(2, 3), f32(2, 3)], {}),
    ("Round", [np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4], np.float32)], {}),
    ("Relu", [f32(5)], {}),
    ("Sigmoid", [np.array([-30, -1, 0, 1, 30], np.float32)], {}),
    ("Tanh", [f32(5)], {}),
    ("Erf", [f32(5)], {}),
    ("Gelu", [f32(7)], {}),
    ("Gelu", [f32(7)], {"approximate": "tanh"}),
    ("LeakyRelu", [f32(6)], {"alpha": 0.2}),
    ("Elu", [f32(6)], {}),
    ("HardSigmoid", [f32(6)], {}),
    ("HardSwish", [f32(6)], {}),
    ("Softplus", [f32(6)], {}),
    ("Clip", [f32(6), np.array(-0.5, np.float32), np.array(0.5, np.float32)], {}),
    ("Clip", [f32(6), None, np.array(0.5, np.float32)], {}),
    ("Equal", [np.array([1, 2, 3], I64), np.array([1, 0, 3], I64)], {}),
    ("Greater", [f32(2, 3), f32(3)], {}),
    ("And", [np.array([True, False]), np.array([True, True])], {}),
    ("Not", [np.array([True, False])], {}),
    ("Where", [np.array([True, False, True]), f32(3), f32(1)], {}),
    ("IsNaN", [np.array([1, np.nan], np.float32)], {}),
    ("MatMul", [f32(2, 1, 3, 4), f32(5, 4, 2)], {}),
    ("MatMul", [f32(4), f32(4, 3)], {}),
    ("Gemm", [f32(3, 4), f32(5, 4), f32(5)], {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    ("Gemm", [f32(4, 3), f32(4, 5)], {"transA": 1}),
    ("Conv", [f32(1, 2, 7, 7), f32(4, 2, 3, 3), f32(4)], {"pads": [1, 1, 1, 1]}),
    ("Conv", [f32(2, 4, 8, 6), f32(4, 1, 3, 3)], {"group": 4, "strides": [2, 1]}),
    ("Conv", [f32(1, 2, 9, 9), f32(3, 2, 3, 3)], {"dilations": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("Conv", [f32(1, 2, 10), f32(3, 2, 4)], {"strides": [3], "pads": [2, 1]}),
    ("MaxPool", [f32(1, 2, 7, 7)], {"kernel_shape": [3, 3], "strides": [2, 2]}),
    ("MaxPool", [f32(1, 1, 6, 6)], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("MaxPool", [f32(1, 1, 5, 5)], {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", [f32(1, 2, 6, 6)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    (
        "AveragePool",
        [f32(1, 2, 6, 6)],
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    ),
    ("GlobalAveragePool", [f32(2, 3, 4, 5)], {}),
    ("BatchNormalization", [f32(2, 3, 4), f32(3), f32(3), f32(3), np.abs(f32(3)) + 0.1], {}),
    ("LayerNormalization", [f32(2, 5, 8), f32(8), f32(8)], {}),
    ("LayerNormalization", [f32(2, 5, 8), f32(5, 8)], {"axis": -2}),
    ("RMSNormalization", [f32(2, 5, 8), f32(8)], {}),
    ("Softmax", [f32(2, 3, 5)], {"axis": 1}),
    ("LogSoftmax", [f32(2, 5)], {}),
    ("ReduceSum", [f32(2, 3, 4), np.array([1], I64)], {"keepdims": 0}),
    ("ReduceMean", [f32(2, 3, 4), np.array([-1, 0], I64)], {}),
    ("ReduceMax", [f32(2, 3, 4)], {}),
    ("ReduceMin", [f32(2, 3, 4), np.array([], I64)], {"noop_with_empty_axes": 1}),
    ("ReduceProd", [f32(2, 3), np.array([1], I64)], {}),
    ("ReduceL2", [f32(2, 3), np.array([1], I64)], {}),
    ("ReduceLogSumExp", [f32(2, 3), np.array([1], I64)], {}),
    ("ArgMax", [np.array([[1, 3, 3], [2, 2, 0]], np.float32)], {"axis": 1}),
    ("ArgMax", [np.array([[1, 3, 3], [2, 2, 0]], np.float32)], {"axis": 1, "select_last_index": 1}),
    ("ArgMin", [f32(3, 4)], {"axis": 0, "keepdims": 0}),
    ("Reshape", [f32(2, 3, 4), np.array([0, -1], I64)], {}),
    ("Reshape", [f32(2, 3, 4), np.array([4, 0, 2], I64)], {"allowzero": 0}),
    ("Flatten", [f32(2, 3, 4)], {"axis": 2}),
    ("Transpose", [f32(2, 3, 4)], {"perm": [2, 0, 1]}),
    ("Transpose", [f32(2, 3, 4)], {}),
    ("Squeeze", [f32(1, 3, 1), np.array([-1], I64)], {}),
    ("Unsqueeze", [f32(3, 4), np.array([0, -1], I64)], {}),
    ("Concat", [f32(2, 3), f32(2, 1)], {"axis": -1}),
    (
        "Slice",
        [
            f32(5, 6),
            np.array([4, 1], I64),
            np.array([0, 100], I64),
            np.array([0, 1], I64),
            np.array([-2, 2], I64),
        ],
        {},
    ),
    ("Slice", [f32(5, 6), np.array([-3], I64), np.array([-1], I64)], {}),
    ("Gather", [f32(5, 4), np.array([[0, -1], [2, 3]], I64)], {"axis": 0}),
    ("Gather", [f32(3, 5), np.array([4, -5], I64)], {"axis": 1}),
    ("GatherElements", [f32(3, 3), np.array([[0, 1], [2, 0], [-1, 1]], I64)], {"axis": 1}),
    ("Expand", [f32(3, 1), np.array([2, 1, 4], I64)], {}),
    ("Tile", [f32(2, 3), np.array([2, 1], I64)], {}),
    ("Cast", [np.array([1.7, -1.7, 300.0, 2.5], np.float32)], {"to": onnx.TensorProto.INT32}),
    ("Cast", [np.array([1, 0, 5], I64)], {"to": onnx.TensorProto.BOOL}),
    ("Cast", [f32(4)], {"to": onnx.TensorProto.FLOAT16}),
    ("Shape", [f32(2, 3, 4)], {"start": 1}),
    ("Size", [f32(2, 3, 4)], {}),
    ("ConstantOfShape", [np.array([2, 3], I64)], {"value": np.array([7], np.int32)}),
    ("Range", [np.array(1, I64), np.array(10, I64), np.array(3, I64)], {}),
    ("Trilu", [f32(4, 4), np.array(1, I64)], {"upper": 0}),
    ("Pad", [f32(2, 3), np.array([0, 1, 1, 2], I64), np.array(1.5, np.float32)], {}),
    ("Pad", [f32(3, 4), np.array([1, 2, 1, 1], I64)], {"mode": "reflect"}),
    ("Pad", [f32(3, 4), np.array([1, 2, 1, 1], I64)], {"mode": "edge"}),
    ("CumSum", [f32(2, 4), np.array(1, I64)], {"exclusive": 1, "reverse": 1}),
    ("TopK", [np.array([[3, 1, 3, 2]], np.float32), np.array([3], I64)], {}),
    ("TopK", [np.array([[3, 1, 3, 2]], np.float32), np.array([2], I64)], {"largest": 0}),
    ("Split", [f32(6, 2), np.array([1, 5], I64)], {"axis": 0}),
    ("Identity", [f32(2)], {}),
    ("Dropout", [f32(2)], {}),
    (
        "QuantizeLinear",
        [
            np.array([-1.5, -0.5, 0.5, 1.5, 2.5, 300, -300], np.float32),
            np.array(1.0, np.float32),
            np.array(0, np.int8),
        ],
        {},
    ),
    (
        "QuantizeLinear",
        [f32(2, 3), np.array([0.1, 0.2, 0.3], np.float32), np.array([0, 10, 255], np.uint8)],
        {"axis": 1},
    ),
    (
        "DequantizeLinear",
        [
            np.array([[-8, 7], [3, 0]], np.int8),
            np.array([0.5, 2.0], np.float32),
            np.array([1, -1], np.int8),
        ],
        {"axis": 0},
    ),
    ("DynamicQuantizeLinear", [f32(3, 4)], {}),
]


def _n_out(op: str) -> int:
    return {"Split": 2, "TopK": 2, "DynamicQuantizeLinear": 3}.get(op, 1)


@pytest.mark.parametrize(("op", "inputs", "attrs"), CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_onnx_reference(op, inputs, attrs):
    assert_match(op, inputs, attrs, n_out=_n_out(op))


def test_interpreter_checks_input_names_dtypes_and_symbols():
    b = GraphBuilder()
    x = b.input("x", "float32", ["n", 3])
    y = b.input("y", "float32", ["n", 3])
    b.output(b.op("Add", x, y))
    g = b.graph
    ok = interpret(g, {"x": np.ones((2, 3), np.float32), "y": np.ones((2, 3), np.float32)})
    assert next(iter(ok.values())).tolist() == [[2.0] * 3] * 2
    with pytest.raises(InterpreterError, match="missing input 'y'"):
        interpret(g, {"x": np.ones((2, 3), np.float32)})
    with pytest.raises(InterpreterError, match="unknown inputs"):
        interpret(g, {"x": np.ones((2, 3), np.float32), "y": np.ones((2, 3), np.float32), "z": 1})
    with pytest.raises(InterpreterError, match="dtype float64"):
        interpret(g, {"x": np.ones((2, 3)), "y": np.ones((2, 3), np.float32)})
    with pytest.raises(InterpreterError, match="symbol 'n' is 4 here but 2"):
        interpret(g, {"x": np.ones((2, 3), np.float32), "y": np.ones((4, 3), np.float32)})


def test_interpreter_catches_a_kernel_that_disagrees_with_inference():
    from ecograph.ir import register_op
    from ecograph.ir.registry import unregister_op

    @register_op("Liar", domain="test", inputs=["X"], outputs=["Y"], infer=lambda c: [c.input(0)])
    def liar(x):
        return x.astype(np.float64)

    try:
        b = GraphBuilder()
        x = b.input("x", "float32", [2])
        b.output(b.op("Liar", x, domain="test", name="liar"))
        with pytest.raises(InterpreterError, match=r"node liar .* dtype float64.*disagree"):
            interpret(b.graph, {"x": np.ones(2, np.float32)})
    finally:
        unregister_op("Liar", "test")


def test_interpreter_names_the_failing_node():
    b = GraphBuilder()
    x = b.input("x", "float32", [3])
    idx = b.constant(np.array([5], np.int64), "idx")
    b.output(b.op("Gather", x, idx, name="bad_gather"))
    with pytest.raises(InterpreterError, match="node bad_gather \\(Gather\\) failed"):
        interpret(b.graph, {"x": np.ones(3, np.float32)})


def test_interpreter_returns_intermediates_and_calls_hook():
    b = GraphBuilder()
    x = b.input("x", "float32", [3])
    h = b.op("Neg", x, name="h")
    b.output(b.op("Abs", h, name="y"))
    seen = []
    out = interpret(
        b.graph,
        {"x": np.array([1, -2, 3], np.float32)},
        keep_all=True,
        on_node=lambda n, r: seen.append(n.name),
    )
    assert out["h"].tolist() == [-1, 2, -3] and out["y"].tolist() == [1, 2, 3]
    assert seen == ["h", "y"]
    picked = interpret(b.graph, {"x": np.ones(3, np.float32)}, outputs=["h"])
    assert list(picked) == ["h"]


def test_integer_division_truncates_and_nan_propagates():
    ours, _ = run_both("Div", [np.array([-7], np.int64), np.array([2], np.int64)])
    assert ours[0].tolist() == [-3]
    ours, _ = run_both("Max", [np.array([np.nan], np.float32), np.array([1], np.float32)])
    assert np.isnan(ours[0][0])


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    b = GraphBuilder()
    x = b.input("x", "float32", [2])
    b.output(b.op("Relu", x))
    out = interpret(b.graph, {"x": torch.tensor([-1.0, 2.0])})
    assert next(iter(out.values())).tolist() == [0.0, 2.0]


@pytest.mark.parametrize("dtype", [np.uint64, np.int64, np.int8])
def test_topk_largest_integers_at_the_dtype_extremes(dtype):
    """Keys must not overflow: -x wraps at the signed minimum and above int64 for uint64."""
    from ecograph.ir.ops.reduce import topk

    info = np.iinfo(dtype)
    x = np.array([[1, info.max, 7, info.min, info.max - 1]], dtype)
    values, idx = topk(x, np.array([3]), axis=1, largest=1, sorted=1)
    assert idx.tolist() == [[1, 4, 2]]
    assert values.tolist() == [[info.max, info.max - 1, 7]]
    values, idx = topk(x, np.array([2]), axis=1, largest=0, sorted=1)
    assert idx.tolist() == [[3, 0]] and values.tolist() == [[info.min, 1]]


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize(("shape", "axis"), [((0,), 0), ((2, 0), -1), ((0, 3), 0), ((0, 3), 1)])
def test_normalizing_ops_take_empty_tensors(op: str, shape: tuple[int, ...], axis: int) -> None:
    # Found by the compiled-graph fuzzer: np.max has no identity for an empty axis.
    b = GraphBuilder()
    x = b.input("x", "float32", list(shape))
    b.output(b.op(op, x, axis=axis))
    out = interpret(b.graph, {"x": np.zeros(shape, np.float32)})
    assert next(iter(out.values())).shape == shape


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumsum_takes_an_empty_axis(exclusive: int, reverse: int) -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [3, 0])
    b.output(b.op("CumSum", x, b.constant(np.int64(1)), exclusive=exclusive, reverse=reverse))
    out = interpret(b.graph, {"x": np.zeros((3, 0), np.float32)})
    assert next(iter(out.values())).shape == (3, 0)
