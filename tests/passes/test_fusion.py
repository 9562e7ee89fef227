"""Fusion passes: structure after the rewrite, must-not-fire cases, idempotence, numerics
(check_rewrite runs the differential check against the reference interpreter)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ecograph.ir import Graph, GraphBuilder, Value, graph_stats, interpret
from ecograph.models import build_default_model, example_inputs, reference_block
from ecograph.passes import (
    AbsorbAttentionHeads,
    CausalAttentionMasks,
    ExpandAttentionMasks,
    FoldBatchNorm,
    FoldPadIntoConv,
    FuseAttention,
    FuseGelu,
    FuseLayerNorm,
    FuseMatMulAdd,
    FuseRMSNorm,
    FuseSilu,
    FuseSwiGLU,
    Instrumentation,
    MarkElementwiseChains,
    MergeParallelMatMuls,
    run_passes,
)
from ecograph.passes.testing import check_no_change, check_rewrite

RNG = np.random.default_rng(0)


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def ops(graph: Graph) -> list[str]:
    return [n.op_type for n in graph.nodes]


def c(b: GraphBuilder, x: float) -> Value:
    return b.constant(np.array(x, np.float32))


# ---------------------------------------------------------------------- GELU


def gelu_erf(b: GraphBuilder, x: Value) -> Value:
    inner = b.op("Add", b.op("Erf", b.op("Div", x, c(b, math.sqrt(2)))), c(b, 1.0))
    return b.op("Mul", b.op("Mul", x, inner), c(b, 0.5))


def test_gelu_erf_expected_text() -> None:
    before = """graph g opset {"": 23, "ecograph": 1} {
  input %x: float32[4]
  const %s: float32[] = [1.4142135]
  const %one: float32[] = [1.0]
  const %half: float32[] = [0.5]
  %d: float32[4] = Div(%x, %s) @d
  %e: float32[4] = Erf(%d) @e
  %a: float32[4] = Add(%one, %e) @a
  %m: float32[4] = Mul(%a, %x) @m
  %y: float32[4] = Mul(%half, %m) @y
  output %y
}"""
    expected = """graph g opset {"": 23, "ecograph": 1} {
  input %x: float32[4]
  const %s: float32[] = [1.4142135]
  const %one: float32[] = [1.0]
  const %half: float32[] = [0.5]
  %y: float32[4] = Gelu(%x) @y_gelu
  output %y
}"""
    check_rewrite(FuseGelu(), before, expected)


def test_gelu_tanh_and_other_orders() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 8])
    cube = b.op("Pow", x, c(b, 3.0))
    poly = b.op("Add", x, b.op("Mul", c(b, 0.044715), cube))
    t = b.op("Tanh", b.op("Mul", poly, c(b, math.sqrt(2 / math.pi))))
    y = b.op("Mul", b.op("Mul", c(b, 0.5), x), b.op("Add", t, c(b, 1.0)))
    b.output(b.op("Relu", y))
    out = check_rewrite(FuseGelu(), b.graph)
    assert ops(out) == ["Gelu", "Relu"]
    assert out.nodes[0].attrs["approximate"] == "tanh"


def test_gelu_must_not_fire_on_second_user_or_wrong_constant() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [4])
    inner = b.op("Add", b.op("Erf", b.op("Div", x, c(b, math.sqrt(2)))), c(b, 1.0))
    y = b.op("Mul", b.op("Mul", x, inner), c(b, 0.5))
    b.output(y, b.op("Neg", inner))  # the (1 + erf) term has another user
    check_no_change(FuseGelu(), b.graph)
    b = GraphBuilder()
    x = b.input("x", "float32", [4])
    inner = b.op("Add", b.op("Erf", b.op("Div", x, c(b, 1.5))), c(b, 1.0))
    b.output(b.op("Mul", b.op("Mul", x, inner), c(b, 0.5)))
    check_no_change(FuseGelu(), b.graph)


def test_gelu_intermediate_graph_output_blocks_fusion() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [4])
    d = b.op("Div", x, c(b, math.sqrt(2)))
    inner = b.op("Add", b.op("Erf", d), c(b, 1.0))
    b.output(b.op("Mul", b.op("Mul", x, inner), c(b, 0.5)), d)
    check_no_change(FuseGelu(), b.graph)


# -------------------------------------------------------------- norms, SiLU


def decomposed_layer_norm(b: GraphBuilder, x: Value, hidden: int, affine: bool = True) -> Value:
    axes = b.constant(np.array([-1], np.int64))
    mean = b.op("ReduceMean", x, axes)
    d = b.op("Sub", x, mean)
    var = b.op("ReduceMean", b.op("Pow", d, c(b, 2.0)), axes)
    y = b.op("Div", d, b.op("Sqrt", b.op("Add", var, c(b, 1e-5))))
    if affine:
        y = b.op("Add", b.op("Mul", y, b.constant(1 + 0.1 * f32(hidden))), b.constant(f32(hidden)))
    return y


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(affine: bool) -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", ["n", 16])
    b.output(b.op("Relu", decomposed_layer_norm(b, x, 16, affine)))
    out = check_rewrite(FuseLayerNorm(), b.graph)
    assert ops(out) == ["LayerNormalization", "Relu"]
    assert len(out.nodes[0].inputs) == (3 if affine else 2)


def test_layer_norm_not_on_middle_axis_or_int() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [4, 16, 3])
    axes = b.constant(np.array([1], np.int64))
    mean = b.op("ReduceMean", x, axes)
    d = b.op("Sub", x, mean)
    var = b.op("ReduceMean", b.op("Mul", d, d), axes)
    b.output(b.op("Div", d, b.op("Sqrt", b.op("Add", var, c(b, 1e-5)))))
    check_no_change(FuseLayerNorm(), b.graph)


def test_rms_norm() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [3, 32])
    ms = b.op("ReduceMean", b.op("Mul", x, x), b.constant(np.array([-1], np.int64)))
    inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", ms, c(b, 1e-6))))
    b.output(b.op("Mul", b.constant(f32(32)), b.op("Mul", x, inv)))
    out = check_rewrite(FuseRMSNorm(), b.graph)
    assert ops(out) == ["RMSNormalization"]


def test_silu_and_swiglu() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 8])
    gate = b.op("MatMul", x, b.constant(f32(8, 16)))
    up = b.op("MatMul", x, b.constant(f32(8, 16)))
    act = b.op("Mul", gate, b.op("Sigmoid", gate))
    b.output(b.op("MatMul", b.op("Mul", act, up), b.constant(f32(16, 8))))
    graph = b.graph
    out = check_rewrite(FuseSilu(), graph.copy())
    assert "SiLU" in ops(out)
    out = check_rewrite(FuseSwiGLU(), out)
    assert ops(out).count("SwiGLU") == 1 and "SiLU" not in ops(out)
    direct = check_rewrite(FuseSwiGLU(), graph.copy())
    assert ops(direct).count("SwiGLU") == 1


def test_silu_must_not_fire_when_sigmoid_is_shared() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [4])
    s = b.op("Sigmoid", x)
    b.output(b.op("Mul", x, s), s)
    check_no_change(FuseSilu(), b.graph)


# ------------------------------------------------------------------ attention


def attention_graph(
    heads: int = 4, kv_heads: int = 4, mask: bool = True, div: bool = False
) -> Graph:
    b = GraphBuilder()
    d = 8
    q = b.input("q", "float32", ["b", heads, "s", d])
    k = b.input("k", "float32", ["b", kv_heads, "s", d])
    v = b.input("v", "float32", ["b", kv_heads, "s", d])
    if kv_heads != heads:
        rep = heads // kv_heads

        def repeat(t: Value) -> Value:
            u = b.op("Unsqueeze", t, b.constant(np.array([2], np.int64)))
            shape5 = b.op("Concat", b.op("Slice", b.op("Shape", t), b.constant(np.array([0])),
                                         b.constant(np.array([1]))),
                          b.constant(np.array([kv_heads, rep])),
                          b.op("Slice", b.op("Shape", t), b.constant(np.array([2])),
                               b.constant(np.array([4]))), axis=0)  # fmt: skip
            e = b.op("Expand", u, shape5)
            return b.op("Reshape", e, b.constant(np.array([0, heads, -1, d], np.int64)))

        k, v = repeat(k), repeat(v)
    s = b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2]))
    s = b.op("Div", s, c(b, math.sqrt(d))) if div else b.op("Mul", s, c(b, 1 / math.sqrt(d)))
    if mask:
        m = b.input("mask", "float32", ["b", 1, 1, "s"])
        s = b.op("Add", s, m)
    b.output(b.op("MatMul", b.op("Softmax", s, axis=-1), v, name="y"))
    return b.graph


@pytest.mark.parametrize(("mask", "div"), [(True, False), (False, True)])
def test_attention(mask: bool, div: bool) -> None:
    out = check_rewrite(FuseAttention(), attention_graph(mask=mask, div=div))
    run_passes(out, "cleanup")
    assert ops(out) == ["Attention"]
    assert out.outputs[0].name == "y"


def test_attention_gqa_absorbs_repeat_kv() -> None:
    graph = attention_graph(heads=4, kv_heads=2)
    run_passes(graph, "cleanup")
    out = check_rewrite(FuseAttention(), graph)
    run_passes(out, "cleanup")
    assert ops(out) == ["Attention"]
    k = out.nodes[0].input(1)
    assert k is not None and k.is_graph_input and k.shape[1] == 2


def test_attention_must_not_fire_when_probs_are_an_output() -> None:
    graph = attention_graph()
    graph.add_output(graph.find_nodes("Softmax")[0].outputs[0])
    check_no_change(FuseAttention(), graph)
    # The fusion report explains why.
    result = run_passes(graph, [FuseAttention()])
    assert "graph output" in result.fusion_report()


def test_attention_mask_that_broadcasts_scores_must_not_fire() -> None:
    b = GraphBuilder()
    q = b.input("q", "float32", [1, 2, 3, 4])
    k = b.input("k", "float32", [1, 2, 3, 4])
    v = b.input("v", "float32", [1, 2, 3, 4])
    m = b.input("m", "float32", [5, 2, 3, 3])  # grows the batch: not an attention mask
    s = b.op("Add", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), m)
    b.output(b.op("MatMul", b.op("Softmax", s, axis=-1), v))
    check_no_change(FuseAttention(), b.graph)


def torch_onnx_attention_graph(transpose: list[int] | None = None) -> Graph:
    """torch.onnx's SDPA decomposition: Q and Kᵀ each times sqrt(scale), Kᵀ transposed with
    the heads merged into the batch, GQA's repeat as Expand (batch 1, 4 heads over 2)."""
    b = GraphBuilder()
    d, s, heads, kv_heads = 8, 5, 4, 2
    q = b.input("q", "float32", [1, heads, s, d])
    k = b.input("k", "float32", [1, kv_heads, s, d])
    v = b.input("v", "float32", [1, kv_heads, s, d])

    def expand(t: Value) -> Value:
        u = b.op("Unsqueeze", t, b.constant(np.array([2], np.int64)))
        return b.op("Expand", u, b.constant(np.array([1, kv_heads, 2, s, d], np.int64)))

    k3 = b.op("Reshape", expand(k), b.constant(np.array([heads, s, d], np.int64)))
    kt3 = b.op("Transpose", k3, perm=transpose or [0, 2, 1])
    kt = b.op("Reshape", kt3, b.constant(np.array([1, heads, d, s], np.int64)))
    root = c(b, math.sqrt(1 / math.sqrt(d)))
    scores = b.op("MatMul", b.op("Mul", q, root), b.op("Mul", kt, root))
    probs = b.op("Softmax", b.op("Add", scores, b.input("mask", "float32", [1, 1, s, s])), axis=-1)
    guarded = b.op("Where", b.op("IsNaN", probs), c(b, 0.0), probs)
    v4 = b.op("Reshape", expand(v), b.constant(np.array([1, heads, s, d], np.int64)))
    b.output(b.op("MatMul", guarded, v4, name="y"))
    return b.graph


