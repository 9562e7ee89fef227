"""Compile an IR graph with TVM and write a deployable artifact folder.

An artifact folder holds:
- `lib.so`: the TVM Relax VM executable exported as a shared library (for CUDA built on a
  machine without a GPU it carries CUDA source that the runtime compiles when it loads);
- `params.npz` (only with `keep_params`): weights kept out of the library, stored without
  pickle and fed to the VM after the inputs; with `weights_codec` "zstd" or "ans" they are
  entropy-coded into `params.ecw` instead and decoded at load (codec.py);
- `manifest.json`: versions, target, inputs/outputs with dtypes and symbolic shapes, the
  ecograph recipe (pipeline spec, quantization, the passes that ran) and TVM's pipeline,
  tuning time and SHA-256 hashes of the graph and of every file.

The folder is written under a temporary name next to `out_dir` and renamed into place, so a
reader never sees half an artifact. Identical inputs give byte-identical folders: the manifest
holds no timestamps or absolute paths, and tuning time is only recorded when tuning ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.cache import array_digest, graph_hash
from ecograph.errors import BuildError, UsageError
from ecograph.ir.graph import Graph

from . import targets as _targets
from .artifact import file_sha256
from .codec import NPZ_FILE, check_codec, params_entry, write_params
from .cuda_rules import border_guarded, checked_rule, guarded_matmul, isolate_batched_matmuls
from .driver import Lowered, lower_graph
from .runtime import FORMAT_VERSION, LIBRARY, MANIFEST, open_artifact
from .views import view_inputs

PARAMS = NPZ_FILE  # the params file without entropy coding (codec.ECW_FILE with it)

# Constants of at least this many bytes become parameters when keep_params="auto" and the
# model's weights exceed AUTO_KEEP_PARAMS_BYTES in total.
PARAM_THRESHOLD_BYTES = 1 << 16
AUTO_KEEP_PARAMS_BYTES = 256 << 20


@dataclass
class BuildResult:
    """An in-memory build: the VM executable and everything the manifest needs."""

    executable: Any
    lowered: Lowered
    spec: _targets.TargetSpec
    pipeline: list[str]
    notes: list[str] = field(default_factory=list)
    tuning: dict[str, Any] | None = None
    # each kernel's schedule rule (CPU: ecograph's, None: left to LLVM; CUDA: "dlight:...")
    kernels: dict[str, str | None] = field(default_factory=dict)
    # x86 builds: per kernel with 16-entry table lookups, (register permutes, gathers left)
    lookups: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """How the graph handed to the backend was made, for the manifest (and cache keys).

    `pipeline`: the pass pipeline spec asked for ("default", "cleanup,fuse-attention", "":
    none); `quantization`: the quantization pass as a spec entry
    ("quantize(mode='dynamic')", "": none); `passes`: the passes that actually ran, in order
    (rounds of a fixed-point group as "name #2"), each with whether it changed the graph."""

    pipeline: str = ""
    quantization: str = ""
    passes: tuple[tuple[str, bool], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.pipeline,
            "quantization": self.quantization or None,
            "passes": [{"name": name, "changed": changed} for name, changed in self.passes],
        }


# ------------------------------------------------------------------ pipelines


def _recorded_default_schedule(rules: list[tuple[str, Any]], chosen: dict[str, str | None]) -> Any:
    """dlight's ApplyDefaultSchedule over `rules` ((name, rule), tried in order), recording in
    `chosen` which one scheduled each kernel ("dlight:GEMV", ...; "pre-scheduled" for one
    that came in scheduled, None where no rule applied)."""
    import tvm
    from tvm.s_tir import dlight as dl

    log: list[tuple[Any, str]] = []

    class Recorded(dl.ScheduleRule):
        def __init__(self, name: str, rule: Any) -> None:
            self.name, self.rule = name, rule

        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            sch = self.rule.apply(func, target, tunable)
            if sch is not None:
                log.append((func, self.name))
            return sch

    inner = dl.ApplyDefaultSchedule(*(Recorded(f"dlight:{n}", r) for n, r in rules))

    @tvm.transform.module_pass(opt_level=0, name="ApplyDefaultSchedule")
    def apply(mod: Any, _ctx: Any) -> Any:
        funcs = {
            gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
        }
        log.clear()
        out = inner(mod)
        for name, func in funcs.items():
            if func.attrs is not None and func.attrs.get("tirx.is_scheduled"):
                chosen[name] = "pre-scheduled"
            else:
                chosen[name] = next((r for f, r in log if f.same_as(func)), None)
        return out

    return apply


def _cuda_pipeline(
    target: Any, *, with_matmul_rule: bool, chosen: dict[str, str | None] | None = None
) -> tuple[Any, list[str]]:
    """The CUDA default pipeline, optionally without dlight's Matmul rule (see module doc);
    `chosen` records which dlight rule scheduled each kernel."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    from .schedules.indexmath import decreasing_index_pass

    rules = [
        ("GEMV", border_guarded(dl.gpu.GEMV())),
        ("Reduction", border_guarded(checked_rule(dl.gpu.Reduction()))),
        ("GeneralReduction", border_guarded(checked_rule(dl.gpu.GeneralReduction()))),
        ("Fallback", dl.gpu.Fallback()),
    ]
    if with_matmul_rule:
        rules.insert(0, ("Matmul", border_guarded(guarded_matmul())))
    legalize = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        isolate_batched_matmuls(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        _recorded_default_schedule(rules, {} if chosen is None else chosen),
        decreasing_index_pass(),  # TVM 0.27 simplifier miscompile (schedules/indexmath.py)
    ]
    passes = (
        cuda.library_dispatch_passes(target)
        + legalize
        + cuda.dataflow_lower_passes(target)
        + cuda.finalize_passes(target)
    )

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: Any, _ctx: Any) -> Any:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    names = [_pass_name(p) for p in passes]
    return pipeline, names


