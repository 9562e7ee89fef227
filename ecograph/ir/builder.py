"""GraphBuilder: small graphs in a few readable lines, for tests, docs and passes.

b = GraphBuilder()
x = b.input("x", "float32", ["batch", 16])
w = b.constant(np.ones((16, 4), np.float32), "w")
y = b.op("Relu", b.op("MatMul", x, w))
b.output(y)
graph = b.graph
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Value
from ecograph.ir.symbolic import Dim


class GraphBuilder:
    def __init__(self, name: str = "main", graph: Graph | None = None) -> None:
        self.graph = graph if graph is not None else Graph(name)

    def input(self, name: str, dtype: DType | str, shape: Iterable[Dim] = ()) -> Value:
        return self.graph.add_input(name, dtype, shape)

    def constant(self, array: Any, name: str | None = None) -> Value:
        return self.graph.add_constant(
            np.asarray(array) if not isinstance(array, np.ndarray) else array, name
        )

    def op(
        self,
        op_type: str,
        *inputs: Value | None,
        domain: str = "",
        name: str | None = None,
        num_outputs: int | None = None,
        **attrs: Any,
    ) -> Value:
        """Add a node and return its output (its first output if it has several;
        use `op_multi` for all of them)."""
        node = self.graph.add_node(
            op_type, list(inputs), attrs, domain=domain, name=name, num_outputs=num_outputs
        )
        return node.outputs[0]

    def op_multi(
        self,
        op_type: str,
        *inputs: Value | None,
        num_outputs: int,
        domain: str = "",
        name: str | None = None,
        **attrs: Any,
    ) -> tuple[Value, ...]:
        node = self.graph.add_node(
            op_type, list(inputs), attrs, domain=domain, name=name, num_outputs=num_outputs
        )
        return node.outputs

    def output(self, *values: Value) -> None:
        for v in values:
            self.graph.add_output(v)
