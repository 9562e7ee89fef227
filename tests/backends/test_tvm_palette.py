"""TVM lowering of ecograph::PaletteDequantize and ecograph::PaletteMatMul (ops/palette.py,
ops/weight_panels.py), compiled for x86 without lowering-time folding and compared with the
reference interpreter (bit for bit for a lookup; float32 tolerance for a product); the CPU
panel kernel on x86 CPU models, the permute rewrite of 16-entry lookups
(schedules/lookup.py); plus CUDA lowerings (no GPU needed)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("tvm")

from tvm import tirx

from ecograph.backends.tvm import build, targets
from ecograph.backends.tvm.driver import lower_graph
from ecograph.backends.tvm.schedules.lookup import rewrite_lookups
from ecograph.ir import GraphBuilder, interpret
from ecograph.quant.quantize import Quantize
from tests.backends.tvm_helpers import (
    RNG,
    Const,
    assert_matches,
    lowering_target,
    one_op,
    rand,
    run_tvm,
)

COVERED_OPS = {("ecograph", "PaletteDequantize"), ("ecograph", "PaletteMatMul")}
U4 = ml_dtypes.uint4


def _case(codes, palette, axis, group):
    return one_op("PaletteDequantize", codes, palette, domain="ecograph", axis=axis,
                  group_size=group)  # fmt: skip


CASES = {
    "uint4-groups-of-2-columns": lambda: _case(
        Const(RNG.integers(0, 16, (6, 5)).astype(ml_dtypes.uint4)),
        Const(RNG.standard_normal((3, 16)).astype(np.float32)),
        1,
        2,
    ),
    "uint4-one-per-row": lambda: _case(
        Const(RNG.integers(0, 16, (4, 7)).astype(ml_dtypes.uint4)),
        Const(RNG.standard_normal((4, 16)).astype(np.float32)),
        0,
        1,
    ),
    "uint8-per-tensor-3d": lambda: _case(
        Const(RNG.integers(0, 256, (2, 3, 4)).astype(np.uint8)),
        Const(RNG.standard_normal((1, 256)).astype(np.float32)),
        0,
        0,
    ),
    # codes at run time (as after an embedding's row Gather), grouped along the last axis
    "uint8-input-codes-axis-minus-1": lambda: _case(
        RNG.integers(0, 256, (2, 3, 8)).astype(np.uint8),
        Const(RNG.standard_normal((2, 256)).astype(np.float32)),
        -1,
        4,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lookup_matches_the_interpreter_exactly(name):
    graph, feeds = CASES[name]()
    (got,) = run_tvm(graph, feeds, fold=False)
    want = interpret(graph, feeds)[graph.outputs[0].name]
    np.testing.assert_array_equal(got, want)


def test_lowers_for_cuda():
    graph, _ = CASES["uint4-groups-of-2-columns"]()
    assert "R.take" in lower_graph(graph, lowering_target("cuda"), fold=False).mod.script()


# ------------------------------------------------------------ PaletteMatMul


def _matmul_case(a, codes, palette, *, axis=1, group=0, trans_b=0):
    return one_op("PaletteMatMul", a, Const(codes), Const(palette), domain="ecograph",
                  axis=axis, group_size=group, trans_b=trans_b)  # fmt: skip


def _palettes(groups: int, entries: int = 16) -> np.ndarray:
    return RNG.standard_normal((groups, entries)).astype(np.float32)


MATMUL_CASES = {
    # one palette per 16 columns, a vector's worth: read at [j // 16, code]
    "uint4-groups-of-16": lambda: _matmul_case(
        rand((3, 20)), RNG.integers(0, 16, (20, 48)).astype(U4), _palettes(3), group=16
    ),
    "uint4-per-tensor-decode-row": lambda: _matmul_case(
        rand((1, 33)), RNG.integers(0, 16, (33, 50)).astype(U4), _palettes(1)
    ),
    # groups of 2 columns: each column's palette repeated in panels (a gather)
    "uint4-groups-of-2-trans_b": lambda: _matmul_case(
        rand((2, 3, 64)),
        RNG.integers(0, 16, (10, 64)).astype(U4),
        _palettes(5),
        axis=0,
        group=2,
        trans_b=1,
    ),
    "uint8-per-tensor": lambda: _matmul_case(
        rand((4, 9)), RNG.integers(0, 256, (9, 7)).astype(np.uint8), _palettes(1, 256)
    ),
    # palettes grouped along K: the generic kernel
    "uint4-groups-along-k": lambda: _matmul_case(
        rand((2, 8)), RNG.integers(0, 16, (8, 6)).astype(U4), _palettes(2), axis=0, group=4
    ),
}


@pytest.mark.parametrize("name", sorted(MATMUL_CASES))
def test_palette_matmul_matches_the_interpreter(name):
    graph, feeds = MATMUL_CASES[name]()
    assert_matches(graph, feeds, run_tvm(graph, feeds, fold=False))


def test_palette_matmul_with_codes_at_run_time_uses_the_generic_kernel():
    graph, feeds = one_op(
        "PaletteMatMul", rand((3, 8)), RNG.integers(0, 16, (8, 5)).astype(np.uint8),
        Const(_palettes(1, 256)), domain="ecograph", axis=1, group_size=0, trans_b=0,
    )  # fmt: skip
    assert_matches(graph, feeds, run_tvm(graph, feeds, fold=False))


def _palettized_mlp(granularity: str, bits: int = 4, n: int = 128, rows: int | str = "b"):
    b = GraphBuilder()
    x = b.input("x", "float32", [rows, 96])
    w1 = b.constant((RNG.standard_normal((96, n)) / 8).astype(np.float32), "w1")
    w2 = b.constant((RNG.standard_normal((64, n)) / 8).astype(np.float32), "w2")
    h = b.op("Relu", b.op("MatMul", x, w1))
    b.output(b.op("Gemm", h, w2, transB=1))
    graph = b.graph
    Quantize(mode="palette", palette_bits=bits, granularity=granularity).run(graph)
    return graph


# The permute each x86 vector width gets for a 16-entry lookup (schedules/lookup.py).
PERMUTES = {"x86:skylake-avx512": "llvm.x86.avx512.permvar.sf.512",
            "x86:haswell": "llvm.x86.avx2.permps", "x86:generic": None}  # fmt: skip


@pytest.mark.parametrize("target", sorted(PERMUTES))
@pytest.mark.parametrize(
    "granularity,n,rows",
    [("group:16", 128, "b"), ("tensor", 128, "b"), ("channel", 128, "b"),
     ("group:16", 688, 1)],  # 688 columns (a Llama FFN): the last panel is partly padding
)  # fmt: skip
def test_palettized_layers_run_in_the_register_blocked_kernel(target, granularity, n, rows):
    """On every x86 vector width: both palettized layers are one kernel each, scheduled by
    the matmul rule; a 16-entry palette shared by a vector of columns is looked up with the
    width's permute (none on 128-bit SSE, which keeps the gather), and the results match the
    interpreter for a decode row and a batch."""
    spec = targets.resolve(target)
    graph = _palettized_mlp(granularity, n=n, rows=rows)
    result = build.build_module(graph, spec, keep_params=False)
    rules = {k: r for k, r in result.kernels.items() if "palette" in k}
    assert len(rules) == 2 and set(rules.values()) == {"matmul"}, result.kernels
    (lib,) = result.executable.mod.imports
    permute = PERMUTES[target]
    if permute is not None and granularity != "channel":  # channel: per-column tables
        # both palette kernels look every entry up with the permute, none with a gather
        assert set(result.lookups) == set(rules), result.lookups
        assert all(permutes and not gathers for permutes, gathers in result.lookups.values())
        assert permute in lib.inspect_source("ll")
    if targets.missing_on_host(spec):
        return  # built, not run: this host lacks the CPU features
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for batch in (1, 5) if rows != 1 else (1,):
        feeds = {"x": RNG.standard_normal((batch, 96)).astype(np.float32)}
        got = vm["main"](tvm.runtime.tensor(feeds["x"])).numpy()
        assert_matches(graph, feeds, [got])


def test_palettized_codes_are_bound_packed_two_per_byte():
    """keep_params on a CPU target: the parameters are the 4-bit codes packed two per byte in
    column panels and the palettes; no float32 copy of a weight is a parameter."""
    graph = _palettized_mlp("group:16")
    lowered = lower_graph(graph, targets.resolve("x86:haswell"), keep_params=True)
    shapes = {k: (str(v.dtype), v.shape) for k, v in lowered.params.items()}
    # 8-float AVX2 vectors, rows symbolic: panels of 3 vectors (24) do not divide 128 or 64,
    # 4 vectors (32) do: codes [N / 32, K / 2, 32]
    assert shapes == {
        "w1_codes": ("uint8", (4, 48, 32)),
        "w1_palette": ("float32", (8, 16)),
        "w2_codes": ("uint8", (2, 64, 32)),
        "w2_palette": ("float32", (4, 16)),
    }


def _lookup_loop(extent: int, lanes: int, size: int = 64, widened: bool = False):
    """for i in range(extent): out[i*16 : i*16 + lanes] = P[broadcast(i * 16) + (c & 15)]
    (`widened`: the code cast to int64 and the index in int64, as a decoded panel has it)"""
    table = tirx.decl_buffer((size,), "float32", name="P")
    codes = tirx.decl_buffer((64,), "int32", name="c")
    out = tirx.decl_buffer((size + 16,), "float32", name="out")
    i = tirx.Var("i", "int32")
    code = tirx.BufferLoad(codes, [tirx.Ramp(i * 16, 1, lanes)]) & tirx.Broadcast(
        tirx.const(15, "int32"), lanes
    )
    index = tirx.Broadcast(i * 16, lanes) + code
    if widened:
        index = tirx.Broadcast(tirx.Cast("int64", i * 16), lanes) + tirx.Cast(
            f"int64x{lanes}", code
        )
    store = tirx.BufferStore(out, tirx.BufferLoad(table, [index]), [tirx.Ramp(i * 16, 1, lanes)])
    return tirx.For(i, 0, extent, tirx.ForKind.SERIAL, store)


def _stored(loop):
    return loop.body.value


@pytest.mark.parametrize("widened", [False, True])
@pytest.mark.parametrize("lanes,intrinsic", [(16, "permvar.sf.512"), (8, "avx2.permps")])
def test_in_bounds_lookups_become_permutes(lanes, intrinsic, widened):
    # bases 0, 16, 32, 48 on a 64-entry table: every 16-entry row is inside the buffer
    value = _stored(rewrite_lookups(_lookup_loop(4, lanes, widened=widened), lanes))
    assert intrinsic in str(value)
    assert isinstance(value, tirx.Select) == (lanes == 8)  # two halves and a blend on AVX2


def test_a_lookup_that_might_leave_the_buffer_is_left_a_gather():
    loop = _lookup_loop(5, 16)  # base 64 on a 64-entry table: a 16-entry load would overrun
    assert rewrite_lookups(loop, 16).same_as(loop)


def test_palette_matmul_lowers_for_cuda():
    graph, _ = MATMUL_CASES["uint4-groups-of-16"]()
    script = lower_graph(graph, lowering_target("cuda"), fold=False).mod.script()
    assert "palette_matmul" in script and "R.take" not in script


def test_a_base_bound_twice_is_not_trusted():
    """The base's variable is defined twice (as unrolling copies a body): no bound from either
    definition is used, so the lookup stays a gather."""
    unsafe = _lookup_loop(5, 16)  # base up to 64 on a 64-entry table
    safe = tirx.For(unsafe.loop_var, 0, 4, tirx.ForKind.SERIAL, unsafe.body)
    body = tirx.SeqStmt([unsafe, safe])
    assert rewrite_lookups(body, 16).same_as(body)


def test_palette_matmul_builds_for_cuda():
    """Compile only (no GPU needed): the fused lookup kernels build for the GPU (dlight)."""
    result = build.build_module(_palettized_mlp("group:16"), "cuda:sm_80", keep_params=False)
    assert result.executable.as_text().count("palette_matmul") >= 2


def test_256_entry_lookups_use_two_table_permutes_on_avx512():
    """palette8 (uint8 codes, one 256-entry palette): on AVX-512 every lookup is eight
    two-table permutes and a tree of blends, on AVX2 it stays a gather (said in the notes);
    results match the interpreter where the host runs the code."""
    graph = _palettized_mlp("tensor", bits=8, rows=1)
    for target, permuted in (("x86:skylake-avx512", True), ("x86:haswell", False)):
        spec = targets.resolve(target)
        result = build.build_module(graph, spec, keep_params=False)
        assert result.lookups and all(
            (p > 0 and g == 0) if permuted else (p == 0 and g > 0)
            for p, g in result.lookups.values()
        ), result.lookups
        assert permuted != any("left as gathers" in n for n in result.notes)
        if permuted:
            (lib,) = result.executable.mod.imports
            assert "vpermi2var.ps.512" in lib.inspect_source("ll")
        if not targets.missing_on_host(spec):
            import tvm
            from tvm import relax

            vm = relax.VirtualMachine(result.executable, tvm.cpu())
            feeds = {"x": RNG.standard_normal((1, 96)).astype(np.float32)}
            assert_matches(graph, feeds, [vm["main"](tvm.runtime.tensor(feeds["x"])).numpy()])


def test_256_entry_lookup_rewrite_on_tir():
    """uint8 codes into a 256-entry table: the tree of permutes where every table load is in
    bounds; none on AVX2 lanes."""
    table = tirx.decl_buffer((512,), "float32", name="P")
    codes = tirx.decl_buffer((64,), "uint8", name="c")
    out = tirx.decl_buffer((64,), "float32", name="out")
    i = tirx.Var("i", "int32")
    code = tirx.Cast("int32x16", tirx.BufferLoad(codes, [tirx.Ramp(i * 16, 1, 16)]))
    value = tirx.BufferLoad(table, [tirx.Broadcast(i * 256, 16) + code])
    store = tirx.BufferStore(out, value, [tirx.Ramp(i * 16, 1, 16)])
    counts = [0, 0]
    rewritten = rewrite_lookups(tirx.For(i, 0, 2, tirx.ForKind.SERIAL, store), 16, counts)
    assert counts == [1, 0] and "vpermi2var" in str(rewritten.body.value)
    counts = [0, 0]
    loop = tirx.For(i, 0, 3, tirx.ForKind.SERIAL, store)  # base 512: past the table
    assert rewrite_lookups(loop, 16, counts).same_as(loop) and counts == [0, 1]
