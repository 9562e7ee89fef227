"""Export an ecograph Graph to an ONNX ModelProto at opset `ONNX_OPSET`.

ONNX-domain nodes map one to one. Ops of other domains (the "ecograph" library ops) must
declare how they lower to standard ONNX, so the file runs in any ONNX runtime:

    @register_onnx_export("FusedGelu", domain="ecograph")
    def _export_fused_gelu(ctx: OnnxExportContext, node: Node) -> None:
        (x,) = ctx.inputs(node)
        ctx.emit("Gelu", [x], ctx.outputs(node), approximate=node.attr("approximate"))

The function emits standard ONNX nodes that compute the node's outputs (`ctx.outputs(node)`
gives their names); `ctx.constant(array)` adds an initializer and `ctx.fresh(hint)` a new
intermediate name. `to_onnx` raises UnsupportedError listing every op without an export.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ecograph.errors import UnsupportedError
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.ops.ms_qlinear import EXPANSIONS
from ecograph.ir.ops.ms_quant import MS_DOMAIN
from ecograph.ir.registry import ONNX_OPSET, lookup_schema
from ecograph.ir.types import TensorType

ExportFn = Callable[["OnnxExportContext", Node], None]

METADATA_KEY = "ecograph.metadata"
"""ModelProto.metadata_props key holding graph.metadata as JSON (JSON-able entries only)."""

_EXPORTS: dict[tuple[str, str], ExportFn] = {}

_ATTR_TYPES = {
    "int": onnx.AttributeProto.INT,
    "float": onnx.AttributeProto.FLOAT,
    "string": onnx.AttributeProto.STRING,
    "ints": onnx.AttributeProto.INTS,
    "floats": onnx.AttributeProto.FLOATS,
    "strings": onnx.AttributeProto.STRINGS,
    "tensor": onnx.AttributeProto.TENSOR,
}


def register_onnx_export(op_type: str, domain: str = "ecograph") -> Callable[[ExportFn], ExportFn]:
    """Declare how a non-ONNX op is written to ONNX: the decorated function emits standard
    ONNX nodes through an `OnnxExportContext` (see the module docstring)."""

    def decorate(fn: ExportFn) -> ExportFn:
        _EXPORTS[(domain, op_type)] = fn
        return fn

    return decorate


def onnx_export_for(op_type: str, domain: str) -> ExportFn | None:
    """The registered export of an op, or None."""
    return _EXPORTS.get((domain, op_type))


class OnnxExportContext:
    """What an export function uses to emit ONNX nodes and initializers."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = {v.name for v in graph.values()}
        self._counter = 0

    def fresh(self, hint: str = "tmp") -> str:
        """A value name not used anywhere in the graph or the export so far."""
        while True:
            self._counter += 1
            name = f"{hint}__{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    def inputs(self, node: Node) -> list[str]:
        """The node's input names ("" for an absent optional input)."""
        return ["" if v is None else v.name for v in node.inputs]

    def outputs(self, node: Node) -> list[str]:
        return [v.name for v in node.outputs]

    def constant(self, array: np.ndarray, hint: str = "const") -> str:
        """Add an initializer holding `array`; returns its name."""
        name = self.fresh(hint)
        self.initializers.append(tensor_proto(np.asarray(array), name))
        return name

    def emit(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        *,
        domain: str = "",
        name: str | None = None,
        **attrs: Any,
    ) -> None:
        """Add one node; attributes that are None are left out."""
        node = helper.make_node(
            op_type,
            list(inputs),
            list(outputs),
            name=name or self.fresh(op_type.lower()),
            domain=domain,
        )
        for key, value in attrs.items():
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                value = tensor_proto(value, "")
            node.attribute.append(helper.make_attribute(key, value))
        self.nodes.append(node)


def tensor_proto(array: np.ndarray, name: str) -> onnx.TensorProto:
    """A TensorProto for an array of any dtype the IR models (strings included)."""
    if array.dtype == object:
        return helper.make_tensor(
            name,
            onnx.TensorProto.STRING,
            array.shape,
            [s if isinstance(s, bytes) else str(s).encode() for s in array.reshape(-1)],
        )
    # np.ascontiguousarray would turn a 0-d array into a 1-d one; reshape keeps the rank.
    return numpy_helper.from_array(np.ascontiguousarray(array).reshape(array.shape), name)


