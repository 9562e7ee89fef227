"""Lowering table: ecograph IR -> TVM Relax, one function per registered op, via BlockBuilder.

Each entry of `LOWERINGS` maps `(domain, op_type)` to a function that receives a
`LowerContext` (the node, its resolved attributes, its inputs as Relax expressions, the
BlockBuilder) and returns one Relax expression per node output. New ops get a lowering with
the `@lowers("OpType", domain=...)` decorator; `missing_lowerings(graph)` lists what a graph
needs that the table lacks, and `lower_graph` refuses such a graph with one error naming all
of them (never a half-built module).

Symbolic dims become Relax symbolic shapes: one `tir.Var` (int64) per symbol, and expressions
such as `2*seq` or `(seq+1)//2` become TIR arithmetic over those vars. Weights are bound once
each as Relax constants, or, with `keep_params=True`, become trailing function parameters
(large models: the weights then live next to the library, not inside it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecograph.errors import LoweringError, UnsupportedError
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.interpreter import run_node
from ecograph.ir.ops.quant import QUANT_RANGES
from ecograph.ir.registry import OpSchema, registered_ops, resolve_attrs, symbolic_value
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

try:  # TVM is optional for the rest of ecograph; the backend needs its compiler parts.
    from tvm import relax
    from tvm import tirx as tir
except ImportError as exc:  # pragma: no cover - exercised only without TVM
    raise ImportError(
        "ecograph's TVM backend needs apache-tvm (pip install 'ecograph[tvm]')"
    ) from exc

from tvm.sym.analyzer import Analyzer

R = relax.op
NN = relax.op.nn
_ANALYZER = Analyzer()

LowerFn = Callable[["LowerContext"], "relax.Expr | Sequence[relax.Expr | None]"]
LOWERINGS: dict[tuple[str, str], LowerFn] = {}

# Dtypes Relax can carry through function boundaries and kernels.
_RELAX_DTYPES = {d for d in DType if d is not DType.STRING}


def lowers(*op_types: str, domain: str = "") -> Callable[[LowerFn], LowerFn]:
    """Register the decorated function as the lowering of each of `op_types` in `domain`."""

    def decorate(fn: LowerFn) -> LowerFn:
        for op_type in op_types:
            LOWERINGS[(domain, op_type)] = fn
        return fn

    return decorate


def has_lowering(op_type: str, domain: str = "") -> bool:
    return (domain, op_type) in LOWERINGS


def unlowered_registry_ops() -> list[OpSchema]:
    """Registry ops that have no lowering yet (the table's to-do list)."""
    return [s for s in registered_ops() if (s.domain, s.op_type) not in LOWERINGS]


def missing_lowerings(graph: Graph) -> list[str]:
    """Qualified names of the ops in `graph` that have no lowering, sorted."""
    return sorted({n.qualified_op for n in graph.nodes if (n.domain, n.op_type) not in LOWERINGS})


# ----------------------------------------------------------------- symbolic dims


class SymbolTable:
    """One int64 `tir.Var` per symbol name; dim strings become TIR expressions."""

    _TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(//|[-+*%()]))")

    def __init__(self) -> None:
        self.vars: dict[str, tir.Var] = {}
        # Symbols the IR could not resolve (fresh output dims) whose value Relax proved
        # static while lowering (e.g. after lowering-time folding of their shape inputs).
        self.known: dict[str, int] = {}

    def learn(self, name: str, value: int) -> None:
        """Record that symbol `name` is `value`; only before any use made it a Var."""
        if name not in self.vars:
            self.known[name] = value

    def var(self, name: str) -> Any:
        if name in self.known:
            return tir.IntImm("int64", self.known[name])
        if name not in self.vars:
            self.vars[name] = tir.Var(name, "int64")
        return self.vars[name]

    def expr(self, dim: Dim) -> Any:
        """A TIR expression (or int) for a dim."""
        if isinstance(dim, int):
            return tir.IntImm("int64", dim)
        if symbolic.is_symbol_name(dim):
            return self.var(dim)
        tokens = [t for t in self._tokens(dim)]
        pos = 0

        def peek() -> str | None:
            return tokens[pos] if pos < len(tokens) else None

        def take() -> str:
            nonlocal pos
            pos += 1
            return tokens[pos - 1]

        def expr() -> Any:
            v = term()
            while peek() in ("+", "-"):
                v = v + term() if take() == "+" else v - term()
            return v

        def term() -> Any:
            v = factor()
            while peek() in ("*", "//", "%"):
                op = take()
                rhs = factor()
                v = (
                    v * rhs
                    if op == "*"
                    else tir.floordiv(v, rhs)
                    if op == "//"
                    else (tir.floormod(v, rhs))
                )
            return v

        def factor() -> Any:
            tok = take()
            if tok == "-":
                return -factor()
            if tok == "(":
                v = expr()
                take()  # ")"
                return v
            if tok.isdigit():
                return tir.IntImm("int64", int(tok))
            return self.var(tok)

        return expr()

    def _tokens(self, text: str) -> list[str]:
        out, pos = [], 0
        while pos < len(text) and text[pos:].strip():
            m = self._TOKEN.match(text, pos)
            if not m:
                raise LoweringError(f"cannot lower dimension {text!r}")
            out.append(m.group(1) or m.group(2) or m.group(3))
            pos = m.end()
        return out

    def shape(self, dims: Sequence[Dim]) -> relax.ShapeExpr:
        return relax.ShapeExpr([self.expr(d) for d in dims])

    def tensor_type(self, t: TensorType) -> relax.TensorType:
        return relax.TensorType([self.expr(d) for d in t.shape], carrier(t.dtype))


# ------------------------------------------------------------------- the context


@dataclass
class LowerContext:
    """What a lowering function sees for one node."""

    bb: relax.BlockBuilder
    node: Node
    attrs: dict[str, Any]
    args: list[relax.Expr | None]
    symbols: SymbolTable
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def arg(self, i: int) -> relax.Expr:
        a = self.args[i] if i < len(self.args) else None
        if a is None:
            self.fail(f"input {i} is required")
        return a  # type: ignore[return-value]

    def has(self, i: int) -> bool:
        return i < len(self.args) and self.args[i] is not None

    def in_type(self, i: int) -> TensorType:
        v = self.node.input(i)
        if v is None:
            self.fail(f"input {i} is absent")
        return v.type  # type: ignore[union-attr]

    def out_type(self, i: int = 0) -> TensorType:
        return self.node.outputs[i].type

    def rank(self, i: int = 0) -> int:
        return self.in_type(i).rank

    def const(self, i: int) -> np.ndarray | None:
        """Input `i`'s value when known before run time (a constant, static shape math, or a
        small computation on those that the lowering folded)."""
        v = self.node.input(i)
        if v is None:
            return None
        folded = self.options.get("folded", {})
        return folded[id(v)] if id(v) in folded else known_array(v)

    def ints(self, i: int, what: str) -> list[int] | None:
        """Input `i` as a list of ints; None if absent; an error if not known statically."""
        if not self.has(i):
            return None
        arr = self.const(i)
        if arr is None:
            self.fail(f"{what} (input {i}) must be a constant or static shape computation")
        return [int(x) for x in np.asarray(arr).reshape(-1)]

    def emit(self, expr: relax.Expr) -> relax.Expr:
        return self.bb.emit(expr)

    def scalar(self, value: Any, dtype: DType | str) -> relax.Expr:
        dt = DType.parse(dtype)
        return relax.const(np.array(value, dtype=dt.numpy), str(dt))

    def shape(self, dims: Sequence[Dim]) -> relax.ShapeExpr:
        return self.symbols.shape(dims)

    def dim(self, d: Dim) -> Any:
        return self.symbols.expr(d)

    def fail(self, message: str) -> Any:
        raise LoweringError(f"node {self.node.name} ({self.node.qualified_op}): {message}")


def known_array(value: Value) -> np.ndarray | None:
    """The array a value holds if it is known before run time, else None."""
    if value.const_value is not None:
        return value.const_value
    node = value.producer
    if node is not None and node.op_type == "Constant" and node.domain == "":
        return run_node(node, [])[0]
    sym = symbolic_value(value)
    if sym is not None and all(isinstance(d, int) for d in sym):
        return np.array(sym, dtype=value.dtype.numpy).reshape(value.type.static_shape())
    return None


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


def lower_graph(
    graph: Graph,
    *,
    keep_params: bool = False,
    param_threshold: int = 0,
    func_name: str = "main",
    widen_int8_matmul: bool = False,
    target_family: str = "cpu",
    fold: bool = True,
) -> Lowered:
    """Lower `graph` to an IRModule with one Relax function `func_name`.

    With `keep_params=True`, constants of at least `param_threshold` bytes become trailing
    parameters (returned in `Lowered.params`, in order) instead of bound constants.
    `widen_int8_matmul=True` emits int8 x int8 matmuls on int32 operands (CUDA: TVM 0.27's
    dlight Matmul rule crashes on the int8 form; the widened one schedules and is exact).
    `target_family` ("cpu" for x86 and ARM, or "cuda") lets a lowering pick a kernel form
    (`ctx.options["target_family"]`); the default is "cpu". `fold=False` turns lowering-time
    folding off (every node is lowered; tests of a lowering use it).
    """
    missing = missing_lowerings(graph)
    if missing:
        why = {f"{d}::{o}" if d else o: r for (d, o), r in UNLOWERABLE.items()}
        listed = ", ".join(f"{m} ({why[m]})" if m in why else m for m in missing)
        raise UnsupportedError(
            f"graph {graph.name!r} uses {len(missing)} op(s) with no TVM lowering: {listed}. "
            "Add them with @lowers in ecograph/backends/tvm/lowering.py or rewrite them with a "
            "pass first."
        )
    _check_symbols(graph)
    symbols = SymbolTable()
    bb = relax.BlockBuilder()
    exprs: dict[int, relax.Expr] = {}
    params: list[relax.Var] = []
    for v in graph.inputs:
        if v.dtype not in _RELAX_DTYPES or v.dtype in (DType.INT4, DType.UINT4):
            raise UnsupportedError(
                f"graph input {v.name!r} has dtype {v.dtype}; TVM cannot take it"
            )
        var = relax.Var(_ident(v.name), symbols.tensor_type(v.type))
        params.append(var)
        exprs[id(v)] = var
    live = _live_nodes(graph)
    absorbed = {id(n) for n in graph.nodes if id(n) in live and _absorbed_dq(n)}
    packed = _packed_weights(graph, absorbed)
    kept: dict[str, np.ndarray] = {}
    for c in graph.constants.values():
        arr = c.const_value
        assert arr is not None
        if id(c) in packed:
            arr = packed[id(c)]
        elif c.dtype in (DType.INT4, DType.UINT4):
            arr = arr.astype(carrier(c.dtype))
        if keep_params and arr.nbytes >= param_threshold and arr.ndim > 0:
            var = relax.Var(_ident(c.name), relax.TensorType(list(arr.shape), str(arr.dtype)))
            params.append(var)
            exprs[id(c)] = var
            kept[c.name] = arr
        elif id(c) in packed:
            exprs[id(c)] = relax.const(arr, str(arr.dtype))
        # Other bound constants are created lazily, once per value, when first used.

    options: dict[str, Any] = {
        "widen_int8_matmul": widen_int8_matmul,
        "target_family": target_family,
        "absorbed": absorbed,
        "packed": set(packed),
        "exprs": exprs,
        "folded": {},  # value id -> array computed while lowering
        "folded_nodes": [],
        "fold": fold,
    }
    notes: list[str] = []
    with bb.function(func_name, params):
        with bb.dataflow():
            for node in graph.nodes:
                # An absorbed DequantizeLinear is computed inside its matmuls instead.
                if id(node) in live and id(node) not in absorbed:
                    _lower_node(bb, node, exprs, symbols, options, notes)
            outs = [_value_expr(bb, v, exprs) for v in graph.outputs]
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            out_var = bb.emit_output(result)
        bb.emit_func_output(out_var)
    mod = bb.get()
    return Lowered(
        mod=mod,
        input_names=[v.name for v in graph.inputs],
        output_names=[v.name for v in graph.outputs],
        params=kept,
        symbols=sorted(symbols.vars),
        notes=sorted(set(notes)),
        folded=options["folded_nodes"],
    )


def _live_nodes(graph: Graph) -> set[int]:
    """Ids of the nodes the graph outputs depend on (dead nodes are not lowered)."""
    live: set[int] = set()
    stack = [v.producer for v in graph.outputs if v.producer is not None]
    while stack:
        node = stack.pop()
        if id(node) in live:
            continue
        live.add(id(node))
        stack.extend(v.producer for v in node.inputs if v is not None and v.producer is not None)
    return live


def carrier(dtype: DType) -> str:
    """The TVM dtype that holds values of `dtype`: int4/uint4 travel as int8/uint8."""
    return {DType.INT4: "int8", DType.UINT4: "uint8"}.get(dtype, str(dtype))


def _contiguous(arr: np.ndarray) -> np.ndarray:
    """The array itself when C-contiguous (no copy); np.ascontiguousarray would make 0-d 1-d."""
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)


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


def _value_expr(bb: relax.BlockBuilder, v: Value, exprs: dict[int, relax.Expr]) -> relax.Expr:
    if id(v) in exprs:
        return exprs[id(v)]
    if v.const_value is not None:
        if v.dtype in (DType.INT4, DType.UINT4):
            # TVM's VM cannot allocate 4-bit tensors: 4-bit values travel in 8-bit carriers.
            wide = carrier(v.dtype)
            e = relax.const(v.const_value.astype(wide), wide)
        else:
            e = relax.const(_contiguous(v.const_value), str(v.dtype))
        exprs[id(v)] = e
        return e
    raise LoweringError(f"value %{v.name} is used before it is defined")


def _lower_node(
    bb: relax.BlockBuilder,
    node: Node,
    exprs: dict[int, relax.Expr],
    symbols: SymbolTable,
    options: dict[str, Any],
    notes: list[str],
) -> None:
    folded = options["folded"]
    values = _fold(node, folded) if options["fold"] else None
    if values is not None:
        # Every input is known before run time and the outputs are small: the reference
        # kernel computes them now (shape math, axes, pads...), so ops that need such inputs
        # static see constants, and Relax sees static shapes.
        ctx = LowerContext(bb, node, {}, [], symbols, options, notes)
        options["folded_nodes"].append(node.name)
        for out, arr in zip(node.outputs, values, strict=True):
            folded[id(out)] = arr
            exprs[id(out)] = _conform(ctx, relax.const(_contiguous(arr), str(out.dtype)), out)
        return
    fn = LOWERINGS[(node.domain, node.op_type)]
    schema = node.schema
    absorbed = options.get("absorbed", set())
    args = [
        None
        if v is None or (v.producer is not None and id(v.producer) in absorbed)
        else _value_expr(bb, v, exprs)
        for v in node.inputs
    ]
    ctx = LowerContext(bb, node, resolve_attrs(schema, node), args, symbols, options, notes)
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
        exprs[id(out)] = _conform(ctx, results[i], out)


# Lowering-time folding: nodes whose inputs are all known are computed by the reference
# kernel when every output has at most this many elements. Weight dequantization is never
# folded (the float weights would replace the compressed ones), nor is anything random.
FOLD_MAX_ELEMENTS = 4096
_NEVER_FOLD = {
    ("", "DequantizeLinear"),
    ("", "QuantizeLinear"),
    ("", "DynamicQuantizeLinear"),
    ("com.microsoft", "MatMulNBits"),
    ("", "RandomNormal"),
    ("", "RandomNormalLike"),
    ("", "RandomUniform"),
    ("", "RandomUniformLike"),
    ("", "Multinomial"),
    ("", "Bernoulli"),
    ("", "Dropout"),
}


def _fold(node: Node, folded: dict[int, np.ndarray]) -> list[np.ndarray] | None:
    """The node's outputs computed now, if its inputs are all known and its outputs small."""
    if (node.domain, node.op_type) in _NEVER_FOLD or not node.inputs:
        return None
    for out in node.outputs:
        t = out.type
        if t.dtype not in _RELAX_DTYPES or t.dtype in (DType.INT4, DType.UINT4):
            return None
        if t.is_static and math.prod(t.static_shape()) > FOLD_MAX_ELEMENTS:
            return None
    args: list[np.ndarray | None] = []
    for v in node.inputs:
        if v is None:
            args.append(None)
            continue
        arr = folded[id(v)] if id(v) in folded else known_array(v)
        if arr is None:
            return None
        args.append(arr)
    if any(a is not None and a.size > FOLD_MAX_ELEMENTS for a in args):
        return None
    try:
        with np.errstate(all="ignore"):
            values = [np.asarray(a) for a in run_node(node, args)]
    except Exception:  # the op's own lowering will report what is wrong
        return None
    # Outputs whose size the IR could not know (a value-dependent shape) are checked now.
    return None if any(a.size > FOLD_MAX_ELEMENTS for a in values) else values


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
        _ANALYZER.can_prove_equal(g, ctx.symbols.expr(d))
        for g, d in zip(got, want.shape, strict=True)
    ):
        return ctx.bb.match_cast(expr, ctx.symbols.tensor_type(want))
    return expr


