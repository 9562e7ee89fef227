"""Element-wise and other injective kernels on CPUs: copies, transposes, reshapes, broadcasts,
casts, element-wise chains, concat / slice / pad / gather.

Every block of such a kernel is data parallel. Producers are inlined into their consumers
(one loop nest per output), the innermost loop is vectorized by the target's lanes with a
scalar tail where the extent is not a multiple (symbolic extents included), and the outer
loops are fused into one parallel loop when the nest is big enough to pay for the thread-pool
launch (see `loops.worth_parallel`). A transpose that writes along one axis and reads along
another is tiled lanes x lanes, so both the reads and the writes of a tile stay in a few
cache lines.
"""

from __future__ import annotations

from typing import Any

import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.schedule import SBlockRV

from ecograph.backends.tvm.targets import TargetSpec

from .analysis import loads_in, loops_match_iters, static_int, uses
from .base import CPURule
from .loops import (
    has_select,
    inline_spatial,
    iterations,
    lanes_for_block,
    loop_iter,
    op_count,
    parallel_outer,
    root_blocks,
    spatial_block,
    stored_value,
    uses_var_nonaffinely,
    vector_safe,
    vectorize_inner,
    worth_parallel,
)


class Injective(CPURule):
    """Kernels whose blocks are all data parallel: inline, vectorize, parallelize if large."""

    name = "injective"

    def apply(self, func: tirx.PrimFunc, target: Any, tunable: bool) -> s_tir.Schedule | None:
        from tvm.relax.analysis import has_reshape_pattern

        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = self._schedule(func, vectors=True)
        if sch is None or not has_reshape_pattern(func) or has_reshape_pattern(sch.mod["main"]):
            return sch
        # A reshape stays one in form, so that RewriteDataflowReshape makes it a view (no
        # kernel, no copy): a vector loop partitioned for its tail no longer reads as one.
        return self._schedule(func, vectors=False)

    def _schedule(self, func: tirx.PrimFunc, vectors: bool) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        blocks = root_blocks(sch)
        if not blocks or not all(spatial_block(sch, b) for b in blocks):
            return None
        inline_spatial(sch)
        for block in root_blocks(sch) or []:
            schedule_elementwise(sch, block, self.spec, vectors=vectors)
        return sch


def schedule_elementwise(
    sch: s_tir.Schedule,
    block: SBlockRV,
    spec: TargetSpec,
    *,
    parallel: bool = True,
    vectors: bool = True,
) -> None:
    """Schedule one data-parallel block at the root: tile it if it transposes, vectorize its
    innermost loop (`vectors`), run its outer loops in parallel when the nest is big enough."""
    loops = sch.get_loops(block)
    if not loops:
        return
    lanes = lanes_for_block(spec, sch, block) if vectors else 1
    ops = op_count(stored_value(sch, block))
    big = parallel and worth_parallel(iterations(sch, loops), ops)
    pair = transposed_pair(sch, block)
    if pair is not None and _tile_transpose(sch, block, pair, lanes, big):
        return
    loops = _fuse_short_tail(sch, block, lanes)
    inner, outer = loops[-1], loops[:-1]
    if big and outer:
        parallel_outer(sch, outer)
    if not _vectorizable(sch, block, inner):
        return
    chunks = vectorize_inner(sch, block, inner, lanes)
    if big and not outer and chunks is not None:
        sch.parallel(chunks)  # one long loop: its exact vector chunks run in parallel


def _vectorizable(sch: s_tir.Schedule, block: SBlockRV, loop: Any) -> bool:
    """True if every call in the block compiles in vector form and the loop's iter does not
    divide or wrap by a symbolic value in some index (a reshape over a symbolic axis: such
    vectors are no ramps and cost more than scalars)."""
    realize = sch.get(block)
    var = loop_iter(sch, block, loop)
    if var is None or not vector_safe(realize.body.value):
        return False
    indices = [ix for ld in loads_in(realize.body.value) for ix in ld.indices]
    indices += list(realize.body.indices)
    return not uses_var_nonaffinely(indices, var)


