"""ONNX Runtime's MatMulNBits in the reference interpreter matches ONNX Runtime itself."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ecograph.ir import GraphBuilder, interpret, verify

rng = np.random.default_rng(7)


def ort_matmul_nbits(a, b, scales, zp, attrs):
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "scales")]
    names = ["A", "B", "scales"]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "zp"))
        names.append("zp")
    node = helper.make_node("MatMulNBits", names, ["Y"], domain="com.microsoft", **attrs)
    model = helper.make_model(
        helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, a.shape)],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
            initializer=inits,
        ),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
    )
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": a})[0]


@pytest.mark.parametrize("with_zp", [False, True])
@pytest.mark.parametrize(("k", "block"), [(64, 32), (80, 16), (128, 128)])
def test_matches_onnxruntime(k, block, with_zp):
    n, bits = 24, 4
    k_blocks = -(-k // block)
    a = rng.standard_normal((3, k)).astype(np.float32)
    b = rng.integers(0, 256, (n, k_blocks, block * bits // 8)).astype(np.uint8)
    scales = rng.uniform(0.01, 0.1, n * k_blocks).astype(np.float32)
    zp = rng.integers(0, 256, n * ((k_blocks + 1) // 2)).astype(np.uint8) if with_zp else None
    attrs = {"K": k, "N": n, "bits": bits, "block_size": block}
    gb = GraphBuilder()
    x = gb.input("A", "float32", ["m", k])
    consts = [gb.constant(b, "B"), gb.constant(scales, "scales")]
    if zp is not None:
        consts.append(gb.constant(zp, "zp"))
    gb.output(gb.op("MatMulNBits", x, *consts, domain="com.microsoft", name="y", **attrs))
    verify(gb.graph)
    ours = interpret(gb.graph, {"A": a})["y"]
    theirs = ort_matmul_nbits(a, b, scales, zp, attrs)
    assert ours.shape == (3, n)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_ort_int4_model_imports_through_from_onnx():
    """A model as ONNX Runtime's int4 tools write it (com.microsoft::MatMulNBits) imports and
    runs in the interpreter with ONNX Runtime's numbers."""
    import ecograph

    k, n, block = 64, 16, 32
    a = rng.standard_normal((2, k)).astype(np.float32)
    b = rng.integers(0, 256, (n, k // block, block // 2)).astype(np.uint8)
    scales = rng.uniform(0.01, 0.1, n * (k // block)).astype(np.float32)
    attrs = {"K": k, "N": n, "bits": 4, "block_size": block}
    node = helper.make_node(
        "MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", **attrs
    )
    model = helper.make_model(
        helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["m", k])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", n])],
            initializer=[
                numpy_helper.from_array(b, "B"),
                numpy_helper.from_array(scales, "scales"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
    )
    graph = ecograph.from_onnx(model)
    assert graph.nodes[0].qualified_op == "com.microsoft::MatMulNBits"
    ours = interpret(graph, {"A": a})["Y"]
    np.testing.assert_allclose(
        ours, ort_matmul_nbits(a, b, scales, None, attrs), rtol=1e-4, atol=1e-4
    )
