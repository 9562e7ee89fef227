"""Cleanup passes: before/expected IR text, must-not-fire cases, idempotence, numerics."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.ir import GraphBuilder, interpret, parse, register_op
from ecograph.ir.ops._infer import same_as_input
from ecograph.ir.registry import unregister_op
from ecograph.passes import (
    EliminateCommonSubexpressions,
    EliminateDeadCode,
    EliminateNoOps,
    FoldConstants,
    FoldShapes,
    Instrumentation,
    run_passes,
)
from ecograph.passes.noops import cast_is_lossless
from ecograph.passes.testing import check_no_change, check_rewrite

H = 'graph g opset {"": 23, "ecograph": 1} {'


def g(body: str) -> str:
    return f"{H}\n{body.strip()}\n}}"


# ------------------------------------------------------------------------ DCE


def test_dce_removes_dead_chain_and_constants() -> None:
    before = g("""
  input %x: float32[2]
  input %unused: float32[2]
  const %c: float32[] = [2.0]
  %a: float32[2] = Mul(%x, %c) @a
  %b: float32[2] = Exp(%a) @b
  %y: float32[2] = Relu(%x) @y
  output %y
""")
    expected = g("""
  input %x: float32[2]
  input %unused: float32[2]
  %y: float32[2] = Relu(%x) @y
  output %y
""")
    check_rewrite(EliminateDeadCode(), before, expected)


def test_dce_removes_unused_inputs_only_when_asked() -> None:
    text = g("""
  input %x: float32[2]
  input %unused: float32[2]
  %y: float32[2] = Relu(%x) @y
  output %y
""")
    check_no_change(EliminateDeadCode(), text)
    expected = g("""
  input %x: float32[2]
  %y: float32[2] = Relu(%x) @y
  output %y
""")
    check_rewrite(EliminateDeadCode(remove_unused_inputs=True), text, expected)


def test_dce_keeps_intermediate_graph_outputs() -> None:
    check_no_change(
        EliminateDeadCode(),
        g("""
  input %x: float32[2]
  %a: float32[2] = Exp(%x) @a
  %y: float32[2] = Relu(%a) @y
  output %a
  output %y
"""),
    )


# ------------------------------------------------------------------------ CSE


def test_cse_merges_identical_nodes_and_constants() -> None:
    before = g("""
  input %x: float32[2]
  const %c1: float32[] = [2.0]
  const %c2: float32[] = [2.0]
  %a: float32[2] = Mul(%x, %c1) @a
  %b: float32[2] = Mul(%x, %c2) @b
  %y: float32[2] = Add(%a, %b) @y
  output %y
""")
    expected = g("""
  input %x: float32[2]
  const %c1: float32[] = [2.0]
  %a: float32[2] = Mul(%x, %c1) @a
  %y: float32[2] = Add(%a, %a) @y
  output %y
""")
    check_rewrite(EliminateCommonSubexpressions(), before, expected)


def test_cse_does_not_merge_different_attrs_or_signed_zeros() -> None:
    check_no_change(
        EliminateCommonSubexpressions(),
        g("""
  input %x: float32[2]
  const %p: float32[] = [0.0]
  const %n: float32[] = [-0.0]
  %a: float32[2] = LeakyRelu(%x) {alpha = 0.1} @a
  %b: float32[2] = LeakyRelu(%x) {alpha = 0.2} @b
  %c: float32[2] = Sub(%a, %p) @c
  %d: float32[2] = Sub(%b, %n) @d
  %y: float32[2] = Add(%c, %d) @y
  output %y
"""),
    )


def test_cse_never_merges_random_ops() -> None:
    @register_op("TestRandom", domain="test", inputs=["X"], outputs=["Y"], random=True,
                 infer=same_as_input(0))  # fmt: skip
    def test_random(x: np.ndarray) -> np.ndarray:
        return x  # deterministic here so the differential check can run

    try:
        b = GraphBuilder()
        x = b.input("x", "float32", [2])
        r1 = b.op("TestRandom", x, domain="test")
        r2 = b.op("TestRandom", x, domain="test")
        b.output(b.op("Add", r1, r2))
        check_no_change(EliminateCommonSubexpressions(), b.graph)
    finally:
        unregister_op("TestRandom", "test")


def test_cse_keeps_duplicate_that_is_a_graph_output() -> None:
    before = g("""
  input %x: float32[2]
  %a: float32[2] = Exp(%x) @a
  %b: float32[2] = Exp(%x) @b
  %y: float32[2] = Relu(%a) @y
  output %b
  output %y