def cpu_pipeline(
    spec: _targets.TargetSpec,
    target: Any,
    failures: list[str] | None = None,
    *,
    fuse: bool = True,
    chosen: dict[str, str | None] | None = None,
) -> tuple[Any, list[str]]:
    """The CPU pipeline: TVM's default build passes plus fusion and ecograph's schedules.

    `tvm.compile`'s default for CPUs legalizes every op to its own unscheduled loop nest (no
    fusion, no tiling, no vectors, no threads). Here, first, the work between int8 convolutions
    runs channels-last (channels_last.py: their transposes cancel) and scalar constants become
    immediates in the kernels (scalars.py); after legalization, element-wise work is fused into
    its producer (a matmul and its bias/GELU become one kernel), float32 exp/erf/tanh/sigmoid
    become vectorizable polynomials and every PrimFunc gets the first of ecograph's schedule
    rules that applies (backends/tvm/schedules/); a rule that raised is reported in `failures`,
    the rule chosen for each kernel in `chosen`. Relax's FoldConstant is left out on purpose:
    ecograph folds constants in the IR already, and in TVM 0.27 a folded zero-element constant
    makes the executable unloadable ("Invalid DLTensor file format"). `fuse=False` leaves every
    op its own kernel (TVM 0.27's FuseOps can lose a symbol defined inside a fused region, e.g.
    the length of a data-dependent Range: "... has not been computed")."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from .channels_last import channels_last_pass
    from .scalars import legalize_where, scalar_casts_pass
    from .schedules import apply_cpu_schedules
    from .schedules.fastmath import fast_math_pass
    from .schedules.indexmath import decreasing_index_pass

    fusion = [
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    passes = [
        *cpu.library_dispatch_passes(target),
        channels_last_pass(),
        scalar_casts_pass(),
        relax.transform.LegalizeOps({"relax.where": legalize_where}),
        *(fusion if fuse else []),
        fast_math_pass(),
        apply_cpu_schedules(spec, failures, chosen),
        decreasing_index_pass(),  # TVM 0.27 simplifier miscompile (schedules/indexmath.py)
        *cpu.dataflow_lower_passes(target),
        *cpu.finalize_passes(target),
    ]

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: Any, _ctx: Any) -> Any:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return pipeline, [_pass_name(p) for p in passes]


@contextlib.contextmanager
def cpu_tir_pipeline(
    spec: _targets.TargetSpec, lookups: dict[str, tuple[int, int]] | None = None
) -> Iterator[str]:
    """The name of the TIR pipeline for a CPU build, registered with TVM for the `with`
    block: TVM's default one, followed on x86 by the rewrite of 16-entry table lookups into
    register permutes (schedules/lookup.py), which records in `lookups` each kernel's
    (permutes, gathers left)."""
    from tvm.tirx.compilation_pipeline import PIPELINE_MAP, get_tir_pipeline, register_tir_pipeline

    from .schedules.lookup import lookup_permute_pass, permute_lanes

    if permute_lanes(spec) is None:
        yield "default"
        return
    name = f"ecograph-cpu-{uuid.uuid4().hex}"

    def factory() -> Any:
        import tvm

        base, host, device = get_tir_pipeline("default")
        return tvm.transform.Sequential([base, lookup_permute_pass(spec, lookups)]), host, device

    register_tir_pipeline(name, factory)
    try:
        yield name
    finally:
        PIPELINE_MAP.pop(name, None)


def _pass_name(p: Any) -> str:
    try:
        return str(p.info.name)
    except AttributeError:
        return type(p).__name__


def _has_int8_matmul(mod: Any) -> bool:
    """True if the Relax module multiplies int8 matrices (the dlight Matmul crash case)."""
    from tvm import relax

    found = False

    def visit(expr: Any) -> None:
        nonlocal found
        if (
            isinstance(expr, relax.Call)
            and getattr(expr.op, "name", "") == "relax.matmul"
            and all(str(getattr(a.ty, "dtype", "")) == "int8" for a in expr.args)
        ):
            found = True

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return found


def build_module(
    graph: Graph,
    target: str | dict[str, Any] | _targets.TargetSpec = "x86",
    *,
    keep_params: bool | str | int = "auto",
    tune: bool | int = False,
    tuning_cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
    fold: bool = True,
) -> BuildResult:
    """Lower `graph` and compile it for `target` in memory (no files written). `fold=False`
    lowers every node instead of computing small all-constant ones while lowering."""
    import tvm

    spec = _targets.resolve(target)
    keep = _decide_keep_params(graph, keep_params)
    # keep_params=True keeps every weight tensor; "auto" (large models) only the big ones; a
    # number of bytes, the constants of at least that size whatever the model's.
    threshold = 0 if keep_params is True else PARAM_THRESHOLD_BYTES
    if isinstance(keep_params, int) and not isinstance(keep_params, bool):
        threshold = keep_params
    lowered = lower_graph(
        graph,
        spec,
        keep_params=keep,
        param_threshold=threshold,
        widen_int8_matmul=spec.is_gpu,
        fold=fold,
    )
    tvm_target = spec.tvm_target()
    notes = list(spec.notes) + lowered.notes
    kernels: dict[str, str | None] = {}  # kernel name -> the schedule rule that scheduled it
    mod = lowered.mod
    tuning: dict[str, Any] | None = None
    if tune and (spec.is_gpu or spec.is_cross):
        notes.append(
            f"tuning skipped: MetaSchedule measures every kernel on this machine and "
            f"{spec.name} code does not run here; built with the default schedules"
        )
    elif tune:
        from .tuning import tune_module

        trials = 64 if tune is True else int(tune)
        default, _ = cpu_pipeline(spec, tvm_target)
        mod, tuning = tune_module(
            mod, tvm_target, default, trials=trials, cache_dir=tuning_cache, progress=progress
        )
        taken = sum(k["chosen"] == "tuned" for k in tuning["kernels"].values())
        notes.append(
            f"MetaSchedule: {tuning['trials']} trials, {tuning['seconds']:.1f} s; tuned "
            f"schedules kept for {taken} of {len(tuning['kernels'])} kernels"
        )

    lookups: dict[str, tuple[int, int]] = {}
    if spec.family == "cuda":
        ex, pipeline, more = _build_cuda(mod, tvm_target, kernels)
        notes += more
    else:
        failures: list[str] = []
        relax_pipeline, pipeline = cpu_pipeline(spec, tvm_target, failures, chosen=kernels)
        with cpu_tir_pipeline(spec, lookups) as tir_pipeline:
            try:
                ex = tvm.compile(mod, target=tvm_target, relax_pipeline=relax_pipeline,
                                 tir_pipeline=tir_pipeline)  # fmt: skip
            except Exception as exc:
                # Build again with every op its own kernel before giving up; say so if it helps.
                failures = []
                kernels.clear()
                lookups.clear()
                relax_pipeline, pipeline = cpu_pipeline(
                    spec, tvm_target, failures, fuse=False, chosen=kernels
                )
                try:
                    ex = tvm.compile(mod, target=tvm_target, relax_pipeline=relax_pipeline,
                                     tir_pipeline=tir_pipeline)  # fmt: skip
                except Exception:
                    raise BuildError(
                        f"TVM failed to compile {graph.name!r} for {spec.name}: {exc}"
                    ) from exc
                first = str(exc).strip().splitlines()[0][:200] if str(exc) else type(exc).__name__
                notes.append(f"built without operator fusion: the fused build failed ({first})")
        if tir_pipeline != "default":
            pipeline.append("EcographTableLookups")
        for kernel, (_, gathers) in sorted(lookups.items()):
            if gathers:
                notes.append(
                    f"kernel {kernel}: {gathers} palette lookup(s) left as gathers (one load "
                    "per lane): the 16-entry table load was not provably inside its buffer"
                )
        notes += failures
        if tuning:
            pipeline = ["MetaScheduleApplyDatabase", *pipeline]
            for name in tuning["functions"]:  # came in scheduled: the tuned kernels
                if kernels.get(name) == "pre-scheduled":
                    kernels[name] = "tuned"
                else:
                    notes.append(f"tuned kernel {name} did not reach the build unchanged")
    return BuildResult(ex, lowered, spec, pipeline, notes, tuning, kernels, lookups)


def _build_cuda(
    mod: Any, target: Any, chosen: dict[str, str | None]
) -> tuple[Any, list[str], list[str]]:
    """Compile for CUDA (recording in `chosen` the dlight rule of each kernel); the int8
    matmul case skips dlight's Matmul rule, and says so."""
    import tvm

    notes: list[str] = []
    with_matmul = True
    if _has_int8_matmul(mod):
        # dlight's Matmul rule crashes on int8 x int8 -> int32 (GetWmmaFragmentSize check in
        # InjectSoftwarePipeline, TVM 0.27). The lowering widens the ops it knows; any int8
        # matmul left (e.g. from a tuned or hand-written module) skips the rule.
        with_matmul = False
        notes.append(
            "int8 matmul on CUDA: dlight Matmul rule skipped (known TVM 0.27 crash); int8 "
            "matmuls use the generic GPU schedule"
        )
    pipeline, names = _cuda_pipeline(target, with_matmul_rule=with_matmul, chosen=chosen)
    try:
        ex = tvm.compile(mod, target=target, relax_pipeline=pipeline)
    except Exception as exc:
        if not with_matmul:
            raise BuildError(f"TVM failed to compile for CUDA: {exc}") from exc
        chosen.clear()
        pipeline, names = _cuda_pipeline(target, with_matmul_rule=False, chosen=chosen)
        notes.append(f"dlight Matmul rule failed ({type(exc).__name__}); rebuilt without it")
        try:
            ex = tvm.compile(mod, target=target, relax_pipeline=pipeline)
        except Exception as exc2:
            raise BuildError(f"TVM failed to compile for CUDA: {exc2}") from exc2
    return ex, names, notes


