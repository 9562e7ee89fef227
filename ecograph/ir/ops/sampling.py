"""Random ONNX ops: RandomNormal, RandomUniform, RandomNormalLike, RandomUniformLike, Bernoulli
and Multinomial.

Their result is a draw, not a function of their inputs, so they are registered `random=True`:
common-subexpression elimination never merges two of them and constant folding never computes
one ahead of time. Signatures and types come from ONNX (see `_onnx_ref.py`); the kernels are
onnx.reference's, except Multinomial, which onnx.reference lacks. A `seed` attribute makes a
kernel repeatable, as in onnx.reference; without one every run draws anew.
"""

from __future__ import annotations

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.ops._onnx_ref import register_reference_op

for _op in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli"):
    register_reference_op(_op, random=True)


def multinomial(x: np.ndarray, *, dtype: int, sample_size: int, seed: float | None) -> np.ndarray:
    """`sample_size` class indices per row of x, whose rows are unnormalized log-probabilities
    ([batch, classes] -> [batch, sample_size])."""
    state = np.random.RandomState() if seed is None else np.random.RandomState(int(seed))
    logits = x.astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    out = np.empty((x.shape[0], sample_size), dtype=np.int64)
    for row in range(x.shape[0]):
        out[row] = state.choice(x.shape[1], size=sample_size, p=probs[row])
    return out.astype(DType.from_onnx(dtype).numpy)


register_reference_op(
    "Multinomial", kernel=multinomial, kernel_source="ecograph.ir.ops.sampling", random=True
)
