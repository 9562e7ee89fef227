"""What a PrimFunc computes, read from its structure (never from its name).

The schedule rules ask these questions of a fused kernel: which block reduces, which blocks
only copy or combine element by element, and whether the reduction is a matrix product
`C[.., i, j] += A[.., i, k] * B[.., k, j]` (B possibly packed as `[j // NR, k, j % NR]`, or
read through a dequantization of operands packed as `[j // NR, f(k), j % NR]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tvm_ffi
from tvm import ir, tirx
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import SBlockRV


def vars_in(expr: Any) -> set[tirx.Var]:
    """The TIR variables an expression uses."""
    found: set[tirx.Var] = set()
    tvm_ffi.structural_walk(expr, (tirx.Var, found.add), order="post")
    return found


def uses(expr: Any, var: tirx.Var) -> bool:
    return any(v.same_as(var) for v in vars_in(expr))


def iter_kinds(sch: Schedule, block: SBlockRV) -> str:
    """ "S" per data-parallel iter, "R" per reduction iter, "O" for anything else."""
    kinds = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kinds.get(iv.iter_type, "O") for iv in sch.get(block).iter_vars)


def loops_match_iters(sch: Schedule, block: SBlockRV) -> bool:
    """True if each loop above the block binds exactly one block iter, in order (the form
    TE and legalization produce; rules that split loops by iter rely on it)."""
    realize = sch.get(block)
    loops = sch.get_loops(block)
    if len(loops) != len(realize.iter_vars):
        return False
    from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize

    bindings = get_sblockrealize(sch, block).iter_values
    for loop, value in zip(loops, bindings, strict=True):
        if not (isinstance(value, tirx.Var) and value.same_as(sch.get(loop).loop_var)):
            return False
    return True


def loads_in(expr: Any) -> list[ir.TensorLoad]:
    """The BufferLoads an expression reads."""
    found: list[ir.TensorLoad] = []
    tvm_ffi.structural_walk(expr, (ir.TensorLoad, found.append), order="post")
    return found


def decodes_weights(b: Any, j: tirx.Var) -> bool:
    """Whether a product's weight expression `b` decodes its weights bit by bit: shifts or
    masks (sub-byte codes unpacked from their bytes) or a table lookup (a palette)."""
    found: list[Any] = []
    kinds = (tirx.LShift, tirx.RShift, tirx.BitwiseAnd)
    tvm_ffi.structural_walk(b, (kinds, found.append), order="post")
    return bool(found) or any(_is_lookup(ld, j) for ld in loads_in(b))


@dataclass
class MatmulInfo:
    """A reduction block that is a (batched) matrix product, in its iter vars."""

    block: SBlockRV
    spatial: list[tirx.Var]  # the block's data-parallel iters, output order
    k: tirx.Var  # the one reduction iter
    j: int  # position in `spatial` of the output's last (column) iter
    m: list[int]  # positions of the iters only A uses (rows)
    batch: list[int]  # positions of the iters both A and B use
    a: Any  # the operand expression that does not depend on j (usually a BufferLoad)
    b: Any  # the operand expression that does
    packed_nr: int | None  # NR when B's operands are read at [j // NR, f(k), j % NR]
    out_dtype: str


def matmul_info(sch: Schedule, block: SBlockRV) -> MatmulInfo | None:
    """The block as a matrix product, or None if it is not one.

    Accepted: `C[s...] = C[s...] + a * b` with exactly one reduction iter k, C indexed by
    exactly the spatial iters in order, `a` not depending on the last spatial iter j, and every
    buffer `b` reads with j reading it only in its last index (as j, or j % NR when packed), so
    consecutive j are consecutive in memory and the j loop vectorizes. `a` and `b` are any
    expressions (casts, a dequantization), not only loads."""
    if not loops_match_iters(sch, block):
        return None
    realize = sch.get(block)
    kinds = iter_kinds(sch, block)
    if kinds.count("R") != 1 or "O" in kinds or kinds[-1] != "R" or kinds.count("S") < 1:
        return None
    ivars = [iv.var for iv in realize.iter_vars]
    spatial, k = ivars[:-1], ivars[-1]
    store = realize.body
    if not isinstance(store, tirx.BufferStore) or realize.init is None:
        return None
    if len(store.indices) != len(spatial) or not all(
        isinstance(ix, tirx.Var) and ix.same_as(v)
        for ix, v in zip(store.indices, spatial, strict=True)
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
    if not isinstance(prod, tirx.Mul):
        return None
    j_var = spatial[-1]
    a, b = prod.a, prod.b
    if uses(a, j_var):
        a, b = b, a
    if uses(a, j_var) or not uses(b, j_var) or not (uses(a, k) and uses(b, k)):
        return None
    # the loads whose layout j's vectorization depends on (a lookup follows its codes')
    j_loads = [ld for ld in loads_in(b) if uses(ld.indices, j_var) and not _is_lookup(ld, j_var)]
    packed_all = {_packed_nr(ld, j_var, k) for ld in j_loads}
    packed = packed_all.pop() if len(packed_all) == 1 else None
    for ld in j_loads:
        last = ld.indices[-1]
        plain = isinstance(last, tirx.Var) and last.same_as(j_var)
        head = ld.indices[: -3 if packed else -1]
        if not (plain or packed) or any(uses(ix, j_var) for ix in head):
            return None
    m = [i for i, v in enumerate(spatial[:-1]) if uses(a, v) and not uses(b, v)]
    batch = [i for i, v in enumerate(spatial[:-1]) if uses(b, v)]
    if len(m) + len(batch) != len(spatial) - 1:
        return None  # an iter neither operand reads
    return MatmulInfo(
        block=block,
        spatial=spatial,
        k=k,
        j=len(spatial) - 1,
        m=m,
        batch=batch,
        a=a,
        b=b,
        packed_nr=packed,
        out_dtype=str(store.buffer.dtype),
    )


def direct_vars(expr: Any) -> list[tirx.Var]:
    """The TIR variables `expr` uses other than through a load it reads (a load's indices
    are that load's business: `pal[code[j]]` does not use j directly)."""
    found: list[tirx.Var] = []

    def visit(node: Any) -> Any:
        if isinstance(node, ir.TensorLoad):
            return tvm_ffi.WalkResult.SKIP
        if isinstance(node, tirx.Var):
            found.append(node)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(expr, visit, order="pre")
    return found


def uses_directly(expr: Any, var: tirx.Var) -> bool:
    """Whether `expr` uses `var` other than through a load it reads (see `direct_vars`)."""
    return any(v.same_as(var) for v in direct_vars(expr))


def _is_lookup(load: ir.TensorLoad, j: tirx.Var) -> bool:
    """A table lookup: an entry read at a code that is read at column j (`pal[code[k, j]]`),
    in the table of j's group of columns (`pal[j // G, code]`, G a constant). It follows the
    layout of the codes it is indexed by; a vector of columns that shares one table reads it
    with one register permute (schedules/lookup.py)."""
    *head, last = load.indices
    if uses_directly(last, j):
        return False
    return all(
        not uses_directly(ix, j)
        or (isinstance(ix, tirx.FloorDiv) and ix.a.same_as(j) and isinstance(ix.b, tirx.IntImm))
        for ix in head
    )


def _packed_nr(b: ir.TensorLoad, j: tirx.Var, k: tirx.Var) -> int | None:
    """NR if B is read as [..., j // NR, f(k), j % NR], else None. f(k) is k for a float
    weight, k // 2 for 4-bit codes two per byte, k // block or 0 for a scale, or the code
    read at (k, j) for a palette entry; it uses j only inside the loads it reads."""
    if len(b.indices) < 3:
        return None
    panel, kk, lane = b.indices[-3], b.indices[-2], b.indices[-1]
    if not all(v.same_as(k) for v in direct_vars(kk)):
        return None
    for code in loads_in(kk):  # a lookup's code, read at (k, j)
        if not all(v.same_as(k) or v.same_as(j) for ix in code.indices for v in direct_vars(ix)):
            return None
    if not (isinstance(lane, tirx.FloorMod) and isinstance(panel, tirx.FloorDiv)):
        return None
    if not (lane.a.same_as(j) and panel.a.same_as(j)):
        return None
    if not (isinstance(lane.b, tirx.IntImm) and isinstance(panel.b, tirx.IntImm)):
        return None
    nr = int(lane.b.value)
    return nr if int(panel.b.value) == nr else None


def static_int(expr: Any) -> int | None:
    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def output_blocks_after(sch: Schedule, block: SBlockRV) -> list[SBlockRV]:
    """The blocks after `block` in the root's body order."""
    root = sch.get_sblock("root") if _has_root(sch) else None
    children = sch.get_child_blocks(root) if root is not None else []
    names = [sch.get(c).name_hint for c in children]
    me = sch.get(block).name_hint
    return children[names.index(me) + 1 :] if me in names else []


def _has_root(sch: Schedule) -> bool:
    try:
        sch.get_sblock("root")
    except Exception:
        return False
    return True


def split_epilogue(sch: Schedule, after: list[SBlockRV]) -> tuple[list[SBlockRV], list[SBlockRV]]:
    """The blocks after a kernel's product that may be computed at its tiles, and the rest.

    A rule places the epilogue at the product's tile with `reverse_compute_at`, which keeps
    only the epilogue's elements that read the tile. Padding and concatenation write elements
    that read no product (a border, another input's part: their value is an `if_then_else`),
    and those would never be written: a conv followed by ONNX Runtime's asymmetric Pad of the
    next layer left its border column uninitialized (Hugging Face's MobileNets, cosine 0.98 to
    PyTorch). So the first such block and every block after it (which read it) are the rest,
    for the rule to schedule as loops of their own after the product."""
    for at, block in enumerate(after):
        realize = sch.get(block)
        value = getattr(realize.body, "value", None)
        if value is None or any_node(value, lambda n: op_name(n).endswith("if_then_else")):
            return after[:at], after[at:]
    return after, []


def any_node(expr: Any, pred: Any) -> bool:
    """True if `pred` holds for some expression node of `expr`."""
    found = False

    def visit(node: Any) -> None:
        nonlocal found
        found = found or bool(pred(node))

    tvm_ffi.structural_walk(expr, (ir.Expr, visit), order="post")
    return found


def op_name(node: Any) -> str:
    """The name of the op a Call node calls ("" for other nodes)."""
    return str(getattr(getattr(node, "op", None), "name", ""))
