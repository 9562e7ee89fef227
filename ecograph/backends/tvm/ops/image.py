"""TVM lowerings of the resampling ops: Resize, GridSample, AffineGrid and RoiAlign.

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

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
from tvm import te

from ecograph.backends.tvm.lowering import LowerContext, R, lowers, relax, tir
from ecograph.ir.dtypes import DType
from ecograph.ir.registry import symbolic_value

I64 = "int64"
F32 = "float32"
F64 = "float64"

PrimExpr = Any  # tir.PrimExpr (kept loose: TIR's Python operators return several classes)


def _i(v: int) -> PrimExpr:
    return tir.const(v, I64)


def _f(v: float, dtype: str = F64) -> PrimExpr:
    return tir.const(float(v), dtype)


def _cast(dtype: str, e: PrimExpr) -> PrimExpr:
    if isinstance(e, (int, float)):
        return tir.const(e, dtype)
    return e if str(e.ty) == dtype else tir.Cast(dtype, e)


def _clamp(e: PrimExpr, lo: PrimExpr, hi: PrimExpr) -> PrimExpr:
    return tir.max(tir.min(e, hi), lo)


def _static(e: Any) -> int | None:
    """The int value of a static dim (a Python int or IntImm), else None."""
    if isinstance(e, int):
        return e
    if isinstance(e, tir.IntImm):
        return int(e.value)
    return None


def _compute_dtype(dtype: DType) -> str:
    """What the arithmetic runs in: float32 for the 32-bit-or-narrower floats, else float64."""
    return F32 if dtype in (DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16) else F64


def _saturate(v: PrimExpr, dtype: DType) -> PrimExpr:
    """onnx.numpy_helper.saturate_cast of a float value: integers round half to even, then
    everything clips to the type's range (NaN passes through) and casts."""
    src = str(v.ty)
    if dtype.is_integer:
        info: Any = np.iinfo(dtype.numpy)
        v = tir.nearbyint(v)
    else:
        info = ml_dtypes.finfo(dtype.numpy)
    lo, hi = _f(float(info.min), src), _f(float(info.max), src)
    # select(v > hi, hi, select(v < lo, lo, v)) keeps NaN (every comparison with NaN is false).
    return _cast(str(dtype), tir.Select(v > hi, hi, tir.Select(v < lo, lo, v)))


def _out_dims(ctx: LowerContext, what: str) -> list[PrimExpr]:
    shape = ctx.out_type(0).shape
    if any(d is None for d in shape):
        ctx.fail(f"the output shape {list(shape)} is not known before run time; {what}")
    return [ctx.dim(d) for d in shape]


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
            return _cast(F64, ax.out_dim) / _cast(F64, ax.in_dim)
        if self.source == "scales_t":
            return _cast(F64, t["scales"](_i(ax.j)))
        ratios = [_cast(F64, t["sizes"](_i(b.j))) / _cast(F64, b.in_dim) for b in self.axes]
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
            return t["roi"](_i(ax.j)), t["roi"](_i(n + ax.j))
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
        s = _cast(F64, scale)
        conds = [
            tir.abs(s - 1.0) <= 1e-9 * tir.max(tir.abs(s), _f(1.0)),
            ax.out_dim == ax.in_dim,
        ]
        if roi is not None:
            r0, r1 = (_cast(F64, v) if not isinstance(v, np.generic) else _f(float(v)) for v in roi)
            conds += [r0 == _f(0.0), tir.abs(r1 - 1.0) <= 1e-9 * tir.max(tir.abs(r1), _f(1.0))]
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
    return _symbolic_input(ctx, 3)


def _symbolic_input(ctx: LowerContext, i: int) -> bool:
    """Whether input `i` is an int tensor whose values are (possibly symbolic) dims."""
    v = ctx.node.input(i)
    return v is not None and symbolic_value(v) is not None


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
    y = _cast(F64, o)
    wf = _cast(F64, w)
    ow = scale * wf  # output_width: a float, not the int size
    one = _f(1.0)
    if ctm == "align_corners":
        return tir.Select(ow == one, _f(0.0), y * (wf - one) / (ow - one)), None
    if ctm == "asymmetric":
        return y / scale, None
    if ctm == "pytorch_half_pixel":
        return tir.Select(ow == one, _f(-0.5), (y + 0.5) / scale - 0.5), None
    if ctm == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    if ctm == "half_pixel_symmetric":
        adjustment = _cast(F64, ax.out_dim) / ow
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
            x = _f(float(d * wm1 / 2)) + start
        else:
            x = y * float(d) * float(wm1) / (owv - 1) + start
        return x, tir.any(x < _f(0.0), x > _f(float(wm1)))
    rdt = spec.roi_dtype
    if spec.roi is not None:
        r0, r1 = roi
        e0, d = _f(float(r0), rdt), _f(float(r1 - r0), rdt)
    else:
        e0, e1 = roi
        d = e1 - e0
    wm1 = w - _i(1)
    wm1_r = _cast(rdt, wm1)
    start = _cast(F64, e0 * wm1_r)
    x = tir.Select(
        ow == one,
        _cast(F64, d * wm1_r / _f(2.0, rdt)) + start,
        y * _cast(F64, d) * _cast(F64, wm1) / (ow - one) + start,
    )
    return x, tir.any(x < _f(0.0), x > _cast(F64, wm1))


