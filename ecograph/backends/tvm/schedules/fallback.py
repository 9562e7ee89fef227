"""The last CPU rule: a safe schedule for any kernel no other rule took.

Each block keeps its own loop nest. Data-parallel producers are inlined, except selects
(padding) feeding a reduction, which stay a loop nest of their own so the reduction's loops
carry no select. Every block then gets the steps that are legal whatever it computes: its
outer data-parallel loops fused and run in parallel when the nest is big enough, and its
innermost data-parallel loop vectorized, moved inside the reduction loops first when a
reduction is innermost (each output element still accumulates in the same order; a
convolution becomes vectorized along its output width). A kernel with blocks the rules cannot
read (opaque or extern blocks, loops inside blocks, scans and data-dependent lowerings such as
NonZero, Unique, TopK or NMS) is left untouched: None, the function stays as TVM lowered it.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.schedule import SBlockRV

from .analysis import iter_kinds, loads_in, uses
from .base import CPURule
from .injective import schedule_elementwise
from .loops import (
    has_select,
    inline_spatial,
    iterations,
    lanes_for_block,
    op_count,
    parallel_outer,
    plain_block,
    root_blocks,
    spatial_block,
    vectorize_inner,
    worth_parallel,
)


class Fallback(CPURule):
    """Parallel outer loops (when large enough) and a vectorized inner loop, block by block."""

    name = "fallback"

    def apply(self, func: tirx.PrimFunc, target: Any, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc):
            return None
        probe = s_tir.Schedule(func)
        blocks = root_blocks(probe)
        if not blocks or not all(plain_block(probe, b) for b in blocks):
            return None
        for vector, parallel in ((True, True), (False, True), (False, False)):
            sch = s_tir.Schedule(func)
            try:
                self._schedule(sch, vector=vector, parallel=parallel)
            except s_tir.ScheduleError:
                continue
            return sch
        return None

    def _schedule(self, sch: s_tir.Schedule, *, vector: bool, parallel: bool) -> None:
        inline_spatial(sch, keep=_pads_of_reductions(sch))
        for block in root_blocks(sch) or []:
            if spatial_block(sch, block):
                if vector:
                    schedule_elementwise(sch, block, self.spec, parallel=parallel)
                elif parallel:
                    _parallel_only(sch, block)
                continue
            schedule_reduction_block(sch, block, self.spec, vector=vector, parallel=parallel)


def _pads_of_reductions(sch: s_tir.Schedule) -> set[str]:
    """Producers that select (padding) read by a reduction block: not inlined into it."""
    keep = set()
    for block in root_blocks(sch) or []:
        if spatial_block(sch, block):
            continue
        for producer in sch.get_producers(block):
            if spatial_block(sch, producer) and has_select(sch.get(producer).body.value):
                keep.add(sch.get(producer).name_hint)
    return keep


def _parallel_only(sch: s_tir.Schedule, block: SBlockRV) -> None:
    loops = sch.get_loops(block)
    ops = op_count(sch.get(block).body.value)
    if len(loops) > 1 and worth_parallel(iterations(sch, loops), ops):
        parallel_outer(sch, loops[:-1])


def schedule_reduction_block(
    sch: s_tir.Schedule, block: SBlockRV, spec: Any, *, vector: bool, parallel: bool
) -> None:
    """A block with reduction iters, in any order: the data-parallel loops before the first
    reduction loop run in parallel (if big enough); the innermost data-parallel loop that
    some input is read along (its iter in the input's last index, as a convolution's output
    width) is moved innermost and vectorized. With no such loop nothing is vectorized (a
    gather across rows would cost more than it saves)."""
    kinds = iter_kinds(sch, block)
    loops = sch.get_loops(block)
    if len(loops) != len(kinds):
        return
    first_r = kinds.index("R")
    realize = sch.get(block)
    ivars = [iv.var for iv in realize.iter_vars]
    out = realize.body.buffer
    tails = [
        ld.indices[-1]
        for ld in loads_in(realize.body.value)
        if ld.indices and not ld.source.same_as(out)
    ]
    along = [i for i, k in enumerate(kinds) if k == "S" and any(uses(t, ivars[i]) for t in tails)]
    inner = loops[along[-1]] if vector and along else None
    outer = [
        lp for lp in loops[:first_r] if inner is None or not sch.get(lp).same_as(sch.get(inner))
    ]
    if inner is not None:
        rest = [lp for lp in loops if not sch.get(lp).same_as(sch.get(inner))]
        sch.reorder(*rest, inner)
    ops = op_count(realize.body.value)
    if parallel and outer and worth_parallel(iterations(sch, loops), ops):
        parallel_outer(sch, outer)
    if inner is not None:
        vectorize_inner(sch, block, inner, lanes_for_block(spec, sch, block))
