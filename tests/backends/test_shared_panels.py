"""A constant weight is packed alike for one row (a decode step) and for several (a prefill),
so a compiled LM's decode and prefill functions share one packed copy of each product weight
(`build.share_params` keys arrays by content); a product whose one-row tile cannot span whole
panels of the several-row width keeps a packing of its own."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.ir import GraphBuilder, interpret

pytest.importorskip("tvm")

import tvm
from tvm import relax

from ecograph.backends.tvm import build, targets
from ecograph.backends.tvm.driver import lower_graph
from ecograph.quant.presets import quantize_pass

PRESETS = ["fp32", "int8-weight", "int4", "palette4"]
K = 64


def _product(rows: int, weight: np.ndarray, preset: str):
    b = GraphBuilder("product")
    x = b.input("x", "float32", [rows, K])
    b.output(b.op("MatMul", x, b.constant(weight, "w")))
    graph = b.graph
    if preset != "fp32":
        quantize_pass(preset).run(graph)
    return graph


def _packed(rows: int, weight: np.ndarray, preset: str, target: str) -> list[np.ndarray]:
    lowered = lower_graph(_product(rows, weight, preset), targets.resolve(target), keep_params=True)
    return [lowered.params[name] for name in sorted(lowered.params)]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(
    ("target", "n"),
    [("x86:haswell", 96), ("x86:haswell", 960), ("x86:skylake-avx512", 960), ("arm", 96)],
)
def test_one_row_and_several_rows_pack_a_weight_alike(preset, target, n):
    weight = np.random.default_rng(0).standard_normal((K, n)).astype(np.float32)
    one, several = _packed(1, weight, preset, target), _packed(8, weight, preset, target)
    assert len(one) == len(several) >= 1
    for a, b in zip(one, several, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize(("n", "one_row", "rows"), [(688, 32, 16), (2000, 32, 16)])
def test_a_weight_one_row_tiles_cannot_span_packs_at_the_one_row_width(n, one_row, rows):
    """AVX2, float32: 688 = 43 panels of 16 (2 vectors), an odd number, so a one-row tile
    of 4 vectors cannot take whole panels; the one-row product packs 4-vector panels."""
    weight = np.random.default_rng(0).standard_normal((K, n)).astype(np.float32)
    (one,) = _packed(1, weight, "fp32", "x86:haswell")
    (several,) = _packed(8, weight, "fp32", "x86:haswell")
    assert (one.shape[-1], several.shape[-1]) == (one_row, rows)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n", [96, 960, 688])
def test_one_row_products_compute_what_the_interpreter_does(preset, n):
    weight = (np.random.default_rng(1).standard_normal((K, n)) * 0.1).astype(np.float32)
    graph = _product(1, weight, preset)
    x = np.random.default_rng(2).standard_normal((1, K)).astype(np.float32)
    fn = relax.VirtualMachine(build.build_module(graph, "x86:haswell").executable, tvm.cpu())
    got = fn["main"](tvm.runtime.tensor(x)).numpy()
    want = interpret(graph, {"x": x})[graph.outputs[0].name]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
