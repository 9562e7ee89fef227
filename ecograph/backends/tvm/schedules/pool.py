"""Pooling on CPUs: max / average / Lp pooling over 1-3 spatial axes, NCHW or channels-last.

A pooling kernel is one sliding-window reduction (each input index `o * stride + r * dilation`
mixes an output iter with a window iter), perhaps a padding block before it and element-wise
blocks after it (the average's division, a fused activation). The output rows run in parallel
(batch, channels and all but the innermost output axis, fused) when the kernel is big enough;
the window loops move outside the innermost output axis, which is vectorized: along the output
width for NCHW (strided reads), along the channels for channels-last (contiguous reads). The
padded rows a row of outputs needs are computed under that row (a few hundred bytes on the
stack): padding inlined into the window would put a select on a vector index into the vector
loop, which TVM scalarizes. Channels-last the padding is inlined: its test is per pixel, the
same for every lane. A channels-last window may also multiply by a weight per window position
and channel (a depthwise convolution, ops/conv.py `emit_depthwise_nhwc`).
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.schedule import SBlockRV

from .analysis import iter_kinds, loads_in, split_epilogue, uses
from .base import CPURule
from .injective import schedule_elementwise
from .loops import (
    has_select,
    inline_spatial,
    iterations,
    lanes_for_block,
    plain_block,
    root_blocks,
    spatial_block,
    vectorize_inner,
    worth_parallel,
)


class Pool(CPURule):
    """One sliding-window reduction with optional padding before and element-wise after."""

    name = "pool"

    def apply(self, func: tirx.PrimFunc, target: Any, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        if pooling_window(sch) is None:
            return None
        for vector in (True, False):
            sch = s_tir.Schedule(func)
            try:
                self._schedule(sch, vector=vector)
            except s_tir.ScheduleError:
                continue
            return sch
        return None

    def _schedule(self, sch: s_tir.Schedule, *, vector: bool) -> None:
        window = pooling_window(sch)
        assert window is not None
        # channels-last, the padding's condition does not vary along the vector (the
        # channels): inlined, it is one scalar test per window position
        pads = set() if channels_last(sch, window) else {
            sch.get(b).name_hint
            for b in sch.get_producers(window)
            if has_select(sch.get(b).body.value)
        }  # fmt: skip
        inline_spatial(sch, keep=pads)
        window = pooling_window(sch)
        assert window is not None
        blocks = root_blocks(sch) or []
        names = [sch.get(b).name_hint for b in blocks]
        at = names.index(sch.get(window).name_hint)
        before, after = blocks[:at], blocks[at + 1 :]
        after, rest = split_epilogue(sch, after)
        for block in rest:  # elements that read no window: loops of their own
            schedule_elementwise(sch, block, self.spec)

        kinds = iter_kinds(sch, window)
        loops = sch.get_loops(window)
        n_spatial = len(kinds.rstrip("R"))
        spatial, reduce = loops[:n_spatial], loops[n_spatial:]
        inner, outer = spatial[-1], spatial[:-1]
        sch.reorder(*outer, *reduce, inner)
        big = worth_parallel(iterations(sch, loops), 0)
        row = None
        if outer:
            row = sch.fuse(*outer) if len(outer) > 1 else outer[0]
            for pad in reversed(before):
                sch.compute_at(pad, row, preserve_unit_loops=True)
            for block in after:
                sch.reverse_compute_at(block, row, preserve_unit_loops=True)
            if big:
                sch.parallel(row)
        else:
            for block in [*before, *after]:
                schedule_elementwise(sch, block, self.spec)
        lanes = lanes_for_block(self.spec, sch, window)
        if vector:
            vectorize_inner(sch, window, inner, lanes)
        if row is None or not vector:
            return
        for block in after:
            block_loops = sch.get_loops(block)
            if len(block_loops) > 1:
                block_lanes = lanes_for_block(self.spec, sch, block)
                vectorize_inner(sch, block, block_loops[-1], block_lanes)


def _window_loads(sch: s_tir.Schedule, window: SBlockRV) -> tuple[list, list, list, list]:
    """The window's output iters, window iters, and its input loads: those that slide (an
    index mixes an output and a window iter) and the others."""
    realize = sch.get(window)
    n_spatial = len(iter_kinds(sch, window).rstrip("R"))
    ivars = [iv.var for iv in realize.iter_vars]
    spatial, reduce = ivars[:n_spatial], ivars[n_spatial:]
    out = realize.body.buffer
    loads = [ld for ld in loads_in(realize.body.value) if not ld.source.same_as(out)]

    def slides(load: Any) -> bool:
        return any(
            any(uses(ix, r) for r in reduce) and any(uses(ix, s) for s in spatial)
            for ix in load.indices
        )

    sliding = [ld for ld in loads if slides(ld)]
    return spatial, reduce, sliding, [ld for ld in loads if not slides(ld)]


def channels_last(sch: s_tir.Schedule, window: SBlockRV) -> bool:
    """Whether the window slides over other axes than the innermost output axis: then the
    innermost one (the channels of an NHWC pooling) indexes its input without a window iter."""
    spatial, reduce, sliding, _ = _window_loads(sch, window)
    if len(sliding) != 1:
        return False
    last = sliding[0].indices[-1]
    return uses(last, spatial[-1]) and not any(uses(last, r) for r in reduce)


def pooling_window(sch: s_tir.Schedule) -> SBlockRV | None:
    """The kernel's one sliding-window reduction block, or None if the kernel is not a
    pooling: plain blocks, one reduction (`S..S R..R`, with an init) reading one input in
    which some index mixes an output iter and a window iter (and perhaps a weight indexed by
    the window and the innermost output iter: a channels-last depthwise convolution), the
    other blocks data parallel."""
    blocks = root_blocks(sch)
    if not blocks or not all(plain_block(sch, b) for b in blocks):
        return None
    windows = [b for b in blocks if "R" in iter_kinds(sch, b)]
    if len(windows) != 1 or not all(spatial_block(sch, b) for b in blocks if b not in windows):
        return None
    window = windows[0]
    realize = sch.get(window)
    kinds = iter_kinds(sch, window)
    if kinds.rstrip("R").strip("S") or realize.init is None or not kinds.rstrip("R"):
        return None
    spatial, _, sliding, others = _window_loads(sch, window)
    if len(sliding) != 1:
        return None
    if not others:
        return window
    # besides the window's input, only a weight per window position and channel, channels-
    # last (a depthwise convolution: x[.., oh + kh, ow + kw, c] * w[kh, kw, c])
    if not channels_last(sch, window):
        return None
    for ld in others:
        if any(uses(ix, s) for s in spatial[:-1] for ix in ld.indices):
            return None
    return window
