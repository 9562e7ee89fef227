"""Loop-level steps the element-wise, reduction, pooling and fallback rules share.

- which blocks a rule may touch (`plain_block`: one BufferStore, its loops bind its iters);
- inlining element-wise producers into their consumers (`inline_spatial`);
- whether a loop nest is big enough to pay for a thread-pool launch (`worth_parallel`);
- vectorizing an inner loop by the target's lanes, with a scalar tail instead of a predicate
  inside the vector loop (`vectorize_inner`).

TVM 0.27 facts these steps rely on (measured): a vectorized loop whose body carries a split's
predicate is scalarized, but a `pragma_loop_partition_hint` on the loop outside it makes the
LoopPartition pass peel the last partial vector off into a scalar tail (symbolic extents only,
see `vectorize_inner`); static extents are partitioned in the schedule (`loop_partition`,
which refuses symbolic ones).
"""

from __future__ import annotations

from typing import Any

import tvm_ffi
from tvm import ir, s_tir, sym, tirx
from tvm.s_tir.schedule import LoopRV, SBlockRV

from ecograph.backends.tvm.targets import TargetSpec

from .analysis import (
    any_node,
    iter_kinds,
    loads_in,
    loops_match_iters,
    op_name,
    static_int,
    vars_in,
)

# A parallel loop costs a thread-pool launch and a join: ~1 us with the other core idle, 5-9 us
# with it busy (2-core development machine, float32 rows of 256, 2 threads vs 1). Break-even:
# `a * 2 + 1` (0.1 ns per element serial) ~30K elements with the other core idle, ~1M with it
# busy; GELU (0.35 ns per element) ~10K idle, ~260K busy. A loop nest runs in parallel from
# PARALLEL_MIN_WORK "work units" (elements times 1 + operations / 8): 262K elements of a*2+1,
# 26K of GELU, a compromise between an idle and a busy second core.
PARALLEL_MIN_WORK = 1 << 18
# A symbolic extent (batch, sequence length) counts as this many iterations when deciding.
SYMBOLIC_EXTENT_GUESS = 16
# A parallel loop fuses outer loops until it has this many iterations (enough to spread over
# many cores); the loops inside stay nested, so their indices need no division per element.
PARALLEL_ITERATIONS = 256
# Producers read several times are inlined (recomputed) only when the copies add at most
# this many operations; no block grows past MAX_BODY_OPS by inlining (fast exp is ~100).
INLINE_MAX_OPS = 16
MAX_BODY_OPS = 600
PARTITION_HINT = "pragma_loop_partition_hint"

# Calls LLVM code generation takes in vector form (TVM 0.27, every x86 level; measured one by
# one). Others fail the build when vectorized, e.g. "unknown intrinsic tirx.sinh" (sinh, cosh,
# fmod, erf on float16); a block calling anything not listed keeps its loops scalar. Not
# listed either: `nearbyint` and `isnan`, which build but which TVM's VectorizeLoop leaves
# scalar in silence; fastmath.py rewrites them into `round` and a bit test first.
VECTOR_CALLS_ANY = frozenset(
    {"prim.if_then_else", "prim.likely", "prim.ceil", "prim.clz", "tirx.reinterpret",
     "tirx.popcount", "tirx.floor", "tirx.ceil", "tirx.trunc", "tirx.fabs", "tirx.round",
     "tirx.sqrt", "tirx.exp"}
)  # fmt: skip
VECTOR_CALLS_F32_F64 = frozenset(
    {"tirx.log", "tirx.log2", "prim.log2", "tirx.log10", "tirx.log1p", "tirx.exp2",
     "tirx.rsqrt", "tirx.tanh", "tirx.sigmoid", "tirx.sin", "tirx.cos", "tirx.tan",
     "tirx.asin", "tirx.acos", "tirx.atan", "tirx.asinh", "tirx.acosh", "tirx.atanh",
     "tirx.erf", "tirx.pow", "tirx.atan2", "tirx.copysign", "tirx.hypot", "tirx.ldexp",
     "tirx.nextafter"}
)  # fmt: skip


def root_blocks(sch: s_tir.Schedule) -> list[SBlockRV] | None:
    """The blocks under the function's root block, or None if it has no root block."""
    try:
        return list(sch.get_child_blocks(sch.get_sblock("root")))
    except Exception:
        return None


