"""fuse-weight-dequantize: structure after the rewrite, must-not-fire cases, idempotence and
numerics (check_rewrite runs the differential check against the reference interpreter), the
DequantizeMatMul and PaletteMatMul ops themselves, and their ONNX export back to standard
ops."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ecograph.ir import Graph, GraphBuilder, Value, interpret
from ecograph.ir.interpreter import run_node
from ecograph.passes import FuseWeightDequantize
from ecograph.passes.testing import check_no_change, check_rewrite

RNG = np.random.default_rng(0)
_RANGES = {"int4": (-8, 7), "uint4": (0, 15), "int8": (-128, 127), "uint8": (0, 255)}
_NP = {"int4": ml_dtypes.int4, "uint4": ml_dtypes.uint4, "int8": np.int8, "uint8": np.uint8}


def ops(graph: Graph) -> list[str]:
    return [n.qualified_op for n in graph.nodes]


def qweight(
    b: GraphBuilder,
    shape: tuple[int, int],
    wdt: str = "int8",
    axis: int = 1,
    block: int = 0,
    zero_point: bool = True,
) -> Value:
    """DequantizeLinear of constant `wdt` weights of `shape`, per axis or in blocks."""
    lo, hi = _RANGES[wdt]
    s_shape: list[int] = list(shape)
    if block:
        s_shape[axis] = -(-s_shape[axis] // block)
    else:
        s_shape = [shape[axis]]
    params = [
        b.constant(RNG.integers(lo, hi + 1, shape).astype(_NP[wdt]), "w_q"),
        b.constant(RNG.uniform(0.01, 0.1, s_shape).astype(np.float32), "s"),
    ]
    if zero_point:
        params.append(b.constant(RNG.integers(lo, hi + 1, s_shape).astype(_NP[wdt]), "zp"))
    attrs = {"axis": axis, "block_size": block} if block else {"axis": axis}
    return b.op("DequantizeLinear", *params, name="dq", **attrs)


def feeds(graph: Graph) -> dict[str, np.ndarray]:
    return {
        v.name: RNG.standard_normal(v.type.static_shape()).astype(np.float32) for v in graph.inputs
    }


# ------------------------------------------------------------------ before / after


BEFORE = """graph g opset {"": 23, "ecograph": 1} {
  input %x: float32[2, 4]
  const %w_q: int8[4, 3] = [-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5]
  const %s: float32[3] = [0.5, 0.25, 0.125]
  const %zp: int8[3] = [1, -1, 0]
  %dq: float32[4, 3] = DequantizeLinear(%w_q, %s, %zp) {axis = 1} @dq
  %y: float32[2, 3] = MatMul(%x, %dq) @y
  output %y
}"""

EXPECTED = """graph g opset {"": 23, "ecograph": 1} {
  input %x: float32[2, 4]
  const %w_q: int8[4, 3] = [-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5]
  const %s: float32[3] = [0.5, 0.25, 0.125]
  const %zp: int8[3] = [1, -1, 0]
  %y: float32[2, 3] = ecograph::DequantizeMatMul(%x, %w_q, %s, %zp) {axis = 1, block_size = 0, trans_b = 0} @y_dq
  output %y
}"""  # noqa: E501


def test_matmul_expected_text() -> None:
    check_rewrite(FuseWeightDequantize(), BEFORE, EXPECTED)


@pytest.mark.parametrize(
    "wdt,axis,block,zero_point",
    [("int8", 1, 0, True), ("uint8", 0, 0, True), ("int4", 0, 16, True), ("uint4", 1, 8, False),
     ("int4", 0, 32, False)],
)  # fmt: skip
def test_matmul_weight_types_and_granularities(wdt: str, axis: int, block: int, zero_point: bool):
    b = GraphBuilder()
    x = b.input("x", "float32", [3, 32])
    b.output(b.op("MatMul", x, qweight(b, (32, 8), wdt, axis, block, zero_point), name="y"))
    out = check_rewrite(FuseWeightDequantize(), b.graph, feeds=feeds(b.graph))
    assert ops(out) == ["ecograph::DequantizeMatMul"]
    (node,) = out.nodes
    assert (node.attr("axis"), node.attr("block_size"), node.attr("trans_b")) == (axis, block, 0)
    assert out.outputs[0].name == "y"


def test_batched_activations() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 5, 16])
    b.output(b.op("MatMul", x, qweight(b, (16, 4)), name="y"))
    out = check_rewrite(FuseWeightDequantize(), b.graph, feeds=feeds(b.graph))
    assert ops(out) == ["ecograph::DequantizeMatMul"]
    assert out.outputs[0].shape == (2, 5, 4)


def test_gemm_keeps_transposes_alpha_beta_and_c() -> None:
    b = GraphBuilder()
    a = b.input("a", "float32", [16, 3])  # transA: A is [K, M]
    c = b.input("c", "float32", [8])
    w = qweight(b, (8, 16), "int4", axis=1, block=8)  # transB: W is [N, K]
    b.output(b.op("Gemm", a, w, c, transA=1, transB=1, alpha=0.5, beta=2.0, name="y"))
    out = check_rewrite(FuseWeightDequantize(), b.graph, feeds=feeds(b.graph))
    assert ops(out) == ["Transpose", "ecograph::DequantizeMatMul", "Mul", "Mul", "Add"]
    fused = out.nodes[1]
    assert fused.attr("trans_b") == 1
    assert out.outputs[0].name == "y" and out.outputs[0].shape == (3, 8)


def test_gemm_without_extras_is_one_op() -> None:
    b = GraphBuilder()
    a = b.input("a", "float32", [3, 16])
    b.output(b.op("Gemm", a, qweight(b, (16, 8)), name="y"))
    out = check_rewrite(FuseWeightDequantize(), b.graph, feeds=feeds(b.graph))
    assert ops(out) == ["ecograph::DequantizeMatMul"]


def test_linear_bias_becomes_an_add() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3, 16])
    bias = b.constant(RNG.standard_normal(8).astype(np.float32), "bias")
    b.output(b.op("Linear", x, qweight(b, (16, 8), "uint4", 0, 8), bias, domain="ecograph"))
    out = check_rewrite(FuseWeightDequantize(), b.graph, feeds=feeds(b.graph))
    assert ops(out) == ["ecograph::DequantizeMatMul", "Add"]


def test_one_dequantize_feeding_two_matmuls_fuses_into_both() -> None:
    b = GraphBuilder()
    x1, x2 = b.input("x1", "float32", [2, 16]), b.input("x2", "float32", [4, 16])
    w = qweight(b, (16, 8))
    b.output(b.op("MatMul", x1, w, name="y1"))
    b.output(b.op("MatMul", x2, w, name="y2"))
    out = check_rewrite(FuseWeightDequantize(), b.graph, feeds=feeds(b.graph))
    assert ops(out) == ["ecograph::DequantizeMatMul"] * 2
    assert out.nodes[0].input(1) is out.nodes[1].input(1)  # one copy of the weights


# ------------------------------------------------------------------ must not fire


def test_activation_side_dequantize_is_left_alone() -> None:
    b = GraphBuilder()
    xq = b.input("xq", "int8", [2, 16])
    x = b.op("DequantizeLinear", xq, b.constant(np.array(0.1, np.float32)))
    b.output(b.op("MatMul", x, b.constant(RNG.standard_normal((16, 4)).astype(np.float32))))
    graph = check_no_change(FuseWeightDequantize(), b.graph)
    assert "DequantizeLinear" in ops(graph)


def test_non_constant_weights_are_left_alone() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 16])
    wq = b.input("wq", "int8", [16, 4])
    w = b.op("DequantizeLinear", wq, b.constant(np.array([0.1] * 4, np.float32)), axis=1)
    b.output(b.op("MatMul", x, w))
    check_no_change(FuseWeightDequantize(), b.graph)


def test_a_dequantize_with_another_use_is_left_alone() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 16])
    w = qweight(b, (16, 4))
    b.output(b.op("MatMul", x, w))
    b.output(b.op("Relu", w))
    check_no_change(FuseWeightDequantize(), b.graph)


def test_float_weights_that_are_a_graph_output_are_left_alone() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 16])
    w = qweight(b, (16, 4))
    b.output(b.op("MatMul", x, w))
    b.output(w)
    check_no_change(FuseWeightDequantize(), b.graph)


def test_weight_of_the_wrong_side_or_dtype_is_left_alone() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [4, 2])
    b.output(b.op("MatMul", qweight(b, (16, 4)), x))  # the dequantized matrix is A, not B
    check_no_change(FuseWeightDequantize(), b.graph)
    b = GraphBuilder()
    x = b.input("x", "float16", [2, 16])
    w = b.op("DequantizeLinear", b.constant(np.ones((16, 4), np.int8)),
             b.constant(np.array(0.1, np.float16)))  # fmt: skip
    b.output(b.op("MatMul", x, w))
    check_no_change(FuseWeightDequantize(), b.graph)


# ------------------------------------------------------------------ the op and its export


@pytest.mark.parametrize("decoder", ["dequantize", "palette"])
def test_fused_kernel_is_the_decoder_then_matmul(decoder: str) -> None:
    """DequantizeMatMul / PaletteMatMul's reference kernel is bit-identical to the two ops."""
    b = GraphBuilder()
    x = b.input("x", "float32", [3, 32])
    if decoder == "dequantize":
        w = qweight(b, (8, 32), "int4", axis=1, block=16)  # [N, K]
    else:
        w = palette_weight(b, (8, 32), axis=0, group=3)
    b.output(b.op("Gemm", x, w, transB=1, name="y"))
    graph = b.graph
    data = feeds(graph)
    want = interpret(graph, data)["y"]
    check_rewrite(FuseWeightDequantize(), graph, feeds=data)
    (node,) = graph.nodes
    got = run_node(node, [data["x"], *(v.const_value for v in node.inputs[1:])])[0]  # type: ignore[union-attr]
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("trans_b,rank", [(0, 2), (1, 2), (1, 3)])
def test_onnx_export_expands_to_standard_ops(trans_b: int, rank: int) -> None:
    from ecograph.frontend.onnx import from_onnx
    from ecograph.frontend.onnx_export import to_onnx

    b = GraphBuilder()
    shape = [2, 3, 16] if rank == 3 else [3, 16]
    x = b.input("x", "float32", shape)
    w = qweight(b, (8, 16) if trans_b else (16, 8), "int4", axis=1, block=8)
    if trans_b and rank == 2:
        b.output(b.op("Gemm", x, w, transB=1, name="y"))
    elif trans_b:
        b.output(b.op("MatMul", x, b.op("Transpose", w, perm=[1, 0]), name="y"))
    else:
        b.output(b.op("MatMul", x, w, name="y"))
    graph = b.graph
    data = feeds(graph)
    want = interpret(graph, data)["y"]
    if trans_b and rank == 3:  # the Transpose sits between: build the fused op directly
        graph = Graph("g")
        x = graph.add_input("x", "float32", shape)
        assert w.producer is not None
        qparams = [graph.add_constant(v.const_value, v.name) for v in w.producer.inputs if v]
        attrs = {"axis": 1, "block_size": 8, "trans_b": 1}
        node = graph.add_node("DequantizeMatMul", [x, *qparams], attrs, domain="ecograph")
        graph.set_outputs(list(node.outputs))
        graph.rename_value(node.outputs[0], "y")
    else:
        check_rewrite(FuseWeightDequantize(), graph, feeds=data)
    assert "ecograph::DequantizeMatMul" in ops(graph)
    model = to_onnx(graph)
    assert {n.domain for n in model.graph.node} == {""}
    assert "DequantizeLinear" in [n.op_type for n in model.graph.node]
    back = from_onnx(model)
    np.testing.assert_array_equal(interpret(back, data)["y"], want)