def test_attention_in_torch_onnx_form_with_gqa() -> None:
    out = check_rewrite(FuseAttention(), torch_onnx_attention_graph())
    run_passes(out, "cleanup")
    assert ops(out) == ["Attention"]
    k = out.nodes[0].input(1)
    assert k is not None and k.is_graph_input and k.shape[1] == 2  # the repeat is absorbed
    assert out.nodes[0].attr("scale") == pytest.approx(1 / math.sqrt(8), rel=1e-6)


def test_attention_in_torch_onnx_form_must_not_fire_without_the_kt_transpose() -> None:
    """Transposing the merged K's batch axis instead is not Kᵀ: no fusion."""
    check_no_change(FuseAttention(), torch_onnx_attention_graph(transpose=[1, 0, 2]))


# --------------------------------------------------------- linear fusions


def test_fold_batchnorm_into_conv_and_gemm() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [1, 3, 6, 6])
    y = b.op("Conv", x, b.constant(f32(4, 3, 3, 3)), b.constant(f32(4)), pads=[1, 1, 1, 1])
    bn = [b.constant(a) for a in (f32(4), f32(4), f32(4), np.abs(f32(4)) + 0.5)]
    b.output(b.op("BatchNormalization", y, *bn))
    out = check_rewrite(FoldBatchNorm(), b.graph)
    run_passes(out, "cleanup")
    assert ops(out) == ["Conv"]

    b = GraphBuilder()
    x = b.input("x", "float32", [2, 5])
    y = b.op("Gemm", x, b.constant(f32(4, 5)), b.constant(f32(4)), transB=1, beta=0.5)
    bn = [b.constant(a) for a in (f32(4), f32(4), f32(4), np.abs(f32(4)) + 0.5)]
    b.output(b.op("BatchNormalization", y, *bn))
    out = check_rewrite(FoldBatchNorm(), b.graph)
    assert ops(out) == ["Gemm"]


