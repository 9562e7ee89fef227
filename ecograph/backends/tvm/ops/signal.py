"""Lowerings of the spectral ops: DFT, STFT and MelWeightMatrix.

A DFT of static length is a matmul against constant cosine/sine matrices built here from the
static sizes and attributes (never from graph input values): the transformed axis is moved
last, the real and imaginary parts (`x[..., 0]`, `x[..., 1]`) are multiplied by the matrices,
and the parts are stacked back into the trailing `[..., 2]` layout. Padding and truncation to
`dft_length` are zero rows of the matrices; `onesided` keeps the first `n // 2 + 1` columns;
the one-sided inverse (irfft, real output `[..., 1]`) uses Hermitian weights like numpy's
`irfft`. float32 inputs compute in float32, float64 in float64, 16-bit floats in float32.

DFT's `dft_length` must be known before run time. Its `axis` may be a graph input when every
axis it could name gives the output shape the IR declares: each such axis is transformed and
the run-time value picks one (an axis outside that set gives NaN, never another axis' result).

STFT frames the signal with a TE compute (frame `f` is `signal[:, f*step : f*step + W]`, zero
past the end), multiplies by the window, and applies the same DFT matrices along the frame
axis; `frame_step` and `frame_length` must be constants (they fix the output shape).

MelWeightMatrix's output shape depends on its input values: it lowers only when all five
inputs are constants, by running the reference kernel once at lowering time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax, te
from tvm import tirx as tir

from ecograph.backends.tvm.context import LowerContext, R, lowers
from ecograph.ir import symbolic
from ecograph.ir.interpreter import run_node
from ecograph.ir.symbolic import Dim


def _compute_dtype(dtype: str) -> str:
    return "float64" if dtype == "float64" else "float32"


def _unit_circle(k: np.ndarray, t: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of 2*pi*k*t/n, with the product reduced mod n first (exact angles) and the
    values at multiples of a quarter turn exact."""
    r = (k.astype(np.int64) * t.astype(np.int64)) % n
    ang = 2.0 * np.pi * r / n
    cos, sin = np.cos(ang), np.sin(ang)
    quarter = (4 * r) % n == 0
    q = (4 * r) // n
    cos = np.where(quarter, np.choose(q % 4, [1.0, 0.0, -1.0, 0.0]), cos)
    sin = np.where(quarter, np.choose(q % 4, [0.0, 1.0, 0.0, -1.0]), sin)
    return cos, sin


