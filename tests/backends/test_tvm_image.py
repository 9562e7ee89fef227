"""TVM lowerings of Resize, GridSample, AffineGrid and RoiAlign against the reference
interpreter (onnx.reference), compiled for x86; one case per op family also builds for CUDA."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.errors import LoweringError
from ecograph.ir import Graph
from tests.backends.tvm_helpers import RNG, Const, assert_matches, one_op, rand, run_tvm

COVERED_OPS = {("", "Resize"), ("", "GridSample"), ("", "AffineGrid"), ("", "RoiAlign")}

f32 = np.float32
EMPTY = Const(np.zeros(0, f32))


def check(graph: Graph, feeds: dict[str, np.ndarray]) -> None:
    assert_matches(graph, feeds, run_tvm(graph, feeds))


def scales(*v: float) -> Const:
    return Const(np.array(v, f32))


def sizes(*v: int) -> Const:
    return Const(np.array(v, np.int64))


X4 = rand((2, 3, 5, 6))

# ------------------------------------------------------------------------ Resize

RESIZE_CASES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("nearest-up", (X4, EMPTY, scales(1, 1, 2, 3)), {"mode": "nearest"}),
    ("nearest-down", (X4, EMPTY, scales(1, 1, 0.6, 0.5)), {"mode": "nearest"}),
    *[
        (f"nearest-{nm}-{ctm}", (X4, None, None, sizes(2, 3, 7, 9)),
         {"mode": "nearest", "nearest_mode": nm, "coordinate_transformation_mode": ctm})
        for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
        for ctm in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
                    "half_pixel_symmetric")
    ],
    *[
        (f"{mode}-{ctm}", (X4, EMPTY, scales(1, 1, 1.7, 0.6)),
         {"mode": mode, "coordinate_transformation_mode": ctm})
        for mode in ("linear", "cubic")
        for ctm in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
                    "half_pixel_symmetric")
    ],
    ("cubic-a-exclude", (X4, EMPTY, scales(1, 1, 0.8, 2.5)),
     {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}),
    ("linear-exclude", (X4, None, None, sizes(2, 3, 3, 11)),
     {"mode": "linear", "exclude_outside": 1}),
    ("nearest-exclude", (X4, None, None, sizes(2, 3, 1, 4)),
     {"mode": "nearest", "exclude_outside": 1, "coordinate_transformation_mode":
      "pytorch_half_pixel"}),
    ("linear-antialias", (X4, EMPTY, scales(1, 1, 0.45, 0.3)), {"mode": "linear", "antialias": 1}),
    ("cubic-antialias", (X4, None, None, sizes(2, 3, 3, 2)), {"mode": "cubic", "antialias": 1}),
    ("cubic-antialias-exclude", (X4, EMPTY, scales(1, 1, 0.5, 1.5)),
     {"mode": "cubic", "antialias": 1, "exclude_outside": 1}),
    ("tf-crop", (X4, Const(np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.3], f32)), None,
                 sizes(2, 3, 4, 5)),
     {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
      "extrapolation_value": 7.5}),
    ("tf-crop-nearest-axes", (X4, Const(np.array([-0.2, 0.1, 1.1, 0.8], f32)), None,
                              sizes(6, 4)),
     {"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize", "axes": [3, 2]}),
    ("axes", (X4, EMPTY, scales(2.5, 0.5)), {"mode": "cubic", "axes": [3, 2]}),
    ("not-larger", (X4, None, None, sizes(8, 8)),
     {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}),
    ("not-smaller", (X4, None, None, sizes(8, 8)),
     {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller"}),
    ("batch-axes", (X4, EMPTY, scales(1.5, 2, 1, 1)), {"mode": "linear"}),
    ("3d", (rand((1, 2, 3, 4, 5)), EMPTY, scales(1, 1, 2, 0.5, 1.4)), {"mode": "linear"}),
    ("1d-cubic", (rand((2, 7)), EMPTY, scales(1, 1.6)), {"mode": "cubic"}),
    ("uint8-linear", (rand((1, 2, 4, 5), "uint8", 0, 255), EMPTY, scales(1, 1, 1.75, 0.7)),
     {"mode": "linear"}),
    ("int32-cubic", (rand((1, 1, 4, 5), "int32", -1000, 1000), EMPTY, scales(1, 1, 2, 2)),
     {"mode": "cubic"}),
    ("int8-nearest-extrapolate", (rand((1, 1, 4, 4), "int8", -100, 100),
                                  Const(np.array([0, 0, -0.5, 0.2, 1, 1, 1.5, 0.9], f32)),
                                  None, sizes(1, 1, 5, 3)),
     {"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize",
      "extrapolation_value": 300.0}),
    ("float64", (rand((1, 2, 3, 4), "float64"), EMPTY, scales(1, 1, 2.2, 1.5)), {"mode": "cubic"}),
    ("float16", (rand((1, 2, 3, 4), "float16"), EMPTY, scales(1, 1, 2, 2)), {"mode": "linear"}),
    ("identity", (X4, EMPTY, scales(1, 1, 1, 1)), {"mode": "linear"}),
]  # fmt: skip


@pytest.mark.parametrize(("inputs", "attrs"), [c[1:] for c in RESIZE_CASES],
                         ids=[c[0] for c in RESIZE_CASES])  # fmt: skip
def test_resize(inputs: tuple[Any, ...], attrs: dict[str, Any]) -> None:
    check(*one_op("Resize", *inputs, **attrs))


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_runtime_scales(mode: str) -> None:
    """scales as a graph input: the output shape is computed and bound at run time."""
    s = np.array([1, 1, 1.5, 0.7], f32)
    g, feeds = one_op("Resize", X4, EMPTY, s, mode=mode)
    check(g, feeds)


def test_resize_runtime_sizes_and_roi() -> None:
    roi = np.array([0.1, 0.2, 0.7, 1.2], f32)
    g, feeds = one_op(
        "Resize", X4, roi, None, np.array([4, 5], np.int64), mode="linear", axes=[2, 3],
        coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-1.0,
    )  # fmt: skip
    check(g, feeds)


def test_resize_runtime_aspect_policy() -> None:
    g, feeds = one_op(
        "Resize", X4, None, None, np.array([9, 9], np.int64), mode="nearest", axes=[2, 3],
        keep_aspect_ratio_policy="not_larger",
    )  # fmt: skip
    check(g, feeds)


def test_resize_symbolic_batch() -> None:
    g, feeds = one_op("Resize", X4, EMPTY, scales(1, 1, 2, 1.5), mode="cubic",
                      symbolic={0: ["n", 3, 5, 6]})  # fmt: skip
    check(g, feeds)


def test_resize_symbolic_spatial() -> None:
    """Integer scales keep a symbolic spatial dim symbolic."""
    g, feeds = one_op("Resize", X4, EMPTY, scales(1, 1, 2, 3), mode="linear",
                      symbolic={0: ["n", 3, "h", "w"]})  # fmt: skip
    check(g, feeds)
    g, feeds = one_op("Resize", X4, EMPTY, scales(1, 1, 2, 3), mode="nearest",
                      coordinate_transformation_mode="half_pixel_symmetric",
                      symbolic={0: ["n", 3, "h", "w"]})  # fmt: skip
    check(g, feeds)


def test_resize_antialias_runtime_scales_fails_clearly() -> None:
    g, feeds = one_op("Resize", X4, EMPTY, np.array([1, 1, 0.5, 0.5], f32), mode="linear",
                      antialias=1)  # fmt: skip
    with pytest.raises(LoweringError, match="antialias"):
        run_tvm(g, feeds)


def test_resize_nearest_antialias_fails_clearly() -> None:
    g, feeds = one_op("Resize", X4, EMPTY, scales(1, 1, 0.5, 0.5), mode="nearest", antialias=1)
    with pytest.raises(LoweringError, match="antialias"):
        run_tvm(g, feeds)


# -------------------------------------------------------------------- GridSample


def _grid(n: int, *out: int, lo: float = -1.2, hi: float = 1.2) -> np.ndarray:
    return RNG.uniform(lo, hi, (n, *out, len(out))).astype(f32)


GS_X = rand((2, 3, 4, 5))
GS_GRID = _grid(2, 3, 6)
# Grid points on exact pixel centres and halfway points (rounding ties) as well.
_ties = np.array([-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75, 1, 1.25], f32)
GS_TIES = np.stack(np.meshgrid(_ties, _ties[::-1]), -1)[None].repeat(2, 0).astype(f32)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample(mode: str, padding: str, align: int) -> None:
    for grid in (GS_GRID, GS_TIES):
        check(*one_op("GridSample", GS_X, grid, mode=mode, padding_mode=padding,
                      align_corners=align))  # fmt: skip


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_3d(mode: str, padding: str) -> None:
    x = rand((1, 2, 3, 4, 5))
    check(*one_op("GridSample", x, _grid(1, 2, 3, 4), mode=mode, padding_mode=padding))


def test_grid_sample_dtypes_and_symbolic() -> None:
    check(*one_op("GridSample", rand((1, 2, 4, 4), "float64"), _grid(1, 3, 3).astype("float64"),
                  mode="cubic"))  # fmt: skip
    check(*one_op("GridSample", rand((1, 2, 4, 4), "int32", -50, 50), _grid(1, 3, 3),
                  mode="nearest", padding_mode="reflection"))  # fmt: skip
    check(*one_op("GridSample", GS_X, GS_GRID, mode="linear",
                  symbolic={0: ["n", 3, "h", "w"], 1: ["n", "p", "q", 2]}))  # fmt: skip


def test_grid_sample_int_linear_fails_clearly() -> None:
    g, feeds = one_op("GridSample", rand((1, 2, 4, 4), "int32"), _grid(1, 3, 3), mode="linear")
    with pytest.raises(LoweringError, match="mode 'linear'"):
        run_tvm(g, feeds)


# -------------------------------------------------------------------- AffineGrid


@pytest.mark.parametrize("align", [0, 1])
def test_affine_grid(align: int) -> None:
    check(*one_op("AffineGrid", rand((2, 2, 3)), sizes(2, 3, 5, 7), align_corners=align))
    check(*one_op("AffineGrid", rand((2, 3, 4)), sizes(2, 3, 4, 5, 6), align_corners=align))


def test_affine_grid_runtime_size_and_symbolic_batch() -> None:
    check(*one_op("AffineGrid", rand((2, 2, 3)), np.array([2, 1, 6, 4], np.int64)))
    check(*one_op("AffineGrid", rand((2, 3, 4)), np.array([2, 1, 3, 2, 4], np.int64),
                  align_corners=1, symbolic={0: ["n", 3, 4]}))  # fmt: skip


# ---------------------------------------------------------------------- RoiAlign

RA_X = rand((2, 3, 10, 12), lo=-1, hi=3)
RA_ROIS = np.array(
    [[0, 0, 9, 9], [1.5, 2.2, 7.1, 5.3], [-3, -2, 4, 13], [3, 3, 3.2, 3.1], [11, 8, 14, 12]],
    f32,
)
RA_BATCH = np.array([0, 1, 1, 0, 1], np.int64)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("ctm", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("ratio", [0, 2])
def test_roi_align(mode: str, ctm: str, ratio: int) -> None:
    check(*one_op("RoiAlign", RA_X, RA_ROIS, RA_BATCH, mode=mode, sampling_ratio=ratio,
                  coordinate_transformation_mode=ctm, output_height=3, output_width=4,
                  spatial_scale=0.8))  # fmt: skip


def test_roi_align_symbolic_rois() -> None:
    check(*one_op("RoiAlign", RA_X, RA_ROIS, RA_BATCH, output_height=2, output_width=2,
                  symbolic={1: ["r", 4], 2: ["r"]}))  # fmt: skip


# -------------------------------------------------------------------------- CUDA


@pytest.mark.parametrize(
    "case",
    [
        lambda: one_op("Resize", X4, EMPTY, scales(1, 1, 2, 0.6), mode="cubic", exclude_outside=1),
        lambda: one_op("Resize", X4, EMPTY, np.array([1, 1, 2, 2], f32), mode="nearest"),
        lambda: one_op("GridSample", GS_X, GS_GRID, mode="cubic", padding_mode="reflection"),
        lambda: one_op("RoiAlign", RA_X, RA_ROIS, RA_BATCH, mode="max"),
    ],
    ids=["resize-cubic", "resize-runtime", "grid-sample", "roi-align"],
)  # fmt: skip
def test_builds_for_cuda(case: Any) -> None:
    from ecograph.backends.tvm import build

    graph, _ = case()
    build.build_module(graph, "cuda:sm_80", keep_params=False)
