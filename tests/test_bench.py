"""The benchmark harness's own logic (bench/): schedule, arithmetic, tables, process plumbing.

No model is built here: the end-to-end test drives two numpy-matmul runners (and two broken
ones) through real worker processes for a couple of tiny rounds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.interleave import (
    Batch,
    Plan,
    RunnerResult,
    WorkerError,
    batch_size,
    percentile,
    phases,
    ratio,
    rotation,
    round_ratios,
    run_interleaved,
    summarize,
)
from bench.load import (
    BusyCores,
    CpuSnapshot,
    ProcInfo,
    available_cores,
    describe_other_load,
    other_usage,
    parse_stat,
    pin_targets,
)
from bench.run import busy_table, fmt_ms, fmt_range, header, idle_table, parse_args
from bench.worker import Prepared, ProcessWorker, cosine, time_calls

# ------------------------------------------------------------- fake runners (workers)


def prepare_fake(workload: str, runner: str, threads: int, options: dict[str, Any]) -> Prepared:
    """Cheap runners for the plumbing test, loaded by bench.worker in a child process."""
    if runner == "fail-setup":
        raise RuntimeError("broken on purpose")
    n = {"mm-small": 32, "mm-big": 96, "crash-run": 16}[runner]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    calls = 0

    def call() -> Any:
        nonlocal calls
        calls += 1
        if runner == "crash-run" and calls > 20:
            os._exit(3)  # the process dies mid-run, as a segfaulting runtime would
        return a @ a

    out = call()
    return Prepared(call, 0.01, a.nbytes, out, out.astype(np.float64), {"threads": threads})


# ------------------------------------------------------------------------ schedule


def test_rotation_puts_every_runner_in_every_position_once() -> None:
    names = ["a", "b", "c"]
    orders = [rotation(names, step) for step in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    for position in range(3):
        assert sorted(o[position] for o in orders) == names
    assert rotation(names, 4) == ["b", "c", "a"]
    assert rotation([], 2) == []


def test_phases_alternate_which_comes_first() -> None:
    assert phases(0, busy=False) == ["idle"]
    assert phases(3, busy=False) == ["idle"]
    assert phases(0, busy=True) == ["idle", "busy"]
    assert phases(1, busy=True) == ["busy", "idle"]
    assert phases(2, busy=True) == ["idle", "busy"]


def test_batch_size_fills_the_slice() -> None:
    assert batch_size(0.5, 10.0) == Batch(warmup=1, calls=50)
    assert batch_size(0.5, 3.0) == Batch(warmup=1, calls=167)
    # a call longer than a quarter slice: no warm-up; longer than the slice: one call
    assert batch_size(0.5, 200.0) == Batch(warmup=0, calls=2)
    assert batch_size(0.5, 19000.0) == Batch(warmup=0, calls=1)
    assert batch_size(0.5, 1e-4, max_calls=1000) == Batch(warmup=1, calls=1000)
    assert batch_size(0.5, None) == Batch(warmup=1, calls=1)
    with pytest.raises(ValueError):
        batch_size(0.0, 1.0)


# ---------------------------------------------------------------------- arithmetic


def test_percentile_and_summary_match_numpy() -> None:
    samples = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.0]
    for q in (0, 25, 50, 90, 100):
        assert percentile(samples, q) == pytest.approx(np.percentile(samples, q))
    s = summarize(samples)
    assert s is not None
    assert (s.p50_ms, s.n) == (4.0, 7)
    assert s.p90_ms == pytest.approx(np.percentile(samples, 90))
    assert summarize([]) is None
    with pytest.raises(ValueError):
        percentile([], 50)


def test_ratio_and_per_round_ratios() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None
    # rounds where either runner has no batch are left out
    assert round_ratios([2.0, None, 6.0, 4.0], [1.0, 1.0, 3.0]) == [2.0, 2.0]


def test_runner_result_pools_all_rounds_for_its_medians() -> None:
    r = RunnerResult("x")
    r.add_batch("idle", 0, [1.0, 3.0])
    r.add_batch("idle", 2, [5.0])  # round 1 had no batch
    r.add_batch("busy", 0, [10.0])
    assert r.samples("idle") == [1.0, 3.0, 5.0]
    assert r.round_medians("idle") == [2.0, None, 5.0]
    summary = r.summary("idle")
    assert summary is not None and summary.p50_ms == 3.0
    d = r.to_dict()
    assert d["idle"]["samples"] == 3 and d["busy"]["p50_ms"] == 10.0


# ----------------------------------------------------------- the interleaving loop


class FakeWorker:
    """In-process worker: constant call times, optional failures, every call logged."""

    def __init__(self, name: str, ms: float, calls_log: list[str], fail: str = "") -> None:
        self.name, self.ms, self.log, self.fail = name, ms, calls_log, fail
        self.runs = 0
        self.closed = False

    def setup(self) -> dict[str, Any]:
        if self.fail == "setup":
            raise WorkerError("setup exploded")
        return {"est_ms": self.ms, "compile_seconds": 1.0, "bytes": 100}

    def run(self, batch: Batch) -> list[float]:
        self.runs += 1
        if self.fail == "run" and self.runs == 2:
            raise WorkerError("crashed")
        self.log.append(self.name)
        return [self.ms] * batch.calls

    def energy(self, p50_ms: float, declared_watts: float | None) -> dict[str, Any]:
        return {"joules": None, "kind": "unavailable", "method": "none"}

    def close(self) -> None:
        self.closed = True


def test_run_interleaved_rotates_alternates_and_keeps_failures_as_rows() -> None:
    calls: list[str] = []
    busy_states: list[bool] = []
    workers: dict[str, FakeWorker] = {}
    spec = {"a": (10.0, ""), "b": (20.0, ""), "c": (5.0, "setup"), "d": (1.0, "run")}

    def start(name: str) -> FakeWorker:
        ms, fail = spec[name]
        workers[name] = FakeWorker(name, ms, calls, fail)
        return workers[name]

    plan = Plan(rounds=3, slice_s=0.1, busy=True, gap_s=0.0)
    m = run_interleaved(list(spec), start, plan, set_busy=busy_states.append)
    by = {r.runner: r for r in m.results}
    assert [r.runner for r in m.results] == ["a", "b", "c", "d"]
    assert by["c"].error == "setup exploded"
    assert by["d"].error is not None and by["d"].error.startswith("round 1 (busy): crashed")
    assert all(w.closed for w in workers.values())
    # the order rotates per phase group; idle/busy alternate which goes first per round
    assert m.schedule[:3] == [(0, "idle", "a"), (0, "idle", "b"), (0, "idle", "d")]
    assert [(p, n) for _, p, n in m.schedule[3:5]] == [("busy", "b"), ("busy", "a")]
    assert [(r, p) for r, p, _ in m.schedule[5:7]] == [(1, "busy"), (1, "busy")]
    assert busy_states[:4] == [False, True, True, False] and busy_states[-1] is False
    # slice sizing: 0.1 s at 10 ms = 10 calls, at 20 ms = 5 calls, per batch
    assert len(by["a"].batches["idle"][0] or []) == 10
    assert len(by["b"].batches["busy"][2] or []) == 5
    assert by["a"].summary("idle").n == 30  # type: ignore[union-attr]
    assert by["a"].energy == {"joules": None, "kind": "unavailable", "method": "none"}
    assert "a" in calls and calls.count("d") == 1


# -------------------------------------------------------------------------- tables


def _row(name: str, ms: list[float], busy_ms: list[float] | None = None, **setup: Any) -> Any:
    r = RunnerResult(name, setup={"compile_seconds": 2.0, "bytes": 4_000_000, **setup})
    for i, t in enumerate(ms):
        r.add_batch("idle", i, [t])
    for i, t in enumerate(busy_ms or []):
        r.add_batch("busy", i, [t])
    return r


def test_idle_table_ratios_energy_kinds_and_error_rows() -> None:
    base = _row("ort-fp32", [1.0, 2.0, 1.0], [1.0, 1.0, 1.0], cosine=1.0)
    base.energy = {"joules": 0.002, "kind": "estimated"}
    fast = _row("ecograph", [2.0, 2.0, 3.0], [6.0, 8.0, 8.0], cosine=0.99999, bytes=2_000_000)
    fast.setup["extras"] = {"unscheduled_share": 0.25}
    fast.energy = {"joules": 0.001, "kind": "measured"}
    broken = RunnerResult("tvm-export", error="boom | in codegen\nsecond line")
    text = idle_table([base, fast, broken])
    lines = text.splitlines()
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)
    eco = next(ln for ln in lines if ln.startswith("| ecograph |"))
    cells = [c.strip() for c in eco.strip("|").split("|")]
    assert cells[1:5] == ["2.00", "2.80", "2.00x", "1.00-3.00"]
    assert cells[5:8] == ["3", "2.0", "2.00 (0.50x)"]
    assert cells[8:12] == ["1 mJ (measured)", "n/a (kinds differ)", "0.99999", "25%"]
    assert "failed: boom / in codegen second line" in text


def test_busy_table_slowdown_against_own_idle_run() -> None:
    base = _row("ort-fp32", [1.0, 1.0], [1.1, 1.1])
    tvm = _row("ecograph", [2.0, 2.0], [8.0, 6.0])
    lines = busy_table([base, tvm]).splitlines()
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells == ["ecograph", "7.00", "7.80", "3.50x", "6.36x", "5.45-7.27", "2"]
    assert "| ort-fp32 | 1.10 | 1.10 | 1.10x | 1.00x |" in lines[2]


def test_formatting_helpers_and_header() -> None:
    assert [fmt_ms(x) for x in (0.09123, 3.644, 22.42, 2398.17, None)] == [
        "0.091",
        "3.64",
        "22.4",
        "2398",
        "n/a",
    ]
    assert fmt_range([1.2]) == "1.20" and fmt_range([]) == "n/a"
    text = header(
        command="python bench/run.py --busy 1",
        machine={"cpu": "AMD EPYC", "cores": 2},
        threads=2,
        busy="1 busy-loop process(es) pinned to core(s) 1",
        plan=Plan(rounds=4, slice_s=0.25, busy=True),
        other_load="loadavg before 1 1 1",
        when="2026-12-04 08:00 UTC",
    )
    for part in (
        "`python bench/run.py --busy 1`",
        "CPU model: AMD EPYC; threads per runner: 2",
        "Busy cores: 1 busy-loop",
        "4 rounds",
        "Other load during the run: loadavg before 1 1 1",
    ):
        assert part in text


def test_cli_defaults_and_rejects_nonsense() -> None:
    args = parse_args([])
    assert args.threads == len(available_cores()) and not args.append
    assert "ecograph-tuned" not in args.runners and "ecograph-int8" in args.runners
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])


# ------------------------------------------------------------ processes and load


def test_worker_side_helpers() -> None:
    seen = []
    times = time_calls(lambda: seen.append(1), warmup=2, calls=3)
    assert len(times) == 3 and len(seen) == 5 and all(t >= 0 for t in times)
    cos, err = cosine(np.array([1.0, 2.0]), np.array([2.0, 4.0]))
    assert cos == pytest.approx(1.0) and err == 2.0
    with pytest.raises(ValueError):
        cosine(np.ones(3), np.ones(4))


def test_processes_end_to_end_with_busy_phases() -> None:
    """Two numpy runners, one that fails setup and one that dies mid-run, through real worker
    processes, idle and busy phases: the broken runners become error rows, the rest run."""
    runners = ["mm-small", "fail-setup", "mm-big", "crash-run"]
    started: list[ProcessWorker] = []

    def start(name: str) -> ProcessWorker:
        w = ProcessWorker("fake", name, threads=1, prepare="tests.test_bench:prepare_fake")
        started.append(w)
        return w

    t0 = time.monotonic()
    with BusyCores(1, settle_s=0.01) as busy:
        m = run_interleaved(
            runners, start, Plan(rounds=2, slice_s=0.05, busy=True, gap_s=0.0), set_busy=busy.set
        )
    by = {r.runner: r for r in m.results}
    assert time.monotonic() - t0 < 60
    assert by["fail-setup"].error is not None and "broken on purpose" in by["fail-setup"].error
    crash = by["crash-run"].error
    assert crash is not None and "worker exited (code 3)" in crash
    for name in ("mm-small", "mm-big"):
        r = by[name]
        assert r.error is None, r.error
        assert r.setup["cosine"] == pytest.approx(1.0) and r.setup["bytes"] > 0
        assert r.setup["extras"] == {"threads": 1}
        for phase in ("idle", "busy"):
            assert all(b for b in r.batches[phase]) and len(r.batches[phase]) == 2
        assert r.energy is not None and r.energy["kind"] in ("unavailable", "measured")
    assert all(w.proc.poll() is not None for w in started)  # every worker ended
    # logs are kept only for the failed workers (the driver prints where); tidy them here
    assert [w.log_path.exists() for w in started] == [False, True, False, True]
    for w in started:
        w.log_path.unlink(missing_ok=True)


def test_busy_cores_are_pinned_paused_and_stopped() -> None:
    cores = available_cores()
    assert pin_targets([0, 1, 2], 2) == [1, 2]
    assert pin_targets([0, 1], 3) == [0, 1, 0]
    assert pin_targets([], 1) == [None]
    busy = BusyCores(1, settle_s=0.01).start()
    try:
        (pid,) = busy.pids
        assert os.sched_getaffinity(pid) == {cores[-1]}
        assert _stopped(pid, True)  # started paused
        busy.set(True)
        assert _stopped(pid, False)
        busy.set(False)
        assert _stopped(pid, True)
    finally:
        busy.stop()
    assert busy.pids == []


def _stopped(pid: int, want: bool, timeout: float = 2.0) -> bool:
    """Whether the process reaches the wanted stopped/running state (signals are async)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            stat = f.read()
        if (stat[stat.rindex(")") + 2 :].split()[0] == "T") == want:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def test_other_load_counts_only_processes_not_ours() -> None:
    stat = "42 (tricky) name) S 7 1 1 0 -1 0 0 0 0 0 150 50 0 0 20 0 1 0 1 1 1"
    info = parse_stat(42, stat, "python train.py")
    assert (info.name, info.ppid, info.ticks) == ("tricky) name", 7, 200)

    def snap(when: float, procs: list[ProcInfo]) -> CpuSnapshot:
        return CpuSnapshot(when, {p.pid: p for p in procs}, "1.00 1.00 1.00")

    before = snap(
        0.0,
        [
            ProcInfo(100, 1, "python", 0, "bench"),
            ProcInfo(101, 100, "python", 0, "worker"),
            ProcInfo(200, 1, "pytest", 100, "pytest -q"),
            ProcInfo(300, 1, "make", 500, "make"),
        ],
    )
    after = snap(
        2.0,
        [
            ProcInfo(100, 1, "python", 150, "bench"),
            ProcInfo(101, 100, "python", 400, "worker"),
            ProcInfo(102, 101, "cc1plus", 90, "inductor compile"),
            ProcInfo(200, 1, "pytest", 300, "pytest -q"),
            ProcInfo(300, 1, "gcc", 50, "gcc x.c"),  # pid reused: all its ticks are new
        ],
    )
    usage = other_usage(before, after, [100], clock_ticks=100)
    assert [(u.pid, u.cores) for u in usage] == [(200, 1.0), (300, 0.25)]
    line = describe_other_load(before, after, usage)
    assert "1.25 cores" in line and "pytest (pid 200: pytest -q) 1.00" in line


