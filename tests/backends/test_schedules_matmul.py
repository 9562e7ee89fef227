"""The CPU matmul rule: which kernels it takes, and that what it schedules computes the same.

Each kernel is a TE function like the ones legalization and fusion produce (batched, several
row iters, symbolic sizes, a fused epilogue, packed weights, int32); it is scheduled by the
rule for several CPU targets, compiled, run at a few sizes, and compared with numpy (exact for
integers). A kernel the rule must leave alone returns None.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm
from tvm import s_tir, te, tirx

from ecograph.backends.tvm import targets
from ecograph.backends.tvm.schedules import Matmul, panel_width
from ecograph.backends.tvm.schedules.matmul import register_tile
from tests.backends.schedule_cases import I64, loop_kinds

TARGETS = ["x86", "x86:haswell", "x86:generic"]


def _run(func, spec, arrays, out_shape, out_dtype="float32"):
    sch = Matmul(spec).apply(func, None, False)
    assert sch is not None, "the rule did not take the kernel"
    lib = tvm.compile(sch.mod, target=spec.tvm_target())
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], out)
    return out.numpy(), sch


def _rand(shape, dtype="float32"):
    rng = np.random.default_rng(0)
    if dtype.startswith("int"):
        return rng.integers(-100, 100, shape).astype(dtype)
    return rng.uniform(-1, 1, shape).astype(dtype)


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize(("b", "s"), [(1, 8), (2, 7), (1, 13), (3, 1)])
def test_batched_rows_with_epilogue(preset, b, s):
    # C[b, s, n] = A[b, s, :] @ W + bias, then GELU: two row iters, a broadcast epilogue.
    spec = targets.resolve(preset)
    bv, sv = tirx.Var("b", "int64"), tirx.Var("s", "int64")
    a = te.placeholder((bv, sv, I64(40)), "float32", name="a")
    w = te.placeholder((I64(40), I64(96)), "float32", name="w")
    bias = te.placeholder((I64(96),), "float32", name="bias")
    k = te.reduce_axis((0, I64(40)), "k")
    c = te.compute((bv, sv, I64(96)), lambda i, j, n: te.sum(a[i, j, k] * w[k, n], axis=k), "mm")
    y = te.compute(c.shape, lambda i, j, n: c[i, j, n] + bias[n], "bias")
    r2 = tirx.const(1 / math.sqrt(2), "float32")
    g = te.compute(y.shape, lambda i, j, n: 0.5 * y[i, j, n] * (1.0 + te.erf(y[i, j, n] * r2)))
    func = te.create_prim_func([a, w, bias, g])
    A, W, B = _rand((b, s, 40)), _rand((40, 96)), _rand((96,))
    got, _ = _run(func, spec, [A, W, B], (b, s, 96))
    x = A.astype(np.float64) @ W + B
    want = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def _panel_product(k_len, n_cols, mr, b, epilogue):
    """The lowering's form of a product with B (a tensor [panels, K, NR]) in column panels:
    rows padded to a multiple of MR reading row min(i, M - 1), then `epilogue` on the first
    M rows. Returns the A placeholder and the output."""
    nr = int(b.shape[-1])
    mv = tirx.Var("m", "int64")
    a = te.placeholder((mv, I64(k_len)), "float32", name="a")
    k = te.reduce_axis((0, I64(k_len)), "k")
    rows = (mv + mr - 1) // mr * mr
    c = te.compute(
        (rows, I64(n_cols)),
        lambda i, j: te.sum(a[te.min(i, mv - 1), k] * b[j // nr, k, j % nr], axis=k),
        "mm",
    )
    return a, te.compute((mv, I64(n_cols)), lambda i, j: epilogue(c[i, j]))


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("m", [1, 5, 16, 21])
def test_packed_weights_rows_padded_and_clamped(preset, m):
    # The form the lowering emits for constant weights: W packed [N/NR, K, NR], rows padded to
    # a multiple of MR reading row min(i, M-1), then the first M rows copied out.
    spec = targets.resolve(preset)
    n_cols, k_len = 100, 64
    mr, nr = register_tile(spec, n_cols, single_row=m == 1)
    n_pad = -(-n_cols // nr) * nr
    wp = te.placeholder((I64(n_pad // nr), I64(k_len), I64(nr)), "float32", name="wp")
    a, y = _panel_product(k_len, n_cols, mr, wp, lambda v: te.max(v, tirx.const(0.0, "float32")))
    func = te.create_prim_func([a, wp, y])
    A, W = _rand((m, k_len)), _rand((k_len, n_cols))
    Wpad = np.zeros((k_len, n_pad), np.float32)
    Wpad[:, :n_cols] = W
    Wp = np.ascontiguousarray(Wpad.reshape(k_len, n_pad // nr, nr).transpose(1, 0, 2))
    got, _ = _run(func, spec, [A, Wp], (m, n_cols))
    np.testing.assert_allclose(got, np.maximum(A.astype(np.float64) @ W, 0), rtol=1e-5, atol=1e-5)


def _allocations(func) -> dict[str, int]:
    """Buffer name -> elements, for the buffers a scheduled function allocates."""
    import tvm_ffi

    found: dict[str, int] = {}

    def visit(block) -> None:
        for buf in block.alloc_buffers:
            found[buf.name] = math.prod(int(d) for d in buf.shape)

    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, visit), order="pre")
    return found


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("m", [1, 5, 21])
def test_decoded_weight_panels_are_decoded_once_per_panel(preset, m):
    # The lowering's form for several rows of a dequantizing product: the weights decoded as
    # a stage of their own (DECODED_PANEL, [N/NR, K, NR] floats from int8 codes and group
    # scales), then the packed product. The rule computes one panel at a time into a scratch
    # of K x NR floats that every row tile reads (not the whole decoded matrix, not inlined).
    from ecograph.backends.tvm.schedules.matmul import DECODED_PANEL

    spec = targets.resolve(preset)
    n_cols, k_len, group = 100, 64, 16
    mr, nr = register_tile(spec, n_cols, single_row=False)
    panels = -(-n_cols // nr)
    codes = te.placeholder((I64(panels), I64(k_len), I64(nr)), "int8", name="codes")
    scales = te.placeholder((I64(panels), I64(k_len // group), I64(nr)), "float32", name="s")
    decoded = te.compute(
        (I64(panels), I64(k_len), I64(nr)),
        lambda p, kk, c: codes[p, kk, c].astype("float32") * scales[p, kk // group, c],
        DECODED_PANEL,
    )
    a, y = _panel_product(k_len, n_cols, mr, decoded, lambda v: v + tirx.const(1.0, "float32"))
    func = te.create_prim_func([a, codes, scales, y])
    rng = np.random.default_rng(1)
    A = _rand((m, k_len))
    Q = rng.integers(-8, 8, (panels, k_len, nr)).astype(np.int8)
    S = rng.uniform(0.01, 0.1, (panels, k_len // group, nr)).astype(np.float32)
    got, sch = _run(func, spec, [A, Q, S], (m, n_cols))
    W = (Q.astype(np.float64) * np.repeat(S, group, axis=1)).transpose(1, 0, 2)
    W = W.reshape(k_len, panels * nr)[:, :n_cols]
    np.testing.assert_allclose(got, A.astype(np.float64) @ W + 1, rtol=1e-5, atol=1e-5)
    # the buffers as compiled (compacted to what a block's loop nest touches)
    t = s_tir.transform
    lower = [t.LowerInitBlock(), t.PlanAndUpdateBufferAllocationLocation(),
             t.ConvertBlocksToOpaque(), t.CompactBufferAllocation()]  # fmt: skip
    compacted = tvm.transform.Sequential(lower)(sch.mod)["main"]
    assert _allocations(compacted).get(DECODED_PANEL) == k_len * nr
    assert "parallel" in loop_kinds(compacted)


@pytest.mark.parametrize("preset", TARGETS)
@pytest.mark.parametrize("n_cols", [100, 1000])
def test_many_packed_panels_run_panel_outside_the_row_tiles(preset, n_cols):
    # Packed weights of PANEL_OUTER_MIN panels or more, several rows: the parallel loop runs
    # over the column panels (each read from memory once, then from cache by every row
    # tile), the row tiles inside; fewer panels keep one task per tile (rows x panels).
    from ecograph.backends.tvm.schedules.matmul import PANEL_OUTER_MIN

    spec = targets.resolve(preset)
    k_len = 48
    mr, nr = register_tile(spec, n_cols, single_row=False)
    panels = -(-n_cols // nr)
    wp = te.placeholder((I64(panels), I64(k_len), I64(nr)), "float32", name="wp")
    a, y = _panel_product(k_len, n_cols, mr, wp, lambda v: v * tirx.const(2.0, "float32"))
    func = te.create_prim_func([a, wp, y])
    A, W = _rand((13, k_len)), _rand((k_len, panels * nr))
    Wp = np.ascontiguousarray(W.reshape(k_len, panels, nr).transpose(1, 0, 2))
    got, sch = _run(func, spec, [A, Wp], (13, n_cols))
    np.testing.assert_allclose(got, 2 * A.astype(np.float64) @ W[:, :n_cols], rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    parallel = []
    tvm_ffi_walk(
        sch.mod["main"], lambda lp: lp.kind == tirx.ForKind.PARALLEL and parallel.append(lp)
    )
    assert len(parallel) == 1
    extent = parallel[0].extent
    if panels >= PANEL_OUTER_MIN:
        assert isinstance(extent, tirx.IntImm) and int(extent) == panels
    else:
        assert not isinstance(extent, tirx.IntImm)  # rows (symbolic) x panels


def tvm_ffi_walk(func, visit) -> None:
    import tvm_ffi

    tvm_ffi.structural_walk(func.body, (tirx.For, visit), order="pre")


@pytest.mark.parametrize("seq", [3, 8, 17])
def test_batched_matmul_both_operands_batched(seq):
    # Attention's P @ V: batch and heads index both operands.
    spec = targets.resolve("x86")
    bv, sv = tirx.Var("b", "int64"), tirx.Var("s", "int64")
    p = te.placeholder((bv, I64(4), sv, sv), "float32", name="p")
    v = te.placeholder((bv, I64(4), sv, I64(16)), "float32", name="v")
    k = te.reduce_axis((0, sv), "k")
    o = te.compute(
        (bv, I64(4), sv, I64(16)), lambda a, h, i, d: te.sum(p[a, h, i, k] * v[a, h, k, d], axis=k)
    )
    func = te.create_prim_func([p, v, o])
    P, V = _rand((2, 4, seq, seq)), _rand((2, 4, seq, 16))
    got, _ = _run(func, spec, [P, V], (2, 4, seq, 16))
    np.testing.assert_allclose(got, P.astype(np.float64) @ V, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", TARGETS)
def test_int32_products_are_exact(preset):
    # MatMulInteger after legalization: int32 accumulation, then a float scale epilogue with a
    # block (the scale vector) that does not read the product.
    spec = targets.resolve(preset)
    sv = tirx.Var("s", "int64")
    a = te.placeholder((I64(2), sv, I64(64)), "int32", name="a")
    w = te.placeholder((I64(64), I64(192)), "int32", name="w")
    sc = te.placeholder((), "float32", name="sc")
    col = te.placeholder((I64(192),), "float32", name="col")
    k = te.reduce_axis((0, I64(64)), "k")
    c = te.compute((I64(2), sv, I64(192)), lambda i, j, n: te.sum(a[i, j, k] * w[k, n], axis=k))
    scale = te.compute((I64(192),), lambda n: sc[()] * col[n])
    out = te.compute(c.shape, lambda i, j, n: c[i, j, n].astype("float32") * scale[n])
    func = te.create_prim_func([a, w, sc, col, out])
    A, W = _rand((2, 9, 64), "int32"), _rand((64, 192), "int32")
    S, C = np.array(0.5, np.float32), np.arange(192, dtype=np.float32)
    got, _ = _run(func, spec, [A, W, S, C], (2, 9, 192))
    np.testing.assert_array_equal(got, (A @ W).astype(np.float32) * (S * C))


def test_rule_leaves_non_products_alone():
    spec = targets.resolve("x86")
    x = te.placeholder((I64(8), I64(16)), "float32", name="x")
    k = te.reduce_axis((0, I64(16)), "k")
    row_max = te.compute((I64(8),), lambda i: te.max(x[i, k], axis=k))  # a reduction, no product
    assert Matmul(spec).apply(te.create_prim_func([x, row_max]), None, False) is None
    y = te.compute((I64(8), I64(16)), lambda i, j: x[i, j] * 2.0)  # no reduction
    assert Matmul(spec).apply(te.create_prim_func([x, y]), None, False) is None
    # B read with j not in its last index (a transposed operand): not vectorizable along j.
    wt = te.placeholder((I64(32), I64(16)), "float32", name="wt")
    c = te.compute((I64(8), I64(32)), lambda i, j: te.sum(x[i, k] * wt[j, k], axis=k))
    assert Matmul(spec).apply(te.create_prim_func([x, wt, c]), None, False) is None


@pytest.mark.parametrize(
    ("preset", "n", "single", "expect"),
    [
        ("x86:skylake-avx512", 1536, False, (5, 48)),  # 3 zmm wide, 5 rows: 960 B of stack
        ("x86:skylake-avx512", 688, True, (1, 64)),  # GEMV: 4 zmm, tail tile
        ("x86:haswell", 1536, False, (4, 24)),  # AVX2: 16 ymm registers, 12 accumulators
        ("arm", 1536, False, (8, 12)),  # NEON: 32 q registers
    ],
)
def test_register_tiles_follow_the_target(preset, n, single, expect):
    spec = targets.resolve(preset)
    mr, nr = register_tile(spec, n, single_row=single)
    assert (mr, nr) == expect
    assert mr * nr * 4 < 1024  # the tile stays on the stack
    assert panel_width(n, spec.vector_bits // 32, single_row=single) == nr


@pytest.mark.parametrize("n", [1, 3, 17])
def test_vector_times_batched_matrix_with_few_columns(n):
    # ONNX's test_matmul_1d_3d: no row iter at all, and fewer columns than one vector.
    spec = targets.resolve("x86")
    a = te.placeholder((I64(4),), "float32", name="a")
    b = te.placeholder((I64(2), I64(4), I64(n)), "float32", name="b")
    k = te.reduce_axis((0, I64(4)), "k")
    c = te.compute((I64(2), I64(n)), lambda i, j: te.sum(a[k] * b[i, k, j], axis=k))
    A, B = _rand((4,)), _rand((2, 4, n))
    got, _ = _run(te.create_prim_func([a, b, c]), spec, [A, B], (2, n))
    np.testing.assert_allclose(got, np.einsum("k,bkn->bn", A, B), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", ["x86", "x86:haswell"])
@pytest.mark.parametrize(("m", "n"), [(9, 1), (1, 1), (4, 5)])
def test_packed_panel_wider_than_the_matrix(preset, m, n):
    # Found by the compiled-graph fuzzer: a [K, 1] weight packed in a 24-wide panel.
    spec = targets.resolve(preset)
    k_len = 5
    mr, nr = register_tile(spec, n, single_row=m == 1)
    a = te.placeholder((I64(m), I64(k_len)), "float32", name="a")
    wp = te.placeholder((I64(1), I64(k_len), I64(nr)), "float32", name="wp")
    k = te.reduce_axis((0, I64(k_len)), "k")
    c = te.compute((I64(m), I64(n)), lambda i, j: te.sum(a[i, k] * wp[j // nr, k, j % nr], axis=k))
    A, W = _rand((m, k_len)), _rand((k_len, n))
    Wp = np.zeros((1, k_len, nr), np.float32)
    Wp[0, :, :n] = W
    got, _ = _run(te.create_prim_func([a, wp, c]), spec, [A, Wp], (m, n))
    np.testing.assert_allclose(got, A.astype(np.float64) @ W, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [1, "m"])
@pytest.mark.parametrize("n", [200, 1000])
def test_columns_past_the_last_whole_vector_keep_the_kernel_vectorized(rows, n):
    """N not a multiple of the vector width (a 1000-class head, GPT-2's 50257-token LM head):
    the product is computed over whole vectors of columns and the extra ones dropped, so no
    predicate lands on the vector lanes (TVM 0.27 then left the whole kernel scalar). Built
    for AVX-512: its multiply-adds are 16-lane vectors; and it computes the interpreter's
    numbers on this host."""
    from tvm import relax

    from ecograph.backends.tvm import build
    from ecograph.ir import GraphBuilder, interpret

    rng = np.random.default_rng(3)
    b = GraphBuilder()
    x = b.input("x", "float32", [rows, 64])
    b.output(b.op("MatMul", x, b.constant(rng.standard_normal((64, n)).astype(np.float32), "w")))
    graph = b.graph
    result = build.build_module(graph, "x86:skylake-avx512", keep_params=False)
    assert result.kernels == {"matmul": "matmul"} or set(result.kernels.values()) <= {
        "matmul",
        "injective",
    }, result.kernels
    (lib,) = result.executable.mod.imports
    assert "fmuladd.v16f32" in lib.inspect_source("ll") or "fma.v16f32" in lib.inspect_source("ll")
    host = build.build_module(graph, "x86", keep_params=False)
    vm = relax.VirtualMachine(host.executable, tvm.cpu())
    for m in (1,) if rows == 1 else (1, 3):
        feeds = {"x": rng.standard_normal((m, 64)).astype(np.float32)}
        got = vm["main"](tvm.runtime.tensor(feeds["x"])).numpy()
        want = interpret(graph, feeds)[graph.outputs[0].name]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize(
    ("preset", "n_cols", "decoded", "tile"),
    [
        ("x86:haswell", 96, False, 48),  # 4 panels of 24: two a tile, 6 accumulator vectors
        ("x86:haswell", 96, True, 24),  # 4-bit codes unpacked in the loop: one panel a tile
        ("x86:haswell", 80, False, 16),  # 5 panels of 16: no whole span of 2, one panel
        ("x86:skylake-avx512", 192, False, 96),  # 4 panels of 48 (3 zmm): two a tile
    ],
)
def test_one_row_tile_spans_whole_panels(preset, n_cols, decoded, tile):
    """A decode step's product over weights packed at the several-row width (so prefill and
    decode share them) takes as many whole panels a tile as give it 4 accumulator vectors
    (3 when the weights are decoded bit by bit), and computes the same."""
    spec = targets.resolve(preset)
    k_len = 64
    nr = panel_width(n_cols, spec.vector_bits // 32, single_row=False)
    panels = n_cols // nr
    a = te.placeholder((I64(1), I64(k_len)), "float32", name="a")
    k = te.reduce_axis((0, I64(k_len)), "k")
    rng = np.random.default_rng(2)
    A = _rand((1, k_len))
    if decoded:
        codes = te.placeholder((I64(panels), I64(k_len // 2), I64(nr)), "uint8", name="codes")

        def weight(kk, j):
            byte = codes[j // nr, kk // 2, j % nr].astype("int32")
            shift = (28 - (kk % 2) * 4).astype("int32")
            return ((byte << shift) >> 28).astype("float32")

        Q = rng.integers(0, 256, (panels, k_len // 2, nr)).astype(np.uint8)
        lo, hi = (Q & 15).astype(np.int8), (Q >> 4).astype(np.int8)
        lo, hi = np.where(lo > 7, lo - 16, lo), np.where(hi > 7, hi - 16, hi)
        W = np.stack([lo, hi], axis=2).reshape(panels, k_len, nr)  # k = 2t + nibble
        operand, arrays = codes, [A, Q]
    else:
        wp = te.placeholder((I64(panels), I64(k_len), I64(nr)), "float32", name="wp")

        def weight(kk, j):
            return wp[j // nr, kk, j % nr]

        W = _rand((panels, k_len, nr))
        operand, arrays = wp, [A, W]
    c = te.compute((I64(1), I64(n_cols)), lambda i, j: te.sum(a[i, k] * weight(k, j), axis=k), "mm")
    y = te.compute(c.shape, lambda i, j: c[i, j] + tirx.const(1.0, "float32"), "out")
    func = te.create_prim_func([a, operand, y])
    sch = Matmul(spec).apply(func, None, False)
    assert sch is not None
    t = s_tir.transform
    lower = [t.LowerInitBlock(), t.PlanAndUpdateBufferAllocationLocation(),
             t.ConvertBlocksToOpaque(), t.CompactBufferAllocation()]  # fmt: skip
    compacted = tvm.transform.Sequential(lower)(sch.mod)["main"]
    assert _allocations(compacted) == {"mm": tile}  # one tile of accumulators
    if spec.vector_bits > 256:
        return  # compiled and run where the host runs it: the haswell cases
    got, _ = _run(func, spec, arrays, (1, n_cols))
    dense = W.astype(np.float64).transpose(1, 0, 2).reshape(k_len, panels * nr)
    np.testing.assert_allclose(got, A.astype(np.float64) @ dense + 1, rtol=1e-5, atol=1e-5)
