"""The CPU conv kernels: the lowering's two forms (by output channels with packed weights, by
output width for depthwise / grouped convs) scheduled by the conv rule, built through the CPU
pipeline for several x86 targets and compared with the reference interpreter; the rule
leaves other kernels alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm
import tvm_ffi
from tvm import relax, s_tir, te, tirx

from ecograph.backends.tvm import build, targets
from ecograph.backends.tvm.ops.conv import conv_kernel
from ecograph.backends.tvm.schedules import Conv
from ecograph.backends.tvm.schedules.conv import best_tile, channel_tile, width_channels
from ecograph.backends.tvm.schedules.matmul import STACK_BYTES
from ecograph.ir import Graph
from tests.backends.schedule_cases import I64
from tests.backends.tvm_helpers import assert_matches

TARGETS = ["x86", "x86:haswell", "x86:generic"]


@dataclass
class Case:
    """One Conv node (NCHW input, constant weights) and what follows it in the graph."""

    shape: tuple[int, int, int, int]
    out_channels: int
    kernel: int
    stride: int = 1
    pads: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    group: int = 1
    dilation: int = 1
    bias: bool = True
    relu: bool = False
    residual: bool = False
    symbolic_batch: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)


CASES = {
    # ResNet's basic block: 3x3 16 -> 16, bias, residual add, ReLU fused into the conv kernel
    "block-3x3": Case((1, 16, 16, 16), 16, 3, pads=[1] * 4, relu=True, residual=True),
    # the stem: 7x7 / 2 with padding 3 from 3 channels, 24 output channels, odd image
    "stem-7x7-s2": Case((1, 3, 19, 21), 24, 7, stride=2, pads=[3] * 4, relu=True),
    "pointwise-1x1": Case((2, 5, 9, 11), 24, 1),
    # a row of one whole vector on AVX-512: by width there (no copy: unpadded, unit stride)
    "pointwise-1x1-row": Case((1, 16, 6, 16), 24, 1, relu=True),
    # ResNet-50's bottleneck 1x1 convs: many input channels, so by channels on AVX-512 too,
    # over rows of whole vectors and over 14 columns (most of a vector), with the residual add
    "pointwise-1x1-deep-row": Case((1, 96, 3, 16), 32, 1, relu=True),
    "pointwise-1x1-14": Case((1, 80, 14, 14), 48, 1, relu=True, residual=True),
    "shortcut-1x1-s2": Case((1, 16, 15, 15), 32, 1, stride=2, bias=False),
    # fewer output channels than half a vector on AVX-512: by width, columns split by stride
    "few-channels-s2": Case((1, 5, 13, 13), 5, 3, stride=2, pads=[1] * 4, relu=True),
    "depthwise-3x3": Case((1, 24, 14, 14), 24, 3, pads=[1] * 4, group=24, relu=True),
    "depthwise-3x3-s2": Case((2, 24, 15, 15), 24, 3, stride=2, pads=[1] * 4, group=24),
    "depthwise-5x5-wide": Case((1, 8, 6, 70), 8, 5, pads=[2] * 4, group=8, residual=True),
    "depthwise-multiplier": Case((1, 3, 9, 9), 6, 3, pads=[1] * 4, group=3),
    "grouped-blocks": Case((1, 16, 10, 10), 32, 3, pads=[1] * 4, group=2, relu=True),
    "grouped-odd": Case((1, 6, 7, 9), 10, 3, pads=[1] * 4, group=2),
    "symbolic-batch": Case((2, 3, 12, 12), 16, 3, pads=[1] * 4, residual=True, symbolic_batch=True),
    "dilated": Case((1, 4, 11, 11), 16, 3, pads=[2] * 4, dilation=2),
    "asymmetric-pads": Case((1, 5, 8, 10), 24, 5, pads=[1, 0, 2, 3], stride=2),
    "same-upper": Case((1, 4, 9, 7), 16, 4, attrs={"auto_pad": "SAME_UPPER"}, bias=False),
    "1x1-padded": Case((1, 8, 5, 5), 16, 1, pads=[1] * 4, relu=True),
    # no padding, but columns padded to whole tiles: guarded (3 wide) or copied (5 wide) input
    "odd-columns-3x3": Case((1, 8, 5, 19), 16, 3, relu=True),
    "odd-columns-5x5": Case((1, 4, 9, 21), 16, 5),
}


def conv_graph(case: Case) -> tuple[Graph, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    n, c, h, w = case.shape
    g = Graph("conv_case")
    x = g.add_input("x", "float32", ["batch" if case.symbolic_batch else n, c, h, w])
    feeds = {"x": rng.uniform(-1, 1, case.shape).astype(np.float32)}
    k = case.kernel
    weight = rng.uniform(-1, 1, (case.out_channels, c // case.group, k, k)).astype(np.float32)
    inputs = [x, g.add_constant(weight, "w")]
    if case.bias:
        inputs.append(g.add_constant(rng.uniform(-1, 1, case.out_channels).astype(np.float32), "b"))
    attrs = {"kernel_shape": [k, k], "strides": [case.stride] * 2, "group": case.group,
             "dilations": [case.dilation] * 2, **case.attrs}  # fmt: skip
    if "auto_pad" not in attrs:
        attrs["pads"] = case.pads
    y = g.add_node("Conv", inputs, attrs).outputs[0]
    if case.residual:
        shape = [int(d) for d in y.type.shape[1:]]
        r = g.add_input("r", "float32", [x.type.shape[0], *shape])
        feeds["r"] = rng.uniform(-1, 1, (n, *shape)).astype(np.float32)
        y = g.add_node("Add", [y, r], {}).outputs[0]
    if case.relu:
        y = g.add_node("Relu", [y], {}).outputs[0]
    g.set_outputs([y])
    return g, feeds


def run_built(result: build.BuildResult, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in result.lowered.input_names])
    return [out.numpy()]


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("name", list(CASES))
def test_conv_kernel_matches_interpreter(name, preset):
    graph, feeds = conv_graph(CASES[name])
    spec = targets.resolve(preset)
    node = graph.nodes[0]
    assert conv_kernel(node, spec) is not None, "the lowering left the conv to Relax"
    result = build.build_module(graph, spec, keep_params=False)
    convs = {k: r for k, r in result.kernels.items() if "conv2d" in k}
    assert list(convs.values()) == ["conv"], result.kernels  # one kernel, epilogue fused
    assert_matches(graph, feeds, run_built(result, feeds))


def fused_conv_kernel(graph: Graph, spec: targets.TargetSpec) -> tirx.PrimFunc:
    """The graph's conv kernel after legalization and fusion, as the CPU pipeline has it."""
    from ecograph.backends.tvm.driver import lower_graph

    mod = lower_graph(graph, spec).mod
    fuse = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
            relax.transform.FuseOps(), relax.transform.FuseTIR()]  # fmt: skip
    mod = tvm.transform.Sequential(fuse)(mod)
    (func,) = [f for gv, f in mod.functions_items() if "conv2d" in gv.name_hint]
    return func


