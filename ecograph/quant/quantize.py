"""The Quantize pass: static, dynamic and weight-only quantization of MatMul, Gemm and Conv.

Rewrites (W a float constant, x an activation):
- static:      op(x, W) -> op(DQ(Q(x, s_x, z_x)), DQ(W_q, s_w, z_w))  (QDQ format; activation
               ranges from calibration data)
- dynamic:     MatMul(x, W) -> Cast(MatMulInteger(DynamicQuantizeLinear(x), W_q)) * (s_x * s_w)
               (activations quantized at run time; ONNX Runtime's dynamic format), or with
               `activations="token"`: one symmetric int8 scale per row (token) of x,
               s_x = max|x_row| / 127, x_q = Cast<int8>(Clip(Round(x / s_x), -127, 127)),
               MatMul(x, W) -> (Cast(MatMulInteger(x_q, W_q)) * s_x) * s_w  (standard ONNX ops
               only; the int32 product is exact, the rescale is float)
- weight_only: op(x, W) -> op(x, DQ(W_q, s_w, z_w))  (int8 or int4, per channel or in groups
               along the reduction axis; the LLM decode case), or with `activations="block"`
               (int4 in groups of G only): ecograph::DequantizeMatMul(x, W_q, s_w, z_w;
               activation_block=G), x quantized at run time to int8 in blocks of G along K
               (ecograph/ir/ops/weight_only.py; ONNX Runtime's MatMulNBits accuracy_level 4),
               which a CPU multiplies in 8-bit integers
- palette:     op(x, W) -> op(x, ecograph::PaletteDequantize(codes, palette))  (dictionary
               coding: 16 or 256 k-means centroids per tensor or per group of N output
               channels, `palette_bits` 4 or 8, granularity "tensor" / "channel" / "group:N";
               ecograph/quant/palettize.py)

Embedding tables (Gather of a constant float matrix along axis 0) are quantized by rows
(symmetric; per row, or per group when the granularity is group:N) and dequantized after the
lookup; `embeddings=False` leaves them in float. Weights are stored as quantized constants
(int4 two per byte when exported); the float weight is removed once nothing else uses it.
Exclusions match an op type exactly or a node name by glob (`exclude=["Conv", "*lm_head*"]`;
a pattern that names no node is a note: torch captures name nodes `lm_head.mat_mul` by module);
`float_after=("Gelu",)` keeps in float the nodes whose input a Gelu makes (through reshapes),
i.e. a transformer FFN's down projection (the "int8" preset does; docs/quantization.md).

`smooth=alpha` (SmoothQuant, Xiao et al. 2023) first migrates activation outliers into the
weights: per input channel j, s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) over the calibration
data, x -> x * (1/s) (one Mul shared by every consumer of x) and W -> diag(s) W, which leaves
the float product unchanged and evens out the channels the activation scale must cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ecograph.cache import array_digest
from ecograph.errors import PassError
from ecograph.ir import DType, Graph, Node, Value
from ecograph.ir.ops.weight_only import ACTIVATION_QMAX, ACTIVATION_TINY
from ecograph.passes.core import CosineTolerance, Pass, PassResult, Tolerance
from ecograph.passes.registry import register_pass
from ecograph.passes.utils import replace_value
from ecograph.passes.weight_only import (
    block_nbits_activations,
    fuse_weight_decoder,
    why_not_fused,
)
from ecograph.quant.calibrate import calibration_feeds, collect_ranges
from ecograph.quant.palettize import PALETTE_BITS, palettize_tensor
from ecograph.quant.scheme import Granularity, QuantizedTensor, compute_qparams, quantize_tensor
from ecograph.quant.targets import (
    DYNAMIC_OPS,
    LAYOUT_OPS,
    QUANTIZABLE,
    Target,
    activation,
    excluded,
    find_targets,
    left_out,
    unmatched_exclusions,
)

MODES = ("dynamic", "static", "weight_only", "palette")
# Why dynamic mode leaves a Conv in float (its note), and what quantizes one.
DYNAMIC_CONV_NOTE = (
    "dynamic mode quantizes MatMul, Gemm and Linear only; 'int8-static' (with calibration "
    "data) quantizes convolutions' weights and activations, 'int8-weight' their weights"
)
ACTIVATION_SCALES = ("tensor", "token", "block")
# The largest |x_q| of a per-token activation: symmetric int8 without -128, so that negating a
# row never saturates and the scale is exactly max|x| / 127.
TOKEN_QMAX = ACTIVATION_QMAX
# A row of zeros gets this max|x| instead of 0 (its scale must not be 0: x / 0 is NaN).
TOKEN_TINY = ACTIVATION_TINY
# The cosine similarity to the float graph a quantized graph keeps by default (optimize()'s
# default accuracy budget for quantization is the same).
DEFAULT_MIN_COSINE = 0.99


@register_pass
@dataclass
class Quantize(Pass):
    """op(x, W) -> op(DQ(Q(x)), DQ(W_q)) / MatMulInteger(DQL(x), W_q) / op(x, DQ(W_q))

    Quantizes MatMul, Gemm, Conv and ecograph::Linear with a constant float weight (see the
    module docstring for the four modes). Not exact: the PassManager's differential check
    requires each output to keep cosine similarity >= `min_cosine` to the float graph on its
    sample inputs; optimize() checks accuracy on real inputs against the budget.
    """

    name: ClassVar[str] = "quantize"
    tolerance: ClassVar[Tolerance] = CosineTolerance(DEFAULT_MIN_COSINE)

    mode: str = "dynamic"
    dtype: str = "int8"
    granularity: str = "channel"
    symmetric: bool = True
    calibration: str = "minmax"
    activation_dtype: str = "uint8"
    exclude: tuple[str, ...] | list[str] = ()
    embeddings: bool = True
    embedding_group: int = 0
    clip: str = "auto"
    algorithm: str = "rtn"
    # GPTQ: the layers in this many groups, in graph order, each group's Hessians taken with
    # the groups before it quantized (GPTQ's "true sequential": a layer then corrects the
    # error of the layers before it too). 1: every Hessian from the float model, one pass.
    sequential: int = 1
    calibration_data: Any = field(default=None, repr=False, compare=False)
    progress: bool = False
    min_cosine: float = DEFAULT_MIN_COSINE
    activations: str = "tensor"
    smooth: float = 0.0
    float_after: tuple[str, ...] | list[str] = ()
    palette_bits: int = 4
    # Quantized weights by content (the float weight's bytes, shape and axes), shared between
    # passes with the same options over graphs of one model (compile_lm's prefill and decode):
    # a weight already quantized in one graph is taken as is in the next, so both compute with
    # the same codes and only the first needs calibration data (GPTQ). None: not shared.
    shared: dict[tuple[Any, ...], QuantizedTensor] | None = field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_cosine <= 1.0:
            raise PassError(f"quantize: min_cosine={self.min_cosine} is not in [-1, 1]")
        if self.mode not in MODES:
            raise PassError(f"quantize: mode {self.mode!r} is not one of {MODES}")
        if self.dtype not in ("int8", "uint8", "int4", "uint4"):
            raise PassError(f"quantize: dtype {self.dtype!r}; use int8, uint8, int4 or uint4")
        if self.dtype in ("int4", "uint4") and self.mode != "weight_only":
            raise PassError("quantize: int4 is supported for mode='weight_only' only")
        if self.mode == "dynamic" and self.dtype != "int8":
            raise PassError("quantize: dynamic mode quantizes weights to int8")
        if self.algorithm not in ("rtn", "gptq"):
            raise PassError(f"quantize: algorithm={self.algorithm!r}; use 'rtn' or 'gptq'")
        if self.mode == "palette" and self.palette_bits not in PALETTE_BITS:
            raise PassError(
                f"quantize: palette_bits={self.palette_bits}; use 4 (16 centroids) or 8 (256)"
            )
        if self.mode == "palette" and self.algorithm != "rtn":
            raise PassError("quantize: mode='palette' is k-means; algorithm must be 'rtn'")
        if self.algorithm == "gptq" and (
            self.mode != "weight_only" or self.calibration_data is None
        ):
            raise PassError(
                "quantize: algorithm='gptq' needs mode='weight_only' and calibration_data"
            )
        if isinstance(self.sequential, bool) or not isinstance(self.sequential, int):
            raise PassError(f"quantize: sequential={self.sequential!r}; give a group count >= 1")
        if self.sequential < 1:
            raise PassError(f"quantize: sequential={self.sequential}; give a group count >= 1")
        if self.clip not in ("auto", "minmax", "mse"):
            raise PassError(f"quantize: clip={self.clip!r}; use 'auto', 'minmax' or 'mse'")
        try:
            self._granularity = Granularity.parse(self.granularity)
        except ValueError as exc:
            raise PassError(f"quantize: {exc}") from None
        if self.activations == "block" and self._granularity.kind != "group":
            raise PassError(
                f"quantize: activations='block' needs granularity='group:N' (the activation "
                f"blocks are the weight groups), got {self.granularity!r}"
            )
        if self.mode == "static" and self.calibration_data is None:
            raise PassError(
                "quantize: mode='static' needs calibration_data (an iterable of input dicts)"
            )
        if self.activations not in ACTIVATION_SCALES:
            raise PassError(
                f"quantize: activations={self.activations!r}; use one of {ACTIVATION_SCALES}"
            )
        if self.activations == "token" and self.mode != "dynamic":
            raise PassError("quantize: activations='token' (per-token scales) needs mode='dynamic'")
        if self.activations == "block" and (
            self.mode != "weight_only" or self.dtype not in ("int4", "uint4")
        ):
            raise PassError(
                "quantize: activations='block' (int8 activations in blocks of the weight "
                "groups) needs mode='weight_only' with dtype int4 or uint4"
            )
        if not 0.0 <= self.smooth <= 1.0:
            raise PassError(f"quantize: smooth={self.smooth} is not a migration strength in [0, 1]")
        if self.smooth and (self.mode == "weight_only" or self.calibration_data is None):
            raise PassError(
                "quantize: smooth (SmoothQuant) needs mode='dynamic' or 'static' and "
                "calibration_data to measure the activation channels"
            )
        if self.calibration_data is not None and not (
            self.mode == "static" or self.algorithm == "gptq" or self.smooth
        ):
            raise PassError(
                f"quantize: calibration_data is read by mode='static', algorithm='gptq' and "
                f"smooth (SmoothQuant) only; mode={self.mode!r} would ignore it: drop it, or "
                "use one of those (the preset 'int8-static' is mode='static')"
            )

    def numeric_tolerance(self) -> Tolerance:
        """The differential check's budget: `min_cosine`, an option of this pass."""
        return CosineTolerance(self.min_cosine)

    def _embedding_group(self, dtype: str) -> int:
        """Group size along embedding rows: `embedding_group` if set; else 32 at 4 bits (a
        lookup table has no matmul to hide a coarser group's error; 32 costs ~1 bit more per
        weight than 128) and whole rows at 8 bits."""
        if self.embedding_group:
            return self.embedding_group
        return 32 if dtype in ("int4", "uint4") else 0

    def _clip(self) -> str:
        """Range clipping for weights: MSE-optimal at 4 bits ("auto"), else as given."""
        if self.clip == "auto":
            return "mse" if self.dtype in ("int4", "uint4") else "minmax"
        return self.clip

    def run(self, graph: Graph) -> PassResult:
        self._keys: dict[int, str] = {}  # id(float weight) -> its content digest
        ops = DYNAMIC_OPS if self.mode == "dynamic" else QUANTIZABLE
        unmatched = unmatched_exclusions(graph, self.exclude)
        targets, notes = find_targets(graph, self.exclude, ops)
        notes = unmatched + notes
        if self.mode == "dynamic":
            notes += left_out(graph, self.exclude, ops, DYNAMIC_CONV_NOTE)
        if self.float_after:
            targets = self.without_float_after(targets, notes)
        embedded = 0
        if self.embeddings:
            embedded = (
                self._palettize_embeddings(graph, notes)
                if self.mode == "palette"
                else self._quantize_embeddings(graph, notes)
            )
        nbits = 0
        if self.mode == "weight_only" and self.activations == "block":
            nbits = self._block_nbits(graph, notes)
        if not targets:
            stats = {"quantized": 0, "embeddings": embedded}
            if nbits:
                stats["nbits_blocked"] = nbits
            return PassResult(embedded > 0 or nbits > 0, stats, notes)
        smoothed = self._smooth(graph, targets) if self.smooth else 0
        ranges: Mapping[str, tuple[float, float]] = {}
        if self.mode == "static":
            names = sorted({activation(t).name for t in targets})
            observers = collect_ranges(
                graph, self.calibration_data, names, self.calibration, progress=self.progress
            )
            ranges = {
                n: o.range(
                    symmetric=self.activation_dtype.startswith("int"), dtype=self.activation_dtype
                )
                for n, o in observers.items()
            }
        pending = [t for t in targets if self._shared_key(t) not in (self.shared or {})]
        gptq = self.algorithm == "gptq" and pending
        self._hessians = {}
        self._staged: list[Any] | None = None  # _collect_hessians' StagedRuns
        # GPTQ's Hessians per group of targets (one group unless `sequential`), each collected
        # just before its group is quantized (`_targets_in_groups`)
        collect = {id(g[0]): g for g in self._targets_in_groups(pending)} if gptq else {}
        # id(float weight) -> (quantized, float weight, data, scale, zero point)
        weights: dict[int, tuple[QuantizedTensor, Value, Value, Value, Value | None]] = {}
        activations: dict[int, Value] = {}
        rows: dict[int, tuple[Value, Value]] = {}
        palettes: dict[tuple[int, int], tuple[Value, Value]] = {}
        blocked: list[Target] = []
        count = 0
        for t in targets:
            if id(t) in collect:
                self._hessians = self._collect_hessians(graph, collect[id(t)])
            if self.mode == "palette":
                graph.set_node_input(
                    t.node, t.weight_index, self._weight_palette(graph, t, palettes)
                )
                count += 1
            elif self.mode == "dynamic" and self.activations == "token":
                count += self._dynamic_token(graph, t, weights, rows)
            elif self.mode == "dynamic":
                count += self._dynamic(graph, t, weights, notes)
            else:
                w_dq = self._weight_dq(graph, t, weights)
                graph.set_node_input(t.node, t.weight_index, w_dq)
                if self.activations == "block":
                    blocked.append(t)
                if self.mode == "static":
                    x = activation(t)
                    dq = self._activation_qdq(graph, x, ranges, activations)
                    graph.set_node_input(t.node, 0, dq)
                count += 1
        self._staged, self._hessians = None, {}  # the calibration activations, not kept
        if blocked:
            self._block_activations(graph, blocked, notes)
        originals = [orig for _, orig, *_ in weights.values()]
        originals += [orig for orig, _ in palettes.values()]
        for orig in originals:
            if orig.graph is graph and not orig.has_uses():
                graph.remove_constant(orig)
        stats = {"quantized": count, "embeddings": embedded}
        if nbits:
            stats["nbits_blocked"] = nbits
        if self.smooth:
            stats["smoothed"] = smoothed
        return PassResult(True, stats, notes)

    def without_float_after(self, targets: list[Target], notes: list[str]) -> list[Target]:
        """Targets whose activation is not made by a `float_after` op (looking through ops that
        only move or reshape data); the others stay in float, with a note."""
        kept: list[Target] = []
        for t in targets:
            producer = activation(t).producer
            while producer is not None and producer.op_type in LAYOUT_OPS and producer.inputs:
                first = producer.input(0)
                producer = first.producer if first is not None else None
            if producer is not None and producer.op_type in self.float_after:
                notes.append(f"{t.node.name} ({t.node.op_type}): input from {producer.op_type}, "
                             "kept in float (float_after)")  # fmt: skip
                continue
            kept.append(t)
        return kept

    # ------------------------------------------------------------ SmoothQuant

    def _smooth(self, graph: Graph, targets: list[Target]) -> int:
        """x -> x * (1/s), W -> diag(s) W for the MatMul-like targets (weight [K, N], x's last
        axis K), s per input channel from the calibration data (module docstring). Returns how
        many activations were smoothed."""
        from ecograph.ir import interpret

        by_x: dict[int, list[Target]] = {}
        for t in targets:
            x = activation(t)
            if t.node.op_type == "Conv" or not x.dtype.is_float or x.type.rank < 1:
                continue
            by_x.setdefault(id(x), []).append(t)
        if not by_x:
            return 0
        xs = {k: activation(ts[0]) for k, ts in by_x.items()}
        names = sorted({x.name for x in xs.values()})
        amax: dict[str, np.ndarray] = {}
        for feeds in calibration_feeds(graph, self.calibration_data):
            got = interpret(graph, feeds, outputs=names)
            for n in names:
                a = np.abs(got[n].astype(np.float32)).reshape(-1, got[n].shape[-1]).max(axis=0)
                amax[n] = np.maximum(amax[n], a) if n in amax else a
        count = 0
        for key, ts in by_x.items():
            x = xs[key]
            wmax = np.max([self._weight_rows(t).max(axis=1) for t in ts], axis=0)
            a = amax[x.name]
            if a.shape != wmax.shape:
                continue  # a weight contracting x's last axis is the only case handled
            alpha = self.smooth
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.power(a, alpha) / np.power(wmax, 1.0 - alpha)
            s = np.where(np.isfinite(s) & (s > 0), s, 1.0).astype(np.float32)
            s = np.clip(s, 1e-5, 1e5)
            node0 = ts[0].node
            inv = graph.add_constant((1.0 / s).astype(x.dtype.numpy), f"{x.name}_smooth")
            xs_ = graph.add_node("Mul", [x, inv], name=f"{x.name}_smooth", before=node0).output
            for t in ts:
                w = t.node.input(t.weight_index)
                assert w is not None and w.const_value is not None
                shape = [1] * w.type.rank
                shape[t.reduce_axis] = -1
                scaled = (w.const_value * s.reshape(shape)).astype(w.const_value.dtype)
                graph.set_node_input(t.node, 0, xs_)
                graph.set_node_input(
                    t.node, t.weight_index, graph.add_constant(scaled, f"{w.name}_smoothed")
                )
                if w.graph is graph and not w.has_uses():
                    graph.remove_constant(w)
            count += 1
        return count

    @staticmethod
    def _weight_rows(t: Target) -> np.ndarray:
        """|W| with the contraction axis first: [K, rest]."""
        w = t.node.input(t.weight_index)
        assert w is not None and w.const_value is not None
        arr = np.abs(np.moveaxis(w.const_value.astype(np.float32), t.reduce_axis, 0))
        return arr.reshape(arr.shape[0], -1)

    # ------------------------------------------------------------- embeddings

    def _embedding_gathers(self, graph: Graph, notes: list[str]) -> list[tuple[Node, Value]]:
        """(Gather, table) for each row lookup of a constant float [rows >= 2, width] table
        not excluded by `exclude` (an excluded one is noted)."""
        patterns = list(self.exclude)
        found: list[tuple[Node, Value]] = []
        for node in graph.nodes:
            if node.domain or node.op_type != "Gather" or node.attr("axis", 0) != 0:
                continue
            table = node.input(0)
            if table is None or not table.is_constant or not table.dtype.is_float:
                continue
            if table.type.rank != 2 or table.type.static_shape()[0] < 2:
                continue
            if excluded(node, patterns):
                notes.append(f"{node.name} (Gather): excluded")
                continue
            found.append((node, table))
        return found

    def _quantize_embeddings(self, graph: Graph, notes: list[str]) -> int:
        """Gather(T, idx) -> (Gather(T_q, idx) - Gather(zp, idx)) * Gather(scale, idx): rows
        quantized per row or per group of a row (symmetric: no zero point), dequantized after
        the lookup, so the float table is never rebuilt at run time."""
        dtype = self.dtype if self.mode == "weight_only" else "int8"
        symmetric = self.symmetric if self.mode == "weight_only" else True
        done: dict[int, tuple[Value, Value, Value | None, int]] = {}
        count = 0
        for node, table in self._embedding_gathers(graph, notes):
            _, width = table.type.static_shape()
            group = self._embedding_group(dtype)
            block = group if group and width % group == 0 else width
            if id(table) not in done:
                qt = quantize_tensor(
                    table.const_value,  # type: ignore[arg-type]
                    dtype,
                    symmetric=symmetric,
                    granularity=f"group:{block}",
                    axis=1,
                    clip=self._clip(),
                )
                done[id(table)] = (
                    graph.add_constant(qt.data, f"{table.name}_q"),
                    graph.add_constant(qt.scale, f"{table.name}_scale"),
                    None if symmetric else graph.add_constant(qt.zero_point, f"{table.name}_zp"),
                    block,
                )
            q, scale, zp, block = done[id(table)]
            idx = node.input(1)
            assert idx is not None
            rank = idx.type.rank
            gq = graph.add_node("Gather", [q, idx], before=node).output
            gs = graph.add_node("Gather", [scale, idx], before=node).output
            values = graph.add_node("Cast", [gq], {"to": table.dtype.onnx}, before=node).output
            split = graph.add_constant(
                np.array([0] * rank + [width // block, block], np.int64), f"{node.name}_blocks"
            )
            merged = graph.add_constant(
                np.array([0] * rank + [width], np.int64), f"{node.name}_rows"
            )
            axes = graph.add_constant(np.array([-1], np.int64), f"{node.name}_axes")
            blocks = graph.add_node("Reshape", [values, split], before=node).output
            if zp is not None:
                gz = graph.add_node("Gather", [zp, idx], before=node).output
                gzf = graph.add_node("Cast", [gz], {"to": table.dtype.onnx}, before=node).output
                gzu = graph.add_node("Unsqueeze", [gzf, axes], before=node).output
                blocks = graph.add_node("Sub", [blocks, gzu], before=node).output
            scaled = graph.add_node(
                "Mul",
                [blocks, graph.add_node("Unsqueeze", [gs, axes], before=node).output],
                before=node,
            ).output
            out = graph.add_node("Reshape", [scaled, merged], before=node).output
            kept = replace_value(graph, node.output, out)  # keeps a graph output's name
            assert kept, f"cannot replace %{node.output.name}"
            if not table.has_uses():
                graph.remove_constant(table)
            count += 1
        return count

    # ---------------------------------------------------------------- palettes

    def _palette_group(self) -> int:
        """Output channels per palette: 0 (one per tensor), 1 ("channel") or N ("group:N")."""
        gran = self._granularity
        return {"tensor": 0, "channel": 1}.get(gran.kind, gran.group_size)

    def _weight_palette(
        self, graph: Graph, t: Target, cache: dict[tuple[int, int], tuple[Value, Value]]
    ) -> Value:
        """W -> PaletteDequantize(codes, palette; axis=W's output channels), made once per
        weight (before its first consumer) and shared by every node reading it."""
        w = t.node.input(t.weight_index)
        assert w is not None and w.const_value is not None
        key = (id(w), t.channel_axis)
        if key not in cache:
            pt = palettize_tensor(
                w.const_value,
                self.palette_bits,
                axis=t.channel_axis,
                group_size=self._palette_group(),
            )
            codes = graph.add_constant(pt.indices, f"{w.name}_codes")
            palette = graph.add_constant(pt.palette, f"{w.name}_palette")
            lookup = graph.add_node(
                "PaletteDequantize",
                [codes, palette],
                {"axis": t.channel_axis, "group_size": pt.group_size},
                domain="ecograph",
                name=f"{w.name}_palette_lookup",
                before=t.node,
            )
            cache[key] = (w, lookup.output)
        return cache[key][1]

    def _palettize_embeddings(self, graph: Graph, notes: list[str]) -> int:
        """Gather(T, idx) -> PaletteDequantize(Gather(codes, idx), palette; axis=-1): the
        table's columns are its output channels (groups of columns share a palette), so the
        lookup commutes with the row Gather and the float table is never rebuilt."""
        done: dict[int, tuple[Value, Value, int]] = {}
        count = 0
        for node, table in self._embedding_gathers(graph, notes):
            if id(table) not in done:
                assert table.const_value is not None  # _embedding_gathers: a constant table
                pt = palettize_tensor(
                    table.const_value, self.palette_bits, axis=1, group_size=self._palette_group()
                )
                codes = graph.add_constant(pt.indices, f"{table.name}_codes")
                palette = graph.add_constant(pt.palette, f"{table.name}_palette")
                done[id(table)] = (codes, palette, pt.group_size)
            codes, palette, group = done[id(table)]
            idx = node.input(1)
            rows = graph.add_node("Gather", [codes, idx], name=f"{node.name}_codes", before=node)
            out = graph.add_node(
                "PaletteDequantize",
                [rows.output, palette],
                {"axis": -1, "group_size": group},
                domain="ecograph",
                name=f"{node.name}_palette_lookup",
                before=node,
            ).output
            kept = replace_value(graph, node.output, out)  # keeps a graph output's name
            assert kept, f"cannot replace %{node.output.name}"
            if not table.has_uses():
                graph.remove_constant(table)
            count += 1
        return count

    # ---------------------------------------------------------------- weights

    def _quantized_weight(
        self, graph: Graph, t: Target, cache: dict
    ) -> tuple[QuantizedTensor, Value, Value, Value, Value | None]:
        w = t.node.input(t.weight_index)
        assert w is not None and w.const_value is not None
        key = id(w)
        if key in cache:
            return cache[key]
        gran = self._granularity
        axis = t.reduce_axis if gran.kind == "group" else t.channel_axis
        symmetric = self.symmetric if self.mode != "dynamic" else True
        shared_key = self._shared_key(t)
        if self.shared is not None and shared_key in self.shared:
            return self._store(graph, w, self.shared[shared_key], symmetric, cache)
        h = self._hessians.get(t.node.name) if self.algorithm == "gptq" else None
        if h is not None:
            qt = self._gptq(w.const_value, h, t)
        else:
            qt = quantize_tensor(
                w.const_value,
                self.dtype,
                symmetric=symmetric,
                granularity=gran,
                axis=axis,
                clip=self._clip(),
            )
        if self.shared is not None:
            self.shared[shared_key] = qt
        return self._store(graph, w, qt, symmetric, cache)

    def _shared_key(self, t: Target) -> tuple[Any, ...] | None:
        """The key of `t`'s weight in `shared` (None when nothing is shared)."""
        if self.shared is None:
            return None
        w = t.node.input(t.weight_index)
        assert w is not None and w.const_value is not None
        if id(w) not in self._keys:  # hashed once per run, not once per question
            self._keys[id(w)] = array_digest(w.const_value)
        return (self._keys[id(w)], t.channel_axis, t.reduce_axis)

    def _store(
        self, graph: Graph, w: Value, qt: QuantizedTensor, symmetric: bool, cache: dict
    ) -> tuple[QuantizedTensor, Value, Value, Value, Value | None]:
        q = graph.add_constant(qt.data, f"{w.name}_q")
        s = graph.add_constant(qt.scale, f"{w.name}_scale")
        z = None  # symmetric signed weights: the zero point is 0, ONNX's default
        if not (symmetric and self.dtype.startswith("int")):
            z = graph.add_constant(qt.zero_point, f"{w.name}_zero_point")
        cache[id(w)] = (qt, w, q, s, z)
        return cache[id(w)]

    # ------------------------------------------------------------------- GPTQ

    def _targets_in_groups(self, targets: list[Target]) -> list[list[Target]]:
        """`targets` (graph order) in `sequential` groups as even as possible (fewer when
        there are fewer targets)."""
        n = min(self.sequential, len(targets))
        bounds = [round(i * len(targets) / n) for i in range(n + 1)]
        return [targets[bounds[i] : bounds[i + 1]] for i in range(n) if bounds[i] < bounds[i + 1]]

    def _collect_hessians(self, graph: Graph, targets: list[Target]) -> dict[str, np.ndarray]:
        """H = 2/M XᵀX of each eligible layer's input over the calibration data, computed
        with the graph as it is now (the groups before `targets` quantized)."""
        from ecograph.ir import StagedRun
        from ecograph.quant.gptq import hessian

        eligible = [
            t
            for t in targets
            if t.node.op_type in ("MatMul", "Gemm")
            and self._granularity.kind == "group"
            and activation(t).dtype.is_float
        ]
        names = sorted({activation(t).name for t in eligible})
        if not names:
            return {}
        if self._staged is None:  # one staged run per calibration input, kept across groups
            self._staged = [
                StagedRun(graph, feeds) for feeds in calibration_feeds(graph, self.calibration_data)
            ]
        members = {id(t.node) for t in targets}
        first = next(n for n in graph.nodes if id(n) in members)
        sums: dict[str, np.ndarray] = {}
        count = 0
        for run in self._staged:
            # the nodes before this group run once, with the groups before it quantized
            run.advance(stop=first)
            values = run.peek(names)
            for name in names:
                h = hessian(values[name]) * len(values[name].reshape(-1, values[name].shape[-1]))
                sums[name] = sums.get(name, 0) + h
            count += len(next(iter(values.values())).reshape(-1, values[names[0]].shape[-1]))
        return {t.node.name: sums[activation(t).name] / max(count, 1) for t in eligible}

    def _gptq(self, w: np.ndarray, h: np.ndarray, t: Target) -> QuantizedTensor:
        from ecograph.quant.gptq import gptq_quantize

        group = self._granularity.group_size
        kn = w.T if t.reduce_axis == 1 else w  # GPTQ works on [K, N]
        qt = gptq_quantize(
            kn, h, self.dtype, symmetric=self.symmetric, group_size=group, clip=self._clip()
        )
        if t.reduce_axis == 1:
            return QuantizedTensor(
                np.ascontiguousarray(qt.data.T),
                np.ascontiguousarray(qt.scale.T),
                np.ascontiguousarray(qt.zero_point.T),
                axis=1,
                block_size=group,
            )
        return qt

    def _weight_dq(self, graph: Graph, t: Target, cache: dict) -> Value:
        qt, w, q, s, z = self._quantized_weight(graph, t, cache)
        attrs: dict[str, Any] = {}
        if qt.scale.ndim > 0:
            attrs["axis"] = qt.axis
        if qt.block_size:
            attrs["block_size"] = qt.block_size
        node = graph.add_node(
            "DequantizeLinear",
            [q, s, z],
            attrs,
            name=f"{w.name}_dequantize",
            before=t.node,
        )
        out = node.output
        if out.dtype != w.dtype:
            out = graph.add_node("Cast", [out], {"to": w.dtype.onnx}, before=t.node).output
        return out

    # ------------------------------------------------------------ activations

    @staticmethod
    def _block_activations(graph: Graph, targets: list[Target], notes: list[str]) -> None:
        """activations="block": each weight dequantization becomes part of its matmuls
        (ecograph::DequantizeMatMul, fuse-weight-dequantize's rewrite) with activation_block
        set to the weight's group size. A target that cannot (a Conv) keeps float
        activations, with a note naming it."""
        decoders: dict[Node, None] = {}
        for t in targets:
            w = t.node.input(t.weight_index)
            dq = w.producer if w is not None else None
            if dq is not None and dq.op_type == "DequantizeLinear":
                decoders[dq] = None
            else:
                notes.append(f"{t.node.name} ({t.node.op_type}): activations stay float")
        for dq in decoders:
            why = why_not_fused(dq)
            if why is not None:
                users = ", ".join(sorted(u.name for u in dq.outputs[0].users))
                notes.append(f"{users}: activations stay float ({why})")
                continue
            fuse_weight_decoder(graph, dq, activation_block=int(dq.attr("block_size", 0) or 0))

    def _block_nbits(self, graph: Graph, notes: list[str]) -> int:
        """activations="block" on ONNX Runtime's 4-bit MatMulNBits nodes (already weight-only
        quantized): each becomes a DequantizeMatMul with activation blocks of its block size
        (passes/weight_only.nbits_with_activation_blocks), whatever its accuracy_level, since
        int8 activations are what was asked for. Excluded nodes and ones the rewrite cannot
        take stay as they are, with a note. Returns how many were rewritten."""
        patterns = list(self.exclude)
        return block_nbits_activations(
            graph, notes, lambda node: "excluded" if excluded(node, patterns) else None
        )

    def _activation_qdq(
        self,
        graph: Graph,
        x: Value,
        ranges: Mapping[str, tuple[float, float]],
        cache: dict[int, Value],
    ) -> Value:
        if id(x) in cache:
            return cache[id(x)]
        lo, hi = ranges[x.name]
        symmetric = self.activation_dtype.startswith("int")
        scale, zp = compute_qparams(lo, hi, self.activation_dtype, symmetric)
        s = graph.add_constant(scale.astype(np.float32), f"{x.name}_scale")
        z = graph.add_constant(zp, f"{x.name}_zero_point")
        anchor = x.producer.next if x.producer is not None else _first_node(graph)
        assert anchor is not None
        xf = x
        if x.dtype != DType.FLOAT32:
            xf = graph.add_node("Cast", [x], {"to": DType.FLOAT32.onnx}, before=anchor).output
        q = graph.add_node(
            "QuantizeLinear", [xf, s, z], name=f"{x.name}_quantize", before=anchor
        ).output
        dq = graph.add_node(
            "DequantizeLinear", [q, s, z], name=f"{x.name}_dequantize", before=anchor
        ).output
        if x.dtype != DType.FLOAT32:
            dq = graph.add_node("Cast", [dq], {"to": x.dtype.onnx}, before=anchor).output
        cache[id(x)] = dq
        return dq

    # ----------------------------------------------------------------- dynamic

    def _dynamic(self, graph: Graph, t: Target, cache: dict, notes: list[str]) -> int:
        node = t.node
        x = activation(t)
        if node.op_type == "Gemm" and node.attr("transB", 0):
            notes.append(f"{node.name} (Gemm): transB=1 is quantized as a transposed constant")
        _, _, q, s, z = self._dynamic_weight(graph, t, cache)
        assert z is not None
        xf = x
        if x.dtype != DType.FLOAT32:
            xf = graph.add_node("Cast", [x], {"to": DType.FLOAT32.onnx}, before=node).output
        dql = graph.add_node(
            "DynamicQuantizeLinear", [xf], name=f"{node.name}_dynq", num_outputs=3, before=node
        )
        xq, xs, xz = dql.outputs
        acc = graph.add_node(
            "MatMulInteger", [xq, q, xz, z], name=f"{node.name}_int", before=node
        ).output
        accf = graph.add_node("Cast", [acc], {"to": DType.FLOAT32.onnx}, before=node).output
        scale = graph.add_node("Mul", [xs, s], before=node).output
        out = graph.add_node("Mul", [accf, scale], before=node).output
        out = self._epilogue(graph, node, out)
        kept = replace_value(graph, node.output, out)  # keeps a graph output's name
        assert kept, f"cannot replace %{node.output.name}"
        return 1

    def _dynamic_token(
        self, graph: Graph, t: Target, cache: dict, rows: dict[int, tuple[Value, Value]]
    ) -> int:
        """MatMul(x, W) -> (Cast(MatMulInteger(x_q, W_q)) * s_x) * s_w with one symmetric int8
        scale per row of x (`_token_quantize`; shared by every consumer of x)."""
        node = t.node
        x = activation(t)
        _, _, q, s, _ = self._dynamic_weight(graph, t, cache)
        if id(x) not in rows:
            rows[id(x)] = self._token_quantize(graph, x, node)
        xq, xs = rows[id(x)]
        acc = graph.add_node("MatMulInteger", [xq, q], name=f"{node.name}_int", before=node).output
        accf = graph.add_node("Cast", [acc], {"to": DType.FLOAT32.onnx}, before=node).output
        # Two broadcasting products keep the rescale element-wise on the output (a [M, N]
        # product of the scales would be one more tensor the size of the output).
        out = graph.add_node("Mul", [accf, xs], before=node).output
        out = graph.add_node("Mul", [out, s], before=node).output
        out = self._epilogue(graph, node, out)
        kept = replace_value(graph, node.output, out)  # keeps a graph output's name
        assert kept, f"cannot replace %{node.output.name}"
        return 1

    def _token_quantize(self, graph: Graph, x: Value, before: Node) -> tuple[Value, Value]:
        """(x_q int8, s_x float32 [.., rows, 1]): s_x = max(max|x_row|, tiny) / 127 and
        x_q = Cast<int8>(Clip(Round(x / s_x), -127, 127)), Round half to even."""
        name = x.name
        xf = x
        if x.dtype != DType.FLOAT32:
            xf = graph.add_node("Cast", [x], {"to": DType.FLOAT32.onnx}, before=before).output

        def const(v: Any, suffix: str) -> Value:
            return graph.add_constant(np.array(v, np.float32), f"{name}_{suffix}")

        axes = graph.add_constant(np.array([-1], np.int64), f"{name}_token_axes")
        ax = graph.add_node("Abs", [xf], before=before).output
        amax = graph.add_node(
            "ReduceMax", [ax, axes], {"keepdims": 1}, name=f"{name}_token_max", before=before
        ).output
        amax = graph.add_node("Max", [amax, const(TOKEN_TINY, "token_tiny")], before=before)
        scale = graph.add_node(
            "Div", [amax.output, const(TOKEN_QMAX, "token_qmax")], name=f"{name}_token_scale",
            before=before,
        ).output  # fmt: skip
        scaled = graph.add_node("Div", [xf, scale], before=before).output
        rounded = graph.add_node("Round", [scaled], before=before).output
        clipped = graph.add_node(
            "Clip",
            [rounded, const(-TOKEN_QMAX, "token_lo"), const(TOKEN_QMAX, "token_hi")],
            before=before,
        ).output
        xq = graph.add_node(
            "Cast", [clipped], {"to": DType.INT8.onnx}, name=f"{name}_token_quantize",
            before=before,
        ).output  # fmt: skip
        return xq, scale

    @staticmethod
    def _epilogue(graph: Graph, node: Node, out: Value) -> Value:
        """Gemm's alpha, beta and C, Linear's bias, and the cast back to the output dtype."""
        if node.op_type == "Gemm":
            alpha = float(node.attr("alpha", 1.0))
            if alpha != 1.0:
                a = graph.add_constant(np.array(alpha, np.float32), f"{node.name}_alpha")
                out = graph.add_node("Mul", [out, a], before=node).output
            c = node.input(2)
            if c is not None:
                beta = float(node.attr("beta", 1.0))
                if beta != 1.0:
                    b = graph.add_constant(np.array(beta, np.float32), f"{node.name}_beta")
                    c = graph.add_node("Mul", [c, b], before=node).output
                out = graph.add_node("Add", [out, c], before=node).output
        if node.op_type == "Linear" and node.input(2) is not None:
            bias = node.input(2)
            assert bias is not None
            out = graph.add_node("Add", [out, bias], before=node).output
        if node.output.dtype != DType.FLOAT32:
            out = graph.add_node("Cast", [out], {"to": node.output.dtype.onnx}, before=node).output
        return out

    def _dynamic_weight(self, graph: Graph, t: Target, cache: dict) -> tuple:
        w = t.node.input(t.weight_index)
        assert w is not None and w.const_value is not None
        key = id(w)
        if key in cache:
            return cache[key]
        arr = w.const_value.astype(np.float32)
        if t.node.op_type == "Gemm" and t.node.attr("transB", 0):
            arr = arr.T  # MatMulInteger wants [K, N]
        per_channel = self._granularity.kind != "tensor"
        qt = quantize_tensor(
            arr, "int8", symmetric=True, granularity="channel" if per_channel else "tensor", axis=1
        )
        q = graph.add_constant(np.ascontiguousarray(qt.data), f"{w.name}_q")
        s = graph.add_constant(qt.scale, f"{w.name}_scale")
        z = graph.add_constant(qt.zero_point, f"{w.name}_zero_point")
        cache[key] = (qt, w, q, s, z)
        return cache[key]


def _first_node(graph: Graph) -> Node | None:
    for node in graph.nodes:
        return node
    return None
