"""QuantizeLinear/DequantizeLinear after TVM lowering match the reference interpreter (which
matches onnx.reference, see test_exactness.py) bit for bit: every finite float16 pattern,
ties, saturation, extreme zero points, per-channel axes; int8, uint8 and int4."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.ir import DType, interpret
from tests.backends.tvm_helpers import Const, one_op, run_tvm
from tests.quant.test_exactness import all_finite_fp16_as_fp32

RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int4": (-8, 7),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
}


def bitwise(graph, feeds) -> None:
    want = next(iter(interpret(graph, feeds).values()))
    (have,) = run_tvm(graph, feeds)
    if want.dtype.name == "int4":  # TVM carries 4-bit values in int8
        want = want.astype(np.int8)
        have = have.astype(np.int8)
    assert have.dtype == want.dtype and have.shape == want.shape
    assert have.tobytes() == want.tobytes(), np.flatnonzero(have != want)[:10]


@pytest.mark.parametrize("qtype", list(RANGES))
def test_quantize_all_fp16_patterns_ties_and_saturation(qtype):
    lo, hi = RANGES[qtype]
    x = np.concatenate(
        [
            all_finite_fp16_as_fp32(),
            np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1e9, -1e9], np.float32),
        ]
    )
    qdt = DType(qtype).numpy
    for scale in (1.0, 3.7e-3, 6.2e-5):
        for zp in (lo, hi, 0 if lo < 0 else lo):
            g, feeds = one_op(
                "QuantizeLinear", x, Const(np.array(scale, np.float32)), Const(np.array(zp, qdt))
            )
            bitwise(g, feeds)


@pytest.mark.parametrize("qtype", list(RANGES))
@pytest.mark.parametrize("axis", [0, -1])
def test_per_channel_quantize_and_dequantize(qtype, axis):
    lo, hi = RANGES[qtype]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 5)) * 4).astype(np.float32)
    n = x.shape[axis]
    qdt = DType(qtype).numpy
    scale = rng.uniform(0.01, 2.0, n).astype(np.float32)
    zp = rng.integers(lo, hi + 1, n).astype(qdt)
    g, feeds = one_op("QuantizeLinear", x, Const(scale), Const(zp), axis=axis)
    bitwise(g, feeds)
    codes = np.arange(lo, hi + 1).astype(qdt)
    codes = np.resize(codes, (6, 5)).astype(qdt)
    # int4 graph inputs are refused by the TVM runtime (4-bit values travel in int8 carriers)
    data = Const(codes) if qtype == "int4" else codes
    g, feeds = one_op("DequantizeLinear", data, Const(scale), Const(zp), axis=axis)
    bitwise(g, feeds)
