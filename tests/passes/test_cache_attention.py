"""fuse-cache-attention and ecograph::CacheAttention: attention over a KV cache (sequence first
or head major) read where it lies. The rewrite is exact (the interpreter's numbers before and
after are the same bits), declines what it cannot express, and the op's checks name the
node."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ecograph.errors import EcographError
from ecograph.ir import Graph, GraphBuilder, interpret
from ecograph.passes import PassManager
from ecograph.passes.attention import FuseCacheAttention
from ecograph.passes.testing import check_no_change, check_rewrite

RNG = np.random.default_rng(11)
LAYERS, B, HQ, HKV, D = 2, 2, 4, 2, 8


def decode_graph(
    *,
    mask: bool = True,
    index: int | None = None,
    index_input: bool = False,
    expose_keys: bool = False,
    symbolic: bool = True,
    t: int = 1,
    head_major: bool = False,
) -> Graph:
    """A decode step's attention as compile_lm captures it: cache [S, 2 * layers, B, HKV, D]
    (keys in slots 0.., values in slots layers..), each layer's past keys and values gathered
    and transposed, then concatenated with the new positions; `head_major`: cache [2 *
    layers, B, HKV, S, D], each layer's past keys and values gathered along axis 0."""
    b = GraphBuilder("decode")
    s = "S" if symbolic else 5
    shape = [2 * LAYERS, B, HKV, s, D] if head_major else [s, 2 * LAYERS, B, HKV, D]
    cache = b.input("cache", "float32", shape)
    m = b.input("mask", "bool", [1, 1, t, f"S+{t}" if symbolic else 5 + t]) if mask else None
    slot_input = b.input("slot", "int64", []) if index_input else None
    outs = []
    for layer in range(LAYERS):
        q = b.input(f"q{layer}", "float32", [B, HQ, t, D])
        k = b.input(f"k{layer}", "float32", [B, HKV, t, D])
        v = b.input(f"v{layer}", "float32", [B, HKV, t, D])
        full = []
        for slot, new in ((layer, k), (LAYERS + layer, v)):
            i = b.constant(np.array(slot if index is None else index, np.int64))
            if head_major:
                past = b.op("Gather", cache, slot_input or i, axis=0)
            else:
                g = b.op("Gather", cache, slot_input or i, axis=1)
                past = b.op("Transpose", g, perm=[1, 2, 0, 3])
            full.append(b.op("Concat", past, new, axis=2))
        inputs = [q, *full, m] if mask else [q, *full]
        outs.append(b.op("Attention", *inputs, scale=0.3))
        if expose_keys:
            outs.append(full[0])
    b.output(*outs)
    return b.graph


def feeds_for(graph: Graph, s: int = 5, t: int = 1) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for v in graph.inputs:
        if v.name == "cache":
            head_major = v.shape[0] == 2 * LAYERS
            shape = (2 * LAYERS, B, HKV, s, D) if head_major else (s, 2 * LAYERS, B, HKV, D)
            out[v.name] = RNG.standard_normal(shape).astype(np.float32)
        elif v.name == "mask":
            out[v.name] = RNG.random((1, 1, t, s + t)) < 0.7
        elif v.name == "slot":
            out[v.name] = np.array(1, np.int64)
        else:
            out[v.name] = RNG.standard_normal((B, HQ if v.name[0] == "q" else HKV, t, D)).astype(
                np.float32
            )
    return out


@pytest.mark.parametrize("head_major", [False, True])
def test_each_layer_becomes_one_cache_attention_with_the_same_bits(head_major: bool) -> None:
    graph = decode_graph(head_major=head_major)
    feeds = feeds_for(graph)
    before = interpret(graph, feeds)
    check_rewrite(FuseCacheAttention(), graph.copy(), feeds=feeds)
    FuseCacheAttention().run(graph)
    ops = sorted(n.op_type for n in graph.nodes)
    assert ops == ["CacheAttention"] * LAYERS, ops
    slots = sorted((n.attr("key_index"), n.attr("value_index")) for n in graph.nodes)
    assert slots == [(0, LAYERS), (1, LAYERS + 1)]
    assert all(n.inputs[1] is graph.inputs[0] and n.attr("scale") == 0.3 for n in graph.nodes)
    assert {n.attr("seq_axis") for n in graph.nodes} == {3 if head_major else 0}
    after = interpret(graph, feeds)
    for name, want in before.items():
        np.testing.assert_array_equal(after[name], want)


@pytest.mark.parametrize("head_major", [False, True])
@pytest.mark.parametrize("t", [1, 3])
def test_without_mask_static_and_several_new_positions(t: int, head_major: bool) -> None:
    graph = decode_graph(mask=False, symbolic=False, t=t, head_major=head_major)
    check_rewrite(FuseCacheAttention(), graph, feeds=feeds_for(graph, t=t))
    assert {n.op_type for n in graph.nodes} == {"CacheAttention"}