def _fuse_short_tail(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> list[Any]:
    """Fuse the two innermost loops while the innermost is shorter than one vector and every
    access reads both dims contiguously (an [N, C, 7, 7] add vectorizes over 49, a [N, 3] one
    over rows of 3); a concat or pad (a select on the index) stays as it is. Returns the
    block's loops after fusion."""
    loops = sch.get_loops(block)
    while len(loops) > 1:
        extent = static_int(sch.get(loops[-1]).extent)
        if extent is None or extent >= lanes or static_int(sch.get(loops[-2]).extent) == 1:
            break
        if not _tail_contiguous(sch, block, len(loops)):
            break
        fused = sch.fuse(loops[-2], loops[-1])
        loops = [*loops[:-2], fused]
    return loops


def _tail_contiguous(sch: s_tir.Schedule, block: SBlockRV, depth: int) -> bool:
    """True if the block's last two iters (of `depth` loops, fused ones included) index every
    access as the last two indices, in order, or not at all, and no select reads them."""
    realize = sch.get(block)
    if len(realize.iter_vars) != depth:
        return False  # a loop already binds several iters
    a, b = realize.iter_vars[-2].var, realize.iter_vars[-1].var
    store = realize.body
    if has_select(store.value):
        return False
    for indices in [store.indices, *(ld.indices for ld in loads_in(store.value))]:
        if not any(uses(ix, a) or uses(ix, b) for ix in indices):
            continue
        if len(indices) < 2 or any(uses(ix, a) or uses(ix, b) for ix in indices[:-2]):
            return False
        last2 = indices[-2:]
        if not all(isinstance(ix, tirx.Var) for ix in last2):
            return False
        if not (last2[0].same_as(a) and last2[1].same_as(b)):
            return False
    return True


def transposed_pair(sch: s_tir.Schedule, block: SBlockRV) -> tuple[int, int] | None:
    """(p, q) if the block writes contiguously along its last iter q but reads some buffer
    contiguously along another iter p (whose last index is p and which reads q with a
    stride): the two axes a tile must cover. None for copies that keep the last axis."""
    realize = sch.get(block)
    ivars = [iv.var for iv in realize.iter_vars]
    store = realize.body
    if len(ivars) < 2 or not store.indices:
        return None
    last = ivars[-1]
    tail = store.indices[-1]
    if not (isinstance(tail, tirx.Var) and tail.same_as(last)):
        return None
    for load in loads_in(store.value):
        if not load.indices or uses(load.indices[-1], last):
            continue
        if not any(uses(ix, last) for ix in load.indices[:-1]):
            continue  # broadcast along the last axis
        read_tail = load.indices[-1]
        for p, var in enumerate(ivars[:-1]):
            if isinstance(read_tail, tirx.Var) and read_tail.same_as(var):
                return p, len(ivars) - 1
    return None


def _tile_transpose(
    sch: s_tir.Schedule, block: SBlockRV, pair: tuple[int, int], lanes: int, big: bool
) -> bool:
    """Tile the (p, q) axes by lanes x lanes, vectorize along q (contiguous writes; the reads
    of a tile are lanes rows of one vector each). Only for static multiples of the lanes (a
    predicate would land in the vector loop); returns False to leave the block untouched."""
    if lanes < 4:
        return False
    p, q = pair
    for axis in (p, q):  # [.., 56, 56] sides tile as [.., 3136]
        if _fuse_with_previous(sch, block, axis, (p, q), lanes):
            p, q = (i - 1 if i >= axis else i for i in (p, q))
    loops = sch.get_loops(block)
    ep, eq = (static_int(sch.get(loops[i]).extent) for i in (p, q))
    if ep is None or eq is None or ep % lanes or eq % lanes:
        return False
    po, pi = sch.split(loops[p], [None, lanes])
    qo, qi = sch.split(loops[q], [None, lanes])
    outer = [lp for i, lp in enumerate(loops) if i not in (p, q)]
    sch.reorder(*outer, po, qo, pi, qi)
    sch.vectorize(qi)
    if big:
        parallel_outer(sch, [*outer, po, qo])
    return True


def _fuse_with_previous(
    sch: s_tir.Schedule, block: SBlockRV, axis: int, pair: tuple[int, int], lanes: int
) -> bool:
    """Fuse loop `axis` with the one before it when its extent is no multiple of the lanes,
    the two together are, the one before is not the pair's other axis, and every access
    indexes the two as one contiguous axis (flattened, the fused index is affine: an NCHW
    [.., 56, 56] side of a transpose read or written as [.., 3136]). True if fused."""
    from tvm import ir
    from tvm.sym.analyzer import Analyzer

    loops = sch.get_loops(block)
    if axis < 1 or axis - 1 in pair or not loops_match_iters(sch, block):
        return False
    outer, inner = (static_int(sch.get(loops[i]).extent) for i in (axis - 1, axis))
    if outer is None or inner is None or inner % lanes == 0 or (outer * inner) % lanes:
        return False
    realize = sch.get(block)
    a, b = (realize.iter_vars[i].var for i in (axis - 1, axis))
    fused = tirx.Var("fused", a.ty)
    analyzer = Analyzer()
    analyzer.bind(fused, ir.Range.from_min_extent(tirx.IntImm(str(a.ty), 0), outer * inner))
    analyzer.bind(a, tirx.floordiv(fused, tirx.IntImm(str(a.ty), inner)))
    analyzer.bind(b, tirx.floormod(fused, tirx.IntImm(str(a.ty), inner)))
    store = realize.body
    for buffer, indices in [
        (store.buffer, store.indices),
        *((ld.source, ld.indices) for ld in loads_in(store.value)),
    ]:
        if not any(uses(ix, a) or uses(ix, b) for ix in indices):
            continue
        flat = indices[0]
        for extent, ix in zip(buffer.shape[1:], indices[1:], strict=True):
            flat = flat * extent + ix
        if _divides_or_wraps(analyzer.simplify(flat), fused):
            return False
    sch.fuse(loops[axis - 1], loops[axis])
    return True


def _divides_or_wraps(expr: Any, var: tirx.Var) -> bool:
    """True if `expr` divides or takes a remainder of an expression using `var`."""
    found = False

    def visit(node: Any) -> None:
        nonlocal found
        found = found or uses(node, var)

    kinds = (tirx.FloorDiv, tirx.FloorMod, tirx.Div, tirx.Mod)
    tvm_ffi.structural_walk(expr, (kinds, visit), order="post")
    return found
