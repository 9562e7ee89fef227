"""Least-squares reconstruction after pruning (ecograph/prune/reconstruct.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.ir import Graph, GraphBuilder, interpret, verify
from ecograph.passes.sample import sample_inputs_for
from ecograph.prune import PruneFFN, PruneHeads, PruningError, groups, shrink
from ecograph.prune.reconstruct import refit, refit_targets
from tests.prune import graphs


def _feeds(graph: Graph, seeds: range) -> list[dict[str, np.ndarray]]:
    return [sample_inputs_for(graph, {"batch": 16, "seq": 7}, seed=s) for s in seeds]


def _outputs(graph: Graph, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    name = graph.outputs[0].name
    return np.concatenate([interpret(graph, f)[name].reshape(-1) for f in feeds])


def _dependent_mlp(op: str, alpha: float = 1.0) -> Graph:
    """x[batch, 6] -> fc1 + b1 -> Relu -> fc2 (+ b2) -> y[batch, 5] with 8 hidden units: unit
    4 + i is 0.5 x unit i (i < 3) and unit 7 the constant relu(b1[7]) = 1, so the kept units
    0..3 determine the removed units 4..7 (linearly, up to fc2's bias)."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((6, 8)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w1[:, 4:7], b1[4:7] = 0.5 * w1[:, 0:3], 0.5 * b1[0:3]
    w1[:, 7], b1[7] = 0.0, 1.0
    w2 = rng.standard_normal((8, 5)).astype(np.float32)
    b2 = rng.standard_normal(5).astype(np.float32)
    b = GraphBuilder("dependent")
    x = b.input("x", "float32", ["batch", 6])
    h = b.op("Relu", b.op("Add", b.op("MatMul", x, b.constant(w1, "w1"), name="fc1"),
                          b.constant(b1, "b1")))  # fmt: skip
    if op == "Linear":
        y = b.op("Linear", h, b.constant(w2, "w2"), b.constant(b2, "b2"), domain="ecograph",
                 name="fc2")  # fmt: skip
    elif op == "Gemm":
        y = b.op("Gemm", h, b.constant(np.ascontiguousarray(w2.T), "w2"), b.constant(b2, "b2"),
                 transB=1, alpha=alpha, name="fc2")  # fmt: skip
    else:
        y = b.op("Add", b.op("MatMul", h, b.constant(w2, "w2"), name="fc2"), b.constant(b2, "b2"))
    b.output(y)
    return b.graph


@pytest.mark.parametrize("op", ["MatMul", "Linear", "Gemm"])
def test_refit_restores_units_that_the_kept_ones_determine(op: str) -> None:
    # Units 4..6 are multiples of units 0..2 and unit 7 a constant: with the weight and the
    # bias refit (damp 0), the pruned MLP computes what the unpruned one does; plain slicing
    # does not.
    original = _dependent_mlp(op)
    calibration = _feeds(original, range(3))
    held_out = _feeds(original, range(10, 13))
    expected = _outputs(original, held_out)
    (group,) = [g for g in groups(original) if g.name == "ffn:w1:1"]
    plan = [(group, [0, 1, 2, 3])]
    targets = refit_targets(plan)
    assert [t.node for t in targets] == ["fc2"]
    assert targets[0].kept == (0, 1, 2, 3)

    plain = original.copy()
    (group_p,) = [g for g in groups(plain) if g.name == "ffn:w1:1"]
    shrink(plain, [(group_p, [0, 1, 2, 3])])
    assert np.abs(_outputs(plain, held_out) - expected).max() > 0.1

    pruned = original.copy()
    (group_r,) = [g for g in groups(pruned) if g.name == "ffn:w1:1"]
    shrink(pruned, [(group_r, [0, 1, 2, 3])])
    notes = refit(original, pruned, targets, calibration, damp=0.0)
    verify(pruned)
    assert len(notes) == 1 and notes[0].startswith("fc2: refit on 48 rows (4 input features")
    np.testing.assert_allclose(_outputs(pruned, held_out), expected, rtol=1e-4, atol=1e-4)


def test_a_scaled_gemm_is_not_refit() -> None:
    # Gemm's alpha would scale the refit weight again (and beta the bias): left as sliced.
    graph = _dependent_mlp("Gemm", alpha=2.0)
    (group,) = [g for g in groups(graph) if g.name == "ffn:w1:1"]
    assert refit_targets([(group, [0, 1, 2, 3])]) == []


def test_refit_without_a_bias_fits_the_weight_alone() -> None:
    # graphs.mlp's second MatMul has no bias: the refit changes only its weight, and on
    # held-out inputs the error is smaller than plain slicing's (0.045 vs 0.069 when written).
    original = graphs.mlp(hidden=16, seed=1)
    calibration = _feeds(original, range(40))
    held_out = _feeds(original, range(20, 24))
    expected = _outputs(original, held_out)
    plain, fitted = original.copy(), original.copy()
    PruneFFN(ratio=0.5, importance="wanda", calibration=calibration).run(plain)
    result = PruneFFN(ratio=0.5, importance="wanda", calibration=calibration, reconstruct=True).run(
        fitted
    )
    verify(fitted)
    assert any(n.startswith("y: refit on 640 rows (8 input features") for n in result.notes)
    assert len(fitted.constants) == len(plain.constants)  # the sliced weight was replaced
    err_plain = np.mean((_outputs(plain, held_out) - expected) ** 2)
    err_fit = np.mean((_outputs(fitted, held_out) - expected) ** 2)
    assert err_fit < 0.8 * err_plain


def test_prune_heads_refits_the_output_projection() -> None:
    # The dropped heads' outputs are independent of the kept heads' on random inputs, so the
    # gain is smaller than in an FFN (0.089 vs 0.103 when written); 600 rows keep the fit
    # from chasing noise (with 60 it was worse on held-out inputs than plain slicing).
    original = graphs.attention_block(d=16, hq=4, hkv=4, form="4d")
    calibration = _feeds(original, range(60))
    held_out = _feeds(original, range(30, 33))
    expected = _outputs(original, held_out)
    plain, fitted = original.copy(), original.copy()
    PruneHeads(ratio=0.5, importance="wanda", calibration=calibration).run(plain)
    result = PruneHeads(
        ratio=0.5, importance="wanda", calibration=calibration, reconstruct=True
    ).run(fitted)
    verify(fitted)
    refits = [n for n in result.notes if ": refit on " in n]
    assert len(refits) == 1 and "(8 input features" in refits[0]
    err_plain = np.mean((_outputs(plain, held_out) - expected) ** 2)
    err_fit = np.mean((_outputs(fitted, held_out) - expected) ** 2)
    assert err_fit < 0.9 * err_plain


def test_reconstruct_needs_calibration() -> None:
    with pytest.raises(PruningError, match="reconstruct=True needs calibration"):
        PruneFFN(ratio=0.5, reconstruct=True).run(graphs.mlp())
