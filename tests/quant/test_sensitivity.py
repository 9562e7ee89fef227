"""Per-layer sensitivity and the accuracy budget keep the most sensitive layers in float."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.ir import GraphBuilder, graphs_equal, verify
from ecograph.passes import CosineTolerance, Instrumentation, PassManager
from ecograph.quant.quantize import Quantize
from ecograph.quant.sensitivity import (
    AccuracyBudgetError,
    QuantizeWithinBudget,
    layer_sensitivity,
    quantize_within_budget,
)

rng = np.random.default_rng(3)


def three_layers():
    """Layer 'fragile' has one huge weight, so per-tensor int4 wipes out the rest of it."""
    b = GraphBuilder()
    x = b.input("x", "float32", ["n", 32])
    h = x
    for name in ("a", "fragile", "c"):
        w = (rng.standard_normal((32, 32)) / 6).astype(np.float32)
        if name == "fragile":
            w[0, 0] = 40.0
        h = b.op("Tanh", b.op("MatMul", h, b.constant(w, f"w_{name}"), name=name))
    b.output(h)
    return b.graph


FEEDS = [{"x": rng.standard_normal((4, 32)).astype(np.float32)} for _ in range(3)]
TEMPLATE = Quantize(mode="weight_only", dtype="int4", granularity="tensor")


def test_sensitivity_ranks_the_fragile_layer_first():
    ranking = layer_sensitivity(three_layers(), TEMPLATE, FEEDS)
    assert ranking[0].node == "fragile"
    assert ranking[0].cosine < ranking[-1].cosine
    assert all(0 < r.cosine <= 1 for r in ranking)


def test_budget_keeps_just_enough_layers_in_float():
    g = three_layers()
    loose = quantize_within_budget(g, TEMPLATE, FEEDS, min_cosine=-1.0)
    assert loose.kept_float == [] and len(loose.steps) == 1
    all_quantized = loose.steps[0].cosine
    strict_cos = all_quantized + (1 - all_quantized) / 2
    strict = quantize_within_budget(g, TEMPLATE, FEEDS, min_cosine=strict_cos)
    assert strict.kept_float[0] == "fragile"
    assert strict.cosine >= strict_cos
    assert [len(s.kept_float) for s in strict.steps] == list(range(len(strict.steps)))
    verify(strict.graph)
    assert any(n.name == "fragile" and n.inputs[1].is_constant for n in strict.graph.nodes)
    assert "per-layer sensitivity" in strict.report()
    assert len(g.find_nodes("DequantizeLinear")) == 0  # the original is untouched


def test_impossible_budget_is_a_clear_error():
    with pytest.raises(AccuracyBudgetError, match="even with every layer in float"):
        quantize_within_budget(three_layers(), TEMPLATE, FEEDS, min_cosine=1.5)


def test_budget_search_runs_as_a_pipeline_item():
    g = three_layers()
    all_quantized = quantize_within_budget(g, TEMPLATE, FEEDS, min_cosine=-1.0).steps[0].cosine
    strict_cos = all_quantized + (1 - all_quantized) / 2
    expected = quantize_within_budget(g, TEMPLATE, FEEDS, min_cosine=strict_cos)
    search = QuantizeWithinBudget(TEMPLATE, FEEDS, strict_cos)
    inst = Instrumentation(differential=True, sample_inputs=FEEDS[0])
    result = PassManager([search], inst).run(g)  # verified and checked at the budget
    (record,) = result.records
    assert record.pass_name == "quantize-within-budget" and record.changed
    assert record.result is not None and record.result.stats["kept_float"] >= 1
    assert search.outcome is not None and search.outcome.kept_float == expected.kept_float
    assert graphs_equal(g, expected.graph)
    assert search.numeric_tolerance() == CosineTolerance(strict_cos)
    assert "feeds" not in search.describe()


def test_the_search_quantizes_each_weight_once(monkeypatch):
    """Every quantized copy the search makes (one per layer for the sensitivity, one per
    step) and the final pass take the weights the first copy quantized."""
    import ecograph.quant.quantize as quantize_module

    calls: list[tuple[int, ...]] = []
    real = quantize_module.quantize_tensor

    def counting(w, *args, **kwargs):
        calls.append(w.shape)
        return real(w, *args, **kwargs)

    monkeypatch.setattr(quantize_module, "quantize_tensor", counting)
    g = three_layers()
    reference = quantize_within_budget(three_layers(), TEMPLATE, FEEDS, min_cosine=-1.0)
    strict_cos = reference.steps[0].cosine + (1 - reference.steps[0].cosine) / 2
    calls.clear()
    p = QuantizeWithinBudget(template=TEMPLATE, feeds=FEEDS, min_cosine=strict_cos)
    p.run(g)
    assert p.outcome is not None and p.outcome.kept_float[0] == "fragile"
    assert len(p.outcome.steps) >= 2  # the sensitivity of all three layers was measured
    assert len(calls) == 3, calls  # three weights, each quantized once
    assert TEMPLATE.shared is None  # the caller's template is not changed
