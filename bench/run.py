"""Benchmarks against peers: every runner on a workload measured interleaved, same threads.

    python bench/run.py                                   # every workload, default runners
    python bench/run.py --workloads resnet --runners ort-fp32,ecograph --rounds 2
    python bench/run.py --workloads minilm-b1 --busy 1    # also with one core taken
    python bench/run.py ... --append                      # add the tables to bench/RESULTS.md

For one workload, each runner gets its own worker process, which captures and compiles the
model once (its compile seconds are reported); then R rounds run, and in each round every
runner runs a batch of calls filling about one time slice, in an order that rotates per round.
p50/p90 are over all timed calls, and ratios to ONNX Runtime fp32 compare batches taken over
the same minutes, so machine drift lands on every runner alike. Every runner uses the same
thread count (--threads, default: every core this process may use).

--busy K starts K busy-loop processes pinned to the last K cores and alternates idle and busy
phases within every round; the busy table gives each runner's slowdown against its own idle
batches of the same run (a statically split thread pool stalls on a taken core).

Workloads: minilm-b1, minilm-b8, llama-prefill, llama-decode, resnet; by name only:
llama-wide-decode, llama-wide-prefill (TinyLlama-1.1B's layer shapes, 2 layers; bench/runners.py),
resnet18, resnet50 (ResNet-18's and ResNet-50's layouts at 224x224), mobilenetv2
(MobileNetV2's layout at 224x224) and hf-mobilenetv2 (Hugging Face's MobileNetV2Model).
Runners: torch-eager, torch-int8, torch-compile, ort-fp32, ort-int8, tvm-export, ecograph,
ecograph-int8, ort-ecograph (ONNX Runtime on ecograph's optimized graph, exported); by name
only: ecograph-tuned (MetaSchedule, minutes), ecograph-auto
(ecograph's adaptive thread count, for --busy runs), and the weight-only rows ecograph-int8w,
ecograph-int4, ecograph-int4-a8 (int8 activations), ecograph-palette4, ort-int4 and
ort-int4-acc4 (ONNX Runtime's MatMulNBits), ecograph-nbits and ecograph-nbits-a8 (ort-int4-
acc4's MatMulNBits model compiled by ecograph, in float32 or through nbits-activation-blocks),
ecograph-int8s and ort-int8s (static int8, calibrated on the same inputs), ort-int8q (ort-int8s's
quantization in QOperator format: QLinearConv, QLinearAdd, QGemm) and ecograph-int8q (that
model compiled by ecograph as it is).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path, where load.py or worker.py could
# shadow another package's module of that name; the project root goes there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.interleave import Plan, RunnerResult, round_ratios, run_interleaved  # noqa: E402
from bench.interleave import ratio as _ratio  # noqa: E402
from bench.load import (  # noqa: E402
    BusyCores,
    CpuSnapshot,
    available_cores,
    describe_other_load,
    other_usage,
)
from bench.runners import (  # noqa: E402
    BASELINE,
    DEFAULT_RUNNERS,
    EXTRA_WORKLOADS,
    RUNNERS,
    WORKLOADS,
    runner_env,
)
from bench.worker import ProcessWorker  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"


# ------------------------------------------------------------------------ formatting


def fmt_ms(ms: float | None) -> str:
    """Milliseconds with about three significant digits (0.0912, 3.64, 22.4, 2398)."""
    if ms is None:
        return "n/a"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def fmt_range(values: Sequence[float]) -> str:
    """min-max of per-round ratios (a single round is just its ratio)."""
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if len(values) == 1 else f"{lo:.2f}-{hi:.2f}"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (error messages carry pipes and newlines)."""
    return " ".join(text.replace("|", "/").split())


def energy_cells(row: RunnerResult, base: RunnerResult | None) -> tuple[str, str]:
    """(energy per inference, ratio to the baseline's); different kinds are never compared."""
    energy = row.energy or {}
    joules, kind = energy.get("joules"), energy.get("kind", "unavailable")
    text = "unavailable" if joules is None else f"{joules * 1e3:.3g} mJ ({kind})"
    base_energy = (base.energy or {}) if base is not None else {}
    if joules is None or base_energy.get("joules") is None:
        return text, "n/a"
    if base_energy.get("kind") != kind:
        return text, "n/a (kinds differ)"
    return text, fmt_ratio(_ratio(joules, base_energy["joules"]))


