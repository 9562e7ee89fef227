"""`make demo` runs ecograph.demo end to end: optimize for x86 with int8, cross-compile for
ARM and CUDA, run the saved x86 artifact, write the report."""

from __future__ import annotations

import json
import shutil

from ecograph import demo


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert demo.main(tmp_path) == 0
    out = capsys.readouterr().out
    assert "demo: OK" in out
    assert f"HTML report: {(tmp_path / 'report.html').resolve()}" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["accuracy"]["cosine"] >= 0.99
    # int8 weights except the FFN down projection, which the int8 preset keeps float
    assert report["optimized"]["bytes"] < 0.5 * report["original"]["bytes"]
    assert report["optimized_run"]["energy"]["kind"] in ("measured", "estimated")
    assert (tmp_path / "artifact" / "manifest.json").is_file()
    assert (tmp_path / "cuda" / "manifest.json").is_file()
    if shutil.which("aarch64-linux-gnu-g++"):
        assert (tmp_path / "arm" / "manifest.json").is_file()
    else:
        assert "arm   -> not built" in out
