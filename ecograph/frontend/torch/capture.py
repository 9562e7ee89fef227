"""PyTorch frontend: capture a live `torch.nn.Module` into an ecograph IR `Graph`.

Capture uses torch.export (non-strict) decomposed to core ATen; when export fails (and no
`dynamic_shapes` were asked for) it falls back to torch.fx symbolic tracing, functionalized and
lowered to the same ATen ops with the real example inputs, so its shapes are static. Each ATen
op is mapped to ONNX-semantics IR nodes by a converter registered in `ATEN_TABLE` (converter.py,
a table `aten op -> function`). Weights become constants that share memory with the module's
tensors. Symbolic dims from `dynamic_shapes` keep the names of the user's `torch.export.Dim`s.

Nothing is ever loaded from a file here: `from_torch` takes live modules only.
User guide: docs/torch.md.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from ecograph.errors import CaptureError, UnsupportedError
from ecograph.frontend.torch.converter import Converter
from ecograph.frontend.torch.types import Captured, get_attr
from ecograph.ir import symbolic
from ecograph.ir.graph import Graph

_CAPTURE_MODES = ("auto", "export", "fx")


def from_torch(
    module: Any,
    example_inputs: Any,
    *,
    dynamic_shapes: Any = None,
    capture: str = "auto",
) -> Graph:
    """Capture `module` run on `example_inputs` into an IR graph with ONNX semantics.

    `example_inputs` is a tuple of positional arguments, a dict of keyword arguments, or a
    single tensor. `dynamic_shapes` is passed to `torch.export.export`; dims given as
    `torch.export.Dim("seq")` become IR symbols named "seq". `capture` is "auto" (export,
    falling back to fx when no dynamic_shapes are given), "export" or "fx". Graph inputs are
    named after the forward signature; outputs after the returned dict keys / named-tuple
    fields, or "output" / "output_0" and so on.
    Raises UnsupportedError listing every unsupported op (with counts and source locations),
    and CaptureError when torch cannot capture the module at all.
    """
    import torch

    if isinstance(module, (str, bytes)) or hasattr(module, "__fspath__"):
        raise UnsupportedError(
            f"from_torch takes a live torch.nn.Module, not a path ({module!r}); ecograph never "
            "unpickles .pt files. Build the module in Python and load its weights with "
            "torch.load(..., weights_only=True) or safetensors yourself"
        )
    if not isinstance(module, torch.nn.Module):
        raise UnsupportedError(
            f"from_torch takes a torch.nn.Module, got {type(module).__name__}; wrap a function "
            "in a small nn.Module"
        )
    if capture not in _CAPTURE_MODES:
        raise ValueError(f"capture must be one of {_CAPTURE_MODES}, got {capture!r}")
    args, kwargs = _split_inputs(example_inputs)

    with _eval_mode(module), torch.no_grad():
        captured: Captured | None = None
        export_error: BaseException | None = None
        if capture in ("auto", "export"):
            try:
                captured = _capture_export(module, args, kwargs, dynamic_shapes)
            except UnsupportedError:
                raise
            except Exception as exc:  # torch raises many kinds; re-raised typed below
                if capture == "export" or dynamic_shapes is not None:
                    # fx capture is static, so it cannot honour dynamic_shapes either.
                    raise CaptureError(
                        f"torch.export could not capture {type(module).__name__}: "
                        f"{type(exc).__name__}: {_first_lines(exc)}. Fix the model or the "
                        "dynamic_shapes spec (torch's error is chained below), or use "
                        "capture='fx' for a static-shape graph"
                    ) from exc
                export_error = exc
        if captured is None:
            if export_error is not None:
                warnings.warn(
                    f"torch.export failed on {type(module).__name__} "
                    f"({type(export_error).__name__}: {_first_lines(export_error, 1)}); "
                    "falling back to torch.fx symbolic tracing (static shapes)",
                    stacklevel=2,
                )
            try:
                captured = _capture_fx(module, args, kwargs, dynamic_shapes)
            except UnsupportedError:
                raise
            except Exception as exc:
                detail = ""
                if export_error is not None:
                    detail = (
                        f" torch.export failed first: {type(export_error).__name__}: "
                        f"{_first_lines(export_error, 1)}."
                    )
                raise CaptureError(
                    f"torch.fx could not trace {type(module).__name__}: {type(exc).__name__}: "
                    f"{_first_lines(exc)}.{detail} Data-dependent Python control flow cannot "
                    "be captured; rewrite it with torch.where / torch.cond"
                ) from exc
        return Converter(captured, name=type(module).__name__).run()


# ------------------------------------------------------------ capture


def _split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise UnsupportedError(
        f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword "
        f"inputs, got {type(example_inputs).__name__}"
    )


@contextlib.contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    """Put the module in eval mode for capture and restore each submodule's flag afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _decomposition_table() -> dict[Any, Any]:
    """Core ATen decompositions, except attention: SDPA is mapped directly (one clean
    MatMul-Softmax-MatMul pattern) and its decomposition breaks on symbolic shapes."""
    import torch

    table = dict(torch.export.default_decompositions())
    for op in list(table):
        if "scaled_dot_product" in str(op):
            del table[op]
    return table


