"""Convolution lowerings: Conv, ConvTranspose and ConvInteger (`conv_setup`, `integer_conv`
are shared with QLinearConv).

On CPU targets a float32 2-D Conv with a constant weight and static channels and image size (the
batch may be symbolic) is one TE kernel in a form schedules/conv.py tiles: by output channels, its
weight packed at compile time `[O / B, I / groups, KH, KW, B]` (`packed_conv_weights`), for
regular convs and grouped ones whose groups hold whole vectors of output channels; by output width
for depthwise and other grouped convs, regular ones with fewer than half a vector of output
channels, and on AVX-512 unit-stride 1x1 convs of few input channels over rows of whole vectors
(`prefers_width`). By width, the input is read from a padded copy in phases made by a hand-written
kernel of its own (ops/padding.py: vector loads and, for stride 2, shuffles; MobileNetV2's 3x3 / 2
depthwise over 96 x 112 x 112: 0.55-0.65 -> 0.2 ms on two Zen 4 threads); by channels, a copy
inside the kernel for kernels wider than 3 columns, else a guarded load. The bias is added in the
kernel's epilogue.

Float32 MobileNet blocks run channels-last instead, like the int8 convolutions below: a 1x1
conv of stride 1 without padding of 16+ channels beside a depthwise conv (`conv_rows`: its
input or output reaches one through at most _HOPS element-wise ops) is the product of its
NHWC input's rows and its weight packed in column panels (`emit_conv_rows`, the matmul rule:
no transposed write of each tile, which cost about as much as the products with 24-32 input
channels), and a depthwise conv of 16+ channels beside such a 1x1 conv is the channels-last
sliding window of `emit_depthwise_nhwc`, its weight bound as taps [KH, KW, C]
(`packed_depthwise_taps`); channels_last.py removes the transposes between them. A conv run
by channels whose output such a conv reads writes it channels-last (`writes_nhwc`: its tile
is [columns, channels]; MobileNetV2's stem 0.18 -> 0.12 ms and its output's transpose, 0.06
ms, gone). A conv without such a neighbour keeps NCHW: a ResNet bottleneck's 1x1 convs as
rows put transposes around its 3x3 conv and ran 1.5x slower. A weight shared by a 1x1 conv
that could run as rows and a conv that keeps NCHW is packed once, for the NCHW kernel, and
both run there. MobileNetV2 float32 5.3 -> 4.2 ms on two Zen 4 threads (ORT 4.1;
bench/RESULTS.md 2026-12-07).

On CPU targets a 2-D ConvInteger (what int8-static makes of a Conv) or QLinearConv (ONNX's
QOperator format) with a constant 8-bit weight, one group, static channels and
image size and a constant scalar input zero point runs as an 8-bit matrix product
(`emit_conv_integer_rows`): the input unfolded into one row per output pixel (im2col, a
kernel of its own; the zero point where the padding is), times the weight packed
[K = C * KH * KW, O] at compile time for the int8 kernel (ops/matmul.py, schedules/int8.py:
VNNI, vpmaddwd, sdot...), its [pixels, O] result handed back NCHW through a transpose. From 16
input channels (CHANNELS_LAST_MIN) the input is first transposed NHWC and K runs (KH, KW, C):
each tap of a row is a vector copy of C bytes, and a 1x1 convolution of stride 1 reads the
NHWC input as its rows; an RGB stem keeps (C, KH, KW) from a padded NCHW copy. Both
transposes are `permute_dims`, which channels_last.py removes between convolutions where the
ops in between (element-wise, pooling, keepdims reductions, concatenations) can run
channels-last. ResNet-18 at 224x224 in int8-static, profile runs on two Zen 4 threads: 191 ms
-> 15 ms (NCHW rows) -> 10.4 ms (NHWC) -> 7.65 ms (loops) -> 7.1 ms (channels-last regions)
(bench/RESULTS.md 2026-12-06).

A grouped or depthwise ConvInteger / QLinearConv with a constant weight (and weight zero
point) computes in float32 where float32 holds its int32 sums exactly (at most
EXACT_PRODUCTS = 258 products per output: depthwise 3x3, 5x5, 7x7, groups of up to 28
channels at 3x3; `exact_integer_kernel`): (x - zero point) converted to float32, the weight
minus its zero point converted at compile time, the float sums cast back to int32. A
depthwise one of 16+ channels runs channels-last (`emit_depthwise_nhwc`, inside the
channels-last regions: a MobileNet block transposes nothing; with a constant input zero point
it reads the 8-bit input and converts it in its loads), the others on the float32
conv kernel above (weights packed for it). MobileNetV2 int8-static 16.1 -> 8.6 ms on two
Zen 4 threads (bench/RESULTS.md 2026-12-06).

Everything else keeps Relax's conv (TOPI's NCHW loops, unscheduled for integers): CUDA,
non-constant weights, 1-D and 3-D convs, symbolic channels or image sizes, grouped
ConvInteger / QLinearConv with more products per output, and ConvTranspose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax

from ecograph.backends.tvm.channels_last import TO_NCHW, TO_NHWC
from ecograph.backends.tvm.context import (
    NN,
    OPAQUE_PATTERN,
    LowerContext,
    R,
    lowers,
    reshape_bias,
)
from ecograph.backends.tvm.ops.matmul import (
    PackedWeight,
    RowZeroPoint,
    emit_packed_matmul,
    integer_product,
    integer_weight,
    pack_panels,
    tap_width,
    unfolds_channels_last,
    weight_constants,
)
from ecograph.backends.tvm.ops.padding import pad_phases
from ecograph.backends.tvm.schedules.conv import (
    channel_block,
    channel_tile,
    prefers_width,
    width_tile,
)
from ecograph.backends.tvm.schedules.matmul import lanes_for, register_tile
from ecograph.backends.tvm.targets import TargetSpec
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.registry import resolve_attrs

# ----------------------------------------------------------------- conv and pooling


def conv_pads(ctx: LowerContext, kernel: list[int], strides: list[int], dil: list[int]) -> list:
    from ecograph.ir.ops.convolution import explicit_pads

    spatial = ctx.in_type(0).shape[2:]
    auto_pad = ctx.attrs["auto_pad"]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and not all(isinstance(d, int) for d in spatial):
        ctx.fail("auto_pad SAME needs static spatial dims")
    static = tuple(d if isinstance(d, int) else 0 for d in spatial)
    return explicit_pads(static, kernel, strides, dil, ctx.attrs["pads"], auto_pad)


def conv_setup(ctx: LowerContext, weight: int = 1) -> tuple[Any, list[int], list[int], list]:
    """For a Conv-like node (weight at input `weight`): Relax's conv function for its rank,
    strides, dilations and explicit pads."""
    xt, wt = ctx.in_type(0), ctx.in_type(weight)
    n = xt.rank - 2
    kernel = ctx.attrs["kernel_shape"] or list(wt.shape[2:])
    strides = ctx.attrs["strides"] or [1] * n
    dil = ctx.attrs["dilations"] or [1] * n
    pads = conv_pads(ctx, kernel, strides, dil)
    fn = {1: NN.conv1d, 2: NN.conv2d, 3: NN.conv3d}.get(n)
    if fn is None:
        ctx.fail(f"{ctx.node.op_type} over {n} spatial dims is not supported")
    return fn, strides, dil, pads


@lowers("Conv")
def _conv(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    weight = ctx.node.input(1)
    if weight in ctx.state.panels:  # packed in panels: every Conv reading it runs as rows
        return emit_conv_rows(ctx)
    # (a rows candidate whose weight another Conv also reads runs NCHW: `packed_conv_weights`)
    kernel = conv_kernel(ctx.node, ctx.target)
    if kernel is not None and weight in ctx.state.taps:
        assert weight is not None  # bound as its taps: runs channels-last (depthwise_nhwc)
        taps = ctx.state.value_expr(weight)
        return emit_depthwise_nhwc(ctx, kernel, ctx.arg(0), taps, 0.0, integer=False)
    if kernel is not None and (
        not kernel.by_channels or ctx.state.conv_blocks.get(weight) == kernel.block  # type: ignore[arg-type]
    ):
        if kernel.by_channels and writes_nhwc(ctx.node, ctx.target):
            return R.permute_dims(ctx.emit(emit_conv(ctx, kernel, nhwc=True)), TO_NCHW)
        return emit_conv(ctx, kernel)
    fn, strides, dil, pads = conv_setup(ctx)
    y = fn(
        ctx.arg(0),
        ctx.arg(1),
        strides=strides,
        padding=pads,
        dilation=dil,
        groups=ctx.attrs["group"],
    )
    if ctx.has(2):
        y = R.add(y, reshape_bias(ctx, ctx.arg(2), xt.rank))
    return y


@lowers("ConvTranspose")
def _conv_transpose(ctx: LowerContext) -> relax.Expr:
    from ecograph.ir.ops.convolution import conv_transpose_pads

    xt, wt = ctx.in_type(0), ctx.in_type(1)
    n = xt.rank - 2
    kernel = list(ctx.attrs["kernel_shape"] or wt.shape[2:])
    strides = list(ctx.attrs["strides"] or [1] * n)
    dil = list(ctx.attrs["dilations"] or [1] * n)
    out_pad = list(ctx.attrs["output_padding"] or [0] * n)
    _, pads = conv_transpose_pads(
        list(xt.shape[2:]),
        kernel,
        strides,
        dil,
        out_pad,
        ctx.attrs["pads"],
        ctx.attrs["output_shape"],
        ctx.attrs["auto_pad"],
    )
    if pads is None:
        ctx.fail("ConvTranspose with output_shape needs static spatial dims")
    fn = {1: NN.conv1d_transpose, 2: NN.conv2d_transpose, 3: NN.conv3d_transpose}.get(n)
    if fn is None:
        ctx.fail(f"ConvTranspose over {n} spatial dims is not supported")
    y = fn(
        ctx.arg(0),
        ctx.arg(1),
        strides=strides,
        padding=pads,
        output_padding=out_pad,
        dilation=dil,
        groups=ctx.attrs["group"],
    )
    if ctx.has(2):
        y = R.add(y, reshape_bias(ctx, ctx.arg(2), xt.rank))
    return y


def integer_conv(ctx: LowerContext, x: int, x_zp: int, w: int, w_zp: int) -> relax.Expr:
    """The int32 convolution of (input `x` - its zero point) and (weights `w` - theirs, per
    tensor or per output channel): ConvInteger, and QLinearConv before requantization."""
    wt = ctx.in_type(w)
    fn, strides, dil, pads = conv_setup(ctx, weight=w)
    xs = R.astype(ctx.arg(x), "int32")
    ws = R.astype(ctx.arg(w), "int32")
    if ctx.has(x_zp):
        xs = R.subtract(xs, R.astype(ctx.arg(x_zp), "int32"))
    if ctx.has(w_zp):
        zp = R.astype(ctx.arg(w_zp), "int32")
        if ctx.in_type(w_zp).rank == 1 and ctx.in_type(w_zp).shape[0] != 1:
            zp = reshape_bias(ctx, zp, wt.rank, axis=0)
        ws = R.subtract(ws, zp)
    return fn(
        ctx.emit(xs),
        ctx.emit(ws),
        strides=strides,
        padding=pads,
        dilation=dil,
        groups=ctx.attrs["group"],
        out_dtype="int32",
    )


@lowers("ConvInteger")
def _conv_integer(ctx: LowerContext) -> relax.Expr:
    return conv_integer_product(ctx, x=0, x_zp=2, w=1, w_zp=3)


def conv_integer_product(ctx: LowerContext, x: int, x_zp: int, w: int, w_zp: int) -> relax.Expr:
    """The int32 convolution of `integer_conv` (inputs at those positions): the im2col product
    where the weight is bound packed (`emit_conv_integer_rows`), the float32 conv kernel where
    that is exact (grouped and depthwise convs: `exact_integer_kernel`), else Relax's conv."""
    weight = ctx.node.input(w)
    if weight is not None and weight in ctx.state.panels:
        return emit_conv_integer_rows(ctx, x, x_zp, w)
    k = exact_integer_kernel(ctx.node, x, w, ctx.target)
    zw = ctx.node.input(w_zp) if ctx.has(w_zp) else None
    if k is not None and (zw is None or zw.const_value is not None):
        return emit_exact_integer_conv(ctx, k, x, x_zp, w, w_zp)
    return integer_conv(ctx, x=x, x_zp=x_zp, w=w, w_zp=w_zp)


