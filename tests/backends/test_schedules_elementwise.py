"""The CPU rule for element-wise and other injective kernels: which kernels it takes, and that
what it schedules computes what numpy computes.

Kernels come from small Relax functions legalized and fused as in a build (element-wise chains,
GELU, transposes, reshapes, broadcasts, casts, comparisons, concat / slice / pad / gather), are
scheduled by the rule for several x86 levels, compiled alone and run at static and symbolic
sizes, odd ones included; floats within rtol 1e-5, integers and booleans exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("tvm")

from tvm import relax, te

from ecograph.backends.tvm import targets
from ecograph.backends.tvm.schedules.injective import Injective
from ecograph.backends.tvm.schedules.loops import PARALLEL_MIN_WORK
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

erf = np.vectorize(math.erf)


def _gelu(bb, x):
    half = relax.op.multiply(x, relax.const(0.5, "float32"))
    scaled = relax.op.multiply(x, relax.const(1 / math.sqrt(2), "float32"))
    return relax.op.multiply(half, relax.op.add(relax.const(1.0, "float32"), relax.op.erf(scaled)))


@pytest.mark.parametrize("preset", TARGETS)
def test_gelu_chain_symbolic_rows(preset):
    # The fused GELU of MiniLM: five element-wise blocks inlined into one vectorized loop.
    n = sym("n")
    func = only_kernel(fused_kernels(_gelu, [("x", [n, 96], "float32")]))
    lib = compile_func(schedule(Injective, func, preset), preset)
    for rows in ODD_SIZES:
        x = rand((rows, 96))
        (got,) = run_compiled(lib, [x], [((rows, 96), "float32")])
        x64 = x.astype(np.float64)
        check(got, 0.5 * x64 * (1 + erf(x64 / math.sqrt(2))))


@pytest.mark.parametrize("preset", TARGETS)
def test_symbolic_innermost_extent_has_a_scalar_tail(preset):
    # [n] and [2, n]: the vector loop runs over whole vectors, the rest element by element.
    n = sym("n")

    def build(bb, x, y):
        return relax.op.subtract(relax.op.multiply(x, y), relax.op.exp(x))

    func = only_kernel(fused_kernels(build, [("x", [2, n], "float32"), ("y", [2, n], "float32")]))
    lib = compile_func(schedule(Injective, func, preset), preset)
    for size in [*ODD_SIZES, 64]:
        x, y = rand((2, size), seed=1), rand((2, size), seed=2)
        (got,) = run_compiled(lib, [x, y], [((2, size), "float32")])
        check(got, x.astype(np.float64) * y - np.exp(x.astype(np.float64)))


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("cols", [3, 17, 129])
def test_static_odd_extents(preset, cols):
    # A static extent that is no multiple of the lanes: vector part plus a scalar remainder.
    def build(bb, x, b):
        return relax.op.maximum(relax.op.add(x, b), relax.const(0.0, "float32"))

    func = only_kernel(
        fused_kernels(build, [("x", [5, cols], "float32"), ("b", [cols], "float32")])
    )
    lib = compile_func(schedule(Injective, func, preset), preset)
    x, b = rand((5, cols)), rand((cols,), seed=3)
    (got,) = run_compiled(lib, [x, b], [((5, cols), "float32")])
    check(got, np.maximum(x + b, 0))


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("perm", [(0, 2, 1, 3), (0, 2, 3, 1)])
def test_transposes_static(preset, perm):
    # Attention's head split keeps the last axis; K^T moves it (tiled lanes x lanes).
    func = only_kernel(
        fused_kernels(
            lambda bb, x: relax.op.permute_dims(x, perm), [("x", [1, 64, 4, 32], "float32")]
        )
    )
    lib = compile_func(schedule(Injective, func, preset), preset)
    x = rand((1, 64, 4, 32))
    want = x.transpose(perm)
    (got,) = run_compiled(lib, [x], [(want.shape, "float32")])
    check(got, want)


def _tiled(func, lanes: int) -> bool:
    """True if some loop of `lanes` iterations holds a vectorized loop of `lanes` (a tile)."""
    import tvm_ffi
    from tvm import tirx

    found = []

    def visit(loop):
        body = loop.body
        if int(loop.kind) == int(tirx.ForKind.SERIAL) and isinstance(body, tirx.For):
            vec = int(body.kind) == int(tirx.ForKind.VECTORIZED)
            found.append(vec and int(loop.extent) == lanes and int(body.extent) == lanes)

    tvm_ffi.structural_walk(func.body, (tirx.For, visit), order="pre")
    return any(found)


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("perm", [(0, 2, 3, 1), (0, 3, 1, 2)])
def test_nchw_nhwc_transposes_tile_over_the_image(preset, perm):
    # A 12 x 12 image is no multiple of 16 or 8 lanes along W, but 144 pixels are: the tile
    # runs over H and W fused (int8 convolutions' NHWC copies and NCHW write-backs)
    shape = (1, 32, 12, 12) if perm == (0, 2, 3, 1) else (1, 12, 12, 32)
    func = only_kernel(
        fused_kernels(lambda bb, x: relax.op.permute_dims(x, perm), [("x", list(shape), "float32")])
    )
    scheduled = schedule(Injective, func, preset)
    lanes = targets.resolve(preset).vector_bits // 32
    assert _tiled(scheduled, lanes), scheduled.script()
    lib = compile_func(scheduled, preset)
    x = rand(shape)
    want = x.transpose(perm)
    (got,) = run_compiled(lib, [x], [(want.shape, "float32")])
    check(got, want)


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("shape", [(1, 12, 12, 3, 7, 8), (1, 12, 12, 3, 3, 64)])
def test_reshapes_stay_reshapes(preset, shape):
    # RewriteDataflowReshape makes a reshape a view (no copy) only if its loop nest still
    # reads as one: a vector loop partitioned for its tail (168 columns) did not
    from tvm.relax.analysis import has_reshape_pattern

    rows = [1, shape[1] * shape[2], math.prod(shape[3:])]
    func = only_kernel(
        fused_kernels(lambda bb, x: relax.op.reshape(x, rows), [("x", list(shape), "uint8")])
    )
    assert has_reshape_pattern(func)
    scheduled = schedule(Injective, func, preset)
    assert has_reshape_pattern(scheduled), scheduled.script()
    x = rand(shape, "uint8")
    (got,) = run_compiled(compile_func(scheduled, preset), [x], [(tuple(rows), "uint8")])
    check(got, x.reshape(rows))


@pytest.mark.parametrize("preset", TARGETS)
def test_parallel_loop_fuses_only_enough_outer_loops(preset):
    # [8, 64, 32, 48]: the parallel loop runs over 8 x 64 = 512 >= PARALLEL_ITERATIONS; the
    # 32 rows stay a loop of their own inside it (indices without division)
    from ecograph.backends.tvm.schedules.loops import PARALLEL_ITERATIONS

    shape = (8, 64, 32, 48)
    func = only_kernel(
        fused_kernels(
            lambda bb, x: relax.op.add(x, relax.const(1.0, "float32")),
            [("x", list(shape), "float32")],
        )
    )
    scheduled = schedule(Injective, func, preset)
    extents = _loop_extents(scheduled)
    assert extents[0] == ("parallel", 8 * 64) and 8 * 64 >= PARALLEL_ITERATIONS > 8, extents
    assert extents[1] == ("serial", 32), extents
    x = rand(shape)
    (got,) = run_compiled(compile_func(scheduled, preset), [x], [(shape, "float32")])
    check(got, x + 1)


def _loop_extents(func) -> list[tuple[str, int]]:
    import tvm_ffi
    from tvm import tirx

    found = []
    tvm_ffi.structural_walk(
        func.body,
        (
            tirx.For,
            lambda lp: found.append((tirx.ForKind(int(lp.kind)).name.lower(), int(lp.extent))),
        ),
        order="pre",
    )
    return found


@pytest.mark.parametrize("preset", TARGETS)
def test_double_transpose_symbolic(preset):
    # fused_transpose_transpose of the default model: [b, s, 4, 16] -> [b, 4, 16, s].
    b, s = sym("b"), sym("s")

    def build(bb, x):
        y = relax.op.permute_dims(x, [0, 2, 1, 3])
        return relax.op.permute_dims(y, [0, 1, 3, 2])

    func = only_kernel(fused_kernels(build, [("x", [b, s, 4, 16], "float32")]))
    lib = compile_func(schedule(Injective, func, preset), preset)
    for bs, ss in [(1, 1), (2, 3), (1, 17), (1, 129)]:
        x = rand((bs, ss, 4, 16))
        (got,) = run_compiled(lib, [x], [((bs, 4, 16, ss), "float32")])
        check(got, x.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("preset", TARGETS)
def test_reshapes_over_symbolic_axes(preset):
    # Reshape reads index by div / mod of a symbolic size; the rule must keep them exact.
    b, s = sym("b"), sym("s")
    split = only_kernel(
        fused_kernels(
            lambda bb, x: relax.op.reshape(x, [b, s, 4, 16]), [("x", [b, s, 64], "float32")]
        )
    )
    merge = only_kernel(
        fused_kernels(
            lambda bb, x: relax.op.reshape(x, [b * s, 64]), [("x", [b, s, 4, 16], "float32")]
        )
    )
    lib_split = compile_func(schedule(Injective, split, preset), preset)
    lib_merge = compile_func(schedule(Injective, merge, preset), preset)
    for bs, ss in [(1, 1), (2, 3), (3, 17)]:
        x = rand((bs, ss, 64))
        (got,) = run_compiled(lib_split, [x], [((bs, ss, 4, 16), "float32")])
        check(got, x.reshape(bs, ss, 4, 16))
        (back,) = run_compiled(lib_merge, [got], [((bs * ss, 64), "float32")])
        check(back, x.reshape(bs * ss, 64))


@pytest.mark.parametrize("preset", TARGETS)
def test_integer_casts_and_comparisons_are_exact(preset):
    # int64 arithmetic, a cast to int8 with wrap-around, a comparison and a select on bools.
    n = sym("n")

    def build(bb, x, m):
        y = relax.op.add(relax.op.multiply(x, relax.const(3, "int64")), relax.const(7, "int64"))
        small = relax.op.astype(y, "int8")
        keep = relax.op.logical_and(relax.op.less(x, relax.const(10, "int64")), m)
        return relax.Tuple([small, relax.op.where(keep, y, relax.op.negative(y))])

    run = build_module(build, [("x", [n, 40], "int64"), ("m", [n, 40], "bool")], Injective, preset)
    for rows in [1, 3, 17]:
        x, m = rand((rows, 40), "int64", seed=rows), rand((rows, 40), "bool", seed=rows)
        y = x * 3 + 7
        small, chosen = run(x, m)
        check(small, y.astype(np.int8))
        check(chosen, np.where((x < 10) & m, y, -y))


@pytest.mark.parametrize("preset", TARGETS)
def test_concat_slice_pad_and_gather(preset):
    n = sym("n")

    def build(bb, x, y, idx):
        cat = relax.op.concat([x, y], axis=1)
        part = relax.op.strided_slice(cat, axes=[1], begin=[1], end=[20])
        padded = relax.op.nn.pad(part, [0, 0, 2, 3], pad_value=-1.0)
        return relax.op.take(padded, idx, axis=1)

    params = [("x", [n, 8], "float32"), ("y", [n, 13], "float32"), ("idx", [7], "int64")]
    run = build_module(build, params, Injective, preset)
    idx = np.array([0, 1, 5, 21, 22, 23, 10], np.int64)
    for rows in [1, 3, 17]:
        x, y = rand((rows, 8)), rand((rows, 13), seed=4)
        part = np.concatenate([x, y], axis=1)[:, 1:20]
        padded = np.pad(part, [(0, 0), (2, 3)], constant_values=-1.0)
        (got,) = run(x, y, idx)
        check(got, padded[:, idx])


@pytest.mark.parametrize("preset", TARGETS)
def test_several_outputs_stay_correct(preset):
    # An intermediate that is also an output cannot be inlined; both blocks are scheduled.
    n = sym("n")
    x = te.placeholder((n, I64(48)), "float32", name="x")
    e = te.compute(x.shape, lambda i, j: te.exp(x[i, j]), name="e")
    y = te.compute(x.shape, lambda i, j: e[i, j] * 2.0 + x[i, j], name="y")
    func = te.create_prim_func([x, e, y])
    lib = compile_func(schedule(Injective, func, preset), preset)
    for rows in ODD_SIZES:
        xs = rand((rows, 48))
        got_e, got_y = run_compiled(lib, [xs], [((rows, 48), "float32")] * 2)
        check(got_e, np.exp(xs.astype(np.float64)))
        check(got_y, np.exp(xs.astype(np.float64)) * 2 + xs)


def test_parallel_only_when_the_kernel_is_big_enough():
    spec = "x86"

    def kernel(rows):
        return only_kernel(
            fused_kernels(
                lambda bb, x: relax.op.add(x, relax.const(1.0, "float32")),
                [("x", [rows, 256], "float32")],
            )
        )

    small_rows = max(1, PARALLEL_MIN_WORK // 256 // 8)
    big_rows = 2 * PARALLEL_MIN_WORK // 256
    small = schedule(Injective, kernel(small_rows), spec)
    big = schedule(Injective, kernel(big_rows), spec)
    assert "parallel" not in loop_kinds(small) and "vectorized" in loop_kinds(small)
    assert "parallel" in loop_kinds(big) and "vectorized" in loop_kinds(big)
    lib = compile_func(big, spec)
    x = rand((big_rows, 256))
    (got,) = run_compiled(lib, [x], [((big_rows, 256), "float32")])
    check(got, x + 1)


def test_vector_width_follows_the_target():
    func = only_kernel(
        fused_kernels(lambda bb, x: relax.op.multiply(x, x), [("x", [8, 64], "float32")])
    )
    for preset, lanes in [("x86:skylake-avx512", 16), ("x86:haswell", 8), ("x86:generic", 4)]:
        text = schedule(Injective, func, preset).script()
        assert f"T.vectorized(T.int64({lanes}))" in text, (preset, text)


def test_rule_declines_kernels_that_are_not_injective():
    spec = targets.resolve("x86")
    x = te.placeholder((I64(8), I64(16)), "float32", name="x")
    k = te.reduce_axis((0, I64(16)), "k")
    total = te.compute((I64(8),), lambda i: te.sum(x[i, k], axis=k), name="total")
    assert Injective(spec).apply(te.create_prim_func([x, total]), None, False) is None
    w = te.placeholder((I64(16), I64(4)), "float32", name="w")
    mm = te.compute((I64(8), I64(4)), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k))
    assert Injective(spec).apply(te.create_prim_func([x, w, mm]), None, False) is None
    # a kernel whose only block is opaque (no iters, loops inside): left to another rule
    from tvm.script import tirx as T  # noqa: N812

    @T.prim_func(s_tir=True)
    def opaque(a: T.Buffer((4,), "float32"), b: T.Buffer((4,), "float32")):
        with T.sblock("root"), T.sblock("copy"):
            T.reads(a[0:4])
            T.writes(b[0:4])
            for i in range(4):
                b[i] = a[i]

    assert Injective(spec).apply(opaque, None, False) is None


@pytest.mark.parametrize("preset", TARGETS)
def test_selects_along_a_symbolic_axis(preset):
    # concat and pad along a symbolic innermost axis: selects that depend on the vector lane
    # (the rule leaves such symbolic loops scalar; see loops.vectorize_inner)
    n, m = sym("n"), sym("m")

    def build(bb, x, y):
        cat = relax.op.concat([x, y], axis=1)
        return relax.op.nn.pad(cat, [0, 0, 3, 2], pad_value=7.0)

    run = build_module(
        build, [("x", [2, n], "float32"), ("y", [2, m], "float32")], Injective, preset
    )
    for cols_x, cols_y in [(1, 1), (3, 17), (17, 129), (16, 32)]:
        x, y = rand((2, cols_x)), rand((2, cols_y), seed=9)
        (got,) = run(x, y)
        want = np.pad(np.concatenate([x, y], axis=1), [(0, 0), (3, 2)], constant_values=7.0)
        check(got, want)


@pytest.mark.parametrize("preset", TARGETS)
def test_producers_read_through_a_reshape_stay_separate(preset):
    # Rotary embedding as ONNX's test builds it: element-wise halves concatenated and
    # reshaped. Inlined through the reshape, their loads index by `% 8` and `// 8`: gathers,
    # and a loop LLVM 22 miscompiled on znver4 (ONNX's test_rotary_embedding_3d_input).
    def build(bb, x, cos, sin):
        heads = bb.emit(relax.op.reshape(x, [2, 3, 4, 8]))
        c, s = relax.op.expand_dims(cos, 2), relax.op.expand_dims(sin, 2)
        x1 = relax.op.strided_slice(heads, axes=[3], begin=[0], end=[4])
        x2 = relax.op.strided_slice(heads, axes=[3], begin=[4], end=[8])
        real = relax.op.subtract(relax.op.multiply(x1, c), relax.op.multiply(x2, s))
        imag = relax.op.add(relax.op.multiply(x2, c), relax.op.multiply(x1, s))
        return relax.op.reshape(relax.op.concat([real, imag], axis=3), [2, 3, 32])

    params = [
        ("x", [2, 3, 32], "float32"),
        ("cos", [2, 3, 4], "float32"),
        ("sin", [2, 3, 4], "float32"),
    ]
    run = build_module(build, params, Injective, preset)
    x, cos, sin = rand((2, 3, 32)), rand((2, 3, 4), seed=1), rand((2, 3, 4), seed=2)
    (got,) = run(x, cos, sin)
    h = x.astype(np.float64).reshape(2, 3, 4, 8)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    x1, x2 = h[..., :4], h[..., 4:]
    check(got, np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=3).reshape(2, 3, 32))
