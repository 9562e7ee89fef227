"""The pruning passes: exact where the math is exact (ratio 0, zeroed units), physically
smaller graphs that verify, export to ONNX and run in ONNX Runtime like the interpreter."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ecograph.ir import Graph, interpret, to_text, verify
from ecograph.passes import Instrumentation, PassManager, get_pass, run_passes
from ecograph.passes.sample import sample_inputs_for
from ecograph.prune import (
    DropLayers,
    PruneChannels,
    PruneFFN,
    PruneHeads,
    PruningError,
    groups,
    layer_groups,
    shrink,
)
from tests.prune import graphs
from tests.prune.helpers import check_zero_units_exact

FEED_SIZES = {"batch": 3, "seq": 7}


def _feeds(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    return sample_inputs_for(graph, FEED_SIZES, seed=seed)


def _ort_outputs(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    from ecograph.frontend.onnx import to_onnx

    model = to_onnx(graph)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return {n: np.asarray(a) for n, a in zip(names, session.run(names, feeds), strict=True)}


ZERO_CASES: list[tuple[str, Callable[[], Graph], str, list[int]]] = [
    ("mlp", graphs.mlp, "ffn:w1:1", [0, 3, 4, 15]),
    ("swiglu", graphs.swiglu_block, "ffn:w_down:0", [0, 3, 11]),
    ("swiglu-fused", lambda: graphs.swiglu_block(fused=True), "ffn:w_down:0", [1, 2]),
    ("heads-3d", lambda: graphs.attention_block(), "heads:w_k:1", [0, 2]),
    ("heads-3d-gqa", lambda: graphs.attention_block(hkv=2), "heads:w_k:1", [1]),
    ("heads-4d-gqa", lambda: graphs.attention_block(form="4d", hkv=2), "heads:w_k:1", [0]),
    ("heads-merged", lambda: graphs.attention_block(merged=True), "heads:w_o:0", [1, 2]),
    (
        "heads-merged-4d",
        lambda: graphs.attention_block(merged=True, form="4d", hkv=2),
        "heads:w_o:0",
        [1],
    ),
    ("conv-bn-depthwise", graphs.conv_block, "channels:c1_w:0", [0, 5]),
    ("conv-to-gemm", graphs.conv_block, "channels:fc_w:0", [2]),
    ("stack", graphs.residual_stack, "ffn:w1_1:1", [0, 3, 6, 9, 12, 15]),
    ("gemm-transb", graphs.deep_mlp, "ffn:w1:0", [0, 11]),
    ("deep-mlp-middle", graphs.deep_mlp, "ffn:w2:1", [1, 2, 3]),
]


@pytest.mark.parametrize(
    ("case", "make", "group", "units"), ZERO_CASES, ids=[c[0] for c in ZERO_CASES]
)
def test_pruning_zeroed_units_is_exact(case, make, group, units) -> None:
    graph = make()
    check_zero_units_exact(graph, group, units, _feeds(graph))


def test_pruning_without_zeroing_changes_the_outputs() -> None:
    graph = graphs.mlp()
    feeds = _feeds(graph)
    before = interpret(graph, feeds)["y"]
    (g,) = [g for g in groups(graph) if g.name == "ffn:w1:1"]
    shrink(graph, [(g, list(range(8)))])
    assert not np.array_equal(interpret(graph, feeds)["y"], before)  # the check above can fail


PASS_CASES: list[tuple[str, Callable[[], Graph], type]] = [
    ("mlp", graphs.mlp, PruneFFN),
    ("swiglu", graphs.swiglu_block, PruneFFN),
    ("stack", graphs.residual_stack, PruneFFN),
    ("heads-3d", graphs.attention_block, PruneHeads),
    ("heads-gqa-4d", lambda: graphs.attention_block(form="4d", hkv=2), PruneHeads),
    ("heads-merged", lambda: graphs.attention_block(merged=True), PruneHeads),
    ("conv", graphs.conv_block, PruneChannels),
    ("deep-mlp", graphs.deep_mlp, PruneFFN),
]


@pytest.mark.parametrize(("case", "make", "cls"), PASS_CASES, ids=[c[0] for c in PASS_CASES])
def test_ratio_zero_is_an_exact_no_op(case, make, cls) -> None:
    graph = make()
    feeds = _feeds(graph)
    text, before = to_text(graph, inline_limit=None), interpret(graph, feeds)
    assert cls(ratio=0.0).run(graph).changed is False
    assert to_text(graph, inline_limit=None) == text
    after = interpret(graph, feeds)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


@pytest.mark.parametrize(("case", "make", "cls"), PASS_CASES, ids=[c[0] for c in PASS_CASES])
def test_pass_shrinks_verifies_and_runs_in_onnxruntime(case, make, cls) -> None:
    graph = make()
    feeds = _feeds(graph)
    params_before = sum(v.const_value.size for v in graph.constants.values())  # type: ignore[union-attr]
    result = cls(ratio=0.5).run(graph)
    assert result.changed and result.stats["units_removed"] > 0
    verify(graph)
    params_after = sum(v.const_value.size for v in graph.constants.values())  # type: ignore[union-attr]
    assert params_after < params_before
    expected = interpret(graph, feeds)
    actual = _ort_outputs(graph, feeds)
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_prune_heads_rewrites_attention_head_counts() -> None:
    graph = graphs.attention_block(d=16, hq=4, hkv=2)
    PruneHeads(ratio=0.5).run(graph)
    (attn,) = graph.find_nodes("Attention")
    assert (attn.attr("q_num_heads"), attn.attr("kv_num_heads")) == (2, 1)
    assert graph.node("q").inputs[1].shape == (16, 8)  # type: ignore[union-attr]
    assert graph.node("k").inputs[1].shape == (16, 4)  # type: ignore[union-attr]
    assert graph.node("o").inputs[1].shape == (8, 16)  # type: ignore[union-attr]


def test_prune_ffn_keeps_the_most_important_units() -> None:
    graph = graphs.mlp(hidden=4)
    w1 = np.array(graph.constants["w1"].const_value)
    w1[:, 2] *= 100  # unit 2 dominates the L2 magnitude
    graph.set_constant_value(graph.constants["w1"], w1)
    PruneFFN(ratio=0.75).run(graph)
    kept = graph.node("fc1").inputs[1]
    assert kept is not None and kept.shape == (8, 1)
    np.testing.assert_array_equal(kept.const_value[:, 0], w1[:, 2])  # type: ignore[index]


def test_channels_pass_rewrites_depthwise_group() -> None:
    graph = graphs.conv_block()
    PruneChannels(ratio=0.5).run(graph)
    assert graph.node("dw").attr("group") == 4
    assert graph.node("c1").inputs[1].shape == (4, 3, 3, 3)  # type: ignore[union-attr]
    assert graph.node("pw").inputs[1].shape == (3, 4, 1, 1)  # type: ignore[union-attr]


def test_wanda_needs_calibration_and_uses_it() -> None:
    graph = graphs.mlp()
    with pytest.raises(PruningError, match="calibration"):
        PruneFFN(ratio=0.5, importance="wanda").run(graph)
    calib = [_feeds(graph, seed=s) for s in range(3)]
    result = PruneFFN(ratio=0.5, importance="wanda", calibration=calib).run(graph)
    assert result.stats["units_removed"] == 8
    verify(graph)


def test_unknown_importance_is_a_typed_error() -> None:
    with pytest.raises(PruningError, match="unknown importance"):
        PruneFFN(ratio=0.5, importance="taylor").run(graphs.mlp())


def test_bad_ratio_is_a_typed_error() -> None:
    with pytest.raises(PruningError, match=r"ratio must be in \[0, 1\)"):
        PruneFFN(ratio=1.0).run(graphs.mlp())


def test_frozen_group_cannot_be_shrunk() -> None:
    graph = graphs.mlp()
    (g,) = [g for g in groups(graph) if g.name == "ffn:w2:1"]
    with pytest.raises(PruningError, match="reaches graph output"):
        shrink(graph, [(g, [0])])


def test_drop_layers_removes_the_least_influential_branch() -> None:
    graph = graphs.residual_stack(blocks=3)
    feeds = _feeds(graph)
    calib = [_feeds(graph, seed=s) for s in range(2)]
    result = DropLayers(ratio=0.34, calibration=calib).run(graph)
    assert result.stats == {"layers_dropped": 1}
    verify(graph)
    # Block 0 has the smallest down projection (scaled by 1, 2, 3): least influence.
    assert [g.name for g in layer_groups(graph)] == ["layer:res1", "layer:res2"]
    assert "ln0" not in {n.name for n in graph.nodes}
    assert "w1_0" not in graph.constants and "w2_0" not in graph.constants
    expected = interpret(graph, feeds)
    actual = _ort_outputs(graph, feeds)
    np.testing.assert_allclose(actual["y"], expected["y"], rtol=1e-4, atol=1e-5)


def test_drop_layers_zero_branch_is_exact() -> None:
    graph = graphs.residual_stack(blocks=3)
    graph.set_constant_value(graph.constants["w2_1"], np.zeros((16, 8), np.float32))
    feeds = _feeds(graph)
    before = interpret(graph, feeds)["y"]
    result = DropLayers(ratio=0.34, importance="block-influence", calibration=[feeds]).run(graph)
    assert result.notes[-1].startswith("dropped layer:res1")
    np.testing.assert_array_equal(interpret(graph, feeds)["y"], before)


def test_drop_layers_ratio_zero_is_a_no_op() -> None:
    graph = graphs.residual_stack()
    text = to_text(graph, inline_limit=None)
    assert DropLayers(ratio=0.0).run(graph).changed is False
    assert to_text(graph, inline_limit=None) == text


def test_passes_run_from_pipeline_strings_under_the_checked_manager() -> None:
    graph = graphs.residual_stack()
    p = get_pass("prune-ffn", ratio=0.5)
    assert isinstance(p, PruneFFN)
    result = run_passes(graph, "prune-ffn(ratio=0.5),drop-layers(ratio=0.5,importance='l2')")
    assert [r.changed for r in result.records] == [True, True]
    checked = Instrumentation(differential=True)
    PassManager(["prune-ffn(ratio=0.5)"], checked).run(graphs.residual_stack())
    same = graphs.mlp()
    PassManager([PruneFFN(ratio=0.0)], checked).run(same)


def test_a_weight_in_two_groups_shrinks_on_both_axes() -> None:
    graph = graphs.deep_mlp()
    result = PruneFFN(ratio=0.5).run(graph)
    assert result.stats == {"groups": 2, "units_removed": 11}
    assert graph.node("fc1").inputs[1].shape == (6, 8)  # type: ignore[union-attr]
    assert graph.node("fc2").inputs[1].shape == (6, 5)  # type: ignore[union-attr]
    assert graph.node("y").inputs[1].shape == (5, 3)  # type: ignore[union-attr]
    verify(graph)


def test_a_stale_group_is_refused_with_a_typed_error() -> None:
    graph = graphs.mlp()
    (g,) = [g for g in groups(graph) if g.name == "ffn:w1:1"]
    shrink(graph, [(g, list(range(8)))])
    with pytest.raises(PruningError, match="no longer matches the graph"):
        shrink(graph, [(g, list(range(4)))])  # g describes the graph before the first shrink
