"""TVM lowering of Resize (all modes, antialias, run-time scales/sizes/roi).

Each is a TE compute emitted with `bb.emit_te`, written to follow onnx.reference (which the
IR's kernels delegate to) step by step rather than TOPI's image ops, whose coordinate rules
differ from ONNX's (TOPI's resize takes the scale as out/in size, not the given `scales`, and
has no antialias or `half_pixel_symmetric`; its roi_align max mode pools interpolated values).

- Resize: separable, one pass per resized axis in the order of `axes`, as the reference.
  Source coordinates, tap indices and weights are float64/int64 TIR math of the (static or
  symbolic) sizes, kept in small per-axis tables; a linear/cubic pass gathers its taps from
  them. Data math is float64 (float32 only for float16/bfloat16), as the reference's, and
  integers round half to even and saturate as `saturate_cast`. The reference computes cubic
  coefficients in float32 (cubic_coeff_a arrives as a numpy float32); that is mirrored with
  FMA-proof float32 steps. Nearest is one fused gather. Constant scales/sizes/roi fold into the
  kernels; run-time scales/sizes/roi are read by the kernels, and the output shape is computed
  with Relax ops and bound to fresh shape vars (`tensor_to_shape` + `match_cast`). Antialias
  needs the scale at compile time (its filter width depends on it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
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
    fconst,
    i64,
    seq_sum,
    symbolic_input,
)
from ecograph.ir.dtypes import DType


def _static(e: Any) -> int | None:
    """The int value of a static dim (a Python int or IntImm), else None."""
    if isinstance(e, int):
        return e
    if isinstance(e, tir.IntImm):
        return int(e.value)
    return None


def _saturate(v: PrimExpr, dtype: DType) -> PrimExpr:
    """onnx.numpy_helper.saturate_cast of a float value: integers round half to even, then
    everything clips to the type's range (NaN passes through) and casts."""
    src = str(v.ty)
    if dtype.is_integer:
        info: Any = np.iinfo(dtype.numpy)
        v = tir.nearbyint(v)
    else:
        info = ml_dtypes.finfo(dtype.numpy)
    lo, hi = fconst(float(info.min), src), fconst(float(info.max), src)
    # select(v > hi, hi, select(v < lo, lo, v)) keeps NaN (every comparison with NaN is false).
    return cast(str(dtype), tir.Select(v > hi, hi, tir.Select(v < lo, lo, v)))


# ====================================================================== Resize


@dataclass
class _Axis:
    """One resized axis."""

    axis: int
    j: int  # position among the resized axes (index into scales/sizes/roi)
    in_dim: PrimExpr
    out_dim: PrimExpr
    static: tuple[int, int] | None  # (in, out) when both are known at compile time
    same_dim: bool = False  # the IR gives input and output the same dim


_RUNTIME_SCALE = ("scales_t", "aspect_t_min", "aspect_t_max")


