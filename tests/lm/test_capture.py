"""What the capture hands the compiler for a decode step: each layer's keys and values read
from the KV cache input itself, and, after the default pipeline, one CacheAttention per layer
that reads them where they lie (no copy of the cache at all)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.lm.conftest import torch  # noqa: F401  (skips without torch)

pytest.importorskip("tvm")

from ecograph.lm.capture import capture_lm
from ecograph.passes import PassManager


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_each_layer_selects_its_keys_and_values_from_the_cache(model: str, request: Any) -> None:
    """The cache [S, 2, layers, batch, kv_heads, dim] is read through one view, [S, 2 x
    layers, ...], and one Gather per (keys or values, layer) of it. Before, a permute of the
    whole cache came first and the selects read its copy, then each layer's copy of that
    (SmolLM2-135M at 255 positions: 5.5 of 17 ms a step copying the cache)."""
    lm = request.getfixturevalue(model)
    layers = lm.config.num_hidden_layers
    _, decode, decode1, _ = capture_lm(lm)
    for graph in (decode, decode1):
        (past,) = [v for v in graph.inputs if v.name == "past_kv"]
        readers = [u.node for u in past.uses if u.node.op_type != "Shape"]  # S: positions
        assert [n.op_type for n in readers] == ["Reshape"], [n.op_type for n in readers]
        view = readers[0].outputs[0]
        assert list(view.type.shape)[1] == 2 * layers
        selects = [u.node for u in view.uses]
        assert sorted(n.op_type for n in selects) == ["Gather"] * (2 * layers)
        assert all(n.input(1).const_value is not None for n in selects)


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_a_head_major_cache_is_indexed_per_layer_without_a_view(model: str, request: Any) -> None:
    """Head major ([2 x layers, batch, kv_heads, S, dim], CPU builds): each layer's keys and
    values are one Gather of the input itself along its first axis (no reshape: a Relax
    reshape of a strided view would read it as compact), and after the default pipeline one
    CacheAttention (seq_axis 3) per layer reads them, keys at slot l, values at layers + l."""
    lm = request.getfixturevalue(model)
    layers = lm.config.num_hidden_layers
    _, decode, decode1, layout = capture_lm(lm, head_major=True)
    assert layout.head_major and layout.shape(7, 2) == (
        2 * layers, 2, layout.kv_heads, 7, layout.head_dim
    )  # fmt: skip
    for graph in (decode, decode1):
        (past,) = [v for v in graph.inputs if v.name == "past_kv"]
        assert past.type.rank == 5 and past.shape[0] == 2 * layers
        readers = [u.node for u in past.uses if u.node.op_type != "Shape"]
        assert sorted(n.op_type for n in readers) == ["Gather"] * (2 * layers)
        assert all(n.attr("axis") == 0 for n in readers)
        PassManager("default").run(graph)
        readers = [u.node for u in past.uses if u.node.op_type != "Shape"]  # S: positions
        assert [n.op_type for n in readers] == ["CacheAttention"] * layers
        assert {n.attr("seq_axis") for n in readers} == {3}
        slots = sorted((n.attr("key_index"), n.attr("value_index")) for n in readers)
        assert slots == [(i, layers + i) for i in range(layers)]


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_default_pipeline_reads_the_cache_in_each_attention(model: str, request: Any) -> None:
    """fuse-cache-attention: the Gather / Transpose / Concat of each layer's keys and values
    become one ecograph::CacheAttention on the cache view, slot l for layer l's keys and
    layers + l for its values (the cache's [2, layers] axes, flattened)."""
    lm = request.getfixturevalue(model)
    layers = lm.config.num_hidden_layers
    _, decode, decode1, _ = capture_lm(lm)
    for graph in (decode, decode1):
        PassManager("default").run(graph)
        (past,) = [v for v in graph.inputs if v.name == "past_kv"]
        (view,) = [u.node.outputs[0] for u in past.uses if u.node.op_type == "Reshape"]
        readers = [u.node for u in view.uses]
        assert [n.op_type for n in readers] == ["CacheAttention"] * layers
        slots = sorted((n.attr("key_index"), n.attr("value_index")) for n in readers)
        assert slots == [(i, layers + i) for i in range(layers)]
        assert not any(n.op_type == "Attention" for n in graph.nodes)
