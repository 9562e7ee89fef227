"""Quantization as pipeline items: Quantize and lower-qdq-to-integer run under the
PassManager, with the verifier and the numeric check at the pass's stated tolerance."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ecograph.errors import EcographError, NumericDivergenceError
from ecograph.ir import interpret
from ecograph.models import build_default_model, example_inputs
from ecograph.passes import (
    CosineTolerance,
    Instrumentation,
    PassManager,
    PassRecord,
    compare_arrays,
    parse_pipeline,
    run_passes,
)
from ecograph.quant.integer import LowerQDQToInteger
from ecograph.quant.presets import QUANTIZE_PRESETS, quantize_pass
from ecograph.quant.quantize import Quantize


def test_quantize_in_a_pipeline_string_is_verified_and_checked_at_its_tolerance(tmp_path):
    g = build_default_model()
    result = run_passes(g, "default,quantize(mode=dynamic)", Instrumentation.all_on(tmp_path))
    last = result.records[-1]
    assert last.pass_name == "quantize" and last.changed
    assert last.result is not None and last.result.stats["quantized"] == 4
    assert "MatMulInteger" in [n.op_type for n in g.nodes]
    assert any(p.name.endswith("-quantize.after.txt") for p in tmp_path.iterdir())  # dumped
    assert Quantize().numeric_tolerance() == CosineTolerance(0.99)


def test_quantize_beyond_its_tolerance_is_a_numeric_divergence(tmp_path):
    g = build_default_model()
    # int8 keeps cosine ~0.9999 on this model: a budget of 0.9999999 cannot hold.
    with pytest.raises(NumericDivergenceError, match=r"cosine .* < min_cosine=0\.9999999") as info:
        run_passes(
            g,
            "default,quantize(mode=dynamic,min_cosine=0.9999999)",
            Instrumentation.all_on(tmp_path),
        )
    assert info.value.pass_name == "quantize"
    assert info.value.dump is not None


def test_static_quantization_and_lowering_as_one_pipeline():
    calib = [example_inputs(seed=s) for s in range(4)]
    feeds = example_inputs(seed=9)
    g = build_default_model()
    reference = next(iter(interpret(g, feeds).values()))
    items = ["default", quantize_pass("int8-static", calib), LowerQDQToInteger()]
    result = PassManager(items, Instrumentation(differential=True, sample_inputs=feeds)).run(g)
    assert [r.pass_name for r in result.records[-2:]] == ["quantize", "lower-qdq-to-integer"]
    assert all(isinstance(r, PassRecord) for r in result.records)
    ops = [n.op_type for n in g.nodes]
    assert ops.count("MatMulInteger") == 4 and "QuantizeLinear" in ops
    out = next(iter(interpret(g, feeds).values()))
    assert compare_arrays(reference, out, CosineTolerance(0.99)) is None


def test_presets_and_their_errors():
    assert quantize_pass("int8").mode == "dynamic"
    assert quantize_pass("int4").granularity == "group:128"
    assert set(QUANTIZE_PRESETS) >= {"int8", "int8-static", "int8-weight", "int4"}
    p = Quantize(mode="weight_only")
    assert quantize_pass(p) is p
    assert quantize_pass({"mode": "weight_only", "dtype": "int4"}).dtype == "int4"
    with pytest.raises(EcographError, match="quantize='int3'"):
        quantize_pass("int3")
    with pytest.raises(EcographError, match="needs calibration_data"):
        quantize_pass("int8-static")
    static = quantize_pass("int8-static", iter([example_inputs()]))
    assert len(static.calibration_data) == 1
    assert "calibration_data" not in static.describe()  # data stays out of messages


def test_cosine_tolerance_compares_direction_and_nans():
    x = np.linspace(-1, 1, 50, dtype=np.float32)
    assert compare_arrays(x, x * 1.5, CosineTolerance(0.999)) is None
    assert "cosine" in (compare_arrays(x, -x, CosineTolerance(0.0)) or "")
    y = x.copy()
    y[3] = np.nan
    assert "NaN" in (compare_arrays(x, y, CosineTolerance(0.0)) or "")
    ints = np.arange(4, dtype=np.int64)
    assert compare_arrays(ints, ints + 1, CosineTolerance(0.0)) == "not bit-identical"
    with pytest.raises(EcographError, match="min_cosine=2"):
        CosineTolerance(2)


def test_quantize_is_registered_without_importing_ecograph_quant():
    code = (
        "import sys; from ecograph.passes import parse_pipeline; "
        "assert 'ecograph.quant.quantize' not in sys.modules; "
        "print([p.name for p in parse_pipeline('quantize,lower-qdq-to-integer')])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "['quantize', 'lower-qdq-to-integer']" in proc.stdout
    assert [p.name for p in parse_pipeline("quantize(mode=weight_only,dtype=int4)")] == ["quantize"]
