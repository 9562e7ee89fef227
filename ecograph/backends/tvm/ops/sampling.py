"""TVM lowerings of the sampling ops: GridSample, AffineGrid and RoiAlign.

Each is a TE compute emitted with `bb.emit_te`, written to follow onnx.reference (which the
IR's kernels delegate to) step by step rather than TOPI's image ops, whose coordinate rules
differ from ONNX's (TOPI's resize takes the scale as out/in size, not the given `scales`, and
has no antialias or `half_pixel_symmetric`; its roi_align max mode pools interpolated values).

- GridSample: per-output-position tables (coordinate, tap index, validity, weight per spatial
  dim; kept separate so the reflection math is not copied into every tap), then one gather.
  N-D (2-D and 3-D), all modes and padding modes, float32 math as the reference's.
  Integer and bool data lower only for mode nearest (the reference truncates its weights to
  the data type otherwise).
- AffineGrid: the base grid is built from the output's static or symbolic sizes (a run-time
  `size` is bound to fresh shape vars), times theta, in float64.
- RoiAlign: avg/max, half_pixel/output_half_pixel; with sampling_ratio 0 the per-ROI sampling
  grid is a reduction whose extent is read from the rois at run time. Max mode pools the
  weighted corner values, as onnx.reference (and onnxruntime) do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tvm import relax, te
from tvm import tirx as tir

from ecograph.backends.tvm.context import LowerContext, R, lowers
from ecograph.backends.tvm.ops.te_helpers import (
    F32,
    F64,
    I64,
    PrimExpr,
    cast,
    clamp,
    compute_dtype,
    fconst,
    i64,
    out_dims,
    seq_sum,
    symbolic_input,
)
from ecograph.ir.dtypes import DType

# ================================================================== GridSample


@lowers("GridSample")
def _grid_sample(ctx: LowerContext) -> relax.Expr:
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(ctx.attrs["mode"], ctx.attrs["mode"])
    padding = ctx.attrs["padding_mode"]
    align = bool(ctx.attrs["align_corners"])
    xt, gt = ctx.in_type(0), ctx.in_type(1)
    dtype = xt.dtype
    if mode not in ("nearest", "linear", "cubic"):
        ctx.fail(f"mode {mode!r} is not a GridSample mode")
    if padding not in ("zeros", "border", "reflection"):
        ctx.fail(f"padding_mode {padding!r} is not a GridSample padding mode")
    if mode != "nearest" and not dtype.is_float:
        ctx.fail(
            f"mode {mode!r} on {dtype} data is not lowered (the reference truncates its weights "
            "to the data type); use nearest or cast to float"
        )
    if dtype in (DType.STRING, DType.INT4, DType.UINT4):
        ctx.fail(f"GridSample of {dtype} tensors is not supported")
    nd = xt.rank - 2
    g_cd = F64 if gt.dtype is DType.FLOAT64 else F32
    cd = compute_dtype(dtype) if dtype.is_float else str(dtype)
    out_shape = out_dims(ctx, "the grid's dims must be known")

    def fn(data: te.Tensor, grid: te.Tensor) -> te.Tensor:
        dims = list(data.shape[2:])
        pos_shape = [out_shape[0], *out_shape[2:]]  # (N, *out): per output position

        def table(f: Callable[..., PrimExpr], name: str) -> te.Tensor:
            return te.compute(pos_shape, f, name=name)

        def coord_of(i: int) -> Callable[..., PrimExpr]:
            def f(n: PrimExpr, *o: PrimExpr) -> PrimExpr:
                v = cast(g_cd, grid(n, *o, i64(nd - 1 - i)))
                length = cast(g_cd, dims[i])
                one = fconst(1.0, g_cd)
                if align:
                    x = (v + one) / fconst(2.0, g_cd) * (length - one)
                else:
                    x = ((v + one) * length - one) / fconst(2.0, g_cd)
                x = cast(F32, x)  # the reference keeps denormalized coordinates in float32
                if mode == "nearest":
                    x = tir.nearbyint(x)
                lo = 0.0 if align else -0.5
                x64 = cast(F64, x)
                hi_e = cast(F64, dims[i]) - (1.0 if align else 0.5)
                out = tir.any(x64 < fconst(lo), x64 > hi_e)
                if padding == "border":
                    dmax = cast(F32, dims[i] - i64(1))
                    zero = fconst(0.0, F32)
                    clamped = tir.Select(x < zero, zero, tir.Select(x > dmax, dmax, x))
                    x = tir.Select(out, clamped, x)
                elif padding == "reflection":
                    x = tir.Select(out, cast(F32, _reflect_dyn(x64, lo, hi_e)), x)
                return x

            return f

        def fetch(i: int, j: PrimExpr) -> tuple[PrimExpr, PrimExpr | None]:
            """(index to read, validity) of integer position j along spatial dim i."""
            d = dims[i]
            if padding == "zeros":
                return clamp(j, i64(0), d - i64(1)), tir.all(j >= i64(0), j < d)
            if padding == "border":
                return clamp(j, i64(0), d - i64(1)), None
            lo = 0.0 if align else -0.5
            hi_e = cast(F64, d) - (1.0 if align else 0.5)
            k = cast(I64, tir.trunc(_reflect_dyn(cast(F64, j), lo, hi_e)))
            return clamp(k, i64(0), d - i64(1)), None

        coords = [table(coord_of(i), f"gs_x{i}") for i in range(nd)]
        if mode == "nearest":
            offsets = [0]
        else:
            offsets = [0, 1] if mode == "linear" else [-1, 0, 1, 2]

        def tap(i: int, off: int, part: str) -> Callable[..., PrimExpr]:
            def f(n: PrimExpr, *o: PrimExpr) -> PrimExpr:
                x = coords[i](n, *o)
                base = cast(I64, tir.trunc(x) if mode == "nearest" else tir.floor(x))
                j, valid = fetch(i, base + i64(off))
                if part == "index":
                    return j
                if part == "valid":
                    return tir.const(True, "bool") if valid is None else valid
                t = tir.abs(x - tir.floor(x))
                return cast(cd, _gs_coeffs(mode, t)[offsets.index(off)])

            return f

        index = [[table(tap(i, off, "index"), "gs_j") for off in offsets] for i in range(nd)]
        valid = None
        if padding == "zeros":
            valid = [[table(tap(i, off, "valid"), "gs_ok") for off in offsets] for i in range(nd)]
        coef = None
        if mode != "nearest":
            coef = [[table(tap(i, off, "coef"), "gs_w") for off in offsets] for i in range(nd)]

        def body(n: PrimExpr, c: PrimExpr, *o: PrimExpr) -> PrimExpr:
            def nest(i: int, idx: list[PrimExpr], ok: list[PrimExpr]) -> PrimExpr:
                if i == nd:
                    v = data(n, c, *idx)
                    if ok:
                        v = tir.Select(tir.all(*ok), v, tir.const(0, str(dtype)))
                    return v if coef is None else cast(cd, v)
                terms = []
                for k in range(len(offsets)):
                    more = ok if valid is None else [*ok, valid[i][k](n, *o)]
                    inner = nest(i + 1, [*idx, index[i][k](n, *o)], more)
                    terms.append(inner if coef is None else coef[i][k](n, *o) * inner)
                return seq_sum(terms)

            v = nest(0, [], [])
            return v if coef is None else cast(str(dtype), v)

        return te.compute(out_shape, body, name="grid_sample")

    return ctx.bb.emit_te(fn, ctx.arg(0), ctx.arg(1), primfunc_name_hint="grid_sample")


def _reflect_dyn(fx: PrimExpr, lo: float, hi: PrimExpr) -> PrimExpr:
    """_gs_reflect with a (possibly symbolic) upper border, in float64."""
    lo_e = fconst(lo)
    rng = hi - lo_e

    def fold(dx: PrimExpr, first: PrimExpr, second: PrimExpr, sign: float) -> PrimExpr:
        k = cast(I64, tir.trunc(dx / rng))
        r = dx - cast(F64, k) * rng
        even = tir.floormod(k, i64(2)) == i64(0)
        return tir.Select(even, first + sign * r, second - sign * r)

    below = fold(lo_e - fx, lo_e, hi, 1.0)
    above = fold(fx - hi, hi, lo_e, -1.0)
    return tir.Select(fx < lo_e, below, tir.Select(fx > hi, above, fx))


def _gs_coeffs(mode: str, x: PrimExpr) -> list[PrimExpr]:
    """GridSample's linear or cubic (alpha -0.75) coefficients at |t|, in float32."""
    if mode == "linear":
        return [1.0 - x, x]
    a = -0.75
    return [
        ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a,
        ((a + 2) * x - (a + 3)) * x * x + 1,
        ((a + 2) * (1 - x) - (a + 3)) * (1 - x) * (1 - x) + 1,
        ((a * (2 - x) - 5 * a) * (2 - x) + 8 * a) * (2 - x) - 4 * a,
    ]


