"""Layout ONNX ops, which move elements without computing new ones: DepthToSpace,
SpaceToDepth, ReverseSequence, CenterCropPad."""

from __future__ import annotations

from typing import Any

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.ops._infer import int_list, normalize_axis, same_as_input
from ecograph.ir.registry import Attr, InferContext, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

# ------------------------------------------------------- DepthToSpace / SpaceToDepth


def _depth_to_space_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    bs = ctx.attr("blocksize")
    if x.rank != 4:
        ctx.fail(f"input must be 4-D, got {x}")
    n, c, h, w = x.shape
    return [x.with_shape([n, symbolic.floordiv(c, bs * bs), symbolic.mul(h, bs),
                          symbolic.mul(w, bs)])]  # fmt: skip


@register_op(
    "DepthToSpace",
    inputs=["input"],
    outputs=["output"],
    attrs={"blocksize": Attr("int"), "mode": Attr("string", "DCR")},
    infer=_depth_to_space_infer,
)
def depth_to_space(x: np.ndarray, *, blocksize: int, mode: str) -> np.ndarray:
    b, c, h, w = x.shape
    bs = blocksize
    if mode == "DCR":
        t = x.reshape(b, bs, bs, c // (bs * bs), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(b, c // (bs * bs), bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(b, c // (bs * bs), h * bs, w * bs)


def _space_to_depth_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    bs = ctx.attr("blocksize")
    if x.rank != 4:
        ctx.fail(f"input must be 4-D, got {x}")
    n, c, h, w = x.shape
    return [x.with_shape([n, symbolic.mul(c, bs * bs), symbolic.floordiv(h, bs),
                          symbolic.floordiv(w, bs)])]  # fmt: skip


@register_op(
    "SpaceToDepth",
    inputs=["input"],
    outputs=["output"],
    attrs={"blocksize": Attr("int")},
    infer=_space_to_depth_infer,
)
def space_to_depth(x: np.ndarray, *, blocksize: int) -> np.ndarray:
    b, c, h, w = x.shape
    bs = blocksize
    t = x.reshape(b, c, h // bs, bs, w // bs, bs).transpose(0, 3, 5, 1, 2, 4)
    return t.reshape(b, c * bs * bs, h // bs, w // bs)


# ------------------------------------------------------------ ReverseSequence


@register_op(
    "ReverseSequence",
    inputs=["input", "sequence_lens"],
    outputs=["Y"],
    attrs={"batch_axis": Attr("int", 1), "time_axis": Attr("int", 0)},
    infer=same_as_input(0),
)
def reverse_sequence(
    x: np.ndarray, lens: np.ndarray, *, batch_axis: int, time_axis: int
) -> np.ndarray:
    out = x.copy()
    for b, n in enumerate(int_list(lens)):
        index: list[Any] = [slice(None)] * x.ndim
        index[batch_axis] = b
        index[time_axis] = slice(0, n)
        src = x[tuple(index)]
        t_axis = time_axis - (1 if batch_axis < time_axis else 0)
        out[tuple(index)] = np.flip(src, axis=t_axis)
    return out


# --------------------------------------------------------------- CenterCropPad


def _center_crop_pad_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    shape = ctx.symbolic(1)
    axes = ctx.attr("axes") or list(range(x.rank))
    dims: list[Dim | None] = list(x.shape)
    for j, a in enumerate(axes):
        a = normalize_axis(a, x.rank, ctx)
        dims[a] = shape[j] if shape is not None else None
    return [make_type(x.dtype, dims)]


@register_op(
    "CenterCropPad",
    inputs=["input_data", "shape"],
    outputs=["output_data"],
    attrs={"axes": Attr("ints", None)},
    infer=_center_crop_pad_infer,
)
def center_crop_pad(x: np.ndarray, shape: np.ndarray, *, axes: list[int] | None) -> np.ndarray:
    axes_l = [a + x.ndim if a < 0 else a for a in (axes or range(x.ndim))]
    out = x
    for a, size in zip(axes_l, int_list(shape), strict=True):
        cur = out.shape[a]
        if size < cur:  # crop: the extra element goes to the end
            start = (cur - size) // 2
            out = np.take(out, range(start, start + size), axis=a)
        elif size > cur:  # pad: the extra element goes to the end
            before = (size - cur) // 2
            width = [(0, 0)] * out.ndim
            width[a] = (before, size - cur - before)
            out = np.pad(out, width)
    return out
