"""Test helpers for pass authors: the ones ecograph's own pass tests use.

    from ecograph.passes.testing import check_rewrite, check_no_change

    # structure, numerics and idempotence:
    check_rewrite(EliminateNoOps(), BEFORE_TEXT, EXPECTED_TEXT)
    check_no_change(EliminateNoOps(), MUST_NOT_FIRE_TEXT)

Both run the pass through a PassManager with every instrumentation on: the verifier after the
pass, and a numeric differential check against the reference interpreter on sample inputs
(exact, or within the pass's declared tolerance).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ecograph.ir.graph import Graph
from ecograph.ir.text import explain_difference, parse
from ecograph.passes.core import Pass
from ecograph.passes.instrument import Instrumentation, PipelineResult
from ecograph.passes.manager import PassManager


def _graph(g: Graph | str) -> Graph:
    return parse(g) if isinstance(g, str) else g


def run_checked(
    pipeline: Pass | str | list,
    graph: Graph,
    feeds: Mapping[str, np.ndarray] | None = None,
    dump_dir: str | Path | None = None,
) -> PipelineResult:
    """Run `pipeline` on `graph` in place with verification and the differential check on."""
    items = [pipeline] if isinstance(pipeline, Pass) else pipeline
    inst = Instrumentation.all_on(dump_dir, sample_inputs=feeds)
    return PassManager(items, inst).run(graph)


def check_rewrite(
    p: Pass,
    before: Graph | str,
    expected: Graph | str | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
    idempotent: bool = True,
) -> Graph:
    """Run `p` on `before`; assert it reports a change, verifies, keeps the numerics, equals
    `expected` (if given) and, when `idempotent`, changes nothing on a second run."""
    graph = _graph(before)
    result = run_checked(p, graph, feeds)
    assert result.changed, f"{p.name} reported no change on:\n{graph}"
    if expected is not None:
        diff = explain_difference(graph, _graph(expected))
        assert diff is None, f"{p.name} result differs from expected: {diff}\n--- got:\n{graph}"
    if idempotent:
        again = graph.copy()
        second = run_checked(p, again, feeds)
        assert not second.changed, f"{p.name} is not idempotent: second run changed\n{again}"
        assert explain_difference(again, graph) is None
    return graph


def check_no_change(
    p: Pass, before: Graph | str, feeds: Mapping[str, np.ndarray] | None = None
) -> Graph:
    """Assert `p` leaves `before` untouched and says so (changed=False)."""
    graph = _graph(before)
    original = graph.copy()
    result = run_checked(p, graph, feeds)
    assert not result.changed, f"{p.name} changed a graph it must not touch:\n{graph}"
    diff = explain_difference(graph, original)
    assert diff is None, f"{p.name} said changed=False but edited the graph: {diff}"
    return graph
