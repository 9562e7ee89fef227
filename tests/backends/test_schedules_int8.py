"""8-bit matrix products on CPUs: packed constant weights, zero points folded exactly, the
target's dot-product instruction (VNNI, AVX-VNNI, vpmaddwd, sdot/usdot, NEON widening) and the
dynamic-quantization prologue.

Every case is a graph run through the whole build (lowering, fusion, the schedule rules) and
compared with the reference interpreter: integers exactly, the float epilogues to float32
rounding. The cases of one target are merged into one graph, so one build checks them all.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm
from tvm import te

import ecograph
from ecograph import remote
from ecograph.backends.tvm import build, rpc, targets
from ecograph.backends.tvm.channels_last import TO_NHWC
from ecograph.backends.tvm.ops.matmul import integer_weight, pack_integer
from ecograph.backends.tvm.schedules import Int8Matmul, Matmul
from ecograph.backends.tvm.schedules.int8 import int8_kernel
from ecograph.ir import Graph, interpret
from tests.backends.merge import merge_graphs
from tests.backends.schedule_cases import I64
from tests.backends.tvm_helpers import assembly, count_lines, relax_calls

ON_X86 = os.uname().machine == "x86_64"
ARM_DOTPROD = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}
ARM_I8MM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod", "+i8mm"]}


# ------------------------------------------------------------------ the cases


def _ints(rng: np.random.Generator, dtype: str, shape: Any) -> np.ndarray:
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    return rng.integers(lo, hi, shape).astype(dtype)


def integer_case(
    m: int,
    k: int,
    n: int,
    a: str = "uint8",
    w: str = "int8",
    *,
    za: str | None = None,
    zw: str | None = None,
    rows: str | None = None,
    batch: int | None = None,
    op: str = "MatMulInteger",
    seed: int = 0,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """One integer product with a constant [k, n] weight. `za`: None, "const" / "input" (a
    scalar constant / graph input), "rows" / "rows-input" (one per row). `zw`: None,
    "scalar" or "cols" (one per column, constants). `rows`: a symbol for A's row dim; `batch`:
    a leading batch dim. `op="QLinearMatMul"` requantizes with constant scales."""
    rng = np.random.default_rng(seed)
    g = Graph(f"{op}_{m}x{k}x{n}")
    lead = [batch] if batch else []
    x = _ints(rng, a, (*lead, m, k))
    feeds = {"x": x}
    av = g.add_input("x", a, [*lead, rows or m, k])
    wv = g.add_constant(_ints(rng, w, (k, n)), "w")
    zav = zwv = None
    if za in ("const", "input"):
        z = _ints(rng, a, ())
        zav = g.add_constant(z, "za") if za == "const" else g.add_input("za", a, [])
        feeds["za"] = z
    elif za in ("rows", "rows-input"):
        z = _ints(rng, a, (m,))
        zav = g.add_constant(z, "za") if za == "rows" else g.add_input("za", a, [m])
        feeds["za"] = z
    if zw is not None:
        zwv = g.add_constant(_ints(rng, w, () if zw == "scalar" else (n,)), "zw")
    if op == "QLinearMatMul":
        scale = lambda v, name: g.add_constant(np.array(v, np.float32), name)  # noqa: E731
        zav = zav or g.add_constant(np.zeros((), a), "za")
        zwv = zwv or g.add_constant(np.zeros((), w), "zw")
        y_zp = g.add_constant(np.array(128, np.uint8), "y_zp")
        ins = [av, scale(0.02, "sa"), zav, wv, scale(0.01, "sw"), zwv, scale(0.5, "sy"), y_zp]
        node = g.add_node(op, ins)
    else:
        node = g.add_node(op, [av, wv, zav, zwv] if (zav or zwv) else [av, wv])
    feeds = {k_: v for k_, v in feeds.items() if k_ in {i.name for i in g.inputs}}
    g.set_outputs([node.output])
    return g, feeds


def conv_case(
    x_shape: tuple[Any, ...],
    w_shape: tuple[int, int, int, int],
    a: str = "uint8",
    w: str = "int8",
    *,
    za: bool = True,
    zw: str | None = None,
    batch: int | None = None,
    seed: int = 0,
    op: str = "ConvInteger",
    **attrs: Any,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """One ConvInteger with a constant weight (run as an im2col product, ops/conv.py): `za` a
    scalar constant zero point for x, `zw` None, "scalar" or "cols" (one per output channel);
    a symbolic first dim of `x_shape` takes `batch` images. `op="QLinearConv"` requantizes
    with constant scales (per output channel for the weight) and adds an int32 bias."""
    rng = np.random.default_rng(seed)
    g = Graph(f"ConvInteger_{'x'.join(map(str, w_shape))}")
    x = _ints(rng, a, (batch or x_shape[0], *x_shape[1:]))
    av = g.add_input("x", a, list(x_shape))
    wv = g.add_constant(_ints(rng, w, w_shape), "w")
    zav = g.add_constant(_ints(rng, a, ()), "za") if za else None
    zwv = None
    if zw is not None:
        zwv = g.add_constant(_ints(rng, w, () if zw == "scalar" else (w_shape[0],)), "zw")
    if op == "QLinearConv":
        scale = lambda v, name: g.add_constant(np.asarray(v, np.float32), name)  # noqa: E731
        zav = zav or g.add_constant(np.zeros((), a), "za")
        zwv = zwv or g.add_constant(np.zeros((), w), "zw")
        w_scale = scale(rng.uniform(0.005, 0.02, w_shape[0]), "sw")
        y_zp = g.add_constant(np.array(128, np.uint8), "y_zp")
        bias = g.add_constant(rng.integers(-2000, 2000, w_shape[0]).astype(np.int32), "bias")
        ins = [av, scale(0.02, "sa"), zav, wv, w_scale, zwv, scale(0.5, "sy"), y_zp, bias]
        node = g.add_node(op, ins, attrs)
    else:
        node = g.add_node(op, [av, wv, zav, zwv] if (zav or zwv) else [av, wv], attrs)
    g.set_outputs([node.output])
    return g, {"x": x}


def dynamic_case(rows: int, k: int, n: int, seed: int = 0) -> tuple[Graph, dict[str, np.ndarray]]:
    """What quantize="int8" makes of `x @ W + b`: DynamicQuantizeLinear(x), MatMulInteger with
    a per-column weight zero point, then Cast, Mul by the scales and the bias Add (fused into
    the product's tile)."""
    rng = np.random.default_rng(seed)
    g = Graph("dynamic")
    x = g.add_input("x", "float32", ["s", k])
    xq, xs, xz = g.add_node("DynamicQuantizeLinear", [x], num_outputs=3).outputs
    w = g.add_constant(_ints(rng, "int8", (k, n)), "w")
    zw = g.add_constant(np.zeros(n, np.int8), "zw")
    acc = g.add_node("MatMulInteger", [xq, w, xz, zw]).output
    accf = g.add_node("Cast", [acc], {"to": 1}).output
    ws = g.add_constant(rng.uniform(0.001, 0.01, n).astype(np.float32), "ws")
    scale = g.add_node("Mul", [xs, ws]).output
    y = g.add_node("Mul", [accf, scale]).output
    bias = g.add_constant(rng.uniform(-1, 1, n).astype(np.float32), "bias")
    g.set_outputs([g.add_node("Add", [y, bias]).output, xq])
    return g, {"x": rng.uniform(-3, 5, (rows, k)).astype(np.float32)}


def quantize_case(shape: tuple[int, ...], seed: int = 0) -> tuple[Graph, dict[str, np.ndarray]]:
    """DynamicQuantizeLinear alone, rows symbolic (its three outputs compared)."""
    g = Graph("dql")
    x = g.add_input("x", "float32", ["r", *shape[1:]])
    g.set_outputs(list(g.add_node("DynamicQuantizeLinear", [x], num_outputs=3).outputs))
    rng = np.random.default_rng(seed)
    return g, {"x": rng.uniform(-2, 7, shape).astype(np.float32)}


def token_case(
    shape: tuple[int, ...], n: int, seed: int = 0
) -> tuple[Graph, dict[str, np.ndarray]]:
    """What quantize="int8" makes of `x @ W + b` (Quantize(activations="token")): one int8
    scale per row of x (ReduceMax of |x|, Round, Clip, Cast), MatMulInteger(int8, int8) without
    zero points, the two rescales and the bias; the codes x_q are compared too."""
    from ecograph.quant.quantize import Quantize

    rng = np.random.default_rng(seed)
    k = shape[-1]
    g = Graph("token")
    x = g.add_input("x", "float32", ["r", *shape[1:]])
    w = g.add_constant((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), "w")
    y = g.add_node("MatMul", [x, w]).output
    bias = g.add_constant(rng.uniform(-1, 1, n).astype(np.float32), "bias")
    g.set_outputs([g.add_node("Add", [y, bias]).output])
    Quantize(activations="token").run(g)
    mm = next(nd for nd in g.nodes if nd.op_type == "MatMulInteger")
    xq = mm.input(0)
    assert xq is not None and xq.dtype.value == "int8"
    g.add_output(xq)
    feeds = rng.uniform(-3, 5, shape).astype(np.float32)
    feeds.reshape(-1, k)[0] *= 50.0  # an outlier row
    feeds.reshape(-1, k)[1] = 0.0  # a row of zeros
    return g, {"x": feeds}


CASES = {
    "u8s8-minilm-shape": lambda: integer_case(128, 384, 384, za="input", zw="cols"),
    "u8s8-odd-k-n-sym-rows": lambda: integer_case(13, 30, 20, rows="m"),
    "u8s8-zp-const-cols": lambda: integer_case(9, 33, 17, za="const", zw="cols"),
    "u8s8-zp-input": lambda: integer_case(7, 64, 48, za="input"),
    "u8s8-zp-rows-scalar": lambda: integer_case(6, 20, 36, za="rows", zw="scalar"),
    "u8s8-zp-rows-input": lambda: integer_case(5, 24, 16, za="rows-input", zw="cols"),
    "s8s8": lambda: integer_case(9, 33, 17, "int8", "int8"),
    "s8s8-zp-sym-rows": lambda: integer_case(
        11, 45, 31, "int8", "int8", za="input", zw="cols", rows="m"
    ),
    "s8s8-zp-rows-input": lambda: integer_case(4, 16, 16, "int8", "int8", za="rows-input"),
    "u8u8-zp": lambda: integer_case(9, 33, 17, "uint8", "uint8", za="const", zw="scalar"),
    "s8u8-zp-cols": lambda: integer_case(8, 12, 40, "int8", "uint8", za="input", zw="cols"),
    "u8s8-batched-sym": lambda: integer_case(5, 24, 40, batch=2, rows="s", za="input"),
    "u8s8-one-row": lambda: integer_case(1, 64, 100, za="const"),
    "qlinear-u8s8": lambda: integer_case(6, 24, 20, za="const", zw="scalar", op="QLinearMatMul"),
    "qlinear-s8s8-sym": lambda: integer_case(
        7, 18, 9, "int8", "int8", za="const", rows="m", op="QLinearMatMul"
    ),
    "conv-u8s8-3x3-pad": lambda: conv_case((2, 5, 9, 11), (7, 5, 3, 3), pads=[1, 1, 1, 1]),
    "conv-u8s8-stem-7x7-s2": lambda: conv_case(
        (1, 3, 20, 18), (16, 3, 7, 7), strides=[2, 2], pads=[3, 3, 3, 3]
    ),
    "conv-u8u8-zw-cols-dilated-uneven-pads": lambda: conv_case(
        (1, 4, 10, 9),
        (6, 4, 3, 3),
        "uint8",
        "uint8",
        zw="cols",
        dilations=[2, 1],
        pads=[2, 1, 0, 2],
    ),
    "conv-s8s8-1x1-s2": lambda: conv_case(
        (2, 8, 6, 7), (16, 8, 1, 1), "int8", "int8", za=False, strides=[2, 2]
    ),
    "conv-s8s8-zw-scalar-one-pixel": lambda: conv_case(
        (1, 4, 3, 3), (5, 4, 3, 3), "int8", "int8", zw="scalar"
    ),
    "conv-u8s8-symbolic-batch-same": lambda: conv_case(
        ("n", 3, 6, 5), (8, 3, 3, 3), batch=3, auto_pad="SAME_UPPER", strides=[2, 2]
    ),
    "qlinearconv-u8s8-3x3-s2": lambda: conv_case(
        (2, 6, 9, 8), (10, 6, 3, 3), op="QLinearConv", strides=[2, 2], pads=[1, 1, 1, 1]
    ),
    # 7 taps read as 8 (ops/matmul.py tap_width): the 8th meets the weight's zero point of
    # its column, and past the image's right edge (no pads here) the input's zero point
    "conv-u8u8-zw-cols-7-taps-as-8-no-pads": lambda: conv_case(
        (1, 3, 12, 15), (5, 3, 7, 7), "uint8", "uint8", zw="cols", strides=[1, 2]
    ),
    # channels-last (C >= CHANNELS_LAST_MIN): NHWC copy, rows in (KH, KW, C) order
    "conv-nhwc-u8s8-3x3-pad-tiled-write-back": lambda: conv_case(
        (2, 16, 4, 8), (32, 16, 3, 3), pads=[1, 1, 1, 1]
    ),
    "conv-nhwc-u8u8-zw-cols-dilated-uneven-pads": lambda: conv_case(
        (1, 24, 10, 9),
        (6, 24, 3, 3),
        "uint8",
        "uint8",
        zw="cols",
        dilations=[2, 1],
        pads=[2, 1, 0, 2],
    ),
    "conv-nhwc-s8s8-1x1-no-unfolding": lambda: conv_case(
        (2, 32, 5, 7), (20, 32, 1, 1), "int8", "int8", za=False
    ),
    "qlinearconv-nhwc-s8s8-3x3-s2-symbolic-batch": lambda: conv_case(
        ("n", 16, 7, 8),
        (10, 16, 3, 3),
        "int8",
        "int8",
        batch=2,
        op="QLinearConv",
        strides=[2, 2],
        pads=[1, 1, 1, 1],
    ),
    "dynamic-quantize-matmul": lambda: dynamic_case(37, 96, 72),
    "dynamic-quantize-odd-last-dim": lambda: quantize_case((5, 9)),
    "dynamic-quantize-3d": lambda: quantize_case((3, 4, 64)),
    "token-quantize-matmul": lambda: token_case((37, 96), 72),
    "token-quantize-3d-odd-k": lambda: token_case((2, 5, 30), 20),
}


@cache
def merged() -> Any:
    return merge_graphs([(cid, *make()) for cid, make in CASES.items()], "int8_cases")


@cache
def references() -> list[np.ndarray]:
    return [out for _, graph, feeds in _built() for out in interpret(graph, feeds).values()]


@cache
def _built() -> list[tuple[str, Graph, dict[str, np.ndarray]]]:
    return [(cid, *make()) for cid, make in CASES.items()]


def _mismatches(got: list[np.ndarray]) -> list[str]:
    bad = []
    for (cid, i), want, have in zip(merged().origin, references(), got, strict=True):
        if have.dtype != want.dtype or have.shape != want.shape:
            bad.append(f"{cid}[{i}]: {have.dtype}{have.shape} != {want.dtype}{want.shape}")
        elif want.dtype.kind == "f":
            if not np.allclose(have, want, rtol=2e-6, atol=1e-6):
                bad.append(f"{cid}[{i}]: max error {np.abs(have - want).max()}")
        elif not np.array_equal(have, want):
            bad.append(f"{cid}[{i}]: {int((have != want).sum())} of {want.size} differ")
    return bad


def _integer_kernels(result: build.BuildResult) -> dict[str, str | None]:
    return {k: r for k, r in result.kernels.items() if "matmul_integer" in k}


def _build(target: Any) -> build.BuildResult:
    return build.build_module(merged().graph, target, keep_params=False, progress=False)


# ------------------------------------------------------------------ x86: run and compare

X86_RUN = ["x86", "x86:haswell", "x86:generic", "x86:skylake-avx512"]


@pytest.mark.skipif(not ON_X86, reason="x86 code runs only on an x86 host")
@pytest.mark.parametrize("preset", X86_RUN)
def test_products_are_exact_on_x86(preset: str) -> None:
    from tvm import relax

    spec = targets.resolve(preset)
    missing = targets.missing_on_host(spec)
    if missing:
        pytest.skip(f"this host cannot run {preset} code (lacks {', '.join(missing)})")
    result = _build(spec)
    kernels = _integer_kernels(result)
    # Every integer product was packed and scheduled by the int8 rule: no generic product
    # (Relax's legalized "matmul") is left, and no packed one fell through.
    assert set(kernels.values()) == {"int8-matmul"}, kernels
    assert not [k for k in result.kernels if re.search(r"matmul(?!_integer)", k)], result.kernels
    # ...and every ConvInteger ran as an im2col product (no Relax conv2d); a 1x1 one of
    # stride 1 reads its NHWC input as the rows
    assert not [k for k in result.kernels if "conv2d" in k], result.kernels
    assert len([k for k in result.kernels if "im2col" in k]) == 11, result.kernels
    permutes = [tuple(c.attrs.axes) for c in relax_calls(result.lowered.mod, "relax.permute_dims")]
    assert permutes.count(TO_NHWC) == 4, permutes  # the channels-last cases' inputs
    rules = set(result.kernels.values())
    assert {"quantize-range", "quantize"} <= rules, result.kernels
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    feeds = merged().feeds
    out = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in result.lowered.input_names])
    got = [o.numpy() for o in out]
    assert not _mismatches(got), f"{spec.describe()}:\n" + "\n".join(_mismatches(got))


