"""Importance scores against hand computations: magnitude (L1 / L2 over every weight slice of
a unit), Wanda's |W|·‖X‖ and block influence."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.ir import interpret
from ecograph.passes.sample import sample_inputs_for
from ecograph.prune import (
    PruningError,
    activation_norms,
    block_influence,
    groups,
    layer_groups,
    magnitude,
    score_groups,
    wanda,
)
from tests.prune import graphs


def test_magnitude_sums_every_weight_slice_of_a_unit() -> None:
    graph = graphs.mlp(hidden=6)
    (g,) = [g for g in groups(graph) if g.name == "ffn:w1:1"]
    w1 = np.asarray(graph.constants["w1"].const_value, np.float64)
    w2 = np.asarray(graph.constants["w2"].const_value, np.float64)
    l1 = np.abs(w1).sum(0) + np.abs(w2).sum(1)
    l2 = np.sqrt((w1**2).sum(0) + (w2**2).sum(1))
    np.testing.assert_allclose(magnitude(g, 1), l1)
    np.testing.assert_allclose(magnitude(g, 2), l2)
    np.testing.assert_allclose(score_groups(graph, [g], "l2")[0], l2)


def test_magnitude_of_gqa_heads_spans_query_heads_and_kv_head() -> None:
    graph = graphs.attention_block(d=16, hq=4, hkv=2, bias=False)
    (g,) = [g for g in groups(graph) if g.kind == "heads"]
    c = {
        k: np.asarray(graph.constants[k].const_value, np.float64)
        for k in ("w_q", "w_k", "w_v", "w_o")
    }
    expect = []
    for u in range(2):  # kv head u: query heads 2u, 2u+1 (8 q columns), 4 k / v columns
        q, kv = slice(8 * u, 8 * u + 8), slice(4 * u, 4 * u + 4)
        expect.append(
            (c["w_q"][:, q] ** 2).sum() + (c["w_k"][:, kv] ** 2).sum()
            + (c["w_v"][:, kv] ** 2).sum() + (c["w_o"][q, :] ** 2).sum()
        )  # fmt: skip
    np.testing.assert_allclose(magnitude(g, 2), np.sqrt(expect))


def test_wanda_weights_by_input_feature_norms() -> None:
    graph = graphs.mlp(hidden=6)
    (g,) = [g for g in groups(graph) if g.name == "ffn:w1:1"]
    calib = [sample_inputs_for(graph, {"batch": 4}, seed=s) for s in range(2)]
    x = np.concatenate([c["x"] for c in calib]).astype(np.float64)
    h = np.concatenate([interpret(graph, c, outputs=["act"])["act"] for c in calib])
    w1 = np.abs(np.asarray(graph.constants["w1"].const_value, np.float64))
    w2 = np.abs(np.asarray(graph.constants["w2"].const_value, np.float64))
    nx, nh = np.linalg.norm(x, axis=0), np.linalg.norm(h.astype(np.float64), axis=0)
    expected = (w1 * nx[:, None]).sum(0) + (w2 * nh[:, None]).sum(1)
    norms = activation_norms(graph, [m.node for m in g.weights if m.node], calib)
    np.testing.assert_allclose(wanda(g, norms), expected, rtol=1e-6)
    np.testing.assert_allclose(score_groups(graph, [g], "wanda", calib)[0], expected, rtol=1e-6)


def test_block_influence_ranks_a_near_identity_block_lowest() -> None:
    graph = graphs.residual_stack(blocks=3)
    w = np.asarray(graph.constants["w2_1"].const_value)
    graph.set_constant_value(graph.constants["w2_1"], (w * 1e-3).astype(np.float32))
    layers = layer_groups(graph)
    calib = [sample_inputs_for(graph, {"batch": 5}, seed=s) for s in range(2)]
    scores = block_influence(graph, layers, calib)
    assert scores.shape == (3,) and int(np.argmin(scores)) == 1
    assert 0 <= scores[1] < 1e-4 < scores[0]
    # by hand for block 2
    vals = [interpret(graph, c, outputs=["res1", "res2"]) for c in calib]
    xs = np.concatenate([v["res1"] for v in vals]).astype(np.float64)
    ys = np.concatenate([v["res2"] for v in vals]).astype(np.float64)
    cos = (xs * ys).sum(1) / np.linalg.norm(xs, axis=1) / np.linalg.norm(ys, axis=1)
    assert scores[2] == pytest.approx(float(np.mean(1 - cos)))


def test_scores_need_weights_and_calibration() -> None:
    graph = graphs.residual_stack()
    with pytest.raises(PruningError, match="calibration"):
        block_influence(graph, layer_groups(graph), [])
    with pytest.raises(PruningError, match="no weights"):
        magnitude(layer_groups(graph)[0])