def _decide_keep_params(graph: Graph, keep_params: bool | str | int) -> bool:
    if keep_params == "auto":
        total = sum(
            int(c.const_value.nbytes)
            for c in graph.constants.values()  # type: ignore[union-attr]
        )
        return total >= AUTO_KEEP_PARAMS_BYTES
    if isinstance(keep_params, bool):
        return keep_params
    if isinstance(keep_params, int) and keep_params >= 0:
        return True
    raise BuildError(
        f"keep_params must be True, False, 'auto' or a size in bytes, got {keep_params!r}"
    )


# ------------------------------------------------------------------ artifacts


def compile(
    graph: Graph,
    target: str | dict[str, Any] = "x86",
    out_dir: str | os.PathLike[str] | None = None,
    *,
    keep_params: bool | str | int = "auto",
    tune: bool | int = False,
    tuning_cache: str | os.PathLike[str] | None = None,
    recipe: Recipe | None = None,
    progress: bool = True,
    weights_codec: str = "none",
) -> Path:
    """Compile `graph` for `target` into the artifact folder `out_dir` and return its path.

    `tune=True` (or a trial count) runs MetaSchedule first, caching its database under
    `tuning_cache`; `recipe` says how ecograph made the graph (pipeline spec, quantization,
    passes run) and is recorded in the manifest; None records that no ecograph pass ran.
    `weights_codec` ("none", "zstd", "ans") entropy-codes the weights file (see codec.py);
    a codec other than "none" keeps every weight out of the library (keep_params "auto"
    becomes True), since only the params file is coded.
    `keep_params`: "auto" keeps the weights of PARAM_THRESHOLD_BYTES or more out of lib.so,
    in the params file, when the model's weights total AUTO_KEEP_PARAMS_BYTES or more; True
    keeps every weight out, False none, a number of bytes the weights of at least that size.
    `out_dir` defaults to `build/<graph name>-<target>`. An existing folder is replaced.
    """
    if recipe is not None and not isinstance(recipe, Recipe):
        raise UsageError(
            f"recipe must be an ecograph.backends.tvm.build.Recipe, got {type(recipe).__name__}; "
            "build one with ecograph.api.recipe_for(pipeline, quantization, records)"
        )
    keep_params = _keep_for_codec(keep_params, check_codec(weights_codec))
    spec = _targets.resolve(target)
    _targets.check_toolchain(spec)
    out = Path(out_dir) if out_dir is not None else Path("build") / _default_name(graph, spec)
    result = build_module(
        graph,
        spec,
        keep_params=keep_params,
        tune=tune,
        tuning_cache=tuning_cache,
        progress=progress,
    )
    write_artifact(result, graph, out, recipe=recipe or Recipe(), weights_codec=weights_codec)
    return out


