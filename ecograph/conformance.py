"""Run ONNX's own backend node tests through `from_onnx` and the reference interpreter or TVM.

    python -m ecograph.conformance [--backend reference|tvm] [--json out.json]
                                   [--ops Add Conv ...] [--all]

Each node test of the pinned onnx (`onnx.backend.test.loader.load_model_tests(kind="node")`,
data built in memory) is imported with `from_onnx`, run with `ecograph.ir.interpret` and
compared with ONNX's expected outputs: exact dtype and shape, values within rtol 1e-3 and
atol 1e-7 (the loader's tolerances). A test belongs to the op of its single node; its
`_expanded` variants (the op's function body) belong to the same op.

`SUPPORTED_OPS` is the explicit list of ops ecograph claims: for each, every node test must
pass or be excluded with a written reason. Two exclusions apply to every op and are decided
from the model itself: tensors of a dtype the IR does not model (float8, float4, int2,
complex, ...), and models whose opset changed the op's schema after `ONNX_OPSET`.

`--backend tvm` is the TVM column: the imported graph is lowered and compiled for the host
x86 CPU (`ecograph.backends.tvm.build.build_module(graph, "x86")`) and run in TVM's VM on
every data set, compared the same way. On top of the reference column's exclusions it has
its own, in `TVM_EXCLUSIONS` (what TVM cannot express, each with its reason), plus the ops in
`ecograph.backends.tvm.context.UNLOWERABLE`.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from ecograph.errors import UnsupportedError
from ecograph.ir.dtypes import DType
from ecograph.ir.registry import ONNX_OPSET

RTOL = 1e-3
ATOL = 1e-7

_TRAINING = "training mode (randomness / gradient state) is outside inference"
_SEQ = "uses sequence / optional types, which the IR does not model"

# Op -> {test-name pattern (fnmatch): reason}. Every op listed here is claimed: each of its
# node tests passes or matches an exclusion.
SUPPORTED_OPS: dict[str, dict[str, str]] = {}


def _names(text: str) -> list[str]:
    return text.split()


def _claim(ops: Iterable[str], exclusions: dict[str, str] | None = None) -> None:
    for op in ops:
        SUPPORTED_OPS.setdefault(op, {}).update(exclusions or {})


_claim(
    _names(
        """
        Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BitShift
        BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Ceil Celu Clip Concat ConstantOfShape Conv
        Cos Cosh CumSum DequantizeLinear Div DynamicQuantizeLinear Elu Equal Erf Exp Expand
        Flatten Floor Gather GatherElements Gelu Gemm GlobalAveragePool GlobalMaxPool Greater
        GreaterOrEqual HardSigmoid HardSwish Hardmax Identity InstanceNormalization IsInf IsNaN
        LRN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax MatMul MatMulInteger
        Max MaxPool Mean Min Mish Mod Mul Neg Not Or PRelu Pad Pow QuantizeLinear
        RMSNormalization Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
        ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Round
        Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign Split Sqrt Squeeze
        Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Where Xor Cast
        CastLike Constant BatchNormalization Dropout
        """
    )
)
_claim(
    _names(
        """
        DepthToSpace SpaceToDepth GatherND ScatterND ScatterElements OneHot NonZero Compress
        EyeLike Shrink ReverseSequence Einsum Det CenterCropPad HannWindow HammingWindow
        BlackmanWindow ConvTranspose ConvInteger QLinearMatMul LpPool MaxUnpool
        GroupNormalization MeanVarianceNormalization LpNormalization
        """
    )
)
# Less common ops: kernels delegated to onnx.reference (ecograph/ir/ops/reference_ops.py), or
# numpy kernels where onnx.reference deviates from the spec (ir/ops/recurrent.py for RNN, GRU,
# LSTM; ir/ops/spec_kernels.py for Unique, TfIdfVectorizer, NonMaxSuppression, NLL loss).
_claim(
    _names(
        """
        Col2Im DFT DeformConv GRU GridSample LSTM NegativeLogLikelihoodLoss NonMaxSuppression
        QLinearConv RNN RegexFullMatch Resize RoiAlign RotaryEmbedding SoftmaxCrossEntropyLoss
        StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique STFT MelWeightMatrix
        AffineGrid
        """
    )
)
# Retired ops that onnx.version_converter rewrites on import (Upsample-9 -> Resize,
# Scatter-10 -> ScatterElements); their node tests run through that conversion.
_claim(["Upsample", "Scatter"])
_claim(
    ["AffineGrid"],
    {"test_affine_grid_*_expanded": "the expanded function body uses If; control flow is not "
     "supported yet"},
)  # fmt: skip
_claim(
    ["Dropout"],
    {
        "test_training_dropout": _TRAINING,
        "test_training_dropout_default*": _TRAINING,
        "test_training_dropout_mask": _TRAINING,
    },
)
_claim(
    ["Range"],
    {"test_range_*_expanded": "the expanded function body uses Loop; control flow is not "
     "supported yet"},
)  # fmt: skip
_claim(
    ["Celu"],
    {
        "test_celu_bfloat16_expanded": "expected values come from float32 math; the expanded "
        "body rounds every step to bfloat16 (1-ulp difference, as in any bfloat16 runtime)"
    },
)


# The TVM column's own exclusions: op -> {test-name pattern: reason}, on top of the above.
TVM_EXCLUSIONS: dict[str, dict[str, str]] = {}

BACKENDS = ("reference", "tvm")


def _exclude_tvm(ops: Iterable[str], exclusions: dict[str, str]) -> None:
    for op in ops:
        TVM_EXCLUSIONS.setdefault(op, {}).update(exclusions)


_exclude_tvm(
    ["DFT"],
    {
        "test_dft_inverse*": "expected values carry numpy's float32 FFT rounding noise "
        "(1.9e-7 where the exact value is ~7e-16) under an absolute tolerance of 1e-7; TVM's "
        "DFT-by-matmul gives 0.0 there, nearer the exact value (the other 190 of 200 match)"
    },
)


# ------------------------------------------------------------------ data model


@dataclass
class CaseResult:
    test: str
    op: str
    status: str  # passed | failed | error | excluded
    detail: str = ""
    seconds: float = 0.0


@dataclass
class OpSummary:
    op: str
    supported: bool
    passed: int = 0
    failed: int = 0
    error: int = 0
    excluded: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.error + self.excluded


@dataclass
class NodeTest:
    name: str
    op: str
    model: onnx.ModelProto
    data_sets: list[tuple[list[np.ndarray], list[np.ndarray]]]
    rtol: float
    atol: float


# ------------------------------------------------------------------- loading


@functools.cache
def _all_cases() -> tuple[Any, ...]:
    """onnx's node test cases, built once per process (building them takes seconds)."""
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return tuple(load_model_tests(kind="node"))


