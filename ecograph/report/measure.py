"""Latency and energy measurement, each number labelled with how it was obtained.

Energy comes from hardware counters where they exist: NVIDIA GPUs through NVML's total-energy
counter (nvidia-ml-py, or zeus when installed), CPUs through RAPL via zeus (when the kernel
exposes /sys/class/powercap). Where no counter exists, energy is *estimated* as latency times
a power figure the caller declares, and says so; with no declared power it is reported as
unavailable rather than guessed. Measured and estimated numbers are never mixed silently.

`measure_run` is the one way a report measures a model: the original build, the optimized
build and the source-framework baseline (`framework_runner`: torch eager for a torch module,
ONNX Runtime for an ONNX model, i.e. the model as its user runs it today) all go through it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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
            m = self._cpus.get_total_energy_consumption(i)
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


# How every report run is measured (original, optimized and framework baseline alike).
RUN_WARMUP = 2
RUN_REPEAT = 10


def measure_run(
    fn: Callable[[], Any], *, device: str, declared_power_watts: float | None = None
) -> tuple[LatencyStats, EnergyReading]:
    """Latency and energy per call of `fn` on `device`, the same way for every run a report
    compares (RUN_WARMUP warm-up calls, RUN_REPEAT timed calls, then `measure_energy`)."""
    latency = measure_latency(fn, warmup=RUN_WARMUP, repeat=RUN_REPEAT)
    energy = measure_energy(
        fn, device=device, latency=latency, declared_power_watts=declared_power_watts
    )
    return latency, energy


@dataclass(frozen=True)
class FrameworkRunner:
    """The model run as its user runs it today: `name` ("torch eager", "ONNX Runtime"),
    `detail` (version, device, provider) and `run`, one inference on the example inputs."""

    name: str
    detail: str
    run: Callable[[], Any]


@contextmanager
def framework_runner(
    model: Any, example_inputs: Any, feeds: Mapping[str, Any], device: str
) -> Iterator[FrameworkRunner | str]:
    """Yield a FrameworkRunner for `model` on `device` ("cpu" or "cuda"), or a string saying
    why there is none (an ecograph Graph has no source framework; torch without CUDA for a
    CUDA target; ...). `feeds` are the example inputs as numpy arrays by graph input name.

    A torch module runs in eval mode under torch.inference_mode() (each submodule's training
    flag is restored on exit); on CUDA a copy of it is moved to the GPU and every call
    synchronizes. An ONNX model runs in an InferenceSession with default session options."""
    if _is_torch_module(model):
        with _torch_runner(model, example_inputs, device) as runner:
            yield runner
        return
    if isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        yield _onnx_runner(model, feeds, device)
        return
    yield (
        f"the model was given as a {type(model).__name__}, not a torch module or an ONNX model: "
        "there is no source framework to compare with"
    )


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


@contextmanager
def _torch_runner(model: Any, example_inputs: Any, device: str) -> Iterator[FrameworkRunner | str]:
    import copy

    import numpy as np
    import torch

    if example_inputs is None:
        yield "no example inputs to run the torch module on"
        return
    if device.startswith("cuda") and not torch.cuda.is_available():
        yield "the target is CUDA and torch sees no CUDA device here"
        return

    def to_device(v: Any) -> Any:
        t = torch.from_numpy(v) if isinstance(v, np.ndarray) else v
        return t.to(device) if isinstance(t, torch.Tensor) else t

    if isinstance(example_inputs, Mapping):
        args: tuple[Any, ...] = ()
        kwargs = {k: to_device(v) for k, v in example_inputs.items()}
    else:
        seq = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        args, kwargs = tuple(to_device(v) for v in seq), {}
    module = copy.deepcopy(model).to(device) if device.startswith("cuda") else model
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else None

    def run() -> Any:
        with torch.inference_mode():
            out = module(*args, **kwargs)
        if sync is not None:
            sync()
        return out

    detail = f"torch {torch.__version__} eager, inference_mode, {device}"
    if device == "cpu":
        detail += f", {torch.get_num_threads()} threads"
    try:
        yield FrameworkRunner("torch eager", detail, run)
    finally:
        for m, training in flags:
            m.training = training


def _onnx_runner(model: Any, feeds: Mapping[str, Any], device: str) -> FrameworkRunner | str:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime)"
    provider = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return f"this onnxruntime build has no {provider} for a {device} target"
    source = (
        os.fspath(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    )
    try:
        session = ort.InferenceSession(source, providers=[provider])
    except Exception as exc:
        return f"ONNX Runtime could not load the model ({type(exc).__name__}: {exc})"
    names = [i.name for i in session.get_inputs()]
    if all(n in feeds for n in names):
        ort_feeds = {n: feeds[n] for n in names}
    elif len(names) == len(feeds):  # same inputs under sanitized names: match by position
        ort_feeds = dict(zip(names, feeds.values(), strict=True))
    else:
        return f"ONNX Runtime wants inputs {names}; the example inputs are {list(feeds)}"
    return FrameworkRunner(
        "ONNX Runtime",
        f"onnxruntime {ort.__version__}, {provider}, default session options",
        lambda: session.run(None, ort_feeds),
    )


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
