"""Per-token dynamic int8 (Quantize(activations="token"), the "int8" preset) and SmoothQuant
migration (Quantize(smooth=alpha)): structure, the integer parts exactly, the float result
against a numpy model of the scheme (rtol 1e-5) and against float, and the case they exist
for: activation rows of very different magnitudes, where one per-tensor scale fails."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.errors import PassError
from ecograph.ir import GraphBuilder, interpret, verify
from ecograph.quant.presets import quantize_pass
from ecograph.quant.quantize import Quantize, find_targets

rng = np.random.default_rng(0)


def block(k: int = 64, n: int = 96, seq: int = 16, linear_bias: bool = True):
    """x -> MatMul(W1) + b1 -> LayerNormalization -> {MatMul(Wq), MatMul(Wk)} -> Add: a
    transformer-shaped block (two projections share their input, as q/k/v do)."""
    b = GraphBuilder("block")
    x = b.input("x", "float32", ["batch", seq, k])
    w1 = b.constant((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), "w1")
    h = b.op("MatMul", x, w1, name="up")
    if linear_bias:
        h = b.op("Add", h, b.constant(rng.standard_normal(n).astype(np.float32), "b1"))
    gamma = b.constant(rng.uniform(0.5, 1.5, n).astype(np.float32), "gamma")
    beta = b.constant((0.1 * rng.standard_normal(n)).astype(np.float32), "beta")
    h = b.op("LayerNormalization", h, gamma, beta, axis=-1, epsilon=1e-5)
    wq = b.constant((rng.standard_normal((n, k)) / np.sqrt(n)).astype(np.float32), "wq")
    wk = b.constant((rng.standard_normal((n, k)) / np.sqrt(n)).astype(np.float32), "wk")
    q = b.op("MatMul", h, wq, name="q_proj")
    kk = b.op("MatMul", h, wk, name="k_proj")
    b.output(b.op("Add", q, kk))
    return b.graph


def outlier_tokens(batch: int = 2, seq: int = 16, k: int = 64, factor: float = 300.0):
    """Activations whose first token is `factor` times larger than the others (BERT's [CLS] /
    [SEP] rows in the residual stream look like this)."""
    x = rng.standard_normal((batch, seq, k)).astype(np.float32)
    x[:, 0] *= factor
    return x


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run(g, feeds) -> np.ndarray:
    return next(iter(interpret(g, feeds).values()))


def token_model(x: np.ndarray, wq: np.ndarray, w_scale: np.ndarray) -> tuple[np.ndarray, ...]:
    """numpy model of the scheme: (x_q, s_x, int32 accumulator, float result)."""
    amax = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-30))
    s = (amax / np.float32(127)).astype(np.float32)
    xq = np.clip(np.rint(x / s), -127, 127).astype(np.int8)
    acc = np.matmul(xq.astype(np.int64), wq.astype(np.int64))
    assert np.abs(acc).max() < 2**31
    y = (acc.astype(np.int32).astype(np.float32) * s) * w_scale
    return xq, s, acc.astype(np.int32), y


def test_int8_preset_is_per_token_dynamic_with_ffn_down_in_float():
    p = quantize_pass("int8")
    assert (p.mode, p.activations, p.dtype, tuple(p.float_after)) == (
        "dynamic", "token", "int8", ("Gelu",)
    )  # fmt: skip
    assert quantize_pass("int8-dynamic") == p
    p.float_after = ()  # a preset's options are copied, never shared
    assert quantize_pass("int8").float_after == ("Gelu",)


def test_float_after_keeps_matmuls_fed_by_gelu_in_float():
    b = GraphBuilder("ffn")
    x = b.input("x", "float32", ["batch", 8, 32])
    up = b.op("MatMul", x, b.constant(rng.standard_normal((32, 64)).astype(np.float32), "wu"))
    h = b.op("Gelu", up)
    flat = b.op("Reshape", h, b.constant(np.array([-1, 64], np.int64), "shape"))
    b.output(b.op("MatMul", flat, b.constant(rng.standard_normal((64, 32)).astype(np.float32),
                                             "wd"), name="down"))  # fmt: skip
    g = b.graph
    feeds = {"x": rng.standard_normal((2, 8, 32)).astype(np.float32)}
    ref = run(g, feeds)
    res = quantize_pass("int8").run(g)
    verify(g)
    assert res.stats["quantized"] == 1
    assert any("down (MatMul): input from Gelu" in n for n in res.notes)
    assert [n.name for n in g.nodes if n.op_type == "MatMul"] == ["down"]
    assert "wd" in g.constants and "wu" not in g.constants
    assert cosine(run(g, feeds), ref) > 0.999


def test_token_rewrite_structure_and_shared_activation():
    g = block()
    res = Quantize(activations="token").run(g)
    verify(g)
    assert res.stats["quantized"] == 3
    ops = [n.op_type for n in g.nodes]
    assert ops.count("MatMulInteger") == 3 and "MatMul" not in ops
    assert "DynamicQuantizeLinear" not in ops
    # x and the LayerNorm output: each quantized once, however many projections read it.
    assert ops.count("ReduceMax") == 2
    for n in g.nodes:
        if n.op_type == "MatMulInteger":
            a, w = n.input(0), n.input(1)
            assert a is not None and w is not None
            assert (a.dtype.value, w.dtype.value) == ("int8", "int8")
            assert len([i for i in n.inputs if i is not None]) == 2  # symmetric: no zero points
    assert not Quantize(activations="token").run(g).changed  # idempotent


def test_token_integer_parts_are_exact_and_result_matches_the_scheme():
    k, n = 64, 96
    b = GraphBuilder("one")
    x = b.input("x", "float32", ["batch", 16, k])
    w = (rng.standard_normal((k, n)) / 8).astype(np.float32)
    b.output(b.op("MatMul", x, b.constant(w, "w"), name="mm"))
    g = b.graph
    Quantize(activations="token").run(g)
    verify(g)
    feeds = {"x": outlier_tokens(k=k)}
    feeds["x"][1, 3] = 0.0  # a row of zeros: scale stays finite, codes are 0
    mm = next(nd for nd in g.nodes if nd.op_type == "MatMulInteger")
    xq_v, wq_v = mm.input(0), mm.input(1)
    assert xq_v is not None and wq_v is not None and wq_v.const_value is not None
    cast = mm.output.uses[0].node
    rescale = cast.output.uses[0].node  # Mul(float accumulator, s_x)
    scale_v = rescale.input(1)
    w_scale_v = rescale.output.uses[0].node.input(1)  # Mul(., s_w)
    assert scale_v is not None and w_scale_v is not None
    w_scale = w_scale_v.const_value
    assert w_scale is not None and w_scale.shape == (n,)
    names = [xq_v.name, scale_v.name, mm.output.name, g.outputs[0].name]
    got = interpret(g, feeds, outputs=names)
    xq, s, acc, y = token_model(feeds["x"], wq_v.const_value, w_scale)
    np.testing.assert_array_equal(got[scale_v.name], s)
    np.testing.assert_array_equal(got[xq_v.name], xq)
    np.testing.assert_array_equal(got[mm.output.name], acc)
    np.testing.assert_allclose(got[g.outputs[0].name], y, rtol=1e-5, atol=1e-6)
    assert not np.any(got[xq_v.name][1, 3]) and np.all(np.isfinite(got[g.outputs[0].name]))
    assert np.abs(got[xq_v.name]).max() == 127  # every non-zero row reaches the full range


@pytest.mark.parametrize("op", ["Gemm", "Linear"])
def test_token_gemm_and_linear_keep_bias_and_alpha(op):
    k, n = 32, 24
    b = GraphBuilder("g")
    x = b.input("x", "float32", ["batch", k])
    w = (rng.standard_normal((k, n)) / 6).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    if op == "Gemm":
        wt = b.constant(np.ascontiguousarray(w.T), "wt")
        y = b.op("Gemm", x, wt, b.constant(bias, "bias"), transB=1, alpha=0.5, beta=2.0)
    else:
        y = b.op("Linear", x, b.constant(w, "w"), b.constant(bias, "bias"), domain="ecograph")
    b.output(y)
    g = b.graph
    feeds = {"x": rng.standard_normal((5, k)).astype(np.float32)}
    ref = run(g, feeds)
    assert Quantize(activations="token").run(g).stats["quantized"] == 1
    verify(g)
    out = run(g, feeds)
    assert cosine(out, ref) > 0.9995
    np.testing.assert_allclose(out, ref, atol=0.02 * np.abs(ref).max())


def test_per_token_holds_where_per_tensor_fails():
    """One token 300x larger than the rest: per tensor, the other tokens get a handful of
    codes and the LayerNorm after the matmul amplifies their error; per token they keep 8 bits."""
    g = block()
    feeds = {"x": outlier_tokens()}
    ref = run(g, feeds)
    per_tensor, per_token = g.copy(), g.copy()
    Quantize(mode="dynamic").run(per_tensor)
    quantize_pass("int8").run(per_token)
    c_tensor = cosine(run(per_tensor, feeds), ref)
    c_token = cosine(run(per_token, feeds), ref)
    assert c_tensor < 0.99 < 0.999 < c_token, (c_tensor, c_token)


def test_per_token_result_does_not_depend_on_the_batch():
    """A row's scale is its own: a sentence gives the same output alone or in any batch (a
    per-tensor scale is shared by the whole batch, so neighbours change each other's result)."""
    g = block()
    Quantize(activations="token").run(g)
    x = outlier_tokens(batch=3)
    whole = run(g, {"x": x})
    for i in range(3):
        np.testing.assert_array_equal(run(g, {"x": x[i : i + 1]}), whole[i : i + 1])


