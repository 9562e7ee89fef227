"""optimize(): torch/ONNX/Graph in, compiled module + report out; accuracy budget enforced."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ecograph
from ecograph.api import AccuracyError
from ecograph.ir import graphs_equal
from ecograph.models import build_default_model, example_inputs
from ecograph.passes import Instrumentation, PassRecord

torch = pytest.importorskip("torch")


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(h.mean(dim=(2, 3)))


def test_optimize_torch_module_matches_and_leaves_the_module_alone(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    res = ecograph.optimize(model, (x,), target="x86", out_dir=tmp_path, measure=False)
    got = res.module(x)
    assert isinstance(got, torch.Tensor)  # torch in, torch out
    np.testing.assert_allclose(got.numpy(), model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert res.report.accuracy["cosine"] > 0.99999
    assert res.report.optimized.nodes < res.report.original.nodes  # BatchNorm folded
    saved = res.save(tmp_path / "saved")
    assert (saved / "artifact" / "manifest.json").is_file()
    assert (saved / "report.html").is_file()
    onnx_model = res.to_onnx(tmp_path / "opt.onnx")
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_model.SerializeToString())
    out = sess.run(None, {res.graph.inputs[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_accuracy_budget_violation_raises_and_leaves_the_graph_untouched(tmp_path):
    graph = build_default_model()
    snapshot = graph.copy()
    with pytest.raises(AccuracyError, match="budget"):
        ecograph.optimize(
            graph,
            example_inputs(),
            quantize="int4",
            accuracy_budget=1.5,
            out_dir=tmp_path,
            measure=False,
        )
    assert graphs_equal(graph, snapshot)


def _qdq_relu_graph(quantize_activations: bool) -> ecograph.ir.Graph:
    """x -> [QuantizeLinear -> DequantizeLinear ->] MatMul(w) -> Relu: with the first two, a
    model that rounds its own activations to codes (as ONNX Runtime's int8 models do)."""
    from ecograph.ir import GraphBuilder

    b = GraphBuilder()
    x = b.input("x", "float32", [2, 8])
    if quantize_activations:
        s, z = b.constant(np.float32(0.05)), b.constant(np.uint8(128))
        x = b.op("DequantizeLinear", b.op("QuantizeLinear", x, s, z), s, z)
    w = b.constant(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    b.output(b.op("Relu", b.op("MatMul", x, w), name="y"))
    return b.graph


def test_build_budget_is_looser_only_for_a_model_that_quantizes_its_activations():
    from ecograph.api import EXACT_BUDGET, REQUANTIZING_BUDGET, build_budget
    from ecograph.ir import GraphBuilder

    assert build_budget(_qdq_relu_graph(True)) == REQUANTIZING_BUDGET
    assert build_budget(_qdq_relu_graph(False)) == EXACT_BUDGET
    # Weights quantized by a constant QuantizeLinear round nothing at run time.
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 8])
    w = np.ones((8, 4), np.float32)
    wq = b.op("QuantizeLinear", b.constant(w), b.constant(np.float32(0.1)))
    b.output(b.op("MatMul", x, b.op("DequantizeLinear", wq, b.constant(np.float32(0.1)))))
    assert build_budget(b.graph) == EXACT_BUDGET


@pytest.mark.parametrize("own_quantization", [True, False])
def test_default_budget_of_a_model_that_quantizes_its_activations(
    tmp_path, monkeypatch, own_quantization
):
    """A compiled build 0.9995 from the interpreter (what one code flipped at a tie does to an
    int8 model) passes for a model that rounds its own activations, with a note saying why,
    and fails a float model, whose message does not blame a quantization it did not ask for."""
    import ecograph.api as api

    monkeypatch.setattr(
        api, "compare_outputs", lambda ref, out: {"cosine": 0.9995, "max_abs_error": 0.01}
    )
    graph = _qdq_relu_graph(own_quantization)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)}
    if own_quantization:
        res = ecograph.optimize(graph, feeds, out_dir=tmp_path, measure=False)
        assert any("quantizes its own activations (1 node(s)" in n for n in res.report.notes)
        return
    with pytest.raises(AccuracyError, match="No quantization was asked for"):
        ecograph.optimize(graph, feeds, out_dir=tmp_path, measure=False)


