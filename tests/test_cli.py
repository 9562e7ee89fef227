"""The ecograph CLI: --help everywhere, exit codes, --json/--quiet/--verbose/--debug/--version,
usage errors as one line, optimize through ecograph.optimize (report, calibration, budget),
compile/run/bench/profile, report and cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ecograph.cli import EXIT_CODES, build_parser, main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecograph.cli", *args], capture_output=True, text=True, timeout=300
    )


def one_line_error(err: str) -> str:
    """The single error line a failed command printed on stderr (and nothing else)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def tiny_onnx(path: Path, seed: int = 0) -> Path:
    """y = x @ W: one float input x[2, 8], W[8, 4]; an ONNX file built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ecograph.ir.registry import ONNX_OPSET

    w = np.random.default_rng(seed).standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """The bundled default model compiled for x86 (inputs x[batch, seq, 64], mask)."""
    import ecograph
    from ecograph.models import build_default_model

    return ecograph.compile(build_default_model(), "x86", tmp_path_factory.mktemp("a") / "x86")


# ------------------------------------------------------------- help, version


def test_every_command_has_help_with_the_exit_codes(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"inspect", "optimize", "compile", "run", "bench", "report", "cache"} <= set(commands)
    for name in ["", *commands]:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"] if name else ["--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert EXIT_CODES in out, name
        assert "--json" in out and "--debug" in out and "--quiet" in out, name
    assert "4  accuracy: the optimized model missed the accuracy budget" in EXIT_CODES


def test_version_names_ecograph_tvm_and_python(capsys):
    import platform

    import tvm

    import ecograph

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"ecograph {ecograph.__version__}"
    assert lines[1] == f"TVM {tvm.__version__}"
    assert lines[2].startswith(f"Python {platform.python_version()} ")


# ------------------------------------------------------------------- inspect


def test_inspect_default_model(capsys):
    assert main(["inspect", "default", "--bind", "batch=1", "--bind", "seq=16"]) == 0
    out = capsys.readouterr().out
    assert "LayerNormalization x2" in out
    assert "FLOPs: 1,114,112" in out
    assert "unsupported ops: none" in out


def test_inspect_prunable_lists_the_groups(capsys):
    # The bundled block: one attention (4 heads of 16), an FFN of 128, two residual branches;
    # the hidden size (64) reaches the graph output, so its group is frozen and says why.
    assert main(["inspect", "default", "--prunable"]) == 0
    out = capsys.readouterr().out
    assert "prunable groups (as captured): 4 of 5 can shrink" in out
    assert "heads group heads:wk:1 (4 units, prunable)" in out
    assert "ffn group ffn:w1:1 (128 units, prunable)" in out
    assert "(64 units, frozen: reaches graph output %y)" in out
    assert main(["--json", "inspect", "default", "--prunable", "--pipeline", "default"]) == 0
    groups = json.loads(capsys.readouterr().out)["prunable"]
    kinds = sorted((g["kind"], g["size"], g["frozen"] is None) for g in groups)
    assert ("ffn", 128, True) in kinds and ("residual", 64, False) in kinds
    assert [k for k in kinds if k[0] == "layer"] == [("layer", 1, True)] * 2


def test_json_quiet_and_verbose(capsys):
    # --json before or after the command: only JSON on stdout.
    for argv in (["--json", "inspect", "default"], ["inspect", "default", "--json"]):
        assert main([*argv, "--bind", "batch=1", "--bind", "seq=16"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["stats"]["flops"] == 1_114_112
        assert [i["name"] for i in data["inputs"]] == ["x", "mask"]
        assert data["unsupported_ops"] == []
    assert main(["-q", "inspect", "default"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["inspect", "default", "--verbose"]) == 0
    captured = capsys.readouterr()
    assert "ecograph: loading default" in captured.err and "unsupported ops" in captured.out
    # --quiet still prints errors.
    assert main(["inspect", "no_such_file", "--quiet"]) == 2
    assert "neither an existing .onnx file" in one_line_error(capsys.readouterr().err)
    assert main(["inspect", "default", "-q", "-v"]) == 2  # they exclude each other
    assert "not allowed with argument" in one_line_error(capsys.readouterr().err)


# ---------------------------------------------------------------- exit codes


def test_exit_codes_of_the_real_process(tmp_path):
    proc = run("inspect", "no_such_file")
    assert proc.returncode == 2
    assert "neither an existing .onnx file nor 'package.module:factory'" in proc.stderr
    assert "Traceback" not in proc.stderr
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not a model")
    proc = run("inspect", str(garbage))
    assert proc.returncode == 3, proc.stderr
    assert str(garbage) in proc.stderr and "Traceback" not in proc.stderr


def test_model_argument_errors(tmp_path, monkeypatch, capsys):
    cases = [
        (["inspect", "missing.onnx"], 2, "MODEL missing.onnx does not exist"),
        (["inspect", "json:nothing_here"], 2, "has no callable 'nothing_here'"),
        (["inspect", "no_such_module_xyz:f"], 2, "no such module"),
    ]
    (tmp_path / "bad_models.py").write_text(
        "def explode():\n    raise RuntimeError('weights not found')\n"
    )
    (tmp_path / "broken_import.py").write_text("raise ValueError('half-written module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases += [
        (["inspect", "bad_models:explode"], 3, "raised RuntimeError: weights not found"),
        (["inspect", "broken_import:f"], 3, "ValueError: half-written module"),
    ]
    for argv, code, text in cases:
        assert main(argv) == code, argv
        assert text in one_line_error(capsys.readouterr().err), argv


def test_usage_errors_are_one_line_and_exit_2(tmp_path, capsys):
    art = str(tmp_path)  # never loaded: the command line is refused first
    cases = [
        (["bench", art, "--repeat", "0"], "argument --repeat: expected an integer >= 1, got 0"),
        (["bench", art, "--dim", "x"], "argument --dim: expected an integer, got 'x'"),
        (["inspect", "default", "--bind", "seq"], "argument --bind: expected SYM=N"),
        (["run", art, "--input", "x.npy"], "argument --input: expected NAME=FILE.npy"),
        (["run", art, "--device", "cuda:abc"], "expected cpu, cuda or cuda:N, got 'cuda:abc'"),
        (["bench", art, "--device", "gpu0"], "expected cpu, cuda or cuda:N, got 'gpu0'"),
        (["run", art, "--input", f"x={tmp_path / 'no.npy'}"], "no.npy does not exist"),
        (["optimize", "default", "-o", "o.onnx", "--accuracy-budget", "1.5"], "in (0, 1]"),
        (["optimize", "default", "-o", "o.onnx", "--quantize", "int9"], "invalid choice"),
        (["compile", "default", "--target", "x86", "--quantize", "int8-static"], "invalid"),
        (["no-such-command"], "invalid choice"),
    ]
    for argv, text in cases:
        assert main(argv) == 2, argv
        line = one_line_error(capsys.readouterr().err)
        assert text in line, (argv, line)
        assert line.startswith("ecograph"), line


def test_rejected_inputs_exit_3(tmp_path, capsys):
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["run", str(tmp_path), "--input", f"x={pickled}"]) == 3
    line = one_line_error(capsys.readouterr().err)
    assert str(pickled) in line and "not a readable .npy array" in line


def test_huge_random_bench_input_is_refused_before_allocating(artifact, capsys):
    # x is [batch, seq, 64]: --dim 10^8 asks for 6.4e17 float32 elements.
    assert main(["bench", str(artifact), "--dim", "100000000", "--repeat", "1"]) == 3
    line = one_line_error(capsys.readouterr().err)
    assert "input 'x' would be float32[100000000, 100000000, 64]" in line
    assert "of memory available; lower --dim" in line


def test_internal_error_is_one_line_exit_1_and_debug_shows_the_traceback(monkeypatch, capsys):
    import ecograph.ir.stats

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(ecograph.ir.stats, "graph_stats", broken)
    assert main(["inspect", "default"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert line == (
        "ecograph inspect: error: internal error: ZeroDivisionError: division by zero (run "
        "with --debug for the traceback; please report it)"
    )
    assert main(["--debug", "inspect", "default"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert err.rstrip().endswith("please report it)")
    assert main(["inspect", "default", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == 1 and out["error"].startswith("internal error: ZeroDivisionError")


def test_debug_traceback_and_json_for_ecograph_and_parse_errors(capsys):
    assert main(["inspect", "no_such_file", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "UsageError" in err
    assert main(["--json", "inspect", "no_such_file"]) == 2
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["exit_code"] == 2 and "neither an existing .onnx file" in data["error"]
    assert "neither an existing .onnx file" in captured.err
    assert main(["--json", "bench", "art", "--repeat", "0"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "error": "argument --repeat: expected an integer >= 1, got 0 (see 'ecograph bench --help')",
        "exit_code": 2,
    }


# -------------------------------------------------------------------- report


def test_report_and_cache_commands(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).parent / "report"))
    from test_green import sample_report

    sample_report().write(tmp_path)
    (tmp_path / "report.html").unlink()
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").is_file()
    assert "HTML report:" in capsys.readouterr().out
    assert main(["report", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"]["model"] == "encoder_block"
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "(0 entries)" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "c")]) == 0


def test_report_on_a_missing_or_malformed_report_json(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in one_line_error(capsys.readouterr().err)
    assert main(["report", str(tmp_path)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"{tmp_path / 'report.json'} does not exist" in line
    for text, why in (("{not json", "JSONDecodeError"), ("{}", "KeyError"), ("[1]", "")):
        (tmp_path / "report.json").write_text(text)
        assert main(["report", str(tmp_path)]) == 3, text
        line = one_line_error(capsys.readouterr().err)
        assert f"{tmp_path / 'report.json'} is not a readable ecograph report ({why}" in line
        assert not (tmp_path / "report.html").exists()


# ------------------------------------------------------------------ optimize


def test_optimize_with_quantize_in_the_pipeline(tmp_path, capsys):
    from ecograph.frontend.onnx import from_onnx

    out = tmp_path / "q.onnx"
    args = ["optimize", "default", "--pipeline", "default,quantize(mode=dynamic)", "-o", str(out)]
    assert main([*args, "--accuracy-budget", "0.99"]) == 0
    ledger = capsys.readouterr().out
    assert any(line.startswith("quantize ") and "changed" in line for line in ledger.splitlines())
    assert "quantized=4" in ledger
    ops = [n.op_type for n in from_onnx(out).nodes]
    assert ops.count("MatMulInteger") == 4 and "MatMul" not in ops


def test_quantization_inside_the_pipeline_gets_the_quantized_budget(tmp_path, capsys):
    # Issue 11: `--pipeline "default,quantize(mode=dynamic)"` works from the CLI; the default
    # budget is the quantized one (0.99) as with --quantize, not the exact 0.99999.
    out = tmp_path / "q.onnx"
    argv = ["optimize", "default", "-o", str(out), "--pipeline", "default,quantize(mode=dynamic)"]
    assert main([*argv, "--no-measure", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "quantize" in [p["name"] for p in data["passes"]]
    assert 0.99 <= data["accuracy"]["cosine"] < 0.99999
    # an explicit budget still rules: the exact one is missed (exit 4)
    assert main([*argv, "--no-measure", "--accuracy-budget", "0.99999"]) == 4
    capsys.readouterr()


def test_optimize_report_records_pipeline_and_quantization(tmp_path, capsys):
    out, report = tmp_path / "o.onnx", tmp_path / "report"
    argv = ["optimize", "default", "-o", str(out), "--quantize", "int8", "--report", str(report)]
    assert main([*argv, "--declared-watts", "10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert out.is_file() and data["output"] == str(out)
    assert (report / "report.html").is_file()
    saved = json.loads((report / "report.json").read_text())
    assert saved["optimized_run"]["latency"]["p50_ms"] > 0  # measured by default
    assert saved["accuracy"]["cosine"] == data["accuracy"]["cosine"] >= 0.99
    manifest = json.loads((report / "artifact" / "manifest.json").read_text())
    recipe = manifest["pipeline"]["ecograph"]
    assert recipe["spec"] == "default"
    # dynamic int8: the preset's per-token scales, float after Gelu (docs/quantization.md)
    quantization = "quantize(activations='token', float_after=('Gelu',))"
    assert recipe["quantization"] == data["quantization"] == quantization
    assert [p["name"] for p in recipe["passes"]] == [p["name"] for p in data["passes"]]
    assert "quantize" in [p["name"] for p in recipe["passes"]]
    # what the preset kept in float is in the report, not only in the pass log
    kept = [n for n in saved["notes"] if n.startswith("quantize: ") and "float_after" in n]
    assert kept and "input from Gelu" in kept[0], saved["notes"]
    assert main(["report", str(report)]) == 0  # the CLI reads back what it wrote
    assert "HTML report:" in capsys.readouterr().out


def test_dynamic_int8_on_a_cnn_says_the_convolutions_stay_float(tmp_path, monkeypatch, capsys):
    """`--quantize int8` (dynamic) quantizes matmuls only: on a CNN the command says which
    convolutions it kept in float and which preset quantizes them."""
    (tmp_path / "cnn_models.py").write_text(
        "import torch\n"
        "def small():\n"
        "    torch.manual_seed(0)\n"
        "    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),\n"
        "        torch.nn.Conv2d(8, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 4))\n"
        "    return m.eval(), (torch.randn(1, 3, 8, 8),)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "o.onnx"
    argv = ["optimize", "cnn_models:small", "-o", str(out), "--quantize", "int8", "--no-measure"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    note = [line for line in err.splitlines() if "kept in float" in line]
    assert len(note) == 1, err
    assert note[0].startswith("ecograph: note: quantize: 2 node(s) kept in float: ")
    assert note[0].count("(Conv)") == 2 and "'int8-static'" in note[0]


def test_optimize_missing_the_accuracy_budget_exits_4(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    argv = ["optimize", "default", "-o", str(out), "--quantize", "int8", "--no-measure"]
    assert main([*argv, "--accuracy-budget", "1"]) == 4
    err = capsys.readouterr().err
    assert "< budget 1.0" in err and "Traceback" not in err
    assert "the budget is --accuracy-budget COSINE (now 1.0)" in one_line_error(err)
    assert not out.exists()


def test_static_quantization_needs_calibration(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["optimize", "default", "-o", str(out), "--quantize", "int8-static"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "pass --calibration FOLDER" in line and "does not calibrate on random data" in line
    argv = ["optimize", "default", "-o", str(out), "--calibration", str(tmp_path)]
    assert main(argv) == 2
    assert "add --quantize int8-static" in one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_calibration_folder_of_npz_files(tmp_path, capsys):
    from ecograph.frontend.onnx import from_onnx
    from ecograph.models import example_inputs

    calib = tmp_path / "calib"
    calib.mkdir()
    argv = ["optimize", "default", "-o", str(tmp_path / "o.onnx"), "--quantize", "int8-static"]
    argv += ["--calibration", str(calib), "--no-measure"]
    assert main(argv) == 2  # empty folder
    assert "holds no .npz or .npy files" in one_line_error(capsys.readouterr().err)

    np.savez(calib / "bad.npz", x=example_inputs()["x"])  # no mask
    assert main(argv) == 3
    line = one_line_error(capsys.readouterr().err)
    assert str(calib / "bad.npz") in line and "missing ['mask']" in line
    np.savez(
        calib / "bad.npz", x=example_inputs()["x"].astype(np.float64), mask=example_inputs()["mask"]
    )
    assert main(argv) == 3
    assert "array 'x' is float64[2, 16, 64]" in one_line_error(capsys.readouterr().err)
    (calib / "bad.npz").unlink()

    for seed in range(3):
        np.savez(calib / f"set{seed}.npz", **example_inputs(seed=10 + seed))
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "static" in data["quantization"]
    ops = [n.op_type for n in from_onnx(tmp_path / "o.onnx").nodes]
    assert "MatMulInteger" in ops and "QuantizeLinear" in ops


def _quantize_scales(path: Path) -> list[float]:
    """The scales of the QuantizeLinear nodes of an ONNX file (initializers or Constants)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return [
        float(np.asarray(consts[n.input[1]]).reshape(-1)[0])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
    ]


