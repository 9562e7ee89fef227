"""Quantization parameters and weight quantization, with ONNX QuantizeLinear semantics.

- Symmetric int8: scale = max|x| / 127, zero point 0 (int4: / 7). Symmetric unsigned types
  centre the zero point (uint8: 128).
- Asymmetric (uint8 typically): the range is widened to include 0, scale = (max - min) / 255,
  zero point = round(qmin - min / scale) clipped to the type, so that
  x_q = round((x - min) / (max - min) · 255) up to the rounding of the zero point.
- Rounding is half-to-even and results saturate, exactly as ONNX QuantizeLinear; the actual
  quantization calls the interpreter's QuantizeLinear kernel so the two can never disagree.
- Granularity: "tensor", "channel" (one scale per slice along `axis`) or "group:N" (blocks
  of N along `axis`, ONNX blocked quantization).
- int4/uint4 constants are stored as ml_dtypes int4/uint4 arrays in the IR (one element per
  byte in memory); `pack_int4` gives the two-per-byte layout used for size accounting and
  export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.ops.quant import (
    QUANT_RANGES,
    dequantize_linear,
    quantize_linear,
)

SUPPORTED = ("int8", "uint8", "int4", "uint4")


@dataclass(frozen=True)
class Granularity:
    kind: str  # "tensor" | "channel" | "group"
    group_size: int = 0

    @classmethod
    def parse(cls, text: str) -> Granularity:
        if text in ("tensor", "channel"):
            return cls(text)
        if text.startswith("group:"):
            size = text.split(":", 1)[1]
            if size.isdigit() and int(size) > 0:
                return cls("group", int(size))
        raise ValueError(f"granularity {text!r}: expected 'tensor', 'channel' or 'group:N'")

    def __str__(self) -> str:
        return f"group:{self.group_size}" if self.kind == "group" else self.kind


def qrange(dtype: str | DType) -> tuple[int, int]:
    d = DType.parse(dtype)
    if d not in QUANT_RANGES:
        raise ValueError(f"cannot quantize to {d}; supported: {', '.join(SUPPORTED)}")
    return QUANT_RANGES[d]


def compute_qparams(
    lo: np.ndarray | float, hi: np.ndarray | float, dtype: str, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero point of `dtype`) for observed ranges [lo, hi] (elementwise)."""
    qmin, qmax = qrange(dtype)
    lo_a = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi_a = np.maximum(np.asarray(hi, np.float64), 0.0)
    qdtype = DType.parse(dtype).numpy
    if symmetric:
        absmax = np.maximum(np.abs(lo_a), np.abs(hi_a))
        if qmin < 0:
            scale = absmax / qmax
            zp = np.zeros(scale.shape, np.int64)
        else:
            half = (qmax - qmin) / 2
            scale = absmax / half
            zp = np.full(scale.shape, (qmax + qmin + 1) // 2, np.int64)
    else:
        scale = (hi_a - lo_a) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.rint(qmin - lo_a / safe), qmin, qmax).astype(np.int64)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return scale, zp.astype(qdtype)