def test_quantized_optimize_reports_size_and_accuracy(tmp_path):
    res = ecograph.optimize(
        build_default_model(),
        example_inputs(),
        quantize="int8",
        out_dir=tmp_path,
        declared_power_watts=20.0,
    )
    r = res.report
    # int8 weights except the FFN down projection (after Gelu, kept float by the int8 preset):
    # 61,200 of 132,948 bytes
    assert r.optimized.bytes < 0.5 * r.original.bytes
    assert r.accuracy["cosine"] >= 0.99
    assert r.original_run.latency.p50_ms > 0 and r.optimized_run.latency.p50_ms > 0
    assert r.optimized_run.energy.kind in ("measured", "estimated")
    if r.optimized_run.energy.kind == "estimated":
        assert "declared power 20 W" in r.optimized_run.energy.method
    assert any(p["name"].startswith("quantize") for p in r.passes)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ecograph.EcographError, match="cannot optimize a int"):
        ecograph.optimize(42)
    with pytest.raises(ecograph.EcographError, match="quantize='int3'"):
        ecograph.optimize(build_default_model(), example_inputs(), quantize="int3")


def test_second_optimize_reuses_the_compile_cache(tmp_path, monkeypatch):
    import ecograph.backends.tvm as backend
    from ecograph.cache import CompileCache

    cache = CompileCache(tmp_path / "cache")
    calls = []
    real = backend.compile

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "compile", counting)
    feeds = example_inputs()
    first = ecograph.optimize(
        build_default_model(), feeds, cache=cache, measure=False, out_dir=tmp_path / "a"
    )
    second = ecograph.optimize(
        build_default_model(), feeds, cache=cache, measure=False, out_dir=tmp_path / "b"
    )
    assert [c.name for c in calls] == ["x86"]  # compiled once; the second run was a cache hit
    assert len(cache.entries()) == 1
    np.testing.assert_array_equal(first.module(**feeds), second.module(**feeds))


def test_static_int8_runs_integer_kernels_end_to_end(tmp_path):
    feeds = example_inputs()
    calib = [example_inputs(seed=s) for s in range(4)]
    res = ecograph.optimize(
        build_default_model(),
        feeds,
        quantize="int8-static",
        calibration_data=calib,
        out_dir=tmp_path,
        measure=False,
        # The numeric check runs on the example inputs, quantization included.
        instrumentation=Instrumentation(differential=True, dump_dir=tmp_path / "dumps"),
    )
    ops = [n.op_type for n in res.graph.nodes]
    assert ops.count("MatMulInteger") >= 4 and "MatMul" not in ops
    assert any(p["name"] == "lower-qdq-to-integer" and p["changed"] for p in res.report.passes)
    assert res.report.accuracy["cosine"] >= 0.99
    # One PassManager ran the pipeline and the quantization: one ledger row shape.
    assert all(isinstance(r, PassRecord) for r in res.pass_records)
    assert [r.pass_name for r in res.pass_records[-2:]] == ["quantize", "lower-qdq-to-integer"]
    assert len({tuple(sorted(p)) for p in res.report.passes}) == 1
    assert all(p["nodes_before"] is not None for p in res.report.passes)
    dumps = {p.name for p in (tmp_path / "dumps").iterdir()}
    assert any(d.endswith("-quantize.after.txt") for d in dumps)