""")
    expected = g("""
  input %x: float32[2]
  %b: float32[2] = Exp(%x) @b
  %y: float32[2] = Relu(%b) @y
  output %b
  output %y
""")
    check_rewrite(EliminateCommonSubexpressions(), before, expected)


def test_cse_keeps_two_named_outputs() -> None:
    check_no_change(
        EliminateCommonSubexpressions(),
        g("""
  input %x: float32[2]
  %a: float32[2] = Exp(%x) @a
  %b: float32[2] = Exp(%x) @b
  output %a
  output %b
"""),
    )


# ------------------------------------------------------------- constant folding


def test_fold_constants_bit_identical() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3])
    wt = b.op("Transpose", b.constant(w, "w"))
    scale = b.op("Sqrt", b.constant(np.array(2.0, np.float32), "two"))
    b.output(b.op("MatMul", x, b.op("Mul", wt, scale), name="y"))
    graph = b.graph
    feeds = {"x": rng.standard_normal((2, 3)).astype(np.float32)}
    ref = interpret(graph.copy(), feeds)["y"]
    out = check_rewrite(FoldConstants(), graph, feeds=feeds)
    assert [n.op_type for n in out.nodes] == ["MatMul"]
    assert interpret(out, feeds)["y"].tobytes() == ref.tobytes()
    folded = out.nodes[0].input(1)
    assert folded is not None and folded.dtype == "float32"


def test_fold_constants_size_cap_skips_and_logs() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [64, 64])
    big = b.op("Expand", b.constant(np.array(1.0, np.float32)), b.constant(np.array([64, 64])))
    b.output(b.op("Add", x, big))
    graph = b.graph
    result = run_passes(graph, [FoldConstants(max_bytes=1024)])
    assert not result.changed
    notes = result.records[0].result.notes  # type: ignore[union-attr]
    assert any("exceeds max_bytes=1024" in n for n in notes), notes
    assert len(graph.find_nodes("Expand")) == 1


def _computed_pad_graph() -> GraphBuilder:
    """Pad whose pads come out of a Reshape of a 2-D constant (the way TorchScript-exported
    SAME padding arrives): inference cannot see the pads, so the Pad and everything after it
    are declared with made-up dims until the pads are folded."""
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", 3, 4, 4])
    pairs = b.constant(np.array([[0, 0, 1, 0], [0, 0, 2, 1]], np.int64), "pairs")
    pads = b.op("Reshape", pairs, b.constant(np.array([-1], np.int64), "flat"), name="pads")
    padded = b.op("Pad", x, pads, name="pad")
    b.output(b.op("Relu", padded, name="y"))
    return b


def test_fold_constants_refines_the_types_it_made_static() -> None:
    graph = _computed_pad_graph().graph
    made_up = graph.value("pad").shape
    assert all(isinstance(d, str) and d.startswith("pad_o0_") for d in made_up), made_up
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)}
    out = check_rewrite(FoldConstants(), graph, feeds=feeds)  # verifies after the pass
    assert out.value("pad").shape == ("batch", 3, 7, 5)
    assert out.value("y").shape == ("batch", 3, 7, 5)
    result = run_passes(_computed_pad_graph().graph, [FoldConstants()])
    assert result.records[0].result.stats["types_refined"] == 2  # type: ignore[union-attr]


def test_fold_constants_refines_made_up_dims_to_the_inputs_symbols() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", 4])
    shape = b.op("Reshape", b.constant(np.array([[-1, 4]], np.int64)), b.constant(np.array([2])))
    b.output(b.op("Reshape", x, shape, name="y"))
    out = check_rewrite(FoldConstants(), b.graph)
    assert out.value("y").shape == ("batch", 4)  # was two made-up dims before the fold


def test_refinement_does_not_paper_over_a_wrong_declared_type() -> None:
    from ecograph.errors import VerificationError
    from ecograph.ir import TensorType, verify

    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", 4])
    b.input("y", "float32", ["n", 4])
    one = b.op("Add", b.constant(np.ones(4, np.float32)), b.constant(np.ones(4, np.float32)))
    z = b.op("Add", x, one, name="z")
    b.output(z)
    z.type = TensorType("float32", ["n", 4])  # a broken graph: "n" is another input's dim
    FoldConstants().run(b.graph)
    assert b.graph.value("z").shape == ("n", 4)
    with pytest.raises(VerificationError, match=r"\[types\] node z"):
        verify(b.graph)


# ----------------------------------------------------------------- shape folding


def test_fold_shapes_static_shape_subgraph() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3, 4])
    shape = b.op("Shape", x)
    first = b.op("Gather", shape, b.constant(np.array(0, np.int64)), axis=0)
    dims = b.op("Concat", b.op("Unsqueeze", first, b.constant(np.array([0]))),
                b.constant(np.array([-1])), axis=0)  # fmt: skip
    b.output(b.op("Reshape", x, dims, name="y"))
    graph = b.graph
    out = check_rewrite(FoldShapes(), graph)
    run_passes(out, "cleanup")
    assert [n.op_type for n in out.nodes] == ["Reshape"]
    assert out.value("y").shape == (2, 12)


def test_fold_shapes_dynamic_reshape_target_becomes_constant() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", "seq", 8])
    shape = b.op("Shape", x)
    bs = b.op("Slice", shape, b.constant(np.array([0])), b.constant(np.array([2])))
    target = b.op("Concat", bs, b.constant(np.array([2, 4])), axis=0)
    b.output(b.op("Reshape", x, target, name="y"))
    graph = b.graph
    out = check_rewrite(FoldShapes(), graph)
    run_passes(out, "cleanup")
    assert [n.op_type for n in out.nodes] == ["Reshape"]
    target_value = out.nodes[0].input(1)
    assert target_value is not None
    assert target_value.const_value.tolist() == [0, 0, 2, 4]  # type: ignore[union-attr]
    assert out.value("y").shape == ("batch", "seq", 2, 4)


# ------------------------------------------------------------------------ no-ops


@pytest.mark.parametrize(
    "line",
    [
        "%a: float32[2, 3] = Identity(%x) @a",
        "%a: float32[2, 3] = Dropout(%x) @a",
        "%a: float32[2, 3] = Mul(%one, %x) @a",
        "%a: float32[2, 3] = Div(%x, %one) @a",
        "%a: float32[2, 3] = Sub(%x, %pzero) @a",
        "%a: float32[2, 3] = Add(%nzero, %x) @a",
        "%a: float32[2, 3] = Transpose(%x) {perm = [0, 1]} @a",
        "%a: float32[2, 3] = Cast(%x) {to = 1} @a",
        "%a: float32[2, 3] = Expand(%x, %shape23) @a",
        "%a: float32[2, 3] = Concat(%x) {axis = 0} @a",
        "%a: float32[2, 3] = Reshape(%x, %shape23) @a",
        "%a: float32[2, 3] = Slice(%x, %zeros, %big) @a",
    ],
)
def test_noop_removed(line: str) -> None:
    consts = """
  const %one: float32[] = [1.0]
  const %pzero: float32[] = [0.0]
  const %nzero: float32[] = [-0.0]
  const %shape23: int64[2] = [2, 3]
  const %zeros: int64[2] = [0, 0]
  const %big: int64[2] = [100, 100]"""
    before = g(f"  input %x: float32[2, 3]\n{consts}\n  {line}\n"
               "  %y: float32[2, 3] = Relu(%a) @y\n  output %y")  # fmt: skip
    expected = g(f"  input %x: float32[2, 3]\n{consts}\n"
                 "  %y: float32[2, 3] = Relu(%x) @y\n  output %y")  # fmt: skip
    check_rewrite(EliminateNoOps(), before, expected)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("%a: float32[2, 3] = Add(%x, %pzero) @a", "-0.0 + 0.0 is +0.0"),
        ("%a: float32[2, 3] = Sub(%x, %nzero) @a", "-0.0 - -0.0 is +0.0"),
        ("%a: float32[2, 3] = Mul(%x, %two) @a", "not one"),
        ("%a: float32[2, 3] = Dropout(%x, _, %train) @a", "training mode"),
    ],
)
def test_noop_must_not_fire(line: str, why: str) -> None:
    consts = """
  const %two: float32[] = [2.0]
  const %pzero: float32[] = [0.0]
  const %nzero: float32[] = [-0.0]
  const %train: bool[] = [1]
  const %ones2: int64[2] = [1, 1]
  const %big: int64[2] = [100, 100]"""
    text = g(f"  input %x: float32[2, 3]\n{consts}\n  {line}\n"
             "  %y: float32[2, 3] = Relu(%a) @y\n  output %y")  # fmt: skip
    check_no_change(EliminateNoOps(), text)


def test_partial_slice_must_not_fire() -> None:
    check_no_change(
        EliminateNoOps(),
        g("""
  input %x: float32[2, 3]
  const %ones2: int64[2] = [1, 1]
  const %big: int64[2] = [100, 100]
  %a: float32[1, 2] = Slice(%x, %ones2, %big) @a
  output %a
