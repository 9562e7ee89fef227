"""The padding copy of the by-width conv kernel (ops/conv.py), written as TIR by hand.

A conv computed by output width (depthwise convs, grouped ones) reads its input from a
padded copy: zeros around the image, columns wide enough for whole column tiles, and, with a
horizontal stride s > 1, the columns split into s phases (`xp[n, c, h, p, q] = padded[n, c,
h, q * s + p]`) so that every vector of consecutive output columns reads consecutive
elements. As a TE stage of the conv kernel that copy had a condition
per element (inside the image or not): TVM scalarizes a vectorized `if_then_else` whose
condition varies along the vector, and where it did not vectorize the copy, LLVM did, with
masked gathers (`vgatherdps`, one per 16 elements) for the stride-2 phases. The copy then
cost more than the convolution: MobileNetV2's 3x3 / 2 depthwise conv over 96 x 112 x 112
took 0.55-0.83 ms on two Zen 4 threads for 2.7 M multiply-adds (0.2 ms with this copy).

Here the conditions are decided when the kernel is written: per row (inside the image or a
zero row) and, per phase, the range of columns that read the image is known, so the copy is
a zero prefix, whole vectors of the image, a scalar remainder and a zero suffix. With stride
2, a vector of a phase's columns is two contiguous vector loads and one shuffle of their
even elements (AVX-512: `vmovups` + `vpermt2ps`); the second load starts one element before
the end of the first, so neither reads past the last column the phase needs. Other strides
copy the image's columns with scalar loads (no condition either). Rows run in parallel;
convs of one geometry share one kernel. Exact: the same elements as the TE copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm import relax, tirx

if TYPE_CHECKING:
    from ecograph.backends.tvm.context import LowerContext

PAD_RULE = "pad-phases"  # the kernel's schedule name (`ecograph profile`, build kernels)
PARALLEL_ELEMENTS = 1 << 14  # copies from this many elements run their rows in parallel


def phase_range(phase: int, stride: int, left: int, width: int, columns: int) -> tuple[int, int]:
    """[first, end) of the phase's columns q that read the image: 0 <= q * stride + phase -
    left < width, within the copy's `columns`."""
    first = max(0, -(-(left - phase) // stride))
    end = min(columns, (width - 1 + left - phase) // stride + 1)
    return first, max(first, end)


def pad_phases(
    ctx: LowerContext,
    x: relax.Expr,
    channels: int,
    size: tuple[int, int],
    pads: tuple[int, int, int],
    stride: int,
    columns: int,
) -> relax.Expr:
    """The padded copy of the [N, C, H, W] `x` in phases, [N, C, Hp, stride, columns]: one call
    of `pad_phases_kernel`, the kernel added once per geometry (`LoweringState.shared`) and
    never fused with its producer (its loops are written by hand)."""
    from ecograph.backends.tvm.context import OPAQUE_PATTERN
    from ecograph.backends.tvm.schedules.matmul import lanes_for

    key = ("pad phases kernel", channels, size, pads, stride, columns)
    gv = ctx.state.shared.get(key)
    if gv is None:
        kernel = pad_phases_kernel(channels, size, pads, stride, columns, lanes_for(ctx.target))
        gv = ctx.bb.add_func(kernel, "pad_phases")
        ctx.bb.update_func(gv, ctx.bb.get()[gv].with_attr("op_pattern", OPAQUE_PATTERN))
        ctx.state.shared[key] = gv
    rows = size[0] + pads[0] + pads[1]
    shape = [x.ty.shape.values[0], channels, rows, stride, columns]
    return ctx.emit(relax.call_tir(gv, [x], relax.TensorType(shape, "float32")))


def pad_phases_kernel(
    channels: int,
    size: tuple[int, int],
    pads: tuple[int, int, int],
    stride: int,
    columns: int,
    lanes: int,
) -> tirx.PrimFunc:
    """The copy as a hand-scheduled PrimFunc `(x [N, C, H, W], xp [N, C, Hp, stride, columns])`
    (N symbolic; float32): Hp = top + H + bottom rows (`pads` = top, bottom, left), each phase
    p's column q the image's column q * stride + p - left, zero outside (module doc)."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T  # noqa: N812  (TVM's own spelling)

    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
    zero = tirx.const(0.0, "float32")
    height, width = size
    top, bottom, left = pads
    rows = top + height + bottom
    evens = [tirx.const(2 * i, "int32") for i in range(lanes // 2)]
    odds = [tirx.const(lanes + 2 * i + 1, "int32") for i in range(lanes - lanes // 2)]

    with IRBuilder() as ib, T.prim_func(s_tir=True):
        T.func_name("pad_phases")
        T.func_attr(
            {"tirx.noalias": True, "tirx.is_scheduled": True, "ecograph.schedule": PAD_RULE}
        )
        n = tirx.Var("n", "int64")
        x = T.arg("x", T.Buffer((n, i64(channels), i64(height), i64(width)), "float32"))
        shape = (n, i64(channels), i64(rows), i64(stride), i64(columns))
        xp = T.arg("xp", T.Buffer(shape, "float32"))

        def fill(at: tuple[Any, ...], start: int, end: int) -> None:
            """Zeros in columns [start, end) of the row `at` (n, c, h, p)."""
            whole = (end - start) // lanes
            if whole:
                with T.serial(0, i64(whole)) as v, T.vectorized(0, i64(lanes)) as ln:
                    T.buffer_store(xp, zero, [*at, i64(start) + v * i64(lanes) + ln])
            if start + whole * lanes < end:
                with T.serial(i64(start + whole * lanes), i64(end)) as q:
                    T.buffer_store(xp, zero, [*at, q])

        def copy(b: Any, c: Any, h: Any, p: int) -> None:
            at = (b, c, h, i64(p))
            first, end = phase_range(p, stride, left, width, columns)
            source = lambda q: x[b, c, h - i64(top), q * i64(stride) + i64(p - left)]  # noqa: E731
            fill(at, 0, first)
            whole = (end - first) // lanes if stride <= 2 else 0
            if whole:
                with T.serial(0, i64(whole)) as v:
                    q = i64(first) + v * i64(lanes)
                    start = q * i64(stride) + i64(p - left)
                    row = (b, c, h - i64(top))
                    if stride == 1:
                        value = x.vload([*row, start], f"float32x{lanes}")
                    else:  # the even elements of 2 * lanes - 1 from `start`
                        low = x.vload([*row, start], f"float32x{lanes}")
                        high = x.vload([*row, start + i64(lanes - 1)], f"float32x{lanes}")
                        value = tirx.Shuffle([low, high], evens + odds)
                    T.buffer_store(xp, value, [*at, tirx.Ramp(q, i64(1), lanes)])
            if first + whole * lanes < end:
                with T.serial(i64(first + whole * lanes), i64(end)) as q:
                    T.buffer_store(xp, source(q), [*at, q])
            fill(at, end, columns)

        def row(r: Any) -> None:
            b, c, h = r // i64(channels * rows), r // i64(rows) % i64(channels), r % i64(rows)
            with T.If(tirx.all(h >= i64(top), h < i64(top + height))):
                with T.Then():
                    for p in range(stride):
                        copy(b, c, h, p)
                with T.Else():
                    for p in range(stride):
                        fill((b, c, h, i64(p)), 0, columns)

        total = n * i64(channels * rows)
        with T.sblock("root"), T.If(total * i64(stride * columns) >= i64(PARALLEL_ELEMENTS)):
            with T.Then(), T.parallel(0, total) as r:
                row(r)
            with T.Else(), T.serial(0, total) as r:
                row(r)
    return ib.get().without_attr("global_symbol")