def _capture_export(
    module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], dynamic_shapes: Any
) -> Captured:
    import torch
    from torch.export.graph_signature import InputKind

    ep = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    ep = ep.run_decompositions(_decomposition_table())
    sig = ep.graph_signature
    constants: dict[str, Any] = {}
    constant_names: dict[str, str] = {}
    user_inputs: list[str] = []
    for spec in sig.input_specs:
        name = spec.arg.name
        if spec.kind == InputKind.USER_INPUT:
            user_inputs.append(name)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            target = spec.target
            if target in ep.state_dict:
                constants[name] = ep.state_dict[target]
            elif target in ep.constants:
                constants[name] = ep.constants[target]
            else:
                raise CaptureError(f"torch.export lists {target!r} as an input but has no tensor")
            constant_names[name] = target or name
        else:
            raise UnsupportedError(
                f"input {name!r} of kind {spec.kind.name} (custom objects, effect tokens) is "
                "not supported yet"
            )
    _drop_overwritten_buffers(ep)
    out_spec = ep.module_call_graph[0].signature.out_spec
    leaves = _placeholder_leaves(args, kwargs)
    return Captured(
        graph_module=ep.graph_module,
        user_inputs=user_inputs,
        input_names={n: n for n in user_inputs},
        constants=constants,
        constant_names=constant_names,
        output_names=_output_names(out_spec),
        symbol_names=_symbol_names(
            ep.graph_module, user_inputs, leaves, module, args, kwargs, dynamic_shapes
        ),
        method="export",
    )


def _drop_overwritten_buffers(ep: Any) -> None:
    """Drop the outputs by which `ep` writes buffers it never reads (Phi-3's LongRoPE
    overwrites `inv_freq` each call with frequencies chosen by the sequence length): the
    graph computes their new value from its inputs and uses it, so every call does the same
    without carrying it over. Any other mutation (a buffer read, then updated: state from
    one call to the next; a parameter or a user input) raises UnsupportedError."""
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    buffers = {s.target: s.arg.name for s in sig.input_specs if s.kind == InputKind.BUFFER}
    keep = []
    for spec in sig.output_specs:
        if spec.kind == OutputKind.USER_OUTPUT:
            keep.append(True)
            continue
        buffer = spec.kind == OutputKind.BUFFER_MUTATION and spec.target in buffers
        if buffer and not placeholders[buffers[spec.target]].users:
            keep.append(False)  # overwritten, never read
            continue
        why = " and reads it, so its value carries from one call to the next" if buffer else ""
        raise UnsupportedError(
            f"the model mutates {spec.target!r} in place ({spec.kind.name}){why}; ecograph "
            "captures inference graphs only. Remove the in-place update or run in eval mode"
        )
    if all(keep):
        return
    (output,) = [n for n in ep.graph.nodes if n.op == "output"]
    values = output.args[0]
    output.args = (tuple(v for v, k in zip(values, keep, strict=True) if k),)