def load_node_tests(ops: Sequence[str] | None = None) -> list[NodeTest]:
    """ONNX's node tests as NodeTest records, optionally only those of `ops`."""
    cases = _all_cases()
    op_of: dict[str, str] = {}
    for case in cases:
        if "_expanded" not in case.name and case.model is not None:
            node_ops = {n.op_type for n in case.model.graph.node}
            op_of[case.name] = next(iter(node_ops)) if len(node_ops) == 1 else "?"
    tests = []
    for case in cases:
        base = re.sub(r"_expanded.*$", "", case.name)
        op = op_of.get(base, "?")
        if ops and op not in ops:
            continue
        if case.model is None or case.data_sets is None:
            continue
        tests.append(
            NodeTest(case.name, op, case.model, list(case.data_sets), case.rtol, case.atol)
        )
    return tests


# ------------------------------------------------------------------ exclusions


def _tensor_types(model: onnx.ModelProto) -> Iterable[int]:
    g = model.graph
    for vi in [*g.input, *g.output, *g.value_info]:
        which = vi.type.WhichOneof("value")
        if which == "tensor_type":
            yield vi.type.tensor_type.elem_type
    for t in g.initializer:
        yield t.data_type
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t.data_type
            if a.name in ("to", "output_dtype", "stash_type") and a.type == a.INT and a.i:
                yield a.i


