"""A runner in its own process, driven over pipes with one JSON object per line.

The driver (bench/run.py through `ProcessWorker`) starts `python -m bench.worker` with the
thread-count variables already in its environment (TVM reads TVM_NUM_THREADS when it is
imported), then sends requests on the worker's stdin and reads one reply per request:

    {"cmd": "setup", "prepare": "bench.runners:prepare", "workload": ..., "runner": ...,
     "threads": N, "options": {...}}     -> {"ok": true, "compile_seconds", "bytes", "cosine",
                                              "max_abs_error", "est_ms", "extras"}
    {"cmd": "run", "warmup": 1, "calls": 50}  -> {"ok": true, "times_ms": [...]}
    {"cmd": "energy", "p50_ms": x, "declared_watts": w|null} -> {"ok": true, "energy": {...}}
    {"cmd": "quit"}

A failure is a reply {"ok": false, "error": "..."}; a crash is end of file. Either way the
driver turns it into that runner's error row (WorkerError) and the run goes on. The worker
keeps the real stdout for the protocol and points file descriptor 1 at stderr, so whatever the
libraries print (TVM, torch.compile) lands in the worker's log, not in the protocol.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from bench.interleave import Batch, WorkerError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PREPARE = "bench.runners:prepare"


@dataclass
class Prepared:
    """A runner's model, ready: `call()` runs one inference on the workload's inputs.

    output / reference: the first call's output and torch fp32's on the same inputs, for the
    cosine column (either may be None where there is nothing to compare)."""

    call: Callable[[], Any]
    compile_seconds: float | None
    bytes: int | None
    output: Any = None
    reference: Any = None
    extras: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ worker side


def time_calls(call: Callable[[], Any], warmup: int, calls: int) -> list[float]:
    """`warmup` untimed calls, then the time of each of `calls` calls in ms. The garbage
    collector is held off during the batch (as timeit does) so one runner's garbage does not
    land in another's times."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(warmup):
            call()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    finally:
        gc.enable()


def cosine(output: Any, reference: Any) -> tuple[float, float]:
    """Cosine similarity and max abs error of two outputs, flattened, in float64."""
    a = np.asarray(output, np.float64).reshape(-1)
    b = np.asarray(reference, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"output has {a.size} elements, the torch reference {b.size}")
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    cos = float(a @ b / denom) if denom else float("nan")
    return cos, float(np.max(np.abs(a - b))) if a.size else 0.0


def _estimate_ms(call: Callable[[], Any], *, runs: int = 3, max_seconds: float = 2.0) -> float:
    """A warm call's time (median of up to `runs` calls, fewer when calls are slow)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (not times or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _resolve(spec: str) -> Callable[..., Prepared]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _handle(request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    cmd = request.get("cmd")
    if cmd == "setup":
        prepare = _resolve(request.get("prepare", DEFAULT_PREPARE))
        prepared: Prepared = prepare(
            request["workload"], request["runner"], request["threads"], request.get("options", {})
        )
        state["prepared"] = prepared
        reply: dict[str, Any] = {
            "compile_seconds": prepared.compile_seconds,
            "bytes": prepared.bytes,
            "extras": prepared.extras,
        }
        if prepared.output is not None and prepared.reference is not None:
            reply["cosine"], reply["max_abs_error"] = cosine(prepared.output, prepared.reference)
        prepared.output = prepared.reference = None
        reply["est_ms"] = _estimate_ms(prepared.call)
        return reply
    prepared = state.get("prepared")
    if prepared is None:
        raise RuntimeError(f"{cmd!r} before a successful setup")
    if cmd == "run":
        return {
            "times_ms": time_calls(prepared.call, int(request["warmup"]), int(request["calls"]))
        }
    if cmd == "energy":
        from ecograph.report.measure import LatencyStats, measure_energy

        p50 = float(request["p50_ms"])
        lat = LatencyStats(p50_ms=p50, p90_ms=p50, mean_ms=p50, runs=0)
        reading = measure_energy(
            prepared.call,
            device="cpu",
            latency=lat,
            declared_power_watts=request.get("declared_watts"),
        )
        return {"energy": reading.to_dict()}
    raise RuntimeError(f"unknown command {cmd!r}")


def serve(requests: IO[str], replies: IO[str]) -> None:
    """Answer requests until "quit" or end of input; a failing request gets an error reply
    (its traceback goes to stderr, the worker's log) and the worker stays up."""
    state: dict[str, Any] = {}
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("cmd") == "quit":
            replies.write(json.dumps({"ok": True}) + "\n")
            replies.flush()
            return
        try:
            reply = {"ok": True, **_handle(request, state)}
        except Exception as exc:
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:600]}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> None:
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # library prints go to the log (stderr), not into the protocol
    sys.stdout = sys.stderr
    serve(sys.stdin, replies)


