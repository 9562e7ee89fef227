"""Lowerings of the ops fusion passes create: the ecograph-domain SiLU, Linear, SwiGLU and
CacheAttention, and ONNX-23 Attention (3-D or 4-D, grouped-query, causal, masks).

Attention on CPU targets is one pre-scheduled kernel (schedules/attention.py) that never
materializes the [batch, heads, q_len, kv_len] scores nor repeats K/V for grouped-query heads.
CUDA, and the forms the kernel does not cover (float64 and bfloat16 inputs, symbolic head
counts or head sizes, statically empty dims, a mask dim that is neither 1 nor the scores dim
it lines up with), keep the Relax decomposition; on CPU the build notes say which node and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tvm import relax, tirx

from ecograph.backends.tvm.context import (
    LowerContext,
    R,
    lowers,
)
from ecograph.backends.tvm.ops.matmul import lower_matmul
from ecograph.backends.tvm.schedules.attention import (
    AttentionShape,
    CacheSlots,
    attention_kernel,
    attention_tiles,
)
from ecograph.ir import symbolic
from ecograph.ir.ops.cache_attention import canonical_dims
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
    """CPU targets: one hand-scheduled kernel (schedules/attention.py) when the node is one it
    covers (`_attention_shape`); otherwise, and on CUDA, the Relax decomposition."""
    kernel = _cpu_kernel(ctx, _attention_shape, "matmul/softmax/matmul")
    return kernel if kernel is not None else _attention_relax(ctx)


def _cpu_kernel(
    ctx: LowerContext, shape_of: Callable[[LowerContext], AttentionShape | str], instead: str
) -> relax.Expr | None:
    """The CPU attention kernel's call for the node when `shape_of` says the kernel covers
    it; None on GPUs, and None with a build note saying why and that the node is lowered as
    `instead` when it does not."""
    if ctx.target.is_gpu:
        return None
    shape = shape_of(ctx)
    if isinstance(shape, AttentionShape):
        return _attention_kernel(ctx, shape)
    ctx.notes.append(
        f"{ctx.node.op_type} {ctx.node.name}: lowered as {instead}, not the CPU attention "
        f"kernel ({shape})"
    )
    return None


def _attention_shape(ctx: LowerContext) -> AttentionShape | str:
    """The kernel's view of the node, or why the kernel does not cover it: the kernel takes
    float32 and float16 (computed in float32), static head counts and head sizes, no empty
    dim, and masks whose every dim is 1 or the scores dim it lines up with (by the IR's
    types, so symbolic dims must be the same symbol)."""
    qt, kt, vt = ctx.in_type(0), ctx.in_type(1), ctx.in_type(2)
    dtype = str(qt.dtype)
    if dtype not in ("float32", "float16"):
        return f"{dtype} inputs"
    three_d = qt.rank == 3
    if three_d:
        hq, hkv = ctx.attrs["q_num_heads"], ctx.attrs["kv_num_heads"]
        b, s_len, q_hidden = qt.shape
        l_len, v_hidden = kt.shape[1], vt.shape[2]
        hidden = (q_hidden, v_hidden)
        if not all(isinstance(x, int) for x in hidden) or q_hidden % hq or v_hidden % hkv:
            return "symbolic or uneven hidden sizes"
        head_dim, v_head_dim = q_hidden // hq, v_hidden // hkv
    else:
        b, hq, s_len, head_dim = qt.shape
        hkv, l_len, v_head_dim = kt.shape[1], kt.shape[2], vt.shape[3]
    static = (hq, hkv, head_dim, v_head_dim)
    if not all(isinstance(x, int) for x in static):
        return "symbolic head counts or head sizes"
    if kt.shape[-1] != (hkv * head_dim if three_d else head_dim):
        return f"K's last dim {kt.shape[-1]!r} is not the KV heads' Q head size"
    if 0 in (*static, b, s_len, l_len):
        return "an empty dim"
    scale = ctx.attrs["scale"]
    if scale is None:
        scale = 1.0 / float(np.sqrt(head_dim))
    dim = _KernelDims()
    mask = _mask_layout(ctx, 3, (b, hq, s_len, l_len), dim)
    if isinstance(mask, str):
        return mask
    mask_dtype, mask_shape, mask_axes = mask
    return AttentionShape(
        dtype=dtype,
        three_d=three_d,
        batch=dim(b),
        q_len=dim(s_len),
        kv_len=dim(l_len),
        q_heads=hq,
        kv_heads=hkv,
        head_dim=head_dim,
        v_head_dim=v_head_dim,
        causal=bool(ctx.attrs["is_causal"]),
        scale=float(scale),
        mask_dtype=mask_dtype,
        mask_shape=mask_shape,
        mask_axes=mask_axes,
    )


class _KernelDims:
    """IR dims -> the kernel's int64 dims: an int as a constant, each distinct symbolic dim
    one fresh var (`known`, which a caller may seed with an expression of others)."""

    def __init__(self) -> None:
        self.known: dict[object, Any] = {}

    def __call__(self, d: object) -> Any:
        if isinstance(d, int):
            return tirx.const(d, "int64")
        return self.known.setdefault(d, tirx.Var(f"n{len(self.known)}", "int64"))


def _mask_layout(
    ctx: LowerContext, index: int, scores: tuple[object, ...], dim: Any
) -> tuple[str | None, tuple[Any, ...], tuple[int | None, ...]] | str:
    """(dtype, kernel shape, `mask_axes`) of the mask input `index` against the IR's scores
    dims, (None, (), ()) without one, or why the kernel cannot line it up."""
    if not ctx.has(index):
        return None, (), ()
    mt = ctx.in_type(index)
    axes: list[int | None] = []
    for k, md in enumerate(mt.shape):
        axis = 4 - mt.rank + k
        if md == 1:
            axes.append(None)
        elif md == scores[axis]:
            axes.append(axis)
        else:
            return f"a mask dim {md!r} the kernel cannot line up with {scores[axis]!r}"
    return str(mt.dtype), tuple(dim(md) for md in mt.shape), tuple(axes)


def _attention_kernel(ctx: LowerContext, shape: AttentionShape) -> relax.Expr:
    """One call_tir of the pre-scheduled attention PrimFunc for `shape` (every input of the
    node, in order)."""
    tiles = attention_tiles(ctx.target, shape.static_rows, shape.v_head_dim, shape.head_dim)
    gv = ctx.bb.add_func(attention_kernel(shape, tiles), "attention")
    args = [ctx.arg(i) for i in range(len(ctx.node.inputs)) if ctx.has(i)]
    out = ctx.out_type()
    return relax.call_tir(gv, args, relax.TensorType(ctx.shape(out.shape), str(out.dtype)))


@lowers("CacheAttention", domain="ecograph")
def _cache_attention(ctx: LowerContext) -> relax.Expr:
    """CPU targets: the attention kernel reading the past keys and values in the cache where
    they lie; otherwise, and on CUDA, the past sliced out of the cache, concatenated with
    the new positions and the Relax decomposition of Attention."""
    instead = "slices, concatenations and matmul/softmax/matmul"
    kernel = _cpu_kernel(ctx, _cache_attention_shape, instead)
    if kernel is not None:
        return kernel
    ct, kt = ctx.in_type(1), ctx.in_type(2)
    cache, seq_axis = ctx.arg(1), ctx.attrs["seq_axis"]

    def with_past(new: relax.Expr, slot: str) -> relax.Expr:
        index = relax.const(np.int64(ctx.attrs[slot]), "int64")
        if seq_axis == 0:
            past = R.permute_dims(R.take(cache, index, axis=1), [1, 2, 0, 3])
        else:
            past = R.take(cache, index, axis=0)
        return ctx.emit(R.concat([past, new], axis=2))

    b, hkv, t, d = kt.shape
    full = TensorType(kt.dtype, [b, hkv, symbolic.add(ct.shape[seq_axis], t), d])
    kv = (with_past(ctx.arg(2), "key_index"), with_past(ctx.arg(3), "value_index"), full)
    return _attention_relax(ctx, kv=kv, mask_index=4)


def _cache_attention_shape(ctx: LowerContext) -> AttentionShape | str:
    """The kernel's view of a CacheAttention node, or why the kernel does not cover it (the
    same limits as `_attention_shape`)."""
    qt, ct = ctx.in_type(0), ctx.in_type(1)
    dtype = str(qt.dtype)
    if dtype not in ("float32", "float16"):
        return f"{dtype} inputs"
    b, hq, t, head_dim = qt.shape
    seq_axis = ctx.attrs["seq_axis"]
    slots, _, hkv, past_len, _ = canonical_dims(ct.shape, seq_axis)
    if not all(isinstance(x, int) for x in (hq, hkv, head_dim, slots)):
        return "symbolic head counts, head sizes or cache slots"
    if 0 in (hq, hkv, head_dim, b, t, past_len):
        return "an empty dim"
    dim = _KernelDims()
    past, q_len = dim(past_len), dim(t)
    kv_len = symbolic.add(past_len, t)
    dim.known.setdefault(kv_len, past + q_len)  # the mask's key dim, when it has one
    mask = _mask_layout(ctx, 4, (b, hq, t, kv_len), dim)
    if isinstance(mask, str):
        return mask
    scale = ctx.attrs["scale"]
    return AttentionShape(
        dtype=dtype,
        three_d=False,
        batch=dim(b),
        q_len=q_len,
        kv_len=past + q_len,
        q_heads=hq,
        kv_heads=hkv,
        head_dim=head_dim,
        v_head_dim=head_dim,
        causal=bool(ctx.attrs["is_causal"]),
        scale=1.0 / float(np.sqrt(head_dim)) if scale is None else float(scale),
        mask_dtype=mask[0],
        mask_shape=mask[1],
        mask_axes=mask[2],
        cache=CacheSlots(past, slots, ctx.attrs["key_index"], ctx.attrs["value_index"], seq_axis),
    )


def _attention_relax(
    ctx: LowerContext,
    *,
    kv: tuple[relax.Expr, relax.Expr, TensorType] | None = None,
    mask_index: int = 3,
) -> relax.Expr:
    """softmax(Q.K^T * scale + mask).V as Relax ops (CUDA, and what the CPU kernel does not
    cover): materializes the [batch, heads, q_len, kv_len] scores. `kv`: K and V (and K's
    type) other than the node's inputs 1 and 2; `mask_index`: the node's mask input."""
    qt, kt, vt = ctx.in_type(0), ctx.in_type(1), ctx.in_type(2)
    dt = str(qt.dtype)
    q, k, v = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    if kv is not None:
        k, v, kt = kv
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
    if ctx.has(mask_index):
        mask = ctx.arg(mask_index)
        if ctx.in_type(mask_index).dtype.value == "bool":
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