def emit_conv_integer_rows(ctx: LowerContext, xi: int, zi: int, wi: int) -> relax.Expr:
    """The int32 convolution of a ConvInteger or QLinearConv (input, its zero point and the
    weight at `xi`, `zi`, `wi`) whose weight is bound packed (ops/matmul.py
    `packed_integer_weights`, `conv_integer_rows`) as an 8-bit product: its input unfolded
    into rows (im2col: one row per output pixel, the C x KH x KW values it reads in the
    order of `conv_weight_columns`, the input's zero point where the padding is, so that
    (x - zero point) is 0 there as in ConvInteger), times the packed [C * KH * KW, O] weight
    by the int8 matrix kernel (schedules/int8.py: VNNI where the CPU has it), then transposed
    back NCHW (module doc). Exact: the same int32 sums."""
    from tvm import te, tirx

    from ecograph.ir.ops.convolution import conv2d_geometry

    weight = ctx.node.input(wi)
    plan = integer_weight(ctx.node, ctx.target)
    if weight is None or weight.const_value is None or plan is None:
        ctx.fail("the weight is bound packed but the convolution is not a packable product")
    xt = ctx.in_type(xi)
    x_dtype = str(xt.dtype)
    height, width = int(xt.shape[2]), int(xt.shape[3])
    oc, channels, kh, kw = (int(d) for d in weight.const_value.shape)
    geometry = conv2d_geometry(ctx.attrs, (height, width), (kh, kw))
    if geometry is None:
        ctx.fail("the convolution's pads or output size are not those of a packable product")
    (sh, sw), (dh, dw) = geometry.strides, geometry.dilations
    top, left, bottom, right = geometry.pads
    out_h, out_w = geometry.out
    zx = ctx.const(zi) if ctx.has(zi) else None
    za = 0 if zx is None else int(zx.reshape(-1)[0])
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731

    x = ctx.arg(xi)
    if unfolds_channels_last(channels):
        # NHWC (a transpose fused with the layer's input quantization, or none where the
        # input is channels-last already: channels_last.py), then rows in (KH, KW, C)
        # order: each tap a copy of C contiguous bytes, the zero point outside
        x = ctx.emit(R.permute_dims(x, TO_NHWC))
        if (kh, kw, sh, sw) == (1, 1, 1, 1) and not (top or left or bottom or right):
            rows = ctx.emit(R.reshape(x, [-1, out_h * out_w, channels]))  # a view: no copy
        else:

            def taps(xv: Any) -> Any:
                def at(n: Any, oh: Any, ow: Any, i: Any, j: Any, c: Any) -> Any:
                    h, w = oh * sh + i * dh - top, ow * sw + j * dw - left
                    if not (top or left or bottom or right):
                        return xv[n, h, w, c]
                    inside = tirx.all(h >= 0, h < height, w >= 0, w < width)
                    return tirx.if_then_else(inside, xv[n, h, w, c], tirx.const(za, x_dtype))

                shape = (xv.shape[0], *(i64(d) for d in (out_h, out_w, kh, kw, channels)))
                return te.compute(shape, at, name="im2col")

            rows = _unfold(ctx, taps, x, out_h * out_w, channels * kh * kw)
    else:
        taps = tap_width(channels, kw, dw)  # the taps past KW read up to `right` more columns
        right = max(right, (out_w - 1) * sw + (taps - 1) * dw + 1 - width - left)
        if top or left or bottom or right:  # the border holds the zero point: (x - zx) is 0

            def pad(xv: Any) -> Any:
                def at(n: Any, c: Any, h: Any, w: Any) -> Any:
                    inside = tirx.all(h >= top, h < height + top, w >= left, w < width + left)
                    value = xv[n, c, h - top, w - left]
                    return tirx.if_then_else(inside, value, tirx.const(za, x_dtype))

                padded = (i64(height + top + bottom), i64(width + left + right))
                return te.compute((xv.shape[0], i64(channels), *padded), at, name="pad")

            x = ctx.bb.emit_te(pad, x, primfunc_name_hint="pad_zero_point")

        def im2col(xv: Any) -> Any:
            # [N, OH, OW, C, KH, taps]: no division in the indices, `taps` consecutive stores
            def at(n: Any, oh: Any, ow: Any, c: Any, i: Any, j: Any) -> Any:
                return xv[n, c, oh * sh + i * dh, ow * sw + j * dw]

            shape = (xv.shape[0], *(i64(d) for d in (out_h, out_w, channels, kh, taps)))
            return te.compute(shape, at, name="im2col")

        rows = _unfold(ctx, im2col, x, out_h * out_w, channels * kh * taps)
    zero_point = RowZeroPoint(known=np.asarray(za, np.int64))
    y = integer_product(ctx, rows, x_dtype, out_h * out_w == 1, plan, weight, zero_point)

    # [N, pixels, O] is the output channels-last: NCHW through a transpose that
    # channels_last.py removes where the consumers can take the output channels-last
    return R.permute_dims(ctx.emit(R.reshape(y, [-1, out_h, out_w, oc])), TO_NCHW)


