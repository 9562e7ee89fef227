"""Exact 8-bit matrix products on CPUs: a register-blocked tile whose inner step is the target's
dot-product instruction, with the dequantizing epilogue fused into the tile.

The lowering (ops/matmul.py, `emit_packed_integer_matmul`) packs a constant weight at compile
time for the kernel `int8_kernel` picks from the target's facts, and emits

    tile[.., i, j] = sum_k (int32(A[.., min(i, M - 1), k]) [+ delta])
                           * int32(Wp[j // NR, k // G, j % NR, k % G])
    out[.., i, j]  = tile[.., i, j] + (zero-point corrections)

(`[j // NR, k, j % NR]` when G = 1), rows padded to the tile's MR, columns to NR, K to G. This
rule recognizes that form by its structure, tiles it MR x NR like the float32 rule (accumulators
on the stack, promoted to registers) and replaces each `lanes x G` step by one instruction:

| target                      | instruction                  | lanes x G  | Wp    | A             |
|-----------------------------|------------------------------|------------|-------|---------------|
| x86 AVX-512 VNNI            | vpdpbusd zmm                 | 16 x 4     | int8  | u8 (s8^0x80)  |
| x86 AVX-VNNI (Alder Lake)   | {vex} vpdpbusd ymm           | 8 x 4      | int8  | u8 (s8^0x80)  |
| x86 AVX-512BW / AVX2 / SSE2 | vpmaddwd (int16, exact)      | 16/8/4 x 2 | int16 | widened       |
| ARM +i8mm, u8 A             | usdot                        | 4 x 4      | int8  | u8            |
| ARM +dotprod                | sdot                         | 4 x 4      | int8  | s8 (u8^0x80)  |
| ARM NEON, other CPUs        | LLVM's widening multiply-add | 4 x 1      | int16 | widened       |

`delta` is +128 when a signed A feeds vpdpbusd (it takes u8) and -128 when an unsigned A feeds
sdot; the instruction flips A's sign bit, which computes exactly `(a + delta) * w`, and the
lowering subtracts `delta * colsum(Wp)` (a compile-time vector) in the epilogue. vpmaddubsw is not
used: its u8 x s8 pair sums saturate at int16 (2 * 255 * 127 > 32767); vpmaddwd multiplies int16
pairs into int32 and is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm import ir, s_tir, tirx
from tvm.s_tir.schedule import SBlockRV

from ecograph.backends.tvm.targets import TargetSpec

from .analysis import iter_kinds, loops_match_iters, split_epilogue, static_int, uses
from .base import CPURule, schedule_injective
from .loops import iterations, op_count, stored_value, worth_parallel
from .matmul import register_tile

SIGN_FLIP = -2139062144  # 0x80808080 as int32: flips the sign bit of four packed bytes


@dataclass(frozen=True)
class Int8Kernel:
    """How a CPU multiplies 8-bit matrices exactly: `lanes` int32 accumulators per vector
    instruction, each summing `group` consecutive k; the weight packed as `weight_dtype`; A
    multiplied as `a + a_offset`; `intrin` the tensor intrinsic (None: LLVM vectorizes)."""

    name: str
    lanes: int
    group: int
    weight_dtype: str
    a_offset: int
    intrin: str | None


def int8_kernel(spec: TargetSpec, a_dtype: str) -> Int8Kernel | None:
    """The kernel for an A of `a_dtype` ("uint8" / "int8") on `spec`; None for GPUs."""
    if spec.is_gpu or a_dtype not in ("uint8", "int8"):
        return None
    flip_to_u8 = 128 if a_dtype == "int8" else 0
    if spec.family == "x86":
        if spec.has("avx512vnni") and spec.has("avx512bw"):
            return _kernel("vnni", 16, 4, "int8", flip_to_u8, a_dtype)
        if spec.has("avxvnni"):
            return _kernel("vnni", 8, 4, "int8", flip_to_u8, a_dtype)
        if spec.has("avx512bw"):
            return _kernel("pmaddwd", 16, 2, "int16", 0, a_dtype)
        if spec.has("avx2"):
            return _kernel("pmaddwd", 8, 2, "int16", 0, a_dtype)
        if spec.has("sse2"):
            return _kernel("pmaddwd", 4, 2, "int16", 0, a_dtype)
    if spec.family == "arm" and spec.has("neon"):
        if a_dtype == "uint8" and spec.has("i8mm"):
            return _kernel("usdot", 4, 4, "int8", 0, a_dtype)
        if spec.has("dotprod"):
            return _kernel("sdot", 4, 4, "int8", -128 if a_dtype == "uint8" else 0, a_dtype)
    lanes = max(1, spec.vector_bits // 32)
    return Int8Kernel("widen", lanes, 1, "int16", 0, None)


def int8_tile(spec: TargetSpec, kernel: Int8Kernel, n: int | None, *, single_row: bool,
              nr: int | None = None) -> tuple[int, int]:  # fmt: skip
    """(MR, NR) of the int32 accumulator tile: the float32 rule's register blocking counted in
    the kernel's lanes (NR a multiple of them; the lowering pads N to NR)."""
    mr, nr = register_tile(spec, n, single_row=single_row, nr=nr)
    if nr % kernel.lanes:
        nr = -(-nr // kernel.lanes) * kernel.lanes
    return mr, nr


# ------------------------------------------------------------------ tensor intrinsics

_REGISTERED: set[str] = set()


def _kernel(name: str, lanes: int, group: int, wdt: str, offset: int, a_dtype: str) -> Int8Kernel:
    intrin = f"ecograph_{name}_{lanes}x{group}_{a_dtype}"
    if intrin not in _REGISTERED:
        from tvm.s_tir import TensorIntrin

        desc = _desc(lanes, group, a_dtype, wdt, offset)
        impl = _IMPLS[name](lanes, a_dtype, offset)
        TensorIntrin.register(intrin, desc, impl, override=True)
        _REGISTERED.add(intrin)
    return Int8Kernel(name, lanes, group, wdt, offset, intrin)


def _desc(lanes: int, group: int, a_dtype: str, wdt: str, offset: int) -> tirx.PrimFunc:
    """`C[i] += (int32(A[k]) + offset) * int32(B[i, k])`: the tile block's inner step, in exactly
    the form the lowering's TE expression takes (`shifted_a`)."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((group,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, group), wdt, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, group):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + shifted_a(T.cast(A[vk], "int32"), offset) * T.cast(
                        B[vi, vk], "int32"
                    )

    return desc


def shifted_a(x: Any, offset: int) -> Any:
    """`x + offset` as TE writes it (a negative offset as a subtraction)."""
    if offset > 0:
        return x + offset
    return x - (-offset) if offset else x


def _vnni_impl(lanes: int, a_dtype: str, offset: int) -> tirx.PrimFunc:
    """vpdpbusd: lanes int32 += four u8 x s8 products each. A's four bytes are broadcast to
    every lane (sign bits flipped for a signed A: a ^ 0x80 = a + 128 as u8). The LLVM bundled
    with TVM 0.27 declares the operands as bytes (<64 x i8>), not as TVM's stock int32 vectors."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    name = "llvm.x86.avx512.vpdpbusd.512" if lanes == 16 else "llvm.x86.avx512.vpdpbusd.256"
    flip = SIGN_FLIP if offset else 0
    nb = lanes * 4

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a32 = T.reinterpret(A.vload([0], f"{a_dtype}x4"), dtype="int32")
            a_u8 = T.reinterpret(T.broadcast(T.bitwise_xor(a32, flip), lanes), dtype=f"uint8x{nb}")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(name),
                C.vload([0], dtype=f"int32x{lanes}"),
                a_u8,
                B.vload([0, 0], dtype=f"int8x{nb}"),
                dtype=f"int32x{lanes}",
            )

    return impl


