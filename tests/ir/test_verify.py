"""Each verifier rule has a failing case whose message names the rule and the node/value."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.errors import VerificationError
from ecograph.ir import Graph, GraphBuilder, TensorType, Use, verify


def valid() -> tuple[Graph, dict]:
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", 4])
    w = b.constant(np.ones((4, 4), np.float32), "w")
    m = b.op("MatMul", x, w, name="mm")
    r = b.op("Relu", m, name="relu")
    b.output(r)
    return b.graph, {"x": x, "w": w, "m": m, "r": r}


def expect(rule: str, where: str, graph: Graph) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        verify(graph)
    assert info.value.rule == rule, str(info.value)
    assert where in str(info.value)
    return info.value


def test_valid_graph_passes():
    g, _ = valid()
    verify(g)


def test_ssa_duplicate_node_name():
    g, v = valid()
    g.node("relu").name = "mm"  # bypassing rename_node's check on purpose
    expect("ssa", "node mm", g)


def test_ssa_value_defined_twice():
    g, v = valid()
    g.node("relu")._outputs = [v["m"]]
    expect("ssa", "relu", g)


def test_ownership_foreign_value():
    g, v = valid()
    other = Graph("other")
    alien = other.add_input("alien", "float32", ["batch", 4])
    g.node("relu")._inputs[0] = alien
    expect("ownership", "node relu", g)


def test_use_list_missing_use():
    g, v = valid()
    v["m"]._uses.clear()
    expect("use-list", "node relu", g)


def test_use_list_stale_use():
    g, v = valid()
    v["x"]._uses.append(Use(g.node("relu"), 0))
    expect("use-list", "%x", g)


def test_topological_order():
    g, _ = valid()
    g.move_before(g.node("relu"), g.node("mm"))
    err = expect("topological-order", "node relu", g)
    assert "graph.sort()" in str(err)


def test_known_op():
    g, v = valid()
    g.add_node("Mystery", [v["r"]], output_types=[TensorType("float32", [1])], name="myst")
    expect("known-op", "node myst (Mystery)", g)


def test_attributes_unknown_name():
    g, _ = valid()
    g.node("relu").attrs["alpha"] = 0.5
    expect("attributes", "unknown attribute 'alpha'", g)


def test_attributes_wrong_kind():
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3])
    s = b.op("Softmax", x, axis=1, name="sm")
    b.output(s)
    b.graph.node("sm").attrs["axis"] = "one"
    expect("attributes", "'axis' must be int", b.graph)


def test_attributes_missing_required():
    b = GraphBuilder()
    x = b.input("x", "float32", [2])
    c = b.op("Concat", x, x, axis=0, name="cat")
    b.output(c)
    del b.graph.node("cat").attrs["axis"]
    expect("attributes", "required attribute 'axis'", b.graph)


def test_arity_too_many_outputs():
    g, v = valid()
    extra = g.node("relu")
    from ecograph.ir.graph import Value

    extra._outputs.append(Value(g, "bogus", TensorType("float32", [1]), extra, 1))
    g._values["bogus"] = extra._outputs[-1]
    expect("arity", "node relu", g)


def test_arity_missing_required_input():
    g, v = valid()
    g.set_node_input(g.node("mm"), 1, None)
    expect("arity", "node mm", g)


def test_types_declared_type_disagrees_with_inference():
    g, v = valid()
    v["r"].type = TensorType("float32", ["batch", 5])
    err = expect("types", "node relu", g)
    assert "float32[batch, 5]" in str(err) and "float32[batch, 4]" in str(err)


def test_outputs_undefined_and_empty():
    g, v = valid()
    g.set_outputs([])
    expect("outputs", "no outputs", g)
    g2, v2 = valid()
    g2.remove_node(g2.node("relu"), force=True)  # the output's producer is gone
    expect("outputs", "%relu is not defined", g2)


def test_constants_array_must_match_type():
    g, v = valid()
    v["w"].const_value = np.ones((4, 5), np.float32)
    expect("constants", "constant %w", g)


def test_types_a_declared_dim_refines_one_inference_made_up_upstream():
    """A slice by bounds known at run time has dims inference makes up; an Add after it may
    be declared with the dims torch knew (from_torch takes them): a refinement, not a
    conflict. A dim inference knows still has to agree."""
    b = GraphBuilder()
    x = b.input("x", "float32", [1, 8])
    start = b.input("start", "int64", [1])
    end, axis = b.constant(np.array([8]), "end"), b.constant(np.array([1]), "axis")
    part = b.op("Slice", x, start, end, axis, name="part")
    assert part.type.shape[0] == 1 and isinstance(part.type.shape[1], str)  # made up
    out = b.op("Add", part, b.constant(np.ones((1, 1), np.float32), "one"), name="add")
    b.output(out)
    out.type = TensorType("float32", [1, 3])
    verify(b.graph)
    out.type = TensorType("float32", [2, 3])
    err = expect("types", "node add", b.graph)
    assert "float32[2, 3]" in str(err)
