"""schedules/fastmath.py's vector forms of `isnan` and `nearbyint`: TVM 0.27's VectorizeLoop
has none for either and leaves a loop calling them scalar; on AVX-512 LLVM then vectorized the
quantize kernels across the outer loop, with gathers. The rewrites must be exact on every
value (NaN payloads, infinities, zeros, subnormals, ties) and give vector code."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.backends.tvm import build
from ecograph.ir import GraphBuilder
from tests.backends.tvm_helpers import assert_matches, run_tvm

UNSIGNED = {"float16": np.uint16, "float32": np.uint32, "float64": np.uint64}


def special_values(dtype: str) -> np.ndarray:
    """Zeros, ones, ties, the extremes, subnormals, infinities, quiet and signalling NaNs of
    either sign and random bit patterns (one in 2^exponent bits of them NaN), as `dtype`."""
    ft, ut = np.dtype(dtype), UNSIGNED[dtype]
    info = np.finfo(ft)
    plain = np.array(
        [0.0, -0.0, 1.0, -1.0, 0.5, -2.5, info.max, -info.max, info.tiny, info.smallest_subnormal,
         np.inf, -np.inf, np.nan],
        ft,
    )  # fmt: skip
    bits = 8 * ft.itemsize
    mantissa = info.nmant
    exponent = ((1 << (bits - 1 - mantissa)) - 1) << mantissa
    sign = 1 << (bits - 1)
    nans = np.array(
        [exponent | 1, exponent | (1 << (mantissa - 1)), exponent | ((1 << mantissa) - 1)], ut
    )
    nans = np.concatenate([nans, nans | ut(sign)])
    rng = np.random.default_rng(0)
    noise = rng.integers(0, np.iinfo(ut).max, 4000, dtype=ut, endpoint=True)
    noise[:1000] |= ut(exponent)  # a quarter with the exponent all ones: NaN or infinity
    values = np.concatenate([plain, nans.view(ft), noise.view(ft)])
    return values[: len(values) // 16 * 16].reshape(1, -1, 16)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_isnan_is_exact_on_every_kind_of_value(dtype):
    x = special_values(dtype)
    assert np.isnan(x).sum() > 10 and np.isinf(x).sum() >= 2
    b = GraphBuilder("isnan")
    v = b.input("x", dtype, list(x.shape))
    b.output(b.op("IsNaN", v))
    feeds = {"x": x}
    got = run_tvm(b.graph, feeds, "x86")
    assert_matches(b.graph, feeds, got)
    np.testing.assert_array_equal(got[0], np.isnan(x))


@pytest.mark.parametrize("out", ["uint8", "int8"])
def test_quantize_rounds_ties_to_even_and_maps_nan_to_zero(out):
    scale = np.float32(0.25)
    ties = (np.arange(-296, 296, dtype=np.float32) + 0.5) * scale  # every value a tie
    x = np.concatenate([ties, np.array([np.nan, -np.nan, np.inf, -np.inf] * 4, np.float32)])
    x = x.reshape(1, -1, 16)
    b = GraphBuilder("quantize")
    v = b.input("x", "float32", list(x.shape))
    zp = b.constant(np.array(3, out), "zp")
    b.output(b.op("QuantizeLinear", v, b.constant(np.array(scale), "scale"), zp))
    feeds = {"x": x}
    got = run_tvm(b.graph, feeds, "x86")
    assert_matches(b.graph, feeds, got)  # the interpreter: half to even, NaN -> 0
    assert got[0].reshape(-1)[592] == 0  # NaN


@pytest.mark.parametrize("preset", ["x86:skylake-avx512", "x86:znver4", "x86:haswell"])
def test_quantize_kernel_is_vector_code(preset):
    """The quantization of ResNet-50's 256 x 56 x 56 activations took 0.72 ms as the scalar
    loop LLVM vectorized with gathers, 0.06 ms as vector code (two Zen 4 threads)."""
    b = GraphBuilder("quantize")
    v = b.input("x", "float32", [1, 64, 256])
    zp = b.constant(np.array(0, np.uint8), "zp")
    b.output(b.op("QuantizeLinear", v, b.constant(np.array(0.0142, np.float32), "scale"), zp))
    result = build.build_module(b.graph, preset, keep_params=False)
    ll = "".join(m.inspect_source("ll") for m in result.executable.mod.imports)
    lanes = 8 if preset.endswith("haswell") else 16
    assert "llvm.masked.gather" not in ll
    assert f"@llvm.nearbyint.v{lanes}f32" in ll