def _pmaddwd_impl(lanes: int, a_dtype: str, offset: int) -> tirx.PrimFunc:
    """vpmaddwd: lanes int32 += two int16 x int16 products each (|a * w| <= 255 * 383 and the
    pair sum fit int32: exact). A's two bytes are widened to int16 and broadcast."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    name = {
        16: "llvm.x86.avx512.pmaddw.d.512",
        8: "llvm.x86.avx2.pmadd.wd",
        4: "llvm.x86.sse2.pmadd.wd",
    }[lanes]
    nh = lanes * 2

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, 2), "int16", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            a32 = T.reinterpret(T.cast(A.vload([0], f"{a_dtype}x2"), "int16x2"), dtype="int32")
            a16 = T.reinterpret(T.broadcast(a32, lanes), dtype=f"int16x{nh}")
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=f"int32x{lanes}") + (
                T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(name),
                    a16,
                    B.vload([0, 0], dtype=f"int16x{nh}"),
                    dtype=f"int32x{lanes}",
                )
            )

    return impl


def _dot_impl(instr: str) -> Any:
    """ARM sdot / usdot: 4 int32 += four 8-bit products each; A's four bytes broadcast (sign
    bits flipped for an unsigned A into sdot: a ^ 0x80 = a - 128 as s8)."""

    def build(lanes: int, a_dtype: str, offset: int) -> tirx.PrimFunc:
        from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

        name = f"llvm.aarch64.neon.{instr}.v4i32.v16i8"
        flip = SIGN_FLIP if offset else 0
        a_vec = "uint8x16" if instr == "usdot" else "int8x16"

        @T.prim_func(s_tir=True)
        def impl(
            A: T.Buffer((4,), a_dtype, offset_factor=1),
            B: T.Buffer((4, 4), "int8", offset_factor=1),
            C: T.Buffer((4,), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:4], A[0:4], B[0:4, 0:4])
                T.writes(C[0:4])
                a32 = T.reinterpret(A.vload([0], f"{a_dtype}x4"), dtype="int32")
                a8 = T.reinterpret(T.broadcast(T.bitwise_xor(a32, flip), 4), dtype=a_vec)
                C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(name),
                    C.vload([0], dtype="int32x4"),
                    a8,
                    B.vload([0, 0], dtype="int8x16"),
                    dtype="int32x4",
                )

        return impl

    return build


_IMPLS = {
    "vnni": _vnni_impl,
    "pmaddwd": _pmaddwd_impl,
    "sdot": _dot_impl("sdot"),
    "usdot": _dot_impl("usdot"),
}


# ------------------------------------------------------------------ the rule


@dataclass
class Int8Product:
    """A tile block of the packed 8-bit form (see the module doc), in its loop positions."""

    block: SBlockRV
    lead: list[int]  # batch iters (outer loops, never split)
    row: int | None  # the row iter, None when the product has no row iter
    col: int  # the column iter (last spatial)
    nr: int
    group: int
    a_dtype: str
    w_dtype: str
    a_offset: int


def int8_product(sch: s_tir.Schedule, block: SBlockRV) -> Int8Product | None:
    """The block as a packed 8-bit product, or None."""
    if not loops_match_iters(sch, block):
        return None
    kinds = iter_kinds(sch, block)
    if kinds.count("R") != 1 or not kinds.endswith("R") or "O" in kinds or len(kinds) < 2:
        return None
    realize = sch.get(block)
    ivars = [iv.var for iv in realize.iter_vars]
    spatial, k = ivars[:-1], ivars[-1]
    store = realize.body
    if not isinstance(store, tirx.BufferStore) or realize.init is None:
        return None
    if str(store.buffer.dtype) != "int32" or len(store.indices) != len(spatial):
        return None
    if not all(
        isinstance(x, tirx.Var) and x.same_as(v)
        for x, v in zip(store.indices, spatial, strict=True)
    ):
        return None
    value = store.value
    if not isinstance(value, tirx.Add) or not isinstance(value.b, tirx.Mul):
        return None
    acc = value.a
    if not (isinstance(acc, ir.TensorLoad) and acc.source.same_as(store.buffer)):
        return None
    j = spatial[-1]
    a_term, w_term = value.b.a, value.b.b
    packed = _packed_weight(w_term, j, k)
    a_side = _a_operand(a_term, j, k)
    if packed is None or a_side is None:
        return None
    nr, group, w_dtype = packed
    a_load, offset = a_side
    row_ix = a_load.indices[-2] if len(a_load.indices) >= 2 else None
    rows = [i for i, v in enumerate(spatial[:-1]) if row_ix is not None and uses(row_ix, v)]
    lead = [i for i, v in enumerate(spatial[:-1]) if i not in rows]
    if len(rows) > 1 or any(not uses(a_load.indices, spatial[i]) for i in lead):
        return None
    return Int8Product(
        block=block,
        lead=lead,
        row=rows[0] if rows else None,
        col=len(spatial) - 1,
        nr=nr,
        group=group,
        a_dtype=str(a_load.source.dtype),
        w_dtype=w_dtype,
        a_offset=offset,
    )


def _packed_weight(term: Any, j: tirx.Var, k: tirx.Var) -> tuple[int, int, str] | None:
    """(NR, G, dtype) for `int32(Wp[j // NR, k // G, j % NR, k % G])` (`[j // NR, k, j % NR]`
    when G is 1)."""
    if not (isinstance(term, tirx.Cast) and str(term.ty) == "int32"):
        return None
    load = term.value
    if not isinstance(load, ir.TensorLoad) or str(load.source.dtype) not in ("int8", "int16"):
        return None
    ix = list(load.indices)
    nr = _div_mod(ix[0], ix[2], j) if len(ix) in (3, 4) else None
    if nr is None:
        return None
    if len(ix) == 3:
        return (nr, 1, str(load.source.dtype)) if _is(ix[1], k) else None
    group = _div_mod(ix[1], ix[3], k)
    return None if group is None else (nr, group, str(load.source.dtype))


def _div_mod(div: Any, mod: Any, var: tirx.Var) -> int | None:
    """d when `div` is `var // d` and `mod` is `var % d`."""
    if not (isinstance(div, tirx.FloorDiv) and isinstance(mod, tirx.FloorMod)):
        return None
    if not (_is(div.a, var) and _is(mod.a, var)):
        return None
    if not (isinstance(div.b, tirx.IntImm) and isinstance(mod.b, tirx.IntImm)):
        return None
    d = int(div.b.value)
    return d if int(mod.b.value) == d else None


def _a_operand(term: Any, j: tirx.Var, k: tirx.Var) -> tuple[Any, int] | None:
    """(the load of A, offset) for `int32(A[.., k])` or `int32(A[.., k]) + offset`."""
    offset = 0
    if isinstance(term, (tirx.Add, tirx.Sub)) and isinstance(term.b, tirx.IntImm):
        offset = int(term.b.value) * (1 if isinstance(term, tirx.Add) else -1)
        term = term.a
    if not (isinstance(term, tirx.Cast) and str(term.ty) == "int32"):
        return None
    load = term.value
    if not isinstance(load, ir.TensorLoad) or str(load.source.dtype) not in ("uint8", "int8"):
        return None
    if not load.indices or not _is(load.indices[-1], k) or uses(load.indices, j):
        return None
    if any(uses(ix, k) for ix in load.indices[:-1]):
        return None
    return load, offset


def _is(expr: Any, var: tirx.Var) -> bool:
    return isinstance(expr, tirx.Var) and expr.same_as(var)


class Int8Matmul(CPURule):
    """The packed 8-bit product (module doc) with its epilogue; other blocks before it (e.g. a
    fused quantization of A) are scheduled as element-wise loops."""

    name = "int8-matmul"

    def apply(self, func: tirx.PrimFunc, target: Any, tunable: bool) -> s_tir.Schedule | None:
        if self._find(s_tir.Schedule(func)) is None:
            return None
        for fuse_epilogue in (True, False):
            sch = s_tir.Schedule(func)
            found = self._find(sch)
            assert found is not None
            info, kernel, before, after = found
            after, rest = split_epilogue(sch, after)
            try:
                self._schedule(sch, info, kernel, before, after, fuse_epilogue)
                for blk in rest:  # elements that read no product: loops of their own
                    schedule_injective(sch, blk, kernel.lanes)
            except s_tir.ScheduleError:
                continue
            return sch
        return None

    def _find(
        self, sch: s_tir.Schedule
    ) -> tuple[Int8Product, Int8Kernel, list[SBlockRV], list[SBlockRV]] | None:
        blocks = self.blocks(sch)
        reductions = [b for b in blocks if "R" in iter_kinds(sch, b)]
        if len(reductions) != 1:
            return None
        info = int8_product(sch, reductions[0])
        if info is None:
            return None
        kernel = int8_kernel(self.spec, info.a_dtype)
        if kernel is None or (kernel.group, kernel.weight_dtype, kernel.a_offset) != (
            info.group,
            info.w_dtype,
            info.a_offset,
        ):
            return None  # packed for another target
        if info.nr % kernel.lanes:
            return None
        at = [sch.get(b).name_hint for b in blocks].index(sch.get(info.block).name_hint)
        before, after = blocks[:at], blocks[at + 1 :]
        if any(iter_kinds(sch, b).strip("S") for b in before + after):
            return None
        return info, kernel, before, after

    def _schedule(
        self,
        sch: s_tir.Schedule,
        info: Int8Product,
        kernel: Int8Kernel,
        producers: list[SBlockRV],
        epilogue: list[SBlockRV],
        fuse: bool,
    ) -> None:
        lanes = kernel.lanes
        block = info.block
        loops = sch.get_loops(block)
        extents = [static_int(sch.get(lp).extent) for lp in loops]
        single_row = info.row is None or extents[info.row] == 1
        mr, nr = int8_tile(self.spec, kernel, None, single_row=single_row, nr=info.nr)
        # The lowering pads rows to MR and columns to NR: tiles need no predicate (tensorize
        # cannot take one).
        if nr != info.nr or not _multiple(sch.get(loops[info.col]).extent, nr):
            raise s_tir.ScheduleError("the columns are not padded to the packed panels")
        if info.row is not None and not _multiple(sch.get(loops[info.row]).extent, mr):
            raise s_tir.ScheduleError("the rows are not padded to the tile's MR")
        k_len = extents[-1]
        if k_len is None or k_len % kernel.group:
            raise s_tir.ScheduleError("K is not a static multiple of the kernel's group")
        ku = next(u for u in (4, 2, 1) if (k_len // kernel.group) % u == 0)

        for p in producers:
            schedule_injective(sch, p, lanes, parallel=False)
        batch = [loops[i] for i in info.lead]
        m = loops[info.row] if info.row is not None else sch.add_unit_loop(loops[info.col])
        io, ii = sch.split(m, [None, mr])
        jo, jb, jv = sch.split(loops[info.col], [None, nr // lanes, lanes])
        ko, kk, kv = sch.split(loops[-1], [None, ku, kernel.group])
        sch.reorder(*batch, io, jo, ko, kk, ii, jb, jv, kv)

        if fuse and epilogue:
            for blk in epilogue[:-1]:
                sch.compute_inline(blk)
            out = epilogue[-1]
            sch.reverse_compute_at(out, jo)
        else:
            out = sch.cache_write(block, 0, "global")
            sch.reverse_compute_at(out, jo)
        # The MR x NR accumulators: a "global" buffer under 1,024 bytes, which TVM keeps on the
        # stack and LLVM in registers (schedules/matmul.py, STACK_BYTES).
        sch.set_scope(block, 0, "global")
        rank = len(info.lead) + (info.row is not None) + 1

        def tile_index(*ix: Any) -> tuple[Any, Any]:
            col = ix[rank - 1]
            row = ix[info.row] if info.row is not None else tirx.const(0, str(col.ty))
            return row % mr, col % nr

        sch.transform_layout(block, ("write", 0), tile_index, assume_injective_transform=True)
        _vectorize_inner(sch, out, lanes)
        sch.parallel(sch.fuse(*batch, io, jo))
        if kernel.intrin is None:
            sch.vectorize(jv)  # before decompose_reduction, which TVM requires
            sch.unroll(kv)
        sch.unroll(jb)
        sch.unroll(ii)
        sch.unroll(kk)
        init = sch.decompose_reduction(block, ko)
        _vectorize_inner(sch, init, lanes)
        if kernel.intrin is not None:
            sch.tensorize(jv, kernel.intrin)
        if not (fuse and epilogue):
            for blk in epilogue:
                schedule_injective(sch, blk, lanes)


def _multiple(extent: Any, factor: int) -> bool:
    """Whether a loop extent (static, or symbolic like `(m + 4) // 5 * 5`) divides by factor."""
    from tvm.sym.analyzer import Analyzer

    return bool(Analyzer().can_prove_equal(tirx.floormod(extent, factor), 0))


def _vectorize_inner(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
    """Vectorize a tile-local block's innermost loop by `lanes` (left scalar if it cannot)."""
    inner = sch.get_loops(block)[-1]
    extent = static_int(sch.get(inner).extent)
    if extent is None or extent % lanes or lanes == 1:
        return
    if extent > lanes:
        _, inner = sch.split(inner, [None, lanes])
    sch.vectorize(inner)