def test_report_says_when_the_optimized_build_is_slower():
    from ecograph.api import slower_note
    from ecograph.report.green import GreenReport, ModelFacts, RunFacts
    from ecograph.report.measure import LatencyStats

    facts = ModelFacts(1, 1, 1, 1)
    fast, slow = LatencyStats(1.0, 1.2, 1.1, 10), LatencyStats(2.0, 2.5, 2.1, 10)
    r = GreenReport(
        "m",
        "arm",
        facts,
        facts,
        original_run=RunFacts("cpu", fast),
        optimized_run=RunFacts("cpu", slow),
    )
    assert "SLOWER than the original on arm" in slower_note(r, "quantize(mode='dynamic')")
    assert "2.00x" in slower_note(r, "q")
    r.optimized_run = RunFacts("cpu", fast)
    assert slower_note(r, "q") == ""


def test_optimize_with_profile_attaches_per_kernel_rows(tmp_path):
    import json

    from ecograph.report.green import read_report

    feeds = example_inputs()
    res = ecograph.optimize(
        build_default_model(), feeds, measure=False, profile=True, out_dir=tmp_path
    )
    prof = res.report.profile
    assert prof is not None and prof.rows
    assert sum(r.share for r in prof.rows) == pytest.approx(1.0)
    schedules = json.loads((res.artifact / "manifest.json").read_text())["schedules"]
    for row in prof.rows:
        if not row.is_runtime:
            want = schedules[row.kernel]
            assert row.rule == ("unscheduled" if want is None else want)
    assert "where the time goes" in res.report.table()
    res.save(tmp_path / "saved")
    assert "Where the time goes" in (tmp_path / "saved" / "report.html").read_text()
    assert read_report(tmp_path / "saved").profile == prof
    plain = ecograph.optimize(
        build_default_model(), feeds, measure=False, out_dir=tmp_path / "plain"
    )
    assert plain.report.profile is None


def tiny_graph():
    from ecograph.ir import GraphBuilder

    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 16])
    w = b.constant(rng.standard_normal((16, 16)).astype(np.float32))
    bias = b.constant(rng.standard_normal(16).astype(np.float32))
    h = b.op("Identity", b.op("Add", b.op("MatMul", x, w), bias))
    b.output(b.op("Relu", h))
    b.graph.name = "tiny"
    return b.graph


def tiny_feeds():
    return {"x": np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)}


def _manifest(artifact):
    import json

    return json.loads((artifact / "manifest.json").read_text())


def _can_cross_compile_arm() -> bool:
    import os
    import shutil

    from ecograph.backends.tvm.targets import ARM_CROSS_CXX

    return (
        os.uname().machine not in ("aarch64", "arm64") and shutil.which(ARM_CROSS_CXX) is not None
    )


@pytest.mark.skipif(not _can_cross_compile_arm(), reason="needs an x86 host with g++-aarch64")
def test_optimize_for_a_target_this_machine_cannot_run(tmp_path):
    from ecograph.errors import UsageError

    res = ecograph.optimize(tiny_graph(), tiny_feeds(), target="arm", out_dir=tmp_path)
    assert not res.runs_here
    with pytest.raises(UsageError, match="arm build cannot run on this machine"):
        res.module(**tiny_feeds())
    m = _manifest(res.artifact)
    assert m["target"]["family"] == "arm"
    assert m["pipeline"]["ecograph"]["spec"] == "default"
    r = res.report
    assert r.accuracy["cosine"] > 0.99999  # checked on an x86 build of the same graph
    notes = " ".join(r.notes)
    assert "accuracy checked on this host (x86 " in notes
    assert "the arm artifact was not run here" in notes
    assert "latency and energy not measured" in notes
    assert r.original_run is None and r.optimized_run is None and r.framework_run is None
    assert _manifest(tmp_path / "host-check")["target"]["family"] == "x86"
    with pytest.raises(UsageError, match="profile=True runs the model"):
        ecograph.optimize(tiny_graph(), tiny_feeds(), target="arm", profile=True)


