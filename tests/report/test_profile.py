"""The per-kernel profiler: rows cover every VM call, shares add up, rules come from the
manifest, unscheduled kernels are marked, and it needs only TVM's runtime."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import ecograph
from ecograph.errors import EcographError
from ecograph.models import build_default_model, example_inputs
from ecograph.report.green import GreenReport, ModelFacts, read_report
from ecograph.report.profile import (
    NOT_RECORDED,
    RUNTIME,
    UNSCHEDULED,
    KernelRow,
    Profile,
    profile_model,
    random_inputs,
    rule_for,
)
from tests.backends.tvm_helpers import run_with_runtime_only_tvm


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("profile") / "encoder-x86"
    return ecograph.compile(build_default_model(), "x86", out)


def _called_symbols(model: ecograph.backends.tvm.CompiledModel, feeds: dict) -> Counter:
    """What the VM calls in one inference, seen by an instrument of the test's own."""
    seen: Counter = Counter()

    def count(func, symbol, before_run, ret, *args):
        if before_run:
            seen[symbol] += 1
        return 0

    model.vm.set_instrument(count)
    try:
        model(**feeds)
    finally:
        model.vm.set_instrument(None)
    return seen


def _edited_copy(artifact: Path, dest: Path, edit) -> Path:
    shutil.copytree(artifact, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_rows_cover_every_vm_call_and_shares_add_up(artifact: Path) -> None:
    model = ecograph.load(artifact)
    feeds = example_inputs(batch=1, seq=8)
    prof = profile_model(model, feeds, repeat=5, warmup=1)
    called = _called_symbols(model, feeds)
    assert {r.kernel: r.calls for r in prof.rows} == dict(called)
    assert prof.calls_per_inference == sum(called.values())
    assert sum(r.share for r in prof.rows) == pytest.approx(1.0)
    assert prof.kernel_sum_ms == pytest.approx(sum(r.ms for r in prof.rows))
    shares = [r.share for r in prof.rows]
    assert shares == sorted(shares, reverse=True)
    assert all(r.ms > 0 and r.median_ms > 0 for r in prof.rows)
    assert prof.uninstrumented_ms > 0 and prof.instrumented_ms > 0
    assert (prof.repeat, prof.warmup, prof.target) == (5, 1, "x86")
    # The model still runs, uninstrumented, and gives the same answer afterwards.
    np.testing.assert_allclose(
        model(**feeds), ecograph.ir.interpret(build_default_model(), feeds)["y"], atol=2e-5
    )


def test_rules_come_from_the_manifest(artifact: Path) -> None:
    model = ecograph.load(artifact)
    schedules = model.manifest["schedules"]
    prof = profile_model(model, example_inputs(), repeat=3, warmup=1)
    kernels = [r for r in prof.rows if not r.is_runtime]
    assert kernels, "no kernel rows"
    for row in kernels:
        want = schedules[row.kernel]  # every kernel the VM called is in the manifest
        assert row.rule == (UNSCHEDULED if want is None else want), row
        assert row.unscheduled == (want is None)
    runtime = {r.kernel for r in prof.rows if r.is_runtime}
    assert "vm.builtin.alloc_storage" in runtime and "shape_func" in runtime
    assert all(k.startswith("vm.") or k == "shape_func" for k in runtime)


def test_an_unscheduled_kernel_is_marked(artifact: Path, tmp_path: Path) -> None:
    model = ecograph.load(artifact)
    ruled = sorted(k for k, rule in model.manifest["schedules"].items() if rule is not None)
    assert ruled, "the default model has no kernel a rule scheduled"
    victim = ruled[0]

    def unschedule(manifest: dict) -> None:
        manifest["schedules"][victim] = None

    edited = ecograph.load(_edited_copy(artifact, tmp_path / "edited", unschedule))
    prof = profile_model(edited, example_inputs(), repeat=3, warmup=1)
    row = next(r for r in prof.rows if r.kernel == victim)
    assert row.rule == UNSCHEDULED and row.unscheduled
    assert prof.unscheduled_share >= row.share > 0
    line = next(ln for ln in prof.table().splitlines() if f" {victim} " in ln)
    assert line.startswith("!") and "unscheduled" in line
    assert any(ln.startswith("! unscheduled:") for ln in prof.summary())
    assert prof.to_dict()["rows"][prof.rows.index(row)]["unscheduled"] is True


def test_a_manifest_without_schedules_says_not_recorded(artifact: Path, tmp_path: Path) -> None:
    edited = ecograph.load(_edited_copy(artifact, tmp_path / "old", lambda m: m.pop("schedules")))
    prof = profile_model(edited, example_inputs(), repeat=2, warmup=0)
    assert {r.rule for r in prof.rows} == {NOT_RECORDED, RUNTIME}
    assert any("records no schedule rules" in n for n in prof.notes)


def test_rule_for() -> None:
    schedules = {"fused_matmul": "matmul", "softmax": None}
    assert rule_for("fused_matmul", schedules) == "matmul"
    assert rule_for("softmax", schedules) == UNSCHEDULED
    assert rule_for("vm.builtin.alloc_storage", schedules) == RUNTIME
    assert rule_for("shape_func", schedules) == RUNTIME
    assert rule_for("other", schedules) == NOT_RECORDED
    assert rule_for("softmax", None) == NOT_RECORDED


def test_bad_arguments_are_clear_errors(artifact: Path) -> None:
    model = ecograph.load(artifact)
    with pytest.raises(EcographError, match="repeat >= 1"):
        profile_model(model, example_inputs(), repeat=0)
    with pytest.raises(EcographError, match="lack \\['mask'\\]"):
        profile_model(model, {"x": example_inputs()["x"]})
    with pytest.raises(EcographError, match="has no Relax VM"):
        profile_model(object(), example_inputs())


def test_random_inputs_follow_the_declared_shapes() -> None:
    specs = [
        {"name": "x", "dtype": "float32", "shape": ["batch", "seq", 4]},
        {"name": "ids", "dtype": "int64", "shape": ["batch", "seq"]},
    ]
    feeds = random_inputs(specs, {"seq": 7})
    assert feeds["x"].shape == (1, 7, 4) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (1, 7) and feeds["ids"].dtype == np.int64
    assert set(np.unique(feeds["ids"])) <= {0, 1}


def _sample_profile() -> Profile:
    rows = [
        KernelRow("fused_matmul_add", "matmul", 2, 0.6, 0.55, 0.6),
        KernelRow("softmax", UNSCHEDULED, 1, 0.3, 0.3, 0.3),
        KernelRow("vm.builtin.null_value", RUNTIME, 10, 0.1, 0.1, 0.1),
    ]
    return Profile(rows, 1.0, 1.4, 0.8, repeat=10, warmup=2, device="cpu:0", target="x86")


def test_profile_summary_states_both_times_and_the_floor() -> None:
    prof = _sample_profile()
    text = "\n".join(prof.summary())
    assert "0.800 ms without the instrument, 1.400 ms with it" in text
    assert "adds about 0.600 ms" in text
    assert "10.00 us per call" in text  # 0.1 ms over 10 calls of a builtin that does nothing
    assert "1 of 2 kernels, 30.0 %" in text
    # the builtin's 0.1 ms is all floor: 10 % of the time raw, none of it net
    assert "runtime (VM builtins): 10.0 % of the time; 0.0 % with the timer floor" in text
    rows = [*prof.rows[:2], KernelRow("vm.builtin.alloc_storage", RUNTIME, 2, 0.12, 0.12, 0.12)]
    heavier = Profile([*rows, prof.rows[2]], 1.0, 1.4, 0.8, repeat=10, warmup=2)
    net = heavier.runtime_share_net  # (0.12 - 0.02) of 0.58 + 0.29 + 0.10 + 0
    assert net is not None and abs(net - 0.10 / 0.97) < 1e-9
    assert Profile.from_dict(json.loads(json.dumps(prof.to_dict()))) == prof
    short = prof.table(limit=1)
    assert "2 more rows, 40.0 % together" in short and "softmax" not in short


def test_green_report_carries_the_profile(tmp_path: Path) -> None:
    facts = ModelFacts(1, 1, 1, 1)
    report = GreenReport("m", "x86", facts, facts, profile=_sample_profile())
    assert "where the time goes" in report.table()
    assert "softmax" in report.table()
    _, html_path = report.write(tmp_path)
    page = html_path.read_text()
    assert "Where the time goes" in page
    assert '<tr class="unscheduled"><td>softmax</td>' in page
    assert "<script" not in page
    back = read_report(tmp_path)
    assert back.profile == report.profile and back.to_dict() == report.to_dict()
    plain = GreenReport("m", "x86", facts, facts)
    assert "where the time goes" not in plain.table()
    assert "Where the time goes" not in plain.to_html()


def test_profiles_with_only_the_tvm_runtime(artifact: Path) -> None:
    code = (
        "import sys\n"
        "from ecograph.backends.tvm import load\n"
        "from ecograph.report.profile import profile_model, random_inputs\n"
        f"m = load({str(artifact)!r})\n"
        "p = profile_model(m, random_inputs(m.manifest['inputs'], {'seq': 4}), repeat=2)\n"
        "assert p.rows and abs(sum(r.share for r in p.rows) - 1) < 1e-9\n"
        "assert 'tvm.relax' not in sys.modules, 'compiler imported'\n"
    )
    run_with_runtime_only_tvm(code)
