"""MetaSchedule over ecograph's default CPU schedules: the trial split, the never-slower guard
(real measurements both ways), cache reuse, and a small real tuning run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

import ecograph
from ecograph.backends.tvm import load, targets, tuning
from ecograph.backends.tvm.build import build_module, cpu_pipeline
from ecograph.backends.tvm.driver import lower_graph
from ecograph.backends.tvm.schedules import Matmul
from ecograph.errors import BuildError
from ecograph.ir import Graph, GraphBuilder, interpret


def matmul_graph(seed: int = 0, m: int = 16, k: int = 32, n: int = 16) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder("mm")
    x = b.input("x", "float32", [m, k])
    w = b.constant(rng.standard_normal((k, n)).astype(np.float32), "w")
    b.output(b.op("MatMul", x, w, name="y"))
    return b.graph


def mlp_graph() -> Graph:
    """Two kernels in the default build: matmul + bias + ReLU, and a matmul."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("mlp")
    x = b.input("x", "float32", [32, 128])
    w1 = b.constant(rng.standard_normal((128, 256)).astype(np.float32), "w1")
    b1 = b.constant(rng.standard_normal(256).astype(np.float32), "b1")
    w2 = b.constant(rng.standard_normal((256, 64)).astype(np.float32), "w2")
    h = b.op("Relu", b.op("Add", b.op("MatMul", x, w1), b1))
    b.output(b.op("MatMul", h, w2, name="y"))
    return b.graph


def kernels_of(graph: Graph, preset: str = "x86") -> tuple[Any, list[tuning.Kernel], Any]:
    spec = targets.resolve(preset)
    target = spec.tvm_target()
    pipeline, _ = cpu_pipeline(spec, target)
    fused, kernels = tuning.default_kernels(lower_graph(graph, spec).mod, pipeline, target)
    return fused, kernels, target


def _key(graph: Graph, preset: str) -> str:
    fused, _, target = kernels_of(graph, preset)
    return tuning.workload_key(fused, target)


def test_workload_key_is_stable_and_target_specific() -> None:
    assert _key(matmul_graph(), "x86:skylake-avx512") == _key(matmul_graph(), "x86:skylake-avx512")
    assert _key(matmul_graph(), "x86:skylake-avx512") != _key(matmul_graph(), "arm")
    assert _key(matmul_graph(0), "arm") != _key(matmul_graph(1), "arm")  # weights differ


def test_tasks_are_the_default_builds_fused_kernels() -> None:
    """Matmul + bias + ReLU is one task, as in the default build; each task carries the
    schedule ecograph's rule gave it."""
    _, kernels, _ = kernels_of(mlp_graph())
    chosen = build_module(mlp_graph(), "x86").kernels
    assert sorted(k.name for k in kernels) == sorted(chosen)
    for kernel in kernels:
        assert kernel.static and kernel.calls == 1
        assert kernel.default.attrs["ecograph.schedule"] == chosen[kernel.name] == "matmul"
        assert not kernel.workload["main"].attrs.get("tirx.is_scheduled", 0)


def test_kernels_with_fast_math_are_tunable() -> None:
    """Tasks start before the fast-math rewrite: MetaSchedule estimates each task's FLOPs
    first, and fails on the rewrite's Let expressions ("Do not have a default for prim.Let")."""
    from tvm.s_tir.analysis import estimate_tir_flops

    b = GraphBuilder("softmax_erf")
    x = b.input("x", "float32", [64, 128])
    b.output(b.op("Erf", b.op("Softmax", x, axis=-1), name="y"))
    _, kernels, _ = kernels_of(b.graph)
    assert kernels
    for kernel in kernels:
        assert estimate_tir_flops(kernel.workload) > 0
        assert "T.erf" in kernel.workload.script() and "T.erf" not in kernel.default.script()


