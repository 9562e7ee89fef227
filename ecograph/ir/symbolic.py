"""Symbolic tensor dimensions.

A dim is an `int` or a `str`. A string is a symbol ("batch", "seq") or an integer polynomial in
symbols written canonically ("2*seq", "batch*seq", "seq+1"); floor division and modulo that do
not divide exactly become opaque atoms ("(seq+1)//2"). Arithmetic here keeps strings canonical,
so two dims are equal exactly when their strings are equal. Symbol names are identifiers
(letters, digits, `_`, not starting with a digit); frontends rename anything else.

Strings are parsed with a small recursive-descent parser, never `eval`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

Dim = int | str
T = TypeVar("T")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(//|[-+*%()]))")

# A monomial is a sorted tuple of atom names (repeats for powers); a polynomial maps
# monomials to non-zero integer coefficients. The empty monomial is the constant term.
Monomial = tuple[str, ...]
Poly = dict[Monomial, int]


def is_symbol_name(name: str) -> bool:
    """True for a valid symbol name: an identifier."""
    return bool(_IDENT.match(name))


def _const(value: int) -> Poly:
    return {(): value} if value else {}


def _add(a: Poly, b: Poly, sign: int = 1) -> Poly:
    out = dict(a)
    for mono, coeff in b.items():
        total = out.get(mono, 0) + sign * coeff
        if total:
            out[mono] = total
        else:
            out.pop(mono, None)
    return out


def _mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            mono = tuple(sorted(ma + mb))
            total = out.get(mono, 0) + ca * cb
            if total:
                out[mono] = total
            else:
                out.pop(mono, None)
    return out


def _as_int(p: Poly) -> int | None:
    if not p:
        return 0
    if len(p) == 1 and () in p:
        return p[()]
    return None


def _floordiv(a: Poly, b: Poly) -> Poly:
    bi = _as_int(b)
    ai = _as_int(a)
    if ai is not None and bi is not None:
        if bi == 0:
            raise ZeroDivisionError("dimension division by zero")
        return _const(ai // bi)
    if bi is not None and bi > 0 and all(c % bi == 0 for c in a.values()):
        return {m: c // bi for m, c in a.items()}
    if _render(a) == _render(b):
        return _const(1)
    exact = _divide_by_monomial(a, b)
    if exact is not None:
        return exact
    return {(f"{_paren(a)}//{_paren(b)}",): 1}


def _divide_by_monomial(a: Poly, b: Poly) -> Poly | None:
    """a / b when b is one positive term c*m that divides every term of a exactly
    ((384*batch*seq)//(32*batch*seq) = 12); None otherwise. Symbols are positive sizes."""
    if len(b) != 1:
        return None
    ((mono, coeff),) = b.items()
    if coeff <= 0:
        return None
    out: Poly = {}
    for term, c in a.items():
        rest = list(term)
        for atom in mono:
            if atom not in rest:
                return None
            rest.remove(atom)
        if c % coeff:
            return None
        out[tuple(rest)] = c // coeff
    return out


def _mod(a: Poly, b: Poly) -> Poly:
    bi = _as_int(b)
    ai = _as_int(a)
    if ai is not None and bi is not None:
        if bi == 0:
            raise ZeroDivisionError("dimension modulo by zero")
        return _const(ai % bi)
    if bi is not None and bi > 0 and all(c % bi == 0 for c in a.values()):
        return {}
    return {(f"{_paren(a)}%{_paren(b)}",): 1}


def _paren(p: Poly) -> str:
    text = _render(p)
    return text if _as_int(p) is not None or is_symbol_name(text) else f"({text})"


def _render_mono(mono: Monomial, coeff: int) -> str:
    # Opaque atoms such as "seq//2" are parenthesized inside products so they parse back.
    factors = [a if is_symbol_name(a) else f"({a})" for a in mono]
    if not factors:
        return str(coeff)
    if coeff != 1:
        factors.insert(0, str(coeff))
    return "*".join(factors)


def _render(p: Poly) -> str:
    if not p:
        return "0"
    if len(p) == 1:
        ((mono, coeff),) = p.items()
        if coeff == 1 and len(mono) == 1:
            return mono[0]
    # Highest degree first, then lexicographic; the constant term last.
    monos = sorted(p, key=lambda m: (m == (), -len(m), m))
    parts: list[str] = []
    for mono in monos:
        coeff = p[mono]
        term = _render_mono(mono, abs(coeff))
        if not parts:
            parts.append(term if coeff > 0 else f"-{term}")
        else:
            parts.append(("+" if coeff > 0 else "-") + term)
    return "".join(parts)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[str] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m:
                raise ValueError(f"bad character in dimension {text!r} at column {pos}")
            self.tokens.append(m.group(1) or m.group(2) or m.group(3))
            pos = m.end()
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ValueError(f"unexpected end of dimension {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Poly:
        p = self.expr()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek()!r} in dimension {self.text!r}")
        return p

    def expr(self) -> Poly:
        p = self.term()
        while self.peek() in ("+", "-"):
            sign = 1 if self.take() == "+" else -1
            p = _add(p, self.term(), sign)
        return p

    def term(self) -> Poly:
        p = self.factor()
        while self.peek() in ("*", "//", "%"):
            op = self.take()
            rhs = self.factor()
            p = _mul(p, rhs) if op == "*" else _floordiv(p, rhs) if op == "//" else _mod(p, rhs)
        return p

    def factor(self) -> Poly:
        tok = self.take()
        if tok == "-":
            return _mul(_const(-1), self.factor())
        if tok == "(":
            p = self.expr()
            if self.take() != ")":
                raise ValueError(f"missing ')' in dimension {self.text!r}")
            # An opaque atom such as "(seq+1)//2" must stay one atom when parsed back.
            if self.peek() in ("//", "%"):
                op = self.take()
                rhs = self.factor()
                return _floordiv(p, rhs) if op == "//" else _mod(p, rhs)
            return p
        if tok.isdigit():
            return _const(int(tok))
        if is_symbol_name(tok):
            return {(tok,): 1}
        raise ValueError(f"unexpected {tok!r} in dimension {self.text!r}")


def _poly(d: Dim) -> Poly:
    if isinstance(d, bool):
        raise TypeError(f"a dimension is an int or a str, not bool ({d!r})")
    if isinstance(d, int):
        return _const(d)
    if isinstance(d, str):
        if is_symbol_name(d):
            return {(d,): 1}
        return _Parser(d).parse()
    raise TypeError(f"a dimension is an int or a str, not {type(d).__name__} ({d!r})")


def _dim(p: Poly) -> Dim:
    value = _as_int(p)
    return value if value is not None else _render(p)


def canonical(d: Dim) -> Dim:
    """The canonical form of a dim: an int if it is constant, else the canonical string."""
    if isinstance(d, int) and not isinstance(d, bool):
        return d
    return _dim(_poly(d))


def add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return _dim(_add(_poly(a), _poly(b)))


def sub(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    return _dim(_add(_poly(a), _poly(b), -1))


def mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    return _dim(_mul(_poly(a), _poly(b)))


def floordiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    return _dim(_floordiv(_poly(a), _poly(b)))


def mod(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a % b
    return _dim(_mod(_poly(a), _poly(b)))


def product(dims: Iterable[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = mul(out, d)
    return out


def symbols(d: Dim) -> set[str]:
    """The symbol names a dim depends on (atoms such as "(seq+1)//2" are looked into)."""
    if isinstance(d, int):
        return set()
    return {tok for tok in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", d)}


def evaluate(d: Dim, env: Mapping[str, int]) -> int:
    """The value of a dim with each symbol bound by `env`; KeyError names a missing symbol."""
    if isinstance(d, int):
        return d
    text = d
    for name in sorted(symbols(d), key=len, reverse=True):
        if name not in env:
            raise KeyError(f"symbol {name!r} in dimension {d!r} is not bound")
    # Substitute whole identifiers only, then parse the now-constant expression.
    substituted = re.sub(r"[A-Za-z_][A-Za-z0-9_]*", lambda m: f"({int(env[m.group(0)])})", text)
    value = _as_int(_Parser(substituted).parse())
    assert value is not None
    return value


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


# ---------------------------------------------------------- dims in other forms


@dataclass(frozen=True)
class DimOps(Generic[T]):
    """How `eval_with` builds a dim in another form (a TIR expression, an int...): what a
    constant and a symbol become, and the operators a dim is made of."""

    const: Callable[[int], T]
    symbol: Callable[[str], T]
    add: Callable[[T, T], T]
    sub: Callable[[T, T], T]
    mul: Callable[[T, T], T]
    floordiv: Callable[[T, T], T]
    mod: Callable[[T, T], T]
    neg: Callable[[T], T]


def eval_with(d: Dim, ops: DimOps[T]) -> T:
    """Dim `d` built by `ops`, walking its canonical form: the terms in canonical order, each
    a coefficient times its atoms; an opaque atom such as "(seq+1)//2" becomes `ops.floordiv`
    (or `ops.mod`) of its two operands, walked the same way. Raises ValueError for a malformed
    dim (e.g. an unbalanced parenthesis) and ZeroDivisionError for a constant division by 0.
    """
    if isinstance(d, bool):
        raise TypeError(f"a dimension is an int or a str, not bool ({d!r})")
    if isinstance(d, int):
        return ops.const(d)
    p = _poly(d)
    if not p:
        return ops.const(0)
    out: T | None = None
    for mono in sorted(p, key=lambda m: (m == (), -len(m), m)):  # the order _render uses
        coeff = p[mono]
        term = _eval_monomial(mono, abs(coeff), ops)
        if out is None:
            out = term if coeff > 0 else ops.neg(term)
        else:
            out = ops.add(out, term) if coeff > 0 else ops.sub(out, term)
    assert out is not None
    return out


def _eval_monomial(mono: Monomial, coeff: int, ops: DimOps[T]) -> T:
    factors = [_eval_atom(atom, ops) for atom in mono]
    if not factors:
        return ops.const(coeff)
    if coeff != 1:
        factors.insert(0, ops.const(coeff))
    out = factors[0]
    for f in factors[1:]:
        out = ops.mul(out, f)
    return out


def _eval_atom(atom: str, ops: DimOps[T]) -> T:
    if is_symbol_name(atom):
        return ops.symbol(atom)
    # An opaque atom is "<lhs>//<rhs>" or "<lhs>%<rhs>" (see _floordiv / _mod), each operand
    # an int, a symbol or a parenthesized expression: split at the operator outside parens.
    depth = 0
    for i, ch in enumerate(atom):
        depth += (ch == "(") - (ch == ")")
        if depth:
            continue
        if atom.startswith("//", i) or ch == "%":
            width = 2 if ch == "/" else 1
            lhs, rhs = _unparen(atom[:i]), _unparen(atom[i + width :])
            fn = ops.floordiv if width == 2 else ops.mod
            return fn(eval_with(lhs, ops), eval_with(rhs, ops))
    raise ValueError(f"malformed atom {atom!r} in a dimension")


def _unparen(text: str) -> str:
    """`text` without one pair of parentheses around all of it."""
    if not (text.startswith("(") and text.endswith(")")):
        return text
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and i < len(text) - 1:
            return text  # "(a)//(b)": the first ")" closes before the end
    return text[1:-1]