# --------------------------------------- grouped convolutions: exact on the float32 kernel


def extreme_grouped_case() -> tuple[Graph, dict[str, np.ndarray]]:
    """252 products per output (28 channels per group, 3x3), every one -255 * 255: sums of
    -16,386,300, within 2^24 of zero, so float32 still holds them exactly."""
    g = Graph("grouped_extreme")
    x = g.add_input("x", "uint8", [1, 56, 5, 5])
    w = g.add_constant(np.full((4, 28, 3, 3), -128, np.int8), "w")
    zx = g.add_constant(np.array(0, np.uint8), "zx")
    zw = g.add_constant(np.array(127, np.int8), "zw")
    node = g.add_node("ConvInteger", [x, w, zx, zw], {"group": 2, "pads": [1, 1, 1, 1]})
    g.set_outputs([node.output])
    return g, {"x": np.full((1, 56, 5, 5), 255, np.uint8)}


GROUPED: dict[str, Any] = {
    "depthwise-u8s8-3x3-pad": lambda: conv_case(
        (2, 24, 9, 11), (24, 1, 3, 3), group=24, pads=[1, 1, 1, 1]
    ),
    "depthwise-s8s8-zw-cols-3x3-s2": lambda: conv_case(
        (1, 16, 13, 12), (16, 1, 3, 3), "int8", "int8", zw="cols", group=16,
        strides=[2, 2], pads=[2, 2, 2, 2],
    ),
    "depthwise-u8u8-5x5-dilated-uneven-pads-symbolic-batch": lambda: conv_case(
        ("n", 8, 14, 9), (8, 1, 5, 5), "uint8", "uint8", zw="scalar", batch=2, group=8,
        dilations=[2, 1], pads=[2, 1, 2, 3],
    ),
    "grouped-4x8-channels-16-out-each": lambda: conv_case(
        (1, 32, 8, 8), (64, 8, 3, 3), group=4, pads=[1, 1, 1, 1]
    ),
    "qlinearconv-depthwise-3x3": lambda: conv_case(
        (2, 16, 7, 7), (16, 1, 3, 3), op="QLinearConv", group=16, pads=[1, 1, 1, 1]
    ),
    "grouped-252-products-extreme": extreme_grouped_case,
    # 288 products per output could leave float32's exact range: Relax's integer conv
    "grouped-288-products-generic": lambda: conv_case(
        (1, 64, 6, 6), (64, 32, 3, 3), group=2, pads=[1, 1, 1, 1]
    ),
}  # fmt: skip


