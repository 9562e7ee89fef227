"""QDQ MatMul/Conv lower to integer kernels, exactly up to the float rescale."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ecograph.ir import GraphBuilder, interpret, verify
from ecograph.quant.integer import LowerQDQToInteger
from ecograph.quant.quantize import Quantize

rng = np.random.default_rng(11)


def conv_mlp():
    b = GraphBuilder("convnet")
    x = b.input("x", "float32", ["n", 3, 8, 8])
    w = b.constant((rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(np.float32), "cw")
    cb = b.constant(rng.standard_normal(6).astype(np.float32), "cb")
    h = b.op("Relu", b.op("Conv", x, w, cb, pads=[1, 1, 1, 1], name="conv"))
    flat = b.op("Flatten", b.op("GlobalAveragePool", h))
    fw = b.constant((rng.standard_normal((6, 5)) * 0.3).astype(np.float32), "fw")
    b.output(b.op("MatMul", flat, fw, name="fc"))
    return b.graph


def test_static_qdq_lowers_to_integer_kernels_and_matches():
    g = conv_mlp()
    calib = [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    Quantize(mode="static", calibration_data=calib).run(g)
    feeds = {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}
    qdq = next(iter(interpret(g, feeds).values()))
    res = LowerQDQToInteger().run(g)
    assert res.stats["lowered"] == 2, res.notes
    verify(g)
    ops = [n.op_type for n in g.nodes]
    assert "ConvInteger" in ops and "MatMulInteger" in ops
    assert "Conv" not in ops and "MatMul" not in ops
    # No dequantized weight is left: the integer kernels read int8 weights directly.
    assert all(
        n.inputs[0].dtype.value in ("int8", "uint8") for n in g.find_nodes("DequantizeLinear")
    ) or not g.find_nodes("DequantizeLinear")
    out = next(iter(interpret(g, feeds).values()))
    np.testing.assert_allclose(out, qdq, rtol=1e-5, atol=1e-5)
    assert not LowerQDQToInteger().run(g).changed


def test_per_channel_along_the_wrong_axis_is_left_alone_with_a_note():
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 4])
    xq = b.op(
        "QuantizeLinear",
        x,
        b.constant(np.array(0.1, np.float32), "s"),
        b.constant(np.array(0, np.int8), "z"),
    )
    xd = b.op(
        "DequantizeLinear",
        xq,
        b.constant(np.array(0.1, np.float32), "s2"),
        b.constant(np.array(0, np.int8), "z2"),
    )
    wq = b.constant(rng.integers(-5, 5, (4, 3)).astype(np.int8), "wq")
    wd = b.op("DequantizeLinear", wq, b.constant(np.full(4, 0.5, np.float32), "ws"), axis=0)
    b.output(b.op("MatMul", xd, wd, name="mm"))
    res = LowerQDQToInteger().run(b.graph)
    assert not res.changed
    assert any("axis 0, not the output channels" in n for n in res.notes)


@pytest.mark.parametrize("symmetric", [True])
def test_tvm_lowering_uses_an_int8_matmul_with_int32_accumulation(symmetric):
    pytest.importorskip("tvm")
    from ecograph.backends.tvm import targets
    from ecograph.backends.tvm.driver import lower_graph

    b = GraphBuilder()
    x = b.input("x", "float32", [4, 16])
    w = b.constant(rng.standard_normal((16, 8)).astype(np.float32), "w")
    b.output(b.op("MatMul", x, w, name="mm"))
    g = b.graph
    calib = [{"x": rng.standard_normal((4, 16)).astype(np.float32)}]
    Quantize(
        mode="static", activation_dtype="int8", symmetric=symmetric, calibration_data=calib
    ).run(g)
    LowerQDQToInteger().run(g)
    lowered = lower_graph(g, targets.resolve("x86"))
    text = str(lowered.mod if hasattr(lowered, "mod") else lowered)
    # Either Relax's matmul with an int32 output or ecograph's packed TE kernel: int8 operands
    # (the packed weight) accumulated in int32, never a float product.
    relax_form = 'out_dtype="int32"' in text
    kernel_form = re.search(r'T\.Buffer\(\(.*?\), "int8"\)', text) and re.search(
        r'_tile = T\.sblock_alloc_buffer\(\(.*?\), "int32"\)', text
    )
    assert "int8" in text and (relax_form or kernel_form), text[:3000]
    assert "R.matmul(" not in text or relax_form, "the product must not run in float"