@pytest.mark.parametrize("preset", ["x86:skylake-avx512", "x86:haswell"])
@pytest.mark.parametrize("name", ["block-3x3", "stem-7x7-s2", "depthwise-3x3-s2", "grouped-odd"])
def test_accumulators_on_the_stack_and_vector_loops_unpredicated(name, preset):
    spec = targets.resolve(preset)
    graph, _ = conv_graph(CASES[name])
    sch = Conv(spec).apply(fused_conv_kernel(graph, spec), None, False)
    assert sch is not None
    # The tile: the conv block writes one buffer under STACK_BYTES (TVM 0.27 keeps such
    # "global" buffers on the stack), and no block under a vectorized loop has a predicate.
    tiles: list[Any] = []
    predicated: list[str] = []
    vectorized: list[Any] = []

    def block(node: Any) -> None:
        if node.name_hint.startswith("conv") and node.name_hint != "conv_out":
            tiles.extend(w.source for w in node.writes)

    def vector_loop(loop: Any) -> None:
        if loop.kind != tirx.ForKind.VECTORIZED:
            return
        vectorized.append(loop)

        def realize(r: Any) -> None:
            if not (isinstance(r.predicate, tirx.IntImm) and int(r.predicate.value) == 1):
                predicated.append(r.block.name_hint)

        tvm_ffi.structural_walk(loop, (s_tir.SBlockRealize, realize))

    tvm_ffi.structural_walk(sch.mod["main"].body, [(s_tir.SBlock, block), (tirx.For, vector_loop)])
    assert tiles
    for buf in tiles:
        size = int(np.prod([int(d) for d in buf.shape])) * 4
        assert size < STACK_BYTES, (buf.name, buf.shape)
    assert vectorized and predicated == []


