"""Calibration: observe activation ranges on sample inputs and choose clipping ranges.

Methods (the `calibration=` option of the Quantize pass):
- "minmax": the observed minimum and maximum.
- "percentile:P": the P-th percentile of |x| (symmetric) or the (100-P, P) percentiles,
  from a running histogram.
- "entropy": the clipping threshold minimising the KL divergence between the float histogram
  and its quantized version (the TensorRT procedure), over 2048 bins.
- "mse": the threshold minimising the mean squared quantization error on the histogram.

Observers see data batch by batch and keep bounded state (a histogram), so calibration on
many inputs uses constant memory. `collect_ranges` runs a graph on an iterable of feeds with
the reference interpreter (or any callable returning the named values) and a progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ecograph.errors import UsageError
from ecograph.ir import Graph, interpret
from ecograph.ir.interpreter import bind_shape

BINS = 2048


class Observer:
    """Accumulates statistics of one tensor over calibration batches."""

    def __init__(self) -> None:
        self.lo = np.inf
        self.hi = -np.inf
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        xf = x.astype(np.float64).reshape(-1)
        xf = xf[np.isfinite(xf)]
        if xf.size == 0:
            return
        self.lo = min(self.lo, float(xf.min()))
        self.hi = max(self.hi, float(xf.max()))
        self.count += xf.size
        self._update(xf)

    def _update(self, x: np.ndarray) -> None:
        return None

    def range(self, symmetric: bool, dtype: str = "int8") -> tuple[float, float]:
        if self.count == 0:
            return 0.0, 0.0
        return self.lo, self.hi


class MinMaxObserver(Observer):
    pass


class _HistogramObserver(Observer):
    """A histogram of |x| on [0, amax], re-binned when a batch extends the range."""

    def __init__(self) -> None:
        super().__init__()
        self.hist = np.zeros(BINS, np.float64)
        self.amax = 0.0

    def _update(self, x: np.ndarray) -> None:
        a = np.abs(x)
        new_max = float(a.max())
        if new_max > self.amax:
            if self.amax > 0 and self.hist.sum() > 0:
                # Spread the old counts over the wider range (bin centres keep their place).
                centres = (np.arange(BINS) + 0.5) * self.amax / BINS
                self.hist, _ = np.histogram(centres, BINS, (0, new_max), weights=self.hist)
            self.amax = new_max
        if self.amax == 0:
            self.hist[0] += a.size
            return
        h, _ = np.histogram(a, BINS, (0, self.amax))
        self.hist += h

    def threshold(self, dtype: str) -> float:
        raise NotImplementedError

    def range(self, symmetric: bool, dtype: str = "int8") -> tuple[float, float]:
        if self.count == 0:
            return 0.0, 0.0
        t = self.threshold(dtype)
        lo = max(self.lo, -t)
        hi = min(self.hi, t)
        return lo, hi


class PercentileObserver(_HistogramObserver):
    def __init__(self, percentile: float) -> None:
        super().__init__()
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile {percentile} must be in (0, 100]")
        self.percentile = percentile

    def threshold(self, dtype: str) -> float:
        cdf = np.cumsum(self.hist) / max(self.hist.sum(), 1)
        idx = int(np.searchsorted(cdf, self.percentile / 100))
        return (min(idx, BINS - 1) + 1) * self.amax / BINS


def _levels(dtype: str) -> int:
    return {"int8": 128, "uint8": 256, "int4": 8, "uint4": 16}.get(dtype, 128)


class EntropyObserver(_HistogramObserver):
    def threshold(self, dtype: str) -> float:
        levels = _levels(dtype)
        hist = self.hist
        if hist.sum() == 0 or self.amax == 0:
            return self.amax
        best_i, best_kl = BINS, np.inf
        for i in range(levels, BINS + 1, 16):
            ref = hist[:i].copy()
            ref[i - 1] += hist[i:].sum()  # clip the tail into the last bin
            # Quantize the i bins into `levels` buckets, spreading each bucket uniformly
            # over its non-empty bins.
            edges = np.linspace(0, i, levels + 1).astype(int)
            cand = np.zeros(i)
            for k in range(levels):
                a, b = edges[k], max(edges[k + 1], edges[k] + 1)
                seg = hist[a:b]
                nz = seg > 0
                if nz.any():
                    cand[a:b][nz] = seg.sum() / nz.sum()
            p = ref / ref.sum()
            q = cand / max(cand.sum(), 1e-12)
            mask = p > 0
            kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
            if kl < best_kl:
                best_kl, best_i = kl, i
        return best_i * self.amax / BINS


class MseObserver(_HistogramObserver):
    def threshold(self, dtype: str) -> float:
        levels = _levels(dtype)
        hist = self.hist
        if hist.sum() == 0 or self.amax == 0:
            return self.amax
        centres = (np.arange(BINS) + 0.5) * self.amax / BINS
        best_t, best_err = self.amax, np.inf
        for i in range(max(levels // 4, 1), BINS + 1, 8):
            t = i * self.amax / BINS
            step = t / (levels - 1 if levels > 1 else 1)
            q = np.clip(np.rint(centres / step), 0, levels - 1) * step
            err = float(np.sum(hist * (centres - q) ** 2))
            if err < best_err:
                best_err, best_t = err, t
        return best_t


def make_observer(method: str) -> Observer:
    """An observer for a calibration method name (see module doc)."""
    if method == "minmax":
        return MinMaxObserver()
    if method.startswith("percentile:"):
        return PercentileObserver(float(method.split(":", 1)[1]))
    if method == "entropy":
        return EntropyObserver()
    if method == "mse":
        return MseObserver()
    raise ValueError(
        f"calibration {method!r}: expected 'minmax', 'percentile:P', 'entropy' or 'mse'"
    )


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach") and hasattr(v, "numpy"):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def calibration_feeds(graph: Graph, data: Iterable[Any]) -> list[dict[str, np.ndarray]]:
    """The calibration `data` as numpy feeds for `graph`, checked first: each batch a mapping
    {graph input name: array (numpy or torch)} naming every input of the graph and nothing
    else, of the inputs' dtypes and shapes, and at least one batch. A batch of another form
    raises UsageError (InterpreterError for a shape) naming the batch and the graph's inputs
    (ecograph.optimize converts tuples in the inputs' order first)."""
    names = [v.name for v in graph.inputs]
    feeds = []
    for i, batch in enumerate(data):
        if not isinstance(batch, Mapping):
            raise UsageError(
                f"calibration batch {i} is a {type(batch).__name__}, not a dict: give "
                f"{{input name: array}} for the graph inputs {names} "
                "(ecograph.optimize also takes tuples in that order)"
            )
        missing = [n for n in names if n not in batch]
        unknown = sorted(str(k) for k in batch if k not in names)
        if missing or unknown:
            what = [f"lacks {missing}"] if missing else []
            what += [f"has unknown {unknown}"] if unknown else []
            raise UsageError(
                f"calibration batch {i} {' and '.join(what)}; the graph inputs are {names}"
            )
        feed, env = {v.name: _to_numpy(batch[v.name]) for v in graph.inputs}, {}
        for v in graph.inputs:
            where = f"calibration batch {i}: input {v.name!r}"
            if feed[v.name].dtype != v.type.dtype.numpy:
                raise UsageError(f"{where} has dtype {feed[v.name].dtype}; expected {v.type}")
            bind_shape(where, v.type, feed[v.name].shape, env)
        feeds.append(feed)
    if not feeds:
        raise UsageError("calibration data is empty: give at least one batch of inputs")
    return feeds


def collect_ranges(
    graph: Graph,
    data: Iterable[Mapping[str, Any]],
    value_names: list[str],
    method: str = "minmax",
    *,
    runner: Callable[[dict[str, np.ndarray], list[str]], Mapping[str, np.ndarray]] | None = None,
    progress: bool = True,
) -> dict[str, Observer]:
    """Observe `value_names` over the calibration `data` (numpy or torch feeds, checked by
    `calibration_feeds`).

    `runner(feeds, names)` returns the named values; by default the reference interpreter.
    """
    from tqdm.auto import tqdm

    observers = {name: make_observer(method) for name in value_names}

    def default_runner(feeds: dict[str, np.ndarray], names: list[str]) -> Mapping[str, Any]:
        return interpret(graph, feeds, outputs=names)

    run = runner or default_runner
    batches = calibration_feeds(graph, data)
    for feeds in tqdm(batches, desc="calibrating", unit="batch", disable=not progress):
        values = run(feeds, value_names)
        for name in value_names:
            observers[name].update(np.asarray(values[name]))
    return observers
