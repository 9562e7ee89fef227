"""Padding and concatenation fused after a product or a window (conv, matmul, pool, 8-bit
products): their elements that read no product (a border, another input's part) must be
written. The rules computed every epilogue block at the product's tiles, which keeps only
the elements that read a tile, so a conv followed by an asymmetric Pad (Hugging Face's
MobileNets pad each layer's input that way) left its border column uninitialized. Each case
is built through the CPU pipeline and compared with the reference interpreter; the pad's
value is 3.0, so a border left unwritten cannot pass by holding zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.backends.tvm import build, targets
from ecograph.ir import Graph, GraphBuilder, Value
from tests.backends.tvm_helpers import assert_matches, run_tvm

TARGETS = ["x86", "x86:haswell", "x86:generic"]
RNG = np.random.default_rng(0)


def _f32(*shape: int) -> np.ndarray:
    return RNG.uniform(-1, 1, shape).astype(np.float32)


def _pad(b: GraphBuilder, x: Value, pads: list[int], value: float = 3.0) -> Value:
    dtype = x.dtype.numpy
    return b.op("Pad", x, b.constant(np.array(pads, np.int64)), b.constant(np.array(value, dtype)))


def conv_pad(b: GraphBuilder, x: Value) -> Value:  # x [1, 3, 16, 16]
    y = b.op("Conv", x, b.constant(_f32(8, 3, 3, 3)), b.constant(_f32(8)), pads=[1] * 4)
    return _pad(b, b.op("Relu", y), [0, 0, 0, 0, 0, 0, 1, 1])  # TF "same" before a stride 2


def conv_pad_channels(b: GraphBuilder, x: Value) -> Value:
    y = b.op("Relu", b.op("Conv", x, b.constant(_f32(8, 3, 1, 1)), b.constant(_f32(8))))
    return _pad(b, y, [0, 0, 0, 0, 1, 3, 0, 0])


def depthwise_pad(b: GraphBuilder, x: Value) -> Value:
    y = b.op("Conv", x, b.constant(_f32(3, 1, 3, 3)), b.constant(_f32(3)), group=3, pads=[1] * 4)
    return _pad(b, b.op("Relu", y), [0, 0, 0, 0, 0, 0, 2, 1])


def maxpool_pad(b: GraphBuilder, x: Value) -> Value:
    y = b.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    return _pad(b, y, [0, 0, 0, 0, 0, 0, 1, 1])


def avgpool_pad(b: GraphBuilder, x: Value) -> Value:
    y = b.op("AveragePool", x, kernel_shape=[2, 2], strides=[2, 2])
    return _pad(b, b.op("Relu", y), [0, 0, 0, 0, 0, 1, 0, 3])


def matmul_pad(b: GraphBuilder, x: Value) -> Value:  # x [1, 3, 16, 16]
    rows = b.op("Reshape", x, b.constant(np.array([48, 16], np.int64)))
    return _pad(b, b.op("MatMul", rows, b.constant(_f32(16, 40))), [0, 0, 2, 5])


def batched_matmul_pad(b: GraphBuilder, x: Value) -> Value:
    y = b.op("MatMul", x, b.op("Transpose", x, perm=[0, 1, 3, 2]))
    return _pad(b, y, [0, 0, 0, 0, 0, 0, 0, 3])


def qlinear_matmul_pad(b: GraphBuilder, x: Value) -> Value:
    s, z = b.constant(np.array(0.02, np.float32)), b.constant(np.array(128, np.uint8))
    rows = b.op("Reshape", x, b.constant(np.array([48, 16], np.int64)))
    q = b.op("QuantizeLinear", rows, s, z)
    w = b.constant(RNG.integers(-100, 100, (16, 64)).astype(np.int8))
    ws, wz = b.constant(np.array(0.01, np.float32)), b.constant(np.array(0, np.int8))
    y = b.op("QLinearMatMul", q, s, z, w, ws, wz, s, z)
    return _pad(b, y, [0, 0, 0, 3], value=7)


def qlinear_conv_pad(b: GraphBuilder, x: Value) -> Value:
    s, z = b.constant(np.array(0.02, np.float32)), b.constant(np.array(128, np.uint8))
    q = b.op("QuantizeLinear", x, s, z)
    w = b.constant(RNG.integers(-100, 100, (16, 3, 3, 3)).astype(np.int8))
    ws, wz = b.constant(np.array(0.01, np.float32)), b.constant(np.array(0, np.int8))
    y = b.op("QLinearConv", q, s, z, w, ws, wz, s, z, pads=[1] * 4)
    return _pad(b, y, [0, 0, 0, 0, 0, 0, 1, 1], value=7)


CASES: dict[str, tuple[Callable[[GraphBuilder, Value], Value], str]] = {
    "conv-relu-pad": (conv_pad, "conv"),
    "conv-pad-channels": (conv_pad_channels, "conv"),
    "depthwise-pad": (depthwise_pad, "conv"),
    "maxpool-pad": (maxpool_pad, "pool"),
    "avgpool-pad": (avgpool_pad, "pool"),
    "matmul-pad": (matmul_pad, "matmul"),
    "batched-matmul-pad": (batched_matmul_pad, "matmul"),
    "qlinear-matmul-pad": (qlinear_matmul_pad, "int8-matmul"),
    "qlinear-conv-pad": (qlinear_conv_pad, ""),  # the pad fuses into the NCHW transpose
}


def case_graph(make: Callable[[GraphBuilder, Value], Value]) -> tuple[Graph, dict[str, Any]]:
    b = GraphBuilder("epilogue_case")
    x = b.input("x", "float32", [1, 3, 16, 16])
    b.output(make(b, x))
    return b.graph, {"x": _f32(1, 3, 16, 16)}


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("name", list(CASES))
def test_padding_after_a_product_writes_its_border(name: str, preset: str) -> None:
    make, rule = CASES[name]
    graph, feeds = case_graph(make)
    spec = targets.resolve(preset)
    result = build.build_module(graph, spec, keep_params=False)
    fused = {k: r for k, r in result.kernels.items() if "pad" in k and k != "pad"}
    if rule:  # the pad runs in the product's kernel, which its rule scheduled
        assert rule in fused.values(), result.kernels
    assert_matches(graph, feeds, run_tvm(graph, feeds, spec))


@pytest.mark.parametrize("name", list(CASES))
def test_cuda_leaves_padding_after_a_reduction_to_fallback(name: str) -> None:
    """On CUDA dlight's rules place the pad at the reduction's thread blocks as well (its
    Reduction rule left the pad after an average pool unwritten outside the pool's extent,
    read in the scheduled TIR); such kernels go to dlight's Fallback, which gives each block
    loops of its own. Built only (no GPU needed)."""
    make, _ = CASES[name]
    graph, _ = case_graph(make)
    result = build.build_module(graph, targets.resolve("cuda:sm_80"), keep_params=False)
    fused = {k: r for k, r in result.kernels.items() if "pad" in k and k != "pad"}
    assert all(r == "dlight:Fallback" for r in fused.values()), result.kernels


def test_border_guard_keeps_concatenation_fused_where_nothing_reduces() -> None:
    """Rotary embeddings concatenate inside an element-wise chain: no reduction there, so the
    CUDA guard leaves that kernel fused (one kernel, not five)."""
    b = GraphBuilder("rope_like")
    x = b.input("x", "float32", [2, 8, 16])
    half = b.op("Slice", x, *(b.constant(np.array([v], np.int64)) for v in (8, 16, -1)))
    y = b.op("Concat", b.op("Neg", half), x, axis=-1)
    b.output(b.op("Mul", y, b.constant(_f32(24))))
    result = build.build_module(b.graph, targets.resolve("cuda:sm_80"), keep_params=False)
    (kernel,) = result.kernels
    assert kernel.startswith("fused_") and "concatenate" in kernel, result.kernels
