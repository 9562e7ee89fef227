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
