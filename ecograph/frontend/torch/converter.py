"""The ATen -> IR converter core: the op table, its registration decorator and the converter.

`ATEN_TABLE` maps an ATen overload name ("aten.add.Tensor") or a Python builtin used on
symbolic sizes ("operator.mul") to a function `fn(cx, node) -> Value | tuple | None` that emits
ONNX-semantics IR nodes through `cx` (a `Converter`). Adding an op is one decorated function:

    @aten("aten.relu.default")
    def _relu(cx, node):
        return cx.op("Relu", cx.tensor(cx.arg(node, "self")))

The built-in converters live in this package's aten_*.py modules, one per op family; the package
`__init__` imports them, so they are registered before any graph is converted.

Symbolic sizes (SymInt) are carried as int64 tensors of shape [1], computed at run time from
`Shape` of the graph input where each torch symbol first appears, so one graph runs at any size.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ecograph.errors import EcographError, TypeInferenceError, UnsupportedError
from ecograph.frontend.torch.types import (
    Captured,
    get_attr,
    meta_type,
    tensor_to_numpy,
    torch_dtype_to_ir,
)
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Value, default_node_name

ConvertFn = Callable[["Converter", Any], Any]
ATEN_TABLE: dict[str, ConvertFn] = {}


def aten(*names: str) -> Callable[[ConvertFn], ConvertFn]:
    """Register `fn` as the converter of each ATen op name (replacing an earlier one)."""

    def decorate(fn: ConvertFn) -> ConvertFn:
        for name in names:
            ATEN_TABLE[name] = fn
        return fn

    return decorate


def register_aten(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a converter for ATen ops named like "aten.add.Tensor" (replacing an earlier
    one); the public name of `aten`."""
    return aten(*names)


def supported_aten_ops() -> list[str]:
    """The ATen ops (and Python builtins) the converter maps, sorted."""
    return sorted(ATEN_TABLE)


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


def _module_path(node: Any) -> str:
    """The innermost module an fx node ran in, as a dotted path ("" for the root module)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else ""


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


class ShapeDim:
    """A dim read from a value's shape at run time (for dims of intermediate values)."""

    def __init__(self, value: Value, axis: int) -> None:
        self.value = value
        self.axis = axis


def dim_arg(x: Value, axis: int) -> int | ShapeDim:
    """Dim `axis` of `x` as an argument for `Converter.size`: an int when static, else read
    from the shape at run time."""
    d = x.shape[axis]
    if isinstance(d, int):
        return d
    return ShapeDim(x, axis)


class Converter:
    """Walks a captured ATen fx graph in order and emits IR through the op table."""

    def __init__(self, captured: Captured, name: str = "main") -> None:
        self.captured = captured
        self.graph = Graph(name, metadata={"source": f"torch.{captured.method}"})
        self.names = dict(captured.symbol_names)
        self.env: dict[Any, Any] = {}
        self._sym_sources: dict[str, tuple[Value, int]] = {}
        self._sym_cache: dict[str, Value] = {}
        self._const_cache: dict[tuple[Any, ...], Value] = {}
        self._shape_cache: dict[tuple[int, ...], Value] = {}
        self._failures: dict[str, list[tuple[str, str]]] = defaultdict(list)
        # the module path of the fx node being converted ("model.layers.3.mlp.down_proj"):
        # the nodes made for it are named after it, so exclusions and reports can name modules
        self._scope = ""

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
                self.env[node] = self._constant_tensor(
                    node.target, get_attr(node.graph.owning_module, node.target)
                )
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
        self._scope = _module_path(node)
        try:
            result = fn(self, node)
        except NotConvertedError as exc:
            self._fail(node, name, str(exc))
            return
        except EcographError as exc:
            exc.add_note(f"while converting fx node {node.name} ({name}) at {_location(node)}")
            raise
        finally:
            self._scope = ""
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
        node = self.graph.add_node(op_type, list(inputs), attrs, name=self._node_name(op_type))
        return node.outputs[0]

    def op_multi(self, op_type: str, *inputs: Value | None, num_outputs: int, **attrs: Any):
        node = self.graph.add_node(
            op_type, list(inputs), attrs, num_outputs=num_outputs, name=self._node_name(op_type)
        )
        return node.outputs

    def _node_name(self, op_type: str) -> str | None:
        """`{module path}.{op}` inside a submodule (lm_head.mat_mul), else the default."""
        return f"{self._scope}.{default_node_name(op_type)}" if self._scope else None

    # ------------------------------------------------------- symbolic sizes

    def size(self, x: Any) -> Value:
        """An int or a SymInt argument as an int64 [1] tensor."""
        if isinstance(x, ShapeDim):
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


def rename_outputs(graph: Graph, values: Sequence[Value], names: Sequence[str]) -> list[Value]:
    """Make `values` the graph outputs called `names`, inserting Identity nodes where a value
    is a graph input, a constant or listed twice, and moving clashing names out of the way."""
    outs: list[Value] = []
    seen: set[int] = set()
    for value in values:
        if value.producer is None or id(value) in seen:
            value = graph.add_node("Identity", [value]).output
        seen.add(id(value))
        outs.append(value)
    for value, name in zip(outs, names, strict=True):
        if value.name == name:
            continue
        if graph.has_value(name):
            other = graph.value(name)
            if other.is_graph_input:
                name = graph.unique_name(name)
            else:
                graph.rename_value(other, graph.unique_name(f"{name}_inner"))
        graph.rename_value(value, name)
    graph.set_outputs(outs)
    return outs
