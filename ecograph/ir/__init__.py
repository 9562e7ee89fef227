"""ecograph's graph IR: types, graph, op registry, verifier, text form, interpreter, stats.

See docs/ir.md for a guided tour aimed at pass authors.
"""

from __future__ import annotations

from ecograph.ir.builder import GraphBuilder
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import ECOGRAPH_DOMAIN, ONNX_DOMAIN, Graph, Node, Use, Value
from ecograph.ir.interpreter import StagedRun, interpret, run_node
from ecograph.ir.registry import (
    ONNX_OPSET,
    Attr,
    InferContext,
    OpSchema,
    get_schema,
    lookup_schema,
    make_type,
    register_op,
    registered_ops,
    symbolic_value,
)
from ecograph.ir.stats import GraphStats, graph_stats
from ecograph.ir.symbolic import Dim
from ecograph.ir.text import (
    explain_difference,
    graphs_equal,
    parse,
    read_text,
    to_text,
    write_text,
)
from ecograph.ir.types import TensorType
from ecograph.ir.verify import verify

__all__ = [
    "ECOGRAPH_DOMAIN",
    "ONNX_DOMAIN",
    "ONNX_OPSET",
    "Attr",
    "DType",
    "Dim",
    "Graph",
    "GraphBuilder",
    "GraphStats",
    "InferContext",
    "Node",
    "OpSchema",
    "StagedRun",
    "TensorType",
    "Use",
    "Value",
    "explain_difference",
    "get_schema",
    "graph_stats",
    "graphs_equal",
    "interpret",
    "lookup_schema",
    "make_type",
    "parse",
    "read_text",
    "register_op",
    "registered_ops",
    "run_node",
    "symbolic_value",
    "to_text",
    "verify",
    "write_text",
]