# ================================================================== AffineGrid


@lowers("AffineGrid")
def _affine_grid(ctx: LowerContext) -> relax.Expr:
    align = bool(ctx.attrs["align_corners"])
    tt, out = ctx.in_type(0), ctx.out_type(0)
    nd = out.rank - 2
    if nd not in (2, 3):
        ctx.fail(f"AffineGrid makes 2-D or 3-D grids; size has {nd} spatial dims")
    dt = str(out.dtype)
    if ctx.const(1) is not None or symbolic_input(ctx, 1):
        out_shape = out_dims(ctx, "size (input 1) must be a constant or static-shape computation")
        sizes: list[Any] = list(out.shape[1:-1])
    else:
        # size is a run-time tensor: bind its spatial values to fresh vars.
        shape = ctx.emit(R.tensor_to_shape(ctx.arg(1)))
        tag = re.sub(r"[^A-Za-z0-9_]", "_", ctx.node.name or "affine_grid")
        fresh = [tir.Var(f"{tag}_size{k}", I64) for k in range(nd + 2)]
        ctx.bb.match_cast(shape, relax.ShapeType(fresh))
        sizes = fresh[2:]
        out_shape = [ctx.dim(tt.shape[0]), *sizes, i64(nd)]

    def base(d: Any, p: PrimExpr) -> PrimExpr:
        """np.arange's value at p: start + p * ((start + step) - start), in float64."""
        if isinstance(d, int):
            step = 2.0 / (d - 1) if align else 2.0 / d
            start = -1.0 if align else -1 + step / 2
            return fconst(start) + cast(F64, p) * fconst((start + step) - start)
        df = cast(F64, d if isinstance(d, tir.Var) else ctx.dim(d))
        step = fconst(2.0) / (df - 1.0) if align else fconst(2.0) / df
        start = fconst(-1.0) if align else fconst(-1.0) + step / 2.0
        return start + cast(F64, p) * ((start + step) - start)

    def fn(theta: te.Tensor) -> te.Tensor:
        def body(n: PrimExpr, *rest: PrimExpr) -> PrimExpr:
            pos, j = rest[:-1], rest[-1]
            # Homogeneous base point [x, y, (z,) 1]: x runs along the last spatial dim.
            point = [base(sizes[nd - 1 - k], pos[nd - 1 - k]) for k in range(nd)] + [fconst(1.0)]
            terms = [cast(F64, theta(n, j, i64(k))) * point[k] for k in range(nd + 1)]
            return cast(dt, seq_sum(terms))

        return te.compute(out_shape, body, name="affine_grid")

    return ctx.bb.emit_te(fn, ctx.arg(0), primfunc_name_hint="affine_grid")


