"""Graph fuzzing of compiled builds: random graphs built for the host CPU and for another x86 CPU
model, run, and compared with the reference interpreter.

The pass fuzzer (tests/passes/test_fuzz.py) checks transformations on the IR; this one checks
what TVM and LLVM make of it, so the next miscompile (like the AVX-512 Tile one, docs/tvm.md)
is found by a test, not by a user. The generator leans on index arithmetic (Tile, Slice with
steps, Pad, Gather, Transpose, Expand, Concat, DepthToSpace), reductions and broadcasting, with
odd sizes that leave vector remainders. Each example merges GRAPHS_PER_EXAMPLE graphs into one
build (tests/backends/merge.py), so CI compiles hundreds of graphs in a few dozen builds.

CI runs ECOGRAPH_COMPILED_FUZZ_EXAMPLES examples (default 25, derandomized: the same graphs on
every run); `make fuzz` raises the count. A failure names the graph and prints it.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

from ecograph.backends.tvm import build, targets
from ecograph.ir import Graph, GraphBuilder, Value, interpret, verify
from ecograph.ir.text import to_text
from tests.backends.merge import merge_graphs

EXAMPLES = int(os.environ.get("ECOGRAPH_COMPILED_FUZZ_EXAMPLES", "25"))
GRAPHS_PER_EXAMPLE = 8
MAX_ELEMENTS = 4096
DIMS = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17]
OTHER_MODELS = ["generic", "haswell", "skylake-avx512", "znver3", "znver4"]
ON_X86 = os.uname().machine == "x86_64"

STEPS = [
    "unary", "binary", "binary_const", "div", "transpose", "reshape", "tile", "expand",
    "slice", "concat", "pad", "gather", "reduce", "softmax", "matmul", "where", "cast",
    "layer_norm", "cumsum", "depth_to_space", "pool", "split",
]  # fmt: skip
UNARY = ["Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Floor", "Ceil", "Erf", "Softsign", "Sin"]
BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


def _i64(values: list[int] | int) -> np.ndarray:
    return np.array(values, np.int64)


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    """A small float32 graph with static shapes (every intermediate at most MAX_ELEMENTS)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rank = draw(st.integers(1, 4))
    shape = [draw(st.sampled_from(DIMS)) for _ in range(rank)]
    while math.prod(shape) > MAX_ELEMENTS:
        shape[shape.index(max(shape))] //= 2
    b = GraphBuilder("cfuzz")
    pool: list[Value] = [b.input("x", "float32", shape)]

    def const(dims: list[int]) -> Value:
        return b.constant(rng.uniform(-2, 2, dims).astype(np.float32))

    for _ in range(draw(st.integers(1, 6))):
        x = pool[draw(st.integers(0, len(pool) - 1))]
        y = _step(draw, b, rng, x, pool, const)
        if y is not None and math.prod(y.type.static_shape()) <= MAX_ELEMENTS:
            pool.append(y)
    outputs = [pool[-1]] + [v for v in pool[1:-1] if draw(st.integers(0, 3)) == 0]
    b.output(*[v for v in outputs if v.producer is not None] or [b.op("Identity", pool[0])])
    return b.graph


