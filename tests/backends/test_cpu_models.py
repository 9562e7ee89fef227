"""Every lowered op case, compiled for several x86 CPU models, against the reference interpreter.

A build whose results change with the CPU model is the worst bug a compiler can have: on a
znver4 host the default target once computed garbage for Tile (LLVM's loop vectorizer, see
docs/tvm.md) while generic x86 was exact. Here each op case of test_tvm_ops.py is built for
generic x86-64, haswell (AVX2), skylake-avx512, znver3, znver4 and the detected host CPU, and
run. Models this host cannot execute (their ISA extensions are missing from /proc/cpuinfo) are
skipped, with the missing extensions named. The cases are merged into one graph per model (one
build of ~10 s instead of ~250 builds), so CI runs all of them for every model.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.backends.tvm import build, targets
from ecograph.ir import Graph, interpret
from tests.backends.merge import Merged, merge_graphs
from tests.backends.test_tvm_ops import CASES
from tests.backends.tvm_helpers import Const, one_op, rand

CPU_MODELS = ["generic", "haswell", "skylake-avx512", "znver3", "znver4", "host"]
ON_X86 = os.uname().machine == "x86_64"


def spec_for(model: str) -> targets.TargetSpec:
    return targets.resolve("x86" if model == "host" else f"x86:{model}")


# Regressions: shapes that once miscompiled on some CPU model (each with what went wrong).
def _i64s(*lists: list[int]) -> list[Const]:
    return [Const(np.array(v, np.int64)) for v in lists]


REGRESSIONS = [
    # LLVM 22's loop vectorizer read x[(a % 3) * 20 + (i % 4) * 5 + j] as stride 5 in i on
    # AVX-512 CPUs (75 % of the outputs wrong); ONNX's own test_tile has this shape.
    ("Tile-avx512-interleave", lambda: one_op("Tile", rand((3, 4, 5)), Const(np.array([2, 4, 2])))),
    (
        "Tile-onnx-test_tile",
        lambda: one_op("Tile", rand((2, 3, 4, 5)), Const(np.array([7, 6, 4, 2]))),
    ),
    # Found by the compiled-graph fuzzer: empty results Relax mis-sized or failed to build.
    ("Slice-start-after-end", lambda: one_op("Slice", rand((4, 5)), *_i64s([3], [1], [0], [1]))),
    (
        "Pad-reflect-empty-axis",
        lambda: one_op("Pad", rand((2, 0, 3)), *_i64s([1, 0, 1, 1, 0, 1]), mode="reflect"),
    ),
]


@cache
def built_cases() -> list[tuple[str, Graph, dict[str, np.ndarray]]]:
    # Built once: some builders draw fresh random inputs on every call.
    every = [(cid, builder) for _, cid, builder in CASES] + REGRESSIONS
    return [(cid, *builder()) for cid, builder in every]


@cache
def merged_cases() -> Merged:
    return merge_graphs(built_cases(), "every_op_case")


@cache
def references() -> list[np.ndarray]:
    """The interpreter's outputs of every case, in merged-output order."""
    return [out for _, graph, feeds in built_cases() for out in interpret(graph, feeds).values()]


def run_merged(spec: targets.TargetSpec) -> list[np.ndarray]:
    import tvm
    from tvm import relax

    m = merged_cases()
    # No lowering-time folding: an op whose inputs are all constants still runs in TVM.
    result = build.build_module(m.graph, spec, keep_params=False, fold=False, progress=False)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(m.feeds[n]) for n in result.lowered.input_names])
    outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
    dtypes = [v.dtype.numpy for v in m.graph.outputs]
    return [o.numpy().astype(dt, copy=False) for o, dt in zip(outs, dtypes, strict=True)]


def mismatch(want: np.ndarray, have: np.ndarray) -> str | None:
    """Why `have` is not `want` (exact for integers and bools, 1e-5 relative for floats)."""
    if have.dtype != want.dtype or have.shape != want.shape:
        return f"{have.dtype}{list(have.shape)} != {want.dtype}{list(want.shape)}"
    if want.dtype.kind in "fV":
        a, b = have.astype(np.float64), want.astype(np.float64)
        bad = ~np.isclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
    else:
        bad = have != want
    if not bad.any():
        return None
    return (
        f"{int(bad.sum())} of {bad.size} elements differ (first: {have[bad][0]} vs {want[bad][0]})"
    )


@pytest.mark.skipif(not ON_X86, reason="x86 CPU models run only on an x86 host")
@pytest.mark.parametrize("model", CPU_MODELS)
def test_every_op_case_on_cpu_model(model: str) -> None:
    spec = spec_for(model)
    missing = targets.missing_on_host(spec)
    if missing:
        pytest.skip(f"this host cannot run {model} code (lacks {', '.join(missing)})")
    got = run_merged(spec)
    failures = []
    for (cid, i), want, have in zip(merged_cases().origin, references(), got, strict=True):
        why = mismatch(want, have)
        if why:
            failures.append(f"{cid} output {i}: {why}")
    assert not failures, f"{spec.describe()}: {len(failures)} wrong case outputs:\n" + "\n".join(
        failures
    )


def test_merge_keeps_every_case() -> None:
    m = merged_cases()
    assert len(m.graph.outputs) == len(references()) == len(m.origin)
    assert {cid for cid, _ in m.origin} == {cid for _, cid, _ in CASES} | {
        cid for cid, _ in REGRESSIONS
    }


def test_mismatch_reports_a_wrong_element() -> None:
    # The comparison can fail: one changed element of a float and of an int array is caught.
    want = np.arange(6, dtype=np.float32)
    have = want.copy()
    have[3] = 8e32
    assert (mismatch(want, have) or "").startswith("1 of 6 elements differ")
    assert mismatch(want.astype(np.int32), want.astype(np.int32)) is None
    assert mismatch(want.astype(np.int32), have.astype(np.int64)) is not None


def test_host_cannot_run_a_model_it_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    # A host reporting only AVX2 cannot run skylake-avx512 code: the test above would skip it.
    monkeypatch.setattr(targets, "cpuinfo_flags", lambda: {"avx", "avx2", "fma", "sse4_1"})
    assert "avx512f" in targets.missing_on_host(spec_for("skylake-avx512"))
    assert targets.missing_on_host(spec_for("generic")) == []
