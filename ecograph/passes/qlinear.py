"""Expand ONNX Runtime's quantized contrib ops (com.microsoft QLinearAdd, QLinearConcat, QGemm,
...; `ecograph.ir.ops.ms_qlinear`) into the standard ONNX ops that define them.

Backends run this on their copy of a graph (the TVM driver's `BACKEND_PASSES`), so a model
quantized by ONNX Runtime in QOperator format compiles with the lowerings of
DequantizeLinear, the float op, QuantizeLinear and (for QGemm) MatMulInteger. The graph a
user holds keeps the contrib ops, which ONNX Runtime runs from ecograph's ONNX export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ecograph.ir.graph import Graph
from ecograph.ir.ops.ms_qlinear import EXPANSIONS, Emitter
from ecograph.ir.registry import get_schema, resolve_attrs
from ecograph.passes.core import Pass, PassResult
from ecograph.passes.registry import register_pass
from ecograph.passes.utils import can_replace, replace_value


@register_pass
@dataclass
class ExpandQLinear(Pass):
    """com.microsoft::QLinearAdd / QGemm / ... -> DequantizeLinear, the float op, QuantizeLinear

    Exact: each op's reference kernel is its expansion run by the interpreter.
    """

    name: ClassVar[str] = "expand-qlinear"
    tolerance: ClassVar[None] = None

    def run(self, graph: Graph) -> PassResult:
        count = 0
        for node in list(graph.nodes):
            expand = EXPANSIONS.get((node.domain, node.op_type))
            if expand is None:
                continue
            attrs = resolve_attrs(get_schema(node.op_type, node.domain), node)
            out = expand(Emitter(graph, node.name, before=node), node.inputs, attrs)
            if not can_replace(node.output, out):  # a graph output the emitter computed
                out = graph.add_node("Identity", [out], before=node).output
            replace_value(graph, node.output, out)
            count += 1
        return PassResult(count > 0, {"expanded": count})