# ------------------------------------------------------------------ helpers


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _axes(axes: Sequence[int], rank: int) -> list[int]:
    return sorted(_axis(int(a), rank) for a in axes)


def _float_compute(ctx: LowerContext, i: int = 0) -> tuple[relax.Expr, str]:
    """Input `i` and the float dtype to compute in (float32 for float16/bfloat16)."""
    dtype = str(ctx.in_type(i).dtype)
    x = ctx.arg(i)
    if dtype in ("float16", "bfloat16"):
        return R.astype(x, "float32"), dtype
    return x, dtype


def _back(x: relax.Expr, dtype: str, computed: str = "float32") -> relax.Expr:
    return x if dtype not in ("float16", "bfloat16") else R.astype(x, dtype)


def _reshape_bias(ctx: LowerContext, x: relax.Expr, rank: int, axis: int = 1) -> relax.Expr:
    """A 1-D per-channel tensor reshaped to broadcast against a rank-`rank` tensor at `axis`."""
    shape = [1] * rank
    shape[axis] = -1
    if isinstance(x, relax.Call):
        x = ctx.emit(x)  # reshape with -1 needs its input's type
    return R.reshape(x, shape)


# ------------------------------------------------------------------ elementwise

_UNARY = {
    "Abs": R.abs,
    "Neg": R.negative,
    "Exp": R.exp,
    "Log": R.log,
    "Sqrt": R.sqrt,
    "Floor": R.floor,
    "Ceil": R.ceil,
    "Sin": R.sin,
    "Cos": R.cos,
    "Tan": R.tan,
    "Asin": R.asin,
    "Acos": R.acos,
    "Atan": R.atan,
    "Sinh": R.sinh,
    "Cosh": R.cosh,
    "Asinh": R.asinh,
    "Acosh": R.acosh,
    "Atanh": R.atanh,
    "Tanh": R.tanh,
    "Sign": R.sign,
    "Sigmoid": R.sigmoid,
    "Erf": R.erf,
    "Not": R.logical_not,
    "BitwiseNot": R.bitwise_not,
    "IsNaN": R.isnan,
}


@lowers(*_UNARY)
def _unary(ctx: LowerContext) -> relax.Expr:
    fn = _UNARY[ctx.node.op_type]
    dtype = str(ctx.in_type(0).dtype)
    if dtype in ("float16", "bfloat16") and ctx.node.op_type not in ("Abs", "Neg", "Sign"):
        y = fn(R.astype(ctx.arg(0), "float32"))
        out = str(ctx.out_type().dtype)
        return y if out == "bool" else R.astype(y, out)
    return fn(ctx.arg(0))


@lowers("Round")
def _round(ctx: LowerContext) -> relax.Expr:
    # ONNX rounds half to even: x - 2*round(x/2) handles ties; simplest exact form below.
    x = ctx.arg(0)
    dtype = str(ctx.in_type(0).dtype)
    r = R.floor(R.add(x, ctx.scalar(0.5, dtype)))
    tie = R.equal(R.subtract(r, x), ctx.scalar(0.5, dtype))
    half = R.multiply(R.floor(R.multiply(r, ctx.scalar(0.5, dtype))), ctx.scalar(2.0, dtype))
    odd = R.not_equal(half, r)
    return R.where(R.logical_and(tie, odd), R.subtract(r, ctx.scalar(1.0, dtype)), r)


@lowers("Reciprocal")
def _reciprocal(ctx: LowerContext) -> relax.Expr:
    return R.divide(ctx.scalar(1, ctx.in_type(0).dtype), ctx.arg(0))


@lowers("Identity")
def _identity(ctx: LowerContext) -> relax.Expr:
    return ctx.arg(0)


@lowers("Dropout")
def _dropout(ctx: LowerContext) -> list[relax.Expr]:
    if ctx.has(2):
        mode = ctx.const(2)
        ratio = ctx.const(1) if ctx.has(1) else np.array(0.5)
        training = mode is None or bool(np.asarray(mode).reshape(-1)[0])
        # Training mode with ratio 0 drops nothing: deterministic, the same as inference.
        if training and (ratio is None or float(np.asarray(ratio).reshape(-1)[0]) != 0.0):
            ctx.fail(
                "Dropout in training mode (random masks) is not supported; inference only, "
                "or training_mode with a constant ratio of 0"
            )
    x = ctx.arg(0)
    mask = R.full(ctx.shape(ctx.in_type(0).shape), ctx.scalar(True, "bool"), "bool")
    return [x, mask]


@lowers("IsInf")
def _isinf(ctx: LowerContext) -> relax.Expr:
    x = ctx.arg(0)
    dtype = ctx.in_type(0).dtype
    pos, neg = ctx.attrs["detect_positive"], ctx.attrs["detect_negative"]
    inf = R.isinf(x)
    if pos and neg:
        return inf
    if not pos and not neg:
        return R.zeros_like(inf)
    sign = R.greater(x, ctx.scalar(0, dtype)) if pos else R.less(x, ctx.scalar(0, dtype))
    return R.logical_and(inf, sign)


@lowers("Relu")
def _relu(ctx: LowerContext) -> relax.Expr:
    return R.maximum(ctx.arg(0), ctx.scalar(0, ctx.in_type(0).dtype))