def test_cpu_snapshot_reads_this_process() -> None:
    snap = CpuSnapshot.take()
    assert os.getpid() in snap.procs and snap.loadavg.count(" ") == 2


def test_sigterm_ends_the_driver_through_its_cleanup() -> None:
    """`kill` of bench/run.py (or a CI timeout) must not leave a busy loop behind: SIGTERM
    becomes SystemExit, so the finally blocks stop the competitors (and close the workers)."""
    script = (
        "import signal, sys, time\n"
        "from bench.run import _exit_on_sigterm\n"
        "from bench.load import BusyCores\n"
        "signal.signal(signal.SIGTERM, _exit_on_sigterm)\n"
        "busy = BusyCores(1, settle_s=0.01).start()\n"
        "try:\n"
        "    print(busy.pids[0], flush=True)\n"
        "    time.sleep(60)\n"
        "finally:\n"
        "    busy.stop()\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    competitor = int(proc.stdout.readline())
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert _ends(competitor), "the busy loop outlived the driver"


def _ends(pid: int, timeout: float = 5.0) -> bool:
    """Whether process `pid` is gone (or a zombie, dead and waiting to be reaped) in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------ bench/gpu.py (no GPU)


def test_gpu_regenerated_weights_are_seeded_by_name_with_the_original_stats() -> None:
    from bench.gpu import regenerate

    a = regenerate("layer.0.w", [256, 64], "float32", mean=0.01, std=0.05)
    assert a.dtype == np.float32 and a.shape == (256, 64)
    assert np.array_equal(a, regenerate("layer.0.w", [256, 64], "float32", 0.01, 0.05))
    assert not np.array_equal(a, regenerate("layer.1.w", [256, 64], "float32", 0.01, 0.05))
    assert abs(float(a.mean()) - 0.01) < 0.003 and abs(float(a.std()) - 0.05) < 0.003


def test_gpu_trace_makes_every_float_value_an_output_and_samples_evenly() -> None:
    from bench.gpu import TRACE_SAMPLE, _sample, _trace_outputs
    from ecograph.ir import GraphBuilder, interpret

    b = GraphBuilder("t")
    x = b.input("x", "float32", [2, 3])
    h = b.op("Relu", x, name="h")
    shape = b.op("Shape", h, name="s")  # int64: not traced
    b.output(b.op("Reshape", h, shape, name="y"))
    graph = b.graph
    traced = _trace_outputs(graph)
    assert traced == {"h": "Relu"}
    assert [v.name for v in graph.outputs] == ["y", "h"]
    out = interpret(graph, {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 3})
    assert np.array_equal(out["h"], np.maximum(np.arange(6).reshape(2, 3) - 3, 0))
    big = np.arange(3 * TRACE_SAMPLE + 1, dtype=np.float32)
    assert len(_sample(big)) <= TRACE_SAMPLE and _sample(big)[1] == 4.0
    assert np.array_equal(_sample(np.ones(5)), np.ones(5))


def test_gpu_table_gives_ratios_to_both_torch_rows_and_lists_errors() -> None:
    from bench.gpu import markdown

    data = {
        "machine": {"gpu": "G", "driver": "d", "torch": "t", "python": "p", "date": "now"},
        "workloads": {
            "w": {
                "check": {"cosine": 1.0, "max_abs_error": 0.0},
                "timings": {
                    "ecograph-cuda": {"p50_ms": 1.0, "p90_ms": 1.5, "joules_per_call": 0.2},
                    "torch-eager": {"p50_ms": 4.0, "p90_ms": 5.0, "energy_note": "none"},
                    "torch-compile": {"p50_ms": 2.0, "p90_ms": 2.5},
                },
            }
        },
        "errors": ["w torch-compile: TimeoutError: skipped"],
    }
    text = markdown(data)
    assert "| w | ecograph-cuda | 1.0000 | 1.5000 | 0.25x | 0.5x | 0.2 | cos 1.000000 |" in text
    assert "| w | torch-eager | 4.0000 | 5.0000 | 1x | 2x | n/a |  |" in text
    assert "- w torch-compile: TimeoutError: skipped" in text


# ------------------------------------------------------------ bench/lm_bench.py (one model)


def test_lm_bench_smoke_run_times_builds_and_their_logits_agree(tmp_path: Path) -> None:
    """bench/lm_bench.py's whole path on the GPT-2 config (the quicker of its two to compile):
    ecograph fp32 and int4, torch eager and ONNX Runtime fp32, 2 decode steps on a 16-position
    cache, then perplexity on one 16-byte window of the license texts. The fp32 builds must
    give torch eager's decode logits and perplexity; int4 must store far fewer bytes."""
    import json

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "lm.json"
    # its own process: the script fixes torch's, TVM's and ecograph's thread counts process-wide
    command = [
        sys.executable, "bench/lm_bench.py",
        "--models", "gpt2",
        "--builds", "ecograph-fp32,ecograph-int4,torch-eager,ort-fp32",
        "--threads", "1", "--prompt", "16", "--steps", "2", "--prefill-calls", "1",
        "--rounds", "1", "--gap", "0",
        "--ppl-model", "random", "--ppl-builds", "ecograph-fp32,torch-eager,ort-fp32",
        "--ppl-windows", "1",
        "--json", str(out),
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 120
    result = json.loads(out.read_text())
    assert result["text"] in proc.stdout
    rows = {r["build"]: r for r in result["speed"]["gpt2"]["rows"]}
    assert list(rows) == ["ecograph-fp32", "ecograph-int4", "torch-eager", "ort-fp32"]
    for name, row in rows.items():
        assert row["error"] is None, (name, row["error"])
        assert len(row["decode_ms"]) == 2 and len(row["prefill_ms"]) == 1
        assert row["decode_p50_ms"] > 0 and row["prefill_p50_ms"] > 0
        assert row["weight_bytes"] > 100_000
    assert rows["ecograph-fp32"]["max_abs_vs_torch"] < 1e-4
    assert rows["ort-fp32"]["max_abs_vs_torch"] < 1e-4
    assert rows["torch-eager"]["max_abs_vs_torch"] == 0.0
    # packed int4 weights (with their scales and the kernels' code) against float32 ones
    assert rows["ecograph-int4"]["weight_bytes"] < 0.35 * rows["ecograph-fp32"]["weight_bytes"]
    assert 0.9 < rows["ecograph-int4"]["cosine_vs_torch"] < 1.0
    # the whole compiled LM (prefill and decode) on disk, and what loading it costs in memory
    for name in ("ecograph-fp32", "ecograph-int4"):
        extras = rows[name]["extras"]
        assert extras["folder_bytes"] > rows[name]["weight_bytes"], (name, extras)
        assert extras["resident_bytes"] > 0, (name, extras)
    fp32, int4 = (rows[n]["extras"]["resident_bytes"] for n in ("ecograph-fp32", "ecograph-int4"))
    assert int4 < fp32

    ppl = {r["build"]: r for r in result["perplexity"]["gpt2"]["rows"]}
    assert list(ppl) == ["ecograph-fp32", "torch-eager", "ort-fp32"]
    ref = ppl["torch-eager"]["ppl"]
    assert ref is not None and np.isfinite(ref) and ref > 1.0
    assert ppl["torch-eager"]["tokens"] == 15
    for name in ("ecograph-fp32", "ort-fp32"):
        assert abs(ppl[name]["ppl"] / ref - 1) < 0.01, (name, ppl[name]["ppl"], ref)

    text = result["text"]
    assert "Command: `python bench/lm_bench.py --models gpt2" in text
    # the header says what the weights are (SmolLM2's are real: bench/lm_bench.py's WEIGHTS)
    assert result["speed"]["gpt2"]["weights"] == "random weights, seed 0"
    assert "### Speed: gpt2: GPT2LMHeadModel" in text and "(random weights, seed 0)" in text
    assert "| build | decode ms/token (p50) |" in text and "| ecograph-int4 |" in text
    assert "| LM folder MB | resident MB |" in text
    assert "consistency check between builds, not accuracy" in text


def test_lm_bench_calibrates_only_on_texts_apart_from_the_evaluation() -> None:
    """--calibration-texts takes licenses among CALIBRATION_TEXTS (none derived from the
    evaluation texts); an evaluation text, an unknown one or none is an argument error."""
    import argparse

    from bench.lm_bench import CALIBRATION_TEXTS, EVAL_TEXTS, calibration_texts

    assert calibration_texts("Apache-2.0, CC0-1.0") == ("Apache-2.0", "CC0-1.0")
    assert not set(CALIBRATION_TEXTS) & set(EVAL_TEXTS)
    for bad, named in (("GPL-3", "GPL-3"), ("Apache-2.0,MPL-2.0", "MPL-2.0"), (" , ", "nothing")):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{named}: give texts among"):
            calibration_texts(bad)


def test_matmul_kernels_script_checks_and_times_each_encoding() -> None:
    """bench/matmul_kernels.py on a tiny product: every build checked against the
    interpreter, timed, and its schedule rule shown."""
    pytest.importorskip("tvm")
    root = Path(__file__).resolve().parent.parent
    command = [
        sys.executable, "bench/matmul_kernels.py", "--k", "32", "--n", "40", "--rows", "1",
        "--presets", "fp32,int4,palette4", "--rounds", "1", "--slice", "0.01",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines()
            if line.startswith("| ") and "median" not in line}  # fmt: skip
    assert set(rows) == {"fp32", "int4", "palette4"}
    for line in rows.values():
        ms, err = (float(c) for c in line.split("|")[2:4])
        assert ms > 0 and err < 1e-4 and "'matmul'" in line


def test_gpu_lm_names_and_the_32_layer_estimate() -> None:
    """lm<shape>-<quant>-l<N> names; t(32) = t(1) + 31 (t(2) - t(1)) per runner, beside
    torch's measured 32-layer rows (which keep their names, so the table's ratios use them)."""
    from bench.gpu import Results
    from bench.gpu_lm import extrapolate, parse

    assert parse("lm7b-int4-l2") == ("7b", "int4", 2)
    assert parse("lmtiny-torch-l32") == ("tiny", "torch", 32)
    assert parse("lm-check") is None
    with pytest.raises(ValueError, match="unknown LM workload 'lm13b-int4-l1'"):
        parse("lm13b-int4-l1")
    results = Results.__new__(Results)
    results.data = {"workloads": {}, "errors": []}
    results.flush = lambda: None  # type: ignore[method-assign]
    rows = results.data["workloads"]
    rows["lmtiny-int4-l1"] = {
        "timings": {"ecograph": {"p50_ms": 1.0, "joules_per_call": 0.1},
                    "torch-compile": {"p50_ms": 2.0}}
    }  # fmt: skip
    rows["lmtiny-int4-l2"] = {
        "timings": {"ecograph": {"p50_ms": 1.5, "joules_per_call": 0.15},
                    "torch-compile": {"p50_ms": 3.0}}
    }  # fmt: skip
    rows["lmtiny-torch-l32"] = {"timings": {"torch-compile": {"p50_ms": 40.0}}}
    extrapolate(results)
    est = rows["lmtiny-int4-l32 (estimate)"]["timings"]
    assert est["ecograph (extrapolated)"]["p50_ms"] == pytest.approx(16.5)
    assert est["ecograph (extrapolated)"]["joules_per_call"] == pytest.approx(1.65)
    assert est["torch-compile (extrapolated)"]["p50_ms"] == pytest.approx(33.0)
    assert est["torch-compile"] == {"p50_ms": 40.0}
    assert "lmtiny-torch-l32 (estimate)" not in rows


@pytest.mark.slow
def test_gpu_lm_slices_dry_run_on_this_cpu(tmp_path: Path) -> None:
    """bench/gpu.py prepare + run of the LM slices for x86 (the GPU path's dry run): decode1
    of each slice loads from its regenerated weights and is timed beside torch eager; the
    32-layer estimate follows from the two measured slices."""
    import json

    root = Path(__file__).resolve().parents[1]
    names = "lmtiny-int4-l1,lmtiny-int4-l2,lmtiny-torch-l32"
    art, out = tmp_path / "art", tmp_path / "out"
    prep = [sys.executable, "bench/gpu.py", "prepare", "--out", str(art), "--target", "x86",
            "--no-site", "--workloads", names]  # fmt: skip
    proc = subprocess.run(prep, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((art / "art" / "lmtiny-int4-l1" / "meta.json").read_text())
    # the int8 embedding (1 MiB) and int4 output projection (512 KiB) stay here
    assert {r["dtype"] for r in meta["regenerated"].values()} == {"int8", "uint8"}
    # a budget under 90 s leaves torch.compile out (its CPU compile alone takes ~30 s)
    run = [sys.executable, "bench/gpu.py", "run", "--art", str(art), "--out", str(out),
           "--work", str(tmp_path / "work"), "--workloads", names, "--rounds", "1",
           "--slice", "0.05", "--energy-seconds", "0.05", "--budget", "80"]  # fmt: skip
    proc = subprocess.run(run, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "gpu.json").read_text())
    rows = data["workloads"]
    for n in ("lmtiny-int4-l1", "lmtiny-int4-l2"):
        assert rows[n]["ecograph"]["logits_finite"] is True
        assert rows[n]["ecograph"]["decode1_param_bytes"] > 0
        assert {"ecograph", "torch-eager"} <= set(rows[n]["timings"]), rows[n]
    one, two = (rows[f"lmtiny-int4-l{k}"]["timings"]["ecograph"]["p50_ms"] for k in (1, 2))
    est = rows["lmtiny-int4-l32 (estimate)"]["timings"]
    assert est["ecograph (extrapolated)"]["p50_ms"] == pytest.approx(one + 31 * (two - one))
    assert "torch-eager" in est  # measured on the 32-layer twin
    assert "lmtiny-int4-l32 (estimate)" in (out / "gpu.md").read_text()


@pytest.mark.parametrize("k", [256, 512])  # 512: square, where only the values tell
def test_gpu_prepare_regenerates_weights_in_the_layout_a_cuda_build_stores(
    tmp_path: Path, k: int
) -> None:
    """CUDA builds store a product's weight [N, K] (the constant transposed): the stand-in
    the GPU host makes for the param goes into the graph transposed back, so the expected
    outputs are those of the weights the GPU reads."""
    import ecograph
    from bench.gpu import _strip_params, regenerate
    from ecograph.ir import GraphBuilder

    b = GraphBuilder()
    x = b.input("x", "float32", [1, k])
    w = np.random.default_rng(0).standard_normal((k, 512)).astype(np.float32)
    b.output(b.op("MatMul", x, b.constant(w, "w")))
    graph = b.graph
    art = ecograph.compile(graph.copy(), "cuda:sm_90", tmp_path / "a", keep_params=True)
    regen = _strip_params(Path(art), graph, tmp_path, "cuda:sm_90")
    assert regen["w"]["shape"] == [512, k]  # the param: [N, K]
    remade = regenerate("w", **regen["w"])
    np.testing.assert_array_equal(graph.constants["w"].const_value, remade.T)
