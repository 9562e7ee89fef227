"""Reductions on CPUs: softmax / log-softmax, LayerNorm, RMSNorm, mean / sum / max over the
last axes (rows), in the forms legalization and fusion leave them (a mean block, then
element-wise blocks reading the reduced value broadcast), and reductions over other axes.

Row reductions: every block of a row is computed under one loop over rows, so the row stays
in cache and its scratch buffers shrink to one row (a reduced value is one scalar, an
intermediate such as softmax's exponentials one row). Each reduction along the row is split by
the vector lanes and rfactored: `lanes` partial results accumulate in a vector (a "global"
scratch of lanes x 4 bytes, kept on the stack and in a register), then one short reduction
over the lanes; a remainder that is not a whole vector is peeled off into scalar code. The
element-wise parts are vectorized along the row. Rows run in parallel when the kernel is
big enough to pay for the thread-pool launch.

Reductions over other axes (ReduceSum over axis 1 of [N, C, HW]): the reduction loops move
outside the innermost spatial loop, which is vectorized; outer spatial loops run in parallel.

TVM 0.27 constraints this schedule is built around (measured): `compute_at` drops the
predicate of an rfactor block whose split was not exact (it then reads past the row and sums
garbage), so rows are brought under one loop with `merge` (which keeps predicates) instead;
a predicated rfactor block must be decomposed (init and update) right after it is made, since
any later re-analysis of the scope loses its affine binding; `parallel` refuses a loop over
decomposed blocks, so the row loop is made parallel in the IR (`loops.row_parallel`, checked);
without decomposition the init of a partial vector lane is skipped when the row is shorter
than the lanes; `loop_partition` of a reduction loop re-runs the init in each part (wrong).
"""

from __future__ import annotations

from typing import Any

import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.schedule import LoopRV, SBlockRV

from ecograph.backends.tvm.targets import TargetSpec

from .analysis import iter_kinds, loads_in, static_int, uses
from .base import CPURule
from .injective import schedule_elementwise
from .loops import (
    PARTITION_HINT,
    has_select,
    inline_spatial,
    iterations,
    lanes_for_block,
    op_count,
    parallel_outer,
    plain_block,
    root_blocks,
    row_parallel,
    spatial_block,
    vector_safe,
    vectorize_inner,
    worth_parallel,
)


