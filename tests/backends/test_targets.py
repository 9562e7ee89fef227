"""Targets are resolved once into a TargetSpec whose facts drive the build, the cache and the
measurement device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm.target.codegen as cg

import ecograph.api as api
from ecograph.backends.tvm import targets
from ecograph.cache import CompileCache
from ecograph.ir import GraphBuilder


@pytest.mark.parametrize(
    ("preset", "bits", "has", "lacks"),
    [
        ("x86:skylake-avx512", 512, "avx512f", "avx512vnni"),
        ("x86:cascadelake", 512, "avx512vnni", "avxvnni"),
        ("x86:haswell", 256, "avx2", "avx512f"),
        ("x86:generic", 128, "sse2", "avx"),
        ("arm", 128, "neon", "dotprod"),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}, 128,
         "dotprod", "avx2"),
    ],
)  # fmt: skip
def test_spec_carries_the_cpu_features_llvm_uses(preset, bits, has, lacks):
    spec = targets.resolve(preset)
    assert spec.vector_bits == bits
    assert spec.has(has) and not spec.has(lacks)
    assert spec.device == "cpu" and not spec.is_gpu


def test_cuda_dict_target_runs_and_is_measured_on_the_gpu():
    # Before: optimize() decided the device with str(target).startswith("cuda"), so this dict
    # was measured on the CPU.
    spec = targets.resolve({"kind": "cuda", "arch": "sm_90"})
    assert (spec.family, spec.device, spec.cuda_arch, spec.is_gpu) == (
        "cuda",
        "cuda",
        "sm_90",
        True,
    )
    assert targets.resolve("cuda:sm_80").device == "cuda"


def test_every_cpu_target_carries_the_llvm_workaround():
    for preset in ("x86", "x86:znver4", "arm", {"kind": "llvm", "mcpu": "znver4"}):
        assert "-max-interleave-group-factor=1" in targets.resolve(preset).target["cl-opt"]
    mine = targets.resolve({"kind": "llvm", "cl-opt": ["-max-interleave-group-factor=2"]})
    assert mine.target["cl-opt"] == ["-max-interleave-group-factor=2"]  # the user's choice wins


def test_host_spec_follows_the_detected_cpu(monkeypatch):
    monkeypatch.setattr(cg, "llvm_get_system_cpu", lambda: "haswell")
    assert targets.resolve("x86").cpu == "haswell"
    monkeypatch.setattr(cg, "llvm_get_system_cpu", lambda: "znver3")
    spec = targets.resolve("x86")
    assert spec.cpu == "znver3" and "host CPU detected: znver3" in spec.notes[0]


def _tiny_graph():
    b = GraphBuilder("tiny")
    x = b.input("x", "float32", [2, 3])
    b.output(b.op("Relu", b.op("Add", x, b.constant(np.ones((2, 3), np.float32)))))
    return b.graph


def test_cache_key_changes_when_the_cpu_model_changes(tmp_path, monkeypatch):
    # A cache shared between machines must not hand a build for one CPU to another.
    cache = CompileCache(tmp_path / "cache")
    graph = _tiny_graph()
    monkeypatch.setattr(cg, "llvm_get_system_cpu", lambda: "haswell")
    haswell = targets.resolve("x86")
    monkeypatch.setattr(cg, "llvm_get_system_cpu", lambda: "znver3")
    znver3 = targets.resolve("x86")
    assert haswell.cache_key() != znver3.cache_key()
    for spec, out in ((haswell, "a"), (znver3, "b"), (haswell, "c")):
        api.compile_cached(graph, spec, tmp_path / out, False, ["default"], cache)
    assert len(cache.entries()) == 2  # the third build was a hit of the first
    cpus = {
        json.loads((Path(e.path) / "key.json").read_text())["target"]["cpu"]
        for e in cache.entries()
    }
    assert cpus == {"haswell", "znver3"}
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["target"]["cpu"] == "znver3" and "avx2" in manifest["target"]["features"]


def test_optimize_measures_on_the_spec_device(tmp_path, monkeypatch):
    # The measurement device comes from the resolved spec (spec.device), not from the
    # target's spelling; the cuda dict above resolves to device "cuda".
    seen: list[str] = []
    import ecograph.report.measure as measure

    real = measure.measure_energy

    def spy(fn, device="cpu", **kw):
        seen.append(device)
        return real(fn, device="cpu", **kw)

    monkeypatch.setattr(measure, "measure_energy", spy)
    api.optimize(_tiny_graph(), {"x": np.ones((2, 3), np.float32)}, target="x86", out_dir=tmp_path)
    assert seen == ["cpu", "cpu"]


def test_loader_refuses_x86_code_this_cpu_cannot_run(tmp_path, monkeypatch):
    # An artifact built for an AVX-512 CPU, loaded on a host that reports only AVX2: a clear
    # error instead of SIGILL at the first call.
    import ecograph
    from ecograph.errors import BuildError

    out = ecograph.compile(_tiny_graph(), "x86:skylake-avx512", tmp_path / "sk")
    monkeypatch.setattr(
        targets, "cpuinfo_flags", lambda: {"sse4_1", "sse4_2", "avx", "avx2", "fma"}
    )
    with pytest.raises(BuildError, match=r"avx512f.*this CPU lacks"):
        ecograph.load(out)
