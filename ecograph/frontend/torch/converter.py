"""ATen -> IR conversion: the converter loop and the op table.

`ATEN_TABLE` maps an ATen overload name ("aten.add.Tensor") or a Python builtin used on
symbolic sizes ("operator.mul") to a function `fn(cx, node) -> Value | tuple | None` that emits
ONNX-semantics IR nodes through `cx` (a `Converter`). Adding an op is one decorated function:

    @aten("aten.relu.default")
    def _relu(cx, node):
        return cx.op("Relu", cx.tensor(cx.arg(node, "self")))

Symbolic sizes (SymInt) are carried as int64 tensors of shape [1], computed at run time from
`Shape` of the graph input where each torch symbol first appears, so one graph runs at any size.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ecograph.errors import EcographError, TypeInferenceError, UnsupportedError
from ecograph.frontend.torch.capture import (
    meta_type,
    rename_outputs,
    tensor_to_numpy,
    torch_dtype_to_ir,
)
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Value

if TYPE_CHECKING:
    from ecograph.frontend.torch.capture import _Captured

ConvertFn = Callable[["Converter", Any], Any]
ATEN_TABLE: dict[str, ConvertFn] = {}

INT64_MAX = 9223372036854775807


def aten(*names: str) -> Callable[[ConvertFn], ConvertFn]:
    """Register `fn` as the converter of each ATen op name (replacing an earlier one)."""

    def decorate(fn: ConvertFn) -> ConvertFn:
        for name in names:
            ATEN_TABLE[name] = fn
        return fn

    return decorate


class NotConvertedError(EcographError):
    """Raised by a converter for a case it does not handle; collected, then reported."""


class _Poison:
    """Stands for the result of a node that could not be converted."""


_NOOP_TARGETS = {
    "aten._assert_tensor_metadata.default",
    "aten._assert_scalar.default",
    "aten.sym_constrain_range_for_size.default",
    "aten.sym_constrain_range.default",
    "aten._assert_async.msg",
    "aten._assert_async.default",
    "aten._check_is_size.default",
}


def target_name(target: Any) -> str:
    """The table key of an fx call_function target ("aten.add.Tensor", "operator.mul")."""
    module = getattr(target, "__module__", None)
    if module == "_operator":
        return f"operator.{target.__name__}"
    if isinstance(target, type(target_name)) or module in ("math", "builtins"):
        return f"{module}.{getattr(target, '__qualname__', target.__name__)}"
    return str(target)


def _location(node: Any) -> str:
    """Where an fx node came from: its module path and the last user source line."""
    parts = []
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, kind = list(stack.values())[-1]
        kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
        parts.append(f"module {path or '<root>'} ({kind_name.rsplit('.', 1)[-1]})")
    trace = node.meta.get("stack_trace")
    if trace:
        lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
        frames = [
            (lines[i].replace("File ", "", 1), lines[i + 1] if i + 1 < len(lines) else "")
            for i, line in enumerate(lines)
            if line.startswith("File ")
        ]
        # The innermost frame outside torch itself is the model's own line.
        own = [f for f in frames if "/torch/" not in f[0].replace("\\", "/")]
        if frames:
            where, code = (own or frames)[-1]
            parts.append(f"{where}: {code}" if code else where)
    return ", ".join(parts) or f"fx node {node.name}"


class _ShapeDim:
    """A dim read from a value's shape at run time (for dims of intermediate values)."""

    def __init__(self, value: Value, axis: int) -> None:
        self.value = value
        self.axis = axis