@dataclass
class _ResizeSpec:
    """Where the scale factors and roi of a Resize come from."""

    axes: list[_Axis]
    source: str  # scales | stretch | aspect (constants); scales_t | aspect_t (run-time tensors)
    scales: list[float] | None = None
    aspect: float | None = None
    roi: np.ndarray | None = None  # a constant roi (tf_crop_and_resize)
    roi_dtype: str = F32
    tensors: tuple[str, ...] = ()  # run-time inputs the kernels read: scales, sizes, roi

    def scale(self, ax: _Axis, t: dict[str, te.Tensor]) -> float | PrimExpr:
        """The reference's per-axis scale factor (a Python float when known statically)."""
        if self.source == "scales":
            assert self.scales is not None
            return self.scales[ax.j]
        if self.source == "aspect":
            assert self.aspect is not None
            return self.aspect
        if self.source == "stretch":
            if ax.static:
                return ax.static[1] / ax.static[0]
            return cast(F64, ax.out_dim) / cast(F64, ax.in_dim)
        if self.source == "scales_t":
            return cast(F64, t["scales"](i64(ax.j)))
        ratios = [cast(F64, t["sizes"](i64(b.j))) / cast(F64, b.in_dim) for b in self.axes]
        best = ratios[0]
        for r in ratios[1:]:
            best = tir.min(best, r) if self.source == "aspect_t_min" else tir.max(best, r)
        return best

    def roi_of(self, ax: _Axis, t: dict[str, te.Tensor]) -> tuple[Any, Any] | None:
        """(start, end) of the roi on this axis: numpy scalars, TIR reads, or None."""
        n = len(self.axes)
        if self.roi is not None:
            return self.roi[ax.j], self.roi[n + ax.j]
        if "roi" in t:
            return t["roi"](i64(ax.j)), t["roi"](i64(n + ax.j))
        return None

    def identity(self, ax: _Axis, t: dict[str, te.Tensor]) -> bool | PrimExpr:
        """Whether the reference skips this axis (scale ~1, same size, identity roi)."""
        roi = self.roi_of(ax, t)
        if ax.same_dim and self.source == "stretch" and roi is None:
            return True
        scale = self.scale(ax, t)
        if isinstance(scale, float) and ax.static and (roi is None or self.roi is not None):
            same = math.isclose(scale, 1.0) and ax.static[0] == ax.static[1]
            if roi is not None:
                same = same and math.isclose(roi[0], 0.0) and math.isclose(roi[1], 1.0)
            return same
        s = cast(F64, scale)
        conds = [
            tir.abs(s - 1.0) <= 1e-9 * tir.max(tir.abs(s), fconst(1.0)),
            ax.out_dim == ax.in_dim,
        ]
        if roi is not None:
            r0, r1 = (
                cast(F64, v) if not isinstance(v, np.generic) else fconst(float(v)) for v in roi
            )
            conds += [
                r0 == fconst(0.0),
                tir.abs(r1 - 1.0) <= 1e-9 * tir.max(tir.abs(r1), fconst(1.0)),
            ]
        return tir.all(*conds)


