"""Palettized (dictionary-coded) weights: the PaletteDequantize op, 1-D k-means, the
`Quantize(mode="palette")` pass and its presets, ONNX Runtime and TVM against the interpreter."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ecograph.errors import EcographError, PassError, TypeInferenceError
from ecograph.ir import Graph, GraphBuilder, interpret, verify
from ecograph.ir.ops.palette import palette_dequantize
from ecograph.ir.stats import graph_stats
from ecograph.models import build_default_model, example_inputs
from ecograph.passes.testing import run_checked
from ecograph.quant.palettize import kmeans_1d, palettize_tensor
from ecograph.quant.presets import quantize_pass
from ecograph.quant.quantize import Quantize
from ecograph.quant.sensitivity import quantize_within_budget

rng = np.random.default_rng(11)
U4 = ml_dtypes.uint4


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ----------------------------------------------------------------- the op


def test_kernel_matches_a_hand_computed_lookup():
    idx = np.array([[0, 15, 3], [2, 1, 0]], dtype=U4)
    palette = np.arange(32, dtype=np.float32).reshape(2, 16) * 10  # group 1 starts at 160
    # axis=1, two columns per palette: columns 0, 1 read palette 0, column 2 palette 1
    got = palette_dequantize(idx, palette, axis=1, group_size=2)
    np.testing.assert_array_equal(got, [[0, 150, 190], [20, 10, 160]])
    # axis=0, one row per palette: row 0 palette 0, row 1 palette 1
    got = palette_dequantize(idx, palette, axis=0, group_size=1)
    np.testing.assert_array_equal(got, [[0, 150, 30], [180, 170, 160]])
    table = np.linspace(-1, 1, 256, dtype=np.float32)[None, :]
    codes = np.array([[255, 0], [128, 7]], np.uint8)
    got = palette_dequantize(codes, table, axis=0, group_size=0)
    np.testing.assert_array_equal(got, [[1.0, -1.0], [table[0, 128], table[0, 7]]])


def _lookup_graph(idx: np.ndarray, palette: np.ndarray, axis: int, group: int) -> Graph:
    b = GraphBuilder()
    x = b.input("x", "float32", list(idx.shape))
    w = b.op("PaletteDequantize", b.constant(idx, "codes"), b.constant(palette, "palette"),
             domain="ecograph", axis=axis, group_size=group)  # fmt: skip
    b.output(b.op("Mul", x, w))
    return b.graph


def test_type_inference_checks_palette_size_and_groups():
    g = _lookup_graph(np.zeros((4, 6), U4), np.zeros((3, 16), np.float32), 1, 2)
    verify(g)
    assert g.outputs[0].type.dtype == "float32"
    with pytest.raises(TypeInferenceError, match="16 entries"):
        _lookup_graph(np.zeros((4, 6), U4), np.zeros((3, 256), np.float32), 1, 2)
    with pytest.raises(TypeInferenceError, match="need 2"):
        _lookup_graph(np.zeros((4, 6), np.uint8), np.zeros((3, 256), np.float32), 0, 2)
    with pytest.raises(TypeInferenceError, match="uint4"):
        _lookup_graph(np.zeros((4, 6), np.int8), np.zeros((1, 256), np.float32), 0, 0)


# ---------------------------------------------------------------- k-means


def test_weights_from_a_16_value_set_are_reproduced_exactly():
    values = rng.standard_normal(16).astype(np.float32)
    w = values[rng.integers(0, 16, (64, 48))]
    pt = palettize_tensor(w, 4)
    assert pt.indices.dtype == U4 and pt.palette.shape == (1, 16)
    np.testing.assert_array_equal(pt.dequantize(), w)
    # per group of 8 output channels (axis 1), each group drawing from its own 16 values
    sets = rng.standard_normal((6, 16)).astype(np.float32)
    grouped = np.stack([sets[c // 8][rng.integers(0, 16, 64)] for c in range(48)], axis=1)
    pg = palettize_tensor(grouped, 4, axis=1, group_size=8)
    assert pg.palette.shape == (6, 16)
    np.testing.assert_array_equal(pg.dequantize(), grouped)


def test_kmeans_beats_a_uniform_grid_and_more_centroids_help():
    x = rng.standard_normal(20000)
    centroids, codes = kmeans_1d(x, 16)
    assert np.all(np.diff(centroids) > 0)
    # every value is coded by its nearest centroid
    nearest = np.abs(x[:, None] - centroids[None, :]).argmin(axis=1)
    np.testing.assert_array_equal(codes, nearest)
    mse16 = np.mean((centroids[codes] - x) ** 2)
    grid = np.linspace(x.min(), x.max(), 16)  # uniform 4-bit quantization of the same range
    mse_grid = np.mean((grid[np.abs(x[:, None] - grid).argmin(axis=1)] - x) ** 2)
    assert mse16 < 0.5 * mse_grid
    # Lloyd-Max for N(0, 1) at 16 levels: MSE 0.009497 (Max 1960); ours is close to it
    assert mse16 < 0.0105
    c256, codes256 = kmeans_1d(x, 256)
    assert np.mean((c256[codes256] - x) ** 2) < mse16 / 50
    again = kmeans_1d(x, 16)
    np.testing.assert_array_equal(again[0], centroids)  # deterministic


# ------------------------------------------------------------------- pass


def _mlp(k: int = 64, n: int = 128) -> Graph:
    b = GraphBuilder()
    x = b.input("x", "float32", ["b", k])
    w1 = b.constant((rng.standard_normal((k, n)) / 8).astype(np.float32), "w1")
    w2 = b.constant((rng.standard_normal((n, k)) / 8).astype(np.float32), "w2")
    h = b.op("Relu", b.op("MatMul", x, w1, name="up"))
    b.output(b.op("Gemm", h, w2, transB=0, name="down"))
    return b.graph


@pytest.mark.parametrize(("bits", "granularity"), [(4, "group:16"), (8, "tensor"), (4, "channel")])
def test_pass_under_the_differential_check(bits, granularity):
    g = _mlp()
    w1 = g.constants["w1"].const_value.copy()  # type: ignore[union-attr]
    feeds = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    want = interpret(g, feeds)
    result = run_checked(Quantize(mode="palette", palette_bits=bits, granularity=granularity), g,
                         feeds)  # fmt: skip
    (record,) = result.records
    assert record.changed and record.result is not None
    assert record.result.stats["quantized"] == 2
    assert "w1" not in g.constants and len(g.find_nodes("PaletteDequantize")) == 2
    # the lookup in the graph is the k-means of the weight, output channels on axis 1
    group = {"tensor": 0, "channel": 1}.get(granularity, 16)
    expected = palettize_tensor(w1, bits, axis=1, group_size=group).dequantize()
    lookup = g.find_nodes("PaletteDequantize")[0]
    inner = interpret(g, feeds, outputs=[lookup.outputs[0].name])[lookup.outputs[0].name]
    np.testing.assert_array_equal(inner, expected)
    assert _cosine(interpret(g, feeds)[g.outputs[0].name], want[g.outputs[0].name]) > 0.99


def test_bad_options_are_typed_errors():
    with pytest.raises(PassError, match="palette_bits=3"):
        Quantize(mode="palette", palette_bits=3)
    with pytest.raises(PassError, match="k-means"):
        Quantize(mode="palette", algorithm="gptq", calibration_data=[{}])


def test_presets():
    p4, p8 = quantize_pass("palette4"), quantize_pass("palette8")
    assert (p4.mode, p4.palette_bits, p4.granularity) == ("palette", 4, "group:16")
    assert (p8.mode, p8.palette_bits, p8.granularity) == ("palette", 8, "tensor")
    with pytest.raises(EcographError, match="palette4"):
        quantize_pass("palette3")


def test_bytes_are_codes_at_4_or_8_bits_plus_the_palette():
    k, n = 64, 128
    for bits, gran, groups in ((4, "group:16", n // 16), (8, "tensor", 1), (4, "channel", n)):
        b = GraphBuilder()
        x = b.input("x", "float32", ["b", k])
        w = b.constant(rng.standard_normal((k, n)).astype(np.float32), "w")
        b.output(b.op("MatMul", x, w))
        g = b.graph
        Quantize(mode="palette", palette_bits=bits, granularity=gran).run(g)
        stats = graph_stats(g)
        assert stats.parameter_bytes == k * n * bits // 8 + groups * (1 << bits) * 4
        assert stats.bytes_by_dtype["uint4" if bits == 4 else "uint8"] == k * n * bits // 8


def test_embedding_table_is_palettized_after_the_row_gather():
    b = GraphBuilder()
    ids = b.input("ids", "int64", ["b", 3])
    table = rng.standard_normal((50, 32)).astype(np.float32)
    b.output(b.op("Gather", b.constant(table, "table"), ids, axis=0))
    g = b.graph
    result = Quantize(mode="palette", palette_bits=8, granularity="group:8").run(g)
    assert result.stats["embeddings"] == 1 and "table" not in g.constants
    verify(g)
    feeds = {"ids": np.array([[0, 49, 7], [3, 3, 12]])}
    expected = palettize_tensor(table, 8, axis=1, group_size=8).dequantize()[feeds["ids"]]
    np.testing.assert_array_equal(interpret(g, feeds)[g.outputs[0].name], expected)


# ------------------------------------------------------ accuracy budget


def test_budget_keeps_the_most_sensitive_layers_in_float():
    graph = build_default_model()
    feeds = [example_inputs(batch=2, seq=16)]
    template = quantize_pass("palette4")
    loose = quantize_within_budget(graph, template, feeds, min_cosine=-1.0)
    assert loose.kept_float == []
    all_palettized = loose.steps[0].cosine
    budget = all_palettized + (1 - all_palettized) / 2
    strict = quantize_within_budget(graph, template, feeds, min_cosine=budget)
    assert strict.kept_float and strict.kept_float[0] == strict.sensitivity[0].node
    assert strict.cosine >= budget
    ref = interpret(graph, feeds[0])
    out = interpret(strict.graph, feeds[0])
    assert _cosine(out[graph.outputs[0].name], ref[graph.outputs[0].name]) >= budget
    kept = {n.name for n in strict.graph.nodes if n.name in strict.kept_float}
    assert kept == set(strict.kept_float)
    for node in strict.graph.nodes:
        if node.name in strict.kept_float:
            assert node.inputs[1].is_constant  # type: ignore[union-attr]


# ------------------------------------------------------- ONNX Runtime


def test_onnx_export_runs_in_onnx_runtime_exactly():
    ort = pytest.importorskip("onnxruntime")
    from ecograph.frontend.onnx_export import to_onnx

    cases = [
        (rng.integers(0, 16, (6, 10)).astype(U4), 16, 1, 4),  # groups of 4 columns, last of 2
        (rng.integers(0, 256, (6, 10)).astype(np.uint8), 256, 0, 2),
        (rng.integers(0, 256, (3, 4, 5)).astype(np.uint8), 256, 0, 0),
    ]
    for idx, entries, axis, group in cases:
        groups = 1 if group == 0 else -(-idx.shape[axis] // group)
        palette = rng.standard_normal((groups, entries)).astype(np.float32)
        g = _lookup_graph(idx, palette, axis, group)
        feeds = {"x": np.ones(idx.shape, np.float32)}
        sess = ort.InferenceSession(to_onnx(g).SerializeToString())
        (got,) = sess.run(None, feeds)
        np.testing.assert_array_equal(got, interpret(g, feeds)[g.outputs[0].name])
        np.testing.assert_array_equal(got, palette_dequantize(idx, palette, axis=axis,
                                                              group_size=group))  # fmt: skip


def test_palettized_model_in_onnx_runtime_matches_the_interpreter():
    ort = pytest.importorskip("onnxruntime")
    from ecograph.frontend.onnx_export import to_onnx

    g = build_default_model()
    quantize_pass("palette4").run(g)
    feeds = example_inputs(batch=2, seq=16)
    sess = ort.InferenceSession(to_onnx(g).SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, feeds), strict=True))
    for name, want in interpret(g, feeds).items():
        # float32 sums in another order: 1e-5 of the output's scale
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_palettized_embedding_with_a_symbolic_batch_exports():
    ort = pytest.importorskip("onnxruntime")
    from ecograph.frontend.onnx_export import to_onnx

    b = GraphBuilder()
    ids = b.input("ids", "int64", ["batch", 3])
    table = rng.standard_normal((50, 32)).astype(np.float32)
    b.output(b.op("Gather", b.constant(table, "table"), ids, axis=0))
    g = b.graph
    Quantize(mode="palette", palette_bits=8, granularity="group:8").run(g)
    sess = ort.InferenceSession(to_onnx(g).SerializeToString())
    for batch in (1, 4):
        feeds = {"ids": rng.integers(0, 50, (batch, 3))}
        (got,) = sess.run(None, feeds)
        np.testing.assert_array_equal(got, interpret(g, feeds)[g.outputs[0].name])


# ---------------------------------------------------------------- TVM


def test_tvm_x86_build_matches_the_interpreter():
    pytest.importorskip("tvm")
    import tvm
    from tvm import relax

    from ecograph.backends.tvm import build, targets
    from ecograph.backends.tvm.driver import lower_graph

    g = _mlp()  # 64 x 128 weights: above the lowering-time folding limit, so lowered by TVM
    Quantize(mode="palette", palette_bits=4, granularity="group:16").run(g)
    # each lookup is inside its matmul kernel (ecograph::PaletteMatMul): no separate take
    script = lower_graph(g, targets.resolve({"kind": "llvm"})).mod.script()
    assert "R.take" not in script and script.count("palette_matmul") >= 2
    result = build.build_module(g, "x86", keep_params=False)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())  # pyright: ignore[reportArgumentType]
    for batch in (1, 5):
        feeds = {"x": rng.standard_normal((batch, 64)).astype(np.float32)}
        got = vm["main"](tvm.runtime.tensor(feeds["x"])).numpy()
        want = interpret(g, feeds)[g.outputs[0].name]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_optimize_palette4_with_an_accuracy_budget(tmp_path):
    pytest.importorskip("tvm")
    import ecograph

    graph, feeds = build_default_model(), example_inputs(batch=2, seq=16)
    res = ecograph.optimize(graph, feeds, quantize="palette4", accuracy_budget=0.998,
                            out_dir=tmp_path, measure=False, cache=False)  # fmt: skip
    assert res.report.accuracy["cosine"] >= 0.998
    assert res.report.optimized.bytes < res.report.original.bytes  # some layers palettized
    (search,) = [n for n in res.report.notes if n.startswith("accuracy budget: cosine >= 0.998")]
    steps = [line.split() for line in search.splitlines() if " in float [" in line]
    # palette4 on every layer misses the budget here (~0.995); the last step keeps >= 1 float
    assert float(steps[0][-1]) < 0.998 <= float(steps[-1][-1]) and int(steps[-1][0]) >= 1
    got = np.asarray(res.module(**feeds))
    want = next(iter(interpret(graph, feeds).values()))
    assert _cosine(got, want) >= 0.998
