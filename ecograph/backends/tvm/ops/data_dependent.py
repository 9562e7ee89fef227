"""TVM lowerings of the ops whose output size depends on input values: NonZero, Compress and
Unique, written with compiled kernels only.

TVM 0.27's `R.nonzero` and `R.unique` run at run time as Python callbacks into numpy
(`relax.run.nonzero` / `relax.run.unique`, registered by `import tvm.relax`): they need TVM's
compiler package in the deploying process, and on CUDA they hand back CPU tensors. None is used
here; every kernel is compiled TIR, so the artifacts run with a runtime-only TVM
(`TVM_USE_RUNTIME_LIB=1`) on CPU and compile for CUDA.

The building blocks are target-neutral (the lowering does not know the target): TE computes
(dlight schedules them on CUDA), `cumsum` (TOPI's scan; CUDA dispatches its GPU scan) and
`scatter_elements` (legalized to TOPI's GPU scatter on CUDA). `R.argsort` is not used: on CPU
it calls `tvm.contrib.sort.argsort`, which a runtime-only TVM does not have.

- A data-dependent size is a tensor `[1]` of int64 turned into a shape with
  `R.tensor_to_shape` and bound by `match_cast` to a fresh size var (as NonMaxSuppression in
  `misc.py`); a TE copy then trims a padded buffer to that size.
- Stream compaction (`_compact`): the inclusive `cumsum` of a 0/1 mask gives each kept element
  its output slot; `scatter_elements` writes the element indices there (dropped elements go to
  one extra dump slot), and the first `count` slots are the kept indices, in order.
- NonZero compacts the flattened `x != 0` and unravels the flat indices into coordinates.
- Compress compacts its condition (entries past the input's length along the axis are
  dropped rather than read out of bounds) and `take`s the kept slices; a constant condition
  becomes constant indices.
- Sorting (`_argsort`) is an LSD radix sort: one stable partition (cumsum + scatter) per key
  bit, on int64 keys that order like the values (`_radix_key`: signed ints offset, floats'
  bit patterns flipped as usual, -0.0 made 0.0): 8 to 64 passes by dtype.
- Unique sorts a key per element (flattened) or per slice along `axis`, marks where the sorted
  key changes, and numbers the groups with a `cumsum`. Per group, `scatter_elements` finds the
  first occurrence (`min` of the original positions) and the count (`add`); the inverse index
  is the group number scattered back to each position. Slices along an axis (their other dims
  must be static) are keyed by a dense lexicographic rank: each column's dense rank combined
  with the rank so far (`rank * n + column_rank`) and re-ranked, column by column (2 sorts per
  column). `sorted=0` reorders the groups by first occurrence (one more sort of the first
  positions; its inverse permutation renumbers the inverse indices).

Cost: O(bits * n) work per sort; on CUDA, TOPI's 1-D scatter runs in a single thread, so
these kernels are correct there but not fast (fine for index-sized tensors, not for millions
of elements).

Unique follows the ONNX spec where onnx.reference (the IR's reference kernel) deviates from it:
with `sorted=0`, `Y` lists values by first occurrence even when `Y` is the only output, and
for a flattened multi-dim input or an axis other than 0 the unsorted `Y` is taken along the
right axis of the right (flattened) input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax, te
from tvm import tirx as tir

from ecograph.backends.tvm.context import ANALYZER, LowerContext, R, lowers, norm_axis

_I64 = "int64"


def _i64(v: int) -> Any:
    return tir.const(v, _I64)


def _count_var(ctx: LowerContext, count: relax.Expr, name: str) -> tir.Var:
    """A fresh size var bound at run time to the value of the int64 tensor `count` [1]."""
    m = tir.Var(name, _I64)
    ctx.bb.match_cast(ctx.emit(R.tensor_to_shape(count)), relax.ShapeType([m]))
    return m


def _trim(ctx: LowerContext, x: relax.Expr, m: Any, name: str) -> relax.Expr:
    """The first `m` elements of the 1-D tensor `x`."""

    def f(t: te.Tensor) -> te.Tensor:
        return te.compute((m,), lambda k: t[k], name=name)

    return ctx.bb.emit_te(f, x, primfunc_name_hint=name)


def _scatter(
    ctx: LowerContext,
    idx: relax.Expr,
    upd: relax.Expr,
    reduction: str,
    fill: int | None = 0,
    extra: int = 0,
) -> relax.Expr:
    """`upd` scattered by `reduction` to `idx` (both [n]) in an int64 tensor [n + extra] of
    `fill` (None: n)."""

    def full(i: te.Tensor) -> te.Tensor:
        (n,) = i.shape
        value = n if fill is None else _i64(fill)
        return te.compute((n + extra,), lambda _: value.astype(_I64), name="fill")

    base = ctx.bb.emit_te(full, idx, primfunc_name_hint="scatter_base")
    return ctx.emit(R.scatter_elements(base, idx, upd, axis=0, reduction=reduction))


def _compact(ctx: LowerContext, mask: relax.Expr, name: str) -> tuple[relax.Expr, tir.Var]:
    """The indices of the true entries of the 1-D bool `mask`, in order, and their count."""
    mi = ctx.emit(R.astype(mask, _I64))
    ends = ctx.emit(R.cumsum(mi, axis=0, dtype=_I64))
    count = _count_var(ctx, ctx.emit(R.reshape(R.sum(mi), [1])), name)

    def slots(mk: te.Tensor, e: te.Tensor) -> list[te.Tensor]:
        (n,) = mk.shape
        # A dropped element goes to slot n, a dump slot past the kept ones.
        dest = te.compute((n,), lambda i: tir.Select(mk[i] != 0, e[i] - 1, n), name="slot")
        pos = te.compute((n,), lambda i: i.astype(_I64), name="position")
        return [dest, pos]

    pair = ctx.bb.emit_te(slots, mi, ends, primfunc_name_hint=f"{name}_slots")
    dest = ctx.emit(relax.TupleGetItem(pair, 0))
    pos = ctx.emit(relax.TupleGetItem(pair, 1))
    buf = _scatter(ctx, dest, pos, "update", extra=1)
    return _trim(ctx, buf, count, f"{name}_kept"), count


# ----------------------------------------------------------------------- NonZero


@lowers("NonZero")
def _nonzero(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    if xt.rank == 0:
        ctx.fail("NonZero of a 0-d input is not supported (numpy and ONNX give no coordinates)")
    x = ctx.arg(0)
    flat = R.reshape(x, [-1]) if xt.rank != 1 else x
    if str(xt.dtype) == "bool":
        mask = ctx.emit(flat)
    else:
        mask = ctx.emit(R.not_equal(flat, ctx.scalar(0, xt.dtype)))
    pos, count = _compact(ctx, mask, "nonzero_count")

    def unravel(p: te.Tensor, xx: te.Tensor) -> te.Tensor:
        dims = list(xx.shape)  # x passed in so that its symbolic dims are bound

        def coord(a: Any, k: Any) -> Any:
            out = p[k]
            stride = _i64(1)
            for axis in range(len(dims) - 1, -1, -1):
                here = tir.floormod(tir.floordiv(p[k], stride), dims[axis])
                out = here if axis == len(dims) - 1 else tir.Select(a == axis, here, out)
                stride = stride * dims[axis]
            return out

        return te.compute((len(dims), count), coord, name="nonzero_coords")

    return ctx.bb.emit_te(unravel, pos, x, primfunc_name_hint="nonzero_coords")


# ---------------------------------------------------------------------- Compress


@lowers("Compress")
def _compress(ctx: LowerContext) -> relax.Expr:
    x = ctx.arg(0)
    xt = ctx.in_type(0)
    axis = ctx.attrs.get("axis")
    if axis is None:
        x = R.reshape(x, [-1]) if xt.rank != 1 else x
        axis = 0
    else:
        axis = norm_axis(axis, xt.rank)
    x = ctx.emit(x)
    cond = ctx.const(1)
    if cond is not None:
        idx = np.flatnonzero(np.asarray(cond).reshape(-1).astype(bool)).astype(_I64)
        return R.take(x, relax.const(idx, _I64), axis=axis)
    c = ctx.arg(1)
    if ctx.in_type(1).rank != 1:
        c = R.reshape(c, [-1])
    c = ctx.emit(c)

    def keep(t: te.Tensor, xx: te.Tensor) -> te.Tensor:
        # A condition longer than the axis: entries past its end select nothing (never an
        # out-of-bounds take). x is passed in so that a symbolic length is bound.
        length = xx.shape[axis]

        def on(i: Any) -> Any:  # (bool != false miscompiles in LLVM: use the bool itself)
            return t[i] if t.dtype == "bool" else t[i] != tir.const(0, t.dtype)

        return te.compute(t.shape, lambda i: tir.all(on(i), i < length), name="keep")

    mask = ctx.bb.emit_te(keep, c, x, primfunc_name_hint="compress_keep")
    idx, _ = _compact(ctx, mask, "compress_count")
    return R.take(x, idx, axis=axis)


# ------------------------------------------------------------------------ Unique


def _radix_key(ctx: LowerContext, x: relax.Expr, dtype: str) -> tuple[relax.Expr, int]:
    """`x` [n] as int64 keys whose unsigned order over their low `bits` bits is the order of
    the values, equal exactly when the values are equal; and `bits`."""
    if dtype in ("float16", "bfloat16"):
        x, dtype = ctx.emit(R.astype(x, "float32")), "float32"
    widths = {"bool": 1, "uint8": 8, "uint16": 16, "uint32": 32, "uint64": 64}
    signed = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
    floats = {"float32": ("int32", 32), "float64": ("int64", 64)}
    if dtype not in widths and dtype not in signed and dtype not in floats:
        ctx.fail(f"Unique of dtype {dtype} is not supported")
    low64 = tir.const(-(2**63), _I64)

    def key(t: te.Tensor) -> te.Tensor:
        def f(i: Any) -> Any:
            v = t[i]
            if dtype in widths:  # unsigned: the bits as they are (uint64 wraps, same bits)
                return v.astype(_I64)
            if dtype in signed:  # signed: offset into the unsigned range
                w = signed[dtype]
                return v.astype(_I64) ^ low64 if w == 64 else v.astype(_I64) + _i64(2 ** (w - 1))
            ibits, w = floats[dtype]
            v = tir.Select(v == tir.const(0, dtype), tir.const(0, dtype), v)  # -0.0 == 0.0
            b = tir.reinterpret(ibits, v).astype(_I64)
            if w == 64:  # negative: all bits flipped; positive: the sign bit set
                return tir.Select(b < 0, ~b, b ^ low64)
            mask = _i64(2**32 - 1)
            return tir.Select(b < 0, (~b) & mask, (b & mask) | _i64(2**31))

        return te.compute(t.shape, f, name="radix_key")

    u = ctx.bb.emit_te(key, x, primfunc_name_hint="unique_radix_key")
    return u, widths.get(dtype) or signed.get(dtype) or floats[dtype][1]


def _iota(ctx: LowerContext, like: relax.Expr) -> relax.Expr:
    """0, 1, ... n-1 (int64) for a 1-D tensor [n]."""

    def f(t: te.Tensor) -> te.Tensor:
        return te.compute(t.shape, lambda i: i.astype(_I64), name="iota")

    return ctx.bb.emit_te(f, like, primfunc_name_hint="iota")


def _argsort(ctx: LowerContext, u: relax.Expr, bits: int) -> relax.Expr:
    """The stable ascending order of the int64 keys `u` [n], compared as unsigned over their
    low `bits` bits: an LSD radix sort, one stable partition (cumsum + scatter) per bit.

    (Not `R.argsort`: on CPU it calls `tvm.contrib.sort.argsort`, which a runtime-only TVM
    lacks.)"""

    def zero_bit(uu: te.Tensor, pp: te.Tensor, sh: te.Tensor) -> te.Tensor:
        return te.compute(
            pp.shape, lambda i: _i64(1) - ((uu[pp[i]] >> sh[0]) & _i64(1)), name="zero_bit"
        )

    def slot(z: te.Tensor, zc: te.Tensor) -> te.Tensor:
        (n,) = z.shape
        zeros = zc[tir.max(n, 1) - 1]  # the zeros go first, in order; then the ones
        return te.compute(
            z.shape, lambda i: tir.Select(z[i] == 1, zc[i] - 1, zeros + i - zc[i]), name="slot"
        )

    perm = _iota(ctx, u)
    for b in range(bits):
        shift = relax.const(np.array([b], _I64), _I64)
        z = ctx.bb.emit_te(zero_bit, u, perm, shift, primfunc_name_hint="radix_zero_bit")
        zc = ctx.emit(R.cumsum(z, axis=0, dtype=_I64))
        dest = ctx.bb.emit_te(slot, z, zc, primfunc_name_hint="radix_slot")
        perm = _scatter(ctx, dest, perm, "update")
    return perm


def _new_run(ctx: LowerContext, sk: relax.Expr) -> relax.Expr:
    """For a sorted 1-D key: 1 where a run of equal keys starts, else 0 (int64)."""

    def f(s: te.Tensor) -> te.Tensor:
        return te.compute(
            s.shape,
            lambda i: tir.Select(tir.any(i == 0, s[tir.max(i, 1) - 1] != s[i]), _i64(1), _i64(0)),
            name="run_start",
        )

    return ctx.bb.emit_te(f, sk, primfunc_name_hint="unique_run_start")


def _groups(
    ctx: LowerContext, key: relax.Expr, bits: int
) -> tuple[relax.Expr, relax.Expr, relax.Expr]:
    """Sort `key` [n] (see `_argsort`): the sort order, each sorted position's group number,
    the run starts."""
    order = _argsort(ctx, key, bits)
    new = _new_run(ctx, ctx.emit(R.take(key, order, axis=0)))
    gid = ctx.emit(R.subtract(R.cumsum(new, axis=0, dtype=_I64), relax.const(1, _I64)))
    return order, gid, new


def _dense_rank(ctx: LowerContext, key: relax.Expr, bits: int) -> relax.Expr:
    """Each entry's rank among the distinct values of `key` [n] (int64, 0-based)."""
    order, gid, _ = _groups(ctx, key, bits)
    return _scatter(ctx, order, gid, "update")


