"""A workaround for a TVM 0.27 simplifier miscompile of `floormod(c - j, m)` in buffer indices.

TVM's FlattenBuffer simplifies the flat index of `x[i, floormod(26 - j, 9)]` on a buffer of 9
columns, `i * 9 + floormod(8 - j, 9)`, into `(i * -9 + floormod(j, -9)) * -1`: the constant is
lost and every element is read from the wrong place (a Tile followed by a reversed CumSum, or
any Flip of a Tile, computed garbage on every target; found by tests/backends/
test_compiled_fuzz.py, reproducer in docs/tvm.md). The same index written with the variable's
coefficient positive, `8 - floormod(j, 9)`, compiles correctly.

This pass rewrites, in every PrimFunc, each `floormod(e, m)` and `floordiv(e, m)` whose
dividend `e` is linear in its variables with no positive and some negative coefficient (a
decreasing index: `c - j`) and whose divisor `m` is a positive constant, by the exact
identities

    floormod(e, m) = (m - 1) - floormod(-e - 1, m)
    floordiv(e, m) = -1 - floordiv(-e - 1, m)

(with -e - 1 = q * m + r: e = (-q - 1) * m + (m - 1 - r)), so the dividend increases with
every variable. Other indices are left as they are.
"""

from __future__ import annotations

from typing import Any

import tvm_ffi
from tvm import tirx
from tvm.sym.pattern import detect_linear_equation

from .analysis import vars_in
from .base import body_rewrite_pass


def _decreasing(e: Any) -> bool:
    """True if `e` is linear in its variables, none with a positive coefficient, some with a
    negative one (all coefficients constant)."""
    variables = sorted(vars_in(e), key=lambda v: v.name)
    if not variables or any(not str(v.ty).startswith(("int", "uint")) for v in variables):
        return False
    try:
        coeffs = detect_linear_equation(e, variables)
    except Exception:  # not an expression the matcher takes: leave it as it is
        return False
    if not coeffs or len(coeffs) != len(variables) + 1:
        return False
    values = [c.value if isinstance(c, tirx.IntImm) else None for c in coeffs[:-1]]
    if any(v is None for v in values):
        return False
    return all(v <= 0 for v in values) and any(v < 0 for v in values)


def _positive_const(m: Any) -> bool:
    return isinstance(m, tirx.IntImm) and m.value > 0


def _flip(node: Any) -> Any:
    """A decreasing `floormod(e, m)` / `floordiv(e, m)` by its identity (module doc)."""
    e, m = node.a, node.b
    if not (_positive_const(m) and _decreasing(e)):
        return node
    one = tirx.IntImm(str(e.ty), 1)
    if isinstance(node, tirx.FloorMod):
        return (m - one) - tirx.floormod(-e - one, m)
    return -one - tirx.floordiv(-e - one, m)


def rewrite_decreasing_indices(expr: Any) -> Any:
    """`expr` with every decreasing floormod / floordiv rewritten (see the module doc)."""
    expr = tvm_ffi.structural_map(expr, (tirx.FloorMod, _flip))
    return tvm_ffi.structural_map(expr, (tirx.FloorDiv, _flip))


def decreasing_index_pass() -> Any:
    """A module pass applying `rewrite_decreasing_indices` to every PrimFunc's body."""
    return body_rewrite_pass("EcographDecreasingIndices", rewrite_decreasing_indices)


__all__ = ["decreasing_index_pass", "rewrite_decreasing_indices"]
