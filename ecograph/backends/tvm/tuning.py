"""MetaSchedule as the upper tier over ecograph's default CPU schedules.

A CPU build schedules every fused kernel with ecograph's rules (backends/tvm/schedules/).
Tuning searches for faster schedules of those same kernels and keeps a tuned one only where it
measured faster than the default:

1. The default CPU pipeline runs up to its schedule pass, so the tasks are exactly the fused
   kernels the default build makes (no relax FoldConstant, which breaks zero-element constants
   in TVM 0.27), each with its default schedule next to it.
2. Each kernel's default schedule is measured; its share of the model's time is its time times
   its number of calls. The trial budget is split over the kernels by share, with a floor
   (`allocate_trials`), and the kernels are tuned one after another, largest share first, with
   MetaSchedule's XGBoost cost model.
3. The best tuned schedule and the default one are measured again, in turns, with the same
   runner; the tuned one is taken only where it is faster by a noise-aware margin
   (`prefer_tuned`). Everything else keeps ecograph's default.

The database and the choices live in `<cache>/<key>-t<trials>/`, where `key` hashes the fused
workload and the target: compiling the same model for the same target again reuses them and
neither tunes nor measures.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecograph.errors import BuildError

DONE = "ecograph-tuning.json"
RECORDS = "database_tuning_record.json"
# Bump when what the cache holds, or how it was chosen, changes: old entries are not reused.
CACHE_FORMAT = 2
# The CPU pipeline's passes after fusion (backends/tvm/schedules): tasks are the functions
# fusion made, before the fast-math rewrite (MetaSchedule cannot estimate the FLOPs of its
# `Let` expressions: "Do not have a default for prim.Let"), and the defaults are what the
# schedule pass made of them. Every kernel is built with the fast-math rewrite, as in the build.
FAST_MATH_PASS = "EcographFastMath"
SCHEDULE_PASS = "EcographCPUSchedules"
# Each tuned kernel gets at least this many trials (fewer kernels are tuned when the budget
# cannot give every kernel its floor).
MIN_TRIALS_PER_KERNEL = 8
# A tuned schedule must beat the default by this much, or by the measurements' own spread
# when that is larger, to be taken.
MIN_MARGIN = 0.05
# The default and the tuned schedule of a kernel are each measured this many times, in turns.
COMPARE_ROUNDS = 3


def default_cache_dir() -> Path:
    env = os.environ.get("ECOGRAPH_TUNING_CACHE")
    if env:
        return Path(env)
    from ecograph.cache import default_cache_dir as ecograph_cache_dir

    return ecograph_cache_dir() / "tuning"


def workload_key(mod: Any, target: Any) -> str:
    """A stable key for (fused module, target): structural hash + target JSON + cache format."""
    from tvm_ffi.structural import structural_hash

    h = hashlib.sha256()
    h.update(f"ecograph-tuning-{CACHE_FORMAT}".encode())
    h.update(str(structural_hash(mod)).encode())
    h.update(json.dumps(_target_json(target), sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def _target_json(target: Any) -> Any:
    try:
        return target.export()
    except AttributeError:
        return str(target)


def cost_model_name() -> str:
    """MetaSchedule's XGBoost cost model when xgboost is installed (the `tvm` extra pins it),
    else random search."""
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


# ------------------------------------------------------------------ the kernels


@dataclass
class Kernel:
    """One tuning task: a fused kernel of the default build and its default schedule."""

    name: str  # the kernel's function name in the build (the first, if several share it)
    calls: int  # how many times the model calls it
    task: Any  # MetaSchedule's ExtractedTask
    default: Any  # the PrimFunc as ecograph's schedule pass left it
    static: bool  # only kernels with static shapes can be measured and tuned

    @property
    def workload(self) -> Any:
        """The unscheduled kernel as MetaSchedule keys it (an IRModule with "main")."""
        return self.task.dispatched[0]


def default_kernels(mod: Any, pipeline: Any, target: Any) -> tuple[Any, list[Kernel]]:
    """Run the default CPU `pipeline` up to and through its schedule pass: the fused module
    (what tuning starts from and what the tuned build is given) and each of its kernels with
    the schedule ecograph's rules gave it."""
    import tvm
    from tvm.ir.instrument import pass_instrument
    from tvm.s_tir import meta_schedule as ms

    @pass_instrument
    class Capture:
        def __init__(self) -> None:
            self.before: Any = None
            self.after: Any = None

        def should_run(self, _mod: Any, _info: Any) -> bool:
            return self.after is None  # nothing after the schedule pass is needed

        def run_before_pass(self, mod: Any, info: Any) -> None:
            if info.name in (FAST_MATH_PASS, SCHEDULE_PASS) and self.before is None:
                self.before = mod.clone()  # these passes edit their module in place

        def run_after_pass(self, mod: Any, info: Any) -> None:
            if info.name == SCHEDULE_PASS:
                self.after = mod.clone()

    capture = Capture()
    try:
        with tvm.transform.PassContext(opt_level=3, instruments=[capture]):
            pipeline(mod)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BuildError(
            f"tuning starts from the fused default CPU build, which failed here ({first}); "
            "build without tune= (the default build then retries without fusion)"
        ) from exc
    if capture.before is None or capture.after is None:
        raise BuildError(
            f"the CPU pipeline ran no pass named {SCHEDULE_PASS!r}; tuning follows ecograph's "
            "schedule pass (backends/tvm/schedules): keep its name in sync with tuning.py"
        )
    fused, scheduled = capture.before, capture.after
    kernels = []
    for task in ms.relax_integration.extract_tasks(fused, target):
        default = scheduled[task.task_name]
        kernels.append(
            Kernel(task.task_name, int(task.weight), task, default, _static_shapes(default))
        )
    return fused, kernels