def automatic_exclusion(test: NodeTest) -> str | None:
    """A reason to exclude `test` that follows from the model itself, or None."""
    g = test.model.graph
    for vi in [*g.input, *g.output]:
        which = vi.type.WhichOneof("value")
        if which != "tensor_type":
            return f"{_SEQ} ({vi.name!r} is a {which})"
    for elem in _tensor_types(test.model):
        try:
            DType.from_onnx(elem)
        except ValueError:
            name = onnx.TensorProto.DataType.Name(elem).lower()
            return f"uses dtype {name}, which the IR does not model"
    version = next(
        (int(i.version) for i in test.model.opset_import if i.domain in ("", "ai.onnx")), None
    )
    if version is not None and version > ONNX_OPSET:
        from ecograph.frontend.onnx import same_schema

        for node in g.node:
            if node.domain in ("", "ai.onnx") and not same_schema(node, version):
                since = onnx.defs.get_schema(node.op_type, version).since_version
                return (
                    f"model is at opset {version}; {node.op_type}-{since} differs from the "
                    f"op at ecograph's pinned opset {ONNX_OPSET} beyond its type constraints"
                )
    return None


def exclusion_reason(test: NodeTest, backend: str = "reference") -> str | None:
    for pattern, reason in SUPPORTED_OPS.get(test.op, {}).items():
        if fnmatch.fnmatchcase(test.name, pattern):
            return reason
    reason = automatic_exclusion(test)
    if reason is not None or backend == "reference":
        return reason
    for pattern, why in TVM_EXCLUSIONS.get(test.op, {}).items():
        if fnmatch.fnmatchcase(test.name, pattern):
            return f"TVM: {why}"
    return _tvm_automatic_exclusion(test)


def _tvm_automatic_exclusion(test: NodeTest) -> str | None:
    """A reason TVM cannot run `test` that follows from the model itself, or None."""
    from ecograph.backends.tvm.context import UNLOWERABLE

    for node in test.model.graph.node:
        why = UNLOWERABLE.get((node.domain if node.domain != "ai.onnx" else "", node.op_type))
        if why is not None:
            return f"TVM: {node.op_type} cannot lower ({why})"
    for vi in [*test.model.graph.input, *test.model.graph.output]:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.STRING:
            return f"TVM: string tensor {vi.name!r}; TVM has no string dtype"
    for vi in test.model.graph.input:
        elem = vi.type.tensor_type.elem_type
        if elem in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            return (
                "TVM: a 4-bit graph input; TVM's VM cannot allocate 4-bit tensors, so ecograph "
                "artifacts take int4/uint4 only as constants (carried in 8 bits)"
            )
    return None


# -------------------------------------------------------------------- running


def _compare(expected: np.ndarray, actual: np.ndarray, rtol: float, atol: float) -> str | None:
    strings = expected.dtype.kind in "OUS" and actual.dtype.kind in "OUS"
    if expected.dtype != actual.dtype and not strings:
        return f"dtype {actual.dtype}, expected {expected.dtype}"
    if expected.shape != actual.shape:
        return f"shape {list(actual.shape)}, expected {list(expected.shape)}"
    if expected.dtype.kind in "OUS":
        if not all(a == b for a, b in zip(expected.reshape(-1), actual.reshape(-1), strict=True)):
            return "string values differ"
        return None
    e = expected.astype(np.float64) if expected.dtype.kind not in "b" else expected
    a = actual.astype(np.float64) if actual.dtype.kind not in "b" else actual
    try:
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        return " ".join(lines[1:4])[:300]
    return None


def _as_array(data: Any) -> np.ndarray:
    """Test data as numpy: the loader gives arrays or (for some dtypes) TensorProtos."""
    if isinstance(data, onnx.TensorProto):
        return onnx.numpy_helper.to_array(data)
    return np.asarray(data)