def _left_ratio(x: PrimExpr) -> tuple[PrimExpr, PrimExpr]:
    """The reference's neighbour base: (floor(x), x - floor(x)), or (x - 1, 1) at integers."""
    fl = tir.floor(x)
    r = x - fl
    left = _cast(I64, fl)
    at_int = r == _f(0.0)
    return tir.Select(at_int, left - _i(1), left), tir.Select(at_int, _f(1.0), r)


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
        return _f(float(np.float32(v)), F32)

    ca, ca2, ca3 = c32(a32), c32(a32 + np.float32(2)), c32(a32 + np.float32(3))
    ca5, ca8, ca4 = c32(np.float32(5) * a32), c32(np.float32(8) * a32), c32(np.float32(4) * a32)
    one32 = _f(1.0, F32)

    def f32(e: PrimExpr) -> PrimExpr:
        return _cast(F32, e)

    # float32 operations done in float64 and rounded (exact: 53 >= 2*24 + 2 bits), so LLVM
    # cannot contract them into FMAs, which would round differently from numpy.
    def mul(x: PrimExpr, y: PrimExpr) -> PrimExpr:
        return f32(_cast(F64, x) * _cast(F64, y))

    def add(x: PrimExpr, y: PrimExpr) -> PrimExpr:
        return f32(_cast(F64, x) + _cast(F64, y))

    def sub(x: PrimExpr, y: PrimExpr) -> PrimExpr:
        return f32(_cast(F64, x) - _cast(F64, y))

    def outer(t: PrimExpr) -> PrimExpr:  # ((A*t - 5A)*t + 8A)*t - 4A
        return _cast(F64, sub(mul(add(mul(sub(mul(ca, t), ca5), t), ca8), t), ca4))

    def inner(t: PrimExpr) -> PrimExpr:  # ((A+2)*t - (A+3))*t*t + 1
        return _cast(F64, add(mul(mul(sub(mul(ca2, t), ca3), t), t), one32))

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
            v = 1.0 - tir.abs((_f(start + k) - r) * s)
            return tir.Select(v < _f(0.0), _f(0.0), tir.Select(v > _f(1.0), _f(1.0), v))

        return 2 - 2 * start, linear_aa, None
    i_start = int(np.floor(-2 / s) + 1)

    def dist(r: PrimExpr, k: int) -> PrimExpr:
        return tir.abs(s * (_f(i_start + k) - r))

    def cubic_aa(r: PrimExpr, k: int) -> PrimExpr:
        x = dist(r, k)
        x2 = x * x
        x3 = x * x2
        near = add(sub(mul(ca2, f32(x3)), mul(ca3, f32(x2))), one32)
        far = sub(add(sub(mul(ca, f32(x3)), mul(ca5, f32(x2))), mul(ca8, f32(x))), ca4)
        return tir.Select(
            x <= _f(1.0), _cast(F64, near), tir.Select(x < _f(2.0), _cast(F64, far), _f(0.0))
        )

    return 2 - 2 * i_start, cubic_aa, lambda r, k: dist(r, k) >= _f(2.0)


