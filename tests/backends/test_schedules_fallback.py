"""The last CPU rule: every kernel no other rule took gets a safe schedule (parallel outer loops
when large enough, a vectorized inner loop where legal) and computes the same; kernels it
cannot read (opaque or extern blocks, data-dependent writes) are left untouched.

Kernels come from Relax ops legalized and fused as in a build (convolutions, a product with a
transposed operand, sliding sums) or from TE / TVMScript; each is scheduled by the rule for
several x86 levels, compiled and compared with numpy (rtol 1e-5; integers exact).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from numpy.lib.stride_tricks import sliding_window_view
from tvm import relax, te

from ecograph.backends.tvm import targets
from ecograph.backends.tvm.schedules.fallback import Fallback
from tests.backends.schedule_cases import (
    I64,
    TARGETS,
    build_module,
    check,
    check_sums,
    compile_func,
    fused_kernels,
    loop_kinds,
    only_kernel,
    rand,
    run_compiled,
    schedule,
    sym,
)


def conv_ref(x, w, stride, pad):
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    kh, kw = w.shape[2:]
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", win, w.astype(np.float64))


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize(("kernel", "stride", "pad"), [(3, 1, 1), (7, 2, 3), (1, 1, 0)])
def test_convolutions_with_fused_epilogue(preset, kernel, stride, pad):
    n = sym("n")

    def build(bb, x, w, b):
        y = relax.op.nn.conv2d(x, w, strides=stride, padding=pad)
        return relax.op.nn.relu(relax.op.add(y, b))

    params = [
        ("x", [n, 3, 19, 19], "float32"),
        ("w", [8, 3, kernel, kernel], "float32"),
        ("b", [1, 8, 1, 1], "float32"),
    ]
    run = build_module(build, params, Fallback, preset)
    w, b = rand((8, 3, kernel, kernel), seed=1), rand((1, 8, 1, 1), seed=2)
    for batch in [1, 2]:
        x = rand((batch, 3, 19, 19), seed=batch)
        (got,) = run(x, w, b)
        bound = conv_ref(np.abs(x), np.abs(w), stride, pad) + np.abs(b)
        check_sums(got, np.maximum(conv_ref(x, w, stride, pad) + b, 0), bound)


def test_big_convolution_is_parallel_and_vectorized_along_the_output_width():
    func = only_kernel(
        fused_kernels(
            lambda bb, x, w: relax.op.nn.conv2d(x, w, padding=1),
            [("x", [1, 32, 56, 56], "float32"), ("w", [32, 32, 3, 3], "float32")],
        ),
        "conv2d",
    )
    scheduled = schedule(Fallback, func, "x86")
    kinds = loop_kinds(scheduled)
    assert "parallel" in kinds and "vectorized" in kinds
    lib = compile_func(scheduled, "x86")
    x, w = rand((1, 32, 56, 56)), rand((32, 32, 3, 3), seed=3)
    (got,) = run_compiled(lib, [x, w], [((1, 32, 56, 56), "float32")])
    check_sums(got, conv_ref(x, w, 1, 1), conv_ref(np.abs(x), np.abs(w), 1, 1))


@pytest.mark.parametrize("preset", TARGETS)
def test_integer_convolution_is_exact(preset):
    params = [("x", [1, 4, 10, 10], "int32"), ("w", [5, 4, 3, 3], "int32")]
    run = build_module(
        lambda bb, x, w: relax.op.nn.conv2d(x, w, padding=1, out_dtype="int32"),
        params,
        Fallback,
        preset,
    )
    x, w = rand((1, 4, 10, 10), "int32"), rand((5, 4, 3, 3), "int32", seed=4)
    (got,) = run(x, w)
    check(got, conv_ref(x, w, 1, 1).astype(np.int64).astype(np.int32))


@pytest.mark.parametrize("preset", TARGETS)
def test_product_with_a_transposed_operand(preset):
    # x @ w.T read as w[j, k]: not the matmul rule's structure; outer loops parallel only.
    m = sym("m")
    x = te.placeholder((m, I64(24)), "float32", name="x")
    w = te.placeholder((I64(40), I64(24)), "float32", name="w")
    k = te.reduce_axis((0, I64(24)), "k")
    y = te.compute((m, I64(40)), lambda i, j: te.sum(x[i, k] * w[j, k], axis=k), name="y")
    lib = compile_func(schedule(Fallback, te.create_prim_func([x, w, y]), preset), preset)
    W = rand((40, 24), seed=5)
    for rows in [1, 3, 17]:
        X = rand((rows, 24), seed=rows)
        (got,) = run_compiled(lib, [X, W], [((rows, 40), "float32")])
        check_sums(got, X.astype(np.float64) @ W.T, np.abs(X) @ np.abs(W.T))


@pytest.mark.parametrize("preset", TARGETS)
def test_sliding_sum_then_row_maximum(preset):
    # two reductions of different structure in one kernel (a window and a row): only the
    # fallback takes it; each block gets its own loop nest.
    n = sym("n")
    x = te.placeholder((n, I64(37)), "float32", name="x")
    r = te.reduce_axis((0, I64(4)), "r")
    win = te.compute((n, I64(34)), lambda i, j: te.sum(x[i, j + r] * x[i, j], axis=r), "win")
    c = te.reduce_axis((0, I64(34)), "c")
    top = te.compute((n,), lambda i: te.max(win[i, c], axis=c), "top")
    lib = compile_func(schedule(Fallback, te.create_prim_func([x, top]), preset), preset)
    for rows in [1, 3, 17]:
        X = rand((rows, 37), seed=rows).astype(np.float64)
        (got,) = run_compiled(lib, [X.astype(np.float32)], [((rows,), "float32")])
        sums = sliding_window_view(X, 4, axis=1)[:, :34].sum(-1) * X[:, :34]
        check(got, sums.max(-1))


def test_fallback_leaves_unreadable_kernels_alone():
    from tvm.script import tirx as T  # noqa: N812

    spec = targets.resolve("x86")

    @T.prim_func(s_tir=True)
    def opaque(a: T.Buffer((4,), "float32"), b: T.Buffer((4,), "float32")):
        with T.sblock("root"), T.sblock("copy"):
            T.reads(a[0:4])
            T.writes(b[0:4])
            for i in range(4):
                b[i] = a[i]

    assert Fallback(spec).apply(opaque, None, False) is None
    # a scatter: the written index is read from data, so the order of the writes matters

    @T.prim_func(s_tir=True)
    def scatter(
        d: T.Buffer((8,), "float32"), ix: T.Buffer((8,), "int64"), out: T.Buffer((16,), "float32")
    ):
        for i in range(8):
            with T.sblock("scatter"):
                vi = T.axis.spatial(8, i)
                out[ix[vi]] = d[vi]

    assert Fallback(spec).apply(scatter, None, False) is None