def _resize_spec(ctx: LowerContext) -> tuple[_ResizeSpec, list[PrimExpr], list[relax.Expr]]:
    """The spec, the output dims, and the run-time inputs (matching `spec.tensors`)."""
    xt, out = ctx.in_type(0), ctx.out_type(0)
    rank = xt.rank
    attr_axes = ctx.attrs["axes"]
    axes = [a + rank if a < 0 else a for a in attr_axes] if attr_axes else list(range(rank))
    policy = ctx.attrs["keep_aspect_ratio_policy"]
    if policy not in ("stretch", "not_larger", "not_smaller"):
        ctx.fail(f"keep_aspect_ratio_policy {policy!r} is not an ONNX policy")
    extra: list[relax.Expr] = []
    names: list[str] = []
    scales_c = ctx.const(2) if ctx.has(2) else None
    has_scales = ctx.has(2) and (scales_c is None or scales_c.size > 0)
    sizes_c = ctx.const(3) if ctx.has(3) else None
    has_sizes = ctx.has(3) and (sizes_c is None or sizes_c.size > 0)
    if not has_scales and not has_sizes:
        ctx.fail("needs scales (input 2) or sizes (input 3)")
    spec = _ResizeSpec([], "scales")
    sizes_known = sizes_c is not None or _symbolic_sizes(ctx)
    if has_scales and scales_c is not None:
        spec.scales = [float(s) for s in np.asarray(scales_c).reshape(-1)]
        if len(spec.scales) != len(axes):
            ctx.fail(f"scales has {len(spec.scales)} values for {len(axes)} axes")
    elif has_scales:
        spec.source = "scales_t"
        names.append("scales")
        extra.append(ctx.arg(2))
    elif policy == "stretch":
        spec.source = "stretch"
    elif sizes_c is not None and all(isinstance(xt.shape[a], int) for a in axes):
        values = np.asarray(sizes_c).reshape(-1)
        if values.size != len(axes):
            ctx.fail(f"sizes has {values.size} values for {len(axes)} axes")
        ins = [int(xt.shape[a]) for a in axes]
        ratios = np.array([int(s) / d for s, d in zip(values, ins, strict=True)])
        spec.source = "aspect"
        spec.aspect = float(ratios.min() if policy == "not_larger" else ratios.max())
    else:
        spec.source = "aspect_t_min" if policy == "not_larger" else "aspect_t_max"
        names.append("sizes")
        extra.append(ctx.arg(3))
    in_dims = [ctx.dim(d) for d in xt.shape]
    static_out = all(d is not None for d in out.shape) and (
        spec.source in ("scales", "aspect") or (spec.source == "stretch" and sizes_known)
    )
    if static_out:
        out_dims = [ctx.dim(d) for d in out.shape]
    else:
        # The output shape depends on run-time values: compute it, bind it to fresh vars.
        in_f = R.astype(R.shape_to_tensor(relax.ShapeExpr([in_dims[a] for a in axes])), F64)
        if has_scales:
            sizes_t = R.floor(R.multiply(R.astype(ctx.arg(2), F64), in_f))
        elif policy == "stretch":
            sizes_t = ctx.arg(3)
        else:
            ratio = R.divide(R.astype(ctx.arg(3), F64), in_f)
            best = R.min(ratio) if policy == "not_larger" else R.max(ratio)
            sizes_t = R.floor(R.add(R.multiply(best, in_f), ctx.scalar(0.5, F64)))
        shape = ctx.emit(R.tensor_to_shape(ctx.emit(R.astype(sizes_t, I64))))
        tag = re.sub(r"[^A-Za-z0-9_]", "_", ctx.node.name or "resize")
        fresh = [tir.Var(f"{tag}_size{k}", I64) for k in range(len(axes))]
        ctx.bb.match_cast(shape, relax.ShapeType(fresh))
        out_dims = list(in_dims)
        for a, v in zip(axes, fresh, strict=True):
            out_dims[a] = v
    for j, a in enumerate(axes):
        i_s, o_s = _static(in_dims[a]), _static(out_dims[a])
        both = (i_s, o_s) if i_s is not None and o_s is not None else None
        same = static_out and xt.shape[a] == out.shape[a]
        spec.axes.append(_Axis(a, j, in_dims[a], out_dims[a], both, same))
    if ctx.attrs["coordinate_transformation_mode"] == "tf_crop_and_resize":
        rv = ctx.const(1) if ctx.has(1) else None
        if not ctx.has(1) or (rv is not None and rv.size == 0):
            ctx.fail("coordinate_transformation_mode 'tf_crop_and_resize' needs roi (input 1)")
        spec.roi_dtype = str(ctx.in_type(1).dtype)
        if rv is not None:
            spec.roi = np.asarray(rv).reshape(-1)
            if spec.roi.size != 2 * len(axes):
                ctx.fail(f"roi has {spec.roi.size} values; expected {2 * len(axes)}")
        else:
            names.append("roi")
            extra.append(ctx.arg(1))
    spec.tensors = tuple(names)
    return spec, out_dims, extra


def _symbolic_sizes(ctx: LowerContext) -> bool:
    """Whether sizes is a static-shape computation whose dims the IR output already carries."""
    return symbolic_input(ctx, 3)