def _step(draw, b, rng, x, pool, const) -> Value | None:
    shape = list(x.type.static_shape())
    rank = len(shape)
    step = draw(st.sampled_from(STEPS))
    axis = draw(st.integers(0, rank - 1)) if rank else 0
    if step == "unary":
        return b.op(draw(st.sampled_from(UNARY)), x)
    if step == "binary":
        partners = [v for v in pool if _broadcasts(v.type.static_shape(), shape)]
        other = partners[draw(st.integers(0, len(partners) - 1))]
        return b.op(draw(st.sampled_from(BINARY)), x, other)
    if step == "binary_const":
        dims = [d if draw(st.booleans()) else 1 for d in shape][draw(st.integers(0, rank)) :]
        c = const(dims)
        args = (x, c) if draw(st.booleans()) else (c, x)
        return b.op(draw(st.sampled_from(BINARY)), *args)
    if step == "div":
        return b.op("Div", x, b.op("Add", b.op("Abs", x), b.constant(np.float32(1.0))))
    if step == "transpose" and rank >= 2:
        return b.op("Transpose", x, perm=[int(p) for p in rng.permutation(rank)])
    if step == "reshape" and rank >= 1:
        k = draw(st.integers(0, rank))
        target = [math.prod(shape[:k]), math.prod(shape[k:])]
        return b.op("Reshape", x, b.constant(_i64(target)), allowzero=1)
    if step == "tile":
        reps = [draw(st.integers(1, 3)) for _ in shape]
        if math.prod(shape) * math.prod(reps) > MAX_ELEMENTS:
            return None
        return b.op("Tile", x, b.constant(_i64(reps)))
    if step == "expand" and 1 in shape:
        target = [draw(st.integers(2, 5)) if d == 1 else d for d in shape]
        if math.prod(target) > MAX_ELEMENTS:
            return None
        return b.op("Expand", x, b.constant(_i64(target)))
    if step == "slice" and rank and shape[axis]:
        n = shape[axis]
        step_ = draw(st.sampled_from([1, 2, 3, -1, -2]))
        start, end = draw(st.integers(-n, n)), draw(st.integers(-n - 1, n + 1))
        args = [_i64([start]), _i64([end]), _i64([axis]), _i64([step_])]
        return b.op("Slice", x, *[b.constant(a) for a in args])
    if step == "concat" and rank:
        return b.op("Concat", x, b.op("Neg", x), x, axis=axis)
    if step == "pad" and rank:
        mode = draw(st.sampled_from(["constant", "reflect", "edge"]))
        limit = [max(0, d - 1) if mode == "reflect" else 3 for d in shape]
        begins = [draw(st.integers(0, min(2, lim))) for lim in limit]
        ends = [draw(st.integers(0, min(2, lim))) for lim in limit]
        if math.prod(d + p + q for d, p, q in zip(shape, begins, ends, strict=True)) > MAX_ELEMENTS:
            return None
        pads = begins + ends
        return b.op("Pad", x, b.constant(_i64(pads)), mode=mode)
    if step == "gather" and rank and shape[axis]:
        n = shape[axis]
        idx = rng.integers(-n, n, size=draw(st.sampled_from([(), (3,), (2, 2)])))
        return b.op("Gather", x, b.constant(idx.astype(np.int64)), axis=axis)
    if step == "reduce" and rank:
        op = draw(st.sampled_from(["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"]))
        axes = sorted({draw(st.integers(0, rank - 1)) for _ in range(draw(st.integers(1, rank)))})
        return b.op(op, x, b.constant(_i64(axes)), keepdims=int(draw(st.booleans())))
    if step == "softmax" and rank:
        return b.op(draw(st.sampled_from(["Softmax", "LogSoftmax"])), x, axis=axis)
    if step == "matmul" and rank:
        w = const([shape[-1], draw(st.sampled_from([1, 3, 8, 17]))])
        return b.op("MatMul", x, w)
    if step == "where":
        cond = b.op("Greater", x, b.constant(np.float32(0.25)))
        return b.op("Where", cond, x, b.op("Neg", x))
    if step == "cast":
        # Of the input only: truncating a computed value would turn last-bit differences of
        # approximations (Tanh...) at integer boundaries into whole units.
        wide = b.op("Cast", b.op("Mul", pool[0], b.constant(np.float32(7.0))), to=6)  # int32
        return b.op("Cast", wide, to=1)
    if step == "layer_norm" and rank:
        n = shape[-1]
        return b.op("LayerNormalization", x, const([n]), const([n]), axis=-1, epsilon=1e-2)
    if step == "cumsum" and rank:
        return b.op(
            "CumSum", x, b.constant(np.int64(axis)), exclusive=int(draw(st.booleans())),
            reverse=int(draw(st.booleans())),
        )  # fmt: skip
    if step == "depth_to_space" and rank == 4 and shape[1] % 4 == 0:
        return b.op("DepthToSpace", x, blocksize=2, mode=draw(st.sampled_from(["DCR", "CRD"])))
    if step == "pool" and rank == 4 and shape[2] >= 2 and shape[3] >= 2:
        op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
        return b.op(op, x, kernel_shape=[2, 2], strides=[draw(st.integers(1, 2))] * 2)
    if step == "split" and rank and shape[axis] >= 2:
        outs = b.op_multi("Split", x, num_outputs=2, axis=axis)
        return outs[draw(st.integers(0, 1))]
    return None