def _forward_matrices(n_in: int, n_fft: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """[n_in, n_out] cos/sin matrices of a length-`n_fft` DFT (rows past `n_fft` are zero)."""
    t = np.arange(n_in)[:, None]
    k = np.arange(n_out)[None, :]
    cos, sin = _unit_circle(t, k, n_fft)
    keep = (t < n_fft).astype(np.float64)
    return cos * keep, sin * keep


def _dft_last(
    ctx: LowerContext,
    re: relax.Expr,
    im: relax.Expr | None,
    n_in: int,
    n_fft: int,
    *,
    inverse: bool,
    onesided: bool,
    cdt: str,
) -> list[relax.Expr]:
    """The DFT along the last axis of `re` (+ i `im`): [real, imag], or [real] for irfft."""

    def mat(a: np.ndarray) -> relax.Expr:
        return relax.const(a.astype(cdt), cdt)

    if inverse and onesided:
        # numpy's irfft: bins k < n//2 + 1 are used; the imaginary parts of bin 0 and (even n)
        # bin n/2 are ignored; the other bins count twice (their conjugates).
        half = n_fft // 2 + 1
        k = np.arange(n_in)[:, None]
        t = np.arange(n_fft)[None, :]
        cos, sin = _unit_circle(k, t, n_fft)
        w = np.where((k == 0) | ((n_fft % 2 == 0) & (k == n_fft // 2)), 1.0, 2.0)
        w = np.where(k < half, w, 0.0) / n_fft
        out = ctx.emit(R.matmul(re, mat(w * cos)))
        if im is not None:
            out = ctx.emit(R.subtract(out, R.matmul(im, mat(w * sin))))
        return [out]
    n_out = n_fft // 2 + 1 if onesided else n_fft
    cos, sin = _forward_matrices(n_in, n_fft, n_out)
    if inverse:
        cos, sin = cos / n_fft, -sin / n_fft
    # (a + ib)(cos - i sin) = (a cos + b sin) + i (b cos - a sin); inverse flips sin's sign.
    real = ctx.emit(R.matmul(re, mat(cos)))
    imag = ctx.emit(R.negative(R.matmul(re, mat(sin))))
    if im is not None:
        real = ctx.emit(R.add(real, R.matmul(im, mat(sin))))
        imag = ctx.emit(R.add(imag, R.matmul(im, mat(cos))))
    return [real, imag]


def _split_complex(
    ctx: LowerContext, x: relax.Expr, rank: int, channels: int
) -> tuple[relax.Expr, relax.Expr | None]:
    """x[..., 0] and (for a complex input) x[..., 1], each of rank `rank - 1`."""

    def part(i: int) -> relax.Expr:
        sl = R.strided_slice(x, [rank - 1], [i], [i + 1], assume_inbound=True)
        return ctx.emit(R.squeeze(sl, [rank - 1]))

    return part(0), part(1) if channels == 2 else None


def _join_complex(ctx: LowerContext, parts: list[relax.Expr], dtype: str) -> relax.Expr:
    parts = [p if dtype in ("float32", "float64") else R.astype(p, dtype) for p in parts]
    return R.stack(parts, axis=-1)


def _dft_shape(
    shape: list[Dim], axis: int, n_fft: int, *, inverse: bool, onesided: bool
) -> list[Dim]:
    out = list(shape)
    out[axis] = n_fft // 2 + 1 if onesided and not inverse else n_fft
    out[-1] = 1 if inverse and onesided else 2
    return out


def _dft_on_axis(ctx: LowerContext, axis: int, dft_length: int | None) -> relax.Expr:
    xt = ctx.in_type(0)
    rank = xt.rank
    dtype = str(xt.dtype)
    cdt = _compute_dtype(dtype)
    inverse, onesided = bool(ctx.attrs["inverse"]), bool(ctx.attrs["onesided"])
    n_in = xt.shape[axis]
    if not isinstance(n_in, int):
        ctx.fail(f"the transformed axis {axis} must have a static size (it has {n_in!r})")
    n_fft = dft_length
    if n_fft is None:
        n_fft = 2 * (n_in - 1) if inverse and onesided else n_in
    x = ctx.arg(0) if cdt == dtype else R.astype(ctx.arg(0), cdt)
    re, im = _split_complex(ctx, x, rank, int(xt.shape[-1]))
    inner = rank - 1  # rank of the parts
    perm = [i for i in range(inner) if i != axis] + [axis]
    moved = perm != list(range(inner))
    if moved:
        re = ctx.emit(R.permute_dims(re, perm))
        im = None if im is None else ctx.emit(R.permute_dims(im, perm))
    parts = _dft_last(ctx, re, im, n_in, n_fft, inverse=inverse, onesided=onesided, cdt=cdt)
    if moved:
        back = [perm.index(i) for i in range(inner)]
        parts = [ctx.emit(R.permute_dims(p, back)) for p in parts]
    return _join_complex(ctx, parts, dtype)


@lowers("DFT")
def _dft(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    rank = xt.rank
    channels = xt.shape[-1]
    if channels not in (1, 2):
        ctx.fail(f"the last dim of the input must be 1 (real) or 2 (complex), not {channels!r}")
    lengths = ctx.ints(1, "dft_length")
    dft_length = None if lengths is None else lengths[0]
    if not ctx.has(2):
        return _dft_on_axis(ctx, rank - 2, dft_length)
    axis_value = ctx.const(2)
    if axis_value is not None:
        axis = int(np.asarray(axis_value).reshape(-1)[0]) % rank
        if axis == rank - 1:
            ctx.fail("axis names the last (real/imaginary) dim; it must be in [-r, -2] or [0, r-2]")
        return _dft_on_axis(ctx, axis, dft_length)
    # The axis is a run-time value: transform every axis that yields the declared output shape
    # and select by value.
    inverse, onesided = bool(ctx.attrs["inverse"]), bool(ctx.attrs["onesided"])
    want = list(ctx.out_type().shape)
    candidates = []
    for a in range(rank - 1):
        n_in = xt.shape[a]
        if not isinstance(n_in, int):
            continue
        n_fft = dft_length or (2 * (n_in - 1) if inverse and onesided else n_in)
        got = _dft_shape(list(xt.shape), a, n_fft, inverse=inverse, onesided=onesided)
        if got == want:
            candidates.append(a)
    if not candidates:
        ctx.fail(
            "axis (input 2) is a run-time value and no axis gives the output shape "
            f"{want} the graph declares; make axis a constant (e.g. fold it with a pass)"
        )
    ad = str(ctx.in_type(2).dtype)
    a_in = ctx.emit(R.reshape(ctx.arg(2), []))
    a_norm = ctx.emit(
        R.where(R.less(a_in, ctx.scalar(0, ad)), R.add(a_in, ctx.scalar(rank, ad)), a_in)
    )
    dtype = str(xt.dtype)
    out: relax.Expr = ctx.scalar(np.nan, dtype)  # broadcast by the first where
    for a in candidates:
        y = ctx.emit(_dft_on_axis(ctx, a, dft_length))
        out = ctx.emit(R.where(R.equal(a_norm, ctx.scalar(a, ad)), y, out))
    return out


@lowers("STFT")
def _stft(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    if xt.rank != 3 or xt.shape[-1] not in (1, 2):
        ctx.fail(f"signal must be [batch, length, 1 or 2], not {list(xt.shape)}")
    dtype = str(xt.dtype)
    cdt = _compute_dtype(dtype)
    _, length, channels = xt.shape
    window_size: Dim | None = ctx.in_type(2).shape[0] if ctx.has(2) else None
    if window_size is not None and not isinstance(window_size, int):
        ctx.fail(f"the window (input 2) needs a static length, not {window_size!r}")
    if ctx.has(3) and ctx.const(3) is None:
        ctx.fail(
            "frame_length (input 3) is a run-time value; it sets the DFT size and the output "
            "shape, so it must be a constant (an initializer, or folded by a pass)"
        )
    lengths = ctx.ints(3, "frame_length")
    if lengths is not None:
        frame_length: Dim = lengths[0]
    else:
        frame_length = window_size if window_size is not None else length
    if not isinstance(frame_length, int):
        ctx.fail(
            "without window or frame_length, the frame is the whole signal: "
            "the signal length must be static"
        )
    size = window_size if window_size is not None else frame_length
    if frame_length <= 0:
        ctx.fail(f"frame_length must be positive, not {frame_length}")
    step_value = ctx.const(1)
    if step_value is not None:
        step: Any = int(np.asarray(step_value).reshape(-1)[0])
        if step <= 0:
            ctx.fail(f"frame_step must be positive, not {step}")
        n_frames = symbolic.add(symbolic.floordiv(symbolic.sub(length, frame_length), step), 1)
        if isinstance(n_frames, int) and n_frames <= 0:
            ctx.fail(f"the signal ({length}) is shorter than frame_length ({frame_length})")
        frames_dim = ctx.dim(n_frames)
    else:
        # A run-time step only changes the number of frames: bind it as a shape variable.
        step = tir.Var(f"{ctx.node.name}_frame_step", "int64")
        as_shape = ctx.emit(R.tensor_to_shape(R.reshape(R.astype(ctx.arg(1), "int64"), [1])))
        ctx.bb.match_cast(as_shape, relax.ShapeType([step]))
        frames_dim = tir.floordiv(ctx.dim(length) - frame_length, step) + 1
    x = ctx.arg(0) if cdt == dtype else R.astype(ctx.arg(0), cdt)

    def framing(sig: te.Tensor) -> te.Tensor:
        sig_len = sig.shape[1]

        def at(b: tir.Var, f: tir.Var, t: tir.Var, c: tir.Var) -> tir.PrimExpr:
            pos = f * step + t
            return tir.if_then_else(pos < sig_len, sig[b, pos, c], tir.const(0, cdt))

        return te.compute((sig.shape[0], frames_dim, size, sig.shape[2]), at, name="frames")

    frames = ctx.bb.emit_te(framing, x, primfunc_name_hint="stft_frames")
    if ctx.has(2):
        w = ctx.arg(2)
        if str(ctx.in_type(2).dtype) != cdt:
            w = R.astype(w, cdt)
        frames = ctx.emit(R.multiply(frames, R.reshape(w, [size, 1])))
    re, im = _split_complex(ctx, frames, 4, int(channels))
    parts = _dft_last(
        ctx,
        re,
        im,
        size,
        frame_length,
        inverse=False,
        onesided=bool(ctx.attrs["onesided"]),
        cdt=cdt,
    )
    return _join_complex(ctx, parts, dtype)


@lowers("MelWeightMatrix")
def _mel_weight_matrix(ctx: LowerContext) -> relax.Expr:
    names = ("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz")
    values = [ctx.const(i) for i in range(5)]
    missing = [f"{n} (input {i})" for i, n in enumerate(names) if values[i] is None]
    if missing:
        ctx.fail(
            f"{', '.join(missing)} must be constants: the output shape depends on the input "
            "values; make them initializers or fold them with a constant-folding pass"
        )
    (out,) = run_node(ctx.node, values)  # type: ignore[arg-type]
    return relax.const(np.ascontiguousarray(out), str(out.dtype))


@lowers("HannWindow", "HammingWindow", "BlackmanWindow")
def _window(ctx: LowerContext) -> relax.Expr:
    size = ctx.const(0)
    if size is None:
        ctx.fail("the window size must be a constant")
    # The window depends only on its (constant) size: evaluate it once at lowering time.
    return relax.const(run_node(ctx.node, [size])[0], str(ctx.out_type().dtype))
