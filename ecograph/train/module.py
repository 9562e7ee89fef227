"""`to_torch(graph)`: run an IR graph as a trainable `torch.nn.Module`.

The module walks the graph's nodes in order with the torch kernels of
`ecograph.train.kernels`. Float constants that act as weights (contraction operands, biases,
norm scales and shifts, embedding tables) become `nn.Parameter`s, so gradients flow into
them; every other constant (integer tensors, shapes, BatchNorm statistics, RoPE tables) is a
buffer. `module.to_graph()` writes the parameters back into a copy of the graph. Nodes
computed only from constants and integer tensors may run through the registry's numpy
reference kernels when no torch kernel exists; any other op without a kernel is an
`UnsupportedError` when the module is built, never in the middle of training.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ecograph.errors import InputError, UnsupportedError
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.interpreter import run_node
from ecograph.ir.registry import get_schema, resolve_attrs
from ecograph.train.kernels import KERNELS, Kernel, torch_dtype, unsupported_reason

# Input slots of ops that hold a weight: a float constant reaching one is trained.
WEIGHT_SLOTS: dict[tuple[str, str], tuple[int, ...]] = {
    ("", "MatMul"): (0, 1),
    ("", "Gemm"): (0, 1, 2),
    ("", "Conv"): (1, 2),
    ("", "ConvTranspose"): (1, 2),
    ("ecograph", "Linear"): (1, 2),
    ("", "LayerNormalization"): (1, 2),
    ("", "RMSNormalization"): (1,),
    ("", "BatchNormalization"): (1, 2),  # scale and bias; mean and var stay statistics
    ("", "Gather"): (0,),  # an embedding table
    ("", "PRelu"): (1,),
}
# Ops a weight may pass through on its way to a weight slot (a folded transpose, a reshape).
LAYOUT_OPS = frozenset(
    {"Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Cast", "Expand"}
    | {"Slice", "Split", "Concat"}
)


@dataclass(frozen=True)
class _Step:
    node: Node
    kernel: Kernel
    attrs: dict[str, Any]
    on_numpy: bool  # run through the registry's reference kernel (no gradient needed)


def _weight_roles(graph: Graph) -> dict[str, str]:
    """Float constants that act as weights, by name: "embedding" (a Gather's table) or
    "weight" (a contraction operand, bias, norm scale/shift, per-channel scale)."""
    roles: dict[str, str] = {}
    for const in graph.constants.values():
        arr = const.const_value
        if not const.dtype.is_float or arr is None or arr.size <= 1:
            continue
        frontier, seen = [const], {id(const)}
        while frontier:
            value = frontier.pop()
            for use in value.uses:
                node, key = use.node, (use.node.domain, use.node.op_type)
                if (
                    node.op_type in LAYOUT_OPS
                    and node.domain == ""
                    and (use.index == 0 or node.op_type == "Concat")
                ):
                    for out in node.outputs:
                        if id(out) not in seen:
                            seen.add(id(out))
                            frontier.append(out)
                elif use.index in WEIGHT_SLOTS.get(key, ()):
                    role = "embedding" if key == ("", "Gather") else "weight"
                    if roles.get(const.name) != "weight":
                        roles[const.name] = role
                elif node.domain == "" and node.op_type in ("Add", "Sub"):
                    roles.setdefault(const.name, "weight")  # a bias or positional embedding
                elif node.domain == "" and node.op_type == "Mul" and arr.ndim == 1:
                    roles.setdefault(const.name, "weight")  # a per-channel scale
    return roles


def _attr_name(name: str, taken: set[str]) -> str:
    base = "c_" + re.sub(r"\W", "_", name)
    out, i = base, 0
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    taken.add(out)
    return out


class GraphModule(nn.Module):
    """An IR graph as a torch module (see `to_torch`).

    `forward(*args, **kwargs)` takes the graph inputs positionally (in graph order) or by name
    and returns a tuple of the graph outputs, in graph order. `run(feeds, outputs=[names])`
    returns any values by name (intermediate ones too) as a dict.
    """

    def __init__(self, graph: Graph, trainable: Collection[str] | None = None) -> None:
        super().__init__()
        self.graph = graph
        roles = _weight_roles(graph)
        if trainable is None:
            trainable = set(roles)
        else:
            trainable = set(trainable)
            for name in sorted(trainable):
                if name not in graph.constants or not graph.constants[name].dtype.is_float:
                    raise UnsupportedError(
                        f"to_torch: trainable={name!r} is not a float constant of graph "
                        f"{graph.name}; give names of float constants"
                    )
        #: the role of each trained constant: "embedding" or "weight"
        self.roles = {n: roles.get(n, "weight") for n in sorted(trainable)}
        self._attr: dict[str, str] = {}
        taken: set[str] = set()
        for name, value in graph.constants.items():
            arr = np.array(value.const_value, order="C")  # a copy: training must not write back
            try:
                tensor = torch.from_numpy(arr)
            except TypeError:
                raise UnsupportedError(
                    f"to_torch: constant %{name} has dtype {value.dtype}, which torch cannot "
                    "hold; dequantize or cast it with a pass first"
                ) from None
            attr = _attr_name(name, taken)
            self._attr[name] = attr
            if name in trainable:
                self.register_parameter(attr, nn.Parameter(tensor))
            else:
                self.register_buffer(attr, tensor, persistent=True)
        self._steps = self._plan(graph, trainable)
        self._input_names = [v.name for v in graph.inputs]
        self._output_names = [v.name for v in graph.outputs]
        self._last_use: dict[str, int] = {}
        for i, step in enumerate(self._steps):
            for v in step.node.inputs:
                if v is not None and not v.is_constant:
                    self._last_use[v.name] = i

    @staticmethod
    def _plan(graph: Graph, trainable: Collection[str]) -> list[_Step]:
        differentiable: set[int] = {id(v) for v in graph.inputs if v.dtype.is_float}
        differentiable |= {id(graph.constants[n]) for n in trainable}
        steps: list[_Step] = []
        for node in graph.nodes:
            schema = get_schema(node.op_type, node.domain)  # UnknownOpError names the op
            attrs = resolve_attrs(schema, node)
            if schema.wants_num_outputs:
                attrs["_num_outputs"] = len(node.outputs)
            needs_grad = any(v is not None and id(v) in differentiable for v in node.inputs)
            kernel = KERNELS.get((node.domain, node.op_type))
            reason = unsupported_reason(node) if kernel is not None else None
            if kernel is None or reason is not None:
                if needs_grad:
                    why = reason or "no torch kernel for this op"
                    raise UnsupportedError(
                        f"to_torch: node {node.name} ({node.qualified_op}): {why}; add one in "
                        "ecograph/train/kernels.py or rewrite the node with a pass first"
                    )
                steps.append(_Step(node, schema.kernel, attrs, on_numpy=True))
            else:
                steps.append(_Step(node, kernel, attrs, on_numpy=False))
            if needs_grad:
                differentiable |= {id(v) for v in node.outputs if v.dtype.is_float}
        return steps

    # ----------------------------------------------------------------- weights

    def constant(self, name: str) -> torch.Tensor:
        """The parameter or buffer holding the graph constant `name`."""
        return getattr(self, self._attr[name])

    def weights(self) -> dict[str, nn.Parameter]:
        """The trained parameters by graph constant name."""
        return {n: getattr(self, self._attr[n]) for n in self.roles}

    def to_graph(self) -> Graph:
        """A copy of the graph with the current parameter values as its constants (same
        names, shapes and dtypes); the graph the module was built from is untouched."""
        new = self.graph.copy()
        for name, param in self.weights().items():
            old = self.graph.constants[name]
            arr = param.detach().cpu().numpy().astype(old.dtype.numpy)
            new.set_constant_value(new.value(name), arr)
        return new

    # ----------------------------------------------------------------- running

    def _feeds(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if len(args) > len(self._input_names):
            raise InputError(
                f"{len(args)} positional inputs for graph {self.graph.name}, which takes "
                f"{len(self._input_names)}: {self._input_names}"
            )
        given = dict(zip(self._input_names, args, strict=False))
        for name, value in kwargs.items():
            if name in given:
                raise InputError(f"input {name!r} is given both positionally and by name")
            given[name] = value
        missing = [n for n in self._input_names if n not in given]
        unknown = sorted(set(given) - set(self._input_names))
        if missing or unknown:
            raise InputError(
                f"graph {self.graph.name} takes inputs {self._input_names}; missing {missing}, "
                f"unknown {unknown}"
            )
        feeds: dict[str, torch.Tensor] = {}
        for value in self.graph.inputs:
            data = given[value.name]
            tensor = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
            expected = torch_dtype(value.dtype)
            same_kind = tensor.is_floating_point() and expected.is_floating_point
            if tensor.dtype != expected and not same_kind:
                raise InputError(
                    f"input {value.name!r} has dtype {tensor.dtype}; graph {self.graph.name} "
                    f"expects {value.dtype}"
                )
            if tensor.ndim != value.type.rank:
                raise InputError(
                    f"input {value.name!r} has rank {tensor.ndim}; the graph expects {value.type}"
                )
            feeds[value.name] = tensor
        return feeds

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        values = self._execute(self._feeds(args, kwargs), self._output_names)
        return tuple(values[n] for n in self._output_names)

    def run(
        self, feeds: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """The values named in `outputs` (default: the graph outputs) by name."""
        names = list(outputs) if outputs is not None else self._output_names
        for name in names:
            if not self.graph.has_value(name):
                raise InputError(f"graph {self.graph.name} has no value named {name!r}")
        return self._execute(self._feeds((), feeds), names)

    def _execute(self, feeds: dict[str, torch.Tensor], wanted: list[str]) -> dict[str, Any]:
        env: dict[str, torch.Tensor] = dict(feeds)
        keep = set(wanted)
        for name in keep:
            value = self.graph.value(name)
            if value.is_constant:
                env[name] = self.constant(name)
        for i, step in enumerate(self._steps):
            node = step.node
            args = [None if v is None else self._lookup(env, v) for v in node.inputs]
            if step.on_numpy:
                arrays = [None if a is None else a.detach().cpu().numpy() for a in args]
                results: Any = [torch.from_numpy(np.array(r)) for r in run_node(node, arrays)]
            else:
                try:
                    results = step.kernel(*args, **step.attrs)
                except Exception as exc:
                    shapes = ", ".join(
                        "_" if a is None else f"{a.dtype}{list(a.shape)}" for a in args
                    )
                    raise InputError(
                        f"to_torch: node {node.name} ({node.qualified_op}) failed on inputs "
                        f"({shapes}): {type(exc).__name__}: {exc}"
                    ) from exc
                if not isinstance(results, tuple):
                    results = (results,)
            for out, tensor in zip(node.outputs, results, strict=False):
                env[out.name] = tensor
            for v in node.inputs:
                if v is not None and self._last_use.get(v.name) == i and v.name not in keep:
                    env.pop(v.name, None)
        return {name: env[name] for name in wanted}

    def _lookup(self, env: dict[str, torch.Tensor], value: Value) -> torch.Tensor:
        if value.is_constant:
            return self.constant(value.name)
        return env[value.name]


def to_torch(graph: Graph, *, trainable: Collection[str] | None = None) -> GraphModule:
    """`graph` as a trainable `torch.nn.Module` (a `GraphModule`).

    Weights (see the module doc) become parameters, copied from the graph's arrays; pass
    `trainable` (constant names) to choose them yourself. `module.to_graph()` returns a copy
    of the graph holding the trained weights. Raises UnsupportedError naming the node when an
    op on a differentiable path has no torch kernel.
    """
    return GraphModule(graph, trainable)