# ==================================================================== RoiAlign


@lowers("RoiAlign")
def _roi_align(ctx: LowerContext) -> relax.Expr:
    a = ctx.attrs
    mode = a["mode"]
    ctm = a["coordinate_transformation_mode"]
    if mode not in ("avg", "max"):
        ctx.fail(f"mode {mode!r} is not a RoiAlign mode (avg or max)")
    if ctm not in ("half_pixel", "output_half_pixel"):
        ctx.fail(f"coordinate_transformation_mode {ctm!r} is not half_pixel/output_half_pixel")
    half_pixel = ctm == "half_pixel"
    oh, ow = int(a["output_height"]), int(a["output_width"])
    ratio = int(a["sampling_ratio"])
    scale = float(a["spatial_scale"])
    xt, rt = ctx.in_type(0), ctx.in_type(1)
    cd = F64 if DType.FLOAT64 in (xt.dtype, rt.dtype) else F32
    dt = str(xt.dtype)
    out_shape = out_dims(ctx, "the number of rois must be known")

    def fn(data: te.Tensor, rois: te.Tensor, batch: te.Tensor) -> te.Tensor:
        height, width = data.shape[2], data.shape[3]
        hf, wf = cast(cd, height), cast(cd, width)
        off = fconst(0.5 if half_pixel else 0.0, cd)

        def geometry(r: PrimExpr) -> tuple[PrimExpr, ...]:
            sw, sh, ew, eh = (cast(cd, rois(r, i64(k))) * fconst(scale, cd) - off for k in range(4))
            rw, rh = ew - sw, eh - sh
            if not half_pixel:  # malformed ROIs become 1x1
                rw = tir.max(rw, fconst(1.0, cd))
                rh = tir.max(rh, fconst(1.0, cd))
            bin_h, bin_w = rh / fconst(oh, cd), rw / fconst(ow, cd)
            if ratio > 0:
                gh = gw = i64(ratio)
            else:
                gh = cast(I64, tir.ceil(rh / fconst(oh, cd)))
                gw = cast(I64, tir.ceil(rw / fconst(ow, cd)))
            return sh, sw, bin_h, bin_w, gh, gw

        def sample(r: PrimExpr, c: PrimExpr, y: PrimExpr, x: PrimExpr) -> PrimExpr:
            outside = tir.any(y < fconst(-1.0, cd), y > hf, x < fconst(-1.0, cd), x > wf)
            b = batch(r)
            zero = fconst(0.0, cd)
            y, x = tir.max(y, zero), tir.max(x, zero)
            corners = []
            lows = []
            for v, size in ((y, height), (x, width)):
                low = cast(I64, tir.floor(v))
                edge = low >= size - i64(1)
                lo_i = tir.Select(edge, size - i64(1), low)
                hi_i = tir.Select(edge, size - i64(1), low + i64(1))
                frac = tir.Select(edge, zero, v - cast(cd, low))
                lows.append((lo_i, hi_i, frac))
            (y0, y1, ly), (x0, x1, lx) = lows
            hy, hx = 1.0 - ly, 1.0 - lx
            for w, yy, xx in ((hy * hx, y0, x0), (hy * lx, y0, x1), (ly * hx, y1, x0),
                              (ly * lx, y1, x1)):  # fmt: skip
                corners.append(tir.Select(outside, zero, w) * cast(cd, data(b, c, yy, xx)))
            if mode == "avg":
                return seq_sum(corners)
            m = corners[0]
            for v in corners[1:]:
                m = tir.max(m, v)
            return m

        def pooled(r: PrimExpr, c: PrimExpr, ph: PrimExpr, pw: PrimExpr) -> PrimExpr:
            sh, sw, bin_h, bin_w, gh, gw = geometry(r)
            iy = te.reduce_axis((i64(0), gh), name="iy")
            ix = te.reduce_axis((i64(0), gw), name="ix")
            y = sh + cast(cd, ph) * bin_h + (cast(cd, iy.var) + 0.5) * bin_h / cast(cd, gh)
            x = sw + cast(cd, pw) * bin_w + (cast(cd, ix.var) + 0.5) * bin_w / cast(cd, gw)
            v = sample(r, c, y, x)
            return te.sum(v, axis=[iy, ix]) if mode == "avg" else te.max(v, axis=[iy, ix])

        acc = te.compute(out_shape, pooled, name="roi_pool")

        def finish(r: PrimExpr, c: PrimExpr, ph: PrimExpr, pw: PrimExpr) -> PrimExpr:
            *_, gh, gw = geometry(r)
            count = gh * gw
            if mode == "avg":
                v = acc(r, c, ph, pw) / cast(cd, tir.max(count, i64(1)))
            else:
                v = tir.Select(count > i64(0), acc(r, c, ph, pw), fconst(0.0, cd))
            return cast(dt, v)

        return te.compute(out_shape, finish, name="roi_align")

    return ctx.bb.emit_te(fn, ctx.arg(0), ctx.arg(1), ctx.arg(2), primfunc_name_hint="roi_align")
