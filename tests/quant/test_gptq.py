"""GPTQ on weights whose K is not a multiple of the group size (the last group is partial)."""

from __future__ import annotations

import numpy as np

from ecograph.ir.ops.quant import dequantize_linear
from ecograph.quant.gptq import gptq_quantize


def _dequantized(qt, k: int) -> np.ndarray:
    return dequantize_linear(
        qt.data, qt.scale, qt.zero_point, axis=0, block_size=qt.block_size, output_dtype=0
    )[:k]


def test_partial_last_group_quantizes_like_the_full_ones():
    rng = np.random.default_rng(3)
    k, n, group = 70, 12, 32  # groups of 32, 32 and 6 rows
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((256, k)).astype(np.float32)
    h = x.T @ x / len(x)
    qt = gptq_quantize(w, h, "int4", group_size=group)
    assert qt.data.shape == (k, n) and qt.scale.shape == (3, n) and qt.block_size == group
    # The codes are in range and the layer's output error is that of 4-bit weights (GPTQ
    # minimizes ||X W - X W_q||): well below the weights' own output norm.
    assert int(qt.data.astype(np.int64).min()) >= -8 and int(qt.data.astype(np.int64).max()) <= 7
    err = np.linalg.norm(x @ (w - _dequantized(qt, k))) / np.linalg.norm(x @ w)
    assert err < 0.15, err
    # The 6-row group has its own scales (not those of a neighbouring group).
    assert not np.allclose(qt.scale[2], qt.scale[1])
