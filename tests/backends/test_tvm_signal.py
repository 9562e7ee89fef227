"""TVM lowerings of DFT, STFT, MelWeightMatrix (ops/signal.py), Det and QLinearConv
(ops/linalg_quant.py), compiled for x86 and compared with the reference interpreter (floats to
1e-5 relative, QLinearConv bit-exact); plus the clear errors for what cannot lower and a CUDA
compile (no GPU needed) of each op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.backends.tvm.driver import lower_graph
from ecograph.errors import LoweringError
from ecograph.ir import Graph
from tests.backends.tvm_helpers import (
    RNG,
    Const,
    assert_matches,
    lowering_target,
    one_op,
    rand,
    run_tvm,
)

COVERED_OPS = {
    ("", "DFT"),
    ("", "STFT"),
    ("", "MelWeightMatrix"),
    ("", "Det"),
    ("", "QLinearConv"),
}

i64 = np.int64
CaseFn = Callable[[], tuple[Graph, dict[str, np.ndarray]]]
CASES: list[tuple[str, CaseFn]] = []


def case(cid: str, op: str, *inputs: Any, **kw: Any) -> None:
    CASES.append((cid, lambda: one_op(op, *inputs, **kw)))


def c64(v: int) -> Const:
    return Const(np.array(v, i64))


def q(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


def s(value: Any, dtype: Any) -> np.ndarray:
    """A 0-d array (a graph input scalar)."""
    return np.array(value, dtype)


# ------------------------------------------------------------------------ DFT
case("dft-real", "DFT", rand((2, 8, 1)))
case("dft-complex", "DFT", rand((2, 8, 2)))
case("dft-axis1-of-4d", "DFT", rand((2, 8, 3, 2)), None, c64(1))
case("dft-axis-negative", "DFT", rand((2, 3, 7, 1)), None, c64(-3))
case("dft-axis0", "DFT", rand((5, 3, 1)), None, c64(0))
case("dft-onesided-pad", "DFT", rand((2, 8, 1)), c64(12), onesided=1)
case("dft-onesided-odd", "DFT", rand((3, 9, 1)), onesided=1)
case("dft-truncate", "DFT", rand((2, 10, 2)), c64(6))
case("dft-inverse", "DFT", rand((2, 8, 2)), c64(6), inverse=1)
case("dft-inverse-real-input", "DFT", rand((2, 7, 1)), inverse=1)
case("dft-irfft", "DFT", rand((2, 5, 2)), inverse=1, onesided=1)
case("dft-irfft-odd-length", "DFT", rand((2, 5, 2)), c64(9), inverse=1, onesided=1)
case("dft-float64", "DFT", rand((2, 16, 2), "float64"), inverse=1)
# Small integers: a length-4 DFT is exact, so float16 results match bit for bit.
case("dft-float16", "DFT", rand((3, 4, 2), "int32", -4, 4).astype(np.float16))
case("dft-runtime-axis", "DFT", rand((1, 6, 6, 1)), None, np.array(2, i64))
case("dft-runtime-axis-negative", "DFT", rand((1, 6, 6, 2)), None, np.array(-3, i64), inverse=1)
case("dft-symbolic-batch", "DFT", rand((3, 8, 1)), c64(8), symbolic={0: ["n", 8, 1]})

# ----------------------------------------------------------------------- STFT
case("stft-frame-length", "STFT", rand((2, 64, 1)), c64(8), None, c64(16))
case("stft-window", "STFT", rand((2, 64, 1)), c64(8), rand((16,)))
case("stft-window-two-sided", "STFT", rand((1, 50, 1)), c64(6), rand((10,)), onesided=0)
case("stft-complex", "STFT", rand((2, 40, 2)), c64(5), rand((8,)), c64(8), onesided=0)
case("stft-uneven-tail", "STFT", rand((1, 37, 1)), c64(7), None, c64(9))
case("stft-runtime-step", "STFT", rand((2, 64, 1)), np.array(12, i64), rand((16,)))
case("stft-float64", "STFT", rand((1, 32, 1), "float64"), c64(4), rand((8,), "float64"))
case(
    "stft-symbolic-length",
    "STFT",
    rand((2, 60, 1)),
    c64(10),
    rand((16,)),
    symbolic={0: [2, "len", 1]},
)

# -------------------------------------------------------------- MelWeightMatrix
_MEL = [(8, np.int32), (256, np.int32), (8000, np.int32), (0.0, np.float32), (4000.0, np.float32)]
case("mel", "MelWeightMatrix", *[Const(np.array(v, d)) for v, d in _MEL])
case(
    "mel-float64-int64",
    "MelWeightMatrix",
    *[Const(np.array(v, i64 if d == np.int32 else d)) for v, d in _MEL],
    output_datatype=11,  # DOUBLE
)

# ------------------------------------------------------------------------ Det
case("det-2d", "Det", rand((3, 3)))
case("det-batched", "Det", rand((2, 3, 5, 5)))
case("det-1x1", "Det", rand((4, 1, 1)))
case("det-singular", "Det", np.array([[1, 2, 3], [2, 4, 6], [0, 1, 1]], np.float32))
case("det-needs-pivoting", "Det", np.array([[0, 1, 2], [1, 0, 3], [4, -3, 8]], np.float32))
case("det-float64", "Det", rand((3, 8, 8), "float64"))
case("det-symbolic-batch", "Det", rand((5, 4, 4)), symbolic={0: ["b", 4, 4]})

# ---------------------------------------------------------------- QLinearConv
_U8 = np.uint8
_I8 = np.int8
case(
    "qlinearconv-uint8-pads",
    "QLinearConv",
    q((1, 3, 7, 7), _U8),
    s(0.02, np.float32),
    s(128, _U8),
    q((4, 3, 3, 3), _U8),
    s(0.01, np.float32),
    s(120, _U8),
    s(0.05, np.float32),
    s(100, _U8),
    pads=[1, 1, 1, 1],
)
case(
    "qlinearconv-int8-per-channel-group-bias",
    "QLinearConv",
    q((2, 4, 6, 6), _I8),
    s(0.02, np.float32),
    s(3, _I8),
    q((6, 2, 3, 3), _I8),
    rand((6,), lo=0.001, hi=0.02),
    rand((6,), "int8", -3, 3),
    s(0.05, np.float32),
    s(-5, _I8),
    rand((6,), "int32", -500, 500),
    group=2,
    strides=[2, 2],
)
case(
    "qlinearconv-uint8-x-int8-w-1d-same",
    "QLinearConv",
    q((1, 2, 9), _U8),
    s(0.02, np.float32),
    s(128, _U8),
    q((3, 2, 3), _I8),
    s(0.01, np.float32),
    s(0, _I8),
    s(0.03, np.float32),
    s(7, _U8),
    auto_pad="SAME_UPPER",
    dilations=[2],
)
case(
    "qlinearconv-one-element-params",
    "QLinearConv",
    q((1, 1, 7, 7), _U8),
    s(0.00369204697, np.float32),
    s(132, _U8),
    np.array([[[[0]]]], _U8),
    np.array([0.00172794575], np.float32),
    np.array([255], _U8),
    s(0.00162681262, np.float32),
    s(123, _U8),
)
# Values on exact .5 ties after scaling: half to even, then saturation at both ends.
case(
    "qlinearconv-ties-and-saturation",
    "QLinearConv",
    np.arange(-64, 64, dtype=_I8).reshape(1, 2, 8, 8),
    s(0.5, np.float32),
    s(0, _I8),
    np.array([[[[1]], [[1]]], [[[3]], [[-3]]]], _I8),
    s(1.0, np.float32),
    s(0, _I8),
    s(1.0, np.float32),
    s(1, _I8),
)
case(
    "qlinearconv-symbolic-batch",
    "QLinearConv",
    q((3, 2, 5, 5), _U8),
    s(0.05, np.float32),
    s(10, _U8),
    q((2, 2, 3, 3), _U8),
    s(0.02, np.float32),
    s(130, _U8),
    s(0.3, np.float32),
    s(0, _U8),
    symbolic={0: ["n", 2, 5, 5]},
)


@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_reference(build: CaseFn) -> None:
    graph, feeds = build()
    assert_matches(graph, feeds, run_tvm(graph, feeds))


def test_runtime_axis_outside_the_candidates_gives_nan() -> None:
    # A run-time axis picks among the axes that give the declared shape; any other value
    # (here the real/imaginary dim) gives NaN, never another axis' transform.
    graph, feeds = one_op("DFT", rand((1, 4, 6, 1)), None, np.array(1, i64))
    assert graph.outputs[0].shape == (1, 4, 6, 2)
    assert_matches(graph, feeds, run_tvm(graph, feeds))
    feeds["x2"] = np.array(-1, i64)
    assert np.isnan(run_tvm(graph, feeds)[0]).all()


def test_runtime_axis_with_unknown_output_shape_fails() -> None:
    graph, _ = one_op("DFT", rand((1, 4, 6, 1)), None, np.array(2, i64), onesided=1)
    with pytest.raises(LoweringError, match=r"axis \(input 2\) is a run-time value"):
        lower_graph(graph, lowering_target())


# ------------------------------------------------------------------ clear errors


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: one_op("DFT", rand((2, 8, 1)), np.array(8, i64)),
            r"dft_length \(input 1\) must be a constant",
        ),
        (
            lambda: one_op("DFT", rand((2, 8, 1)), symbolic={0: [2, "n", 1]}),
            "transformed axis 1 must have a static size",
        ),
        (
            lambda: one_op("DFT", rand((2, 8, 3)), None, c64(1)),
            "last dim of the input must be 1",
        ),
        (
            lambda: one_op("STFT", rand((1, 32, 1)), c64(4), None, np.array(8, i64)),
            r"frame_length \(input 3\) is a run-time value",
        ),
        (
            lambda: one_op(
                "MelWeightMatrix",
                *[np.array(v, d) for v, d in _MEL[:2]],
                *[Const(np.array(v, d)) for v, d in _MEL[2:]],
            ),
            r"num_mel_bins \(input 0\), dft_length \(input 1\) must be constants",
        ),
        (
            lambda: one_op("Det", rand((4, 4)), symbolic={0: ["n", "n"]}),
            "square with a static size",
        ),
    ],
    ids=["dft-length", "dft-symbolic-axis", "dft-3-channels", "stft-length", "mel", "det"],
)
def test_clear_errors(build: Callable[[], tuple[Graph, Any]], message: str) -> None:
    graph, _ = build()
    with pytest.raises(LoweringError, match=message):
        lower_graph(graph, lowering_target())


# ------------------------------------------------------------------ CUDA compile


@pytest.mark.parametrize(
    "cid",
    ["dft-axis1-of-4d", "dft-irfft", "stft-window", "det-batched", "qlinearconv-uint8-pads"],
)
def test_builds_for_cuda(cid: str) -> None:
    from ecograph.backends.tvm import build

    graph, _ = dict(CASES)[cid]()
    build.build_module(graph, "cuda:sm_80", keep_params=False)
