"""The graph IR: Value, Node and Graph.

- A `Value` is a tensor edge: a graph input, a constant (numpy array, shared not copied) or a
  node output. Values compare by identity. Each value knows its producer and its uses.
- A `Node` applies an op (`domain::op_type`) to inputs (absent optional inputs are `None`)
  and produces outputs. Its attributes are a plain dict.
- A `Graph` holds inputs, constants, nodes in topological order (a linked list: O(1) insert and
  remove) and outputs. Every edit goes through Graph methods, which keep use-lists right.
  Iterating `graph.nodes` while editing is safe: it walks a snapshot and skips removed nodes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ecograph.errors import IRError, UnknownOpError
from ecograph.ir.dtypes import DType
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

if TYPE_CHECKING:
    import networkx

    from ecograph.ir.registry import OpSchema

ONNX_DOMAIN = ""
ECOGRAPH_DOMAIN = "ecograph"


class Use(NamedTuple):
    """One use of a value: `node.inputs[index] is value`."""

    node: Node
    index: int


class Value:
    """A tensor edge. Create values through `Graph` methods, never directly."""

    __slots__ = ("_name", "_type", "_uses", "const_value", "graph", "index", "producer")

    def __init__(
        self,
        graph: Graph,
        name: str,
        type: TensorType,
        producer: Node | None = None,
        index: int = 0,
        const_value: np.ndarray | None = None,
    ) -> None:
        self.graph: Graph | None = graph
        self._name = name
        self._type = type
        self.producer = producer
        self.index = index
        self._uses: list[Use] = []
        self.const_value = const_value

    def __repr__(self) -> str:
        return f"%{self._name}: {self._type}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def type(self) -> TensorType:
        return self._type

    @type.setter
    def type(self, new_type: TensorType) -> None:
        if not isinstance(new_type, TensorType):
            raise IRError(f"type of %{self._name} must be a TensorType, got {new_type!r}")
        self._type = new_type

    @property
    def dtype(self) -> DType:
        return self._type.dtype

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self._type.shape

    @property
    def uses(self) -> tuple[Use, ...]:
        return tuple(self._uses)

    @property
    def users(self) -> list[Node]:
        """The distinct nodes that use this value, in use order."""
        seen: dict[int, Node] = {}
        for use in self._uses:
            seen.setdefault(id(use.node), use.node)
        return list(seen.values())

    @property
    def is_constant(self) -> bool:
        return self.const_value is not None

    @property
    def is_graph_input(self) -> bool:
        return self.graph is not None and any(v is self for v in self.graph._inputs)

    @property
    def is_graph_output(self) -> bool:
        return self.graph is not None and any(v is self for v in self.graph._outputs)

    def has_uses(self) -> bool:
        """True if a node uses this value or it is a graph output."""
        return bool(self._uses) or self.is_graph_output


class Node:
    """An op application. Create nodes with `Graph.add_node`."""

    __slots__ = (
        "_inputs",
        "_next",
        "_outputs",
        "_prev",
        "_removed",
        "attrs",
        "domain",
        "graph",
        "name",
        "op_type",
    )

    def __init__(self, op_type: str, domain: str, name: str, attrs: dict[str, Any]) -> None:
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self.attrs: dict[str, Any] = attrs
        self._inputs: list[Value | None] = []
        self._outputs: list[Value] = []
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        self._removed = False

    def __repr__(self) -> str:
        ins = ", ".join("_" if v is None else f"%{v.name}" for v in self._inputs)
        outs = ", ".join(f"%{v.name}" for v in self._outputs)
        return f"<Node {self.name}: {outs} = {self.qualified_op}({ins})>"

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(self._outputs)

    @property
    def output(self) -> Value:
        """The only output; IRError if the node has several."""
        if len(self._outputs) != 1:
            raise IRError(f"node {self.name} ({self.op_type}) has {len(self._outputs)} outputs")
        return self._outputs[0]

    def input(self, index: int) -> Value | None:
        """Input `index`, or None when absent (optional inputs past the end are absent)."""
        return self._inputs[index] if index < len(self._inputs) else None

    @property
    def schema(self) -> OpSchema:
        from ecograph.ir.registry import get_schema

        return get_schema(self.op_type, self.domain)

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute's value, falling back to the schema default, then `default`."""
        if name in self.attrs:
            return self.attrs[name]
        from ecograph.ir.registry import lookup_schema

        schema = lookup_schema(self.op_type, self.domain)
        if schema is not None and name in schema.attrs:
            spec = schema.attrs[name]
            if not spec.required and spec.default is not None:
                return spec.default
        return default

    @property
    def is_removed(self) -> bool:
        return self._removed

    @property
    def next(self) -> Node | None:
        """The next node in graph order, or None at the end."""
        nxt = self._next
        return None if nxt is None or nxt.graph is None or isinstance(nxt, _Sentinel) else nxt

    @property
    def prev(self) -> Node | None:
        prv = self._prev
        return None if prv is None or isinstance(prv, _Sentinel) else prv


