"""ONNX <-> ecograph IR: `from_onnx` imports a model, `to_onnx` exports a graph.

Import reads the file itself (never through a path onnx resolves on its own), so that bad
input always ends in a typed ecograph error: truncated or garbage bytes, a model over the size
cap, external data whose location escapes the model's folder (`../`, absolute paths, symlinks)
or whose declared size overruns its file or names a directory or FIFO, a cycle, a dangling
input; PyTorch checkpoints, TorchScript, safetensors and pickles are named as such. Dynamic
dims: to ONNX Runtime a dim_param is a label, so each (input, axis) gets a symbol of its own
(the first use of a name keeps it, later ones get `<name>_<input>_dim<axis>`; a missing or
negative dim (-1) is `<input>_dim<axis>`), and symbols an op needs equal at run time
(broadcasting, a matmul's contraction dim, Concat's other dims) are then unified into one,
named after the dim_param where there is one (`ecograph.ir.unify`). ecograph's own exports
keep their names as written: there a symbol means equality (docs/onnx.md).
Models at older opsets are converted up to `ONNX_OPSET` with onnx.version_converter;
models at newer opsets are accepted when every op they use has the same schema at
`ONNX_OPSET` (with a warning when the installed onnx does not know the opset). Control flow
(If, Loop, Scan) is not supported yet, and unsupported ops are all listed at once, with
counts, before failing.

Export lives in `ecograph.frontend.onnx_export` and is re-exported here (`to_onnx`,
`register_onnx_export`).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import warnings
import zipfile
from collections import Counter, deque
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ecograph.errors import EcographError, ModelFormatError, UnsupportedError
from ecograph.frontend.onnx_export import METADATA_KEY, register_onnx_export, to_onnx
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.registry import DEFAULT_OPSET_IMPORTS, ONNX_OPSET, lookup_schema
from ecograph.ir.unify import recording_equal_dims, unify_input_symbols

__all__ = ["DEFAULT_MAX_BYTES", "CONTROL_FLOW_OPS", "from_onnx", "register_onnx_export", "to_onnx"]

DEFAULT_MAX_BYTES = 16 * 2**30
"""Default cap on a model's size (the .onnx file plus its external data), in bytes."""

CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})

_ONNX_DOMAINS = ("", "ai.onnx")
_MMAP_MIN_BYTES = 1 << 20
DIM_PARAMS_KEY = "onnx_dim_params"
"""graph.metadata key: {symbol used in the IR: dim_param as written in the ONNX model}."""


# ------------------------------------------------------------------ entry point


