"""Matrix products on CPUs: a register-blocked micro-kernel with the epilogue fused into it.

The tile is MR rows x NR columns of accumulators kept in vector registers (AVX-512: 8 x 48
floats = 24 zmm; AVX2: 4 x 24 = 12 ymm; NEON: 8 x 12 = 24 q-registers), the reduction is
unrolled by 4, and every output tile is one parallel task. Constant weights arrive packed as
`[N / NR, K, NR]` (the lowering packs them at compile time with `panel_width`), so the NR
columns a tile needs are contiguous for every k; with several rows, the panel loop runs
outside the row tiles (one parallel task per panel), so a panel comes from memory once and
from cache for every row tile, and a decoded panel (DECODED_PANEL) is decoded once into a
scratch the row tiles share. A one-row product (a decode step) reads the same panels, a
tile spanning whole panels (`single_row_span`), so a model's prefill and decode functions
share one packed copy of each weight. Elementwise work after the product (bias, GELU,
SiLU, ReLU, a residual add) is computed on the tile while it is still in registers and
written once. Measured against ONNX Runtime in bench/RESULTS.md.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.schedule import SBlockRV

from ecograph.backends.tvm.targets import TargetSpec

from .analysis import (
    MatmulInfo,
    decodes_weights,
    iter_kinds,
    matmul_info,
    split_epilogue,
    static_int,
)
from .base import CPURule, schedule_injective

# TVM 0.27 puts a kernel-local array on the stack only if it is a "global"-scope buffer of
# under 1,024 bytes; anything else becomes a heap workspace whose pointer LLVM cannot prove
# distinct from the inputs, so the accumulators are stored and reloaded around every FMA
# (measured: 3.4 ms instead of 1.3 ms for 128x384x1536). Tiles stay under this size.
STACK_BYTES = 1024
# Packed weights of at least this many column panels run panel-outside with several rows
# (below: the panels are the parallel tasks, too few for a many-core pool, and so few
# columns' weights stay in cache in either order).
PANEL_OUTER_MIN = 16
# The block name of a product's weights decoded into column panels, [panels, K, NR] floats
# (ops/matmul.py, `emit_panel_matmul(decode_once=True)`): the schedule computes one panel
# at a time into a scratch buffer that every row tile then reads, so each weight is decoded
# once per product instead of once per MR rows.
DECODED_PANEL = "decoded_panel"


def lanes_for(spec: TargetSpec, dtype_bits: int = 32) -> int:
    """Elements of `dtype_bits` per vector register."""
    return max(1, spec.vector_bits // dtype_bits)


def accumulator_budget(spec: TargetSpec) -> int:
    """Vector registers a micro-kernel may hold accumulators in (the rest hold operands):
    32-register ISAs (AVX-512, NEON) 24, 16-register ones (AVX, AVX2, SSE) 12."""
    return 24 if spec.vector_bits == 512 or spec.family == "arm" else 12


def panel_width(n: int | None, lanes: int, *, single_row: bool) -> int:
    """Columns per register tile (NR), a multiple of the vector width.

    Several rows: the first of 3, 4, 2, 5, 6, 1 vectors that divides N (no tail), else 3
    vectors with a tail. One row (a GEMV, e.g. an LLM decode step) over operands not packed
    for it: 4 vectors, so four independent FMA chains hide the FMA latency, with a tail tile
    when N is not a multiple (measured 1x256x688 on AVX-512: 64 columns 0.010 ms, 16 columns
    0.029 ms). Constant weights are packed at the several-row width for one row too, the
    tile spanning whole panels (`single_row_span`)."""
    if single_row:
        width = lanes * 4
        return width if n is None else min(width, -(-n // lanes) * lanes)
    if n is not None:
        for r in (3, 4, 2, 5, 6, 1):
            if n % (lanes * r) == 0:
                return lanes * r
    return lanes * 3


def register_tile(spec: TargetSpec, n: int | None, *, single_row: bool, nr: int | None = None,
                  acc_bytes: int = 4) -> tuple[int, int]:  # fmt: skip
    """(MR, NR): rows and columns of the accumulator tile for an N-column product.

    NR is `nr` when the weights are already packed in panels of that width, else
    `panel_width`. MR fills the register budget, at most 8 rows, and keeps the tile on the
    stack (under STACK_BYTES). The lowering pads a product's rows to a multiple of MR with
    the same function, so the schedule needs no row predicate."""
    lanes = lanes_for(spec, acc_bytes * 8)
    nr = nr or panel_width(n, lanes, single_row=single_row)
    if single_row:
        return 1, nr
    vectors = max(1, nr // lanes)
    mr = min(8, accumulator_budget(spec) // vectors, (STACK_BYTES - 1) // (nr * acc_bytes))
    return max(1, mr), nr


def _k_unroll(k_extent: int | None) -> int:
    if k_extent is None:
        return 1
    return next(u for u in (4, 2, 1) if k_extent % u == 0)


def single_row_span(spec: TargetSpec, n: int | None, nr: int, decoded: bool) -> int:
    """Column panels of width `nr` one single-row tile spans; 0 when N is not a whole number
    of such spans (the product then packs its weight at the single-row width instead).

    Weights are packed at the several-row width (3 vectors on x86) wherever a single-row
    tile can read them, so prefill and decode share one packed copy. A GEMV over whole
    weights (float32, 8-bit codes) wants 4 vectors of accumulator chains to hide the FMA
    latency, so over 3-vector panels it takes two panels at once; weights decoded in the
    loop (`decoded`: 4-bit codes unpacked, palette lookups) are bound by the decoding, and 3
    vectors are enough. Measured on AVX2, one row, median ms of 4 vectors / 3 vectors in 2
    panels / 3 vectors in 1 panel: 576 x 3072 fp32 0.116 / 0.101 / 0.118, int8-weight
    0.094 / 0.099 / 0.114, int4 0.147 / 0.162 / 0.148, palette4 0.405 / 0.419 / 0.398."""
    lanes = lanes_for(spec)
    want = (3 if decoded else 4) * lanes
    if nr >= want:
        return 1
    span = -(-want // nr)
    if n is None or n % nr or (n // nr) % span or span * nr > 8 * lanes:
        return 0
    return span


class Matmul(CPURule):
    """`C[.., i, j] = sum_k A[.., i, k] * B[.., k, j]` plus elementwise epilogue blocks."""

    name = "matmul"

    def apply(self, func: tirx.PrimFunc, target: Any, tunable: bool) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = self._find(sch)
        if found is None:
            return None
        for fuse_epilogue in (True, False):
            sch = s_tir.Schedule(func)
            found = self._find(sch)
            assert found is not None
            info, epilogue, decoder = found
            epilogue, rest = split_epilogue(sch, epilogue)
            try:
                self._schedule(sch, info, epilogue, fuse_epilogue, decoder)
                for blk in rest:  # elements that read no product: loops of their own
                    schedule_injective(sch, blk, lanes_for(self.spec))
            except s_tir.ScheduleError:
                continue
            return sch
        return None

    def _find(
        self, sch: s_tir.Schedule
    ) -> tuple[MatmulInfo, list[SBlockRV], SBlockRV | None] | None:
        """The product, its epilogue blocks and its DECODED_PANEL block (None if it has
        none; `_schedule` inlines one into a single-row product, which reads each weight once
        anyway)."""
        blocks = self.blocks(sch)
        reductions = [b for b in blocks if "R" in iter_kinds(sch, b)]
        if len(reductions) != 1:
            return None
        block = reductions[0]
        names = [sch.get(b).name_hint for b in blocks]
        at = names.index(sch.get(block).name_hint)
        before, after = blocks[:at], blocks[at + 1 :]
        # Producers fused into this kernel (a transpose, a dequantization) are inlined into the
        # product, except a decoded weight panel; if one cannot be, this is not a kernel this
        # rule understands.
        decoder = None
        for prod in reversed(before):
            if iter_kinds(sch, prod).strip("S"):
                return None
            if sch.get(prod).name_hint == DECODED_PANEL and decoder is None:
                decoder = prod
                continue
            try:
                sch.compute_inline(prod)
            except s_tir.ScheduleError:
                return None
        if any(iter_kinds(sch, b).strip("S") for b in after):
            return None
        info = matmul_info(sch, block)
        if info is None:
            return None
        return info, after, decoder

    def _schedule(
        self,
        sch: s_tir.Schedule,
        info: MatmulInfo,
        epilogue: list[SBlockRV],
        fuse: bool,
        decoder: SBlockRV | None = None,
    ) -> None:
        spec = self.spec
        lanes = lanes_for(spec)
        block = info.block
        loops = sch.get_loops(block)
        extent_exprs = [sch.get(lp).extent for lp in loops]
        extents = [static_int(e) for e in extent_exprs]
        # Only the innermost row iter is tiled; other row iters stay outer loops like batch
        # iters, so a tile never straddles them (the epilogue placed at the tile must cover
        # exactly the tile's rows; over a fused (batch, row) loop it would not).
        row_pos = info.m[-1] if info.m else None
        outer_pos = sorted(info.batch + info.m[:-1])
        single_row = row_pos is None or extents[row_pos] == 1
        mr, nr = register_tile(spec, extents[info.j], single_row=single_row, nr=info.packed_nr)
        n_extent = extents[info.j]
        if n_extent is not None and n_extent < nr:
            # Fewer columns than one tile (a packed weight's panel may be wider than N): the
            # tile is N wide, so no tail predicate lands in the vector loop (TVM 0.27 fails to
            # build that: "variables ... are not passed in as API arguments").
            nr = n_extent
        if nr % lanes:
            lanes = max(d for d in range(1, lanes + 1) if nr % d == 0)
        ku = _k_unroll(extents[-1])

        batch = [loops[i] for i in outer_pos]
        m = loops[row_pos] if row_pos is not None else sch.add_unit_loop(loops[info.j])
        io, ii = sch.split(m, [None, mr])
        span = 1
        if single_row and info.packed_nr:
            decoded = decodes_weights(info.b, info.spatial[info.j])
            span = single_row_span(spec, n_extent, nr, decoded) or 1
        if span > 1:
            jo, jp, ji = sch.split(loops[info.j], [None, span, nr])
        else:
            jo, ji = sch.split(loops[info.j], [None, nr])
        jb, jv = sch.split(ji, [None, lanes])
        cols = [jp, jb] if span > 1 else [jb]  # the tile's vectors, unrolled
        ko, ki = sch.split(loops[-1], [None, ku])
        if decoder is not None and single_row:
            sch.compute_inline(decoder)
            decoder = None
        panels = -(-n_extent // nr) if n_extent is not None else None
        panel_outer = decoder is not None or (
            info.packed_nr is not None and panels is not None and panels >= PANEL_OUTER_MIN
        )
        if single_row or not panel_outer:
            sch.reorder(*batch, io, jo, ko, ki, ii, *cols, jv)
            tasks, tile = [*batch, io, jo], jo
        else:
            # Weights in column panels, several rows: a panel outside the row tiles, so each
            # panel is read from memory once and then from cache by every row tile (row tiles
            # outside would stream the whole weight matrix once per MR rows: 128 x 2048 x 5632
            # fp32 took 155 ms so, 34 ms panel-outside, one AVX2 core). A decoded panel
            # (DECODED_PANEL) is decoded once into a [K, NR] scratch the row tiles read.
            sch.reorder(*batch, jo, io, ko, ki, ii, *cols, jv)
            tasks, tile = [*batch, jo], io
            if decoder is not None:
                sch.compute_at(decoder, jo)
                self._vectorize_tail(sch, decoder, lanes)

        if fuse and epilogue:
            for blk in epilogue[:-1]:
                sch.compute_inline(blk)
            last = epilogue[-1]
            sch.reverse_compute_at(last, tile)
            sch.set_scope(block, 0, "global")
            out = last
        else:
            out = sch.cache_write(block, 0, "global")
            sch.reverse_compute_at(out, tile)
        # The accumulators of one tile: MR x NR, on the stack, promoted to registers by LLVM.
        # Buffer compaction would size this buffer by the rows a tile may touch, which it
        # cannot bound when M is symbolic, leaving a whole-matrix array.
        rank = len(info.spatial)
        width = span * nr  # the tile's columns

        def tile_index(*ix: Any) -> tuple[Any, Any]:
            col = ix[rank - 1]
            row = ix[row_pos] if row_pos is not None else tirx.const(0, str(col.ty))
            return row % mr, col % width

        sch.transform_layout(block, ("write", 0), tile_index, assume_injective_transform=True)
        self._vectorize_tail(sch, out, lanes)
        sch.parallel(sch.fuse(*tasks) if len(tasks) > 1 else tasks[0])
        if lanes > 1:
            sch.vectorize(jv)
        for col in cols:
            sch.unroll(col)
        sch.unroll(ii)
        sch.unroll(ki)
        init = sch.decompose_reduction(block, ko)
        self._vectorize_tail(sch, init, lanes)
        if not (fuse and epilogue):
            for blk in epilogue:
                schedule_injective(sch, blk, lanes)

    @staticmethod
    def _vectorize_tail(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
        """Vectorize a tile-local block's innermost loop by `lanes` (left scalar if it cannot)."""
        inner = sch.get_loops(block)[-1]
        extent = static_int(sch.get(inner).extent)
        if extent is None or extent % lanes or lanes == 1:
            return
        if extent > lanes:
            _, inner = sch.split(inner, [None, lanes])
        sch.vectorize(inner)
