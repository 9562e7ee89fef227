"""TVM lowering of ecograph::PaletteDequantize (ops/palette.py), compiled for x86 without
lowering-time folding and compared bit for bit with the reference interpreter (a lookup is
exact); plus a CUDA lowering (no GPU needed)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.backends.tvm.driver import lower_graph
from ecograph.ir import interpret
from tests.backends.tvm_helpers import RNG, Const, lowering_target, one_op, run_tvm

COVERED_OPS = {("ecograph", "PaletteDequantize")}


def _case(codes, palette, axis, group):
    return one_op("PaletteDequantize", codes, palette, domain="ecograph", axis=axis,
                  group_size=group)  # fmt: skip


CASES = {
    "uint4-groups-of-2-columns": lambda: _case(
        Const(RNG.integers(0, 16, (6, 5)).astype(ml_dtypes.uint4)),
        Const(RNG.standard_normal((3, 16)).astype(np.float32)),
        1,
        2,
    ),
    "uint4-one-per-row": lambda: _case(
        Const(RNG.integers(0, 16, (4, 7)).astype(ml_dtypes.uint4)),
        Const(RNG.standard_normal((4, 16)).astype(np.float32)),
        0,
        1,
    ),
    "uint8-per-tensor-3d": lambda: _case(
        Const(RNG.integers(0, 256, (2, 3, 4)).astype(np.uint8)),
        Const(RNG.standard_normal((1, 256)).astype(np.float32)),
        0,
        0,
    ),
    # codes at run time (as after an embedding's row Gather), grouped along the last axis
    "uint8-input-codes-axis-minus-1": lambda: _case(
        RNG.integers(0, 256, (2, 3, 8)).astype(np.uint8),
        Const(RNG.standard_normal((2, 256)).astype(np.float32)),
        -1,
        4,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lookup_matches_the_interpreter_exactly(name):
    graph, feeds = CASES[name]()
    (got,) = run_tvm(graph, feeds, fold=False)
    want = interpret(graph, feeds)[graph.outputs[0].name]
    np.testing.assert_array_equal(got, want)


def test_lowers_for_cuda():
    graph, _ = CASES["uint4-groups-of-2-columns"]()
    assert "R.take" in lower_graph(graph, lowering_target("cuda"), fold=False).mod.script()
