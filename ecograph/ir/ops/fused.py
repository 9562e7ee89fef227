"""Ops that fusion passes produce: ONNX-23 `Attention` and the ecograph-domain SiLU / SwiGLU.

Standard ONNX ops are preferred where they exist (Gelu, LayerNormalization and RMSNormalization
are registered with the other ONNX ops). ONNX-23 `Attention` lives here because only fusions
create it. The ecograph domain holds what ONNX-23 lacks: `SiLU` (x·sigmoid(x)) and `SwiGLU`
(silu(gate)·up).

The Attention kernel mirrors the decomposition the fusion replaces (Q·Kᵀ in the input dtype,
scale, mask, softmax, ·V), so a fused graph and its unfused form agree to rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.ops._infer import broadcast_infer, broadcast_shapes, same_as_input
from ecograph.ir.ops.elementwise import sigmoid
from ecograph.ir.ops.nn import matmul, matmul_macs, matmul_shape
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.types import TensorType

if TYPE_CHECKING:
    from ecograph.ir.graph import Node, Value
    from ecograph.ir.symbolic import Dim

# ------------------------------------------------------------------- attention


def _attention_infer(ctx: InferContext) -> list[TensorType]:
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    if not (q.rank == k.rank == v.rank) or q.rank not in (3, 4):
        ctx.fail(f"Q, K, V must all be rank 3 or 4; got {q}, {k}, {v}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        ctx.fail(f"Q, K, V dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if ctx.has_input(4) or ctx.has_input(5):
        ctx.fail("past_key / past_value are not supported by ecograph's Attention kernel yet")
    if ctx.num_outputs > 1:
        ctx.fail("only output Y is supported (no present_key/present_value/qk output)")
    if ctx.attr("softcap") not in (0, 0.0) or ctx.attr("qk_matmul_output_mode") != 0:
        ctx.fail("softcap and qk_matmul_output_mode are not supported")
    if q.rank == 4:
        if ctx.attr("q_num_heads") is not None or ctx.attr("kv_num_heads") is not None:
            ctx.fail("q_num_heads / kv_num_heads must not be set for 4-D inputs")
        check_head_groups(ctx, q.shape[1], k.shape[1])
        check_attention_mask(ctx, 3, [q.shape[0], q.shape[1], q.shape[2], k.shape[2]], q.dtype)
        return [make_type(q.dtype, [q.shape[0], q.shape[1], q.shape[2], v.shape[3]])]
    qh, kvh = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    if qh is None or kvh is None:
        ctx.fail("3-D inputs need q_num_heads and kv_num_heads")
    v_hidden = v.shape[2]
    out_hidden = v_hidden * qh // kvh if isinstance(v_hidden, int) else None
    return [make_type(q.dtype, [q.shape[0], q.shape[1], out_hidden])]


def check_head_groups(ctx: InferContext, q_heads: Dim, kv_heads: Dim) -> None:
    """Q's heads must be a whole number of KV heads (grouped-query attention) where known."""
    if (
        isinstance(q_heads, int)
        and isinstance(kv_heads, int)
        and (kv_heads == 0 or q_heads % kv_heads)
    ):
        ctx.fail(f"q heads {q_heads} are not a multiple of kv heads {kv_heads}")


def check_attention_mask(ctx: InferContext, index: int, scores: list[Dim], dtype: DType) -> None:
    """The mask input `index`, if any: rank <= 4, broadcasting to the scores
    [batch, q heads, q_len, kv_len], bool or the inputs' `dtype`."""
    if not ctx.has_input(index):
        return
    m = ctx.input(index)
    if m.rank > 4:
        ctx.fail(f"attn_mask {m} has rank > 4")
    broadcast_shapes([scores, m.shape], f"node {ctx.node.name}: attn_mask: ")
    if m.dtype not in (DType.BOOL, dtype):
        ctx.fail(f"attn_mask must be bool or {dtype}, got {m.dtype}")


def qk_pv_macs(q: Value, keys: Dim, bindings: Mapping[str, int]) -> int:
    """Q·Kᵀ and P·V: 2 · (elements of Q) · keys."""
    return (
        2
        * symbolic.evaluate(symbolic.product(q.shape), bindings)
        * symbolic.evaluate(keys, bindings)
    )