def test_manifest_records_the_recipe_and_the_passes_that_ran(tmp_path):
    from ecograph.api import compile_cached, resolve_target

    res = ecograph.optimize(
        tiny_graph(), tiny_feeds(), quantize="int8", measure=False, out_dir=tmp_path
    )
    m = _manifest(res.artifact)
    recipe = m["pipeline"]["ecograph"]
    assert recipe["spec"] == "default"
    assert recipe["quantization"] == res.quantization and res.quantization.startswith("quantize")
    assert m["quantization"] == res.quantization
    ran = [p["name"] for p in recipe["passes"]]
    assert ran == [p["name"] for p in res.report.passes] and "quantize" in ran
    assert any(p["changed"] for p in recipe["passes"])
    # The older list form (pipeline spec, then quantization) still lands in the manifest.
    out = compile_cached(
        tiny_graph(), resolve_target("x86"), tmp_path / "listed", False, ["cleanup"], True
    )
    assert _manifest(out)["pipeline"]["ecograph"]["spec"] == "cleanup"
    plain = ecograph.compile(tiny_graph(), "x86", tmp_path / "plain")
    assert _manifest(plain)["pipeline"]["ecograph"] == {
        "spec": "",
        "quantization": None,
        "passes": [],
    }


def test_report_measures_torch_eager_as_a_baseline_and_restores_train_mode(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN().train()
    x = torch.randn(2, 3, 16, 16)
    res = ecograph.optimize(model, (x,), out_dir=tmp_path, declared_power_watts=10.0)
    assert model.training and model.bn.training  # the caller's flags are put back
    r = res.report
    assert r.framework == "torch eager" and "inference_mode" in r.framework_detail
    assert r.framework_run.latency.p50_ms > 0
    assert r.framework_run.energy.kind == r.optimized_run.energy.kind
    assert "against torch eager" in r.table()
    assert "Against torch eager" in r.to_html()


def test_report_measures_onnx_runtime_as_a_baseline(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 9
    onnx.checker.check_model(proto)
    res = ecograph.optimize(proto, tiny_feeds(), out_dir=tmp_path, declared_power_watts=10.0)
    r = res.report
    assert r.framework == "ONNX Runtime" and "CPUExecutionProvider" in r.framework_detail
    assert r.framework_run.latency.p50_ms > 0
    assert {row[0] for row in r.framework_rows()} >= {"latency p50 (ms)", "energy / inference"}


def test_graph_input_has_no_framework_baseline_and_progress_can_be_forced(tmp_path, capsys):
    res = ecograph.optimize(tiny_graph(), tiny_feeds(), out_dir=tmp_path, progress=True)
    assert res.report.framework_run is None
    assert any(
        n.startswith("no framework baseline: the model was given as a Graph")
        for n in res.report.notes
    )
    assert "passes" in capsys.readouterr().err


def test_runs_here_reason_is_the_reason_and_check_runs_here_adds_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """x86 code using an extension this CPU lacks (a host without AVX-512 simulated), ARM
    code here: the reason alone from runs_here_reason, the reason and the fix from
    check_runs_here."""
    import dataclasses

    from ecograph.api import check_runs_here, resolve_target, runs_here_reason
    from ecograph.backends.tvm import targets
    from ecograph.errors import BuildError

    monkeypatch.setattr(targets, "cpuinfo_flags", lambda: {"sse2", "avx", "avx2", "fma"})
    spec = dataclasses.replace(resolve_target("x86"), features=frozenset({"avx512f", "avx2"}))
    reason = runs_here_reason(spec)
    assert reason.endswith("uses avx512f, which this CPU lacks"), reason
    with pytest.raises(BuildError) as err:
        check_runs_here(spec)
    assert str(err.value) == (
        f"{reason}: it cannot run here; use --target x86 (this CPU) or build it with "
        f"'ecograph compile MODEL --target {spec.name}' and run 'ecograph profile "
        "ARTIFACT_DIR' (or ecograph.load) where it can run"
    )
    arm = resolve_target("arm")
    if arm.is_cross:  # an x86 host
        machine = os.uname().machine
        assert (
            runs_here_reason(arm) == f"target 'arm' builds arm code and this machine is {machine}"
        )