def test_by_channels_and_by_width_forms_follow_the_target():
    def forms(preset: str) -> dict[str, tuple[bool, int]]:
        spec = targets.resolve(preset)
        found = {}
        for name in ("block-3x3", "stem-7x7-s2", "few-channels-s2", "depthwise-3x3",
                     "grouped-blocks", "grouped-odd", "pointwise-1x1",
                     "pointwise-1x1-row", "pointwise-1x1-deep-row",
                     "pointwise-1x1-14"):  # fmt: skip
            graph, _ = conv_graph(CASES[name])
            k = conv_kernel(graph.nodes[0], spec)
            assert k is not None
            found[name] = (k.by_channels, k.block)
        return found

    assert forms("x86:skylake-avx512") == {  # 16 lanes, 32 registers
        "block-3x3": (True, 16),  # by width it would read a padded copy (prefers_width)
        "stem-7x7-s2": (True, 16),
        "few-channels-s2": (False, 0),  # 5 channels: under half a vector
        "depthwise-3x3": (False, 0),
        "grouped-blocks": (True, 16),  # 16 output channels per group: one vector
        "grouped-odd": (False, 0),
        "pointwise-1x1": (True, 16),  # 11 columns: not whole vectors
        "pointwise-1x1-row": (False, 0),  # 16 input channels over one whole vector
        "pointwise-1x1-deep-row": (True, 16),  # 96 input channels
        "pointwise-1x1-14": (True, 16),  # by width 2.4x slower for ResNet-50's 1024 -> 256
    }
    assert forms("x86:haswell") == {  # 8 lanes, 16 registers: two-vector blocks
        "block-3x3": (True, 16),
        "stem-7x7-s2": (True, 8),  # 24 channels: not a multiple of two vectors
        "few-channels-s2": (True, 8),
        "depthwise-3x3": (False, 0),
        "grouped-blocks": (True, 16),
        "grouped-odd": (False, 0),
        "pointwise-1x1": (True, 8),
        "pointwise-1x1-row": (True, 8),
        "pointwise-1x1-deep-row": (True, 16),
        "pointwise-1x1-14": (True, 16),
    }


@pytest.mark.parametrize("preset", ["x86:skylake-avx512", "x86:haswell", "x86:generic", "arm"])
@pytest.mark.parametrize("columns", [4, 8, 17, 32, 56])
def test_tiles_stay_on_the_stack(preset, columns):
    spec = targets.resolve(preset)
    lanes = spec.vector_bits // 32
    for block in (lanes, 2 * lanes):
        owb = channel_tile(spec, block, columns)
        assert block * owb * 4 < STACK_BYTES
        assert 1 <= owb <= columns
    t = width_channels(spec, 24, min(columns, 4 * lanes))
    assert t * min(columns, 4 * lanes) * 4 < STACK_BYTES and 24 % t == 0


def test_avx512_stem_tiles_keep_the_input_columns_in_registers():
    # ResNet-18's stem (7x7 / 2, 112 output columns) on AVX-512: 14 columns would need
    # 14 accumulators + 33 input columns + a weight vector (spilled: 2.2-2.4 ms); 8 fit in 32
    # registers (1.6-1.8 ms). A 3x3 conv of unit stride keeps its 14; AVX2 keeps its tiles.
    avx512, avx2 = targets.resolve("x86:skylake-avx512"), targets.resolve("x86:haswell")
    assert channel_tile(avx512, 16, 112, 2, 7) == 8
    assert channel_tile(avx512, 16, 112) == 14
    assert channel_tile(avx512, 16, 56, 1, 3) == 14
    assert channel_tile(avx512, 16, 112, 2, 3) == 8  # fits 10: the divisor 8
    assert channel_tile(avx2, 16, 112, 2, 7) == channel_tile(avx2, 16, 112) == 4
    # the schedule reads (stride, kernel columns) from the kernel and agrees with the lowering
    graph, feeds = conv_graph(Case((1, 3, 20, 224), 16, 7, stride=2, pads=[3] * 4, relu=True))
    for spec, tile in ((avx512, 8), (avx2, 4)):
        func = fused_conv_kernel(graph, spec)
        rule = Conv(spec)
        found = rule._find(s_tir.Schedule(func))
        assert found is not None and found[0].window == (2, 7)
        k = conv_kernel(graph.nodes[0], spec)
        assert k is not None and k.ow_tile == tile and rule.tiles(found[0]) == (k.block, tile)
    result = build.build_module(graph, targets.resolve("x86"), keep_params=False)
    assert_matches(graph, feeds, run_built(result, feeds))


