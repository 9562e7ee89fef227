"""GPU builds store weight-only quantized weights [N, K] (passes/weight_only.py,
TransposeDequantizeWeights), the layout dlight's GEMV rule schedules on CUDA.

Before, a decode step's int4 product (x [1, K] @ W [K, N]) went to dlight's Reduction rule,
whose threads each read one byte from a different row of W; dlight's GEMV rule declines that
layout on CUDA (its outer-reduction schedules are for OpenCL on Android and Metal only). The
pass is checked against the reference interpreter, the GPU lowering is run here on the CPU
(the same Relax module compiled for LLVM), and the rule that schedules the CUDA kernel is
read from dlight while it builds. The CUDA numbers need a GPU (skipped here without one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ecograph
from ecograph.backends.tvm import build, load, targets
from ecograph.backends.tvm.driver import lower_graph
from ecograph.ir import interpret
from ecograph.passes import run_passes
from ecograph.passes.weight_only import FuseWeightDequantize, TransposeDequantizeWeights
from tests.backends.test_tvm_build import _gpu_visible
from tests.quant.test_weight_only_tvm import _close, _dq_graph

CUDA = targets.resolve("cuda:sm_90")
# (weight dtype, DequantizeLinear axis, block size, zero point): blocked along K, per output
# column, per tensor; signed and unsigned 4-bit, int8
LAYOUTS = [
    ("int4", 0, 32, True),
    ("uint4", 0, 16, False),
    ("int8", 1, 0, True),
    ("int4", None, 0, False),
]


def _feeds(k: int = 64, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(3).standard_normal((rows, k)).astype(np.float32)}


@pytest.mark.parametrize(("wdt", "axis", "block", "zp"), LAYOUTS)
def test_the_pass_stores_w_by_output_column_and_computes_the_same(
    wdt: str, axis: int | None, block: int, zp: bool
) -> None:
    graph = _dq_graph(wdt, axis, block, zero_point=zp, rows=1)
    run_passes(graph, [FuseWeightDequantize()])
    before = graph.copy()
    (node,) = graph.find_nodes("DequantizeMatMul", "ecograph")
    k, n = node.input(1).shape
    run_passes(graph, [TransposeDequantizeWeights()])
    assert node.attr("trans_b") == 1 and node.input(1).shape == (n, k)
    if block:
        assert node.attr("axis") == 1 and node.input(2).shape == (n, k // block)
    feeds = _feeds(int(k))
    out = graph.outputs[0].name
    # the same codes and scales: only the order a product's terms are summed in may differ
    _close(interpret(graph, feeds)[out], interpret(before, feeds)[out])
    assert set(graph.constants) == {v.name for v in node.inputs[1:] if v is not None}


def test_weights_with_another_use_or_already_by_column_stay() -> None:
    graph = _dq_graph("int4", 0, 32, rows=1)
    run_passes(graph, [FuseWeightDequantize()])
    (node,) = graph.find_nodes("DequantizeMatMul", "ecograph")
    graph.add_output(node.input(2))  # the scale is a graph output too: it cannot move
    result = TransposeDequantizeWeights().run(graph)
    assert not result.changed and node.attr("trans_b") == 0
    nk = _dq_graph("int4", 1, 32, op="Gemm", trans_b=True, rows=1)  # W already [N, K]
    run_passes(nk, [FuseWeightDequantize()])
    assert not TransposeDequantizeWeights().run(nk).changed


@pytest.mark.parametrize(("wdt", "axis", "block", "zp"), LAYOUTS)
def test_the_cuda_lowering_computes_what_the_interpreter_does(
    wdt: str, axis: int | None, block: int, zp: bool
) -> None:
    """The module lower_graph makes for CUDA (packed [N, K / 2] 4-bit codes and all),
    compiled for this CPU instead and run against the interpreter on the original graph."""
    import tvm

    graph = _dq_graph(wdt, axis, block, zero_point=zp, rows=1)
    lowered = lower_graph(graph, CUDA, keep_params=True)
    codes = lowered.params["w_q_nk"]
    assert codes.shape[0] == 48  # N rows
    if wdt.endswith("4"):
        assert codes.dtype == np.uint8 and codes.shape == (48, 32)  # two codes per byte
    vm = tvm.runtime.vm.VirtualMachine(tvm.compile(lowered.mod, target="llvm"), tvm.cpu())
    feeds = _feeds()
    params = [tvm.runtime.tensor(v) for v in lowered.params.values()]
    got = vm["main"](tvm.runtime.tensor(feeds["x"]), *params).numpy()
    _close(got, interpret(graph, feeds)[graph.outputs[0].name])


def _rules_used(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(dlight rule, first block's name) for each PrimFunc a CUDA build schedules."""
    from tvm import s_tir
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    used: list[tuple[str, str]] = []
    for cls in (dl.gpu.Matmul, dl.gpu.GEMV, dl.gpu.Reduction, dl.gpu.GeneralReduction,
                dl.gpu.Fallback):  # fmt: skip

        def apply(self: Any, func: Any, target: Any, tunable: bool, _o: Any = cls.apply,
                  _n: str = cls.__name__) -> Any:  # fmt: skip
            sch = _o(self, func, target, tunable)
            if sch is not None:
                s = s_tir.Schedule(func)
                blocks = normalize_prim_func(s) or []
                used.append((_n, s.get(blocks[0].block_rv).name_hint if blocks else "?"))
            return sch

        monkeypatch.setattr(cls, "apply", apply)
    return used


def test_a_decode_row_times_int4_weights_is_a_gemv_on_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ecograph.quant.quantize import Quantize

    used = _rules_used(monkeypatch)
    graph = _mlp_row(512, 256)
    Quantize(mode="weight_only", dtype="int4", granularity="group:128").run(graph)
    build.build_module(graph, CUDA, keep_params=True)
    assert ("GEMV", "dequantize_matmul") in used, used


def _mlp_row(k: int, n: int) -> Any:
    from ecograph.ir import GraphBuilder

    b = GraphBuilder()
    x = b.input("x", "float32", [1, k])
    w = np.random.default_rng(5).standard_normal((k, n)).astype(np.float32) * 0.05
    b.output(b.op("MatMul", x, b.constant(w, "w")))
    return b.graph


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_visible(), reason="no CUDA GPU visible")
@pytest.mark.parametrize(("wdt", "axis", "block", "zp"), LAYOUTS)
def test_cuda_dequantize_matmul_matches_the_interpreter(
    tmp_path: Path, wdt: str, axis: int | None, block: int, zp: bool
) -> None:
    graph = _dq_graph(wdt, axis, block, zero_point=zp, rows=1)
    model = load(ecograph.compile(graph, "cuda", tmp_path / "a", progress=False))
    feeds = _feeds()
    _close(model(**feeds), interpret(graph, feeds)[graph.outputs[0].name])
