"""Activation fusions: decomposed GELU (erf and tanh forms), SiLU and SwiGLU -> one op each."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ecograph.ir.graph import Graph, Value
from ecograph.passes.pattern import Const, Match, Op, Pat, Pattern, RewritePass, Rule, Var
from ecograph.passes.registry import register_pass

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _is_float(v: Value) -> bool | str:
    return True if v.dtype.is_float else f"%{v.name} is {v.dtype}, not a float"


def _same_type_as_x(m: Match) -> bool | str:
    x, out = m["x"], m.root.outputs[0]
    if x.type != out.type:
        return f"output type {out.type} differs from input type {x.type} (broadcasting)"
    return True


def _outer_forms(name: str, x: Var, inner: Op) -> list[Pattern]:
    """0.5 * x * inner, in the association orders exporters produce."""
    half = Const(value=0.5)
    return [
        Pattern(f"{name}/(x*i)*0.5", Op("Mul", Op("Mul", x, inner), half), _same_type_as_x),
        Pattern(f"{name}/(x*0.5)*i", Op("Mul", Op("Mul", x, half), inner), _same_type_as_x),
        Pattern(f"{name}/x*(i*0.5)", Op("Mul", x, Op("Mul", inner, half)), _same_type_as_x),
        Pattern(
            f"{name}/(x*i)/2", Op("Div", Op("Mul", x, inner), Const(value=2.0)), _same_type_as_x
        ),
    ]


def gelu_erf_patterns() -> list[Pattern]:
    x = Var("x", where=_is_float)
    # x / sqrt(2) or x * (1 / sqrt(2))
    scaled = [
        Op("Div", x, Const(value=SQRT2, rel=1e-4)),
        Op("Mul", x, Const(value=1 / SQRT2, rel=1e-4)),
    ]
    out: list[Pattern] = []
    for i, s in enumerate(scaled):
        inner = Op("Add", Op("Erf", s), Const(value=1.0))
        out.extend(
            Pattern(f"gelu-erf{i}{p.name[4:]}", p.root, p.where)
            for p in _outer_forms("gelu", x, inner)
        )
    return out


def gelu_tanh_patterns() -> list[Pattern]:
    x = Var("x", where=_is_float)
    cubes: list[Pat] = [
        Op("Pow", x, Const(value=3.0)),
        Op("Mul", x, Op("Mul", x, x)),
        Op("Mul", Op("Mul", x, x), x),
    ]
    out: list[Pattern] = []
    for i, cube in enumerate(cubes):
        poly = Op("Add", x, Op("Mul", cube, Const(value=0.044715, rel=1e-4)))
        inner = Op(
            "Add",
            Op("Tanh", Op("Mul", poly, Const(value=SQRT_2_OVER_PI, rel=1e-4))),
            Const(value=1.0),
        )
        out.extend(
            Pattern(f"gelu-tanh{i}{p.name[4:]}", p.root, p.where)
            for p in _outer_forms("gelu", x, inner)
        )
    return out


@register_pass
@dataclass
class FuseGelu(RewritePass):
    """0.5*x*(1+erf(x/sqrt(2))) -> Gelu(x); the tanh form -> Gelu(x, approximate="tanh")

    The tanh form is 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3))).
    """

    name: ClassVar[str] = "fuse-gelu"
    tolerance: ClassVar[tuple[float, float] | None] = (1e-4, 1e-5)

    def rules(self) -> list[Rule]:
        def make(approximate: str):
            def rewrite(graph: Graph, m: Match) -> Value:
                attrs = {"approximate": approximate} if approximate != "none" else {}
                return graph.add_node(
                    "Gelu", [m["x"]], attrs, name=f"{m.root.name}_gelu", before=m.root
                ).output

            return rewrite

        return [Rule(p, make("none")) for p in gelu_erf_patterns()] + [
            Rule(p, make("tanh")) for p in gelu_tanh_patterns()
        ]


def silu_pattern() -> Pattern:
    x = Var("x", where=_is_float)
    return Pattern("silu", Op("Mul", x, Op("Sigmoid", x)), _same_type_as_x)


@register_pass
@dataclass
class FuseSilu(RewritePass):
    """Mul(x, Sigmoid(x)) -> ecograph::SiLU(x)"""

    name: ClassVar[str] = "fuse-silu"
    tolerance: ClassVar[tuple[float, float] | None] = (1e-5, 1e-6)

    def rules(self) -> list[Rule]:
        def rewrite(graph: Graph, m: Match) -> Value:
            return graph.add_node(
                "SiLU", [m["x"]], domain="ecograph", name=f"{m.root.name}_silu", before=m.root
            ).output

        return [Rule(silu_pattern(), rewrite)]


def _swiglu_types(m: Match) -> bool | str:
    g, u, out = m["gate"], m["up"], m.root.outputs[0]
    if g.type != out.type or u.type != out.type:
        return f"gate {g.type} and up {u.type} must both have the output type {out.type}"
    return True


@register_pass
@dataclass
class FuseSwiGLU(RewritePass):
    """Mul(SiLU(gate), up) -> ecograph::SwiGLU(gate, up) (also from Mul(gate, Sigmoid(gate)))"""

    name: ClassVar[str] = "fuse-swiglu"
    tolerance: ClassVar[tuple[float, float] | None] = (1e-5, 1e-6)

    def rules(self) -> list[Rule]:
        gate, up = Var("gate", where=_is_float), Var("up")
        patterns = [
            Pattern("swiglu", Op("Mul", Op("SiLU", gate, domain="ecograph"), up), _swiglu_types),
            Pattern(
                "swiglu/sigmoid",
                Op("Mul", Op("Mul", gate, Op("Sigmoid", gate)), up),
                _swiglu_types,
            ),
        ]

        def rewrite(graph: Graph, m: Match) -> Value:
            return graph.add_node(
                "SwiGLU",
                [m["gate"], m["up"]],
                domain="ecograph",
                name=f"{m.root.name}_swiglu",
                before=m.root,
            ).output

        return [Rule(p, rewrite) for p in patterns]
