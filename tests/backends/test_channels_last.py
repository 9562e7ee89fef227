"""Channels-last regions between int8 convolutions (backends/tvm/channels_last.py).

Small residual CNNs are quantized int8-static (their convolutions become ConvInteger, run
channels-last by ops/conv.py), then lowered and built for x86. The pass must remove the
transposes between the convolutions where every op on the way can run channels-last, keep them
where one cannot, and change no bit of an element-wise or pooled result: the build with the
pass is compared with the build without it (bit for bit but for reductions, whose float sums
may add in another order) and with the reference interpreter.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm
from tvm import relax, tirx

from ecograph.backends.tvm import build, channels_last, targets
from ecograph.backends.tvm.channels_last import TO_NCHW, TO_NHWC
from ecograph.backends.tvm.driver import lower_graph
from ecograph.ir import Graph, Value, interpret
from ecograph.passes import PassManager
from ecograph.quant.integer import LowerQDQToInteger
from ecograph.quant.presets import quantize_pass
from tests.backends.test_schedules_conv import run_built
from tests.backends.tvm_helpers import assert_matches, relax_calls

ON_X86 = os.uname().machine == "x86_64"
C, H, W = 16, 12, 10  # 16 channels: the convolutions unfold channels-last (ops/matmul.py)


def _conv(g: Graph, x: Value, rng: np.random.Generator, name: str, channels: int = C) -> Value:
    w = rng.standard_normal((C, channels, 3, 3)) * 0.2
    w = g.add_constant(w.astype(np.float32), name + "_w")
    b = g.add_constant((rng.standard_normal(C) * 0.1).astype(np.float32), name + "_b")
    return g.add_node("Conv", [x, w, b], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}).output


def _const(g: Graph, array: np.ndarray, name: str) -> Value:
    return g.add_constant(array.astype(np.float32), name)


def residual_cnn(*, blocked: bool = False) -> Graph:
    """conv -> relu -> max pool -> conv -> relu -> conv -> + pool -> relu, then a spatial mask
    ([1, 1, H, W]: constant along the channels), the mean over the channels (keepdims) times
    the activations, a global average pool and a flatten: every op can run channels-last.
    The masked activations are a second output (read NCHW).

    `blocked`: the mask varies along W only ([W]) and the residual sum also adds an NCHW graph
    input, and an average pool replaces the max pool: the mask and the input would have to be
    transposed, so the activations from there on stay NCHW; the pooled output also leaves the
    graph NCHW."""
    rng = np.random.default_rng(3)
    g = Graph("residual_cnn")
    x = g.add_input("x", "float32", ["N", C, H, W])
    y = g.add_node("Relu", [_conv(g, x, rng, "c1")]).output
    pool = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    p = g.add_node("AveragePool" if blocked else "MaxPool", [y], pool).output
    y = g.add_node("Relu", [_conv(g, p, rng, "c2")]).output
    y = g.add_node("Add", [_conv(g, y, rng, "c3"), p]).output
    if blocked:
        extra = g.add_input("extra", "float32", ["N", C, H // 2, W // 2])
        y = g.add_node("Add", [y, extra]).output
    y = g.add_node("Relu", [y]).output
    mask = rng.uniform(0.5, 1.5, W // 2 if blocked else (1, 1, H // 2, W // 2))
    y = g.add_node("Mul", [y, _const(g, mask, "mask")]).output
    masked = y
    axes = g.add_constant(np.array([1], np.int64), "axes")
    mean = g.add_node("ReduceMean", [y, axes], {"keepdims": 1}).output
    y = g.add_node("Mul", [y, mean]).output
    gap = g.add_node("GlobalAveragePool", [y]).output
    out = g.add_node("Flatten", [gap]).output
    g.set_outputs([out, p] if blocked else [out, masked])
    return g


def concat_cnn() -> Graph:
    """conv -> relu, its conv, both concatenated along the channels (DenseNet-style) -> relu
    -> a conv of the 32 channels: a graph output, NCHW."""
    rng = np.random.default_rng(4)
    g = Graph("concat_cnn")
    x = g.add_input("x", "float32", ["N", C, H, W])
    y = g.add_node("Relu", [_conv(g, x, rng, "c1")]).output
    y = g.add_node("Concat", [y, _conv(g, y, rng, "c2")], {"axis": 1}).output
    y = g.add_node("Relu", [y]).output
    g.set_outputs([_conv(g, y, rng, "c3", channels=2 * C)])
    return g


def inverted_residual_cnn() -> Graph:
    """A 3x3 conv, then MobileNetV2's block twice: 1x1 expansion to 32 channels -> ReLU6
    (Clip to [0, 6]), depthwise 3x3 -> relu, 1x1 projection + the block's input; the output
    NCHW."""
    rng = np.random.default_rng(5)
    g = Graph("inverted_residual_cnn")
    x = g.add_input("x", "float32", ["N", C, H, W])

    def conv(v: Value, cin: int, cout: int, kernel: int, name: str) -> Value:
        groups = cin if kernel == 3 else 1
        w = rng.standard_normal((cout, cin // groups, kernel, kernel)) * 0.3
        attrs = {"group": groups, "pads": [kernel // 2] * 4}
        return g.add_node("Conv", [v, _const(g, w, name + "_w")], attrs).output

    y = _conv(g, x, rng, "stem")
    for i in range(2):
        bounds = [_const(g, np.array(v), f"relu6_{v}_{i}") for v in (0.0, 6.0)]
        h = g.add_node("Clip", [conv(y, C, 2 * C, 1, f"expand{i}"), *bounds]).output
        h = g.add_node("Relu", [conv(h, 2 * C, 2 * C, 3, f"depthwise{i}")]).output
        y = g.add_node("Add", [conv(h, 2 * C, C, 1, f"project{i}"), y]).output
    g.set_outputs([y])
    return g


def _feeds(g: Graph, seed: int, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        v.name: rng.standard_normal((batch, *v.type.shape[1:])).astype(np.float32) for v in g.inputs
    }


@cache
def quantized(kind: str) -> Graph:
    builders = {"concat": concat_cnn, "inverted": inverted_residual_cnn}
    g = builders[kind]() if kind in builders else residual_cnn(blocked=kind == "blocked")
    calib = [_feeds(g, s) for s in range(4)]
    PassManager(["default", quantize_pass("int8-static", calib), LowerQDQToInteger()], None).run(g)
    ops = [n.op_type for n in g.nodes]
    assert ops.count("ConvInteger") == (7 if kind == "inverted" else 3), ops
    return g


def _permutes(mod: Any) -> list[tuple[int, ...]]:
    return [tuple(int(a) for a in c.attrs.axes) for c in relax_calls(mod, "relax.permute_dims")]


def _lowered(kind: str) -> Any:
    spec = targets.resolve("x86")
    low = lower_graph(quantized(kind), spec, keep_params=False, param_threshold=1 << 40)
    return low.mod


def test_a_residual_network_runs_channels_last_between_its_convolutions() -> None:
    mod = _lowered("region")
    # each ConvInteger transposes its input NHWC and its output back NCHW
    assert sorted(_permutes(mod)) == sorted(
        [channels_last.TO_NCHW] * 3 + [channels_last.TO_NHWC] * 3
    )
    after = channels_last.channels_last_pass()(mod)
    # left: the graph input's transpose and the masked output's (a transpose of its twin);
    # the pool, the residual sum, the mask, both means and the flatten take the
    # [pixels, channels] products as they are
    assert sorted(_permutes(after)) == sorted([channels_last.TO_NHWC, channels_last.TO_NCHW])
    (pool,) = relax_calls(after, "relax.nn.max_pool2d")
    assert (pool.attrs.layout, pool.attrs.out_layout) == ("NHWC", "NHWC")
    means = sorted(tuple(int(a) for a in m.attrs.axis) for m in relax_calls(after, "relax.mean"))
    assert means == [(1, 2), (3,)], means  # the global pool (H, W) and the channels' mean
    tvm.ir.assert_structural_equal(channels_last.channels_last_pass()(after), after)


def test_ops_that_would_need_a_transpose_keep_nchw() -> None:
    mod = channels_last.channels_last_pass()(_lowered("blocked"))
    # the average pool and the second convolution's input run channels-last; the residual
    # sum with the NCHW input, the [W] mask and everything after them, and the pooled graph
    # output, read NCHW through the transposes of the pool and of the third convolution
    (pool,) = relax_calls(mod, "relax.nn.avg_pool2d")
    assert pool.attrs.layout == "NHWC"
    assert sorted(_permutes(mod)) == sorted([channels_last.TO_NCHW] * 2 + [channels_last.TO_NHWC])
    means = sorted(tuple(int(a) for a in m.attrs.axis) for m in relax_calls(mod, "relax.mean"))
    assert means == [(1,), (2, 3)], means  # NCHW


def test_a_concatenation_of_two_convolutions_runs_channels_last() -> None:
    mod = channels_last.channels_last_pass()(_lowered("concat"))
    # left: the graph input's transpose and the last convolution's output (a graph output)
    assert sorted(_permutes(mod)) == sorted([channels_last.TO_NHWC, channels_last.TO_NCHW])
    (concat,) = relax_calls(mod, "relax.concat")
    assert int(concat.attrs.axis) == 3


def test_depthwise_convolutions_run_inside_the_region() -> None:
    mod = channels_last.channels_last_pass()(_lowered("inverted"))
    # expansion -> depthwise -> projection -> residual sum, twice: only the graph input's
    # and the output's transposes are left
    assert sorted(_permutes(mod)) == sorted([channels_last.TO_NHWC, channels_last.TO_NCHW])
    # the depthwise windows read the expansions' 8-bit activations (ops/conv.py: converted
    # in their loads), so the expansion products write a byte per activation, not a float
    windows = [c for c in relax_calls(mod, "relax.call_tir") if "depthwise" in c.args[0].name_hint]
    assert [str(c.args[1].fields[0].ty.dtype) for c in windows] == ["uint8", "uint8"]


def test_a_module_without_a_transpose_to_cancel_is_left_as_it_was() -> None:
    # one int8 convolution, then a ReLU and the graph output: its output could be computed
    # channels-last, but it would be transposed back all the same
    g = Graph("one_conv")
    x = g.add_input("x", "uint8", [1, C, H, W])
    w = g.add_constant(np.ones((C, C, 3, 3), np.int8), "w")
    y = g.add_node("ConvInteger", [x, w], {"pads": [1, 1, 1, 1]}).output
    y = g.add_node("Relu", [g.add_node("Cast", [y], {"to": 1}).output]).output
    g.set_outputs([y])
    spec = targets.resolve("x86")
    mod = lower_graph(g, spec, keep_params=False, param_threshold=1 << 40).mod
    assert _permutes(mod) == [channels_last.TO_NHWC, channels_last.TO_NCHW]
    assert channels_last.channels_last_pass()(mod).same_as(mod)


def test_only_blocks_with_a_transpose_to_cancel_change() -> None:
    # two dataflow blocks: in the first a ReLU sits between two transposes that cancel; in
    # the second nothing is transposed back, so it stays as it was
    t = relax.TensorType((1, 4, 5, 8), "float32")
    u1, u2 = relax.Var("u1", t), relax.Var("u2", t)
    bb = relax.BlockBuilder()
    with bb.function("main", [u1, u2]):
        with bb.dataflow():
            r = bb.emit(relax.op.nn.relu(bb.emit(relax.op.permute_dims(u1, TO_NCHW))))
            first = bb.emit_output(relax.op.permute_dims(r, TO_NHWC))
        middle = bb.emit(relax.op.add(first, first))  # outside dataflow: a block between
        with bb.dataflow():
            v = bb.emit(relax.op.permute_dims(u2, TO_NCHW))
            second = bb.emit_output(relax.op.nn.relu(v))
        bb.emit_func_output(relax.Tuple([middle, second]))
    mod = bb.get()
    after = channels_last.channels_last_pass()(mod)
    blocks = after["main"].body.blocks
    assert len(blocks) == 3
    assert len(relax_calls(after, "relax.nn.relu")) == 2
    assert len(_permutes(after)) == 1  # the second dataflow block's own transpose
    tvm.ir.assert_structural_equal(blocks[2], mod["main"].body.blocks[2], map_free_vars=True)


def test_element_wise_work_on_a_product_runs_on_its_rows() -> None:
    # a product's [N, 6, 8] rows viewed [N, 2, 3, 8], transposed NCHW; a cast, a per-channel
    # scale, a scalar offset, a per-channel shift (a parameter: viewed by a reshape), then a
    # mask that varies along H and W, then back channels-last and back to rows: the first
    # four run on the rows, the masked one on the image
    n = tirx.Var("N", "int64")
    u = relax.Var("u", relax.TensorType((n, 6, 8), "int32"))
    shift = relax.Var("shift", relax.TensorType((1, 8, 1, 1), "float32"))  # not a constant
    scale = np.linspace(0.5, 2.0, 8, dtype=np.float32)
    mask = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    bb = relax.BlockBuilder()
    with bb.function("main", [u, shift]):
        with bb.dataflow():
            v = bb.emit(relax.op.reshape(u, (n, 2, 3, 8)))
            y = bb.emit(relax.op.astype(bb.emit(relax.op.permute_dims(v, TO_NCHW)), "float32"))
            y = bb.emit(relax.op.multiply(y, relax.const(scale.reshape(1, 8, 1, 1))))
            y = bb.emit(relax.op.add(y, relax.const(np.float32(0.25))))
            y = bb.emit(relax.op.subtract(y, shift))
            y = bb.emit(relax.op.multiply(y, relax.const(mask.reshape(1, 1, 2, 3))))
            y = bb.emit(relax.op.permute_dims(y, TO_NHWC))
            out = bb.emit_output(relax.op.reshape(y, (n, 6, 8)))
        bb.emit_func_output(out)
    after = channels_last.channels_last_pass()(bb.get())
    ranks = {
        op: sorted(c.ty.ndim for c in relax_calls(after, "relax." + op))
        for op in ("astype", "add", "subtract", "multiply", "permute_dims")
    }
    want = {"astype": [3], "add": [3], "subtract": [3], "multiply": [3, 4], "permute_dims": []}
    assert ranks == want, ranks
    (scaled,) = [c for c in relax_calls(after, "relax.multiply") if c.ty.ndim == 3]
    assert [int(d) for d in scaled.args[1].ty.shape] == [1, 1, 8]  # the scale viewed as rows
    if ON_X86:
        ex = tvm.compile(after, target="llvm")
        x = np.random.default_rng(0).integers(-300, 300, (2, 6, 8)).astype(np.int32)
        s = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
        args = [tvm.runtime.tensor(a) for a in (x, s.reshape(1, 8, 1, 1))]
        got = relax.VirtualMachine(ex, tvm.cpu())["main"](*args).numpy()
        image = x.astype(np.float32).reshape(2, 2, 3, 8)
        want = (image * scale + np.float32(0.25) - s) * mask[None, :, :, None]
        np.testing.assert_array_equal(got, want.reshape(2, 6, 8))


def test_products_compute_their_epilogues_on_their_tiles() -> None:
    mod = channels_last.channels_last_pass()(_lowered("inverted"))
    readers: dict[Any, list[Any]] = {}
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            for var in relax.analysis.free_vars(b.value):
                readers.setdefault(var, []).append(b.value)
    products = [
        b.var
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call)
        and b.value.op.name == "relax.call_tir"
        and "matmul_integer" in b.value.args[0].name_hint
    ]
    assert len(products) == 5  # the stem, two expansions, two projections
    for p in products:  # read only by element-wise ops on its [N, pixels, O] rows
        ops = {(r.op.name, r.ty.ndim) for r in readers[p]}
        assert ops == {("relax.astype", 3)}, ops


def _run(g: Graph, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """`g` built for x86 and run: its outputs and its kernels (name -> schedule rule)."""
    result = build.build_module(g, targets.resolve("x86"), keep_params=False, progress=False)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in result.lowered.input_names])
    outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
    return [o.numpy() for o in outs], dict(result.kernels)


@pytest.mark.skipif(not ON_X86, reason="x86 code runs only on an x86 host")
@pytest.mark.parametrize("kind", ["region", "blocked", "concat", "inverted"])
def test_regions_change_no_result(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    g = quantized(kind)
    feeds = _feeds(g, seed=11, batch=3)
    got, kernels = _run(g, feeds)
    for have, want in zip(got, interpret(g, feeds).values(), strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4)
    # the transposes left: the graph input's (fused with its quantization) and an output's;
    # blocked, also the third convolution's
    assert len([k for k in kernels if "transpose" in k]) == (3 if kind == "blocked" else 2), kernels
    # every int8 product computes its dequantization (and more) on its tiles
    products = {k: rule for k, rule in kernels.items() if "matmul_integer" in k}
    # (inverted: the stem, then one kernel for both expansions and one for both projections,
    # the same code: a ReLU6 output's scale is 6 / 255 in both blocks)
    assert len(products) == 3, kernels
    assert all("multiply" in k and rule == "int8-matmul" for k, rule in products.items()), products
    if kind == "inverted":  # ReLU6's selects too (their bounds immediates: scalars.py)
        assert len([k for k in products if "where" in k]) == 1, products
    # without the pass: every convolution transposes its output back NCHW (fused with its
    # epilogue) and, but for the first, its input NHWC
    monkeypatch.setattr(channels_last, "channels_last_pass", lambda: tvm.transform.Sequential([]))
    before, kernels = _run(g, feeds)
    assert len([k for k in kernels if "transpose" in k]) >= 5, kernels
    if kind == "region":  # the activations are the same bits; their means sum channels-last
        np.testing.assert_array_equal(got[1], before[1])
        np.testing.assert_allclose(got[0], before[0], rtol=2e-6, atol=0)
    else:  # no mean runs channels-last: every output is the same bits
        for have, want in zip(got, before, strict=True):
            np.testing.assert_array_equal(have, want)


@pytest.mark.skipif(not ON_X86, reason="x86 code runs only on an x86 host")
@pytest.mark.parametrize(("preset", "keep"), [("x86", False), ("x86:haswell", True)])
def test_float_inverted_blocks_run_channels_last(preset: str, keep: bool) -> None:
    # MobileNetV2's blocks in float32: the 1x1 convs beside a depthwise one are products of
    # NHWC rows (the matmul rule, ReLU6 on their tiles), the depthwise ones sliding windows
    # vectorized along the channels (the pool rule); the stem writes its output channels-last
    # (its tile is [columns, channels]), so the one transpose left is out of the region (the
    # graph output, with the last residual sum)
    g = inverted_residual_cnn()
    feeds = _feeds(g, seed=12, batch=3)
    result = build.build_module(g, targets.resolve(preset), keep_params=keep, progress=False)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    params = [tvm.runtime.tensor(v) for v in result.lowered.params.values()]
    out = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in result.lowered.input_names], *params)
    assert_matches(g, feeds, [out.numpy()])
    if keep:  # the weights kept as parameters are the packed ones, each once
        shapes = {k: v.shape for k, v in result.lowered.params.items()}
        assert shapes["depthwise0_w"] == (3, 3, 2 * C), shapes  # taps [KH, KW, C]
        assert len(shapes["expand0_w"]) == 3, shapes  # panels [O / NR, C, NR]
    rules = result.kernels
    assert [k for k, rule in rules.items() if rule == "conv"] == ["conv2d"], rules  # the stem
    assert [k for k in rules if "depthwise" in k and rules[k] == "pool"], rules
    assert any(rule == "matmul" and "where" in k for k, rule in rules.items()), rules  # ReLU6
    assert len([k for k in rules if "transpose" in k]) == 1, rules


@pytest.mark.skipif(not ON_X86, reason="x86 code runs only on an x86 host")
def test_float_pointwise_convs_without_a_depthwise_neighbour_keep_nchw() -> None:
    # a ResNet bottleneck (1x1 -> 3x3 -> 1x1 + input): rows for its 1x1 convs would put a
    # transpose on each side of the 3x3 conv (measured 1.5x slower), so all three stay NCHW
    rng = np.random.default_rng(3)
    g = Graph("bottleneck")
    x = g.add_input("x", "float32", ["N", 32, 10, 10])
    y = x
    for i, (cin, cout, k) in enumerate([(32, 16, 1), (16, 16, 3), (16, 32, 1)]):
        w = _const(g, rng.standard_normal((cout, cin, k, k)) * 0.3, f"w{i}")
        y = g.add_node("Conv", [y, w], {"pads": [k // 2] * 4}).output
        y = g.add_node("Relu", [y]).output
    y = g.add_node("Add", [y, x]).output
    g.set_outputs([y])
    feeds = _feeds(g, seed=4)
    result = build.build_module(g, targets.resolve("x86"), keep_params=False, progress=False)
    assert_matches(g, feeds, run_built(result, feeds))
    rules = result.kernels
    assert sorted(rule for rule in rules.values()) == ["conv"] * 3, rules


@pytest.mark.skipif(not ON_X86, reason="x86 code runs only on an x86 host")
def test_float_squeeze_excitation_block_runs_channels_last() -> None:
    # EfficientNet's block: 1x1 expansion -> depthwise 3x3 / 2 -> squeeze-excitation (global
    # mean, 1x1 convs over one pixel, sigmoid, channel scale) -> 1x1 projection. The
    # expansion, the projection and the excitation (its sigmoid reaches the depthwise conv's
    # output through the scale) are products of rows, the last one of a single row; the
    # squeeze conv, between the mean and another 1x1 conv, keeps NCHW
    rng = np.random.default_rng(9)
    g = Graph("se_block")
    x = g.add_input("x", "float32", ["N", 16, 9, 11])

    def conv(v: Value, cin: int, cout: int, k: int, name: str, stride: int = 1) -> Value:
        groups = cin if k == 3 else 1
        w = _const(g, rng.standard_normal((cout, cin // groups, k, k)) * 0.3, name + "_w")
        b = _const(g, rng.standard_normal(cout) * 0.1, name + "_b")
        attrs = {"group": groups, "pads": [k // 2] * 4, "strides": [stride] * 2}
        return g.add_node("Conv", [v, w, b], attrs).output

    h = g.add_node("Relu", [conv(x, 16, 32, 1, "expand")]).output
    h = g.add_node("Relu", [conv(h, 32, 32, 3, "depthwise", stride=2)]).output
    s = g.add_node("GlobalAveragePool", [h]).output
    s = g.add_node("Relu", [conv(s, 32, 16, 1, "squeeze")]).output
    s = g.add_node("Sigmoid", [conv(s, 16, 32, 1, "excite")]).output
    h = g.add_node("Mul", [h, s]).output
    g.set_outputs([conv(h, 32, 16, 1, "project")])
    feeds = _feeds(g, seed=5, batch=2)
    result = build.build_module(g, targets.resolve("x86"), keep_params=False, progress=False)
    assert_matches(g, feeds, run_built(result, feeds))
    rules = result.kernels
    assert sorted(rules.values()).count("matmul") == 3, rules
    assert list(rules.values()).count("conv") == 1, rules  # the squeeze
    assert [rule for k, rule in rules.items() if "depthwise" in k] == ["pool"], rules


@pytest.mark.skipif(not ON_X86, reason="x86 code runs only on an x86 host")
def test_a_pointwise_weight_shared_with_an_nchw_conv_runs_both_on_the_conv_kernel() -> None:
    # one [32, 16, 1, 1] weight read by a 1x1 conv beside a depthwise conv (a rows candidate)
    # and by a 1x1 conv of the graph input (no depthwise neighbour: NCHW). The weight cannot
    # be both panels and packed blocks; it is packed in blocks for ecograph's NCHW kernel
    # (kept as a parameter once, [O / block, C, 1, 1, block]) and both convs run there, not
    # on Relax's conv over the [O, C, 1, 1] weight
    rng = np.random.default_rng(8)
    g = Graph("shared_pointwise")
    x = g.add_input("x", "float32", ["N", 16, 9, 11])
    dw = _const(g, rng.standard_normal((16, 1, 3, 3)) * 0.3, "depthwise_w")
    h = g.add_node("Conv", [x, dw], {"group": 16, "pads": [1] * 4}).output
    h = g.add_node("Relu", [h]).output
    w = _const(g, rng.standard_normal((32, 16, 1, 1)) * 0.3, "shared_w")
    y = g.add_node("Add", [g.add_node("Conv", [h, w]).output, g.add_node("Conv", [x, w]).output])
    g.set_outputs([y.output])
    feeds = _feeds(g, seed=6)
    result = build.build_module(g, targets.resolve("x86"), keep_params=True, progress=False)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    params = [tvm.runtime.tensor(v) for v in result.lowered.params.values()]
    out = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in result.lowered.input_names], *params)
    assert_matches(g, feeds, [out.numpy()])
    shape = result.lowered.params["shared_w"].shape
    assert len(shape) == 5 and shape[1:4] == (16, 1, 1) and shape[0] * shape[4] == 32, shape
    rules = result.kernels
    assert [rule for k, rule in rules.items() if "conv2d" in k] == ["conv"] * 2, rules
    assert [rule for k, rule in rules.items() if "depthwise" in k] == ["pool"], rules


@pytest.mark.skipif(not ON_X86, reason="x86 code runs only on an x86 host")
@pytest.mark.parametrize("preset", ["x86", "x86:haswell"])
def test_a_stem_beside_a_channels_last_block_writes_nhwc(preset: str) -> None:
    # MobileNetV2's start: an RGB 3x3 / 2 stem with bias -> ReLU6 -> depthwise 3x3 -> ReLU
    # -> 1x1 to 24 channels. The stem runs by channels and writes its tile channels-last, so
    # the depthwise conv reads it without a transpose: the only one left is the output's
    rng = np.random.default_rng(10)
    g = Graph("stem_block")
    x = g.add_input("x", "float32", ["N", 3, 15, 17])
    w = _const(g, rng.standard_normal((16, 3, 3, 3)) * 0.3, "stem_w")
    b = _const(g, rng.standard_normal(16) * 0.1, "stem_b")
    attrs = {"pads": [1] * 4, "strides": [2, 2]}
    y = g.add_node("Conv", [x, w, b], attrs).output
    bounds = [_const(g, np.array(v), f"relu6_{v}") for v in (0.0, 6.0)]
    y = g.add_node("Clip", [y, *bounds]).output
    dw = _const(g, rng.standard_normal((16, 1, 3, 3)) * 0.3, "depthwise_w")
    y = g.add_node("Conv", [y, dw], {"group": 16, "pads": [1] * 4}).output
    y = g.add_node("Relu", [y]).output
    y = g.add_node("Conv", [y, _const(g, rng.standard_normal((24, 16, 1, 1)) * 0.3, "pw")])
    g.set_outputs([y.output])
    feeds = _feeds(g, seed=7, batch=2)
    result = build.build_module(g, targets.resolve(preset), keep_params=False, progress=False)
    assert_matches(g, feeds, run_built(result, feeds))
    rules = result.kernels
    assert [rule for k, rule in rules.items() if "conv2d" in k] == ["conv"], rules  # the stem
    assert [rule for k, rule in rules.items() if "depthwise" in k] == ["pool"], rules
    assert len([k for k in rules if "transpose" in k]) == 1, rules