def _index_bits(n: Any, factor: int = 1) -> int:
    """Bits enough for values below n**factor (63 when n is symbolic)."""
    if isinstance(n, tir.IntImm):
        return min(63, max(1, (int(n.value) ** factor).bit_length()))
    return 63


def _row_key(ctx: LowerContext, rows: relax.Expr, n: Any, width: int, dtype: str) -> relax.Expr:
    """A 1-D int64 key for the rows of `rows` [n, width], ordered as the rows
    lexicographically (equal rows, equal keys): each column's dense rank, combined with the
    rank so far and re-ranked."""
    rank: relax.Expr | None = None
    for c in range(width):
        col = ctx.emit(R.reshape(R.strided_slice(rows, [1], [c], [c + 1]), [n]))
        col_rank = _dense_rank(ctx, *_radix_key(ctx, col, dtype))
        if rank is None:
            rank = col_rank
            continue

        # Both ranks are < n: rank * n + col_rank orders pairs lexicographically.
        def pair(r: te.Tensor, c: te.Tensor) -> te.Tensor:
            (k,) = r.shape
            return te.compute((k,), lambda i: r[i] * k + c[i], name="rank_pair")

        both = ctx.bb.emit_te(pair, rank, col_rank, primfunc_name_hint="unique_rank_pair")
        rank = _dense_rank(ctx, both, _index_bits(n, 2))
    assert rank is not None
    return rank


