"""The CPU attention kernel (schedules/attention.py, lowered by ops/fused.py) against the
reference interpreter: head sizes that fill no vector (24, 40), one to 64 queries over one to
130 keys, grouped-query heads, causal decode over a cache, every mask form, symbolic lengths;
and that a build calls exactly one kernel per Attention node (the Relax path elsewhere);
ecograph::CacheAttention, the same kernel reading past keys and values in a KV cache."""

from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.backends.tvm import build, targets
from ecograph.backends.tvm.driver import lower_graph
from ecograph.backends.tvm.schedules.attention import (
    RULE_NAME,
    SPLIT_MIN_KEYS,
    attention_tiles,
    key_chunks,
)
from ecograph.backends.tvm.views import view_inputs
from ecograph.ir import Graph, interpret
from tests.backends.tvm_helpers import (
    assert_matches,
    lowering_target,
    one_op,
    rand,
)

GENERIC = {"kind": "llvm"}  # 128-bit vectors: 4 float lanes
HOST = "x86"  # this machine's widest vectors (16 lanes with AVX-512)
HASWELL = pytest.param(
    "x86:haswell",
    marks=pytest.mark.skipif("avx2" not in targets.cpuinfo_flags(), reason="no AVX2 on this CPU"),
)


def _qkv(b: int, hq: int, hkv: int, s: int, kv: int, d: int, dv: int) -> list[np.ndarray]:
    return [rand((b, hq, s, d)), rand((b, hkv, kv, d)), rand((b, hkv, kv, dv))]


def _check(graph: Graph, feeds: dict[str, np.ndarray], target: Any) -> list[np.ndarray]:
    """Build for `target`, check that the Attention ran as the kernel and matches the reference
    (rtol 1e-5, atol 1e-6)."""
    result = build.build_module(graph, target, keep_params=False, fold=False)
    assert _attention_calls(result) == 1, result.executable.as_text()
    got = _run(result, feeds)
    assert_matches(graph, feeds, got)
    return got


def _run(result: build.BuildResult, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in result.lowered.input_names])
    return [out.numpy()]


def _attention_calls(result: build.BuildResult) -> int:
    """How many times `main` calls a PrimFunc the lowering built as the attention kernel."""
    kernels = {
        gv.name_hint
        for gv, f in result.lowered.mod.functions_items()
        if f.attrs is not None and f.attrs.get("ecograph.schedule") == RULE_NAME
    }
    text = result.executable.as_text()
    main = text.split("@main:", 1)[1].split("\n\n", 1)[0]
    called = re.findall(r"call\s+(\S+)\s+in:", main)
    return sum(name in kernels for name in called)


# Every (q_len, kv_len) pair with each variant: MHA and GQA, head sizes 24 and 40 (V's may
# differ), causal with fewer queries than keys (decode over a cache), bool, float and
# broadcast masks.
VARIANTS = {
    "mha-d24": dict(b=2, hq=3, hkv=3, d=24, dv=24),
    "gqa8/2-d40-dv24-causal": dict(b=1, hq=8, hkv=2, d=40, dv=24, causal=1),
    "gqa8/2-d24-bool-mask": dict(b=2, hq=8, hkv=2, d=24, dv=40, mask=("bool", "b1sl")),
    "mha-d40-float-mask-causal": dict(b=1, hq=2, hkv=2, d=40, dv=40, causal=1, mask=("f", "sl")),
    "gqa4/2-d24-key-padding": dict(b=2, hq=4, hkv=2, d=24, dv=24, mask=("f", "b11l"), scale=0.2),
}
MASK_SHAPES = {
    "sl": lambda b, h, s, kv: (s, kv),
    "b1sl": lambda b, h, s, kv: (b, 1, s, kv),
    "b11l": lambda b, h, s, kv: (b, 1, 1, kv),
    "bhsl": lambda b, h, s, kv: (b, h, s, kv),
    "1h1l": lambda b, h, s, kv: (1, h, 1, kv),
    "l": lambda b, h, s, kv: (kv,),
}