def _keep_for_codec(keep_params: bool | str | int, codec: str) -> bool | str | int:
    """keep_params for `codec`: a coded params file needs the weights out of the library."""
    if codec == "none" or keep_params is True:
        return keep_params
    if isinstance(keep_params, int) and not isinstance(keep_params, bool):
        return keep_params  # the weights of that size or more are in the coded file
    if keep_params == "auto":
        return True
    raise UsageError(
        f"weights_codec={codec!r} codes the params file, and keep_params={keep_params!r} puts "
        "every weight inside lib.so; drop keep_params (or set it True), or use "
        "weights_codec='none'"
    )


def _default_name(graph: Graph, spec: _targets.TargetSpec) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in spec.name)
    return f"{graph.name}-{safe}"


def write_artifact(
    result: BuildResult, graph: Graph, out: Path, *, recipe: Recipe, weights_codec: str = "none"
) -> None:
    """Write the artifact folder atomically: build it under a temporary name, then rename.
    The params file (if any weights were kept out of the library) is coded with
    `weights_codec`."""
    out = out.resolve()
    with _staging(out) as tmp:
        lib_kwargs: dict[str, Any] = {}
        if result.spec.cc:
            lib_kwargs["cc"] = result.spec.cc
        try:
            result.executable.export_library(str(tmp / LIBRARY), **lib_kwargs)
        except Exception as exc:
            raise BuildError(f"exporting the library for {result.spec.name} failed: {exc}") from exc
        files = [LIBRARY]
        params_file = None
        if result.lowered.params:
            params_file = write_params(tmp, result.lowered.params, weights_codec)
            files.append(params_file)
        params = params_entry(
            params_file, list(result.lowered.params), weights_codec, result.lowered.params
        )
        _finish(tmp, out, _manifest(result, graph, tmp, files, recipe, params))


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out` to build an artifact in (`_finish` moves it into place);
    removed if the build fails, so readers never see half an artifact."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _finish(tmp: Path, out: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest into the folder being built and move it into place as `out`."""
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o755)
    _replace_dir(tmp, out)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`; an existing `out` is swapped away first, then removed."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _tensor_entry(name: str, dtype: str, shape: tuple[Any, ...]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def index_ranges(graph: Graph) -> dict[str, dict[str, Any]]:
    """Graph inputs read as Gather indices (token ids into an embedding table, ...): input
    name -> {"range": [lo, hi), "node": what reads it}. The compiled gather reads memory at
    the index unchecked, so the runtime checks these inputs' values before a call (an id
    past the table would read outside it, or crash the process)."""
    ranges: dict[str, dict[str, Any]] = {}
    for v in graph.inputs:
        if not v.dtype.is_integer:
            continue
        for use in v.uses:
            node = use.node
            data = node.input(0)
            if node.op_type != "Gather" or node.domain != "" or use.index != 1 or data is None:
                continue
            axis = int(node.attr("axis", 0)) % max(1, data.type.rank)
            dim = data.type.shape[axis]
            if not isinstance(dim, int):
                continue
            entry = ranges.get(v.name)
            if entry is None or dim < entry["range"][1]:
                where = f"node {node.name} (Gather) on axis {axis} of {data.name}, size {dim}"
                ranges[v.name] = {"range": [-dim, dim], "node": where}
    return ranges


