"""GPTQ on weights whose K is not a multiple of the group size (the last group is partial), and
GPTQ in sequential groups (each group's Hessians with the groups before it quantized)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ecograph.ir.ops.quant import dequantize_linear
from ecograph.quant.gptq import gptq_quantize


def _dequantized(qt, k: int) -> np.ndarray:
    return dequantize_linear(
        qt.data, qt.scale, qt.zero_point, axis=0, block_size=qt.block_size, output_dtype=0
    )[:k]


def test_partial_last_group_quantizes_like_the_full_ones():
    rng = np.random.default_rng(3)
    k, n, group = 70, 12, 32  # groups of 32, 32 and 6 rows
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((256, k)).astype(np.float32)
    h = x.T @ x / len(x)
    qt = gptq_quantize(w, h, "int4", group_size=group)
    assert qt.data.shape == (k, n) and qt.scale.shape == (3, n) and qt.block_size == group
    # The codes are in range and the layer's output error is that of 4-bit weights (GPTQ
    # minimizes ||X W - X W_q||): well below the weights' own output norm.
    assert int(qt.data.astype(np.int64).min()) >= -8 and int(qt.data.astype(np.int64).max()) <= 7
    err = np.linalg.norm(x @ (w - _dequantized(qt, k))) / np.linalg.norm(x @ w)
    assert err < 0.15, err
    # The 6-row group has its own scales (not those of a neighbouring group).
    assert not np.allclose(qt.scale[2], qt.scale[1])


def _chain(rng, widths=(64, 64, 64, 32)):
    from ecograph.ir import GraphBuilder

    b = GraphBuilder("chain")
    h = b.input("x", "float32", ["batch", widths[0]])
    for i, (k, n) in enumerate(itertools.pairwise(widths)):
        w = b.constant((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), f"w{i}")
        h = b.op("MatMul", h, w, name=f"fc{i}")
        if i < len(widths) - 2:
            h = b.op("Relu", h)
    b.output(h)
    return b.graph


def test_sequential_gptq_takes_each_hessian_with_the_layers_before_quantized(monkeypatch):
    """sequential=3 on three layers: three Hessian passes, each on the graph with the layers
    before it already quantized; layer 2's Hessian is that of its input computed (here, in
    numpy) from layer 1's quantized weights, not from its float ones."""
    from ecograph.ir.ops.quant import dequantize_linear
    from ecograph.quant.quantize import Quantize

    rng = np.random.default_rng(5)
    calib = [{"x": rng.standard_normal((16, 64)).astype(np.float32)} for _ in range(3)]
    options = {"mode": "weight_only", "dtype": "int4", "granularity": "group:32",
               "algorithm": "gptq", "calibration_data": calib}  # fmt: skip
    calls: list[tuple[list[str], int]] = []
    hessians: dict[str, np.ndarray] = {}
    collect = Quantize._collect_hessians

    def spy(self, graph, targets):
        calls.append(([t.node.name for t in targets], len(graph.find_nodes("DequantizeLinear"))))
        found = collect(self, graph, targets)
        hessians.update(found)
        return found

    monkeypatch.setattr(Quantize, "_collect_hessians", spy)
    Quantize(**options).run(_chain(np.random.default_rng(0)))
    assert calls == [(["fc0", "fc1", "fc2"], 0)]
    float_h1 = hessians["fc1"]
    calls.clear()
    g = _chain(np.random.default_rng(0))
    w0 = g.constants["w0"].const_value
    Quantize(**options, sequential=3).run(g)
    assert calls == [(["fc0"], 0), (["fc1"], 1), (["fc2"], 2)]
    dq = g.find_nodes("DequantizeLinear")[0]
    q0 = dequantize_linear(*(v.const_value for v in dq.inputs), axis=0, block_size=32,
                           output_dtype=0)  # fmt: skip
    x1 = np.concatenate([np.maximum(c["x"] @ q0, 0) for c in calib])
    np.testing.assert_allclose(hessians["fc1"], 2 * x1.T @ x1 / len(x1), rtol=1e-4, atol=1e-5)
    assert not np.allclose(hessians["fc1"], float_h1, rtol=1e-4, atol=1e-5)
    assert not np.allclose(q0, w0)


def _branchy(rng):
    """Two layers reading one input (as q/k/v do), a residual, then a last layer."""
    from ecograph.ir import GraphBuilder

    b = GraphBuilder("branchy")
    x = b.input("x", "float32", ["batch", 64])

    def fc(h, i):
        w = b.constant((rng.standard_normal((64, 64)) / 8).astype(np.float32), f"w{i}")
        return b.op("MatMul", h, w, name=f"fc{i}")

    h = b.op("Relu", b.op("Add", fc(x, 0), fc(x, 1)))
    h = b.op("Add", fc(h, 2), h)
    b.output(fc(h, 3))
    return b.graph


@pytest.mark.parametrize(
    "build, groups, names",
    [
        (_branchy, 4, ["fc0", "fc1", "fc2", "fc3"]),  # one layer a group
        (lambda rng: _chain(rng, (64,) * 6), 2, ["fc0", "fc1", "fc2", "fc3", "fc4"]),
    ],
    ids=["branchy-4", "chain-2"],
)
def test_sequential_hessians_equal_a_full_run_of_the_graph_as_it_stands(
    monkeypatch, build, groups, names
):
    """Each group's Hessians (StagedRun: the prefix runs once across groups) equal those of
    `interpret` over the whole graph as it stands when the group is reached: one layer a
    group on a graph with a shared input and a residual, and groups of layers that feed each
    other (the float layers run for a group's own inputs must run again once quantized)."""
    from ecograph.ir import interpret
    from ecograph.quant.quantize import Quantize
    from ecograph.quant.targets import activation

    rng = np.random.default_rng(7)
    calib = [{"x": rng.standard_normal((8, 64)).astype(np.float32)} for _ in range(2)]
    collect = Quantize._collect_hessians
    checked: list[str] = []

    def spy(self, graph, targets):
        found = collect(self, graph, targets)
        for t in targets:
            name = activation(t).name
            xs = np.concatenate([interpret(graph, c, outputs=[name])[name] for c in calib])
            np.testing.assert_allclose(
                found[t.node.name], 2 * xs.T.astype(np.float64) @ xs / len(xs), rtol=1e-6,
                atol=1e-6,
            )  # fmt: skip
            checked.append(t.node.name)
        return found

    monkeypatch.setattr(Quantize, "_collect_hessians", spy)
    g = build(np.random.default_rng(0))
    Quantize(mode="weight_only", dtype="int4", granularity="group:32", algorithm="gptq",
             calibration_data=calib, sequential=groups).run(g)  # fmt: skip
    assert checked == names
    assert len(g.find_nodes("DequantizeLinear")) == len(names)


def test_sequential_must_be_a_positive_group_count():
    import pytest

    from ecograph.passes.core import PassError
    from ecograph.quant.quantize import Quantize

    for bad in (0, -1, True, 1.5):
        with pytest.raises(PassError, match="sequential"):
            Quantize(mode="weight_only", sequential=bad)