def _reference_runner(graph: Any) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    from ecograph.ir.interpreter import interpret

    def run_one(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        got = interpret(graph, feeds)
        return [got[v.name] for v in graph.outputs]

    return run_one


# Op inputs that set shapes, axes or counts: Relax needs them at compile time (they decide
# output shapes and kernel structure), and models keep them in initializers. ONNX's node tests
# feed them as graph inputs, so the TVM column binds such inputs to the data set's values
# before compiling (one build per data set) and says so in the result's detail.
_STATIC_INPUT_NAMES = frozenset(
    _names(
        "axes axis shape split K k pads starts ends steps repeats depth sizes scales roi "
        "output_shape image_shape block_shape dft_length frame_step frame_length ratio "
        "training_mode constant_value"
    )
)
_STATIC_INPUT_OPS = frozenset(
    _names("ConstantOfShape Range MelWeightMatrix HannWindow HammingWindow BlackmanWindow")
)


def _formal_inputs(op: str, domain: str = "") -> list[str]:
    """The op's formal input names at the pinned opset (empty if ONNX has no such op)."""
    try:
        return [i.name for i in onnx.defs.get_schema(op, ONNX_OPSET, domain).inputs]
    except onnx.defs.SchemaError:
        return []


def _param(formal: list[str], i: int) -> str:
    """Formal name of input `i` (the last one for variadic tails)."""
    return formal[min(i, len(formal) - 1)] if formal else ""


def static_inputs(model: onnx.ModelProto, op: str | None = None) -> list[str]:
    """The graph inputs of `model` that the TVM column binds as constants (see above).

    For an `_expanded` test of `op` (its function body, without an `op` node) the graph
    inputs are the op's own inputs in order, so they are matched to the op's schema."""
    init = {t.name for t in model.graph.initializer}
    graph_inputs = {vi.name for vi in model.graph.input if vi.name not in init}
    found: list[str] = []
    if op is not None and all(n.op_type != op for n in model.graph.node):
        formal = _formal_inputs(op)
        for i, vi in enumerate(model.graph.input):
            # Only named parameters: a function body can compute what the whole-op rule
            # would bind (e.g. a window's length through Range, bound at run time).
            if _param(formal, i) in _STATIC_INPUT_NAMES and vi.name in graph_inputs:
                found.append(vi.name)
    for node in model.graph.node:
        formal = _formal_inputs(node.op_type, node.domain)
        if not formal:
            continue
        for i, name in enumerate(node.input):
            wanted = node.op_type in _STATIC_INPUT_OPS or _param(formal, i) in _STATIC_INPUT_NAMES
            if wanted and name in graph_inputs and name not in found:
                found.append(name)
    return found


def _bind_inputs(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose inputs named in `values` are initializers holding them."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    keep = [vi for vi in bound.graph.input if vi.name not in values]
    del bound.graph.input[:]
    bound.graph.input.extend(keep)
    for name, arr in values.items():
        bound.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(arr), name))
    return bound


class _AllFoldedError(Exception):
    """The whole graph was folded at lowering time (see `_tvm_runner`)."""