def _source_coord(
    ctx: LowerContext,
    spec: _ResizeSpec,
    ax: _Axis,
    o: PrimExpr,
    w: PrimExpr,
    t: dict[str, te.Tensor],
) -> tuple[PrimExpr, PrimExpr | None]:
    """x_original (float64) of output index `o` along the axis, and the extrapolation flag."""
    ctm = ctx.attrs["coordinate_transformation_mode"]
    scale = spec.scale(ax, t)
    y = cast(F64, o)
    wf = cast(F64, w)
    ow = scale * wf  # output_width: a float, not the int size
    one = fconst(1.0)
    if ctm == "align_corners":
        return tir.Select(ow == one, fconst(0.0), y * (wf - one) / (ow - one)), None
    if ctm == "asymmetric":
        return y / scale, None
    if ctm == "pytorch_half_pixel":
        return tir.Select(ow == one, fconst(-0.5), (y + 0.5) / scale - 0.5), None
    if ctm == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    if ctm == "half_pixel_symmetric":
        adjustment = cast(F64, ax.out_dim) / ow
        offset = (wf / 2.0) * (one - adjustment)
        return offset + (y + 0.5) / scale - 0.5, None
    if ctm != "tf_crop_and_resize":
        return ctx.fail(f"coordinate_transformation_mode {ctm!r} is not an ONNX mode")
    roi = spec.roi_of(ax, t)
    assert roi is not None
    # The reference mixes precisions here: roi arithmetic runs in roi's dtype, the rest in
    # float64. Constant rois with static sizes are folded with numpy the same way.
    if spec.roi is not None and ax.static is not None and isinstance(scale, float):
        r0, r1 = roi
        wm1 = ax.static[0] - 1
        d = r1 - r0
        start = float(r0 * wm1)
        owv = scale * ax.static[0]
        if owv == 1:
            x = fconst(float(d * wm1 / 2)) + start
        else:
            x = y * float(d) * float(wm1) / (owv - 1) + start
        return x, tir.any(x < fconst(0.0), x > fconst(float(wm1)))
    rdt = spec.roi_dtype
    if spec.roi is not None:
        r0, r1 = roi
        e0, d = fconst(float(r0), rdt), fconst(float(r1 - r0), rdt)
    else:
        e0, e1 = roi
        d = e1 - e0
    wm1 = w - i64(1)
    wm1_r = cast(rdt, wm1)
    start = cast(F64, e0 * wm1_r)
    x = tir.Select(
        ow == one,
        cast(F64, d * wm1_r / fconst(2.0, rdt)) + start,
        y * cast(F64, d) * cast(F64, wm1) / (ow - one) + start,
    )
    return x, tir.any(x < fconst(0.0), x > cast(F64, wm1))


def _left_ratio(x: PrimExpr) -> tuple[PrimExpr, PrimExpr]:
    """The reference's neighbour base: (floor(x), x - floor(x)), or (x - 1, 1) at integers."""
    fl = tir.floor(x)
    r = x - fl
    left = cast(I64, fl)
    at_int = r == fconst(0.0)
    return tir.Select(at_int, left - i64(1), left), tir.Select(at_int, fconst(1.0), r)