def from_onnx(
    model: str | os.PathLike[str] | onnx.ModelProto | bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> Graph:
    """Import an ONNX model (a path, serialized bytes or a ModelProto) as an ecograph Graph.

    Weights become shared numpy constants. Raises ModelFormatError for malformed or unsafe
    input and UnsupportedError for control flow, unmodelled dtypes, opsets and unknown ops.
    """
    base_dir: Path | None = None
    where = "<ModelProto>"
    if isinstance(model, onnx.ModelProto):
        proto = model
        if proto.ByteSize() > max_bytes:
            raise ModelFormatError(
                f"model proto is {proto.ByteSize()} bytes, over the cap of {max_bytes} bytes "
                "(raise max_bytes= if it is trusted)"
            )
    elif isinstance(model, (bytes, bytearray)):
        proto = _parse_bytes(bytes(model), "<bytes>", max_bytes)
    else:
        path = Path(model)
        where = str(path)
        proto = _read_model_file(path, max_bytes)
        base_dir = path.resolve().parent
    _check_structure(proto, where)
    _warn_if_newer_than_onnx(proto, where)
    _reject_control_flow(proto, where)
    widened = _widened_ops(proto)
    try:
        # Conversion first: it renames retired ops (Upsample -> Resize, Scatter -> ...).
        proto = _to_target_opset(proto, where)
    except UnsupportedError:
        _reject_unsupported_ops(proto, where)  # the more useful message, when it applies
        raise
    _reject_unsupported_ops(proto, where)
    importer = _Importer(proto, base_dir, where, max_bytes)
    importer.widened = widened
    return importer.build(name)


# --------------------------------------------------------------- reading bytes


def _read_model_file(path: Path, max_bytes: int) -> onnx.ModelProto:
    kind = _not_a_regular_file(path)
    if kind == _MISSING:
        raise ModelFormatError(f"{path}: no such model file")
    if kind is not None:
        raise ModelFormatError(f"{path} {kind}; give the path of an .onnx model file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelFormatError(
            f"{path} is {size} bytes, over the cap of {max_bytes} bytes "
            "(raise max_bytes= if the file is trusted)"
        )
    return _parse_bytes(path.read_bytes(), str(path), max_bytes)


def _parse_bytes(data: bytes, where: str, max_bytes: int) -> onnx.ModelProto:
    if len(data) > max_bytes:
        raise ModelFormatError(f"{where} is {len(data)} bytes, over the cap of {max_bytes}")
    foreign = _foreign_format(data)
    if foreign is not None:
        raise ModelFormatError(f"{where} is {foreign}")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelFormatError(
            f"{where} is not a valid ONNX model (truncated or not protobuf): {exc}"
        ) from None
    return proto


_MISSING = "does not exist"


def _not_a_regular_file(path: Path) -> str | None:
    """Why `path` cannot be read as a file (`_MISSING`, "is a directory, not a regular file",
    "is a FIFO ...", ...), or None for a regular file (symlinks followed). Reading a FIFO or
    a device would block or never end, so they are refused before opening."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return _MISSING
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    what = next((name for test, name in kinds if test(mode)), "a special file")
    return f"is {what}, not a regular file"


_FROM_TORCH_HINT = (
    "load the module in Python and use ecograph.from_torch, or export it to ONNX "
    "(torch.onnx.export) and import that"
)


def _foreign_format(data: bytes) -> str | None:
    """What a well-known non-ONNX file is, told by its magic bytes, as the rest of a sentence
    ("a PyTorch checkpoint ..., not ONNX; ..."), or None. No ONNX writer starts a model with
    these bytes: a ModelProto opens with a field tag, and 'P' (field 10), 0x80 0x02-0x05
    (field 32) name fields ModelProto does not have."""
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(BytesIO(data)) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            names = []
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "a TorchScript archive (torch.jit.save), not ONNX; " + _FROM_TORCH_HINT
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "a PyTorch checkpoint (torch.save zip), not ONNX; " + _FROM_TORCH_HINT
        return "a zip archive, not ONNX; unpack it and give the .onnx file inside"
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return (
            "a Python pickle (a legacy PyTorch checkpoint?), not ONNX; ecograph never unpickles "
            "input files: " + _FROM_TORCH_HINT
        )
    if len(data) >= 10 and data[8:9] == b"{":
        header = int.from_bytes(data[:8], "little")
        if 0 < header <= len(data) - 8:
            return (
                "a safetensors file (weights only, no graph), not ONNX; build the model in "
                "Python, load these weights into it, then " + _FROM_TORCH_HINT
            )
    return None


def _warn_if_newer_than_onnx(proto: onnx.ModelProto, where: str) -> None:
    """A model at an opset the installed onnx package does not know: its ops are read with
    the newest schemas onnx has, which is right unless an op changed in the unknown opsets."""
    version = _default_opset(proto)
    known = onnx.defs.onnx_opset_version()
    if version is not None and version > known:
        warnings.warn(
            f"{where} uses ONNX opset {version}, newer than the installed onnx "
            f"{onnx.__version__} knows (opset {known}); its ops are read with their opset-{known} "
            "schemas. Upgrade onnx, or export the model at an older opset, if results differ.",
            stacklevel=3,
        )


def _check_structure(proto: onnx.ModelProto, where: str) -> None:
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelFormatError(
            f"{where} is not an ONNX model (no ir_version or no graph); is the file truncated?"
        )
    if not proto.opset_import:
        raise ModelFormatError(f"{where} declares no opset_import")
    # Protobuf hands back bytes for string fields that are not valid UTF-8 (corrupt files).
    g = proto.graph
    names: list[object] = [i.domain for i in proto.opset_import]
    names += [v.name for v in [*g.input, *g.output, *g.value_info]]
    names += [t.name for t in g.initializer]
    for node in g.node:
        names += [node.op_type, node.domain, node.name, *node.input, *node.output]
        names += [a.name for a in node.attribute]
    if any(not isinstance(n, str) for n in names):
        raise ModelFormatError(f"{where} has names that are not valid UTF-8; is the file corrupt?")


def _all_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    """Every node, including those inside subgraph attributes."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def _reject_control_flow(proto: onnx.ModelProto, where: str) -> None:
    found = Counter(
        n.op_type for n in _all_nodes(proto.graph) if n.domain in _ONNX_DOMAINS
        and n.op_type in CONTROL_FLOW_OPS
    )  # fmt: skip
    if found:
        ops = ", ".join(f"{op} x{count}" for op, count in sorted(found.items()))
        raise UnsupportedError(
            f"{where}: control flow is not supported yet ({ops}); export the model with the "
            "loops unrolled / branches resolved (e.g. torch.onnx.export with fixed inputs)"
        )


def _reject_unsupported_ops(proto: onnx.ModelProto, where: str) -> None:
    missing: Counter[str] = Counter()
    for node in proto.graph.node:
        if lookup_schema(node.op_type, _ir_domain(node.domain)) is None:
            missing[_qualified(node)] += 1
    if missing:
        listing = ", ".join(f"{op} x{count}" for op, count in sorted(missing.items()))
        raise UnsupportedError(
            f"{where} uses {len(missing)} op type(s) ecograph does not support: {listing}. "
            "Register them with @ecograph.ir.register_op or rewrite them before import."
        )


def _ir_domain(domain: str) -> str:
    return "" if domain in _ONNX_DOMAINS else domain


def _qualified(node: onnx.NodeProto) -> str:
    d = _ir_domain(node.domain)
    return f"{d}::{node.op_type}" if d else node.op_type


# ----------------------------------------------------------------------- opsets


def _default_opset(proto: onnx.ModelProto) -> int | None:
    for imp in proto.opset_import:
        if imp.domain in _ONNX_DOMAINS:
            return int(imp.version)
    return None


def _to_target_opset(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Bring the default domain to ONNX_OPSET: unchanged when every op's schema is the same,
    version_converter for older models, a clear error for newer ones that changed."""
    version = _default_opset(proto)
    if version is None or version == ONNX_OPSET:
        return proto
    nodes = [n for n in proto.graph.node if n.domain in _ONNX_DOMAINS]
    changed = sorted({n.op_type for n in nodes if not same_schema(n, version)})
    if not changed:
        return _with_opset(proto, ONNX_OPSET)
    if version > ONNX_OPSET:
        raise UnsupportedError(
            f"{where} uses opset {version}, newer than ecograph's {ONNX_OPSET}, and these ops "
            f"changed after opset {ONNX_OPSET}: {', '.join(changed)}. Export the model at "
            f"opset {ONNX_OPSET}."
        )
    try:
        converted = onnx.version_converter.convert_version(proto, ONNX_OPSET)
    except Exception as exc:
        raise UnsupportedError(
            f"{where}: converting opset {version} to {ONNX_OPSET} failed "
            f"(ops that changed: {', '.join(changed)}): {str(exc).splitlines()[0]}"
        ) from None
    return converted


def _widened_ops(proto: onnx.ModelProto) -> dict[str, tuple[int, onnx.defs.OpSchema]]:
    """Ops of a newer-opset model accepted because their schema changed only in types:
    op -> (model opset, schema at ONNX_OPSET). Their nodes' dtypes are checked on import."""
    version = _default_opset(proto)
    if version is None or version <= ONNX_OPSET:
        return {}
    out = {}
    for node in proto.graph.node:
        if node.domain not in _ONNX_DOMAINS or node.op_type in out:
            continue
        try:
            at_model = onnx.defs.get_schema(node.op_type, version)
            at_target = onnx.defs.get_schema(node.op_type, ONNX_OPSET)
        except onnx.defs.SchemaError:
            continue
        if at_model.since_version != at_target.since_version:
            out[node.op_type] = (version, at_target)
    return out


def _check_types_allowed(node: Node, schema: onnx.defs.OpSchema, version: int, where: str) -> None:
    """A node accepted from a newer opset must only use types its ONNX_OPSET schema allows."""
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    ports = [(p, node.input(i)) for i, p in enumerate(schema.inputs) if i < len(node.inputs)]
    ports += [(p, v) for p, v in zip(schema.outputs, node.outputs, strict=False)]
    for param, value in ports:
        if value is None or param.type_str not in allowed:
            continue
        type_str = f"tensor({onnx.TensorProto.DataType.Name(value.dtype.onnx).lower()})"
        if type_str not in allowed[param.type_str]:
            raise UnsupportedError(
                f"{where}: node {node.name} ({node.op_type}) uses {type_str} for "
                f"{param.name!r}, a type {node.op_type} allows only after opset {ONNX_OPSET} "
                f"(the model is at opset {version}); ecograph pins opset {ONNX_OPSET}"
            )


def same_schema(node: onnx.NodeProto, version: int) -> bool:
    """True when `node` means the same at `version` as at ONNX_OPSET.

    That is the case when both opsets resolve to the same schema version, and also for a
    newer opset whose schema changed only type constraints or added attributes the node does
    not set (Reshape-25 adds float8 types to Reshape-23; ReduceLogSum-28 drops integer
    types). Such nodes are checked on import to use types the ONNX_OPSET schema allows."""
    try:
        at_model = onnx.defs.get_schema(node.op_type, version)
        at_target = onnx.defs.get_schema(node.op_type, ONNX_OPSET)
    except onnx.defs.SchemaError:
        return False
    if at_model.since_version == at_target.since_version:
        return True
    if version < ONNX_OPSET:
        return False
    return schema_differs_only_in_types(at_target, at_model, {a.name for a in node.attribute})


def schema_differs_only_in_types(
    old: onnx.defs.OpSchema, new: onnx.defs.OpSchema, attrs_used: set[str]
) -> bool:
    """True if `new` keeps `old`'s inputs, outputs and attributes (same names, kinds and
    defaults) and adds only attributes that are not in `attrs_used`: the two differ only in
    their type constraints. The caller then checks each node's dtypes against `old`."""

    def ports(ps: Iterable[Any]) -> list[tuple[str, int, str]]:
        return [(p.name, int(p.option), p.type_str) for p in ps]

    if ports(old.inputs) != ports(new.inputs) or ports(old.outputs) != ports(new.outputs):
        return False
    for name, attr in old.attributes.items():
        other = new.attributes.get(name)
        if other is None or other.type != attr.type or other.required != attr.required:
            return False
        if other.default_value.SerializeToString() != attr.default_value.SerializeToString():
            return False
    return all(name in old.attributes for name in attrs_used)


def _with_opset(proto: onnx.ModelProto, version: int) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for imp in out.opset_import:
        if imp.domain in _ONNX_DOMAINS:
            imp.version = version
    return out


# ------------------------------------------------------------------- importer


class _Importer:
    def __init__(
        self, proto: onnx.ModelProto, base_dir: Path | None, where: str, max_bytes: int
    ) -> None:
        self.proto = proto
        self.base_dir = base_dir
        self.where = where
        self.max_bytes = max_bytes
        self.external_bytes = 0
        self.values: dict[str, Value] = {}
        self.symbols: dict[str, str] = {}  # dim_param as written -> symbol in the IR
        self.params_seen: set[str] = set()
        self.preferred: list[str] = []  # symbols of dim_params as written, first use first
        self.generated: list[str] = []  # symbols ecograph made up, in order
        # ecograph's own exports: a symbol there means equality, so names are kept as is.
        self.keep_dim_params = proto.producer_name == "ecograph" or any(
            p.key == METADATA_KEY for p in proto.metadata_props
        )
        self.graph: Graph | None = None
        self.widened: dict[str, tuple[int, onnx.defs.OpSchema]] = {}

    # ---- tensors

    def tensor_to_array(self, tensor: onnx.TensorProto, what: str) -> np.ndarray:
        """A TensorProto as a numpy array, reading external data safely."""
        try:
            DType.from_onnx(tensor.data_type)
        except ValueError as exc:
            raise UnsupportedError(f"{self.where}: {what} {tensor.name!r}: {exc}") from None
        if tensor.HasField("data_location") and (tensor.data_location == onnx.TensorProto.EXTERNAL):
            return self._read_external(tensor, what)
        try:
            return numpy_helper.to_array(tensor)
        except Exception as exc:
            raise ModelFormatError(
                f"{self.where}: {what} {tensor.name!r} has malformed data: {exc}"
            ) from None

    def _read_external(self, tensor: onnx.TensorProto, what: str) -> np.ndarray:
        info = {entry.key: entry.value for entry in tensor.external_data}
        label = f"{self.where}: {what} {tensor.name!r}"
        if self.base_dir is None:
            raise ModelFormatError(
                f"{label} keeps its data in an external file, but the model was given as "
                "bytes/proto; pass the model's path so the file can be found"
            )
        location = info.get("location", "")
        target = _safe_external_path(self.base_dir, location, label)
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise ModelFormatError(f"{label}: bad offset/length in external data") from None
        dtype = DType.from_onnx(tensor.data_type)
        shape = tuple(int(d) for d in tensor.dims)
        if any(d < 0 for d in shape):
            raise ModelFormatError(f"{label}: negative dims {list(shape)}")
        numel = math.prod(shape)  # a Python int: numpy's int64 product would wrap around
        if numel >= 2**63:
            raise ModelFormatError(
                f"{label}: dims {list(shape)} hold {numel} elements, more than int64 can count; "
                "the model is corrupt"
            )
        if dtype == DType.STRING:
            raise ModelFormatError(f"{label}: string tensors cannot use external data")
        needed = (numel * dtype.bitwidth + 7) // 8
        file_size = target.stat().st_size
        if offset < 0 or (length is not None and length < 0):
            raise ModelFormatError(f"{label}: negative offset or length in external data")
        if length is not None and length < needed:
            raise ModelFormatError(
                f"{label}: declared length {length} bytes is less than the {needed} bytes its "
                f"shape {list(shape)} of {dtype} needs"
            )
        if offset + needed > file_size:
            raise ModelFormatError(
                f"{label}: needs {needed} bytes at offset {offset} of {target.name}, but the "
                f"file has only {file_size} bytes (truncated or wrong location)"
            )
        self.external_bytes += needed
        if self.external_bytes > self.max_bytes:
            raise ModelFormatError(
                f"{label}: external data totals more than the cap of {self.max_bytes} bytes "
                "(raise max_bytes= if the model is trusted)"
            )
        if needed >= _MMAP_MIN_BYTES and dtype.bitwidth >= 8 and numel:
            # Large weights are memory-mapped read-only: shared with the page cache, not
            # copied into the process.
            mapped = np.memmap(target, dtype=dtype.numpy.newbyteorder("<"), mode="r",
                               offset=offset, shape=shape)  # fmt: skip
            return mapped.view(np.ndarray)
        with open(target, "rb") as f:
            f.seek(offset)
            raw = f.read(needed)
        if dtype in (DType.INT4, DType.UINT4):
            packed = np.frombuffer(raw, dtype=np.uint8)
            lo = packed & 0x0F
            hi = packed >> 4
            nib = np.stack([lo, hi], axis=-1).reshape(-1)[:numel]
            if dtype == DType.INT4:
                nib = np.where(nib >= 8, nib.astype(np.int16) - 16, nib)
            return nib.astype(dtype.numpy).reshape(shape)
        arr = np.frombuffer(raw, dtype=dtype.numpy.newbyteorder("<"), count=numel)
        return arr.astype(dtype.numpy, copy=False).reshape(shape)

    # ---- types

    def symbol_for(self, param: str) -> str:
        sym = self.symbols.get(param)
        if sym is not None:
            return sym
        if symbolic.is_symbol_name(param):
            sym = param
        else:
            base = re.sub(r"[^A-Za-z0-9_]", "_", param).strip("_") or "dim"
            if not (base[0].isalpha() or base[0] == "_"):
                base = f"d_{base}"
            sym = base
        taken = set(self.symbols.values())
        candidate, k = sym, 1
        while candidate in taken:
            candidate = f"{sym}_{k}"
            k += 1
        self.symbols[param] = candidate
        return candidate

    def generated_symbol(self, name: str) -> str:
        """A symbol ecograph makes up (not a dim_param as written); it loses to the exporter's
        names when ops tie them."""
        sym = self.symbol_for(name)
        self.generated.append(sym)
        return sym

    def value_type(self, vi: onnx.ValueInfoProto) -> tuple[DType, list[int | str]]:
        if vi.type.WhichOneof("value") != "tensor_type":
            raise UnsupportedError(
                f"{self.where}: graph input {vi.name!r} is a "
                f"{vi.type.WhichOneof('value') or 'untyped value'}; only tensors are supported"
            )
        tt = vi.type.tensor_type
        try:
            dtype = DType.from_onnx(tt.elem_type)
        except ValueError as exc:
            raise UnsupportedError(f"{self.where}: graph input {vi.name!r}: {exc}") from None
        if not tt.HasField("shape"):
            raise UnsupportedError(
                f"{self.where}: graph input {vi.name!r} has no shape (unknown rank); give it "
                "a shape, with dim_params for dynamic sizes"
            )
        dims: list[int | str] = []
        for axis, d in enumerate(tt.shape.dim):
            which = d.WhichOneof("value")
            own_symbol = f"{_ident(vi.name)}_dim{axis}"
            if which == "dim_value" and d.dim_value >= 0:
                dims.append(int(d.dim_value))
            elif which == "dim_param" and d.dim_param:
                param = d.dim_param
                if param in self.params_seen and not self.keep_dim_params:
                    # The name was seen before, on this input or another: the exporter's
                    # label, not a promise (ONNX Runtime lets the sizes differ). A symbol of
                    # its own; the ops that need the sizes equal tie them (ecograph.ir.unify).
                    dims.append(self.generated_symbol(f"{_ident(param)}_{own_symbol}"))
                else:
                    dims.append(self.symbol_for(param))
                    self.params_seen.add(param)
                    self.preferred.append(self.symbols[param])
            else:
                # No dim, or a negative dim_value (Paddle2ONNX writes -1): a dynamic dim.
                dims.append(self.generated_symbol(own_symbol))
        return dtype, dims

    # ---- graph

    def build(self, name: str | None) -> Graph:
        proto = self.proto
        g = proto.graph
        opsets = dict(DEFAULT_OPSET_IMPORTS)
        for imp in proto.opset_import:
            if imp.domain not in _ONNX_DOMAINS:
                opsets[imp.domain] = int(imp.version)
        graph = Graph(name or g.name or "main", opset_imports=opsets)
        self.graph = graph
        for prop in proto.metadata_props:
            if prop.key == METADATA_KEY:
                try:
                    saved = json.loads(prop.value)
                except ValueError:
                    raise ModelFormatError(f"{self.where}: bad {METADATA_KEY} JSON") from None
                if isinstance(saved, dict):
                    graph.metadata.update(saved)
        init_names = {t.name for t in g.initializer}
        for vi in g.input:
            if vi.name in init_names:
                continue  # an initializer listed as input: a constant, not a feed
            if not vi.name:
                raise ModelFormatError(f"{self.where}: a graph input has an empty name")
            if vi.name in self.values:
                raise ModelFormatError(f"{self.where}: graph input {vi.name!r} is listed twice")
            dtype, dims = self.value_type(vi)
            self.values[vi.name] = graph.add_input(vi.name, dtype, dims)
        for t in g.initializer:
            if t.name in self.values:
                raise ModelFormatError(f"{self.where}: initializer {t.name!r} is defined twice")
            self.add_constant(t.name, self.tensor_to_array(t, "initializer"))
        for sp in g.sparse_initializer:
            raise UnsupportedError(
                f"{self.where}: sparse initializer {sp.values.name!r} is not supported"
            )
        with recording_equal_dims() as equal_dims:
            for node in self.sorted_nodes():
                self.add_node(node)
        outputs: list[Value] = []
        for vi in g.output:
            value = self.values.get(vi.name)
            if value is None:
                raise ModelFormatError(
                    f"{self.where}: graph output {vi.name!r} is not produced by any node, "
                    "input or initializer"
                )
            if any(v is value for v in outputs):
                # ONNX may list a value twice; the IR needs a distinct value per output slot.
                value = graph.add_node("Identity", [value], name=f"{vi.name}_dup").output
            outputs.append(value)
        graph.set_outputs(outputs)
        tied: dict[str, str] = {}
        if not self.keep_dim_params:
            try:
                tied = unify_input_symbols(graph, equal_dims, [*self.preferred, *self.generated])
            except EcographError as exc:
                raise type(exc)(f"{self.where}: {exc}") from exc
        renamed = {s: p for p, s in self.symbols.items() if s != p and s not in tied}
        if renamed:
            graph.metadata[DIM_PARAMS_KEY] = renamed
        else:
            graph.metadata.pop(DIM_PARAMS_KEY, None)  # a stale mapping from an earlier export
        return graph

    def add_constant(self, onnx_name: str, array: np.ndarray) -> Value:
        assert self.graph is not None
        value = self.graph.add_constant(array, onnx_name)
        if value.name != onnx_name:
            self.graph.rename_value(value, onnx_name)
        self.values[onnx_name] = value
        return value

    def sorted_nodes(self) -> list[onnx.NodeProto]:
        """The graph's nodes in a topological order; ModelFormatError on a dangling input or
        a cycle (ONNX requires sorted nodes, but tools write unsorted ones; accept them)."""
        nodes = list(self.proto.graph.node)
        producer: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for out in node.output:
                if not out:
                    continue
                if out in producer or out in self.values:
                    raise ModelFormatError(
                        f"{self.where}: value {out!r} is defined twice (node "
                        f"{node.name or node.op_type})"
                    )
                producer[out] = i
        pending = [0] * len(nodes)
        consumers: list[list[int]] = [[] for _ in nodes]
        deps_of: list[set[int]] = []
        for i, node in enumerate(nodes):
            deps = set()
            for name in node.input:
                if not name or name in self.values:
                    continue
                if name not in producer:
                    raise ModelFormatError(
                        f"{self.where}: node {node.name or '?'} ({node.op_type}) uses "
                        f"{name!r}, which no node, graph input or initializer defines"
                    )
                deps.add(producer[name])
            pending[i] = len(deps)
            deps_of.append(deps)
            for d in deps:
                consumers[d].append(i)
        ready = deque(i for i in range(len(nodes)) if pending[i] == 0)
        seen = 0
        in_file_order = True
        while ready:
            i = ready.popleft()
            in_file_order = in_file_order and all(d < i for d in deps_of[i])
            seen += 1
            for c in consumers[i]:
                pending[c] -= 1
                if pending[c] == 0:
                    ready.append(c)
        if seen != len(nodes):
            stuck = next(nodes[i] for i in range(len(nodes)) if pending[i] > 0)
            raise ModelFormatError(
                f"{self.where}: the graph has a cycle through node "
                f"{stuck.name or '?'} ({stuck.op_type})"
            )
        if in_file_order:
            return nodes
        return [nodes[i] for i in _stable_topological(nodes, producer, self.values)]

    def add_node(self, node: onnx.NodeProto) -> None:
        assert self.graph is not None
        label = f"node {node.name or '?'} ({_qualified(node)})"
        attrs = {a.name: self.attr_value(a, label) for a in node.attribute}
        if node.op_type == "Constant" and node.domain in _ONNX_DOMAINS:
            self.add_constant(node.output[0], _constant_array(attrs, f"{self.where}: {label}"))
            return
        inputs = [self.values[name] if name else None for name in node.input]
        outputs = list(node.output)
        while outputs and not outputs[-1]:
            outputs.pop()
        names = [o or self.graph.unique_name(f"{node.name or node.op_type}_unused{i}")
                 for i, o in enumerate(outputs)]  # fmt: skip
        try:
            created = self.graph.add_node(
                node.op_type,
                inputs,
                attrs,
                domain=_ir_domain(node.domain),
                name=node.name or None,
                output_names=names or None,
            )
        except EcographError as exc:
            raise type(exc)(f"{self.where}: {exc}") from exc
        if created.op_type in self.widened and created.domain == "":
            version, schema = self.widened[created.op_type]
            _check_types_allowed(created, schema, version, self.where)
        for onnx_name, value in zip(outputs, created.outputs, strict=False):
            if onnx_name:
                self.values[onnx_name] = value

    def attr_value(self, attr: onnx.AttributeProto, label: str) -> Any:
        kind = attr.type
        A = onnx.AttributeProto  # noqa: N806 - reads like the proto's own constants
        if kind == A.FLOAT:
            return _short_float(attr.f)
        if kind == A.INT:
            return int(attr.i)
        if kind == A.STRING:
            return attr.s.decode("utf-8", errors="replace")
        if kind == A.FLOATS:
            return [_short_float(x) for x in attr.floats]
        if kind == A.INTS:
            return [int(x) for x in attr.ints]
        if kind == A.STRINGS:
            return [s.decode("utf-8", errors="replace") for s in attr.strings]
        if kind == A.TENSOR:
            return self.tensor_to_array(attr.t, f"attribute {attr.name!r} of {label}")
        raise UnsupportedError(
            f"{self.where}: {label}: attribute {attr.name!r} of type "
            f"{A.AttributeType.Name(kind)} is not supported"
        )


def _stable_topological(
    nodes: list[onnx.NodeProto], producer: dict[str, int], known: dict[str, Value]
) -> list[int]:
    """Depth-first topological order that keeps file order where it is already valid."""
    done: set[int] = set()
    order: list[int] = []
    for root in range(len(nodes)):
        stack = [(root, False)]
        while stack:
            i, expanded = stack.pop()
            if i in done:
                continue
            if expanded:
                done.add(i)
                order.append(i)
                continue
            stack.append((i, True))
            for name in reversed(nodes[i].input):
                if name and name not in known and producer[name] not in done:
                    stack.append((producer[name], False))
    return order


def _constant_array(attrs: dict[str, Any], label: str) -> np.ndarray:
    given = {k: v for k, v in attrs.items() if v is not None}
    if len(given) != 1:
        raise ModelFormatError(f"{label}: Constant needs exactly one value attribute")
    key, v = next(iter(given.items()))
    table = {
        "value": lambda: v,
        "value_float": lambda: np.array(v, dtype=np.float32),
        "value_int": lambda: np.array(v, dtype=np.int64),
        "value_floats": lambda: np.array(v, dtype=np.float32).reshape(-1),
        "value_ints": lambda: np.array(v, dtype=np.int64).reshape(-1),
        "value_string": lambda: np.array(v, dtype=object),
        "value_strings": lambda: np.array(list(v), dtype=object).reshape(-1),
    }
    if key not in table:
        raise UnsupportedError(f"{label}: Constant attribute {key!r} is not supported")
    return table[key]()


def _safe_external_path(base_dir: Path, location: str, label: str) -> Path:
    """The file `location` names, if it stays inside `base_dir` (after resolving symlinks)."""
    if not location:
        raise ModelFormatError(f"{label}: external data has no location")
    if "\x00" in location:
        raise ModelFormatError(f"{label}: external data location contains a NUL byte")
    if (
        os.path.isabs(location)
        or location.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", location)
    ):
        raise ModelFormatError(
            f"{label}: external data location {location!r} is an absolute path; it must be "
            "relative to the model's folder"
        )
    parts = re.split(r"[/\\]", location)
    if ".." in parts:
        raise ModelFormatError(
            f"{label}: external data location {location!r} leaves the model's folder ('..')"
        )
    base = base_dir.resolve()
    target = (base / location).resolve()
    if not target.is_relative_to(base):
        raise ModelFormatError(
            f"{label}: external data location {location!r} resolves to {target}, outside the "
            f"model's folder {base} (a symlink escapes it)"
        )
    kind = _not_a_regular_file(target)
    if kind == _MISSING:
        raise ModelFormatError(f"{label}: external data file {location!r} does not exist")
    if kind is not None:
        raise ModelFormatError(
            f"{label}: external data location {location!r} {kind}; it must name the weights "
            "file next to the model"
        )
    return target


def _short_float(value: float) -> float:
    """ONNX stores float attributes as float32; take the shortest decimal that reads back to
    the same float32 (1e-5 stays 1e-5 instead of becoming 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def _ident(text: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_]", "_", text) or "v"
    return out if out[0].isalpha() or out[0] == "_" else f"v_{out}"