def _seq_sum(terms: Sequence[PrimExpr]) -> PrimExpr:
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc


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
                inside = tir.all(starts(o) + _i(k) >= _i(0), starts(o) + _i(k) < w)
                return tir.Select(inside, c(o), _f(0.0))

            return f

        def total_of(cs: list[te.Tensor]) -> Callable[[PrimExpr], PrimExpr]:
            return lambda o: _seq_sum([c(o) for c in cs])

        starts = col(lambda o: _left_ratio(coord(o)[0])[0] - _i(half - 1), "resize_start")
        raw = [col(raw_k(k), "resize_c") for k in range(n)]
        if aa and outside_k is None:  # np.array(coeffs) / sum(coeffs)
            total = col(total_of(raw), "aa_sum")
            raw = [col(ratio_of(c, total), "aa_w") for c in raw]
        elif aa:
            # float32 coefficients summed in float32; the division is float32 unless a tap
            # outside the kernel (a Python 0.0) made numpy's coefficient array float64.
            assert outside_k is not None
            total = col(lambda o: _seq_sum([_cast(F32, c(o)) for c in raw]), "aa_sum32")
            any_far = col(
                lambda o: tir.any(
                    *[outside_k(_left_ratio(coord(o)[0])[1], k) for k in range(n)], False
                ),
                "aa_far",
            )

            def cubic_norm(c: te.Tensor) -> Callable[[PrimExpr], PrimExpr]:
                return lambda o: tir.Select(
                    any_far(o),
                    c(o) / _cast(F64, total(o)),
                    _cast(F64, _cast(F32, c(o)) / total(o)),
                )

            raw = [col(cubic_norm(c), "aa_w") for c in raw]
        if exclude:  # zero the taps outside the input, renormalize (a zero sum stays zero)
            raw = [col(masked(c, k), "ex_c") for k, c in enumerate(raw)]
            total = col(total_of(raw), "ex_sum")
            norm = col(lambda o: tir.Select(total(o) == _f(0.0), _f(1.0), total(o)), "ex_norm")
            raw = [col(ratio_of(c, norm), "ex_w") for c in raw]
        ident = spec.identity(ax, t)
        shape = list(data.shape)
        shape[axis] = o_dim

        def body(*idx: PrimExpr) -> PrimExpr:
            o = idx[axis]
            terms = []
            for k, c in enumerate(raw):
                src = list(idx)
                src[axis] = _clamp(starts(o) + _i(k), _i(0), w - _i(1))
                terms.append(_cast(cd, data(*src)) * _cast(cd, c(o)))
            acc = _seq_sum(terms)
            flag = coord(o)[1]
            if flag is not None:
                acc = tir.Select(flag, _f(ev, cd), acc)
            if not isinstance(ident, bool):
                src = list(idx)
                src[axis] = _clamp(o, _i(0), w - _i(1))
                acc = tir.Select(ident, _cast(cd, data(*src)), acc)
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
            hi = r > _f(0.5)
        elif rule == "round_prefer_ceil":
            hi = r >= _f(0.5)
        else:
            hi = tir.const(rule == "ceil", "bool")
        return tir.Select(tir.any(r == _f(1.0), hi), _i(1), _i(0))

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
                valid = tir.all(j >= _i(0), j < w)
                ident = spec.identity(ax, t)
                if not isinstance(ident, bool):
                    j = tir.Select(ident, o, j)
                    valid = tir.any(ident, valid)
                    flag = None if flag is None else tir.all(tir.Not(ident), flag)
                src[ax.axis] = _clamp(j, _i(0), w - _i(1))
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
    cd = _compute_dtype(dtype) if dtype.is_float else str(dtype)
    out_shape = _out_dims(ctx, "the grid's dims must be known")

    def fn(data: te.Tensor, grid: te.Tensor) -> te.Tensor:
        dims = list(data.shape[2:])
        pos_shape = [out_shape[0], *out_shape[2:]]  # (N, *out): per output position

        def table(f: Callable[..., PrimExpr], name: str) -> te.Tensor:
            return te.compute(pos_shape, f, name=name)

        def coord_of(i: int) -> Callable[..., PrimExpr]:
            def f(n: PrimExpr, *o: PrimExpr) -> PrimExpr:
                v = _cast(g_cd, grid(n, *o, _i(nd - 1 - i)))
                length = _cast(g_cd, dims[i])
                one = _f(1.0, g_cd)
                if align:
                    x = (v + one) / _f(2.0, g_cd) * (length - one)
                else:
                    x = ((v + one) * length - one) / _f(2.0, g_cd)
                x = _cast(F32, x)  # the reference keeps denormalized coordinates in float32
                if mode == "nearest":
                    x = tir.nearbyint(x)
                lo = 0.0 if align else -0.5
                x64 = _cast(F64, x)
                hi_e = _cast(F64, dims[i]) - (1.0 if align else 0.5)
                out = tir.any(x64 < _f(lo), x64 > hi_e)
                if padding == "border":
                    dmax = _cast(F32, dims[i] - _i(1))
                    zero = _f(0.0, F32)
                    clamped = tir.Select(x < zero, zero, tir.Select(x > dmax, dmax, x))
                    x = tir.Select(out, clamped, x)
                elif padding == "reflection":
                    x = tir.Select(out, _cast(F32, _reflect_dyn(x64, lo, hi_e)), x)
                return x

            return f

        def fetch(i: int, j: PrimExpr) -> tuple[PrimExpr, PrimExpr | None]:
            """(index to read, validity) of integer position j along spatial dim i."""
            d = dims[i]
            if padding == "zeros":
                return _clamp(j, _i(0), d - _i(1)), tir.all(j >= _i(0), j < d)
            if padding == "border":
                return _clamp(j, _i(0), d - _i(1)), None
            lo = 0.0 if align else -0.5
            hi_e = _cast(F64, d) - (1.0 if align else 0.5)
            k = _cast(I64, tir.trunc(_reflect_dyn(_cast(F64, j), lo, hi_e)))
            return _clamp(k, _i(0), d - _i(1)), None

        coords = [table(coord_of(i), f"gs_x{i}") for i in range(nd)]
        if mode == "nearest":
            offsets = [0]
        else:
            offsets = [0, 1] if mode == "linear" else [-1, 0, 1, 2]

        def tap(i: int, off: int, part: str) -> Callable[..., PrimExpr]:
            def f(n: PrimExpr, *o: PrimExpr) -> PrimExpr:
                x = coords[i](n, *o)
                base = _cast(I64, tir.trunc(x) if mode == "nearest" else tir.floor(x))
                j, valid = fetch(i, base + _i(off))
                if part == "index":
                    return j
                if part == "valid":
                    return tir.const(True, "bool") if valid is None else valid
                t = tir.abs(x - tir.floor(x))
                return _cast(cd, _gs_coeffs(mode, t)[offsets.index(off)])

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
                    return v if coef is None else _cast(cd, v)
                terms = []
                for k in range(len(offsets)):
                    more = ok if valid is None else [*ok, valid[i][k](n, *o)]
                    inner = nest(i + 1, [*idx, index[i][k](n, *o)], more)
                    terms.append(inner if coef is None else coef[i][k](n, *o) * inner)
                return _seq_sum(terms)

            v = nest(0, [], [])
            return v if coef is None else _cast(str(dtype), v)

        return te.compute(out_shape, body, name="grid_sample")

    return ctx.bb.emit_te(fn, ctx.arg(0), ctx.arg(1), primfunc_name_hint="grid_sample")