def test_a_pipeline_without_the_schedule_pass_or_that_fails_is_a_build_error() -> None:
    import tvm

    spec = targets.resolve("x86")
    mod, target = lower_graph(matmul_graph(), spec).mod, spec.tvm_target()

    @tvm.transform.module_pass(opt_level=0, name="NoSchedules")
    def no_schedules(m: Any, _ctx: Any) -> Any:
        return m

    @tvm.transform.module_pass(opt_level=0, name="Broken")
    def broken(m: Any, _ctx: Any) -> Any:
        raise RuntimeError("lost a symbol")

    with pytest.raises(BuildError, match="EcographCPUSchedules"):
        tuning.default_kernels(mod, no_schedules, target)
    with pytest.raises(BuildError, match="lost a symbol"):
        tuning.default_kernels(mod, broken, target)


def test_non_positive_budget_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="positive trial budget"):
        ecograph.compile(matmul_graph(), "x86", tmp_path / "a", tune=-1, tuning_cache=tmp_path)


def test_xgboost_is_the_cost_model() -> None:
    from tvm.s_tir import meta_schedule as ms

    assert tuning.cost_model_name() == "xgb"
    model = ms.cost_model.CostModel.create(tuning.cost_model_name(), num_tuning_cores=1)
    assert isinstance(model, ms.cost_model.XGBModel)


# ------------------------------------------------------------------ the trial split


@pytest.mark.parametrize(
    ("shares", "budget", "floor", "expected"),
    [
        ([0.6, 0.3, 0.1], 64, 8, [32, 20, 12]),  # floors, then the rest by share
        ([0.1, 0.6, 0.3], 64, 8, [12, 32, 20]),
        ([0.6, 0.3, 0.1], 16, 8, [8, 8, 0]),  # two floors: the two largest shares
        ([0.6, 0.3, 0.1], 5, 8, [5, 0, 0]),  # under one floor: all to the largest
        ([0.5, 0.0, 0.5], 20, 8, [10, 0, 10]),  # no share, no trials
        ([0.0, 0.0], 20, 8, [0, 0]),
        ([0.9, 0.1], 0, 8, [0, 0]),
    ],
)
def test_allocate_trials_cases(
    shares: list[float], budget: int, floor: int, expected: list[int]
) -> None:
    assert tuning.allocate_trials(shares, budget, floor) == expected


