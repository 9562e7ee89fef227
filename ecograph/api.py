"""`ecograph.optimize()`: capture, optimize, quantize, compile, check and report in one call.

The original model is never modified: the graph is copied before any pass runs, and if the
optimized model misses the accuracy budget on the example inputs an AccuracyError is raised
with the numbers, leaving everything the caller passed in untouched.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.errors import AccuracyError, EcographError
from ecograph.ir import Graph, interpret
from ecograph.ir.stats import graph_stats

# Default accuracy budgets (cosine similarity of outputs to the original) when none is given.
EXACT_BUDGET = 0.99999
QUANTIZED_BUDGET = 0.99


@dataclass
class OptimizeResult:
    """What optimize() returns. `module` is the compiled model (numpy or torch in and out)."""

    graph: Graph
    module: Any
    report: Any
    artifact: Path
    original_graph: Graph
    pass_records: list[Any] = field(default_factory=list)
    quantization: str = ""

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


def _numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach") and hasattr(v, "numpy"):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _bindings(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
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
) -> tuple[list[Any], str, Any]:
    """The pipeline items optimize() runs under one PassManager: `pipeline`, then quantization
    (the budget search when `accuracy_budget` is set), then lower-qdq-to-integer for static
    quantization (int8 x int8 accumulated in int32, not float simulation).

    Returns (items, the quantization's description for the recipe and report, the budget
    search pass or None)."""
    items: list[Any] = [pipeline] if isinstance(pipeline, str) else list(pipeline)
    if quantize is None:
        return items, "", None
    from ecograph.quant.integer import LowerQDQToInteger
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
) -> OptimizeResult:
    """Optimize `model` for `target` and return the compiled module with its green report.

    - model: a torch.nn.Module (with example_inputs), an ONNX path or ModelProto, or a Graph.
    - pipeline: a pass pipeline spec ("default", "cleanup", "cleanup,fuse-attention", ...).
    - quantize: None, a preset ("int8" = dynamic int8, "int8-static", "int8-weight",
      "int4" = weight-only int4 in groups of 128), a dict of Quantize options or a pass.
      Quantization runs after `pipeline` under the same PassManager (static mode is then
      lowered to integer kernels by lower-qdq-to-integer), so `instrumentation` covers it.
    - accuracy_budget: the minimum cosine similarity of the outputs to the original on the
      example inputs. With quantization, layers are kept in float (most sensitive first)
      until the budget holds; if it cannot hold, AccuracyError is raised.
    - instrumentation: the PassManager's checks (verifier, numeric check, dumps); a numeric
      check without its own sample inputs runs on the example inputs.
    - tune: MetaSchedule tuning (True or a trial budget); the compile cache reuses results.
    - declared_power_watts / carbon_intensity: used only where no energy counter exists /
      to compute gCO2e; both are stated in the report.
    - cache: reuse compiled artifacts from the compile cache (True: the default cache folder,
      $ECOGRAPH_CACHE_DIR or ~/.cache/ecograph; False: always compile; or a CompileCache).
    - profile: profile the optimized build per kernel on the example inputs (where the time
      goes, which schedule rule made each kernel); the rows land in `report.profile`.
    """
    from ecograph.backends.tvm import load
    from ecograph.passes import PassManager
    from ecograph.quant.sensitivity import AccuracyBudgetError
    from ecograph.report.green import GreenReport, ModelFacts, RunFacts
    from ecograph.report.measure import describe_machine, measure_energy, measure_latency

    spec = resolve_target(target)  # the one place optimize() reads the target
    original = capture(model, example_inputs)
    if name:
        original.name = name
    feeds = feeds_for(original, example_inputs)
    reference = interpret(original, feeds)
    graph = original.copy()

    items, qdesc, search = _pass_items(pipeline, quantize, calibration_data, accuracy_budget, feeds)
    inst = instrumentation
    if inst is not None and inst.differential and inst.sample_inputs is None:
        inst = dataclasses.replace(inst, sample_inputs=feeds)
    t0 = time.perf_counter()
    try:
        records = PassManager(items, inst).run(graph).records
    except AccuracyBudgetError as exc:
        raise AccuracyError(str(exc)) from exc
    pass_seconds = time.perf_counter() - t0

    notes: list[str] = []
    if search is not None and search.outcome is not None:
        notes.append(search.outcome.report())
    budget = accuracy_budget
    if budget is None:
        budget = QUANTIZED_BUDGET if quantize is not None else EXACT_BUDGET

    work = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="ecograph-"))
    recipe = [pipeline, qdesc] if qdesc else [pipeline]
    artifact = compile_cached(graph, spec, work / "optimized", tune, recipe, cache)
    module = load(artifact)
    outputs = _as_list(module(**feeds))
    accuracy = compare_outputs(reference, outputs)
    if accuracy["cosine"] < budget:
        raise AccuracyError(
            f"optimized model: cosine {accuracy['cosine']:.6f} < budget {budget} "
            f"(max abs error {accuracy['max_abs_error']:.3g}) on the example inputs; the "
            "original model is untouched. Loosen accuracy_budget, exclude layers from "
            "quantization, or quantize less aggressively."
        )

    bind = _bindings(original, feeds)
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
        notes=[*notes, f"passes took {pass_seconds:.2f} s; quantization: {qdesc or 'none'}"],
    )
    if measure:
        device = spec.device
        baseline_dir = compile_cached(original, spec, work / "original", False, [], cache)
        baseline = load(baseline_dir)
        for attr, mod in (("original_run", baseline), ("optimized_run", module)):
            lat = measure_latency(lambda m=mod: m(**feeds), warmup=2, repeat=10)
            energy = measure_energy(
                lambda m=mod: m(**feeds),
                device=device,
                latency=lat,
                declared_power_watts=declared_power_watts,
            )
            setattr(report, attr, RunFacts(device, lat, energy))
        report.notes.append(
            "original = the captured graph compiled by the same backend without ecograph's "
            "passes or quantization"
        )
        slower = slower_note(report, qdesc)
        if slower:
            report.notes.append(slower)
    if profile:
        from ecograph.report.profile import profile_model

        report.profile = profile_model(module, feeds, repeat=10, warmup=2)
    return OptimizeResult(graph, module, report, artifact, original, records, qdesc)


def slower_note(report: Any, quantization: str) -> str:
    """A plain warning when the optimized (e.g. int8) build is slower than the original."""
    o, n = report.original_run, report.optimized_run
    if o is None or n is None or o.latency is None or n.latency is None:
        return ""
    if n.latency.p50_ms <= o.latency.p50_ms:
        return ""
    what = f"quantized ({quantization})" if quantization else "optimized"
    return (
        f"WARNING: the {what} build is SLOWER than the original on {report.target}: "
        f"p50 {n.latency.p50_ms:.3f} ms vs {o.latency.p50_ms:.3f} ms "
        f"({n.latency.p50_ms / o.latency.p50_ms:.2f}x)"
    )


def resolve_target(target: Any) -> Any:
    """The `TargetSpec` for a preset name, TVM target dict or spec (see backends/tvm/targets)."""
    from ecograph.backends.tvm.targets import resolve

    return resolve(target)


def check_runs_here(spec: Any) -> None:
    """Raise BuildError, saying why and what to do, when code built for `spec` (a TargetSpec)
    cannot run on this machine: ARM from x86 (or x86 elsewhere), CUDA without a GPU, or x86
    code that uses ISA extensions this CPU lacks."""
    from ecograph.backends.tvm.targets import detect_cuda_arch, missing_on_host
    from ecograph.errors import BuildError

    machine = os.uname().machine
    elsewhere = (
        f"build it with 'ecograph compile MODEL --target {spec.name}' and run "
        "'ecograph profile ARTIFACT_DIR' (or ecograph.load) where it can run"
    )
    if spec.is_cross or (spec.family == "x86" and machine not in ("x86_64", "AMD64")):
        raise BuildError(
            f"target {spec.name!r} builds {spec.family} code and this machine is {machine}: "
            f"it cannot run here; {elsewhere}"
        )
    if spec.is_gpu and detect_cuda_arch() is None:
        raise BuildError(
            f"target {spec.name!r} needs a CUDA GPU and none is visible here (nvidia-smi found "
            f"none); {elsewhere}"
        )
    missing = missing_on_host(spec)
    if missing:
        raise BuildError(
            f"target {spec.name!r} uses {', '.join(missing)}, which this CPU lacks: it cannot "
            f"run here; use --target x86 (this CPU) or {elsewhere}"
        )


def compile_cached(
    graph: Graph, spec: Any, out: Path, tune: bool | int, recipe: list[str], cache: Any
) -> Path:
    """Compile `graph` into `out`, through the compile cache unless `cache` is False.

    The key holds the graph's content hash, the resolved target (CPU model, features, CUDA
    arch: a cache shared between machines never hands out a build made for another CPU), the
    tuning budget, the pass recipe and the ecograph and TVM versions; a hit copies the cached
    artifact to `out`."""
    from ecograph.backends.tvm import compile as tvm_compile

    if cache is False:
        return tvm_compile(graph, spec, out, tune=tune, pipeline=recipe, progress=False)
    import tvm

    import ecograph
    from ecograph.cache import CompileCache, graph_hash

    store = cache if isinstance(cache, CompileCache) else CompileCache()
    key = {
        "graph": graph_hash(graph),
        "model": graph.name,
        "target": json_safe(spec.cache_key()),
        "tune": tune,
        "recipe": recipe,
        "ecograph": ecograph.__version__,
        "tvm": tvm.__version__,
    }

    def build(folder: Path) -> None:
        tvm_compile(graph, spec, folder / "artifact", tune=tune, pipeline=recipe, progress=False)

    payload, _ = store.get_or_build(key, build)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(payload / "artifact", out)
    return out


def json_safe(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, sort_keys=True, default=str))
