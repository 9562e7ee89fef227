"""4-bit weights times 8-bit activations on CPUs: the kernel of DequantizeMatMul's
`activation_block` (ecograph/ir/ops/weight_only.py).

A DequantizeMatMul with `activation_block` = B quantizes each row of A in blocks of B (symmetric
int8, one float32 scale per block). When B equals the weight's group size, every product of a
block is an exact integer sum,

    Y[i, j] = sum_g sa[i, g] * sw[g, j] * (P[i, g, j] - z[g, j] * R[i, g])
    P[i, g, j] = sum_{k in g} qa[i, k] * code[k, j],   R[i, g] = sum_{k in g} qa[i, k]

with `code` the unsigned 4-bit code (a signed int4 weight w is stored as code w + 8, z = 8), so
the inner loop multiplies bytes: AVX2's vpmaddubsw takes 32 unsigned codes and 32 signed
activations and adds adjacent products into 16 int16 lanes. |code * qa| <= 15 * 127, so four
steps (32 k) add in int16 without saturating (8 * 3810 = 30480 < 32767); vpmaddwd with ones
then widens them into the int32 sums, and each block ends with one float fused multiply-add per
lane. llama.cpp's Q4 x Q8 dot product and ONNX Runtime's MatMulNBits at accuracy_level 4 are
built the same way.

Two kernels, both written here as TIR by hand: the prologue (`prologue_kernel`) quantizes A
and sums each block's codes, vectorized along each block (the CPU rules' fallback, which its
TE form took, vectorized neither the max nor the sums); the product, because its inner step
is instructions the schedule rules do not produce (the same reason the 8-bit rule
tensorizes). Layout, for
column panels of NR = 32 (four vectors of 8 lanes):

- codes `[N / 32, K / 8, 32, 4]` uint8: byte c of column j in row t holds the code of
  k = 8t + c in its low nibble and of k = 8t + 4 + c in its high nibble, so the low nibbles of
  one 32-byte load are the 4 k of 8 columns that one vpmaddubsw + vpmaddwd pair sums per lane;
- weight scales and zero points `[N / 32, K / B, 32]` (float32, int32), zero-padded columns:
  the matmul kernels' column panels of their [K / B, N] grids (`pack_panels`).

x86 CPUs with AVX-512 VNNI (Zen 4, Cascade Lake and later Xeons) or AVX-VNNI (Alder Lake)
run the same layout with `vpdpbusd`, which takes unsigned bytes (the codes) times signed bytes
(the activations) and adds each lane's four products straight into int32: a 64-byte (zmm) or
32-byte (ymm) load holds 16 or 8 columns' codes, no int16 step. Other x86 CPUs with AVX2 run
the AVX2 instructions above. ARM CPUs with the dot-product extension (+dotprod: Cortex-A76 /
Neoverse N1 and later) run the layout with `sdot`: a 16-byte load holds 4 columns' codes, and
each sdot adds the four products of a lane straight into int32 (the codes 0..15 are valid
signed bytes). The packed weights are the same for every x86 kind. A K that is not a whole
number of blocks is padded to one (`padded_k`): the prologue writes code 0 past K, so the
padded weight rows add nothing. Other targets, and
nodes whose layout does not fit (8-bit weights, B not equal to the weight groups or not a
multiple of 32), compute the same A' with a quantize-dequantize of A before the float kernels
(`fake_quantize_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tvm import relax, tirx

from ecograph.backends.tvm.context import LowerContext, R
from ecograph.backends.tvm.ops.matmul import pack_panels
from ecograph.backends.tvm.targets import TargetSpec
from ecograph.ir.ops.weight_only import ACTIVATION_QMAX, ACTIVATION_TINY

if TYPE_CHECKING:
    from ecograph.backends.tvm.ops.weight_panels import WeightPanels

NR = 32  # columns per panel: four AVX2 vectors
LANES = 8
STEP = 8  # k per byte row (low and high nibble of 4 bytes)
CHAIN = 4  # byte rows added in int16 before widening (module doc: 4 * 7620 < 32767)
RULE = "int4-a8"  # the kernel's name in profiles (the `ecograph.schedule` attribute)
PROLOGUE_RULE = "int4-a8-prologue"  # the activation prologue's


@dataclass(frozen=True)
class A8Layout:
    """What the product kernel is generated for: K, N, the block B, and `zero` (the codes'
    zero point when it is one number; None: a zero-point panel is passed)."""

    k: int
    n: int
    block: int
    zero: int | None

    @property
    def n_pad(self) -> int:
        return -(-self.n // NR) * NR

    @property
    def k_pad(self) -> int:
        return padded_k(self.k, self.block)


def padded_k(k: int, block: int) -> int:
    """K rounded up to whole blocks: a short last block is padded with zero activations
    (their codes add nothing to the sums)."""
    return -(-k // block) * block


KINDS = ("avx512vnni", "avxvnni", "avx2", "sdot")


def isa(spec: TargetSpec) -> str | None:
    """Which integer kernel `spec` runs: "avx512vnni" (x86 with AVX-512 VNNI: vpdpbusd on
    zmm), "avxvnni" (AVX-VNNI: vpdpbusd on ymm), "avx2" (other x86 with AVX2), "sdot" (ARM
    with the dot product extension), or None."""
    if spec.is_gpu:
        return None
    if spec.family == "x86" and spec.has("avx512vnni") and spec.has("avx512bw"):
        return "avx512vnni"
    if spec.family == "x86" and spec.has("avxvnni"):
        return "avxvnni"
    if spec.family == "x86" and spec.has("avx2"):
        return "avx2"
    if spec.family == "arm" and spec.has("dotprod"):
        return "sdot"
    return None


def fits(k: int, block: int, activation_block: int) -> bool:
    """Whether a product of K rows, weight groups of `block` and activation blocks of
    `activation_block` fits the kernel's layout (module doc; a K that is not a whole number
    of blocks is padded, `padded_k`)."""
    return k > 0 and block == activation_block and block % (STEP * CHAIN) == 0


def pack_codes(codes: np.ndarray, block: int) -> np.ndarray:
    """[K, N] unsigned 4-bit codes -> [N_pad / 32, K_pad / 8, 32, 4] uint8 (module doc): the
    matmul kernels' column panels (`pack_panels`), each row pair of nibbles in one byte; K
    padded to whole blocks with code 0 (the activations there are 0)."""
    rows = padded_k(codes.shape[0], block) - codes.shape[0]
    codes = np.pad(codes.astype(np.uint8), ((0, rows), (0, 0)))
    panels = pack_panels(codes, NR)  # [N_pad / 32, K_pad, 32]
    u = panels.reshape(panels.shape[0], -1, 2, 4, NR)  # k = 8t + 4h + c
    pairs = u[:, :, 0] | (u[:, :, 1] << 4)  # [N_pad / 32, K / 8, 4, 32]
    return np.ascontiguousarray(pairs.transpose(0, 1, 3, 2))


# ------------------------------------------------------------------ the activation prologue


def _scales(a: Any, block: int, k_len: int) -> Any:
    """TE: s[.., g] = max(max |a| over block g, tiny) / 127 (the last block may be short)."""
    from tvm import te

    groups = -(-k_len // block)
    kk = te.reduce_axis((0, block), "kk")

    def absmax(*ix: Any) -> Any:
        k = ix[-1] * block + kk
        inside = k < k_len
        v = a[(*ix[:-1], tirx.min(k, k_len - 1))]
        return te.max(tirx.if_then_else(inside, tirx.abs(v), tirx.const(0.0, "float32")), axis=kk)

    amax = te.compute([*a.shape[:-1], groups], absmax, name="act_absmax")
    tiny, qmax = tirx.const(ACTIVATION_TINY, "float32"), tirx.const(ACTIVATION_QMAX, "float32")
    return te.compute(amax.shape, lambda *ix: tirx.max(amax[ix], tiny) / qmax, name="act_scale")


def _code(a: Any, s: Any, ix: tuple[Any, ...], block: int) -> Any:
    """clip(round_half_even(a / s), -127, 127) as float32 for element `ix` of `a`."""
    r = tirx.nearbyint(a[ix] / s[(*ix[:-1], ix[-1] // block)])  # half to even
    qmax = tirx.const(ACTIVATION_QMAX, "float32")
    return tirx.max(tirx.min(r, qmax), -qmax)


def fake_quantize_blocks(ctx: LowerContext, block: int, k_len: int) -> relax.Expr:
    """A' (the node's input 0) = codes * scales of the module doc, in float32 (for the float
    kernels); once per input and block for every product that reads the same A
    (`LoweringState.shared`)."""
    from tvm import te

    key = ("activation blocks in float32", ctx.node.input(0), block)
    if key in ctx.state.shared:
        return ctx.state.shared[key]

    def compute(x: Any) -> Any:
        s = _scales(x, block, k_len)
        return te.compute(
            x.shape,
            lambda *ix: _code(x, s, ix, block) * s[(*ix[:-1], ix[-1] // block)],
            name="act_fake_quantize",
        )

    out = ctx.bb.emit_te(compute, ctx.arg(0), primfunc_name_hint="activation_blocks")
    ctx.state.shared[key] = out
    return out


def quantize_blocks(
    ctx: LowerContext, a: relax.Expr, rows: Any, block: int, k_len: int
) -> relax.Expr:
    """(codes int8 [M, K_pad], scales float32 [M, K_pad / B], code sums int32 [M, K_pad / B])
    of a 2-D A of `rows` (M) rows; codes past K are 0 (`padded_k`). One call of
    `prologue_kernel`."""
    from ecograph.backends.tvm.schedules.matmul import lanes_for

    k_pad = padded_k(k_len, block)
    groups = k_pad // block
    gv = ctx.bb.add_func(
        prologue_kernel(k_len, block, lanes_for(ctx.target)), "quantize_activation_blocks"
    )
    outs = [
        relax.TensorType([rows, k_pad], "int8"),
        relax.TensorType([rows, groups], "float32"),
        relax.TensorType([rows, groups], "int32"),
    ]
    return relax.call_tir(gv, [a], outs)


PARALLEL_ROWS = 8  # rows from which the prologue runs its rows in parallel


def prologue_kernel(k_len: int, block: int, lanes: int) -> tirx.PrimFunc:
    """The activation prologue as a hand-scheduled PrimFunc `(A [M, K], codes, scales, sums)`
    (M symbolic; the outputs of `quantize_blocks`): per row and block, |A|'s max in vectors
    of `lanes` then halved to one lane, the scale, the codes (vectors again) and their sum;
    the same arithmetic as `_scales` / `_code` (bit for bit: max and integer sums do not
    depend on order). Rows run in parallel from PARALLEL_ROWS rows (a decode step's one row
    would pay the thread pool's launch). The TE form it replaces took the fallback rule:
    unvectorized max, codes summed with gathers (2.4 us for one row of 1536 on Zen 4)."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T  # noqa: N812  (TVM's own spelling)

    from ecograph.backends.tvm.schedules.base import halve_lanes

    i64, f32 = (lambda v: tirx.const(v, "int64")), (lambda v: tirx.const(v, "float32"))
    k_pad = padded_k(k_len, block)
    groups, vectors = k_pad // block, block // lanes
    assert block % lanes == 0, (block, lanes)
    # s_tir: a root block, which Relax's RewriteDataflowReshape requires of a call_tir's
    # PrimFunc with one tensor input (it checks whether the function is a reshape)
    with IRBuilder() as ib, T.prim_func(s_tir=True):
        T.func_name("quantize_activation_blocks")
        T.func_attr(
            {"tirx.noalias": True, "tirx.is_scheduled": True, "ecograph.schedule": PROLOGUE_RULE}
        )
        m = tirx.Var("m", "int64")
        a = T.arg("a", T.Buffer((m, i64(k_len)), "float32"))
        codes = T.arg("codes", T.Buffer((m, i64(k_pad)), "int8"))
        scales = T.arg("scales", T.Buffer((m, i64(groups)), "float32"))
        sums = T.arg("sums", T.Buffer((m, i64(groups)), "int32"))

        def row(i: Any) -> None:
            vmax = T.decl_buffer((lanes,), "float32", scope="global")
            vsum = T.decl_buffer((lanes,), "int32", scope="global")

            def block_of(g: Any, partial: bool) -> None:
                def at(v: Any, ln: Any) -> tuple[Any, Any]:
                    k = g * i64(block) + v * i64(lanes) + ln
                    return k, a[i, tirx.min(k, i64(k_len - 1)) if partial else k]

                with T.vectorized(0, i64(lanes)) as ln:
                    T.buffer_store(vmax, f32(0.0), [ln])
                    T.buffer_store(vsum, tirx.const(0, "int32"), [ln])
                with T.serial(0, i64(vectors)) as v, T.vectorized(0, i64(lanes)) as ln:
                    k, x = at(v, ln)
                    mag = tirx.abs(x)
                    if partial:
                        mag = tirx.Select(k < i64(k_len), mag, f32(0.0))
                    T.buffer_store(vmax, tirx.max(vmax[ln], mag), [ln])
                halve_lanes(T, vmax, lanes, tirx.max)
                scale = tirx.max(vmax[0], f32(ACTIVATION_TINY)) / f32(ACTIVATION_QMAX)
                T.buffer_store(scales, scale, [i, g])
                with T.serial(0, i64(vectors)) as v, T.vectorized(0, i64(lanes)) as ln:
                    k, x = at(v, ln)
                    r = tirx.nearbyint(x / scales[i, g])  # half to even, as _code
                    q = tirx.max(tirx.min(r, f32(ACTIVATION_QMAX)), f32(-ACTIVATION_QMAX))
                    q8 = tirx.Cast("int8", q)
                    if partial:
                        q8 = tirx.Select(k < i64(k_len), q8, tirx.const(0, "int8"))
                    T.buffer_store(codes, q8, [i, k])
                    T.buffer_store(vsum, vsum[ln] + tirx.Cast("int32", q8), [ln])
                halve_lanes(T, vsum, lanes, lambda x, y: x + y)
                T.buffer_store(sums, vsum[0], [i, g])

            full = k_len // block
            with T.serial(0, i64(full)) as g:
                block_of(g, partial=False)
            if full < groups:
                block_of(i64(full), partial=True)

        with T.sblock("root"), T.If(m >= i64(PARALLEL_ROWS)):
            with T.Then(), T.parallel(0, m) as i:
                row(i)
            with T.Else(), T.serial(0, m) as i:
                row(i)
    return ib.get().without_attr("global_symbol")


# ------------------------------------------------------------------ the product


def _broadcast4(a8: Any, row: Any, k: Any, lanes: int = LANES) -> Any:
    """The 4 int8 activations a8[row, k : k + 4] in every one of `lanes` 32-bit lanes."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    word = T.reinterpret(a8.vload([row, k], "int8x4"), dtype="int32")
    return T.reinterpret(T.broadcast(word, lanes), dtype=f"int8x{lanes * 4}")


def _madd(byts: Any, a8: Any, row: Any, k0: Any) -> Any:
    """int16x16: for each lane's 4 bytes, the low-nibble codes times a8[k0 : k0 + 4] plus the
    high-nibble codes times a8[k0 + 4 : k0 + 8], adjacent pairs added (vpmaddubsw twice)."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    madd = T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw")
    lo = T.bitwise_and(byts, T.broadcast(T.uint8(15), 32))
    hi = T.shift_right(byts, T.broadcast(T.uint8(4), 32))
    return T.call_llvm_pure_intrin(
        madd, lo, _broadcast4(a8, row, k0), dtype="int16x16"
    ) + T.call_llvm_pure_intrin(madd, hi, _broadcast4(a8, row, k0 + 4), dtype="int16x16")