def test_smoothing_is_exact_in_float_and_moves_outlier_channels_into_weights():
    g = block()
    feeds = {"x": rng.standard_normal((2, 16, 64)).astype(np.float32)}
    feeds["x"][..., 5] *= 40.0  # an outlier channel
    ref = run(g, feeds)
    smoothing = Quantize(activations="token", smooth=0.5, calibration_data=[feeds])
    targets, _ = find_targets(g)
    assert smoothing._smooth(g, targets) == 2  # x, and the LayerNorm output (q and k share it)
    verify(g)
    np.testing.assert_allclose(run(g, feeds), ref, rtol=1e-4, atol=1e-5)  # float: same function
    x_s = next(n for n in g.nodes if n.op_type == "Mul" and n.input(0) is g.inputs[0])
    inv = x_s.input(1)
    assert inv is not None and inv.const_value is not None
    before = np.abs(feeds["x"]).reshape(-1, 64).max(0)
    after = np.abs(feeds["x"] * inv.const_value).reshape(-1, 64).max(0)
    # alpha = 0.5 takes about the square root of the outlier channel's excess range
    assert after[5] / np.median(after) < 0.25 * before[5] / np.median(before)


def test_smoothed_and_quantized_block_stays_close():
    g = block()
    feeds = {"x": rng.standard_normal((2, 16, 64)).astype(np.float32)}
    feeds["x"][..., 5] *= 40.0
    ref = run(g, feeds)
    res = Quantize(activations="token", smooth=0.5, calibration_data=[feeds]).run(g)
    verify(g)
    assert res.stats["smoothed"] == 2 and res.stats["quantized"] == 3
    assert cosine(run(g, feeds), ref) > 0.999


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(activations="row"), "activations="),
        (dict(mode="static", activations="token", calibration_data=[{}]), "mode='dynamic'"),
        (dict(smooth=0.5), "calibration_data"),
        (dict(smooth=1.5, calibration_data=[{}]), "smooth="),
        (dict(mode="weight_only", smooth=0.5, calibration_data=[{}]), "smooth"),
    ],
)
def test_bad_options_say_what_to_do(options, message):
    with pytest.raises(PassError, match=message):
        Quantize(**options)


def test_sensitivity_search_skips_layers_the_template_keeps_in_float():
    from ecograph.quant.sensitivity import layer_sensitivity

    b = GraphBuilder("ffn")
    x = b.input("x", "float32", ["batch", 32])
    up = b.op("MatMul", x, b.constant(rng.standard_normal((32, 64)).astype(np.float32), "wu"),
              name="up")  # fmt: skip
    down = b.constant(rng.standard_normal((64, 32)).astype(np.float32), "wd")
    b.output(b.op("MatMul", b.op("Gelu", up), down, name="down"))
    feeds = [{"x": rng.standard_normal((4, 32)).astype(np.float32)}]
    rows = layer_sensitivity(b.graph, quantize_pass("int8"), feeds)
    assert [r.node for r in rows] == ["up"]