# ------------------------------------------------------------------ driver side


def thread_env(threads: int) -> dict[str, str]:
    """Environment that fixes every runtime's thread count before it is imported."""
    n = str(threads)
    return {
        "TVM_NUM_THREADS": n,
        "ECOGRAPH_NUM_THREADS": n,
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
    }


class ProcessWorker:
    """The driver's handle on one worker process (implements interleave.Worker)."""

    def __init__(
        self,
        workload: str,
        runner: str,
        *,
        threads: int,
        prepare: str = DEFAULT_PREPARE,
        options: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        setup_timeout: float = 1800.0,
    ) -> None:
        self.workload = workload
        self.runner = runner
        self.threads = threads
        self.prepare = prepare
        self.options = options or {}
        self.setup_timeout = setup_timeout
        self._est_ms = 1000.0
        self.failed = False
        self.log_path = Path(tempfile.mkstemp(prefix=f"ecograph-bench-{runner}-", suffix=".log")[1])
        full_env = {**os.environ, **thread_env(threads), **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.worker"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=full_env,
                text=True,
                bufsize=1,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        tail = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
        return " | ".join(tail)[-400:]

    def _call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise WorkerError(self._died()) from None
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.failed = True
            self.kill()
            raise WorkerError(f"no answer to {request['cmd']!r} in {timeout:.0f} s") from None
        if line is None:
            raise WorkerError(self._died())
        reply = json.loads(line)
        if not reply.get("ok"):
            self.failed = True
            raise WorkerError(str(reply.get("error", "failed")))
        return reply

    def _died(self) -> str:
        self.failed = True
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        return f"worker exited (code {code}): {self.log_tail()}"

    def setup(self) -> dict[str, Any]:
        reply = self._call(
            {
                "cmd": "setup",
                "prepare": self.prepare,
                "workload": self.workload,
                "runner": self.runner,
                "threads": self.threads,
                "options": self.options,
            },
            self.setup_timeout,
        )
        reply.pop("ok", None)
        self._est_ms = float(reply.get("est_ms") or self._est_ms)
        return reply

    def run(self, batch: Batch) -> list[float]:
        # Generous: a busy core can slow a statically split runtime tenfold.
        expected_s = (batch.warmup + batch.calls) * self._est_ms / 1e3
        reply = self._call(
            {"cmd": "run", "warmup": batch.warmup, "calls": batch.calls},
            max(120.0, 50 * expected_s),
        )
        times = [float(t) for t in reply["times_ms"]]
        if times:
            self._est_ms = statistics.median(times)
        return times

    def energy(self, p50_ms: float, declared_watts: float | None) -> dict[str, Any]:
        reply = self._call(
            {"cmd": "energy", "p50_ms": p50_ms, "declared_watts": declared_watts},
            max(120.0, 50 * self._est_ms / 1e3),
        )
        return dict(reply["energy"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Ask the worker to quit, kill it if it does not; delete its log unless it failed
        (then the driver says where the log is)."""
        if self.proc.poll() is None:
            failed = self.failed
            try:
                self._call({"cmd": "quit"}, 10)
                self.proc.wait(timeout=10)
            except (WorkerError, subprocess.TimeoutExpired):
                self.kill()
            self.failed = failed
        self._reader.join(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.failed:
            print(f"[bench] {self.runner}: worker log kept at {self.log_path}", file=sys.stderr)
        else:
            self.log_path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