def _widen(acc16: Any) -> Any:
    """int32x8: adjacent int16 pairs added (vpmaddwd with ones)."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    madd = T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd")
    return T.call_llvm_pure_intrin(madd, acc16, T.broadcast(T.int16(1), 16), dtype="int32x8")


def _zero_at(z: Any, zero: int | None, jo: Any, g: Any, jb: Any, lanes: int) -> Any:
    """The codes' zero point for `lanes` columns from column jb * lanes of panel jo, block g:
    read from the zero-point panel `z`, or the one number `zero`."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    if zero is None:
        return z[jo, g, T.ramp(jb * lanes, 1, lanes)]
    return T.Broadcast(T.int32(zero), lanes)


def _block_value(acc: Any, zero: Any, rowsum: Any, sw: Any, sa: Any, lanes: int) -> Any:
    """One block's contribution in float: (P - z * R) * (sw * sa) (module doc), for `lanes`
    columns of one row."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    exact = acc - zero * T.Broadcast(rowsum, lanes)
    return T.Cast(f"float32x{lanes}", exact) * (sw * T.Broadcast(sa, lanes))


def _vpdpbusd(acc: Any, codes: Any, a8: Any, row: Any, k: Any, lanes: int) -> Any:
    """int32 x lanes: acc + per lane the 4 codes (unsigned bytes) times a8[row, k : k + 4]
    (signed bytes): vpdpbusd, on zmm (16 lanes) or ymm (8). The LLVM bundled with TVM 0.27
    declares its operands as bytes (schedules/int8.py's `_vnni_impl`)."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    name = "llvm.x86.avx512.vpdpbusd.512" if lanes == 16 else "llvm.x86.avx512.vpdpbusd.256"
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id(name),
        acc,
        codes,
        _broadcast4(a8, row, k, lanes),
        dtype=f"int32x{lanes}",
    )


