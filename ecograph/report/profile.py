"""Where the time goes: a per-kernel profile of a compiled model.

`profile_model` runs a loaded `CompiledModel` with an instrument on its Relax VM
(`VirtualMachine.set_instrument`: called before and after every VM Call instruction) and
returns one row per kernel: the schedule rule that scheduled it (from the manifest's
"schedules"; kernels no rule scheduled are marked "unscheduled"), calls and milliseconds per
inference and the kernel's share of the instrumented time. VM builtins (allocation, shape
checks, the shape function) are rows of their own with the rule "runtime".

The instrument is a Python callback around every call, so it costs time: the profile also
times the model without the instrument and reports both numbers; shares are shares of the
instrumented kernel time. Only TVM's runtime is needed (no `tvm.relax`, no compiler).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecograph.errors import EcographError

RUNTIME = "runtime"  # VM builtins and the VM's shape function
UNSCHEDULED = "unscheduled"  # the manifest says no schedule rule applied (plain loop nest)
NOT_RECORDED = "not recorded"  # the manifest has no entry (CUDA builds, older artifacts)
# VMShapeLower's PrimFunc that computes symbolic shapes; not a kernel any rule schedules.
SHAPE_FUNCTIONS = ("shape_func",)
# A builtin that does no work: its time per call is the instrument's floor.
NO_WORK_BUILTIN = "vm.builtin.null_value"


@dataclass(frozen=True)
class KernelRow:
    """One kernel (or VM builtin): what scheduled it and what it costs per inference."""

    kernel: str
    rule: str  # a schedule rule's name, or UNSCHEDULED, RUNTIME, NOT_RECORDED
    calls: int  # calls per inference
    ms: float  # mean time per inference, all its calls together
    median_ms: float  # median over the repetitions of the time per inference
    share: float  # fraction of the instrumented kernel time (0..1)

    @property
    def unscheduled(self) -> bool:
        return self.rule == UNSCHEDULED

    @property
    def is_runtime(self) -> bool:
        return self.rule == RUNTIME

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "rule": self.rule,
            "unscheduled": self.unscheduled,
            "calls": self.calls,
            "ms": self.ms,
            "median_ms": self.median_ms,
            "share": self.share,
        }


@dataclass
class Profile:
    """A per-kernel profile; rows sorted by share, largest first.

    kernel_sum_ms: the rows' `ms` summed (time inside VM calls, instrumented).
    instrumented_ms / uninstrumented_ms: median end-to-end time per inference (inputs copied
    in, outputs copied out) with and without the instrument.
    """

    rows: list[KernelRow]
    kernel_sum_ms: float
    instrumented_ms: float
    uninstrumented_ms: float
    repeat: int
    warmup: int
    device: str = ""
    target: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def floor_us(self) -> float | None:
        """Time per call of a builtin that does no work: what every row's calls include."""
        row = next((r for r in self.rows if r.kernel == NO_WORK_BUILTIN and r.calls), None)
        return None if row is None else 1e3 * row.ms / row.calls

    @property
    def calls_per_inference(self) -> int:
        return sum(r.calls for r in self.rows)

    @property
    def unscheduled_share(self) -> float:
        return sum(r.share for r in self.rows if r.unscheduled)

    @property
    def runtime_share(self) -> float:
        return sum(r.share for r in self.rows if r.is_runtime)

    @property
    def runtime_share_net(self) -> float | None:
        """The VM builtins' share once the timer floor is taken off every row's calls (a
        builtin's own work is often below the floor: the raw share overstates it); None
        without a floor."""
        floor = self.floor_us
        if floor is None:
            return None
        net = [max(0.0, r.ms - floor * r.calls / 1e3) for r in self.rows]
        total = sum(net)
        runtime = sum(m for m, r in zip(net, self.rows, strict=True) if r.is_runtime)
        return runtime / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "kernel_sum_ms": self.kernel_sum_ms,
            "instrumented_ms": self.instrumented_ms,
            "uninstrumented_ms": self.uninstrumented_ms,
            "calls_per_inference": self.calls_per_inference,
            "unscheduled_share": self.unscheduled_share,
            "runtime_share": self.runtime_share,
            "runtime_share_net": self.runtime_share_net,
            "floor_us": self.floor_us,
            "repeat": self.repeat,
            "warmup": self.warmup,
            "device": self.device,
            "target": self.target,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        rows = [
            KernelRow(r["kernel"], r["rule"], int(r["calls"]), r["ms"], r["median_ms"], r["share"])
            for r in data["rows"]
        ]
        return cls(
            rows=rows,
            kernel_sum_ms=data["kernel_sum_ms"],
            instrumented_ms=data["instrumented_ms"],
            uninstrumented_ms=data["uninstrumented_ms"],
            repeat=int(data["repeat"]),
            warmup=int(data["warmup"]),
            device=data.get("device", ""),
            target=data.get("target", ""),
            notes=list(data.get("notes", [])),
        )

    def summary(self) -> list[str]:
        """Lines that say what the numbers mean, including what the instrument costs."""
        extra = self.instrumented_ms - self.uninstrumented_ms
        lines = [
            f"kernel sum {self.kernel_sum_ms:.3f} ms per inference over "
            f"{self.calls_per_inference} VM calls (instrumented; shares are of this sum)",
            f"end to end {self.uninstrumented_ms:.3f} ms without the instrument, "
            f"{self.instrumented_ms:.3f} ms with it (the instrument adds about "
            f"{max(extra, 0.0):.3f} ms; medians of {self.repeat} runs after {self.warmup} "
            "warm-up)",
        ]
        floor = self.floor_us
        if floor is not None:
            lines.append(
                f"timer floor: {NO_WORK_BUILTIN} (no work) measures {floor:.2f} us per call; "
                "every row's time includes about that much per call"
            )
        kernels = [r for r in self.rows if not r.is_runtime]
        unscheduled = [r for r in kernels if r.unscheduled]
        if unscheduled:
            lines.append(
                f"! unscheduled: {len(unscheduled)} of {len(kernels)} kernels, "
                f"{100 * self.unscheduled_share:.1f} % of the time: no schedule rule applied "
                "(plain loop nests left to LLVM)"
            )
        runtime = f"runtime (VM builtins): {100 * self.runtime_share:.1f} % of the time"
        net = self.runtime_share_net
        if net is not None:
            runtime += (
                f"; {100 * net:.1f} % with the timer floor taken off every call (the floor "
                "is a call without arguments: the instrument costs calls with more)"
            )
        lines.append(runtime)
        return lines + list(self.notes)

    def table(self, limit: int | None = None) -> str:
        """Rows as text: kernel, rule, calls, ms, median ms, share; unscheduled rows marked."""
        shown = self.rows if limit is None else self.rows[:limit]
        head = ("", "kernel", "rule", "calls", "ms", "median ms", "share")
        cells = [head] + [
            (
                "!" if r.unscheduled else "",
                r.kernel,
                r.rule,
                str(r.calls),
                f"{r.ms:.4f}",
                f"{r.median_ms:.4f}",
                f"{100 * r.share:.1f} %",
            )
            for r in shown
        ]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
        right = {3, 4, 5, 6}
        lines = [
            "  ".join(
                (c.rjust(w) if i in right else c.ljust(w))
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in cells
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if len(shown) < len(self.rows):
            rest = self.rows[len(shown) :]
            lines.append(
                f"... {len(rest)} more rows, {100 * sum(r.share for r in rest):.1f} % together"
            )
        return "\n".join([*lines, "", *self.summary()])


def rule_for(kernel: str, schedules: Mapping[str, str | None] | None) -> str:
    """The rule column for `kernel`, given the manifest's "schedules" (None: not recorded)."""
    # Kernels are C symbols; a dotted name is a registered runtime function (vm.builtin.*).
    if "." in kernel or kernel in SHAPE_FUNCTIONS:
        return RUNTIME
    if schedules is None or kernel not in schedules:
        return NOT_RECORDED
    rule = schedules[kernel]
    return UNSCHEDULED if rule is None else str(rule)


class _Recorder:
    """The VM instrument: exclusive time and calls per symbol (a nested call's time is taken
    out of its caller's, so nothing is counted twice)."""

    def __init__(self, sync: Any = None) -> None:
        self.sync = sync
        self.stack: list[list[Any]] = []  # [symbol, start ns, time in nested calls ns]
        self.times: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def reset(self) -> None:
        self.times, self.calls = {}, {}

    def __call__(self, func: Any, symbol: str, before_run: bool, ret: Any, *args: Any) -> int:
        if before_run:
            frame = [symbol, 0, 0]
            self.stack.append(frame)
            frame[1] = time.perf_counter_ns()  # last, so the bookkeeping is not timed
            return 0
        if self.sync is not None:
            self.sync()  # a GPU kernel is only done when the device says so
        now = time.perf_counter_ns()
        name, start, nested = self.stack.pop()
        elapsed = now - start
        self.times[name] = self.times.get(name, 0) + elapsed - nested
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.stack:
            self.stack[-1][2] += elapsed
        return 0


def _vm_of(model: Any) -> Any:
    vm = getattr(model, "vm", None)
    if vm is None or not hasattr(vm, "set_instrument"):
        raise EcographError(
            f"{model!r} has no Relax VM to instrument; profile a model returned by "
            "ecograph.load (a CompiledModel)"
        )
    return vm


def _arrays(model: Any, inputs: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray]:
    names = list(model.input_names)
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise EcographError(f"profile inputs lack {missing}; the model takes {names}")
        values = [inputs[n] for n in names]
    else:
        values = list(inputs)
    model(*values)  # checks names, dtypes and static dims once, with the model's own errors
    return [np.ascontiguousarray(np.asarray(v)) for v in values]


def profile_model(
    model: Any,
    inputs: Mapping[str, Any] | Sequence[Any],
    *,
    repeat: int = 20,
    warmup: int = 3,
) -> Profile:
    """Profile a loaded CompiledModel on `inputs` (by name, or positional in input order).

    Times `repeat` runs without the instrument, then `warmup` + `repeat` runs with it; the
    rows are per inference over the instrumented runs."""
    if repeat < 1 or warmup < 0:
        raise EcographError(f"profile needs repeat >= 1 and warmup >= 0 (got {repeat}, {warmup})")
    vm = _vm_of(model)
    arrays = _arrays(model, inputs)

    def run() -> float:
        t0 = time.perf_counter()
        model.run_numpy(arrays)
        return (time.perf_counter() - t0) * 1e3

    for _ in range(warmup):
        run()
    plain = statistics.median(run() for _ in range(repeat))

    device = model.device
    on_cpu = device.dlpack_device_type() == 1  # kDLCPU: calls return when the work is done
    recorder = _Recorder(None if on_cpu else device.sync)
    per_run: list[tuple[dict[str, int], dict[str, int]]] = []
    walls: list[float] = []
    vm.set_instrument(recorder)
    try:
        for _ in range(warmup):
            run()
        for _ in range(repeat):
            recorder.reset()
            walls.append(run())
            per_run.append((recorder.times, recorder.calls))
    finally:
        vm.set_instrument(None)

    schedules = model.manifest.get("schedules")
    names = sorted({name for times, _ in per_run for name in times})
    stats = []
    for name in names:
        ms = [times.get(name, 0) / 1e6 for times, _ in per_run]
        calls = statistics.median(calls.get(name, 0) for _, calls in per_run)
        stats.append((name, round(calls), statistics.fmean(ms), statistics.median(ms)))
    total = sum(s[2] for s in stats)
    rows = [
        KernelRow(name, rule_for(name, schedules), calls, ms, med, ms / total if total else 0.0)
        for name, calls, ms, med in stats
    ]
    rows.sort(key=lambda r: (-r.share, r.kernel))
    notes = []
    if schedules is None:
        notes.append("the manifest records no schedule rules (artifact built before they were)")
    target = model.manifest.get("target", {})
    return Profile(
        rows=rows,
        kernel_sum_ms=total,
        instrumented_ms=statistics.median(walls),
        uninstrumented_ms=plain,
        repeat=repeat,
        warmup=warmup,
        device=str(device),
        target=str(target.get("name", "")),
        notes=notes,
    )


def random_inputs(
    specs: Sequence[Mapping[str, Any]],
    dims: Mapping[str, int] | None = None,
    *,
    default_dim: int = 1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random inputs for a manifest's "inputs": symbolic dims from `dims`, else `default_dim`;
    floats standard normal, integers 0 or 1 (valid indices and masks)."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = [
            d if isinstance(d, int) else int(dims.get(str(d), default_dim)) for d in spec["shape"]
        ]
        if spec["dtype"] == "bfloat16":
            import ml_dtypes

            normal = rng.standard_normal(shape).astype(np.float32)
            feeds[spec["name"]] = normal.astype(ml_dtypes.bfloat16)
            continue
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "f":
            feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec["name"]] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[spec["name"]] = rng.integers(0, 2, shape).astype(dtype)
    return feeds