def test_calibration_folder_of_npy_files_sets_the_ranges(tmp_path, capsys):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(3)
    scales = []
    for factor in (1.0, 10.0):
        calib = tmp_path / f"calib{factor:g}"
        calib.mkdir()
        for i in range(4):
            np.save(calib / f"{i}.npy", (rng.standard_normal((2, 8)) * factor).astype(np.float32))
        out = tmp_path / f"o{factor:g}.onnx"
        argv = ["optimize", str(model), "-o", str(out), "--quantize", "int8-static"]
        assert main([*argv, "--calibration", str(calib), "--no-measure"]) == 0
        assert "first calibration set" in capsys.readouterr().err
        scales.append(_quantize_scales(out))
    assert len(scales[0]) == len(scales[1]) >= 1
    # The activation ranges come from the files: ten times the data, about ten times the scale.
    assert scales[1][0] / scales[0][0] == pytest.approx(10.0, rel=0.5)

    # .npy files are for single-input models only.
    calib = tmp_path / "npy_for_two"
    calib.mkdir()
    np.save(calib / "0.npy", np.zeros((2, 16, 64), np.float32))
    argv = ["optimize", "default", "-o", str(tmp_path / "d.onnx"), "--quantize", "int8-static"]
    assert main([*argv, "--calibration", str(calib)]) == 3
    assert "the model has 2 inputs ['x', 'mask']" in one_line_error(capsys.readouterr().err)


