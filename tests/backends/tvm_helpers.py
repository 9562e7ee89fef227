"""Shared helpers for the TVM backend tests: build one-op graphs, run them through TVM."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.ir import Graph, interpret

RNG = np.random.default_rng(0)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Const:
    """Marks an op input that is a graph constant rather than a graph input."""

    array: np.ndarray


def rand(shape: tuple[int, ...], dtype: str = "float32", lo: float = -2, hi: float = 2) -> Any:
    if np.dtype(dtype).kind == "f":
        return RNG.uniform(lo, hi, shape).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return RNG.random(shape) < 0.5
    return RNG.integers(int(lo), int(hi) + 1, shape).astype(dtype)


def one_op(
    op: str,
    *inputs: np.ndarray | Const | None,
    domain: str = "",
    num_outputs: int | None = None,
    symbolic: dict[int, list[Any]] | None = None,
    **attrs: Any,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """A graph with one `op` node; arrays become inputs x0, x1..., `Const` become constants.

    `symbolic` maps an input position to its declared shape (symbols allowed); the feed keeps
    the concrete array.
    """
    g = Graph(f"{op}_case")
    feeds: dict[str, np.ndarray] = {}
    values = []
    for i, x in enumerate(inputs):
        if x is None:
            values.append(None)
        elif isinstance(x, Const):
            values.append(g.add_constant(x.array, f"c{i}"))
        else:
            shape = (symbolic or {}).get(i, list(x.shape))
            dtype = "string" if x.dtype == object else str(x.dtype)
            v = g.add_input(f"x{i}", dtype, shape)
            feeds[v.name] = x
            values.append(v)
    node = g.add_node(op, values, attrs, domain=domain, num_outputs=num_outputs)
    g.set_outputs(list(node.outputs))
    return g, feeds


def lowering_target(family: str = "x86") -> Any:
    """A resolved `TargetSpec` for tests that call `lower_graph` directly: the generic x86
    CPU (no host detection) or CUDA sm_80 (`family="cuda"`; compiles without a GPU)."""
    from ecograph.backends.tvm import targets

    return targets.resolve({"kind": "llvm"} if family == "x86" else "cuda:sm_80")


def run_tvm(
    graph: Graph, feeds: dict[str, np.ndarray], target: Any = None, *, fold: bool = True
) -> list[np.ndarray]:
    """Build `graph` in memory for the host CPU and run it; outputs in graph order.
    `fold=False`: no lowering-time folding, so an op with only constant inputs is still
    lowered and run by TVM rather than computed by its reference kernel."""
    import tvm
    from tvm import relax

    from ecograph.backends.tvm import build

    result = build.build_module(graph, target or {"kind": "llvm"}, keep_params=False, fold=fold)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    args = [tvm.runtime.tensor(feeds[n]) for n in result.lowered.input_names]
    out = vm["main"](*args)
    outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
    # int4/uint4 outputs travel in 8-bit carriers; their values are the IR's.
    dtypes = [v.dtype.numpy for v in graph.outputs]
    return [o.numpy().astype(dt, copy=False) for o, dt in zip(outs, dtypes, strict=True)]


def assert_matches(graph: Graph, feeds: dict[str, np.ndarray], got: list[np.ndarray]) -> None:
    """TVM results against the reference interpreter: exact for integers and bools, 1e-5
    relative for floats, plus an absolute floor for values near zero of 1e-6 times the
    output's largest magnitude (at least 1e-6): an element that is a sum of terms cancelling
    to near zero carries float32 rounding of the terms' size, not of its own (a DeformConv
    element of 0.0118 from terms of ~1 differed by 1.2e-6 when the summation order did)."""
    ref = interpret(graph, feeds)
    assert len(got) == len(ref), f"{len(got)} outputs from TVM, {len(ref)} from the interpreter"
    for (name, want), have in zip(ref.items(), got, strict=True):
        assert have.dtype == want.dtype, f"{name}: dtype {have.dtype} != {want.dtype}"
        assert have.shape == want.shape, f"{name}: shape {have.shape} != {want.shape}"
        if want.dtype.kind in "fV":
            want64 = want.astype(np.float64)
            finite = np.abs(want64[np.isfinite(want64)])
            scale = max(1.0, float(finite.max())) if finite.size else 1.0
            np.testing.assert_allclose(
                have.astype(np.float64), want64, rtol=1e-5, atol=1e-6 * scale, err_msg=name
            )
        else:
            np.testing.assert_array_equal(have, want, err_msg=name)


def check_op(op: str, *inputs: Any, **kw: Any) -> list[np.ndarray]:
    """`one_op(op, *inputs, **kw)` run through TVM and checked against the interpreter; the
    TVM outputs."""
    graph, feeds = one_op(op, *inputs, **kw)
    got = run_tvm(graph, feeds)
    assert_matches(graph, feeds, got)
    return got


def run_with_runtime_only_tvm(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run Python `code` in a subprocess with only TVM's runtime (TVM_USE_RUNTIME_LIB=1), from
    the repository root; fails the test, with its output, if the code fails."""
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def assembly(result: Any) -> str:
    """The host assembly of a build (`build.BuildResult`): the first module of the executable
    that prints some."""
    mod = result.executable.mod
    for m in [mod, *getattr(mod, "imports", [])]:
        try:
            text = m.inspect_source("asm")
        except Exception:
            continue
        if text:
            return text
    raise AssertionError("no assembly in the executable")


def count_lines(text: str, pattern: str) -> int:
    """How many lines of `text` the regular expression `pattern` matches (re.MULTILINE)."""
    import re

    return len(re.findall(pattern, text, flags=re.MULTILINE))


def relax_calls(mod: Any, op: str) -> list[Any]:
    """The calls to the Relax op `op` ("relax.permute_dims") in `mod`'s main function."""
    from tvm import relax

    found: list[Any] = []

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == op:
            found.append(expr)

    relax.analysis.post_order_visit(mod["main"], visit)
    return found