class _Sentinel(Node):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("<sentinel>", "", "<sentinel>", {})
        self._prev = self
        self._next = self


class NodeList(Sequence[Node]):
    """The nodes of a graph in order. Iteration walks a snapshot, skipping removed nodes."""

    def __init__(self, graph: Graph) -> None:
        self._graph = graph

    def __iter__(self) -> Iterator[Node]:
        for node in self._graph._snapshot():
            if not node._removed and node.graph is self._graph:
                yield node

    def __reversed__(self) -> Iterator[Node]:
        for node in reversed(self._graph._snapshot()):
            if not node._removed and node.graph is self._graph:
                yield node

    def __len__(self) -> int:
        return self._graph._num_nodes

    def __getitem__(self, index: int) -> Node:  # type: ignore[override]
        return self._graph._snapshot()[index]

    def __bool__(self) -> bool:
        return self._graph._num_nodes > 0

    def __repr__(self) -> str:
        return f"NodeList({list(self)!r})"


class Graph:
    """A dataflow graph of ONNX-semantics and ecograph ops. See the module docstring."""

    def __init__(
        self,
        name: str = "main",
        *,
        opset_imports: Mapping[str, int] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        from ecograph.ir.registry import DEFAULT_OPSET_IMPORTS

        self.name = name
        self.opset_imports: dict[str, int] = dict(opset_imports or DEFAULT_OPSET_IMPORTS)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._inputs: list[Value] = []
        self._outputs: list[Value] = []
        self._constants: dict[str, Value] = {}
        self._values: dict[str, Value] = {}
        self._node_names: set[str] = set()
        self._sentinel = _Sentinel()
        self._num_nodes = 0
        self._snapshot_cache: list[Node] | None = None
        self._counter = itertools.count()

    # ----------------------------------------------------------------- queries

    def __repr__(self) -> str:
        return (
            f"<Graph {self.name}: {len(self._inputs)} inputs, {len(self._constants)} constants, "
            f"{self._num_nodes} nodes, {len(self._outputs)} outputs>"
        )

    def __str__(self) -> str:
        """The text form (`ecograph.ir.to_text`), once text.py has installed its printer."""
        return repr(self) if _text_printer is None else _text_printer(self)

    @property
    def inputs(self) -> tuple[Value, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(self._outputs)

    @property
    def constants(self) -> Mapping[str, Value]:
        """Constant values by name (read-only view; edit with add/remove_constant)."""
        return dict(self._constants)

    @property
    def nodes(self) -> NodeList:
        return NodeList(self)

    def _snapshot(self) -> list[Node]:
        if self._snapshot_cache is None:
            out: list[Node] = []
            node = self._sentinel._next
            while node is not self._sentinel:
                assert node is not None
                out.append(node)
                node = node._next
            self._snapshot_cache = out
        return self._snapshot_cache

    def value(self, name: str) -> Value:
        """The value called `name`; IRError if there is none."""
        try:
            return self._values[name]
        except KeyError:
            raise IRError(f"graph {self.name} has no value named {name!r}") from None

    def has_value(self, name: str) -> bool:
        return name in self._values

    def values(self) -> Iterator[Value]:
        """All values: inputs, constants, then node outputs in order."""
        yield from self._inputs
        yield from self._constants.values()
        for node in self.nodes:
            yield from node._outputs

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise IRError(f"graph {self.name} has no node named {name!r}")

    def find_nodes(self, op_type: str, domain: str | None = None) -> list[Node]:
        return [
            n for n in self.nodes if n.op_type == op_type and (domain is None or n.domain == domain)
        ]

    # ------------------------------------------------------------------ naming

    def unique_name(self, hint: str) -> str:
        """A value name not yet used in this graph, based on `hint`."""
        hint = hint or "v"
        if hint not in self._values:
            return hint
        while True:
            candidate = f"{hint}_{next(self._counter)}"
            if candidate not in self._values:
                return candidate

    def _unique_node_name(self, hint: str) -> str:
        if hint not in self._node_names:
            return hint
        while True:
            candidate = f"{hint}_{next(self._counter)}"
            if candidate not in self._node_names:
                return candidate

    def _register_value(self, value: Value) -> None:
        if value.name in self._values:
            raise IRError(f"graph {self.name} already has a value named {value.name!r}")
        self._values[value.name] = value

    def rename_value(self, value: Value, new_name: str) -> None:
        self._check_owned(value)
        if new_name == value.name:
            return
        if new_name in self._values:
            raise IRError(f"cannot rename %{value.name}: %{new_name} already exists")
        if value.is_constant:
            self._constants = {
                (new_name if k == value.name else k): v for k, v in self._constants.items()
            }
        del self._values[value.name]
        value._name = new_name
        self._values[new_name] = value

    def rename_node(self, node: Node, new_name: str) -> None:
        if new_name == node.name:
            return
        if new_name in self._node_names:
            raise IRError(f"cannot rename node {node.name}: a node {new_name!r} exists")
        self._node_names.discard(node.name)
        node.name = new_name
        self._node_names.add(new_name)

    # ------------------------------------------------------ inputs and outputs

    def add_input(
        self, name: str, dtype: DType | str, shape: Iterable[Dim] = (), *, index: int | None = None
    ) -> Value:
        """Add a graph input (at the end, or at position `index`)."""
        value = Value(self, name, TensorType(dtype, shape))
        self._register_value(value)
        if index is None:
            self._inputs.append(value)
        else:
            self._inputs.insert(index, value)
        return value

    def remove_input(self, value: Value) -> None:
        """Remove an unused graph input."""
        self._check_owned(value)
        if not value.is_graph_input:
            raise IRError(f"%{value.name} is not a graph input")
        if value.has_uses():
            raise IRError(f"cannot remove graph input %{value.name}: it is still used")
        self._inputs = [v for v in self._inputs if v is not value]
        del self._values[value.name]
        value.graph = None

    def set_outputs(self, values: Sequence[Value]) -> None:
        """Replace the graph outputs."""
        seen: set[int] = set()
        for v in values:
            self._check_owned(v)
            if id(v) in seen:
                raise IRError(f"%{v.name} is listed twice as a graph output")
            seen.add(id(v))
        self._outputs = list(values)

    def add_output(self, value: Value) -> None:
        self.set_outputs([*self._outputs, value])

    # --------------------------------------------------------------- constants

    def add_constant(self, array: Any, name: str | None = None) -> Value:
        """Add a constant. A numpy array is shared, not copied; other data is converted."""
        arr = array if isinstance(array, np.ndarray) else np.asarray(array)
        value = Value(
            self,
            self.unique_name(name or "const"),
            TensorType.of(arr),
            const_value=arr,
        )
        self._register_value(value)
        self._constants[value.name] = value
        return value

    def remove_constant(self, value: Value) -> None:
        """Remove an unused constant."""
        self._check_owned(value)
        if not value.is_constant:
            raise IRError(f"%{value.name} is not a constant")
        if value.has_uses():
            raise IRError(f"cannot remove constant %{value.name}: it is still used")
        del self._constants[value.name]
        del self._values[value.name]
        value.graph = None

    def set_constant_value(self, value: Value, array: np.ndarray) -> None:
        """Replace a constant's array; its type follows the new array."""
        self._check_owned(value)
        if not value.is_constant:
            raise IRError(f"%{value.name} is not a constant")
        value.const_value = array
        value._type = TensorType.of(array)

    # ------------------------------------------------------------------- nodes

    def add_node(
        self,
        op_type: str,
        inputs: Sequence[Value | None] = (),
        attrs: Mapping[str, Any] | None = None,
        *,
        domain: str = ONNX_DOMAIN,
        name: str | None = None,
        num_outputs: int | None = None,
        output_names: Sequence[str] | None = None,
        output_types: Sequence[TensorType] | None = None,
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node, infer its output types (unless given) and insert it.

        It goes at the end, or just before `before` / just after `after`. Output names come
        from `output_names` or are made from the node name.
        """
        from ecograph.ir.registry import infer_node_types, lookup_schema

        for v in inputs:
            if v is not None:
                self._check_owned(v)
        schema = lookup_schema(op_type, domain)
        if schema is None and output_types is None:
            raise UnknownOpError(
                f"op {domain + '::' if domain else ''}{op_type} is not registered; register it "
                "with @ecograph.ir.register_op or pass output_types= explicitly"
            )
        if num_outputs is None:
            if output_names is not None:
                num_outputs = len(output_names)
            elif output_types is not None:
                num_outputs = len(output_types)
            else:
                num_outputs = schema.default_num_outputs if schema is not None else 1
        node = Node(
            op_type,
            domain,
            self._unique_node_name(name or default_node_name(op_type)),
            dict(attrs or {}),
        )
        node._inputs = list(inputs)
        # Inputs past the last present one are dropped: absent trailing optionals.
        while node._inputs and node._inputs[-1] is None:
            node._inputs.pop()
        if output_types is None:
            types = infer_node_types(self, node, num_outputs)
        else:
            types = list(output_types)
            if len(types) != num_outputs:
                raise IRError(f"{num_outputs} outputs but {len(types)} output types")
        if output_names is not None and len(output_names) != num_outputs:
            raise IRError(f"{num_outputs} outputs but {len(output_names)} output names")
        outs: list[Value] = []
        for i, t in enumerate(types):
            oname = (
                output_names[i]
                if output_names is not None
                else self.unique_name(node.name if num_outputs == 1 else f"{node.name}_out{i}")
            )
            value = Value(self, oname, t, producer=node, index=i)
            outs.append(value)
        for v in outs:
            self._register_value(v)
        node._outputs = outs
        self._node_names.add(node.name)
        node.graph = self
        for i, v in enumerate(node._inputs):
            if v is not None:
                v._uses.append(Use(node, i))
        self._link(node, before=before, after=after)
        return node

    def _link(self, node: Node, *, before: Node | None, after: Node | None) -> None:
        if before is not None and after is not None:
            raise IRError("give at most one of before= and after=")
        if before is not None:
            self._check_node(before)
            nxt = before
        elif after is not None:
            self._check_node(after)
            nxt = after._next
        else:
            nxt = self._sentinel
        assert nxt is not None
        prv = nxt._prev
        assert prv is not None
        node._prev, node._next = prv, nxt
        prv._next = node
        nxt._prev = node
        self._num_nodes += 1
        self._snapshot_cache = None

    def _unlink(self, node: Node) -> None:
        prv, nxt = node._prev, node._next
        assert prv is not None and nxt is not None
        prv._next = nxt
        nxt._prev = prv
        self._num_nodes -= 1
        self._snapshot_cache = None

    def move_before(self, node: Node, anchor: Node) -> None:
        """Move an existing node to just before `anchor`."""
        self._check_node(node)
        if node is anchor:
            return
        self._unlink(node)
        self._link(node, before=anchor, after=None)

    def move_after(self, node: Node, anchor: Node) -> None:
        """Move an existing node to just after `anchor`."""
        self._check_node(node)
        if node is anchor:
            return
        self._unlink(node)
        self._link(node, before=None, after=anchor)

    def remove_node(self, node: Node, *, force: bool = False) -> None:
        """Remove a node. Its outputs must be unused (and not graph outputs) unless `force`,
        in which case remaining uses are an error for `verify` to report."""
        self._check_node(node)
        if not force:
            for out in node._outputs:
                if out.has_uses():
                    users = ", ".join(u.node.name for u in out._uses) or "the graph outputs"
                    raise IRError(
                        f"cannot remove node {node.name} ({node.op_type}): output %{out.name} "
                        f"is still used by {users}; replace_all_uses_with first"
                    )
        for i, v in enumerate(node._inputs):
            if v is not None:
                v._uses.remove(Use(node, i))
        self._unlink(node)
        self._node_names.discard(node.name)
        for out in node._outputs:
            self._values.pop(out.name, None)
            out.graph = None
        node.graph = None
        node._removed = True

    def set_node_input(self, node: Node, index: int, value: Value | None) -> None:
        """Make input `index` of `node` be `value` (None: absent). Pads with absent inputs."""
        self._check_node(node)
        if value is not None:
            self._check_owned(value)
        while len(node._inputs) <= index:
            node._inputs.append(None)
        old = node._inputs[index]
        if old is value:
            return
        if old is not None:
            old._uses.remove(Use(node, index))
        node._inputs[index] = value
        if value is not None:
            value._uses.append(Use(node, index))
        while node._inputs and node._inputs[-1] is None:
            node._inputs.pop()

    def set_node_inputs(self, node: Node, values: Sequence[Value | None]) -> None:
        """Replace all inputs of `node`."""
        self._check_node(node)
        for i, v in enumerate(node._inputs):
            if v is not None:
                v._uses.remove(Use(node, i))
        node._inputs = []
        for i, v in enumerate(values):
            self.set_node_input(node, i, v)
        while node._inputs and node._inputs[-1] is None:
            node._inputs.pop()

    def replace_all_uses_with(
        self, old: Value, new: Value, *, include_graph_outputs: bool = True
    ) -> int:
        """Point every use of `old` at `new`; returns how many uses moved.

        Graph outputs move too (unless told not to); `new` then takes over the output slot.
        """
        self._check_owned(old)
        self._check_owned(new)
        if old is new:
            return 0
        count = 0
        for use in list(old._uses):
            self.set_node_input(use.node, use.index, new)
            count += 1
        if include_graph_outputs:
            for i, v in enumerate(self._outputs):
                if v is old:
                    if any(o is new for o in self._outputs):
                        raise IRError(
                            f"cannot replace graph output %{old.name} by %{new.name}: "
                            "it is already a graph output; insert an Identity to keep both"
                        )
                    self._outputs[i] = new
                    count += 1
        return count

    def infer_types(self, node: Node) -> list[TensorType]:
        """Re-run type inference for `node` (does not change its outputs' types)."""
        from ecograph.ir.registry import infer_node_types

        self._check_node(node)
        return infer_node_types(self, node, len(node._outputs))

    def refresh_types(self) -> int:
        """Re-infer every node's output types in order and store them; returns how many
        values changed type. Use after an edit that changes an upstream shape."""
        changed = 0
        for node in self.nodes:
            for value, t in zip(node._outputs, self.infer_types(node), strict=True):
                if value.type != t:
                    value.type = t
                    changed += 1
        return changed

    def sort(self) -> None:
        """Reorder nodes topologically, keeping the current order where it is already valid.
        IRError names a node on a cycle if there is one."""
        order = list(self.nodes)
        position = {id(n): i for i, n in enumerate(order)}
        pending = {id(n): 0 for n in order}
        consumers: dict[int, list[Node]] = {id(n): [] for n in order}
        for n in order:
            producers = {
                id(v.producer) for v in n._inputs if v is not None and v.producer is not None
            }
            producers &= pending.keys()
            pending[id(n)] = len(producers)
            for p in producers:
                consumers[p].append(n)
        import heapq

        ready = [(position[id(n)], n.name, n) for n in order if pending[id(n)] == 0]
        heapq.heapify(ready)
        result: list[Node] = []
        while ready:
            _, _, n = heapq.heappop(ready)
            result.append(n)
            for c in consumers[id(n)]:
                pending[id(c)] -= 1
                if pending[id(c)] == 0:
                    heapq.heappush(ready, (position[id(c)], c.name, c))
        if len(result) != len(order):
            stuck = next(n for n in order if pending[id(n)] > 0)
            raise IRError(f"graph {self.name} has a cycle through node {stuck.name}")
        s = self._sentinel
        s._next = s._prev = s
        self._num_nodes = 0
        for n in result:
            self._link(n, before=None, after=None)

    # ----------------------------------------------------------------- helpers

    def _check_owned(self, value: Value) -> None:
        if not isinstance(value, Value):
            raise IRError(f"expected a Value, got {type(value).__name__}: {value!r}")
        if value.graph is not self:
            where = "a removed value" if value.graph is None else f"graph {value.graph.name}"
            raise IRError(f"%{value.name} belongs to {where}, not to graph {self.name}")

    def _check_node(self, node: Node) -> None:
        if node.graph is not self or node._removed:
            raise IRError(f"node {node.name} is not in graph {self.name}")

    def copy(self) -> Graph:
        """A structural copy: same names, types, attributes and order. Constant arrays are
        shared, not copied."""
        new = Graph(self.name, opset_imports=self.opset_imports, metadata=self.metadata)
        mapping: dict[int, Value] = {}
        for v in self._inputs:
            mapping[id(v)] = new.add_input(v.name, v.dtype, v.shape)
        for v in self._constants.values():
            mapping[id(v)] = new.add_constant(v.const_value, v.name)
        for node in self.nodes:
            copy = new.add_node(
                node.op_type,
                [None if v is None else mapping[id(v)] for v in node.inputs],
                dict(node.attrs),
                domain=node.domain,
                name=node.name,
                output_names=[v.name for v in node.outputs],
                output_types=[v.type for v in node.outputs],
            )
            for old, fresh in zip(node.outputs, copy.outputs, strict=True):
                mapping[id(old)] = fresh
        new.set_outputs([mapping[id(v)] for v in self._outputs])
        return new

    def to_networkx(self) -> networkx.MultiDiGraph:
        """A networkx view for analyses: one graph node per IR node plus one per graph input,
        constant and output; edges carry the value name and input index."""
        import networkx as nx

        g = nx.MultiDiGraph(name=self.name)
        for v in self._inputs:
            g.add_node(f"input:{v.name}", kind="input", value=v)
        for v in self._constants.values():
            g.add_node(f"const:{v.name}", kind="constant", value=v)
        for n in self.nodes:
            g.add_node(n.name, kind="node", node=n, op=n.qualified_op)
        for n in self.nodes:
            for i, v in enumerate(n._inputs):
                if v is not None:
                    g.add_edge(_nx_source(v), n.name, value=v.name, index=i)
        for i, v in enumerate(self._outputs):
            g.add_node(f"output:{i}", kind="output", value=v)
            g.add_edge(_nx_source(v), f"output:{i}", value=v.name, index=i)
        return g


# str(graph) prints the text form, which text.py owns; text.py imports this module, so it
# installs its printer here on import (ecograph.ir imports text.py) instead of this module
# importing text.py back.
_text_printer: Callable[[Graph], str] | None = None


def set_text_printer(printer: Callable[[Graph], str]) -> None:
    """Make `str(graph)` call `printer` (text.py installs `to_text`)."""
    global _text_printer
    _text_printer = printer


def _nx_source(v: Value) -> str:
    if v.producer is not None:
        return v.producer.name
    if v.is_constant:
        return f"const:{v.name}"
    return f"input:{v.name}"


def default_node_name(op_type: str) -> str:
    """A node name hint from its op type: MatMul -> mat_mul."""
    out = []
    for i, ch in enumerate(op_type):
        if ch.isupper() and i and not op_type[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