# ---------------------------------------------------- compile, run, bench


def test_optimize_compile_run_and_bench_commands(tmp_path, capsys):
    import onnxruntime as ort

    from ecograph.frontend.onnx import from_onnx
    from ecograph.ir import interpret
    from ecograph.models import example_inputs

    onnx_path = tmp_path / "opt.onnx"
    argv = ["optimize", "default", "-o", str(onnx_path), "--quantize", "int8"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    feeds = example_inputs(batch=1, seq=8)
    sess = ort.InferenceSession(str(onnx_path))
    assert sess.run(None, feeds)[0].shape == (1, 8, 64)
    # The reference is ONNX semantics (the interpreter): ONNX Runtime's u8 x s8 MatMulInteger
    # kernel saturates int16 partial sums on this CPU, so its int8 numbers are not exact.
    y = next(iter(interpret(from_onnx(onnx_path), feeds).values()))

    targets = ["x86", "cuda:sm_90"]
    import shutil

    if shutil.which("aarch64-linux-gnu-g++"):
        targets.append("arm:cortex-a72")
    args = ["compile", str(onnx_path), "-o", str(tmp_path / "build"), "--pipeline", "cleanup"]
    for t in targets:
        args += ["--target", t]
    assert main(args) == 0
    table = capsys.readouterr().out
    for t in targets:
        assert t in table
    assert "FAILED" not in table

    artifact = tmp_path / "build" / "x86"
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["pipeline"]["ecograph"]["spec"] == "cleanup"
    assert manifest["pipeline"]["ecograph"]["passes"]  # the passes that ran are recorded
    for name, arr in feeds.items():
        np.save(tmp_path / f"{name}.npy", arr)
    inputs = ["--input", f"x={tmp_path / 'x.npy'}", "--input", f"mask={tmp_path / 'mask.npy'}"]
    assert main(["run", str(artifact), *inputs, "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "float32[1, 8, 64]" in out
    saved = np.load(next((tmp_path / "out").glob("*.npy")))
    np.testing.assert_allclose(saved, y, rtol=1e-4, atol=1e-4)
    assert main(["run", str(artifact), *inputs, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["outputs"][0]["shape"] == [1, 8, 64]
    assert data["outputs"][0]["max"] == pytest.approx(float(saved.max()), rel=1e-5)

    bench = ["bench", str(artifact), "--dim", "4", "--repeat", "5", "--declared-watts", "10"]
    assert main(bench) == 0
    out = capsys.readouterr().out
    assert "latency p50" in out
    assert "(estimated:" in out or "(measured:" in out
    assert main([*bench, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["latency"]["runs"] >= 5 and data["inputs"]["x"] == [4, 4, 64]
    assert data["energy"]["kind"] in ("estimated", "measured")


def test_compile_exit_code_is_the_failed_targets(tmp_path, capsys):
    argv = ["compile", "default", "-o", str(tmp_path), "--target", "x86", "--target", "z80"]
    assert main([*argv, "--pipeline", "cleanup", "--json"]) == 2  # an unknown target: usage
    data = json.loads(capsys.readouterr().out)
    status = {t["target"]: t["status"] for t in data["targets"]}
    assert status == {"x86": "ok", "z80": "failed"}
    assert "--target z80" in data["targets"][1]["error"]
    assert (tmp_path / "x86" / "manifest.json").is_file()


# ------------------------------------------------------------------ profile


def test_profile_command_prints_a_table_and_json(capsys):
    assert main(["profile", "default", "--repeat", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("profile of default on cpu") and "x[2, 16, 64]" in lines[0]
    header = lines[1].split()
    assert header == ["kernel", "rule", "calls", "ms", "median", "ms", "share"]
    assert "without the instrument" in out and "runtime (VM builtins)" in out
    for line in lines[3:]:
        if not line.strip():
            break
        mark, rest = line[:1], line[3:].split()
        assert (mark == "!") == (rest[1] == "unscheduled"), line  # marked iff unscheduled

    argv = ["profile", "default", "--repeat", "3", "--warmup", "1", "--json"]
    assert main([*argv, "--bind", "batch=1", "--bind", "seq=8"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inputs"] == {"x": [1, 8, 64], "mask": [1, 8]}
    assert sum(r["share"] for r in data["rows"]) == pytest.approx(1.0)
    assert {r["rule"] for r in data["rows"] if r["kernel"].startswith("vm.")} == {"runtime"}
    assert any(r["rule"] == "matmul" for r in data["rows"])
    assert data["uninstrumented_ms"] > 0 and data["repeat"] == 3


def test_profile_command_on_an_artifact_marks_unscheduled_kernels(tmp_path, capsys):
    import ecograph
    from ecograph.models import build_default_model

    artifact = ecograph.compile(build_default_model(), "x86", tmp_path / "a")
    manifest = json.loads((artifact / "manifest.json").read_text())
    ruled = sorted(k for k, rule in manifest["schedules"].items() if rule is not None)
    manifest["schedules"][ruled[0]] = None  # as if no rule had scheduled it
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    assert main(["profile", str(artifact), "--repeat", "2", "--bind", "seq=4"]) == 0
    out = capsys.readouterr().out
    assert "x[1, 4, 64]" in out.splitlines()[0]  # batch: no example inputs, so 1
    line = next(ln for ln in out.splitlines() if f" {ruled[0]} " in ln)
    assert line.startswith("!") and " unscheduled " in line
    for other in ruled[1:]:
        line = next((ln for ln in out.splitlines() if f" {other} " in ln), None)
        if line is not None:  # scheduled kernels the VM called keep their rule
            assert not line.startswith("!") and f" {manifest['schedules'][other]} " in line
    assert main(["profile", str(artifact), "--target", "x86"]) == 2
    assert "drop --target" in capsys.readouterr().err


def test_profile_command_refuses_targets_that_cannot_run_here(tmp_path, capsys):
    import os

    from ecograph.backends.tvm.targets import detect_cuda_arch

    if os.uname().machine not in ("aarch64", "arm64"):
        assert main(["profile", "default", "--target", "arm"]) == 2
        err = capsys.readouterr().err
        assert "target 'arm'" in err and "cannot run here" in err and "ecograph compile" in err
    if detect_cuda_arch() is None:
        assert main(["profile", "default", "--target", "cuda"]) == 2
        assert "needs a CUDA GPU and none is visible here" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["profile", str(tmp_path / "empty")]) == 2
    assert "not an ecograph artifact" in capsys.readouterr().err
    assert main(["profile", "default", "--bind", "nope=3"]) == 2
    assert "no input has such a dim" in capsys.readouterr().err


def test_quiet_drops_what_native_code_writes_to_stderr(monkeypatch, capfd):
    import os

    import ecograph.ir.stats

    real = ecograph.ir.stats.graph_stats

    def noisy(*args, **kwargs):  # as TVM's C++ logging does: straight to file descriptor 2
        os.write(2, b"[native] Warning: dead code\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(ecograph.ir.stats, "graph_stats", noisy)
    assert main(["inspect", "default"]) == 0
    assert "[native] Warning" in capfd.readouterr().err
    assert main(["inspect", "default", "--quiet"]) == 0
    assert capfd.readouterr() == ("", "")
    assert main(["inspect", "no_such_file", "--quiet"]) == 2  # errors still show
    assert "neither an existing .onnx file" in capfd.readouterr().err


def test_optimize_for_a_target_this_machine_cannot_run(tmp_path, capsys):
    from ecograph.backends.tvm.targets import detect_cuda_arch

    if detect_cuda_arch() is not None:
        pytest.skip("this machine runs CUDA builds")
    out, report = tmp_path / "o.onnx", tmp_path / "report"
    argv = ["optimize", "default", "-o", str(out), "--target", "cuda:sm_90", "--report"]
    assert main([*argv, str(report), "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["runs_here"] is False and data["accuracy"]["cosine"] >= 0.99999
    assert "does not run on this machine" in captured.err
    manifest = json.loads((report / "artifact" / "manifest.json").read_text())
    assert manifest["target"]["family"] == "cuda"
    assert json.loads((report / "report.json").read_text())["optimized_run"] is None
