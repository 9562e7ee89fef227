"""Tiny graphs for the training tests: a pre-norm transformer with multi-head attention and a
GELU FFN per layer, written with GraphBuilder (random weights, a fixed seed)."""

from __future__ import annotations

import numpy as np

from ecograph.ir import Graph, GraphBuilder

HIDDEN, HEADS, FFN, SEQ = 16, 4, 64, 6


def tiny_transformer(layers: int = 2, seed: int = 0, batch: int = 4) -> Graph:
    """x -> layers x [x + W_o·Attention(LN(x)·W_q, ·W_k, ·W_v); x + W_2·gelu(LN(x)·W_1 + b_1)]
    -> LN -> y. Value names are stable so that pruning keeps them."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (scale * rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    b = GraphBuilder("tiny")
    x = b.input("x", "float32", [batch, SEQ, HIDDEN])
    for i in range(layers):
        ones, zeros = np.ones(HIDDEN, np.float32), np.zeros(HIDDEN, np.float32)
        ln = b.op(
            "LayerNormalization",
            x,
            b.constant(ones + 0.1 * w(HIDDEN), f"ln{i}_g"),
            b.constant(zeros + 0.1 * w(HIDDEN), f"ln{i}_b"),
            name=f"ln{i}",
        )
        q = b.op("MatMul", ln, b.constant(w(HIDDEN, HIDDEN), f"wq{i}"))
        k = b.op("MatMul", ln, b.constant(w(HIDDEN, HIDDEN), f"wk{i}"))
        v = b.op("MatMul", ln, b.constant(w(HIDDEN, HIDDEN), f"wv{i}"))
        a = b.op("Attention", q, k, v, q_num_heads=HEADS, kv_num_heads=HEADS)
        o = b.op("MatMul", a, b.constant(w(HIDDEN, HIDDEN), f"wo{i}"))
        x = b.op("Add", x, o, name=f"h{i}_attn")
        ln2 = b.op(
            "LayerNormalization",
            x,
            b.constant(ones, f"ln{i}f_g"),
            b.constant(zeros, f"ln{i}f_b"),
            name=f"ln{i}f",
        )
        up = b.op(
            "Add",
            b.op("MatMul", ln2, b.constant(w(HIDDEN, FFN), f"w1_{i}")),
            b.constant(0.1 * w(FFN), f"b1_{i}"),
        )
        down = b.op("MatMul", b.op("Gelu", up), b.constant(w(FFN, HIDDEN, scale=2.0), f"w2_{i}"))
        x = b.op("Add", x, down, name=f"h{i}_ffn")
    ones = np.ones(HIDDEN, np.float32)
    y = b.op(
        "LayerNormalization",
        x,
        b.constant(ones, "lnf_g"),
        b.constant(np.zeros(HIDDEN, np.float32), "lnf_b"),
        name="y",
    )
    b.output(y)
    return b.graph


def feeds(seed: int, batch: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, SEQ, HIDDEN)).astype(np.float32)}