"""),
    )


def test_add_zero_signed_zero_semantics_are_real() -> None:
    """The rule above is not pedantry: x + 0.0 turns -0.0 into +0.0."""
    x = np.array([-0.0], np.float32)
    assert np.signbit(x[0]) and not np.signbit((x + np.float32(0.0))[0])
    assert np.signbit((x + np.float32(-0.0))[0])


def test_mul_by_ones_tensor_that_broadcasts_must_not_fire() -> None:
    check_no_change(
        EliminateNoOps(),
        g("""
  input %x: float32[3]
  const %ones: float32[2, 3] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
  %a: float32[2, 3] = Mul(%x, %ones) @a
  output %a
"""),
    )


def test_integer_add_zero_is_removed() -> None:
    before = g("""
  input %x: int32[3]
  const %z: int32[] = [0]
  %a: int32[3] = Add(%x, %z) @a
  %y: int32[3] = Neg(%a) @y
  output %y
""")
    expected = g("""
  input %x: int32[3]
  const %z: int32[] = [0]
  %y: int32[3] = Neg(%x) @y
  output %y
""")
    check_rewrite(EliminateNoOps(), before, expected)


def test_transpose_pair_and_reshape_chain() -> None:
    before = g("""
  input %x: float32[2, 3, 4]
  const %s1: int64[2] = [6, 4]
  const %s2: int64[2] = [4, 6]
  %t1: float32[3, 2, 4] = Transpose(%x) {perm = [1, 0, 2]} @t1
  %t2: float32[2, 3, 4] = Transpose(%t1) {perm = [1, 0, 2]} @t2
  %r1: float32[6, 4] = Reshape(%t2, %s1) @r1
  %r2: float32[4, 6] = Reshape(%r1, %s2) @r2
  output %r2
