"""PassManager: the text form is printed only when asked for (dumps), the honest-`changed`
check still catches edits without it, and per-pass progress shows when forced or slow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import ecograph.ir.graph as graph_module
import ecograph.ir.text as text_module
import ecograph.passes.manager as manager_module
from ecograph.errors import PassError
from ecograph.ir import Graph, GraphBuilder
from ecograph.passes import Instrumentation, Pass, PassManager, PassResult, run_passes


def chain_graph(length: int = 12) -> Graph:
    """x -> Identity -> Mul(1) -> Relu -> ... with dead and foldable nodes for cleanup."""
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3])
    h = x
    for i in range(length):
        h = b.op("Identity", h)
        h = b.op("Mul", h, b.constant(np.array(1.0 + i, np.float32)))
        h = b.op("Relu", h)
        b.op("Neg", h)  # dead
    b.output(h)
    return b.graph


@pytest.fixture
def text_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count every way the text form can be printed: whole graphs and single nodes."""
    calls: list[str] = []
    real_node, real_graph = text_module.node_to_text, text_module.to_text

    def node_to_text(node: Any) -> str:
        calls.append("node")
        return real_node(node)

    def to_text(graph: Any, **kwargs: Any) -> str:
        calls.append("graph")
        return real_graph(graph, **kwargs)

    monkeypatch.setattr(text_module, "node_to_text", node_to_text)
    monkeypatch.setattr(text_module, "to_text", to_text)
    # Graph.__str__ goes through the printer text.py installed; a manager that imported
    # node_to_text by name would bypass the module attribute, so patch that name too.
    monkeypatch.setattr(graph_module, "_text_printer", to_text)
    monkeypatch.setattr(manager_module, "node_to_text", node_to_text, raising=False)
    return calls


def test_text_form_is_not_printed_without_dumps(text_calls: list[str]) -> None:
    graph = chain_graph()
    result = PassManager("default", Instrumentation()).run(graph)
    assert any(r.changed for r in result.records) and any(not r.changed for r in result.records)
    assert text_calls == []


def test_text_form_is_printed_for_dumps(text_calls: list[str], tmp_path: Path) -> None:
    PassManager("cleanup", Instrumentation(dump_dir=tmp_path)).run(chain_graph())
    assert "graph" in text_calls
    assert any(p.name.endswith(".after.txt") for p in tmp_path.iterdir())


def test_in_place_attribute_edit_is_still_caught_without_the_text_form() -> None:
    @dataclass
    class SneakyAttr(Pass):
        """Transpose(perm) -> Transpose(reversed perm) (but says it changed nothing)"""

        name: ClassVar[str] = "sneaky-attr"

        def run(self, graph: Graph) -> PassResult:
            for node in graph.find_nodes("Transpose"):
                node.attrs["perm"].reverse()  # in place: same list object
            return PassResult(False)

    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3])
    b.output(b.op("Transpose", x, perm=[1, 0], name="t"))
    graph = b.graph
    graph.node("t").attrs["perm"] = [0, 1]  # a list the pass edits in place
    with pytest.raises(PassError, match=r"sneaky-attr reported changed=False.*node t"):
        run_passes(graph, [SneakyAttr()])


def test_progress_lines_appear_when_forced(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_passes(chain_graph(), "cleanup", progress=True)
    err = capsys.readouterr().err
    assert "passes" in err
    assert f"{len(result.records)}pass" in err.replace(" ", "")  # the final count
    assert result.records[-1].pass_name in err  # the pass being run is named


def test_progress_is_off_when_asked_and_off_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_passes(chain_graph(), "cleanup", progress=False)
    run_passes(chain_graph(), "cleanup")  # None: stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""


def test_progress_shows_on_a_terminal_once_the_run_is_slow(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(manager_module, "_stderr_is_tty", lambda: True)
    monkeypatch.setattr(manager_module, "PROGRESS_DELAY_S", 3600.0)
    run_passes(chain_graph(), "cleanup")  # fast: the delay never passes
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(manager_module, "PROGRESS_DELAY_S", 0.0)
    run_passes(chain_graph(), "cleanup")
    assert "passes" in capsys.readouterr().err
