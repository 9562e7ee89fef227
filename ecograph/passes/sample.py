"""Sample inputs for numeric checks and the comparison the differential check applies."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph
from ecograph.passes.core import CosineTolerance, Tolerance


def sample_inputs_for(
    graph: Graph, symbol_values: Mapping[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic random inputs for `graph`: floats ~N(0,1), ints in [0, 3), random bools.

    Symbolic dims take `symbol_values[name]`, else 2, 3, 4, ... in order of appearance.
    """
    rng = np.random.default_rng(seed)
    env: dict[str, int] = dict(symbol_values or {})
    counter = 2
    feeds: dict[str, np.ndarray] = {}
    for v in graph.inputs:
        dims: list[int] = []
        for d in v.shape:
            if isinstance(d, int):
                dims.append(d)
                continue
            if symbolic.is_symbol_name(d) and d not in env:
                env[d] = counter
                counter += 1
            dims.append(int(symbolic.evaluate(d, env)))
        feeds[v.name] = _random_array(rng, v.dtype, tuple(dims))
    return feeds


def _random_array(rng: np.random.Generator, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == DType.BOOL:
        return rng.random(shape) < 0.5
    if dtype.is_float:
        return rng.standard_normal(shape).astype(dtype.numpy)
    if dtype == DType.STRING:
        return np.full(shape, "a", dtype=object)
    return rng.integers(0, 3, size=shape).astype(dtype.numpy)


def compare_arrays(expected: np.ndarray, actual: np.ndarray, tolerance: Tolerance) -> str | None:
    """None if `actual` matches `expected`, else why.

    `tolerance` None: bit for bit (NaN payloads aside); (rtol, atol): element-wise;
    CosineTolerance: cosine similarity of the flattened float arrays. Non-float arrays are
    always compared exactly."""
    if expected.dtype != actual.dtype:
        return f"dtype {actual.dtype} != {expected.dtype}"
    if expected.shape != actual.shape:
        return f"shape {list(actual.shape)} != {list(expected.shape)}"
    if expected.dtype == object:
        return None if bool(np.all(expected == actual)) else "string contents differ"
    is_float = DType.from_numpy(expected.dtype).is_float
    if tolerance is None or not is_float:
        return _compare_exact(expected, actual, is_float)
    if isinstance(tolerance, CosineTolerance):
        return _compare_cosine(expected, actual, tolerance.min_cosine)
    rtol, atol = tolerance
    if DType.from_numpy(expected.dtype).bitwidth <= 16:
        rtol, atol = max(rtol, 1e-2), max(atol, 1e-2)
    e, g = expected.astype(np.float64), actual.astype(np.float64)
    with np.errstate(all="ignore"):
        close = np.isclose(g, e, rtol=rtol, atol=atol) | (np.isnan(e) & np.isnan(g))
    if bool(np.all(close)):
        return None
    bad = tuple(int(i) for i in np.argwhere(~close)[0])
    err = float(np.nanmax(np.abs(g - e)))
    return f"max abs error {err:.3g} > rtol={rtol} atol={atol} (first at {bad})"


def _compare_exact(expected: np.ndarray, actual: np.ndarray, is_float: bool) -> str | None:
    a = np.ascontiguousarray(expected).view(np.uint8)
    b = np.ascontiguousarray(actual).view(np.uint8)
    if a.tobytes() == b.tobytes():
        return None
    if not is_float:
        return "not bit-identical"
    # Bit-different NaN payloads still count as equal.
    e, g = expected.astype(np.float64), actual.astype(np.float64)
    same = (e == g) & (np.signbit(e) == np.signbit(g)) | (np.isnan(e) & np.isnan(g))
    if bool(np.all(same)):
        return None
    at = tuple(int(i) for i in np.argwhere(~same)[0])
    return f"not bit-identical: at {at} {g[at]!r} != {e[at]!r}"


def _compare_cosine(expected: np.ndarray, actual: np.ndarray, min_cosine: float) -> str | None:
    e = expected.astype(np.float64).reshape(-1)
    g = actual.astype(np.float64).reshape(-1)
    e_nan, g_nan = np.isnan(e), np.isnan(g)
    if bool(np.any(e_nan != g_nan)):
        at = int(np.argwhere(e_nan != g_nan)[0][0])
        return f"NaN where the previous stage had none or the reverse (flat index {at})"
    e, g = e[~e_nan], g[~g_nan]
    infinite = np.isinf(e) | np.isinf(g)
    if bool(np.any(e[infinite] != g[infinite])):
        at = int(np.argwhere(infinite & (e != g))[0][0])
        return f"infinite where the previous stage was not, or the reverse (non-NaN index {at})"
    e, g = e[~infinite], g[~infinite]
    with np.errstate(all="ignore"):
        denom = float(np.linalg.norm(e) * np.linalg.norm(g))
        cosine = float(e @ g) / denom if denom > 0 else float(np.array_equal(e, g))
    if cosine >= min_cosine:
        return None
    err = float(np.max(np.abs(g - e))) if e.size else 0.0
    return f"cosine {cosine:.6f} < min_cosine={min_cosine} (max abs error {err:.3g})"