def test_fold_batchnorm_must_not_fire_on_shared_conv() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [1, 3, 6, 6])
    y = b.op("Conv", x, b.constant(f32(4, 3, 1, 1)))
    bn = [b.constant(a) for a in (f32(4), f32(4), f32(4), np.abs(f32(4)) + 0.5)]
    b.output(b.op("BatchNormalization", y, *bn), y)
    check_no_change(FoldBatchNorm(), b.graph)


def _pad(b: GraphBuilder, x: Value, pads: list[int], value: float | None = None, **kw) -> Value:
    ins = [x, b.constant(np.array(pads, np.int64))]
    if value is not None:
        ins.append(b.constant(np.array(value, np.float32)))
    return b.op("Pad", *ins, **kw)


def test_fold_pad_into_conv() -> None:
    """TensorFlow-style "same" padding (Hugging Face's MobileNets): a zero Pad of the spatial
    axes joins the Conv's own pads; the Pad goes when the Conv was its only consumer."""
    b = GraphBuilder()
    x = b.input("x", "float32", [1, 3, 7, 7])
    p = _pad(b, x, [0, 0, 0, 0, 0, 0, 1, 1], 0.0)
    conv = b.op("Conv", p, b.constant(f32(4, 3, 3, 3)), b.constant(f32(4)), strides=[2, 2],
                pads=[1, 0, 0, 2])  # fmt: skip
    b.output(conv)
    out = check_rewrite(FoldPadIntoConv(), b.graph)
    run_passes(out, "cleanup")
    assert ops(out) == ["Conv"]
    assert out.nodes[0].attrs["pads"] == [1, 0, 1, 3]
    # a Pad by axes (H only, no value input), shared with a second consumer that keeps it
    b = GraphBuilder()
    x = b.input("x", "float32", [1, 3, 6, 6])
    axes = b.constant(np.array([2], np.int64))
    p = b.op("Pad", x, b.constant(np.array([2, 1], np.int64)), None, axes)
    b.output(b.op("Conv", p, b.constant(f32(4, 3, 3, 3))), b.op("Relu", p))
    out = check_rewrite(FoldPadIntoConv(), b.graph)
    run_passes(out, "cleanup")
    assert sorted(ops(out)) == ["Conv", "Pad", "Relu"]
    assert [n.attrs.get("pads") for n in out.nodes if n.op_type == "Conv"] == [[2, 0, 1, 0]]


