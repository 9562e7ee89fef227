"""Palettization (dictionary coding) of weights: 1-D k-means per tensor or per group of output
channels, for `Quantize(mode="palette")` and `ecograph::PaletteDequantize`.

The k-means is deterministic and unweighted (every weight counts the same; no calibration
data): centroids start at the quantiles (i + 1/2) / k of the values, then Lloyd iterations
run until no centroid moves (at most `MAX_ITERATIONS`). In one dimension the clusters of
sorted centroids are runs of the sorted values split at the midpoints, so one iteration is a
binary search per centroid plus prefix sums. A tensor (or group) with at most k distinct values
gets those values as its palette, so it is reproduced exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecograph.ir.dtypes import DType

MAX_ITERATIONS = 50
PALETTE_BITS = (4, 8)


@dataclass
class PalettizedTensor:
    """Codes (uint4 or uint8, the weight's shape), the palette [groups, 2**bits] and how the
    groups run: `group_size` output channels along `axis` per palette (0: one palette)."""

    indices: np.ndarray
    palette: np.ndarray
    axis: int
    group_size: int

    def dequantize(self) -> np.ndarray:
        from ecograph.ir.ops.palette import palette_dequantize

        return palette_dequantize(
            self.indices, self.palette, axis=self.axis, group_size=self.group_size
        )


def kmeans_1d(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids float64 [k] ascending, codes int64 [values.size]): 1-D k-means, each value
    coded by its nearest centroid (module doc). Fewer than k distinct values: the palette is
    those values, padded with the largest one."""
    x = np.asarray(values, np.float64).reshape(-1)
    if x.size == 0:
        return np.zeros(k), np.zeros(0, np.int64)
    if not np.all(np.isfinite(x)):
        raise ValueError("k-means needs finite values (the weight holds NaN or inf)")
    order = np.sort(x)
    distinct = np.unique(order)
    if len(distinct) <= k:
        centroids = np.concatenate([distinct, np.full(k - len(distinct), distinct[-1])])
        return centroids, np.searchsorted(distinct, x).astype(np.int64)
    centroids = np.quantile(order, (np.arange(k) + 0.5) / k)
    if len(np.unique(centroids)) < k:  # heavy ties: start from the distinct values instead
        centroids = np.quantile(distinct, (np.arange(k) + 0.5) / k)
    prefix = np.concatenate([[0.0], np.cumsum(order)])
    for _ in range(MAX_ITERATIONS):
        bounds = _cluster_bounds(order, centroids)
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        # An empty cluster keeps its centroid (it stays between its neighbours' values).
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return centroids, np.searchsorted(midpoints, x, side="left").astype(np.int64)


def _cluster_bounds(order: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """int [k + 1]: cluster i is order[b[i]:b[i + 1]] (sorted values split at midpoints)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    inner = np.searchsorted(order, midpoints, side="right")
    return np.concatenate([[0], inner, [len(order)]])


def palettize_tensor(
    weight: np.ndarray, bits: int, *, axis: int = 0, group_size: int = 0
) -> PalettizedTensor:
    """`weight` as 2**bits-entry palettes: one for the tensor (`group_size=0`) or one per
    `group_size` indices along `axis` (output channels; the last group may be smaller)."""
    if bits not in PALETTE_BITS:
        raise ValueError(f"palette_bits={bits}; use one of {PALETTE_BITS}")
    w = np.asarray(weight)
    k = 1 << bits
    code_dtype = DType.UINT4.numpy if bits == 4 else DType.UINT8.numpy
    if group_size == 0:
        centroids, codes = kmeans_1d(w, k)
        return PalettizedTensor(
            codes.reshape(w.shape).astype(code_dtype),
            centroids.astype(w.dtype)[None, :],
            axis,
            0,
        )
    axis %= w.ndim
    moved = np.moveaxis(w, axis, 0)
    channels = moved.shape[0]
    codes = np.empty(moved.shape, np.int64)
    palettes = []
    for start in range(0, channels, group_size):
        part = moved[start : start + group_size]
        centroids, c = kmeans_1d(part, k)
        codes[start : start + group_size] = c.reshape(part.shape)
        palettes.append(centroids)
    return PalettizedTensor(
        np.ascontiguousarray(np.moveaxis(codes, 0, axis)).astype(code_dtype),
        np.stack(palettes).astype(w.dtype),
        axis,
        group_size,
    )


__all__ = ["MAX_ITERATIONS", "PALETTE_BITS", "PalettizedTensor", "kmeans_1d", "palettize_tensor"]
