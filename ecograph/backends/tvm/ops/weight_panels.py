"""Weight-only products on CPUs: integer weights packed in column panels for the matmul kernel.

`ecograph::DequantizeMatMul` (`A @ DequantizeLinear(W_q, scale, zero point)`, made by the
fuse-weight-dequantize pass) on a CPU target reads its constant weight packed at compile
time in column panels of NR, like a float32 weight (ops/matmul.py), so the register-blocked
kernel of schedules/matmul.py schedules it, with the dequantization inside its reduction
loop and the codes read straight from the packed bytes:

- 8-bit codes: `[ceil(N / NR), K, NR]` int8 / uint8;
- 4-bit codes: `[ceil(N / NR), ceil(K / 2), NR]` uint8, the code of row k = 2t in the low
  nibble and of row 2t + 1 in the high nibble of byte t, so the NR columns of one row pair
  are adjacent bytes: one vector load reads them and a shift or two unpacks them;
- a scale or zero point per column or per block of K rows: `[ceil(N / NR), groups, NR]`
  (groups = 1 per column); a per-tensor one stays as it is.

ONNX Runtime's `com.microsoft::MatMulNBits` (4- or 8-bit codes in blocks of K, float32
scales, no or packed zero points) is repacked into the same panels and read by the same kernel,
and so are the codes of `ecograph::PaletteMatMul` (dictionary-coded weights), whose weights
are looked up in their palettes inside the loop (`_plan_palette`; schedules/lookup.py turns a
16-entry lookup into a register permute on x86).

Columns are zero-padded to whole panels (scale 0). Each weight is `(q - z) * s` in float32,
as DequantizeLinear computes it, and the kernel sums k in order, so results round like the
float32 kernel's. A node whose quantization this layout does not cover (scales blocked along
N or varying along K per row, tensors shared with other nodes, a GPU target) keeps the
generic kernel of ops/quant.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax
from tvm import tirx as tir

from ecograph.backends.tvm.context import LowerContext, norm_axis
from ecograph.backends.tvm.ops import int4_a8
from ecograph.backends.tvm.ops.matmul import emit_panel_matmul, pack_panels, panel_width_for
from ecograph.backends.tvm.targets import TargetSpec
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.ops.ms_quant import unpack_codes

FUSED_WEIGHT_OP = ("ecograph", "DequantizeMatMul")
NBITS_OP = ("com.microsoft", "MatMulNBits")
PALETTE_OP = ("ecograph", "PaletteMatMul")
_FOUR_BIT = (DType.INT4, DType.UINT4)


@dataclass(frozen=True)
class WeightPanels:
    """How one DequantizeMatMul node reads its packed operands (see the module doc).

    `block`: K rows per scale group (0: one group, per column or per tensor); `arrays`: the
    packed array bound for each of the node's constant operands that is packed (the weight,
    and the scale and zero point unless they are per tensor); `zero`: the zero point of codes
    when the node has no zero-point input (MatMulNBits: 2^(bits - 1)); `palette`: how a
    PaletteMatMul's weights are looked up ("" for a dequantization; "row": the palettes
    `[groups, entries]` read at [j // block, code], or [0, code] when block is 0; "column":
    column j's palette, repeated per column, read at [j // NR, code, j % NR]; `block` is then
    the palettes' group size along N); `kernel`: "" for the float32 panel kernel, "int4-a8"
    for the 8-bit-activation kernel of ops/int4_a8.py (its own layout; `zero` is then the
    codes' zero point, -1 when a zero-point panel is bound)."""

    nr: int
    bits: int
    signed: bool
    block: int
    per_tensor: bool
    arrays: dict[Value, np.ndarray]
    zero: int = 0
    palette: str = ""
    kernel: str = ""


def weight_panels(graph: Graph, live: set[Node], target: TargetSpec) -> dict[Node, WeightPanels]:
    """The live DequantizeMatMul nodes of `graph` whose operands pack for `target`'s CPU
    matmul kernel, with their packed arrays. Empty for GPU targets."""
    if target.is_gpu:
        return {}
    plans: dict[Node, WeightPanels] = {}
    for node in graph.nodes:
        if node not in live:
            continue
        planner = _PLANNERS.get((node.domain, node.op_type))
        plan = planner(node, target) if planner is not None else None
        if plan is not None:
            plans[node] = plan
    return plans


def _sole_operand(value: Value | None, node: Node) -> np.ndarray | None:
    """The constant array of `value` if `node` is its only reader, else None."""
    if value is None or value.const_value is None or value.is_graph_output:
        return None
    if any(u.node is not node for u in value.uses):
        return None
    return np.asarray(value.const_value)


def _plan(node: Node, target: TargetSpec) -> WeightPanels | None:
    a, w, s, z = (node.input(i) for i in range(4))
    wq = _sole_operand(w, node)
    if a is None or w is None or s is None or wq is None or wq.ndim != 2:
        return None
    if a.dtype != DType.FLOAT32 or a.type.rank < 1 or s.dtype != DType.FLOAT32:
        return None
    trans_b = bool(node.attr("trans_b", 0))
    k_axis = 1 if trans_b else 0
    q = wq.T if trans_b else wq  # [K, N]
    k_len, n_len = (int(d) for d in q.shape)
    if k_len == 0 or n_len == 0:
        return None
    block = int(node.attr("block_size", 0) or 0)
    axis = norm_axis(int(node.attr("axis", 1)), 2)
    per_tensor = s.type.rank == 0 or (s.type.numel == 1 and not block)
    if not per_tensor and (axis == k_axis) != bool(block):
        return None  # scales blocked along N, or one per row of K: the generic kernel
    a8 = _plan_a8(node, q, block, per_tensor, target) if node.attr("activation_block", 0) else None
    if a8 is not None:
        return a8
    nr = panel_width_for(target, a, n_len, decoded=w.dtype in _FOUR_BIT)
    arrays: dict[Value, np.ndarray] = {}
    if not per_tensor:
        for v in (s, z):
            if v is None:
                continue
            arr = _sole_operand(v, node)
            if arr is None or arr.ndim != (2 if block else 1):
                return None
            # [groups, N] in the [K, N] orientation, groups = ceil(K / block) or 1
            grid = (arr.T if trans_b else arr) if block else arr.reshape(1, -1)
            if grid.shape != (-(-k_len // block) if block else 1, n_len):
                return None
            arrays[v] = pack_panels(grid.astype(_carrier(v.dtype)), nr)
    elif z is not None and z.const_value is None:
        return None
    arrays[w] = _pack_codes(q, nr, 4 if w.dtype in _FOUR_BIT else 8)  # the scales fit: pack
    return WeightPanels(
        nr=nr,
        bits=4 if w.dtype in _FOUR_BIT else 8,
        signed=w.dtype in (DType.INT4, DType.INT8),
        block=block,
        per_tensor=per_tensor,
        arrays=arrays,
    )


def _plan_a8(
    node: Node, q: np.ndarray, block: int, per_tensor: bool, target: TargetSpec
) -> WeightPanels | None:
    """A DequantizeMatMul with `activation_block` packed for ops/int4_a8.py's kernel (4-bit
    weights in groups equal to the activation blocks, a known K, a CPU `int4_a8.isa` names),
    else None: the node then quantizes A before the float kernels."""
    a, w, s, z = (node.input(i) for i in range(4))
    assert a is not None and w is not None and s is not None
    k_len, n_len = (int(d) for d in q.shape)
    if w.dtype not in _FOUR_BIT or per_tensor or int4_a8.isa(target) is None:
        return None
    if a.type.rank < 1 or a.type.shape[-1] != k_len:
        return None
    if not int4_a8.fits(k_len, block, int(node.attr("activation_block", 0))):
        return None
    trans_b = bool(node.attr("trans_b", 0))
    grids = {}
    for v in (s, z):
        arr = None if v is None else _sole_operand(v, node)
        if v is not None and (arr is None or arr.ndim != 2):
            return None
        if arr is not None:
            grids[v] = arr.T if trans_b else arr  # [K / block, N]
            if grids[v].shape != (-(-k_len // block), n_len):
                return None
    offset = 8 if w.dtype == DType.INT4 else 0  # signed codes stored as code + 8
    arrays = {
        w: int4_a8.pack_codes((q.astype(np.int16) + offset).astype(np.uint8), block),
        s: pack_panels(grids[s].astype(np.float32), int4_a8.NR),
    }
    zero = offset
    if z is not None:
        arrays[z] = pack_panels(grids[z].astype(np.int32) + offset, int4_a8.NR)
        zero = -1
    return WeightPanels(
        nr=int4_a8.NR,
        bits=4,
        signed=w.dtype == DType.INT4,
        block=block,
        per_tensor=False,
        arrays=arrays,
        zero=zero,
        kernel=int4_a8.RULE,
    )


def _plan_nbits(node: Node, target: TargetSpec) -> WeightPanels | None:
    """MatMulNBits (see ecograph/ir/ops/ms_quant.py) repacked: B [N, k_blocks, block * bits / 8]
    -> code panels, scales [N * k_blocks] -> [.., k_blocks, ..] panels, uint8 zero points
    (packed like B) likewise; float zero points, g_idx or 2-/3-bit codes keep the generic
    kernel."""
    a, b, s, z = (node.input(i) for i in range(4))
    bits, block = int(node.attr("bits")), int(node.attr("block_size"))
    k_len, n_len = int(node.attr("K")), int(node.attr("N"))
    if bits not in (4, 8) or node.input(4) is not None or k_len <= 0 or n_len <= 0:
        return None
    if a is None or s is None or a.dtype != DType.FLOAT32 or s.dtype != DType.FLOAT32:
        return None
    codes_in, scales = _sole_operand(b, node), _sole_operand(s, node)
    if b is None or codes_in is None or scales is None:
        return None
    k_blocks = -(-k_len // block)
    codes = unpack_codes(codes_in.reshape(n_len, -1), bits, k_blocks * block)[:, :k_len]
    nr = panel_width_for(target, a, n_len, decoded=bits == 4)
    arrays = {
        b: _pack_codes(codes.T.astype(np.uint8), nr, bits),
        s: pack_panels(scales.reshape(n_len, k_blocks).T.astype(np.float32), nr),
    }
    if z is not None:
        zp = _sole_operand(z, node)
        if zp is None or zp.dtype != np.uint8:
            return None
        zp_codes = unpack_codes(zp.reshape(n_len, -1), bits, k_blocks)
        arrays[z] = pack_panels(zp_codes.T.astype(np.uint8), nr)
    return WeightPanels(
        nr=nr,
        bits=bits,
        signed=False,
        block=block,
        per_tensor=False,
        arrays=arrays,
        zero=0 if z is not None else 1 << (bits - 1),
    )


def _plan_palette(node: Node, target: TargetSpec) -> WeightPanels | None:
    """PaletteMatMul: the codes in panels like integer weights (4-bit codes two per byte).
    The palettes stay `[groups, entries]`, read at [j // group_size, code], when a vector of
    columns shares one palette (one for the whole matrix, or groups a whole number of
    vectors wide: then one register permute looks 16 entries up, schedules/lookup.py); else
    each column's palette is repeated per column in panels `[ceil(N / NR), entries, NR]`,
    read at [j // NR, code, j % NR] (a gather), when that copy is no larger than the
    column's codes (or is the palettes themselves: one per column). Palettes grouped along K
    (a palette per block of rows) keep the generic kernel."""
    from ecograph.backends.tvm.schedules.matmul import lanes_for

    a, w, p = node.input(0), node.input(1), node.input(2)
    codes, palette = _sole_operand(w, node), _sole_operand(p, node)
    if a is None or w is None or p is None or codes is None or palette is None:
        return None
    if a.dtype != DType.FLOAT32 or p.dtype != DType.FLOAT32 or codes.ndim != 2:
        return None
    trans_b = bool(node.attr("trans_b", 0))
    q = codes.T if trans_b else codes  # [K, N]
    k_len, n_len = (int(d) for d in q.shape)
    if k_len == 0 or n_len == 0:
        return None
    bits = 4 if w.dtype == DType.UINT4 else 8
    groups, entries = (int(d) for d in palette.shape)
    group = int(node.attr("group_size", 0)) if groups > 1 else 0
    nr = panel_width_for(target, a, n_len, decoded=True)  # looked up
    if group and norm_axis(int(node.attr("axis", 1)), 2) != (0 if trans_b else 1):
        return None  # one palette per block of K rows
    if group == 0 or group % lanes_for(target) == 0:
        table, kind = palette.astype(np.float32), "row"
        # Rows for the columns of the last panel's padding too: the kernel's loops run over
        # whole panels, so a lookup's row is provably inside the table (schedules/lookup.py
        # permutes only then; N = 688 in panels of 64 took the gather without this).
        rows = -(-(-(-n_len // nr) * nr) // group) if group else 1
        if rows > groups:
            table = np.concatenate([table, np.zeros((rows - groups, entries), np.float32)])
    elif group > 1 and entries * 4 > -(-k_len * bits // 8):
        return None  # the palettes repeated per column would outweigh the codes
    else:
        per_column = palette[np.arange(n_len) // group]  # [N, entries]
        table, kind = pack_panels(per_column.T.astype(np.float32), nr), "column"
    return WeightPanels(
        nr=nr,
        bits=bits,
        signed=False,
        block=group,
        per_tensor=False,
        arrays={w: _pack_codes(q, nr, bits), p: table},
        palette=kind,
    )


_PLANNERS = {FUSED_WEIGHT_OP: _plan, NBITS_OP: _plan_nbits, PALETTE_OP: _plan_palette}


def _carrier(dtype: DType) -> str:
    return {DType.INT4: "int8", DType.UINT4: "uint8"}.get(dtype, str(dtype))


def _pack_codes(q: np.ndarray, nr: int, bits: int) -> np.ndarray:
    """[K, N] integer codes -> panels: 8-bit [ceil(N / nr), K, nr] in their dtype; 4-bit
    [ceil(N / nr), ceil(K / 2), nr] uint8, rows 2t and 2t + 1 in the low and high nibble."""
    if bits == 8:
        return pack_panels(q, nr)
    codes = np.asarray(q).astype(np.int16) & 0xF
    if codes.shape[0] % 2:
        codes = np.concatenate([codes, np.zeros((1, codes.shape[1]), np.int16)])
    pairs = (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)  # [ceil(K / 2), N]
    return pack_panels(pairs, nr)


def emit_panel_dequantize_matmul(
    ctx: LowerContext, plan: WeightPanels, a: relax.Expr | None = None
) -> relax.Expr:
    """The DequantizeMatMul, MatMulNBits or PaletteMatMul node of `ctx` as one panel kernel
    (see the module doc), times `a` (default: the node's input A)."""
    node = ctx.node
    nr, block = plan.nr, plan.block
    state = ctx.state
    w, s, z = node.input(1), node.input(2), node.input(3)
    assert w is not None and s is not None
    operands = [state.value_expr(w), state.value_expr(s)]
    if z is not None:
        operands.append(state.value_expr(z))

    def at(t: Any, k: Any, j: Any) -> Any:
        """A scale or zero point for row k, column j."""
        if plan.per_tensor:
            return t[(0,) * len(t.shape)]
        return t[j // nr, k // block if block else 0, j % nr]

    def code(ws: Any, k: Any, j: Any) -> Any:
        if plan.bits == 8:
            return ws[0][j // nr, k, j % nr].astype("int32")
        byte = ws[0][j // nr, k // 2, j % nr].astype("int32")
        # int32 shifts: k is int64, and a 64-bit shift would not sign-extend the nibble
        half = (tir.floormod(k, 2) * 4).astype("int32")
        if plan.signed:  # sign-extend the nibble: move it to the top, shift back
            return tir.shift_right(tir.shift_left(byte, 28 - half), tir.const(28, "int32"))
        return tir.bitwise_and(tir.shift_right(byte, half), tir.const(15, "int32"))

    def weight(ws: Any, k: Any, j: Any) -> Any:
        q = code(ws, k, j)
        if plan.palette == "row":
            return ws[1][j // block if block else 0, q]
        if plan.palette == "column":
            return ws[1][j // nr, q, j % nr]
        if len(ws) > 2:
            q = q - at(ws[2], k, j).astype("int32")
        elif plan.zero:
            q = q - plan.zero
        return q.astype("float32") * at(ws[1], k, j)

    name = "palette_matmul" if plan.palette else "dequantize_matmul"
    a = ctx.arg(0) if a is None else a
    # several rows: decode (or look up) each weight once, not once per row tile
    # (emit_panel_matmul)
    return emit_panel_matmul(ctx, a, operands, weight, nr, name, decode_once=True)


__all__ = [
    "FUSED_WEIGHT_OP",
    "NBITS_OP",
    "PALETTE_OP",
    "WeightPanels",
    "emit_panel_dequantize_matmul",
    "weight_panels",
]
