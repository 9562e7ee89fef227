"""How many CPU threads compiled kernels use: chosen at load, adapted while the model runs.

TVM splits every parallel loop statically over its thread pool: with one core busy with
another process, each kernel waits for the thread that shares that core, and a 2-thread model
can run several times slower than the same model on one thread. ONNX Runtime barely notices
(its pool hands out work dynamically). TVM cannot hand out work dynamically, so instead the
process's thread count follows the machine, from two signals:

- The load: `LoadMeter` reads how much CPU other processes used on this process's cores
  (/proc/stat's busy time minus this process's own CPU time, over windows of at least
  `LoadMeter.window` seconds; ~10 us a read, at most one read per window). Rounded, that is
  the number of cores other work keeps busy: the *regime*. A new regime starts at every core
  minus the busy ones, at once, before the next call (a static split over n threads runs at
  the pace of the slowest; n - busy threads on the free cores beat n threads of which some
  share a core).
- The model's own timings, per regime: every call is timed at the current setting, and every
  `probe_every` calls one call runs at another setting; the setting with the lower recent median
  wins, and a probe clearly faster than the chosen setting's median wins at once. So a regime's
  guess that is wrong for a model (memory-bound kernels, a busy process that sleeps often) is
  corrected by measurement, and what was learned in a regime is kept for when it returns:
  a model whose calls take 200 ms, probed every 16 calls, would otherwise need seconds of calls
  to follow a load that comes and goes (bench/RESULTS.md, "busy core" tables).
Where /proc/stat cannot be read (not Linux), there is one regime and the timings alone decide.
Switching TVM's pool costs ~2 us.

TVM's own default is half the hardware threads (it assumes SMT), i.e. one thread on a 2-core
machine; here the default is every core this process may run on. TVM also pins each pool thread
to a core, the calling thread included: a pinned thread cannot leave a core another process
keeps busy, and the caller's later work (torch, numpy) stays on one core. ecograph asks TVM not
to pin (TVM_BIND_THREADS=0, unless the user set it), before TVM's pool starts.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ecograph.errors import BuildError

os.environ.setdefault("TVM_BIND_THREADS", "0")
# TVM sizes its thread pool once, when it first starts it, from TVM_NUM_THREADS, else half
# the hardware threads (it assumes SMT), and `config_threadpool` cannot grow the pool past
# that size: on a 2-core machine every model ran on one thread whatever the policy chose
# (MiniLM b1 s48: 11.7 ms instead of 8.8). So, unless the user set it, TVM_NUM_THREADS is
# set at the end of this module to every core this process may run on (or
# ECOGRAPH_NUM_THREADS, if larger) before the pool starts; the policy then picks the count
# per call. The user's own setting is kept in USER_TVM_THREADS (a fixed count, as before).
USER_TVM_THREADS = os.environ.get("TVM_NUM_THREADS")

# Below this median (seconds) a model is not probed: a worse setting costs more than it can
# tell, and tiny models are dominated by call overhead anyway.
MIN_PROBE_SECONDS = 2e-4
# A probe this much faster than the chosen setting's median switches at once (see _learn).
SWITCH_MARGIN = 0.15


def available_cores() -> int:
    """CPU cores this process may run on, at least 1 (see targets.host_cores)."""
    from ecograph.backends.tvm.targets import host_cores

    return host_cores()


def _tvm_config(threads: int) -> None:
    import tvm_ffi

    tvm_ffi.get_global_func("runtime.config_threadpool")(0, threads)


def _affinity() -> frozenset[int]:
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset()


# Read at import, as targets.host_cores is: the cores this process may run on.
_CORES = _affinity()
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def read_busy_seconds(cores: frozenset[int] = _CORES, path: str = "/proc/stat") -> float | None:
    """CPU seconds all processes have spent busy on `cores` since boot (/proc/stat: user, nice,
    system, irq, softirq and steal), or None where that cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.readlines()
    except OSError:
        return None
    ticks = 0
    seen = False
    for line in lines:
        if not line.startswith("cpu") or line[3:4] in (" ", ""):
            continue
        fields = line.split()
        try:
            cpu = int(fields[0][3:])
            values = [int(v) for v in fields[1:9]]
        except ValueError:
            continue
        if cores and cpu not in cores:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
        ticks += user + nice + system + irq + softirq + steal
        seen = True
    return ticks / _TICK if seen else None


