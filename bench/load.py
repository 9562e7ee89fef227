"""The machine's load: busy-core competitors we start, and the load we did not start.

`BusyCores` starts K CPU-bound processes (a pure-Python loop each, one core's worth), pinned to
the last K cores this process may use, and pauses/resumes them (SIGSTOP/SIGCONT) so busy and
idle phases can alternate within one run without paying process start-up each time.

`CpuSnapshot` reads every process's CPU time from /proc; two snapshots give what each process
used during the run, so a results table can say what else was running (the shared machine's
other engineers) instead of assuming a quiet box.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

# One core's worth of work that allocates nothing and never finishes on its own.
BUSY_LOOP = "while True:\n    pass\n"


def available_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity mask), in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def pin_targets(cores: list[int], k: int) -> list[int | None]:
    """The core each of `k` competitors is pinned to: the last k cores, wrapping around when
    k exceeds them; None (unpinned) where the affinity mask is unknown."""
    if not cores:
        return [None] * k
    last = cores[-k:] if k <= len(cores) else cores
    return [last[i % len(last)] for i in range(k)]


class BusyCores:
    """K busy-loop processes, paused until `set(True)`; `stop()` ends them."""

    def __init__(self, k: int, *, settle_s: float = 0.05) -> None:
        if k < 0:
            raise ValueError(f"busy core count must be >= 0, got {k}")
        self.k = k
        self.settle_s = settle_s
        self.pinned = pin_targets(available_cores(), k)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.busy = False

    def start(self) -> BusyCores:
        for core in self.pinned:
            proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            self.procs.append(proc)
            os.kill(proc.pid, signal.SIGSTOP)
            if core is not None:
                # Where pinning fails the loop runs unpinned (the header names the cores
                # asked for; the scheduler still gives it one core's worth of time).
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(proc.pid, {core})
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def set(self, busy: bool) -> None:
        """Resume (busy) or pause (idle) every competitor, then let the scheduler settle."""
        if busy == self.busy:
            return
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT if busy else signal.SIGSTOP)
        self.busy = busy
        time.sleep(self.settle_s)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # SIGKILL ends a stopped process too
                proc.wait()
        self.procs = []
        self.busy = False

    def describe(self) -> str:
        if not self.k:
            return "none (idle machine phases only)"
        cores = ", ".join("unpinned" if c is None else str(c) for c in self.pinned)
        return f"{self.k} busy-loop process(es) pinned to core(s) {cores}"

    def __enter__(self) -> BusyCores:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------- other load


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    name: str
    ticks: int  # user + system CPU time in clock ticks
    cmdline: str


@dataclass
class CpuSnapshot:
    """CPU time per process at one moment (from /proc; empty where there is no /proc)."""

    when: float
    procs: dict[int, ProcInfo] = field(default_factory=dict)
    loadavg: str = ""

    @classmethod
    def take(cls) -> CpuSnapshot:
        snap = cls(time.monotonic())
        try:
            with open("/proc/loadavg", encoding="utf-8") as f:
                snap.loadavg = " ".join(f.read().split()[:3])
        except OSError:
            pass
        try:
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return snap
        for pid in pids:
            info = read_proc(pid)
            if info is not None:
                snap.procs[pid] = info
        return snap


def parse_stat(pid: int, stat: str, cmdline: str = "") -> ProcInfo:
    """A /proc/PID/stat line (the name in parentheses may hold spaces and parentheses)."""
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    rest = stat[stat.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return ProcInfo(pid, int(rest[1]), name, int(rest[11]) + int(rest[12]), cmdline)


def read_proc(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as fb:
            cmdline = fb.read().replace(b"\0", b" ").decode(errors="replace").strip()
        return parse_stat(pid, stat, cmdline)
    except (OSError, ValueError, IndexError):
        return None


def descendants(procs: dict[int, ProcInfo], roots: Iterable[int]) -> set[int]:
    """`roots` and every process whose parent chain reaches one of them."""
    children: dict[int, list[int]] = {}
    for info in procs.values():
        children.setdefault(info.ppid, []).append(info.pid)
    seen = set(roots)
    stack = list(seen)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


@dataclass(frozen=True)
class Usage:
    pid: int
    name: str
    cmdline: str
    cores: float  # average cores busy during the interval


def other_usage(
    before: CpuSnapshot,
    after: CpuSnapshot,
    ours: Iterable[int],
    *,
    clock_ticks: int | None = None,
) -> list[Usage]:
    """CPU each process that is not ours used between two snapshots, largest first. `ours`:
    pids we started (workers, competitors; their children count as ours), and this process.
    A process that started after `before` counts with all its CPU time."""
    ticks_per_s = clock_ticks or os.sysconf("SC_CLK_TCK")
    wall = after.when - before.when
    if wall <= 0:
        return []
    mine = descendants(after.procs, ours) | descendants(before.procs, ours)
    out = []
    for pid, info in after.procs.items():
        if pid in mine:
            continue
        start = before.procs.get(pid)
        used = info.ticks - (start.ticks if start is not None and start.name == info.name else 0)
        if used > 0:
            out.append(Usage(pid, info.name, info.cmdline, used / ticks_per_s / wall))
    out.sort(key=lambda u: -u.cores)
    return out


def describe_other_load(before: CpuSnapshot, after: CpuSnapshot, usage: list[Usage]) -> str:
    """One line for the results header: load averages and the top other processes."""
    total = sum(u.cores for u in usage)
    top = [
        f"{u.name} (pid {u.pid}{': ' + u.cmdline[:60] if u.cmdline else ''}) {u.cores:.2f}"
        for u in usage[:5]
        if u.cores >= 0.01
    ]
    return (
        f"loadavg before {before.loadavg or 'n/a'}, after {after.loadavg or 'n/a'}; "
        f"processes not ours used {total:.2f} cores on average during the run"
        + (f"; top: {'; '.join(top)}" if top else "")
    )