@pytest.mark.parametrize(
    "case", ["channels", "batch", "nonzero", "reflect", "crop", "auto_pad", "input_pads"]
)
def test_fold_pad_into_conv_must_not_fire(case: str) -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [1, 3, 6, 6])
    pads = {"channels": [0, 1, 0, 0, 0, 0, 0, 0], "batch": [1, 0, 0, 0, 0, 0, 0, 0],
            "crop": [0, 0, -1, 0, 0, 0, 0, 0]}.get(case, [0, 0, 1, 1, 0, 0, 1, 1])  # fmt: skip
    if case == "input_pads":
        pads_v = b.input("pads", "int64", [8])
        p = b.op("Pad", x, pads_v)
    else:
        value = 0.5 if case == "nonzero" else None
        p = _pad(b, x, pads, value, **({"mode": "reflect"} if case == "reflect" else {}))
    attrs = {"auto_pad": "SAME_UPPER"} if case == "auto_pad" else {}
    channels = 4 if case == "channels" else 3
    b.output(b.op("Conv", p, b.constant(f32(2, channels, 3, 3)), **attrs))
    feeds = {"x": f32(1, 3, 6, 6)}
    if case == "input_pads":
        feeds["pads"] = np.array(pads, np.int64)
    check_no_change(FoldPadIntoConv(), b.graph, feeds)


