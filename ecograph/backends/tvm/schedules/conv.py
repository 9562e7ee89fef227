"""2-D convolutions on CPUs: register tiles of output channels or output columns, with the
padding copy (by channels; by width it is a kernel of its own, ops/padding.py) and the
element-wise epilogue in the same kernel.

Two forms, both `C[n, o, oh, ow] += a * b` over (input channel, kernel row, kernel column):

- by channels (regular convs, grouped ones with a multiple of the vector width per group): the
  weights arrive packed `[O / B, I, KH, KW, B]` (`ops/conv.py` packs them at compile time), so
  the B output channels of a block are one or two vectors for every (i, kh, kw). A tile is B
  channels x `owb` output columns of accumulators; each step loads the weight vectors once
  and multiplies them by `owb` broadcast input values, so the input's layout (NCHW) and the
  stride do not matter. The epilogue writes the tile to NCHW vectorized along its columns
  (contiguous there; measured faster than along channels, a channel apart).
- by width (depthwise and other grouped convs; on AVX-512 also unit-stride 1x1 convs of few input
  channels over rows of whole vectors, `prefers_width`): a tile is `t` output channels x `owb`
  consecutive output columns, vectorized along the columns; every load the columns index reads
  consecutive elements (the lowering splits strided columns into phases), and each weight is a
  broadcast.

The accumulators live in a "global" scratch under 1,024 bytes, which TVM 0.27 puts on the
stack and LLVM keeps in registers (see matmul.py). Output channels and columns are padded to
whole tiles by the lowering (zero weights; a padding copy wide enough, or clamped columns), so
no vectorized loop carries a predicate; the epilogue writes only the real outputs. Tasks are
(image, channel block, output row, column block), run in parallel when the conv is large
enough to pay for the thread-pool launch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tvm_ffi
from tvm import ir, s_tir, tirx
from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize
from tvm.s_tir.schedule import LoopRV, SBlockRV

from ecograph.backends.tvm.targets import TargetSpec

from .analysis import iter_kinds, loads_in, loops_match_iters, split_epilogue, static_int, uses
from .base import CPURule, schedule_injective
from .loops import has_select, vector_safe
from .matmul import STACK_BYTES, accumulator_budget, lanes_for

# Multiply-adds from which a conv runs its tasks in parallel: a thread-pool launch costs ~1 us
# idle and 5-9 us with the other core busy (loops.py); 128K multiply-adds take ~3 us on one
# AVX-512 core at the speed these tiles reach.
PARALLEL_MIN_MACS = 1 << 17


def channel_block(spec: TargetSpec, per_group: int) -> int:
    """B, the output channels of one weight block (by-channels form): one vector, or two on
    16-register ISAs (AVX2, SSE) when the group's channels are a multiple of two vectors (two
    weight vectors per broadcast halve the broadcasts there)."""
    lanes = lanes_for(spec)
    if accumulator_budget(spec) < 24 and per_group % (2 * lanes) == 0:
        return 2 * lanes
    return lanes


def best_tile(extent: int, limit: int) -> int:
    """The tile for `extent` columns, at most `limit`: the largest divisor from limit / 2 up
    (no tail); else the width in [limit / 2, limit] that pads `extent` least."""
    limit = max(1, min(limit, extent))
    low = max(1, (limit + 1) // 2)
    for d in range(limit, low - 1, -1):
        if extent % d == 0:
            return d
    return min(range(limit, low - 1, -1), key=lambda d: -(-extent // d) * d)


def channel_tile(
    spec: TargetSpec, block: int, columns: int, stride: int = 1, kernel_w: int = 1
) -> int:
    """owb, the output columns of a by-channels tile of `block` channels: the accumulators
    (block / lanes vectors per column) fill the register budget and stay under STACK_BYTES;
    on AVX-512 the input columns `stride` apart that `kernel_w` kernel columns read fit in
    the registers too."""
    vectors = max(1, block // lanes_for(spec))
    limit = min(accumulator_budget(spec) // vectors, (STACK_BYTES - 1) // (block * 4))
    if spec.vector_bits == 512:
        # LLVM loads each input column a tile's unrolled kernel columns read once and keeps
        # it in a register: (owb - 1) * stride + kernel_w broadcasts beside the owb * vectors
        # accumulators and the weight vectors. Past the 32 registers it spills them to the
        # stack and reloads them right away (store-to-load forwarding of zmm registers): the
        # 7x7 / 2 RGB stem of ResNet-18 took 2.1-2.4 ms with 14 columns, 1.4-1.8 with 8 (A/B
        # runs, two Zen 4 threads). On AVX2 smaller tiles measured slower (that stem 1.4 ->
        # 2.3 ms), so they keep theirs.
        fit = (32 - vectors - kernel_w + stride) // (vectors + stride)
        limit = min(limit, fit)
    return best_tile(columns, max(1, limit))


def width_tile(spec: TargetSpec, columns: int) -> int:
    """owb of a by-width tile: a row of at most one vector whole; else the widest multiple of
    the vector width up to four vectors that divides the row; else two vectors (the lowering
    pads the row). Vectors of other widths compile to slow code (measured 3x slower for 28
    columns of 16 lanes)."""
    lanes = lanes_for(spec)
    if columns <= lanes:
        return columns
    for d in range(4 * lanes, lanes - 1, -lanes):
        if columns % d == 0:
            return d
    return 2 * lanes


def width_channels(spec: TargetSpec, channels: int, columns: int) -> int:
    """t, the output channels of a by-width tile of `columns` columns: a divisor of
    `channels` whose accumulators fill the register budget but for one input row vector
    each, on the stack."""
    vectors = -(-columns // lanes_for(spec))
    registers = (accumulator_budget(spec) - vectors) // vectors
    limit = max(1, min(registers, (STACK_BYTES - 1) // (4 * columns)))
    return max(d for d in range(1, min(limit, channels) + 1) if channels % d == 0)


# Input channels (per group) up to which a 1x1 conv over rows of whole vectors runs by width on
# AVX-512 (`prefers_width`).
WIDTH_MAX_CHANNELS = 64


def prefers_width(
    spec: TargetSpec, stride: int, columns: int, pointwise: bool, channels: int
) -> bool:
    """True if a conv whose groups allow both forms runs faster by width: on AVX-512, a 1x1
    conv of unit stride over rows of whole vectors reading at most WIDTH_MAX_CHANNELS input
    channels. Measured on two Zen 4 threads, one-conv models, by width vs by channels (ms):
    32 -> 16 over 112 x 112 0.098 vs 0.124, 64 -> 64 over 32 x 32 0.077 vs 0.079; with more
    input channels by channels is as fast or faster (256 -> 64 over 32 x 32 0.32 vs 0.21,
    1024 -> 256 over 16 x 16 0.63 vs 0.64), and on rows under a whole vector too (14 x 14
    maps: ResNet-50's 1024 -> 256 1.19 vs 0.49 and 256 -> 1024 0.58 vs 0.52; 16 -> 64 0.028
    vs 0.029). Wider kernels run by channels: by width they read a padded copy, a kernel of its
    own (ops/padding.py), and by channels measured as fast or faster (3x3 16 -> 16 over
    16 x 16 22 vs 25 us, over 32 x 32 43 vs 46, over 64 x 64 130 vs 132; 32 -> 32 over
    32 x 32 113 vs 117). On AVX2 by channels was as fast or faster on every shape measured
    (16 registers hold fewer rows)."""
    if spec.vector_bits != 512 or stride != 1 or not pointwise:
        return False
    return columns % lanes_for(spec) == 0 and channels <= WIDTH_MAX_CHANNELS


@dataclass
class ConvInfo:
    """A conv reduction block `C[n, o, oh, ow] += a * b` and how it vectorizes."""

    block: SBlockRV
    by_channels: bool  # True: b is packed [O / B, .., B] and a reads o only as o // B
    block_width: int  # B (by channels); 0 by width
    extents: list[int | None]  # of (n, o, oh, ow, reductions...)
    window: tuple[int, int] = (1, 1)  # (stride, kernel columns) along ow of the input load


def conv_info(sch: s_tir.Schedule, block: SBlockRV) -> ConvInfo | None:
    """The block as a 2-D convolution in one of the two forms (module doc), or None."""
    if not loops_match_iters(sch, block):
        return None
    kinds = iter_kinds(sch, block)
    if not (kinds.startswith("SSSS") and 1 <= len(kinds) - 4 <= 3 and set(kinds[4:]) == {"R"}):
        return None
    realize = sch.get(block)
    ivars = [iv.var for iv in realize.iter_vars]
    n, o, oh, ow = ivars[:4]
    store = realize.body
    if not isinstance(store, tirx.BufferStore) or realize.init is None:
        return None
    if len(store.indices) != 4 or not all(
        isinstance(ix, tirx.Var) and ix.same_as(v)
        for ix, v in zip(store.indices, ivars[:4], strict=True)
    ):
        return None
    value = store.value
    if not isinstance(value, tirx.Add):
        return None
    acc, prod = value.a, value.b
    if not (isinstance(acc, ir.TensorLoad) and acc.source.same_as(store.buffer)):
        acc, prod = prod, acc
    if not (isinstance(acc, ir.TensorLoad) and acc.source.same_as(store.buffer)):
        return None
    if not isinstance(prod, tirx.Mul) or str(store.buffer.dtype) != "float32":
        return None
    a, b = prod.a, prod.b
    if uses(b, ow):
        a, b = b, a
    if uses(b, ow) or not uses(a, ow) or not uses(b, o) or any(uses(b, v) for v in (n, oh)):
        return None
    extents = [static_int(sch.get(lp).extent) for lp in sch.get_loops(block)]
    if any(e is None for e in extents[1:]):
        return None  # only the batch may be symbolic
    width = _packed_block(b, o)
    if width is not None:
        if extents[1] % width or not _reads_only_block(a, o, width):
            return None
        window = _column_window(a, ow, ivars[4:], extents[4:])
        return ConvInfo(block, True, width, extents, window)
    if _unit_stride_columns(a, ow) and not has_select(a):
        return ConvInfo(block, False, 0, extents)
    return None


def _column_window(
    a: Any, ow: tirx.Var, reductions: list[tirx.Var], extents: list[int | None]
) -> tuple[int, int]:
    """(stride, kernel columns) of the input load that `ow` indexes: the coefficient of `ow`
    in its column index and the extent of the reduction iter beside it there (1, 1 when
    that index is not `ow * s + kw`)."""
    from tvm.sym.pattern import detect_linear_equation

    loads = [ld for ld in loads_in(a) if uses(ld.indices[-1], ow)]
    if len(loads) != 1:
        return 1, 1
    column = loads[0].indices[-1]
    near = [(r, e) for r, e in zip(reductions, extents, strict=True) if uses(column, r)]
    coefs = detect_linear_equation(column, [ow])
    if len(near) != 1 or len(coefs) != 2 or not isinstance(coefs[0], tirx.IntImm):
        return 1, 1
    return max(1, int(coefs[0].value)), near[0][1] or 1


def _packed_block(b: Any, o: tirx.Var) -> int | None:
    """B if `b` is one load of a buffer indexed [o // B, ..., o % B] (o nowhere else)."""
    if not isinstance(b, ir.TensorLoad) or len(b.indices) < 3:
        return None
    first, last = b.indices[0], b.indices[-1]
    if not (isinstance(first, tirx.FloorDiv) and isinstance(last, tirx.FloorMod)):
        return None
    if not (first.a.same_as(o) and last.a.same_as(o)):
        return None
    if not (isinstance(first.b, tirx.IntImm) and isinstance(last.b, tirx.IntImm)):
        return None
    width = int(last.b.value)
    if int(first.b.value) != width or any(uses(ix, o) for ix in b.indices[1:-1]):
        return None
    return width


def _reads_only_block(expr: Any, o: tirx.Var, width: int) -> bool:
    """True if `expr` uses `o` only as `o // m` with m a multiple of `width` (the same for
    every channel of a block: a group of them)."""
    ok = True

    def visit(node: Any) -> Any:
        nonlocal ok
        if isinstance(node, tirx.FloorDiv) and node.a.same_as(o):
            if not (isinstance(node.b, tirx.IntImm) and int(node.b.value) % width == 0):
                ok = False
            return tvm_ffi.WalkResult.SKIP  # this use of o is the block's, allowed
        if isinstance(node, tirx.Var) and node.same_as(o):
            ok = False
        return None

    tvm_ffi.structural_walk(expr, visit, order="pre")
    return ok


def _unit_stride_columns(expr: Any, ow: tirx.Var) -> bool:
    """True if every load in `expr` that `ow` indexes reads consecutive elements along it:
    `ow` only in the last index, as `ow + c` with c free of ow."""
    for load in loads_in(expr):
        if not uses(load.indices, ow):
            continue
        if any(uses(ix, ow) for ix in load.indices[:-1]):
            return False
        last = load.indices[-1]
        if isinstance(last, tirx.Var) and last.same_as(ow):
            continue
        if not isinstance(last, tirx.Add):
            return False
        term, rest = (last.a, last.b) if isinstance(last.a, tirx.Var) else (last.b, last.a)
        if not (isinstance(term, tirx.Var) and term.same_as(ow)) or uses(rest, ow):
            return False
    return True


class Conv(CPURule):
    """2-D convolutions in the two register-tiled forms of the module doc, with the padding
    copy before and element-wise epilogue blocks after."""

    name = "conv"

    def apply(self, func: tirx.PrimFunc, target: Any, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or self._find(s_tir.Schedule(func)) is None:
            return None
        for fuse_epilogue in (True, False):
            sch = s_tir.Schedule(func)
            found = self._find(sch)
            assert found is not None
            info, before, after = found
            after, rest = split_epilogue(sch, after)
            try:
                self._schedule(sch, info, before, after, fuse_epilogue, rest)
            except s_tir.ScheduleError:
                continue
            return sch
        return None

    def _find(self, sch: s_tir.Schedule) -> tuple[ConvInfo, list[SBlockRV], list[SBlockRV]] | None:
        blocks = self.blocks(sch)
        reductions = [b for b in blocks if "R" in iter_kinds(sch, b)]
        if len(reductions) != 1:
            return None
        block = reductions[0]
        at = [sch.get(b).name_hint for b in blocks].index(sch.get(block).name_hint)
        before, after = blocks[:at], blocks[at + 1 :]
        if any(iter_kinds(sch, b).strip("S") for b in before + after):
            return None
        info = conv_info(sch, block)
        if info is None or self.tiles(info) is None:
            return None
        return info, before, after

    def tiles(self, info: ConvInfo) -> tuple[int, int] | None:
        """(output channels, output columns) of a register tile; None when the columns have
        no divisor near the wanted width (the lowering pads them; other producers may not)."""
        _, channels, _, columns, *_ = info.extents
        assert channels is not None and columns is not None
        if info.by_channels:
            oc_tile = info.block_width
            ow_tile = channel_tile(self.spec, oc_tile, columns, *info.window)
        else:
            ow_tile = width_tile(self.spec, columns)
        if columns % ow_tile:
            wanted = ow_tile
            ow_tile = max(d for d in range(1, ow_tile + 1) if columns % d == 0)
            if 2 * ow_tile < wanted:
                return None
        if not info.by_channels:
            oc_tile = width_channels(self.spec, channels, ow_tile)
        return oc_tile, ow_tile

    def _schedule(
        self,
        sch: s_tir.Schedule,
        info: ConvInfo,
        before: list[SBlockRV],
        after: list[SBlockRV],
        fuse: bool,
        rest: list[SBlockRV],
    ) -> None:
        """`after`: the epilogue computed at the tiles; `rest`: blocks after it that write
        elements reading no product (analysis.split_epilogue), loops of their own."""
        lanes = lanes_for(self.spec)
        block = info.block
        n, o, oh, ow, *red = sch.get_loops(block)
        _, channels, rows, columns, *rext = info.extents
        assert channels is not None and rows is not None and columns is not None
        tiles = self.tiles(info)
        assert tiles is not None
        oc_tile, ow_tile = tiles
        oo, oi = sch.split(o, [None, oc_tile])
        wo, wi = sch.split(ow, [None, ow_tile])
        if info.by_channels:
            vec_outer, vec = self._split_vector(sch, oi, oc_tile, lanes)
            sch.reorder(n, oo, oh, wo, *red, wi, *vec_outer, vec)
            unrolled = [wi, *vec_outer]
        else:
            vec_outer, vec = self._split_vector(sch, wi, ow_tile, lanes)
            sch.reorder(n, oo, oh, wo, *red, oi, *vec_outer, vec)
            unrolled = [oi, *vec_outer]

        if fuse and after:
            for blk in after[:-1]:
                sch.compute_inline(blk)
            epilogue = [after[-1]]
        else:
            epilogue = after[:1]
        out = epilogue[0] if epilogue else sch.cache_write(block, 0, "global")
        sch.reverse_compute_at(out, wo)
        sch.set_scope(block, 0, "global")

        def tile_index(*ix: Any) -> tuple[Any, Any]:
            if info.by_channels:
                return ix[3] % ow_tile, ix[1] % oc_tile
            return ix[1] % oc_tile, ix[3] % ow_tile

        # The tile's accumulators, on the stack (module doc).
        sch.transform_layout(block, ("write", 0), tile_index, assume_injective_transform=True)
        batch = info.extents[0]
        macs = (batch or 1) * channels * rows * columns
        for e in rext:
            macs *= e or 1
        tasks = sch.fuse(n, oo, oh, wo)
        parallel = macs >= PARALLEL_MIN_MACS or batch is None
        if parallel:
            sch.parallel(tasks)
        sch.vectorize(vec)
        for lp in unrolled:
            sch.unroll(lp)
        if red:
            sch.unroll(red[-1])
        sch.decompose_reduction(block, red[0])
        self._vectorize_epilogue(sch, out, lanes)
        for blk in before:
            schedule_injective(sch, blk, lanes, parallel=parallel)
        if not (fuse and after):
            for blk in after[1:]:
                schedule_injective(sch, blk, lanes, parallel=parallel)
        for blk in rest:
            schedule_injective(sch, blk, lanes, parallel=parallel)

    @staticmethod
    def _split_vector(
        sch: s_tir.Schedule, loop: LoopRV, extent: int, lanes: int
    ) -> tuple[list[LoopRV], LoopRV]:
        """Whole vectors of `lanes` when `extent` is a multiple, else one vector of `extent`
        (LLVM splits an odd width into legal pieces)."""
        if extent > lanes and extent % lanes == 0:
            outer, vec = sch.split(loop, [None, lanes])
            return [outer], vec
        return [], loop

    @staticmethod
    def _vectorize_epilogue(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
        """Vectorize the epilogue's innermost loop (the tile's columns, contiguous in NCHW)
        when it covers whole tiles and calls only what LLVM vectorizes."""
        inner = sch.get_loops(block)[-1]
        extent = static_int(sch.get(inner).extent)
        value = sch.get(block).body
        if extent is None or extent < 2 or not isinstance(value, tirx.BufferStore):
            return
        pred = get_sblockrealize(sch, block).predicate
        if not (isinstance(pred, tirx.IntImm) and int(pred.value) == 1):
            return  # a tail tile: the predicate would land in the vector loop
        if not vector_safe(value.value):
            return
        if extent > lanes and extent % lanes == 0:
            _, inner = sch.split(inner, [None, lanes])
        sch.vectorize(inner)
