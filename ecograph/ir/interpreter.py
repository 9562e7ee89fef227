"""The reference interpreter: runs a graph node by node with the registry's numpy kernels.

It is the semantic ground truth of the project. It checks what it is given (input names,
dtypes, shapes, consistent symbol bindings) and what every kernel returns (dtype and shape
against the IR's types), so a wrong inference rule or kernel fails loudly at its node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ecograph.errors import InterpreterError
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.registry import get_schema, resolve_attrs
from ecograph.ir.types import TensorType

NodeHook = Callable[[Node, list[np.ndarray]], None]


def _as_array(name: str, data: Any, expected: TensorType) -> np.ndarray:
    if hasattr(data, "detach") and hasattr(data, "numpy"):  # a torch tensor
        data = data.detach().cpu().numpy()
    arr = np.asarray(data)
    if arr.dtype != expected.dtype.numpy:
        if expected.dtype == DType.STRING and arr.dtype.kind in "US":
            return arr.astype(object)
        raise InterpreterError(
            f"input {name!r} has dtype {arr.dtype}; the graph expects {expected.dtype}"
        )
    return arr


def bind_shape(where: str, t: TensorType, shape: tuple[int, ...], env: dict[str, int]) -> None:
    """Check `shape` against type `t`, binding free symbols in `env` (consistently)."""
    if len(shape) != t.rank:
        raise InterpreterError(f"{where} has rank {len(shape)}; expected {t}")
    # Plain symbols first, then expressions that may use them.
    order = sorted(range(t.rank), key=lambda i: not _is_plain_symbol(t.shape[i]))
    for i in order:
        d = t.shape[i]
        actual = shape[i]
        if isinstance(d, int):
            if d != actual:
                raise InterpreterError(f"{where} has shape {list(shape)}; expected {t}")
        elif symbolic.is_symbol_name(d):
            bound = env.setdefault(d, actual)
            if bound != actual:
                raise InterpreterError(
                    f"{where} has shape {list(shape)}: symbol {d!r} is {actual} here but "
                    f"{bound} elsewhere"
                )
        else:
            try:
                expected = symbolic.evaluate(d, env)
            except KeyError:
                continue  # an expression over symbols not bound yet: nothing to check
            if expected != actual:
                raise InterpreterError(
                    f"{where} has shape {list(shape)}; dim {i} should be {d} = {expected}"
                )


def _is_plain_symbol(d: symbolic.Dim) -> bool:
    return isinstance(d, str) and symbolic.is_symbol_name(d)


def interpret(
    graph: Graph,
    inputs: Mapping[str, Any],
    *,
    outputs: list[str] | None = None,
    keep_all: bool = False,
    on_node: NodeHook | None = None,
    check: bool = True,
) -> dict[str, np.ndarray]:
    """Run `graph` on numpy inputs (torch tensors are accepted) and return its outputs by name.

    `outputs` picks values to return by name (any value, not only graph outputs);
    `keep_all=True` returns every value computed; `on_node(node, results)` is called after
    each node (used by the pass manager's differential check and bisection).
    """
    env: dict[str, int] = {}
    values = _bind_inputs(graph, inputs, env)
    for c in graph.constants.values():
        values[id(c)] = c.const_value  # type: ignore[assignment]

    wanted = {id(graph.value(n)) for n in outputs} if outputs else {id(v) for v in graph.outputs}
    last_use: dict[int, Node] = {}
    if not keep_all:
        for node in graph.nodes:
            for v in node.inputs:
                if v is not None:
                    last_use[id(v)] = node
    kept: dict[str, np.ndarray] = {}

    for node in graph.nodes:
        results = run_node(node, [None if v is None else values[id(v)] for v in node.inputs])
        for out, arr in zip(node.outputs, results, strict=True):
            if check:
                _check_result(node, out, arr, env)
            values[id(out)] = arr
            if keep_all:
                kept[out.name] = arr
        if on_node is not None:
            on_node(node, results)
        if not keep_all:
            for v in node.inputs:
                if (
                    v is not None
                    and last_use.get(id(v)) is node
                    and id(v) not in wanted
                    and not v.is_constant
                ):
                    values.pop(id(v), None)

    if keep_all:
        for v in graph.inputs:
            kept.setdefault(v.name, values[id(v)])
    result = {}
    names = outputs if outputs else [v.name for v in graph.outputs]
    for name in names:
        v = graph.value(name)
        result[name] = kept[name] if keep_all and name in kept else values[id(v)]
    if keep_all:
        return {**kept, **result}
    return result


def _bind_inputs(graph: Graph, inputs: Mapping[str, Any], env: dict[str, int]) -> dict[int, Any]:
    """id(graph input) -> its array, checked against the input's type (binding `env`)."""
    values: dict[int, Any] = {}
    given = dict(inputs)
    for v in graph.inputs:
        if v.name not in given:
            raise InterpreterError(
                f"missing input {v.name!r} ({v.type}); graph inputs are "
                f"{[x.name for x in graph.inputs]}"
            )
        arr = _as_array(v.name, given.pop(v.name), v.type)
        bind_shape(f"input {v.name!r}", v.type, arr.shape, env)
        values[id(v)] = arr
    if given:
        raise InterpreterError(
            f"unknown inputs {sorted(given)}; graph inputs are {[x.name for x in graph.inputs]}"
        )
    return values


class StagedRun:
    """Interpret `graph` on `inputs` one stretch at a time, keeping between stretches only the
    values that nodes not run yet read.

    For callers that change the graph as they go: sequential GPTQ quantizes one group of layers,
    then needs the next group's inputs computed with the first group quantized, and a full
    `interpret` per group would run the whole prefix again each time. A node runs once; so the
    graph may change only ahead of the point reached (nodes not run yet, new nodes and
    constants), and a node that reads a value dropped or never computed is an error.
    """

    def __init__(self, graph: Graph, inputs: Mapping[str, Any], *, check: bool = True) -> None:
        self.graph = graph
        self.check = check
        self._env: dict[str, int] = {}
        self._values = _bind_inputs(graph, inputs, self._env)
        self._done: set[int] = set()  # id(node) of the nodes run

    def advance(self, stop: Node | None = None) -> None:
        """Run every node not run yet that comes before `stop` in graph order (every node
        for None)."""
        if stop is not None and stop.graph is not self.graph:
            raise InterpreterError(f"StagedRun: stop node {stop.name} is not in this graph")
        self._run(self._values, self._done, self._env, stop=stop, wanted=set())

    def peek(self, names: list[str]) -> dict[str, np.ndarray]:
        """The values `names`, computed from the point reached without moving it (nodes run
        for them run again at the next `advance`)."""
        wanted = {id(self.graph.value(n)) for n in names}
        values, done, env = dict(self._values), set(self._done), dict(self._env)
        self._run(values, done, env, stop=None, wanted=wanted)
        return {n: values[id(self.graph.value(n))] for n in names}

    def _run(
        self,
        values: dict[int, Any],
        done: set[int],
        env: dict[str, int],
        *,
        stop: Node | None,
        wanted: set[int],
    ) -> None:
        """Run nodes not in `done` up to `stop` (or until every `wanted` value is there),
        dropping each value once every node that reads it has run."""
        for node in self.graph.nodes:
            if node is stop or (wanted and wanted.issubset(values)):
                return
            if id(node) in done:
                continue
            args = [self._arg(node, v, values) for v in node.inputs]
            results = run_node(node, args)
            for out, arr in zip(node.outputs, results, strict=True):
                if self.check:
                    _check_result(node, out, arr, env)
                values[id(out)] = arr
            done.add(id(node))
            for v in node.inputs:
                if (
                    v is not None
                    and not v.is_constant
                    and id(v) not in wanted
                    and not v.is_graph_output
                    and all(id(u) in done for u in v.users)
                ):
                    values.pop(id(v), None)

    @staticmethod
    def _arg(node: Node, v: Value | None, values: dict[int, Any]) -> Any:
        if v is None:
            return None
        if v.is_constant:
            return v.const_value
        if id(v) not in values:
            raise InterpreterError(
                f"StagedRun: node {node.name} ({node.qualified_op}) reads %{v.name}, which was "
                "dropped or never computed: the graph changed behind the point reached (only "
                "nodes not run yet may change)"
            )
        return values[id(v)]


def run_node(node: Node, args: list[np.ndarray | None]) -> list[np.ndarray]:
    """Run one node's reference kernel; errors name the node."""
    schema = get_schema(node.op_type, node.domain)
    attrs = resolve_attrs(schema, node)
    if schema.wants_num_outputs:
        attrs["_num_outputs"] = len(node.outputs)
    try:
        out = schema.kernel(*args, **attrs)
    except InterpreterError:
        raise
    except Exception as exc:
        shapes = ", ".join("_" if a is None else f"{a.dtype}{list(a.shape)}" for a in args)
        raise InterpreterError(
            f"node {node.name} ({node.qualified_op}) failed on inputs ({shapes}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    results = list(out) if isinstance(out, (tuple, list)) else [out]
    if len(results) < len(node.outputs):
        raise InterpreterError(
            f"node {node.name} ({node.qualified_op}) kernel returned {len(results)} results for "
            f"{len(node.outputs)} outputs"
        )
    return [np.asarray(r) for r in results[: len(node.outputs)]]


def _check_result(node: Node, value: Value, arr: np.ndarray, env: dict[str, int]) -> None:
    t = value.type
    if arr.dtype != t.dtype.numpy and not (t.dtype == DType.STRING and arr.dtype.kind in "OUS"):
        raise InterpreterError(
            f"node {node.name} ({node.qualified_op}) output %{value.name} has dtype {arr.dtype}; "
            f"its type says {t} (kernel and type inference disagree)"
        )
    bind_shape(f"node {node.name} ({node.qualified_op}) output %{value.name}", t, arr.shape, env)