def test_zero_pad_is_removed_as_a_no_op() -> None:
    from ecograph.passes import EliminateNoOps

    b = GraphBuilder()
    x = b.input("x", "float32", [1, 3, 4, 4])
    b.output(b.op("Relu", _pad(b, x, [0] * 8, 2.0)))
    out = check_rewrite(EliminateNoOps(), b.graph)
    assert ops(out) == ["Relu"]


def test_matmul_add_to_gemm_2d_or_fused_linear() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [3, 5])
    b.output(b.op("Add", b.op("MatMul", x, b.constant(f32(5, 4))), b.constant(f32(4))))
    out = check_rewrite(FuseMatMulAdd(), b.graph)
    assert ops(out) == ["Gemm"]
    # 3-D activations (the transformer case): a constant weight and bias vector -> Linear.
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", "seq", 5])
    b.output(b.op("Add", b.op("MatMul", x, b.constant(f32(5, 4))), b.constant(f32(4))))
    out = check_rewrite(FuseMatMulAdd(), b.graph)
    assert [n.qualified_op for n in out.nodes] == ["ecograph::Linear"]
    # must not fire: a weight that is not a constant, or a bias that broadcasts further
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3, 5])
    w = b.input("w", "float32", [5, 4])
    b.output(b.op("Add", b.op("MatMul", x, w), b.constant(f32(4))))
    check_no_change(FuseMatMulAdd(), b.graph)
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3, 5])
    b.output(b.op("Add", b.op("MatMul", x, b.constant(f32(5, 4))), b.constant(f32(3, 4))))
    check_no_change(FuseMatMulAdd(), b.graph)


def test_merge_parallel_matmuls() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", ["n", 8])
    outs = [b.op("MatMul", x, b.constant(f32(8, k))) for k in (8, 8, 4)]
    b.output(*outs)
    out = check_rewrite(MergeParallelMatMuls(), b.graph)
    assert sorted(ops(out)) == ["MatMul", "Split"]
    assert [v.name for v in out.outputs] == [v.name for v in outs]


def test_merge_parallel_linears_with_biases() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", "seq", 8])
    outs = [
        b.op("Linear", x, b.constant(f32(8, k)), b.constant(f32(k)), domain="ecograph")
        for k in (8, 8, 4)
    ]
    b.output(*outs)
    out = check_rewrite(MergeParallelMatMuls(), b.graph)
    assert sorted(n.qualified_op for n in out.nodes) == ["Split", "ecograph::Linear"]
    assert [v.name for v in out.outputs] == [v.name for v in outs]
    # biased and unbiased Linears on one input are not merged
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3, 8])
    b.output(
        b.op("Linear", x, b.constant(f32(8, 4)), b.constant(f32(4)), domain="ecograph"),
        b.op("Linear", x, b.constant(f32(8, 4)), domain="ecograph"),
    )
    check_no_change(MergeParallelMatMuls(), b.graph)


def test_mark_elementwise_chains() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [4])
    a = b.op("Exp", b.op("Neg", x, name="n1"), name="e1")
    y = b.op("Relu", b.op("MatMul", b.op("Unsqueeze", a, b.constant(np.array([0]))),
                          b.constant(f32(4, 2))), name="r1")  # fmt: skip
    b.output(y)
    out = check_rewrite(MarkElementwiseChains(), b.graph)
    assert out.metadata["ecograph.elementwise_groups"] == [["n1", "e1"]]


