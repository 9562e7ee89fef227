"""StagedRun: the interpreter a stretch at a time, with the graph changing ahead of the point
reached (what sequential GPTQ needs), checked against `interpret` on the changed graph."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.errors import InterpreterError
from ecograph.ir import GraphBuilder, StagedRun, interpret


def _residual_graph(rng: np.random.Generator):
    """x -> a = relu(x @ w0) -> b = a @ w1 + a -> y = b @ w2, with nodes named after them."""
    b = GraphBuilder("residual")
    x = b.input("x", "float32", ["batch", 8])
    w = [b.constant(rng.standard_normal((8, 8)).astype(np.float32), f"w{i}") for i in range(3)]
    a = b.op("Relu", b.op("MatMul", x, w[0], name="fc0"), name="relu")
    h = b.op("Add", b.op("MatMul", a, w[1], name="fc1"), a, name="residual")
    b.output(b.op("MatMul", h, w[2], name="fc2"))
    return b.graph


def test_advance_then_peek_gives_what_interpret_gives():
    rng = np.random.default_rng(0)
    g = _residual_graph(rng)
    feeds = {"x": rng.standard_normal((3, 8)).astype(np.float32)}
    full = interpret(g, feeds, keep_all=True)
    run = StagedRun(g, feeds)
    fc1 = g.find_nodes("MatMul")[1]
    run.advance(stop=fc1)
    # the relu output is read by fc1 and by the residual Add (neither run yet): kept
    relu = g.find_nodes("Relu")[0].output.name
    got = run.peek([relu, g.outputs[0].name])
    np.testing.assert_array_equal(got[relu], full[relu])
    np.testing.assert_array_equal(got[g.outputs[0].name], full[g.outputs[0].name])
    # peek did not move the point: a second peek runs the same nodes again, same values
    again = run.peek([g.outputs[0].name])
    np.testing.assert_array_equal(again[g.outputs[0].name], full[g.outputs[0].name])
    run.advance()
    assert run.peek([g.outputs[0].name])[g.outputs[0].name].shape == (3, 8)


def test_a_change_ahead_of_the_point_is_seen_and_the_prefix_is_not_run_again():
    rng = np.random.default_rng(1)
    g = _residual_graph(rng)
    feeds = {"x": rng.standard_normal((4, 8)).astype(np.float32)}
    run = StagedRun(g, feeds)
    fc0, fc1, fc2 = g.find_nodes("MatMul")
    run.advance(stop=fc1)
    # change fc1's weight the way a quantizer does: a new node just before fc1 computes it
    w1 = fc1.input(1)
    halved = g.add_constant(np.full((8, 8), 0.5, np.float32), "half")
    scaled = g.add_node("Mul", [w1, halved], {}, name="w1_scaled", before=fc1).output
    g.set_node_input(fc1, 1, scaled)
    # and the prefix must not run again: replacing fc0's weight now changes nothing seen
    g.set_node_input(fc0, 1, g.add_constant(np.zeros((8, 8), np.float32), "zeros"))
    y = g.outputs[0].name
    got = run.peek([y])[y]
    x, w = feeds["x"], [g.constants[f"w{i}"].const_value for i in range(3)]
    a = np.maximum(x @ w[0], 0)
    expected = (a @ (w[1] * 0.5) + a) @ w[2]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, interpret(g, feeds)[y])  # a full run sees the zeroed fc0
    # peek left fc1 and fc2 to run again: a later change to either is seen
    g.set_node_input(fc2, 1, g.add_constant(np.eye(8, dtype=np.float32), "eye"))
    np.testing.assert_allclose(run.peek([y])[y], a @ (w[1] * 0.5) + a, rtol=1e-5, atol=1e-5)


def test_a_node_reading_a_dropped_value_is_an_error_naming_it():
    rng = np.random.default_rng(2)
    g = _residual_graph(rng)
    feeds = {"x": rng.standard_normal((2, 8)).astype(np.float32)}
    run = StagedRun(g, feeds)
    fc2 = g.find_nodes("MatMul")[2]
    run.advance(stop=fc2)
    # fc0's output was read by the Relu, which ran: dropped. Pointing fc2 at it is a change
    # behind the point reached.
    fc0 = g.find_nodes("MatMul")[0]
    g.set_node_input(fc2, 0, fc0.output)
    with pytest.raises(InterpreterError, match=r"StagedRun: node .*fc2.* reads %"):
        run.advance()


def test_stop_must_be_a_node_of_the_graph():
    rng = np.random.default_rng(3)
    g, other = _residual_graph(rng), _residual_graph(rng)
    run = StagedRun(g, {"x": np.zeros((1, 8), np.float32)})
    with pytest.raises(InterpreterError, match="not in this graph"):
        run.advance(stop=other.nodes[0])


def test_inputs_are_checked_as_interpret_checks_them():
    g = _residual_graph(np.random.default_rng(4))
    with pytest.raises(InterpreterError, match="missing input 'x'"):
        StagedRun(g, {})
    with pytest.raises(InterpreterError, match="dtype"):
        StagedRun(g, {"x": np.zeros((1, 8), np.int64)})