def _tvm_runner(
    graph: Any, target: Any = "x86"
) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """Compile `graph` for `target` (an x86 CPU this host can run; default the host's) and
    return a function running it in TVM's VM."""
    import tvm
    from tvm import relax

    from ecograph.backends.tvm.build import build_module

    result = build_module(graph, target, keep_params=False, progress=False)
    if set(result.lowered.folded) >= {n.name for n in graph.nodes}:
        # Every node had known inputs: the reference kernel computed the outputs while
        # lowering, so TVM only returns constants. That is not a test of the op in TVM.
        raise _AllFoldedError()
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    out_dtypes = [v.dtype.numpy for v in graph.outputs]

    def run_one(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # np.array(order="C"), not np.ascontiguousarray: that one turns 0-d arrays into 1-d.
        names = result.lowered.input_names
        out = vm["main"](*[tvm.runtime.tensor(np.array(feeds[n], order="C")) for n in names])
        outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
        # int4/uint4 outputs come back in their 8-bit carriers; the values are the IR's.
        return [o.numpy().astype(dt, copy=False) for o, dt in zip(outs, out_dtypes, strict=True)]

    return run_one


def run_test(test: NodeTest, backend: str = "reference", target: Any = "x86") -> CaseResult:
    """Import, run (through `backend`; the TVM column builds for `target`) and compare one
    node test."""
    from ecograph.frontend.onnx import from_onnx
    from ecograph.ir.verify import verify

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    start = time.perf_counter()
    reason = exclusion_reason(test, backend)
    if reason is not None:
        return CaseResult(test.name, test.op, "excluded", reason)
    bound = static_inputs(test.model, test.op) if backend == "tvm" else []
    note = f"inputs bound as constants for TVM: {', '.join(bound)}" if bound else ""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            runner = None
            if not bound:
                graph = from_onnx(test.model)
                verify(graph)  # stored types must equal re-inference, among other invariants
                runner = (
                    _tvm_runner(graph, target) if backend == "tvm" else _reference_runner(graph)
                )
            init = {t.name for t in test.model.graph.initializer}
            input_names = [vi.name for vi in test.model.graph.input if vi.name not in init]
            output_names = [vi.name for vi in test.model.graph.output]
            for inputs, expected in test.data_sets:
                feeds = dict(zip(input_names, map(_as_array, inputs), strict=False))
                if bound:  # one build per data set, its shape inputs baked in
                    model = _bind_inputs(test.model, {n: feeds.pop(n) for n in bound})
                    graph = from_onnx(model)
                    verify(graph)
                    actual = _tvm_runner(graph, target)(feeds)
                else:
                    assert runner is not None
                    actual = runner(feeds)
                for name, exp, act in zip(output_names, expected, actual, strict=True):
                    problem = _compare(_as_array(exp), np.asarray(act), test.rtol, test.atol)
                    if problem is not None:
                        return CaseResult(
                            test.name, test.op, "failed", f"output {name!r}: {problem}",
                            time.perf_counter() - start,
                        )  # fmt: skip
    except _AllFoldedError:
        known = f"with its shape inputs bound ({', '.join(bound)}) " if bound else ""
        return CaseResult(
            test.name, test.op, "excluded",
            f"TVM: {known}every input is known, so lowering folds the graph to constants "
            "through the reference kernel; nothing runs in TVM to compare",
        )  # fmt: skip
    except UnsupportedError as exc:
        if "allows only after opset" in str(exc):
            # Decided by the model: a type the op lacks at the pinned opset (see from_onnx).
            reason = re.sub(r"^node \S+ \(\w+\) ", "", str(exc).split(": ", 1)[-1])
            return CaseResult(test.name, test.op, "excluded", reason[:300])
        return CaseResult(test.name, test.op, "error", f"UnsupportedError: {exc}"[:400])
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return CaseResult(test.name, test.op, "error", detail[:400], time.perf_counter() - start)
    return CaseResult(test.name, test.op, "passed", note, time.perf_counter() - start)


def run(
    ops: Sequence[str] | None = None,
    *,
    only_supported: bool = True,
    backend: str = "reference",
    target: Any = "x86",
) -> tuple[list[CaseResult], dict[str, OpSummary]]:
    """Run the node tests (of `ops`, or of the supported ops unless `only_supported=False`)
    through `backend` ("reference": the interpreter; "tvm": a TVM build for `target`, an x86
    CPU model this host can run)."""
    wanted = list(ops) if ops else (sorted(SUPPORTED_OPS) if only_supported else None)
    tests = load_node_tests(wanted)
    if backend == "tvm":
        target = _runnable_x86(target)
    results = [run_test(t, backend, target) for t in _progress(tests)]
    summaries: dict[str, OpSummary] = {}
    for r in results:
        s = summaries.setdefault(r.op, OpSummary(r.op, r.op in SUPPORTED_OPS))
        setattr(s, r.status, getattr(s, r.status) + 1)
        if r.status in ("failed", "error"):
            s.problems.append(f"{r.test}: {r.detail}")
    return results, summaries


class CannotRunHereError(Exception):
    """The TVM column's target builds code this machine cannot execute."""


def _runnable_x86(target: Any) -> Any:
    """`target` resolved once; CannotRunHereError (not a crash) if this host cannot run it."""
    from ecograph.backends.tvm.targets import missing_on_host, resolve

    spec = resolve(target)
    if spec.family != "x86":
        raise CannotRunHereError(f"the TVM column runs its builds here: {spec.name} is not x86")
    missing = missing_on_host(spec)
    if missing:
        raise CannotRunHereError(
            f"this CPU cannot run {spec.name} code (it lacks {', '.join(missing)})"
        )
    return spec


def _progress(tests: list[NodeTest]) -> Iterable[NodeTest]:
    """The tests, with a progress bar on an interactive terminal."""
    if not sys.stderr.isatty():
        return tests
    from tqdm import tqdm

    return tqdm(tests, desc="node tests", unit="test", leave=False)


def problems_on_supported(summaries: dict[str, OpSummary]) -> list[str]:
    """Every failure or error on a claimed op, one line each (empty when conformant)."""
    return [p for s in summaries.values() if s.supported for p in s.problems]


# ---------------------------------------------------------------------- output


def format_table(
    summaries: dict[str, OpSummary], results: list[CaseResult], backend: str = "reference"
) -> str:
    lines = [
        f"backend: {backend}"
        + (" (TVM, host x86 build)" if backend == "tvm" else " (ecograph's interpreter)"),
        f"{'op':<28} {'claim':<5} {'pass':>5} {'fail':>5} {'error':>5} {'excl':>5}",
    ]
    for op in sorted(summaries):
        s = summaries[op]
        lines.append(
            f"{op:<28} {'yes' if s.supported else 'no':<5} {s.passed:>5} {s.failed:>5} "
            f"{s.error:>5} {s.excluded:>5}"
        )
    claimed = [s for s in summaries.values() if s.supported]
    ok = [s for s in claimed if not s.failed and not s.error]
    lines.append("")
    lines.append(
        f"claimed ops: {len(claimed)} ({len(ok)} conformant); tests on claimed ops: "
        f"{sum(s.passed for s in claimed)} passed, {sum(s.failed for s in claimed)} failed, "
        f"{sum(s.error for s in claimed)} error, {sum(s.excluded for s in claimed)} excluded"
    )
    reasons: dict[str, int] = {}
    for r in results:
        if r.status == "excluded" and r.op in SUPPORTED_OPS:
            reasons[r.detail] = reasons.get(r.detail, 0) + 1
    if reasons:
        lines.append("exclusions on claimed ops:")
        for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:>4}  {reason}")
    problems = problems_on_supported(summaries)
    if problems:
        lines.append("failures on claimed ops:")
        lines.extend(f"  {p}" for p in problems)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ecograph.conformance",
        description="Run ONNX's backend node tests through from_onnx and the reference "
        "interpreter (default) or a TVM x86 build (--backend tvm).",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="reference",
        help="run each imported graph in ecograph's reference interpreter (default) or compile "
        "it with TVM for the host x86 CPU and run that (the TVM column)",
    )
    parser.add_argument(
        "--target",
        default="x86",
        help="the TVM column's target: 'x86' (this CPU, default) or another x86 CPU model this "
        "host can run, e.g. 'x86:haswell', 'x86:skylake-avx512', 'x86:generic'",
    )
    parser.add_argument("--json", metavar="PATH", help="write per-test results and totals here")
    parser.add_argument("--ops", nargs="+", metavar="OP", help="only the tests of these ops")
    parser.add_argument(
        "--all", action="store_true", help="also run the tests of ops ecograph does not claim"
    )
    args = parser.parse_args(argv)
    try:
        results, summaries = run(
            args.ops, only_supported=not args.all, backend=args.backend, target=args.target
        )
    except CannotRunHereError as exc:
        print(f"skipped: {exc}")
        return 2
    print(format_table(summaries, results, args.backend))
    if args.json:
        payload: dict[str, Any] = {
            "onnx_version": onnx.__version__,
            "opset": ONNX_OPSET,
            "backend": args.backend,
            "supported_ops": sorted(SUPPORTED_OPS),
            "ops": {op: {k: v for k, v in asdict(s).items()} for op, s in summaries.items()},
            "tests": [asdict(r) for r in results],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
    return 1 if problems_on_supported(summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
