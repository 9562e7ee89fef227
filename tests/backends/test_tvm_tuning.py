"""MetaSchedule tuning: cache keys, a tiny real tuning run, and reuse of its database."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

import ecograph
from ecograph.backends.tvm import load, targets, tuning
from ecograph.backends.tvm.driver import lower_graph
from ecograph.errors import BuildError
from ecograph.ir import Graph, GraphBuilder, interpret
from tests.backends.tvm_helpers import lowering_target


def matmul_graph(seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder("mm")
    x = b.input("x", "float32", [16, 32])
    w = b.constant(rng.standard_normal((32, 16)).astype(np.float32), "w")
    b.output(b.op("MatMul", x, w, name="y"))
    return b.graph


def _key(graph: Graph, preset: str) -> str:
    from tvm import relax

    target = targets.resolve(preset).tvm_target()
    with target:
        legal = relax.get_pipeline("zero")(lower_graph(graph, lowering_target()).mod)
    return tuning.workload_key(legal, target)


def test_workload_key_is_stable_and_target_specific() -> None:
    assert _key(matmul_graph(), "x86:skylake-avx512") == _key(matmul_graph(), "x86:skylake-avx512")
    assert _key(matmul_graph(), "x86:skylake-avx512") != _key(matmul_graph(), "arm")
    assert _key(matmul_graph(0), "arm") != _key(matmul_graph(1), "arm")  # weights differ


def test_non_positive_budget_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="positive trial budget"):
        ecograph.compile(matmul_graph(), "x86", tmp_path / "a", tune=-1, tuning_cache=tmp_path)


@pytest.mark.slow
def test_tiny_tuning_run_is_recorded_and_reused(tmp_path: Path) -> None:
    """4 MetaSchedule trials for one matmul (minutes on a busy 2-core machine), then a
    rebuild that must reuse the cached database and do no tuning."""
    cache = tmp_path / "cache"
    out = ecograph.compile(matmul_graph(), "x86", tmp_path / "a", tune=4, tuning_cache=cache)
    first = json.loads((out / "manifest.json").read_text())["tuning"]
    assert first["trials"] == 4 and first["reused"] is False and first["seconds"] > 0
    assert (
        "MetaScheduleApplyDatabase"
        in json.loads((out / "manifest.json").read_text())["pipeline"]["tvm"]
    )
    x = np.random.default_rng(2).standard_normal((16, 32)).astype(np.float32)
    np.testing.assert_allclose(
        load(out)(x), interpret(matmul_graph(), {"x": x})["y"], rtol=1e-5, atol=1e-5
    )

    start = time.perf_counter()
    again = ecograph.compile(matmul_graph(), "x86", tmp_path / "b", tune=4, tuning_cache=cache)
    second = json.loads((again / "manifest.json").read_text())["tuning"]
    assert second["reused"] is True and second["seconds"] == 0
    assert second["cache_key"] == first["cache_key"]
    assert time.perf_counter() - start < 60
