"""Table lookups in registers: palettes read with register permutes instead of a gather.

A palettized matmul (ecograph::PaletteMatMul, ops/weight_panels.py) reads each weight as
`palette[g, code]` with a 4-bit code. When a vector of columns shares one palette, the
vectorized kernel reads `P[b + (x & 15)]` for a vector of codes `x & 15`: after TVM's
vectorizer that is a gather, which its LLVM code generator emits as one scalar load per lane
(measured: a 1 x 2048 x 5632 GEMV took 8.0 ms against 1.75 ms in float32). The 16 entries
`P[b : b + 16]` are one vector, so the lookup is a register permute:

- AVX-512 (16 lanes): `vpermps(P[b : b + 16], code)`; a 256-entry palette (8-bit codes):
  eight two-table `vpermi2ps` of 32 entries each, then blends on the code's bits 5 to 7;
- AVX2 (8 lanes): `vpermps` on each half `P[b : b + 8]`, `P[b + 8 : b + 16]`, then a blend
  on the code's bit 3.

The rewrite runs on the lowered TIR, after TVM's vectorizer. It takes any float32 vector load
whose index is `broadcast(b) + code` or `code` from a flat buffer, the code `x & 15` (16
entries) or uint8 values widened (256 entries; AVX-512 only), int32 or int64, and only when b
is provably in `[0, size - entries]` from the loop ranges and bindings in scope, so the table
loads never leave the buffer; every lane then reads exactly the element it read before (the
rewrite is exact, not an approximation). Other targets and cases keep the gather.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import tvm_ffi
from tvm import ir, tirx

from ecograph.backends.tvm.targets import TargetSpec

from .base import body_rewrite_pass

ENTRIES = 16
_PERMUTE = {16: "llvm.x86.avx512.permvar.sf.512", 8: "llvm.x86.avx2.permps"}
# AVX-512's two-table permute: 32 entries, selected by the code's low 5 bits
_PERMUTE2 = "llvm.x86.avx512.vpermi2var.ps.512"


def permute_lanes(spec: TargetSpec) -> int | None:
    """Vector lanes the lookup rewrite builds permutes for on `spec` (None: none)."""
    if spec.family != "x86":
        return None
    if spec.has("avx512f"):
        return 16
    return 8 if spec.has("avx2") else None


def _code_entries(e: Any, lanes: int) -> int | None:
    """How many table entries a vector of codes `e` can address: 16 for `x & 15`, 256 for
    uint8 codes widened to int32 / int64, either one cast between int32 and int64 (the code is
    in [0, entries), which both hold exactly; None: not a code vector of `lanes` lanes)."""
    if str(e.ty) not in (f"int32x{lanes}", f"int64x{lanes}"):
        return None
    if isinstance(e, tirx.Cast) and str(e.value.ty) in (f"int32x{lanes}", f"int64x{lanes}"):
        return _code_entries(e.value, lanes)
    if isinstance(e, tirx.BitwiseAnd):
        mask = e.b if isinstance(e.b, tirx.Broadcast) else e.a
        if isinstance(mask, tirx.Broadcast) and isinstance(mask.value, tirx.IntImm):
            return ENTRIES if mask.value.value == ENTRIES - 1 else None
        return None
    if isinstance(e, tirx.Cast) and str(e.value.ty) == f"uint8x{lanes}":
        return 256
    return None


def _split_index(index: Any, lanes: int) -> tuple[Any, Any, int] | None:
    """(b, code, entries) for an index `broadcast(b) + code` or `code`, else None."""
    entries = _code_entries(index, lanes)
    if entries:
        return tirx.const(0, str(index.ty).split("x")[0]), index, entries
    if not isinstance(index, tirx.Add):
        return None
    for base, code in ((index.a, index.b), (index.b, index.a)):
        entries = _code_entries(code, lanes)
        if isinstance(base, tirx.Broadcast) and entries:
            return base.value, code, entries
    return None


def rewrite_lookups(body: Any, lanes: int, counts: list[int] | None = None) -> Any:
    """`body` with every provably in-bounds lookup as register permutes; `counts`
    (if given) gets the lookups rewritten and those left as gathers added to its two items."""
    from tvm.sym.analyzer import Analyzer

    analyzer = Analyzer()
    bindings: list[tuple[Any, Any]] = []

    def bind(node: Any) -> None:
        if isinstance(node, tirx.For):
            bindings.append((node.loop_var, ir.Range.from_min_extent(node.min, node.extent)))
        elif str(node.var.ty) in ("int32", "int64"):  # not handles: indices only
            bindings.append((node.var, node.value))

    tvm_ffi.structural_walk(body, ((tirx.For, tirx.Bind, tirx.LetStmt), bind), order="pre")
    # A variable defined twice (a loop body copied by unrolling) is left unknown: a bound
    # proven from one definition must not be used for the other.
    seen = Counter(hash(var) for var, _ in bindings)  # an object's hash is its node's address
    for var, value in bindings:
        if seen[hash(var)] == 1:
            analyzer.bind(var, value)

    def permute(load: Any) -> Any:
        if str(load.ty) != f"float32x{lanes}" or len(load.indices) != 1:
            return load
        parts = _split_index(load.indices[0], lanes)
        shape = load.source.shape
        if parts is None or len(shape) != 1 or not isinstance(shape[0], tirx.IntImm):
            return load
        base, code, entries = parts
        bound = analyzer.const_int_bound(base)
        inside = bound.min_value >= 0 and bound.max_value <= int(shape[0].value) - entries
        # 256 entries: sixteen 16-lane tables (AVX-512 only)
        ok = inside and (entries == ENTRIES or lanes == ENTRIES)
        if counts is not None:
            counts[0 if ok else 1] += 1
        if not ok:
            return load  # the entries might not all be inside the buffer: a gather
        return _permute(load.source, base, code, lanes, entries)

    return tvm_ffi.structural_map(body, (ir.TensorLoad, permute))


def _permute(buffer: Any, base: Any, code: Any, lanes: int, entries: int) -> Any:
    """`buffer[base + code]` for `entries` table entries from `base` (module doc): first a
    level of permutes, each over one register of `lanes` entries or (256 entries, AVX-512)
    two of them, selected by the code's low bits; then a tree of blends, one code bit a
    level, down to one vector."""
    if str(code.ty) != f"int32x{lanes}":
        code = tirx.Cast(f"int32x{lanes}", code)  # a code in [0, entries): exact
    ty = f"float32x{lanes}"

    def table(offset: int) -> Any:
        return tirx.BufferLoad(buffer, [tirx.Ramp(base + offset, 1, lanes)])

    if entries == ENTRIES:  # one vpermps on AVX-512, one per half on AVX2
        level = [
            tirx.call_llvm_pure_intrin(ty, _PERMUTE[lanes], table(o), code)
            for o in range(0, entries, lanes)
        ]
    else:  # eight two-table permutes of 32 entries each
        level = [
            tirx.call_llvm_pure_intrin(ty, _PERMUTE2, table(o), code, table(o + lanes))
            for o in range(0, entries, 2 * lanes)
        ]
    bit = entries // len(level)  # the lowest code bit the permutes did not use
    zero = tirx.Broadcast(tirx.const(0, "int32"), lanes)
    while len(level) > 1:
        high = (code & tirx.Broadcast(tirx.const(bit, "int32"), lanes)) != zero
        level = [tirx.Select(high, level[i + 1], level[i]) for i in range(0, len(level), 2)]
        bit *= 2
    return level[0]


def lookup_permute_pass(
    spec: TargetSpec, report: dict[str, tuple[int, int]] | None = None
) -> Any | None:
    """A module pass rewriting table lookups into permutes for `spec` (module doc), or
    None on targets without one. `report` gets, per function with lookups, (permutes,
    gathers left)."""
    lanes = permute_lanes(spec)
    if lanes is None:
        return None

    def rewrite(body: Any, name: str) -> Any:
        counts = [0, 0]
        out = rewrite_lookups(body, lanes, counts)
        if report is not None and any(counts):
            report[name.removeprefix("__tvm_ffi_")] = (counts[0], counts[1])
        return out

    return body_rewrite_pass("EcographTableLookups", rewrite, named=True)


__all__ = ["lookup_permute_pass", "permute_lanes", "rewrite_lookups"]
