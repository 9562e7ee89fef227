"""How many CPU threads compiled kernels use: chosen at load, adapted while the model runs.

TVM splits every parallel loop statically over its thread pool: with one core busy with
another process, each kernel waits for the thread that shares that core, and a 2-thread model
can run several times slower than the same model on one thread. ONNX Runtime barely notices
(its pool hands out work dynamically). TVM cannot hand out work dynamically, so instead the
process's thread count follows the machine: `ThreadPolicy` times every call of a loaded model
at the current setting and, every `probe_every` calls, times one call at another setting; the
setting with the lower recent median wins, and a probe clearly faster than the chosen
setting's median wins at once (the load changed). Switching TVM's pool costs ~2 us. Measured in
bench/RESULTS.md ("busy core" tables).

TVM's own default is half the hardware threads (it assumes SMT), i.e. one thread on a 2-core
machine; here the default is every core this process may run on. TVM also pins each pool thread
to a core, the calling thread included: a pinned thread cannot leave a core another process
keeps busy, and the caller's later work (torch, numpy) stays on one core. ecograph asks TVM not
to pin (TVM_BIND_THREADS=0, unless the user set it), before TVM's pool starts.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ecograph.errors import BuildError

os.environ.setdefault("TVM_BIND_THREADS", "0")

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


class ThreadPolicy:
    """The process-wide choice of TVM's thread count (TVM's pool is per process).

    `threads`: an int fixes the count; "auto" adapts between every core and fewer. Each model
    keeps its own timings (a key per loaded artifact); the pool follows the model being run."""

    def __init__(
        self,
        threads: int | str = "auto",
        *,
        probe_every: int = 16,
        window: int = 5,
        configure: Callable[[int], None] = _tvm_config,
        clock: Callable[[], float] = time.perf_counter,
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
        self._current: int | None = None
        self._lock = threading.Lock()
        self._stats: dict[Any, dict[int, deque[float]]] = {}
        self._choice: dict[Any, int] = {}
        self._calls: dict[Any, int] = {}

    def _set(self, threads: int) -> None:
        if threads != self._current:
            self._configure(threads)
            self._current = threads

    def choice(self, key: Any) -> int:
        """The thread count the model `key` currently runs with."""
        return self._choice.get(key, self.settings[0])

    def median(self, key: Any, threads: int) -> float | None:
        samples = self._stats.get(key, {}).get(threads)
        return statistics.median(samples) if samples else None

    @contextmanager
    def run(self, key: Any) -> Iterator[None]:
        """Around one call of model `key`: set the thread count, time the call, learn."""
        with self._lock:
            threads = self._pick(key)
            self._set(threads)
            start = self._clock()
            try:
                yield
            finally:
                self._learn(key, threads, self._clock() - start)

    def _pick(self, key: Any) -> int:
        chosen = self.choice(key)
        if not self.adaptive:
            return chosen
        n = self._calls.get(key, 0)
        self._calls[key] = n + 1
        best = self.median(key, chosen)
        if n and n % self.probe_every == 0 and best is not None and best >= MIN_PROBE_SECONDS:
            # Probe the setting measured least recently (round robin over the others).
            others = [t for t in self.settings if t != chosen]
            return others[(n // self.probe_every) % len(others)]
        return chosen

    def _learn(self, key: Any, threads: int, seconds: float) -> None:
        stats = self._stats.setdefault(key, {})
        chosen = self.choice(key)
        best = self.median(key, chosen)
        if (
            self.adaptive
            and threads != chosen
            and best is not None
            and seconds < best * (1 - SWITCH_MARGIN)
        ):
            # A probe clearly faster than the chosen setting's recent median: the machine
            # changed (the other process ended). Samples from before are stale; move at once
            # instead of waiting until the window fills with new probes (one probe every
            # `probe_every` calls: minutes for a model whose calls take seconds). A lucky
            # probe costs at most `probe_every` calls before the next probe moves back.
            stats.clear()
        stats.setdefault(threads, deque(maxlen=self.window)).append(seconds)
        if not self.adaptive:
            return
        medians = {t: statistics.median(s) for t, s in stats.items() if s}
        self._choice[key] = min(medians, key=lambda t: (medians[t], -t))


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
    """ECOGRAPH_NUM_THREADS, else TVM_NUM_THREADS (a fixed count), else "auto"."""
    name = "ECOGRAPH_NUM_THREADS" if "ECOGRAPH_NUM_THREADS" in os.environ else "TVM_NUM_THREADS"
    raw = os.environ.get(name, "auto").strip()
    if raw == "auto":
        return "auto"
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise BuildError(f"{name} must be a positive integer or 'auto', got {raw!r}")
    return value