def _case(v: dict[str, Any], s: int, kv: int) -> tuple[Graph, dict[str, np.ndarray]]:
    inputs = _qkv(v["b"], v["hq"], v["hkv"], s, kv, v["d"], v["dv"])
    attrs: dict[str, Any] = {"is_causal": v.get("causal", 0)}
    if "scale" in v:
        attrs["scale"] = v["scale"]
    if "mask" in v:
        kind, form = v["mask"]
        shape = MASK_SHAPES[form](v["b"], v["hq"], s, kv)
        mask = rand(shape, "bool") if kind == "bool" else rand(shape, lo=-3, hi=1)
        inputs.append(mask)
    return one_op("Attention", *inputs, **attrs)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(("s", "kv"), list(itertools.product([1, 7, 64], [1, 9, 130])))
def test_kernel_matches_reference(variant: str, s: int, kv: int) -> None:
    graph, feeds = _case(VARIANTS[variant], s, kv)
    _check(graph, feeds, HOST)


@pytest.mark.parametrize("target", [GENERIC, HASWELL])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(("s", "kv"), [(1, 130), (7, 9), (64, 130)])
def test_kernel_matches_reference_narrower_vectors(target: Any, variant: str, s: int, kv: int):
    graph, feeds = _case(VARIANTS[variant], s, kv)
    _check(graph, feeds, target)


@pytest.mark.parametrize("form", list(MASK_SHAPES))
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_every_mask_broadcast(form: str, kind: str) -> None:
    b, hq, hkv, s, kv = 2, 4, 2, 5, 11
    shape = MASK_SHAPES[form](b, hq, s, kv)
    mask = rand(shape, "bool") if kind == "bool" else rand(shape, lo=-3, hi=1)
    graph, feeds = one_op("Attention", *_qkv(b, hq, hkv, s, kv, 24, 24), mask, is_causal=1)
    _check(graph, feeds, HOST)


@pytest.mark.parametrize("target", [HOST, GENERIC])
def test_keys_every_row_masks_are_skipped_exactly(target: Any) -> None:
    """Keys after the last one a task's rows see (`visible_end`) are skipped: a causal mask
    given as a bool mask (compile_lm's prefill), key padding as -inf added (the last 40 keys
    of batch 1) and a mask hiding every key from one query (zeros); each the reference's
    result. A mask of finite values hides nothing: a row of -1e30 everywhere is the mean of
    every value, as the reference's softmax of equal scores."""
    s = 130
    causal = np.tril(np.ones((s, s), bool))[None, None]
    padding = np.zeros((2, 1, 1, s), np.float32)
    padding[1, ..., -40:] = -np.inf
    hidden = causal.copy()
    hidden[..., 5, :] = False
    finite = np.where(causal, 0, -1e30).astype(np.float32)
    finite[..., 5, :] = -1e30  # a row of equal scores: a mean of every value, not zeros
    for b, mask in ((1, causal), (2, padding), (1, hidden), (1, finite)):
        graph, feeds = one_op("Attention", *_qkv(b, 8, 2, s, s, 24, 24), mask)
        (y,) = _check(graph, feeds, target)
        if mask is hidden:
            assert np.all(y[0, :, 5] == 0) and np.any(y[0, :, 4] != 0)
        if mask is finite:
            assert np.all(y[0, :, 5] != 0)


def test_fully_masked_rows_give_zeros() -> None:
    b, h, s, kv = 1, 2, 6, 9
    keep = rand((b, h, s, kv), "bool")
    keep[0, 0, 2] = False
    add = rand((b, h, s, kv), lo=-1, hi=1)
    add[0, 1, 4] = -np.inf
    for mask, row in ((keep, (0, 0, 2)), (add, (0, 1, 4))):
        graph, feeds = one_op("Attention", *_qkv(b, h, h, s, kv, 24, 24), mask)
        (y,) = _check(graph, feeds, HOST)
        assert np.all(y[row] == 0) and np.all(np.isfinite(y))
        assert np.any(y[(0, 0, 0)] != 0)


