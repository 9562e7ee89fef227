"""Register ONNX ops whose kernel delegates to onnx.reference and whose types come from ONNX's
own shape inference.

Used for the less common ops (Resize, GridSample, DFT, ...) where onnx.reference is
exact and re-implementing it would only add risk; the common ops keep their own numpy kernels.
The op's inputs, outputs and attributes are read from the ONNX schema at `ONNX_OPSET`, so the
registered schema cannot drift from ONNX's. Each op registered here is checked against ONNX's
node tests by `python -m ecograph.conformance`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.registry import ONNX_OPSET, Attr, InferContext, MacsFn, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

_AT = onnx.defs.OpSchema.AttrType
_ATTR_KIND: dict[Any, str] = {
    _AT.INT: "int",
    _AT.FLOAT: "float",
    _AT.STRING: "string",
    _AT.INTS: "ints",
    _AT.FLOATS: "floats",
    _AT.STRINGS: "strings",
    _AT.TENSOR: "tensor",
}


def _port(p: onnx.defs.OpSchema.FormalParameter) -> str:
    if p.option == onnx.defs.OpSchema.FormalParameterOption.Optional:
        return f"{p.name}?"
    if p.option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return f"{p.name}*"
    return p.name


def _default(attr: onnx.defs.OpSchema.Attribute) -> Any:
    if attr.required:
        return Attr(_ATTR_KIND[attr.type])
    proto = attr.default_value
    if proto.type == onnx.AttributeProto.UNDEFINED or not proto.name:
        return Attr(_ATTR_KIND[attr.type], None)
    value = helper.get_attribute_value(proto)
    if isinstance(value, bytes):
        value = value.decode()
    elif isinstance(value, list):
        value = [v.decode() if isinstance(v, bytes) else v for v in value]
    elif isinstance(value, onnx.TensorProto):
        value = numpy_helper.to_array(value)
    return Attr(_ATTR_KIND[attr.type], value)


def schema_signature(op_type: str) -> tuple[list[str], list[str], dict[str, Attr]]:
    """Inputs, outputs and attributes of an ONNX op at ONNX_OPSET, in registry form."""
    schema = onnx.defs.get_schema(op_type, ONNX_OPSET)
    attrs = {name: _default(a) for name, a in schema.attributes.items() if a.type in _ATTR_KIND}
    return [_port(p) for p in schema.inputs], [_port(p) for p in schema.outputs], attrs


def _node_proto(op_type: str, n_inputs: Sequence[bool], n_outputs: int, attrs: dict) -> Any:
    node = helper.make_node(
        op_type,
        [f"i{i}" if present else "" for i, present in enumerate(n_inputs)],
        [f"o{i}" for i in range(n_outputs)],
    )
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            value = numpy_helper.from_array(value)
        node.attribute.append(helper.make_attribute(key, value))
    return node


@functools.cache
def _reference_class(op_type: str) -> type:
    from onnx.reference.ops import load_op

    return load_op("", op_type, version=ONNX_OPSET)


def reference_kernel(op_type: str) -> Callable[..., Any]:
    """A kernel that runs onnx.reference's implementation of `op_type`."""

    def kernel(*inputs: np.ndarray | None, _num_outputs: int = 1, **attrs: Any) -> Any:
        node = _node_proto(op_type, [x is not None for x in inputs], _num_outputs, attrs)
        run_params = {"log": lambda *a: None, "opsets": {"": ONNX_OPSET}, "new_ops": None,
                      "verbose": 0}  # fmt: skip
        op = _reference_class(op_type)(node, run_params)
        with np.errstate(all="ignore"):
            out = op.run(*[x for x in inputs])
        return tuple(np.asarray(o) for o in out)

    kernel.__name__ = f"reference_{op_type}"
    return kernel


def _value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    shape = [d if isinstance(d, int) else f"s:{d}" for d in t.shape]
    return helper.make_tensor_value_info(name, t.dtype.onnx, shape)


def onnx_infer(op_type: str) -> Callable[[InferContext], list[TensorType]]:
    """Inference through onnx.shape_inference on a one-node model; constant inputs become
    initializers so that data-dependent shapes (Resize sizes, OneHot depth) are known."""

    def infer(ctx: InferContext) -> list[TensorType]:
        present = [ctx.has_input(i) for i in range(ctx.num_inputs)]
        node = _node_proto(op_type, present, ctx.num_outputs, ctx.attrs)
        inputs, inits = [], []
        for i, here in enumerate(present):
            if not here:
                continue
            arr = ctx.constant(i)
            # Small constants (shapes, scales, sizes) drive the output shape; big ones (weights)
            # only need their type, and copying them into a proto per inference would be waste.
            if arr is not None and arr.dtype != object and arr.size <= 1024:
                inits.append(numpy_helper.from_array(np.asarray(arr), f"i{i}"))
            else:
                inputs.append(_value_info(f"i{i}", ctx.input(i)))
        outputs = [helper.make_empty_tensor_value_info(f"o{i}") for i in range(ctx.num_outputs)]
        graph = helper.make_graph([node], "infer", inputs, outputs, initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except Exception as exc:
            ctx.fail(f"ONNX shape inference failed: {str(exc).splitlines()[0]}")
        found = {vi.name: vi for vi in inferred.graph.output}
        found.update({vi.name: vi for vi in inferred.graph.value_info})
        result = []
        for i in range(ctx.num_outputs):
            vi = found.get(f"o{i}")
            tt = vi.type.tensor_type if vi is not None else None
            if tt is None or not tt.elem_type:
                ctx.fail(f"ONNX shape inference gives no type for output {i}")
            if not tt.HasField("shape"):
                ctx.fail(f"ONNX shape inference gives no rank for output {i}")
            dims: list[Dim | None] = []
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                elif d.dim_param.startswith("s:"):
                    dims.append(symbolic.canonical(d.dim_param[2:]))
                else:
                    dims.append(None)
            result.append(make_type(DType.from_onnx(tt.elem_type), dims))
        return result

    return infer


def register_reference_op(
    op_type: str,
    *,
    infer: Callable[[InferContext], Sequence[TensorType]] | None = None,
    kernel: Callable[..., Any] | None = None,
    kernel_source: str = "onnx.reference",
    random: bool = False,
    macs: MacsFn | None = None,
) -> None:
    """Register `op_type` with its ONNX signature and ONNX inference, and the onnx.reference
    kernel or `kernel` (an ecograph kernel where onnx.reference deviates from the spec;
    `kernel_source` names where it lives). `random` and `macs` are the schema facts of
    `register_op`."""
    inputs, outputs, attrs = schema_signature(op_type)
    register_op(
        op_type,
        inputs=inputs,
        outputs=outputs,
        attrs=attrs,
        infer=infer or onnx_infer(op_type),
        random=random,
        macs=macs,
        doc=f"ONNX {op_type} (kernel: {kernel_source}; types: ONNX shape inference).",
    )(kernel or reference_kernel(op_type))