@lowers("Unique")
def _unique(ctx: LowerContext) -> list[relax.Expr]:
    xt = ctx.in_type(0)
    dtype = str(xt.dtype)
    axis = ctx.attrs.get("axis")
    x = ctx.arg(0)
    if axis is None:
        flat = ctx.emit(R.reshape(x, [-1]) if xt.rank != 1 else x)
        n = flat.ty.shape.values[0]
        key, bits = _radix_key(ctx, flat, dtype)
        source, take_axis = flat, 0
    else:
        axis = norm_axis(axis, xt.rank)
        n = ctx.dim(xt.shape[axis])
        rest = [d for i, d in enumerate(xt.shape) if i != axis]
        if not all(isinstance(d, int) for d in rest):
            ctx.fail(
                f"Unique along axis {axis} needs the other dims static (got {list(xt.shape)}): "
                "slices are keyed column by column"
            )
        width = int(np.prod(rest)) if rest else 1
        moved = x
        if axis != 0:
            perm = [axis] + [i for i in range(xt.rank) if i != axis]
            moved = R.permute_dims(x, perm)
        rows = ctx.emit(R.reshape(moved, [n, width]))
        if width == 1:
            key, bits = _radix_key(ctx, ctx.emit(R.reshape(rows, [n])), dtype)
        else:
            key, bits = _row_key(ctx, rows, n, width, dtype), _index_bits(n)
        source, take_axis = ctx.emit(x), axis

    order, gid, new = _groups(ctx, key, bits)
    m = _count_var(ctx, ctx.emit(R.reshape(R.sum(new), [1])), "unique_count")
    # Per group: the first position (min over the group, whatever order the sort left ties in)
    # and the count; per position: its group.
    first = _trim(ctx, _scatter(ctx, gid, order, "min", fill=None), m, "unique_first")
    ones = ctx.emit(R.ones(relax.ShapeExpr([n]), _I64))
    counts = _trim(ctx, _scatter(ctx, gid, ones, "add"), m, "unique_counts")
    inverse = _scatter(ctx, order, gid, "update")
    if not ctx.attrs.get("sorted", 1):
        # Groups by first occurrence: sort the first positions (distinct), renumber groups.
        perm = _argsort(ctx, first, _index_bits(n))
        renumber = _scatter(ctx, perm, _iota(ctx, perm), "update")
        first = ctx.emit(R.take(first, perm, axis=0))
        counts = ctx.emit(R.take(counts, perm, axis=0))
        inverse = ctx.emit(R.take(renumber, inverse, axis=0))
    y = R.take(source, first, axis=take_axis)
    return [y, first, inverse, counts][: len(ctx.node.outputs)]


