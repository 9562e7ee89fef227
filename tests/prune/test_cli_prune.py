"""`ecograph prune`: compress() on the command line, with its exit codes (usage 2, input
rejected 3, budget missed 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.cli.main import main
from ecograph.frontend.onnx import from_onnx
from ecograph.ir import Graph, interpret
from tests.prune.test_compress import TRAIN, VALIDATION, encoder

MODEL = "tests.prune.test_cli_prune:model"


def model() -> Graph:
    return encoder(quiet=(1, 3))


def write_sets(folder: Path, sets: list[dict[str, np.ndarray]]) -> str:
    folder.mkdir()
    savez: Any = np.savez  # numpy's stubs read **arrays as its keyword options
    for i, feeds in enumerate(sets):
        savez(folder / f"{i:03d}.npz", **feeds)
    return str(folder)


@pytest.fixture
def data(tmp_path: Path) -> tuple[str, str]:
    return write_sets(tmp_path / "val", VALIDATION), write_sets(tmp_path / "train", TRAIN)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["--json", "prune", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_ratios_prune_compile_and_report(
    tmp_path: Path, data: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    val, train = data
    out, report = tmp_path / "pruned.onnx", tmp_path / "report"
    code, result = run(
        capsys, MODEL, "-o", str(out), "--ratios", "layers=0.5", "--validation", val,
        "--train", train, "--report", str(report),
    )  # fmt: skip
    assert code == 0, result
    statuses = {c["label"]: c["status"] for c in result["candidates"]}
    # timing on this machine decides between kept and rolled back; both are honest outcomes
    assert statuses["unpruned"] == "baseline"
    assert statuses["layers=0.5"] in ("chosen", "rolled back")
    written = from_onnx(out)
    blocks_left = len(written.find_nodes("Attention"))
    assert blocks_left == (2 if statuses["layers=0.5"] == "chosen" else 4)
    # the written model computes what the report says: its cosine to the original
    cos = []
    for feeds in VALIDATION:
        a = interpret(written, feeds)["y"].astype(np.float64).ravel()
        b = interpret(model(), feeds)["y"].astype(np.float64).ravel()
        cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert result["accuracy"]["cosine"] == pytest.approx(float(np.mean(cos)), abs=1e-6)
    html = (report / "report.html").read_text()
    assert "Pruning candidates" in html and "<svg" in html
    assert json.loads((report / "report.json").read_text())["candidates"] == result["candidates"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--ratios", "ffn=0.5", "--auto", "--budget", "0.9"],  # both
        [],  # neither
        ["--auto"],  # no budget
        ["--ratios", "ffn=0.5", "--distill"],  # no --train
        ["--ratios", "mlp=0.5"],  # unknown kind
        ["--ratios", "ffn=half"],  # not a number
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, data: tuple[str, str], capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    code, result = run(
        capsys, MODEL, "-o", str(tmp_path / "o.onnx"), "--validation", data[0], *extra
    )
    assert code == 2, result
    assert result["exit_code"] == 2


def test_unknown_kind_is_named(
    tmp_path: Path, data: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, result = run(
        capsys,
        MODEL,
        "-o",
        str(tmp_path / "o.onnx"),
        "--validation",
        data[0],
        "--ratios",
        "mlp=0.5",
    )
    assert "'mlp'" in result["error"]


def test_validation_not_matching_the_inputs_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    val = write_sets(tmp_path / "val", [{"tokens": VALIDATION[0]["x"]}])
    code, result = run(
        capsys, MODEL, "-o", str(tmp_path / "o.onnx"), "--validation", val, "--ratios", "ffn=0.5"
    )
    assert code == 3, result
    assert "tokens" in result["error"] and "'x'" in result["error"]


def test_budget_missed_exits_4(
    tmp_path: Path, data: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = run(
        capsys, MODEL, "-o", str(tmp_path / "o.onnx"), "--validation", data[0],
        "--ratios", "ffn=0.5", "--budget", "0.99999",
    )  # fmt: skip
    assert code == 4, result
    assert "--budget" in result["error"] and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(("flag", "expected"), [((), True), (("--no-reconstruct",), False)])
def test_reconstruct_flag_reaches_compress(
    tmp_path: Path,
    data: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: tuple[str, ...],
    expected: bool,
) -> None:
    import ecograph.prune.compress as compress_module

    seen: dict[str, Any] = {}

    def fake(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise compress_module.PruningError("stop here")

    monkeypatch.setattr(compress_module, "compress", fake)
    val, _ = data
    out = str(tmp_path / "pruned.onnx")
    code = main(["prune", MODEL, "-o", out, "--ratios", "ffn=0.5", "--validation", val, *flag])
    assert code == 3 and "stop here" in capsys.readouterr().err
    assert seen["reconstruct"] is expected
