"""Small graphs for the pruning tests, built with GraphBuilder: an MLP, a SwiGLU FFN block,
attention blocks (fused 3-D Attention, 4-D Attention with head reshapes, merged Q/K/V, GQA)
and a conv block with BatchNorm and a depthwise conv."""

from __future__ import annotations

import numpy as np

from ecograph.ir import Graph, GraphBuilder, Value


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def mlp(hidden: int = 16, seed: int = 0) -> Graph:
    """x[batch, 8] -> MatMul + bias -> Relu -> MatMul -> y[batch, 4]"""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("mlp")
    x = b.input("x", "float32", ["batch", 8])
    h = b.op("MatMul", x, b.constant(_w(rng, 8, hidden), "w1"), name="fc1")
    h = b.op("Add", h, b.constant(_w(rng, hidden), "b1"), name="fc1_bias")
    h = b.op("Relu", h, name="act")
    b.output(b.op("MatMul", h, b.constant(_w(rng, hidden, 4), "w2"), name="y"))
    return b.graph


def swiglu_block(d: int = 8, f: int = 12, seed: int = 0, fused: bool = False) -> Graph:
    """y = x + W_down(silu(W_gate x) * W_up x), x[batch, seq, d]"""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("swiglu")
    x = b.input("x", "float32", ["batch", "seq", d])
    gate = b.op("MatMul", x, b.constant(_w(rng, d, f), "w_gate"), name="gate")
    up = b.op("MatMul", x, b.constant(_w(rng, d, f), "w_up"), name="up")
    if fused:
        h = b.op("SwiGLU", gate, up, domain="ecograph", name="swiglu")
    else:
        h = b.op("Mul", b.op("Mul", gate, b.op("Sigmoid", gate)), up, name="swiglu")
    down = b.op("MatMul", h, b.constant(_w(rng, f, d), "w_down"), name="down")
    b.output(b.op("Add", x, down, name="y"))
    return b.graph


def attention_block(
    d: int = 16,
    hq: int = 4,
    hkv: int = 4,
    form: str = "3d",
    merged: bool = False,
    bias: bool = True,
    seed: int = 0,
) -> Graph:
    """y = x + W_o · Attention(W_q x, W_k x, W_v x); `form` "3d" (q_num_heads attributes) or
    "4d" (Reshape + Transpose into heads and back); `merged`: one Q/K/V MatMul and a Split."""
    rng = np.random.default_rng(seed)
    hd = d // hq
    b = GraphBuilder("attention")
    x = b.input("x", "float32", [2, 5, d])
    widths = {"q": hq * hd, "k": hkv * hd, "v": hkv * hd}
    proj: dict[str, Value] = {}
    if merged:
        w = b.constant(_w(rng, d, sum(widths.values())), "w_qkv")
        qkv = b.op("MatMul", x, w, name="qkv")
        sizes = b.constant(np.array(list(widths.values()), np.int64), "qkv_sizes")
        proj = dict(
            zip("qkv", b.op_multi("Split", qkv, sizes, axis=-1, num_outputs=3), strict=True)
        )
    else:
        for key, width in widths.items():
            p = b.op("MatMul", x, b.constant(_w(rng, d, width), f"w_{key}"), name=key)
            if bias:
                p = b.op("Add", p, b.constant(_w(rng, width), f"b_{key}"), name=f"{key}_bias")
            proj[key] = p
    if form == "3d":
        a = b.op("Attention", proj["q"], proj["k"], proj["v"], q_num_heads=hq, kv_num_heads=hkv)
    else:
        heads = {}
        for key, n in (("q", hq), ("k", hkv), ("v", hkv)):
            shape = b.constant(np.array([0, 0, n, hd], np.int64), f"{key}_heads_shape")
            r = b.op("Reshape", proj[key], shape, name=f"{key}_split")
            heads[key] = b.op("Transpose", r, perm=[0, 2, 1, 3], name=f"{key}_heads")
        a4 = b.op("Attention", heads["q"], heads["k"], heads["v"], name="attention")
        merged_shape = b.constant(np.array([0, 0, hq * hd], np.int64), "merge_shape")
        a = b.op("Reshape", b.op("Transpose", a4, perm=[0, 2, 1, 3]), merged_shape, name="merge")
    o = b.op("MatMul", a, b.constant(_w(rng, hq * hd, d), "w_o"), name="o")
    b.output(b.op("Add", x, o, name="y"))
    return b.graph