# ------------------------------------------------------------------------- TopK


@lowers("TopK")
def _topk(ctx: LowerContext) -> list[relax.Expr]:
    """CUDA: TVM's topk (TOPI's GPU sort). CPU (x86, ARM): TVM's CPU topk calls
    `tvm.contrib.sort.topk`, which a runtime-only TVM lacks, so the k first entries of a
    stable radix sort are taken instead (ties: the lower index first, as ONNX says)."""
    k_list = ctx.ints(1, "K")
    assert k_list is not None
    k = k_list[0]
    xt = ctx.in_type(0)
    rank = xt.rank
    axis = norm_axis(ctx.attrs["axis"], rank)
    largest = bool(ctx.attrs["largest"])
    x = ctx.arg(0)
    dtype = str(xt.dtype)
    if ctx.target.is_gpu:
        return _topk_native(ctx, x, k, axis, largest)
    n = ctx.dim(xt.shape[axis])
    order = [*[a for a in range(rank) if a != axis], axis]
    moved = x if axis == rank - 1 else ctx.emit(R.permute_dims(x, order))
    flat = ctx.emit(R.reshape(moved, [-1]))
    key, bits = _radix_key(ctx, flat, dtype)
    if largest:
        # Descending: complement the key's bits; the sort stays stable for equal values.
        mask = -1 if bits == 64 else (1 << bits) - 1

        def flip(u: te.Tensor) -> te.Tensor:
            return te.compute(u.shape, lambda i: u[i] ^ _i64(mask), name="topk_desc_key")

        key = ctx.bb.emit_te(flip, key, primfunc_name_hint="topk_desc_key")
    by_value = _argsort(ctx, key, bits)

    # Then stably by row (the position along the other axes): rows grouped, each in order.
    def row_of(p: te.Tensor) -> te.Tensor:
        return te.compute(p.shape, lambda i: tir.floordiv(p[i], n.astype(_I64)), name="row")

    rows = ctx.bb.emit_te(row_of, by_value, primfunc_name_hint="topk_row")
    n_rows = tir.IntImm(_I64, 1)
    for a in range(rank):
        if a != axis:
            n_rows = n_rows * ctx.dim(xt.shape[a])
    n_rows = ANALYZER.simplify(n_rows)
    grouped = ctx.emit(R.take(by_value, _argsort(ctx, rows, _index_bits(n_rows)), axis=0))

    def within_row(p: te.Tensor) -> te.Tensor:
        return te.compute(p.shape, lambda i: tir.floormod(p[i], n.astype(_I64)), name="col")

    cols = ctx.bb.emit_te(within_row, grouped, primfunc_name_hint="topk_col")
    moved_shape = [ctx.dim(xt.shape[a]) for a in order]
    idx = ctx.emit(R.reshape(cols, moved_shape))
    idx = ctx.emit(R.strided_slice(idx, [rank - 1], [0], [k], assume_inbound=True))
    values = ctx.emit(R.gather_elements(moved, idx, axis=rank - 1))
    if axis != rank - 1:
        back = [order.index(a) for a in range(rank)]
        values, idx = R.permute_dims(values, back), R.permute_dims(idx, back)
    return [values, idx]


def _topk_native(
    ctx: LowerContext, x: relax.Expr, k: int, axis: int, largest: bool
) -> list[relax.Expr]:
    dt = str(ctx.in_type(0).dtype)
    if dt in ("uint64", "uint32"):
        # TVM's topk takes no unsigned 32/64-bit keys: flipping the sign bit maps them onto
        # signed ints in the same order; the values are then gathered from the input.
        signed, bits = ("int64", 63) if dt == "uint64" else ("int32", 31)
        flip = relax.const(np.array(1 << bits, dt), dt)
        keys = R.astype(R.bitwise_xor(x, flip), signed)
        idx = ctx.emit(R.topk(keys, k, axis=axis, ret_type="indices", largest=largest, dtype=_I64))
        return [R.gather_elements(x, idx, axis=axis), idx]
    out = ctx.emit(R.topk(x, k, axis=axis, ret_type="both", largest=largest, dtype=_I64))
    return [relax.TupleGetItem(out, 0), relax.TupleGetItem(out, 1)]