# ------------------------------------------------ the dynamic-quantization prologue
#
# DynamicQuantizeLinear lowers on CPUs to two kernels (ops/quant.py): the range (min and max of
# the whole tensor, then the scale and zero point, scalar blocks) and the quantization
# (`u8(clip(round(x / scale) + zero_point, 0, 255))`, element-wise). TVM leaves both as
# scalar loops; these rules vectorize them.


class QuantizeRange(CPURule):
    """Reductions to scalars (min, max) followed by scalar blocks that produce an 8-bit zero
    point. A reduction to W partial results (`part[c] = min/max over rows, o of
    x[.., o * W + c]`, the lowering's form) is computed with c innermost: W / lanes independent
    vector registers, one per unrolled chain, reading each row contiguously."""

    name = "quantize-range"

    def apply(self, func: tirx.PrimFunc, target: Any, tunable: bool) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        blocks = self.blocks(sch)
        kinds = [iter_kinds(sch, b) for b in blocks]
        pairs = list(zip(blocks, kinds, strict=True))
        partial = [b for b, k in pairs if k.startswith("SR") and not k[1:].strip("R")]
        full = [b for b, k in pairs if k and not k.strip("R")]
        scalar = [b for b, k in pairs if not k.strip("S") and not sch.get_loops(b)]
        if not full or len(partial) + len(full) + len(scalar) != len(blocks):
            return None
        if not any(str(sch.get(b).writes[0].source.dtype) in ("uint8", "int8") for b in scalar):
            return None
        lanes = max(1, self.spec.vector_bits // 32)
        for b in partial:
            self._vectorize(sch, b, lanes)
        return sch

    @staticmethod
    def _vectorize(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
        c, *reduce = sch.get_loops(block)
        width = static_int(sch.get(c).extent)
        if width is None or width % lanes or lanes == 1:
            return
        sch.reorder(*reduce, c)
        chains, vec = sch.split(c, [None, lanes])
        sch.vectorize(vec)
        sch.unroll(chains)
        init = sch.decompose_reduction(block, reduce[0])
        _, init_vec = sch.split(sch.get_loops(init)[-1], [None, lanes])
        sch.vectorize(init_vec)


class Quantize(CPURule):
    """An element-wise kernel from float to 8-bit values (a quantization): the innermost loop
    vectorized, the outer ones parallel when the work pays for a thread-pool launch
    (`loops.worth_parallel`; a MiniLM activation, 128 x 384, does not)."""

    name = "quantize"

    def apply(self, func: tirx.PrimFunc, target: Any, tunable: bool) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        blocks = self.blocks(sch)
        if not blocks or any(iter_kinds(sch, b).strip("S") for b in blocks):
            return None
        last = sch.get(blocks[-1])
        if len(last.writes) != 1 or str(last.writes[0].source.dtype) not in ("uint8", "int8"):
            return None
        if not any(str(r.source.dtype) == "float32" for r in last.reads):
            return None
        try:
            for b in blocks[:-1]:
                sch.compute_inline(b)
        except s_tir.ScheduleError:
            return None
        block = blocks[-1]
        work = iterations(sch, sch.get_loops(block))
        parallel = worth_parallel(work, op_count(stored_value(sch, block)))
        schedule_injective(sch, block, max(1, self.spec.vector_bits // 32), parallel=parallel)
        return sch