def test_best_tile_prefers_divisors_then_least_padding():
    assert best_tile(32, 15) == 8
    assert best_tile(16, 15) == 8
    assert best_tile(17, 15) == 9  # 18 columns computed, one padded
    assert best_tile(6, 15) == 6


def test_non_constant_weights_keep_relax_conv_and_run():
    # A weight that is a graph input: TOPI's conv; the rule may schedule it by width.
    rng = np.random.default_rng(0)
    g = Graph("conv_input_weight")
    x = g.add_input("x", "float32", [1, 4, 9, 9])
    w = g.add_input("w", "float32", [8, 4, 3, 3])
    y = g.add_node("Conv", [x, w], {"pads": [1] * 4}).outputs[0]
    g.set_outputs([y])
    feeds = {"x": rng.uniform(-1, 1, (1, 4, 9, 9)).astype(np.float32),
             "w": rng.uniform(-1, 1, (8, 4, 3, 3)).astype(np.float32)}  # fmt: skip
    spec = targets.resolve("x86")
    assert conv_kernel(g.nodes[0], spec) is None
    result = build.build_module(g, spec, keep_params=False)
    assert_matches(g, feeds, run_built(result, feeds))


def _topi_like_conv(stride: int) -> tirx.PrimFunc:
    x = te.placeholder((I64(1), I64(4), I64(10), I64(10)), "float32", name="x")
    w = te.placeholder((I64(8), I64(4), I64(3), I64(3)), "float32", name="w")
    rc = te.reduce_axis((I64(0), I64(4)), "rc")
    ry = te.reduce_axis((I64(0), I64(3)), "ry")
    rx = te.reduce_axis((I64(0), I64(3)), "rx")
    size = (10 - 3) // stride + 1
    y = te.compute(
        (I64(1), I64(8), I64(size), I64(size)),
        lambda n, f, i, j: te.sum(
            x[n, rc, i * stride + ry, j * stride + rx] * w[f, rc, ry, rx], axis=[rc, ry, rx]
        ),
        name="conv",
    )
    return te.create_prim_func([x, w, y])


def test_rule_schedules_unit_stride_topi_convs_by_width():
    spec = targets.resolve("x86")
    func = _topi_like_conv(1)
    sch = Conv(spec).apply(func, None, False)
    assert sch is not None
    lib = tvm.compile(sch.mod, target=spec.tvm_target())
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1, 1, (1, 4, 10, 10)).astype(np.float32)
    ws = rng.uniform(-1, 1, (8, 4, 3, 3)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((1, 8, 8, 8), np.float32))
    lib["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(ws), out)
    windows = np.lib.stride_tricks.sliding_window_view(xs, (3, 3), axis=(2, 3))
    want = np.einsum("ncijyx,fcyx->nfij", windows, ws)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


def test_rule_declines_what_is_not_a_conv():
    spec = targets.resolve("x86")
    rule = Conv(spec)
    # strided columns in a plain (unpacked) conv: no unit-stride vector along the width
    assert rule.apply(_topi_like_conv(2), None, False) is None
    x = te.placeholder((I64(1), I64(4), I64(8), I64(8)), "float32", name="x")
    # a max pool: a reduction, but no product
    ry = te.reduce_axis((I64(0), I64(2)), "ry")
    rx = te.reduce_axis((I64(0), I64(2)), "rx")
    pool = te.compute(
        (I64(1), I64(4), I64(4), I64(4)),
        lambda n, c, i, j: te.max(x[n, c, i * 2 + ry, j * 2 + rx], axis=[ry, rx]),
    )
    assert rule.apply(te.create_prim_func([x, pool]), None, False) is None
    # a matrix product (one reduction, two spatial iters)
    a = te.placeholder((I64(8), I64(16)), "float32", name="a")
    b = te.placeholder((I64(16), I64(32)), "float32", name="b")
    k = te.reduce_axis((I64(0), I64(16)), "k")
    mm = te.compute((I64(8), I64(32)), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k))
    assert rule.apply(te.create_prim_func([a, b, mm]), None, False) is None
    # element-wise only
    relu = te.compute(x.shape, lambda *ix: te.max(x(*ix), tirx.const(0.0, "float32")))
    assert rule.apply(te.create_prim_func([x, relu]), None, False) is None
