"""The workaround for TVM 0.27's miscompile of decreasing floormod/floordiv indices
(ecograph/backends/tvm/schedules/indexmath.py; docs/tvm.md has the reproducer)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm
from tvm import tirx
from tvm.sym.analyzer import Analyzer

from ecograph.backends.tvm import build
from ecograph.backends.tvm.schedules.indexmath import rewrite_decreasing_indices
from ecograph.ir import GraphBuilder, interpret

I64 = "int64"


def _value(expr, j: int, i: int = 0) -> int:
    out = Analyzer().simplify(
        tvm_ffi_substitute(expr, {"j": tirx.IntImm(I64, j), "i": tirx.IntImm(I64, i)})
    )
    assert isinstance(out, tirx.IntImm), out
    return int(out.value)


def tvm_ffi_substitute(expr, values):
    import tvm_ffi

    return tvm_ffi.structural_map(expr, (tirx.Var, lambda v: values.get(v.name, v)))


@pytest.mark.parametrize("c,k,m", [(26, 1, 9), (8, 1, 9), (0, 1, 4), (5, 3, 7), (-3, 2, 5)])
def test_rewritten_indices_equal_the_originals(c, k, m):
    """floormod / floordiv of c - k*j (and of c - k*j - i) keep their values, for negative
    dividends too; the rewritten dividends increase with every variable."""
    j, i = tirx.Var("j", I64), tirx.Var("i", I64)
    C, K, M = (tirx.IntImm(I64, v) for v in (c, k, m))
    for e, with_i in ((C - K * j, False), (C - K * j - i, True)):
        for op, ref in ((tirx.floormod, lambda a: a % m), (tirx.floordiv, lambda a: a // m)):
            before = op(e, M)
            after = rewrite_decreasing_indices(before)
            assert not after.same_as(before)
            for jv in range(-3, 30):
                for iv in (0, 2):
                    want = ref(c - k * jv - (iv if with_i else 0))
                    assert _value(after, jv, iv) == want == _value(before, jv, iv)


def test_increasing_and_mixed_indices_are_left_alone():
    j, i = tirx.Var("j", I64), tirx.Var("i", I64)
    nine = tirx.IntImm(I64, 9)
    for e in (j + tirx.IntImm(I64, 5), j - i, tirx.IntImm(I64, 3) * j):
        expr = tirx.floormod(e, nine)
        assert rewrite_decreasing_indices(expr).same_as(expr)


@pytest.mark.parametrize("target", ["x86", "x86:generic"])
def test_flip_of_a_tile_matches_the_interpreter(target):
    """The case the compiled-graph fuzzer found: Tile then a reversed CumSum (a Flip of the
    Tile fused into one kernel) read every element from the wrong place without the pass."""
    from tvm import relax

    b = GraphBuilder()
    x = b.input("x", "float32", [8, 9])
    t = b.op("Tile", x, b.constant(np.array([1, 3], np.int64), "reps"))
    b.output(b.op("CumSum", t, b.constant(np.array(1, np.int64), "axis"), exclusive=1, reverse=1))
    g = b.graph
    feeds = {"x": np.random.default_rng(1).uniform(-2, 2, (8, 9)).astype(np.float32)}
    result = build.build_module(g, target, keep_params=False)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(feeds["x"])).numpy()
    np.testing.assert_allclose(got, interpret(g, feeds)[g.outputs[0].name], rtol=1e-5, atol=1e-5)