def test_allocate_trials_is_monotone_floored_and_exact() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(1, 12))
        shares = list(rng.random(n) * (rng.random(n) > 0.2))
        budget, floor = int(rng.integers(0, 300)), int(rng.integers(1, 20))
        trials = tuning.allocate_trials(shares, budget, floor)
        positive = [i for i, s in enumerate(shares) if s > 0]
        assert sum(trials) == (budget if positive else 0)
        assert all(t == 0 for i, t in enumerate(trials) if shares[i] == 0)
        tuned = [t for t in trials if t > 0]
        if budget >= floor:
            assert all(t >= floor for t in tuned)
            assert len(tuned) == min(len(positive), budget // floor)
        for i in positive:
            for j in positive:
                if shares[i] > shares[j]:
                    assert trials[i] >= trials[j], (shares, budget, floor, trials)


# ------------------------------------------------------------------ the never-slower guard


def test_prefer_tuned_needs_a_clear_noise_aware_win() -> None:
    assert tuning.prefer_tuned([1.0, 1.01, 0.99], [0.5, 0.51, 0.5])
    assert not tuning.prefer_tuned([1.0, 1.01, 0.99], [1.2, 1.2, 1.21])  # slower
    assert not tuning.prefer_tuned([1.0, 1.0, 1.0], [0.97, 0.97, 0.97])  # inside the margin
    # 10 % faster, but the default's samples spread over 40 %: noise, keep the default
    assert not tuning.prefer_tuned([0.8, 1.0, 1.2], [0.9, 0.9, 0.9])
    assert not tuning.prefer_tuned([], [0.1])


def _unscheduled_trace(kernel: tuning.Kernel) -> Any:
    from tvm import s_tir

    sch = s_tir.Schedule(kernel.workload)
    sch.get_sblock("root")  # a trace with no instruction at all is not a valid record
    return sch.trace


def _rule_trace(kernel: tuning.Kernel, target: Any) -> Any:
    """The trace of ecograph's matmul rule on this kernel: a real, much faster schedule."""
    sch = Matmul(targets.resolve("x86")).apply(kernel.workload["main"], target, False)
    assert sch is not None
    return sch.trace


def _database_with(kernel: tuning.Kernel, trace: Any, target: Any, claimed_secs: float) -> Any:
    from tvm.s_tir import meta_schedule as ms

    db = ms.database.MemoryDatabase()
    workload = db.commit_workload(kernel.workload)
    args = ms.arg_info.ArgInfo.from_prim_func(kernel.workload["main"])
    db.commit_tuning_record(ms.database.TuningRecord(trace, workload, [claimed_secs], target, args))
    return db


@pytest.fixture(scope="module")
def measurer() -> tuning.Measurer:
    return tuning.Measurer.local(targets.resolve("x86").tvm_target())


def test_guard_keeps_the_default_when_the_tuned_record_is_slower(
    measurer: tuning.Measurer,
) -> None:
    """A record claiming 1 ns whose schedule is in fact the plain loop nest: measured against
    the default (ecograph's matmul rule) it loses, so the default is kept."""
    _, kernels, target = kernels_of(matmul_graph(m=64, k=256, n=256))
    (kernel,) = kernels
    db = _database_with(kernel, _unscheduled_trace(kernel), target, 1e-9)
    choice = tuning.choose_schedules([kernel], db, measurer)[kernel.name]
    assert choice["chosen"] == "default", choice
    assert choice["tuned_ms"] > choice["default_ms"] > 0


def test_guard_takes_the_tuned_schedule_when_it_is_faster(measurer: tuning.Measurer) -> None:
    """The other way round: a default that is the plain loop nest against a record holding
    the matmul rule's schedule; the tuned one measures faster and is taken."""
    _, kernels, target = kernels_of(matmul_graph(m=64, k=256, n=256))
    (kernel,) = kernels
    plain = tuning.Kernel(kernel.name, 1, kernel.task, kernel.workload["main"], True)
    db = _database_with(kernel, _rule_trace(kernel, target), target, 1.0)
    choice = tuning.choose_schedules([plain], db, measurer)[kernel.name]
    assert choice["chosen"] == "tuned", choice
    assert choice["default_ms"] > choice["tuned_ms"] > 0


# ------------------------------------------------------------------ applying and reusing


def test_a_chosen_record_is_built_reused_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search is replaced by one injected record (the matmul rule's trace, chosen for the
    kernel): the build applies it through cpu_pipeline, the manifest says "tuned", the output
    is right, and a second compile reuses the cache without searching."""
    calls: list[int] = []

    def fake_tune(
        kernels: list[tuning.Kernel], target: Any, trials: int, work_dir: Path, progress: bool
    ) -> float:
        from tvm.s_tir import meta_schedule as ms

        calls.append(trials)
        (kernel,) = kernels
        work_dir.mkdir(parents=True)
        db = ms.database.JSONDatabase(work_dir=str(work_dir))
        args = ms.arg_info.ArgInfo.from_prim_func(kernel.workload["main"])
        db.commit_tuning_record(
            ms.database.TuningRecord(
                _rule_trace(kernel, target),
                db.commit_workload(kernel.workload),
                [1e-4],
                target,
                args,
            )
        )
        entry = {"default_ms": 0.2, "tuned_ms": 0.1, "chosen": "tuned", "trials": trials}
        (work_dir / tuning.DONE).write_text(
            json.dumps(
                {"seconds": 1.0, "records": 1, "cost_model": "xgb", "kernels": {kernel.name: entry}}
            )
        )
        return 1.0

    monkeypatch.setattr(tuning, "_tune", fake_tune)
    graph, cache = matmul_graph(m=64, k=256, n=256), tmp_path / "cache"
    # Resolved once: the host's core count can read 1 after TVM has run a kernel (its thread
    # pool pins the main thread), which would be another target and another cache key.
    spec = targets.resolve("x86")
    out = ecograph.compile(graph, spec, tmp_path / "a", tune=8, tuning_cache=cache)
    manifest = json.loads((out / "manifest.json").read_text())
    (name,) = manifest["tuning"]["functions"]
    assert manifest["schedules"] == {name: "tuned"}
    assert manifest["tuning"]["kernels"][name]["chosen"] == "tuned"
    assert manifest["tuning"]["reused"] is False and calls == [8]
    x = np.random.default_rng(2).standard_normal((64, 256)).astype(np.float32)
    np.testing.assert_allclose(load(out)(x), interpret(graph, {"x": x})["y"], rtol=1e-4, atol=1e-4)

    again = ecograph.compile(graph, spec, tmp_path / "b", tune=8, tuning_cache=cache)
    second = json.loads((again / "manifest.json").read_text())
    assert calls == [8], "a cache hit must not tune"
    assert second["tuning"]["reused"] is True and second["tuning"]["seconds"] == 0
    assert second["schedules"] == {name: "tuned"}


@pytest.mark.slow
def test_small_model_tuned_for_real(tmp_path: Path) -> None:
    """16 real MetaSchedule trials (XGBoost cost model) over the MLP's two kernels (2-4
    minutes on a busy 2-core machine), then a rebuild that reuses the cache and does no
    tuning."""
    cache, spec = tmp_path / "cache", targets.resolve("x86")  # resolved once, as above
    out = ecograph.compile(mlp_graph(), spec, tmp_path / "a", tune=16, tuning_cache=cache)
    manifest = json.loads((out / "manifest.json").read_text())
    first = manifest["tuning"]
    assert first["trials"] == 16 and first["reused"] is False and first["seconds"] > 0
    assert first["cost_model"] == "xgb" and first["records"] > 0
    logs = "".join(p.read_text() for p in (cache / first["cache_key"] / "logs").glob("*.log"))
    assert "XGB iter" in logs  # the XGBoost model was trained on the measured trials
    kernels = first["kernels"]
    assert sorted(kernels) == sorted(manifest["schedules"])
    assert sum(k["trials"] for k in kernels.values()) == 16
    assert tuning.allocate_trials(
        [k["share"] for k in kernels.values()], 16, tuning.MIN_TRIALS_PER_KERNEL
    ) == [k["trials"] for k in kernels.values()]
    default_rules = build_module(mlp_graph(), spec).kernels
    for name, k in kernels.items():
        assert k["default_ms"] > 0 and k["chosen"] in ("tuned", "default")
        if k["chosen"] == "tuned":
            assert k["tuned_ms"] < k["default_ms"]
            assert manifest["schedules"][name] == "tuned"
        else:
            assert manifest["schedules"][name] == default_rules[name]
    x = np.random.default_rng(2).standard_normal((32, 128)).astype(np.float32)
    np.testing.assert_allclose(
        load(out)(x), interpret(mlp_graph(), {"x": x})["y"], rtol=1e-4, atol=1e-4
    )

    records = (cache / first["cache_key"] / tuning.RECORDS).read_bytes()
    start = time.perf_counter()
    again = ecograph.compile(mlp_graph(), spec, tmp_path / "b", tune=16, tuning_cache=cache)
    second = json.loads((again / "manifest.json").read_text())["tuning"]
    assert second["reused"] is True and second["seconds"] == 0
    assert second["cache_key"] == first["cache_key"] and second["kernels"] == kernels
    assert (cache / first["cache_key"] / tuning.RECORDS).read_bytes() == records
    assert time.perf_counter() - start < 60