class Converter:
    """Walks a captured ATen fx graph in order and emits IR through the op table."""

    def __init__(self, captured: _Captured, name: str = "main") -> None:
        self.captured = captured
        self.graph = Graph(name, metadata={"source": f"torch.{captured.method}"})
        self.names = dict(captured.symbol_names)
        self.env: dict[Any, Any] = {}
        self._sym_sources: dict[str, tuple[Value, int]] = {}
        self._sym_cache: dict[str, Value] = {}
        self._const_cache: dict[tuple[Any, ...], Value] = {}
        self._shape_cache: dict[tuple[int, ...], Value] = {}
        self._failures: dict[str, list[tuple[str, str]]] = defaultdict(list)

    # ----------------------------------------------------------------- driver

    def run(self) -> Graph:
        import torch

        fx_graph = self.captured.graph_module.graph
        # make_fx leaves unused tuple items (batch-norm statistics, pool indices) behind.
        fx_graph.eliminate_dead_code()
        outputs: list[Any] = []
        for node in fx_graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node)
            elif node.op == "get_attr":
                self.env[node] = self._constant_tensor(node.target, _get_attr(node))
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                outputs = list(torch.utils._pytree.tree_flatten(node.args[0])[0])
            else:
                self._fail(node, f"fx node kind {node.op!r}", "call_module/call_method nodes")
        self._raise_failures()
        values = []
        for i, out in enumerate(outputs):
            if not hasattr(out, "op"):
                raise UnsupportedError(
                    f"output {i} is a Python {type(out).__name__} ({out!r}), not a tensor; "
                    "return tensors only"
                )
            value = self.env.get(out)
            if not isinstance(value, Value):
                raise UnsupportedError(f"output {i} (fx node {out.name}) is not a tensor")
            values.append(value)
        names = self.captured.output_names
        if len(names) != len(values):
            names = [f"output_{i}" for i in range(len(values))]
        rename_outputs(self.graph, values, names)
        # Buffers the forward never reads (num_batches_tracked, unused rotary tables).
        for const in self.graph.constants.values():
            if not const.has_uses():
                self.graph.remove_constant(const)
        return self.graph

    def _fail(self, node: Any, op: str, reason: str) -> None:
        self._failures[op].append((_location(node), reason))
        self.env[node] = _Poison()

    def _raise_failures(self) -> None:
        if self._failures:
            raise _unsupported_error(self._failures)

    def _call(self, node: Any) -> None:
        name = target_name(node.target)
        if name in _NOOP_TARGETS:
            return
        if (
            name not in ATEN_TABLE
            and node.users
            and all(target_name(user.target) in _NOOP_TARGETS for user in node.users)
        ):
            return  # the condition of a runtime shape assertion, which we do not check
        if name not in ATEN_TABLE and _is_symint(self.val(node)):
            # Any Python function on sizes (torch.sym_max, math.ceil, ...): torch has already
            # worked out its value as a size expression; compute that expression.
            try:
                self.env[node] = self.sym_value(self.val(node))
            except NotConvertedError as exc:
                self._fail(node, name, str(exc))
            return
        if name not in ATEN_TABLE:
            self._fail(node, name, "")
            return
        if any(isinstance(self.env.get(a), _Poison) for a in _fx_inputs(node)):
            self.env[node] = _Poison()  # the root cause is already reported
            return
        fn = ATEN_TABLE[name]
        try:
            result = fn(self, node)
        except NotConvertedError as exc:
            self._fail(node, name, str(exc))
            return
        except EcographError as exc:
            exc.add_note(f"while converting fx node {node.name} ({name}) at {_location(node)}")
            raise
        self.env[node] = result
        if isinstance(result, Value):
            self._reconcile(node, result)

    def _reconcile(self, node: Any, value: Value) -> None:
        """Check the IR type against torch's and take torch's dims where the IR lost track
        (data-dependent dims it had to invent); an int mismatch is a converter bug."""
        import torch

        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return
        try:
            expected = meta_type(val, self.names, f"fx node {node.name}: ")
        except TypeInferenceError:
            return  # torch's size is an expression dims cannot spell (Max, Min): keep the IR's
        got = value.type
        if expected.dtype != got.dtype or expected.rank != got.rank:
            raise TypeInferenceError(
                f"converter for {target_name(node.target)} made {got}, torch says {expected} "
                f"(fx node {node.name}); this is an ecograph bug, please report it"
            )
        if got.shape == expected.shape:
            return
        known = set().union(*(v.type.symbols for v in self.graph.inputs))
        for a, b in zip(got.shape, expected.shape, strict=True):
            if a == b or symbolic.symbols(a) - known:
                continue  # equal, or a dim the IR had to invent: take torch's
            raise TypeInferenceError(
                f"converter for {target_name(node.target)} made {got}, torch says "
                f"{expected} (fx node {node.name}); this is an ecograph bug, please report it"
            )
        if value.producer is not None and value.graph is self.graph:
            value.type = expected

    # ------------------------------------------------------------ placeholders

    def _placeholder(self, node: Any) -> None:
        import torch

        cap = self.captured
        if node.name in cap.constants:
            name = cap.constant_names.get(node.name, node.name)
            self.env[node] = self._constant_tensor(name, cap.constants[node.name])
            return
        val = node.meta.get("val")
        name = cap.input_names.get(node.name, node.name)
        if not isinstance(val, torch.Tensor) and not node.users:
            # torch.export specialized a Python value (int, bool, None): its example value is
            # baked into the graph. Record it so the graph's assumptions stay visible.
            self.graph.metadata.setdefault("baked_inputs", {})[name] = repr(val)
            return
        if not isinstance(val, torch.Tensor):
            raise UnsupportedError(
                f"input {name!r} is a {type(val).__name__}, not a tensor; ecograph graphs take "
                "tensor inputs only (bake Python scalars into the module)"
            )
        symbols = []
        for axis, size in enumerate(val.shape):
            if isinstance(size, torch.SymInt) and getattr(size.node.expr, "is_Symbol", False):
                symbol = str(size.node.expr)
                symbols.append((symbol, axis))
                # A dim without a user-given Dim name is named after its input and axis.
                if symbol not in self.names:
                    self.names[symbol] = self._fresh_dim_name(f"{name}_dim{axis}")
        t = meta_type(val, self.names, f"input {name!r}: ")
        value = self.graph.add_input(name, t.dtype, t.shape)
        self.env[node] = value
        for symbol, axis in symbols:
            self._sym_sources.setdefault(symbol, (value, axis))

    def _fresh_dim_name(self, hint: str) -> str:
        hint = "".join(c if c.isalnum() or c == "_" else "_" for c in hint)
        if not symbolic.is_symbol_name(hint):
            hint = f"d_{hint}"
        taken = set(self.names.values())
        name, i = hint, 1
        while name in taken:
            name, i = f"{hint}_{i}", i + 1
        return name

    def _constant_tensor(self, name: str, tensor: Any) -> Value:
        import torch

        if not isinstance(tensor, torch.Tensor):
            raise UnsupportedError(f"attribute {name!r} is a {type(tensor).__name__}, not a tensor")
        torch_dtype_to_ir(tensor.dtype, f"weight {name!r}: ")
        return self.graph.add_constant(tensor_to_numpy(tensor), name)

    # ------------------------------------------------------------ arg helpers

    def args(self, node: Any) -> dict[str, Any]:
        """The node's arguments by schema name, with defaults filled in."""
        schema = getattr(node.target, "_schema", None)
        if schema is None:
            return {f"arg{i}": a for i, a in enumerate(node.args)} | dict(node.kwargs)
        out: dict[str, Any] = {}
        for i, arg in enumerate(schema.arguments):
            if i < len(node.args):
                out[arg.name] = node.args[i]
            elif arg.name in node.kwargs:
                out[arg.name] = node.kwargs[arg.name]
            elif arg.has_default_value():
                out[arg.name] = arg.default_value
            else:
                out[arg.name] = None
        return out

    def arg(self, node: Any, name: str) -> Any:
        return self.args(node)[name]

    def val(self, x: Any) -> Any:
        """torch's fake value (meta["val"]) of an fx node, or `x` itself."""
        return x.meta.get("val") if hasattr(x, "meta") else x

    def out_dtype(self, node: Any) -> DType:
        return torch_dtype_to_ir(self.val(node).dtype, f"fx node {node.name}: ")

    def tensor(self, x: Any, dtype: DType | None = None) -> Value:
        """The IR value of an fx node (a tensor) or a Python scalar as a constant; cast to
        `dtype` when given and different."""
        if hasattr(x, "op"):
            value = self.env[x]
            if not isinstance(value, Value):
                raise NotConvertedError(f"fx node {x.name} is not a tensor")
            if not _is_tensor(self.val(x)):
                # A symbolic size used as a number: sizes are int64 [1], numbers rank 0.
                value = self.op("Squeeze", value, self.ints([0]))
        elif isinstance(x, (bool, int, float, np.number)):
            np_dtype = dtype.numpy if dtype is not None else _scalar_dtype(x)
            return self.const(np.array(x, dtype=np_dtype))
        else:
            raise NotConvertedError(f"argument {x!r} of type {type(x).__name__} is not a tensor")
        if dtype is not None and value.dtype != dtype:
            value = self.op("Cast", value, to=dtype.onnx)
        return value

    def const(self, array: np.ndarray, name: str = "const") -> Value:
        """A small constant, shared between uses when equal."""
        if array.size <= 16:
            key = (array.dtype.str, array.shape, array.tobytes())
            hit = self._const_cache.get(key)
            if hit is not None:
                return hit
            value = self.graph.add_constant(array, name)
            self._const_cache[key] = value
            return value
        return self.graph.add_constant(array, name)

    def ints(self, values: Sequence[int]) -> Value:
        return self.const(np.array(list(values), dtype=np.int64))

    def op(self, op_type: str, *inputs: Value | None, **attrs: Any) -> Value:
        node = self.graph.add_node(op_type, list(inputs), attrs)
        return node.outputs[0]

    def op_multi(self, op_type: str, *inputs: Value | None, num_outputs: int, **attrs: Any):
        node = self.graph.add_node(op_type, list(inputs), attrs, num_outputs=num_outputs)
        return node.outputs

    # ------------------------------------------------------- symbolic sizes

    def size(self, x: Any) -> Value:
        """An int or a SymInt argument as an int64 [1] tensor."""
        if isinstance(x, _ShapeDim):
            return self.op("Shape", x.value, start=x.axis, end=x.axis + 1)
        if hasattr(x, "op"):
            value = self.env.get(x)
            if isinstance(value, Value):
                return value
            return self.sym_value(self.val(x))
        return self.sym_value(x)

    def sym_value(self, size: Any) -> Value:
        """An int / SymInt as an int64 [1] tensor computed from the graph inputs' shapes."""
        import torch

        if isinstance(size, torch.SymInt):
            expr = size.node.expr
            if expr.is_number:
                return self.ints([int(expr)])
            return self._emit_expr(expr)
        if isinstance(size, (int, np.integer)):
            return self.ints([int(size)])
        raise NotConvertedError(f"size {size!r} is not an int")

    def _emit_expr(self, expr: Any) -> Value:
        import sympy
        from torch.utils._sympy.functions import FloorDiv, Mod, PythonMod
        from torch.utils._sympy.functions import Max as TorchMax
        from torch.utils._sympy.functions import Min as TorchMin

        key = str(expr)
        hit = self._sym_cache.get(key)
        if hit is not None:
            return hit
        if expr.is_Integer:
            out = self.ints([int(expr)])
        elif expr.is_Symbol:
            source = self._sym_sources.get(key)
            if source is None:
                raise NotConvertedError(
                    f"the size symbol {key} is not the size of any input dim (data-dependent "
                    "or derived dims are not supported yet)"
                )
            value, axis = source
            out = self.op("Shape", value, start=axis, end=axis + 1)
        elif isinstance(expr, sympy.Add):
            parts = [self._emit_expr(a) for a in expr.args]
            out = parts[0]
            for p in parts[1:]:
                out = self.op("Add", out, p)
        elif isinstance(expr, sympy.Mul):
            parts = [self._emit_expr(a) for a in expr.args]
            out = parts[0]
            for p in parts[1:]:
                out = self.op("Mul", out, p)
        elif isinstance(expr, sympy.Pow) and expr.exp.is_Integer and int(expr.exp) > 0:
            base = self._emit_expr(expr.base)
            out = base
            for _ in range(int(expr.exp) - 1):
                out = self.op("Mul", out, base)
        elif isinstance(expr, FloorDiv):
            # Sizes are non-negative, where truncating Div equals floor division.
            out = self.op("Div", self._emit_expr(expr.args[0]), self._emit_expr(expr.args[1]))
        elif isinstance(expr, (Mod, PythonMod)):
            out = self.op("Mod", self._emit_expr(expr.args[0]), self._emit_expr(expr.args[1]))
        elif isinstance(expr, (sympy.Max, sympy.Min, TorchMax, TorchMin)):
            op = "Max" if isinstance(expr, (sympy.Max, TorchMax)) else "Min"
            out = self.op(op, *[self._emit_expr(a) for a in expr.args])
        else:
            raise NotConvertedError(f"size expression {expr} ({type(expr).__name__})")
        self._sym_cache[key] = out
        return out

    def shape_vec(self, items: Sequence[Any]) -> Value:
        """A shape list of ints and SymInt nodes as one int64 1-D tensor."""
        static = [i for i in items if isinstance(i, (int, np.integer))]
        if len(static) == len(items):
            return self.ints([int(i) for i in items])
        parts = [self.size(i) for i in items]
        # Many reshapes share a target ([batch, seq, heads, head_dim]): build each once.
        key = tuple(id(p) for p in parts)
        hit = self._shape_cache.get(key)
        if hit is None:
            hit = self._shape_cache[key] = self.op("Concat", *parts, axis=0)
        return hit

    def scalar(self, x: Any, dtype: DType) -> Value:
        """An int / SymInt / number as a rank-0 tensor of `dtype` (Range wants scalars)."""
        if isinstance(x, (bool, int, float, np.number)):
            return self.const(np.array(x, dtype=dtype.numpy))
        value = self.op("Squeeze", self.size(x), self.ints([0]))
        return value if dtype == DType.INT64 else self.op("Cast", value, to=dtype.onnx)

    def shape_of(self, value: Value) -> Value:
        """The shape of a value as int64 [rank], a constant when static."""
        if value.type.is_static:
            return self.ints(value.type.static_shape())
        return self.op("Shape", value)


def _get_attr(node: Any) -> Any:
    obj = node.graph.owning_module
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def _is_symint(val: Any) -> bool:
    import torch

    return isinstance(val, torch.SymInt)


def _is_tensor(val: Any) -> bool:
    import torch

    return isinstance(val, torch.Tensor)


