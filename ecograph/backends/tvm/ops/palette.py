"""Lowering of dictionary-coded weights.

- ecograph::PaletteMatMul (a matmul reading palettized weights, made by the
  fuse-weight-dequantize pass the driver runs) is one kernel that looks the weights up inside
  its reduction loop: on CPUs the register-blocked panel kernel with the codes packed in
  column panels (4-bit codes two per byte) and the palettes beside them (ops/weight_panels.py);
  elsewhere, and for layouts the panels do not cover, one TE kernel reading codes and
  palettes as they are. The float weights never exist.
- ecograph::PaletteDequantize left on its own (its weights are read by something other than
  a matmul) is one Relax `take` on the flattened palette (codes plus per-group offsets); the
  CUDA pipeline's FoldConstant folds it into float32 weights when its inputs are constants.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax

from ecograph.backends.tvm.context import LowerContext, R, lowers, norm_axis
from ecograph.backends.tvm.ops.quant import dequantizing_matmul
from ecograph.backends.tvm.ops.weight_panels import emit_panel_dequantize_matmul
from ecograph.ir.dtypes import DType
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


@lowers("PaletteMatMul", domain="ecograph")
def _palette_matmul(ctx: LowerContext) -> relax.Expr:
    """`A @ PaletteDequantize(codes, palette)` (codes transposed when `trans_b`) as one
    kernel looking the weights up in its reduction loop (see the module doc)."""
    at, it, pt = ctx.in_type(0), ctx.in_type(1), ctx.in_type(2)
    if at.dtype != DType.FLOAT32 or pt.dtype != DType.FLOAT32:
        ctx.fail("the fused kernel computes in float32: A and the palette must be float32")
    plan = ctx.state.weight_panels.get(ctx.node)
    if plan is not None:  # CPU: codes and palettes packed for the register-blocked kernel
        return emit_panel_dequantize_matmul(ctx, plan)
    if not it.is_static or not pt.is_static:
        ctx.fail(f"the codes {it} and the palette {pt} need static shapes")
    rows, cols = it.static_shape()
    trans_b = bool(ctx.attrs["trans_b"])
    k_len, n_len = (cols, rows) if trans_b else (rows, cols)
    group = int(ctx.attrs["group_size"])
    axis = norm_axis(int(ctx.attrs["axis"]), 2)

    def compute(a: Any, codes: Any, palette: Any) -> Any:
        def weight(kk: Any, n: Any) -> Any:
            at_ = (n, kk) if trans_b else (kk, n)
            g = at_[axis] // group if group else 0
            return palette[g, codes[at_].astype("int32")]

        return dequantizing_matmul(a, weight, k_len, n_len, "palette_matmul")

    return ctx.bb.emit_te(
        compute, ctx.arg(0), ctx.arg(1), ctx.arg(2), primfunc_name_hint="palette_matmul"
    )
