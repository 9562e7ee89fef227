"""Normalization fusions: decomposed LayerNorm and RMSNorm -> LayerNormalization /
RMSNormalization (standard ONNX ops)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ecograph.ir.graph import Graph, Node, Value
from ecograph.passes.pattern import Const, Match, Op, Pat, Pattern, RewritePass, Rule, Var
from ecograph.passes.registry import register_pass
from ecograph.passes.utils import scalar_of


def _last_axis_mean(node: Node) -> bool | str:
    """ReduceMean over the last axis only, keepdims=1."""
    x, axes = node.input(0), node.input(1)
    if axes is None or axes.const_value is None:
        return "ReduceMean axes are not a constant"
    if not node.attr("keepdims", 1):
        return "ReduceMean has keepdims=0"
    assert x is not None
    rank = x.type.rank
    ax = [int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(axes.const_value).ravel()]
    if ax != [rank - 1]:
        return f"ReduceMean axes {ax} are not the last axis of a rank-{rank} input"
    return True


def _mean(x: Pat, name: str) -> Op:
    return Op("ReduceMean", x, Const(), name=name, where=_last_axis_mean)


def _square(v: Pat) -> list[Op]:
    return [Op("Pow", v, Const(value=2.0)), Op("Mul", v, v)]


def _normalized(num: Pat, denom: Op) -> list[Op]:
    """num / denom, num * (1 / denom), num * Reciprocal(denom)."""
    return [
        Op("Div", num, denom),
        Op("Mul", num, Op("Reciprocal", denom)),
        Op("Mul", num, Op("Div", Const(value=1.0), denom)),
    ]


def _affine_forms(name: str, core: Op, check) -> list[Pattern]:
    gamma, beta = Var("gamma"), Var("beta")
    return [
        Pattern(f"{name}+affine", Op("Add", Op("Mul", core, gamma), beta), check),
        Pattern(f"{name}+scale", Op("Mul", core, gamma), check),
        Pattern(name, core, check),
    ]


def _check_norm(m: Match) -> bool | str:
    x, out = m["x"], m.root.outputs[0]
    if not x.dtype.is_float:
        return f"%{x.name} is {x.dtype}, not a float"
    if out.type != x.type:
        return f"output type {out.type} differs from input type {x.type}"
    if scalar_of(m["eps"]) is None:
        return "epsilon is not a scalar constant"
    for key in ("gamma", "beta"):
        v = m.get(key)
        if v is not None and v.dtype != x.dtype:
            return f"{key} %{v.name} is {v.dtype}, input is {x.dtype}"
        if v is not None and (
            v.type.rank > 1 or (v.type.rank == 1 and v.shape[0] not in (1, x.shape[-1]))
        ):
            return f"{key} %{v.name} has shape {list(v.shape)}, not [{x.shape[-1]}]"
    if "gamma" not in m and not isinstance(x.shape[-1], int):
        return "no scale and a symbolic last dim: cannot build a ones scale"
    return True


def layer_norm_patterns() -> list[Pattern]:
    x = Var("x")
    d = Op("Sub", x, _mean(x, "mean"), name="centered")
    out: list[Pattern] = []
    for si, sq in enumerate(_square(d)):
        std = Op("Sqrt", Op("Add", _mean(sq, "var"), Const("eps")))
        for ni, core in enumerate(_normalized(d, std)):
            out.extend(_affine_forms(f"layer-norm/{si}{ni}", core, _check_norm))
    return out


def rms_norm_patterns() -> list[Pattern]:
    x = Var("x")
    out: list[Pattern] = []
    for si, sq in enumerate(_square(x)):
        rms = Op("Sqrt", Op("Add", _mean(sq, "var"), Const("eps")))
        for ni, core in enumerate(_normalized(x, rms)):
            for p in _affine_forms(f"rms-norm/{si}{ni}", core, _check_norm):
                if "affine" not in p.name:
                    out.append(p)
    return out


def _scale_or_ones(graph: Graph, m: Match, key: str) -> Value:
    v = m.get(key)
    if v is not None:
        return v
    x = m["x"]
    return graph.add_constant(np.ones(x.shape[-1], x.dtype.numpy), f"{m.root.name}_ones")


@register_pass
@dataclass
class FuseLayerNorm(RewritePass):
    """(x - mean(x)) / sqrt(var(x) + eps) * gamma + beta -> LayerNormalization(x, gamma, beta)"""

    name: ClassVar[str] = "fuse-layer-norm"
    tolerance: ClassVar[tuple[float, float] | None] = (1e-4, 1e-5)

    def rules(self) -> list[Rule]:
        def rewrite(graph: Graph, m: Match) -> Value:
            inputs = [m["x"], _scale_or_ones(graph, m, "gamma")]
            if "beta" in m:
                inputs.append(m["beta"])
            eps = scalar_of(m["eps"])
            return graph.add_node(
                "LayerNormalization",
                inputs,
                {"axis": -1, "epsilon": float(eps or 0.0)},
                name=f"{m.root.name}_layer_norm",
                before=m.root,
            ).outputs[0]

        return [Rule(p, rewrite) for p in layer_norm_patterns()]


@register_pass
@dataclass
class FuseRMSNorm(RewritePass):
    """x / sqrt(mean(x^2) + eps) * w -> RMSNormalization(x, w)"""

    name: ClassVar[str] = "fuse-rms-norm"
    tolerance: ClassVar[tuple[float, float] | None] = (1e-4, 1e-5)

    def rules(self) -> list[Rule]:
        def rewrite(graph: Graph, m: Match) -> Value:
            eps = scalar_of(m["eps"])
            return graph.add_node(
                "RMSNormalization",
                [m["x"], _scale_or_ones(graph, m, "gamma")],
                {"axis": -1, "epsilon": float(eps or 0.0)},
                name=f"{m.root.name}_rms_norm",
                before=m.root,
            ).output

        return [Rule(p, rewrite) for p in rms_norm_patterns()]
