"""Dependency groups on hand-built graphs: which dims shrink together, their unit sizes and
why a group is frozen."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.ir import GraphBuilder, interpret, verify
from ecograph.prune import Group, groups, layer_groups, shrink
from tests.prune import graphs


def _by_name(gs: list[Group]) -> dict[str, Group]:
    return {g.name: g for g in gs}


def _weights(group: Group) -> set[tuple[str, int, int]]:
    return {(m.value.name, m.axis, m.block) for m in group.weights}


def test_mlp_hidden_is_one_ffn_group_and_the_interface_is_frozen() -> None:
    gs = _by_name(groups(graphs.mlp()))
    hidden = gs["ffn:w1:1"]
    assert (hidden.kind, hidden.size, hidden.frozen) == ("ffn", 16, None)
    assert _weights(hidden) == {("w1", 1, 1), ("w2", 0, 1)}
    constants = {(m.value.name, m.axis) for m in hidden.members if m.is_constant}
    assert ("b1", 0) in constants  # the bias shrinks with its columns
    assert {"act", "fc1", "fc1_bias", "y"} <= {n.name for n in hidden.nodes}
    assert gs["ffn:w1:0"].frozen == "comes from graph input %x"
    assert gs["ffn:w2:1"].frozen == "reaches graph output %y"


@pytest.mark.parametrize("fused", [False, True])
def test_swiglu_gate_and_up_share_one_ffn_group(fused: bool) -> None:
    (ffn,) = [g for g in groups(graphs.swiglu_block(fused=fused)) if g.kind == "ffn"]
    assert ffn.size == 12 and ffn.frozen is None
    assert _weights(ffn) == {("w_gate", 1, 1), ("w_up", 1, 1), ("w_down", 0, 1)}


@pytest.mark.parametrize(
    ("form", "hq", "hkv", "merged"),
    [("3d", 4, 4, False), ("3d", 4, 2, False), ("4d", 4, 2, False), ("3d", 4, 4, True),
     ("4d", 4, 2, True)],
)  # fmt: skip
def test_attention_heads_group(form: str, hq: int, hkv: int, merged: bool) -> None:
    graph = graphs.attention_block(d=16, hq=hq, hkv=hkv, form=form, merged=merged)
    (heads,) = [g for g in groups(graph) if g.kind == "heads"]
    head_dim, n_rep = 16 // hq, hq // hkv
    assert heads.size == hkv and heads.frozen is None  # GQA: units are kv heads
    blocks = {(m.value.name, m.axis, m.start): m.block for m in heads.weights}
    assert blocks[("w_o", 0, 0)] == n_rep * head_dim
    if merged:
        q_w, kv = hq * head_dim, hkv * head_dim
        assert blocks[("w_qkv", 1, 0)] == n_rep * head_dim
        assert blocks[("w_qkv", 1, q_w)] == blocks[("w_qkv", 1, q_w + kv)] == head_dim
    else:
        assert blocks[("w_q", 1, 0)] == n_rep * head_dim
        assert blocks[("w_k", 1, 0)] == blocks[("w_v", 1, 0)] == head_dim


def test_multi_query_attention_has_a_single_head_unit() -> None:
    # One kv head: every query head reads it, so no unit can go (query heads within a kv
    # group are not pruned separately).
    (heads,) = [g for g in groups(graphs.attention_block(hq=4, hkv=1)) if g.kind == "heads"]
    assert heads.size == 1


def test_residual_stream_is_frozen_where_it_meets_the_graph_interface() -> None:
    gs = groups(graphs.attention_block())
    (residual,) = [g for g in gs if g.kind == "residual"]
    assert residual.size == 16
    assert residual.frozen is not None and "graph" in residual.frozen
    stack = [g for g in groups(graphs.residual_stack()) if g.kind == "residual"]
    (stream,) = stack
    names = {m.value.name for m in stream.members if m.is_constant}
    assert {"ln0_g", "ln0_b", "ln2_g", "w_out"} <= names  # norms belong to the stream
    assert stream.frozen == "comes from graph input %x"


def test_conv_channels_pass_through_batch_norm_and_depthwise_conv() -> None:
    gs = _by_name(groups(graphs.conv_block()))
    c1 = gs["channels:c1_w:0"]
    assert (c1.kind, c1.size, c1.frozen) == ("channels", 8, None)
    names = {(m.value.name, m.axis) for m in c1.members if m.is_constant}
    assert names == {("c1_w", 0), ("c1_b", 0), ("bn_scale", 0), ("bn_bias", 0), ("bn_mean", 0),
                     ("bn_var", 0), ("dw_w", 0), ("pw_w", 1)}  # fmt: skip
    pw = gs["channels:fc_w:0"]  # through GlobalAveragePool and Flatten into the Gemm rows
    assert pw.size == 6 and _weights(pw) == {("pw_w", 0, 1), ("fc_w", 0, 1)}
    assert gs["channels:c1_w:1"].frozen == "comes from graph input %x"


def test_layer_groups_are_residual_branches() -> None:
    layers = layer_groups(graphs.residual_stack(blocks=3))
    assert [g.name for g in layers] == ["layer:res0", "layer:res1", "layer:res2"]
    assert all(g.kind == "layer" and g.size == 1 and g.frozen is None for g in layers)
    assert [n.op_type for n in layers[1].nodes] == [
        "LayerNormalization",
        "MatMul",
        "Relu",
        "MatMul",
    ]
    assert layers[1].skip is not None and layers[1].skip.name == "res0"


def test_a_branch_used_elsewhere_is_not_a_layer() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 4])
    w = b.constant(np.eye(4, dtype=np.float32), "w")
    f = b.op("Relu", b.op("MatMul", x, w), name="f")
    y = b.op("Add", x, f, name="y")
    b.output(b.op("Mul", y, f, name="z"))  # f escapes the residual branch
    assert layer_groups(b.graph) == []


def _dynamic_heads(heads_piece: str) -> GraphBuilder:
    """q = x W_q split into heads by a target computed as Concat(Shape(x)[0:2], [2], [4]),
    as exporters write it for dynamic batch and sequence; `heads_piece` "const" or "computed"
    (the heads entry read from a Shape, which no rewrite can follow)."""
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", "seq", 8])
    q = b.op("MatMul", x, b.constant(np.ones((8, 8), np.float32), "w_q"))
    batch_seq = b.op("Shape", x, end=2)
    if heads_piece == "const":
        heads = b.constant(np.array([2], np.int64), "heads")
    else:
        heads = b.op("Shape", b.op("Reshape", q, b.constant(np.array([0, 0, 2, 4], np.int64))),
                     start=2, end=3)  # fmt: skip
    dim = b.constant(np.array([4], np.int64), "dim")
    shape = b.op("Concat", batch_seq, heads, dim, axis=0, name="target")
    r = b.op("Reshape", q, shape, name="split_heads")
    merge = b.op("Concat", batch_seq, b.constant(np.array([8], np.int64), "hidden"), axis=0)
    y = b.op("Reshape", r, merge, name="merge")
    b.output(b.op("MatMul", y, b.constant(np.ones((8, 3), np.float32), "w_o"), name="out"))
    return b


def test_dynamic_reshape_target_with_constant_pieces_is_rewritten() -> None:
    graph = _dynamic_heads("const").graph
    (g,) = [g for g in groups(graph) if g.name == "heads:w_o:0"]
    assert (g.size, g.frozen) == (2, None)
    shrink(graph, [(g, [1])])
    verify(graph)
    assert graph.node("split_heads").outputs[0].shape == ("batch", "seq", 1, 4)
    assert graph.node("out").inputs[1].shape == (4, 3)  # type: ignore[union-attr]
    out = interpret(graph, {"x": np.ones((2, 3, 8), np.float32)})["out"]
    assert out.shape == (2, 3, 3)


def test_computed_reshape_entry_freezes_heads() -> None:
    graph = _dynamic_heads("computed").graph
    (g,) = [g for g in groups(graph) if g.name == "heads:w_o:0"]
    assert g.frozen == "Reshape split_heads's target shape is computed at run time there"


def test_op_without_a_rule_freezes_its_dims() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 4])
    h = b.op("MatMul", x, b.constant(np.ones((4, 6), np.float32), "w1"))
    h = b.op("Tile", h, b.constant(np.array([1, 1], np.int64)), name="tile")
    b.output(b.op("MatMul", h, b.constant(np.ones((6, 3), np.float32), "w2"), name="y"))
    (g,) = [g for g in groups(b.graph) if g.name == "ffn:w1:1"]
    assert g.frozen == "Tile tile has no pruning rule"


def test_softmax_axis_is_frozen() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 4])
    h = b.op("Softmax", b.op("MatMul", x, b.constant(np.ones((4, 6), np.float32), "w1")))
    b.output(b.op("MatMul", h, b.constant(np.ones((6, 3), np.float32), "w2"), name="y"))
    (g,) = [g for g in groups(b.graph) if g.name == "ffn:w1:1"]
    assert g.frozen is not None and g.frozen.startswith("Softmax")


def test_shared_constant_is_sliced_per_use() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 4])
    w = b.constant(np.arange(16, dtype=np.float32).reshape(4, 4), "w")
    h = b.op("Relu", b.op("MatMul", x, w, name="first"))
    b.output(b.op("MatMul", h, w, name="y"))  # the same array: rows here, columns above
    graph = b.graph
    (g,) = [g for g in groups(graph) if g.kind == "ffn" and not g.frozen]
    shrink(graph, [(g, [0, 2])])
    verify(graph)
    first, second = graph.node("first").inputs[1], graph.node("y").inputs[1]
    assert first is not None and second is not None
    np.testing.assert_array_equal(first.const_value, np.arange(16).reshape(4, 4)[:, [0, 2]])
    np.testing.assert_array_equal(second.const_value, np.arange(16).reshape(4, 4)[[0, 2], :])
    assert "w" not in graph.constants


def test_grouped_conv_is_frozen() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [1, 4, 5, 5])
    h = b.op("Conv", x, b.constant(np.ones((8, 4, 1, 1), np.float32), "c1"), name="c1")
    h = b.op("Conv", h, b.constant(np.ones((8, 4, 1, 1), np.float32), "c2"), group=2, name="c2")
    b.output(b.op("Conv", h, b.constant(np.ones((3, 8, 1, 1), np.float32), "c3"), name="y"))
    (g,) = [g for g in groups(b.graph) if g.name == "channels:c1:0"]
    assert g.frozen == "Conv c2 has group=2 (only depthwise groups are handled)"