def _static_shapes(func: Any) -> bool:
    """True if MetaSchedule can make arguments for `func` (every shape static)."""
    from tvm.s_tir import meta_schedule as ms

    try:
        ms.arg_info.ArgInfo.from_prim_func(func)
    except Exception:  # a symbolic dim: "Cannot convert ... to Array<ir.IntImm>"
        return False
    return True


# ------------------------------------------------------------------ budgets and choices


def allocate_trials(shares: Sequence[float], budget: int, floor: int) -> list[int]:
    """Split `budget` trials over kernels in proportion to their `shares` of the model's time.

    Every kernel that gets trials gets at least `floor`; when the budget cannot give each
    kernel with a positive share its floor, only the largest shares are tuned (a budget below
    one floor all goes to the largest). A larger share never gets fewer trials, kernels with
    no share get none, and the trials add up to `budget` (0 when no share is positive)."""
    if budget < 0 or floor < 1:
        raise ValueError(f"allocate_trials needs budget >= 0 and floor >= 1: {budget}, {floor}")
    trials = [0] * len(shares)
    order = sorted((i for i, s in enumerate(shares) if s > 0), key=lambda i: -shares[i])
    if not order or budget == 0:
        return trials
    tuned = order[: max(1, min(len(order), budget // floor))]
    base = min(floor, budget)
    spare = budget - base * len(tuned)
    total = sum(shares[i] for i in tuned)
    ideal = {i: spare * shares[i] / total for i in tuned}
    for i in tuned:
        trials[i] = base + math.floor(ideal[i])
    left = budget - sum(trials)
    # Largest remainders first; ties go to the larger share, which keeps the split monotone.
    for i in sorted(tuned, key=lambda i: (-(ideal[i] - math.floor(ideal[i])), -shares[i]))[:left]:
        trials[i] += 1
    return trials


def prefer_tuned(default_secs: Sequence[float], tuned_secs: Sequence[float]) -> bool:
    """True if the tuned kernel is faster than the default beyond noise: its median time is
    below the default's median by MIN_MARGIN, or by half the larger relative spread (max - min
    over median) of the two sets of measurements when that is larger."""
    if not default_secs or not tuned_secs:
        return False
    d, t = statistics.median(default_secs), statistics.median(tuned_secs)
    spread = max(
        (max(default_secs) - min(default_secs)) / d,
        (max(tuned_secs) - min(tuned_secs)) / t,
    )
    return t < d * (1 - max(MIN_MARGIN, spread / 2))


# ------------------------------------------------------------------ measuring


@dataclass
class Measurer:
    """Builds and runs kernels the way MetaSchedule measures its trials (same builder and
    runner settings), so default and tuned times compare."""

    target: Any
    builder: Any
    runner: Any
    errors: list[str] = field(default_factory=list)  # why builds or runs failed, in order

    @classmethod
    def local(cls, target: Any) -> Measurer:
        from tvm.s_tir import meta_schedule as ms

        # Generous timeouts: builder workers are fresh processes (a new pool per batch) that
        # import TVM, seconds each on a busy 2-core machine.
        workers = max(1, min(4, os.cpu_count() or 1))
        config = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100)
        return cls(
            target,
            ms.builder.LocalBuilder(max_workers=workers, timeout_sec=300, f_build=build_kernel),
            ms.runner.LocalRunner(timeout_sec=120, evaluator_config=config),
        )

    def measure(self, funcs: Sequence[Any], rounds: int = 1) -> list[list[float] | None]:
        """Seconds per call of each PrimFunc, one sample per round (the functions run in turns
        within a round); None for a function that failed to build or run."""
        import tvm
        from tvm.s_tir import meta_schedule as ms

        mods = [tvm.IRModule({"main": f.with_attr("global_symbol", "main")}) for f in funcs]
        built = self.builder.build([ms.builder.BuilderInput(m, self.target) for m in mods])
        inputs: list[Any] = []
        for mod, result in zip(mods, built, strict=True):
            if result.error_msg:
                self.errors.append(_last_line(result.error_msg))
                inputs.append(None)
                continue
            args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
            inputs.append(ms.runner.RunnerInput(result.artifact_path, "cpu", args))  # CPU only
        samples: list[list[float] | None] = [[] if i is not None else None for i in inputs]
        try:
            for _ in range(rounds):
                live = [i for i, s in enumerate(samples) if s is not None]
                futures = self.runner.run([inputs[i] for i in live])
                for i, future in zip(live, futures, strict=True):
                    result = future.result()
                    got = samples[i]
                    if result.error_msg or not result.run_secs or got is None:
                        self.errors.append(_last_line(result.error_msg or "no time measured"))
                        samples[i] = None
                    else:
                        got.append(
                            statistics.median(
                                float(getattr(s, "value", s)) for s in result.run_secs
                            )
                        )
        finally:
            for result in built:
                if result.artifact_path:
                    shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)
        return samples


def build_kernel(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default builder function plus the CPU build's fast-math rewrite (so a
    kernel runs as it will in the build; a no-op on defaults that have it already), without
    MetaSchedule's `import tvm.s_tir.tensor_intrin`, which took 40 s in every fresh builder
    worker on a busy 2-core machine (and the builder starts new workers for each batch of
    trials). A schedule reaches the builder already applied: a tensorized body is plain TIR by
    then and needs no intrinsic registry."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from .schedules.fastmath import fast_math_pass

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(fast_math_pass()(mod), target=target)


def choose_schedules(
    kernels: Sequence[Kernel], database: Any, measurer: Measurer
) -> dict[str, dict[str, Any]]:
    """For each kernel with a tuning record, measure its best tuned schedule against its
    default one, in turns (COMPARE_ROUNDS each), and choose; a kernel without records keeps
    the default. Returns {name: {"default_ms", "tuned_ms", "chosen"}}."""
    choices: dict[str, dict[str, Any]] = {}
    pairs: list[tuple[Kernel, Any]] = []
    for kernel in kernels:
        choices[kernel.name] = {"default_ms": None, "tuned_ms": None, "chosen": "default"}
        sch = database.query_schedule(kernel.workload, measurer.target, "main")
        if sch is not None and kernel.static:
            pairs.append((kernel, sch.mod["main"]))
    if not pairs:
        return choices
    funcs = [f for kernel, tuned in pairs for f in (kernel.default, tuned)]
    samples = measurer.measure(funcs, rounds=COMPARE_ROUNDS)
    for n, (kernel, _tuned) in enumerate(pairs):
        default, tuned = samples[2 * n], samples[2 * n + 1]
        choices[kernel.name] = {
            "default_ms": _ms(default),
            "tuned_ms": _ms(tuned),
            "chosen": "tuned" if default and tuned and prefer_tuned(default, tuned) else "default",
        }
    return choices


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else text


def _ms(secs: Sequence[float] | None) -> float | None:
    return float(f"{statistics.median(secs) * 1e3:.5g}") if secs else None


# ------------------------------------------------------------------ tuning


def tune_module(
    mod: Any,
    target: Any,
    pipeline: Any,
    *,
    trials: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Tune `mod`'s kernels for `target` on top of the default CPU `pipeline` (or reuse a
    cached result).

    Returns the fused module with the chosen tuned kernels applied (marked scheduled; the
    rest are left to `pipeline`'s schedules) and a summary for the manifest: trials, seconds
    spent now (0 on a cache hit), cache key, whether it was reused, and per kernel both times
    and which schedule was chosen.
    """
    import tvm
    from tvm import relax, tirx
    from tvm.s_tir import meta_schedule as ms

    if trials <= 0:
        raise BuildError(f"tuning needs a positive trial budget, got {trials}")
    fused, kernels = default_kernels(mod, pipeline, target)
    key = workload_key(fused, target)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    work_dir = root / f"{key}-t{trials}"
    reused = (work_dir / DONE).is_file()
    seconds = 0.0
    if not reused:
        seconds = _tune(kernels, target, trials, work_dir, progress)
    info = json.loads((work_dir / DONE).read_text())
    chosen = [k for k in kernels if info["kernels"].get(k.name, {}).get("chosen") == "tuned"]
    tuned = fused
    if chosen:
        stored = ms.database.JSONDatabase(work_dir=str(work_dir))
        picked = ms.database.MemoryDatabase()
        for kernel in chosen:
            record = stored.query_tuning_record(kernel.workload, target, "main")
            if record is None:
                raise BuildError(
                    f"the tuning cache {work_dir} chose a tuned {kernel.name} but holds no "
                    "record for it; delete the folder to tune again"
                )
            workload = picked.commit_workload(kernel.workload)
            picked.commit_tuning_record(
                ms.database.TuningRecord(
                    record.trace, workload, record.run_secs, target, record.args_info
                )
            )
        with target, picked, tvm.transform.PassContext(opt_level=3):
            tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fused)

    def scheduled(module: Any) -> set[str]:
        return {
            gv.name_hint
            for gv, func in module.functions_items()
            if isinstance(func, tirx.PrimFunc) and func.attrs.get("tirx.is_scheduled", 0)
        }

    functions = sorted(scheduled(tuned) - scheduled(fused))
    return tuned, {
        "trials": trials,
        "seconds": round(seconds, 3),
        "first_tuning_seconds": info.get("seconds"),
        "records": info.get("records"),
        "cost_model": info.get("cost_model"),
        "cache_key": work_dir.name,
        "reused": reused,
        "kernels": info["kernels"],
        "functions": functions,  # the build's functions that got a tuned schedule
    }


def _tune(kernels: list[Kernel], target: Any, trials: int, work_dir: Path, progress: bool) -> float:
    """Measure, tune and choose into a temporary folder; move it into the cache when done."""
    work_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{work_dir.name}.", dir=work_dir.parent))
    state = {"phase": "measuring default kernels"}
    error: list[BaseException] = []
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["kernels"] = _search(kernels, target, trials, tmp, state)
        except BaseException as exc:
            error.append(exc)

    start = time.perf_counter()
    worker = threading.Thread(target=run, name="ecograph-metaschedule", daemon=True)
    worker.start()
    bar = _progress_bar(trials, progress)
    try:
        while worker.is_alive():
            worker.join(0.5)
            if bar is not None:
                bar.set_description(state["phase"], refresh=False)
                done = min(trials, _count_records(tmp))
                if done > bar.n:
                    bar.update(done - bar.n)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    if error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"MetaSchedule tuning failed: {error[0]}") from error[0]
    summary = {
        "format": CACHE_FORMAT,
        "trials": trials,
        "seconds": round(seconds, 3),
        "records": _count_records(tmp),
        "cost_model": cost_model_name(),
        "kernels": result["kernels"],
    }
    (tmp / DONE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if work_dir.exists():  # another process finished the same workload first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.rename(tmp, work_dir)
    return seconds


def _search(
    kernels: list[Kernel], target: Any, trials: int, work_dir: Path, state: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """The tuning itself (see the module doc); returns the per-kernel summary."""
    from tvm.s_tir import meta_schedule as ms

    measurer = Measurer.local(target)
    static = [k for k in kernels if k.static]
    first = dict(
        zip((k.name for k in static), measurer.measure([k.default for k in static]), strict=True)
    )
    if static and not any(first.values()):
        raise BuildError(f"no default kernel could be measured: {measurer.errors[0]}")
    # A kernel's share of the model's time: its default time times its calls.
    costs = [(first.get(k.name) or [0.0])[0] * k.calls for k in kernels]
    total = sum(costs)
    shares = [c / total if total > 0 else 0.0 for c in costs]
    budgets = allocate_trials(shares, trials, MIN_TRIALS_PER_KERNEL)

    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    cost_model = ms.cost_model.CostModel.create(
        cost_model_name(), num_tuning_cores=max(1, os.cpu_count() or 1)
    )
    notes: dict[str, str] = {}
    for n in sorted(range(len(kernels)), key=lambda n: -shares[n]):
        kernel, budget = kernels[n], budgets[n]
        if budget == 0:
            continue
        state["phase"] = f"tuning {kernel.name} ({shares[n]:.0%} of the time)"
        contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [kernel.task], str(work_dir), seed=0
        )
        try:
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=[1.0],
                work_dir=str(work_dir),
                max_trials_global=budget,
                max_trials_per_task=budget,
                num_trials_per_iter=min(64, max(MIN_TRIALS_PER_KERNEL, budget // 4)),
                builder=measurer.builder,
                runner=measurer.runner,
                database=database,
                cost_model=cost_model,
            )
        except Exception as exc:  # one kernel's failed search keeps its default schedule
            first_line = str(exc).strip().splitlines()[0][:200] if str(exc) else ""
            notes[kernel.name] = f"tuning failed ({type(exc).__name__}: {first_line})"

    state["phase"] = "comparing tuned and default kernels"
    choices = choose_schedules(kernels, database, measurer)
    summary: dict[str, dict[str, Any]] = {}
    for n, kernel in enumerate(kernels):
        entry = dict(choices[kernel.name])
        if entry["default_ms"] is None:
            entry["default_ms"] = _ms(first.get(kernel.name))
        entry.update(calls=kernel.calls, share=round(shares[n], 4), trials=budgets[n])
        if not kernel.static:
            entry["note"] = "symbolic shapes: not tuned"
        elif kernel.name in notes:
            entry["note"] = notes[kernel.name]
        summary[kernel.name] = entry
    return summary


def _count_records(work_dir: Path) -> int:
    path = work_dir / RECORDS
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="MetaSchedule", unit="trial", mininterval=1.0)
