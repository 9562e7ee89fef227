"""The text form of a graph: `to_text` / `str(graph)` prints it, `parse` reads it back.

    graph main opset {"": 23, "ecograph": 1} {
      input %x: float32[batch, 16]
      const %w: float32[16, 4] = [0.5, -1.0, ...]
      %y: float32[batch, 4] = MatMul(%x, %w) @matmul
      %h: float32[batch, 4] = LeakyRelu(%y) {alpha = 0.1} @leaky
      output %h
    }

One node per line, every value with its type; absent optional inputs print as `_`; ops of
another domain print as `domain::Op`. Constants with at most `inline_limit` elements print
inline (exact: decimal where that round-trips bit for bit, else raw little-endian hex as
`hex"..."`); larger ones print `= external` and `parse` takes them from its `constants`
argument (`write_text`/`read_text` keep them in an `.npz` side file, loaded without pickle).
`parse(to_text(g, inline_limit=None))` equals `g` exactly (`graphs_equal`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.errors import ParseError
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Node, Value, set_text_printer
from ecograph.ir.registry import lookup_schema
from ecograph.ir.types import TensorType

DEFAULT_INLINE_LIMIT = 64
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-/]+\Z")

# ------------------------------------------------------------------- printing


def _name(sigil: str, name: str) -> str:
    return f"{sigil}{name}" if _PLAIN_NAME.match(name) else f"{sigil}{json.dumps(name)}"


def _float(x: Any) -> str:
    """Shortest decimal that reads back to the same value in x's own float type."""
    f = float(x)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    text = str(x) if isinstance(x, np.generic) else repr(f)
    return text if ("." in text or "e" in text) else text + ".0"


def _array_literal(arr: np.ndarray) -> str:
    dtype = DType.from_numpy(arr.dtype)
    flat = arr.reshape(-1)
    if dtype == DType.STRING:
        return "[" + ", ".join(json.dumps(str(s)) for s in flat) + "]"
    if dtype == DType.BOOL or dtype.is_integer:
        return "[" + ", ".join(str(int(x)) for x in flat) + "]"
    text = "[" + ", ".join(_float(x) for x in flat) + "]"
    back = np.array([float(x) for x in flat], dtype=np.float64).astype(arr.dtype)
    if back.tobytes() == np.ascontiguousarray(flat).tobytes():
        return text
    return f'hex"{np.ascontiguousarray(flat).tobytes().hex()}"'


def _attr_literal(value: Any, kind: str | None) -> str:
    if isinstance(value, np.ndarray):
        return f"tensor {TensorType.of(value)} {_array_literal(value)}"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return f"{kind or 'ints'}[]"
        return "[" + ", ".join(_attr_literal(v, (kind or "")[:-1] or None) for v in value) + "]"
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if kind in ("float", "floats") or isinstance(value, (float, np.floating)):
        return _float(float(value))
    return str(int(value))


def _decl(v: Value) -> str:
    return f"{_name('%', v.name)}: {v.type}"


def node_to_text(node: Node) -> str:
    """One node as a line of the text form (without indentation)."""
    schema = lookup_schema(node.op_type, node.domain)
    outs = ", ".join(_decl(v) for v in node.outputs)
    ins = ", ".join("_" if v is None else _name("%", v.name) for v in node.inputs)
    op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
    line = f"{outs} = {op}({ins})"
    attrs = {k: v for k, v in node.attrs.items() if v is not None}
    if attrs:
        parts = []
        for key in sorted(attrs):
            kind = schema.attrs[key].kind if schema and key in schema.attrs else None
            parts.append(f"{key} = {_attr_literal(attrs[key], kind)}")
        line += " {" + ", ".join(parts) + "}"
    return line + f" {_name('@', node.name)}"


