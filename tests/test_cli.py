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
