"""Hypothesis-generated random graphs verify, round-trip through text and copy, and run."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecograph.ir import Graph, explain_difference, interpret, parse, to_text, verify
from ecograph.ir.graph import Value

EXAMPLES = int(os.environ.get("ECOGRAPH_FUZZ_EXAMPLES", "200"))
DTYPES = ["float32", "float16", "int32", "int64", "bool"]
UNARY_FLOAT = ["Relu", "Neg", "Abs", "Tanh", "Sigmoid", "Exp", "Sqrt", "Identity"]
UNARY_ANY = ["Identity"]
BINARY_NUM = ["Add", "Sub", "Mul", "Max", "Min"]
COMPARE = ["Equal", "Less", "Greater"]


def statically_broadcastable(x: tuple, y: tuple) -> bool:
    """Broadcasting that holds for every binding of the symbols: equal dims or a 1."""
    return all(p == q or p == 1 or q == 1 for p, q in zip(x[::-1], y[::-1], strict=False))


@st.composite
def random_graph(draw: st.DrawFn) -> tuple[Graph, dict[str, np.ndarray]]:
    g = Graph("fuzz")
    sizes = {"batch": draw(st.integers(0, 3)), "seq": draw(st.integers(1, 4))}
    pool: list[Value] = []
    feeds: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    for i in range(draw(st.integers(1, 3))):
        dtype = draw(st.sampled_from(DTYPES))
        rank = draw(st.integers(0, 3))
        shape = [draw(st.sampled_from([1, 2, 3, 0, "batch", "seq"])) for _ in range(rank)]
        v = g.add_input(f"in{i}", dtype, shape)
        concrete = [sizes[d] if isinstance(d, str) else d for d in shape]
        feeds[v.name] = (
            (rng.standard_normal(concrete) * 3).astype(v.dtype.numpy)
            if dtype != "bool"
            else rng.integers(0, 2, concrete).astype(bool)
        )
        pool.append(v)
    if draw(st.booleans()):
        c = rng.standard_normal((draw(st.integers(1, 3)),)).astype(np.float32)
        pool.append(g.add_constant(c, "c0"))
    for _ in range(draw(st.integers(1, 8))):
        a = draw(st.sampled_from(pool))
        kind = draw(st.sampled_from(["unary", "binary", "compare", "reduce", "cast", "transpose"]))
        try:
            if kind == "unary":
                ops = UNARY_FLOAT if a.dtype.is_float else UNARY_ANY
                node = g.add_node(draw(st.sampled_from(ops)), [a])
            elif kind in ("binary", "compare"):
                same = [v for v in pool if v.dtype == a.dtype and v.dtype.value != "bool"]
                if not same:
                    continue
                b = draw(st.sampled_from(same))
                if not statically_broadcastable(a.shape, b.shape):
                    continue
                op = draw(st.sampled_from(BINARY_NUM if kind == "binary" else COMPARE))
                node = g.add_node(op, [a, b])
            elif kind == "reduce":
                if a.type.rank == 0 or a.dtype.value == "bool":
                    continue
                axis = draw(st.integers(-a.type.rank, a.type.rank - 1))
                axes = g.add_constant(np.array([axis], np.int64), "axes")
                node = g.add_node(
                    "ReduceSum", [a, axes], {"keepdims": draw(st.sampled_from([0, 1]))}
                )
            elif kind == "cast":
                to = draw(st.sampled_from(["float32", "int64", "bool"]))
                from ecograph.ir import DType

                node = g.add_node("Cast", [a], {"to": DType(to).onnx})
            else:
                perm = draw(st.permutations(list(range(a.type.rank))))
                node = g.add_node("Transpose", [a], {"perm": list(perm)})
        except Exception as exc:
            assert "broadcast" in str(exc), exc
            continue
        pool.extend(node.outputs)
    produced = [v for v in pool if v.producer is not None]
    outs = draw(st.lists(st.sampled_from(produced or pool), min_size=1, max_size=3, unique_by=id))
    g.set_outputs(outs)
    return g, feeds


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graph())
def test_random_graphs_verify_round_trip_and_run(case):
    g, feeds = case
    verify(g)
    back = parse(to_text(g, inline_limit=None))
    assert explain_difference(g, back) is None
    assert explain_difference(g, g.copy()) is None
    with np.errstate(all="ignore"):
        out = interpret(g, feeds)  # checks every kernel result against the inferred types
        out_back = interpret(back, feeds)
    for name, arr in out.items():
        np.testing.assert_array_equal(arr, out_back[name])