def _reduce_range(
    w: np.ndarray, axis: int, granularity: Granularity
) -> tuple[np.ndarray, np.ndarray, int]:
    """Min and max per quantization group, shaped as ONNX expects the scale; returns
    (lo, hi, block_size)."""
    axis = axis % w.ndim if w.ndim else 0
    if granularity.kind == "tensor" or w.ndim == 0:
        return np.asarray(w.min()), np.asarray(w.max()), 0
    if granularity.kind == "channel":
        other = tuple(i for i in range(w.ndim) if i != axis)
        return w.min(axis=other), w.max(axis=other), 0
    size = granularity.group_size
    n = w.shape[axis]
    groups = -(-n // size)
    pad = groups * size - n
    moved = np.moveaxis(w, axis, 0)
    if pad:
        edge = np.repeat(moved[-1:], pad, axis=0)  # repeating a value changes no min or max
        moved = np.concatenate([moved, edge], axis=0)
    blocks = moved.reshape(groups, size, *moved.shape[1:])
    lo = np.moveaxis(blocks.min(axis=1), 0, axis)
    hi = np.moveaxis(blocks.max(axis=1), 0, axis)
    return lo, hi, size


@dataclass
class QuantizedTensor:
    """A quantized array with the parameters that dequantize it (ONNX DequantizeLinear)."""

    data: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int
    block_size: int

    def dequantize(self) -> np.ndarray:
        return dequantize_linear(
            self.data,
            self.scale,
            self.zero_point,
            axis=self.axis,
            block_size=self.block_size,
            output_dtype=0,
        )

    @property
    def nbytes(self) -> int:
        """Storage bytes: packed data (int4 two per byte) plus scales and zero points."""
        bits = DType.from_numpy(self.data.dtype).bitwidth
        data = (self.data.size * bits + 7) // 8
        zp_bits = DType.from_numpy(self.zero_point.dtype).bitwidth
        return data + self.scale.nbytes + (self.zero_point.size * zp_bits + 7) // 8


def quantize_tensor(
    w: np.ndarray,
    dtype: str = "int8",
    *,
    symmetric: bool = True,
    granularity: str | Granularity = "tensor",
    axis: int = 0,
    clip: str = "minmax",
) -> QuantizedTensor:
    """Quantize a float array with ranges taken from the array itself (weights).

    `clip="mse"` shrinks each group's range by the factor (from 1.0 down to 0.5) that
    minimises the group's squared reconstruction error: clipping a few outliers buys finer
    steps for everything else, which matters most at 4 bits.
    """
    gran = Granularity.parse(granularity) if isinstance(granularity, str) else granularity
    if w.dtype.kind != "f":
        raise ValueError(f"can only quantize float arrays, got {w.dtype}")
    if clip not in ("minmax", "mse"):
        raise ValueError(f"clip={clip!r}: expected 'minmax' or 'mse'")
    wf = w.astype(np.float32)
    lo, hi, block = _reduce_range(wf, axis, gran)
    q_axis = axis if gran.kind != "tensor" else 1

    scale, zp = compute_qparams(lo, hi, dtype, symmetric)
    if clip == "mse" and wf.size:
        factor = mse_clip_factors(wf, lo, hi, dtype, symmetric, axis, gran, block)
        scale, zp = compute_qparams(lo * factor, hi * factor, dtype, symmetric)
    q = quantize_linear(
        wf, scale, zp, axis=axis, block_size=block, output_dtype=0, precision=0, saturate=1
    )
    return QuantizedTensor(q, scale, zp, q_axis, block)


MSE_FACTORS = (1.0, *np.linspace(0.95, 0.5, 10).tolist())


def mse_clip_factors(
    wf: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    dtype: str,
    symmetric: bool,
    axis: int,
    gran: Granularity,
    block: int,
) -> np.ndarray:
    """Per group (shaped like `lo`), the factor of MSE_FACTORS whose shrunk range gives the
    least squared reconstruction error (the first on a tie). The error of each factor is
    computed as QuantizeLinear then DequantizeLinear would round (float32 division,
    round-half-even, saturation, (q - z) * s in float32), in plain float32 arrays: the
    reference kernels' 4-bit dtype conversions made this search take minutes for a 1B-param
    model. The weights are viewed as [groups, size, ...] so the scales broadcast without
    being repeated to the weights' shape; a group whose scale is 0 (all its weights are 0)
    reconstructs 0. The caller quantizes once, with the reference kernel, at the chosen
    range."""
    qmin, qmax = QUANT_RANGES[DType.parse(dtype)]
    view, expand, group_sum = _grouped(wf, axis, gran, np.shape(lo))
    best_err: np.ndarray | None = None
    best = np.ones(np.shape(lo), np.float32)
    for factor in MSE_FACTORS:
        scale, zp = compute_qparams(lo * factor, hi * factor, dtype, symmetric)
        s = expand(np.asarray(scale, np.float32))
        z = expand(np.asarray(zp).astype(np.float32))
        q = np.rint(view / np.where(s == 0, np.float32(1), s))
        q += z
        np.clip(q, qmin, qmax, out=q)
        q -= z
        q *= s  # the reconstruction, (q - z) * s
        diff = q.astype(np.float64)
        diff -= view
        np.square(diff, out=diff)
        err = group_sum(diff)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, np.float32(factor), best)
    return best


def _grouped(
    wf: np.ndarray, axis: int, gran: Granularity, shape: tuple[int, ...]
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """(weights viewed by group, a function broadcasting a scale-shaped array against that
    view, a function summing a view-shaped array per group back to the scale's shape)."""
    if gran.kind == "tensor" or wf.ndim == 0:
        return wf, lambda p: p, lambda e: np.asarray(e.sum())
    axis = axis % wf.ndim
    if gran.kind == "channel":
        other = tuple(i for i in range(wf.ndim) if i != axis)
        dims = [1] * wf.ndim
        dims[axis] = -1
        return wf, lambda p: p.reshape(dims), lambda e: e.sum(axis=other)
    size, groups = gran.group_size, shape[axis]
    moved = np.moveaxis(wf, axis, 0)
    pad = groups * size - moved.shape[0]
    if pad:  # zero weights reconstruct exactly: the padding adds no error
        moved = np.concatenate([moved, np.zeros((pad, *moved.shape[1:]), wf.dtype)], axis=0)
    view = moved.reshape(groups, size, *moved.shape[1:])

    def expand(p: np.ndarray) -> np.ndarray:
        return np.expand_dims(np.moveaxis(p, axis, 0), 1)

    def group_sum(e: np.ndarray) -> np.ndarray:
        return np.moveaxis(e.sum(axis=1), 0, axis)

    return view, expand, group_sum


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte, the first in the low nibble (ONNX's layout)."""
    flat = q.reshape(-1).astype(np.int64) & 0xF
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int64)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, shape: tuple[int, ...], signed: bool) -> np.ndarray:
    """Inverse of `pack_int4`."""
    lo = packed & 0xF
    hi = packed >> 4
    flat = np.stack([lo, hi], axis=1).reshape(-1)[: int(np.prod(shape, dtype=np.int64))]
    vals = flat.astype(np.int64)
    if signed:
        vals = np.where(vals >= 8, vals - 16, vals)
        return vals.astype(DType.INT4.numpy).reshape(shape)
    return vals.astype(DType.UINT4.numpy).reshape(shape)
