"""QuantizeLinear/DequantizeLinear in the reference interpreter match onnx.reference bit for
bit: every finite float16 bit pattern (as float32), ties, saturation bounds, extreme zero
points, per-channel axes, blocked scales; int8, uint8, int4 and uint4."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ecograph.ir import DType, GraphBuilder, interpret

QTYPES = ["int8", "uint8", "int4", "uint4"]


def all_finite_fp16_as_fp32() -> np.ndarray:
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    vals = bits.view(np.float16)
    finite = vals[np.isfinite(vals)]
    assert finite.size == 63488
    return finite.astype(np.float32)


def run_pair(op, x, scale, zp, attrs):
    b = GraphBuilder()
    xin = b.input("x", DType.from_numpy(x.dtype), x.shape)
    s = b.constant(scale, "s")
    z = b.constant(zp, "z") if zp is not None else None
    y = b.op(op, xin, s, z, name="y", **attrs)
    b.output(y)
    ours = interpret(b.graph, {"x": x})["y"]
    inits = [numpy_helper.from_array(scale, "s")]
    names = ["x", "s"]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "z"))
        names.append("z")
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node(op, names, ["y"], **attrs)],
            "g",
            [helper.make_tensor_value_info("x", DType.from_numpy(x.dtype).onnx, x.shape)],
            [helper.make_tensor_value_info("y", y.dtype.onnx, None)],
            initializer=inits,
        ),
        opset_imports=[helper.make_opsetid("", 23)],
    )
    theirs = ReferenceEvaluator(model).run(None, {"x": x})[0]
    return ours, theirs


def assert_bitwise(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), np.flatnonzero(
        a.view(np.uint8).reshape(a.size, -1) != b.view(np.uint8).reshape(b.size, -1)
    )[:10]


@pytest.mark.parametrize("qtype", QTYPES)
# Scales keep x / scale inside int32: onnx.reference casts to int32 before clipping, which
# wraps beyond that (ONNX Runtime and the spec saturate); see test_saturation_beyond_int32.
@pytest.mark.parametrize("scale", [1.0, 0.1, 3.7e-3, 65504.0, 6.2e-5])
def test_quantize_all_fp16_patterns(qtype, scale):
    x = all_finite_fp16_as_fp32()
    qdt = DType(qtype).numpy
    lo, hi = {"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7), "uint4": (0, 15)}[qtype]
    for zp in {lo, hi, (lo + hi) // 2, 0 if lo < 0 else lo}:
        ours, theirs = run_pair(
            "QuantizeLinear", x, np.array(scale, np.float32), np.array(zp, qdt), {}
        )
        assert_bitwise(ours, theirs)


@pytest.mark.parametrize("qtype", QTYPES)
def test_ties_and_saturation(qtype):
    qdt = DType(qtype).numpy
    ties = np.array(
        [
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            3.5,
            -3.5,
            126.5,
            127.5,
            -128.5,
            1e9,
            -1e9,
            0.0,
            -0.0,
            7.5,
            -8.5,
            15.5,
            255.5,
            254.5,
        ],
        np.float32,
    )
    for zp in (0, 1, 3) if qtype.startswith("u") else (0, -1, 5):
        ours, theirs = run_pair(
            "QuantizeLinear", ties, np.array(1.0, np.float32), np.array(zp, qdt), {}
        )
        assert_bitwise(ours, theirs)
    # Round half to even, explicitly (independent of onnx.reference):
    ours, _ = run_pair("QuantizeLinear", ties[:6], np.array(1.0, np.float32), np.array(0, qdt), {})
    expected = np.clip(
        [0, 2, 2, 0, -2, -2],
        *{"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7), "uint4": (0, 15)}[qtype],
    )
    assert ours.astype(np.int64).tolist() == expected.tolist()


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_axes_quantize_and_dequantize(qtype, axis):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 4, 5)) * 4).astype(np.float32)
    n = x.shape[axis]
    qdt = DType(qtype).numpy
    lo, hi = {"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7), "uint4": (0, 15)}[qtype]
    scale = rng.uniform(0.01, 2.0, n).astype(np.float32)
    zp = rng.integers(lo, hi + 1, n).astype(qdt)
    q, q_ref = run_pair("QuantizeLinear", x, scale, zp, {"axis": axis})
    assert_bitwise(q, q_ref)
    d, d_ref = run_pair("DequantizeLinear", q, scale, zp, {"axis": axis})
    assert_bitwise(d, d_ref)


@pytest.mark.parametrize("qtype", QTYPES)
def test_blocked_quantize_and_dequantize(qtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 10)).astype(np.float32)
    qdt = DType(qtype).numpy
    scale = rng.uniform(0.05, 0.5, (4, 3)).astype(np.float32)  # blocks of 4 along axis 1
    zp = np.zeros((4, 3), qdt)
    attrs = {"axis": 1, "block_size": 4}
    q, q_ref = run_pair("QuantizeLinear", x, scale, zp, attrs)
    assert_bitwise(q, q_ref)
    d, d_ref = run_pair("DequantizeLinear", q, scale, zp, attrs)
    assert_bitwise(d, d_ref)


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_every_code_with_extreme_zero_points(qtype):
    lo, hi = {"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7), "uint4": (0, 15)}[qtype]
    qdt = DType(qtype).numpy
    codes = np.arange(lo, hi + 1).astype(qdt)
    for zp in (lo, hi):
        for scale in (1.0, 0.0078125, 1e-30):
            d, d_ref = run_pair(
                "DequantizeLinear", codes, np.array(scale, np.float32), np.array(zp, qdt), {}
            )
            assert_bitwise(d, d_ref)


def test_saturation_beyond_int32_matches_onnxruntime():
    """Where onnx.reference overflows int32, ONNX Runtime saturates as the spec says."""
    import onnxruntime as ort

    x = np.array([65504.0, -65504.0, 1e10, -1e10, 3.0], np.float32)
    for qtype in QTYPES:
        qdt = DType(qtype).numpy
        ours, _ = run_pair("QuantizeLinear", x, np.array(6e-8, np.float32), np.array(0, qdt), {})
        lo, hi = {"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7), "uint4": (0, 15)}[qtype]
        assert ours.astype(np.int64).tolist() == [hi, lo, hi, lo, hi]
        if qtype in ("int8", "uint8"):
            model = helper.make_model(
                helper.make_graph(
                    [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])],
                    "g",
                    [helper.make_tensor_value_info("x", 1, [5])],
                    [helper.make_tensor_value_info("y", DType(qtype).onnx, [5])],
                    initializer=[
                        numpy_helper.from_array(np.array(6e-8, np.float32), "s"),
                        numpy_helper.from_array(np.array(0, qdt), "z"),
                    ],
                ),
                opset_imports=[helper.make_opsetid("", 21)],
            )
            sess = ort.InferenceSession(model.SerializeToString())
            assert_bitwise(ours, sess.run(None, {"x": x})[0])


def test_default_output_type_is_uint8():
    x = np.array([-1.0, 0.4, 300.0], np.float32)
    ours, theirs = run_pair("QuantizeLinear", x, np.array(1.0, np.float32), None, {})
    assert ours.dtype == np.uint8
    assert_bitwise(ours, theirs)
