"""TVM lowerings of DeformConv, Col2Im, CenterCropPad, MaxUnpool, LpPool and ReverseSequence
(ecograph/backends/tvm/ops/spatial.py), checked against the reference interpreter."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.errors import LoweringError
from ecograph.ir import Graph
from tests.backends.tvm_helpers import (
    Const,
    assert_matches,
    lowering_target,
    one_op,
    rand,
    run_tvm,
)

COVERED_OPS = {
    ("", "DeformConv"),
    ("", "Col2Im"),
    ("", "CenterCropPad"),
    ("", "MaxUnpool"),
    ("", "LpPool"),
    ("", "ReverseSequence"),
}


def _check(graph: Graph, feeds: dict[str, np.ndarray]) -> None:
    assert_matches(graph, feeds, run_tvm(graph, feeds))


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# ------------------------------------------------------------------ DeformConv


def test_deform_conv_basic() -> None:
    x, w = rand((1, 2, 5, 5)), rand((3, 2, 3, 3))
    off = rand((1, 2 * 9, 3, 3), lo=-1.5, hi=1.5)
    _check(*one_op("DeformConv", x, w, off))


def test_deform_conv_all_options() -> None:
    x, w = rand((2, 4, 6, 5)), rand((6, 2, 2, 3))
    off = rand((2, 2 * 6 * 2, 3, 4), lo=-2.5, hi=2.5)  # samples land outside too
    mask = rand((2, 2 * 6, 3, 4), lo=0, hi=1)
    b = rand((6,))
    attrs = {"group": 2, "offset_group": 2, "strides": [2, 1], "pads": [1, 0, 0, 1]}
    _check(*one_op("DeformConv", x, w, off, b, mask, **attrs))


def test_deform_conv_dilations_constant_weights_float64() -> None:
    x = rand((1, 3, 7, 7), "float64")
    w = rand((4, 3, 2, 2), "float64")
    off = rand((1, 8, 5, 5), "float64", lo=-1, hi=1)
    g, feeds = one_op(
        "DeformConv", x, Const(w), off, Const(rand((4,), "float64")), dilations=[2, 2]
    )
    _check(g, feeds)


def test_deform_conv_integral_offsets_match_conv() -> None:
    # Zero offsets: plain convolution, sampled exactly on the grid.
    x, w = rand((1, 2, 4, 4)), rand((2, 2, 2, 2))
    off = np.zeros((1, 8, 3, 3), np.float32)
    _check(*one_op("DeformConv", x, w, off))


def test_deform_conv_symbolic_batch() -> None:
    x, w = rand((3, 2, 5, 4)), rand((2, 2, 2, 2))
    off = rand((3, 8, 4, 3), lo=-1, hi=1)
    sym = {0: ["n", 2, 5, 4], 2: ["n", 8, 4, 3]}
    _check(*one_op("DeformConv", x, w, off, symbolic=sym))


def test_deform_conv_3d_is_refused() -> None:
    from ecograph.backends.tvm.driver import lower_graph

    x, w = rand((1, 1, 3, 3, 3)), rand((1, 1, 2, 2, 2))
    off = rand((1, 24, 2, 2, 2))
    g, _ = one_op("DeformConv", x, w, off)
    with pytest.raises(LoweringError, match="only 2-D DeformConv"):
        lower_graph(g, lowering_target())


# ------------------------------------------------------------------ Col2Im


def test_col2im_constant_shapes() -> None:
    data = rand((2, 2 * 6, 9))
    attrs = {"strides": [2, 1], "pads": [1, 0, 0, 1], "dilations": [1, 2]}
    _check(*one_op("Col2Im", data, Const(_i64(5, 6)), Const(_i64(2, 3)), **attrs))


def test_col2im_3d_image() -> None:
    data = rand((1, 2 * 8, 2 * 3 * 2))
    _check(*one_op("Col2Im", data, Const(_i64(3, 4, 3)), Const(_i64(2, 2, 2))))


def test_col2im_shapes_as_graph_inputs() -> None:
    # The output shape follows the shape tensors' run-time values.
    data = rand((1, 5, 15))
    _check(*one_op("Col2Im", data, _i64(5, 5), _i64(1, 5), pads=[0, 1, 0, 1]))


def test_col2im_symbolic_batch() -> None:
    data = rand((3, 4, 6))
    g, feeds = one_op(
        "Col2Im", data, Const(_i64(3, 4)), Const(_i64(2, 2)), symbolic={0: ["n", 4, 6]}
    )
    _check(g, feeds)


# --------------------------------------------------------------- CenterCropPad


@pytest.mark.parametrize(
    "shape, size, axes",
    [
        ((20, 10, 3), [10, 7, 3], None),  # crop
        ((10, 7, 3), [20, 10, 3], None),  # pad
        ((20, 8, 3), [10, 11], [0, 1]),  # crop and pad, odd differences
        ((3, 20, 8), [11, 5], [-2, -1]),
    ],
)
def test_center_crop_pad(shape: tuple[int, ...], size: list[int], axes: Any) -> None:
    attrs = {} if axes is None else {"axes": axes}
    _check(*one_op("CenterCropPad", rand(shape), Const(_i64(*size)), **attrs))


def test_center_crop_pad_int_and_runtime_shape() -> None:
    x = rand((6, 5, 4), "int32", lo=-50, hi=50)
    _check(*one_op("CenterCropPad", x, _i64(3, 8), axes=[0, 2]))


def test_center_crop_pad_symbolic_dims() -> None:
    x = rand((7, 5))
    g, feeds = one_op("CenterCropPad", x, Const(_i64(4)), axes=[0], symbolic={0: ["n", "m"]})
    _check(g, feeds)


# ------------------------------------------------------------------ MaxUnpool


def _unpool_case(shape: tuple[int, ...], out_spatial: tuple[int, ...]) -> np.ndarray:
    """Pooling-style indices: distinct positions per (n, c) plane of the unpooled output."""
    rng = np.random.default_rng(3)
    plane = int(np.prod(out_spatial))
    per = int(np.prod(shape[2:]))
    planes = shape[0] * shape[1]
    idx = np.stack([rng.permutation(plane)[:per] + p * plane for p in range(planes)])
    return idx.reshape(shape).astype(np.int64)


def test_max_unpool_inferred_shape() -> None:
    x = rand((2, 3, 2, 3))
    idx = _unpool_case(x.shape, (5, 7))
    _check(*one_op("MaxUnpool", x, idx, kernel_shape=[3, 3], strides=[2, 3], pads=[0, 1, 0, 1]))


def test_max_unpool_output_shape_constant_and_input() -> None:
    x = rand((1, 2, 2, 2))
    idx = _unpool_case(x.shape, (4, 4))
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2]}
    _check(*one_op("MaxUnpool", x, idx, Const(_i64(1, 2, 5, 6)), **attrs))
    _check(*one_op("MaxUnpool", x, idx, _i64(1, 2, 5, 5), **attrs))


def test_max_unpool_1d_symbolic_batch() -> None:
    x = rand((3, 2, 4))
    idx = _unpool_case(x.shape, (8,))
    sym = {0: ["n", 2, 4], 1: ["n", 2, 4]}
    _check(*one_op("MaxUnpool", x, idx, kernel_shape=[2], strides=[2], symbolic=sym))


# --------------------------------------------------------------------- LpPool


@pytest.mark.parametrize("p", [1, 2, 3])
def test_lp_pool_p(p: int) -> None:
    x = rand((1, 3, 8, 7))
    _check(*one_op("LpPool", x, kernel_shape=[3, 2], p=p, strides=[2, 1], pads=[1, 0, 1, 1]))


@pytest.mark.parametrize(
    "attrs",
    [
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"auto_pad": "SAME_LOWER"},
        {"auto_pad": "VALID", "dilations": [2, 1]},
        {"ceil_mode": 1, "strides": [2, 2]},
        {"ceil_mode": 1, "strides": [3, 2], "pads": [1, 1, 0, 1], "dilations": [1, 2]},
    ],
)
def test_lp_pool_padding_modes(attrs: dict[str, Any]) -> None:
    _check(*one_op("LpPool", rand((2, 2, 7, 8)), kernel_shape=[3, 2], **attrs))


def test_lp_pool_1d_3d_float64() -> None:
    _check(*one_op("LpPool", rand((1, 2, 9), "float64"), kernel_shape=[3], p=3))
    _check(*one_op("LpPool", rand((1, 1, 4, 5, 4)), kernel_shape=[2, 2, 2], strides=[2, 1, 2]))


def test_lp_pool_symbolic_dims() -> None:
    x = rand((2, 3, 9, 6))
    g, feeds = one_op(
        "LpPool", x, kernel_shape=[2, 2], pads=[1, 1, 1, 1], symbolic={0: ["n", 3, "h", "w"]}
    )
    _check(g, feeds)


def test_lp_pool_ceil_mode_with_symbolic_dims_is_refused() -> None:
    from ecograph.backends.tvm.driver import lower_graph

    g, _ = one_op(
        "LpPool", rand((1, 1, 7, 7)), kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1,
        symbolic={0: [1, 1, "h", "w"]},
    )  # fmt: skip
    with pytest.raises(LoweringError, match="ceil_mode=1 needs static spatial dims"):
        lower_graph(g, lowering_target())


# ------------------------------------------------------------ ReverseSequence


def test_reverse_sequence_time_major() -> None:
    x = rand((5, 4, 3))
    _check(*one_op("ReverseSequence", x, _i64(1, 5, 3, 0), batch_axis=1, time_axis=0))


def test_reverse_sequence_batch_major_int() -> None:
    x = rand((3, 6), "int64", lo=-100, hi=100)
    _check(*one_op("ReverseSequence", x, _i64(6, 2, 1), batch_axis=0, time_axis=1))


def test_reverse_sequence_symbolic_time() -> None:
    x = rand((4, 3, 2))
    g, feeds = one_op(
        "ReverseSequence", x, _i64(2, 4, 3), batch_axis=1, time_axis=0,
        symbolic={0: ["t", 3, 2]},
    )  # fmt: skip
    _check(g, feeds)


# --------------------------------------------------------------------- CUDA


@pytest.mark.parametrize("case", ["deform", "col2im", "unpool"])
def test_builds_for_cuda(case: str) -> None:
    from ecograph.backends.tvm import build

    if case == "deform":
        g, _ = one_op(
            "DeformConv", rand((2, 4, 6, 5)), rand((6, 2, 2, 3)), rand((2, 24, 3, 4)),
            rand((6,)), rand((2, 12, 3, 4)), group=2, offset_group=2, strides=[2, 1],
            pads=[1, 0, 0, 1],
        )  # fmt: skip
    elif case == "col2im":
        g, _ = one_op("Col2Im", rand((2, 12, 9)), _i64(5, 6), _i64(2, 3), strides=[2, 1],
                      pads=[1, 0, 0, 1], dilations=[1, 2])  # fmt: skip
    else:
        g, _ = one_op(
            "MaxUnpool", rand((2, 3, 2, 3)), np.zeros((2, 3, 2, 3), np.int64),
            _i64(2, 3, 6, 8), kernel_shape=[3, 3], strides=[2, 3], pads=[0, 1, 0, 1],
        )  # fmt: skip
    result = build.build_module(g, "cuda:sm_80", keep_params=False)
    assert result.executable is not None
