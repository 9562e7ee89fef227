"""Lowerings of the ops fusion passes create: the ecograph-domain SiLU, Linear and SwiGLU,
and ONNX-23 Attention (3-D or 4-D, grouped-query, causal, masks).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ecograph.backends.tvm.context import (
    LowerContext,
    R,
    lowers,
)
from ecograph.backends.tvm.ops.matmul import lower_matmul
from ecograph.ir import symbolic
from ecograph.ir.types import TensorType

# ----------------------------------------------------------- fused / ecograph ops


@lowers("SiLU", domain="ecograph")
def _silu(ctx: LowerContext) -> relax.Expr:
    x = ctx.arg(0)
    return R.multiply(x, R.sigmoid(x))


@lowers("Linear", domain="ecograph")
def _linear(ctx: LowerContext) -> relax.Expr:
    y = lower_matmul(ctx)
    return R.add(y, ctx.arg(2)) if ctx.has(2) else y


@lowers("SwiGLU", domain="ecograph")
def _swiglu(ctx: LowerContext) -> relax.Expr:
    gate = ctx.arg(0)
    return R.multiply(R.multiply(gate, R.sigmoid(gate)), ctx.arg(1))


def _heads(ctx: LowerContext, x: relax.Expr, t: TensorType, heads: int) -> relax.Expr:
    """[b, s, heads*d] -> [b, heads, s, d]."""
    b, s, hidden = t.shape
    d = symbolic.floordiv(hidden, heads)
    return R.permute_dims(R.reshape(x, ctx.shape([b, s, heads, d])), [0, 2, 1, 3])


@lowers("Attention")
def _attention(ctx: LowerContext) -> relax.Expr:
    qt, kt, vt = ctx.in_type(0), ctx.in_type(1), ctx.in_type(2)
    dt = str(qt.dtype)
    q, k, v = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    three_d = qt.rank == 3
    if three_d:
        hq, hkv = ctx.attrs["q_num_heads"], ctx.attrs["kv_num_heads"]
        q, k, v = _heads(ctx, q, qt, hq), _heads(ctx, k, kt, hkv), _heads(ctx, v, vt, hkv)
        head_dim = symbolic.floordiv(qt.shape[2], hq)
    else:
        hq, hkv = qt.shape[1], kt.shape[1]
        head_dim = qt.shape[3]
    if hq != hkv:
        if not (isinstance(hq, int) and isinstance(hkv, int)):
            ctx.fail("grouped-query attention needs static head counts")
        k = R.repeat(k, hq // hkv, axis=1)
        v = R.repeat(v, hq // hkv, axis=1)
    scale = ctx.attrs["scale"]
    if scale is None:
        if not isinstance(head_dim, int):
            ctx.fail("the default scale needs a static head size")
        scale = 1.0 / float(np.sqrt(head_dim))
    scores = ctx.emit(
        R.multiply(R.matmul(q, R.permute_dims(k, [0, 1, 3, 2])), ctx.scalar(scale, dt))
    )
    neg_inf = ctx.scalar(-np.inf, dt)
    if ctx.attrs["is_causal"]:
        s_len = qt.shape[1] if three_d else qt.shape[2]
        l_len = kt.shape[1] if three_d else kt.shape[2]
        rows = R.reshape(R.arange(0, ctx.dim(s_len), 1, "int64"), ctx.shape([s_len, 1]))
        cols = R.reshape(R.arange(0, ctx.dim(l_len), 1, "int64"), ctx.shape([1, l_len]))
        scores = ctx.emit(R.where(R.less_equal(cols, rows), scores, neg_inf))
    if ctx.has(3):
        mask = ctx.arg(3)
        if ctx.in_type(3).dtype.value == "bool":
            scores = ctx.emit(R.where(mask, scores, neg_inf))
        else:
            scores = ctx.emit(R.add(scores, mask))
    # Softmax whose fully masked rows give zeros (ONNX Attention), not NaN.
    m = ctx.emit(R.max(scores, axis=-1, keepdims=True))
    m = ctx.emit(R.where(R.equal(m, neg_inf), ctx.scalar(0, dt), m))
    e = ctx.emit(R.exp(R.subtract(scores, m)))
    total = ctx.emit(R.sum(e, axis=-1, keepdims=True))
    probs = R.divide(e, R.where(R.equal(total, ctx.scalar(0, dt)), ctx.scalar(1, dt), total))
    y = ctx.emit(R.matmul(probs, v))
    if three_d:
        out = ctx.out_type()
        y = R.reshape(R.permute_dims(y, [0, 2, 1, 3]), ctx.shape(out.shape))
    return y
