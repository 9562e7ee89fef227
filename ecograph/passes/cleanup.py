"""Cleanup passes: prune dead and redundant nodes and edges.

- eliminate-dead-code: nodes and constants nobody uses (graph inputs only when asked)
- eliminate-common-subexpressions: identical nodes on identical inputs (never random ops)
- fold-constants: nodes whose inputs are all constant, run through their reference kernel
- fold-shapes: shape arithmetic known statically (Shape->Gather->...->Reshape) -> constants

Both folding passes refine the declared types of the values downstream of what they folded:
a Pad whose pads were computed (and so declared with made-up dims) has static dims once its
pads are a constant, and the verifier expects declared types to say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ecograph.errors import EcographError
from ecograph.ir import symbolic
from ecograph.ir.folding import fold_limit_reason, fold_node, is_foldable_op
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.interpreter import run_node
from ecograph.ir.registry import (
    fresh_symbol_prefix,
    input_symbols_of,
    lookup_schema,
    made_up,
    symbolic_value,
)
from ecograph.ir.types import TensorType
from ecograph.passes.core import Pass, PassResult
from ecograph.passes.registry import register_pass

log = logging.getLogger("ecograph.passes")


@register_pass
@dataclass
class EliminateDeadCode(Pass):
    """unused(node) -> removed; unused constants -> removed (unused inputs if asked).

    A node is dead when none of its outputs is used or a graph output. Walking backwards
    removes whole dead chains in one run.
    """

    name: ClassVar[str] = "eliminate-dead-code"
    provides: ClassVar[frozenset[str]] = frozenset({"no-dead-code"})
    preserves: ClassVar[frozenset[str] | str] = frozenset({"no-dead-code"})

    remove_unused_inputs: bool = False

    def run(self, graph: Graph) -> PassResult:
        nodes = constants = inputs = 0
        for node in reversed(graph.nodes):
            if not any(out.has_uses() for out in node.outputs):
                graph.remove_node(node)
                nodes += 1
        for value in list(graph.constants.values()):
            if not value.has_uses():
                graph.remove_constant(value)
                constants += 1
        if self.remove_unused_inputs:
            for value in list(graph.inputs):
                if not value.has_uses():
                    graph.remove_input(value)
                    inputs += 1
        stats = {k: v for k, v in (("nodes", nodes), ("constants", constants), ("inputs", inputs))}
        return PassResult(bool(nodes or constants or inputs), {k: v for k, v in stats.items() if v})


def _attr_key(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_attr_key(v) for v in value)
    if isinstance(value, float) and value != value:
        return ("nan",)
    return value


def _const_key(value: Value) -> tuple[Any, ...] | None:
    arr = value.const_value
    assert arr is not None
    if arr.dtype == object:
        return None
    return (str(arr.dtype), arr.shape, np.ascontiguousarray(arr).tobytes())


@register_pass
@dataclass
class EliminateCommonSubexpressions(Pass):
    """op(a, b) ... op(a, b) -> one op(a, b); equal constants -> one constant.

    Nodes merge only when op, domain, attributes, inputs and output count are identical and
    the op is deterministic (`OpSchema.random` ops never merge). Constants merge when dtype,
    shape and bytes are equal and they are at most `max_constant_bytes` (comparing big
    weights byte by byte costs more than it finds).
    """

    name: ClassVar[str] = "eliminate-common-subexpressions"
    preserves: ClassVar[frozenset[str] | str] = frozenset()

    max_constant_bytes: int = 1 << 16

    def run(self, graph: Graph) -> PassResult:
        merged_consts = self._merge_constants(graph)
        seen: dict[tuple[Any, ...], Node] = {}
        merged = 0
        for node in graph.nodes:
            schema = lookup_schema(node.op_type, node.domain)
            if schema is None or schema.random:
                continue
            key = (
                node.domain,
                node.op_type,
                tuple(id(v) if v is not None else None for v in node.inputs),
                tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items() if v is not None)),
                len(node.outputs),
            )
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            pairs = list(zip(node.outputs, first.outputs, strict=True))
            if not all(a.type == b.type for a, b in pairs):
                continue
            dup_named = any(a.is_graph_output for a, _ in pairs)
            if dup_named and any(b.is_graph_output for _, b in pairs):
                continue  # two named outputs must stay two values
            if dup_named:
                # The duplicate's output names are the interface: keep the duplicate, moved
                # up to where the first one was (its inputs are the same, so it is defined).
                graph.move_before(node, first)
                node, first = first, node
                seen[key] = first
                pairs = list(zip(node.outputs, first.outputs, strict=True))
            for dup, keep in pairs:
                graph.replace_all_uses_with(dup, keep)
            graph.remove_node(node)
            merged += 1
        stats = {k: v for k, v in (("nodes", merged), ("constants", merged_consts)) if v}
        return PassResult(bool(merged or merged_consts), stats)

    def _merge_constants(self, graph: Graph) -> int:
        seen: dict[tuple[Any, ...], Value] = {}
        merged = 0
        for value in list(graph.constants.values()):
            if (value.type.nbytes() or 0) > self.max_constant_bytes or value.is_graph_output:
                continue
            key = _const_key(value)
            if key is None:
                continue
            first = seen.setdefault(key, value)
            if first is value:
                continue
            graph.replace_all_uses_with(value, first, include_graph_outputs=False)
            graph.remove_constant(value)
            merged += 1
        return merged


@register_pass
@dataclass
class FoldConstants(Pass):
    """op(const, const) -> const, computed by the op's reference kernel.

    The folded array is exactly what running the node would produce (same kernel, same
    dtype), so folding never changes results: `ecograph.ir.folding.fold_node` decides and
    computes (the TVM backend's lowering-time folding uses it too). Outputs larger than
    `max_bytes` that are also larger than their inputs are skipped (folding would grow the
    model); each skip is logged with its reason. Random ops are never folded.
    """

    name: ClassVar[str] = "fold-constants"
    provides: ClassVar[frozenset[str]] = frozenset({"constants-folded"})

    max_bytes: int = 1 << 20

    def run(self, graph: Graph) -> PassResult:
        folded = 0
        notes: list[str] = []
        refiner = _TypeRefiner(graph)
        for node in graph.nodes:
            refiner.visit(node)
            if not all(v is None or v.is_constant for v in node.inputs):
                continue
            if not is_foldable_op(node):
                continue
            args = [None if v is None else v.const_value for v in node.inputs]
            too_big = fold_limit_reason(node, args, max_bytes=self.max_bytes)
            if too_big is not None:
                note = f"skipped {node.name} ({node.op_type}): {too_big}"
                log.info("fold-constants: %s", note)
                notes.append(note)
                continue
            if not any(o.has_uses() for o in node.outputs):
                continue  # dead: dead-code elimination's job
            if any(o.is_graph_output for o in node.outputs):
                continue  # a graph output keeps its producer and name
            results = fold_node(node, args, max_bytes=self.max_bytes)
            if results is None or not _results_fit(node, results):
                notes.append(f"skipped {node.name}: kernel result disagrees with its type")
                continue
            renames = []
            # The kernel's array is kept as is (a view stays a view): downstream kernels such
            # as MatMul may round differently on another memory layout, and folding must be
            # bit-identical to running the graph unfolded.
            for out, arr in zip(node.outputs, results, strict=True):
                const = graph.add_constant(arr, graph.unique_name(out.name))
                graph.replace_all_uses_with(out, const)
                renames.append((const, out.name))
            graph.remove_node(node)
            for const, name in renames:
                graph.rename_value(const, name)  # the folded value keeps its name
                refiner.changed(const)
            folded += 1
        stats = {k: v for k, v in (("folded", folded), ("types_refined", refiner.refined)) if v}
        return PassResult(folded > 0, stats, notes)


class _TypeRefiner:
    """Re-infers the types of nodes downstream of folded values, in topological order, and
    stores them where inference now knows more than the declared type: a made-up dim (a
    symbol no graph input has, minted for a dim that depended on a computed value) or a
    symbolic dim that is now a number. Any other disagreement is left for the verifier to
    report: it is a bug, not something to paper over."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.input_symbols = input_symbols_of(graph)
        self.dirty: set[int] = set()
        self.refined = 0

    def changed(self, value: Value) -> None:
        self.dirty.add(id(value))

    def visit(self, node: Node) -> None:
        """Refine `node`'s output types if one of its inputs changed (call in order)."""
        if not any(v is not None and id(v) in self.dirty for v in node.inputs):
            return
        try:
            inferred = self.graph.infer_types(node)
        except EcographError:
            return  # the verifier names the node and the reason
        for out, t in zip(node.outputs, inferred, strict=True):
            better = self._refined(out.type, t, fresh_symbol_prefix(node.name))
            if better is not None and better != out.type:
                out.type = better
                self.dirty.add(id(out))
                self.refined += 1

    def _refined(self, declared: TensorType, inferred: TensorType, fresh: str) -> TensorType | None:
        if declared.dtype != inferred.dtype or declared.rank != inferred.rank:
            return None
        dims: list[symbolic.Dim] = []
        for d, i in zip(declared.shape, inferred.shape, strict=True):
            if d == i or made_up(i, fresh, self.input_symbols):
                dims.append(d)  # the same, or inference still has to make this dim up
            elif isinstance(d, str) and (
                isinstance(i, int) or not symbolic.symbols(d) <= self.input_symbols
            ):
                dims.append(i)  # now a number, or the declared dim was made up
            else:
                return None
        return TensorType(declared.dtype, dims)


def _known_array(value: Value) -> np.ndarray | None:
    if value.const_value is not None:
        return value.const_value
    sym = symbolic_value(value)
    if sym is None or not all(isinstance(d, int) for d in sym):
        return None
    return np.array(sym, dtype=value.dtype.numpy).reshape(value.type.static_shape())


def _run_on_known_inputs(node: Node) -> np.ndarray | None:
    """The node's single output computed by its kernel from statically known inputs."""
    args: list[np.ndarray | None] = []
    for v in node.inputs:
        if v is None:
            args.append(None)
            continue
        arr = _known_array(v)
        if arr is None:
            return None
        args.append(arr)
    results = run_node(node, args)  # type: ignore[arg-type]
    if not _results_fit(node, results):
        return None
    return results[0]


def _results_fit(node: Node, results: list[np.ndarray]) -> bool:
    for out, arr in zip(node.outputs, results, strict=True):
        if arr.dtype != out.dtype.numpy or not out.type.is_static:
            return False
        if tuple(arr.shape) != out.type.static_shape():
            return False
    return True


@register_pass
@dataclass
class FoldShapes(Pass):
    """Shape->Gather->Unsqueeze->Concat (static) -> const; Reshape(x, sym) -> Reshape(x, const)

    Uses `symbolic_value`: a small integer tensor whose elements are known ints becomes a
    constant. A Reshape whose target is known symbolically gets a constant target where each
    symbolic dim is either copied from the same input axis (0) or is the single inferred
    dim (-1).
    """

    name: ClassVar[str] = "fold-shapes"
    provides: ClassVar[frozenset[str]] = frozenset({"shapes-folded"})

    def run(self, graph: Graph) -> PassResult:
        folded = reshapes = 0
        refiner = _TypeRefiner(graph)
        for node in graph.nodes:
            refiner.visit(node)
            if node.op_type == "Reshape" and node.domain == "":
                if self._fold_reshape_target(graph, node):
                    reshapes += 1
                continue
            if len(node.outputs) != 1 or node.domain != "":
                continue
            out = node.outputs[0]
            if out.is_graph_output or not out.has_uses():
                continue
            if all(v is None or v.is_constant for v in node.inputs):
                continue  # fold-constants' job, with its size cap
            sym = symbolic_value(out)
            if sym is None or not all(isinstance(d, int) for d in sym):
                continue
            arr = np.array(sym, dtype=out.dtype.numpy).reshape(out.type.static_shape())
            if node.op_type not in ("Shape", "Size"):
                # Run the kernel on the known inputs: the folded value is then exactly what
                # the node computes, whatever the symbolic rule says.
                computed = _run_on_known_inputs(node)
                if computed is None or not np.array_equal(computed, arr):
                    continue
                arr = computed
            const = graph.add_constant(arr, graph.unique_name(out.name))
            graph.replace_all_uses_with(out, const)
            graph.remove_node(node)
            graph.rename_value(const, out.name)
            refiner.changed(const)
            folded += 1
        counts = (("values", folded), ("reshapes", reshapes), ("types_refined", refiner.refined))
        stats = {k: v for k, v in counts if v}
        return PassResult(bool(folded or reshapes), stats)

    def _fold_reshape_target(self, graph: Graph, node: Node) -> bool:
        data, target = node.input(0), node.input(1)
        if data is None or target is None or target.is_constant:
            return False
        sym = symbolic_value(target)
        if sym is None:
            return False
        allowzero = node.attr("allowzero", 0)
        dims: list[int] = []
        inferred = 0
        for i, d in enumerate(sym):
            if isinstance(d, int):
                if d == 0 and not allowzero:
                    dims.append(0)  # already "copy this axis" in the original
                    continue
                if d < 0:
                    inferred += 1
                dims.append(d)
            elif i < data.type.rank and symbolic.canonical(data.shape[i]) == d and not allowzero:
                dims.append(0)
            else:
                inferred += 1
                dims.append(-1)
        if inferred > 1:
            return False
        const = graph.add_constant(
            np.array(dims, np.int64), graph.unique_name(f"{node.name}_shape")
        )
        graph.set_node_input(node, 1, const)
        if graph.infer_types(node)[0] != node.outputs[0].type:
            graph.set_node_input(node, 1, target)  # inference would lose information: undo
            graph.remove_constant(const)
            return False
        producer = target.producer
        if producer is not None and not any(o.has_uses() for o in producer.outputs):
            graph.remove_node(producer)
        return True


__all__ = [
    "EliminateCommonSubexpressions",
    "EliminateDeadCode",
    "FoldConstants",
    "FoldShapes",
]