@pytest.mark.parametrize("head_major", [False, True])
def test_negative_slot_counts_from_the_end(head_major: bool) -> None:
    graph = decode_graph(index=-1, head_major=head_major)
    check_rewrite(FuseCacheAttention(), graph, feeds=feeds_for(graph))
    assert {(n.attr("key_index"), n.attr("value_index")) for n in graph.nodes} == {(3, 3)}


@pytest.mark.parametrize(
    "kwargs",
    [dict(expose_keys=True), dict(index_input=True)],
    ids=["keys-used-elsewhere", "slot-not-a-constant"],
)
@pytest.mark.parametrize("head_major", [False, True])
def test_declines_what_it_cannot_express(kwargs: dict[str, Any], head_major: bool) -> None:
    """Keys someone else reads must still be built (fusing would compute them twice); a
    slot known only at run time is not an attribute."""
    graph = decode_graph(**kwargs, head_major=head_major)
    check_no_change(FuseCacheAttention(), graph, feeds=feeds_for(graph))
    assert "CacheAttention" not in {n.op_type for n in graph.nodes}


def test_default_pipeline_fuses_a_captured_decode_step() -> None:
    graph = decode_graph()
    PassManager("default").run(graph)
    assert sorted(n.op_type for n in graph.nodes) == ["CacheAttention"] * LAYERS


def _op(**attrs: Any) -> Graph:
    b = GraphBuilder("op")
    cache = b.input("cache", "float32", [5, 4, 1, 2, 8])
    q = b.input("q", "float32", [1, 4, 1, 8])
    k = b.input("k", "float32", [1, 2, 1, 8])
    v = b.input("v", "float32", [1, 2, 1, 8])
    b.output(b.op("CacheAttention", q, cache, k, v, domain="ecograph", name="attn", **attrs))
    return b.graph


@pytest.mark.parametrize(
    ("attrs", "says"),
    [
        (dict(key_index=4, value_index=1), "key_index 4 is beyond the cache's 4 slots"),
        (dict(value_index=1), "key_index must be a cache slot"),
        (dict(key_index=0, value_index=1, seq_axis=1), "seq_axis must be 0 (sequence first)"),
    ],
)
def test_op_checks_name_the_node(attrs: dict[str, Any], says: str) -> None:
    with pytest.raises(EcographError, match="attn") as info:
        _op(**attrs)
    assert says in str(info.value)


def test_op_reference_is_attention_over_the_concatenation() -> None:
    from ecograph.ir.ops.cache_attention import cache_attention
    from ecograph.ir.ops.fused import attention

    cache = RNG.standard_normal((6, 4, 1, 2, 8)).astype(np.float32)
    q = RNG.standard_normal((1, 4, 2, 8)).astype(np.float32)
    k, v = (RNG.standard_normal((1, 2, 2, 8)).astype(np.float32) for _ in range(2))
    got = cache_attention(q, cache, k, v, key_index=1, value_index=3, scale=None, is_causal=1)
    keys = np.concatenate([cache[:, 1].transpose(1, 2, 0, 3), k], axis=2)
    values = np.concatenate([cache[:, 3].transpose(1, 2, 0, 3), v], axis=2)
    # the past keys by hand: position p of head h is cache[p, slot, batch, h]
    assert np.array_equal(keys[0, 1, 4], cache[4, 1, 0, 1])
    want = attention(
        q, keys, values, is_causal=1, kv_num_heads=None, q_num_heads=None,
        qk_matmul_output_mode=0, scale=None, softcap=0.0, softmax_precision=None,
    )  # fmt: skip
    np.testing.assert_array_equal(got, want)
    assert got.shape == (1, 4, 2, 8)


def test_op_reference_reads_a_head_major_cache_by_slot() -> None:
    """seq_axis 3: the cache is [slots, batch, kv_heads, past_len, head_dim], so slot i's past
    is cache[i] as it lies; the same numbers as the sequence-first cache transposed to it."""
    from ecograph.ir.ops.cache_attention import cache_attention

    cache = RNG.standard_normal((6, 4, 1, 2, 8)).astype(np.float32)  # sequence first
    q = RNG.standard_normal((1, 4, 2, 8)).astype(np.float32)
    k, v = (RNG.standard_normal((1, 2, 2, 8)).astype(np.float32) for _ in range(2))
    head_major = np.ascontiguousarray(cache.transpose(1, 2, 3, 0, 4))  # [4, 1, 2, 6, 8]
    # position p of head h, batch 0, slot 1: cache[p, 1, 0, h] = head_major[1, 0, h, p]
    assert np.array_equal(head_major[1, 0, 1, 4], cache[4, 1, 0, 1])
    attrs = dict(key_index=1, value_index=3, scale=None, is_causal=1)
    want = cache_attention(q, cache, k, v, **attrs)
    got = cache_attention(q, head_major, k, v, **attrs, seq_axis=3)
    np.testing.assert_array_equal(got, want)