def _sdot4(acc: Any, codes: Any, a8: Any, row: Any, k: Any) -> Any:
    """int32x4: acc + per lane the 4 codes (unsigned nibbles, as s8) times a8[row, k : k + 4]
    (ARM's sdot)."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    sdot = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8")
    word = T.reinterpret(a8.vload([row, k], "int8x4"), dtype="int32")
    a = T.reinterpret(T.broadcast(word, 4), dtype="int8x16")
    return T.call_llvm_pure_intrin(
        sdot, acc, T.reinterpret(codes, dtype="int8x16"), a, dtype="int32x4"
    )


def _nibbles(w: Any, jo: Any, t: Any, jb: Any, lanes: int, high: bool) -> Any:
    """uint8 x (4 lanes): the low or high nibbles of `lanes` columns' codes in byte row t of
    panel jo, from column jb * lanes (the sdot and vpdpbusd kernels' load)."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    nb = lanes * 4
    byts = w.vload([jo, t, jb * lanes, 0], f"uint8x{nb}")
    if high:
        return T.shift_right(byts, T.broadcast(T.uint8(4), nb))
    return T.bitwise_and(byts, T.broadcast(T.uint8(15), nb))


def product_kernel(layout: A8Layout, mr: int, kind: str = "avx2") -> tirx.PrimFunc:
    """The product of the module doc for `layout`, MR rows per tile (M is symbolic), with the
    instructions of `kind` (`isa`): "avx2" (8 lanes; per byte row two vpmaddubsw, CHAIN rows
    added in int16, then vpmaddwd into int32), "avx512vnni" / "avxvnni" (16 / 8 lanes; per
    byte row two vpdpbusd straight into int32) or "sdot" (4 lanes; two sdot straight into
    int32). The vpdpbusd kinds add the low and the high nibbles into separate accumulators:
    twice as many independent chains, which one row needs to hide the instruction's latency.
    The kinds differ only in that inner step: `avx2` and `vnni` are Python bools, which
    TVMScript evaluates while parsing, so each kind's function holds only its own."""
    from tvm.script import tirx as T  # noqa: N812  (TVM's own spelling)

    if kind not in KINDS:
        raise ValueError(f"int4-a8 product kernel: unknown kind {kind!r} (one of {KINDS})")
    avx2 = kind == "avx2"
    vnni = kind in ("avx512vnni", "avxvnni")
    # 32-bit lanes of a vector: zmm, ymm (AVX2, AVX-VNNI), 128-bit NEON
    lanes = {"avx512vnni": 16, "avxvnni": LANES, "avx2": LANES, "sdot": 4}[kind]
    vecs = NR // lanes
    parts = 2 if vnni else 1  # int32 accumulators per output vector (low / high nibbles)
    k_len, n_pad, block = layout.k_pad, layout.n_pad, layout.block
    groups, panels = k_len // block, n_pad // NR
    rows_per_block = block // STEP
    zero = layout.zero
    zero_panel = zero is None
    high = mr * vecs * lanes  # where the high nibbles' accumulators start (vpdpbusd kinds)

    def exact(acci: Any, at: Any) -> Any:
        """A block's int32 sums for the output vector at `at` (both parts added)."""
        if parts == 1:
            return acci[T.ramp(at, 1, lanes)]
        return acci[T.ramp(at, 1, lanes)] + acci[T.ramp(at + high, 1, lanes)]

    @T.prim_func(s_tir=False)
    def int4_a8_matmul(
        a_h: T.handle, sa_h: T.handle, rs_h: T.handle, w_h: T.handle, sw_h: T.handle,
        z_h: T.handle, y_h: T.handle,
    ) -> None:  # fmt: skip
        T.func_attr({"tir.noalias": True})
        m = T.int64()
        A8 = T.match_buffer(a_h, (m, k_len), "int8")  # noqa: N806
        SA = T.match_buffer(sa_h, (m, groups), "float32")  # noqa: N806
        RS = T.match_buffer(rs_h, (m, groups), "int32")  # noqa: N806
        W = T.match_buffer(w_h, (panels, k_len // STEP, NR, 4), "uint8")  # noqa: N806
        SW = T.match_buffer(sw_h, (panels, groups, NR), "float32")  # noqa: N806
        Z = T.match_buffer(z_h, (panels, groups, NR) if zero_panel else (1,), "int32")  # noqa: N806
        Y = T.match_buffer(y_h, (m, n_pad), "float32")  # noqa: N806
        for jo in T.parallel(panels):
            for io in range((m + (mr - 1)) // mr):
                # tile-local accumulators; "global" buffers this small stay on the stack
                accf = T.alloc_buffer((mr * NR,), "float32", scope="global")
                acci = T.alloc_buffer((mr * NR * parts,), "int32", scope="global")
                if avx2:
                    acc16 = T.alloc_buffer((mr * NR * 2,), "int16", scope="global")
                for z in T.unroll(mr * vecs):
                    accf[T.ramp(z * lanes, 1, lanes)] = T.Broadcast(T.float32(0), lanes)
                for g in range(groups):
                    for z in T.unroll(mr * vecs * parts):
                        acci[T.ramp(z * lanes, 1, lanes)] = T.Broadcast(T.int32(0), lanes)
                    if avx2:
                        for tc in range(rows_per_block // CHAIN):
                            for z in T.unroll(mr * vecs):
                                acc16[T.ramp(z * 16, 1, 16)] = T.Broadcast(T.int16(0), 16)
                            for tt in T.unroll(CHAIN):
                                for jb in T.unroll(vecs):
                                    for ii in T.unroll(mr):
                                        acc16[T.ramp((ii * vecs + jb) * 16, 1, 16)] = acc16[
                                            T.ramp((ii * vecs + jb) * 16, 1, 16)
                                        ] + _madd(
                                            W.vload(
                                                [
                                                    jo,
                                                    g * rows_per_block + tc * CHAIN + tt,
                                                    jb * lanes,
                                                    0,
                                                ],
                                                "uint8x32",
                                            ),
                                            A8,
                                            T.min(io * mr + ii, m - 1),
                                            g * block + (tc * CHAIN + tt) * STEP,
                                        )
                            for z in T.unroll(mr * vecs):
                                acci[T.ramp(z * lanes, 1, lanes)] = acci[
                                    T.ramp(z * lanes, 1, lanes)
                                ] + _widen(acc16[T.ramp(z * 16, 1, 16)])
                    elif vnni:
                        for t in range(rows_per_block):
                            for jb in T.unroll(vecs):
                                for ii in T.unroll(mr):
                                    acci[T.ramp((ii * vecs + jb) * lanes, 1, lanes)] = _vpdpbusd(
                                        acci[T.ramp((ii * vecs + jb) * lanes, 1, lanes)],
                                        _nibbles(W, jo, g * rows_per_block + t, jb, lanes, False),
                                        A8,
                                        T.min(io * mr + ii, m - 1),
                                        g * block + t * STEP,
                                        lanes,
                                    )
                                    acci[T.ramp((ii * vecs + jb) * lanes + high, 1, lanes)] = (
                                        _vpdpbusd(
                                            acci[T.ramp((ii * vecs + jb) * lanes + high, 1, lanes)],
                                            _nibbles(
                                                W, jo, g * rows_per_block + t, jb, lanes, True
                                            ),
                                            A8,
                                            T.min(io * mr + ii, m - 1),
                                            g * block + t * STEP + 4,
                                            lanes,
                                        )
                                    )
                    else:
                        for t in range(rows_per_block):
                            for jb in T.unroll(vecs):
                                for ii in T.unroll(mr):
                                    acci[T.ramp((ii * vecs + jb) * lanes, 1, lanes)] = _sdot4(
                                        _sdot4(
                                            acci[T.ramp((ii * vecs + jb) * lanes, 1, lanes)],
                                            _nibbles(W, jo, g * rows_per_block + t, jb, 4, False),
                                            A8,
                                            T.min(io * mr + ii, m - 1),
                                            g * block + t * STEP,
                                        ),
                                        _nibbles(W, jo, g * rows_per_block + t, jb, 4, True),
                                        A8,
                                        T.min(io * mr + ii, m - 1),
                                        g * block + t * STEP + 4,
                                    )
                    for ii in T.unroll(mr):
                        for jb in T.unroll(vecs):
                            accf[T.ramp((ii * vecs + jb) * lanes, 1, lanes)] = accf[
                                T.ramp((ii * vecs + jb) * lanes, 1, lanes)
                            ] + _block_value(
                                exact(acci, (ii * vecs + jb) * lanes),
                                _zero_at(Z, zero, jo, g, jb, lanes),
                                RS[T.min(io * mr + ii, m - 1), g],
                                SW[jo, g, T.ramp(jb * lanes, 1, lanes)],
                                SA[T.min(io * mr + ii, m - 1), g],
                                lanes,
                            )
                for ii in range(mr):
                    if io * mr + ii < m:
                        for jb in T.unroll(vecs):
                            Y[io * mr + ii, T.ramp(jo * NR + jb * lanes, 1, lanes)] = accf[
                                T.ramp((ii * vecs + jb) * lanes, 1, lanes)
                            ]

    # no global symbol of its own: the Relax builder names each product kernel of a module
    func = int4_a8_matmul.without_attr("global_symbol")
    return func.with_attr("tirx.is_scheduled", True).with_attr("ecograph.schedule", RULE)


def emit_int4_a8_matmul(ctx: LowerContext, plan: WeightPanels) -> relax.Expr:
    """The node of `ctx` (a DequantizeMatMul planned for this kernel, `_plan_a8` in
    ops/weight_panels.py) as the prologue and the product: A flattened to [M, K], the product
    [M, N_pad], sliced to N and shaped back."""
    node, state = ctx.node, ctx.state
    at, out = ctx.in_type(0), ctx.out_type()
    k_len, n_len = int(at.shape[-1]), int(out.shape[-1])
    w, s, z = node.input(1), node.input(2), node.input(3)
    assert w is not None and s is not None
    layout = A8Layout(k_len, n_len, plan.block, None if plan.zero < 0 else plan.zero)
    rows: Any = tirx.IntImm("int64", 1)
    for d in at.shape[:-1]:
        rows = rows * ctx.dim(d)
    # A quantized once for every product that reads it. The default pipeline's
    # merge-parallel-matmuls already makes one product of a layer's q / k / v (and gate /
    # up); this serves the products it leaves apart (other pipelines, MatMul beside Gemm).
    key = ("int8 activation blocks", node.input(0), plan.block)
    if key not in state.shared:
        a2 = ctx.emit(R.reshape(ctx.arg(0), relax.ShapeExpr([rows, k_len])))
        prologue = quantize_blocks(ctx, a2, rows, plan.block, k_len)
        state.shared[key] = tuple(ctx.emit(relax.TupleGetItem(prologue, i)) for i in range(3))
    codes, scales, sums = state.shared[key]
    zero = (
        state.value_expr(z)
        if z is not None and layout.zero is None
        else relax.const(np.zeros(1, np.int32), "int32")
    )
    single = isinstance(rows, tirx.IntImm) and int(rows) == 1
    kind = isa(ctx.target)
    assert kind is not None  # planned only where isa() is not None
    # Rows per tile. AVX2 / AVX-VNNI: two when there are several (4 + 4 of 16 ymm
    # registers a row); AVX-512 VNNI: four for a prefill (2 x 2 accumulators + 2 of 32 zmm a
    # row; 7 % faster than two on 32 x 2048 x 5632 on Zen 4) and two for a few static rows
    # (a half-empty tile of four cost 22 % at 6 rows); ARM: one (8 + 8 of its 32 a row)
    few = isinstance(rows, tirx.IntImm) and int(rows) < 8
    if single or kind == "sdot":
        mr = 1
    elif kind == "avx512vnni" and not few:
        mr = 4
    else:
        mr = 2
    gv = ctx.bb.add_func(product_kernel(layout, mr, kind), "int4_a8_matmul")
    args = [codes, scales, sums, state.value_expr(w), state.value_expr(s), zero]
    y = ctx.emit(relax.call_tir(gv, args, relax.TensorType([rows, layout.n_pad], "float32")))
    if layout.n_pad != n_len:
        y = ctx.emit(R.strided_slice(y, [1], [0], [n_len]))
    return R.reshape(y, ctx.shape(out.shape))
