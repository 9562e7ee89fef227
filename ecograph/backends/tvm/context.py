"""What a lowering sees: the lowering table, the per-node context and the shared helpers.

`LOWERINGS` maps `(domain, op_type)` to a function that receives a `LowerContext` (the node,
its resolved attributes, its inputs as Relax expressions, the BlockBuilder) and returns one
Relax expression per node output. Lowerings live by op family in `ecograph/backends/tvm/ops/`
and register with `@lowers("OpType", domain=...)`; the driver (`driver.lower_graph`) walks the
graph and calls them.

Symbolic dims become Relax symbolic shapes: one `tir.Var` (int64) per symbol, and expressions
such as `2*seq` or `(seq+1)//2` become TIR arithmetic over those vars.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ecograph.backends.tvm.targets import TargetSpec
from ecograph.errors import LoweringError
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.interpreter import run_node
from ecograph.ir.registry import symbolic_value
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

if TYPE_CHECKING:
    from ecograph.backends.tvm.ops.weight_panels import WeightPanels

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
ANALYZER = Analyzer()
# A PrimFunc attribute: the kernel stays a kernel of its own (the CUDA pipeline marks such
# functions opaque to FuseOps, cuda_rules.isolate_batched_matmuls).
OPAQUE_ATTR = "ecograph.opaque"
# OpPatternKind.kOpaque: a PrimFunc with this "op_pattern" is left alone by FuseOps (Relax's
# AnnotateTIROpPattern keeps a pattern a function already has).
OPAQUE_PATTERN = 8

LowerFn = Callable[["LowerContext"], "relax.Expr | Sequence[relax.Expr | None]"]
LOWERINGS: dict[tuple[str, str], LowerFn] = {}

# Dtypes Relax can carry through function boundaries and kernels.
RELAX_DTYPES = {d for d in DType if d is not DType.STRING}


def lowers(*op_types: str, domain: str = "") -> Callable[[LowerFn], LowerFn]:
    """Register the decorated function as the lowering of each of `op_types` in `domain`."""

    def decorate(fn: LowerFn) -> LowerFn:
        for op_type in op_types:
            LOWERINGS[(domain, op_type)] = fn
        return fn

    return decorate


def missing_lowerings(graph: Graph) -> list[str]:
    """Qualified names of the ops in `graph` that have no lowering, sorted."""
    return sorted({n.qualified_op for n in graph.nodes if (n.domain, n.op_type) not in LOWERINGS})


# ----------------------------------------------------------------- symbolic dims


class SymbolTable:
    """One int64 `tir.Var` per symbol name; dims become TIR expressions by walking their
    canonical form (`ecograph.ir.symbolic.eval_with`, the IR's one dim parser)."""

    def __init__(self) -> None:
        self.vars: dict[str, tir.Var] = {}
        # Symbols the IR could not resolve (fresh output dims) whose value Relax proved
        # static while lowering (e.g. after lowering-time folding of their shape inputs).
        self.known: dict[str, int] = {}
        self._ops: symbolic.DimOps[Any] = symbolic.DimOps(
            const=lambda v: tir.IntImm("int64", v),
            symbol=self.var,
            add=operator.add,
            sub=operator.sub,
            mul=operator.mul,
            floordiv=tir.floordiv,
            mod=tir.floormod,
            neg=operator.neg,
        )

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
        """A TIR expression for a dim; a LoweringError naming the dim if it is malformed."""
        if isinstance(dim, int):
            return tir.IntImm("int64", dim)
        if symbolic.is_symbol_name(dim):
            return self.var(dim)
        try:
            return symbolic.eval_with(dim, self._ops)
        except (ValueError, ZeroDivisionError) as exc:
            raise LoweringError(f"cannot lower dimension {dim!r}: {exc}") from exc

    def shape(self, dims: Sequence[Dim]) -> relax.ShapeExpr:
        return relax.ShapeExpr([self.expr(d) for d in dims])

    def tensor_type(self, t: TensorType) -> relax.TensorType:
        return relax.TensorType([self.expr(d) for d in t.shape], carrier(t.dtype))


# ------------------------------------------------------------------- the context


@dataclass(frozen=True)
class LowerOptions:
    """How to lower a graph. `target` is the resolved target (lowerings that pick a kernel
    form read `target.family` / `target.is_gpu`, never a target string); with `keep_params`,
    constants of at least `param_threshold` bytes become trailing function parameters;
    `widen_int8_matmul` emits int8 x int8 matmuls on int32 operands (CUDA: TVM 0.27's dlight
    Matmul rule crashes on the int8 form; the widened one schedules and is exact);
    `fold=False` lowers every node instead of computing small all-known ones at lowering time
    (tests of a lowering use it)."""

    target: TargetSpec
    keep_params: bool = False
    param_threshold: int = 0
    func_name: str = "main"
    widen_int8_matmul: bool = False
    fold: bool = True


@dataclass
class LoweringState:
    """What lowering one graph builds up; every node's `LowerContext` shares it."""

    bb: relax.BlockBuilder
    options: LowerOptions
    symbols: SymbolTable = field(default_factory=lambda: SymbolTable())
    # The Relax expression of every value lowered or bound so far.
    exprs: dict[Value, relax.Expr] = field(default_factory=dict)
    # Values computed at lowering time by their producer's reference kernel, and those nodes.
    folded: dict[Value, np.ndarray] = field(default_factory=dict)
    folded_nodes: list[str] = field(default_factory=list)
    # 4-bit weight constants bound packed two per byte for the DequantizeMatMul kernels.
    packed: set[Value] = field(default_factory=set)
    # CPU: DequantizeMatMul nodes whose integer weights (and scales) are bound packed in
    # column panels (ops/weight_panels.py) -> how their kernel reads them.
    weight_panels: dict[Node, WeightPanels] = field(default_factory=dict)
    # float32 weight constants bound packed (ops/matmul.py `packed_matmul_weights`), read so
    # by their matmuls: CPU column panels [N / NR, K, NR] -> NR; GPU [N, K] -> 0 (BY_COLUMN)
    panels: dict[Value, int] = field(default_factory=dict)
    # CPU: float32 conv weights bound packed in output-channel blocks, [O / B, I, KH, KW, B]
    # -> B (see ops/conv.py `packed_conv_weights`); their Convs read them packed.
    conv_blocks: dict[Value, int] = field(default_factory=dict)
    # CPU: float32 depthwise conv weights bound as their taps [KH, KW, C] (ops/conv.py
    # `packed_depthwise_taps`); their Convs run channels-last
    taps: set[Value] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    # Expressions several nodes' lowerings share, under a key the lowering chooses: an
    # activation quantized once for every product that reads it (ops/int4_a8.py).
    shared: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def value_expr(self, v: Value) -> relax.Expr:
        """The Relax expression of `v`; a constant is bound (once) when first used."""
        if v in self.exprs:
            return self.exprs[v]
        if v.const_value is not None:
            if v.dtype in (DType.INT4, DType.UINT4):
                # TVM's VM cannot allocate 4-bit tensors: 4-bit values travel in 8-bit carriers.
                wide = carrier(v.dtype)
                e = relax.const(v.const_value.astype(wide), wide)
            else:
                e = relax.const(contiguous(v.const_value), str(v.dtype))
            self.exprs[v] = e
            return e
        raise LoweringError(f"value %{v.name} is used before it is defined")


@dataclass
class LowerContext:
    """What a lowering function sees for one node: the node, its resolved attributes, its
    inputs as Relax expressions (None for absent ones), and the graph's lowering state."""

    state: LoweringState
    node: Node
    attrs: dict[str, Any]
    args: list[relax.Expr | None]

    @property
    def bb(self) -> relax.BlockBuilder:
        return self.state.bb

    @property
    def options(self) -> LowerOptions:
        return self.state.options

    @property
    def target(self) -> TargetSpec:
        """The resolved target: lowerings that pick a kernel form read `target.is_gpu`."""
        return self.state.options.target

    @property
    def symbols(self) -> SymbolTable:
        return self.state.symbols

    @property
    def notes(self) -> list[str]:
        """Notes for the build report (deduplicated by the driver)."""
        return self.state.notes

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
        folded = self.state.folded
        return folded[v] if v in folded else known_array(v)

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


def carrier(dtype: DType) -> str:
    """The TVM dtype that holds values of `dtype`: int4/uint4 travel as int8/uint8."""
    return {DType.INT4: "int8", DType.UINT4: "uint8"}.get(dtype, str(dtype))


def contiguous(arr: np.ndarray) -> np.ndarray:
    """The array itself when C-contiguous (no copy); np.ascontiguousarray would make 0-d 1-d."""
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)


