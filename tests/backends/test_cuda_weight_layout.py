"""GPU builds store constant weights [N, K]: weight-only quantized ones through
passes/weight_only.py's TransposeDequantizeWeights, float32 ones in the lowering
(ops/matmul.py BY_COLUMN). That is the layout dlight's GEMV rule schedules on CUDA.

Before, a decode step's product (x [1, K] @ W [K, N]) went to dlight's Reduction rule, whose
threads each read one weight from a different row of W; dlight's GEMV rule declines that
layout on CUDA (its outer-reduction schedules are for OpenCL on Android and Metal only). The
pass is checked against the reference interpreter, the GPU lowering is run here on the CPU
(the same Relax module compiled for LLVM), and the rule that schedules each CUDA kernel is
the one the build records. The CUDA numbers need a GPU (skipped here without one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ecograph
from ecograph.backends.tvm import build, load, targets
from ecograph.backends.tvm.driver import lower_graph
from ecograph.ir import GraphBuilder, interpret
from ecograph.passes import run_passes
from ecograph.passes.weight_only import FuseWeightDequantize, TransposeDequantizeWeights
from tests.backends.test_tvm_build import _gpu_visible
from tests.quant.test_weight_only_tvm import _close, _dq_graph, _nbits_graph

CUDA = targets.resolve("cuda:sm_90")
# (weight dtype, DequantizeLinear axis, block size, zero point): blocked along K, per output
# column, per tensor; signed and unsigned 4-bit, int8
LAYOUTS = [
    ("int4", 0, 32, True),
    ("uint4", 0, 16, False),
    ("int8", 1, 0, True),
    ("int4", None, 0, False),
]


def _check_cuda_lowering_here(graph: Any, x: np.ndarray) -> Any:
    """Lower `graph` for CUDA, compile that module for this CPU (LLVM), run it on `x` (the
    graph's one input) and check it against the interpreter; returns the Lowered."""
    import tvm

    lowered = lower_graph(graph, CUDA, keep_params=True)
    vm = tvm.runtime.vm.VirtualMachine(tvm.compile(lowered.mod, target="llvm"), tvm.cpu())
    params = [tvm.runtime.tensor(v) for v in lowered.params.values()]
    got = vm["main"](tvm.runtime.tensor(x), *params).numpy()
    _close(got, interpret(graph, {graph.inputs[0].name: x})[graph.outputs[0].name])
    return lowered


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


@pytest.mark.parametrize("rows", [1, "b"])
@pytest.mark.parametrize(("wdt", "axis", "block", "zp"), LAYOUTS)
def test_the_cuda_lowering_computes_what_the_interpreter_does(
    wdt: str, axis: int | None, block: int, zp: bool, rows: int | str
) -> None:
    """The module lower_graph makes for CUDA (packed [N, K / 2] 4-bit codes and all; for
    several rows the weights decoded by a kernel of their own, then multiplied), compiled for
    this CPU instead and run against the interpreter on the original graph."""
    graph = _dq_graph(wdt, axis, block, zero_point=zp, rows=rows)
    lowered = _check_cuda_lowering_here(graph, _feeds(rows=1 if rows == 1 else 3)["x"])
    codes = lowered.params["w_q_nk"]
    assert codes.shape[0] == 48  # N rows
    if wdt.endswith("4"):
        assert codes.dtype == np.uint8 and codes.shape == (48, 32)  # two codes per byte


def test_a_decode_row_times_int4_weights_is_a_gemv_on_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The build records which dlight rule scheduled each kernel (the manifest's
    "schedules"): GEMV with the [N, K] layout, Reduction without the pass."""
    from ecograph.backends.tvm import driver
    from ecograph.quant.quantize import Quantize

    def rules() -> set[str | None]:
        graph = _mlp_row(512, 256)
        Quantize(mode="weight_only", dtype="int4", granularity="group:128").run(graph)
        kernels = build.build_module(graph, CUDA, keep_params=True).kernels
        return {rule for name, rule in kernels.items() if "dequantize_matmul" in name}

    assert rules() == {"dlight:GEMV"}
    monkeypatch.setattr(driver, "GPU_BACKEND_PASSES", ())
    assert rules() == {"dlight:Reduction"}


def test_several_rows_decode_the_weights_then_take_dlights_matmul_rule() -> None:
    """A prefill's int4 product on CUDA: one kernel decoding W to float32 [N, K] (kept out of
    fusion; elementwise, so Fallback, dlight's rule for those, is right), then a product the
    Matmul rule schedules (fused with the decoding, only Fallback took it)."""
    from ecograph.quant.quantize import Quantize

    for rows in ("b", 128):
        graph = _mlp_row(512, 256, rows)
        Quantize(mode="weight_only", dtype="int4", granularity="group:128").run(graph)
        kernels = build.build_module(graph, CUDA, keep_params=True).kernels
        assert kernels == {"dequantize_weights": "dlight:Fallback", "matmul": "dlight:Matmul"}


def _mlp_row(k: int, n: int, rows: int | str = 1) -> Any:
    b = GraphBuilder()
    x = b.input("x", "float32", [rows, k])
    w = np.random.default_rng(5).standard_normal((k, n)).astype(np.float32) * 0.05
    b.output(b.op("MatMul", x, b.constant(w, "w")))
    return b.graph


@pytest.mark.parametrize(("zp", "sdt"), [("none", "float32"), ("packed", "float16")])
def test_matmul_nbits_on_cuda_is_a_gemv_for_a_row_and_decodes_first_for_several(
    zp: str, sdt: str
) -> None:
    """com.microsoft::MatMulNBits keeps ONNX Runtime's [N, K / 2] codes: a one-row product's
    fused kernel is dlight's GEMV (without zero points; with packed ones and float16 scales
    dlight declines it, and Reduction takes it); several rows decode first, then Matmul
    (fused, Fallback took it). The CUDA lowering, compiled for this CPU, computes what the
    interpreter does."""
    one_row = {"dlight:GEMV"} if zp == "none" else {"dlight:Reduction"}
    for rows, want in ((1, one_row), ("m", {"dlight:Fallback", "dlight:Matmul"})):
        graph = _nbits_graph(64, 32, zp, sdt, n=48, rows=rows)
        kernels = build.build_module(graph, CUDA, keep_params=True).kernels
        product = {r for name, r in kernels.items() if "matmul" in name or "dequantize" in name}
        assert product == want, kernels
        a = np.random.default_rng(6).standard_normal((1 if rows == 1 else 3, 64))
        _check_cuda_lowering_here(graph, a.astype(np.float32))


def _float_product(op: str, shape: list[Any], k: int = 64, n: int = 48) -> Any:
    rng = np.random.default_rng(11)
    b = GraphBuilder()
    x = b.input("x", "float32", shape)
    if op == "Gemm":  # transB: the weight is stored [N, K] already
        w = b.constant(rng.standard_normal((n, k)).astype(np.float32), "w")
        y = b.op("Gemm", x, w, transB=1)
    elif op == "Linear":
        w = b.constant(rng.standard_normal((k, n)).astype(np.float32), "w")
        bias = b.constant(rng.standard_normal(n).astype(np.float32), "bias")
        y = b.op("Linear", x, w, bias, domain="ecograph")
    else:
        y = b.op("MatMul", x, b.constant(rng.standard_normal((k, n)).astype(np.float32), "w"))
    b.output(b.op("Relu", y))
    return b.graph


# (op, A's shape, a feed's shape, the dlight rule of the product's kernel)
FLOAT_PRODUCTS = [
    ("MatMul", [1, 64], (1, 64), "dlight:GEMV"),
    ("MatMul", [64], (64,), "dlight:GEMV"),
    ("Linear", [1, 64], (1, 64), "dlight:GEMV"),
    ("Gemm", [3, 64], (3, 64), "dlight:Matmul"),
    ("MatMul", ["b", "t", 64], (2, 5, 64), "dlight:Matmul"),
]


@pytest.mark.parametrize(("op", "shape", "feed", "rule"), FLOAT_PRODUCTS)
def test_float_weights_are_stored_by_column_for_cuda(
    op: str, shape: list[Any], feed: tuple[int, ...], rule: str
) -> None:
    """The CUDA lowering binds the weight [N, K] and computes what the interpreter does
    (compiled here for the CPU); a one-row product's kernel is dlight's GEMV."""
    x = np.random.default_rng(2).standard_normal(feed).astype(np.float32)
    graph = _float_product(op, shape)
    assert _check_cuda_lowering_here(graph, x).params["w"].shape == (48, 64)
    kernels = build.build_module(graph, CUDA, keep_params=True).kernels
    assert [r for name, r in kernels.items() if "matmul" in name] == [rule], kernels


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_visible(), reason="no CUDA GPU visible")
@pytest.mark.parametrize("rows", [1, "b"])
@pytest.mark.parametrize(("wdt", "axis", "block", "zp"), LAYOUTS)
def test_cuda_dequantize_matmul_matches_the_interpreter(
    tmp_path: Path, wdt: str, axis: int | None, block: int, zp: bool, rows: int | str
) -> None:
    graph = _dq_graph(wdt, axis, block, zero_point=zp, rows=rows)
    model = load(ecograph.compile(graph, "cuda", tmp_path / "a", progress=False))
    feeds = _feeds(rows=1 if rows == 1 else 3)
    _close(model(**feeds), interpret(graph, feeds)[graph.outputs[0].name])


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_visible(), reason="no CUDA GPU visible")
@pytest.mark.parametrize(("op", "shape", "feed", "rule"), FLOAT_PRODUCTS)
def test_cuda_float_products_match_the_interpreter(
    tmp_path: Path, op: str, shape: list[Any], feed: tuple[int, ...], rule: str
) -> None:
    graph = _float_product(op, shape)
    model = load(ecograph.compile(graph, "cuda", tmp_path / "a", progress=False))
    x = np.random.default_rng(2).standard_normal(feed).astype(np.float32)
    _close(model(x=x), interpret(graph, {"x": x})[graph.outputs[0].name])