# ---------------------------------------------------------- the bundled model


def test_default_model_end_to_end(tmp_path) -> None:
    graph = build_default_model()
    feeds = example_inputs()
    before = len(graph.nodes)
    result = run_passes(graph, "default", Instrumentation.all_on(tmp_path, sample_inputs=feeds))
    hist = graph_stats(graph).op_histogram
    assert hist.get("LayerNormalization") == 2
    assert hist.get("Attention") == 1
    assert hist.get("Gelu") == 1
    assert hist.get("Softmax") is None
    assert len(graph.nodes) < before
    got = interpret(graph, feeds)["y"]
    np.testing.assert_allclose(got, reference_block(**feeds), rtol=1e-4, atol=1e-4)
    assert "fuse-attention: fused 1" in result.fusion_report()
    assert any(p.name.endswith(".after.txt") for p in tmp_path.iterdir())
    again = run_passes(graph, "default", Instrumentation.all_on(sample_inputs=feeds))
    assert not again.changed, [r.pass_name for r in again.records if r.changed]


def heads_graph(extra_user: bool = False) -> Graph:
    """[b, s, 32] -> 4 heads of 8 -> softmax attention -> merged back to [b, s, 32]."""
    b = GraphBuilder()
    xs = [b.input(n, "float32", ["b", "s", 32]) for n in ("q", "k", "v")]
    split = b.constant(np.array([0, 0, 4, 8], np.int64))
    q, k, v = (b.op("Transpose", b.op("Reshape", x, split), perm=[0, 2, 1, 3]) for x in xs)
    s = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), c(b, 0.125))
    y4 = b.op("MatMul", b.op("Softmax", s, axis=-1), v)
    merged = b.op("Transpose", y4, perm=[0, 2, 1, 3])
    b.output(b.op("Reshape", merged, b.constant(np.array([0, 0, 32], np.int64)), name="y"))
    if extra_user:
        b.output(b.op("Neg", q, name="q_heads_used_elsewhere"))
    return b.graph


def test_absorb_attention_heads_into_3d_attention() -> None:
    graph = heads_graph()
    run_passes(graph, [FuseAttention()])
    out = check_rewrite(AbsorbAttentionHeads(), graph)
    run_passes(out, "cleanup")
    assert ops(out) == ["Attention"]
    node = out.nodes[0]
    assert node.attrs["q_num_heads"] == 4 and node.attrs["kv_num_heads"] == 4
    assert [v.name for v in node.inputs if v is not None] == ["q", "k", "v"]


def test_absorb_attention_heads_must_not_fire_on_shared_head_split() -> None:
    graph = heads_graph(extra_user=True)
    run_passes(graph, [FuseAttention()])
    check_no_change(AbsorbAttentionHeads(), graph)


def test_expand_attention_masks_makes_the_query_axis_explicit() -> None:
    graph = attention_graph(mask=True)
    run_passes(graph, [FuseAttention()])
    out = check_rewrite(ExpandAttentionMasks(), graph)
    mask = out.find_nodes("Attention")[0].input(3)
    assert mask is not None and mask.shape == ("b", 1, "s", "s")