@lowers("LeakyRelu")
def _leaky_relu(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    return R.where(
        R.less(x, ctx.scalar(0, dt)), R.multiply(x, ctx.scalar(ctx.attrs["alpha"], dt)), x
    )


@lowers("PRelu")
def _prelu(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    return R.where(R.less(x, ctx.scalar(0, dt)), R.multiply(x, ctx.arg(1)), x)


@lowers("ThresholdedRelu")
def _thresholded_relu(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    return R.where(R.greater(x, ctx.scalar(ctx.attrs["alpha"], dt)), x, ctx.scalar(0, dt))


@lowers("Elu", "Celu", "Selu")
def _elu_family(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    op = ctx.node.op_type
    alpha = ctx.attrs["alpha"]
    zero, one = ctx.scalar(0, dt), ctx.scalar(1, dt)
    if op == "Celu":
        neg = R.multiply(
            ctx.scalar(alpha, dt),
            R.subtract(R.exp(R.divide(x, ctx.scalar(alpha, dt))), one),
        )
        return R.add(R.maximum(zero, x), R.minimum(zero, neg))
    expm1 = R.multiply(ctx.scalar(alpha, dt), R.subtract(R.exp(x), one))
    if op == "Elu":
        return R.where(R.less(x, zero), expm1, x)
    gamma = ctx.scalar(ctx.attrs["gamma"], dt)
    return R.multiply(gamma, R.where(R.less_equal(x, zero), expm1, x))


@lowers("HardSigmoid")
def _hard_sigmoid(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    y = R.add(R.multiply(x, ctx.scalar(ctx.attrs["alpha"], dt)), ctx.scalar(ctx.attrs["beta"], dt))
    return R.clip(y, 0, 1)


@lowers("HardSwish")
def _hard_swish(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    y = R.add(R.multiply(x, ctx.scalar(1 / 6, dt)), ctx.scalar(0.5, dt))
    return R.multiply(x, R.clip(y, 0, 1))


def _softplus_expr(ctx: LowerContext, x: relax.Expr, dt: str) -> relax.Expr:
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), stable for large |x|. Relax has no
    # log1p: Kahan's form log(w) * u / (w - 1) with w = 1 + u keeps small u exact.
    zero, one = ctx.scalar(0, dt), ctx.scalar(1, dt)
    u = ctx.emit(R.exp(R.negative(R.abs(x))))
    w = ctx.emit(R.add(one, u))
    log1p = R.where(R.equal(w, one), u, R.divide(R.multiply(R.log(w), u), R.subtract(w, one)))
    return R.add(R.maximum(x, zero), log1p)


@lowers("Softplus")
def _softplus(ctx: LowerContext) -> relax.Expr:
    x, dt = _float_compute(ctx)
    return _back(_softplus_expr(ctx, x, "float32" if dt != "float64" else dt), dt)


@lowers("Softsign")
def _softsign(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    return R.divide(x, R.add(ctx.scalar(1, dt), R.abs(x)))


@lowers("Mish")
def _mish(ctx: LowerContext) -> relax.Expr:
    x, dt = _float_compute(ctx)
    cdt = "float32" if dt != "float64" else dt
    return _back(R.multiply(x, R.tanh(_softplus_expr(ctx, x, cdt))), dt)


@lowers("Gelu")
def _gelu(ctx: LowerContext) -> relax.Expr:
    x, dt = _float_compute(ctx)
    cdt = "float32" if dt != "float64" else dt
    half, one = ctx.scalar(0.5, cdt), ctx.scalar(1.0, cdt)
    if ctx.attrs["approximate"] == "tanh":
        inner = R.multiply(
            ctx.scalar(math.sqrt(2 / math.pi), cdt),
            R.add(x, R.multiply(ctx.scalar(0.044715, cdt), R.multiply(x, R.multiply(x, x)))),
        )
        y = R.multiply(R.multiply(half, x), R.add(one, R.tanh(inner)))
    else:
        y = R.multiply(
            R.multiply(half, x),
            R.add(one, R.erf(R.multiply(x, ctx.scalar(1 / math.sqrt(2), cdt)))),
        )
    return _back(y, dt)


@lowers("Clip")
def _clip(ctx: LowerContext) -> relax.Expr:
    out = ctx.arg(0)
    if ctx.has(1):
        lo = ctx.arg(1)
        out = R.where(R.less(out, lo), lo, out)
    if ctx.has(2):
        hi = ctx.arg(2)
        out = R.where(R.greater(out, hi), hi, out)
    return out


_BINARY = {
    "Add": R.add,
    "Sub": R.subtract,
    "Mul": R.multiply,
    "BitwiseAnd": R.bitwise_and,
    "BitwiseOr": R.bitwise_or,
    "BitwiseXor": R.bitwise_xor,
    "Equal": R.equal,
    "Less": R.less,
    "LessOrEqual": R.less_equal,
    "Greater": R.greater,
    "GreaterOrEqual": R.greater_equal,
    "And": R.logical_and,
    "Or": R.logical_or,
    "Xor": R.logical_xor,
}


@lowers(*_BINARY)
def _binary(ctx: LowerContext) -> relax.Expr:
    return _BINARY[ctx.node.op_type](ctx.arg(0), ctx.arg(1))


@lowers("Div")
def _div(ctx: LowerContext) -> relax.Expr:
    a, b = ctx.arg(0), ctx.arg(1)
    dt = ctx.in_type(0).dtype
    if dt.is_integer and dt.is_signed:
        # ONNX truncates toward zero; TVM's integer divide on tensors is floor division.
        q = R.floor_divide(a, b)
        r = R.subtract(a, R.multiply(q, b))
        adjust = R.logical_and(
            R.not_equal(r, ctx.scalar(0, dt)),
            R.logical_xor(R.less(a, ctx.scalar(0, dt)), R.less(b, ctx.scalar(0, dt))),
        )
        return R.where(adjust, R.add(q, ctx.scalar(1, dt)), q)
    if dt.is_integer:
        return R.floor_divide(a, b)
    return R.divide(a, b)


@lowers("Mod")
def _mod(ctx: LowerContext) -> relax.Expr:
    a, b = ctx.arg(0), ctx.arg(1)
    dt = ctx.in_type(0).dtype
    if dt.is_float:
        # C fmod: the remainder has the sign of the dividend; a finite dividend over an
        # infinite divisor is the dividend itself (the quotient formula would give nan).
        r = ctx.emit(R.subtract(a, R.multiply(R.trunc(R.divide(a, b)), b)))
        r = ctx.emit(R.where(R.logical_and(R.isinf(b), R.isfinite(a)), a, r))
        if ctx.attrs["fmod"]:
            return r
        # numpy / Python mod: the remainder takes the divisor's sign (zero included).
        zero = ctx.scalar(0, dt)
        wrong_sign = R.logical_and(
            R.not_equal(r, zero), R.logical_xor(R.less(r, zero), R.less(b, zero))
        )
        r = ctx.emit(R.where(wrong_sign, R.add(r, b), r))
        signed_zero = R.multiply(
            zero, R.where(R.less(b, zero), ctx.scalar(-1, dt), ctx.scalar(1, dt))
        )
        return R.where(R.equal(r, zero), signed_zero, r)
    if ctx.attrs["fmod"]:
        # fmod: the remainder has the sign of the dividend.
        r = R.floor_mod(a, b)
        fix = R.logical_and(
            R.not_equal(r, ctx.scalar(0, dt)),
            R.logical_xor(R.less(a, ctx.scalar(0, dt)), R.less(b, ctx.scalar(0, dt))),
        )
        return R.where(fix, R.subtract(r, b), r)
    return R.floor_mod(a, b)


@lowers("Pow")
def _pow(ctx: LowerContext) -> relax.Expr:
    x, y = ctx.arg(0), ctx.arg(1)
    dt = str(ctx.in_type(0).dtype)
    if ctx.in_type(0).dtype.is_integer:
        # Exact integer power by repeated squaring would need a loop; float64 is exact to 2**53.
        xf, yf = R.astype(x, "float64"), R.astype(y, "float64")
        return R.astype(R.round(R.power(xf, yf)), dt)
    if str(ctx.in_type(1).dtype) != dt:
        y = R.astype(y, dt)
    return R.power(x, y)


@lowers("BitShift")
def _bit_shift(ctx: LowerContext) -> relax.Expr:
    x, y = ctx.arg(0), ctx.arg(1)
    if ctx.attrs["direction"] == "LEFT":
        return R.left_shift(x, y)
    return R.right_shift(x, y)


@lowers("Max", "Min", "Sum", "Mean")
def _variadic(ctx: LowerContext) -> relax.Expr:
    op = ctx.node.op_type
    fn = {"Max": R.maximum, "Min": R.minimum, "Sum": R.add, "Mean": R.add}[op]
    out = ctx.arg(0)
    for i in range(1, len(ctx.args)):
        out = fn(out, ctx.arg(i))
    if op == "Mean":
        out = R.divide(out, ctx.scalar(len(ctx.args), ctx.in_type(0).dtype))
    return out


@lowers("Where")
def _where(ctx: LowerContext) -> relax.Expr:
    return R.where(ctx.arg(0), ctx.arg(1), ctx.arg(2))


# --------------------------------------------------------------- casts


def _cast_to(ctx: LowerContext, x: relax.Expr, src: DType, dst: DType) -> relax.Expr:
    if src == dst:
        return x
    if dst == DType.BOOL:
        return R.not_equal(x, ctx.scalar(0, src))
    if dst in (DType.INT4, DType.UINT4):
        # Casts to 4 bits wrap modulo 16 (ONNX reference and ml_dtypes alike).
        v = R.astype(R.trunc(x) if src.is_float else x, "int32")
        if dst == DType.UINT4:
            return R.astype(R.bitwise_and(v, ctx.scalar(15, "int32")), "uint8")
        wrapped = R.bitwise_and(R.add(v, ctx.scalar(8, "int32")), ctx.scalar(15, "int32"))
        return R.astype(R.subtract(wrapped, ctx.scalar(8, "int32")), "int8")
    if src.is_float and dst.is_integer:
        # ONNX (and numpy) truncate toward zero; saturating/out-of-range values are
        # implementation-defined and not compared.
        return R.astype(R.trunc(x), carrier(dst))
    return R.astype(x, carrier(dst))


@lowers("Cast")
def _cast(ctx: LowerContext) -> relax.Expr:
    return _cast_to(ctx, ctx.arg(0), ctx.in_type(0).dtype, ctx.out_type().dtype)


@lowers("CastLike")
def _cast_like(ctx: LowerContext) -> relax.Expr:
    return _cast_to(ctx, ctx.arg(0), ctx.in_type(0).dtype, ctx.in_type(1).dtype)


# ---------------------------------------------------------- shape-producing ops


def _shape_tensor(ctx: LowerContext, dims: Sequence[Dim]) -> relax.Expr:
    if all(isinstance(d, int) for d in dims):
        return relax.const(np.array(dims, dtype=np.int64), "int64")
    return R.shape_to_tensor(ctx.shape(dims))


@lowers("Shape")
def _shape(ctx: LowerContext) -> relax.Expr:
    dims = ctx.node.input(0).shape  # type: ignore[union-attr]
    rank = len(dims)
    start, end = ctx.attrs["start"], ctx.attrs["end"]
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = rank if end is None else max(0, min(rank, end + rank if end < 0 else end))
    return _shape_tensor(ctx, list(dims[start : max(start, end)]))


@lowers("Size")
def _size(ctx: LowerContext) -> relax.Expr:
    n = ctx.in_type(0).numel
    if isinstance(n, int):
        return relax.const(np.array(n, dtype=np.int64), "int64")
    return R.reshape(R.shape_to_tensor(ctx.shape([n])), [])


@lowers("Constant")
def _constant(ctx: LowerContext) -> relax.Expr:
    arr = run_node(ctx.node, [])[0]
    if arr.dtype == object:
        ctx.fail("string constants cannot be lowered to TVM")
    return relax.const(_contiguous(arr), str(ctx.out_type().dtype))


@lowers("ConstantOfShape")
def _constant_of_shape(ctx: LowerContext) -> relax.Expr:
    value = ctx.attrs["value"]
    out = ctx.out_type()
    fill = np.zeros((), out.dtype.numpy) if value is None else np.asarray(value).reshape(())
    return R.full(ctx.shape(out.shape), relax.const(fill, str(out.dtype)), str(out.dtype))


@lowers("Range")
def _range(ctx: LowerContext) -> relax.Expr:
    out = ctx.out_type()
    vals = [ctx.const(i) for i in range(3)]
    if all(v is not None for v in vals):
        # Known bounds: fold with the reference kernel (the length is static anyway).
        return relax.const(run_node(ctx.node, vals)[0], str(out.dtype))
    # start + delta * iota over the (symbolic) output length.
    dt = str(out.dtype)
    d = out.shape[0]
    if isinstance(d, str) and symbolic.is_symbol_name(d) and d not in ctx.symbols.vars:
        # A value-dependent length: max(ceil((limit - start) / delta), 0) computed at run
        # time and bound to the IR's symbol, so later shapes refer to it.
        f64 = [R.astype(ctx.arg(i), "float64") for i in range(3)]
        steps = R.ceil(R.divide(R.subtract(f64[1], f64[0]), f64[2]))
        length = R.astype(R.maximum(steps, ctx.scalar(0.0, "float64")), "int64")
        shape = ctx.emit(R.tensor_to_shape(ctx.emit(R.reshape(length, [1]))))
        ctx.bb.match_cast(shape, relax.ShapeType([ctx.symbols.var(d)]))
    n = ctx.dim(d)
    iota = R.arange(0, n, 1, dt)
    return R.add(ctx.arg(0), R.multiply(ctx.arg(2), iota))


# ------------------------------------------------------------------ reshaping


@lowers("Reshape")
def _reshape(ctx: LowerContext) -> relax.Expr:
    out = ctx.out_type()
    if 0 in out.shape:
        # Relax's reshape reads a 0 as "keep the input's dim" (ONNX's allowzero=0); a
        # zero-size result holds no data, so make it directly.
        return R.zeros(ctx.shape(out.shape), carrier(out.dtype))
    return R.reshape(ctx.arg(0), ctx.shape(out.shape))


@lowers("Flatten")
def _flatten(ctx: LowerContext) -> relax.Expr:
    return R.reshape(ctx.arg(0), ctx.shape(ctx.out_type().shape))


@lowers("Squeeze", "Unsqueeze")
def _squeeze(ctx: LowerContext) -> relax.Expr:
    return R.reshape(ctx.arg(0), ctx.shape(ctx.out_type().shape))


@lowers("Transpose")
def _transpose(ctx: LowerContext) -> relax.Expr:
    perm = ctx.attrs["perm"]
    rank = ctx.rank(0)
    perm = list(reversed(range(rank))) if perm is None else [_axis(p, rank) for p in perm]
    return R.permute_dims(ctx.arg(0), perm)


@lowers("Expand")
def _expand(ctx: LowerContext) -> relax.Expr:
    return R.broadcast_to(ctx.arg(0), ctx.shape(ctx.out_type().shape))


@lowers("Tile")
def _tile(ctx: LowerContext) -> relax.Expr:
    repeats = ctx.ints(1, "repeats")
    assert repeats is not None
    return R.tile(ctx.arg(0), repeats)


@lowers("Concat")
def _concat(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    return R.concat([ctx.arg(i) for i in range(len(ctx.args))], axis=_axis(ctx.attrs["axis"], rank))


@lowers("Split")
def _split(ctx: LowerContext) -> list[relax.Expr]:
    rank = ctx.rank(0)
    axis = _axis(ctx.attrs["axis"], rank)
    x = ctx.arg(0)
    outs = ctx.node.outputs
    begin: Any = 0
    result = []
    for out in outs:
        size = out.shape[axis]
        end = symbolic.add(begin, size)
        result.append(
            R.strided_slice(x, [axis], [ctx.dim(begin)], [ctx.dim(end)], assume_inbound=True)
        )
        begin = end
    return result


@lowers("Slice")
def _slice(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    starts = _bounds(ctx, 1, "starts")
    ends = _bounds(ctx, 2, "ends")
    axes = [_axis(a, rank) for a in (ctx.ints(3, "axes") or list(range(len(starts))))]
    steps = ctx.ints(4, "steps") or [1] * len(starts)
    if all(isinstance(b, int) for b in starts + ends):
        return R.strided_slice(ctx.arg(0), axes, starts, ends, steps)
    # Symbolic bounds: TVM 0.27's FoldConstant segfaults on strided_slice of a constant with
    # symbolic bounds, so pass the bounds as tensors (dynamic_strided_slice) instead.
    dims = ctx.in_type(0).shape
    begin: list[Any] = [0] * rank
    end: list[Any] = [d if isinstance(d, int) else ctx.dim(d) for d in dims]
    stride = [1] * rank
    for a, b, e, st in zip(axes, starts, ends, steps, strict=True):
        begin[a], end[a], stride[a] = b, e, st
    return R.dynamic_strided_slice(
        ctx.arg(0), _index_tensor(ctx, begin), _index_tensor(ctx, end), _index_tensor(ctx, stride)
    )


def _index_tensor(ctx: LowerContext, values: list[Any]) -> relax.Expr:
    """A 1-D int64 tensor of ints and TIR expressions."""
    parts = []
    for v in values:
        if isinstance(v, int):
            parts.append(relax.const(np.array([v], np.int64), "int64"))
        else:
            parts.append(R.shape_to_tensor(relax.ShapeExpr([v])))
    return parts[0] if len(parts) == 1 else R.concat(parts, axis=0)


def _bounds(ctx: LowerContext, i: int, what: str) -> list[Any]:
    """Slice bounds as ints (clamped to int64 range) or TIR expressions for symbolic ones."""
    v = ctx.node.input(i)
    dims = symbolic_value(v) if v is not None else None
    if dims is None:
        ints = ctx.ints(i, what)
        assert ints is not None
        dims = list(ints)
    big = 2**62
    return [max(-big, min(big, d)) if isinstance(d, int) else ctx.dim(d) for d in dims]  # type: ignore[misc]


def _normalize_indices(ctx: LowerContext, idx: relax.Expr, dim: Dim, dtype: DType) -> relax.Expr:
    """Negative indices count from the end (ONNX); TVM takes them as they are."""
    if dtype.is_signed:
        zero = ctx.scalar(0, dtype)
        if isinstance(dim, int):
            n = ctx.scalar(dim, dtype)
        else:
            n = R.astype(R.reshape(R.shape_to_tensor(ctx.shape([dim])), []), str(dtype))
        idx = R.where(R.less(idx, zero), R.add(idx, n), idx)
    return idx


@lowers("Gather")
def _gather(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    axis = _axis(ctx.attrs["axis"], rank)
    dim = ctx.in_type(0).shape[axis]
    idx = _normalize_indices(ctx, ctx.arg(1), dim, ctx.in_type(1).dtype)
    return R.take(ctx.arg(0), idx, axis=axis)


@lowers("GatherElements")
def _gather_elements(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    axis = _axis(ctx.attrs["axis"], rank)
    dim = ctx.in_type(0).shape[axis]
    idx = _normalize_indices(ctx, ctx.arg(1), dim, ctx.in_type(1).dtype)
    return R.gather_elements(ctx.arg(0), idx, axis=axis)


@lowers("Trilu")
def _trilu(ctx: LowerContext) -> relax.Expr:
    k = 0
    if ctx.has(1):
        kv = ctx.const(1)
        if kv is None:
            ctx.fail("k must be a constant")
        k = int(np.asarray(kv).reshape(()))
    return R.triu(ctx.arg(0), k) if ctx.attrs["upper"] else R.tril(ctx.arg(0), k)


@lowers("Pad")
def _pad(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    pads = ctx.ints(1, "pads")
    assert pads is not None
    axes = ctx.ints(3, "axes")
    axes = list(range(rank)) if axes is None else [_axis(a, rank) for a in axes]
    n = len(axes)
    width = [0] * (2 * rank)
    for j, a in enumerate(axes):
        width[2 * a], width[2 * a + 1] = pads[j], pads[j + n]
    mode = ctx.attrs["mode"]
    if any(w < 0 for w in width):
        ctx.fail("negative pads (cropping) are not lowered yet; use Slice")
    value = 0.0
    if ctx.has(2):
        cv = ctx.const(2)
        if cv is None:
            ctx.fail("constant_value must be a constant")
        value = np.asarray(cv).reshape(()).item()
    if mode == "constant":
        return NN.pad(ctx.arg(0), width, "constant", value)
    if mode not in ("reflect", "edge", "wrap"):
        ctx.fail(f"pad mode {mode!r} is not supported")
    # Relax's pad legalizes only constant padding; build the borders from slices.
    x = ctx.arg(0)
    for a in range(rank):
        before, after = width[2 * a], width[2 * a + 1]
        parts = []
        if before:
            parts.append(_pad_border(ctx, x, a, before, mode, left=True))
        parts.append(x)
        if after:
            parts.append(_pad_border(ctx, x, a, after, mode, left=False))
        if len(parts) > 1:
            x = ctx.emit(R.concat(parts, axis=a))
    return x


def _pad_border(
    ctx: LowerContext, x: relax.Expr, axis: int, n: int, mode: str, *, left: bool
) -> relax.Expr:
    def piece(begin: int, end: int) -> relax.Expr:
        return ctx.emit(R.strided_slice(x, [axis], [begin], [end]))

    big = 2**62
    if mode == "edge":
        return R.repeat(piece(0, 1) if left else piece(-1, big), n, axis=axis)
    if mode == "reflect":
        return R.flip(piece(1, n + 1) if left else piece(-n - 1, -1), axis)
    return piece(-n, big) if left else piece(0, n)


# ----------------------------------------------------------------- matmul family


@lowers("MatMul")
def _matmul(ctx: LowerContext) -> relax.Expr:
    fused = _dequant_matmul(ctx, ctx.arg(0), trans_b=False)
    if fused is not None:
        return fused
    dt = ctx.in_type(0).dtype
    a, b = ctx.arg(0), ctx.arg(1)
    if dt in (DType.FLOAT16, DType.BFLOAT16):
        return R.astype(R.matmul(R.astype(a, "float32"), R.astype(b, "float32")), str(dt))
    return R.matmul(a, b)


@lowers("MatMulInteger")
def _matmul_integer(ctx: LowerContext) -> relax.Expr:
    a, b = ctx.arg(0), ctx.arg(1)
    at, bt = ctx.in_type(0), ctx.in_type(1)
    if not ctx.has(2) and not ctx.has(3) and at.dtype == bt.dtype == DType.INT8:
        if not ctx.options.get("widen_int8_matmul"):
            # The int8 x int8 -> int32 product is emitted as one matmul (VNNI-friendly).
            return R.matmul(a, b, out_dtype="int32")
        ctx.notes.append(
            "int8 x int8 matmul widened to int32 operands (TVM 0.27 dlight Matmul rule "
            "crashes on the int8 form on CUDA); exact, but without int8 tensor cores"
        )
    a32 = R.astype(a, "int32")
    b32 = R.astype(b, "int32")
    if ctx.has(2):
        zp = R.astype(ctx.arg(2), "int32")
        zt = ctx.in_type(2)
        if zt.rank == 1 and zt.shape[0] != 1:
            shape = [1] * at.rank
            shape[-2] = -1
            zp = R.reshape(zp, shape)
        a32 = R.subtract(a32, zp)
    if ctx.has(3):
        b32 = R.subtract(b32, R.astype(ctx.arg(3), "int32"))
    return R.matmul(a32, b32, out_dtype="int32")


@lowers("Gemm")
def _gemm(ctx: LowerContext) -> relax.Expr:
    a = ctx.arg(0)
    dt = ctx.in_type(0).dtype
    if ctx.attrs["transA"]:
        a = R.permute_dims(a, [1, 0])
    y = _dequant_matmul(ctx, a, trans_b=bool(ctx.attrs["transB"]))
    if y is None:
        b = ctx.arg(1)
        if ctx.attrs["transB"]:
            b = R.permute_dims(b, [1, 0])
        y = R.matmul(a, b)
    if ctx.attrs["alpha"] != 1.0:
        y = R.multiply(y, ctx.scalar(ctx.attrs["alpha"], dt))
    if ctx.has(2):
        c = ctx.arg(2)
        if ctx.attrs["beta"] != 1.0:
            c = R.multiply(c, ctx.scalar(ctx.attrs["beta"], dt))
        y = R.add(y, c)
    return y


# ------------------------------------------- weight-only: dequantize inside the matmul
#
# DequantizeLinear(constant int8/uint8/int4/uint4 W, constant scale[, zero point]) feeding
# only the B input of MatMul / Gemm / ecograph::Linear is not lowered on its own: each matmul
# becomes one kernel that reads the integer weights and dequantizes them in its reduction
# loop. The float weights never exist, so TVM's FoldConstant cannot fold them into float32
# constants (which would undo the compression) and no float copy is materialized at run time;
# 4-bit weights are stored packed two per byte. On CUDA the kernel compiles with dlight's
# Reduction rule (a cross-thread reduction over K); its GEMV rule does not match it.

_WEIGHT_DTYPES = (DType.INT8, DType.UINT8, DType.INT4, DType.UINT4)
_ABSORBING = {("", "MatMul"), ("", "Gemm"), ("ecograph", "Linear")}


def _weight_dq(value: Value | None) -> Node | None:
    """The DequantizeLinear producing `value` from constant 2-D integer weights (constant
    float32 scale, constant or absent zero point), else None."""
    node = value.producer if value is not None else None
    if node is None or node.op_type != "DequantizeLinear" or node.domain != "":
        return None
    w, s, z = node.input(0), node.input(1), node.input(2)
    if w is None or w.const_value is None or w.type.rank != 2 or w.dtype not in _WEIGHT_DTYPES:
        return None
    if s is None or s.dtype != DType.FLOAT32 or known_array(s) is None:
        return None
    if z is not None and known_array(z) is None:
        return None
    if node.outputs[0].dtype != DType.FLOAT32:
        return None
    return node


def _absorbed_dq(node: Node) -> bool:
    """True if every use of this DequantizeLinear is the weight input of a matmul that can
    dequantize inside its kernel (float32 activations)."""
    out = node.outputs[0]
    if _weight_dq(out) is not node or out.is_graph_output or not out.uses:
        return False
    for use in out.uses:
        consumer = use.node
        a = consumer.input(0)
        if (consumer.domain, consumer.op_type) not in _ABSORBING or use.index != 1:
            return False
        if a is None or a.dtype != DType.FLOAT32 or a is out:
            return False
    return True


def _packed_weights(graph: Graph, absorbed: set[int]) -> dict[int, np.ndarray]:
    """4-bit weight constants read only by absorbed DequantizeLinears, packed two per byte."""
    packed: dict[int, np.ndarray] = {}
    for c in graph.constants.values():
        if c.dtype not in (DType.INT4, DType.UINT4) or not c.uses:
            continue
        if all(u.index == 0 and id(u.node) in absorbed for u in c.uses):
            assert c.const_value is not None
            packed[id(c)] = pack_int4(c.const_value)
    return packed


def pack_int4(q: np.ndarray) -> np.ndarray:
    """[rows, cols] 4-bit codes -> uint8 [rows, ceil(cols / 2)], column 2j in the low nibble."""
    codes = np.asarray(q).astype(np.int16) & 0xF
    if codes.shape[1] % 2:
        codes = np.concatenate([codes, np.zeros((codes.shape[0], 1), np.int16)], axis=1)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def _packed_code(buf: Any, row: Any, i: Any, bits: int) -> Any:
    """Code `i` of row `row` in a uint8 buffer of `bits`-bit codes packed low bits first."""
    per_byte = 8 // bits
    byte = buf[row, tir.floordiv(i, per_byte)].astype("int32")
    return tir.bitwise_and(tir.shift_right(byte, tir.floormod(i, per_byte) * bits), (1 << bits) - 1)


def _dequantizing_matmul(at: Any, weight: Callable[[Any, Any], Any], k_len: int, n_len: int,
                         name: str) -> Any:  # fmt: skip
    """TE: `at` [..., K] times the weights `weight(k, n)` [K, N] computes, one reduction."""
    from tvm import te

    k = te.reduce_axis((0, k_len), "k")
    return te.compute(
        [*at.shape[:-1], n_len],
        lambda *i: te.sum(at[(*i[:-1], k)] * weight(k, i[-1]), axis=k),
        name=name,
    )


def _dequant_matmul(ctx: LowerContext, a: relax.Expr, *, trans_b: bool) -> relax.Expr | None:
    """`a @ dequantize(W)` (W transposed when `trans_b`) as one kernel, when input 1 comes from
    an absorbed DequantizeLinear; else None."""
    dq = _weight_dq(ctx.node.input(1))
    if dq is None or id(dq) not in ctx.options.get("absorbed", set()):
        return None
    w_val, s_val, z_val = dq.input(0), dq.input(1), dq.input(2)
    assert w_val is not None and s_val is not None
    rows, cols = w_val.type.static_shape()
    k_len, n_len = (cols, rows) if trans_b else (rows, cols)
    packed = id(w_val) in ctx.options.get("packed", set())
    signed4 = w_val.dtype == DType.INT4
    axis = _axis(dq.attrs.get("axis", 1), 2)
    block = int(dq.attrs.get("block_size", 0) or 0)
    s_arr = known_array(s_val)
    z_arr = None if z_val is None else known_array(z_val)
    assert s_arr is not None
    w = _value_expr(ctx.bb, w_val, ctx.options["exprs"])
    s = relax.const(np.ascontiguousarray(s_arr, np.float32).reshape(s_arr.shape), "float32")
    args = [a, w, s]
    if z_arr is not None:
        zc = z_arr.astype(np.int32)
        args.append(relax.const(np.ascontiguousarray(zc).reshape(z_arr.shape), "int32"))
    s_rank = s_arr.ndim
    per_tensor = s_rank == 0 or (s_arr.size == 1 and not block)

    def qindex(r: Any, c: Any) -> tuple[Any, ...]:
        if per_tensor:
            return (0,) * s_rank
        if not block:
            return (r,) if axis == 0 else (c,)
        return (r // block, c) if axis == 0 else (r, c // block)

    def compute(at: Any, wt: Any, st: Any, zt: Any = None) -> Any:
        def weight(kk: Any, n: Any) -> Any:
            r, c = (n, kk) if trans_b else (kk, n)
            if packed:
                nib = _packed_code(wt, r, c, 4)
                q = tir.if_then_else(nib >= 8, nib - 16, nib) if signed4 else nib
            else:
                q = wt[r, c].astype("int32")
            idx = qindex(r, c)
            if zt is not None:
                q = q - zt[idx]
            return q.astype("float32") * st[idx]

        return _dequantizing_matmul(at, weight, k_len, n_len, "dequantize_matmul")

    return ctx.bb.emit_te(compute, *args, primfunc_name_hint="dequantize_matmul")


# ----------------------------------------------------------------- conv and pooling


def _conv_pads(ctx: LowerContext, kernel: list[int], strides: list[int], dil: list[int]) -> list:
    from ecograph.ir.ops.convolution import explicit_pads

    spatial = ctx.in_type(0).shape[2:]
    auto_pad = ctx.attrs["auto_pad"]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and not all(isinstance(d, int) for d in spatial):
        ctx.fail("auto_pad SAME needs static spatial dims")
    static = tuple(d if isinstance(d, int) else 0 for d in spatial)
    return explicit_pads(static, kernel, strides, dil, ctx.attrs["pads"], auto_pad)


def conv_setup(ctx: LowerContext, weight: int = 1) -> tuple[Any, list[int], list[int], list]:
    """For a Conv-like node (weight at input `weight`): Relax's conv function for its rank,
    strides, dilations and explicit pads."""
    xt, wt = ctx.in_type(0), ctx.in_type(weight)
    n = xt.rank - 2
    kernel = ctx.attrs["kernel_shape"] or list(wt.shape[2:])
    strides = ctx.attrs["strides"] or [1] * n
    dil = ctx.attrs["dilations"] or [1] * n
    pads = _conv_pads(ctx, kernel, strides, dil)
    fn = {1: NN.conv1d, 2: NN.conv2d, 3: NN.conv3d}.get(n)
    if fn is None:
        ctx.fail(f"{ctx.node.op_type} over {n} spatial dims is not supported")
    return fn, strides, dil, pads


@lowers("Conv")
def _conv(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    fn, strides, dil, pads = conv_setup(ctx)
    y = fn(
        ctx.arg(0),
        ctx.arg(1),
        strides=strides,
        padding=pads,
        dilation=dil,
        groups=ctx.attrs["group"],
    )
    if ctx.has(2):
        y = R.add(y, _reshape_bias(ctx, ctx.arg(2), xt.rank))
    return y


def pool_geometry(ctx: LowerContext) -> tuple[list[int], list[int], list[int], list]:
    """A pooling node's kernel, strides, dilations and explicit pads."""
    n = ctx.in_type(0).rank - 2
    kernel = list(ctx.attrs["kernel_shape"])
    strides = list(ctx.attrs["strides"] or [1] * n)
    dil = list(ctx.attrs["dilations"] or [1] * n)
    return kernel, strides, dil, list(_conv_pads(ctx, kernel, strides, dil))  # a fresh list


def _pool(ctx: LowerContext, kind: str) -> relax.Expr:
    n = ctx.in_type(0).rank - 2
    kernel, strides, dil, pads = pool_geometry(ctx)
    ceil = bool(ctx.attrs["ceil_mode"])
    fns = {
        "max": {1: NN.max_pool1d, 2: NN.max_pool2d, 3: NN.max_pool3d},
        "avg": {1: NN.avg_pool1d, 2: NN.avg_pool2d, 3: NN.avg_pool3d},
    }[kind]
    fn = fns.get(n)
    if fn is None:
        ctx.fail(f"pooling over {n} spatial dims is not supported")
    include = bool(ctx.attrs.get("count_include_pad", 0))
    return fn(
        ctx.arg(0),
        pool_size=kernel,
        strides=strides,
        padding=pads,
        dilation=dil,
        ceil_mode=ceil,
        count_include_pad=include,
    )


@lowers("MaxPool")
def _max_pool(ctx: LowerContext) -> list[relax.Expr | None]:
    # storage_order only numbers the Indices output.
    wants_indices = len(ctx.node.outputs) > 1 and ctx.node.outputs[1].has_uses()
    return [_pool(ctx, "max"), _max_pool_indices(ctx) if wants_indices else None]


def _max_pool_indices(ctx: LowerContext) -> relax.Expr:
    """MaxPool's Indices: the flat input position of each window's first maximum (row-major,
    or column-major over the two spatial axes with storage_order=1), padding never chosen."""
    from tvm import te

    xt = ctx.in_type(0)
    if not xt.is_static:
        ctx.fail("MaxPool's Indices output needs static input dims")
    n = xt.rank - 2
    kernel, strides, dil, pads = pool_geometry(ctx)
    spatial = [int(d) for d in xt.static_shape()[2:]]
    out_shape = [int(d) for d in ctx.out_type(1).static_shape()]
    column_major = bool(ctx.attrs["storage_order"]) and n == 2
    window = math.prod(kernel)

    def coords(o: Sequence[Any], flat: Any) -> list[Any]:
        ks, rest = [], flat
        for k in reversed(kernel):
            ks.append(tir.floormod(rest, k))
            rest = tir.floordiv(rest, k)
        ks.reverse()
        return [o[i] * strides[i] - pads[i] + ks[i] * dil[i] for i in range(n)]

    def compute(x: Any) -> Any:
        def combine(a: Any, b: Any) -> Any:
            take_b = tir.any(b[1] > a[1], tir.all(b[1] == a[1], b[0] < a[0]))
            return tir.Select(take_b, b[0], a[0]), tir.Select(take_b, b[1], a[1])

        def identity(t0: Any, t1: Any) -> Any:
            return tir.const(window, t0), tir.min_value(t1)

        argmax = te.comm_reducer(combine, identity, name="window_argmax")
        r = te.reduce_axis((0, window), "w")

        def body(*o: Any) -> Any:
            c = coords(o[2:], r)
            inside = tir.all(*[tir.all(c[i] >= 0, c[i] < spatial[i]) for i in range(n)])
            val = tir.if_then_else(inside, x[(o[0], o[1], *c)], tir.min_value(x.dtype))
            return argmax((r.var.astype("int64"), val), axis=r)

        best, _ = te.compute(out_shape, body, name="max_pool_argmax")

        def index(*o: Any) -> Any:
            c = [v.astype("int64") for v in coords(o[2:], best[o])]
            if column_major:
                local = c[0] + c[1] * spatial[0]
            else:
                local = c[0]
                for i in range(1, n):
                    local = local * spatial[i] + c[i]
            channel = o[0].astype("int64") * xt.static_shape()[1] + o[1].astype("int64")
            return channel * math.prod(spatial) + local

        return te.compute(out_shape, index, name="max_pool_indices")

    return ctx.bb.emit_te(compute, ctx.arg(0), primfunc_name_hint="max_pool_indices")


@lowers("AveragePool")
def _average_pool(ctx: LowerContext) -> relax.Expr:
    return _pool(ctx, "avg")


@lowers("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: LowerContext) -> relax.Expr:
    axes = list(range(2, ctx.rank(0)))
    fn = R.mean if ctx.node.op_type == "GlobalAveragePool" else R.max
    return fn(ctx.arg(0), axis=axes, keepdims=True)


# ----------------------------------------------------------------- normalization


@lowers("BatchNormalization")
def _batch_norm(ctx: LowerContext) -> relax.Expr | list[relax.Expr]:
    rank = ctx.rank(0)
    dt = ctx.in_type(0).dtype
    x = ctx.arg(0)
    if ctx.attrs["training_mode"]:
        # Batch statistics (population variance, in float64 like the reference); the running
        # statistics blend in with `momentum`.
        acc = "float64"
        axes = [0, *range(2, rank)]
        x64 = ctx.emit(R.astype(x, acc))
        batch_mean = ctx.emit(R.mean(x64, axis=axes))
        centered = ctx.emit(R.subtract(x64, _reshape_bias(ctx, batch_mean, rank)))
        batch_var = ctx.emit(R.mean(R.multiply(centered, centered), axis=axes))
        m = ctx.attrs["momentum"]
        outs: list[relax.Expr] = []
        for i, stat in ((3, batch_mean), (4, batch_var)):
            old = R.astype(ctx.arg(i), acc)
            blended = R.add(
                R.multiply(old, ctx.scalar(m, acc)), R.multiply(stat, ctx.scalar(1 - m, acc))
            )
            outs.append(R.astype(blended, str(ctx.in_type(i).dtype)))
        inv = R.divide(
            R.astype(_reshape_bias(ctx, ctx.arg(1), rank), acc),
            R.sqrt(
                R.add(_reshape_bias(ctx, batch_var, rank), ctx.scalar(ctx.attrs["epsilon"], acc))
            ),
        )
        y = R.add(R.multiply(centered, inv), R.astype(_reshape_bias(ctx, ctx.arg(2), rank), acc))
        return [R.astype(y, str(dt)), *outs]
    scale, bias, mean, var = (_reshape_bias(ctx, ctx.arg(i), rank) for i in range(1, 5))
    inv = R.divide(scale, R.sqrt(R.add(var, ctx.scalar(ctx.attrs["epsilon"], dt))))
    return R.add(R.multiply(R.subtract(x, mean), inv), bias)


@lowers("LayerNormalization")
def _layer_norm(ctx: LowerContext) -> list[relax.Expr]:
    rank = ctx.rank(0)
    axis = _axis(ctx.attrs["axis"], rank)
    axes = list(range(axis, rank))
    stash = str(DType.from_onnx(ctx.attrs["stash_type"]))
    dt = str(ctx.in_type(0).dtype)
    x = ctx.arg(0)
    xs = x if dt == stash else R.astype(x, stash)
    mean = ctx.emit(R.mean(xs, axis=axes, keepdims=True))
    centered = ctx.emit(R.subtract(xs, mean))
    var = R.mean(R.multiply(centered, centered), axis=axes, keepdims=True)
    inv = ctx.emit(
        R.divide(ctx.scalar(1, stash), R.sqrt(R.add(var, ctx.scalar(ctx.attrs["epsilon"], stash))))
    )
    y = R.multiply(centered, inv)
    if dt != stash:
        y = R.astype(y, dt)
    y = R.multiply(y, ctx.arg(1))
    if ctx.has(2):
        y = R.add(y, ctx.arg(2))
    return [y, mean, inv]


@lowers("RMSNormalization")
def _rms_norm(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    axes = list(range(_axis(ctx.attrs["axis"], rank), rank))
    stash = str(DType.from_onnx(ctx.attrs["stash_type"]))
    dt = str(ctx.in_type(0).dtype)
    x = ctx.arg(0)
    xs = x if dt == stash else R.astype(x, stash)
    ms = R.mean(R.multiply(xs, xs), axis=axes, keepdims=True)
    y = R.divide(xs, R.sqrt(R.add(ms, ctx.scalar(ctx.attrs["epsilon"], stash))))
    if dt != stash:
        y = R.astype(y, dt)
    return R.multiply(y, ctx.arg(1))


@lowers("InstanceNormalization")
def _instance_norm(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    dt = ctx.in_type(0).dtype
    axes = list(range(2, rank))
    x = ctx.arg(0)
    mean = R.mean(x, axis=axes, keepdims=True)
    centered = ctx.emit(R.subtract(x, mean))
    var = R.mean(R.multiply(centered, centered), axis=axes, keepdims=True)
    y = R.divide(centered, R.sqrt(R.add(var, ctx.scalar(ctx.attrs["epsilon"], dt))))
    return R.add(
        R.multiply(y, _reshape_bias(ctx, ctx.arg(1), rank)), _reshape_bias(ctx, ctx.arg(2), rank)
    )


@lowers("LRN")
def _lrn(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    c = xt.shape[1]
    if not isinstance(c, int):
        ctx.fail("LRN needs a static channel count")
    size = ctx.attrs["size"]
    lo, hi = (size - 1) // 2, math.ceil((size - 1) / 2)
    dt = xt.dtype
    x = ctx.arg(0)
    sq = ctx.emit(R.multiply(x, x))
    width = [0] * (2 * xt.rank)
    width[2], width[3] = lo, hi
    padded = ctx.emit(NN.pad(sq, width, "constant", 0.0))
    total = None
    for i in range(size):
        part = R.strided_slice(padded, [1], [i], [i + c], assume_inbound=True)
        total = part if total is None else R.add(total, part)
    denom = R.add(
        ctx.scalar(ctx.attrs["bias"], dt),
        R.multiply(ctx.scalar(ctx.attrs["alpha"] / size, dt), total),
    )
    return R.divide(x, R.power(denom, ctx.scalar(ctx.attrs["beta"], dt)))


@lowers("Softmax", "LogSoftmax")
def _softmax(ctx: LowerContext) -> relax.Expr:
    x, dt = _float_compute(ctx)
    axis = _axis(ctx.attrs["axis"], ctx.rank(0))
    fn = NN.softmax if ctx.node.op_type == "Softmax" else NN.log_softmax
    return _back(fn(x, axis=axis), dt)


@lowers("Hardmax")
def _hardmax(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    axis = _axis(ctx.attrs["axis"], xt.rank)
    depth = xt.shape[axis]
    if not isinstance(depth, int):
        ctx.fail("Hardmax needs a static size along its axis")
    idx = R.argmax(ctx.arg(0), axis=axis, keepdims=False)
    hot = ctx.emit(R.one_hot(idx, 1.0, 0.0, depth, axis))
    return R.astype(hot, str(xt.dtype))


# ----------------------------------------------------------------- reductions


def _reduce_axes(ctx: LowerContext) -> list[int] | None:
    """The reduced axes, or None when the op is a no-op (empty axes with noop flag)."""
    rank = ctx.rank(0)
    axes = ctx.ints(1, "axes") if ctx.has(1) else None
    if not axes:
        if ctx.attrs["noop_with_empty_axes"]:
            return None
        return list(range(rank))
    return _axes(axes, rank)


@lowers(
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)
def _reduce(ctx: LowerContext) -> relax.Expr:
    op = ctx.node.op_type
    axes = _reduce_axes(ctx)
    x = ctx.arg(0)
    dt = ctx.in_type(0).dtype
    if axes is None:
        return x
    keep = bool(ctx.attrs["keepdims"])
    if op in ("ReduceMax", "ReduceMin"):
        out = ctx.out_type()
        if any(ctx.in_type(0).shape[a] == 0 for a in axes):
            # Over an empty set: the lowest (max) or highest (min) value of the dtype.
            info = np.finfo if dt.is_float else np.iinfo
            if dt == DType.BOOL:
                fill: Any = op == "ReduceMin"
            elif dt.is_float:
                fill = -np.inf if op == "ReduceMax" else np.inf
            else:
                fill = info(dt.numpy).min if op == "ReduceMax" else info(dt.numpy).max
            return R.broadcast_to(ctx.scalar(fill, dt), ctx.shape(out.shape))
        if dt == DType.BOOL:
            fn = R.max if op == "ReduceMax" else R.min
            return R.astype(fn(R.astype(x, "uint8"), axis=axes, keepdims=keep), "bool")
    if op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"):
        fn = {
            "ReduceSum": R.sum,
            "ReduceMean": R.mean,
            "ReduceMax": R.max,
            "ReduceMin": R.min,
            "ReduceProd": R.prod,
        }[op]
        return fn(x, axis=axes, keepdims=keep)
    if op == "ReduceL1":
        return R.sum(R.abs(x), axis=axes, keepdims=keep)
    if op == "ReduceSumSquare":
        return R.sum(R.multiply(x, x), axis=axes, keepdims=keep)
    if op == "ReduceL2":
        y = R.sqrt(R.sum(R.multiply(x, x), axis=axes, keepdims=keep))
        return y if dt.is_float else R.astype(R.round(y), str(dt))
    if op == "ReduceLogSum":
        return R.log(R.sum(x, axis=axes, keepdims=keep))
    m = ctx.emit(R.max(x, axis=axes, keepdims=True))
    s = R.log(R.sum(R.exp(R.subtract(x, m)), axis=axes, keepdims=True))
    y = R.add(s, m)
    if not keep:
        y = R.squeeze(y, axes)
    return y


@lowers("ArgMax", "ArgMin")
def _arg(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    axis = _axis(ctx.attrs["axis"], xt.rank)
    keep = bool(ctx.attrs["keepdims"])
    fn = R.argmax if ctx.node.op_type == "ArgMax" else R.argmin
    x = ctx.arg(0)
    if not ctx.attrs["select_last_index"]:
        return R.astype(fn(x, axis=axis, keepdims=keep), "int64")
    n = xt.shape[axis]
    if not isinstance(n, int):
        ctx.fail("select_last_index needs a static size along the axis")
    flipped = R.flip(x, axis)
    idx = R.astype(fn(flipped, axis=axis, keepdims=keep), "int64")
    return R.subtract(ctx.scalar(n - 1, "int64"), idx)


@lowers("CumSum")
def _cumsum(ctx: LowerContext) -> relax.Expr:
    axis_v = ctx.ints(1, "axis")
    assert axis_v is not None
    axis = _axis(axis_v[0], ctx.rank(0))
    x = ctx.arg(0)
    if ctx.attrs["reverse"]:
        x = R.flip(x, axis)
    y = R.cumsum(x, axis=axis, exclusive=bool(ctx.attrs["exclusive"]))
    if ctx.attrs["reverse"]:
        y = R.flip(y, axis)
    return y


# ----------------------------------------------------------------- quantization


def _qparam(ctx: LowerContext, i: int, rank: int, axis: int, block: int) -> relax.Expr:
    """A scale or zero point reshaped (and for blocks, repeated) to broadcast against x."""
    pt = ctx.in_type(i)
    p = ctx.arg(i)
    if pt.rank == 0 or (pt.numel == 1 and not block):
        return R.reshape(p, []) if pt.rank else p
    axis = _axis(axis, rank)
    if not block:
        shape = [1] * rank
        shape[axis] = -1
        return R.reshape(p, shape)
    size = ctx.in_type(0).shape[axis]
    rep = R.repeat(p, block, axis=axis)
    if not isinstance(size, int):
        ctx.fail("blocked quantization needs a static size along the blocked axis")
    return R.strided_slice(rep, [axis], [0], [size], assume_inbound=True)


def _round_half_even(ctx: LowerContext, x: relax.Expr, dt: str) -> relax.Expr:
    r = ctx.emit(R.floor(R.add(x, ctx.scalar(0.5, dt))))
    tie = R.equal(R.subtract(r, x), ctx.scalar(0.5, dt))
    odd = R.not_equal(
        R.multiply(R.floor(R.multiply(r, ctx.scalar(0.5, dt))), ctx.scalar(2.0, dt)), r
    )
    return R.where(R.logical_and(tie, odd), R.subtract(r, ctx.scalar(1.0, dt)), r)


@lowers("QuantizeLinear")
def _quantize_linear(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    out = ctx.out_type().dtype
    lo, hi = QUANT_RANGES[out]
    axis, block = ctx.attrs["axis"], ctx.attrs["block_size"]
    cdt = str(xt.dtype)
    if ctx.attrs["precision"]:
        cdt = str(DType.from_onnx(ctx.attrs["precision"]))
    x = ctx.arg(0) if cdt == str(xt.dtype) else R.astype(ctx.arg(0), cdt)
    s = _qparam(ctx, 1, xt.rank, axis, block)
    if str(ctx.in_type(1).dtype) != cdt:
        s = R.astype(s, cdt)
    scaled = ctx.emit(R.divide(x, s))
    q = _round_half_even(ctx, scaled, cdt)
    q = R.astype(q, "float64")
    if ctx.has(2):
        zp = _qparam(ctx, 2, xt.rank, axis, block)
        q = R.add(q, R.astype(zp, "float64"))
    q = R.where(R.isnan(q), ctx.scalar(0.0, "float64"), q)
    return R.astype(R.clip(q, lo, hi), carrier(out))


@lowers("DequantizeLinear")
def _dequantize_linear(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    axis, block = ctx.attrs["axis"], ctx.attrs["block_size"]
    dx = R.astype(ctx.arg(0), "float32")
    if ctx.has(2):
        zp = _qparam(ctx, 2, xt.rank, axis, block)
        dx = R.subtract(dx, R.astype(zp, "float32"))
    s = _qparam(ctx, 1, xt.rank, axis, block)
    sdt = str(ctx.in_type(1).dtype)
    if sdt != "float32":
        # numpy promotes float32 * float16 to float32; * float64 to float64.
        if sdt == "float64":
            y = R.multiply(R.astype(dx, "float64"), s)
        else:
            y = R.multiply(dx, R.astype(s, "float32"))
    else:
        y = R.multiply(dx, s)
    out = str(ctx.out_type().dtype)
    return y if _dtype_of(ctx, y) == out else R.astype(y, out)


def _dtype_of(ctx: LowerContext, e: relax.Expr) -> str:
    v = ctx.emit(e)
    return str(v.ty.dtype)


@lowers("DynamicQuantizeLinear")
def _dynamic_quantize_linear(ctx: LowerContext) -> list[relax.Expr]:
    dt = str(ctx.in_type(0).dtype)
    x = ctx.arg(0)
    zero = ctx.scalar(0, dt)
    maxx = ctx.emit(R.maximum(zero, R.max(x)))
    minx = ctx.emit(R.minimum(zero, R.min(x)))
    rng = R.subtract(maxx, minx)
    scale = ctx.emit(
        R.divide(R.where(R.equal(maxx, minx), ctx.scalar(1.0, dt), rng), ctx.scalar(255.0, dt))
    )
    zp_f = R.clip(R.subtract(zero, R.divide(minx, scale)), 0, 255)
    zp = ctx.emit(_round_half_even(ctx, zp_f, dt))
    y = R.add(_round_half_even(ctx, R.divide(x, scale), dt), zp)
    y = R.astype(R.clip(y, 0, 255), "uint8")
    return [y, scale, R.astype(zp, "uint8")]


# ----------------------------------------------------------- fused / ecograph ops


@lowers("SiLU", domain="ecograph")
def _silu(ctx: LowerContext) -> relax.Expr:
    x = ctx.arg(0)
    return R.multiply(x, R.sigmoid(x))


@lowers("Linear", domain="ecograph")
def _linear(ctx: LowerContext) -> relax.Expr:
    y = _matmul(ctx)
    return R.add(y, ctx.arg(2)) if ctx.has(2) else y


@lowers("SwiGLU", domain="ecograph")
def _swiglu(ctx: LowerContext) -> relax.Expr:
    gate = ctx.arg(0)
    return R.multiply(R.multiply(gate, R.sigmoid(gate)), ctx.arg(1))


def _heads(ctx: LowerContext, x: relax.Expr, t: TensorType, heads: int) -> relax.Expr:
    """[b, s, heads*d] -> [b, heads, s, d]."""
    b, s, hidden = t.shape
    d = symbolic.floordiv(hidden, heads)
    return R.permute_dims(R.reshape(x, ctx.shape([b, s, heads, d])), [0, 2, 1, 3])


@lowers("Attention")
def _attention(ctx: LowerContext) -> relax.Expr:
    qt, kt, vt = ctx.in_type(0), ctx.in_type(1), ctx.in_type(2)
    dt = str(qt.dtype)
    q, k, v = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    three_d = qt.rank == 3
    if three_d:
        hq, hkv = ctx.attrs["q_num_heads"], ctx.attrs["kv_num_heads"]
        q, k, v = _heads(ctx, q, qt, hq), _heads(ctx, k, kt, hkv), _heads(ctx, v, vt, hkv)
        head_dim = symbolic.floordiv(qt.shape[2], hq)
    else:
        hq, hkv = qt.shape[1], kt.shape[1]
        head_dim = qt.shape[3]
    if hq != hkv:
        if not (isinstance(hq, int) and isinstance(hkv, int)):
            ctx.fail("grouped-query attention needs static head counts")
        k = R.repeat(k, hq // hkv, axis=1)
        v = R.repeat(v, hq // hkv, axis=1)
    scale = ctx.attrs["scale"]
    if scale is None:
        if not isinstance(head_dim, int):
            ctx.fail("the default scale needs a static head size")
        scale = 1.0 / float(np.sqrt(head_dim))
    scores = ctx.emit(
        R.multiply(R.matmul(q, R.permute_dims(k, [0, 1, 3, 2])), ctx.scalar(scale, dt))
    )
    neg_inf = ctx.scalar(-np.inf, dt)
    if ctx.attrs["is_causal"]:
        s_len = qt.shape[1] if three_d else qt.shape[2]
        l_len = kt.shape[1] if three_d else kt.shape[2]
        rows = R.reshape(R.arange(0, ctx.dim(s_len), 1, "int64"), ctx.shape([s_len, 1]))
        cols = R.reshape(R.arange(0, ctx.dim(l_len), 1, "int64"), ctx.shape([1, l_len]))
        scores = ctx.emit(R.where(R.less_equal(cols, rows), scores, neg_inf))
    if ctx.has(3):
        mask = ctx.arg(3)
        if ctx.in_type(3).dtype.value == "bool":
            scores = ctx.emit(R.where(mask, scores, neg_inf))
        else:
            scores = ctx.emit(R.add(scores, mask))
    # Softmax whose fully masked rows give zeros (ONNX Attention), not NaN.
    m = ctx.emit(R.max(scores, axis=-1, keepdims=True))
    m = ctx.emit(R.where(R.equal(m, neg_inf), ctx.scalar(0, dt), m))
    e = ctx.emit(R.exp(R.subtract(scores, m)))
    total = ctx.emit(R.sum(e, axis=-1, keepdims=True))
    probs = R.divide(e, R.where(R.equal(total, ctx.scalar(0, dt)), ctx.scalar(1, dt), total))
    y = ctx.emit(R.matmul(probs, v))
    if three_d:
        out = ctx.out_type()
        y = R.reshape(R.permute_dims(y, [0, 2, 1, 3]), ctx.shape(out.shape))
    return y


# --------------------------------------------------------------- more ONNX ops


@lowers("Shrink")
def _shrink(ctx: LowerContext) -> relax.Expr:
    x, dt = ctx.arg(0), ctx.in_type(0).dtype
    lam, bias = ctx.attrs["lambd"], ctx.attrs["bias"]
    if dt.is_float:
        low = R.add(x, ctx.scalar(bias, dt))
        high = R.subtract(x, ctx.scalar(bias, dt))
        zero = ctx.scalar(0, dt)
        lo_c, hi_c = ctx.scalar(-lam, dt), ctx.scalar(lam, dt)
        return R.where(R.less(x, lo_c), low, R.where(R.greater(x, hi_c), high, zero))
    xf = R.astype(x, "float64")
    y = R.where(
        R.less(xf, ctx.scalar(-lam, "float64")),
        R.add(xf, ctx.scalar(bias, "float64")),
        R.where(
            R.greater(xf, ctx.scalar(lam, "float64")),
            R.subtract(xf, ctx.scalar(bias, "float64")),
            ctx.scalar(0, "float64"),
        ),
    )
    return R.astype(y, str(dt))


@lowers("EyeLike")
def _eye_like(ctx: LowerContext) -> relax.Expr:
    n, m = ctx.in_type(0).shape
    if not (isinstance(n, int) and isinstance(m, int)):
        ctx.fail("EyeLike needs a static shape")
    out = ctx.out_type().dtype
    return relax.const(np.eye(n, m, k=ctx.attrs["k"]).astype(out.numpy), str(out))


@lowers("HannWindow", "HammingWindow", "BlackmanWindow")
def _window(ctx: LowerContext) -> relax.Expr:
    size = ctx.const(0)
    if size is None:
        ctx.fail("the window size must be a constant")
    # The window depends only on its (constant) size: evaluate it once at lowering time.
    return relax.const(run_node(ctx.node, [size])[0], str(ctx.out_type().dtype))


@lowers("DepthToSpace")
def _depth_to_space(ctx: LowerContext) -> relax.Expr:
    b, c, h, w = ctx.in_type(0).shape
    bs = ctx.attrs["blocksize"]
    c2 = symbolic.floordiv(c, bs * bs)
    if ctx.attrs["mode"] == "DCR":
        t = R.reshape(ctx.arg(0), ctx.shape([b, bs, bs, c2, h, w]))
        t = R.permute_dims(t, [0, 3, 4, 1, 5, 2])
    else:
        t = R.reshape(ctx.arg(0), ctx.shape([b, c2, bs, bs, h, w]))
        t = R.permute_dims(t, [0, 1, 4, 2, 5, 3])
    return R.reshape(t, ctx.shape(ctx.out_type().shape))


@lowers("SpaceToDepth")
def _space_to_depth(ctx: LowerContext) -> relax.Expr:
    b, c, h, w = ctx.in_type(0).shape
    bs = ctx.attrs["blocksize"]
    h2, w2 = symbolic.floordiv(h, bs), symbolic.floordiv(w, bs)
    t = R.reshape(ctx.arg(0), ctx.shape([b, c, h2, bs, w2, bs]))
    t = R.permute_dims(t, [0, 3, 5, 1, 2, 4])
    return R.reshape(t, ctx.shape(ctx.out_type().shape))


@lowers("GatherND")
def _gather_nd(ctx: LowerContext) -> relax.Expr:
    dt, it = ctx.in_type(0), ctx.in_type(1)
    b = ctx.attrs["batch_dims"]
    k = it.shape[-1]
    assert isinstance(k, int)
    idx = R.astype(ctx.arg(1), "int64")
    # Negative indices count from the end of their data axis.
    dims = dt.shape[b : b + k]
    if all(isinstance(d, int) for d in dims):
        sizes = relax.const(np.array(dims, np.int64), "int64")
        idx = R.where(R.less(idx, ctx.scalar(0, "int64")), R.add(idx, sizes), idx)
    return R.gather_nd(ctx.arg(0), idx, batch_dims=b)


_SCATTER_REDUCTION = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


@lowers("ScatterElements")
def _scatter_elements(ctx: LowerContext) -> relax.Expr:
    rank = ctx.rank(0)
    axis = _axis(ctx.attrs["axis"], rank)
    dim = ctx.in_type(0).shape[axis]
    idx = _normalize_indices(ctx, ctx.arg(1), dim, ctx.in_type(1).dtype)
    red = _SCATTER_REDUCTION[ctx.attrs["reduction"]]
    return R.scatter_elements(ctx.arg(0), idx, ctx.arg(2), axis=axis, reduction=red)


@lowers("ScatterND")
def _scatter_nd(ctx: LowerContext) -> relax.Expr:
    red = _SCATTER_REDUCTION[ctx.attrs["reduction"]]
    return R.scatter_nd(ctx.arg(0), R.astype(ctx.arg(1), "int64"), ctx.arg(2), red)


@lowers("OneHot")
def _one_hot(ctx: LowerContext) -> relax.Expr:
    depth_v = ctx.const(1)
    values = ctx.const(2)
    if depth_v is None:
        ctx.fail("depth must be a constant")
    depth = int(np.asarray(depth_v).reshape(-1)[0])
    rank = ctx.rank(0) + 1
    axis = _axis(ctx.attrs["axis"], rank)
    idx = R.astype(ctx.arg(0), "int64")
    idx = R.where(R.less(idx, ctx.scalar(0, "int64")), R.add(idx, ctx.scalar(depth, "int64")), idx)
    classes_shape = [depth if i == axis else 1 for i in range(rank)]
    classes = relax.const(np.arange(depth, dtype=np.int64).reshape(classes_shape), "int64")
    hot = R.equal(R.expand_dims(idx, [axis]), classes)
    out = ctx.out_type().dtype
    if values is not None:
        off = ctx.scalar(np.asarray(values).reshape(-1)[0], out)
        on = ctx.scalar(np.asarray(values).reshape(-1)[1], out)
    else:
        vals = ctx.arg(2)
        off = R.take(vals, relax.const(np.array(0, np.int64), "int64"), axis=0)
        on = R.take(vals, relax.const(np.array(1, np.int64), "int64"), axis=0)
    return R.where(hot, on, off)


@lowers("GroupNormalization")
def _group_norm(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    g = ctx.attrs["num_groups"]
    stash = str(DType.from_onnx(ctx.attrs["stash_type"]))
    dt = str(xt.dtype)
    x = ctx.arg(0) if dt == stash else R.astype(ctx.arg(0), stash)
    n = xt.shape[0]
    rest = symbolic.floordiv(symbolic.product(xt.shape[1:]), g)
    xs = ctx.emit(R.reshape(x, ctx.shape([n, g, rest])))
    mean = ctx.emit(R.mean(xs, axis=[2], keepdims=True))
    centered = ctx.emit(R.subtract(xs, mean))
    var = R.mean(R.multiply(centered, centered), axis=[2], keepdims=True)
    normed = R.divide(centered, R.sqrt(R.add(var, ctx.scalar(ctx.attrs["epsilon"], stash))))
    normed = R.reshape(normed, ctx.shape(xt.shape))
    scale, bias = ctx.arg(1), ctx.arg(2)
    if str(ctx.in_type(1).dtype) != stash:
        scale, bias = R.astype(scale, stash), R.astype(bias, stash)
    y = R.add(
        R.multiply(normed, _reshape_bias(ctx, scale, xt.rank)), _reshape_bias(ctx, bias, xt.rank)
    )
    return y if dt == stash else R.astype(y, dt)


@lowers("MeanVarianceNormalization")
def _mvn(ctx: LowerContext) -> relax.Expr:
    x = ctx.arg(0)
    dt = ctx.in_type(0).dtype
    axes = _axes(ctx.attrs["axes"], ctx.rank(0))
    mean = ctx.emit(R.mean(x, axis=axes, keepdims=True))
    sq = R.mean(R.multiply(x, x), axis=axes, keepdims=True)
    std = R.sqrt(R.maximum(R.subtract(sq, R.multiply(mean, mean)), ctx.scalar(0, dt)))
    return R.divide(R.subtract(x, mean), R.add(std, ctx.scalar(1e-9, dt)))


@lowers("LpNormalization")
def _lp_norm(ctx: LowerContext) -> relax.Expr:
    x = ctx.arg(0)
    axis = _axis(ctx.attrs["axis"], ctx.rank(0))
    if ctx.attrs["p"] == 1:
        norm = R.sum(R.abs(x), axis=[axis], keepdims=True)
    else:
        norm = R.sqrt(R.sum(R.multiply(x, x), axis=[axis], keepdims=True))
    dt = ctx.in_type(0).dtype
    # x / norm where norm is 0 gives 0 (the kernel's convention for empty directions).
    safe = R.where(R.equal(norm, ctx.scalar(0, dt)), ctx.scalar(1, dt), norm)
    return R.divide(x, safe)


@lowers("QLinearMatMul")
def _qlinear_matmul(ctx: LowerContext) -> relax.Expr:
    a32 = R.subtract(R.astype(ctx.arg(0), "int32"), R.astype(ctx.arg(2), "int32"))
    b32 = R.subtract(R.astype(ctx.arg(3), "int32"), R.astype(ctx.arg(5), "int32"))
    acc = R.matmul(a32, b32, out_dtype="int32")
    sdt = str(ctx.in_type(1).dtype)
    mult = R.divide(R.multiply(ctx.arg(1), ctx.arg(4)), ctx.arg(6))
    scaled = R.add(R.multiply(R.astype(acc, sdt), mult), R.astype(ctx.arg(7), sdt))
    out = ctx.out_type().dtype
    lo, hi = QUANT_RANGES[out]
    q = _round_half_even(ctx, ctx.emit(scaled), sdt)
    return R.astype(R.clip(q, lo, hi), str(out))


@lowers("Einsum")
def _einsum(ctx: LowerContext) -> relax.Expr:
    return R.einsum([ctx.arg(i) for i in range(len(ctx.args))], ctx.attrs["equation"])


@lowers("MatMulNBits", domain="com.microsoft")
def _matmul_nbits(ctx: LowerContext) -> relax.Expr:
    """Blockwise n-bit weights stay packed in memory and are dequantized inside the kernel:
    one TE kernel reads the packed bytes, scales and zero points in its reduction loop (no
    float copy of the weights exists, so FoldConstant cannot unpack them into float32)."""
    if ctx.has(4):
        ctx.fail("g_idx (act-order) is not supported")
    k_len, n_len, bits, block = (ctx.attrs[a] for a in ("K", "N", "bits", "block_size"))
    k_blocks = -(-k_len // block)
    adt = str(ctx.in_type(0).dtype)
    sdt = str(ctx.in_type(2).dtype)
    a = ctx.arg(0) if adt == "float32" else ctx.emit(R.astype(ctx.arg(0), "float32"))
    packed = ctx.emit(R.reshape(ctx.arg(1), [n_len, -1]))
    scales = ctx.emit(R.astype(R.reshape(ctx.arg(2), [n_len, k_blocks]), "float32"))
    zp_kind = "none"
    args = [a, packed, scales]
    if ctx.has(3):
        zp_kind = "packed" if ctx.in_type(3).dtype == DType.UINT8 else "float"
        z = R.reshape(ctx.arg(3), [n_len, -1])
        args.append(ctx.emit(z if zp_kind == "packed" else R.astype(z, "float32")))

    def compute(at: Any, bt: Any, st: Any, zt: Any = None) -> Any:
        def weight(kk: Any, n: Any) -> Any:
            kb = tir.floordiv(kk, block)
            q = _packed_code(bt, n, kk, bits).astype("float32")
            if zp_kind == "none":
                zp: Any = tir.const(float(1 << (bits - 1)), "float32")
            elif zp_kind == "packed":
                zp = _packed_code(zt, n, kb, bits).astype("float32")
            else:
                zp = zt[n, kb]
            w = (q - zp) * st[n, kb]
            # The reference rounds the dequantized weights to the scales' dtype.
            return w if sdt == "float32" else w.astype(sdt).astype("float32")

        return _dequantizing_matmul(at, weight, k_len, n_len, "dequantize_matmul_nbits")

    y = ctx.bb.emit_te(compute, *args, primfunc_name_hint="dequantize_matmul_nbits")
    if ctx.has(5):
        y = R.add(y, R.astype(ctx.arg(5), "float32"))
    return y if adt == "float32" else R.astype(y, adt)


@lowers("ConvTranspose")
def _conv_transpose(ctx: LowerContext) -> relax.Expr:
    from ecograph.ir.ops.convolution import conv_transpose_pads

    xt, wt = ctx.in_type(0), ctx.in_type(1)
    n = xt.rank - 2
    kernel = list(ctx.attrs["kernel_shape"] or wt.shape[2:])
    strides = list(ctx.attrs["strides"] or [1] * n)
    dil = list(ctx.attrs["dilations"] or [1] * n)
    out_pad = list(ctx.attrs["output_padding"] or [0] * n)
    _, pads = conv_transpose_pads(
        list(xt.shape[2:]),
        kernel,
        strides,
        dil,
        out_pad,
        ctx.attrs["pads"],
        ctx.attrs["output_shape"],
        ctx.attrs["auto_pad"],
    )
    if pads is None:
        ctx.fail("ConvTranspose with output_shape needs static spatial dims")
    fn = {1: NN.conv1d_transpose, 2: NN.conv2d_transpose, 3: NN.conv3d_transpose}.get(n)
    if fn is None:
        ctx.fail(f"ConvTranspose over {n} spatial dims is not supported")
    y = fn(
        ctx.arg(0),
        ctx.arg(1),
        strides=strides,
        padding=pads,
        output_padding=out_pad,
        dilation=dil,
        groups=ctx.attrs["group"],
    )
    if ctx.has(2):
        y = R.add(y, _reshape_bias(ctx, ctx.arg(2), xt.rank))
    return y


def integer_conv(ctx: LowerContext, x: int, x_zp: int, w: int, w_zp: int) -> relax.Expr:
    """The int32 convolution of (input `x` - its zero point) and (weights `w` - theirs, per
    tensor or per output channel): ConvInteger, and QLinearConv before requantization."""
    wt = ctx.in_type(w)
    fn, strides, dil, pads = conv_setup(ctx, weight=w)
    xs = R.astype(ctx.arg(x), "int32")
    ws = R.astype(ctx.arg(w), "int32")
    if ctx.has(x_zp):
        xs = R.subtract(xs, R.astype(ctx.arg(x_zp), "int32"))
    if ctx.has(w_zp):
        zp = R.astype(ctx.arg(w_zp), "int32")
        if ctx.in_type(w_zp).rank == 1 and ctx.in_type(w_zp).shape[0] != 1:
            zp = _reshape_bias(ctx, zp, wt.rank, axis=0)
        ws = R.subtract(ws, zp)
    return fn(
        ctx.emit(xs),
        ctx.emit(ws),
        strides=strides,
        padding=pads,
        dilation=dil,
        groups=ctx.attrs["group"],
        out_dtype="int32",
    )


@lowers("ConvInteger")
def _conv_integer(ctx: LowerContext) -> relax.Expr:
    return integer_conv(ctx, x=0, x_zp=2, w=1, w_zp=3)


# Ops that cannot lower to TVM at all, with the reason (reported by missing_lowerings users).
UNLOWERABLE: dict[tuple[str, str], str] = {
    ("", "RegexFullMatch"): "string tensors: TVM has no string dtype",
    ("", "StringConcat"): "string tensors: TVM has no string dtype",
    ("", "StringNormalizer"): "string tensors: TVM has no string dtype",
    ("", "StringSplit"): "string tensors: TVM has no string dtype",
    **{
        ("", op): "random (OpSchema.random): there is no TVM lowering that draws random numbers"
        for op in (
            "RandomNormal",
            "RandomNormalLike",
            "RandomUniform",
            "RandomUniformLike",
            "Multinomial",
            "Bernoulli",
        )
    },
}


# The op families in ecograph/backends/tvm/ops register their lowerings on import.
import ecograph.backends.tvm.ops  # noqa: E402, F401  (after LOWERINGS and the helpers exist)

__all__ = [
    "LOWERINGS",
    "LowerContext",
    "Lowered",
    "SymbolTable",
    "has_lowering",
    "known_array",
    "lower_graph",
    "lowers",
    "missing_lowerings",
    "unlowered_registry_ops",
]
