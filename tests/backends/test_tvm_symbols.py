"""Symbolic dims in the TVM backend: the symbol table builds TIR from the IR's one dim parser
(`ecograph.ir.symbolic.eval_with`), and a malformed dim is a LoweringError naming it."""

from __future__ import annotations

import operator

import pytest

pytest.importorskip("tvm")

from tvm import tirx as tir

from ecograph.backends.tvm.context import ANALYZER, SymbolTable
from ecograph.errors import LoweringError
from ecograph.ir import symbolic as sym


def _int_ops(env: dict[str, int]) -> sym.DimOps[int]:
    return sym.DimOps(
        const=int, symbol=env.__getitem__, add=operator.add, sub=operator.sub,
        mul=operator.mul, floordiv=operator.floordiv, mod=operator.mod, neg=operator.neg,
    )  # fmt: skip


DIMS = [
    "seq",
    sym.mul(2, "seq"),
    sym.mul("batch", "seq"),
    sym.sub(3, sym.mul(2, "seq")),
    sym.floordiv(sym.add("seq", 1), 2),
    sym.mod("seq", 3),
    sym.mul(sym.floordiv("seq", 2), "batch"),
    sym.floordiv(sym.floordiv(sym.add("seq", 7), 4), 3),
    sym.mod(sym.floordiv("batch", 3), 5),
]


@pytest.mark.parametrize("dim", DIMS)
def test_eval_with_agrees_with_evaluate(dim: str) -> None:
    for env in ({"seq": 7, "batch": 3}, {"seq": 1, "batch": 40}, {"seq": 64, "batch": 1}):
        assert sym.eval_with(dim, _int_ops(env)) == sym.evaluate(dim, env), (dim, env)


def test_symbol_table_builds_the_tir_of_each_dim() -> None:
    table = SymbolTable()
    seq, batch = table.var("seq"), table.var("batch")
    two = tir.IntImm("int64", 2)
    cases = {
        sym.mul(2, "seq"): two * seq,
        sym.mul("batch", "seq"): batch * seq,
        sym.floordiv(sym.add("seq", 1), 2): tir.floordiv(seq + 1, two),
        sym.mod("seq", 3): tir.floormod(seq, tir.IntImm("int64", 3)),
        sym.sub(3, sym.mul(2, "seq")): 3 - two * seq,
    }
    for dim, want in cases.items():
        assert ANALYZER.can_prove_equal(table.expr(dim), want), dim
    assert table.expr(5).value == 5
    assert table.expr("seq").same_as(seq)
    assert sorted(table.vars) == ["batch", "seq"]


def test_learned_symbols_become_constants() -> None:
    table = SymbolTable()
    table.learn("n", 6)
    assert (
        int(table.expr(sym.mul(2, "n")).value) == 12 if hasattr(table.expr("n"), "value") else False
    )
    assert "n" not in table.vars


@pytest.mark.parametrize("dim", ["(seq+1", "seq+1)", "seq+", "2**seq", "seq//0*0+(1//0)"])
def test_malformed_dim_is_a_lowering_error_naming_it(dim: str) -> None:
    with pytest.raises(LoweringError, match=r"cannot lower dimension") as info:
        SymbolTable().expr(dim)
    assert repr(dim) in str(info.value)