def _manifest(
    result: BuildResult,
    graph: Graph,
    folder: Path,
    files: list[str],
    recipe: Recipe,
    params: dict[str, Any],
) -> dict[str, Any]:
    import tvm

    import ecograph

    tuning = None
    if result.tuning is not None:
        tuning = {k: v for k, v in result.tuning.items() if k != "database"}
    indices: dict[str, dict[str, Any]] = {
        k: {"index_range": v} for k, v in index_ranges(graph).items()
    }
    for name in view_inputs(result.lowered.mod, [v.name for v in graph.inputs]):
        indices.setdefault(name, {})["views"] = True
    return {
        "format": FORMAT_VERSION,
        "ecograph_version": ecograph.__version__,
        "tvm_version": tvm.__version__,
        "graph": {"name": graph.name, "sha256": graph_hash(graph)},
        "target": {**result.spec.facts(), "notes": result.notes},
        "inputs": [
            {**_tensor_entry(v.name, str(v.dtype), v.shape), **indices.get(v.name, {})}
            for v in graph.inputs
        ],
        "outputs": [_tensor_entry(v.name, str(v.dtype), v.shape) for v in graph.outputs],
        "symbols": result.lowered.symbols,
        "params": params,
        "pipeline": {"ecograph": recipe.to_dict(), "tvm": result.pipeline},
        "quantization": recipe.quantization or None,
        "schedules": dict(sorted(result.kernels.items())),
        "tuning": tuning,
        "files": {name: file_sha256(folder / name) for name in files},
    }