def _reflect_dyn(fx: PrimExpr, lo: float, hi: PrimExpr) -> PrimExpr:
    """_gs_reflect with a (possibly symbolic) upper border, in float64."""
    lo_e = _f(lo)
    rng = hi - lo_e

    def fold(dx: PrimExpr, first: PrimExpr, second: PrimExpr, sign: float) -> PrimExpr:
        k = _cast(I64, tir.trunc(dx / rng))
        r = dx - _cast(F64, k) * rng
        even = tir.floormod(k, _i(2)) == _i(0)
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
    if ctx.const(1) is not None or _symbolic_input(ctx, 1):
        out_shape = _out_dims(ctx, "size (input 1) must be a constant or static-shape computation")
        sizes: list[Any] = list(out.shape[1:-1])
    else:
        # size is a run-time tensor: bind its spatial values to fresh vars.
        shape = ctx.emit(R.tensor_to_shape(ctx.arg(1)))
        tag = re.sub(r"[^A-Za-z0-9_]", "_", ctx.node.name or "affine_grid")
        fresh = [tir.Var(f"{tag}_size{k}", I64) for k in range(nd + 2)]
        ctx.bb.match_cast(shape, relax.ShapeType(fresh))
        sizes = fresh[2:]
        out_shape = [ctx.dim(tt.shape[0]), *sizes, _i(nd)]

    def base(d: Any, p: PrimExpr) -> PrimExpr:
        """np.arange's value at p: start + p * ((start + step) - start), in float64."""
        if isinstance(d, int):
            step = 2.0 / (d - 1) if align else 2.0 / d
            start = -1.0 if align else -1 + step / 2
            return _f(start) + _cast(F64, p) * _f((start + step) - start)
        df = _cast(F64, d if isinstance(d, tir.Var) else ctx.dim(d))
        step = _f(2.0) / (df - 1.0) if align else _f(2.0) / df
        start = _f(-1.0) if align else _f(-1.0) + step / 2.0
        return start + _cast(F64, p) * ((start + step) - start)

    def fn(theta: te.Tensor) -> te.Tensor:
        def body(n: PrimExpr, *rest: PrimExpr) -> PrimExpr:
            pos, j = rest[:-1], rest[-1]
            # Homogeneous base point [x, y, (z,) 1]: x runs along the last spatial dim.
            point = [base(sizes[nd - 1 - k], pos[nd - 1 - k]) for k in range(nd)] + [_f(1.0)]
            terms = [_cast(F64, theta(n, j, _i(k))) * point[k] for k in range(nd + 1)]
            return _cast(dt, _seq_sum(terms))

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
    out_shape = _out_dims(ctx, "the number of rois must be known")

    def fn(data: te.Tensor, rois: te.Tensor, batch: te.Tensor) -> te.Tensor:
        height, width = data.shape[2], data.shape[3]
        hf, wf = _cast(cd, height), _cast(cd, width)
        off = _f(0.5 if half_pixel else 0.0, cd)

        def geometry(r: PrimExpr) -> tuple[PrimExpr, ...]:
            sw, sh, ew, eh = (_cast(cd, rois(r, _i(k))) * _f(scale, cd) - off for k in range(4))
            rw, rh = ew - sw, eh - sh
            if not half_pixel:  # malformed ROIs become 1x1
                rw = tir.max(rw, _f(1.0, cd))
                rh = tir.max(rh, _f(1.0, cd))
            bin_h, bin_w = rh / _f(oh, cd), rw / _f(ow, cd)
            if ratio > 0:
                gh = gw = _i(ratio)
            else:
                gh = _cast(I64, tir.ceil(rh / _f(oh, cd)))
                gw = _cast(I64, tir.ceil(rw / _f(ow, cd)))
            return sh, sw, bin_h, bin_w, gh, gw

        def sample(r: PrimExpr, c: PrimExpr, y: PrimExpr, x: PrimExpr) -> PrimExpr:
            outside = tir.any(y < _f(-1.0, cd), y > hf, x < _f(-1.0, cd), x > wf)
            b = batch(r)
            zero = _f(0.0, cd)
            y, x = tir.max(y, zero), tir.max(x, zero)
            corners = []
            lows = []
            for v, size in ((y, height), (x, width)):
                low = _cast(I64, tir.floor(v))
                edge = low >= size - _i(1)
                lo_i = tir.Select(edge, size - _i(1), low)
                hi_i = tir.Select(edge, size - _i(1), low + _i(1))
                frac = tir.Select(edge, zero, v - _cast(cd, low))
                lows.append((lo_i, hi_i, frac))
            (y0, y1, ly), (x0, x1, lx) = lows
            hy, hx = 1.0 - ly, 1.0 - lx
            for w, yy, xx in ((hy * hx, y0, x0), (hy * lx, y0, x1), (ly * hx, y1, x0),
                              (ly * lx, y1, x1)):  # fmt: skip
                corners.append(tir.Select(outside, zero, w) * _cast(cd, data(b, c, yy, xx)))
            if mode == "avg":
                return _seq_sum(corners)
            m = corners[0]
            for v in corners[1:]:
                m = tir.max(m, v)
            return m

        def pooled(r: PrimExpr, c: PrimExpr, ph: PrimExpr, pw: PrimExpr) -> PrimExpr:
            sh, sw, bin_h, bin_w, gh, gw = geometry(r)
            iy = te.reduce_axis((_i(0), gh), name="iy")
            ix = te.reduce_axis((_i(0), gw), name="ix")
            y = sh + _cast(cd, ph) * bin_h + (_cast(cd, iy.var) + 0.5) * bin_h / _cast(cd, gh)
            x = sw + _cast(cd, pw) * bin_w + (_cast(cd, ix.var) + 0.5) * bin_w / _cast(cd, gw)
            v = sample(r, c, y, x)
            return te.sum(v, axis=[iy, ix]) if mode == "avg" else te.max(v, axis=[iy, ix])

        acc = te.compute(out_shape, pooled, name="roi_pool")

        def finish(r: PrimExpr, c: PrimExpr, ph: PrimExpr, pw: PrimExpr) -> PrimExpr:
            *_, gh, gw = geometry(r)
            count = gh * gw
            if mode == "avg":
                v = acc(r, c, ph, pw) / _cast(cd, tir.max(count, _i(1)))
            else:
                v = tir.Select(count > _i(0), acc(r, c, ph, pw), _f(0.0, cd))
            return _cast(dt, v)

        return te.compute(out_shape, finish, name="roi_align")

    return ctx.bb.emit_te(fn, ctx.arg(0), ctx.arg(1), ctx.arg(2), primfunc_name_hint="roi_align")