def _fx_inputs(node: Any) -> list[Any]:
    out: list[Any] = []

    def visit(a: Any) -> None:
        if hasattr(a, "op"):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            for x in a:
                visit(x)
        elif isinstance(a, dict):
            for x in a.values():
                visit(x)

    visit(node.args)
    visit(node.kwargs)
    return out


def _scalar_dtype(x: Any) -> np.dtype:
    if isinstance(x, bool):
        return np.dtype(np.bool_)
    if isinstance(x, (int, np.integer)):
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def _unsupported_error(failures: dict[str, list[tuple[str, str]]]) -> UnsupportedError:
    total = sum(len(v) for v in failures.values())
    lines = [f"from_torch: {len(failures)} op type(s) are not supported yet ({total} node(s)):"]
    for op, places in sorted(failures.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"  {op} x{len(places)}")
        shown = Counter(f"{loc}{f' [{why}]' if why else ''}" for loc, why in places)
        for text, count in list(shown.items())[:8]:
            lines.append(f"    - {text}" + (f" (x{count})" if count > 1 else ""))
        if len(shown) > 8:
            lines.append(f"    - ... and {len(shown) - 8} more places")
    lines.append(
        "Add a converter with @ecograph.frontend.torch.register_aten('<op name>') or rewrite "
        "those parts of the model with supported ops."
    )
    err = UnsupportedError("\n".join(lines))
    err.unsupported = {op: [loc for loc, _ in places] for op, places in failures.items()}  # type: ignore[attr-defined]
    return err


# ===================================================================== table

# ------------------------------------------------------------ pass-through


@aten(
    "aten.clone.default",
    "aten.alias.default",
    "aten.detach.default",
    "aten.lift_fresh_copy.default",
    "aten.contiguous.default",
    "aten.dropout.default",
    "aten.alias_copy.default",
)
def _passthrough(cx: Converter, node: Any) -> Any:
    return cx.tensor(node.args[0])


@aten("aten.native_dropout.default")
def _native_dropout(cx: Converter, node: Any) -> tuple[Value, None]:
    if cx.args(node).get("train"):
        raise NotConvertedError("dropout in training mode (call module.eval())")
    return cx.tensor(node.args[0]), None


@aten(
    "aten._to_copy.default",
    "aten.to.dtype",
    "aten.to.dtype_layout",
    "aten._to_dtype.default",
    "aten.type_as.default",
)
def _to_copy(cx: Converter, node: Any) -> Value:
    return cx.tensor(node.args[0], cx.out_dtype(node))


@aten("aten.sym_size.int", "aten.sym_numel.default")
def _sym_size(cx: Converter, node: Any) -> Value:
    return cx.sym_value(cx.val(node))


@aten(
    "operator.add", "operator.sub", "operator.mul", "operator.floordiv", "operator.mod",
    "operator.neg", "operator.truediv",
)  # fmt: skip
def _sym_arith(cx: Converter, node: Any) -> Value:
    import torch

    val = cx.val(node)
    if not isinstance(val, (torch.SymInt, int)):
        raise NotConvertedError(f"Python arithmetic on {type(val).__name__} values")
    return cx.sym_value(val)


@aten("operator.getitem")
def _getitem(cx: Converter, node: Any) -> Any:
    seq = cx.env[node.args[0]]
    item = seq[node.args[1]]
    if item is None:
        raise NotConvertedError(f"output {node.args[1]} of {node.args[0].name} is not supported")
    return item


# ------------------------------------------------------------ elementwise


def _promote(cx: Converter, node: Any, names: Sequence[str]) -> DType:
    """The dtype torch computes a binary op in (before a comparison makes it bool)."""
    import torch

    a = cx.args(node)
    dummies = []
    for n in names:
        x = a[n]
        v = cx.val(x)
        if isinstance(v, torch.Tensor):
            dummies.append(torch.zeros((1,) if v.dim() else (), dtype=v.dtype))
        elif isinstance(v, torch.SymInt):
            dummies.append(1)
        else:
            dummies.append(v)
    if len(dummies) == 1:
        d = dummies[0]
        return torch_dtype_to_ir(d.dtype if isinstance(d, torch.Tensor) else torch.tensor(d).dtype)
    result = torch.result_type(dummies[0], dummies[1])
    return torch_dtype_to_ir(result)


def _binary(onnx_op: str, *, scale_other: bool = False, compare: bool = False) -> ConvertFn:
    def convert(cx: Converter, node: Any) -> Value:
        a = cx.args(node)
        first, second = ("self", "other") if "other" in a else list(a)[:2]
        dtype = _promote(cx, node, [first, second]) if compare else cx.out_dtype(node)
        x = cx.tensor(a[first], dtype)
        y = cx.tensor(a[second], dtype)
        alpha = a.get("alpha", 1)
        if scale_other and alpha not in (None, 1):
            y = cx.op("Mul", y, cx.tensor(alpha, dtype))
        return cx.op(onnx_op, x, y)

    return convert


for _names, _op, _kw in [
    (("aten.add.Tensor", "aten.add.Scalar"), "Add", {"scale_other": True}),
    (("aten.sub.Tensor", "aten.sub.Scalar"), "Sub", {"scale_other": True}),
    (("aten.mul.Tensor", "aten.mul.Scalar"), "Mul", {}),
    (("aten.maximum.default",), "Max", {}),
    (("aten.minimum.default",), "Min", {}),
    (("aten.eq.Tensor", "aten.eq.Scalar"), "Equal", {"compare": True}),
    (("aten.lt.Tensor", "aten.lt.Scalar"), "Less", {"compare": True}),
    (("aten.le.Tensor", "aten.le.Scalar"), "LessOrEqual", {"compare": True}),
    (("aten.gt.Tensor", "aten.gt.Scalar"), "Greater", {"compare": True}),
    (("aten.ge.Tensor", "aten.ge.Scalar"), "GreaterOrEqual", {"compare": True}),
    (("aten.logical_and.default",), "And", {"compare": True}),
    (("aten.logical_or.default",), "Or", {"compare": True}),
    (("aten.logical_xor.default",), "Xor", {"compare": True}),
]:
    aten(*_names)(_binary(_op, **_kw))


@aten("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    x, y = cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype)
    if a.get("alpha", 1) not in (None, 1):
        x = cx.op("Mul", x, cx.tensor(a["alpha"], dtype))
    return cx.op("Sub", y, x)


@aten("aten.ne.Tensor", "aten.ne.Scalar")
def _ne(cx: Converter, node: Any) -> Value:
    return cx.op("Not", _binary("Equal", compare=True)(cx, node))


@aten("aten.div.Tensor", "aten.div.Scalar", "aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    mode = a.get("rounding_mode")
    dtype = cx.out_dtype(node)
    if mode is None or dtype.is_float:
        x, y = cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype)
        out = cx.op("Div", x, y)
        if mode == "floor":
            out = cx.op("Floor", out)
        elif mode == "trunc":
            out = cx.op("Where", cx.op("Less", out, cx.tensor(0.0, dtype)),
                        cx.op("Ceil", out), cx.op("Floor", out))  # fmt: skip
        return out
    x, y = cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype)
    if mode == "trunc":
        return cx.op("Div", x, y)  # ONNX integer Div truncates
    # Floor division of integers: truncate, then step down where the signs differ inexactly.
    q = cx.op("Div", x, y)
    r = cx.op("Sub", x, cx.op("Mul", q, y))
    zero = cx.tensor(0, dtype)
    signs_differ = cx.op("Xor", cx.op("Less", x, zero), cx.op("Less", y, zero))
    adjust = cx.op("And", signs_differ, cx.op("Not", cx.op("Equal", r, zero)))
    return cx.op("Where", adjust, cx.op("Sub", q, cx.tensor(1, dtype)), q)


@aten("aten.remainder.Tensor", "aten.remainder.Scalar", "aten.fmod.Tensor", "aten.fmod.Scalar")
def _remainder(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    x, y = cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype)
    if "fmod" in target_name(node.target):
        return cx.op("Mod", x, y, fmod=1)
    if dtype.is_float:  # Python-style remainder: x - floor(x / y) * y
        return cx.op("Sub", x, cx.op("Mul", cx.op("Floor", cx.op("Div", x, y)), y))
    return cx.op("Mod", x, y, fmod=0)


