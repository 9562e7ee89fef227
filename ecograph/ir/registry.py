"""The op registry: one schema per (domain, op_type) with attributes, inference and a kernel.

ONNX ops follow the semantics of ONNX opset `ONNX_OPSET` (domain ""); the library's own ops
live in the "ecograph" domain. Registering an op takes one decorator on its reference kernel:

    @register_op("Swish", domain="ecograph", inputs=["X"], outputs=["Y"],
                 attrs={"beta": Attr("float", 1.0)}, infer=same_as_input(0))
    def swish(x, *, beta):
        return x / (1 + np.exp(-beta * x))

The kernel takes numpy arrays (None for absent optional inputs) and attributes as keyword
arguments, and returns one array or a tuple of arrays. `infer` receives an `InferContext` and
returns one TensorType per output (a dim may be None when it cannot be known statically).

The schema also holds the facts passes and analyses ask about an op, so that each fact has one
home: `commutative` (pattern matching tries both operand orders), `random` (CSE and constant
folding leave the op alone) and `macs` (the cost model of `ecograph.ir.stats`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from ecograph.errors import AttributeSchemaError, TypeInferenceError, UnknownOpError
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

if TYPE_CHECKING:
    from ecograph.ir.graph import Graph, Node, Value

ONNX_OPSET = 23
ECOGRAPH_OPSET = 1
DEFAULT_OPSET_IMPORTS = {"": ONNX_OPSET, "ecograph": ECOGRAPH_OPSET}

ATTR_KINDS = ("int", "float", "string", "ints", "floats", "strings", "tensor")

_REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """An attribute in an op schema: its kind (one of ATTR_KINDS) and default.

    `Attr("int")` is required; `Attr("int", 0)` defaults to 0; `Attr("ints", None)` is optional
    with no default (the kernel receives None).
    """

    kind: str
    default: Any = _REQUIRED

    def __post_init__(self) -> None:
        if self.kind not in ATTR_KINDS:
            raise ValueError(f"attribute kind {self.kind!r} is not one of {ATTR_KINDS}")

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass(frozen=True)
class Port:
    """An input or output slot. `name?` is optional; `name*` is variadic (one or more)."""

    name: str
    optional: bool = False
    variadic: bool = False

    @classmethod
    def parse(cls, spec: str) -> Port:
        if spec.endswith("?"):
            return cls(spec[:-1], optional=True)
        if spec.endswith("*"):
            return cls(spec[:-1], variadic=True)
        return cls(spec)


InferFn = Callable[["InferContext"], Sequence[TensorType]]
PropagateFn = Callable[["InferContext"], "list[Dim] | None"]
# Multiply-accumulates of one node given symbol bindings (FLOPs are twice this). It may return
# None when the node's shapes are outside its rule; evaluating a dim with an unbound symbol
# raises KeyError (`symbolic.evaluate`), which callers read as "unknown".
MacsFn = Callable[["Node", Mapping[str, int]], "int | None"]


@dataclass
class OpSchema:
    """Everything the IR knows about one op (see `register_op` for the facts' meanings)."""

    op_type: str
    domain: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    attrs: dict[str, Attr]
    infer: InferFn
    kernel: Callable[..., Any]
    doc: str = ""
    random: bool = False
    commutative: bool = False
    macs: MacsFn | None = None
    propagate: PropagateFn | None = None
    wants_num_outputs: bool = field(default=False)

    @property
    def qualified_name(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type

    @property
    def default_num_outputs(self) -> int:
        return sum(1 for p in self.outputs if not p.optional) or 1

    def input_count_range(self) -> tuple[int, int | None]:
        low = 0
        for i, p in enumerate(self.inputs):
            if not p.optional:
                low = i + 1
        high = None if any(p.variadic for p in self.inputs) else len(self.inputs)
        return low, high

    def output_count_range(self) -> tuple[int, int | None]:
        low = sum(1 for p in self.outputs if not p.optional and not p.variadic)
        if any(p.variadic for p in self.outputs):
            return max(low, 1), None
        return max(low, 1), len(self.outputs)


_REGISTRY: dict[tuple[str, str], OpSchema] = {}


def register_op(
    op_type: str,
    *,
    inputs: Sequence[str],
    outputs: Sequence[str],
    infer: InferFn,
    domain: str = "",
    attrs: dict[str, Attr] | None = None,
    random: bool = False,
    commutative: bool = False,
    macs: MacsFn | None = None,
    propagate: PropagateFn | None = None,
    replace: bool = False,
    doc: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an op whose reference kernel is the decorated function (see module doc).

    - `random=True`: the result is not a function of the inputs (a draw from a distribution),
      so CSE never merges two such nodes and constant folding never computes one ahead.
    - `commutative=True`: swapping the two inputs of a two-input node gives the same result;
      `ecograph.passes.pattern.Op` then matches the operands in either order.
    - `macs`: the node's multiply-accumulates (`MacsFn`), for the ops that dominate compute
      (contractions); ops without it count as 0 in `ecograph.ir.stats`.
    - `propagate` computes the symbolic value of small integer outputs (shape math).
    """
    key = (domain, op_type)

    def decorate(kernel: Callable[..., Any]) -> Callable[..., Any]:
        if key in _REGISTRY and not replace:
            raise ValueError(
                f"op {domain + '::' if domain else ''}{op_type} is already registered; "
                "pass replace=True to override it"
            )
        _REGISTRY[key] = OpSchema(
            op_type=op_type,
            domain=domain,
            inputs=tuple(Port.parse(s) for s in inputs),
            outputs=tuple(Port.parse(s) for s in outputs),
            attrs=dict(attrs or {}),
            infer=infer,
            kernel=kernel,
            doc=doc or inspect.getdoc(kernel) or "",
            random=random,
            commutative=commutative,
            macs=macs,
            propagate=propagate,
            wants_num_outputs="_num_outputs" in inspect.signature(kernel).parameters,
        )
        return kernel

    return decorate


def unregister_op(op_type: str, domain: str = "") -> None:
    _REGISTRY.pop((domain, op_type), None)


def _ensure_loaded() -> None:
    # The built-in op library registers itself on import.
    import ecograph.ir.ops  # noqa: F401


def lookup_schema(op_type: str, domain: str = "") -> OpSchema | None:
    _ensure_loaded()
    return _REGISTRY.get((_norm_domain(domain), op_type))


def get_schema(op_type: str, domain: str = "") -> OpSchema:
    schema = lookup_schema(op_type, domain)
    if schema is None:
        raise UnknownOpError(
            f"op {domain + '::' if domain else ''}{op_type} is not registered "
            "(see docs/ir.md, 'Registering an op')"
        )
    return schema


def registered_ops(domain: str | None = None) -> list[OpSchema]:
    _ensure_loaded()
    return sorted(
        (s for (d, _), s in _REGISTRY.items() if domain is None or d == domain),
        key=lambda s: (s.domain, s.op_type),
    )


def _norm_domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


# ------------------------------------------------------------------ attributes


def check_attr_value(kind: str, value: Any) -> bool:
    """True if `value` is a valid Python value for an attribute of `kind`."""
    if kind == "int":
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(
            value, bool
        )
    if kind == "string":
        return isinstance(value, str)
    if kind in ("ints", "floats", "strings"):
        if not isinstance(value, (list, tuple)):
            return False
        return all(check_attr_value(kind[:-1] if kind != "strings" else "string", x) for x in value)
    if kind == "tensor":
        return isinstance(value, np.ndarray)
    return False


def resolve_attrs(schema: OpSchema, node: Node) -> dict[str, Any]:
    """The node's attributes checked against the schema, with defaults filled in."""
    out: dict[str, Any] = {}
    for key in node.attrs:
        if key not in schema.attrs:
            raise AttributeSchemaError(
                f"node {node.name} ({schema.qualified_name}) has unknown attribute {key!r}; "
                f"known: {sorted(schema.attrs) or 'none'}"
            )
    for key, spec in schema.attrs.items():
        if key in node.attrs:
            value = node.attrs[key]
            if value is not None and not check_attr_value(spec.kind, value):
                raise AttributeSchemaError(
                    f"node {node.name} ({schema.qualified_name}): attribute {key!r} must be "
                    f"{spec.kind}, got {type(value).__name__} {value!r}"
                )
            out[key] = value
        elif spec.required:
            raise AttributeSchemaError(
                f"node {node.name} ({schema.qualified_name}) lacks required attribute {key!r}"
            )
        else:
            out[key] = spec.default
    return out


# ------------------------------------------------------------------- inference


class InferContext:
    """What an inference function sees: input types, attributes, known constant values."""

    def __init__(self, graph: Graph, node: Node, schema: OpSchema, num_outputs: int) -> None:
        self.graph = graph
        self.node = node
        self.schema = schema
        self.num_outputs = num_outputs
        self.attrs = resolve_attrs(schema, node)

    @property
    def num_inputs(self) -> int:
        return len(self.node._inputs)

    def has_input(self, i: int) -> bool:
        return self.node.input(i) is not None

    def input(self, i: int) -> TensorType:
        value = self.node.input(i)
        if value is None:
            self.fail(f"input {i} is required but absent")
        return value.type

    def inputs(self) -> list[TensorType]:
        return [self.input(i) for i in range(self.num_inputs) if self.has_input(i)]

    def attr(self, name: str) -> Any:
        return self.attrs[name]

    def value(self, i: int) -> Value | None:
        return self.node.input(i)

    def constant(self, i: int) -> np.ndarray | None:
        """Input `i`'s array if it is a constant or statically known (shape math)."""
        value = self.node.input(i)
        if value is None:
            return None
        if value.const_value is not None:
            return value.const_value
        sym = symbolic_value(value)
        if sym is not None and all(isinstance(d, int) for d in sym):
            return np.array(sym, dtype=value.dtype.numpy).reshape(value.type.static_shape())
        return None

    def symbolic(self, i: int) -> list[Dim] | None:
        """Input `i`'s elements as dims if known (e.g. the output of Shape), else None."""
        value = self.node.input(i)
        return None if value is None else symbolic_value(value)

    def fail(self, message: str) -> NoReturn:
        raise TypeInferenceError(f"node {self.node.name} ({self.schema.qualified_name}): {message}")


def infer_node_types(graph: Graph, node: Node, num_outputs: int) -> list[TensorType]:
    """Run the node's inference and return one complete TensorType per output.

    Dims an inference leaves as None (data-dependent sizes) become the symbol
    fresh symbols `<node name>_o<output>_d<axis>`.
    """
    schema = get_schema(node.op_type, node.domain)
    low, high = schema.input_count_range()
    n_in = len(node._inputs)
    if n_in < low or (high is not None and n_in > high):
        raise TypeInferenceError(
            f"node {node.name} ({schema.qualified_name}) has {n_in} inputs; expected "
            f"{low}{'' if high == low else f' to {high}' if high is not None else ' or more'}"
        )
    for i, port in enumerate(schema.inputs):
        if not port.optional and not port.variadic and i < n_in and node._inputs[i] is None:
            raise TypeInferenceError(
                f"node {node.name} ({schema.qualified_name}): required input {port.name!r} "
                f"(#{i}) is absent"
            )
    ctx = InferContext(graph, node, schema, num_outputs)
    try:
        types = list(schema.infer(ctx))
    except TypeInferenceError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise TypeInferenceError(
            f"node {node.name} ({schema.qualified_name}): inference failed: {exc}"
        ) from exc
    if len(types) < num_outputs:
        raise TypeInferenceError(
            f"node {node.name} ({schema.qualified_name}) asks for {num_outputs} outputs; "
            f"the op gives {len(types)}"
        )
    out = []
    for oi, t in enumerate(types[:num_outputs]):
        dims = [
            d if d is not None else f"{fresh_symbol_prefix(node.name)}{oi}_d{axis}"
            for axis, d in enumerate(t.shape)
        ]
        out.append(TensorType(t.dtype, dims))
    return out


def fresh_symbol_prefix(node_name: str) -> str:
    """Prefix of the symbols made up for a node's data-dependent dims (`<node>_o<i>_d<axis>`)."""
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in node_name)
    base = cleaned if cleaned[:1].isalpha() or cleaned[:1] == "_" else f"n_{cleaned}"
    return f"{base}_o"


def input_symbols_of(graph: Graph) -> set[str]:
    """The symbols of the graph inputs' dims: every other symbol was made up by inference for
    a dim it could not know (a data-dependent size, or one computed with Max / Min)."""
    return {s for v in graph.inputs for d in v.shape for s in symbolic.symbols(d)}


def made_up(dim: symbolic.Dim, fresh: str, input_symbols: set[str]) -> bool:
    """Whether inference made `dim` up: a fresh symbol of the node (prefix `fresh`), or a dim
    with a symbol no graph input has (`input_symbols_of`)."""
    return isinstance(dim, str) and (
        dim.startswith(fresh) or bool(symbolic.symbols(dim) - input_symbols)
    )


class PartialType(TensorType):
    """A TensorType whose dims may be None (unknown); only inference functions return it."""

    __slots__ = ()

    def __init__(self, dtype: DType | str, shape: Sequence[Dim | None]) -> None:
        object.__setattr__(self, "dtype", DType.parse(dtype))
        object.__setattr__(
            self, "shape", tuple(None if d is None else symbolic.canonical(d) for d in shape)
        )


def make_type(dtype: DType | str, shape: Sequence[Dim | None]) -> TensorType:
    """A TensorType for an inference result; None dims mark sizes known only at run time."""
    if any(d is None for d in shape):
        return PartialType(dtype, shape)
    return TensorType(dtype, shape)  # type: ignore[arg-type]


# ----------------------------------------------------- symbolic value propagation

_MAX_SYMBOLIC_ELEMENTS = 64


def symbolic_value(value: Value) -> list[Dim] | None:
    """The elements of a small integer (or bool: 0 / 1) tensor as dims, if statically known.

    Constants give ints; `Shape` gives the (possibly symbolic) dims of its input; Gather,
    Concat, Slice, Unsqueeze, arithmetic and friends propagate through their schema's
    `propagate` rule. Returns None when unknown. The result is flat (row-major).
    """
    t = value.type
    if not ((t.dtype.is_integer or t.dtype == DType.BOOL) and t.is_static and t.rank <= 1):
        return None
    if int(np.prod(t.static_shape())) > _MAX_SYMBOLIC_ELEMENTS:
        return None
    if value.const_value is not None:
        return [int(x) for x in np.asarray(value.const_value).reshape(-1)]
    node = value.producer
    if node is None or value.index != 0 or node.graph is None:
        return None
    schema = lookup_schema(node.op_type, node.domain)
    if schema is None or schema.propagate is None:
        return None
    try:
        ctx = InferContext(node.graph, node, schema, len(node._outputs))
        result = schema.propagate(ctx)
    except (TypeInferenceError, AttributeSchemaError, ValueError, IndexError, KeyError):
        return None
    return None if result is None else [symbolic.canonical(d) for d in result]