class LoadMeter:
    """How many of this process's cores other processes keep busy, over recent windows.

    `busy_seconds` reads the CPU time spent busy on our cores (all processes); this process's
    own CPU time is subtracted. A reading needs `window` seconds of wall time since the last
    one (the kernel counts in 10 ms ticks), so reading it every call costs nothing."""

    def __init__(
        self,
        *,
        window: float = 0.1,
        busy_seconds: Callable[[], float | None] = read_busy_seconds,
        own_seconds: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self._busy_seconds = busy_seconds
        self._own_seconds = own_seconds
        self._clock = clock
        self._last: tuple[float, float, float] | None = None
        self.others: float | None = None  # busy cores of other processes, latest window
        self.available = True

    def __call__(self) -> float | None:
        """Other processes' busy cores over the latest full window (None: unknown)."""
        if not self.available:
            return None
        now = self._clock()
        if self._last is not None and now - self._last[0] < self.window:
            return self.others
        busy = self._busy_seconds()
        if busy is None:
            self.available = False
            self.others = None
            return None
        own = self._own_seconds()
        if self._last is not None:
            then, busy0, own0 = self._last
            self.others = max(0.0, ((busy - busy0) - (own - own0)) / (now - then))
        self._last = (now, busy, own)
        return self.others


class ThreadPolicy:
    """The process-wide choice of TVM's thread count (TVM's pool is per process).

    `threads`: an int fixes the count; "auto" adapts between every core and fewer. Each model
    keeps its own timings (a key per loaded artifact) per load regime (see the module
    docstring); the pool follows the model being run. `load` returns the busy cores of other
    processes (None: unknown); the default reads /proc/stat."""

    def __init__(
        self,
        threads: int | str = "auto",
        *,
        probe_every: int = 16,
        window: int = 5,
        configure: Callable[[int], None] = _tvm_config,
        clock: Callable[[], float] = time.perf_counter,
        load: Callable[[], float | None] | None = None,
    ) -> None:
        self.max_threads = available_cores()
        if threads == "auto":
            self.settings = sorted({self.max_threads, max(1, self.max_threads // 2), 1})[::-1]
            self.adaptive = len(self.settings) > 1
        elif isinstance(threads, int) and threads >= 1:
            self.settings = [threads]
            self.adaptive = False
        else:
            raise BuildError(f"threads must be a positive int or 'auto', got {threads!r}")
        self.probe_every = probe_every
        self.window = window
        self._configure = configure
        self._clock = clock
        self._load = (load or LoadMeter()) if self.adaptive else None
        self._current: int | None = None
        self._lock = threading.Lock()
        # Per (model, regime): samples per thread count, the chosen count, calls so far.
        self._stats: dict[Any, dict[int, deque[float]]] = {}
        self._medians: dict[Any, dict[int, float]] = {}  # the medians of _stats (adaptive)
        self._choice: dict[Any, int] = {}
        self._calls: dict[Any, int] = {}

    def _set(self, threads: int) -> None:
        if threads != self._current:
            self._configure(threads)
            self._current = threads

    def regime(self) -> int:
        """Cores other processes keep busy (rounded; 0 when unknown), at most all but one."""
        others = self._load() if self._load is not None else None
        if not others:
            return 0
        return min(int(others + 0.5), self.max_threads - 1)

    def _default(self, regime: int) -> int:
        """A regime's first guess: the free cores (the nearest setting at or below them)."""
        free = max(1, self.max_threads - regime)
        return next((t for t in self.settings if t <= free), self.settings[-1])

    def choice(self, key: Any, regime: int = 0) -> int:
        """The thread count model `key` runs with under `regime` (0: an idle machine)."""
        return self._choice.get((key, regime), self._default(regime))

    def median(self, key: Any, threads: int, regime: int = 0) -> float | None:
        samples = self._stats.get((key, regime), {}).get(threads)
        return _median(samples) if samples else None

    def call(self, key: Any, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` as one call of model `key`: set the thread count, time the call, learn.
        Kept to a few microseconds (a tiny CNN's whole call is ~70 us): no context manager,
        each setting's median updated only when a sample arrives."""
        with self._lock:
            slot = (key, self.regime() if self.adaptive else 0)
            threads = self._pick(slot)
            if threads != self._current:
                self._set(threads)
            start = self._clock()
            try:
                return fn(*args)
            finally:
                self._learn(slot, threads, self._clock() - start)

    def _pick(self, slot: tuple[Any, int]) -> int:
        chosen = self._choice.get(slot) or self._default(slot[1])
        if not self.adaptive:
            return chosen
        n = self._calls.get(slot, 0)
        self._calls[slot] = n + 1
        if n and n % self.probe_every == 0:
            best = self._medians.get(slot, {}).get(chosen)
            if best is not None and best >= MIN_PROBE_SECONDS:
                # Probe the setting measured least recently (round robin over the others).
                others = [t for t in self.settings if t != chosen]
                return others[(n // self.probe_every) % len(others)]
        return chosen

    def _learn(self, slot: tuple[Any, int], threads: int, seconds: float) -> None:
        stats = self._stats.setdefault(slot, {})
        medians = self._medians.setdefault(slot, {})
        if self.adaptive:
            best = medians.get(chosen := self._choice.get(slot) or self._default(slot[1]))
            if threads != chosen and best is not None and seconds < best * (1 - SWITCH_MARGIN):
                # A probe clearly faster than the chosen setting's recent median: the machine
                # changed in a way the load regime does not show (or /proc/stat is not there).
                # Samples from before are stale; move at once instead of waiting until the
                # window fills with new probes (one probe every `probe_every` calls: minutes
                # for a model whose calls take seconds). A lucky probe costs at most
                # `probe_every` calls before the next probe moves back.
                stats.clear()
                medians.clear()
        samples = stats.get(threads)
        if samples is None:
            samples = stats[threads] = deque(maxlen=self.window)
        samples.append(seconds)
        if self.adaptive:
            medians[threads] = _median(samples)
            # Until a setting has samples, the regime's guess stays in the running at its
            # place. The lowest median wins, the most threads among equal ones.
            self._choice[slot] = min(medians.items(), key=lambda tm: (tm[1], -tm[0]))[0]


def _median(samples: deque[float]) -> float:
    """The median of a few floats (as statistics.median), at a fraction of its cost."""
    ordered = sorted(samples)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


_POLICY: ThreadPolicy | None = None


def policy(threads: int | str | None = None) -> ThreadPolicy:
    """The process's policy; `threads` (int or "auto") replaces it when given. The default
    comes from ECOGRAPH_NUM_THREADS, else TVM_NUM_THREADS, else "auto"."""
    global _POLICY
    if threads is not None or _POLICY is None:
        choice: int | str = threads if threads is not None else _env_threads()
        _POLICY = ThreadPolicy(choice)
    return _POLICY


def _env_threads() -> int | str:
    """ECOGRAPH_NUM_THREADS, else the user's TVM_NUM_THREADS (a fixed count; not the one set
    at import above), else "auto"."""
    if "ECOGRAPH_NUM_THREADS" in os.environ:
        name, raw = "ECOGRAPH_NUM_THREADS", os.environ["ECOGRAPH_NUM_THREADS"].strip()
    else:
        name, raw = "TVM_NUM_THREADS", (USER_TVM_THREADS or "auto").strip()
    if raw == "auto":
        return "auto"
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise BuildError(f"{name} must be a positive integer or 'auto', got {raw!r}")
    return value


def _pool_size() -> int:
    """The size TVM's pool is started with: every core, or ECOGRAPH_NUM_THREADS if larger."""
    try:
        wanted = _env_threads()
    except BuildError:
        wanted = "auto"  # a bad setting: the policy reports it when it is first asked
    return max(available_cores(), wanted if isinstance(wanted, int) else 0)


if USER_TVM_THREADS is None:  # see USER_TVM_THREADS above; before TVM's pool starts
    os.environ["TVM_NUM_THREADS"] = str(_pool_size())