""")
    expected = g("""
  input %x: float32[2, 3, 4]
  const %s1: int64[2] = [6, 4]
  const %s2: int64[2] = [4, 6]
  %r2: float32[4, 6] = Reshape(%x, %s2) @r2
  output %r2
""")
    check_rewrite(EliminateNoOps(), before, expected)


def test_cast_chains() -> None:
    assert cast_is_lossless(parse_dtype("float16"), parse_dtype("float32"))
    assert cast_is_lossless(parse_dtype("int8"), parse_dtype("float16"))
    assert not cast_is_lossless(parse_dtype("float32"), parse_dtype("float16"))
    assert not cast_is_lossless(parse_dtype("int32"), parse_dtype("float32"))
    lossless = g("""
  input %x: float16[3]
  %a: float32[3] = Cast(%x) {to = 1} @a
  %b: float16[3] = Cast(%a) {to = 10} @b
  %y: float16[3] = Neg(%b) @y
  output %y
""")
    expected = g("""
  input %x: float16[3]
  %y: float16[3] = Neg(%x) @y
  output %y
""")
    check_rewrite(EliminateNoOps(), lossless, expected)
    lossy = g("""
  input %x: float32[3]
  %a: float16[3] = Cast(%x) {to = 10} @a
  %b: float32[3] = Cast(%a) {to = 1} @b
  output %b