@pytest.mark.skipif(not ON_X86, reason="x86 code runs only on an x86 host")
@pytest.mark.parametrize("preset", ["x86", "x86:haswell"])
def test_grouped_convolutions_are_exact_on_the_float_kernel(preset: str) -> None:
    from tvm import relax

    spec = targets.resolve(preset)
    missing = targets.missing_on_host(spec)
    if missing:
        pytest.skip(f"this host cannot run {preset} code (lacks {', '.join(missing)})")
    cases = merge_graphs([(cid, *make()) for cid, make in GROUPED.items()], "grouped")
    result = build.build_module(cases.graph, spec, keep_params=False, progress=False)
    convs = {k: r for k, r in result.kernels.items() if "conv2d" in k or "depthwise" in k}
    # depthwise with 16+ channels: channels-last windows (the pool rule); the 8-channel
    # depthwise and the grouped ones on the float32 conv kernel; one generic
    want = ["conv"] * 3 + ["fallback"] + ["pool"] * 3
    assert sorted(convs.values(), key=str) == want, convs
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    feeds = cases.feeds
    out = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in result.lowered.input_names])
    want = list(interpret(cases.graph, feeds).values())
    for (cid, _), have, expected in zip(cases.origin, out, want, strict=True):
        np.testing.assert_array_equal(have.numpy(), expected, err_msg=cid)
    extreme = want[[cid for cid, _ in cases.origin].index("grouped-252-products-extreme")]
    assert extreme.min() == -252 * 255 * 255  # the interior outputs: every product counted


