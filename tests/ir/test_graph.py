"""Graph edits keep use-lists consistent under every kind of edit."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.errors import IRError, UnknownOpError
from ecograph.ir import Graph, GraphBuilder, Use, verify


def check_use_lists(graph: Graph) -> None:
    """Use-lists equal exactly what node inputs say, and verify() agrees."""
    expected: dict[int, list[Use]] = {id(v): [] for v in graph.values()}
    for node in graph.nodes:
        for i, v in enumerate(node.inputs):
            if v is not None:
                expected[id(v)].append(Use(node, i))
    for v in graph.values():
        assert sorted(v.uses, key=lambda u: (u.node.name, u.index)) == sorted(
            expected[id(v)], key=lambda u: (u.node.name, u.index)
        ), v
    verify(graph)


def small_graph() -> tuple[GraphBuilder, dict]:
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", 4])
    w = b.constant(np.ones((4, 4), np.float32), "w")
    m = b.op("MatMul", x, w, name="mm")
    r = b.op("Relu", m, name="relu")
    a = b.op("Add", r, m, name="add")
    b.output(a)
    return b, {"x": x, "w": w, "m": m, "r": r, "a": a}


def test_builder_tracks_producers_and_uses():
    b, v = small_graph()
    g = b.graph
    assert v["m"].producer is g.node("mm")
    assert [u.node.name for u in v["m"].uses] == ["relu", "add"]
    assert v["a"].is_graph_output and v["x"].is_graph_input and v["w"].is_constant
    assert v["r"].type.shape == ("batch", 4)
    check_use_lists(g)


def test_replace_all_uses_with_moves_uses_and_outputs():
    b, v = small_graph()
    g = b.graph
    assert g.replace_all_uses_with(v["m"], v["x"]) == 2  # relu's input and add's second
    assert not v["m"].uses
    assert [(u.node.name, u.index) for u in v["x"].uses] == [("mm", 0), ("relu", 0), ("add", 1)]
    check_use_lists(g)
    assert g.replace_all_uses_with(v["a"], v["r"]) == 1  # the graph output slot
    assert g.outputs == (v["r"],)
    check_use_lists(g)
    with pytest.raises(IRError, match="already a graph output"):
        g.add_output(v["a"])
        g.replace_all_uses_with(v["a"], v["r"])


def test_remove_node_requires_no_uses_then_cleans_up():
    b, v = small_graph()
    g = b.graph
    with pytest.raises(IRError, match="still used by add"):
        g.remove_node(g.node("relu"))
    g.replace_all_uses_with(v["r"], v["m"])
    g.remove_node(g.node("relu"))
    assert len(g.nodes) == 2
    assert not g.has_value("relu")
    check_use_lists(g)
    with pytest.raises(IRError, match="not in graph"):
        g.remove_node(v["r"].producer)  # type: ignore[arg-type]


def test_insert_before_after_and_move_keep_order():
    b, v = small_graph()
    g = b.graph
    neg = g.add_node("Neg", [v["m"]], before=g.node("relu"), name="neg")
    assert [n.name for n in g.nodes] == ["mm", "neg", "relu", "add"]
    ab = g.add_node("Abs", [neg.output], after=neg, name="abs")
    assert [n.name for n in g.nodes] == ["mm", "neg", "abs", "relu", "add"]
    g.move_after(g.node("relu"), g.node("mm"))
    assert [n.name for n in g.nodes] == ["mm", "relu", "neg", "abs", "add"]
    g.set_node_input(g.node("add"), 0, ab.output)
    check_use_lists(g)
    g.remove_node(g.node("relu"))
    check_use_lists(g)


def test_iterating_while_editing_is_safe():
    b = GraphBuilder()
    x = b.input("x", "float32", [3])
    cur = x
    for _ in range(5):
        cur = b.op("Identity", cur)
    b.output(b.op("Relu", cur))
    g = b.graph
    visited = []
    for node in g.nodes:
        visited.append(node.name)
        if node.op_type == "Identity":
            g.replace_all_uses_with(node.output, node.inputs[0])  # type: ignore[arg-type]
            g.remove_node(node)
            # removing the next node during iteration must not resurrect it
            nxt = g.nodes[0] if len(g.nodes) else None
            assert nxt is None or not nxt.is_removed
    assert [n.op_type for n in g.nodes] == ["Relu"]
    assert len(visited) == 6
    check_use_lists(g)


def test_removing_a_later_node_while_iterating_skips_it():
    b = GraphBuilder()
    x = b.input("x", "float32", [3])
    a = b.op("Neg", x, name="a")
    c = b.op("Abs", x, name="c")
    b.output(a)
    g = b.graph
    seen = []
    for node in g.nodes:
        seen.append(node.name)
        if node.name == "a":
            g.remove_node(c.producer)  # type: ignore[arg-type]
    assert seen == ["a"]


def test_set_node_inputs_and_absent_optional_inputs():
    b = GraphBuilder()
    x = b.input("x", "float32", [4])
    lo = b.constant(np.array(0.0, np.float32), "lo")
    hi = b.constant(np.array(1.0, np.float32), "hi")
    clip = b.graph.add_node("Clip", [x, None, hi], name="clip")
    assert clip.inputs == (x, None, hi)
    b.graph.set_node_inputs(clip, [x, lo])
    assert clip.inputs == (x, lo)
    assert not hi.uses
    b.graph.set_node_input(clip, 2, hi)
    b.graph.set_node_input(clip, 1, None)
    assert clip.inputs == (x, None, hi)
    b.output(clip.output)
    check_use_lists(b.graph)


def test_values_of_another_graph_are_rejected():
    g1, g2 = Graph("a"), Graph("b")
    x = g1.add_input("x", "float32", [1])
    with pytest.raises(IRError, match="belongs to graph a"):
        g2.add_node("Relu", [x])


def test_unknown_op_needs_registration_or_types():
    g = Graph()
    x = g.add_input("x", "float32", [1])
    with pytest.raises(UnknownOpError, match="register_op"):
        g.add_node("NoSuchOp", [x])


def test_constants_are_shared_not_copied():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    g = Graph()
    c = g.add_constant(arr, "c")
    assert c.const_value is arr
    assert g.copy().value("c").const_value is arr


def test_remove_unused_constant_and_input_and_rename():
    b, v = small_graph()
    g = b.graph
    extra = g.add_constant(np.zeros(2, np.float32), "unused")
    g.remove_constant(extra)
    assert "unused" not in g.constants
    with pytest.raises(IRError, match="still used"):
        g.remove_input(v["x"])
    unused_in = g.add_input("y", "int64", [])
    g.remove_input(unused_in)
    g.rename_value(v["w"], "weight")
    assert "weight" in g.constants and g.value("weight") is v["w"]
    with pytest.raises(IRError, match="already exists"):
        g.rename_value(v["m"], "x")
    check_use_lists(g)


def test_sort_restores_topological_order_and_reports_cycles():
    b, v = small_graph()
    g = b.graph
    g.move_before(g.node("add"), g.node("mm"))
    from ecograph.errors import VerificationError

    with pytest.raises(VerificationError, match="topological-order"):
        verify(g)
    g.sort()
    assert [n.name for n in g.nodes] == ["mm", "relu", "add"]
    verify(g)
    g.set_node_input(g.node("mm"), 0, v["a"])
    with pytest.raises(IRError, match="cycle"):
        g.sort()


def test_to_networkx_has_every_edge():
    import networkx as nx

    b, _ = small_graph()
    nxg = b.graph.to_networkx()
    assert nx.is_directed_acyclic_graph(nxg)
    assert nxg.number_of_edges() == 2 + 1 + 2 + 1  # mm(x,w), relu(m), add(r,m), output
    assert nx.has_path(nxg, "input:x", "output:0")