def to_text(graph: Graph, *, inline_limit: int | None = DEFAULT_INLINE_LIMIT) -> str:
    """The text form. Constants with more than `inline_limit` elements print as external
    (None: everything inline)."""
    lines = [
        f"graph {_name('', graph.name)} opset {json.dumps(graph.opset_imports, sort_keys=True)} {{"
    ]
    if graph.metadata:
        lines.append(f"  metadata {json.dumps(graph.metadata, sort_keys=True, default=str)}")
    for v in graph.inputs:
        lines.append(f"  input {_decl(v)}")
    for v in graph.constants.values():
        arr = v.const_value
        assert arr is not None
        if inline_limit is None or arr.size <= inline_limit:
            lines.append(f"  const {_decl(v)} = {_array_literal(arr)}")
        else:
            lines.append(f"  const {_decl(v)} = external")
    for node in graph.nodes:
        lines.append("  " + node_to_text(node))
    for v in graph.outputs:
        lines.append(f"  output {_name('%', v.name)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


set_text_printer(to_text)  # str(graph) prints the text form (see ecograph.ir.graph)


# -------------------------------------------------------------------- parsing


class _Cursor:
    def __init__(self, text: str, line_no: int) -> None:
        self.text = text
        self.pos = 0
        self.line_no = line_no

    def error(self, message: str) -> ParseError:
        return ParseError(
            f"line {self.line_no}, column {self.pos + 1}: {message}\n  {self.text}\n"
            f"  {' ' * self.pos}^"
        )

    def ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def at_end(self) -> bool:
        self.ws()
        return self.pos >= len(self.text)

    def peek(self, s: str) -> bool:
        self.ws()
        return self.text.startswith(s, self.pos)

    def accept(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str) -> None:
        if not self.accept(s):
            raise self.error(f"expected {s!r}")

    def regex(self, pattern: str, what: str) -> str:
        self.ws()
        m = re.compile(pattern).match(self.text, self.pos)
        if not m:
            raise self.error(f"expected {what}")
        self.pos = m.end()
        return m.group(0)

    def json_string(self) -> str:
        self.ws()
        if not self.peek('"'):
            raise self.error("expected a string")
        decoder = json.JSONDecoder()
        try:
            value, end = decoder.raw_decode(self.text, self.pos)
        except json.JSONDecodeError as exc:
            raise self.error(f"bad string: {exc.msg}") from None
        self.pos = end
        return value

    def json_value(self) -> Any:
        self.ws()
        try:
            value, end = json.JSONDecoder().raw_decode(self.text, self.pos)
        except json.JSONDecodeError as exc:
            raise self.error(f"bad JSON: {exc.msg}") from None
        self.pos = end
        return value

    def name(self, sigil: str) -> str:
        self.expect(sigil)
        if self.text.startswith('"', self.pos):
            return self.json_string()
        return self.regex(r"[A-Za-z0-9_.\-/]+", f"a name after {sigil!r}")

    def tensor_type(self) -> TensorType:
        self.ws()
        start = self.pos
        self.regex(r"[a-z0-9]+", "a dtype")
        self.expect("[")
        depth = 1
        while self.pos < len(self.text) and depth:
            ch = self.text[self.pos]
            depth += ch == "["
            depth -= ch == "]"
            self.pos += 1
        if depth:
            raise self.error("unclosed '[' in a type")
        try:
            return TensorType.parse(self.text[start : self.pos])
        except ValueError as exc:
            raise self.error(str(exc)) from None

    def number(self) -> int | float:
        tok = self.regex(r"-?(?:inf|nan|\d+\.\d*(?:e[+-]?\d+)?|\d+e[+-]?\d+|\d+)", "a number")
        if tok in ("inf", "-inf", "nan", "-nan"):
            return float(tok)
        return float(tok) if any(c in tok for c in ".e") else int(tok)

    def array(self, t: TensorType) -> np.ndarray:
        self.ws()
        shape = t.static_shape() if t.is_static else None
        if shape is None:
            raise self.error(f"a constant needs a static shape, got {t}")
        dtype = t.dtype
        if self.accept('hex"'):
            hexdata = self.regex(r"[0-9a-f]*", "hex digits")
            self.expect('"')
            raw = bytes.fromhex(hexdata)
            arr = np.frombuffer(raw, dtype=dtype.numpy).copy()
        else:
            self.expect("[")
            items: list[Any] = []
            while not self.accept("]"):
                if items:
                    self.expect(",")
                items.append(self.json_string() if dtype == DType.STRING else self.number())
            if dtype == DType.STRING:
                arr = np.array(items, dtype=object)
            elif dtype.is_float:
                arr = np.array(items, dtype=np.float64).astype(dtype.numpy)
            else:
                arr = np.array(items, dtype=dtype.numpy)
        expected = int(np.prod(shape, dtype=np.int64))
        if arr.size != expected:
            raise self.error(f"{arr.size} values for type {t} ({expected} expected)")
        return arr.reshape(shape)

    def attr_value(self, kind: str | None) -> Any:
        self.ws()
        if self.accept("tensor"):
            t = self.tensor_type()
            return self.array(t)
        for empty in ("ints[]", "floats[]", "strings[]"):
            if self.accept(empty):
                return []
        if self.peek('"'):
            return self.json_string()
        if self.accept("["):
            items: list[Any] = []
            while not self.accept("]"):
                if items:
                    self.expect(",")
                items.append(self.attr_value(kind[:-1] if kind else None))
            if kind == "floats":
                items = [float(x) for x in items]
            return items
        value = self.number()
        return float(value) if kind == "float" else value


def parse(text: str, constants: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Parse the text form. External constants are looked up in `constants` by name."""
    lines = text.splitlines()
    graph: Graph | None = None
    closed = False
    pending_outputs: list[str] = []
    for line_no, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        cur = _Cursor(stripped, line_no)
        if closed:
            raise cur.error("text after the closing '}'")
        if graph is None:
            cur.expect("graph")
            cur.ws()
            name = cur.json_string() if cur.peek('"') else cur.regex(r"[A-Za-z0-9_.\-/]+", "a name")
            cur.expect("opset")
            opsets = cur.json_value()
            cur.expect("{")
            graph = Graph(name, opset_imports=opsets)
            continue
        if cur.accept("}"):
            closed = True
            continue
        if cur.accept("metadata "):
            graph.metadata = cur.json_value()
        elif cur.accept("input "):
            name = cur.name("%")
            cur.expect(":")
            t = cur.tensor_type()
            if graph.has_value(name):
                raise cur.error(f"%{name} is defined twice")
            graph.add_input(name, t.dtype, t.shape)
        elif cur.accept("const "):
            name = cur.name("%")
            cur.expect(":")
            t = cur.tensor_type()
            cur.expect("=")
            if cur.accept("external"):
                if constants is None or name not in constants:
                    raise cur.error(f"external constant %{name} was not given in `constants`")
                arr = constants[name]
                if TensorType.of(arr) != t:
                    raise cur.error(f"constant %{name} is {TensorType.of(arr)}, text says {t}")
            else:
                arr = cur.array(t)
            if graph.has_value(name):
                raise cur.error(f"%{name} is defined twice")
            value = graph.add_constant(arr, name)
            assert value.name == name
        elif cur.accept("output "):
            pending_outputs.append(cur.name("%"))
        else:
            _parse_node(cur, graph)
        if not cur.at_end():
            raise cur.error("unexpected text at the end of the line")
    if graph is None:
        raise ParseError("empty text: expected 'graph NAME opset {...} {'")
    if not closed:
        raise ParseError(f"line {len(lines)}: missing the closing '}}'")
    outs = []
    for name in pending_outputs:
        if not graph.has_value(name):
            raise ParseError(f"output %{name} is not defined")
        outs.append(graph.value(name))
    graph.set_outputs(outs)
    return graph


def _parse_node(cur: _Cursor, graph: Graph) -> None:
    out_names: list[str] = []
    out_types: list[TensorType] = []
    while True:
        out_names.append(cur.name("%"))
        cur.expect(":")
        out_types.append(cur.tensor_type())
        if not cur.accept(","):
            break
    cur.expect("=")
    op = cur.regex(r"[A-Za-z0-9_.]+(?:::[A-Za-z0-9_]+)?", "an op name")
    domain, _, op_type = op.rpartition("::")
    cur.expect("(")
    inputs: list[Value | None] = []
    while not cur.accept(")"):
        if inputs:
            cur.expect(",")
        if cur.accept("_"):
            inputs.append(None)
            continue
        vname = cur.name("%")
        if not graph.has_value(vname):
            raise cur.error(f"%{vname} is used before it is defined")
        inputs.append(graph.value(vname))
    schema = lookup_schema(op_type, domain)
    attrs: dict[str, Any] = {}
    if cur.accept("{"):
        while not cur.accept("}"):
            if attrs:
                cur.expect(",")
            key = cur.regex(r"[A-Za-z_][A-Za-z0-9_]*", "an attribute name")
            cur.expect("=")
            kind = schema.attrs[key].kind if schema and key in schema.attrs else None
            attrs[key] = cur.attr_value(kind)
    node_name = cur.name("@")
    for n in out_names:
        if graph.has_value(n):
            raise cur.error(f"%{n} is defined twice")
    try:
        graph.add_node(
            op_type,
            inputs,
            attrs,
            domain=domain,
            name=node_name,
            output_names=out_names,
            output_types=out_types,
        )
    except Exception as exc:
        raise cur.error(str(exc)) from exc


# ---------------------------------------------------------- files, copy, equality


def write_text(graph: Graph, path: str | os.PathLike[str], *, inline_limit: int = 64) -> None:
    """Write the text form to `path`, large constants to `path + '.npz'` (raw bytes)."""
    path = Path(path)
    text = to_text(graph, inline_limit=inline_limit)
    big = {
        name: v.const_value
        for name, v in graph.constants.items()
        if v.const_value is not None and v.const_value.size > inline_limit
    }
    _atomic_write(path, text.encode())
    side = path.with_name(path.name + ".npz")
    if big:
        tmp = side.with_name(side.name + ".tmp.npz")
        raw: dict[str, Any] = {
            k: np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8) for k, a in big.items()
        }
        np.savez(tmp, **raw)
        os.replace(tmp, side)
    elif side.exists():
        side.unlink()


def read_text(path: str | os.PathLike[str]) -> Graph:
    """Read a graph written by `write_text`."""
    path = Path(path)
    text = path.read_text()
    side = path.with_name(path.name + ".npz")
    raw: dict[str, np.ndarray] = {}
    if side.exists():
        with np.load(side, allow_pickle=False) as data:
            raw = {k: data[k] for k in data.files}
    # Types of external constants come from the text; decode raw bytes with them.
    constants: dict[str, np.ndarray] = {}
    for m in re.finditer(r"const (%\S+|%\"[^\"]*\"): (\S+\[[^\]]*\]) = external", text):
        name = m.group(1)[1:]
        name = json.loads(name) if name.startswith('"') else name
        t = TensorType.parse(m.group(2))
        if name not in raw:
            raise ParseError(f"{path}: external constant %{name} is missing from {side}")
        constants[name] = np.frombuffer(raw[name].tobytes(), t.dtype.numpy).reshape(
            t.static_shape()
        )
    return parse(text, constants)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def explain_difference(a: Graph, b: Graph) -> str | None:
    """The first structural difference between two graphs, or None if they are equal."""
    if a.name != b.name:
        return f"names differ: {a.name!r} vs {b.name!r}"
    if a.opset_imports != b.opset_imports:
        return f"opset imports differ: {a.opset_imports} vs {b.opset_imports}"
    if a.metadata != b.metadata:
        return f"metadata differ: {a.metadata} vs {b.metadata}"
    for what, xs, ys in (("input", a.inputs, b.inputs), ("output", a.outputs, b.outputs)):
        if [_decl(v) for v in xs] != [_decl(v) for v in ys]:
            return f"{what}s differ: {[_decl(v) for v in xs]} vs {[_decl(v) for v in ys]}"
    ca, cb = a.constants, b.constants
    if list(ca) != list(cb):
        return f"constants differ: {list(ca)} vs {list(cb)}"
    for name in ca:
        x, y = ca[name].const_value, cb[name].const_value
        assert x is not None and y is not None
        if ca[name].type != cb[name].type or not _same_array(x, y):
            return f"constant %{name} differs"
    na, nb = list(a.nodes), list(b.nodes)
    if len(na) != len(nb):
        return f"node counts differ: {len(na)} vs {len(nb)}"
    for x, y in zip(na, nb, strict=True):
        if node_to_text(x) != node_to_text(y) or not _same_attrs(x.attrs, y.attrs):
            return f"nodes differ:\n  {node_to_text(x)}\n  {node_to_text(y)}"
    return None


def graphs_equal(a: Graph, b: Graph) -> bool:
    """Structural equality: names, types, constants bit for bit, nodes in order, attributes."""
    return explain_difference(a, b) is None


def _same_array(x: np.ndarray, y: np.ndarray) -> bool:
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if x.dtype == object:
        return bool(np.all(x == y))
    return np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes()


def _same_attrs(x: Mapping[str, Any], y: Mapping[str, Any]) -> bool:
    xs = {k: v for k, v in x.items() if v is not None}
    ys = {k: v for k, v in y.items() if v is not None}
    if xs.keys() != ys.keys():
        return False
    for k in xs:
        a, b = xs[k], ys[k]
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and _same_array(a, b)):
                return False
        elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            continue
        elif (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b):
            return False
    return True
