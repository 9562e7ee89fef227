"""Latency and energy measurement, each number labelled with how it was obtained.

Energy comes from hardware counters where they exist: NVIDIA GPUs through NVML's total-energy
counter (nvidia-ml-py, or zeus when installed), CPUs through RAPL via zeus (when the kernel
exposes /sys/class/powercap). Where no counter exists, energy is *estimated* as latency times
a power figure the caller declares, and says so; with no declared power it is reported as
unavailable rather than guessed. Measured and estimated numbers are never mixed silently.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

EnergyKind = Literal["measured", "estimated", "unavailable"]


@dataclass(frozen=True)
class LatencyStats:
    p50_ms: float
    p90_ms: float
    mean_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EnergyReading:
    """Energy per inference in joules, with its kind and a human-readable method."""

    joules: float | None
    kind: EnergyKind
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        if self.joules is None:
            return f"unavailable ({self.method})"
        return f"{self.joules * 1e3:.3f} mJ ({self.kind}: {self.method})"


def measure_latency(
    fn: Callable[[], Any], *, warmup: int = 3, repeat: int = 20, min_seconds: float = 0.0
) -> LatencyStats:
    """Time `fn()`; at least `repeat` runs and at least `min_seconds` of runs."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < repeat or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return LatencyStats(
        p50_ms=_percentile(samples, 50),
        p90_ms=_percentile(samples, 90),
        mean_ms=statistics.fmean(samples),
        runs=len(samples),
    )


def _percentile(sorted_samples: list[float], q: float) -> float:
    if len(sorted_samples) == 1:
        return sorted_samples[0]
    k = (len(sorted_samples) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (k - lo)


class _Counter:
    """A cumulative energy counter in joules."""

    method: str

    def read(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        return None


class _NvmlCounter(_Counter):
    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(self._handle)
        name = name.decode() if isinstance(name, bytes) else name
        self.read()  # raises NVMLError_NotSupported on GPUs without the counter
        self.method = f"NVML total-energy counter, GPU {index} ({name})"

    def read(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class _RaplCounter(_Counter):
    def __init__(self) -> None:
        from zeus.device.cpu import get_cpus

        self._cpus = get_cpus()  # raises when RAPL is not exposed
        self._n = len(self._cpus.cpus)
        if self._n == 0:
            raise RuntimeError("no RAPL packages")
        self.method = f"RAPL package+DRAM counters via zeus ({self._n} package(s))"

    def read(self) -> float:
        total_mj = 0.0
        for i in range(self._n):
            m = self._cpus.getTotalEnergyConsumption(i)
            total_mj += m.cpu_mj + (m.dram_mj or 0.0)
        return total_mj / 1e3


def energy_counter(device: str) -> tuple[_Counter | None, str]:
    """A measured counter for `device` ("cpu" or "cuda[:i]"), or None and the reason."""
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        try:
            return _NvmlCounter(index), ""
        except Exception as exc:
            return None, f"no NVML energy counter ({type(exc).__name__}: {exc})"
    try:
        return _RaplCounter(), ""
    except ImportError:
        return None, "RAPL needs zeus (pip install ecograph[energy])"
    except Exception as exc:
        return None, f"no RAPL counter on this machine ({type(exc).__name__})"


def measure_energy(
    fn: Callable[[], Any],
    *,
    device: str = "cpu",
    latency: LatencyStats | None = None,
    declared_power_watts: float | None = None,
    min_seconds: float = 1.0,
) -> EnergyReading:
    """Energy per call of `fn` on `device`: measured by a counter if there is one, else
    estimated from latency and `declared_power_watts`, else unavailable."""
    counter, reason = energy_counter(device)
    if counter is not None:
        try:
            fn()
            runs = 0
            e0 = counter.read()
            t0 = time.perf_counter()
            while runs < 5 or time.perf_counter() - t0 < min_seconds:
                fn()
                runs += 1
            joules = (counter.read() - e0) / runs
            return EnergyReading(joules, "measured", f"{counter.method}, {runs} runs")
        finally:
            counter.close()
    if declared_power_watts is not None and latency is not None:
        return EnergyReading(
            declared_power_watts * latency.p50_ms / 1e3,
            "estimated",
            f"p50 latency x declared power {declared_power_watts:g} W; {reason}",
        )
    return EnergyReading(None, "unavailable", f"{reason}; declare a power figure to estimate")


def grams_co2e(joules: float | None, intensity_g_per_kwh: float | None) -> float | None:
    """gCO2e for an energy in joules at a carbon intensity the user gives (g/kWh)."""
    if joules is None or intensity_g_per_kwh is None:
        return None
    return joules / 3.6e6 * intensity_g_per_kwh


def describe_machine() -> dict[str, Any]:
    """CPU model, core count, OS and GPU (if NVML sees one), for reports and benchmarks."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": None,
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount():
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
            info["gpu"] = name.decode() if isinstance(name, bytes) else name
        pynvml.nvmlShutdown()
    except Exception:
        pass
    return info
