"""GPTQ: weight quantization with second-order error compensation (Frantar et al., 2022).

Round-to-nearest quantizes each weight independently. GPTQ quantizes the rows of W [K, N]
(y = x @ W) one input dimension at a time and spreads each row's rounding error over the rows
not yet quantized, weighted by the inverse Hessian H = XᵀX of the layer's calibration inputs,
so that the layer's *outputs* on real activations change as little as possible. Groups of
`group_size` rows share a scale (and zero point), computed when the group is entered, as in
the reference implementation. The result is an ordinary blocked-quantized tensor: ONNX
DequantizeLinear(axis=0, block_size=group_size) reproduces the weights GPTQ chose.
"""

from __future__ import annotations

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.quant.scheme import QuantizedTensor, compute_qparams, qrange


def hessian(x: np.ndarray) -> np.ndarray:
    """H = 2/M · XᵀX for activations X [M, K] (float64)."""
    x64 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return 2.0 * (x64.T @ x64) / max(len(x64), 1)


def _group_params(
    block: np.ndarray, dtype: str, symmetric: bool, clip: str
) -> tuple[np.ndarray, np.ndarray]:
    qmin, qmax = qrange(dtype)
    lo, hi = block.min(axis=0), block.max(axis=0)
    best_s, best_z = compute_qparams(lo, hi, dtype, symmetric)
    if clip != "mse":
        return best_s, best_z
    best_err = None
    for factor in np.linspace(1.0, 0.5, 11):
        s, z = compute_qparams(lo * factor, hi * factor, dtype, symmetric)
        s64, z64 = s.astype(np.float64), z.astype(np.float64)
        q = np.clip(np.rint((block.astype(np.float32) / s).astype(np.float64)) + z64, qmin, qmax)
        err = (((q - z64) * s64 - block) ** 2).sum(axis=0)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, s, best_s).astype(np.float32)
        best_z = np.where(better, z, best_z).astype(best_z.dtype)
    return best_s, best_z


def gptq_quantize(
    w: np.ndarray,
    h: np.ndarray,
    dtype: str = "int4",
    *,
    symmetric: bool = False,
    group_size: int = 128,
    damp: float = 0.01,
    clip: str = "mse",
    act_order: bool = True,
) -> QuantizedTensor:
    """Quantize W [K, N] against Hessian H [K, K]; groups of `group_size` along K (the last
    group holds the K % group_size rows left over, as blocked DequantizeLinear reads it).

    `clip="mse"` picks each group's range (per column) by shrinking it towards zero while the
    round-to-nearest error of the group's weights decreases. `act_order=True` quantizes rows
    in order of decreasing H diagonal (the inputs with the most energy first), with group
    parameters fixed beforehand from the original weights ("static groups"), so the stored
    layout stays plain blocked quantization.
    """
    k, n = w.shape
    if h.shape != (k, k):
        raise ValueError(f"Hessian shape {h.shape} does not match weight rows {k}")
    if group_size <= 0:
        raise ValueError(f"group_size={group_size} must be positive")
    qmin, qmax = qrange(dtype)
    wq = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    wq[dead, :] = 0.0
    h += np.eye(k) * damp * float(np.mean(np.diag(h)))
    groups = -(-k // group_size)
    scales = np.zeros((groups, n), np.float32)
    zps = np.zeros((groups, n), DType.parse(dtype).numpy)
    if act_order:
        for g in range(groups):
            rows = slice(g * group_size, (g + 1) * group_size)
            scales[g], zps[g] = _group_params(wq[rows], dtype, symmetric, clip)
        order = np.argsort(-np.diag(h), kind="stable")
    else:
        order = np.arange(k)
    wp = wq[order]
    hp = h[np.ix_(order, order)]
    # Upper Cholesky factor of H^-1: the update coefficients of the rows still to come.
    hinv = np.linalg.cholesky(np.linalg.inv(hp)).T
    codes = np.zeros((k, n), np.int64)
    for j in range(k):
        i = int(order[j])
        g = i // group_size
        if not act_order and i % group_size == 0:
            block = wp[j : j + group_size]
            scales[g], zps[g] = _group_params(block, dtype, symmetric, clip)
        s = scales[g]
        z64 = zps[g].astype(np.float64)
        row = wp[j]
        # ONNX QuantizeLinear: round half to even of x / scale in float32, then saturate.
        q = np.clip(np.rint((row.astype(np.float32) / s).astype(np.float64)) + z64, qmin, qmax)
        codes[i] = q
        err = (row - (q - z64) * s.astype(np.float64)) / hinv[j, j]
        wp[j + 1 :] -= np.outer(hinv[j, j + 1 :], err)
    data = codes.astype(DType.parse(dtype).numpy)
    return QuantizedTensor(data, scales, zps, axis=0, block_size=group_size)