def conv_block(seed: int = 0) -> Graph:
    """Conv -> BatchNorm -> Relu -> depthwise Conv -> Relu -> 1x1 Conv -> GAP -> Flatten -> Gemm"""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("convnet")
    x = b.input("x", "float32", ["batch", 3, 8, 8])
    h = b.op("Conv", x, b.constant(_w(rng, 8, 3, 3, 3), "c1_w"), b.constant(_w(rng, 8), "c1_b"),
             pads=[1, 1, 1, 1], name="c1")  # fmt: skip
    bn = [b.constant((rng.random(8) + 0.5).astype(np.float32), f"bn_{k}") for k in ("scale",)]
    bn += [b.constant(_w(rng, 8), f"bn_{k}") for k in ("bias", "mean")]
    bn += [b.constant((rng.random(8) + 0.5).astype(np.float32), "bn_var")]
    h = b.op("Relu", b.op("BatchNormalization", h, *bn, name="bn"))
    h = b.op("Conv", h, b.constant(_w(rng, 8, 1, 3, 3), "dw_w"), group=8, pads=[1, 1, 1, 1],
             name="dw")  # fmt: skip
    h = b.op("Relu", h)
    h = b.op("Conv", h, b.constant(_w(rng, 6, 8, 1, 1), "pw_w"), name="pw")
    h = b.op("Flatten", b.op("GlobalAveragePool", h), axis=1)
    b.output(b.op("Gemm", h, b.constant(_w(rng, 6, 10), "fc_w"), b.constant(_w(rng, 10), "fc_b"),
                  name="logits"))  # fmt: skip
    return b.graph


def residual_stack(d: int = 8, f: int = 16, blocks: int = 3, seed: int = 0) -> Graph:
    """blocks x (h = h + W2 relu(W1 LayerNorm(h))), then a head: y = h W_out"""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("stack")
    h = b.input("x", "float32", ["batch", d])
    for i in range(blocks):
        n = b.op("LayerNormalization", h, b.constant(np.ones(d, np.float32), f"ln{i}_g"),
                 b.constant(np.zeros(d, np.float32), f"ln{i}_b"), name=f"ln{i}")  # fmt: skip
        u = b.op("Relu", b.op("MatMul", n, b.constant(_w(rng, d, f), f"w1_{i}")))
        u = b.op("MatMul", u, b.constant(_w(rng, f, d) * (i + 1), f"w2_{i}"), name=f"down{i}")
        h = b.op("Add", h, u, name=f"res{i}")
    b.output(b.op("MatMul", h, b.constant(_w(rng, d, 3), "w_out"), name="y"))
    return b.graph


def deep_mlp(seed: int = 0) -> Graph:
    """x[batch, 8] -> Gemm(transB) -> Tanh -> MatMul -> Gelu -> Gemm -> y[batch, 3]: the middle
    weight belongs to two groups (its rows to one, its columns to the next)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("deep_mlp")
    x = b.input("x", "float32", ["batch", 8])
    h = b.op("Gemm", x, b.constant(_w(rng, 12, 8), "w1"), b.constant(_w(rng, 12), "b1"),
             transB=1, name="fc1")  # fmt: skip
    h = b.op("MatMul", b.op("Tanh", h), b.constant(_w(rng, 12, 10), "w2"), name="fc2")
    h = b.op("Gelu", h)
    b.output(b.op("Gemm", h, b.constant(_w(rng, 10, 3), "w3"), name="y"))
    return b.graph