IDLE_HEADER = (
    "| runner | p50 ms | p90 ms | p50 vs ORT fp32 | per-round ratio | timed calls | compile s | "
    "model MB (vs ORT fp32) | energy/inference | energy vs ORT fp32 | cosine to torch fp32 | "
    "unscheduled kernel time |"
)
BUSY_HEADER = (
    "| runner | busy p50 ms | busy p90 ms | slowdown vs idle p50 | busy p50 vs ORT fp32 busy | "
    "per-round ratio | timed calls |"
)


def _columns(header: str) -> int:
    return header.count("|") - 1


def _error_row(row: RunnerResult, header: str) -> str:
    blanks = " |" * (_columns(header) - 2)
    return f"| {row.runner} | failed: {_cell(row.error or 'no timed calls')} |{blanks}"


def idle_table(rows: Sequence[RunnerResult], baseline: str = BASELINE) -> str:
    """The main table: idle latency, ratios to the baseline, compile time, size, accuracy."""
    base = next((r for r in rows if r.runner == baseline and r.error is None), None)
    base_idle = base.summary("idle") if base else None
    lines = [IDLE_HEADER, "|" + "---|" * _columns(IDLE_HEADER)]
    for row in rows:
        idle = row.summary("idle")
        if row.error is not None or idle is None:
            lines.append(_error_row(row, IDLE_HEADER))
            continue
        per_round = round_ratios(
            row.round_medians("idle"), base.round_medians("idle") if base else []
        )
        setup = row.setup
        nbytes = setup.get("bytes")
        base_bytes = base.setup.get("bytes") if base else None
        size = (
            "n/a"
            if nbytes is None
            else f"{nbytes / 1e6:.2f} ({fmt_ratio(_ratio(nbytes, base_bytes))})"
        )
        energy, energy_ratio = energy_cells(row, base)
        cos = setup.get("cosine")
        compile_s = setup.get("compile_seconds")
        extras = setup.get("extras") or {}
        share = extras.get("unscheduled_share")
        lines.append(
            f"| {row.runner} | {fmt_ms(idle.p50_ms)} | {fmt_ms(idle.p90_ms)} | "
            f"{fmt_ratio(_ratio(idle.p50_ms, base_idle.p50_ms if base_idle else None))} | "
            f"{fmt_range(per_round)} | {idle.n} | "
            f"{'n/a' if compile_s is None else f'{compile_s:.1f}'} | {size} | {energy} | "
            f"{energy_ratio} | {'n/a' if cos is None else f'{cos:.5f}'} | "
            f"{'' if share is None else f'{share:.0%}'} |"
        )
    return "\n".join(lines)


def busy_table(rows: Sequence[RunnerResult], baseline: str = BASELINE) -> str:
    """Busy phases: each runner's slowdown against its own idle batches of the same run."""
    base = next((r for r in rows if r.runner == baseline and r.error is None), None)
    base_busy = base.summary("busy") if base else None
    lines = [BUSY_HEADER, "|" + "---|" * _columns(BUSY_HEADER)]
    for row in rows:
        busy, idle = row.summary("busy"), row.summary("idle")
        if row.error is not None or busy is None or idle is None:
            lines.append(_error_row(row, BUSY_HEADER))
            continue
        per_round = round_ratios(
            row.round_medians("busy"), base.round_medians("busy") if base else []
        )
        lines.append(
            f"| {row.runner} | {fmt_ms(busy.p50_ms)} | {fmt_ms(busy.p90_ms)} | "
            f"{fmt_ratio(_ratio(busy.p50_ms, idle.p50_ms))} | "
            f"{fmt_ratio(_ratio(busy.p50_ms, base_busy.p50_ms if base_busy else None))} | "
            f"{fmt_range(per_round)} | {busy.n} |"
        )
    return "\n".join(lines)


def workload_section(
    workload: str, rows: Sequence[RunnerResult], plan: Plan, threads: int, busy: str
) -> str:
    parts = [
        f"### {workload}\n",
        f"Idle phases: {plan.rounds} rounds x ~{plan.slice_s:g} s per runner, "
        f"{threads} thread(s) per runner.\n",
        idle_table(rows),
    ]
    if plan.busy:
        parts += [f"\nBusy phases ({busy}), interleaved with the idle ones:\n", busy_table(rows)]
    return "\n".join(parts) + "\n"


