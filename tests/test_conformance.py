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


# ------------------------------------------------------------------- TVM column

# Claimed ops whose every node test is excluded from the TVM column, each for reasons that
# the exclusions state: string ops (TVM has no string dtype); ops whose node tests have only
# constant or shape inputs, so lowering folds them to constants and nothing runs in TVM
# (Constant, ConstantOfShape, MelWeightMatrix; Range also has Loop bodies and newer types).
_TVM_ALL_EXCLUDED = {
    "Constant",
    "ConstantOfShape",
    "MelWeightMatrix",
    "Range",
    "RegexFullMatch",
    "StringConcat",
    "StringNormalizer",
    "StringSplit",
}


@pytest.fixture(scope="module")
def tvm_suite() -> tuple[list[CaseResult], dict[str, OpSummary]]:
    pytest.importorskip("tvm")
    return conformance.run(backend="tvm")


@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(SUPPORTED_OPS))
def test_claimed_op_passes_its_node_tests_through_tvm(
    tvm_suite: tuple[list[CaseResult], dict[str, OpSummary]], op: str
) -> None:
    _, summaries = tvm_suite
    summary = summaries[op]
    assert not summary.problems, "\n".join(summary.problems)
    if op in _TVM_ALL_EXCLUDED:
        assert summary.passed == 0, f"{op} now passes through TVM; drop it from the list"
    else:
        assert summary.passed >= 1, f"every node test of {op} is excluded from the TVM column"


@pytest.mark.slow
def test_tvm_exclusions_state_reasons_and_match_tests(
    tvm_suite: tuple[list[CaseResult], dict[str, OpSummary]],
) -> None:
    import fnmatch

    results, _ = tvm_suite
    assert all(len(r.detail) > 20 for r in results if r.status == "excluded")
    names = [r.test for r in results]
    for op, patterns in conformance.TVM_EXCLUSIONS.items():
        for pattern in patterns:
            assert any(fnmatch.fnmatchcase(n, pattern) for n in names), (op, pattern)
    # Bound shape inputs are reported on the passing tests they apply to.
    assert any(r.detail.startswith("inputs bound as constants") for r in results)


def test_tvm_column_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tvm")
    out = tmp_path / "tvm.json"
    code = conformance.main(
        ["--backend", "tvm", "--ops", "Softmax", "ReduceSum", "--json", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("backend: tvm")
    data = json.loads(out.read_text())
    assert data["backend"] == "tvm"
    assert data["ops"]["Softmax"]["passed"] >= 10 and data["ops"]["ReduceSum"]["passed"] >= 10


def test_tvm_column_catches_a_wrong_lowering(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break Relu's lowering: its node tests must fail in the TVM column."""
    pytest.importorskip("tvm")
    from ecograph.backends.tvm import context

    monkeypatch.setitem(context.LOWERINGS, ("", "Relu"), lambda ctx: context.R.abs(ctx.arg(0)))
    _, summaries = conformance.run(["Relu"], backend="tvm")
    assert summaries["Relu"].failed >= 1


def test_static_inputs_are_the_shape_parameters() -> None:
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("axes", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph)
    assert conformance.static_inputs(model) == ["axes"]
