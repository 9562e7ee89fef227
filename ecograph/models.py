"""Bundled default model: a small pre-norm transformer encoder block, built directly in the IR.

It is small enough for every demo and test to run quickly yet has what the passes care about:
LayerNorm, Q/K/V projections sharing an input, scaled-dot-product attention with a padding
mask, a GELU MLP and residual adds, with symbolic batch and sequence dims. `reference_block`
computes the same function in plain numpy, independently of the IR, as a cross-check.
"""

from __future__ import annotations

import numpy as np

from ecograph.ir import Graph, GraphBuilder

HIDDEN = 64
HEADS = 4
FFN = 128


def default_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    return {
        "ln1_scale": (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32),
        "ln1_bias": (0.1 * rng.standard_normal(HIDDEN)).astype(np.float32),
        "wq": w(HIDDEN, HIDDEN),
        "wk": w(HIDDEN, HIDDEN),
        "wv": w(HIDDEN, HIDDEN),
        "wo": w(HIDDEN, HIDDEN),
        "ln2_scale": (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32),
        "ln2_bias": (0.1 * rng.standard_normal(HIDDEN)).astype(np.float32),
        "w1": w(HIDDEN, FFN),
        "b1": (0.1 * rng.standard_normal(FFN)).astype(np.float32),
        "w2": w(FFN, HIDDEN),
        "b2": (0.1 * rng.standard_normal(HIDDEN)).astype(np.float32),
    }


def build_default_model(seed: int = 0) -> Graph:
    """The encoder block as an IR graph with inputs x[batch, seq, 64] and mask[batch, seq]."""
    p = default_weights(seed)
    b = GraphBuilder("encoder_block")
    x = b.input("x", "float32", ["batch", "seq", HIDDEN])
    mask = b.input("mask", "float32", ["batch", "seq"])
    c = {k: b.constant(v, k) for k, v in p.items()}
    head_dim = HIDDEN // HEADS

    h = b.op("LayerNormalization", x, c["ln1_scale"], c["ln1_bias"], axis=-1, epsilon=1e-5)
    split_heads = b.constant(np.array([0, 0, HEADS, head_dim], np.int64), "split_heads")

    def heads(weight: str) -> object:
        proj = b.op("MatMul", h, c[weight])
        return b.op("Transpose", b.op("Reshape", proj, split_heads), perm=[0, 2, 1, 3])

    q, k, v = heads("wq"), heads("wk"), heads("wv")
    scores = b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2]))
    scores = b.op("Mul", scores, b.constant(np.array(1 / np.sqrt(head_dim), np.float32), "scale"))
    # mask: 1 keeps a position, 0 hides it -> additive -1e9 bias over the key axis.
    one = b.constant(np.array(1.0, np.float32), "one")
    neg = b.constant(np.array(-1e9, np.float32), "neg")
    bias = b.op("Mul", b.op("Sub", one, mask), neg)
    bias = b.op("Unsqueeze", bias, b.constant(np.array([1, 2], np.int64), "mask_axes"))
    probs = b.op("Softmax", b.op("Add", scores, bias), axis=-1)
    ctx = b.op("Transpose", b.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    merge = b.constant(np.array([0, 0, HIDDEN], np.int64), "merge_heads")
    attn = b.op("MatMul", b.op("Reshape", ctx, merge), c["wo"])
    x1 = b.op("Add", x, attn)

    h2 = b.op("LayerNormalization", x1, c["ln2_scale"], c["ln2_bias"], axis=-1, epsilon=1e-5)
    ff = b.op("Gelu", b.op("Add", b.op("MatMul", h2, c["w1"]), c["b1"]))
    ff = b.op("Add", b.op("MatMul", ff, c["w2"]), c["b2"])
    b.output(b.op("Add", x1, ff, name="y"))
    return b.graph


def example_inputs(batch: int = 2, seq: int = 16, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.float32)
    mask[-1, seq * 3 // 4 :] = 0  # the last sequence is padded
    return {"x": rng.standard_normal((batch, seq, HIDDEN)).astype(np.float32), "mask": mask}


def reference_block(x: np.ndarray, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same function in float64 numpy, written without the IR."""
    from scipy.special import erf

    p = {k: v.astype(np.float64) for k, v in default_weights(seed).items()}
    xd = x.astype(np.float64)

    def ln(t: np.ndarray, s: np.ndarray, bias: np.ndarray) -> np.ndarray:
        mu = t.mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(t.var(-1, keepdims=True) + 1e-5) * s + bias

    bsz, seq, _ = x.shape
    hd = HIDDEN // HEADS
    h = ln(xd, p["ln1_scale"], p["ln1_bias"])

    def heads(w: np.ndarray) -> np.ndarray:
        return (h @ w).reshape(bsz, seq, HEADS, hd).transpose(0, 2, 1, 3)

    q, k, v = heads(p["wq"]), heads(p["wk"]), heads(p["wv"])
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + ((1 - mask) * -1e9)[:, None, None, :]
    s = np.exp(s - s.max(-1, keepdims=True))
    attn = (s / s.sum(-1, keepdims=True)) @ v
    x1 = xd + attn.transpose(0, 2, 1, 3).reshape(bsz, seq, HIDDEN) @ p["wo"]
    f = ln(x1, p["ln2_scale"], p["ln2_bias"]) @ p["w1"] + p["b1"]
    f = 0.5 * f * (1 + erf(f / np.sqrt(2)))
    return x1 + f @ p["w2"] + p["b2"]
