"""`ecograph.optimize()`: capture, optimize, quantize, compile, check and report in one call.

The original model is never modified: the graph is copied before any pass runs, and if the
optimized model misses the accuracy budget on the example inputs an AccuracyError is raised
with the numbers, leaving everything the caller passed in untouched.

A target this machine cannot run (ARM from x86, CUDA without a GPU, an x86 CPU model with ISA
this CPU lacks) is still compiled; accuracy is then checked on a build of the same optimized
graph for this host (so TVM's lowering of that graph is exercised, not only the passes), the
target's artifact is not run or measured, and the report says so. `OptimizeResult.module` is
then a `NotRunnableHere` that raises UsageError when called.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.errors import AccuracyError, BuildError, EcographError, UsageError
from ecograph.ir import Graph, interpret
from ecograph.ir.stats import graph_stats
from ecograph.quant import QUANTIZING_PASSES, quantization_notes, rounding_nodes

# Default accuracy budgets (cosine similarity of outputs to the original) when none is given.
EXACT_BUDGET = 0.99999
QUANTIZED_BUDGET = 0.99
# ... for a model that quantizes its own activations (an ONNX Runtime int8 model, QDQ or
# QOperator) when ecograph quantizes nothing more: a compiled kernel's float rounding (FMA
# contraction, summation order) may put a value that lies within a rounding error of the
# middle between two codes on the other side, and the layers after carry that one code
# (ResNet-18 as ONNX Runtime's quantize_static writes it: cosine 0.99995 on x86 with FMA).
REQUANTIZING_BUDGET = 0.999


def build_budget(graph: Graph) -> float:
    """The cosine a build of `graph` must reach against the reference interpreter when no
    lossy pass ran: REQUANTIZING_BUDGET for a graph that rounds activations to integer codes
    itself (`ecograph.quant.rounding_nodes`), else EXACT_BUDGET."""
    return REQUANTIZING_BUDGET if rounding_nodes(graph) else EXACT_BUDGET


class NotRunnableHere:
    """Stands in for the compiled module of a target this machine cannot run: calling it
    raises UsageError saying where the artifact is and how to run it where it can run."""

    runs_here = False

    def __init__(self, target: str, artifact: Path, reason: str) -> None:
        self.target = target
        self.artifact = artifact
        self.reason = reason

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UsageError(
            f"the {self.target} build cannot run on this machine ({self.reason}); copy "
            f"{self.artifact} to a machine that can run it and call ecograph.load on it there, "
            "or optimize with a target this machine runs (target='x86')"
        )

    def __repr__(self) -> str:
        return f"<NotRunnableHere {self.target} artifact={self.artifact}>"


@dataclass
class OptimizeResult:
    """What optimize() returns. `module` is the compiled model (numpy or torch in and out),
    or a NotRunnableHere (raises UsageError when called) when the target does not run on
    this machine; `runs_here` tells which."""

    graph: Graph
    module: Any
    report: Any
    artifact: Path
    original_graph: Graph
    pass_records: list[Any] = field(default_factory=list)
    quantization: str = ""
    runs_here: bool = True

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Copy the compiled artifact to `out_dir/artifact` and write the report there."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        dest = out / "artifact"
        tmp = Path(tempfile.mkdtemp(prefix=".artifact.", dir=out))
        shutil.copytree(self.artifact, tmp / "a")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp / "a", dest)
        shutil.rmtree(tmp, ignore_errors=True)
        self.report.write(out)
        return out

    def to_onnx(self, path: str | os.PathLike[str]) -> Any:
        from ecograph.frontend.onnx import to_onnx

        return to_onnx(self.graph, path)


# ----------------------------------------------------------------- capture


def capture(model: Any, example_inputs: Any = None) -> Graph:
    """An ecograph Graph for a torch module, an ONNX path or ModelProto, or a Graph (copied)."""
    if isinstance(model, Graph):
        return model.copy()
    if isinstance(model, (str, os.PathLike)):
        from ecograph.frontend.onnx import from_onnx

        return from_onnx(model)
    if type(model).__name__ == "ModelProto":
        from ecograph.frontend.onnx import from_onnx

        return from_onnx(model)
    if _is_torch_module(model):
        from ecograph.frontend.torch import from_torch

        if example_inputs is None:
            raise EcographError("a torch module needs example_inputs to be captured")
        args = example_inputs if isinstance(example_inputs, (tuple, dict)) else (example_inputs,)
        return from_torch(model, args)
    raise EcographError(
        f"cannot optimize a {type(model).__name__}: give a torch.nn.Module, an ONNX path or "
        "ModelProto, or an ecograph Graph"
    )


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def feeds_for(graph: Graph, example_inputs: Any) -> dict[str, np.ndarray]:
    """Example inputs as a dict of numpy arrays keyed by graph input name."""
    if example_inputs is None:
        from ecograph.passes.sample import sample_inputs_for

        return sample_inputs_for(graph)
    names = [v.name for v in graph.inputs]
    if isinstance(example_inputs, Mapping):
        feeds = {k: _numpy(v) for k, v in example_inputs.items()}
    else:
        values = (
            list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
        )
        if len(values) != len(names):
            raise EcographError(
                f"{len(values)} example inputs for graph inputs {names}; pass a dict by name"
            )
        feeds = {n: _numpy(v) for n, v in zip(names, values, strict=True)}
    missing = [n for n in names if n not in feeds]
    if missing:
        raise EcographError(f"example inputs lack {missing}; graph inputs are {names}")
    return {n: feeds[n] for n in names}


def calibration_batches(graph: Graph, data: Iterable[Any]) -> list[Any]:
    """optimize()'s `calibration_data` with each positional batch (a tuple or list in the
    graph's input order, or one array for a one-input graph: the forms example inputs take)
    made a dict {input name: array}; dicts stay as given (the Quantize pass checks every
    batch against the graph's inputs)."""
    names = [v.name for v in graph.inputs]
    batches: list[Any] = []
    for i, batch in enumerate(data):
        if isinstance(batch, Mapping):
            batches.append(batch)
            continue
        values = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        if len(values) != len(names) or any(v is None for v in values):
            raise UsageError(
                f"calibration batch {i} gives {len(values)} input(s); the graph inputs are "
                f"{names}: give arrays in that order, or a dict by name"
            )
        batches.append(dict(zip(names, values, strict=True)))
    return batches


def _numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach") and hasattr(v, "numpy"):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def symbol_bindings(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    env: dict[str, int] = {}
    for v in graph.inputs:
        for d, n in zip(v.shape, feeds[v.name].shape, strict=False):
            if isinstance(d, str) and d.isidentifier():
                env.setdefault(d, int(n))
    return env


# ------------------------------------------------------------------ checks


def compare_outputs(
    reference: Mapping[str, np.ndarray], actual: Sequence[np.ndarray] | Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Cosine similarity (min over outputs) and max abs error of `actual` to `reference`."""
    values = list(actual.values()) if isinstance(actual, Mapping) else list(actual)
    cosines, worst = [], 0.0
    for ref, out in zip(reference.values(), values, strict=True):
        a = np.asarray(out, np.float64).reshape(-1)
        b = np.asarray(ref, np.float64).reshape(-1)
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosines.append(float(a @ b) / denom if denom > 0 else float(np.array_equal(a, b)))
        if a.size:
            worst = max(worst, float(np.max(np.abs(a - b))))
    return {"cosine": min(cosines), "max_abs_error": worst}


def _as_list(out: Any) -> list[np.ndarray]:
    if isinstance(out, tuple | list):
        return [_numpy(o) for o in out]
    return [_numpy(out)]


# ---------------------------------------------------------------- optimize


def _pass_items(
    pipeline: Any,
    quantize: Any,
    calibration_data: Iterable[Any] | None,
    accuracy_budget: float | None,
    feeds: Mapping[str, np.ndarray],
    prequantized: bool = False,
) -> tuple[list[Any], str, Any]:
    """The pipeline items optimize() runs under one PassManager: `pipeline`, then quantization
    (the budget search when `accuracy_budget` is set), then lower-qdq-to-integer for static
    quantization (int8 x int8 accumulated in int32, not float simulation). A `prequantized`
    model (QDQ products of its own, `qdq_products`) quantized no further gets
    lower-qdq-to-integer first instead: before fold-constants turns its dequantized weights
    into float32 constants, which its products would then multiply in float.

    Returns (items, the quantization's description for the recipe and report, the budget
    search pass or None)."""
    from ecograph.quant.integer import LowerQDQToInteger

    items: list[Any] = [pipeline] if isinstance(pipeline, str) else list(pipeline)
    if quantize is None:
        return ([LowerQDQToInteger(), *items] if prequantized else items), "", None
    from ecograph.quant.presets import quantize_pass
    from ecograph.quant.sensitivity import QuantizeWithinBudget

    qpass = quantize_pass(quantize, calibration_data)
    search = None
    if accuracy_budget is not None:
        search = QuantizeWithinBudget(qpass, [feeds], accuracy_budget)
        items.append(search)
    else:
        items.append(qpass)
    if qpass.mode == "static":
        items.append(LowerQDQToInteger())
    return items, qpass.describe(), search


def _is_lossy(pass_name: str) -> bool:
    """Whether the registered pass `pass_name` is checked against a cosine (a lossy pass)."""
    from ecograph.passes.core import CosineTolerance
    from ecograph.passes.registry import registered_passes

    cls = registered_passes().get(pass_name)
    return isinstance(getattr(cls, "tolerance", None), CosineTolerance)


def optimize(
    model: Any,
    example_inputs: Any = None,
    *,
    target: str | dict[str, Any] = "x86",
    pipeline: str = "default",
    quantize: Any = None,
    accuracy_budget: float | None = None,
    calibration_data: Iterable[Any] | None = None,
    tune: bool | int = False,
    out_dir: str | os.PathLike[str] | None = None,
    measure: bool = True,
    declared_power_watts: float | None = None,
    carbon_intensity: float | None = None,
    instrumentation: Any = None,
    name: str | None = None,
    cache: bool | Any = True,
    profile: bool = False,
    progress: bool | None = None,
    weights_codec: str = "none",
) -> OptimizeResult:
    """Optimize `model` for `target` and return the compiled module with its green report.

    - model: a torch.nn.Module (with example_inputs), an ONNX path or ModelProto, or a Graph.
    - target: a preset ("x86", "arm", "cuda", ...), TVM target dict or TargetSpec. A target
      this machine cannot run is compiled all the same; accuracy is then checked on a host
      build of the same optimized graph, nothing is measured, the report says so and
      `result.module` raises UsageError when called (see NotRunnableHere).
    - pipeline: a pass pipeline spec ("default", "cleanup", "cleanup,fuse-attention", ...).
    - quantize: None, a preset ("int8" = dynamic int8, "int8-static", "int8-weight",
      "int4" = weight-only int4 in groups of 128, "int4-a8" = the same weights times int8
      activations in blocks of 128, "palette4" / "palette8" = dictionary-coded
      weights with 16 / 256 k-means centroids), a dict of Quantize options or a pass.
      Quantization runs after `pipeline` under the same PassManager (static mode is then
      lowered to integer kernels by lower-qdq-to-integer), so `instrumentation` covers it.
    - calibration_data: input batches for static quantization ("int8-static"), GPTQ
      (algorithm="gptq") and SmoothQuant (smooth=...), each in a form the example inputs
      take: a tuple in the graph's input order, one array for a one-input model, or a dict
      by input name. A batch of another form, or calibration data that the quantization
      would not read, raises UsageError / PassError saying so.
    - accuracy_budget: the minimum cosine similarity of the outputs to the original on the
      example inputs (default 0.99999; 0.999 for a model that quantizes its own
      activations, `build_budget`; 0.99 when quantizing, or when a lossy pass such as
      nbits-activation-blocks changed the graph). With quantization, layers are kept in
      float (most sensitive first) until the budget holds; if it cannot hold,
      AccuracyError is raised. A model in QDQ format quantized no further runs
      lower-qdq-to-integer before `pipeline` (`_pass_items`).
    - instrumentation: the PassManager's checks (verifier, numeric check, dumps); a numeric
      check without its own sample inputs runs on the example inputs.
    - tune: MetaSchedule tuning (True or a trial budget); the compile cache reuses results.
    - measure: time and measure energy of three runs the same way: the model in its source
      framework (torch eager / ONNX Runtime, when it came from one), the original graph built
      by the same backend without passes, and the optimized build.
    - declared_power_watts / carbon_intensity: used only where no energy counter exists /
      to compute gCO2e; both are stated in the report.
    - cache: reuse compiled artifacts from the compile cache (True: the default cache folder,
      $ECOGRAPH_CACHE_DIR or ~/.cache/ecograph; False: always compile; or a CompileCache).
    - profile: profile the optimized build per kernel on the example inputs (where the time
      goes, which schedule rule made each kernel); the rows land in `report.profile`. It runs
      the model, so it is a UsageError for a target this machine cannot run.
    - progress: a per-pass progress line on stderr (and MetaSchedule's when tuning); None
      shows it only on a terminal and only once the pipeline has run for two seconds.
    - weights_codec: "none", "zstd" or "ans": entropy-code the artifact's weights file
      (lossless, decoded at load; the weights then live outside lib.so, see
      backends/tvm/codec.py). The report's weight table follows the bytes to the disk.
    """
    from ecograph.backends.tvm import load
    from ecograph.backends.tvm.codec import check_codec
    from ecograph.passes import PassManager
    from ecograph.quant.sensitivity import AccuracyBudgetError
    from ecograph.report.green import GreenReport, ModelFacts, weight_stages
    from ecograph.report.measure import describe_machine

    spec = resolve_target(target)  # the one place optimize() reads the target
    check_codec(weights_codec)  # before the passes run, not after
    cannot_run = runs_here_reason(spec)
    if profile and cannot_run:
        raise UsageError(
            f"profile=True runs the model, and the {spec.name} build cannot run here "
            f"({cannot_run}); drop profile=True, or run 'ecograph profile ARTIFACT_DIR' on a "
            "machine that runs it"
        )
    original = capture(model, example_inputs)
    if name:
        original.name = name
    feeds = feeds_for(original, example_inputs)
    reference = interpret(original, feeds)
    graph = original.copy()

    calibration = None
    if calibration_data is not None:
        calibration = calibration_batches(original, calibration_data)
    from ecograph.quant.integer import qdq_products

    own_products = qdq_products(original) if quantize is None else 0
    items, qdesc, search = _pass_items(
        pipeline, quantize, calibration, accuracy_budget, feeds, prequantized=own_products > 0
    )
    inst = instrumentation
    if inst is not None and inst.differential and inst.sample_inputs is None:
        inst = dataclasses.replace(inst, sample_inputs=feeds)
    t0 = time.perf_counter()
    try:
        records = PassManager(items, inst, progress=progress).run(graph).records
    except AccuracyBudgetError as exc:
        raise AccuracyError(str(exc)) from exc
    pass_seconds = time.perf_counter() - t0

    notes: list[str] = []
    if search is not None and search.outcome is not None:
        notes.append(search.outcome.report())
    # The lowering run first on a QDQ model's own products quantizes nothing more: judged
    # (budget, weight stages) without it.
    first = (
        next((r for r in records if r.pass_name == "lower-qdq-to-integer"), None)
        if own_products
        else None
    )
    judged = [r for r in records if r is not first]
    if first is not None:
        lowered = first.result.stats.get("lowered", 0) if first.result else 0
        notes.append(
            f"lower-qdq-to-integer ran first: {lowered} of the model's {own_products} "
            "quantized (QDQ) convolutions / matmuls run as 8-bit integer products"
        )
    budget = accuracy_budget
    if budget is None:
        # quantization given in `pipeline` ("default,quantize(mode=dynamic)") counts too, as
        # does any other lossy pass that changed the graph (nbits-activation-blocks)
        quantized = quantize is not None or any(
            r.changed and (r.pass_name in QUANTIZING_PASSES or _is_lossy(r.pass_name))
            for r in judged
        )
        budget = QUANTIZED_BUDGET if quantized else build_budget(original)
        if budget == REQUANTIZING_BUDGET:
            notes.append(
                f"the model quantizes its own activations ({rounding_nodes(original)} node(s) "
                f"round to integer codes): accuracy budget {budget}, as a value within a "
                "rounding error of a tie between two codes may round the other way in "
                "compiled code"
            )

    work = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="ecograph-"))
    recipe = recipe_for(pipeline, qdesc, records)
    tune_progress = progress is True or (progress is None and _stderr_is_tty())
    artifact = compile_cached(
        graph,
        spec,
        work / "optimized",
        tune,
        recipe,
        cache,
        progress=tune_progress,
        weights_codec=weights_codec,
    )
    module: Any
    if cannot_run:
        module = NotRunnableHere(spec.name, artifact, cannot_run)
        outputs, checked_on = _outputs_on_host(graph, feeds, work, recipe, cache)
        notes.append(
            f"accuracy checked on this host ({checked_on}, same optimized graph); the "
            f"{spec.name} artifact was not run here: {cannot_run}"
        )
    else:
        module = load(artifact)
        outputs = _as_list(module(**feeds))
    accuracy = compare_outputs(reference, outputs)
    if accuracy["cosine"] < budget:
        raise AccuracyError(
            f"optimized model: cosine {accuracy['cosine']:.6f} < budget {budget} "
            f"(max abs error {accuracy['max_abs_error']:.3g}) on the example inputs; the "
            "original model is untouched. "
            + (
                "Loosen accuracy_budget, exclude layers from quantization, or quantize less "
                "aggressively."
                if quantize is not None or search is not None
                else "No quantization was asked for: instrumentation="
                "ecograph.passes.Instrumentation(differential=True) checks each pass against "
                "the interpreter and so tells a pass from the compiled code; loosen "
                "accuracy_budget if the difference is acceptable."
            )
        )

    bind = symbol_bindings(original, feeds)
    s_orig, s_opt = graph_stats(original, bind), graph_stats(graph, bind)
    report = GreenReport(
        model=original.name,
        target=spec.describe(),
        original=ModelFacts(
            s_orig.parameter_bytes, s_orig.num_parameters, s_orig.flops, s_orig.num_nodes
        ),
        optimized=ModelFacts(
            s_opt.parameter_bytes, s_opt.num_parameters, s_opt.flops, s_opt.num_nodes
        ),
        machine=describe_machine(),
        accuracy=accuracy,
        passes=[r.to_dict() for r in records],
        carbon_intensity_g_per_kwh=carbon_intensity,
        notes=[
            *notes,
            f"passes took {pass_seconds:.2f} s; quantization: {qdesc or 'none'}",
            *quantization_notes(records),
        ],
        weights=weight_stages(original, graph, judged, qdesc, artifact),
    )
    if measure and cannot_run:
        report.notes.append(
            f"latency and energy not measured: the {spec.name} build does not run on this "
            f"machine; run 'ecograph profile ARTIFACT_DIR' where it runs"
        )
    elif measure:
        _measure_runs(
            report,
            model,
            example_inputs,
            feeds,
            original,
            module,
            spec,
            work,
            cache,
            declared_power_watts,
        )
        slower = slower_note(report, qdesc)
        if slower:
            report.notes.append(slower)
    if profile:
        from ecograph.report.profile import profile_model

        report.profile = profile_model(module, feeds, repeat=10, warmup=2)
    return OptimizeResult(
        graph, module, report, artifact, original, records, qdesc, runs_here=not cannot_run
    )


def _measure_runs(
    report: Any,
    model: Any,
    example_inputs: Any,
    feeds: Mapping[str, np.ndarray],
    original: Graph,
    module: Any,
    spec: Any,
    work: Path,
    cache: Any,
    declared_power_watts: float | None,
) -> None:
    """Measure the source framework (when the model came from one), the original graph built
    by the same backend without passes, and the optimized build, all with measure_run."""
    from ecograph.backends.tvm import load
    from ecograph.report.green import RunFacts
    from ecograph.report.measure import framework_runner, measure_run

    device = spec.device
    with framework_runner(model, example_inputs, feeds, device) as runner:
        if isinstance(runner, str):
            report.notes.append(f"no framework baseline: {runner}")
        else:
            try:
                lat, energy = measure_run(
                    runner.run, device=device, declared_power_watts=declared_power_watts
                )
            except Exception as exc:  # the user's model failed in its own framework: say so
                report.notes.append(
                    f"no framework baseline: {runner.name} failed on the example inputs "
                    f"({type(exc).__name__}: {exc})"
                )
            else:
                report.framework = runner.name
                report.framework_detail = runner.detail
                report.framework_run = RunFacts(device, lat, energy)
                report.notes.append(
                    f"{runner.name} = the model as given, run by its framework ({runner.detail})"
                )
    baseline = load(compile_cached(original, spec, work / "original", False, recipe_for(), cache))
    for attr, mod in (("original_run", baseline), ("optimized_run", module)):
        lat, energy = measure_run(
            lambda m=mod: m(**feeds), device=device, declared_power_watts=declared_power_watts
        )
        setattr(report, attr, RunFacts(device, lat, energy))
    report.notes.append(
        "original = the captured graph compiled by the same backend without ecograph's "
        "passes or quantization"
    )


def _outputs_on_host(
    graph: Graph, feeds: Mapping[str, np.ndarray], work: Path, recipe: Any, cache: Any
) -> tuple[list[np.ndarray], str]:
    """The optimized graph's outputs from a build for this host (the x86 or ARM preset, the
    one that matches this CPU), and that build's description. A machine that is neither runs
    the reference interpreter instead, and the description says so."""
    from ecograph.backends.tvm import load

    machine = os.uname().machine
    preset = {"x86_64": "x86", "AMD64": "x86", "aarch64": "arm", "arm64": "arm"}.get(machine)
    if preset is None:
        out = interpret(graph, feeds)
        return [out[v.name] for v in graph.outputs], "the reference interpreter"
    host = resolve_target(preset)
    path = compile_cached(graph, host, work / "host-check", False, recipe, cache)
    return _as_list(load(path)(**feeds)), f"{host.describe()} build"


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def recipe_for(pipeline: Any = "", quantization: str = "", records: Sequence[Any] = ()) -> Any:
    """The manifest's recipe (backends.tvm.build.Recipe): the pipeline spec as given (a string,
    or a list of names and passes, described), the quantization's description, and the
    passes `records` (PassRecords of the run) say actually ran."""
    from ecograph.backends.tvm.build import Recipe

    if isinstance(pipeline, str):
        spec = pipeline
    else:
        spec = ",".join(p if isinstance(p, str) else _describe_item(p) for p in pipeline)
    passes = tuple((str(r.to_dict()["name"]), bool(r.changed)) for r in records)
    return Recipe(pipeline=spec, quantization=quantization, passes=passes)


def _describe_item(item: Any) -> str:
    if hasattr(item, "describe"):
        return str(item.describe())
    inner = ",".join(_describe_item(p) for p in getattr(item, "passes", []))
    return f"{getattr(item, 'name', type(item).__name__)}[{inner}]"


def slower_note(report: Any, quantization: str) -> str:
    """A plain warning when the optimized (e.g. int8) build is slower than the original build
    or than the model in its source framework (torch eager, ONNX Runtime)."""
    n = report.optimized_run
    if n is None or n.latency is None:
        return ""
    what = f"quantized ({quantization})" if quantization else "optimized"
    warnings = []
    framework = getattr(report, "framework_run", None)
    for label, base in (("the original", report.original_run), (report.framework, framework)):
        if base is None or base.latency is None or n.latency.p50_ms <= base.latency.p50_ms:
            continue
        warnings.append(
            f"WARNING: the {what} build is SLOWER than {label} on {report.target}: "
            f"p50 {n.latency.p50_ms:.3f} ms vs {base.latency.p50_ms:.3f} ms "
            f"({n.latency.p50_ms / base.latency.p50_ms:.2f}x)"
        )
    return "; ".join(warnings)


def resolve_target(target: Any) -> Any:
    """The `TargetSpec` for a preset name, TVM target dict or spec (see backends/tvm/targets)."""
    from ecograph.backends.tvm.targets import resolve

    return resolve(target)


def runs_here_reason(spec: Any) -> str:
    """Why code built for `spec` (a TargetSpec) cannot run on this machine, or "" when it
    can: ARM from x86 (or x86 elsewhere), CUDA without a GPU, or x86 code that uses ISA
    extensions this CPU lacks. The reason alone: each caller says what to do."""
    return _why_not_here(spec)[1]


def _why_not_here(spec: Any) -> tuple[str, str]:
    """("machine" | "gpu" | "isa", the reason) why `spec`'s code cannot run here; ("", "")."""
    from ecograph.backends.tvm.targets import detect_cuda_arch, missing_on_host

    machine = os.uname().machine
    if spec.is_cross or (spec.family == "x86" and machine not in ("x86_64", "AMD64")):
        return "machine", (
            f"target {spec.name!r} builds {spec.family} code and this machine is {machine}"
        )
    if spec.is_gpu and detect_cuda_arch() is None:
        return "gpu", (
            f"target {spec.name!r} needs a CUDA GPU and none is visible here (nvidia-smi "
            "found none)"
        )
    missing = missing_on_host(spec)
    if missing:
        return "isa", f"target {spec.name!r} uses {', '.join(missing)}, which this CPU lacks"
    return "", ""


def check_runs_here(spec: Any) -> None:
    """Raise BuildError, saying why (runs_here_reason) and what to do, when code built for
    `spec` cannot run on this machine."""
    kind, reason = _why_not_here(spec)
    if not reason:
        return
    elsewhere = (
        f"build it with 'ecograph compile MODEL --target {spec.name}' and run "
        "'ecograph profile ARTIFACT_DIR' (or ecograph.load) where it can run"
    )
    if kind == "isa":
        elsewhere = f"use --target x86 (this CPU) or {elsewhere}"
    raise BuildError(f"{reason}: it cannot run here; {elsewhere}")


def compile_cached(
    graph: Graph,
    spec: Any,
    out: Path,
    tune: bool | int,
    recipe: Any,
    cache: Any,
    *,
    progress: bool = False,
    weights_codec: str = "none",
    keep_params: bool | str | int = "auto",
) -> Path:
    """Compile `graph` into `out`, through the compile cache unless `cache` is False.

    `recipe` (a backends.tvm.build.Recipe, see recipe_for) is recorded in the manifest; a
    list of strings (the older form: the pipeline spec, then the quantization's description)
    is turned into one. The key holds the graph's content hash, the resolved target (CPU
    model, features, CUDA arch: a cache shared between machines never hands out a build made
    for another CPU), the tuning budget, the recipe and the ecograph and TVM versions; a hit
    copies the cached artifact to `out`. `weights_codec` entropy-codes the artifact's weights
    file (backends/tvm/codec.py); the key holds it when it is not "none", and `keep_params`
    (backends/tvm/build.py) when it is not "auto"."""
    from ecograph.backends.tvm import compile as tvm_compile

    recipe = _as_recipe(recipe)
    if cache is False:
        return tvm_compile(
            graph, spec, out, tune=tune, recipe=recipe, progress=progress,
            weights_codec=weights_codec, keep_params=keep_params,
        )  # fmt: skip
    import tvm

    import ecograph
    from ecograph.cache import CompileCache, graph_hash, source_digest

    store = cache if isinstance(cache, CompileCache) else CompileCache()
    key = {
        "graph": graph_hash(graph),
        "model": graph.name,
        "target": json_safe(spec.cache_key()),
        "tune": tune,
        "recipe": recipe.to_dict(),
        "ecograph": ecograph.__version__,
        "ecograph_source": source_digest(),
        "tvm": tvm.__version__,
        # absent for "none": keys of uncoded builds are as before
        **({"weights_codec": weights_codec} if weights_codec != "none" else {}),
        **({"keep_params": keep_params} if keep_params != "auto" else {}),
    }

    def build(folder: Path) -> None:
        tvm_compile(
            graph, spec, folder / "artifact", tune=tune, recipe=recipe, progress=progress,
            weights_codec=weights_codec, keep_params=keep_params,
        )  # fmt: skip

    payload, _ = store.get_or_build(key, build)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(payload / "artifact", out)
    return out


def _as_recipe(recipe: Any) -> Any:
    from ecograph.backends.tvm.build import Recipe

    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (list, tuple)) and all(isinstance(r, str) for r in recipe):
        return Recipe(pipeline=recipe[0] if recipe else "", quantization="; ".join(recipe[1:]))
    raise UsageError(
        f"recipe must be a Recipe (ecograph.api.recipe_for) or a list of strings, got "
        f"{type(recipe).__name__}"
    )


def json_safe(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, sort_keys=True, default=str))