@aten("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def _pow(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    return cx.op("Pow", cx.tensor(a["self"], dtype), cx.tensor(a["exponent"], dtype))


@aten("aten.bitwise_and.Tensor", "aten.bitwise_and.Scalar", "aten.bitwise_or.Tensor",
      "aten.bitwise_or.Scalar", "aten.bitwise_xor.Tensor", "aten.bitwise_xor.Scalar")  # fmt: skip
def _bitwise(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    kind = target_name(node.target).split(".")[1].split("_")[1]
    op = {"and": "And", "or": "Or", "xor": "Xor"}[kind] if dtype == DType.BOOL else (
        {"and": "BitwiseAnd", "or": "BitwiseOr", "xor": "BitwiseXor"}[kind]
    )  # fmt: skip
    return cx.op(op, cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype))


def _unary(onnx_op: str, **attrs: Any) -> ConvertFn:
    def convert(cx: Converter, node: Any) -> Value:
        return cx.op(onnx_op, cx.tensor(node.args[0], cx.out_dtype(node)), **attrs)

    return convert


for _name, _op in [
    ("neg", "Neg"), ("abs", "Abs"), ("exp", "Exp"), ("log", "Log"), ("sqrt", "Sqrt"),
    ("reciprocal", "Reciprocal"), ("sin", "Sin"), ("cos", "Cos"), ("tan", "Tan"),
    ("tanh", "Tanh"), ("sigmoid", "Sigmoid"), ("relu", "Relu"), ("erf", "Erf"),
    ("floor", "Floor"), ("ceil", "Ceil"), ("sign", "Sign"), ("asin", "Asin"),
    ("acos", "Acos"), ("atan", "Atan"), ("sinh", "Sinh"), ("cosh", "Cosh"),
    ("hardswish", "HardSwish"), ("mish", "Mish"),
]:  # fmt: skip
    aten(f"aten.{_name}.default")(_unary(_op))

aten("aten.hardsigmoid.default")(_unary("HardSigmoid", alpha=1.0 / 6.0, beta=0.5))


@aten("aten.round.default")
def _round(cx: Converter, node: Any) -> Value:
    return cx.op("Round", cx.tensor(node.args[0]))  # both round half to even


@aten("aten.rsqrt.default")
def _rsqrt(cx: Converter, node: Any) -> Value:
    return cx.op("Reciprocal", cx.op("Sqrt", cx.tensor(node.args[0], cx.out_dtype(node))))


@aten("aten.log1p.default")
def _log1p(cx: Converter, node: Any) -> Value:
    dtype = cx.out_dtype(node)
    return cx.op("Log", cx.op("Add", cx.tensor(node.args[0], dtype), cx.tensor(1.0, dtype)))


@aten("aten.expm1.default")
def _expm1(cx: Converter, node: Any) -> Value:
    dtype = cx.out_dtype(node)
    return cx.op("Sub", cx.op("Exp", cx.tensor(node.args[0], dtype)), cx.tensor(1.0, dtype))


@aten("aten.silu.default")
def _silu(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    return cx.op("Mul", x, cx.op("Sigmoid", x))


@aten("aten.gelu.default")
def _gelu(cx: Converter, node: Any) -> Value:
    return cx.op("Gelu", cx.tensor(node.args[0]), approximate=cx.arg(node, "approximate"))


@aten("aten.leaky_relu.default")
def _leaky_relu(cx: Converter, node: Any) -> Value:
    return cx.op("LeakyRelu", cx.tensor(node.args[0]), alpha=float(cx.arg(node, "negative_slope")))


@aten("aten.elu.default")
def _elu(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    if a["scale"] != 1 or a["input_scale"] != 1:
        raise NotConvertedError("elu with scale or input_scale other than 1")
    return cx.op("Elu", cx.tensor(a["self"]), alpha=float(a["alpha"]))


@aten("aten.softplus.default")
def _softplus(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    x = cx.tensor(a["self"])
    beta, threshold = float(a["beta"]), float(a["threshold"])
    scaled = x if beta == 1 else cx.op("Mul", x, cx.tensor(beta, dtype))
    soft = cx.op("Softplus", scaled)
    if beta != 1:
        soft = cx.op("Div", soft, cx.tensor(beta, dtype))
    # torch switches to the identity above the threshold.
    return cx.op("Where", cx.op("Greater", scaled, cx.tensor(threshold, dtype)), x, soft)


@aten("aten.clamp.default", "aten.clamp.Tensor", "aten.clamp_min.default",
      "aten.clamp_max.default", "aten.hardtanh.default", "aten.relu6.default")  # fmt: skip
def _clamp(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    name = target_name(node.target)
    x = cx.tensor(a["self"], dtype)
    if name.startswith("aten.hardtanh"):
        lo, hi = a["min_val"], a["max_val"]
    elif name.startswith("aten.relu6"):
        lo, hi = 0.0, 6.0
    elif name.startswith("aten.clamp_min"):
        lo, hi = a["min"], None
    elif name.startswith("aten.clamp_max"):
        lo, hi = None, a["max"]
    else:
        lo, hi = a["min"], a["max"]
    if (lo is None or not hasattr(lo, "op")) and (hi is None or not hasattr(hi, "op")):
        lo_v = None if lo is None else cx.tensor(lo, dtype)
        hi_v = None if hi is None else cx.tensor(hi, dtype)
        return cx.op("Clip", x, lo_v, hi_v)
    if lo is not None:
        x = cx.op("Max", x, cx.tensor(lo, dtype))
    if hi is not None:
        x = cx.op("Min", x, cx.tensor(hi, dtype))
    return x


@aten("aten.logical_not.default")
def _logical_not(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    if x.dtype != DType.BOOL:
        x = cx.op("Not", cx.op("Equal", x, cx.tensor(0, x.dtype)))
    return cx.op("Not", x)


@aten("aten.bitwise_not.default")
def _bitwise_not(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    return cx.op("Not" if x.dtype == DType.BOOL else "BitwiseNot", x)


@aten("aten.isnan.default")
def _isnan(cx: Converter, node: Any) -> Value:
    return cx.op("IsNaN", cx.tensor(node.args[0]))


@aten("aten.isinf.default")
def _isinf(cx: Converter, node: Any) -> Value:
    return cx.op("IsInf", cx.tensor(node.args[0]))


@aten("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther",
      "aten.where.Scalar")  # fmt: skip
def _where(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    cond = cx.tensor(a["condition"], DType.BOOL)
    return cx.op("Where", cond, cx.tensor(a["self"], dtype), cx.tensor(a["other"], dtype))


@aten("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def _masked_fill(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    mask = cx.tensor(a["mask"], DType.BOOL)
    return cx.op("Where", mask, cx.tensor(a["value"], dtype), cx.tensor(a["self"], dtype))


# ------------------------------------------------------------- creation


def _fill_value(cx: Converter, node: Any, value: Any) -> np.ndarray:
    return np.array(value, dtype=cx.out_dtype(node).numpy)


def _filled(cx: Converter, node: Any, value: Any, shape: Sequence[Any] | Value) -> Value:
    fill = _fill_value(cx, node, value)
    if isinstance(shape, Value):
        return cx.op("ConstantOfShape", shape, value=fill.reshape(1))
    if all(isinstance(s, (int, np.integer)) for s in shape):
        return cx.graph.add_constant(np.full([int(s) for s in shape], fill), "full")
    return cx.op("ConstantOfShape", cx.shape_vec(shape), value=fill.reshape(1))


@aten("aten.full.default", "aten.new_full.default")
def _full(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    return _filled(cx, node, a["fill_value"], list(a["size"]))


@aten("aten.zeros.default", "aten.new_zeros.default", "aten.empty.memory_format",
      "aten.new_empty.default")  # fmt: skip
def _zeros(cx: Converter, node: Any) -> Value:
    return _filled(cx, node, 0, list(cx.args(node)["size"]))


@aten("aten.ones.default", "aten.new_ones.default")
def _ones(cx: Converter, node: Any) -> Value:
    return _filled(cx, node, 1, list(cx.args(node)["size"]))


@aten("aten.full_like.default", "aten.zeros_like.default", "aten.ones_like.default",
      "aten.empty_like.default")  # fmt: skip
def _full_like(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    name = target_name(node.target)
    fill = a["fill_value"] if "full_like" in name else 1 if "ones" in name else 0
    src = cx.tensor(a["self"])
    if src.type.is_static:
        return _filled(cx, node, fill, list(src.type.static_shape()))
    return _filled(cx, node, fill, cx.op("Shape", src))


@aten("aten.scalar_tensor.default")
def _scalar_tensor(cx: Converter, node: Any) -> Value:
    return cx.const(_fill_value(cx, node, node.args[0]))


@aten("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    start = a.get("start", 0) if "start" in a else 0
    end, step = a["end"], a.get("step", 1) or 1
    if all(isinstance(x, (int, float, np.number)) for x in (start, end, step)):
        return cx.graph.add_constant(np.arange(start, end, step, dtype=dtype.numpy), "arange")
    return cx.op("Range", cx.scalar(start, dtype), cx.scalar(end, dtype), cx.scalar(step, dtype))


# ------------------------------------------------------------- shape ops


@aten(
    "aten.view.default",
    "aten._unsafe_view.default",
    "aten.reshape.default",
    "aten.view_copy.default",
)
def _view(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    return _reshape_to(cx, x, list(cx.val(node).shape))


def _reshape_to(cx: Converter, x: Value, sizes: list[Any]) -> Value:
    """Reshape to torch's output sizes (ints and SymInts). One symbolic dim becomes -1; with
    more, each is computed from the input shapes so the IR keeps exact symbolic dims."""
    import torch

    symbolic_at = [i for i, s in enumerate(sizes) if isinstance(s, torch.SymInt)]
    items = list(sizes)
    if len(symbolic_at) == 1:
        items[symbolic_at[0]] = -1
    allowzero = int(any(isinstance(s, int) and s == 0 for s in items))
    return cx.op("Reshape", x, cx.shape_vec(items), allowzero=allowzero)


@aten("aten.permute.default", "aten.permute_copy.default")
def _permute(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    perm = [int(p) % max(x.type.rank, 1) for p in node.args[1]]
    return cx.op("Transpose", x, perm=perm)


@aten(
    "aten.transpose.int",
    "aten.t.default",
    "aten.numpy_T.default",
    "aten.transpose_copy.int",
    "aten.t_copy.default",
)
def _transpose(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    rank = x.type.rank
    if rank < 2:
        return x
    d0, d1 = (node.args[1], node.args[2]) if len(node.args) > 2 else (0, 1)
    perm = list(range(rank))
    d0, d1 = d0 % rank, d1 % rank
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return cx.op("Transpose", x, perm=perm)


@aten("aten.unsqueeze.default", "aten.unsqueeze_copy.default")
def _unsqueeze(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    dim = int(node.args[1])
    return cx.op("Unsqueeze", x, cx.ints([dim % (x.type.rank + 1)]))


@aten(
    "aten.squeeze.dim",
    "aten.squeeze.dims",
    "aten.squeeze.default",
    "aten.squeeze_copy.dim",
    "aten.squeeze_copy.dims",
    "aten.squeeze_copy.default",
)
def _squeeze(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    rank = x.type.rank
    if len(node.args) > 1:
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
    else:
        dims = list(range(rank))
    # torch silently keeps dims that are not 1; ONNX fails on them, so pick the real ones.
    axes = [d % rank for d in dims if x.shape[d % rank] == 1]
    if not axes:
        return x
    return cx.op("Squeeze", x, cx.ints(axes))


@aten("aten.expand.default", "aten.expand_copy.default")
def _expand(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    # -1 keeps the input's dim; ONNX Expand broadcasts 1 to it, which does the same.
    sizes = [1 if isinstance(s, int) and s == -1 else s for s in node.args[1]]
    return cx.op("Expand", x, cx.shape_vec(sizes))


@aten("aten.slice.Tensor", "aten.slice_copy.Tensor")
def _slice(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    dim = a["dim"] % x.type.rank
    start = 0 if a["start"] is None else a["start"]
    end = INT64_MAX if a["end"] is None else a["end"]
    step = a["step"] or 1
    whole = isinstance(start, int) and start == 0 and isinstance(end, int) and end >= INT64_MAX
    if whole and step == 1:
        return x
    return cx.op("Slice", x, cx.size(start), cx.size(end), cx.ints([dim]), cx.ints([step]))


@aten("aten.select.int", "aten.select_copy.int")
def _select(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    index = a["index"]
    idx = (
        cx.const(np.array(int(index), np.int64))
        if isinstance(index, int)
        else cx.op("Squeeze", cx.size(index), cx.ints([0]))
    )
    return cx.op("Gather", x, idx, axis=a["dim"] % x.type.rank)


@aten("aten.copy.default", "aten._copy.default")
def _copy(cx: Converter, node: Any) -> Value:
    """copy(self, src): src broadcast to self's shape in self's dtype (functionalized `=`)."""
    a = cx.args(node)
    target = cx.tensor(a["self"])
    src = cx.tensor(a["src"], target.dtype)
    if src.shape == target.shape:
        return src
    return cx.op("Expand", src, cx.shape_of(target))


@aten("aten.slice_scatter.default", "aten.select_scatter.default")
def _slice_scatter(cx: Converter, node: Any) -> Value:
    """x[..., start:end, ...] = src along one dim: concatenate the untouched parts with src."""
    a = cx.args(node)
    x = cx.tensor(a["self"])
    rank = x.type.rank
    dim = a["dim"] % rank
    size = x.shape[dim]
    src = cx.tensor(a["src"], x.dtype)
    if "select_scatter" in target_name(node.target):
        start, end, step = a["index"], None, 1
        src = cx.op("Unsqueeze", src, cx.ints([dim]))
        if isinstance(start, int):
            end = start + 1 if start != -1 else INT64_MAX
    else:
        start, end, step = a["start"], a["end"], a["step"] or 1
    if step != 1 or not isinstance(size, int) or not isinstance(start, (int, type(None))):
        raise NotConvertedError("strided or symbolic slice assignment")
    if end is not None and not isinstance(end, int):
        raise NotConvertedError("slice assignment with a symbolic end")
    begin, stop, _ = slice(start, end).indices(size)
    stop = max(stop, begin)
    parts = []
    if begin > 0:
        parts.append(cx.op("Slice", x, cx.ints([0]), cx.ints([begin]), cx.ints([dim])))
    parts.append(src)
    if stop < size:
        parts.append(cx.op("Slice", x, cx.ints([stop]), cx.ints([size]), cx.ints([dim])))
    return parts[0] if len(parts) == 1 else cx.op("Concat", *parts, axis=dim)


@aten("aten.cat.default", "aten.concat.default")
def _cat(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    parts = [cx.tensor(t, dtype) for t in a["tensors"]]
    rank = cx.val(node).dim()
    # torch.cat skips legacy empty 1-D tensors.
    parts = [p for p in parts if not (p.type.rank == 1 and p.shape[0] == 0 and rank != 1)]
    if len(parts) == 1:
        return parts[0]
    return cx.op("Concat", *parts, axis=a["dim"] % rank)


@aten("aten.split_with_sizes.default", "aten.split.Tensor", "aten.split_with_sizes_copy.default",
      "aten.split.sizes")  # fmt: skip
def _split(cx: Converter, node: Any) -> tuple[Value, ...]:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    dim = a["dim"] % x.type.rank
    outs = cx.val(node)
    sizes = [o.shape[dim] for o in outs]
    if not all(isinstance(s, int) for s in sizes):
        raise NotConvertedError("split along a symbolic dim")
    node_outs = cx.op_multi("Split", x, cx.ints(sizes), num_outputs=len(sizes), axis=dim)
    return tuple(node_outs)


@aten("aten.unbind.int")
def _unbind(cx: Converter, node: Any) -> tuple[Value, ...]:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    dim = a["dim"] % x.type.rank
    n = x.shape[dim]
    if not isinstance(n, int):
        raise NotConvertedError("unbind along a symbolic dim")
    outs = cx.op_multi("Split", x, cx.ints([1] * n), num_outputs=n, axis=dim)
    return tuple(cx.op("Squeeze", o, cx.ints([dim])) for o in outs)


@aten("aten.flatten.using_ints")
def _flatten(cx: Converter, node: Any) -> Value:
    return _reshape_to(cx, cx.tensor(node.args[0]), list(cx.val(node).shape))


@aten("aten.repeat.default")
def _repeat(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    reps = list(node.args[1])
    if len(reps) > x.type.rank:
        extra = [1] * (len(reps) - x.type.rank)
        x = _reshape_to(cx, x, extra + list(cx.val(node.args[0]).shape))
    return cx.op("Tile", x, cx.shape_vec(reps))


@aten("aten.constant_pad_nd.default")
def _pad(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    pad = list(a["pad"])
    if not all(isinstance(p, int) for p in pad):
        raise NotConvertedError("symbolic padding")
    rank = x.type.rank
    begins, ends = [0] * rank, [0] * rank
    # torch lists (begin, end) pairs from the last dim backwards.
    for i in range(len(pad) // 2):
        axis = rank - 1 - i
        begins[axis], ends[axis] = pad[2 * i], pad[2 * i + 1]
    value = cx.tensor(a["value"] or 0, x.dtype)
    return cx.op("Pad", x, cx.ints(begins + ends), value, mode="constant")


@aten("aten.tril.default", "aten.triu.default")
def _trilu(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    upper = int("triu" in target_name(node.target))
    k = cx.const(np.array(int(a["diagonal"]), np.int64))
    return cx.op("Trilu", cx.tensor(a["self"]), k, upper=upper)


@aten("aten.cumsum.default")
def _cumsum(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"], cx.out_dtype(node))
    axis = cx.const(np.array(a["dim"] % max(x.type.rank, 1), np.int64))
    return cx.op("CumSum", x, axis)


# ------------------------------------------------------------- indexing


@aten("aten.embedding.default")
def _embedding(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    return cx.op("Gather", cx.tensor(a["weight"]), cx.tensor(a["indices"]), axis=0)


@aten("aten.index_select.default")
def _index_select(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    return cx.op("Gather", x, cx.tensor(a["index"]), axis=a["dim"] % x.type.rank)


@aten("aten.gather.default")
def _gather(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    return cx.op("GatherElements", x, cx.tensor(a["index"]), axis=a["dim"] % x.type.rank)


@aten("aten.index.Tensor")
def _index(cx: Converter, node: Any) -> Value:
    """Advanced indexing x[i0, i1, ...]: one index tensor on any dim (Gather), or several on
    the leading dims (flattened into one Gather over the merged dims)."""
    a = cx.args(node)
    x = cx.tensor(a["self"])
    indices = list(a["indices"])
    present = [i for i, t in enumerate(indices) if t is not None]
    for i in present:
        if cx.val(indices[i]).dtype.is_floating_point or str(cx.val(indices[i]).dtype) in (
            "torch.bool",
            "torch.uint8",
        ):
            raise NotConvertedError("boolean mask indexing (data-dependent shape)")
    if len(present) == 1:
        axis = present[0]
        return cx.op("Gather", x, cx.tensor(indices[axis]), axis=axis)
    if present != list(range(len(present))):
        raise NotConvertedError("index tensors that are not on the leading dims")
    k = len(present)
    dims = list(x.shape[:k])
    flat: Value | None = None
    for i in range(k):
        idx = cx.tensor(indices[i], DType.INT64)
        size = cx.size(_dim_arg(cx, x, i))
        # Negative indices count from the end, as in torch.
        idx = cx.op("Where", cx.op("Less", idx, cx.tensor(0, DType.INT64)),
                    cx.op("Add", idx, size), idx)  # fmt: skip
        flat = idx if flat is None else cx.op("Add", cx.op("Mul", flat, size), idx)
    assert flat is not None
    merged = cx.op("Reshape", x, _merged_shape(cx, x, k, dims))
    return cx.op("Gather", merged, flat, axis=0)


def _dim_arg(cx: Converter, x: Value, axis: int) -> Any:
    d = x.shape[axis]
    if isinstance(d, int):
        return d
    return _ShapeDim(x, axis)


def _merged_shape(cx: Converter, x: Value, k: int, dims: list[Any]) -> Value:
    rest = list(x.shape[k:])
    if all(isinstance(d, int) for d in rest):
        return cx.ints([-1, *[int(d) for d in rest]])
    return cx.op("Concat", cx.ints([-1]), cx.op("Shape", x, start=k), axis=0)


# ------------------------------------------------------------ reductions


def _axes(dims: Any, rank: int) -> list[int]:
    if dims is None:
        return list(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    dims = list(dims)
    return [d % max(rank, 1) for d in dims] if dims else list(range(rank))


def _reduce(onnx_op: str, dim_key: str = "dim") -> ConvertFn:
    def convert(cx: Converter, node: Any) -> Value:
        a = cx.args(node)
        dtype = cx.out_dtype(node)
        x = cx.tensor(a["self"], dtype)
        axes = _axes(a.get(dim_key), x.type.rank)
        keep = int(bool(a.get("keepdim", False)))
        if x.type.rank == 0:
            return x
        return cx.op(onnx_op, x, cx.ints(axes), keepdims=keep)

    return convert


aten("aten.mean.dim", "aten.mean.default")(_reduce("ReduceMean"))
aten("aten.sum.dim_IntList", "aten.sum.default")(_reduce("ReduceSum"))
aten("aten.amax.default")(_reduce("ReduceMax"))
aten("aten.amin.default")(_reduce("ReduceMin"))
aten("aten.prod.dim_int", "aten.prod.default")(_reduce("ReduceProd"))


@aten("aten.any.dim", "aten.any.dims", "aten.any.default", "aten.all.dim", "aten.all.dims",
      "aten.all.default")  # fmt: skip
def _any_all(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    if x.dtype != DType.BOOL:
        x = cx.op("Not", cx.op("Equal", x, cx.tensor(0, x.dtype)))
    as_int = cx.op("Cast", x, to=DType.INT32.onnx)
    op = "ReduceMax" if ".any" in target_name(node.target) else "ReduceMin"
    axes = _axes(a.get("dim"), x.type.rank)
    reduced = cx.op(op, as_int, cx.ints(axes), keepdims=int(bool(a.get("keepdim", False))))
    return cx.op("Cast", reduced, to=DType.BOOL.onnx)


@aten("aten.max.dim", "aten.min.dim")
def _max_dim(cx: Converter, node: Any) -> tuple[Value, Value]:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    axis = a["dim"] % x.type.rank
    keep = int(bool(a["keepdim"]))
    is_max = ".max" in target_name(node.target)
    values = cx.op("ReduceMax" if is_max else "ReduceMin", x, cx.ints([axis]), keepdims=keep)
    indices = cx.op("ArgMax" if is_max else "ArgMin", x, axis=axis, keepdims=keep)
    return values, indices


@aten("aten.argmax.default", "aten.argmin.default")
def _argmax(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    op = "ArgMax" if "argmax" in target_name(node.target) else "ArgMin"
    if a["dim"] is None:
        return cx.op(op, cx.op("Reshape", x, cx.ints([-1])), axis=0, keepdims=0)
    return cx.op(op, x, axis=a["dim"] % x.type.rank, keepdims=int(bool(a["keepdim"])))


@aten("aten._softmax.default", "aten.softmax.int", "aten._safe_softmax.default")
def _softmax(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"], cx.out_dtype(node))
    out = cx.op("Softmax", x, axis=a["dim"] % x.type.rank)
    if "safe" in target_name(node.target):
        out = _zero_nan(cx, out)
    return out


@aten("aten._log_softmax.default", "aten.log_softmax.int")
def _log_softmax(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"], cx.out_dtype(node))
    return cx.op("LogSoftmax", x, axis=a["dim"] % x.type.rank)


def _zero_nan(cx: Converter, x: Value) -> Value:
    """Rows that were masked entirely give NaN in softmax; torch makes them 0."""
    return cx.op("Where", cx.op("IsNaN", x), cx.tensor(0.0, x.dtype), x)


# ------------------------------------------------------------ linear algebra


@aten("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _matmul(cx: Converter, node: Any) -> Value:
    return cx.op("MatMul", cx.tensor(node.args[0]), cx.tensor(node.args[1]))


@aten("aten.addmm.default")
def _addmm(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    return cx.op(
        "Gemm",
        cx.tensor(a["mat1"]),
        cx.tensor(a["mat2"]),
        cx.tensor(a["self"]),
        alpha=float(a["alpha"]),
        beta=float(a["beta"]),
    )


@aten("aten.linear.default")
def _linear(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    out = cx.op("MatMul", cx.tensor(a["input"]), cx.op("Transpose", cx.tensor(a["weight"])))
    if a["bias"] is not None:
        out = cx.op("Add", out, cx.tensor(a["bias"]))
    return out


@aten("aten.scaled_dot_product_attention.default",
      "aten._scaled_dot_product_flash_attention_for_cpu.default")  # fmt: skip
def _sdpa(cx: Converter, node: Any) -> Any:
    """softmax(q @ k^T * scale + mask) @ v, with causal and boolean masks, and grouped-query
    attention (k/v heads repeated to the query heads)."""
    a = cx.args(node)
    if a.get("dropout_p", 0.0):
        raise NotConvertedError("attention dropout (inference graphs only)")
    q, k, v = cx.tensor(a["query"]), cx.tensor(a["key"]), cx.tensor(a["value"])
    dtype = q.dtype
    if a.get("enable_gqa") and q.shape[-3] != k.shape[-3]:
        k, v = _repeat_heads(cx, k, q), _repeat_heads(cx, v, q)
    e = q.shape[-1]
    if not isinstance(e, int):
        raise NotConvertedError("symbolic head size")
    scale = a.get("scale")
    scale = 1.0 / math.sqrt(e) if scale is None else float(scale)
    rank = k.type.rank
    perm = [*range(rank - 2), rank - 1, rank - 2]
    scores = cx.op("MatMul", q, cx.op("Transpose", k, perm=perm))
    scores = cx.op("Mul", scores, cx.tensor(scale, dtype))
    neg_inf = cx.tensor(-np.inf, dtype)
    masked = False
    if a.get("is_causal"):
        l_dim, s_dim = q.shape[-2], k.shape[-2]
        if isinstance(l_dim, int) and isinstance(s_dim, int):
            causal = cx.graph.add_constant(np.tril(np.ones((l_dim, s_dim), bool)), "causal")
        else:
            size = cx.op("Concat", cx.op("Shape", q, start=-2, end=-1),
                         cx.op("Shape", k, start=-2, end=-1), axis=0)  # fmt: skip
            ones = cx.op("ConstantOfShape", size, value=np.array([1], np.int64))
            causal = cx.op("Cast", cx.op("Trilu", ones, upper=0), to=DType.BOOL.onnx)
        scores = cx.op("Where", causal, scores, neg_inf)
        masked = True
    mask = a.get("attn_mask")
    if mask is not None:
        m = cx.tensor(mask)
        if m.dtype == DType.BOOL:
            scores = cx.op("Where", m, scores, neg_inf)
        else:
            scores = cx.op("Add", scores, cx.tensor(mask, dtype))
        masked = True
    probs = cx.op("Softmax", scores, axis=-1)
    if masked:
        probs = _zero_nan(cx, probs)
    out = cx.op("MatMul", probs, v)
    if "flash_attention" in target_name(node.target):
        return (out, None)
    return out


def _repeat_heads(cx: Converter, kv: Value, q: Value) -> Value:
    """[B, Hk, S, E] -> [B, Hq, S, E], each k/v head repeated Hq/Hk times (repeat_interleave)."""
    hq, hk = q.shape[-3], kv.shape[-3]
    if not (isinstance(hq, int) and isinstance(hk, int)):
        raise NotConvertedError("grouped-query attention with symbolic head counts")
    r = hq // hk
    rank = kv.type.rank
    x = cx.op("Unsqueeze", kv, cx.ints([rank - 2]))
    expand = [1] * (rank + 1)
    expand[rank - 2] = r
    x = cx.op("Expand", x, cx.ints(expand))
    e = kv.shape[-1]
    if not isinstance(e, int):
        raise NotConvertedError("grouped-query attention with a symbolic head size")
    # 0 copies the batch dims; the sequence dim is inferred.
    return cx.op("Reshape", x, cx.ints([0] * (rank - 3) + [hq, -1, e]))


# ------------------------------------------------------------ normalization


@aten("aten.native_layer_norm.default", "aten.layer_norm.default")
def _layer_norm(cx: Converter, node: Any) -> Any:
    a = cx.args(node)
    x = cx.tensor(a["input"])
    shape = [int(s) for s in a["normalized_shape"]]
    scale = (
        cx.tensor(a["weight"], x.dtype)
        if a["weight"] is not None
        else cx.graph.add_constant(np.ones(shape, x.dtype.numpy), "ln_scale")
    )
    bias = cx.tensor(a["bias"], x.dtype) if a["bias"] is not None else None
    eps = float(a.get("eps", 1e-5))
    out = cx.op("LayerNormalization", x, scale, bias, axis=-len(shape), epsilon=eps)
    if target_name(node.target).startswith("aten.native_layer_norm"):
        return (out, None, None)
    return out


@aten("aten._native_batch_norm_legit_no_training.default",
      "aten._native_batch_norm_legit.no_stats", "aten.native_batch_norm.default",
      "aten._native_batch_norm_legit_functional.default", "aten.batch_norm.default")  # fmt: skip
def _batch_norm(cx: Converter, node: Any) -> Any:
    a = cx.args(node)
    x = cx.tensor(a["input"])
    if a.get("training") or a.get("running_mean") is None:
        return _batch_stats_norm(cx, node, a, x)
    c = x.shape[1]
    if not isinstance(c, int):
        raise NotConvertedError("batch norm over a symbolic channel count")
    dt = x.dtype.numpy
    weight = (
        cx.tensor(a["weight"]) if a["weight"] is not None
        else cx.graph.add_constant(np.ones(c, dt), "bn_scale")
    )  # fmt: skip
    bias = (
        cx.tensor(a["bias"]) if a["bias"] is not None
        else cx.graph.add_constant(np.zeros(c, dt), "bn_bias")
    )  # fmt: skip
    out = cx.op(
        "BatchNormalization",
        x, weight, bias, cx.tensor(a["running_mean"]), cx.tensor(a["running_var"]),
        epsilon=float(a["eps"]),
    )  # fmt: skip
    if target_name(node.target) == "aten.batch_norm.default":
        return out
    return (out, None, None) if "functional" not in target_name(node.target) else (
        out, None, None, None, None)  # fmt: skip


def _batch_stats_norm(cx: Converter, node: Any, a: dict[str, Any], x: Value) -> Any:
    """Batch norm over the batch's own statistics (instance norm runs this way in eval mode):
    normalize each channel over all other axes with the biased variance."""
    if a.get("running_mean") is not None and "functional" not in target_name(node.target):
        # Training mode would also update the running statistics in place.
        raise NotConvertedError("batch norm in training mode (call module.eval())")
    axes = cx.ints([i for i in range(x.type.rank) if i != 1])
    eps = cx.tensor(float(a["eps"]), x.dtype)
    mean = cx.op("ReduceMean", x, axes, keepdims=1)
    centered = cx.op("Sub", x, mean)
    var = cx.op("ReduceMean", cx.op("Mul", centered, centered), axes, keepdims=1)
    out = cx.op("Div", centered, cx.op("Sqrt", cx.op("Add", var, eps)))
    shape = cx.ints([1, -1] + [1] * (x.type.rank - 2))
    if a.get("weight") is not None:
        out = cx.op("Mul", out, cx.op("Reshape", cx.tensor(a["weight"]), shape))
    if a.get("bias") is not None:
        out = cx.op("Add", out, cx.op("Reshape", cx.tensor(a["bias"]), shape))
    if target_name(node.target) == "aten.batch_norm.default":
        return out
    return (out, None, None)


@aten("aten.native_group_norm.default", "aten.group_norm.default")
def _group_norm(cx: Converter, node: Any) -> Any:
    a = cx.args(node)
    x = cx.tensor(a["input"])
    c = x.shape[1]
    if not isinstance(c, int):
        raise NotConvertedError("group norm over a symbolic channel count")
    groups = int(a["group"] if "group" in a else a["num_groups"])
    dt = x.dtype.numpy
    weight = (
        cx.tensor(a["weight"])
        if a["weight"] is not None
        else cx.graph.add_constant(np.ones(c, dt), "gn_scale")
    )
    bias = (
        cx.tensor(a["bias"])
        if a["bias"] is not None
        else cx.graph.add_constant(np.zeros(c, dt), "gn_bias")
    )
    out = cx.op("GroupNormalization", x, weight, bias, num_groups=groups, epsilon=float(a["eps"]))
    if target_name(node.target) == "aten.group_norm.default":
        return out
    return (out, None, None)


@aten("aten.upsample_nearest2d.vec", "aten.upsample_bilinear2d.vec",
      "aten.upsample_nearest1d.vec", "aten.upsample_linear1d.vec")  # fmt: skip
def _upsample(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["input"])
    nearest = "nearest" in target_name(node.target)
    sizes = list(cx.val(node).shape)
    if nearest:
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}  # fmt: skip
    else:
        mode = "align_corners" if a.get("align_corners") else "pytorch_half_pixel"
        attrs = {"mode": "linear", "coordinate_transformation_mode": mode}
    if a.get("scale_factors") is not None and not a.get("align_corners"):
        # torch maps coordinates with the given scale, not out/in; ONNX does the same with
        # `scales`.
        scales = [1.0, 1.0] + [float(f) for f in a["scale_factors"]]
        return cx.op("Resize", x, None, cx.const(np.array(scales, np.float32)), **attrs)
    return cx.op("Resize", x, None, None, cx.shape_vec(sizes), **attrs)


# ------------------------------------------------------------ convolution


@aten(
    "aten.convolution.default",
    "aten.conv2d.default",
    "aten.conv1d.default",
    "aten.conv_transpose2d.input",
)
def _convolution(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x, w = cx.tensor(a["input"]), cx.tensor(a["weight"])
    b = cx.tensor(a["bias"]) if a.get("bias") is not None else None
    nd = w.type.rank - 2
    padding = a["padding"]
    if isinstance(padding, str):
        raise NotConvertedError(f"padding={padding!r}")
    pads = _expand_list(padding, nd)
    if a.get("transposed"):
        # torch and ONNX share the weight layout [C_in, C_out / groups, k...].
        return cx.op(
            "ConvTranspose",
            x,
            w,
            b,
            strides=_expand_list(a["stride"], nd),
            pads=pads + pads,
            dilations=_expand_list(a["dilation"], nd),
            output_padding=_expand_list(a["output_padding"], nd),
            group=int(a["groups"]),
            kernel_shape=[int(d) for d in w.shape[2:]],
        )
    return cx.op(
        "Conv",
        x,
        w,
        b,
        strides=_expand_list(a["stride"], nd),
        pads=pads + pads,
        dilations=_expand_list(a["dilation"], nd),
        group=int(a["groups"]),
        kernel_shape=[int(d) for d in w.shape[2:]],
    )


def _expand_list(v: Any, n: int) -> list[int]:
    items = [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]
    return items * n if len(items) == 1 else items


@aten("aten.max_pool2d_with_indices.default", "aten.max_pool2d.default",
      "aten.max_pool1d.default", "aten.max_pool3d_with_indices.default")  # fmt: skip
def _max_pool(cx: Converter, node: Any) -> Any:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    nd = x.type.rank - 2
    kernel = _expand_list(a["kernel_size"], nd)
    stride = _expand_list(a["stride"], nd) if a["stride"] else kernel
    pads = _expand_list(a["padding"], nd)
    out = cx.op(
        "MaxPool",
        x,
        kernel_shape=kernel,
        strides=stride,
        pads=pads + pads,
        dilations=_expand_list(a["dilation"], nd),
        ceil_mode=int(bool(a["ceil_mode"])),
    )
    if "with_indices" in target_name(node.target):
        return (out, None)
    return out


@aten("aten.avg_pool2d.default", "aten.avg_pool1d.default")
def _avg_pool(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    if a.get("divisor_override") is not None:
        raise NotConvertedError("avg_pool with divisor_override")
    x = cx.tensor(a["self"])
    nd = x.type.rank - 2
    kernel = _expand_list(a["kernel_size"], nd)
    stride = _expand_list(a["stride"], nd) if a["stride"] else kernel
    pads = _expand_list(a["padding"], nd)
    return cx.op(
        "AveragePool",
        x,
        kernel_shape=kernel,
        strides=stride,
        pads=pads + pads,
        ceil_mode=int(bool(a["ceil_mode"])),
        count_include_pad=int(bool(a["count_include_pad"])),
    )


@aten("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default",
      "aten.adaptive_avg_pool1d.default", "aten._adaptive_avg_pool3d.default")  # fmt: skip
def _adaptive_avg_pool(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    nd = x.type.rank - 2
    out_size = _expand_list(a["output_size"], nd)
    if all(s == 1 for s in out_size):
        return cx.op("GlobalAveragePool", x)
    in_size = x.shape[2:]
    if not all(isinstance(d, int) for d in in_size):
        raise NotConvertedError("adaptive pooling over symbolic spatial dims")
    if all(int(d) % s == 0 for d, s in zip(in_size, out_size, strict=True)):
        kernel = [int(d) // s for d, s in zip(in_size, out_size, strict=True)]
        return cx.op("AveragePool", x, kernel_shape=kernel, strides=kernel)
    # Uneven windows: torch averages [floor(i*n/m), ceil((i+1)*n/m)) per output i. A mean over
    # a box is the mean over each axis in turn, so pool one axis at a time.
    out = x
    for k, (n, m) in enumerate(zip(in_size, out_size, strict=True)):
        axis = 2 + k
        cells = []
        for i in range(m):
            start, end = (i * int(n)) // m, -((-(i + 1) * int(n)) // m)
            part = cx.op("Slice", out, cx.ints([start]), cx.ints([end]), cx.ints([axis]))
            cells.append(cx.op("ReduceMean", part, cx.ints([axis]), keepdims=1))
        out = cells[0] if m == 1 else cx.op("Concat", *cells, axis=axis)
    return out


# ------------------------------------------------------------ more core ATen ops

for _name, _op in [("acosh", "Acosh"), ("asinh", "Asinh"), ("atanh", "Atanh")]:
    aten(f"aten.{_name}.default")(_unary(_op))


@aten("aten.trunc.default")
def _trunc(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    return cx.op("Mul", cx.op("Sign", x), cx.op("Floor", cx.op("Abs", x)))


@aten("aten.log2.default", "aten.log10.default")
def _log_base(cx: Converter, node: Any) -> Value:
    dtype = cx.out_dtype(node)
    base = 2.0 if "log2" in target_name(node.target) else 10.0
    x = cx.op("Log", cx.tensor(node.args[0], dtype))
    return cx.op("Div", x, cx.tensor(math.log(base), dtype))


@aten("aten.flip.default")
def _flip(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    axes = [d % x.type.rank for d in node.args[1]]
    n = len(axes)
    # A negative step walks each axis from its last element down past the first.
    starts, ends = cx.ints([-1] * n), cx.ints([-INT64_MAX] * n)
    return cx.op("Slice", x, starts, ends, cx.ints(axes), cx.ints([-1] * n))


@aten("aten.topk.default")
def _topk(cx: Converter, node: Any) -> tuple[Value, ...]:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    k = cx.size(a["k"])
    outs = cx.op_multi(
        "TopK",
        x,
        k,
        num_outputs=2,
        axis=a["dim"] % x.type.rank,
        largest=int(bool(a["largest"])),
        sorted=1,
    )
    return tuple(outs)


@aten("aten.sort.default", "aten.sort.stable")
def _sort(cx: Converter, node: Any) -> tuple[Value, ...]:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    axis = a["dim"] % x.type.rank
    size = cx.size(_dim_arg(cx, x, axis))
    outs = cx.op_multi(
        "TopK", x, size, num_outputs=2, axis=axis, largest=int(bool(a["descending"])), sorted=1
    )
    return tuple(outs)


@aten("aten.var.correction", "aten.var.dim", "aten.std.correction")
def _var(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"], cx.out_dtype(node))
    axes = _axes(a.get("dim"), x.type.rank)
    correction = a.get("correction")
    if correction is None:
        correction = 1 if a.get("unbiased", True) else 0
    count = symbolic.product([x.shape[i] for i in axes])
    if not isinstance(count, int):
        raise NotConvertedError("variance over symbolic dims")
    keep = int(bool(a.get("keepdim", False)))
    ax = cx.ints(axes)
    centered = cx.op("Sub", x, cx.op("ReduceMean", x, ax, keepdims=1))
    total = cx.op("ReduceSumSquare", centered, ax, keepdims=keep)
    out = cx.op("Div", total, cx.tensor(float(max(count - correction, 0)), x.dtype))
    if target_name(node.target).startswith("aten.std"):
        out = cx.op("Sqrt", out)
    return out


@aten("aten.fill.Scalar", "aten.fill.Tensor")
def _fill(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    value = cx.tensor(a["value"], x.dtype)
    if value.type.rank:
        value = cx.op("Reshape", value, cx.ints([]))
    return cx.op("Expand", value, cx.shape_of(x))


@aten("aten.reflection_pad1d.default", "aten.reflection_pad2d.default",
      "aten.replication_pad1d.default", "aten.replication_pad2d.default")  # fmt: skip
def _mode_pad(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    pad = [int(p) for p in a["padding"]]
    rank = x.type.rank
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        axis = rank - 1 - i
        begins[axis], ends[axis] = pad[2 * i], pad[2 * i + 1]
    mode = "reflect" if "reflection" in target_name(node.target) else "edge"
    return cx.op("Pad", x, cx.ints(begins + ends), mode=mode)


@aten("aten.scatter.src", "aten.scatter.value", "aten.scatter_add.default",
      "aten.scatter.reduce", "aten.scatter.value_reduce")  # fmt: skip
def _scatter(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    index = cx.tensor(a["index"])
    if "src" in a:
        updates = cx.tensor(a["src"], x.dtype)
    else:
        updates = cx.op("Expand", cx.tensor(a["value"], x.dtype), cx.shape_of(index))
    reduce = a.get("reduce")
    reduction = {None: "none", "add": "add", "sum": "add", "multiply": "mul"}.get(reduce)
    if "scatter_add" in target_name(node.target):
        reduction = "add"
    if reduction is None:
        raise NotConvertedError(f"scatter with reduce={reduce!r}")
    if updates.shape != index.shape:
        raise NotConvertedError("scatter whose src is larger than its index")
    axis = a["dim"] % x.type.rank
    return cx.op("ScatterElements", x, index, updates, axis=axis, reduction=reduction)


@aten("aten.index_put.default", "aten._unsafe_index_put.default")
def _index_put(cx: Converter, node: Any) -> Value:
    """x[mask] = v (a Where) and x[i0, i1, ...] = v / += v (a ScatterND). Index tensors must be
    consecutive; when they do not start at dim 0 the indexed dims are moved to the front."""
    import torch

    a = cx.args(node)
    x = cx.tensor(a["self"])
    indices = list(a["indices"])
    accumulate = bool(a.get("accumulate", False))
    present = [i for i, t in enumerate(indices) if t is not None]
    if not present or present != list(range(present[0], present[-1] + 1)):
        raise NotConvertedError("index tensors that are not consecutive")
    vals = [cx.val(indices[i]) for i in present]
    values = cx.tensor(a["values"], x.dtype)
    if vals[0].dtype == torch.bool:
        return _masked_put(cx, x, indices, present, values, accumulate)
    p, k, rank = present[0], len(present), x.type.rank
    data, perm = x, list(range(rank))
    if p > 0:
        perm = [*range(p, p + k), *range(p), *range(p + k, rank)]
        data = cx.op("Transpose", x, perm=perm)
    batch = list(torch.broadcast_shapes(*[v.shape for v in vals]))
    stacked = []
    for axis, i in zip(range(p, p + k), present, strict=True):
        idx = cx.tensor(indices[i], DType.INT64)
        size = cx.size(_dim_arg(cx, x, axis))
        idx = cx.op("Where", cx.op("Less", idx, cx.tensor(0, DType.INT64)),
                    cx.op("Add", idx, size), idx)  # fmt: skip
        idx = cx.op("Expand", idx, cx.shape_vec(batch))
        stacked.append(cx.op("Unsqueeze", idx, cx.ints([-1])))
    index = stacked[0] if k == 1 else cx.op("Concat", *stacked, axis=-1)
    # Updates are laid out like data[index]: the batch dims, then data's remaining dims.
    x_sizes = list(cx.val(a["self"]).shape)
    if p == 0:
        updates = cx.op("Expand", values, cx.shape_vec(batch + x_sizes[k:]))
    else:
        full = x_sizes[:p] + batch + x_sizes[p + k :]
        updates = cx.op("Expand", values, cx.shape_vec(full))
        nb = len(batch)
        updates = cx.op(
            "Transpose", updates, perm=[*range(p, p + nb), *range(p), *range(p + nb, len(full))]
        )
    out = cx.op("ScatterND", data, index, updates, reduction="add" if accumulate else "none")
    if p > 0:
        inverse = [perm.index(i) for i in range(rank)]
        out = cx.op("Transpose", out, perm=inverse)
    return out


def _masked_put(
    cx: Converter, x: Value, indices: list[Any], present: list[int], values: Value, acc: bool
) -> Value:
    """x[mask] = v with a boolean mask over the leading dims and a single value."""
    if present != [0] or len([t for t in indices if t is not None]) != 1:
        raise NotConvertedError("boolean mask assignment other than x[mask] = value")
    if values.type.numel != 1:
        raise NotConvertedError("boolean mask assignment of several values (data-dependent)")
    mask = cx.tensor(indices[0], DType.BOOL)
    extra = x.type.rank - mask.type.rank
    if extra:
        mask = cx.op("Unsqueeze", mask, cx.ints(list(range(mask.type.rank, x.type.rank))))
    value = cx.op("Reshape", values, cx.ints([])) if values.type.rank else values
    if acc:
        return cx.op("Add", x, cx.op("Where", mask, value, cx.tensor(0, x.dtype)))
    return cx.op("Where", mask, value, x)