def share_params(
    folders: Sequence[str | os.PathLike[str]], store: str | os.PathLike[str]
) -> dict[str, Any] | None:
    """Move the weights of artifacts built with keep_params into one file, `store`, that they
    share: each distinct array once, keyed by a digest of its dtype, shape and bytes. Each
    artifact's params file is removed and its manifest's params entry lists the keys instead
    (`params.shared`: one {key, dtype, shape} per name) and names the file with its SHA-256
    (`params.store`), which must sit beside the artifact folders (`store`'s folder should be
    theirs' parent). `runtime.load` reads it from there, or takes it opened once for several
    artifacts (`shared=open_shared_weights(...)`). A compiled LM's functions read their
    packed weights this way (weights.npz).

    Rewrites the folders in place, so give folders being assembled (compile_lm's staging
    folder), not ones something may be loading. Uncoded params files only; an artifact without
    a params file is left as it is. Returns {"file", "sha256", "bytes", "arrays",
    "bytes_before"} (the params files' array bytes before sharing), or None (nothing written)
    when no artifact has a params file."""
    out = Path(store)
    away = [str(f) for f in folders if Path(f).resolve().parent != out.resolve().parent]
    if away:
        raise UsageError(
            f"share_params: the store {out} must sit beside the artifact folders (their "
            f"parent's child), and {', '.join(away)} are elsewhere"
        )
    arrays: dict[str, np.ndarray] = {}
    plans: list[tuple[Any, dict[str, Any], list[dict[str, Any]]]] = []
    before = 0
    for folder in folders:
        artifact = open_artifact(folder)
        info = artifact.manifest.get("params") or {}
        if not info.get("file"):
            continue
        if info.get("codec", "none") != "none":
            raise UsageError(
                f"{folder}: its weights are entropy-coded ({info['codec']}); share_params "
                "takes uncoded params files (build with weights_codec='none')"
            )
        entries = []
        for arr in artifact.load_param_arrays().values():
            key = array_digest(arr)
            arrays.setdefault(key, arr)
            before += arr.nbytes
            entries.append({"key": key, "dtype": str(arr.dtype), "shape": list(arr.shape)})
        plans.append((artifact, info, entries))
    if not plans:
        return None
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)  # deterministic (fixed ZIP timestamps)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    digest = file_sha256(out)
    for artifact, info, entries in plans:
        manifest = json.loads(json.dumps(artifact.manifest))
        del manifest["files"][info["file"]]
        manifest["params"] = {
            "file": None,
            "names": info["names"],
            "shared": entries,
            "store": {"file": out.name, "sha256": digest},
        }
        (artifact.root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (artifact.root / info["file"]).unlink()
    return {
        "file": out.name,
        "sha256": digest,
        "bytes": int(sum(a.nbytes for a in arrays.values())),
        "arrays": len(arrays),
        "bytes_before": int(before),
    }


def recode_artifact(src: str | os.PathLike[str], dst: str | os.PathLike[str], codec: str) -> Path:
    """Write a copy of the artifact folder `src` to `dst` with its weights stored under
    `codec` (the manifest's params entry and file hashes follow); `dst` may be `src`.

    `src` is checked like any artifact (`open_artifact`) and its weights decoded first; the
    new folder is written under a temporary name and renamed into place. An artifact whose
    weights live inside lib.so (built with keep_params=False) has nothing to recode."""
    check_codec(codec)
    artifact = open_artifact(src)
    info = artifact.manifest.get("params") or {}
    if not info.get("file"):
        raise UsageError(
            f"{src} keeps its weights inside lib.so (built without keep_params): there is "
            "no params file to recode; rebuild with keep_params=True or weights_codec="
            f"{codec!r}"
        )
    arrays = artifact.load_param_arrays()
    out = Path(dst).resolve()
    with _staging(out) as tmp:
        manifest = json.loads(json.dumps(artifact.manifest))
        files: dict[str, str] = {}
        for name in manifest["files"]:
            if name == info["file"]:
                continue
            shutil.copyfile(artifact.path_of(name), tmp / name)
            files[name] = file_sha256(tmp / name)
        new = write_params(tmp, arrays, codec)
        files[new] = file_sha256(tmp / new)
        manifest["params"] = params_entry(new, list(arrays), codec, arrays)
        manifest["files"] = files
        _finish(tmp, out, manifest)
    return out
