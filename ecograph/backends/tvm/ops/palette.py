"""Lowering of dictionary-coded weights: ecograph::PaletteDequantize as one Relax `take` on the
flattened palette (codes plus per-group offsets).

Not fused into the matmul yet: on CPU targets (no Relax FoldConstant in their pipeline) the
codes (uint4 in a one-byte carrier) and palettes are what the artifact holds, and the lookup
is its own kernel writing float32 weights for a float matmul on every call; the CUDA pipeline's
FoldConstant folds a lookup on bound constants into float32 weights (docs/quantization.md).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ecograph.backends.tvm.context import LowerContext, R, lowers
from ecograph.ir.ops.palette import palette_offsets


@lowers("PaletteDequantize", domain="ecograph")
def _palette_dequantize(ctx: LowerContext) -> relax.Expr:
    """palette.flat[codes + (c // group_size) * entries], c the index along `axis`."""
    it, pt = ctx.in_type(0), ctx.in_type(1)
    if not pt.is_static:
        ctx.fail(f"the palette {pt} needs a static shape")
    groups, entries = pt.static_shape()
    codes = ctx.emit(R.astype(ctx.arg(0), "int32"))
    flat = ctx.emit(R.reshape(ctx.arg(1), (groups * entries,)))
    group = int(ctx.attrs["group_size"])
    if group:
        axis = int(ctx.attrs["axis"]) % it.rank
        channels = it.shape[axis]
        if not isinstance(channels, int):
            return ctx.fail(f"grouped palettes need a static size along axis {axis} of {it}")
        shape = [1] * it.rank
        shape[axis] = -1
        offsets = palette_offsets(channels, group, entries).astype(np.int32).reshape(shape)
        codes = ctx.emit(R.add(codes, relax.const(offsets, "int32")))
    return R.take(flat, codes, axis=0)