def _to_heads(x: np.ndarray, heads: int) -> np.ndarray:
    b, s, hidden = x.shape
    return x.reshape(b, s, heads, hidden // heads).transpose(0, 2, 1, 3)


def _softmax_last(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis as the registry's Softmax computes it, except that a row
    that is entirely -inf gives zeros (ONNX Attention's convention) instead of NaN."""
    xd = x.astype(np.float64)
    m = np.max(xd, axis=-1, keepdims=True) if xd.shape[-1] else np.zeros((*xd.shape[:-1], 1))
    all_masked = np.isneginf(m)
    m = np.where(all_masked, 0.0, m)
    with np.errstate(all="ignore"):
        e = np.exp(xd - m)
        s = e.sum(axis=-1, keepdims=True)
        y = e / np.where(s == 0, 1.0, s)
    return y.astype(x.dtype)


def _attention_macs(node: Node, bindings: Mapping[str, int]) -> int | None:
    """Q·Kᵀ and P·V: 2 · (elements of Q) · kv_seq, for 4-D (B, H, S, D) and for 3-D
    (B, S, H·D) inputs alike."""
    q, k = node.inputs[0], node.inputs[1]
    assert q is not None and k is not None
    if q.type.rank == 4 and k.type.rank == 4:
        kv_seq = k.shape[2]
    elif q.type.rank == 3 and k.type.rank == 3:
        kv_seq = k.shape[1]
    else:
        return None
    return qk_pv_macs(q, kv_seq, bindings)


@register_op(
    "Attention",
    inputs=["Q", "K", "V", "attn_mask?", "past_key?", "past_value?"],
    outputs=["Y", "present_key?", "present_value?", "qk_matmul_output?"],
    attrs={
        "is_causal": Attr("int", 0),
        "kv_num_heads": Attr("int", None),
        "q_num_heads": Attr("int", None),
        "qk_matmul_output_mode": Attr("int", 0),
        "scale": Attr("float", None),
        "softcap": Attr("float", 0.0),
        "softmax_precision": Attr("int", None),
    },
    infer=_attention_infer,
    macs=_attention_macs,
)
def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None = None,
    past_key: np.ndarray | None = None,
    past_value: np.ndarray | None = None,
    *,
    is_causal: int,
    kv_num_heads: int | None,
    q_num_heads: int | None,
    qk_matmul_output_mode: int,
    scale: float | None,
    softcap: float,
    softmax_precision: int | None,
) -> np.ndarray:
    """ONNX-23 Attention (4-D or 3-D inputs, GQA, additive or boolean mask, causal).

    softmax(Q·Kᵀ·scale + mask)·V, computed in the input dtype like the decomposed graph
    (Softmax in float64 as the registry's Softmax does).
    """
    three_d = q.ndim == 3
    if three_d:
        assert q_num_heads is not None and kv_num_heads is not None
        q, k, v = _to_heads(q, q_num_heads), _to_heads(k, kv_num_heads), _to_heads(v, kv_num_heads)
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        k = np.repeat(k, hq // hkv, axis=1)
        v = np.repeat(v, hq // hkv, axis=1)
    if scale is None:
        scale = 1.0 / float(np.sqrt(q.shape[3]))
    dtype = q.dtype
    scores = matmul(q, np.swapaxes(k, -1, -2))
    with np.errstate(all="ignore"):
        scores = (scores * np.asarray(scale, dtype)).astype(dtype)
        if is_causal:
            s_len, l_len = scores.shape[-2], scores.shape[-1]
            allowed = np.arange(l_len)[None, :] <= np.arange(s_len)[:, None]
            scores = np.where(allowed, scores, np.asarray(-np.inf, dtype)).astype(dtype)
        if attn_mask is not None:
            if attn_mask.dtype == np.bool_:
                scores = np.where(attn_mask, scores, np.asarray(-np.inf, dtype)).astype(dtype)
            else:
                scores = (scores + attn_mask).astype(dtype)
    probs = _softmax_last(scores)
    y = matmul(probs, v)
    if three_d:
        b, h, s, d = y.shape
        y = y.transpose(0, 2, 1, 3).reshape(b, s, h * d)
    return y.astype(dtype)


# ------------------------------------------------------------ ecograph activations


@register_op("SiLU", domain="ecograph", inputs=["X"], outputs=["Y"], infer=same_as_input(0))
def silu(x: np.ndarray) -> np.ndarray:
    """SiLU / swish: x · sigmoid(x), as Mul(x, Sigmoid(x)) computes it in x's dtype."""
    with np.errstate(all="ignore"):
        return (x * sigmoid(x)).astype(x.dtype)


@register_op(
    "SwiGLU", domain="ecograph", inputs=["gate", "up"], outputs=["Y"], infer=broadcast_infer()
)
def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """SwiGLU's gating: silu(gate) · up (the projections stay separate MatMuls)."""
    with np.errstate(all="ignore"):
        return (silu(gate) * up).astype(gate.dtype)


# ------------------------------------------------------------------ fused linear


def _linear_infer(ctx: InferContext) -> list[TensorType]:
    x, w = ctx.input(0), ctx.input(1)
    if w.rank != 2 or x.dtype != w.dtype:
        ctx.fail(f"Linear takes a 2-D weight of the input's dtype, got {x} and {w}")
    if ctx.has_input(2):
        b = ctx.input(2)
        if b.rank != 1 or b.dtype != x.dtype or b.shape[0] != w.shape[1]:
            ctx.fail(f"bias {b} does not match the weight's output dim {w.shape[1]}")
    return [TensorType(x.dtype, matmul_shape(ctx, x, w))]


@register_op(
    "Linear",
    domain="ecograph",
    inputs=["X", "W", "B?"],
    outputs=["Y"],
    infer=_linear_infer,
    macs=matmul_macs,
)
def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Linear(x, W, b) = MatMul(x, W) + b for any rank of x, bit-identical to the two ops
    (the same matmul kernel, then the same Add)."""
    y = matmul(x, w)
    if b is None:
        return y
    with np.errstate(all="ignore"):
        return np.add(y, b).astype(x.dtype, copy=False)