def _capture_fx(
    module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], dynamic_shapes: Any
) -> Captured:
    import torch
    import torch.utils._pytree as pytree
    from torch.fx.experimental.proxy_tensor import make_fx

    if dynamic_shapes is not None:
        warnings.warn(
            "torch.fx capture gives static shapes; dynamic_shapes is ignored", stacklevel=3
        )
    signature = inspect.signature(module.forward)
    bound = signature.bind(*args, **kwargs)
    names: list[str] = []
    values: list[Any] = []
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind == inspect.Parameter.VAR_POSITIONAL:
            names += [f"{name}_{i}" for i in range(len(value))]
            values += list(value)
        elif kind == inspect.Parameter.VAR_KEYWORD:
            names += list(value)
            values += list(value.values())
        else:
            names.append(name)
            values.append(value)
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, torch.Tensor):
            raise UnsupportedError(
                f"torch.fx capture takes tensor inputs only; {name!r} is "
                f"{type(value).__name__}. Use capture='export' for nested inputs"
            )
    traced = torch.fx.symbolic_trace(module, concrete_args=None)
    # Lower the module-level fx graph to the ATen ops the converter maps.
    # Functionalize, so in-place ops (ReLU(inplace=True), +=) become their pure forms.
    functional = torch.func.functionalize(traced, remove="mutations")
    aten = make_fx(functional, decomposition_table=_decomposition_table(), tracing_mode="real")(
        *values
    )
    placeholders = [n.name for n in aten.graph.nodes if n.op == "placeholder"]
    constants: dict[str, Any] = {}
    for node in aten.graph.nodes:
        if node.op == "get_attr":
            constants[node.target] = get_attr(aten, node.target)
    output_node = next(n for n in aten.graph.nodes if n.op == "output")
    _, out_spec = pytree.tree_flatten(output_node.args[0])
    return Captured(
        graph_module=aten,
        user_inputs=placeholders,
        input_names=dict(zip(placeholders, names, strict=True)),
        constants=constants,
        constant_names={name: name for name in constants},
        output_names=_output_names(out_spec),
        method="fx",
    )


def _output_names(out_spec: Any) -> list[str]:
    """Names for the flat outputs: dict keys / named-tuple fields joined by "_", else
    "output" for a single tensor and "output_0", "output_1", ... for sequences."""
    import torch.utils._pytree as pytree

    n = out_spec.num_leaves
    tree = pytree.tree_unflatten(list(range(n)), out_spec)
    paths = [path for path, _ in pytree.tree_flatten_with_path(tree)[0]]
    names: list[str] = []
    for path in paths:
        if not path:
            names.append("output")
            continue
        parts = []
        for key in path:
            if isinstance(key, pytree.MappingKey):
                parts.append(str(key.key))
            elif isinstance(key, pytree.GetAttrKey):
                parts.append(str(key.name))
            elif isinstance(key, pytree.SequenceKey):
                parts.append(str(key.idx))
            else:
                parts.append(str(key))
        if isinstance(path[0], pytree.SequenceKey):
            parts.insert(0, "output")
        names.append("_".join(parts))
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name] - 1}")
    return unique


def _placeholder_leaves(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    import torch.utils._pytree as pytree

    return pytree.tree_flatten((args, kwargs))[0]


def _symbol_names(
    gm: Any,
    user_inputs: list[str],
    leaves: list[Any],
    module: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dynamic_shapes: Any,
) -> dict[str, str]:
    """Map torch's shape symbols (s0, s1, ...) to the names of the user's `Dim`s."""
    if dynamic_shapes is None:
        return {}
    import torch

    named: dict[int, dict[int, str]] = {}  # id(tensor) -> axis -> dim name

    def walk(value: Any, spec: Any) -> None:
        if spec is None:
            return
        if isinstance(value, torch.Tensor):
            axes = spec.items() if isinstance(spec, Mapping) else enumerate(spec)
            for axis, dim in axes:
                name = getattr(dim, "__name__", None)
                if name is not None and symbolic.is_symbol_name(name):
                    named.setdefault(id(value), {})[int(axis)] = name
            return
        if isinstance(value, Mapping) and isinstance(spec, Mapping):
            for key, sub in value.items():
                walk(sub, spec.get(key))
        elif isinstance(value, (tuple, list)) and isinstance(spec, (tuple, list)):
            for sub, sub_spec in zip(value, spec, strict=False):
                walk(sub, sub_spec)

    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        arguments = dict(bound.arguments)
    except TypeError:
        arguments = {f"arg{i}": a for i, a in enumerate(args)} | kwargs
    if isinstance(dynamic_shapes, Mapping):
        for key, value in arguments.items():
            walk(value, dynamic_shapes.get(key))
    elif isinstance(dynamic_shapes, (tuple, list)):
        for value, spec in zip(arguments.values(), dynamic_shapes, strict=False):
            walk(value, spec)

    placeholders = {n.name: n for n in gm.graph.nodes if n.op == "placeholder"}
    out: dict[str, str] = {}
    for name, leaf in zip(user_inputs, leaves, strict=False):
        axes = named.get(id(leaf))
        if not axes:
            continue
        val = placeholders[name].meta.get("val")
        if val is None:
            continue
        for axis, dim_name in axes.items():
            size = val.shape[axis]
            if isinstance(size, torch.SymInt):
                expr = size.node.expr
                if getattr(expr, "is_Symbol", False):
                    out[str(expr)] = dim_name
    return out


def _first_lines(exc: BaseException, n: int = 3) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = " | ".join(lines[:n])
    return text if len(text) <= 600 else text[:600] + "..."