# ------------------------------------------------------------------ helpers


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return sorted(norm_axis(int(a), rank) for a in axes)


def float_compute(ctx: LowerContext, i: int = 0) -> tuple[relax.Expr, str]:
    """Input `i` and the float dtype to compute in (float32 for float16/bfloat16)."""
    dtype = str(ctx.in_type(i).dtype)
    x = ctx.arg(i)
    if dtype in ("float16", "bfloat16"):
        return R.astype(x, "float32"), dtype
    return x, dtype


def cast_back(x: relax.Expr, dtype: str, computed: str = "float32") -> relax.Expr:
    return x if dtype not in ("float16", "bfloat16") else R.astype(x, dtype)


def reshape_bias(ctx: LowerContext, x: relax.Expr, rank: int, axis: int = 1) -> relax.Expr:
    """A 1-D per-channel tensor reshaped to broadcast against a rank-`rank` tensor at `axis`."""
    shape = [1] * rank
    shape[axis] = -1
    if isinstance(x, relax.Call):
        x = ctx.emit(x)  # reshape with -1 needs its input's type
    return R.reshape(x, shape)


def round_half_even(ctx: LowerContext, x: relax.Expr, dt: str) -> relax.Expr:
    """`x` rounded half to even. On CPUs TIR's `round` is LLVM's `nearbyint`, which rounds half
    to even in the default rounding mode: one vector instruction, and a quantization that
    reads its input once (so fusion inlines it into its consumer, a transposed one included).
    CUDA's `round` rounds half away from zero: there, floor(x + 0.5) less one at odd ties."""
    if not ctx.target.is_gpu:
        return R.round(x)
    r = ctx.emit(R.floor(R.add(x, ctx.scalar(0.5, dt))))
    tie = R.equal(R.subtract(r, x), ctx.scalar(0.5, dt))
    odd = R.not_equal(
        R.multiply(R.floor(R.multiply(r, ctx.scalar(0.5, dt))), ctx.scalar(2.0, dt)), r
    )
    return R.where(R.logical_and(tie, odd), R.subtract(r, ctx.scalar(1.0, dt)), r)


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
