"""The interleaved measurement: which runner runs when, for how many calls, and the arithmetic.

Every runner of a workload lives in its own worker process with its model compiled once; the
driver then runs R rounds, and in each round every runner runs one batch of calls sized to a
fixed time slice, in an order that rotates from round to round. Drift on a shared machine
(another engineer's build, a frequency change) then lands on every runner alike, and the
ratios between runners compare the same stretch of time. With busy cores, each round has an
idle and a busy phase, in alternating order, so each runner's slowdown is measured against
idle batches taken at the same times.

Nothing here knows about models or processes: a runner is anything with the `Worker` methods
(bench/worker.py runs them in child processes; the tests use in-process fakes too).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Phase = Literal["idle", "busy"]
PHASES: tuple[Phase, ...] = ("idle", "busy")


class WorkerError(Exception):
    """A runner failed (setup, a batch, or its process died); the message says how."""


class Worker(Protocol):
    """One runner with its model ready to call (in bench/worker.py: a child process)."""

    def setup(self) -> dict[str, Any]:
        """Capture/compile the model; returns at least `est_ms` (a warm call's time)."""
        ...

    def run(self, batch: Batch) -> list[float]:
        """`batch.warmup` untimed calls, then `batch.calls` timed calls; times in ms."""
        ...

    def energy(self, p50_ms: float, declared_watts: float | None) -> dict[str, Any]:
        """Energy per call (measured, estimated or unavailable), as EnergyReading.to_dict."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------- the schedule


def rotation(names: Sequence[str], step: int) -> list[str]:
    """The runners' order in batch group `step`: rotated by one per step, so over len(names)
    steps every runner takes every position once (no runner always follows the same one)."""
    if not names:
        return []
    k = step % len(names)
    return list(names[k:]) + list(names[:k])


def phases(round_index: int, busy: bool) -> list[Phase]:
    """The phases of one round: idle only, or idle and busy in alternating order (idle first
    in even rounds), so a slow drift raises both phases' times alike."""
    if not busy:
        return ["idle"]
    return ["idle", "busy"] if round_index % 2 == 0 else ["busy", "idle"]


@dataclass(frozen=True)
class Batch:
    """One runner's turn: untimed warm-up calls (caches were another runner's until now),
    then timed calls."""

    warmup: int
    calls: int


def batch_size(slice_s: float, est_ms: float | None, *, max_calls: int = 10000) -> Batch:
    """Calls that fill about `slice_s` seconds at `est_ms` per call: at least 1, at most
    `max_calls`. A call longer than a quarter of the slice gets no warm-up call (it would
    double the turn and the caches matter little next to a call that long)."""
    if slice_s <= 0:
        raise ValueError(f"slice must be positive, got {slice_s}")
    if est_ms is None or est_ms <= 0:
        return Batch(warmup=1, calls=1)
    calls = max(1, min(max_calls, round(slice_s * 1e3 / est_ms)))
    warmup = 0 if est_ms > slice_s * 1e3 / 4 else 1
    return Batch(warmup=warmup, calls=calls)


# ----------------------------------------------------------------------- arithmetic


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass(frozen=True)
class Summary:
    p50_ms: float
    p90_ms: float
    n: int


def summarize(samples: Sequence[float]) -> Summary | None:
    """Median and p90 over all samples (None when there are none)."""
    if not samples:
        return None
    return Summary(percentile(samples, 50), percentile(samples, 90), len(samples))


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None where either is missing or the base is not positive."""
    if value is None or base is None or base <= 0:
        return None
    return value / base


def round_ratios(
    rounds: Sequence[float | None], base_rounds: Sequence[float | None]
) -> list[float]:
    """Per-round ratios of two runners' round medians, over the rounds both ran: their spread
    says how far one round's ratio could be trusted."""
    out = []
    for value, base in zip(rounds, base_rounds, strict=False):
        r = ratio(value, base)
        if r is not None:
            out.append(r)
    return out


# ------------------------------------------------------------------------- results


@dataclass
class RunnerResult:
    """One runner on one workload: its setup report, its batches per phase and round, errors."""

    runner: str
    setup: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # phase -> one list of call times (ms) per round; None where the round had no batch
    batches: dict[str, list[list[float] | None]] = field(default_factory=dict)
    energy: dict[str, Any] | None = None

    def samples(self, phase: Phase) -> list[float]:
        return [t for batch in self.batches.get(phase, []) if batch for t in batch]

    def summary(self, phase: Phase) -> Summary | None:
        return summarize(self.samples(phase))

    def round_medians(self, phase: Phase) -> list[float | None]:
        return [statistics.median(b) if b else None for b in self.batches.get(phase, [])]

    def add_batch(self, phase: Phase, round_index: int, times: list[float]) -> None:
        rounds = self.batches.setdefault(phase, [])
        rounds.extend([None] * (round_index + 1 - len(rounds)))
        rounds[round_index] = times

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runner": self.runner, **self.setup}
        if self.error is not None:
            out["error"] = self.error
        for phase in PHASES:
            s = self.summary(phase)
            if s is not None:
                out[phase] = {
                    "p50_ms": s.p50_ms,
                    "p90_ms": s.p90_ms,
                    "samples": s.n,
                    "round_medians_ms": self.round_medians(phase),
                    "round_calls": [len(b) if b else 0 for b in self.batches[phase]],
                }
        if self.energy is not None:
            out["energy"] = self.energy
        return out


@dataclass(frozen=True)
class Plan:
    """How to measure: rounds, the time slice per turn, busy phases on or off, the pause after
    each turn (so the last runner's spinning pool threads go to sleep before the next one)."""

    rounds: int = 10
    slice_s: float = 0.5
    busy: bool = False
    gap_s: float = 0.02
    max_calls: int = 10000


@dataclass
class Measurement:
    """What run_interleaved returns: per-runner results in the order given, and the schedule
    actually run (round, phase, runner), for the record and for tests."""

    results: list[RunnerResult]
    schedule: list[tuple[int, Phase, str]]


def run_interleaved(
    runners: Sequence[str],
    start: Callable[[str], Worker],
    plan: Plan,
    *,
    set_busy: Callable[[bool], None] | None = None,
    declared_watts: float | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> Measurement:
    """Start and set up every runner one after another (compile times never overlap), then run
    `plan.rounds` rounds of rotating batches; a runner that fails keeps its error as its result
    and the others go on. Energy is read last, one runner at a time, on an idle machine."""
    if plan.busy and set_busy is None:
        raise ValueError("a busy plan needs set_busy")
    results = {name: RunnerResult(name) for name in runners}
    workers: dict[str, Worker] = {}
    est: dict[tuple[str, Phase], float | None] = {}
    schedule: list[tuple[int, Phase, str]] = []

    def fail(name: str, message: str) -> None:
        results[name].error = message
        worker = workers.pop(name, None)
        if worker is not None:
            worker.close()
        log(f"{name} failed: {message}")

    try:
        for name in runners:
            log(f"{name}: setting up")
            try:
                workers[name] = start(name)
                info = workers[name].setup()
            except WorkerError as exc:
                fail(name, str(exc))
                continue
            results[name].setup = {k: v for k, v in info.items() if k != "est_ms"}
            for phase in PHASES:
                est[(name, phase)] = info.get("est_ms")
            log(f"{name}: ready ({_setup_line(info)})")

        step = 0
        for r in range(plan.rounds):
            for phase in phases(r, plan.busy):
                if set_busy is not None:
                    set_busy(phase == "busy")
                for name in rotation([n for n in runners if n in workers], step):
                    if name not in workers:
                        continue
                    batch = batch_size(plan.slice_s, est[(name, phase)], max_calls=plan.max_calls)
                    try:
                        times = workers[name].run(batch)
                    except WorkerError as exc:
                        fail(name, f"round {r + 1} ({phase}): {exc}")
                        continue
                    schedule.append((r, phase, name))
                    results[name].add_batch(phase, r, times)
                    est[(name, phase)] = statistics.median(times)
                    time.sleep(plan.gap_s)
                step += 1
            log(f"round {r + 1}/{plan.rounds}: " + _round_line(results, r))
        if set_busy is not None:
            set_busy(False)

        for name, worker in list(workers.items()):
            idle = results[name].summary("idle")
            if idle is None:
                continue
            try:
                results[name].energy = worker.energy(idle.p50_ms, declared_watts)
            except WorkerError as exc:
                results[name].energy = {"joules": None, "kind": "unavailable", "method": str(exc)}
    finally:
        if set_busy is not None:
            set_busy(False)
        for worker in workers.values():
            worker.close()
    return Measurement([results[n] for n in runners], schedule)


def _setup_line(info: dict[str, Any]) -> str:
    parts = []
    if info.get("compile_seconds") is not None:
        parts.append(f"compile {info['compile_seconds']:.1f} s")
    if info.get("est_ms") is not None:
        parts.append(f"~{info['est_ms']:.3g} ms/call")
    return ", ".join(parts)


def _round_line(results: dict[str, RunnerResult], r: int) -> str:
    parts = []
    for name, res in results.items():
        meds = [
            f"{phase} {m[r]:.3g}"
            for phase in PHASES
            if len(m := res.round_medians(phase)) > r and m[r] is not None
        ]
        if meds:
            parts.append(f"{name} {' / '.join(meds)} ms")
    return "; ".join(parts) or "no runner left"
