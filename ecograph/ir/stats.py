"""Graph statistics: op histogram, parameters, bytes by dtype, FLOPs/MACs estimate.

FLOPs count a multiply-add as two operations (MACs count it once). Each op's MAC rule is a fact
of its schema (`OpSchema.macs`, registered with the op): the contractions (MatMul, Gemm, Conv,
ConvTranspose, attention and their integer / fused forms) have one; elementwise ops do not and
count 0 (they are memory-bound and small next to the contractions). With symbolic dims, pass
`bindings={"batch": 1, ...}`; unbound symbols make the estimate None rather than a guess.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ecograph.ir.graph import Graph, Node
from ecograph.ir.registry import lookup_schema


@dataclass
class GraphStats:
    num_nodes: int
    num_inputs: int
    num_outputs: int
    op_histogram: dict[str, int]
    num_parameters: int
    parameter_bytes: int
    bytes_by_dtype: dict[str, int]
    macs: int | None
    flops: int | None
    unbound_symbols: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few readable lines."""
        lines = [
            f"nodes: {self.num_nodes}  inputs: {self.num_inputs}  outputs: {self.num_outputs}",
            f"parameters: {self.num_parameters:,} ({human_bytes(self.parameter_bytes)})",
            "bytes by dtype: "
            + (
                ", ".join(f"{k} {human_bytes(v)}" for k, v in sorted(self.bytes_by_dtype.items()))
                or "none"
            ),
            "MACs: "
            + (f"{self.macs:,}" if self.macs is not None else "unknown")
            + "  FLOPs: "
            + (f"{self.flops:,}" if self.flops is not None else "unknown")
            + (
                f" (unbound symbols: {', '.join(self.unbound_symbols)})"
                if self.unbound_symbols
                else ""
            ),
            "ops: " + ", ".join(f"{op} x{n}" for op, n in self.op_histogram.items()),
        ]
        return "\n".join(lines)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{n} B"


def node_macs(node: Node, bindings: Mapping[str, int]) -> int | None:
    """Multiply-accumulates of one node, 0 for ops not counted, None if a dim is unbound."""
    schema = lookup_schema(node.op_type, node.domain)
    if schema is None or schema.macs is None:
        return 0
    try:
        return schema.macs(node, bindings)
    except KeyError:  # symbolic.evaluate: a symbol with no binding
        return None


def graph_stats(graph: Graph, bindings: Mapping[str, int] | None = None) -> GraphStats:
    bindings = dict(bindings or {})
    hist: Counter[str] = Counter(n.qualified_op for n in graph.nodes)
    params = 0
    nbytes = 0
    by_dtype: Counter[str] = Counter()
    for v in graph.constants.values():
        arr = v.const_value
        assert arr is not None
        size = int(arr.size)
        b = v.type.nbytes() or 0
        params += size
        nbytes += b
        by_dtype[v.dtype.value] += b
    macs: int | None = 0
    unbound: set[str] = set()
    for node in graph.nodes:
        m = node_macs(node, bindings)
        if m is None:
            for v in node.outputs:
                unbound |= v.type.symbols - bindings.keys()
            for v in node.inputs:
                if v is not None:
                    unbound |= v.type.symbols - bindings.keys()
            macs = None
        elif macs is not None:
            macs += m
    return GraphStats(
        num_nodes=len(graph.nodes),
        num_inputs=len(graph.inputs),
        num_outputs=len(graph.outputs),
        op_histogram=dict(hist.most_common()),
        num_parameters=params,
        parameter_bytes=nbytes,
        bytes_by_dtype=dict(by_dtype),
        macs=macs,
        flops=None if macs is None else 2 * macs,
        unbound_symbols=sorted(unbound),
    )
