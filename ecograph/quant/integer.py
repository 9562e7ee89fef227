"""Lower QDQ MatMul/Conv to integer arithmetic.

    MatMul(DQ(a_q, s_a, z_a), DQ(w_q, s_w, z_w))
        -> Cast(MatMulInteger(a_q, w_q, z_a, z_w)) * (s_a*s_w)
    Conv(DQ(x_q, s_x, z_x), DQ(w_q, s_w, z_w), b)
        -> Cast(ConvInteger(x_q, w_q, z_x, z_w)) * (s_x*s_w) + b

This is exact algebra: (a_q - z_a)·s_a @ (w_q - z_w)·s_w = s_a·s_w · ((a_q - z_a) @ (w_q - z_w))
when s_a is one scalar and s_w is per tensor or per output channel, so the int8 x int8 products
accumulate in int32 and only the final rescale is float. The backend then runs a real integer
kernel (TVM: an int8 matmul with int32 accumulation) instead of simulating quantization in
float. The result differs from the QDQ graph only by float rounding of the rescale, which is
why the pass declares a small tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ecograph.ir import DType, Graph, Node, Value
from ecograph.passes.core import Pass, PassResult
from ecograph.passes.registry import register_pass
from ecograph.passes.utils import replace_value


def _dq_parts(v: Value | None) -> tuple[Value, Value, Value | None, Node] | None:
    """(quantized input, scale, zero point, the DQ node) if `v` is DequantizeLinear's output
    of an 8-bit tensor with no blocking."""
    if v is None or v.producer is None or v.producer.op_type != "DequantizeLinear":
        return None
    dq = v.producer
    if dq.domain or dq.attr("block_size", 0):
        return None
    q, s = dq.input(0), dq.input(1)
    if q is None or s is None or q.dtype not in (DType.INT8, DType.UINT8):
        return None
    return q, s, dq.input(2), dq


def _const_array(v: Value | None) -> np.ndarray | None:
    return None if v is None else v.const_value


def qdq_products(graph: Graph) -> int:
    """How many MatMul / Conv / Linear nodes of `graph` read both operands through
    DequantizeLinear of 8-bit tensors: a model already quantized in QDQ format (ONNX
    Runtime's quantize_static), whose products LowerQDQToInteger can run as integer ones."""
    return sum(
        1
        for n in graph.nodes
        if (n.domain, n.op_type) in _PRODUCTS
        and _dq_parts(n.input(0)) is not None
        and _dq_parts(n.input(1)) is not None
    )


_PRODUCTS = (("", "MatMul"), ("", "Conv"), ("ecograph", "Linear"))


@register_pass
@dataclass
class LowerQDQToInteger(Pass):
    """MatMul(DQ(a_q), DQ(w_q)) -> MatMulInteger(a_q, w_q) * (s_a*s_w); Conv, Linear likewise

    Needs a scalar activation scale/zero point and a constant weight quantized per tensor or
    per output channel; anything else is left in QDQ form with a note saying why.
    """

    name: ClassVar[str] = "lower-qdq-to-integer"
    tolerance: ClassVar[tuple[float, float] | None] = (1e-5, 1e-6)

    def run(self, graph: Graph) -> PassResult:
        count = 0
        notes: list[str] = []
        for node in graph.nodes:
            if (node.domain, node.op_type) not in _PRODUCTS:
                continue
            a, w = _dq_parts(node.input(0)), _dq_parts(node.input(1))
            if a is None or w is None:
                continue
            why = self._check(node, a, w)
            if why:
                notes.append(f"{node.name} ({node.op_type}): {why}")
                continue
            self._rewrite(graph, node, a, w)
            count += 1
        return PassResult(count > 0, {"lowered": count}, notes)

    def _check(self, node: Node, a: tuple, w: tuple) -> str | None:
        aq, as_, az, _ = a
        wq, ws, wz, wdq = w
        if as_.type.rank != 0 or (az is not None and az.type.rank != 0):
            return "activation scale/zero point is not a scalar"
        if not wq.is_constant or not ws.is_constant:
            return "weight is not a constant"
        is_matmul = node.op_type in ("MatMul", "Linear")
        if is_matmul and aq.type.rank < 2:
            return "activation is a vector"
        out_axis = 1 if is_matmul else 0
        if wq.type.rank != (2 if is_matmul else aq.type.rank):
            return "unsupported weight rank"
        if ws.type.rank == 1:
            axis = wdq.attr("axis", 1)
            axis = axis + wq.type.rank if axis < 0 else axis
            if axis != out_axis:
                return f"weight scale runs along axis {axis}, not the output channels"
        elif ws.type.rank != 0:
            return "weight scale has rank > 1"
        if node.op_type == "Conv" and wz is not None:
            zp = _const_array(wz)
            if zp is None or np.any(zp != 0):
                return "ConvInteger takes a per-tensor weight zero point only; need zeros"
        return None

    def _rewrite(self, graph: Graph, node: Node, a: tuple, w: tuple) -> None:
        aq, as_, az, _ = a
        wq, ws, wz, _ = w
        out_t = node.output.type
        ws_arr = np.asarray(ws.const_value, np.float32)
        if node.op_type in ("MatMul", "Linear"):
            integer = graph.add_node(
                "MatMulInteger", [aq, wq, az, wz], name=f"{node.name}_integer", before=node
            ).output
            channel_scale = graph.add_constant(ws_arr, f"{node.name}_wscale")
        else:
            zw = (
                None
                if wz is None
                else graph.add_constant(np.zeros((), wz.dtype.numpy), f"{node.name}_wzero")
            )
            integer = graph.add_node(
                "ConvInteger",
                [aq, wq, az, zw],
                dict(node.attrs),
                name=f"{node.name}_integer",
                before=node,
            ).output
            shape = [1, -1] + [1] * (out_t.rank - 2) if ws_arr.ndim == 1 else []
            channel_scale = graph.add_constant(
                ws_arr.reshape(shape) if shape else ws_arr, f"{node.name}_wscale"
            )
        as_f = as_
        if as_.dtype != DType.FLOAT32:
            as_f = graph.add_node("Cast", [as_], {"to": DType.FLOAT32.onnx}, before=node).output
        scale = graph.add_node("Mul", [as_f, channel_scale], before=node).output
        acc = graph.add_node("Cast", [integer], {"to": DType.FLOAT32.onnx}, before=node).output
        out = graph.add_node("Mul", [acc, scale], before=node).output
        if node.op_type == "Linear" and node.input(2) is not None:
            out = graph.add_node("Add", [out, node.input(2)], before=node).output
        if node.op_type == "Conv" and node.input(2) is not None:
            bias = node.input(2)
            assert bias is not None
            b_shape = graph.add_constant(
                np.array([1, -1] + [1] * (out_t.rank - 2), np.int64), f"{node.name}_bshape"
            )
            b = graph.add_node("Reshape", [bias, b_shape], before=node).output
            out = graph.add_node("Add", [out, b], before=node).output
        if out_t.dtype != DType.FLOAT32:
            out = graph.add_node("Cast", [out], {"to": out_t.dtype.onnx}, before=node).output
        kept = replace_value(graph, node.output, out)  # keeps a graph output's name
        assert kept, f"cannot replace %{node.output.name}"
        for dq_out in (a[3].output, w[3].output):
            if not dq_out.has_uses():
                graph.remove_node(dq_out.producer)  # type: ignore[arg-type]