def causal_mask_graph(
    form: str = "causal",
    offset: float | None = 3,
    step: int = 1,
    expand: bool = True,
    static: bool = False,
) -> Graph:
    """Attention(q, k, v, mask) whose bool mask is built as torch.export builds a Hugging
    Face Llama's prefill mask: r = Range(0, S, 1) (+ offset), mask = Expand(LessOrEqual(
    r[None, None, None, :], r[None, None, :, None])). `form`: "causal"; "anti" (the sides
    swapped); "two-ranges" (the queries' positions a second range, one more); "float" (an
    additive mask); "one-position" (r = Range(0, 1, 1): a [1, 1] mask, all True, expanded
    to [S, S]). `step` -1: r = Range(S - 1, -1, -1), decreasing. `static`: S = 6, the
    range's bounds constants (so that its length is known to be S)."""
    b = GraphBuilder()
    s_dim: int | str = 6 if static else "s"
    q = b.input("q", "float32", ["b", 4, s_dim, 8])
    k = b.input("k", "float32", ["b", 2, s_dim, 8])
    v = b.input("v", "float32", ["b", 2, s_dim, 8])
    if static:
        s_len = b.constant(np.array(6, np.int64))
    else:
        s_len = b.op("Squeeze", b.op("Shape", q, start=2, end=3), b.constant(np.array([0])))

    def positions(shift: int = 0) -> Value:
        one = b.constant(np.array(1, np.int64))
        if form == "one-position":
            r = b.op("Range", b.constant(np.array(0, np.int64)), one, one)
        elif step == 1:
            r = b.op("Range", b.constant(np.array(0, np.int64)), s_len, one)
        else:  # S - 1 down to 0
            minus = b.constant(np.array(-1, np.int64))
            last = b.constant(np.array(5, np.int64)) if static else b.op("Sub", s_len, one)
            r = b.op("Range", last, minus, minus)
        if offset is None and not shift:
            return r
        return b.op("Add", r, b.constant(np.array((offset or 0) + shift, np.int64)))

    r = positions()
    keys = b.op("Unsqueeze", r, b.constant(np.array([0, 1, 2])))
    queries = b.op("Unsqueeze", positions(1) if form == "two-ranges" else r,
                   b.constant(np.array([0, 1, 3])))  # fmt: skip
    mask = b.op("LessOrEqual", *((queries, keys) if form == "anti" else (keys, queries)))
    if expand:
        shape = b.op("Concat", b.op("Shape", q, start=0, end=1),
                     b.constant(np.array([1], np.int64)), b.op("Shape", q, start=2, end=3),
                     b.op("Shape", q, start=2, end=3), axis=0)  # fmt: skip
        mask = b.op("Expand", mask, shape)
    if form == "float":
        mask = b.op("Where", mask, b.constant(np.array(0, np.float32)),
                    b.constant(np.array(-np.inf, np.float32)))  # fmt: skip
    b.output(b.op("Attention", q, k, v, mask, name="y"))
    return b.graph


CAUSAL_FEEDS = {"q": f32(2, 4, 6, 8), "k": f32(2, 2, 6, 8), "v": f32(2, 2, 6, 8)}


@pytest.mark.parametrize(
    "offset,expand,static", [(3, True, False), (None, False, False), (-2, True, True)]
)
def test_causal_attention_masks_become_is_causal(offset, expand, static) -> None:
    """A mask provably j <= i (one strictly increasing range on both sides) becomes
    is_causal=1 and the mask's nodes go; the same result to the bit (check_rewrite's
    differential check is exact for this pass)."""
    graph = causal_mask_graph(offset=offset, expand=expand, static=static)
    out = check_rewrite(CausalAttentionMasks(), graph, feeds=CAUSAL_FEEDS)
    (node,) = out.find_nodes("Attention")
    assert node.attrs["is_causal"] == 1 and len(node.inputs) == 3
    run_passes(out, "cleanup")
    assert ops(out) == ["Attention"]


@pytest.mark.parametrize(
    "form,step",
    [("anti", 1), ("two-ranges", 1), ("float", 1), ("causal", -1), ("one-position", 1)],
)
def test_causal_attention_masks_leave_other_masks(form, step) -> None:
    """Not provably causal: the sides swapped (j >= i), keys and queries from different
    ranges, an additive float mask (left as it is), a decreasing range (j >= i again), a
    one-position range whose all-True mask an Expand broadcasts over every query and key."""
    graph = causal_mask_graph(form, step=step, static=step < 0)
    check_no_change(CausalAttentionMasks(), graph, CAUSAL_FEEDS)


def test_default_model_runs_in_onnx_runtime_after_export() -> None:
    """The fused graph exports as standard ONNX-23 (Attention included) and ONNX Runtime
    agrees with the reference interpreter."""
    ort = pytest.importorskip("onnxruntime")
    from ecograph.frontend.onnx import to_onnx

    graph = build_default_model()
    feeds = example_inputs()
    run_passes(graph, "default")
    session = ort.InferenceSession(to_onnx(graph).SerializeToString())
    got = session.run(None, feeds)[0]
    np.testing.assert_allclose(got, interpret(graph, feeds)["y"], rtol=1e-4, atol=1e-5)
