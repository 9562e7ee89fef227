"""Unify symbolic dims that the graph's ops require to be equal.

A frontend that cannot know which dynamic dims are equal (the ONNX importer: to ONNX Runtime a
dim_param is a label, not a promise) gives each input axis its own symbol and lets the ops
decide. The rule: two different plain symbols are tied where an op's type inference needs them
equal at run time:

- broadcasting two dims neither of which is the literal 1 (`_infer.broadcast_shapes`: every
  elementwise op, Where, Expand, MatMul batch dims, attention masks);
- a matrix product's contraction dim (`nn.matmul_shape`: MatMul and the fused/quantized
  matmuls built on it; Gemm);
- Concat's non-axis dims.

Inference reports these meetings through `note_equal_dims` while `recording_equal_dims()` is
active; `unify_input_symbols` joins them (union-find), substitutes each class's representative
in the graph inputs' types, re-infers every value type and repeats until no new pair appears.
A symbol broadcast against another symbol is assumed not to be 1, as inference has always
assumed; a run that feeds 1 there is rejected by the interpreter and backends as a typed error
naming the input and the symbol. Symbols no op ties stay separate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from ecograph.errors import EcographError
from ecograph.ir import symbolic
from ecograph.ir.symbolic import Dim

if TYPE_CHECKING:
    from ecograph.ir.graph import Graph

__all__ = ["SymbolClasses", "note_equal_dims", "recording_equal_dims", "unify_input_symbols"]

SymbolPair = tuple[str, str]

_RECORDER: ContextVar[list[SymbolPair] | None] = ContextVar("ecograph_equal_dims", default=None)


def note_equal_dims(a: Dim | None, b: Dim | None) -> None:
    """Called by inference where an op needs dims `a` and `b` equal at run time; records the
    pair when both are different plain symbols and a recorder is active (a no-op otherwise)."""
    pairs = _RECORDER.get()
    if pairs is None or a == b or not (_is_plain_symbol(a) and _is_plain_symbol(b)):
        return
    assert isinstance(a, str) and isinstance(b, str)
    pairs.append((a, b))


@contextmanager
def recording_equal_dims() -> Iterator[list[SymbolPair]]:
    """Collect the symbol pairs inference notes as equal while the block runs."""
    pairs: list[SymbolPair] = []
    token = _RECORDER.set(pairs)
    try:
        yield pairs
    finally:
        _RECORDER.reset(token)


class SymbolClasses:
    """Union-find over symbol names. A class is represented by its most preferred member
    (earliest in `preferred`; then any other, by name), so a frontend's original names win
    over the ones it generated."""

    def __init__(self, preferred: Sequence[str] = ()) -> None:
        self._rank: dict[str, int] = {}
        for i, s in enumerate(preferred):
            self._rank.setdefault(s, i)
        self._parent: dict[str, str] = {}

    def find(self, symbol: str) -> str:
        parent = self._parent
        while parent.get(symbol, symbol) != symbol:
            grand = parent.get(parent[symbol], parent[symbol])
            parent[symbol] = grand
            symbol = grand
        return symbol

    def union(self, a: str, b: str) -> bool:
        """Join the classes of `a` and `b`; True if they were different."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        keep, drop = sorted((ra, rb), key=self._key)
        self._parent[drop] = keep
        return True

    def _key(self, symbol: str) -> tuple[int, str]:
        return (self._rank.get(symbol, len(self._rank)), symbol)


def unify_input_symbols(
    graph: Graph, pairs: Iterable[SymbolPair], preferred: Sequence[str] = ()
) -> dict[str, str]:
    """Tie the graph inputs' symbols that `pairs` (noted while the graph's nodes were
    inferred) and the ops they lead to say are equal; returns {replaced symbol: symbol it
    became}. Each round substitutes input types and re-infers every node under a recorder, so
    ties that only show once others are made are found too; it ends when a round adds none.
    Symbols that are not on a graph input take part in the classes (two inputs tied through a
    data-dependent size) but are never substituted: their nodes' inference makes them."""
    originals = _input_symbols(graph)
    inputs_first = [*preferred, *sorted(originals - set(preferred))]
    classes = SymbolClasses(inputs_first)
    pending = list(pairs)
    while True:
        merged = [classes.union(a, b) for a, b in pending]
        if not any(merged):
            break
        step = {s: classes.find(s) for s in _input_symbols(graph)}
        if all(s == r for s, r in step.items()):
            break  # only symbols off the inputs were joined: the types do not change
        for value in graph.inputs:
            shape = [step.get(d, d) if isinstance(d, str) else d for d in value.shape]
            value.type = value.type.with_shape(shape)
        with recording_equal_dims() as pending:
            try:
                graph.refresh_types()
            except EcographError as exc:
                ties = ", ".join(f"{s} = {r}" for s, r in sorted(step.items()) if s != r)
                raise type(exc)(f"{exc} (after tying the symbols {ties})") from exc
    return {s: r for s in sorted(originals) if (r := classes.find(s)) != s}


def _input_symbols(graph: Graph) -> set[str]:
    return {d for v in graph.inputs for d in v.shape if isinstance(d, str) and _is_plain_symbol(d)}


def _is_plain_symbol(d: Dim | None) -> bool:
    return isinstance(d, str) and symbolic.is_symbol_name(d)
