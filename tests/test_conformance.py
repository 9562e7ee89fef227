"""ONNX's own backend node tests, run through from_onnx and the reference interpreter.

Every op ecograph claims (`ecograph.conformance.SUPPORTED_OPS`) must pass all its node tests
except those excluded with a written reason, and pass at least one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecograph import conformance
from ecograph.conformance import SUPPORTED_OPS, CaseResult, OpSummary


@pytest.fixture(scope="module")
def suite() -> tuple[list[CaseResult], dict[str, OpSummary]]:
    return conformance.run()


def test_at_least_120_op_types_are_claimed() -> None:
    assert len(SUPPORTED_OPS) >= 120


@pytest.mark.parametrize("op", sorted(SUPPORTED_OPS))
def test_claimed_op_passes_its_node_tests(
    suite: tuple[list[CaseResult], dict[str, OpSummary]], op: str
) -> None:
    _, summaries = suite
    summary = summaries.get(op)
    assert summary is not None, f"onnx has no node tests for {op}; do not claim it"
    assert not summary.problems, "\n".join(summary.problems)
    assert summary.passed >= 1, f"every node test of {op} is excluded; nothing is checked"


def test_every_exclusion_has_a_reason(
    suite: tuple[list[CaseResult], dict[str, OpSummary]],
) -> None:
    results, _ = suite
    excluded = [r for r in results if r.status == "excluded"]
    assert excluded, "the suite is expected to exclude float8/int2 tests"
    assert all(len(r.detail) > 20 for r in excluded)


def test_exclusion_patterns_all_match_something(
    suite: tuple[list[CaseResult], dict[str, OpSummary]],
) -> None:
    """A stale exclusion (its test renamed or fixed) would hide nothing but mislead readers."""
    import fnmatch

    results, _ = suite
    names = [r.test for r in results]
    for op, patterns in SUPPORTED_OPS.items():
        for pattern in patterns:
            assert any(fnmatch.fnmatchcase(n, pattern) for n in names), (op, pattern)


def test_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "conformance.json"
    code = conformance.main(["--ops", "Relu", "Softmax", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Softmax" in printed and "claimed ops: 2" in printed
    data = json.loads(out.read_text())
    assert set(data["ops"]) == {"Relu", "Softmax"}
    assert all(t["status"] in ("passed", "excluded") for t in data["tests"])
    assert data["ops"]["Softmax"]["passed"] >= 10


def test_a_wrong_kernel_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself can fail: break Relu and its tests must fail."""
    import numpy as np

    from ecograph.ir.registry import get_schema

    schema = get_schema("Relu")
    monkeypatch.setattr(schema, "kernel", lambda x: np.abs(x))
    _, summaries = conformance.run(["Relu"])
    assert summaries["Relu"].failed >= 1