def plain_block(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """True for a block the rules understand: its body one BufferStore at indices that do not
    depend on data, no nested blocks, its iters data-parallel or reductions, each loop above it
    binding one iter in order (or no loops at all, a scalar)."""
    realize = sch.get(block)
    if not isinstance(realize.body, tirx.BufferStore):
        return False
    if "O" in iter_kinds(sch, block) or sch.get_child_blocks(block):
        return False
    if any(loads_in(ix) for ix in realize.body.indices):
        return False  # a scatter: where it writes depends on data, its order matters
    return not sch.get_loops(block) or loops_match_iters(sch, block)


def spatial_block(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """A plain block whose iters are all data parallel (element-wise, copies, gathers)."""
    return plain_block(sch, block) and not iter_kinds(sch, block).strip("S")


def op_count(expr: Any) -> int:
    """Arithmetic and call nodes in an expression: a rough cost per element."""
    kinds = (ir.Call, tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.FloorDiv, tirx.FloorMod,
             tirx.Min, tirx.Max, tirx.Select, tirx.Cast)  # fmt: skip
    count = 0

    def visit(node: Any) -> None:
        nonlocal count
        if isinstance(node, kinds):
            count += 1

    tvm_ffi.structural_walk(expr, (ir.Expr, visit), order="post")
    return count


def stored_value(sch: s_tir.Schedule, block: SBlockRV) -> Any:
    return sch.get(block).body.value


def estimate(extent: Any) -> int:
    """A loop extent as a number, each symbolic variable counted as SYMBOLIC_EXTENT_GUESS."""
    value = static_int(extent)
    if value is not None:
        return value
    analyzer = sym.Analyzer()
    try:
        for var in vars_in(extent):
            analyzer.bind(var, tirx.IntImm(str(var.ty), SYMBOLIC_EXTENT_GUESS))
        folded = static_int(analyzer.simplify(extent))
    except Exception:
        return SYMBOLIC_EXTENT_GUESS
    return max(1, folded if folded is not None else SYMBOLIC_EXTENT_GUESS)


def iterations(sch: s_tir.Schedule, loops: list[LoopRV]) -> int:
    total = 1
    for loop in loops:
        total *= estimate(sch.get(loop).extent)
    return total


def worth_parallel(elements: int, ops: int) -> bool:
    """True if `elements` iterations of `ops` operations each pay for a thread-pool launch."""
    return elements * (1 + ops // 8) >= PARALLEL_MIN_WORK


def widest_bits(sch: s_tir.Schedule, block: SBlockRV) -> int:
    """Bits of the widest element type the block reads or writes (sets the vector lanes)."""
    realize = sch.get(block)
    bits = [int(r.source.dtype.bits) for r in [*realize.reads, *realize.writes]]
    return max([b for b in bits if b > 1] or [32])


def lanes_for_block(spec: TargetSpec, sch: s_tir.Schedule, block: SBlockRV) -> int:
    return max(1, spec.vector_bits // widest_bits(sch, block))


def inline_spatial(sch: s_tir.Schedule, keep: set[str] | None = None) -> None:
    """Inline data-parallel blocks into their consumers where TVM allows it and the work does
    not grow much.

    A producer read once is inlined; one read several times (by several consumers, or at
    several places of one) only when the copies it adds stay within INLINE_MAX_OPS (so an exp
    is not computed twice), and no consumer grows past MAX_BODY_OPS (a Resize's chain of
    per-coordinate weights, inlined blindly, became an expression that took LLVM minutes).
    Blocks named in `keep` stay. Output blocks cannot be inlined (TVM refuses), which keeps
    multi-output kernels whole."""
    keep = keep or set()
    changed = True
    while changed:
        changed = False
        blocks = root_blocks(sch) or []
        for block in blocks[:-1]:
            name = sch.get(block).name_hint
            if name in keep or not spatial_block(sch, block):
                continue
            consumers = sch.get_consumers(block)
            if not consumers or not _inline_pays(sch, block, consumers):
                continue
            try:
                sch.compute_inline(block)
            except s_tir.ScheduleError:
                continue
            changed = True
            break


def _inline_pays(sch: s_tir.Schedule, block: SBlockRV, consumers: list[SBlockRV]) -> bool:
    cost = op_count(stored_value(sch, block))
    buffer = sch.get(block).body.buffer
    reads = []
    for consumer in consumers:
        value = sch.get(consumer).body.value
        loads = [ld for ld in loads_in(value) if ld.source.same_as(buffer)]
        if op_count(value) + cost * len(loads) > MAX_BODY_OPS:
            return False
        if any(_divides(ix) for ld in loads for ix in ld.indices):
            return False  # read through a reshape: see _divides
        reads.append(len(loads))
    return sum(reads) <= 1 or cost * (sum(reads) - 1) <= INLINE_MAX_OPS


def _divides(expr: Any) -> bool:
    """True if `expr` divides or takes a remainder (a reshape's index). A producer read that
    way is not inlined: its own loads would index by `% k` and `// k`, which costs gathers,
    and LLVM 22 miscompiles such loops on znver4 (its loop vectorizer treats `i % k` as `i`,
    see targets.LLVM_WORKAROUNDS; ONNX's rotary-embedding test returned garbage)."""
    found = False

    def visit(node: Any) -> None:
        nonlocal found
        if isinstance(node, (tirx.FloorDiv, tirx.FloorMod, tirx.Div, tirx.Mod)):
            found = True

    tvm_ffi.structural_walk(expr, (ir.Expr, visit), order="post")
    return found


def uses_var_nonaffinely(exprs: Any, var: tirx.Var) -> bool:
    """True if `var` appears under a division or modulo by a non-constant: a vector of such
    indices is no ramp (a reshape over a symbolic axis), vectorizing would not pay."""
    found = False

    def visit(node: Any) -> None:
        nonlocal found
        divides = isinstance(node, (tirx.FloorDiv, tirx.FloorMod, tirx.Div, tirx.Mod))
        if divides and not isinstance(node.b, tirx.IntImm) and _has(node.a, var):
            found = True

    tvm_ffi.structural_walk(exprs, (ir.Expr, visit), order="post")
    return found


def vector_safe(expr: Any) -> bool:
    """True if every call in `expr` compiles in vector form (VECTOR_CALLS_*)."""
    safe = True

    def visit(call: ir.Call) -> None:
        nonlocal safe
        name = str(getattr(call.op, "name", ""))
        if name in VECTOR_CALLS_ANY:
            return
        if name in VECTOR_CALLS_F32_F64 and str(call.ty) in ("float32", "float64"):
            return
        safe = False

    tvm_ffi.structural_walk(expr, (ir.Call, visit), order="post")
    return safe


def loop_iter(sch: s_tir.Schedule, block: SBlockRV, loop: LoopRV) -> tirx.Var | None:
    """The block iter `loop` binds (loops bind iters one to one in the forms ruled here)."""
    target = sch.get(loop)
    for lp, iv in zip(sch.get_loops(block), sch.get(block).iter_vars, strict=False):
        if sch.get(lp).same_as(target):
            return iv.var
    return None


def selects_along(expr: Any, var: tirx.Var) -> bool:
    """True if `expr` has an if_then_else whose condition depends on `var`."""
    found = False

    def visit(call: ir.Call) -> None:
        nonlocal found
        name = str(getattr(call.op, "name", ""))
        if name.endswith("if_then_else") and _has(call.args[0], var):
            found = True

    tvm_ffi.structural_walk(expr, (ir.Call, visit), order="post")
    return found


def has_select(expr: Any) -> bool:
    """True if `expr` selects (Select or if_then_else): padding, concatenation, where."""
    return any_node(
        expr, lambda n: isinstance(n, tirx.Select) or op_name(n).endswith("if_then_else")
    )


def _has(expr: Any, var: tirx.Var) -> bool:
    return any(v.same_as(var) for v in vars_in(expr))


def vectorize_inner(
    sch: s_tir.Schedule, block: SBlockRV, loop: LoopRV, lanes: int
) -> LoopRV | None:
    """Vectorize `loop`, the block's innermost, by `lanes`; return the loop of vector chunks
    when the split is exact (a candidate for `parallel`), else None.

    A static multiple of the lanes splits exactly. A static extent under the lanes is
    vectorized whole when it is a power of two of at least 4. Another static extent is
    partitioned first (`loop_partition`: the vector part, then a scalar tail); the block
    handle is stale afterwards. A symbolic extent splits with a predicate, and the partition
    hint has LoopPartition peel the tail off into scalar code (with a static extent the hint
    breaks the build: NarrowDataType has made the loop int32, the pass compares it with
    int64). LoopPartition also splits on the block's own selects, and gets that wrong for
    window bounds (Col2Im's came out wrong): a block that selects keeps a symbolic loop
    scalar. An `if_then_else` whose condition varies along the loop (concat, pad) would be
    scalarized by TVM's vectorizer anyway (into a loop of `lanes` iterations, split for
    nothing): such loops are left as they are. Extents under 4, and blocks calling what LLVM
    cannot vectorize, stay scalar."""
    value = sch.get(block).body.value
    extent = static_int(sch.get(loop).extent)
    if lanes < 2 or (extent is not None and extent < 4) or not vector_safe(value):
        return None
    var = loop_iter(sch, block, loop)
    if var is None or selects_along(value, var):
        return None
    if extent is None:
        if has_select(value):
            return None
        outer, vec = sch.split(loop, [None, lanes])
        sch.vectorize(vec)
        sch.annotate(outer, PARTITION_HINT, 1)
        return None
    if extent <= lanes:
        if extent & (extent - 1) == 0:
            sch.vectorize(loop)
        return None
    main = extent - extent % lanes
    exact = main == extent
    if not exact:
        loop = sch.loop_partition(loop, [main, None])[0]
    outer, vec = sch.split(loop, [None, lanes])
    sch.vectorize(vec)
    return outer if exact else None


def parallel_outer(sch: s_tir.Schedule, loops: list[LoopRV]) -> LoopRV | None:
    """Fuse the outermost of `loops` (outermost first, all spatial) into one parallel loop,
    as few as give PARALLEL_ITERATIONS iterations (all of them if fewer); the others stay
    serial loops inside it. Fusing all would index every element by divisions and remainders
    of one counter (an im2col copying 8 bytes at a time spent most of its time dividing)."""
    if not loops:
        return None
    count, total = 0, 1
    while count < len(loops) and total < PARALLEL_ITERATIONS:
        total *= estimate(sch.get(loops[count]).extent)
        count += 1
    head = loops[:count]
    loop = sch.fuse(*head) if len(head) > 1 else head[0]
    sch.parallel(loop)
    return loop


def row_parallel(func: tirx.PrimFunc, loop_var: tirx.Var) -> tirx.PrimFunc | None:
    """`func` with the loop over `loop_var` made parallel, or None if that is not provably
    safe: every block under it must store at indices that use each of its iters bound to the
    loop (distinct iterations then write distinct elements; the per-iteration scratch buffers
    are allocated inside the loop).

    For row schedules whose reductions are decomposed (init and update split), which TVM's
    `parallel` primitive refuses ("does not have compact dataflow") although the rows are
    independent, and which must be decomposed before anything re-analyses the scope (a
    predicated rfactor block then loses its affine binding and cannot be decomposed)."""
    from tvm.s_tir import SBlockRealize

    target = None
    safe = True

    def find(loop: tirx.For) -> None:
        nonlocal target
        if loop.loop_var.same_as(loop_var):
            target = loop

    tvm_ffi.structural_walk(func.body, (tirx.For, find), order="pre")
    if target is None:
        return None

    def check(realize: SBlockRealize) -> None:
        nonlocal safe
        block = realize.block
        bound = [iv.var for iv, value in zip(block.iter_vars, realize.iter_values, strict=True)
                 if _has(value, loop_var)]  # fmt: skip
        stores: list[tirx.BufferStore] = []
        tvm_ffi.structural_walk(block.body, (tirx.BufferStore, stores.append), order="pre")
        if block.init is not None:
            tvm_ffi.structural_walk(block.init, (tirx.BufferStore, stores.append), order="pre")
        for store in stores:
            if not all(any(_has(ix, v) for ix in store.indices) for v in bound):
                safe = False

    tvm_ffi.structural_walk(target.body, (SBlockRealize, check), order="pre")
    if not safe:
        return None

    def rewrite(loop: tirx.For) -> tirx.For:
        if not loop.loop_var.same_as(loop_var):
            return loop
        return tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.PARALLEL, loop.body,
                        loop.thread_binding, loop.annotations)  # fmt: skip

    return func.with_body(tvm_ffi.structural_map(func.body, (tirx.For, rewrite)))
