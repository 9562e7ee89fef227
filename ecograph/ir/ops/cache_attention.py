"""`ecograph::CacheAttention`: attention whose keys and values begin with a stored KV cache.

    CacheAttention(Q, cache, K, V[, mask]) {key_index, value_index, scale, is_causal, seq_axis}
      = Attention(Q, Concat(past(key_index), K), Concat(past(value_index), V), mask)

The cache holds `slots` tensors of [batch, kv_heads, past_len, head_dim] (slot `key_index`
this layer's keys, `value_index` its values), laid out as `seq_axis` says:

    seq_axis 0 (sequence first): [past_len, slots, batch, kv_heads, head_dim]
        past(i) = Transpose(Gather(cache, i, axis=1), [1, 2, 0, 3])
        A cache that grows by one position per step is then a compact view of the start of
        one buffer (what a GPU build takes: TVM makes compact views of device memory only).
    seq_axis 3 (head major): [slots, batch, kv_heads, past_len, head_dim]
        past(i) = Gather(cache, i, axis=0)
        Each head's positions are contiguous, the layout attention reads fastest (CPU builds:
        the first past_len positions of a longer buffer are a strided view, which the CPU
        kernel reads in place).

Q is [batch, q_heads, q_len, head_dim], K and V the new positions [batch, kv_heads, q_len,
head_dim]. The fusion (passes/attention.py, fuse-cache-attention) replaces the Gather /
(Transpose /) Concat that copy the cache per layer and step; a backend reads the cache where
it lies. The reference kernel builds the concatenation and calls Attention's, so the fused
graph computes exactly what it replaced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.ops.fused import attention, check_attention_mask, check_head_groups, qk_pv_macs
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.types import TensorType

if TYPE_CHECKING:
    from ecograph.ir.graph import Node

T = TypeVar("T")
SEQ_AXES = (0, 3)  # the cache layouts: sequence first, head major
CACHE_LAYOUTS = {
    0: "[past_len, slots, batch, kv_heads, head_dim]",
    3: "[slots, batch, kv_heads, past_len, head_dim]",
}


def _known_differ(a: object, b: object) -> bool:
    return isinstance(a, int) and isinstance(b, int) and a != b


def _infer(ctx: InferContext) -> list[TensorType]:
    q, cache, k, v = ctx.input(0), ctx.input(1), ctx.input(2), ctx.input(3)
    axis = ctx.attr("seq_axis")
    if axis not in SEQ_AXES:
        ctx.fail(f"seq_axis must be 0 (sequence first) or 3 (head major), got {axis!r}")
    if (q.rank, cache.rank, k.rank, v.rank) != (4, 5, 4, 4):
        ctx.fail(
            "Q, K, V must be rank 4 ([batch, heads, seq, head_dim]) and the cache rank 5 "
            f"({CACHE_LAYOUTS[axis]}); got {q}, {cache}, {k}, {v}"
        )
    if len({q.dtype, cache.dtype, k.dtype, v.dtype}) != 1:
        ctx.fail(f"Q, cache, K, V dtypes differ: {q.dtype}, {cache.dtype}, {k.dtype}, {v.dtype}")
    slots, batch, kv_heads, past_len, head_dim = canonical_dims(cache.shape, axis)
    for name in ("key_index", "value_index"):
        index = ctx.attr(name)
        if not isinstance(index, int) or index < 0:
            ctx.fail(f"{name} must be a cache slot (an int >= 0), got {index!r}")
        if isinstance(slots, int) and index >= slots:
            ctx.fail(f"{name} {index} is beyond the cache's {slots} slots")
    checks = [
        ("batch", [q.shape[0], k.shape[0], v.shape[0], batch]),
        ("kv heads", [k.shape[1], v.shape[1], kv_heads]),
        ("q_len", [q.shape[2], k.shape[2], v.shape[2]]),
        ("head_dim", [q.shape[3], k.shape[3], v.shape[3], head_dim]),
    ]
    for what, dims in checks:
        if any(_known_differ(a, b) for a in dims for b in dims):
            ctx.fail(f"Q, cache, K, V disagree on {what}: {q}, {cache}, {k}, {v}")
    hq = q.shape[1]
    check_head_groups(ctx, hq, kv_heads)
    scores = [q.shape[0], hq, q.shape[2], symbolic.add(past_len, q.shape[2])]
    check_attention_mask(ctx, 4, scores, q.dtype)
    return [make_type(q.dtype, [q.shape[0], hq, q.shape[2], v.shape[3]])]


def canonical_dims(shape: Sequence[T], seq_axis: int) -> tuple[T, ...]:
    """A cache's dims as (slots, batch, kv_heads, past_len, head_dim) whatever its layout."""
    dims = list(shape)
    dims.insert(3, dims.pop(seq_axis))
    return tuple(dims)


def _macs(node: Node, bindings: Mapping[str, int]) -> int | None:
    """Q·Kᵀ and P·V over past_len + q_len keys: 2 · (elements of Q) · keys."""
    q, cache = node.inputs[0], node.inputs[1]
    assert q is not None and cache is not None
    past_len = cache.shape[node.attr("seq_axis")]
    return qk_pv_macs(q, symbolic.add(past_len, q.shape[2]), bindings)


def past(cache: np.ndarray, index: int, seq_axis: int = 0) -> np.ndarray:
    """Slot `index` of the cache as [batch, kv_heads, past_len, head_dim]."""
    return np.moveaxis(cache, seq_axis, 3)[index]


@register_op(
    "CacheAttention",
    domain="ecograph",
    inputs=["Q", "cache", "K", "V", "attn_mask?"],
    outputs=["Y"],
    attrs={
        "key_index": Attr("int", None),
        "value_index": Attr("int", None),
        "scale": Attr("float", None),
        "is_causal": Attr("int", 0),
        "seq_axis": Attr("int", 0),
    },
    infer=_infer,
    macs=_macs,
)
def cache_attention(
    q: np.ndarray,
    cache: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None = None,
    *,
    key_index: int,
    value_index: int,
    scale: float | None,
    is_causal: int,
    seq_axis: int = 0,
) -> np.ndarray:
    """Attention over the cache's past keys and values followed by K and V (module doc)."""
    keys = np.concatenate([past(cache, key_index, seq_axis), k], axis=2)
    values = np.concatenate([past(cache, value_index, seq_axis), v], axis=2)
    return attention(
        q,
        keys,
        values,
        attn_mask,
        is_causal=is_causal,
        kv_num_heads=None,
        q_num_heads=None,
        qk_matmul_output_mode=0,
        scale=scale,
        softcap=0.0,
        softmax_precision=None,
    )
