"""Pass infrastructure: registry, pipeline specs, fixed points, requires, instrumentation,
divergence detection with bisection, and the pattern engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from ecograph.errors import NumericDivergenceError, PassError
from ecograph.ir import Graph, GraphBuilder, parse
from ecograph.passes import (
    Const,
    EliminateDeadCode,
    FixedPoint,
    Instrumentation,
    Op,
    Pass,
    PassManager,
    PassResult,
    Pattern,
    Rule,
    Var,
    apply_greedy,
    apply_once,
    bisect_pipeline,
    explain,
    get_pass,
    match,
    parse_pipeline,
    register_pass,
    registered_passes,
    registry,
    run_passes,
)


def small_graph() -> Graph:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3])
    a = b.op("Identity", x)
    y = b.op("Relu", b.op("Mul", a, b.constant(np.array(1.0, np.float32))), name="y")
    b.output(y)
    return b.graph


def test_every_builtin_pass_is_well_formed() -> None:
    passes = registered_passes()
    assert {"eliminate-dead-code", "fuse-attention", "fold-batchnorm", "fold-constants"} <= set(
        passes
    )
    for name, cls in passes.items():
        assert cls.name == name
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        assert "->" in summary, f"{name}: docstring must open with the rewrite: {summary!r}"


def test_pipeline_spec_strings() -> None:
    items = parse_pipeline("cleanup,fuse-attention,fold-batchnorm")
    assert isinstance(items[0], FixedPoint)
    assert [p.name for p in items[1:]] == ["fuse-attention", "fold-batchnorm"]
    (p,) = parse_pipeline("fold-constants(max_bytes=1024)")
    assert p.max_bytes == 1024  # type: ignore[attr-defined]
    assert p.describe() == "fold-constants(max_bytes=1024)"
    # A list mixes spec strings (several entries each) and pass objects.
    items = parse_pipeline(["cleanup,fuse-attention", EliminateDeadCode()])
    assert [type(i).__name__ for i in items] == ["FixedPoint", "FuseAttention", "EliminateDeadCode"]
    with pytest.raises(PassError, match="unknown pass or pipeline 'no-such-pass'"):
        parse_pipeline("cleanup,no-such-pass")
    with pytest.raises(PassError, match="bad options"):
        get_pass("fold-constants", nope=1)


def test_register_pass_checks_name_and_docstring() -> None:
    with pytest.raises(PassError, match="kebab-case"):

        @register_pass
        class BadName(Pass):
            """x -> x"""

            name = "Bad_Name"

    with pytest.raises(PassError, match="docstring"):

        @register_pass
        class NoDoc(Pass):
            name = "no-doc-pass"


def test_entry_point_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass
    class PluginPass(Pass):
        """Relu(x) -> Relu(x) (a plugin that does nothing)"""

        name: ClassVar[str] = "plugin-noop"

        def run(self, graph: Graph) -> PassResult:
            return PassResult(False)

    class FakeEntryPoint:
        name, value = "plugin-noop", "plugin:PluginPass"

        def load(self) -> type:
            return PluginPass

    calls = []

    def fake_entry_points(group: str) -> list:
        calls.append(group)
        return [FakeEntryPoint()]

    monkeypatch.setattr(registry.importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setitem(registry._PASSES, "placeholder", EliminateDeadCode)  # restored afterwards
    try:
        assert "plugin-noop" in registered_passes()
        assert calls == ["ecograph.passes"]
        assert run_passes(small_graph(), "plugin-noop").changed is False
    finally:
        registry._PASSES.pop("plugin-noop", None)


def test_fixed_point_cap_and_honest_changed(caplog: pytest.LogCaptureFixture) -> None:
    @dataclass
    class AlwaysChanges(Pass):
        """x -> x (claims a change every time, to exercise the cap)"""

        name: ClassVar[str] = "always-changes"

        def run(self, graph: Graph) -> PassResult:
            return PassResult(True)

    result = PassManager([FixedPoint([AlwaysChanges()], max_iterations=3)]).run(small_graph())
    assert len(result.records) == 3
    assert "still changed the graph after 3 rounds" in caplog.text
    # Second run of an idempotent pipeline reports no change.
    g = small_graph()
    assert run_passes(g, "cleanup").changed
    assert not run_passes(g, "cleanup").changed


def test_requires_runs_provider_or_fails() -> None:
    @dataclass
    class NeedsDce(Pass):
        """x -> x (requires dead code to be gone)"""

        name: ClassVar[str] = "needs-dce"
        requires: ClassVar[frozenset[str]] = frozenset({"no-dead-code"})

        def run(self, graph: Graph) -> PassResult:
            return PassResult(False)

    result = PassManager([NeedsDce()]).run(small_graph())
    assert [(r.pass_name, r.auto) for r in result.records] == [
        ("eliminate-dead-code", True),
        ("needs-dce", False),
    ]
    with pytest.raises(PassError, match="requires property 'no-dead-code'"):
        PassManager([NeedsDce()], auto_requires=False).run(small_graph())


def test_instrumentation_ledger_timing_dump(tmp_path: Path) -> None:
    g = small_graph()
    result = run_passes(g, "cleanup", Instrumentation.all_on(tmp_path))
    first = result.records[0]
    assert first.pass_name == "eliminate-no-ops" and first.changed
    assert first.nodes_before == 3 and first.nodes_after == 1
    assert first.seconds is not None and first.param_bytes_before == 4
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert "001-eliminate-no-ops.before.txt" in dumps
    assert parse((tmp_path / "001-eliminate-no-ops.after.txt").read_text()).nodes[0].op_type == (
        "Relu"
    )
    assert "eliminate-no-ops" in result.ledger()
    off = run_passes(small_graph(), "cleanup", Instrumentation(timing=False, ledger=False))
    assert off.records[0].seconds is None and off.records[0].nodes_before is None


@dataclass
class BreakExp(Pass):
    """Exp(x) -> Exp(x) * 1.001 (deliberately wrong, to test the differential check)"""

    name: ClassVar[str] = "break-exp"

    def run(self, graph: Graph) -> PassResult:
        changed = False
        for node in graph.find_nodes("Exp"):
            out = node.outputs[0]
            k = graph.add_constant(np.array(1.001, np.float32))
            bad = graph.add_node("Mul", [out, k], name=f"{node.name}_bad", after=node)
            for use in list(out.uses):
                if use.node is not bad:
                    graph.set_node_input(use.node, use.index, bad.output)
            changed = True
        return PassResult(changed)


def test_divergence_names_pass_and_node_and_writes_pair(tmp_path: Path) -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [4])
    e = b.op("Exp", b.op("Neg", x), name="e")
    b.output(b.op("Relu", b.op("Add", e, b.constant(np.array(1.0, np.float32))), name="y"))
    pipeline = ["cleanup", BreakExp(), "cleanup"]
    with pytest.raises(NumericDivergenceError) as info:
        PassManager(pipeline, Instrumentation.all_on(tmp_path)).run(b.graph.copy())
    err = info.value
    assert err.pass_name == "break-exp"
    assert err.node == "add"  # first node whose value differs
    assert err.dump is not None
    pair = Path(err.dump)
    before, after = (
        parse((pair / "before.txt").read_text()),
        parse((pair / "after.txt").read_text()),
    )
    assert len(before.nodes) <= 3 and "Mul" in [n.op_type for n in after.nodes]
    # Bisection after the fact: replay the pipeline, find the first pass that diverged.
    found = bisect_pipeline(b.graph, pipeline)
    assert found is not None and found.pass_name == "break-exp"
    assert bisect_pipeline(b.graph, "cleanup") is None


def test_verifier_failure_names_the_pass() -> None:
    @dataclass
    class BreakTypes(Pass):
        """Relu(x) -> Relu(x) with a wrong declared type"""

        name: ClassVar[str] = "break-types"

        def run(self, graph: Graph) -> PassResult:
            from ecograph.ir import TensorType

            graph.find_nodes("Relu")[0].outputs[0].type = TensorType("float32", [9])
            return PassResult(True)

    with pytest.raises(PassError, match="pass break-types left an invalid graph"):
        run_passes(small_graph(), [BreakTypes()])


# ------------------------------------------------------------------ pattern engine


def test_pattern_commutative_captures_and_consistency() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [3])
    z = b.input("z", "float32", [3])
    one = b.constant(np.array(2.0, np.float32))
    b.output(b.op("Mul", one, b.op("Add", x, x), name="m1"), b.op("Add", x, z, name="a2"))
    g = b.graph
    p = Pattern("double", Op("Mul", Op("Add", Var("v"), Var("v")), Const("c", value=2.0)))
    m = match(p, g.node("m1"))
    assert m is not None and m["v"] is x and m["c"] is one
    same = Pattern("same", Op("Add", Var("v"), Var("v")))
    assert match(same, g.node("a2")) is None  # x + z: $v cannot bind both


def test_explain_reports_failed_constraint() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [3])
    s = b.op("Sigmoid", x)
    b.output(b.op("Mul", x, s, name="silu"), s)
    p = Pattern("silu", Op("Mul", Var("x"), Op("Sigmoid", Var("x"))))
    (miss,) = explain(p, b.graph)
    assert miss.node == "silu" and "graph output" in miss.reason
    b2 = GraphBuilder()
    y = b2.input("y", "float32", [3])
    b2.output(b2.op("Mul", y, b2.op("Tanh", y), name="mish_like"))
    (miss,) = explain(p, b2.graph)
    assert "is Tanh, not Sigmoid" in miss.reason


def test_drivers_single_walk_and_greedy() -> None:
    rule = Rule(Pattern("double-neg", Op("Neg", Op("Neg", Var("x")))), lambda graph, m: m["x"])
    b = GraphBuilder()
    x = b.input("x", "float32", [3])
    b.output(b.op("Relu", b.op("Neg", b.op("Neg", b.op("Neg", b.op("Neg", x))))))
    once = b.graph.copy()
    assert apply_once(once, [rule]).total == 2
    assert [n.op_type for n in once.nodes] == ["Relu"]
    # A graph output cannot be handed to a graph input: the rewrite is declined, not forced.
    b = GraphBuilder()
    x = b.input("x", "float32", [3])
    b.output(b.op("Neg", b.op("Neg", b.op("Neg", b.op("Neg", x))), name="y"))
    greedy = b.graph.copy()
    stats = apply_greedy(greedy, [rule])
    assert stats.total == 1
    assert [n.op_type for n in greedy.nodes] == ["Neg", "Neg"]
    assert greedy.outputs[0].name == "y"
    assert any("cannot replace" in d for d in stats.declined)


def test_dishonest_changed_and_crashes_are_named() -> None:
    @dataclass
    class Sneaky(Pass):
        """Relu(x) -> Abs(x) (but says it changed nothing)"""

        name: ClassVar[str] = "sneaky"

        def run(self, graph: Graph) -> PassResult:
            for node in graph.find_nodes("Relu"):
                graph.add_node("Abs", [node.input(0)], before=node)
            return PassResult(False)

    with pytest.raises(PassError, match="sneaky reported changed=False but edited the graph"):
        run_passes(small_graph(), [Sneaky()])

    @dataclass
    class Crashes(Pass):
        """x -> x (raises)"""

        name: ClassVar[str] = "crashes"

        def run(self, graph: Graph) -> PassResult:
            raise KeyError("oops")

    with pytest.raises(PassError, match="pass crashes crashed: KeyError"):
        run_passes(small_graph(), [Crashes()])