# ------------------------------------------------------------------ palettized weights


def palette_weight(
    b: GraphBuilder, shape: tuple[int, int], *, axis: int = 1, group: int = 4, bits: int = 4
) -> Value:
    """PaletteDequantize of constant codes of `shape`, a palette per `group` channels."""
    entries = 1 << bits
    groups = 1 if group == 0 else -(-shape[axis] // group)
    codes = RNG.integers(0, entries, shape).astype(ml_dtypes.uint4 if bits == 4 else np.uint8)
    palette = RNG.standard_normal((groups, entries)).astype(np.float32)
    return b.op("PaletteDequantize", b.constant(codes, "codes"), b.constant(palette, "palette"),
                domain="ecograph", axis=axis, group_size=group, name="lookup")  # fmt: skip


@pytest.mark.parametrize("op", ["MatMul", "Gemm-transB", "Linear"])
def test_palette_lookup_is_fused_into_its_matmul(op: str) -> None:
    """MatMul / Gemm(transB) / Linear reading palettized weights become PaletteMatMul (plus
    Linear's bias); numerics checked against the original by check_rewrite."""
    b = GraphBuilder()
    x = b.input("x", "float32", [3, 16])
    if op == "Gemm-transB":
        b.output(b.op("Gemm", x, palette_weight(b, (8, 16), axis=0), transB=1, name="y"))
    elif op == "Linear":
        bias = b.constant(RNG.standard_normal(8).astype(np.float32), "bias")
        b.output(b.op("Linear", x, palette_weight(b, (16, 8)), bias, domain="ecograph", name="y"))
    else:
        b.output(b.op("MatMul", x, palette_weight(b, (16, 8), bits=8, group=0), name="y"))
    out = check_rewrite(FuseWeightDequantize(), b.graph, feeds=feeds(b.graph))
    want = ["ecograph::PaletteMatMul"] + (["Add"] if op == "Linear" else [])
    assert ops(out) == want
    fused = out.nodes[0]
    assert fused.attr("trans_b") == (1 if op == "Gemm-transB" else 0)
    assert fused.attr("group_size") == (0 if op == "MatMul" else 4)


def test_a_palette_lookup_read_by_a_gather_is_left_alone() -> None:
    """An embedding table's lookup feeds a Gather, not a matmul: the float rows must exist."""
    b = GraphBuilder()
    ids = b.input("ids", "int64", [2, 3])
    table = palette_weight(b, (10, 16), axis=1, group=4)
    b.output(b.op("Gather", table, ids, axis=0))
    check_no_change(FuseWeightDequantize(), b.graph)


@pytest.mark.parametrize("trans_b,rank", [(0, 2), (1, 2), (0, 3)])
def test_palette_matmul_exports_to_standard_ops_onnx_runtime_runs(trans_b: int, rank: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    from ecograph.frontend.onnx_export import to_onnx

    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3, 16] if rank == 3 else [3, 16])
    if trans_b:
        b.output(b.op("Gemm", x, palette_weight(b, (8, 16), axis=0), transB=1, name="y"))
    else:
        b.output(b.op("MatMul", x, palette_weight(b, (16, 8), bits=8), name="y"))
    graph = b.graph
    data = feeds(graph)
    want = interpret(graph, data)["y"]
    check_rewrite(FuseWeightDequantize(), graph, feeds=data)
    assert "ecograph::PaletteMatMul" in ops(graph)
    model = to_onnx(graph)
    assert {n.domain for n in model.graph.node} == {""}
    assert "Gather" in [n.op_type for n in model.graph.node]
    (got,) = ort.InferenceSession(model.SerializeToString()).run(None, data)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
