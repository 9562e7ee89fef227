"""The CPU rule for pooling: which kernels it takes, and that what it schedules computes what a
numpy pooling computes.

Kernels come from Relax's pooling ops legalized and fused as in a build (padding block, window
reduction, the average's division): max / average pooling over 1, 2 and 3 spatial axes, with
padding, strides and dilation, NCHW and channels-last, a static or symbolic batch; scheduled
for several x86 levels and compared within rtol 1e-5.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("tvm")

from tvm import relax, te

from ecograph.backends.tvm import targets
from ecograph.backends.tvm.schedules.pool import Pool
from tests.backends.schedule_cases import (
    I64,
    TARGETS,
    build_module,
    check,
    fused_kernels,
    loop_kinds,
    only_kernel,
    rand,
    schedule,
    sym,
)


def pool_ref(x, kind, kernel, strides, pads, dilation, include_pad=False):
    """Pooling of NC + spatial `x` (pads: begins then ends), as ONNX defines it."""
    nd = len(kernel)
    spatial = x.shape[2:]
    outs = [
        (spatial[i] + pads[i] + pads[i + nd] - (kernel[i] - 1) * dilation[i] - 1) // strides[i] + 1
        for i in range(nd)
    ]
    y = np.zeros(x.shape[:2] + tuple(outs), np.float64)
    for o in itertools.product(*[range(n) for n in outs]):
        vals = []
        for k in itertools.product(*[range(n) for n in kernel]):
            pos = [o[i] * strides[i] - pads[i] + k[i] * dilation[i] for i in range(nd)]
            if all(0 <= pos[i] < spatial[i] for i in range(nd)):
                vals.append(x[(slice(None), slice(None), *pos)].astype(np.float64))
        stack = np.stack(vals)
        if kind == "max":
            y[(slice(None), slice(None), *o)] = stack.max(0)
        else:
            count = np.prod(kernel) if include_pad else len(vals)
            y[(slice(None), slice(None), *o)] = stack.sum(0) / count
    return y


CASES = [
    # (kind, input shape, kernel, strides, pads (begins + ends), dilation, include_pad)
    ("max", (1, 16, 32, 32), [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], False),
    ("max", (2, 16, 32, 32), [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False),  # ResNet stem
    ("max", (1, 3, 17, 19), [3, 2], [1, 1], [1, 0, 1, 1], [2, 1], False),  # odd, dilated
    ("avg", (1, 4, 9, 9), [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], False),
    ("avg", (1, 4, 9, 9), [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], True),
    ("avg", (2, 5, 33, 33), [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], False),
]


def _relax_pool(kind, nd, kernel, strides, pads, dilation, include_pad, layout=None):
    ops = {
        ("max", 1): relax.op.nn.max_pool1d,
        ("max", 2): relax.op.nn.max_pool2d,
        ("max", 3): relax.op.nn.max_pool3d,
        ("avg", 1): relax.op.nn.avg_pool1d,
        ("avg", 2): relax.op.nn.avg_pool2d,
        ("avg", 3): relax.op.nn.avg_pool3d,
    }
    kwargs = {"layout": layout} if layout else {}

    def build(bb, x):
        return ops[kind, nd](
            x,
            pool_size=kernel,
            strides=strides,
            padding=pads,
            dilation=dilation,
            count_include_pad=include_pad,
            **kwargs,
        )

    return build


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_pool_2d_nchw(preset, case):
    kind, shape, kernel, strides, pads, dilation, include_pad = CASES[case]
    build = _relax_pool(kind, 2, kernel, strides, pads, dilation, include_pad)
    run = build_module(build, [("x", list(shape), "float32")], Pool, preset)
    x = rand(shape, seed=case)
    (got,) = run(x)
    check(got, pool_ref(x, kind, kernel, strides, pads, dilation, include_pad))


@pytest.mark.parametrize("preset", TARGETS)
def test_pool_with_symbolic_batch(preset):
    n = sym("n")
    build = _relax_pool("max", 2, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False)
    run = build_module(build, [("x", [n, 8, 20, 20], "float32")], Pool, preset)
    for batch in [1, 3]:
        x = rand((batch, 8, 20, 20), seed=batch)
        (got,) = run(x)
        check(got, pool_ref(x, "max", [3, 3], [2, 2], [1, 1, 1, 1], [1, 1]))


@pytest.mark.parametrize("preset", TARGETS)
def test_pool_1d_and_3d(preset):
    run1 = build_module(
        _relax_pool("max", 1, [3], [1], [1, 1], [1], False),
        [("x", [2, 4, 37], "float32")],
        Pool,
        preset,
    )
    x1 = rand((2, 4, 37))
    check(run1(x1)[0], pool_ref(x1, "max", [3], [1], [1, 1], [1]))
    run3 = build_module(
        _relax_pool("avg", 3, [2, 2, 2], [2, 2, 2], [0] * 6, [1, 1, 1], False),
        [("x", [1, 3, 6, 8, 34], "float32")],
        Pool,
        preset,
    )
    x3 = rand((1, 3, 6, 8, 34), seed=3)
    check(run3(x3)[0], pool_ref(x3, "avg", [2, 2, 2], [2, 2, 2], [0] * 6, [1, 1, 1]))


@pytest.mark.parametrize("preset", TARGETS)
def test_pool_channels_last(preset):
    # NHWC: the channels are the innermost output axis and contiguous in the input.
    build = _relax_pool("max", 2, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, layout="NHWC")
    run = build_module(build, [("x", [2, 15, 15, 32], "float32")], Pool, preset)
    x = rand((2, 15, 15, 32))
    (got,) = run(x)
    want = pool_ref(x.transpose(0, 3, 1, 2), "max", [3, 3], [2, 2], [1, 1, 1, 1], [1, 1])
    check(got, want.transpose(0, 2, 3, 1))


def test_big_pool_runs_rows_in_parallel_and_vectorizes():
    build = _relax_pool("max", 2, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False)
    func = only_kernel(fused_kernels(build, [("x", [8, 64, 112, 112], "float32")]))
    kinds = loop_kinds(schedule(Pool, func, "x86"))
    assert "parallel" in kinds and "vectorized" in kinds


def test_rule_declines_kernels_that_are_not_pooling():
    spec = targets.resolve("x86")
    x = te.placeholder((I64(8), I64(16)), "float32", name="x")
    k = te.reduce_axis((0, I64(16)), "k")
    row_sum = te.compute((I64(8),), lambda i: te.sum(x[i, k], axis=k))  # a row reduction
    assert Pool(spec).apply(te.create_prim_func([x, row_sum]), None, False) is None
    y = te.compute(x.shape, lambda i, j: x[i, j] + 1.0)  # element-wise
    assert Pool(spec).apply(te.create_prim_func([x, y]), None, False) is None
    # a 1-D convolution: a sliding window over a product of two inputs
    w = te.placeholder((I64(3),), "float32", name="w")
    r = te.reduce_axis((0, I64(3)), "r")
    conv = te.compute((I64(8), I64(14)), lambda i, j: te.sum(x[i, j + r] * w[r], axis=r))
    assert Pool(spec).apply(te.create_prim_func([x, w, conv]), None, False) is None
    # ...but a channels-last depthwise one is a pooling with a weight per window position
    # and channel (ops/conv.py emit_depthwise_nhwc), vectorized along the channels
    xc = te.placeholder((I64(8), I64(10), I64(32)), "float32", name="xc")
    wc = te.placeholder((I64(3), I64(32)), "float32", name="wc")
    depthwise = te.compute(
        (I64(8), I64(8), I64(32)), lambda n, j, c: te.sum(xc[n, j + r, c] * wc[r, c], axis=r)
    )
    sch = Pool(spec).apply(te.create_prim_func([xc, wc, depthwise]), None, False)
    assert sch is not None and "T.vectorized" in sch.mod.script()
    # a weight that also varies along another output axis is no pooling
    wj = te.placeholder((I64(8), I64(3), I64(32)), "float32", name="wj")
    varying = te.compute(
        (I64(8), I64(8), I64(32)), lambda n, j, c: te.sum(xc[n, j + r, c] * wj[j, r, c], axis=r)
    )
    assert Pool(spec).apply(te.create_prim_func([xc, wj, varying]), None, False) is None
