"""Matrix-product lowerings: MatMul, MatMulInteger, Gemm and Einsum (quantized matmuls,
weight-only DequantizeMatMul and MatMulNBits, are in `quant.py`).

On CPU targets a float32 product with a constant 2-D weight (MatMul, Gemm, ecograph::Linear)
reads the weight packed at compile time in column panels, `[N / NR, K, NR]` (zero-padded),
so the NR columns a register tile needs are contiguous for every k; its rows are padded to a
multiple of the tile's MR, reading row min(i, rows - 1), so the schedule needs no row
predicate (schedules/matmul.py; `register_tile` gives both the same MR and NR).

On GPU targets such a weight is stored `[N, K]` (BY_COLUMN: each output column's weights
contiguous along the reduction), the layout dlight's GEMV rule schedules for a decode step's
one-row product; for `[K, N]` it declines on CUDA and the Reduction rule read one float per
row of W per thread (docs/tvm.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax

from ecograph.backends.tvm.context import (
    LowerContext,
    R,
    lowers,
)
from ecograph.backends.tvm.schedules.int8 import Int8Kernel, int8_kernel, int8_tile, shifted_a
from ecograph.backends.tvm.schedules.matmul import (
    DECODED_PANEL,
    lanes_for,
    register_tile,
    single_row_span,
)
from ecograph.backends.tvm.targets import TargetSpec
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value

# (domain, op) -> whether its weight (input 1) is used transposed, given the node
_WEIGHT_USES = {("", "MatMul"), ("", "Gemm"), ("ecograph", "Linear")}


BY_COLUMN = 0  # PackedWeight.nr of a GPU weight stored [N, K]


@dataclass(frozen=True)
class PackedWeight:
    """A constant weight packed for the CPU matmul kernel: `array` is [ceil(N / nr), K, nr];
    for GPU targets (nr == BY_COLUMN) `array` is [N, K]."""

    array: np.ndarray
    nr: int


def _weight_orientation(node: Node) -> bool | None:
    """True if `node` reads its weight transposed ([N, K]), False if as [K, N], None if the
    node is not a product this packing serves."""
    if (node.domain, node.op_type) not in _WEIGHT_USES:
        return None
    a = node.input(0)
    if a is None or a.dtype != DType.FLOAT32 or a.type.rank < 1:
        return None
    if node.op_type == "Gemm":
        if node.attr("transA", 0):
            return None  # the packed kernel reads A as stored
        return bool(node.attr("transB", 0))
    return False


def weight_constants(
    graph: Graph, live: set[Node], ndim: int
) -> Iterator[tuple[Value, np.ndarray, list[Node]]]:
    """(constant, its array, the nodes reading it) for each float32 constant of `ndim`
    dimensions every use of which is input 1 (the weight) of a live node, not a graph
    output: the candidates of the compile-time weight packings (here and ops/conv.py)."""
    for c in graph.constants.values():
        arr = c.const_value
        if c.dtype != DType.FLOAT32 or arr is None or arr.ndim != ndim or not c.uses:
            continue
        if c.is_graph_output or any(u.index != 1 or u.node not in live for u in c.uses):
            continue
        yield c, arr, [u.node for u in c.uses]


def packed_matmul_weights(
    graph: Graph, live: set[Node], target: TargetSpec
) -> dict[Value, PackedWeight]:
    """Float32 2-D weight constants every use of which is the weight of a live float32 product
    (all in the same orientation), packed for the CPU matmul kernel (stored [N, K] for GPU
    targets), and on CPUs the 8-bit weights of integer products (`packed_integer_weights`)."""
    packed: dict[Value, PackedWeight] = {}
    for c, arr, _ in weight_constants(graph, live, 2):
        orientations = {_weight_orientation(u.node) for u in c.uses}
        if len(orientations) != 1 or None in orientations:
            continue
        w = arr.T if orientations.pop() else arr  # [K, N]
        if target.is_gpu:
            packed[c] = PackedWeight(np.ascontiguousarray(w.T), BY_COLUMN)
            continue
        first = c.uses[0].node.input(0)
        assert first is not None
        nr = panel_width_for(target, first, int(w.shape[1]))
        packed[c] = PackedWeight(pack_panels(w, nr), nr)
    if not target.is_gpu:
        packed.update(packed_integer_weights(graph, live, target))
    return packed


def panel_width_for(target: TargetSpec, a: Value, n: int, *, decoded: bool = False) -> int:
    """NR, the panel width a constant weight of N columns is packed in for a product whose
    A is `a`: the several-row kernel's, so a decode step (one row) and a prefill share one
    packed weight, unless a single-row tile cannot span whole panels of it (N an odd number
    of 2-vector panels: 688 = 43 x 16 on AVX2); that product gets the single-row width.
    `decoded`: the kernel decodes the weights (4-bit codes, palettes; see
    `single_row_span`)."""
    several = register_tile(target, n, single_row=False)[1]
    single = a.type.rank == 1 or a.type.shape[-2] == 1
    if not single or single_row_span(target, n, several, decoded):
        return several
    return register_tile(target, n, single_row=True)[1]


def pack_panels(w: np.ndarray, nr: int) -> np.ndarray:
    """[K, N] -> [ceil(N / nr), K, nr], zero-padded columns, in w's dtype."""
    k, n = w.shape
    n_pad = -(-n // nr) * nr
    padded = np.zeros((k, n_pad), w.dtype)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, n_pad // nr, nr).transpose(1, 0, 2))


def emit_packed_matmul(
    ctx: LowerContext, a: relax.Expr, weight: Value, shape: tuple[Any, int] | None = None
) -> relax.Expr:
    """`a @ W` for a weight bound packed (`ctx.state.panels`): one TE kernel over the panels,
    rows padded to the register tile's MR and clamped (see the module doc; `shape` as in
    `emit_panel_matmul`); a GPU weight stored [N, K] (BY_COLUMN) as a plain reduction over
    its rows."""
    nr = ctx.state.panels[weight]
    if nr == BY_COLUMN:
        return emit_by_column_matmul(ctx, a, ctx.state.value_expr(weight))
    return emit_panel_matmul(
        ctx,
        a,
        [ctx.state.value_expr(weight)],
        lambda ws, k, j: ws[0][j // nr, k, j % nr],
        nr,
        "matmul",
        shape=shape,
    )


def emit_by_column_matmul(ctx: LowerContext, a: relax.Expr, w: relax.Expr) -> relax.Expr:
    """`a [.., K] @ W` with W given as float32 [N, K]: out[.., j] = sum_k a[.., k] w[j, k]."""
    from tvm import te

    def compute(av: Any, wt: Any) -> Any:
        kk = te.reduce_axis((0, av.shape[-1]), "k")
        return te.compute(
            (*av.shape[:-1], wt.shape[0]),
            lambda *ix: te.sum(av[(*ix[:-1], kk)] * wt[ix[-1], kk], axis=kk),
            name="matmul",
        )

    return ctx.bb.emit_te(compute, a, w, primfunc_name_hint="matmul")


def emit_panel_matmul(
    ctx: LowerContext,
    a: relax.Expr,
    operands: Sequence[relax.Expr],
    weight: Callable[[Sequence[Any], Any, Any], Any],
    nr: int,
    name: str,
    decode_once: bool = False,
    shape: tuple[Any, int] | None = None,
) -> relax.Expr:
    """`a @ W` as one TE kernel, `W[k, j] = weight(operand tensors, k, j)` reading operands
    packed in column panels of `nr` (`[j // nr, f(k), j % nr]`, the form the matmul schedule
    recognises; a dequantization may sit in `weight`). Rows are padded to the register tile's
    MR, reading row min(i, rows - 1), and columns to whole vectors, so the schedule needs no
    predicate inside a tile.

    `decode_once` (a `weight` that decodes, e.g. 4-bit codes times scales), for products of
    several rows: W is a stage of its own, `[panels, K, nr]` floats named DECODED_PANEL,
    which the matmul schedule computes one panel at a time into a scratch buffer and
    multiplies by every row tile (GotoBLAS' packing), instead of decoding each weight once
    per MR rows inside the product.

    `shape`: (rows of A, N) when they are not the node's (its input 0 and output), e.g. a
    1x1 convolution's product of its pixels (ops/conv.py `emit_conv_rows`)."""
    from tvm import te, tirx

    if shape is None:
        at = ctx.in_type(0)
        rows_dim = at.shape[-2] if at.rank >= 2 else 1
        n_len = int(ctx.out_type().shape[-1])
    else:
        rows_dim, n_len = shape
    single = rows_dim == 1
    mr, _ = register_tile(ctx.target, n_len, single_row=single, nr=nr)
    decode_once = decode_once and not single

    # Columns are computed in whole vectors (the panels are zero-padded past N): a last
    # vector only partly inside N would put a predicate on the vector lanes, and TVM then
    # leaves the whole kernel scalar (N = 200 on AVX-512: 16-lane vectors, 8 columns over).
    n_pad = -(-n_len // lanes_for(ctx.target)) * lanes_for(ctx.target)

    def compute(av: Any, *ws: Any) -> Any:
        kk = te.reduce_axis((0, av.shape[-1]), "k")
        weight_at = weight
        if decode_once:
            panels = -(-n_pad // nr)
            decoded = te.compute(
                (panels, av.shape[-1], nr),
                lambda p, k, c: weight(ws, k, p * nr + c),
                name=DECODED_PANEL,
            )
            weight_at = lambda _, k, j: decoded[j // nr, k, j % nr]  # noqa: E731

        if len(av.shape) == 1:
            vec = te.compute(
                (n_pad,), lambda j: te.sum(av[kk] * weight_at(ws, kk, j), axis=kk), name=name
            )
            if n_pad == n_len:
                return vec
            return te.compute((n_len,), lambda j: vec(j), name=f"{name}_cols")
        *lead, rows, _ = av.shape
        static_rows = isinstance(rows, tirx.IntImm)
        if static_rows and int(rows) % mr == 0 and n_pad == n_len:
            return te.compute(
                (*lead, rows, n_len),
                lambda *ix: te.sum(av[(*ix[:-1], kk)] * weight_at(ws, kk, ix[-1]), axis=kk),
                name=name,
            )
        padded = rows if static_rows and int(rows) % mr == 0 else (rows + (mr - 1)) // mr * mr
        tile = te.compute(
            (*lead, padded, n_pad),
            lambda *ix: te.sum(
                av[(*ix[:-2], te.min(ix[-2], rows - 1), kk)] * weight_at(ws, kk, ix[-1]),
                axis=kk,
            ),
            name=name,
        )
        return te.compute((*lead, rows, n_len), lambda *ix: tile(*ix), name=f"{name}_rows")

    return ctx.bb.emit_te(compute, a, *operands, primfunc_name_hint=name)


# ------------------------------------------------------- 8-bit products with constant weights
#
# On CPUs an integer product with a constant 8-bit weight (MatMulInteger; QLinearMatMul shares
# it) reads the weight packed at compile time for the target's dot-product kernel
# (schedules/int8.py, `int8_kernel`): [N / NR, K / G, NR, G], so the G consecutive k one
# instruction sums for each of NR columns are adjacent. The kernel multiplies
# `(a + delta) * w'` with w' = w + shift (a compile-time per-column shift that makes w' fit the
# instruction's operand type, or folds the weight's zero point in), and the zero points are
# folded exactly, in int32 arithmetic (wrapping like the reference):
#
#   sum_k (a - za)(w - zw) = P - (za + delta) * colsum(w') + zeta * (K * za - rowsum(a))
#
# with P the kernel's product, zeta = zw + shift per column (zero when the shift folded zw in)
# and colsum(w') precomputed; rowsum(a) is computed only when some zeta is not zero.

# (domain, op) -> positions of A, the weight B, A's zero point and B's zero point
_INTEGER_OPERANDS = {
    ("", "MatMulInteger"): (0, 1, 2, 3),
    ("", "QLinearMatMul"): (0, 3, 2, 5),
    # convolutions as products of their im2col rows (ops/conv.py)
    ("", "ConvInteger"): (0, 1, 2, 3),
    ("", "QLinearConv"): (0, 3, 2, 5),
}
_CONVS = {"ConvInteger", "QLinearConv"}
_RANGES = {"int8": (-128, 127), "int16": (-32768, 32767)}


@dataclass(frozen=True)
class IntegerWeight:
    """A constant 8-bit weight prepared for `kernel` (see above): `packed` is
    [ceil(N / nr), ceil(K / G), nr, G] ([.., K, nr] when G is 1), zero-padded; `colsum` and
    `zeta` are int32 [N]."""

    kernel: Int8Kernel
    nr: int
    k: int
    n: int
    packed: np.ndarray
    colsum: np.ndarray
    zeta: np.ndarray


def integer_weight(node: Node, target: TargetSpec) -> IntegerWeight | None:
    """How `node`'s constant 8-bit weight is packed for `target`, or None when the node is not
    an integer product this kernel serves (GPU, A of rank < 2, a zero point of another shape;
    a convolution that `conv_integer_rows` does not take)."""
    ops = _INTEGER_OPERANDS.get((node.domain, node.op_type))
    if ops is None or target.is_gpu:
        return None
    a, b = node.input(ops[0]), node.input(ops[1])
    za, zb = node.input(ops[2]), node.input(ops[3])
    eight = (DType.UINT8, DType.INT8)
    if a is None or b is None or b.const_value is None:
        return None
    if a.dtype not in eight or b.dtype not in eight or a.type.rank < 2:
        return None
    n = b.const_value.shape[0 if node.op_type in _CONVS else -1]
    zw = np.zeros(n, np.int64)
    if zb is not None:
        z = zb.const_value
        if z is None or not (z.size == 1 or z.shape == (n,)):
            return None
        zw = np.broadcast_to(z.astype(np.int64).reshape(-1), (n,))
    if node.op_type in _CONVS:
        unfolding = conv_integer_rows(node)
        if unfolding is None:
            return None
        rows, taps = unfolding
        w, single = conv_weight_columns(b.const_value, taps, zw), rows == 1
    else:
        if b.const_value.ndim != 2 or not _row_zero_point(za):
            return None
        w, single = b.const_value, a.type.shape[-2] == 1
    k = w.shape[0]
    if k == 0 or n == 0:
        return None
    kernel = int8_kernel(target, str(a.dtype))
    if kernel is None:
        return None
    w = w.astype(np.int64)
    lo, hi = _RANGES[kernel.weight_dtype]
    if int((w - zw).min()) >= lo and int((w - zw).max()) <= hi:
        shift = -zw  # the weight's zero point folded into the packed values
    elif b.dtype == DType.INT8:
        shift = np.zeros(n, np.int64)
    else:
        shift = np.full(n, -128, np.int64)  # u8 weights as s8
    wq = w + shift
    _, nr = int8_tile(target, kernel, n, single_row=single)
    return IntegerWeight(
        kernel=kernel,
        nr=nr,
        k=k,
        n=n,
        packed=pack_integer(wq, kernel, nr),
        colsum=wq.sum(axis=0).astype(np.int32),
        zeta=(zw + shift).astype(np.int32),
    )


def conv_integer_rows(node: Node) -> tuple[int, int] | None:
    """Output pixels per image (the rows of its im2col product) and taps per kernel row in a
    row (`tap_width`) of a ConvInteger or QLinearConv that runs as an 8-bit product: 2-D, one
    group, static channels and image size, a constant weight, the input's zero point a
    constant scalar or absent; None for any other."""
    from ecograph.ir.ops.convolution import conv2d_geometry
    from ecograph.ir.registry import resolve_attrs

    xi, wi, zi, _ = _INTEGER_OPERANDS[(node.domain, node.op_type)]
    x, w, zx = node.input(xi), node.input(wi), node.input(zi)
    if x is None or w is None or w.const_value is None or w.const_value.ndim != 4:
        return None
    if x.type.rank != 4 or not all(isinstance(d, int) and d > 0 for d in x.type.shape[1:]):
        return None
    if zx is not None and (zx.const_value is None or zx.const_value.size != 1):
        return None
    attrs = resolve_attrs(node.schema, node)
    _, per_group, kh, kw = w.const_value.shape
    if int(attrs["group"]) != 1 or per_group != x.type.shape[1]:
        return None
    if tuple(attrs["kernel_shape"] or (kh, kw)) != (kh, kw):
        return None
    size = (int(x.type.shape[2]), int(x.type.shape[3]))
    geometry = conv2d_geometry(attrs, size, (kh, kw))
    if geometry is None:
        return None
    taps = tap_width(per_group, kw, geometry.dilations[1])
    return geometry.out[0] * geometry.out[1], taps


# Input channels from which a convolution's rows are unfolded channels-last (NHWC, columns in
# (KH, KW, C) order: each tap copies C contiguous bytes, one vector); fewer (an RGB stem) keep
# the (C, KH, KW) order read straight from NCHW.
CHANNELS_LAST_MIN = 16


def unfolds_channels_last(channels: int) -> bool:
    """True if a convolution of `channels` input channels unfolds channels-last: the one
    decision the packed weight's column order (`conv_weight_columns`) and the lowering's
    unfolding (ops/conv.py `emit_conv_integer_rows`) must agree on."""
    return channels >= CHANNELS_LAST_MIN


def tap_width(channels: int, kw: int, dilation: int) -> int:
    """Taps per kernel row in a convolution's im2col rows: KW, but in the (C, KH, KW) order
    (fewer than CHANNELS_LAST_MIN channels) with unit dilation the next power of two where
    that adds at most 1/7 (a ResNet stem's 7 -> 8: each kernel row one 8-byte vector copy,
    not 7 byte copies). The added taps read real pixels (or the zero point past the border)
    and meet a weight equal to its zero point: (w - zero point) is 0, so they add nothing."""
    if unfolds_channels_last(channels) or dilation != 1 or kw < 2:
        return kw
    wide = 1 << (kw - 1).bit_length()
    return wide if 7 * wide <= 8 * kw else kw


def conv_weight_columns(w: np.ndarray, taps: int, zero_point: np.ndarray) -> np.ndarray:
    """A convolution's [O, C, KH, KW] weight as the [K, O] matrix its im2col rows multiply:
    K in (KH, KW, C) order when C >= CHANNELS_LAST_MIN, else (C, KH, `taps`), the taps past
    KW holding the weight's zero point of their output channel (`zero_point`, [O])."""
    if unfolds_channels_last(w.shape[1]):
        w = w.transpose(0, 2, 3, 1)
    elif taps > w.shape[3]:
        fill = np.broadcast_to(zero_point.reshape(-1, 1, 1, 1), (*w.shape[:3], taps))
        w = np.concatenate([w, fill[..., w.shape[3] :].astype(w.dtype)], axis=3)
    return w.reshape(w.shape[0], -1).T


def _row_zero_point(z: Value | None) -> bool:
    """A's zero point is absent, a scalar, or one per row (a static 1-D vector)."""
    return z is None or z.type.rank == 0 or (z.type.rank == 1 and z.type.is_static)


def pack_integer(w: np.ndarray, kernel: Int8Kernel, nr: int) -> np.ndarray:
    """[K, N] -> [ceil(N / nr), ceil(K / G), nr, G] (G = kernel.group; [.., K, nr] when 1)."""
    g = kernel.group
    k, n = w.shape
    kp, n_pad = -(-k // g) * g, -(-n // nr) * nr
    padded = np.zeros((kp, n_pad), kernel.weight_dtype)
    padded[:k, :n] = w
    if g == 1:
        return np.ascontiguousarray(padded.reshape(kp, n_pad // nr, nr).transpose(1, 0, 2))
    blocks = padded.reshape(kp // g, g, n_pad // nr, nr)
    return np.ascontiguousarray(blocks.transpose(2, 0, 3, 1))


def packed_integer_weights(
    graph: Graph, live: set[Node], target: TargetSpec
) -> dict[Value, PackedWeight]:
    """8-bit weight constants every use of which is the weight of a live integer product that
    packs it the same way (`integer_weight`), packed for the CPU kernel."""
    packed: dict[Value, PackedWeight] = {}
    for c in graph.constants.values():
        if c.dtype not in (DType.UINT8, DType.INT8) or not c.uses or c.is_graph_output:
            continue
        plans = []
        for use in c.uses:
            ops = _INTEGER_OPERANDS.get((use.node.domain, use.node.op_type))
            if use.node not in live or ops is None or use.index != ops[1]:
                break
            plan = integer_weight(use.node, target)
            if plan is None:
                break
            plans.append(plan)
        else:
            first = plans[0]
            if all(
                p.kernel == first.kernel and p.nr == first.nr and np.array_equal(p.zeta, first.zeta)
                for p in plans
            ):
                packed[c] = PackedWeight(first.packed, first.nr)
    return packed


def emit_packed_integer_matmul(ctx: LowerContext) -> relax.Expr:
    """The int32 product of an integer-product node whose weight is bound packed
    (`packed_integer_weights`): `integer_product` of its A."""
    ai, bi, zai, _ = _INTEGER_OPERANDS[(ctx.node.domain, ctx.node.op_type)]
    weight = ctx.node.input(bi)
    plan = integer_weight(ctx.node, ctx.target)
    if weight is None or plan is None:
        ctx.fail("the weight is bound packed but the node is not a packable integer product")
    at = ctx.in_type(ai)
    za_known = ctx.const(zai) if ctx.has(zai) else np.zeros((), np.int64)
    za_rank = ctx.in_type(zai).rank if ctx.has(zai) else 0
    zero_point = RowZeroPoint(
        known=za_known,
        expr=None if za_known is not None else ctx.arg(zai),
        rank=za_rank,
        per_row=ctx.has(zai) and za_rank == 1 and ctx.in_type(zai).numel != 1,
    )
    return integer_product(
        ctx, ctx.arg(ai), str(at.dtype), at.shape[-2] == 1, plan, weight, zero_point
    )


@dataclass(frozen=True)
class RowZeroPoint:
    """A's zero point for `integer_product`: `known` its constant value (None: the relax
    `expr` gives it at run time), of `rank` 0 or 1, one per row when `per_row`."""

    known: np.ndarray | None
    expr: relax.Expr | None = None
    rank: int = 0
    per_row: bool = False


def integer_product(
    ctx: LowerContext,
    a: relax.Expr,
    a_dtype: str,
    single: bool,
    plan: IntegerWeight,
    weight: Value,
    zero_point: RowZeroPoint,
) -> relax.Expr:
    """A [..., rows, K] (8-bit, `a_dtype`; `single`: one row) times the packed `weight` of
    `plan`, in int32: one TE kernel, the tile then the zero-point corrections (see the section
    doc), rows padded to the tile's MR and clamped like the float32 kernel."""
    from tvm import te, tirx

    kernel, g, nr = plan.kernel, plan.kernel.group, plan.nr
    k_len, n_len = plan.k, plan.n
    k_pad, n_pad = -(-k_len // g) * g, -(-n_len // nr) * nr
    mr, _ = int8_tile(ctx.target, kernel, n_len, single_row=single, nr=nr)
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731

    if k_pad != k_len:

        def pad_k(av: Any) -> Any:
            zero = tirx.const(0, a_dtype)
            return te.compute(
                (*av.shape[:-1], i64(k_pad)),
                lambda *ix: tirx.if_then_else(ix[-1] < k_len, av[ix], zero),
                name="pad_k",
            )

        a = ctx.bb.emit_te(pad_k, a, primfunc_name_hint="pad_k")

    # The corrections: -(za + delta) * colsum[j] + zeta[j] * (K * za - rowsum[i]).
    za_known, za_expr = zero_point.known, zero_point.expr
    needs_rowsum = bool(plan.zeta.any())
    args = [a, ctx.state.value_expr(weight)]
    slots: dict[str, int] = {}

    def add(name: str, expr: relax.Expr) -> None:
        slots[name] = len(args)
        args.append(expr)

    if za_known is not None and za_known.size == 1 and not needs_rowsum:
        za = int(za_known.reshape(-1)[0])
        col = -(za + kernel.a_offset) * plan.colsum.astype(np.int64)
        add("col", relax.const(col.astype(np.int32), "int32"))  # wraps like int32 math
    else:
        add("colsum", relax.const(plan.colsum, "int32"))
        za_arr = za_known.astype(np.int32) if za_known is not None else None
        assert za_arr is not None or za_expr is not None
        add("za", za_expr if za_arr is None else relax.const(za_arr, "int32"))
        if needs_rowsum:
            add("zeta", relax.const(plan.zeta, "int32"))

            def rowsum(av: Any) -> Any:
                r = te.reduce_axis((i64(0), i64(k_pad)), "k")
                return te.compute(
                    av.shape[:-1],
                    lambda *ix: te.sum(av[(*ix, r)].astype("int32"), axis=r),
                    name="rowsum",
                )

            add("rowsum", ctx.bb.emit_te(rowsum, a, primfunc_name_hint="rowsum"))

    za_rank, per_row = zero_point.rank, zero_point.per_row

    def compute(av: Any, wv: Any, *extra: Any) -> Any:
        tensors = {name: extra[i - 2] for name, i in slots.items()}
        kk = te.reduce_axis((i64(0), i64(k_pad)), "k")
        *lead, rows, _ = av.shape
        clamp = not (isinstance(rows, tirx.IntImm) and int(rows) % mr == 0)
        padded = (rows + (mr - 1)) // mr * mr if clamp else rows

        def a_at(ix: tuple[Any, ...]) -> Any:
            row = te.min(ix[-2], rows - 1) if clamp else ix[-2]
            return shifted_a(av[(*ix[:-2], row, kk)].astype("int32"), kernel.a_offset)

        def w_at(j: Any) -> Any:
            if g == 1:
                return wv[j // nr, kk, j % nr]
            return wv[j // nr, kk // g, j % nr, kk % g]

        tile = te.compute(
            (*lead, padded, i64(n_pad)),
            lambda *ix: te.sum(a_at(ix) * w_at(ix[-1]).astype("int32"), axis=kk),
            name="matmul_integer_tile",
        )

        def za_at(row: Any) -> Any:
            z = tensors["za"]
            if per_row:
                return z[row].astype("int32")
            return z[(0,) * za_rank].astype("int32")

        def correct(*ix: Any) -> Any:
            row, col = ix[-2], ix[-1]
            if "col" in tensors:
                return tile(*ix) + tensors["col"][col]
            za = za_at(row)
            y = tile(*ix) - (za + kernel.a_offset) * tensors["colsum"][col]
            if "rowsum" in tensors:
                rs = tensors["rowsum"][ix[:-1]]
                y = y + tensors["zeta"][col] * (za * k_len - rs)
            return y

        return te.compute((*lead, rows, i64(n_len)), correct, name="matmul_integer")

    return ctx.bb.emit_te(compute, *args, primfunc_name_hint="matmul_integer")


# ----------------------------------------------------------------- matmul family


@lowers("MatMul")
def lower_matmul(ctx: LowerContext) -> relax.Expr:
    dt = ctx.in_type(0).dtype
    weight = ctx.node.input(1)
    if weight is not None and weight in ctx.state.panels:
        return emit_packed_matmul(ctx, ctx.arg(0), weight)
    a, b = ctx.arg(0), ctx.arg(1)
    if dt in (DType.FLOAT16, DType.BFLOAT16):
        return R.astype(R.matmul(R.astype(a, "float32"), R.astype(b, "float32")), str(dt))
    return R.matmul(a, b)


@lowers("MatMulInteger")
def _matmul_integer(ctx: LowerContext) -> relax.Expr:
    weight = ctx.node.input(1)
    if weight is not None and weight in ctx.state.panels:
        return emit_packed_integer_matmul(ctx)
    a, b = ctx.arg(0), ctx.arg(1)
    at, bt = ctx.in_type(0), ctx.in_type(1)
    if not ctx.has(2) and not ctx.has(3) and at.dtype == bt.dtype == DType.INT8:
        if not ctx.options.widen_int8_matmul:
            # The int8 x int8 -> int32 product is emitted as one matmul (VNNI-friendly).
            return R.matmul(a, b, out_dtype="int32")
        ctx.notes.append(
            "int8 x int8 matmul widened to int32 operands (TVM 0.27 dlight Matmul rule "
            "crashes on the int8 form on CUDA); exact, but without int8 tensor cores"
        )
    a32 = R.astype(a, "int32")
    b32 = R.astype(b, "int32")
    if ctx.has(2):
        zp = R.astype(ctx.arg(2), "int32")
        zt = ctx.in_type(2)
        if zt.rank == 1 and zt.shape[0] != 1:
            shape = [1] * at.rank
            shape[-2] = -1
            zp = R.reshape(zp, shape)
        a32 = R.subtract(a32, zp)
    if ctx.has(3):
        b32 = R.subtract(b32, R.astype(ctx.arg(3), "int32"))
    return R.matmul(a32, b32, out_dtype="int32")


@lowers("Gemm")
def _gemm(ctx: LowerContext) -> relax.Expr:
    a = ctx.arg(0)
    dt = ctx.in_type(0).dtype
    weight = ctx.node.input(1)
    if weight is not None and weight in ctx.state.panels and not ctx.attrs["transA"]:
        y = emit_packed_matmul(ctx, a, weight)  # transB is in the packing
    else:
        if ctx.attrs["transA"]:
            a = R.permute_dims(a, [1, 0])
        b = ctx.arg(1)
        if ctx.attrs["transB"]:
            b = R.permute_dims(b, [1, 0])
        y = R.matmul(a, b)
    if ctx.attrs["alpha"] != 1.0:
        y = R.multiply(y, ctx.scalar(ctx.attrs["alpha"], dt))
    if ctx.has(2):
        c = ctx.arg(2)
        if ctx.attrs["beta"] != 1.0:
            c = R.multiply(c, ctx.scalar(ctx.attrs["beta"], dt))
        y = R.add(y, c)
    return y


@lowers("Einsum")
def _einsum(ctx: LowerContext) -> relax.Expr:
    return R.einsum([ctx.arg(i) for i in range(len(ctx.args))], ctx.attrs["equation"])