def _taps(
    ctx: LowerContext, scale: float | PrimExpr | None
) -> tuple[int, Callable[[PrimExpr, int], PrimExpr], Callable[[PrimExpr, int], PrimExpr] | None]:
    """Tap count, the raw (unnormalized, float64) coefficient of tap k at ratio r, and for
    antialiased cubic whether tap k lies outside the kernel (|x| >= 2).

    The reference gets cubic_coeff_a as a numpy float32, so its cubic coefficients are float32
    arithmetic (each float64 operand rounded to float32 first); that is mirrored here.
    """
    mode = ctx.attrs["mode"]
    a32 = np.float32(ctx.attrs["cubic_coeff_a"])

    def c32(v: Any) -> PrimExpr:
        return fconst(float(np.float32(v)), F32)

    ca, ca2, ca3 = c32(a32), c32(a32 + np.float32(2)), c32(a32 + np.float32(3))
    ca5, ca8, ca4 = c32(np.float32(5) * a32), c32(np.float32(8) * a32), c32(np.float32(4) * a32)
    one32 = fconst(1.0, F32)

    def f32(e: PrimExpr) -> PrimExpr:
        return cast(F32, e)

    # float32 operations done in float64 and rounded (exact: 53 >= 2*24 + 2 bits), so LLVM
    # cannot contract them into FMAs, which would round differently from numpy.
    def mul(x: PrimExpr, y: PrimExpr) -> PrimExpr:
        return f32(cast(F64, x) * cast(F64, y))

    def add(x: PrimExpr, y: PrimExpr) -> PrimExpr:
        return f32(cast(F64, x) + cast(F64, y))

    def sub(x: PrimExpr, y: PrimExpr) -> PrimExpr:
        return f32(cast(F64, x) - cast(F64, y))

    def outer(t: PrimExpr) -> PrimExpr:  # ((A*t - 5A)*t + 8A)*t - 4A
        return cast(F64, sub(mul(add(mul(sub(mul(ca, t), ca5), t), ca8), t), ca4))

    def inner(t: PrimExpr) -> PrimExpr:  # ((A+2)*t - (A+3))*t*t + 1
        return cast(F64, add(mul(mul(sub(mul(ca2, t), ca3), t), t), one32))

    if not ctx.attrs["antialias"]:
        if mode == "linear":
            return 2, lambda r, k: (1.0 - r) if k == 0 else r, None

        def cubic(r: PrimExpr, k: int) -> PrimExpr:
            if k == 0:
                return outer(f32(r + 1.0))
            if k == 1:
                return inner(f32(r))
            if k == 2:
                return inner(f32(1.0 - r))
            return outer(f32((1.0 - r) + 1.0))

        return 4, cubic, None
    if not isinstance(scale, float):
        ctx.fail(
            "antialias=1 needs constant scales or sizes (its filter width depends on the scale "
            "factor, which here is only known at run time)"
        )
    s = min(scale, 1.0)
    if mode == "linear":
        start = int(np.floor(-1 / s) + 1)

        def linear_aa(r: PrimExpr, k: int) -> PrimExpr:
            v = 1.0 - tir.abs((fconst(start + k) - r) * s)
            return tir.Select(
                v < fconst(0.0), fconst(0.0), tir.Select(v > fconst(1.0), fconst(1.0), v)
            )

        return 2 - 2 * start, linear_aa, None
    i_start = int(np.floor(-2 / s) + 1)

    def dist(r: PrimExpr, k: int) -> PrimExpr:
        return tir.abs(s * (fconst(i_start + k) - r))

    def cubic_aa(r: PrimExpr, k: int) -> PrimExpr:
        x = dist(r, k)
        x2 = x * x
        x3 = x * x2
        near = add(sub(mul(ca2, f32(x3)), mul(ca3, f32(x2))), one32)
        far = sub(add(sub(mul(ca, f32(x3)), mul(ca5, f32(x2))), mul(ca8, f32(x))), ca4)
        return tir.Select(
            x <= fconst(1.0),
            cast(F64, near),
            tir.Select(x < fconst(2.0), cast(F64, far), fconst(0.0)),
        )

    return 2 - 2 * i_start, cubic_aa, lambda r, k: dist(r, k) >= fconst(2.0)


