"""The TVM lowering driver: walk an IR graph and build one Relax function with BlockBuilder.

`lower_graph` binds the graph inputs (and, with `keep_params`, the large weights) as function
parameters, lowers each live node with its registered lowering (`LOWERINGS`, filled by the
modules in `ecograph/backends/tvm/ops/`), computes small all-known nodes at lowering time with
their reference kernels, and makes every result's Relax type agree with the IR type. A graph
with ops that have no lowering is refused with one error naming all of them (never a
half-built module).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tvm import relax
from tvm import tirx as tir

import ecograph.backends.tvm.ops  # noqa: F401  (registers every lowering)
from ecograph.backends.tvm.context import (
    ANALYZER,
    LOWERINGS,
    RELAX_DTYPES,
    UNLOWERABLE,
    LowerContext,
    LoweringState,
    LowerOptions,
    R,
    carrier,
    contiguous,
    known_array,
    missing_lowerings,
)
from ecograph.backends.tvm.ops.conv import (
    packed_conv_weights,
    packed_depthwise_taps,
    packed_row_conv_weights,
)
from ecograph.backends.tvm.ops.matmul import packed_matmul_weights
from ecograph.backends.tvm.ops.quant import pack_int4, packed_weights
from ecograph.backends.tvm.ops.weight_panels import weight_panels
from ecograph.backends.tvm.targets import TargetSpec
from ecograph.errors import LoweringError, UnsupportedError
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.folding import fold_node
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.ops.ms_qlinear import EXPANSIONS
from ecograph.ir.registry import OpSchema, registered_ops, resolve_attrs
from ecograph.passes import Pass, run_passes
from ecograph.passes.qlinear import ExpandQLinear
from ecograph.passes.weight_only import FuseWeightDequantize, TransposeDequantizeWeights

# --------------------------------------------------------------- graph lowering


@dataclass
class Lowered:
    """A lowered graph: the module and what a caller needs to feed it."""

    mod: Any
    input_names: list[str]
    output_names: list[str]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    symbols: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Nodes computed at lowering time by their reference kernel (all inputs known; small).
    folded: list[str] = field(default_factory=list)


# Rewrites the backend runs on its copy of every graph before lowering: ONNX Runtime's
# quantized contrib ops (QLinearAdd, QGemm, ...) become the standard ops that define them;
# weight-only DequantizeLinear feeding a matmul becomes one DequantizeMatMul kernel (the
# compressed weights stay compressed in the artifact).
BACKEND_PASSES: tuple[type[Pass], ...] = (ExpandQLinear, FuseWeightDequantize)
# ... and then, for GPU targets, those kernels' weights stored [N, K], the layout dlight's
# GEMV rule schedules on CUDA (passes/weight_only.py).
GPU_BACKEND_PASSES: tuple[type[Pass], ...] = (TransposeDequantizeWeights,)


# The ops BACKEND_PASSES rewrite into others before lowering: they need no lowering of their own.
EXPANDED_OPS = frozenset(EXPANSIONS)


def has_lowering(op_type: str, domain: str = "") -> bool:
    """Whether the backend lowers `domain::op_type` (with a lowering, or by a backend pass
    rewriting it into ops that have one)."""
    return (domain, op_type) in LOWERINGS or (domain, op_type) in EXPANDED_OPS


def unlowered_registry_ops() -> list[OpSchema]:
    """Registry ops that have no lowering yet (the table's to-do list)."""
    return [s for s in registered_ops() if not has_lowering(s.op_type, s.domain)]


def backend_passes(target: TargetSpec) -> list[Pass]:
    """The rewrites lowering runs on its copy of a graph for `target`, in order."""
    extra = GPU_BACKEND_PASSES if target.is_gpu else ()
    return [p() for p in (*BACKEND_PASSES, *extra)]


def lower_graph(
    graph: Graph,
    target: TargetSpec,
    *,
    keep_params: bool = False,
    param_threshold: int = 0,
    func_name: str = "main",
    widen_int8_matmul: bool | None = None,
    fold: bool = True,
) -> Lowered:
    """Lower `graph` for the resolved `target` into an IRModule with one Relax function
    `func_name`. The keywords are `LowerOptions`' fields; `widen_int8_matmul` defaults to
    `target.is_gpu`."""
    if not isinstance(target, TargetSpec):
        raise TypeError(
            f"lower_graph takes a resolved TargetSpec, not {type(target).__name__} "
            f"({target!r}); resolve it once with ecograph.backends.tvm.targets.resolve(...)"
        )
    options = LowerOptions(
        target=target,
        keep_params=keep_params,
        param_threshold=param_threshold,
        func_name=func_name,
        widen_int8_matmul=target.is_gpu if widen_int8_matmul is None else widen_int8_matmul,
        fold=fold,
    )
    return lower_with(graph, options)


def lower_with(graph: Graph, options: LowerOptions) -> Lowered:
    """`lower_graph` with its options as one `LowerOptions`.

    The backend's own rewrites run first, through the pass manager (verified), on a copy of
    `graph` (the caller's graph is not changed): `BACKEND_PASSES` (and `GPU_BACKEND_PASSES`
    for GPU targets); then every op left must have a lowering. With `keep_params`,
    constants of at least `param_threshold` bytes become trailing parameters (returned in
    `Lowered.params`, in order) instead of bound constants.
    """
    _check_symbols(graph)
    graph = graph.copy()
    run_passes(graph, backend_passes(options.target))
    missing = missing_lowerings(graph)
    if missing:
        why = {f"{d}::{o}" if d else o: r for (d, o), r in UNLOWERABLE.items()}
        listed = ", ".join(f"{m} ({why[m]})" if m in why else m for m in missing)
        raise UnsupportedError(
            f"graph {graph.name!r} uses {len(missing)} op(s) with no TVM lowering: {listed}. "
            "Add a lowering with @lowers in a module under ecograph/backends/tvm/ops/ or "
            "rewrite them with a pass first."
        )
    state = LoweringState(relax.BlockBuilder(), options)
    params: list[relax.Var] = []
    for v in graph.inputs:
        if v.dtype not in RELAX_DTYPES or v.dtype in (DType.INT4, DType.UINT4):
            raise UnsupportedError(
                f"graph input {v.name!r} has dtype {v.dtype}; TVM cannot take it"
            )
        var = relax.Var(_ident(v.name), state.symbols.tensor_type(v.type))
        params.append(var)
        state.exprs[v] = var
    live = _live_nodes(graph)
    state.weight_panels = weight_panels(graph, live, options.target)
    paneled = {v: arr for plan in state.weight_panels.values() for v, arr in plan.arrays.items()}
    packed = packed_weights(graph, live, skip=paneled)
    state.packed = set(packed)
    packed.update(paneled)
    panels = packed_matmul_weights(graph, live, options.target)
    panels.update(packed_row_conv_weights(graph, live, options.target))
    state.panels = {c: p.nr for c, p in panels.items()}
    packed.update({c: p.array for c, p in panels.items()})
    conv_weights = packed_conv_weights(graph, live, options.target)
    taps = packed_depthwise_taps(graph, live, options.target)
    state.taps = set(taps)
    packed.update(taps)
    state.conv_blocks = {c: p.block for c, p in conv_weights.items()}
    packed.update({c: p.array for c, p in conv_weights.items()})
    kept: dict[str, np.ndarray] = {}
    for c in graph.constants.values():
        arr = c.const_value
        assert arr is not None
        if c in packed:
            arr = packed[c]
        elif c.dtype in (DType.INT4, DType.UINT4):
            arr = arr.astype(carrier(c.dtype))
        if options.keep_params and arr.nbytes >= options.param_threshold and arr.ndim > 0:
            var = relax.Var(_ident(c.name), relax.TensorType(list(arr.shape), str(arr.dtype)))
            params.append(var)
            state.exprs[c] = var
            kept[c.name] = arr
        elif c in packed:
            state.exprs[c] = relax.const(arr, str(arr.dtype))
        # Other bound constants are created lazily, once per value, when first used.

    bb = state.bb
    with bb.function(options.func_name, params):
        with bb.dataflow():
            for node in graph.nodes:
                if node in live:
                    _lower_node(state, node)
            outs = [state.value_expr(v) for v in graph.outputs]
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            out_var = bb.emit_output(result)
        bb.emit_func_output(out_var)
    return Lowered(
        mod=bb.get(),
        input_names=[v.name for v in graph.inputs],
        output_names=[v.name for v in graph.outputs],
        params=kept,
        symbols=sorted(state.symbols.vars),
        notes=sorted(set(state.notes)),
        folded=state.folded_nodes,
    )


def _live_nodes(graph: Graph) -> set[Node]:
    """The nodes the graph outputs depend on (dead nodes are not lowered)."""
    live: set[Node] = set()
    stack = [v.producer for v in graph.outputs if v.producer is not None]
    while stack:
        node = stack.pop()
        if node in live:
            continue
        live.add(node)
        stack.extend(v.producer for v in node.inputs if v is not None and v.producer is not None)
    return live


def _ident(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return cleaned if cleaned[:1].isalpha() or cleaned[:1] == "_" else f"v_{cleaned}"


def _check_symbols(graph: Graph) -> None:
    """Every symbol in an input shape must appear bare somewhere, so Relax can bind it."""
    bare: set[str] = set()
    used: set[str] = set()
    for v in graph.inputs:
        for d in v.shape:
            if isinstance(d, str):
                used |= symbolic.symbols(d)
                if symbolic.is_symbol_name(d):
                    bare.add(d)
    unbound = sorted(used - bare)
    if unbound:
        raise UnsupportedError(
            f"graph {graph.name!r}: symbols {unbound} appear only inside expressions in input "
            "shapes; Relax needs each symbol as a whole dim of some input"
        )


def _lower_node(state: LoweringState, node: Node) -> None:
    values = _fold(node, state.folded) if state.options.fold else None
    if values is not None:
        # Every input is known before run time and the outputs are small: the reference
        # kernel computes them now (shape math, axes, pads...), so ops that need such inputs
        # static see constants, and Relax sees static shapes.
        ctx = LowerContext(state, node, {}, [])
        state.folded_nodes.append(node.name)
        for out, arr in zip(node.outputs, values, strict=True):
            state.folded[out] = arr
            state.exprs[out] = _conform(ctx, relax.const(contiguous(arr), str(out.dtype)), out)
        return
    if node.outputs and all(_statically_empty(out) for out in node.outputs):
        # Every output has zero elements: nothing to compute. Some Relax ops mis-size empty
        # results (strided_slice gives a negative extent for start > end; reflect padding of
        # an empty axis fails to build), found by tests/backends/test_compiled_fuzz.py.
        for out in node.outputs:
            shape = [int(d) for d in out.type.static_shape()]
            state.exprs[out] = state.bb.emit(R.zeros(relax.ShapeExpr(shape), carrier(out.dtype)))
        return
    fn = LOWERINGS[(node.domain, node.op_type)]
    args = [None if v is None else state.value_expr(v) for v in node.inputs]
    ctx = LowerContext(state, node, resolve_attrs(node.schema, node), args)
    try:
        result = fn(ctx)
    except (LoweringError, UnsupportedError):
        raise
    except Exception as exc:
        raise LoweringError(
            f"node {node.name} ({node.qualified_op}): lowering failed: {type(exc).__name__}: {exc}"
        ) from exc
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    for i, out in enumerate(node.outputs):
        if i >= len(results) or results[i] is None:
            if out.has_uses():
                ctx.fail(f"output {i} (%{out.name}) is used but this lowering does not produce it")
            continue
        state.exprs[out] = _conform(ctx, results[i], out)


def _statically_empty(value: Value) -> bool:
    t = value.type
    return t.is_static and t.dtype in RELAX_DTYPES and 0 in t.static_shape()


# Lowering-time folding computes nodes whose inputs are all known (constants, static shape
# math, values folded before) with their reference kernel, when no input or output holds
# more than this many elements.
FOLD_MAX_ELEMENTS = 4096

# The backend's own policy on top of `fold_node`: weight (de)quantization is never folded, so
# compressed weights reach the kernels that read them (folding would replace them with float
# copies that undo the compression; the fused weight-only and MatMulNBits kernels dequantize
# inside the matmul instead).
KEEP_QUANTIZED = frozenset(
    {
        ("", "DequantizeLinear"),
        ("", "QuantizeLinear"),
        ("", "DynamicQuantizeLinear"),
        ("com.microsoft", "MatMulNBits"),
    }
)


def _fold(node: Node, folded: dict[Value, np.ndarray]) -> list[np.ndarray] | None:
    """The node's outputs computed now, if its inputs are all known and its values small."""
    if (node.domain, node.op_type) in KEEP_QUANTIZED or not node.inputs:
        return None
    if any(
        o.dtype not in RELAX_DTYPES or o.dtype in (DType.INT4, DType.UINT4) for o in node.outputs
    ):
        return None  # no Relax constant can hold the result
    args: list[np.ndarray | None] = []
    for v in node.inputs:
        if v is None:
            args.append(None)
            continue
        arr = folded[v] if v in folded else known_array(v)
        if arr is None:
            return None
        args.append(arr)
    try:
        return fold_node(node, args, max_elements=FOLD_MAX_ELEMENTS)
    except Exception:  # the op's own lowering will report what is wrong
        return None


def _conform(ctx: LowerContext, expr: relax.Expr, out: Value) -> relax.Expr:
    """Emit `expr`; make its Relax type agree with the IR type (dtype exactly; shape known)."""
    if not isinstance(expr, relax.Var):
        expr = ctx.bb.emit(expr)
    sinfo = expr.ty
    want = out.type
    if not isinstance(sinfo, relax.TensorType):
        ctx.fail(f"output %{out.name} lowered to a non-tensor {sinfo}")
    if str(sinfo.dtype) in ("int4", "uint4"):
        expr = ctx.bb.emit(R.astype(expr, carrier(DType(str(sinfo.dtype)))))
        sinfo = expr.ty
    if str(sinfo.dtype) != carrier(want.dtype):
        if str(sinfo.dtype) in ("", "void"):
            return ctx.bb.match_cast(expr, ctx.symbols.tensor_type(want))
        ctx.fail(
            f"output %{out.name} lowered to dtype {sinfo.dtype}; the IR says {want.dtype} "
            "(a bug in this lowering)"
        )
    if sinfo.shape is None or sinfo.ndim != want.rank:
        return ctx.bb.match_cast(expr, ctx.symbols.tensor_type(want))
    # Relax may derive a dim in another form (min(seq, 512) where the IR knows seq); pin the
    # IR's form so later ops see shapes they can prove equal.
    got = list(sinfo.shape.values) if hasattr(sinfo.shape, "values") else None
    if got is not None and len(got) == want.rank:
        for g, d in zip(got, want.shape, strict=True):
            if isinstance(d, str) and symbolic.is_symbol_name(d) and isinstance(g, tir.IntImm):
                ctx.symbols.learn(d, int(g.value))
    if got is None or not all(
        ANALYZER.can_prove_equal(g, ctx.symbols.expr(d))
        for g, d in zip(got, want.shape, strict=True)
    ):
        return ctx.bb.match_cast(expr, ctx.symbols.tensor_type(want))
    return expr


__all__ = [
    "LOWERINGS",
    "UNLOWERABLE",
    "LowerOptions",
    "Lowered",
    "has_lowering",
    "lower_graph",
    "lower_with",
    "missing_lowerings",
    "pack_int4",
    "unlowered_registry_ops",
]