""")
    check_no_change(EliminateNoOps(), lossy)


def test_noop_on_graph_output_keeps_the_output_name() -> None:
    before = g("""
  input %x: float32[3]
  %a: float32[3] = Exp(%x) @a
  %y: float32[3] = Identity(%a) @y
  output %y
""")
    expected = g("""
  input %x: float32[3]
  %y: float32[3] = Exp(%x) @a
  output %y
""")
    check_rewrite(EliminateNoOps(), before, expected)
    # Identity of a graph input that is a graph output: nothing can take over the name.
    check_no_change(EliminateNoOps(), g("""
  input %x: float32[3]
  %y: float32[3] = Identity(%x) @y
  output %y
"""))  # fmt: skip


def parse_dtype(name: str):
    from ecograph.ir import DType

    return DType(name)


def test_cleanup_pipeline_on_text_round_trip() -> None:
    text = g("""
  input %x: float32[2, 3]
  const %one: float32[] = [1.0]
  const %c: float32[] = [3.0]
  %k: float32[] = Mul(%c, %c) @k
  %a: float32[2, 3] = Mul(%x, %one) @a
  %b: float32[2, 3] = Add(%a, %k) @b
  %dead: float32[2, 3] = Exp(%b) @dead
  output %b
""")
    graph = parse(text)
    run_passes(graph, "cleanup")
    assert [n.op_type for n in graph.nodes] == ["Add"]
    assert sorted(graph.constants) == ["k"]


def test_fold_shapes_uses_kernel_semantics_for_negative_division() -> None:
    """Integer Div truncates toward zero (ONNX); a folded shape value must agree with the
    kernel even where a symbolic rule floors (-7 / 2 is -3, not -4)."""
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", 7])
    seven = b.op("Gather", b.op("Shape", x), b.constant(np.array([1], np.int64)), axis=0)
    neg = b.op("Sub", b.constant(np.array([0], np.int64)), seven)
    half = b.op("Div", neg, b.constant(np.array([2], np.int64)))
    b.output(b.op("Add", half, b.constant(np.array([5], np.int64)), name="y"))
    graph = b.graph
    run_passes(graph, "cleanup", Instrumentation.all_on())
    assert [n.op_type for n in graph.nodes] == ["Add"]
    y = interpret(graph, {"x": np.zeros((3, 7), np.float32)})["y"]
    assert y.tolist() == [2]


# --------------------------------------------------------------------- random ops

# Two identical draws (same op, attributes and inputs) and a draw on a constant. Seeded, so the
# differential check of the pass manager is repeatable.
_RANDOM_DRAWS = """
  const %k: float32[2, 3] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
  %a: float32[2, 3] = RandomNormal() {seed = 1.0, shape = [2, 3]} @a
  %b: float32[2, 3] = RandomNormal() {seed = 1.0, shape = [2, 3]} @b
  %l: float32[2, 3] = RandomUniformLike(%k) {seed = 2.0} @l
  %y: float32[2, 3] = Sum(%a, %b, %l) @y
  output %y
"""


def test_cse_never_merges_identical_random_normal_draws() -> None:
    check_no_change(EliminateCommonSubexpressions(), g(_RANDOM_DRAWS))


def test_fold_constants_never_folds_random_draws() -> None:
    check_no_change(FoldConstants(), g(_RANDOM_DRAWS))


def test_cleanup_pipeline_keeps_every_draw() -> None:
    graph = parse(g(_RANDOM_DRAWS))
    run_passes(graph, "cleanup")
    assert [n.op_type for n in graph.nodes] == [
        "RandomNormal",
        "RandomNormal",
        "RandomUniformLike",
        "Sum",
    ]