class Reduction(CPURule):
    """Kernels made of reduction blocks (reducing their innermost iters) and data-parallel
    blocks: row reductions with everything of a row computed together, or reductions over
    outer axes vectorized along the innermost spatial axis."""

    name = "reduction"

    def apply(self, func: tirx.PrimFunc, target: Any, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not reduction_kernel(s_tir.Schedule(func)):
            return None
        for vector in (True, False):
            sch = s_tir.Schedule(func)
            try:
                done = self._schedule(sch, vector=vector)
            except s_tir.ScheduleError:
                continue
            if done is not None:
                return done
        return None

    def _schedule(self, sch: s_tir.Schedule, *, vector: bool) -> s_tir.Schedule | None:
        inline_spatial(sch, keep=row_values(sch))
        blocks = root_blocks(sch) or []
        reductions = [b for b in blocks if "R" in iter_kinds(sch, b)]
        axes = {reduction_axis(sch, b) for b in reductions}
        if axes == {"row"}:
            return schedule_rows(sch, self.spec, vector=vector)
        if axes == {"column"}:
            return schedule_columns(sch, self.spec, vector=vector)
        return None


def reduction_kernel(sch: s_tir.Schedule) -> bool:
    """True if every block is plain, some reduce, and each reduction block reduces its
    innermost iters (`S..S R..R`) and has an init."""
    blocks = root_blocks(sch)
    if not blocks or not all(plain_block(sch, b) for b in blocks):
        return False
    found = False
    for block in blocks:
        kinds = iter_kinds(sch, block)
        if "R" not in kinds:
            continue
        found = True
        if kinds.rstrip("R").strip("S") or sch.get(block).init is None:
            return False
    return found


def reduction_axis(sch: s_tir.Schedule, block: SBlockRV) -> str | None:
    """ "row" if every input the reduction reads along its reduction iters varies along the
    innermost one in its last index (memory runs along the reduction; loads of per-row
    values such as a mean are fine); "column" if it reads one input, whose last index is the
    block's innermost spatial iter (a sum over an outer axis); None otherwise: sliding windows
    (an index mixing spatial and reduction iters: pooling, convolution) and products of two
    inputs along other axes (matrix products) are other rules' structure."""
    realize = sch.get(block)
    kinds = iter_kinds(sch, block)
    ivars = [iv.var for iv in realize.iter_vars]
    spatial, reduce = ivars[: len(kinds.rstrip("R"))], ivars[len(kinds.rstrip("R")) :]
    out = realize.body.buffer
    loads = [
        ld
        for ld in loads_in(realize.body.value)
        if not ld.source.same_as(out) and any(uses(ld.indices, r) for r in reduce)
    ]
    if not loads:
        return None
    windows = any(
        any(uses(ix, r) for r in reduce) and any(uses(ix, v) for v in spatial)
        for ld in loads
        for ix in ld.indices
    )
    if windows:
        return None  # an index mixing both: a sliding window (pooling, convolution)
    if all(ld.indices and uses(ld.indices[-1], reduce[-1]) for ld in loads):
        return "row"
    tail = loads[0].indices[-1] if loads[0].indices else None
    if len(loads) == 1 and spatial and isinstance(tail, tirx.Var) and tail.same_as(spatial[-1]):
        return "column"
    return None


def row_values(sch: s_tir.Schedule) -> set[str]:
    """Data-parallel blocks computing one value per row (no loop past the rows longer than
    1) that a block iterating along the row reads: they are not inlined into it, so the value
    (LayerNorm's 1 / sqrt(var + eps)) is computed once per row, not once per element. Chains
    of per-row blocks still inline into each other."""
    blocks = root_blocks(sch) or []
    prefix = row_prefix(sch, blocks)

    def per_row(block: SBlockRV) -> bool:
        past = sch.get_loops(block)[prefix:]
        return all(static_int(sch.get(lp).extent) == 1 for lp in past)

    keep = set()
    for block in blocks:
        consumers = sch.get_consumers(block)
        if spatial_block(sch, block) and per_row(block) and not all(map(per_row, consumers)):
            keep.add(sch.get(block).name_hint)
    return keep


def row_prefix(sch: s_tir.Schedule, blocks: list[SBlockRV]) -> int:
    """How many leading loops are rows: equal extents in every block, spatial in every
    reduction block, and not the unit loops a keepdims reduction adds."""
    loops = [sch.get_loops(b) for b in blocks]
    limit = min(len(lp) for lp in loops)
    for block in blocks:
        kinds = iter_kinds(sch, block)
        if "R" in kinds:
            limit = min(limit, len(kinds) - len(kinds.lstrip("S")))
    prefix = 0
    while prefix < limit:
        first = sch.get(loops[0][prefix]).extent
        if not all(tvm_ffi.structural_equal(sch.get(lp[prefix]).extent, first) for lp in loops):
            break
        prefix += 1
    # trailing unit loops of the prefix belong to keepdims reductions, not to the rows
    while prefix and static_int(sch.get(loops[0][prefix - 1]).extent) == 1:
        prefix -= 1
    return prefix


def schedule_rows(sch: s_tir.Schedule, spec: TargetSpec, *, vector: bool) -> s_tir.Schedule:
    blocks = root_blocks(sch) or []
    prefix = row_prefix(sch, blocks)
    rows = iterations(sch, sch.get_loops(blocks[-1])[:prefix]) if prefix else 1
    work = sum(
        iterations(sch, sch.get_loops(b)) * (1 + op_count(sch.get(b).body.value) // 8)
        for b in blocks
    )
    if prefix == 0:
        for block in blocks:
            _vectorize_row_block(sch, block, spec, vector=vector)
        return sch
    for block in blocks:
        loops = sch.get_loops(block)
        if prefix > 1:
            sch.fuse(*loops[:prefix])
    for block in blocks:
        _vectorize_row_block(sch, block, spec, vector=vector)
    tops = _top_loops(sch)
    merged = sch.merge(*tops) if len(tops) > 1 else tops[0]
    if not (rows > 1 and worth_parallel(work, 0)):
        return sch
    func = row_parallel(sch.mod["main"], sch.get(merged).loop_var)
    return s_tir.Schedule(func) if func is not None else sch


def _top_loops(sch: s_tir.Schedule) -> list[LoopRV]:
    """The distinct outermost loops of the root's blocks, in program order."""
    seen: list[Any] = []
    tops: list[LoopRV] = []
    for block in root_blocks(sch) or []:
        loops = sch.get_loops(block)
        if not loops:
            continue
        stmt = sch.get(loops[0])
        if any(stmt.same_as(s) for s in seen):
            continue
        seen.append(stmt)
        tops.append(loops[0])
    return tops


def _vectorize_row_block(
    sch: s_tir.Schedule, block: SBlockRV, spec: TargetSpec, *, vector: bool
) -> None:
    """A block of a row: a reduction is rfactored by lanes (vector partial results, then one
    reduction over the lanes), an element-wise block vectorized along the row."""
    value = sch.get(block).body.value
    if not vector or not vector_safe(value):
        return
    lanes = lanes_for_block(spec, sch, block)
    kinds = iter_kinds(sch, block)
    loops = sch.get_loops(block)
    if "R" not in kinds:
        inner = loops[-1]
        if len(loops) > 1 and static_int(sch.get(inner).extent) != 1:
            vectorize_inner(sch, block, inner, lanes)
        return
    reduce = loops[len(loops) - (len(kinds) - len(kinds.rstrip("R"))) :]
    k = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
    extent = static_int(sch.get(k).extent)
    if lanes < 2 or (extent is not None and extent < lanes):
        return
    if extent is None and has_select(value):
        return  # the partition hint would split on the select too (see loops.vectorize_inner)
    _, ki = sch.split(k, [None, lanes])
    rank = len(sch.get(block).body.buffer.shape)
    rf = sch.rfactor(ki, rank)
    rf_loops = sch.get_loops(rf)
    sch.vectorize(rf_loops[-1])
    if extent is None:
        sch.annotate(rf_loops[-2], PARTITION_HINT, 1)
    sch.decompose_reduction(rf, rf_loops[-2])  # `rf` is the update from here on
    if extent is not None and extent % lanes:
        # the update (no init left) split into whole vectors and a scalar remainder; the
        # partition hint would do it for symbolic extents but breaks the build for static
        # ones next to symbolic rows (NarrowDataType leaves an int32 / int64 comparison)
        sch.loop_partition(sch.get_loops(rf)[-2], [extent // lanes, None])


def schedule_columns(sch: s_tir.Schedule, spec: TargetSpec, *, vector: bool) -> s_tir.Schedule:
    """Reductions over outer axes: reduction loops moved outside the innermost spatial loop
    (the axis memory runs along), which is vectorized; outer spatial loops in parallel."""
    for block in root_blocks(sch) or []:
        if "R" not in iter_kinds(sch, block):
            schedule_elementwise(sch, block, spec)
            continue
        kinds = iter_kinds(sch, block)
        loops = sch.get_loops(block)
        n_spatial = len(kinds.rstrip("R"))
        spatial, reduce = loops[:n_spatial], loops[n_spatial:]
        if not spatial:
            continue
        inner = spatial[-1]
        outer = spatial[:-1]
        sch.reorder(*outer, *reduce, inner)
        if worth_parallel(iterations(sch, loops), 0) and outer:
            parallel_outer(sch, outer)
        if vector:
            vectorize_inner(sch, block, inner, lanes_for_block(spec, sch, block))
    return sch
