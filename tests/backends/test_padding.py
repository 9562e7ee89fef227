"""The hand-written padding copy of the by-width conv kernel (backends/tvm/ops/padding.py).

The copy must hold exactly numpy's padded image in phases (zeros outside, every column a
phase reads), for unit and larger strides, asymmetric pads, rows narrower or wider than a
vector and a symbolic batch; compiled for AVX-512 its stride-2 phases must be vector loads
and shuffles, not the gathers the per-element condition gave; a conv that reads it must
still match the reference interpreter with one conv kernel after it; and convs of one
geometry share one copy kernel.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm

from ecograph.backends.tvm import build, targets
from ecograph.backends.tvm.ops.padding import PAD_RULE, pad_phases_kernel, phase_range
from tests.backends.test_schedules_conv import Case, conv_graph, run_built
from tests.backends.tvm_helpers import assert_matches

ON_X86 = os.uname().machine == "x86_64"


def expected(x: np.ndarray, pads: tuple[int, int, int], stride: int, columns: int) -> np.ndarray:
    """numpy's padded image in phases: xp[n, c, h, p, q] = padded[n, c, h, q * stride + p]."""
    top, bottom, left = pads
    n, c, h, w = x.shape
    wide = max(left + w, columns * stride)
    padded = np.zeros((n, c, top + h + bottom, wide), np.float32)
    padded[:, :, top : top + h, left : left + w] = x
    phases = [padded[..., p : p + columns * stride : stride] for p in range(stride)]
    return np.stack([ph[..., :columns] for ph in phases], axis=3)


# (channels, (H, W), (top, bottom, left), stride, columns, batch)
GEOMETRIES = {
    "3x3-s1": (5, (9, 37), (1, 1, 1), 1, 48, 1),  # 37 + 2 columns read, 48 copied
    "3x3-s2": (4, (15, 70), (1, 1, 1), 2, 40, 2),  # both phases; the last vector exact
    "s2-odd-left": (3, (6, 33), (0, 2, 3), 2, 19, 1),  # pads at the bottom and left only
    "s2-narrow": (2, (5, 7), (2, 2, 2), 2, 6, 3),  # rows narrower than a vector: scalar
    "s3": (2, (7, 50), (1, 1, 1), 3, 18, 1),  # scalar interior, three phases
    "no-pads-s2": (3, (8, 64), (0, 0, 0), 2, 32, 1),
}


@pytest.mark.skipif(not ON_X86, reason="runs the kernel on this x86 host")
@pytest.mark.parametrize("lanes", [16, 8, 4])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_copy_is_numpys_padded_image_in_phases(name, lanes):
    channels, size, pads, stride, columns, batch = GEOMETRIES[name]
    func = pad_phases_kernel(channels, size, pads, stride, columns, lanes)
    lib = tvm.compile(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target="llvm"
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, (batch, channels, *size)).astype(np.float32)  # no zero inside
    rows = size[0] + pads[0] + pads[1]
    out = tvm.runtime.tensor(np.full((batch, channels, rows, stride, columns), np.nan, "float32"))
    lib["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), expected(x, pads, stride, columns))


def test_phase_ranges_cover_the_image_columns_once():
    for stride, left, width, columns in [
        (1, 1, 37, 48),
        (2, 1, 70, 40),
        (2, 3, 33, 19),
        (3, 0, 9, 2),
    ]:
        read = []
        for p in range(stride):
            first, end = phase_range(p, stride, left, width, columns)
            read += [q * stride + p - left for q in range(first, end)]
        last = min(width, columns * stride - left)  # the copy may stop before the image does
        assert sorted(read) == list(range(last)), (stride, left, width, columns)


def test_stride_two_phases_are_vector_loads_and_shuffles_on_avx512():
    # Compiled only (any host): 16 lanes, phases of 40 columns from 70 (two whole vectors).
    func = pad_phases_kernel(4, (15, 70), (1, 1, 1), 2, 40, 16)
    target = tvm.target.Target(
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}
    )
    lib = tvm.compile(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target
    )
    asm = lib.mod.inspect_source("asm")
    assert "vpermt2ps" in asm  # the even elements of two loads
    assert "vgatherdps" not in asm and "vinsertps" not in asm  # no gathered phase element


@pytest.mark.parametrize("preset", ["x86", "x86:haswell"])
def test_strided_depthwise_conv_reads_the_copy(preset):
    case = Case((2, 32, 23, 37), 32, 3, stride=2, pads=[1] * 4, group=32, relu=True)
    graph, feeds = conv_graph(case)
    result = build.build_module(graph, targets.resolve(preset), keep_params=False)
    rules = sorted(set(result.kernels.values()))
    assert rules == ["conv", PAD_RULE], result.kernels  # the copy, then the fused conv kernel
    assert_matches(graph, feeds, run_built(result, feeds))


def test_convs_of_one_geometry_share_one_copy_kernel():
    from ecograph.ir import Graph

    rng = np.random.default_rng(1)
    g = Graph("two_depthwise")
    y = g.add_input("x", "float32", [1, 16, 12, 20])
    for i in range(2):  # the same geometry twice (12 x 20 in and out): one copy kernel
        w = g.add_constant(rng.uniform(-1, 1, (16, 1, 3, 3)).astype(np.float32), f"w{i}")
        attrs = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1] * 4, "group": 16}
        y = g.add_node("Conv", [y, w], attrs).outputs[0]
        y = g.add_node("Relu", [y], {}).outputs[0]
    g.set_outputs([y])
    feeds = {"x": rng.uniform(-1, 1, (1, 16, 12, 20)).astype(np.float32)}
    result = build.build_module(g, targets.resolve("x86"), keep_params=False)
    copies = [k for k, rule in result.kernels.items() if rule == PAD_RULE]
    assert len(copies) == 1, result.kernels
    assert_matches(g, feeds, run_built(result, feeds))