def _resize_pass(
    ctx: LowerContext,
    spec: _ResizeSpec,
    x: relax.Expr,
    ax: _Axis,
    extra: list[relax.Expr],
    cd: str,
    out_dtype: DType | None,
) -> relax.Expr:
    """One linear/cubic pass along `ax.axis`; `out_dtype` is set on the last pass."""
    aa = bool(ctx.attrs["antialias"])
    exclude = bool(ctx.attrs["exclude_outside"])
    ev = float(ctx.attrs["extrapolation_value"])
    axis = ax.axis
    o_dim = ax.out_dim
    n, coeff, outside_k = _taps(ctx, None if spec.source in _RUNTIME_SCALE else spec.scale(ax, {}))

    def fn(data: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        t = dict(zip(spec.tensors, tensors, strict=True))
        w = data.shape[axis]
        half = n // 2

        def coord(o: PrimExpr) -> tuple[PrimExpr, PrimExpr | None]:
            return _source_coord(ctx, spec, ax, o, w, t)

        def col(f: Callable[[PrimExpr], PrimExpr], name: str) -> te.Tensor:
            return te.compute((o_dim,), lambda o: f(o), name=name)

        def raw_k(k: int) -> Callable[[PrimExpr], PrimExpr]:
            return lambda o: coeff(_left_ratio(coord(o)[0])[1], k)

        def ratio_of(c: te.Tensor, total: te.Tensor) -> Callable[[PrimExpr], PrimExpr]:
            return lambda o: c(o) / total(o)

        def masked(c: te.Tensor, k: int) -> Callable[[PrimExpr], PrimExpr]:
            def f(o: PrimExpr) -> PrimExpr:
                inside = tir.all(starts(o) + i64(k) >= i64(0), starts(o) + i64(k) < w)
                return tir.Select(inside, c(o), fconst(0.0))

            return f

        def total_of(cs: list[te.Tensor]) -> Callable[[PrimExpr], PrimExpr]:
            return lambda o: seq_sum([c(o) for c in cs])

        starts = col(lambda o: _left_ratio(coord(o)[0])[0] - i64(half - 1), "resize_start")
        raw = [col(raw_k(k), "resize_c") for k in range(n)]
        if aa and outside_k is None:  # np.array(coeffs) / sum(coeffs)
            total = col(total_of(raw), "aa_sum")
            raw = [col(ratio_of(c, total), "aa_w") for c in raw]
        elif aa:
            # float32 coefficients summed in float32; the division is float32 unless a tap
            # outside the kernel (a Python 0.0) made numpy's coefficient array float64.
            assert outside_k is not None
            total = col(lambda o: seq_sum([cast(F32, c(o)) for c in raw]), "aa_sum32")
            any_far = col(
                lambda o: tir.any(
                    *[outside_k(_left_ratio(coord(o)[0])[1], k) for k in range(n)], False
                ),
                "aa_far",
            )

            def cubic_norm(c: te.Tensor) -> Callable[[PrimExpr], PrimExpr]:
                return lambda o: tir.Select(
                    any_far(o),
                    c(o) / cast(F64, total(o)),
                    cast(F64, cast(F32, c(o)) / total(o)),
                )

            raw = [col(cubic_norm(c), "aa_w") for c in raw]
        if exclude:  # zero the taps outside the input, renormalize (a zero sum stays zero)
            raw = [col(masked(c, k), "ex_c") for k, c in enumerate(raw)]
            total = col(total_of(raw), "ex_sum")
            norm = col(
                lambda o: tir.Select(total(o) == fconst(0.0), fconst(1.0), total(o)), "ex_norm"
            )
            raw = [col(ratio_of(c, norm), "ex_w") for c in raw]
        ident = spec.identity(ax, t)
        shape = list(data.shape)
        shape[axis] = o_dim

        def body(*idx: PrimExpr) -> PrimExpr:
            o = idx[axis]
            terms = []
            for k, c in enumerate(raw):
                src = list(idx)
                src[axis] = clamp(starts(o) + i64(k), i64(0), w - i64(1))
                terms.append(cast(cd, data(*src)) * cast(cd, c(o)))
            acc = seq_sum(terms)
            flag = coord(o)[1]
            if flag is not None:
                acc = tir.Select(flag, fconst(ev, cd), acc)
            if not isinstance(ident, bool):
                src = list(idx)
                src[axis] = clamp(o, i64(0), w - i64(1))
                acc = tir.Select(ident, cast(cd, data(*src)), acc)
            return acc if out_dtype is None else _saturate(acc, out_dtype)

        return te.compute(shape, body, name="resize")

    return ctx.bb.emit_te(fn, x, *extra, primfunc_name_hint="resize_axis")


def _resize_nearest(
    ctx: LowerContext,
    spec: _ResizeSpec,
    axes: list[_Axis],
    out_dims: list[PrimExpr],
    extra: list[relax.Expr],
    dtype: DType,
) -> relax.Expr:
    """All nearest passes as one gather; each pass's zeroing/extrapolation applies in order."""
    rule = ctx.attrs["nearest_mode"]
    if rule not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        ctx.fail(f"nearest_mode {rule!r} is not an ONNX mode")
    exclude = bool(ctx.attrs["exclude_outside"])
    ev = float(ctx.attrs["extrapolation_value"])
    dt = str(dtype)
    zero = tir.const(0, dt)
    if dtype.is_integer:
        info = np.iinfo(dtype.numpy)
        ev_v = tir.const(int(np.clip(np.round(ev), info.min, info.max)), dt)
    else:
        ev_v = tir.const(ev, dt)

    def pick(r: PrimExpr) -> PrimExpr:
        if rule == "round_prefer_floor":
            hi = r > fconst(0.5)
        elif rule == "round_prefer_ceil":
            hi = r >= fconst(0.5)
        else:
            hi = tir.const(rule == "ceil", "bool")
        return tir.Select(tir.any(r == fconst(1.0), hi), i64(1), i64(0))

    def fn(data: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        t = dict(zip(spec.tensors, tensors, strict=True))

        def body(*idx: PrimExpr) -> PrimExpr:
            src = list(idx)
            mods = []
            for ax in axes:
                o = idx[ax.axis]
                w = data.shape[ax.axis]
                x_ori, flag = _source_coord(ctx, spec, ax, o, w, t)
                left, r = _left_ratio(x_ori)
                j = left + pick(r)
                valid = tir.all(j >= i64(0), j < w)
                ident = spec.identity(ax, t)
                if not isinstance(ident, bool):
                    j = tir.Select(ident, o, j)
                    valid = tir.any(ident, valid)
                    flag = None if flag is None else tir.all(tir.Not(ident), flag)
                src[ax.axis] = clamp(j, i64(0), w - i64(1))
                mods.append((valid, flag))
            v = data(*src)
            for valid, flag in mods:
                if exclude:
                    v = tir.Select(valid, v, zero)
                if flag is not None:
                    v = tir.Select(flag, ev_v, v)
            return v

        return te.compute(out_dims, body, name="resize_nearest")

    return ctx.bb.emit_te(fn, ctx.arg(0), *extra, primfunc_name_hint="resize_nearest")


@lowers("Resize")
def _resize(ctx: LowerContext) -> relax.Expr:
    dtype = ctx.in_type(0).dtype
    if not (dtype.is_float or dtype.is_integer) or dtype in (DType.INT4, DType.UINT4):
        ctx.fail(f"Resize of {dtype} tensors is not supported (numeric types only)")
    mode = ctx.attrs["mode"]
    if mode not in ("nearest", "linear", "cubic"):
        ctx.fail(f"mode {mode!r} is not an ONNX Resize mode")
    if mode == "nearest" and ctx.attrs["antialias"]:
        ctx.fail("antialias=1 is not defined for mode 'nearest' (the reference rejects it)")
    spec, out_dims, extra = _resize_spec(ctx)
    if spec.tensors:  # identity axes are decided at run time
        axes = list(spec.axes)
    else:
        axes = [ax for ax in spec.axes if spec.identity(ax, {}) is not True]
    x = ctx.arg(0)
    if not axes:
        return x
    if mode == "nearest":
        return _resize_nearest(ctx, spec, axes, out_dims, extra, dtype)
    # float64 as the reference (float32 passes drift ~1e-6 where cubic taps cancel); the
    # 16-bit floats, whose results are far coarser, run in float32.
    cd = F32 if dtype in (DType.FLOAT16, DType.BFLOAT16) else F64
    for k, ax in enumerate(axes):
        x = _resize_pass(ctx, spec, x, ax, extra, cd, dtype if k == len(axes) - 1 else None)
    return x