def _value_info(value: Value, dim_params: dict[str, str]) -> onnx.ValueInfoProto:
    t: TensorType = value.type
    shape = [d if isinstance(d, int) else dim_params.get(d, d) for d in t.shape]
    return helper.make_tensor_value_info(value.name, t.dtype.onnx, shape)


def _attribute(key: str, value: Any, kind: str | None) -> onnx.AttributeProto:
    if kind == "tensor" or isinstance(value, np.ndarray):
        return helper.make_attribute(key, tensor_proto(np.asarray(value), ""))
    if kind in _ATTR_TYPES:
        # Passes may leave numpy scalars or tuples; ONNX wants plain Python values.
        convert = {"int": int, "float": float, "string": str}
        if kind in convert:
            value = convert[kind](value)
        else:
            value = [convert[kind[:-1]](x) for x in value]
        return helper.make_attribute(key, value, attr_type=_ATTR_TYPES[kind])
    return helper.make_attribute(key, value)


EXTERNAL_DATA_THRESHOLD = 1 << 30
"""Above this many bytes of weights, `to_onnx(graph, path)` writes them to `<path>.data`."""


def to_onnx(
    graph: Graph,
    path: str | os.PathLike[str] | None = None,
    *,
    external_data: bool | None = None,
) -> onnx.ModelProto:
    """Export `graph` as an ONNX model at opset ONNX_OPSET (written to `path` if given).

    With a path, weights go to an external file `<name>.data` next to it when they exceed
    `EXTERNAL_DATA_THRESHOLD` (or when `external_data=True`); protobuf cannot hold more than
    2 GiB. Non-ONNX ops are lowered through their registered exports (`register_onnx_export`);
    UnsupportedError lists every op that has none.
    """
    missing = Counter(
        n.qualified_op
        for n in graph.nodes
        if n.domain != "" and onnx_export_for(n.op_type, n.domain) is None
    )
    if missing:
        listing = ", ".join(f"{op} x{count}" for op, count in sorted(missing.items()))
        raise UnsupportedError(
            f"graph {graph.name}: no ONNX export for {listing}; declare one with "
            "@ecograph.frontend.onnx.register_onnx_export (see docs/onnx.md)"
        )
    ctx = OnnxExportContext(graph)
    for node in graph.nodes:
        if node.domain != "":
            fn = onnx_export_for(node.op_type, node.domain)
            assert fn is not None
            fn(ctx, node)
            continue
        _write_as_is(ctx, node)

    reverse = graph.metadata.get("onnx_dim_params", {})
    dim_params = {sym: original for sym, original in reverse.items()} if reverse else {}
    constants = list(graph.constants.values())
    weight_bytes = sum(int(v.const_value.nbytes) for v in constants)  # type: ignore[union-attr]
    if external_data is None:
        external_data = weight_bytes > EXTERNAL_DATA_THRESHOLD
    if external_data and path is None:
        raise UnsupportedError(
            f"graph {graph.name} has {weight_bytes} bytes of weights, too many for one protobuf; "
            "pass a path so that to_onnx can write them to an external data file"
        )
    data_path = Path(f"{path}.data") if external_data and path is not None else None
    if data_path is not None:
        initializers = _write_external(constants, data_path)
    else:
        initializers = [tensor_proto(v.const_value, v.name) for v in constants]  # type: ignore[arg-type]
    initializers += ctx.initializers
    outputs = [_value_info(v, dim_params) for v in graph.outputs]
    onnx_graph = helper.make_graph(
        ctx.nodes,
        graph.name,
        [_value_info(v, dim_params) for v in graph.inputs],
        outputs,
        initializer=initializers,
    )
    # Contrib ops written as they were read (ONNX Runtime's com.microsoft, version 1).
    domains = sorted({n.domain for n in ctx.nodes if n.domain not in ("", "ai.onnx")})
    model = helper.make_model(
        onnx_graph,
        opset_imports=[
            helper.make_opsetid("", ONNX_OPSET),
            *(helper.make_opsetid(d, 1) for d in domains),
        ],
        producer_name="ecograph",
    )
    model.ir_version = min(model.ir_version, 11)
    kept = {}
    for key, value in graph.metadata.items():
        try:
            kept[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            continue  # not JSON: only JSON metadata survives the file
    if kept:
        helper.set_model_props(model, {METADATA_KEY: json.dumps(kept, sort_keys=True)})
    if path is not None:
        _atomic_save(model, Path(path))
    return model


def _write_external(constants: list[Value], data_path: Path) -> list[onnx.TensorProto]:
    """Write non-string constants of 1 KiB or more to `data_path` (64-byte aligned, atomically)
    and return initializers that reference it; small and string constants stay inline."""
    tmp = data_path.with_name(f".{data_path.name}.tmp")
    out: list[onnx.TensorProto] = []
    offset = 0
    with open(tmp, "wb") as f:
        for v in constants:
            arr = v.const_value
            assert arr is not None
            if arr.dtype == object or arr.nbytes < 1024 or v.dtype.bitwidth < 8:
                out.append(tensor_proto(arr, v.name))
                continue
            pad = -offset % 64
            f.write(b"\0" * pad)
            offset += pad
            raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
            f.write(raw.tobytes())
            t = onnx.TensorProto(name=v.name, data_type=v.dtype.onnx, dims=list(arr.shape))
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (
                ("location", data_path.name),
                ("offset", str(offset)),
                ("length", str(arr.nbytes)),
            ):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            offset += arr.nbytes
            out.append(t)
    os.replace(tmp, data_path)
    return out


def _atomic_save(model: onnx.ModelProto, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, path)


# ------------------------------------------------- built-in library-op decompositions


@register_onnx_export("SiLU", domain="ecograph")
def _export_silu(ctx: OnnxExportContext, node: Node) -> None:
    """SiLU(x) = x * Sigmoid(x)."""
    (x,) = ctx.inputs(node)
    sig = ctx.fresh(f"{node.name}_sigmoid")
    ctx.emit("Sigmoid", [x], [sig])
    ctx.emit("Mul", [x, sig], ctx.outputs(node))


@register_onnx_export("Linear", domain="ecograph")
def _export_linear(ctx: OnnxExportContext, node: Node) -> None:
    """Linear(x, W, b) = MatMul(x, W) + b."""
    names = ctx.inputs(node)
    if len(names) < 3 or not names[2]:
        ctx.emit("MatMul", names[:2], ctx.outputs(node))
        return
    product = ctx.fresh(f"{node.name}_matmul")
    ctx.emit("MatMul", names[:2], [product])
    ctx.emit("Add", [product, names[2]], ctx.outputs(node))


@register_onnx_export("DequantizeMatMul", domain="ecograph")
def _export_dequantize_matmul(ctx: OnnxExportContext, node: Node) -> None:
    """DequantizeMatMul(A, W, s, zp) = MatMul(A, DequantizeLinear(W, s, zp)) (see
    `_emit_weight_matmul` for trans_b), A quantized in blocks first when `activation_block`
    (`_emit_activation_blocks`). Standard ONNX throughout."""
    a, *qparams = ctx.inputs(node)
    if node.attr("activation_block", 0):
        a = _emit_activation_blocks(ctx, node, a)
    block = node.attr("block_size", 0) or None  # 0: per tensor / per axis (the default)
    weights = ctx.fresh(f"{node.name}_weights")
    ctx.emit("DequantizeLinear", qparams, [weights], axis=node.attr("axis", 1), block_size=block)
    _emit_weight_matmul(ctx, node, a, weights)


def _emit_activation_blocks(ctx: OnnxExportContext, node: Node, a: str) -> str:
    """A' of a DequantizeMatMul with `activation_block` B (ecograph/ir/ops/weight_only.py):
    A reshaped to [..., K / B, B], s = Max(ReduceMax(Abs), tiny) / 127 per block,
    Clip(Round(A / s), -127, 127) * s, reshaped back. Needs a static K; a K that is not a
    whole number of blocks is padded with zeros first (they leave the short block's maximum
    as it is) and sliced off after."""
    from ecograph.ir.ops.weight_only import ACTIVATION_QMAX, ACTIVATION_TINY

    at = node.inputs[0].type  # type: ignore[union-attr]
    block = int(node.attr("activation_block"))
    k = at.shape[-1] if at.rank else None
    if not isinstance(k, int):
        raise UnsupportedError(
            f"node {node.name} ({node.qualified_op}): activation_block={block} exports only "
            f"with A's last dimension static (A is {at})"
        )
    k_pad = -(-k // block) * block
    lead = [0] * (at.rank - 1)  # Reshape's 0: the input's own dimension

    def value(op: str, inputs: list[str], **attrs: Any) -> str:
        out = ctx.fresh(f"{node.name}_act_{op.lower()}")
        ctx.emit(op, inputs, [out], **attrs)
        return out

    def const(v: float) -> str:
        return ctx.constant(np.array(v, np.float32), "act_const")

    def ints(values: list[int], name: str) -> str:
        return ctx.constant(np.array(values, np.int64), name)

    if k_pad != k:
        a = value("Pad", [a, ints([0] * (2 * at.rank - 1) + [k_pad - k], "pads")])
    blocks = value("Reshape", [a, ints([*lead, k_pad // block, block], "shape")])
    axes = ints([-1], "axes")
    amax = value("ReduceMax", [value("Abs", [blocks]), axes], keepdims=1)
    scale = value("Div", [value("Max", [amax, const(ACTIVATION_TINY)]), const(ACTIVATION_QMAX)])
    rounded = value("Round", [value("Div", [blocks, scale])])
    codes = value("Clip", [rounded, const(-ACTIVATION_QMAX), const(ACTIVATION_QMAX)])
    out = value("Reshape", [value("Mul", [codes, scale]), ints([*lead, k_pad], "shape")])
    if k_pad != k:
        out = value("Slice", [out, ints([0], "starts"), ints([k], "ends"), axes])
    return out


@register_onnx_export("PaletteMatMul", domain="ecograph")
def _export_palette_matmul(ctx: OnnxExportContext, node: Node) -> None:
    """PaletteMatMul(A, codes, palette) = MatMul(A, PaletteDequantize(codes, palette)) (the
    lookup as `_export_palette_dequantize` writes it; see `_emit_weight_matmul` for trans_b)."""
    a, idx, palette = ctx.inputs(node)
    weights = ctx.fresh(f"{node.name}_weights")
    _emit_palette_lookup(ctx, node, 1, idx, palette, weights)
    _emit_weight_matmul(ctx, node, a, weights)


def _emit_weight_matmul(ctx: OnnxExportContext, node: Node, a: str, weights: str) -> None:
    """node's output = A @ weights; with trans_b (weights stored [N, K]) Gemm(A, ., transB=1)
    for 2-D A, else MatMul(A, Transpose(.))."""
    a_value = node.input(0)
    if not node.attr("trans_b", 0):
        ctx.emit("MatMul", [a, weights], ctx.outputs(node))
    elif a_value is not None and a_value.type.rank == 2:
        ctx.emit("Gemm", [a, weights], ctx.outputs(node), transB=1)
    else:
        transposed = ctx.fresh(f"{node.name}_weights_t")
        ctx.emit("Transpose", [weights], [transposed], perm=[1, 0])
        ctx.emit("MatMul", [a, transposed], ctx.outputs(node))


@register_onnx_export("PaletteDequantize", domain="ecograph")
def _export_palette_dequantize(ctx: OnnxExportContext, node: Node) -> None:
    """PaletteDequantize(idx, palette) = Gather(Reshape(palette, [-1]), Cast<int64>(idx) +
    offsets), offsets[c] = (c // group_size) * entries along `axis` (a constant): exact."""
    idx, palette = ctx.inputs(node)
    _emit_palette_lookup(ctx, node, 0, idx, palette, ctx.outputs(node)[0])


def _emit_palette_lookup(
    ctx: OnnxExportContext, node: Node, first: int, idx: str, palette: str, out: str
) -> None:
    """`out` = the palette lookup of `node`, whose codes and palette are inputs `first` and
    `first + 1` (see `_export_palette_dequantize`)."""
    from ecograph.ir.ops.palette import palette_offsets

    it, pt = node.inputs[first].type, node.inputs[first + 1].type  # type: ignore[union-attr]
    codes = ctx.fresh(f"{node.name}_codes")
    ctx.emit("Cast", [idx], [codes], to=onnx.TensorProto.INT64)
    flat = ctx.fresh(f"{node.name}_flat_palette")
    ctx.emit("Reshape", [palette, ctx.constant(np.array([-1], np.int64), "shape")], [flat])
    group, axis = int(node.attr("group_size", 0)), int(node.attr("axis", 0))
    if group:
        axis %= it.rank
        channels, entries = it.shape[axis], pt.shape[1]
        if not isinstance(channels, int) or not isinstance(entries, int):
            raise UnsupportedError(
                f"node {node.name} ({node.qualified_op}): grouped palettes need a "
                f"static size along axis {axis} of {it} and a static palette {pt} to export"
            )
        shape = [1] * it.rank
        shape[axis] = -1
        offsets = palette_offsets(channels, group, entries).reshape(shape)
        shifted = ctx.fresh(f"{node.name}_flat_codes")
        ctx.emit("Add", [codes, ctx.constant(offsets, "palette_offsets")], [shifted])
        codes = shifted
    ctx.emit("Gather", [flat, codes], [out], axis=0)


@register_onnx_export("SwiGLU", domain="ecograph")
def _export_swiglu(ctx: OnnxExportContext, node: Node) -> None:
    """SwiGLU(gate, up) = gate * Sigmoid(gate) * up."""
    gate, up = ctx.inputs(node)
    sig = ctx.fresh(f"{node.name}_sigmoid")
    silu = ctx.fresh(f"{node.name}_silu")
    ctx.emit("Sigmoid", [gate], [sig])
    ctx.emit("Mul", [gate, sig], [silu])
    ctx.emit("Mul", [silu, up], ctx.outputs(node))


@register_onnx_export("CacheAttention", domain="ecograph")
def _export_cache_attention(ctx: OnnxExportContext, node: Node) -> None:
    """CacheAttention(Q, cache, K, V, mask) = Attention(Q, Concat(past(key_index), K),
    Concat(past(value_index), V), mask), past(i) = Transpose(Gather(cache, i, axis=1),
    [1, 2, 0, 3]) for a sequence-first cache, Gather(cache, i, axis=0) for a head-major one
    (ecograph/ir/ops/cache_attention.py): what the fusion replaced."""
    q, cache, k, v, *mask = ctx.inputs(node)
    head_major = node.attr("seq_axis", 0) == 3
    full = []
    for new, slot in ((k, "key_index"), (v, "value_index")):
        index = ctx.constant(np.array(node.attr(slot), np.int64), f"{node.name}_{slot}")
        past = ctx.fresh(f"{node.name}_{slot}_past")
        if head_major:
            ctx.emit("Gather", [cache, index], [past], axis=0)
        else:
            taken = ctx.fresh(f"{node.name}_{slot}_gather")
            ctx.emit("Gather", [cache, index], [taken], axis=1)
            ctx.emit("Transpose", [taken], [past], perm=[1, 2, 0, 3])
        joined = ctx.fresh(f"{node.name}_{slot}_all")
        ctx.emit("Concat", [past, new], [joined], axis=2)
        full.append(joined)
    mask = [m for m in mask if m]
    causal, scale = int(node.attr("is_causal", 0)), node.attr("scale")
    ctx.emit("Attention", [q, *full, *mask], ctx.outputs(node), is_causal=causal, scale=scale)


def _write_as_is(ctx: OnnxExportContext, node: Node) -> None:
    """One NodeProto for `node`, its attributes typed by its schema: every ONNX op, and ONNX
    Runtime's contrib ops (com.microsoft QLinearAdd, QGemm, MatMulNBits, ...), which are
    written as they were read, so the file runs in ONNX Runtime with its own kernels as the
    model it came from did."""
    schema = lookup_schema(node.op_type, node.domain)
    proto = helper.make_node(
        node.op_type, ctx.inputs(node), ctx.outputs(node), name=node.name, domain=node.domain
    )
    for key, value in node.attrs.items():
        if value is not None:
            kind = schema.attrs[key].kind if schema is not None and key in schema.attrs else None
            proto.attribute.append(_attribute(key, value, kind))
    ctx.nodes.append(proto)


for _domain, _op in (*EXPANSIONS, (MS_DOMAIN, "MatMulNBits")):
    register_onnx_export(_op, domain=_domain)(_write_as_is)