def header(
    *,
    command: str,
    machine: dict[str, Any],
    threads: int,
    busy: str,
    plan: Plan,
    other_load: str,
    when: str,
) -> str:
    return "\n".join(
        [
            f"## Benchmark run {when}\n",
            f"Command: `{command}`  ",
            f"Machine: {machine}  ",
            f"CPU model: {machine.get('cpu')}; threads per runner: {threads} (torch "
            f"set_num_threads, ORT intra-op {threads} / inter-op 1, TVM_NUM_THREADS and "
            f"ECOGRAPH_NUM_THREADS {threads}, OMP/MKL {threads})  ",
            f"Busy cores: {busy}  ",
            f"Measurement: per workload, one worker process per runner (compiled once), then "
            f"{plan.rounds} rounds; each round every runner runs ~{plan.slice_s:g} s of calls "
            "(after one untimed warm-up call when calls are short), in an order rotating per "
            "round; p50/p90 over all timed calls; per-round ratio = min-max over rounds of the "
            "round medians' ratio to ORT fp32 (same phase)  ",
            f"Other load during the run: {other_load}  ",
            "Energy: measured where a counter exists, else estimated from p50 latency and "
            "ECOGRAPH_DECLARED_WATTS (if set), else unavailable; kinds are never compared. "
            "Unscheduled kernel time: share of ecograph's kernel time (its profiler) in "
            "kernels no schedule rule scheduled.\n",
        ]
    )


# ---------------------------------------------------------------------------- main


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(
            f"unknown {what} {', '.join(unknown) or '(none)'}; known: {', '.join(known)}"
        )
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--runners", default=",".join(DEFAULT_RUNNERS))
    parser.add_argument(
        "--threads",
        type=int,
        default=len(available_cores()),
        help="threads for every runner (default: the cores this process may use)",
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--slice", type=float, default=0.5, help="seconds per runner per turn")
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes (cores taken)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per runner's setup")
    parser.add_argument(
        "--ecograph-cache",
        action="store_true",
        help="let ecograph reuse its compile cache (its compile s is then a cache hit)",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip ecograph's profile")
    parser.add_argument("--append", action="store_true", help="append the tables to RESULTS.md")
    parser.add_argument("--json", default=None, help="also write all results to this file")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or args.slice <= 0 or args.busy < 0:
        parser.error("--threads and --rounds must be >= 1, --slice > 0, --busy >= 0")
    return args


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    from ecograph.report.measure import describe_machine

    args = parse_args(argv)
    # SIGTERM (kill, a CI timeout) ends the run through the finally blocks, so the workers and
    # the busy-loop competitors (one of them possibly SIGSTOPped) are not left behind.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    argv = list(sys.argv[1:] if argv is None else argv)
    workloads = _names(args.workloads, WORKLOADS + EXTRA_WORKLOADS, "workload")
    runners = _names(args.runners, RUNNERS, "runner")
    command = "python bench/run.py" + ("" if not argv else " " + shlex.join(argv))
    machine = describe_machine()
    plan = Plan(rounds=args.rounds, slice_s=args.slice, busy=args.busy > 0)
    watts = float(os.environ.get("ECOGRAPH_DECLARED_WATTS", "0") or 0) or None
    options = {"cache": args.ecograph_cache, "profile": not args.no_profile}

    before = CpuSnapshot.take()
    competitors = BusyCores(args.busy).start()
    busy_text = competitors.describe()
    sections: list[str] = []
    records: list[dict[str, Any]] = []
    try:
        for workload in workloads:

            def start(runner: str, workload: str = workload) -> ProcessWorker:
                return ProcessWorker(
                    workload,
                    runner,
                    threads=args.threads,
                    options=options,
                    env=runner_env(runner),
                    setup_timeout=args.timeout,
                )

            def log(msg: str, workload: str = workload) -> None:
                print(f"[bench] {workload}: {msg}", flush=True)

            m = run_interleaved(
                runners,
                start,
                plan,
                set_busy=competitors.set if plan.busy else None,
                declared_watts=watts,
                log=log,
            )
            sections.append(workload_section(workload, m.results, plan, args.threads, busy_text))
            records.append(
                {
                    "workload": workload,
                    "results": [r.to_dict() for r in m.results],
                    "schedule": m.schedule,
                }
            )
    finally:
        competitors.stop()
    after = CpuSnapshot.take()
    other = describe_other_load(before, after, other_usage(before, after, [os.getpid()]))
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        header(
            command=command,
            machine=machine,
            threads=args.threads,
            busy=busy_text,
            plan=plan,
            other_load=other,
            when=when,
        )
        + "\n"
        + "\n".join(sections)
    )
    print("\n" + text)
    if args.json:
        payload = {
            "command": command,
            "date": when,
            "machine": machine,
            "threads": args.threads,
            "busy": busy_text,
            "plan": dataclasses.asdict(plan),
            "other_load": other,
            "workloads": records,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if args.append:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
