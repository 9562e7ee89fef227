"""verify(graph): the IR's invariants, each a named rule with a message that names the node.

Rules: `ssa` (one producer per value, unique names), `ownership` (every input belongs to the
graph), `use-list` (use-lists match node inputs), `topological-order`, `known-op`,
`attributes`, `arity`, `types` (stored types equal inference), `outputs` (graph outputs exist
and are reachable from inputs or constants), `constants`.
"""

from __future__ import annotations

from ecograph.errors import (
    AttributeSchemaError,
    TypeInferenceError,
    UnknownOpError,
    VerificationError,
)
from ecograph.ir.graph import Graph, Node, Use, Value
from ecograph.ir.registry import (
    fresh_symbol_prefix,
    infer_node_types,
    input_symbols_of,
    lookup_schema,
    made_up,
    resolve_attrs,
)
from ecograph.ir.types import TensorType


def verify(graph: Graph, *, check_types: bool = True) -> None:
    """Raise VerificationError for the first broken rule; return None if the graph is valid."""
    defined: set[int] = set()
    names: dict[str, Value] = {}

    def define(v: Value, where: str) -> None:
        if id(v) in defined:
            raise VerificationError("ssa", where, f"value %{v.name} is defined twice")
        other = names.get(v.name)
        if other is not None and other is not v:
            raise VerificationError("ssa", where, f"two values are named %{v.name}")
        if v.graph is not graph:
            raise VerificationError("ownership", where, f"%{v.name} belongs to another graph")
        defined.add(id(v))
        names[v.name] = v

    for v in graph.inputs:
        if v.producer is not None or v.const_value is not None:
            raise VerificationError("ssa", f"input %{v.name}", "a graph input has a producer")
        define(v, f"input %{v.name}")
    for v in graph.constants.values():
        if v.const_value is None or v.producer is not None:
            raise VerificationError("constants", f"constant %{v.name}", "has no array")
        if TensorType.of(v.const_value) != v.type:
            raise VerificationError(
                "constants",
                f"constant %{v.name}",
                f"type {v.type} does not match its array {TensorType.of(v.const_value)}",
            )
        define(v, f"constant %{v.name}")

    node_names: set[str] = set()
    input_symbols = input_symbols_of(graph)
    for node in graph.nodes:
        where = f"node {node.name} ({node.qualified_op})"
        if node.name in node_names:
            raise VerificationError("ssa", where, f"two nodes are named {node.name!r}")
        node_names.add(node.name)
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if v.graph is not graph:
                raise VerificationError(
                    "ownership", where, f"input {i} %{v.name} is not a value of this graph"
                )
            if id(v) not in defined:
                raise VerificationError(
                    "topological-order",
                    where,
                    f"input {i} %{v.name} is used before it is defined "
                    "(call graph.sort() after reordering edits)",
                )
            if Use(node, i) not in v._uses:
                raise VerificationError("use-list", where, f"%{v.name} does not list this use")
        _check_node(graph, node, where, check_types, input_symbols)
        for j, out in enumerate(node.outputs):
            if out.producer is not node or out.index != j:
                raise VerificationError("ssa", where, f"output %{out.name} names another producer")
            define(out, where)

    for v in names.values():
        for use in v._uses:
            if use.node.graph is not graph or use.node.input(use.index) is not v:
                raise VerificationError(
                    "use-list",
                    f"value %{v.name}",
                    f"lists a stale use by {use.node.name} input {use.index}",
                )

    for i, v in enumerate(graph.outputs):
        if id(v) not in defined:
            raise VerificationError(
                "outputs", f"graph output {i}", f"%{v.name} is not defined in the graph"
            )
    _check_reachable(graph)


def _check_node(
    graph: Graph, node: Node, where: str, check_types: bool, input_symbols: set[str]
) -> None:
    schema = lookup_schema(node.op_type, node.domain)
    if schema is None:
        raise VerificationError(
            "known-op", where, "op is not registered (see docs/ir.md, 'Registering an op')"
        )
    try:
        resolve_attrs(schema, node)
    except AttributeSchemaError as exc:
        raise VerificationError("attributes", where, str(exc)) from None
    low, high = schema.output_count_range()
    n_out = len(node.outputs)
    if n_out < low or (high is not None and n_out > high):
        raise VerificationError("arity", where, f"has {n_out} outputs; the op allows {low}-{high}")
    if not check_types:
        return
    try:
        inferred = infer_node_types(graph, node, n_out)
    except (TypeInferenceError, UnknownOpError) as exc:
        rule = "arity" if "inputs; expected" in str(exc) or "is absent" in str(exc) else "types"
        raise VerificationError(rule, where, str(exc)) from None
    for out, t in zip(node.outputs, inferred, strict=True):
        if not _compatible(out.type, t, node, input_symbols):
            raise VerificationError(
                "types",
                where,
                f"output %{out.name} is declared {out.type} but inference gives {t}",
            )


def _compatible(
    declared: TensorType, inferred: TensorType, node: Node, input_symbols: set[str]
) -> bool:
    """Equal, except where inference made up a symbol for a dim it cannot know, here or
    upstream: a declared dim there (torch's, which knew it) is a refinement, not a conflict
    (MPT's ALiBi bias sliced by Max-computed bounds, then added to the scores)."""
    if declared.dtype != inferred.dtype or declared.rank != inferred.rank:
        return False
    fresh = fresh_symbol_prefix(node.name)
    return all(
        d == i or made_up(i, fresh, input_symbols)
        for d, i in zip(declared.shape, inferred.shape, strict=True)
    )


def _check_reachable(graph: Graph) -> None:
    if not graph.outputs:
        raise VerificationError("outputs", f"graph {graph.name}", "the graph has no outputs")
