"""Helpers for the CPU schedule-rule tests: real fused kernels and a way to run one.

`fused_kernels` builds a small Relax function, legalizes and fuses it the way the CPU pipeline
does (LegalizeOps, FuseOps, FuseTIR, fast math) and returns its PrimFuncs, so a rule is tested
on the forms it meets in a build. `run_kernel` schedules one PrimFunc with a rule, compiles it
alone for a target and runs it on numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx

from ecograph.backends.tvm import targets
from ecograph.backends.tvm.schedules.fastmath import fast_math_pass

TARGETS = ["x86", "x86:haswell", "x86:generic"]
ODD_SIZES = [1, 3, 17, 129]

I64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731  (an int64 TIR constant)


def sym(name: str) -> tirx.Var:
    return tirx.Var(name, "int64")


def fused_kernels(
    build: Callable[..., Any], params: list[tuple[str, list[Any], str]]
) -> dict[str, tirx.PrimFunc]:
    """The PrimFuncs of `build(bb, *vars)` after legalization and fusion, by name.

    `params` are (name, shape, dtype); `build` emits Relax ops with the BlockBuilder and returns
    the output expression (a tuple for several outputs)."""
    bb = relax.BlockBuilder()
    vars_ = [relax.Var(n, relax.TensorType(shape, dtype)) for n, shape, dtype in params]
    with bb.function("main", vars_):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *vars_))
        bb.emit_func_output(out)
    passes = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        fast_math_pass(),
    ]
    mod = tvm.transform.Sequential(passes)(bb.get())
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def build_module(
    build: Callable[..., Any],
    params: list[tuple[str, list[Any], str]],
    rule_cls: type,
    preset: str,
    *,
    must_take: bool = True,
) -> Any:
    """`build` compiled whole (a Relax VM function `main`) the CPU pipeline's way, every kernel
    scheduled by `rule_cls` only; with `must_take`, a kernel the rule declines fails the test.
    The returned runner's `taken` maps each kernel to whether the rule scheduled it."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    spec = targets.resolve(preset)
    target = spec.tvm_target()
    bb = relax.BlockBuilder()
    vars_ = [relax.Var(n, relax.TensorType(shape, dtype)) for n, shape, dtype in params]
    with bb.function("main", vars_):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *vars_))
        bb.emit_func_output(out)

    taken: dict[str, bool] = {}

    @tvm.transform.module_pass(opt_level=0, name="OneRule")
    def one_rule(mod: Any, _ctx: Any) -> Any:
        updated = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            sch = rule_cls(spec).apply(func, target, False)
            assert sch is not None or not must_take, f"{rule_cls.__name__} declined {gv.name_hint}"
            taken[gv.name_hint] = sch is not None
            if sch is not None:
                updated[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        for gv, func in updated.items():
            mod[gv] = func
        return mod

    passes = [
        *cpu.library_dispatch_passes(target),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        fast_math_pass(),
        one_rule,
        *cpu.dataflow_lower_passes(target),
        *cpu.finalize_passes(target),
    ]

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: Any, _ctx: Any) -> Any:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    ex = tvm.compile(bb.get(), target=target, relax_pipeline=pipeline)
    vm = relax.VirtualMachine(ex, tvm.cpu())

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        result = vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
        items = list(result) if not hasattr(result, "numpy") else [result]
        return [r.numpy() for r in items]

    run.taken = taken  # type: ignore[attr-defined]
    return run


def only_kernel(kernels: dict[str, tirx.PrimFunc], contains: str = "") -> tirx.PrimFunc:
    """The one kernel whose name contains `contains` (fails if there is not exactly one)."""
    found = [f for name, f in kernels.items() if contains in name]
    assert len(found) == 1, f"expected one kernel with {contains!r}, got {sorted(kernels)}"
    return found[0]


def schedule(rule_cls: type, func: tirx.PrimFunc, preset: str) -> Any:
    spec = targets.resolve(preset)
    sch = rule_cls(spec).apply(func, spec.tvm_target(), False)
    assert sch is not None, f"{rule_cls.__name__} declined the kernel"
    return sch.mod["main"]


def compile_func(func: tirx.PrimFunc, preset: str) -> Any:
    spec = targets.resolve(preset)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=spec.tvm_target())


def run_compiled(lib: Any, inputs: list[np.ndarray], outputs: list[tuple[tuple[int, ...], str]]
                 ) -> list[np.ndarray]:  # fmt: skip
    outs = [tvm.runtime.tensor(np.zeros(shape, dtype)) for shape, dtype in outputs]
    lib["main"](*[tvm.runtime.tensor(a) for a in inputs], *outs)
    return [o.numpy() for o in outs]


def check(got: np.ndarray, want: np.ndarray) -> None:
    """Exact for integers and booleans, rtol 1e-5 for floats."""
    assert got.shape == want.shape, (got.shape, want.shape)
    if np.dtype(got.dtype).kind in "iub":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def check_sums(got: np.ndarray, want: np.ndarray, bound: np.ndarray) -> None:
    """Long float32 sums: within 1e-5 of the sum of the terms' magnitudes (`bound`, the same
    computation on absolute values), the accuracy float32 accumulation can promise when terms
    cancel; integers exact."""
    assert got.shape == want.shape, (got.shape, want.shape)
    if np.dtype(got.dtype).kind in "iub":
        np.testing.assert_array_equal(got, want)
        return
    err = np.abs(got.astype(np.float64) - want)
    tol = 1e-5 * (np.abs(want) + bound)
    assert np.all(err <= tol), (
        f"max error {err.max()} at {np.unravel_index(err.argmax(), err.shape)}"
    )


def loop_kinds(func: tirx.PrimFunc) -> list[str]:
    """The kinds of the function's loops, outermost first ("serial", "parallel", ...)."""
    import tvm_ffi

    found: list[str] = []
    tvm_ffi.structural_walk(
        func.body,
        (tirx.For, lambda loop: found.append(tirx.ForKind(int(loop.kind)).name.lower())),
        order="pre",
    )
    return found


def rand(shape: tuple[int, ...], dtype: str = "float32", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.uniform(-2, 2, shape).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(-50, 50, shape).astype(dtype)