# Runs a library's `main` with TVM's pool at each thread count, in a fresh process: the
# pool's size is fixed when it starts (TVM_NUM_THREADS; one thread per xdist worker here).
_POOL_RUN = """
import sys
import numpy as np, tvm, tvm_ffi
from tvm import relax
mode, lib, data, out = sys.argv[1:5]
args = list(np.load(data).values())
module = tvm.runtime.load_module(lib)
configure = tvm_ffi.get_global_func("runtime.config_threadpool")
results = {}
for n in map(int, sys.argv[5:]):
    configure(0, n)
    assert tvm.runtime.num_threads() == n, (n, tvm.runtime.num_threads())
    tensors = [tvm.runtime.tensor(a) for a in args]
    if mode == "vm":
        results[str(n)] = relax.VirtualMachine(module, tvm.cpu())["main"](*tensors).numpy()
    else:  # a PrimFunc whose last argument is its output
        module["main"](*tensors)
        results[str(n)] = tensors[-1].numpy()
np.savez(out, **results)
"""


def _with_threads(
    tmp_path: Path, module: Any, args: list[np.ndarray], threads: list[int], vm: bool = True
) -> dict[int, np.ndarray]:
    """`module`'s main on `args` with TVM's pool at each of `threads`, each in a fresh process
    whose pool has max(threads) threads (any machine can start them)."""
    lib, data, out = tmp_path / "lib.so", tmp_path / "args.npz", tmp_path / "out.npz"
    module.export_library(str(lib))
    np.savez(data, *args)
    env = {**os.environ, "TVM_NUM_THREADS": str(max(threads)), "TVM_BIND_THREADS": "0"}
    argv = [sys.executable, "-c", _POOL_RUN, "vm" if vm else "func", str(lib), str(data), str(out)]
    proc = subprocess.run(
        [*argv, *map(str, threads)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as got:
        return {int(n): got[n] for n in got.files}


def test_key_chunks_give_every_thread_as_many_tasks(tmp_path: Path) -> None:
    """`key_chunks` (computed in the kernel from the pool's thread count) against the rule
    written here with math.gcd: threads / gcd(groups, threads), no chunk under
    SPLIT_MIN_KEYS keys, at least one; pools of 1 to 6 threads."""
    import tvm
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T  # noqa: N812

    cases = np.array(
        list(itertools.product([1, 255, 511, 512, 1000, 5000], range(1, 9))), dtype=np.int64
    )
    with IRBuilder() as ib, T.prim_func():
        T.func_name("main")
        case = T.arg("cases", T.Buffer(cases.shape, "int64"))
        out = T.arg("out", T.Buffer((len(cases),), "int64"))
        with T.serial(0, len(cases)) as i:
            T.buffer_store(out, key_chunks(T, case[i, 0], case[i, 1]), [i])
    module = tvm.compile(ib.get(), target="llvm")
    threads = [1, 2, 3, 4, 6]
    got = _with_threads(tmp_path, module, [cases, np.zeros(len(cases), np.int64)], threads, False)
    for n in threads:
        want = [max(1, min(n // math.gcd(g, n), kv // SPLIT_MIN_KEYS)) for kv, g in cases]
        assert got[n].tolist() == want, n
    assert got[2].tolist() != got[1].tolist()  # some cases split


@pytest.mark.parametrize(
    "target", [HOST, HASWELL]
)  # (128-bit vectors: 3 rows take no dot products)
def test_decode_keys_split_into_chunks(target: Any, tmp_path: Path) -> None:
    """A batch-1 decode step over 3 KV heads and 1000 keys: one thread, no split; two threads,
    two chunks (6 tasks, 3 per thread); four, three (no chunk under 256 keys); each combined
    to the reference's result: some chunks wholly masked (keys 0-299 and 700-999), one row
    masked everywhere (zeros); causal; a CacheAttention whose second chunk holds past and
    new keys; batch 2 (6 groups: no split with 2 or 3 threads); multi-query attention (one
    KV head, one group: its build failed, a workspace sized by the chunk count)."""
    keep = rand((1, 9, 1, 1000), "bool")
    keep[0, :, :, :300] = keep[0, :, :, 700:] = False
    keep[0, 3] = False
    cases = [
        one_op("Attention", *_qkv(1, 9, 3, 1, 1000, 32, 32), keep),
        one_op("Attention", *_qkv(1, 9, 3, 1, 1000, 24, 40), is_causal=1),
        _cache_case(1, 9, 3, 32, 1, 999, "bool", seq_axis=3),
        one_op("Attention", *_qkv(2, 9, 3, 1, 600, 24, 24)),
        one_op("Attention", *_qkv(1, 4, 1, 1, 700, 32, 32)),
    ]
    for i, (graph, feeds) in enumerate(cases):
        result = build.build_module(graph, target, keep_params=False, fold=False)
        assert _attention_calls(result) == 1
        args = [feeds[n] for n in result.lowered.input_names]
        got = _with_threads(tmp_path, result.executable, args, [1, 2, 3, 4])
        for y in got.values():
            assert_matches(graph, feeds, [y])
        if i == 0:  # the row masked everywhere
            assert np.all(got[2][0, 3] == 0) and np.any(got[2] != 0)


@pytest.mark.parametrize("target", [GENERIC, HOST])
def test_symbolic_lengths_decode_and_prefill(target: Any) -> None:
    # One module over symbolic batch, q_len and kv_len: a decode step (1 query over a 129-key
    # cache, causal) and a 128 x 128 prefill, GQA 8 q heads on 2 KV heads, key-padding mask.
    def graph_for(s: int, kv: int) -> tuple[Graph, dict[str, np.ndarray]]:
        q, k, v = _qkv(1, 8, 2, s, kv, 32, 32)
        mask = rand((1, 1, 1, kv), lo=-2, hi=0)
        return one_op(
            "Attention", q, k, v, mask, is_causal=1,
            symbolic={0: ["b", 8, "s", 32], 1: ["b", 2, "l", 32], 2: ["b", 2, "l", 32],
                      3: ["b", 1, 1, "l"]},
        )  # fmt: skip

    graph, _ = graph_for(1, 129)
    result = build.build_module(graph, target, keep_params=False, fold=False)
    assert _attention_calls(result) == 1
    for s, kv in ((1, 129), (128, 128), (3, 1)):
        g, feeds = graph_for(s, kv)
        assert_matches(g, feeds, _run(result, feeds))


def test_three_d_inputs_with_gqa_and_mask() -> None:
    b, s, kv, hq, hkv, d, dv = 2, 7, 9, 8, 2, 24, 40
    q, k, v = rand((b, s, hq * d)), rand((b, kv, hkv * d)), rand((b, kv, hkv * dv))
    mask = rand((b, 1, s, kv), "bool")
    graph, feeds = one_op("Attention", q, k, v, mask, q_num_heads=hq, kv_num_heads=hkv)
    _check(graph, feeds, HOST)
    graph, feeds = one_op("Attention", q, k, v, is_causal=1, q_num_heads=hq, kv_num_heads=hkv)
    _check(graph, feeds, GENERIC)


def test_float16_computed_in_float32() -> None:
    q, k, v = (x.astype(np.float16) for x in _qkv(1, 4, 2, 7, 130, 40, 24))
    mask = rand((7, 130), lo=-2, hi=1).astype(np.float16)
    graph, feeds = one_op("Attention", q, k, v, mask, is_causal=1)
    result = build.build_module(graph, HOST, keep_params=False, fold=False)
    assert _attention_calls(result) == 1
    (y,) = _run(result, feeds)
    assert y.dtype == np.float16
    # Against float32 math on the same float16 values: the kernel only rounds its result.
    g32, f32 = one_op("Attention", *(x.astype(np.float32) for x in (q, k, v, mask)), is_causal=1)
    (want,) = interpret(g32, f32).values()
    np.testing.assert_allclose(y.astype(np.float32), want, rtol=2e-3, atol=1e-3)


def test_one_kernel_per_attention_node_and_nothing_else() -> None:
    g = Graph("two_attentions")
    q, k, v = (g.add_input(n, "float32", [1, 4, "s", 24]) for n in "qkv")
    (y1,) = g.add_node("Attention", [q, k, v], {"is_causal": 1}).outputs
    (y2,) = g.add_node("Attention", [y1, k, v], {}).outputs
    g.set_outputs([y2])
    result = build.build_module(g, HOST, keep_params=False)
    assert _attention_calls(result) == 2
    # No scores tensor, no softmax or matmul kernels: only the two attention calls.
    assert all(name.startswith("attention") for name in result.kernels), result.kernels
    feeds = {n: rand((1, 4, 6, 24)) for n in "qkv"}
    assert_matches(g, feeds, _run(result, feeds))


def test_uncovered_forms_keep_the_relax_path_and_say_so() -> None:
    # float64 is left to the Relax decomposition (the kernel computes in float32), with a note.
    graph, feeds = one_op("Attention", *(x.astype(np.float64) for x in _qkv(1, 2, 2, 5, 6, 8, 8)))
    result = build.build_module(graph, HOST, keep_params=False, fold=False)
    assert _attention_calls(result) == 0
    assert any("not the CPU attention kernel (float64 inputs)" in n for n in result.notes)
    assert_matches(graph, feeds, _run(result, feeds))
    # CUDA keeps the Relax lowering (no CPU kernel in the module, the scores as a matmul).
    graph, _ = one_op("Attention", *_qkv(1, 2, 2, 5, 6, 8, 8))
    mod = lower_graph(graph, lowering_target("cuda")).mod
    assert not any(
        f.attrs is not None and f.attrs.get("ecograph.schedule") == RULE_NAME
        for _, f in mod.functions_items()
    )
    assert "R.matmul" in mod.script()


def test_tiles_fit_registers_and_stack() -> None:
    # Register tiles stay under the stack limit (else they become heap workspaces and LLVM
    # stores and reloads them around every FMA) and within the vector register budget.
    from ecograph.backends.tvm.schedules.matmul import STACK_BYTES, accumulator_budget

    for preset, rows, dv, d in itertools.product(
        [GENERIC, HOST, "x86:haswell", "arm"], [None, 1, 3, 4, 7, 128], [1, 7, 24, 32, 40, 128],
        [None, 7, 24, 64, 128],
    ):  # fmt: skip
        spec = targets.resolve(preset)
        t = attention_tiles(spec, rows, dv, d)
        lanes = t.dot_lanes or 1  # a score accumulator per (key, row) and dot-product lane
        assert t.key_tile * t.row_block * lanes * 4 < STACK_BYTES
        assert t.pv_rows * t.v_chunk * 4 < STACK_BYTES
        accumulators = t.key_tile * (t.row_block if t.dot_lanes else t.row_vectors)
        assert accumulators <= accumulator_budget(spec)
        assert dv % t.v_chunk == 0 and t.v_chunk % t.v_lanes == 0 and t.row_block % t.pv_rows == 0
        if rows is not None:  # a decode step does not pad to 16 lanes
            assert t.row_lanes <= max(1, 2 * rows - 1)
        if t.dot_lanes:  # a block of exactly the rows, the head dim in whole vectors
            assert rows is not None and d is not None and d % t.dot_lanes == 0
            assert (t.row_lanes, t.row_vectors) == (rows, 1)


@pytest.mark.parametrize(
    ("preset", "rows", "head_dim", "dot_lanes"),
    [
        # decode steps: SmolLM2 (9 / 3 heads of 64), a 4-layer Llama (8 / 2 of 32), MHA
        ("x86:znver4", 3, 64, 16),
        ("x86:haswell", 3, 64, 8),
        ("x86:znver4", 4, 32, 16),
        ("x86:haswell", 1, 64, 8),
        (GENERIC, 1, 24, 4),
        ("x86:znver4", 8, 64, 16),
        # rows that fill vectors along the rows, symbolic rows, a head dim of no whole vector
        ("x86:znver4", 16, 64, 0),
        ("x86:haswell", 8, 64, 0),
        (GENERIC, 3, 24, 0),
        ("x86:znver4", None, 64, 0),
        ("x86:znver4", 3, 7, 0),
    ],
)
def test_few_rows_take_dot_products(preset: Any, rows: Any, head_dim: int, dot_lanes: int):
    """Scores as dot products along the head dim for the few rows of a decode step (vectors
    along 3 rows would leave 13 of 16 lanes empty), vectors along the rows otherwise (at
    most half a vector of rows: dot products measured 0.84-0.89x at 8 rows on AVX2). The
    kernel cases above run both forms: every decode (one query) case of 1-4 rows per KV
    head takes dot products."""
    t = attention_tiles(targets.resolve(preset), rows, head_dim, head_dim)
    assert t.dot_lanes == dot_lanes


# ------------------------------------------------ ecograph::CacheAttention (a KV cache)


def _cache_case(
    b: int, hq: int, hkv: int, d: int, t: int, past: int, mask: str | None, causal: int = 0,
    dtype: str = "float32", symbolic: bool = False, seq_axis: int = 0,
) -> tuple[Graph, dict[str, np.ndarray]]:  # fmt: skip
    """CacheAttention over a [past, 5, b, hkv, d] cache (seq_axis 3: [5, b, hkv, past, d]),
    keys in slot 3 and values in slot 1 (not adjacent, not in order), t new positions."""
    head_major = seq_axis == 3
    cache = rand((5, b, hkv, past, d) if head_major else (past, 5, b, hkv, d), dtype)
    q, k, v = rand((b, hq, t, d), dtype), rand((b, hkv, t, d), dtype), rand((b, hkv, t, d), dtype)
    inputs = [q, cache, k, v]
    shapes: dict[int, list[Any]] = {
        0: ["b", hq, "t", d], 1: [5, "b", hkv, "s", d] if head_major else ["s", 5, "b", hkv, d],
        2: ["b", hkv, "t", d], 3: ["b", hkv, "t", d],
    }  # fmt: skip
    if mask == "bool":  # a decode step's mask: [1, 1, t, past + t]
        inputs.append(rand((1, 1, t, past + t), "bool"))
        shapes[4] = [1, 1, "t", "s+t"]
    elif mask == "float":
        inputs.append(rand((t, past + t), dtype, lo=-3, hi=1))
        shapes[4] = ["t", "s+t"]
    attrs = {"seq_axis": 3} if head_major else {}
    return one_op(
        "CacheAttention", *inputs, domain="ecograph", key_index=3, value_index=1,
        is_causal=causal, symbolic=shapes if symbolic else None, **attrs,
    )  # fmt: skip


CACHE_VARIANTS = {
    "gqa8/2-d32-decode-bool-mask": dict(b=1, hq=8, hkv=2, d=32, t=1, mask="bool"),
    "mha-d24-batch2-three-new": dict(b=2, hq=3, hkv=3, d=24, t=3, mask=None),
    "gqa4/2-d40-float-mask-causal": dict(b=1, hq=4, hkv=2, d=40, t=2, mask="float", causal=1),
}


@pytest.mark.parametrize("target", [HOST, GENERIC, HASWELL])
@pytest.mark.parametrize("variant", list(CACHE_VARIANTS))
@pytest.mark.parametrize("past", [1, 9, 130])
def test_cache_attention_kernel_reads_the_cache_in_place(target: Any, variant: str, past: int):
    graph, feeds = _cache_case(**CACHE_VARIANTS[variant], past=past)
    result = build.build_module(graph, target, keep_params=False, fold=False)
    assert _attention_calls(result) == 1
    # one kernel and nothing else: no copy of the cache (take / transpose / concatenate)
    assert all(name.startswith("attention") for name in result.kernels), result.kernels
    assert_matches(graph, feeds, _run(result, feeds))


def _in_longer_buffer(cache: np.ndarray, extra: int) -> np.ndarray:
    """`cache` ([slots, b, hkv, past, d]) as the first `past` positions of a 64-byte aligned
    buffer of `extra` more: a strided view, as a generate loop hands its cache over."""
    slots, b, hkv, past, d = cache.shape
    shape = (slots, b, hkv, past + extra, d)
    raw = np.full(int(np.prod(shape)) * cache.itemsize + 64, 255, np.uint8)  # NaN past the view
    start = -raw.ctypes.data % 64
    buf = raw[start : start + int(np.prod(shape)) * cache.itemsize].view(cache.dtype)
    view = buf.reshape(shape)[:, :, :, :past]
    view[...] = cache
    return view


@pytest.mark.parametrize("target", [HOST, HASWELL])
@pytest.mark.parametrize("variant", list(CACHE_VARIANTS))
@pytest.mark.parametrize("past", [1, 130])
def test_a_head_major_cache_is_read_as_a_strided_view(target: Any, variant: str, past: int):
    """seq_axis 3: the kernel declares the cache's outer strides free, so the first `past`
    positions of a longer buffer go in as they lie (a view, not a copy): the manifest marks
    the input "views" (views.view_inputs) and the result matches the reference's on the
    compact cache. The positions past the view hold NaN: a read of them would show."""
    import tvm_ffi

    graph, feeds = _cache_case(**CACHE_VARIANTS[variant], past=past, seq_axis=3)
    result = build.build_module(graph, target, keep_params=False, fold=False)
    assert _attention_calls(result) == 1
    assert all(name.startswith("attention") for name in result.kernels), result.kernels
    names = result.lowered.input_names
    assert view_inputs(result.lowered.mod, names) == ["x1"]  # the cache, nothing else
    view = _in_longer_buffer(feeds["x1"], extra=7)
    assert not view.flags.c_contiguous
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    args = [
        tvm_ffi.from_dlpack(view, require_alignment=64, require_contiguous=False)
        if n == "x1"
        else tvm.runtime.tensor(feeds[n])
        for n in names
    ]
    assert_matches(graph, feeds, [vm["main"](*args).numpy()])


def test_a_sequence_first_cache_and_the_relax_path_take_no_views() -> None:
    """The compact kernel buffer (seq_axis 0) and the Relax decomposition (CUDA) read the
    cache as compact: no input is marked "views", so the runtime copies a view first."""
    graph, _ = _cache_case(1, 8, 2, 32, 1, 9, "bool", symbolic=True)
    result = build.build_module(graph, HOST, keep_params=False, fold=False)
    assert view_inputs(result.lowered.mod, result.lowered.input_names) == []
    graph, _ = _cache_case(1, 8, 2, 32, 1, 9, "bool", symbolic=True, seq_axis=3)
    lowered = lower_graph(graph, lowering_target("cuda"))
    assert view_inputs(lowered.mod, lowered.input_names) == []


def test_cache_attention_symbolic_lengths_one_build() -> None:
    graph, _ = _cache_case(1, 8, 2, 32, 1, 9, "bool", symbolic=True)
    result = build.build_module(graph, HOST, keep_params=False, fold=False)
    assert _attention_calls(result) == 1
    for t, past in ((1, 1), (1, 130), (4, 17)):
        g, feeds = _cache_case(1, 8, 2, 32, t, past, "bool")
        assert_matches(g, feeds, _run(result, feeds))
    head_major, _ = _cache_case(1, 8, 2, 32, 1, 9, "bool", symbolic=True, seq_axis=3)
    result = build.build_module(head_major, HOST, keep_params=False, fold=False)
    for t, past in ((1, 1), (1, 130), (4, 17)):
        g, feeds = _cache_case(1, 8, 2, 32, t, past, "bool", seq_axis=3)
        assert_matches(g, feeds, _run(result, feeds))
    # the same kernel for ARM (NEON lanes), compiled in memory: nothing runs it here
    arm = build.build_module(graph, "arm", keep_params=False, fold=False)
    assert _attention_calls(arm) == 1 and set(arm.kernels.values()) == {RULE_NAME}
    # an MHA decode step over a head-major cache on ARM: dot products in NEON's 4 lanes
    graph, _ = _cache_case(1, 4, 4, 32, 1, 9, "bool", symbolic=True, seq_axis=3)
    spec = targets.resolve("arm")
    assert attention_tiles(spec, 1, 32, 32).dot_lanes == 4
    arm = build.build_module(graph, spec, keep_params=False, fold=False)
    assert _attention_calls(arm) == 1 and set(arm.kernels.values()) == {RULE_NAME}


def test_cache_attention_uncovered_forms_keep_the_relax_path() -> None:
    graph, feeds = _cache_case(1, 2, 1, 8, 1, 6, "float", dtype="float64")
    result = build.build_module(graph, HOST, keep_params=False, fold=False)
    assert _attention_calls(result) == 0
    assert any("not the CPU attention kernel (float64 inputs)" in n for n in result.notes)
    assert_matches(graph, feeds, _run(result, feeds))
    graph, _ = _cache_case(1, 4, 2, 8, 1, 6, "bool")
    mod = lower_graph(graph, lowering_target("cuda")).mod
    assert not any(
        f.attrs is not None and f.attrs.get("ecograph.schedule") == RULE_NAME
        for _, f in mod.functions_items()
    )
    script = mod.script()
    assert "R.matmul" in script and "R.concat" in script