def _unfold(ctx: LowerContext, compute: Any, x: relax.Expr, rows: int, columns: int) -> relax.Expr:
    """The im2col kernel `compute` of `x`, viewed as [N, rows, columns]. A kernel of its own:
    fused, the element-wise producer of x (the quantization of the layer's input) would be
    recomputed for each of the KH x KW rows that read an element."""
    unfolded = ctx.bb.emit_te(compute, x, primfunc_name_hint="im2col")
    gv = ctx.bb.lookup_binding(unfolded).args[0]
    ctx.bb.update_func(gv, ctx.bb.get()[gv].with_attr("op_pattern", OPAQUE_PATTERN))
    return ctx.emit(R.reshape(unfolded, [-1, rows, columns]))  # a view


# ------------------------------------------------- CPU kernels for constant float32 weights


@dataclass(frozen=True)
class ConvKernel:
    """How a 2-D Conv runs as ecograph's CPU conv kernel (module doc): by output channels in
    blocks of `block` (weights packed), or by output width; `ow_tile` columns per tile."""

    by_channels: bool
    groups: int
    channels: int  # input channels
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    size: tuple[int, int]  # input height, width
    out_size: tuple[int, int]
    block: int  # output channels per packed weight block (by channels); 0 by width
    ow_tile: int

    @property
    def padded_columns(self) -> int:
        """Output columns computed: whole tiles (the epilogue writes `out_size[1]`)."""
        return -(-self.out_size[1] // self.ow_tile) * self.ow_tile

    @property
    def padded_channels(self) -> int:
        """Output channels computed: whole blocks by channels, exactly the channels by width."""
        if not self.by_channels:
            return self.out_channels
        return -(-self.out_channels // self.block) * self.block


def conv_kernel(node: Node, target: TargetSpec) -> ConvKernel | None:
    """A float32 Conv's CPU conv kernel, or None when it keeps Relax's conv (module doc)."""
    if target.is_gpu or (node.domain, node.op_type) != ("", "Conv"):
        return None
    x, w = node.input(0), node.input(1)
    if x is None or w is None or x.dtype != DType.FLOAT32 or w.dtype != DType.FLOAT32:
        return None
    return _kernel_for(node, x, w, target)


def _pointwise(k: ConvKernel) -> bool:
    """A 1x1 conv of stride 1 without padding, one group, of 16+ input channels: its NHWC
    input is its rows."""
    plain = k.kernel == (1, 1) and k.strides == (1, 1) and not any(k.pads) and k.groups == 1
    return plain and unfolds_channels_last(k.channels)


def _depthwise(k: ConvKernel) -> bool:
    """A depthwise conv of 16+ channels, which can run channels-last."""
    return k.groups == k.channels == k.out_channels and unfolds_channels_last(k.channels)


# Ops a channels-last region runs through between two convs (channels_last.py runs them on
# the NHWC values), in the ONNX names of the graph
_BETWEEN = frozenset({
    "Relu", "Clip", "Add", "Sub", "Mul", "Div", "Sigmoid", "HardSigmoid", "HardSwish",
    "LeakyRelu", "Identity", "Max", "Min", "Tanh", "Elu", "Selu", "Neg",
})  # fmt: skip
_HOPS = 4  # element-wise ops at most between two convs of one region


def _beside(node: Node, kind: Callable[[ConvKernel], bool], target: TargetSpec) -> bool:
    """True if a float32 Conv whose kernel is of `kind` (`_pointwise`, `_depthwise`) produces
    `node`'s input or reads its output, through at most _HOPS element-wise ops: the two then
    run channels-last and no transpose is left between them. A conv alone keeps NCHW, where
    its neighbours (a 3x3 conv of a ResNet bottleneck) run: transposes around a channels-last
    1x1 conv made a bottleneck 1.5x slower."""

    def is_kind(n: Node) -> bool:
        k = conv_kernel(n, target)
        return k is not None and kind(k)

    return _near(node, is_kind)


def writes_nhwc(node: Node, target: TargetSpec) -> bool:
    """True if the float32 Conv `node`, run by channels, writes its output channels-last
    (`emit_conv_kernel(nhwc=True)`, handed back NCHW through a transpose): a conv that runs
    channels-last (`conv_rows`, `depthwise_nhwc`) reads its output through at most _HOPS
    element-wise ops, so channels_last.py removes that transpose and the one before the
    neighbour. The tile is [columns, channels]: an NHWC write is a vector of channels per
    column (MobileNetV2's stem: its output's transpose, 0.06 ms, gone)."""

    def channels_last(n: Node) -> bool:
        if conv_rows(n, target) is not None:
            return True
        k = conv_kernel(n, target)
        return k is not None and depthwise_nhwc(n, k, target)

    return _near(node, channels_last, inputs=False)


def _near(node: Node, found: Callable[[Node], bool], *, inputs: bool = True) -> bool:
    """True if a node for which `found` holds reads `node`'s output (or, with `inputs`,
    produces one of its inputs) through at most _HOPS ops of _BETWEEN."""
    frontier, seen = [node], {node}
    for _ in range(_HOPS + 1):
        following: list[Node] = []
        for n in frontier:
            near = [u.node for v in n.outputs for u in v.uses]
            if inputs:
                near += [v.producer for v in n.inputs if v is not None and v.producer is not None]
            for m in near:
                if m in seen:
                    continue
                seen.add(m)
                if found(m):
                    return True
                if m.domain == "" and m.op_type in _BETWEEN:
                    following.append(m)
        frontier = following
    return False


def depthwise_nhwc(node: Node, k: ConvKernel, target: TargetSpec) -> bool:
    """True if the float32 depthwise Conv `node` (kernel `k`) runs channels-last
    (`emit_depthwise_nhwc`): beside a 1x1 conv that runs as rows (`_beside`)."""
    return _depthwise(k) and _beside(node, _pointwise, target)


def conv_rows(node: Node, target: TargetSpec) -> tuple[int, int] | None:
    """(C, O) if `node` is a float32 Conv that runs as the product of its channels-last rows
    (one per pixel) and its constant [O, C, 1, 1] weight (`emit_conv_rows`): a 1x1 conv of
    16+ channels beside a depthwise conv (`_beside`), else None."""
    k = conv_kernel(node, target)
    if k is None or not _pointwise(k) or not _beside(node, _depthwise, target):
        return None
    return k.channels, k.out_channels


def _conv_weights(
    graph: Graph, live: set[Node], target: TargetSpec
) -> Iterator[tuple[Value, np.ndarray, list[Node]]]:
    """ops/matmul.py's `weight_constants` of 4 dimensions (conv weights); none for GPU
    targets."""
    if not target.is_gpu:
        yield from weight_constants(graph, live, 4)


def packed_row_conv_weights(
    graph: Graph, live: set[Node], target: TargetSpec
) -> dict[Value, PackedWeight]:
    """Float32 [O, C, 1, 1] constants every use of which is the weight of a live Conv that
    runs as a product of rows (`conv_rows`), packed in column panels for the matmul kernel
    ([O / NR, C, NR], as ops/matmul.py packs a [C, O] weight). Empty for GPU targets."""
    packed: dict[Value, PackedWeight] = {}
    for c, arr, convs in _conv_weights(graph, live, target):
        if all(conv_rows(n, target) is not None for n in convs):
            oc = int(arr.shape[0])
            nr = register_tile(target, oc, single_row=False)[1]
            packed[c] = PackedWeight(pack_panels(arr.reshape(oc, -1).T, nr), nr)
    return packed


def packed_depthwise_taps(
    graph: Graph, live: set[Node], target: TargetSpec
) -> dict[Value, np.ndarray]:
    """Float32 [C, 1, KH, KW] constants every use of which is the weight of a live depthwise
    Conv that runs channels-last (`depthwise_nhwc`), as its taps [KH, KW, C] (the sliding
    window's vectors of channels). Empty for GPU targets."""
    taps: dict[Value, np.ndarray] = {}
    for c, arr, convs in _conv_weights(graph, live, target):
        kernels = [(n, conv_kernel(n, target)) for n in convs]
        if all(k is not None and depthwise_nhwc(n, k, target) for n, k in kernels):
            taps[c] = np.ascontiguousarray(arr[:, 0].transpose(1, 2, 0))
    return taps


def emit_conv_rows(ctx: LowerContext) -> relax.Expr:
    """The Conv (`conv_rows`) as the product of its NHWC input's rows [N, H * W, C] (a view)
    and its weight packed in panels (the matmul kernel, schedules/matmul.py), plus the bias,
    viewed [N, H, W, O] and handed back NCHW. Both transposes are `permute_dims`, which
    channels_last.py removes between convolutions that run channels-last."""
    weight = ctx.node.input(1)
    assert weight is not None and weight in ctx.state.panels
    xt = ctx.in_type(0)
    channels, height, width = (int(d) for d in xt.shape[1:])
    oc = int(ctx.out_type().shape[1])
    pixels = height * width
    x = ctx.emit(R.permute_dims(ctx.arg(0), TO_NHWC))
    rows = ctx.emit(R.reshape(x, [-1, pixels, channels]))
    y = emit_packed_matmul(ctx, rows, weight, shape=(pixels, oc))
    if ctx.has(2):
        y = R.add(ctx.emit(y), ctx.arg(2))
    return R.permute_dims(ctx.emit(R.reshape(ctx.emit(y), [-1, height, width, oc])), TO_NCHW)


EXACT_PRODUCTS = 258  # products of two 8-bit differences (|d| <= 255) summed exactly in float32


def exact_integer_kernel(node: Node, xi: int, wi: int, target: TargetSpec) -> ConvKernel | None:
    """The float32 CPU conv kernel for a grouped ConvInteger / QLinearConv (input and weight at
    `xi`, `wi`) whose int32 sums it computes exactly, or None. Each output sums K = C / groups
    x KH x KW products of (x - zero point) and (w - zero point), integers of at most 255 in
    magnitude: with K <= EXACT_PRODUCTS every product and partial sum stays below 2^24, so
    float32 holds them all exactly, in any order (depthwise 3x3: K = 9). Groups of one run
    as the int8 product over im2col rows instead (`emit_conv_integer_rows`)."""
    if target.is_gpu:
        return None
    x, w = node.input(xi), node.input(wi)
    eight_bit = (DType.UINT8, DType.INT8)
    if x is None or w is None or x.dtype not in eight_bit or w.dtype not in eight_bit:
        return None
    k = _kernel_for(node, x, w, target)
    if k is None or k.groups == 1:
        return None
    if k.channels // k.groups * k.kernel[0] * k.kernel[1] > EXACT_PRODUCTS:
        return None
    return k


def _kernel_for(node: Node, x: Value, w: Value, target: TargetSpec) -> ConvKernel | None:
    from ecograph.ir.ops.convolution import conv2d_geometry

    if w.const_value is None or w.type.rank != 4 or x.type.rank != 4:
        return None
    channels, height, width = x.type.shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in (channels, height, width)):
        return None
    attrs = resolve_attrs(node.schema, node)
    oc, per_group, kh, kw = (int(d) for d in w.const_value.shape)
    groups = int(attrs["group"])
    kernel = tuple(attrs["kernel_shape"] or (kh, kw))
    if kernel != (kh, kw) or groups < 1 or channels != per_group * groups or oc % groups:
        return None
    geometry = conv2d_geometry(attrs, (height, width), (kh, kw))
    if geometry is None:
        return None
    strides, dil, pads, out = geometry.strides, geometry.dilations, geometry.pads, geometry.out
    lanes = lanes_for(target)
    out_per_group = oc // groups
    by_channels = out_per_group % lanes == 0 or (groups == 1 and 2 * oc > lanes)
    pointwise = (kh, kw) == (1, 1)
    by_channels = by_channels and not prefers_width(
        target, strides[1], out[1], pointwise, per_group
    )
    if by_channels:
        block = channel_block(target, out_per_group if groups > 1 else oc)
        ow_tile = channel_tile(target, block, out[1], strides[1], kw)
    else:
        block, ow_tile = 0, width_tile(target, out[1])
    return ConvKernel(
        by_channels, groups, channels, oc, (kh, kw), strides, dil, pads,
        (height, width), out, block, ow_tile,  # type: ignore[arg-type]
    )  # fmt: skip


def pack_conv_weight(w: np.ndarray, block: int) -> np.ndarray:
    """[O, I, KH, KW] -> [ceil(O / block), I, KH, KW, block], zero-padded channels."""
    oc = w.shape[0]
    padded = np.zeros((-(-oc // block) * block, *w.shape[1:]), np.float32)
    padded[:oc] = w
    blocks = padded.reshape(-1, block, *w.shape[1:])
    return np.ascontiguousarray(blocks.transpose(0, 2, 3, 4, 1))


@dataclass(frozen=True)
class PackedConv:
    """A constant conv weight packed for the by-channels kernel: `array` is
    [O / block, I, KH, KW, block]."""

    array: np.ndarray
    block: int


def packed_conv_weights(
    graph: Graph, live: set[Node], target: TargetSpec
) -> dict[Value, PackedConv]:
    """Float32 4-D constants every use of which is the weight of a live Conv that runs by
    channels with one block width, packed for it. A weight every use of which runs as rows
    is packed in panels instead (`packed_row_conv_weights`); one that a rows candidate
    (`conv_rows`) shares with another Conv is packed here, and that candidate runs NCHW
    (`_conv`). Empty for GPU targets."""
    packed: dict[Value, PackedConv] = {}
    for c, arr, convs in _conv_weights(graph, live, target):
        if all(conv_rows(n, target) is not None for n in convs):
            continue
        kernels = [conv_kernel(n, target) for n in convs]
        blocks = {k.block if k is not None and k.by_channels else None for k in kernels}
        if len(blocks) != 1 or None in blocks:
            continue
        block = blocks.pop()
        assert block is not None
        packed[c] = PackedConv(pack_conv_weight(arr, block), block)
    return packed


def emit_conv(ctx: LowerContext, k: ConvKernel, *, nhwc: bool = False) -> relax.Expr:
    """The Conv node as one TE kernel for `k` (module doc); `nhwc`: its output channels-last."""
    weight = ctx.node.input(1)
    assert weight is not None
    bias = ctx.arg(2) if ctx.has(2) else None
    return emit_conv_kernel(ctx, k, ctx.arg(0), ctx.state.value_expr(weight), bias, nhwc=nhwc)


def emit_exact_integer_conv(
    ctx: LowerContext, k: ConvKernel, xi: int, zi: int, wi: int, wzi: int
) -> relax.Expr:
    """The int32 convolution of a ConvInteger / QLinearConv (input, zero points and weight at
    `xi`, `zi`, `wi`, `wzi`) through the float32 kernel `k` of `exact_integer_kernel`: the
    input minus its zero point in float32 (exact), the constant weight minus its zero point
    packed for `k` at compile time; the float sums are the integer ones, cast back."""
    weight = ctx.node.input(wi)
    assert weight is not None and weight.const_value is not None
    w = weight.const_value.astype(np.float32)
    if ctx.has(wzi):
        known = ctx.const(wzi)
        assert known is not None  # conv_integer_product checked it is a constant
        zw = known.astype(np.float32).reshape(-1)
        w = w - zw.reshape(-1, 1, 1, 1)  # one per output channel, or one for all
    zx = ctx.const(zi) if ctx.has(zi) else np.zeros((), np.float32)
    depthwise = _depthwise(k)
    if depthwise and zx is not None and zx.size == 1:
        # the 8-bit input as it is: minus its zero point in the window's loads
        return emit_depthwise_nhwc(ctx, k, ctx.arg(xi), w, float(zx.reshape(-1)[0]))
    x = R.astype(ctx.arg(xi), "float32")
    if ctx.has(zi):
        x = R.subtract(x, R.astype(ctx.arg(zi), "float32"))
    if depthwise:
        return emit_depthwise_nhwc(ctx, k, ctx.emit(x), w, 0.0)
    if k.by_channels:
        w = pack_conv_weight(w, k.block)
    y = emit_conv_kernel(ctx, k, ctx.emit(x), relax.const(w, "float32"), None)
    return R.astype(y, "int32")


def emit_depthwise_nhwc(
    ctx: LowerContext,
    k: ConvKernel,
    x: relax.Expr,
    w: np.ndarray | relax.Expr,
    zero: float,
    *,
    integer: bool = True,
) -> relax.Expr:
    """A depthwise convolution of (`x` - `zero`) in float32 ([N, C, H, W] `x`: 8-bit, read
    as it is and converted in the window's loads, or float32 with `zero` 0) by the
    [C, 1, KH, KW] `w` (or its taps [KH, KW, C] bound, `packed_depthwise_taps`),
    channels-last: x transposed NHWC, padded with 0 (x - zero is 0 there), each output pixel
    a sum over the window of vectors of C channels times the taps (schedules/pool.py's
    sliding-window rule, vectorized along the channels), cast to int32 (`integer`; else a
    float32 Conv's result plus its bias) and handed back NCHW. Both transposes are
    `permute_dims`, which channels_last.py removes between channels-last convolutions: in a
    MobileNet block the expansion's product writes the activations this kernel reads, and
    this kernel the projection's rows, without a transpose."""
    from tvm import te, tirx

    (sh, sw), (dh, dw), (kh_len, kw_len) = k.strides, k.dilations, k.kernel
    top, left, bottom, right = k.pads
    height, width = k.size
    rows, cols = k.out_size
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731
    if isinstance(w, np.ndarray):
        w = relax.const(np.ascontiguousarray(w[:, 0].transpose(1, 2, 0)), "float32")

    def compute(xv: Any, wv: Any) -> Any:
        batch, channels = xv.shape[0], i64(k.channels)

        def centred(n: Any, h: Any, col: Any, c: Any) -> Any:
            value = xv[n, h, col, c]
            if xv.dtype == "float32":
                assert zero == 0.0, "a float32 input is centred by its caller"
                return value
            return value.astype("float32") - tirx.const(zero, "float32")  # exact

        def padded(n: Any, h: Any, col: Any, c: Any) -> Any:
            inside = tirx.all(h >= top, h < height + top, col >= left, col < width + left)
            value = centred(n, h - top, col - left, c)
            return tirx.if_then_else(inside, value, tirx.const(0.0, "float32"))

        source = xv
        if any(k.pads):
            shape = (batch, i64(height + top + bottom), i64(width + left + right), channels)
            source = te.compute(shape, padded, name="pad")
        elif xv.dtype != "float32":
            source = te.compute(xv.shape, centred, name="centred")
        rh = te.reduce_axis((i64(0), i64(kh_len)), "kh")
        rw = te.reduce_axis((i64(0), i64(kw_len)), "kw")
        return te.compute(
            (batch, i64(rows), i64(cols), channels),
            lambda n, oh, ow, c: te.sum(
                source[n, oh * sh + rh * dh, ow * sw + rw * dw, c] * wv[rh, rw, c], axis=[rh, rw]
            ),
            name="depthwise",
        )

    nhwc = ctx.emit(R.permute_dims(x, TO_NHWC))
    y = ctx.bb.emit_te(compute, nhwc, w, primfunc_name_hint="depthwise")  # w: [KH, KW, C]
    if not integer:  # a float32 Conv: its bias, then NCHW
        if ctx.has(2):
            y = ctx.emit(R.add(y, ctx.arg(2)))
        return R.permute_dims(y, TO_NCHW)
    return R.permute_dims(ctx.emit(R.astype(y, "int32")), TO_NCHW)


def emit_conv_kernel(
    ctx: LowerContext,
    k: ConvKernel,
    x: relax.Expr,
    weight: relax.Expr,
    bias: relax.Expr | None,
    *,
    nhwc: bool = False,
) -> relax.Expr:
    """One TE kernel for `k` (module doc): the padding copy if any (by width, a kernel of its
    own before it), the reduction over whole tiles, then the real outputs plus the bias,
    [N, O, OH, OW] or with `nhwc` [N, OH, OW, O]; `weight` packed for `k` when by channels."""
    from tvm import te, tirx

    args = [x, weight, *([bias] if bias is not None else [])]
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731
    (sh, sw), (dh, dw), (kh_len, kw_len) = k.strides, k.dilations, k.kernel
    top, left, bottom, right = k.pads
    height, width = k.size
    rows, cols = k.out_size
    cols_p, out_p = k.padded_columns, k.padded_channels
    per_group, out_per_group = k.channels // k.groups, k.out_channels // k.groups
    # By width, the input is copied when it is padded, when the padded tiles read columns
    # beyond it, or when its columns are strided (split into `sw` phases, each read at
    # consecutive addresses), by `pad_phases` (one phase for unit stride). By channels, the
    # input values are scalars: up to 3 kernel columns, padding is a guarded load (measured
    # against the copy on AVX-512 and AVX2: 3x3 over 8 x 8 10 instead of 12 us, 3x3 / 2 5.4
    # instead of 6.6 us); wider kernels read a copy (5x5 / 2: 54 us, guarded 64-74; the
    # 7x7 / 2 stem: 52-55 us, guarded 47 on AVX-512 but 62 on AVX2).
    span = (cols_p - 1) * sw + (kw_len - 1) * dw + 1
    padded_w = max(width + left + right, span)
    needs = any(k.pads) or span > width
    copy = (needs and kw_len > 3) if k.by_channels else (needs or sw > 1)
    if copy and not k.by_channels:
        # by width: the padded copy in phases is a kernel of its own (ops/padding.py)
        phase_cols = cols_p + (kw_len - 1) * dw // sw
        geometry = (k.channels, k.size, (top, bottom, left), sw, phase_cols)
        args[0] = pad_phases(ctx, ctx.emit(x), *geometry)

    def compute(xv: Any, wv: Any, *bias: Any) -> Any:
        batch = xv.shape[0]
        zero = tirx.const(0.0, "float32")

        def padded(n: Any, c: Any, h: Any, w: Any) -> Any:
            """x at (h, w) of the padded image: zero outside, checking only sides that can be."""
            sides = []
            if top:
                sides.append(h >= top)
            if bottom:
                sides.append(h < height + top)
            if left:
                sides.append(w >= left)
            if right or span > width + left:
                sides.append(w < width + left)
            value = xv[n, c, h - top, w - left]
            return tirx.if_then_else(tirx.all(*sides), value, zero) if sides else value

        if copy and k.by_channels:
            xp = te.compute(
                (batch, i64(k.channels), i64(height + top + bottom), i64(padded_w)),
                padded,
                name="pad",
            )

        def load(n: Any, c: Any, h: Any, ow: Any, kw: Any) -> Any:
            if not copy:
                return padded(n, c, h, ow * sw + kw * dw)
            if k.by_channels:
                return xp[n, c, h, ow * sw + kw * dw]
            return xv[n, c, h, (kw * dw) % sw, ow + (kw * dw) // sw]  # the phases' copy

        ic = te.reduce_axis((i64(0), i64(per_group)), "ic")
        rh = te.reduce_axis((i64(0), i64(kh_len)), "kh")
        rw = te.reduce_axis((i64(0), i64(kw_len)), "kw")
        b = k.block

        def by_channels(n: Any, o: Any, oh: Any, ow: Any) -> Any:
            c = ic if k.groups == 1 else (o // b) // (out_per_group // b) * per_group + ic
            x = load(n, c, oh * sh + rh * dh, ow, rw)
            return te.sum(x * wv[o // b, ic, rh, rw, o % b], axis=[ic, rh, rw])

        def by_width(n: Any, o: Any, oh: Any, ow: Any) -> Any:
            c = ic if k.groups == 1 else o // out_per_group * per_group + ic
            x = load(n, c, oh * sh + rh * dh, ow, rw)
            return te.sum(x * wv[o, ic, rh, rw], axis=[ic, rh, rw])

        conv = te.compute(
            (batch, i64(out_p), i64(rows), i64(cols_p)),
            by_channels if k.by_channels else by_width,
            name="conv",
        )

        def output(n: Any, o: Any, oh: Any, ow: Any) -> Any:
            y = conv[n, o, oh, ow]
            return y + bias[0][o] if bias else y

        if nhwc:
            return te.compute(
                (batch, i64(rows), i64(cols), i64(k.out_channels)),
                lambda n, oh, ow, o: output(n, o, oh, ow),
                name="conv_out",
            )
        return te.compute(
            (batch, i64(k.out_channels), i64(rows), i64(cols)), output, name="conv_out"
        )

    return ctx.bb.emit_te(compute, *args, primfunc_name_hint="conv2d")


# Ops that cannot lower to TVM at all, with the reason (reported by missing_lowerings users).