def _broadcasts(a: tuple[int, ...], b: list[int]) -> bool:
    """True if a broadcasts to b without growing b."""
    if len(a) > len(b):
        return False
    return all(x in (1, y) for x, y in zip(reversed(a), reversed(b), strict=False))


def _run(graph: Graph, feeds: dict[str, np.ndarray], spec: targets.TargetSpec) -> list[np.ndarray]:
    import tvm
    from tvm import relax

    result = build.build_module(graph, spec, keep_params=False, fold=False, progress=False)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in result.lowered.input_names])
    return [o.numpy() for o in ([out] if isinstance(out, tvm.runtime.Tensor) else list(out))]


def close(want: np.ndarray, have: np.ndarray) -> bool:
    """Floats within 1e-4 relative plus 1e-5 of the tensor's scale (reductions reorder sums)."""
    if want.shape != have.shape or want.dtype != have.dtype:
        return False
    a, b = have.astype(np.float64), want.astype(np.float64)
    finite = b[np.isfinite(b)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    with np.errstate(all="ignore"):
        ok = np.isclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, scale), equal_nan=True)
    return bool(np.all(ok))


def runnable_models() -> list[str]:
    return [m for m in OTHER_MODELS if not targets.missing_on_host(targets.resolve(f"x86:{m}"))]


@pytest.mark.skipif(not ON_X86, reason="compares x86 CPU models; needs an x86 host")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking: each try costs two builds, and the failing graph is printed whole anyway.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(graphs(), min_size=GRAPHS_PER_EXAMPLE, max_size=GRAPHS_PER_EXAMPLE), st.data())
def test_compiled_graphs_match_interpreter(batch: list[Graph], data: st.DataObject) -> None:
    rng = np.random.default_rng(1)
    cases = []
    for i, graph in enumerate(batch):
        verify(graph)
        x = graph.inputs[0]
        cases.append((f"graph{i}", graph, {x.name: rng.uniform(-2, 2, x.type.static_shape())
                                           .astype(np.float32)}))  # fmt: skip
    merged = merge_graphs(cases, "cfuzz_batch")
    wants = [w for _, g, f in cases for w in interpret(g, f).values()]
    other = data.draw(st.sampled_from(runnable_models()), label="other CPU model")
    for spec in (targets.resolve("x86"), targets.resolve(f"x86:{other}")):
        got = _run(merged.graph, merged.feeds, spec)
        for (cid, out), want, have in zip(merged.origin, wants, got, strict=True):
            graph = batch[int(cid.removeprefix("graph"))]
            assert close(want, have), (
                f"{spec.describe()}: {cid} output {out} differs from the interpreter "
                f"(max abs diff {np.max(np.abs(have.astype(np.float64) - want)):.3g}):\n"
                f"{to_text(graph)}"
            )


def test_close_can_fail() -> None:
    want = np.linspace(-1, 1, 16, dtype=np.float32)
    have = want.copy()
    assert close(want, have)
    have[5] += 1e-3
    assert not close(want, have)
    assert not close(want, want[:8])
