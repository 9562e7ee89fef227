"""The Quantize pass: structure of each mode, numerics against float, sizes, exclusions."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.errors import PassError
from ecograph.ir import GraphBuilder, interpret, verify
from ecograph.models import build_default_model, example_inputs
from ecograph.quant.quantize import Quantize

rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_rng() -> None:
    """Every test draws from its own generator seeded alike, so what it draws does not
    depend on which tests ran before it in the worker (make test's loadscope or plain -n)."""
    global rng
    rng = np.random.default_rng(0)


def mlp(k: int = 64, n: int = 48, gemm: bool = False):
    b = GraphBuilder("mlp")
    x = b.input("x", "float32", ["batch", k])
    w1 = b.constant((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), "w1")
    b1 = b.constant(rng.standard_normal(n).astype(np.float32), "b1")
    if gemm:
        w1t = b.constant(np.ascontiguousarray(w1.const_value.T), "w1t")
        h = b.op("Gemm", x, w1t, b1, transB=1, alpha=0.5, name="fc1")
    else:
        h = b.op("Add", b.op("MatMul", x, w1, name="fc1"), b1)
    h = b.op("Relu", h)
    w2 = b.constant((rng.standard_normal((n, 8)) / np.sqrt(n)).astype(np.float32), "w2")
    b.output(b.op("MatMul", h, w2, name="fc2"))
    return b.graph


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run(g, feeds):
    return next(iter(interpret(g, feeds).values()))


@pytest.mark.parametrize("gemm", [False, True])
def test_dynamic_uses_integer_matmul_and_stays_close(gemm):
    g = mlp(gemm=gemm)
    feeds = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    ref = run(g, feeds)
    out_name = g.outputs[0].name
    res = Quantize(mode="dynamic").run(g)
    assert res.changed and res.stats["quantized"] == 2
    assert g.outputs[0].name == out_name  # callers bind outputs by name
    verify(g)
    ops = [n.op_type for n in g.nodes]
    assert ops.count("MatMulInteger") == 2 and ops.count("DynamicQuantizeLinear") == 2
    assert "MatMul" not in ops and "Gemm" not in ops
    weight = "w1t" if gemm else "w1"
    assert weight not in g.constants and "w2" not in g.constants  # float weights are gone
    assert g.value(f"{weight}_q").dtype.value == "int8"
    out = run(g, feeds)
    assert cosine(out, ref) > 0.999
    assert np.max(np.abs(out - ref)) < 0.05 * np.max(np.abs(ref))
    assert not Quantize(mode="dynamic").run(g).changed  # idempotent


def test_static_inserts_qdq_from_calibration():
    g = mlp()
    calib = [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(8)]
    feeds = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    ref = run(g, feeds)
    res = Quantize(mode="static", calibration_data=calib).run(g)
    assert res.stats["quantized"] == 2
    verify(g)
    q_nodes = [n for n in g.nodes if n.op_type == "QuantizeLinear"]
    assert len(q_nodes) == 2
    for n in g.find_nodes("MatMul"):
        assert n.inputs[0].producer.op_type == "DequantizeLinear"
        assert n.inputs[1].producer.op_type == "DequantizeLinear"
        assert n.inputs[1].producer.inputs[0].dtype.value == "int8"
    assert g.value("x_scale").const_value.dtype == np.float32
    assert g.value("x_zero_point").const_value.dtype == np.uint8
    assert cosine(run(g, feeds), ref) > 0.999


@pytest.mark.parametrize(
    ("dtype", "granularity", "max_ratio"), [("int8", "channel", 0.30), ("int4", "group:128", 0.18)]
)
def test_weight_only_sizes_and_accuracy(dtype, granularity, max_ratio):
    g = mlp(k=512, n=512)
    feeds = {"x": rng.standard_normal((2, 512)).astype(np.float32)}
    ref = run(g, feeds)
    before = sum(v.type.nbytes() for v in g.constants.values())
    Quantize(mode="weight_only", dtype=dtype, granularity=granularity).run(g)
    verify(g)
    after = sum(v.type.nbytes() for v in g.constants.values())
    assert after / before <= max_ratio, after / before
    dq = g.find_nodes("DequantizeLinear")
    assert len(dq) == 2 and all(n.inputs[0].dtype.value == dtype for n in dq)
    if granularity.startswith("group"):
        assert dq[0].attrs["block_size"] == 128 and dq[0].attrs["axis"] == 0
    assert cosine(run(g, feeds), ref) > (0.999 if dtype == "int8" else 0.98)


def test_exclusions_by_op_type_and_name_glob():
    g = mlp()
    res = Quantize(mode="weight_only", exclude=["fc2"]).run(g)
    assert res.stats["quantized"] == 1
    assert any("fc2 (MatMul): excluded" in note for note in res.notes)
    g2 = build_default_model()
    res2 = Quantize(mode="weight_only", exclude=["MatMul"]).run(g2)
    assert not res2.changed and res2.stats["quantized"] == 0


def test_an_exclusion_that_names_no_node_is_noted():
    """A mistyped pattern (or one for names the graph does not use) excludes nothing: the
    notes say so instead of quantizing the layer in silence."""
    g = mlp()
    res = Quantize(mode="weight_only", exclude=["*lm_head*", "fc*", "Conv"]).run(g)
    unmatched = [n for n in res.notes if "matches no node" in n]
    assert len(unmatched) == 2, res.notes
    assert "'*lm_head*'" in unmatched[0] and "'Conv'" in unmatched[1]
    assert "fc1" in unmatched[0]  # names the graph's matmuls, so the user can fix it


def test_options_are_checked():
    with pytest.raises(PassError, match="calibration_data"):
        Quantize(mode="static")
    with pytest.raises(PassError, match="weight_only"):
        Quantize(mode="dynamic", dtype="int4")
    with pytest.raises(PassError, match="granularity"):
        Quantize(mode="weight_only", granularity="rows")


def test_default_model_dynamic_int8_end_to_end():
    g = build_default_model()
    feeds = example_inputs(2, 16)
    ref = run(g, feeds)
    res = Quantize(mode="dynamic").run(g)
    assert res.stats["quantized"] == 6  # q, k, v, o projections and the two MLP matmuls
    verify(g)
    assert cosine(run(g, feeds), ref) > 0.999


def embedding_graph():
    b = GraphBuilder("emb")
    ids = b.input("ids", "int64", ["batch", "seq"])
    table = b.constant(rng.standard_normal((100, 64)).astype(np.float32), "table")
    b.output(b.op("Gather", table, ids, name="lookup"))
    return b.graph


@pytest.mark.parametrize(
    ("dtype", "granularity", "min_cos"), [("int8", "channel", 0.9999), ("int4", "group:32", 0.99)]
)
def test_embedding_tables_are_quantized_by_rows(dtype, granularity, min_cos):
    g = embedding_graph()
    feeds = {"ids": rng.integers(0, 100, (3, 7))}
    ref = run(g, feeds)
    res = Quantize(mode="weight_only", dtype=dtype, granularity=granularity).run(g)
    assert res.changed and res.stats["embeddings"] == 1
    verify(g)
    assert "table" not in g.constants and g.value("table_q").dtype.value == dtype
    out = run(g, feeds)
    assert out.shape == ref.shape == (3, 7, 64)
    assert cosine(out, ref) > min_cos
    # int4 clips each group's range for the least squared error, so bound the RMS error.
    rms = np.sqrt(np.mean((out - ref) ** 2, axis=-1)) / np.abs(ref).max(axis=-1)
    assert rms.max() < (0.003 if dtype == "int8" else 0.06)
    untouched = embedding_graph()
    assert not Quantize(mode="weight_only", embeddings=False).run(untouched).changed
    assert "table" in untouched.constants


@pytest.mark.parametrize("mode", ["dynamic", "weight_only", "static"])
def test_fused_linear_is_quantized_like_matmul(mode):
    from ecograph.passes.linear import FuseMatMulAdd
    from ecograph.quant.integer import LowerQDQToInteger

    b = GraphBuilder("lin")
    x = b.input("x", "float32", ["batch", "seq", 32])
    w = b.constant((rng.standard_normal((32, 16)) / 6).astype(np.float32), "w")
    bias = b.constant(rng.standard_normal(16).astype(np.float32), "bias")
    b.output(b.op("Add", b.op("MatMul", x, w), bias, name="y"))
    g = b.graph
    FuseMatMulAdd().run(g)
    assert [n.qualified_op for n in g.nodes] == ["ecograph::Linear"]
    feeds = {"x": rng.standard_normal((2, 5, 32)).astype(np.float32)}
    ref = run(g, feeds)
    calib = [{"x": rng.standard_normal((2, 5, 32)).astype(np.float32)} for _ in range(8)]
    opts = {"calibration_data": calib} if mode == "static" else {}
    res = Quantize(mode=mode, **opts).run(g)
    assert res.stats["quantized"] == 1
    if mode == "static":
        assert LowerQDQToInteger().run(g).stats["lowered"] == 1
    verify(g)
    if mode != "weight_only":
        assert "MatMulInteger" in [n.op_type for n in g.nodes]
    assert g.outputs[0].name == "y"
    assert cosine(run(g, feeds), ref) > 0.999


def test_dynamic_mode_notes_the_convolutions_it_keeps_in_float():
    """Dynamic mode (the "int8" preset) quantizes matmuls only: a CNN's convolutions stay
    float, and the notes say which and what would quantize them, not the silence of a pass
    that quantized one Gemm out of eight nodes."""
    b = GraphBuilder("cnn")
    x = b.input("x", "float32", [1, 3, 8, 8])
    h = x
    for i in range(7):
        w = b.constant(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), f"w{i}")
        h = b.op("Conv", h, w, pads=[1, 1, 1, 1], name=f"conv{i}")
    flat = b.op("Flatten", h)
    wf = b.constant(rng.standard_normal((10, 192)).astype(np.float32), "wf")
    b.output(b.op("Gemm", flat, wf, transB=1, name="fc"))
    g = b.graph
    res = Quantize(mode="dynamic", exclude=["conv6"]).run(g)
    assert res.stats["quantized"] == 1
    assert [n.op_type for n in g.nodes].count("Conv") == 7
    kept = [n for n in res.notes if "kept in float" in n]
    assert len(kept) == 1, res.notes
    assert kept[0].startswith("6 node(s) kept in float: conv0 (Conv), conv1 (Conv)"), kept
    assert "and 1 more" in kept[0] and "conv6" not in kept[0]  # excluded by the user
    assert "'int8-static'" in kept[0]
    assert not [n for n in Quantize(mode="dynamic").run(mlp()).notes if "kept in float" in n]
