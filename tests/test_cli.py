"""The ecograph CLI: --help everywhere, inspect, report, cache, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ecograph.cli import build_parser, main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecograph.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_every_command_has_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"inspect", "report", "cache"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0


def test_inspect_default_model(capsys):
    assert main(["inspect", "default", "--bind", "batch=1", "--bind", "seq=16"]) == 0
    out = capsys.readouterr().out
    assert "LayerNormalization x2" in out
    assert "FLOPs: 1,114,112" in out
    assert "unsupported ops: none" in out


def test_bad_model_argument_is_a_clear_error():
    proc = run("inspect", "no_such_file")
    assert proc.returncode == 2
    assert "neither an existing .onnx file nor 'package.module:factory'" in proc.stderr
    proc = run("inspect", "json:nothing_here")
    assert proc.returncode == 2 and "has no callable 'nothing_here'" in proc.stderr


def test_report_and_cache_commands(tmp_path, capsys):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "report"))
    from test_green import sample_report

    sample_report().write(tmp_path)
    (tmp_path / "report.html").unlink()
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").is_file()
    assert "HTML report:" in capsys.readouterr().out
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "(0 entries)" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "c")]) == 0


def test_optimize_with_quantize_in_the_pipeline(tmp_path, capsys):
    from ecograph.frontend.onnx import from_onnx

    out = tmp_path / "q.onnx"
    args = ["optimize", "default", "--pipeline", "default,quantize(mode=dynamic)", "-o", str(out)]
    assert main(args) == 0
    ledger = capsys.readouterr().out
    assert any(line.startswith("quantize ") and "changed" in line for line in ledger.splitlines())
    assert "quantized=4" in ledger
    ops = [n.op_type for n in from_onnx(out).nodes]
    assert ops.count("MatMulInteger") == 4 and "MatMul" not in ops


def test_optimize_compile_run_and_bench_commands(tmp_path, capsys):
    import numpy as np
    import onnxruntime as ort

    from ecograph.frontend.onnx import from_onnx
    from ecograph.ir import interpret
    from ecograph.models import example_inputs

    onnx_path = tmp_path / "opt.onnx"
    assert main(["optimize", "default", "-o", str(onnx_path), "--quantize", "int8"]) == 0
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
    for name, arr in feeds.items():
        np.save(tmp_path / f"{name}.npy", arr)
    assert (
        main(
            [
                "run",
                str(artifact),
                "--input",
                f"x={tmp_path / 'x.npy'}",
                "--input",
                f"mask={tmp_path / 'mask.npy'}",
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "float32[1, 8, 64]" in out
    saved = np.load(next((tmp_path / "out").glob("*.npy")))
    np.testing.assert_allclose(saved, y, rtol=1e-4, atol=1e-4)
    assert (
        main(["bench", str(artifact), "--dim", "4", "--repeat", "5", "--declared-watts", "10"]) == 0
    )
    out = capsys.readouterr().out
    assert "latency p50" in out
    assert "(estimated:" in out or "(measured:" in out


# ------------------------------------------------------------------ profile


def test_profile_command_prints_a_table_and_json(capsys):
    import json

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
    import json

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
