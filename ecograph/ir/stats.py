"""Graph statistics: op histogram, parameters, bytes by dtype, FLOPs/MACs estimate.

FLOPs count a multiply-add as two operations (MACs count it once) for MatMul, Gemm, Conv,
ConvTranspose and attention ops; elementwise ops are not counted (they are memory-bound and
small next to the contractions). With symbolic dims, pass `bindings={"batch": 1, ...}`;
unbound symbols make the estimate None rather than a guess.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ecograph.ir import symbolic
from ecograph.ir.graph import Graph, Node
from ecograph.ir.symbolic import Dim


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

    def ev(d: Dim) -> int:
        return symbolic.evaluate(d, bindings)

    try:
        if node.op_type in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "Linear"):
            out = node.outputs[0].type
            a = node.inputs[0]
            assert a is not None
            k = a.shape[-1]
            if node.op_type == "Gemm" and node.attr("transA", 0):
                k = a.shape[0]
            if node.op_type == "QLinearMatMul":
                k = a.shape[-1]
            return ev(symbolic.product(out.shape)) * ev(k)
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            w = node.inputs[3 if node.op_type == "QLinearConv" else 1]
            assert w is not None
            out = node.outputs[0].type
            per_output = symbolic.product(w.shape[1:])  # (C_in / group) * kernel
            return ev(symbolic.product(out.shape)) * ev(per_output)
        if node.op_type == "ConvTranspose":
            x, w = node.inputs[0], node.inputs[1]
            assert x is not None and w is not None
            return ev(symbolic.product(x.shape)) * ev(symbolic.product(w.shape[1:]))
        if node.op_type == "Attention":
            q, k = node.inputs[0], node.inputs[1]
            assert q is not None and k is not None
            # Q·Kᵀ and P·V: 2 · (elements of Q) · kv_seq, for 4-D (B, H, S, D) and for 3-D
            # (B, S, H·D) inputs alike.
            if q.type.rank == 4 and k.type.rank == 4:
                return 2 * ev(symbolic.product(q.shape)) * ev(k.shape[2])
            if q.type.rank == 3 and k.type.rank == 3:
                return 2 * ev(symbolic.product(q.shape)) * ev(k.shape[1])
            return None
    except KeyError:
        return None
    return 0


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
