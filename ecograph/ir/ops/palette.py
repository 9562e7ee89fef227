"""Dictionary-coded (palettized) weights: `ecograph::PaletteDequantize(indices, palette)`.

Y[..., c, ...] = palette[c // group_size, indices[..., c, ...]] with c the index along `axis`
(the weight's output channels): every group of `group_size` output channels has its own table
of 2**bits float values (k-means centroids, `ecograph.quant.palettize`), and each weight is a
4-bit (uint4, 16 entries) or 8-bit (uint8, 256 entries) index into its group's table.
`group_size=0` is one table for the whole tensor (palette [1, 2**bits]). The palette always
has exactly 2**bits entries per group, so every index is in range by construction.
ONNX export: one Gather on the flattened palette with precomputed per-group offsets (exact).
"""

from __future__ import annotations

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.registry import Attr, InferContext, register_op
from ecograph.ir.types import TensorType

# Index dtypes and the palette size (entries per group) each one addresses.
PALETTE_ENTRIES = {DType.UINT4: 16, DType.UINT8: 256}


def palette_groups(channels: int, group_size: int) -> int:
    """How many palettes a tensor with `channels` output channels has."""
    return 1 if group_size == 0 else -(-channels // group_size)


def _infer(ctx: InferContext) -> list[TensorType]:
    return [_weights_type(ctx, ctx.input(0), ctx.input(1))]


def _weights_type(ctx: InferContext, idx: TensorType, pal: TensorType) -> TensorType:
    """The type of the weights `indices` and `palette` decode to (checked as in the doc)."""
    if idx.dtype not in PALETTE_ENTRIES:
        ctx.fail(f"indices dtype {idx.dtype} must be uint4 (16 entries) or uint8 (256 entries)")
    if not pal.dtype.is_float or pal.rank != 2:
        ctx.fail(f"palette {pal} must be a 2-D float tensor [groups, entries]")
    entries = PALETTE_ENTRIES[idx.dtype]
    if isinstance(pal.shape[1], int) and pal.shape[1] != entries:
        ctx.fail(f"palette {pal} must have {entries} entries per group for {idx.dtype} indices")
    axis, group = ctx.attr("axis"), ctx.attr("group_size")
    if group < 0:
        ctx.fail(f"group_size={group} must be >= 0 (0: one palette for the whole tensor)")
    if group and not -idx.rank <= axis < idx.rank:
        ctx.fail(f"axis={axis} is not an axis of indices {idx}")
    channels = idx.shape[axis] if group else 1
    groups = pal.shape[0]
    if isinstance(channels, int) and isinstance(groups, int):
        want = palette_groups(channels, group)
        if groups != want:
            ctx.fail(
                f"palette {pal} has {groups} group(s); indices {idx} with axis={axis}, "
                f"group_size={group} need {want}"
            )
    return TensorType(pal.dtype, idx.shape)


@register_op(
    "PaletteDequantize",
    domain="ecograph",
    inputs=["indices", "palette"],
    outputs=["Y"],
    attrs={"axis": Attr("int", 0), "group_size": Attr("int", 0)},
    infer=_infer,
)
def palette_dequantize(
    indices: np.ndarray, palette: np.ndarray, *, axis: int, group_size: int
) -> np.ndarray:
    """palette[group of the element's index along `axis`, indices] (see the module doc)."""
    codes = np.asarray(indices).astype(np.int64)
    if group_size == 0:
        return palette[0][codes]
    axis %= codes.ndim
    shape = [1] * codes.ndim
    shape[axis] = -1
    offsets = palette_offsets(codes.shape[axis], group_size, palette.shape[1]).reshape(shape)
    return palette.reshape(-1)[codes + offsets]


def palette_offsets(channels: int, group_size: int, entries: int) -> np.ndarray:
    """int64 [channels]: where channel c's palette starts in the flattened palette."""
    return (np.arange(channels, dtype=np.int64) // group_size) * entries


__all__ = ["PALETTE_ENTRIES", "palette_dequantize", "palette_groups", "palette_offsets"]


def _infer_matmul(ctx: InferContext) -> list[TensorType]:
    from ecograph.ir.ops.nn import matmul_shape

    a, idx, pal = ctx.input(0), ctx.input(1), ctx.input(2)
    if idx.rank != 2:
        ctx.fail(f"indices must be a 2-D weight matrix, got {idx}")
    if not a.dtype.is_float or pal.dtype != a.dtype:
        ctx.fail(f"A ({a.dtype}) and the palette ({pal.dtype}) must have the same float dtype")
    if ctx.attr("axis") not in (-2, -1, 0, 1):
        ctx.fail(f"axis={ctx.attr('axis')} is not an axis of the 2-D indices")
    rows, cols = _weights_type(ctx, idx, pal).shape
    k, n = (cols, rows) if ctx.attr("trans_b") else (rows, cols)
    return [TensorType(a.dtype, matmul_shape(ctx, a, TensorType(a.dtype, [k, n])))]


@register_op(
    "PaletteMatMul",
    domain="ecograph",
    inputs=["A", "indices", "palette"],
    outputs=["Y"],
    attrs={"axis": Attr("int", 1), "group_size": Attr("int", 0), "trans_b": Attr("int", 0)},
    infer=_infer_matmul,
)
def palette_matmul(
    a: np.ndarray, indices: np.ndarray, palette: np.ndarray, *, axis: int, group_size: int,
    trans_b: int,
) -> np.ndarray:  # fmt: skip
    """A @ PaletteDequantize(indices, palette) (transposed first when `trans_b`: indices
    stored [N, K], as Gemm's transB): the lookup and MatMul kernels themselves, so the fused
    op is bit-identical to the two ops it replaces. Made by `fuse-weight-dequantize`."""
    from ecograph.ir.ops.nn import matmul

    weights = palette_dequantize(indices, palette, axis=axis, group_size=group_size)
    return matmul(a, weights.T if trans_b else weights)


__all__ += ["palette_matmul"]