@pytest.mark.skipif(not ON_X86, reason="x86 code runs only on an x86 host")
def test_packed_weights_travel_as_parameters(tmp_path: Path) -> None:
    # keep_params: the packed weight is a parameter stored in params.npz, not the original.
    graph, feeds = dynamic_case(9, 40, 24)
    art = ecograph.compile(graph, "x86", tmp_path / "art", keep_params=True, progress=False)
    with np.load(art / build.PARAMS, allow_pickle=False) as params:
        shapes = [params[n].shape for n in params.files]
    assert any(len(s) == 4 for s in shapes), shapes  # [N / NR, K / G, NR, G]
    got = ecograph.load(art)(**feeds)
    want = list(interpret(graph, feeds).values())
    np.testing.assert_allclose(got[0], want[0], rtol=2e-6, atol=1e-6)
    np.testing.assert_array_equal(got[1], want[1])


def test_mismatches_catch_one_wrong_element() -> None:
    got = [r.copy() for r in references()]
    for g in got:
        if g.dtype == np.int32:
            g.reshape(-1)[g.size // 2] += 1
            break
    assert len(_mismatches(got)) == 1
    assert not _mismatches([r.copy() for r in references()])


# ------------------------------------------------------------------ what each target runs


def _one_product(a: str) -> Graph:
    g, _ = integer_case(16, 64, 48, a, "int8", za="input", zw="cols")
    return g


@pytest.mark.parametrize(
    ("target", "a", "kernel", "instruction", "absent"),
    [
        ("x86:znver4", "uint8", "vnni", r"^\s*vpdpbusd\s+%zmm", r"vpmaddwd"),
        ("x86:znver4", "int8", "vnni", r"^\s*vpdpbusd\s+%zmm", r"vpmaddwd"),
        ("x86:alderlake", "uint8", "vnni", r"^\s*\{vex\}\s+vpdpbusd\s+%ymm", r"%zmm"),
        ("x86:skylake-avx512", "uint8", "pmaddwd", r"^\s*vpmaddwd\s+%zmm", r"vpmaddubsw|vpdpbusd"),
        ("x86:haswell", "uint8", "pmaddwd", r"^\s*vpmaddwd\s+%ymm", r"vpmaddubsw|%zmm"),
        ("x86:generic", "int8", "pmaddwd", r"^\s*pmaddwd\s+%xmm", r"pmaddubsw|%ymm"),
        ("arm", "uint8", "widen", r"^\s*[su]mlal2?\s", r"sdot|udot"),
        (ARM_DOTPROD, "uint8", "sdot", r"^\s*sdot\s", r"usdot"),
        (ARM_DOTPROD, "int8", "sdot", r"^\s*sdot\s", r"usdot"),
        (ARM_I8MM, "uint8", "usdot", r"^\s*usdot\s", r"^\s*sdot\s"),
    ],
)
def test_each_target_uses_its_instruction(target, a, kernel, instruction, absent) -> None:
    spec = targets.resolve(target)
    chosen = int8_kernel(spec, a)
    assert chosen is not None and chosen.name == kernel
    result = build.build_module(_one_product(a), spec, keep_params=False, progress=False)
    assert set(_integer_kernels(result).values()) == {"int8-matmul"}, result.kernels
    asm = assembly(result)
    assert count_lines(asm, instruction) > 0, f"no {instruction} in the {spec.describe()} build"
    assert count_lines(asm, absent) == 0, f"{absent} in the {spec.describe()} build"


def test_cuda_keeps_the_generic_product() -> None:
    assert int8_kernel(targets.resolve("cuda:sm_80"), "uint8") is None
    g = _one_product("uint8")
    node = next(n for n in g.nodes if n.op_type == "MatMulInteger")
    assert integer_weight(node, targets.resolve("cuda:sm_80")) is None


# ------------------------------------------------------------------ packing and zero points


@pytest.mark.parametrize("target", ["x86:znver4", "x86:haswell", "arm", ARM_DOTPROD])
def test_packed_layout_reads_back_the_weight(target) -> None:
    spec = targets.resolve(target)
    kernel = int8_kernel(spec, "uint8")
    assert kernel is not None
    w = np.random.default_rng(1).integers(-128, 128, (30, 20))
    nr = 2 * kernel.lanes
    wp = pack_integer(w, kernel, nr)
    g = kernel.group
    k, j = np.meshgrid(np.arange(30), np.arange(20), indexing="ij")
    back = wp[j // nr, k // g, j % nr, k % g] if g > 1 else wp[j // nr, k, j % nr]
    np.testing.assert_array_equal(back, w)
    assert wp.dtype == np.dtype(kernel.weight_dtype)
    # The padding (K to the group, N to the panel) is zeros.
    assert int(np.abs(wp).sum()) == int(np.abs(w).sum())


def _plan(target: Any, a: str, w: str, zw: str | None) -> Any:
    g, _ = integer_case(4, 8, 16, a, w, za="const", zw=zw)
    node = next(n for n in g.nodes if n.op_type == "MatMulInteger")
    return integer_weight(node, targets.resolve(target))


def test_zero_points_fold_into_the_weight_when_they_fit() -> None:
    # Symmetric s8 weights (zero point 0): nothing left to correct per row.
    plan = _plan("x86:znver4", "uint8", "int8", None)
    assert not plan.zeta.any()
    # u8 weights with a zero point far from 128 do not fit s8 minus the zero point: VNNI
    # packs w - 128 and corrects with the rows' sums (zeta = zw - 128 per column).
    plan = _plan("x86:znver4", "uint8", "uint8", "scalar")
    assert plan.zeta.any()
    # vpmaddwd packs int16, where w - zw always fits: the zero point is folded in.
    assert not _plan("x86:haswell", "uint8", "uint8", "scalar").zeta.any()
    assert not _plan("x86:haswell", "int8", "int8", "cols").zeta.any()


# ------------------------------------------------------------------ the rule's structural test


def _int8_tile_func(nr: int, group: int, wdt: str = "int8", rows: int = 24) -> Any:
    x = te.placeholder((I64(rows), I64(32)), "uint8", name="x")
    shape = (I64(2), I64(32 // group), I64(nr), I64(group))
    wp = te.placeholder(shape, wdt, name="wp")
    k = te.reduce_axis((I64(0), I64(32)), "k")
    c = te.compute(
        (I64(rows), I64(2 * nr)),
        lambda i, j: te.sum(
            x[i, k].astype("int32") * wp[j // nr, k // group, j % nr, k % group].astype("int32"),
            axis=k,
        ),
        name="tile",
    )
    out = te.compute(c.shape, lambda i, j: c[i, j] + 1, name="out")
    return te.create_prim_func([x, wp, out])


def test_rule_takes_only_its_own_packing() -> None:
    vnni = targets.resolve("x86:znver4")
    assert Int8Matmul(vnni).apply(_int8_tile_func(16, 4), None, False) is not None
    # Packed for vpmaddwd (int16, pairs of k), or for VNNI handed to an AVX2 target: not taken.
    assert Int8Matmul(vnni).apply(_int8_tile_func(16, 2, "int16"), None, False) is None
    haswell = targets.resolve("x86:haswell")
    assert Int8Matmul(haswell).apply(_int8_tile_func(16, 4), None, False) is None
    assert Int8Matmul(haswell).apply(_int8_tile_func(16, 2, "int16"), None, False) is not None
    # Rows not padded to the tile (MR is 6 for AVX2 here): declined, not mis-tensorized.
    assert Int8Matmul(haswell).apply(_int8_tile_func(16, 2, "int16", rows=20), None, False) is None
    # A float32 product is the float rule's.
    x = te.placeholder((I64(8), I64(16)), "float32", name="x")
    w = te.placeholder((I64(16), I64(32)), "float32", name="w")
    k = te.reduce_axis((I64(0), I64(16)), "k")
    c = te.compute((I64(8), I64(32)), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k))
    func = te.create_prim_func([x, w, c])
    assert Int8Matmul(vnni).apply(func, None, False) is None
    assert Matmul(vnni).apply(func, None, False) is not None


# ------------------------------------------------------------------ the quantization prologue


def test_dynamic_quantize_rounds_half_to_even_and_is_vectorized() -> None:
    # Range [0, 255]: the scale is exactly 1, so x.5 values are ties.
    x = np.array([0.0, 255.0, 0.5, 1.5, 2.5, 3.5, -0.0, 254.5] * 16, np.float32).reshape(4, 32)
    g = Graph("dql")
    xv = g.add_input("x", "float32", ["r", 32])
    g.set_outputs(list(g.add_node("DynamicQuantizeLinear", [xv], num_outputs=3).outputs))
    result = build.build_module(g, "x86", keep_params=False, progress=False)
    assert {"quantize-range", "quantize"} <= set(result.kernels.values()), result.kernels
    from tvm import relax

    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    y, scale, zp = (o.numpy() for o in vm["main"](tvm.runtime.tensor(x)))
    want = interpret(g, {"x": x})
    np.testing.assert_array_equal(y, want[g.outputs[0].name])
    assert scale == np.float32(1.0) and zp == 0
    assert list(y[0, :8]) == [0, 255, 0, 2, 2, 4, 0, 254]


# ------------------------------------------------------------------ ARM

ARM_TARGETS = {"arm": "arm", "arm-dotprod": ARM_DOTPROD, "arm-i8mm": ARM_I8MM}


@pytest.mark.parametrize("name", list(ARM_TARGETS))
def test_arm_builds_schedule_every_product(name: str) -> None:
    result = _build(targets.resolve(ARM_TARGETS[name]))
    assert set(_integer_kernels(result).values()) == {"int8-matmul"}, result.kernels


EMULATOR_MISSING = rpc.emulator_ready()


def _one_int_vector() -> tuple[Graph, np.ndarray]:
    """The merged cases' integer outputs flattened into one int32 vector (the remote VM returns
    a single tensor, not a tuple), and that vector from the interpreter."""
    g = merged().graph.copy()
    flat = g.add_constant(np.array([-1], np.int64), "flat")
    pieces, want = [], []
    for v, ref in zip(g.outputs, references(), strict=True):
        if ref.dtype.kind == "f":
            continue
        r = g.add_node("Reshape", [v, flat]).output
        pieces.append(g.add_node("Cast", [r], {"to": 6}).output)  # int32
        want.append(ref.reshape(-1).astype(np.int32))
    g.set_outputs([g.add_node("Concat", pieces, {"axis": 0}).output])
    return g, np.concatenate(want)


@pytest.mark.emulator
@pytest.mark.skipif(EMULATOR_MISSING is not None, reason=str(EMULATOR_MISSING))
def test_arm_products_are_exact_on_the_emulated_device(tmp_path: Path) -> None:
    graph, want = _one_int_vector()
    arts = {
        name: ecograph.compile(graph, target, tmp_path / name, progress=False)
        for name, target in ARM_TARGETS.items()
    }
    feeds = merged().feeds
    failures = []
    with remote.EmulatedArmDevice() as device:
        for name, art in arts.items():
            got = np.asarray(remote.connect(art, device.host, device.port)(**feeds))
            if not np.array_equal(got, want):
                failures.append(f"{name}: {int((got != want).sum())} of {want.size} differ")
    assert not failures, "\n".join(failures)


@pytest.mark.skipif(not ON_X86, reason="x86 code runs only on an x86 host")
def test_token_quantization_kernels_are_all_scheduled() -> None:
    """The int8 preset's per-token quantization at MiniLM's shape: |x| max per row, the scale,
    the element-wise quantization and the int8 product with its rescale each get a rule."""
    g, _ = token_case((128, 384), 384)
    result = build.build_module(g, targets.resolve("x86:generic"), keep_params=False,
                                progress=False)  # fmt: skip
    rules = set(result.kernels.values())
    assert None not in rules and "fallback" not in rules, result.kernels
    assert {"int8-matmul", "quantize", "reduction"} <= rules, result.kernels
