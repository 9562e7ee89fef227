"""The CPU rule for reductions: which kernels it takes, and that what it schedules computes what
numpy computes.

Kernels come from small Relax functions legalized and fused as in a build: LayerNorm (whole,
and in the pieces ecograph's lowering emits: mean-subtract, then variance and normalize),
RMSNorm, softmax and log-softmax, sum / max / mean over the last axes (keepdims or not, float
and integer), global average pooling, sums over outer axes and over everything. Each is
scheduled by the rule for several x86 levels, compiled alone or as a whole module, and run at
static and symbolic sizes including odd ones; floats within rtol 1e-5, integers exact.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from tvm import relax, te

from ecograph.backends.tvm import targets
from ecograph.backends.tvm.schedules.reduction import Reduction
from tests.backends.schedule_cases import (
    I64,
    ODD_SIZES,
    TARGETS,
    build_module,
    check,
    compile_func,
    fused_kernels,
    loop_kinds,
    only_kernel,
    rand,
    run_compiled,
    schedule,
    sym,
)

EPS = 1e-5


def _layer_norm_ref(x, g, b):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * g + b


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("width", [64, 17, 129, 384])
def test_layer_norm_rows(preset, width):
    n = sym("n")

    def build(bb, x, g, b):
        return relax.op.nn.layer_norm(x, g, b, axes=[-1], epsilon=EPS)

    params = [("x", [n, width], "float32"), ("g", [width], "float32"), ("b", [width], "float32")]
    scheduled = schedule(Reduction, only_kernel(fused_kernels(build, params)), preset)
    assert "vectorized" in loop_kinds(scheduled)
    assert "_rf" in scheduled.script()  # the row sums accumulate in vector lanes
    run = build_module(build, params, Reduction, preset)
    g, b = rand((width,), seed=1), rand((width,), seed=2)
    for rows in [1, 3, 17]:
        x = rand((rows, width), seed=rows)
        (got,) = run(x, g, b)
        check(got, _layer_norm_ref(x, g, b))


@pytest.mark.parametrize("preset", TARGETS)
def test_layer_norm_in_the_lowering_s_pieces(preset):
    # ecograph lowers LayerNorm as mean-subtract, square, then mean / add eps / sqrt / divide /
    # scale / shift; fusion makes two reduction kernels with per-row scalars in between.
    b_, s_ = sym("batch"), sym("seq")

    def build(bb, x, g, b):
        d = bb.emit(relax.op.subtract(x, relax.op.mean(x, axis=[-1], keepdims=True)))
        var = relax.op.mean(bb.emit(relax.op.multiply(d, d)), axis=[-1], keepdims=True)
        std = relax.op.sqrt(relax.op.add(var, relax.const(EPS, "float32")))
        norm = relax.op.multiply(d, relax.op.divide(relax.const(1.0, "float32"), std))
        return relax.op.add(relax.op.multiply(norm, g), b)

    params = [("x", [b_, s_, 64], "float32"), ("g", [64], "float32"), ("b", [64], "float32")]
    run = build_module(build, params, Reduction, preset, must_take=False)
    assert sum(run.taken.values()) == 2  # the two kernels with a mean
    g, b = rand((64,), seed=1), rand((64,), seed=2)
    for batch, seq in [(1, 1), (2, 3), (1, 17)]:
        x = rand((batch, seq, 64), seed=seq)
        (got,) = run(x, g, b)
        check(got, _layer_norm_ref(x, g, b))


@pytest.mark.parametrize("preset", TARGETS)
def test_rms_norm(preset):
    n = sym("n")

    def build(bb, x, w):
        ms = relax.op.mean(relax.op.multiply(x, x), axis=[-1], keepdims=True)
        inv = relax.op.rsqrt(relax.op.add(ms, relax.const(1e-6, "float32")))
        return relax.op.multiply(relax.op.multiply(x, inv), w)

    params = [("x", [n, 96], "float32"), ("w", [96], "float32")]
    run = build_module(build, params, Reduction, preset, must_take=False)
    # the kernel with the mean is taken; the square before it is a kernel of its own
    assert [k for k, took in run.taken.items() if took] == [k for k in run.taken if "mean" in k]
    w = rand((96,), seed=5)
    for rows in ODD_SIZES:
        x = rand((rows, 96), seed=rows).astype(np.float64)
        (got,) = run(x.astype(np.float32), w)
        check(got, x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w)


@pytest.mark.parametrize("preset", TARGETS)
def test_softmax_and_log_softmax_over_a_symbolic_axis(preset):
    # Attention scores [b, h, s, s] with a symbolic sequence length: rows of 1, 3, 17, 129.
    b, s = sym("b"), sym("s")
    for op, ref in [
        (relax.op.nn.softmax, lambda x: np.exp(x - _logsumexp(x))),
        (relax.op.nn.log_softmax, lambda x: x - _logsumexp(x)),
    ]:
        func = only_kernel(
            fused_kernels(lambda bb, x, op=op: op(x, axis=-1), [("x", [b, 2, s, s], "float32")])
        )
        lib = compile_func(schedule(Reduction, func, preset), preset)
        for seq in ODD_SIZES:
            x = rand((1, 2, seq, seq), seed=seq) * 4
            (got,) = run_compiled(lib, [x], [((1, 2, seq, seq), "float32")])
            check(got, ref(x.astype(np.float64)))


@pytest.mark.parametrize("preset", TARGETS)
def test_static_rows_symbolic_row_length(preset):
    # [3, n]: the rows are static (int32 after narrowing), the row length symbolic (int64).
    n = sym("n")
    func = only_kernel(
        fused_kernels(lambda bb, x: relax.op.nn.softmax(x, axis=-1), [("x", [3, n], "float32")])
    )
    lib = compile_func(schedule(Reduction, func, preset), preset)
    for cols in ODD_SIZES:
        x = rand((3, cols), seed=cols) * 4
        (got,) = run_compiled(lib, [x], [((3, cols), "float32")])
        x64 = x.astype(np.float64)
        check(got, np.exp(x64 - _logsumexp(x64)))


def _logsumexp(x):
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.mark.parametrize("preset", TARGETS)
def test_softmax_static_rows_run_in_parallel(preset):
    # [1, 12, 128, 128]: big enough for the row loop to be parallel (every row independent).
    func = only_kernel(
        fused_kernels(
            lambda bb, x: relax.op.nn.softmax(x, axis=-1), [("x", [1, 12, 128, 128], "float32")]
        )
    )
    scheduled = schedule(Reduction, func, preset)
    assert "parallel" in loop_kinds(scheduled) and "vectorized" in loop_kinds(scheduled)
    lib = compile_func(scheduled, preset)
    x = rand((1, 12, 128, 128)) * 4
    (got,) = run_compiled(lib, [x], [((1, 12, 128, 128), "float32")])
    x64 = x.astype(np.float64)
    check(got, np.exp(x64 - _logsumexp(x64)))


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("keepdims", [True, False])
def test_sum_max_mean_over_the_last_axis(preset, keepdims):
    n, c = sym("n"), sym("c")

    def build(bb, x):
        return relax.Tuple(
            [
                relax.op.sum(x, axis=[-1], keepdims=keepdims),
                relax.op.max(x, axis=[-1], keepdims=keepdims),
                relax.op.mean(x, axis=[-1], keepdims=keepdims),
            ]
        )

    run = build_module(build, [("x", [n, c], "float32")], Reduction, preset)
    for rows, cols in [(1, 1), (3, 3), (2, 17), (5, 129), (4, 64)]:
        x = rand((rows, cols), seed=cols)
        got = run(x)
        x64 = x.astype(np.float64)
        for g, want in zip(got, [x64.sum(-1, keepdims=keepdims), x.max(-1, keepdims=keepdims),
                                 x64.mean(-1, keepdims=keepdims)], strict=True):  # fmt: skip
            check(g, want)


@pytest.mark.parametrize("preset", TARGETS)
def test_integer_sums_and_maxima_are_exact(preset):
    n = sym("n")

    def build(bb, x):
        return relax.Tuple([relax.op.sum(x, axis=[1]), relax.op.max(x, axis=[1])])

    run = build_module(build, [("x", [n, 77], "int32")], Reduction, preset)
    for rows in [1, 3, 17]:
        x = rand((rows, 77), "int32", seed=rows) * 1000
        total, top = run(x)
        check(total, x.sum(1).astype(np.int32))
        check(top, x.max(1))


@pytest.mark.parametrize("preset", TARGETS)
def test_global_average_pool(preset):
    # mean over H and W of NCHW: two reduction iters fused into one row of 49 / 64.
    for hw in (7, 8):

        def build(bb, x):
            return relax.op.mean(x, axis=[2, 3], keepdims=True)

        run = build_module(build, [("x", [2, 8, hw, hw], "float32")], Reduction, preset)
        x = rand((2, 8, hw, hw), seed=hw)
        (got,) = run(x)
        check(got, x.astype(np.float64).mean((2, 3), keepdims=True))


@pytest.mark.parametrize("preset", TARGETS)
def test_reductions_over_outer_axes(preset):
    # sum over axis 1 of [n, 7, 33] and mean over axis 0 of [n, 40]: vectorized along the
    # innermost spatial axis, the reduction loop outside it.
    n = sym("n")

    def build(bb, x, y):
        return relax.Tuple([relax.op.sum(x, axis=[1]), relax.op.mean(y, axis=[0])])

    params = [("x", [n, 7, 33], "float32"), ("y", [n, 40], "float32")]
    kernels = fused_kernels(build, params)
    assert all(Reduction(targets.resolve(preset)).apply(f, None, False) for f in kernels.values())
    run = build_module(build, params, Reduction, preset)
    for rows in [1, 3, 17]:
        x, y = rand((rows, 7, 33), seed=rows), rand((rows, 40), seed=rows + 1)
        total, mean = run(x, y)
        check(total, x.astype(np.float64).sum(1))
        check(mean, y.astype(np.float64).mean(0))


@pytest.mark.parametrize("preset", TARGETS)
def test_sum_of_everything(preset):
    n = sym("n")
    run = build_module(lambda bb, x: relax.op.sum(x), [("x", [n, 5], "float32")], Reduction, preset)
    for rows in [1, 3, 129]:
        x = rand((rows, 5), seed=rows)
        (got,) = run(x)
        np.testing.assert_allclose(got, x.astype(np.float64).sum(), rtol=1e-5)


def test_rule_declines_kernels_that_are_not_its_structure():
    spec = targets.resolve("x86")
    x = te.placeholder((I64(8), I64(16)), "float32", name="x")
    y = te.compute(x.shape, lambda i, j: x[i, j] * 2.0)  # element-wise only
    assert Reduction(spec).apply(te.create_prim_func([x, y]), None, False) is None
    k = te.reduce_axis((0, I64(16)), "k")
    w = te.placeholder((I64(16), I64(4)), "float32", name="w")
    mm = te.compute((I64(8), I64(4)), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k))
    assert Reduction(spec).apply(te.create_prim_func([x, w, mm]), None, False) is None
    # a sliding window (pooling / convolution structure)
    r = te.reduce_axis((0, I64(3)), "r")
    win = te.compute((I64(8), I64(14)), lambda i, j: te.max(x[i, j + r], axis=r))
    assert Reduction(spec).apply(te.create_prim_func([x, win]), None, False) is None
