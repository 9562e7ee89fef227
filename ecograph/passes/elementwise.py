"""mark-elementwise-chains: record chains of elementwise ops for the backend to fuse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ecograph.ir.graph import Graph, Node
from ecograph.passes.core import Pass, PassResult
from ecograph.passes.registry import register_pass

METADATA_KEY = "ecograph.elementwise_groups"

ELEMENTWISE_OPS = frozenset(
    {
        "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Sin", "Cos", "Tan",
        "Tanh", "Sign", "Round", "Sigmoid", "Relu", "Softsign", "Softplus", "Erf", "Mish",
        "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Gelu", "PRelu",
        "Clip", "Pow", "Add", "Sub", "Mul", "Div", "Max", "Min", "Where", "Cast", "Not",
        "And", "Or", "Xor", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
        "SiLU", "SwiGLU",
    }
)  # fmt: skip


def is_elementwise(node: Node) -> bool:
    return node.domain in ("", "ecograph") and node.op_type in ELEMENTWISE_OPS


@register_pass
@dataclass
class MarkElementwiseChains(Pass):
    """elementwise(elementwise(x)) -> metadata group [names] (the graph itself is unchanged)

    A group is a maximal set of at least `min_size` elementwise nodes connected through
    values with a single user that are not graph outputs, so a backend can compute the
    group in one kernel without materializing the intermediates. Groups are stored in
    `graph.metadata["ecograph.elementwise_groups"]` as lists of node names in graph order.
    """

    name: ClassVar[str] = "mark-elementwise-chains"
    preserves: ClassVar[frozenset[str] | str] = "*"

    min_size: int = 2

    def run(self, graph: Graph) -> PassResult:
        parent: dict[str, str] = {}

        def find(a: str) -> str:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        order: list[str] = []
        for node in graph.nodes:
            if is_elementwise(node):
                parent[node.name] = node.name
                order.append(node.name)
        for node in graph.nodes:
            if not is_elementwise(node):
                continue
            for v in node.inputs:
                if v is None or v.producer is None or not is_elementwise(v.producer):
                    continue
                if v.is_graph_output or len(v.users) != 1:
                    continue
                parent[find(v.producer.name)] = find(node.name)
        groups: dict[str, list[str]] = {}
        for name in order:
            groups.setdefault(find(name), []).append(name)
        marked = [g for g in groups.values() if len(g) >= self.min_size]
        old = graph.metadata.get(METADATA_KEY)
        if (old or []) == marked:
            return PassResult(False)
        if marked:
            graph.metadata[METADATA_KEY] = marked
        else:
            graph.metadata.pop(METADATA_KEY, None)
        return PassResult(True, {"groups": len(marked)})
