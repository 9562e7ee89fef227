"""Scalar constants as immediates in CPU kernels (backends/tvm/scalars.py).

The folded casts and the selects with immediates must compute what Relax's own legalization
computes, bit for bit (numpy's where and casts are the reference), and leave no 0-d buffer
argument in the kernel where a constant was.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm
from tvm import relax, tirx

from ecograph.backends.tvm.scalars import legalize_where, scalar_casts_pass
from tests.backends.tvm_helpers import relax_calls

ON_X86 = os.uname().machine == "x86_64"


def _module(body: Any, *params: relax.Var) -> tvm.IRModule:
    """A main function over `params` whose dataflow block `body(bb, *params)` builds."""
    bb = relax.BlockBuilder()
    with bb.function("main", list(params)):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def _run(mod: tvm.IRModule, *args: np.ndarray, where: bool = True) -> np.ndarray:
    legalize = relax.transform.LegalizeOps({"relax.where": legalize_where} if where else None)
    with tvm.target.Target("llvm"):
        ex = tvm.compile(legalize(mod), target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def _kernel_buffers(mod: tvm.IRModule, name: str) -> list[str]:
    """The shapes of the buffer arguments of the legalized PrimFunc `name`, as printed."""
    import re

    with tvm.target.Target("llvm"):
        legal = relax.transform.LegalizeOps({"relax.where": legalize_where})(mod)
    signature = legal[name].script().split("def main(")[1].split("):\n")[0]
    return re.findall(r"T\.Buffer\((\(.*?\)),", signature)


def test_casts_of_scalar_constants_fold_into_their_readers() -> None:
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    cases = {  # source constant, target dtype -> folded?
        "zero point": (np.array(128, np.uint8), "float32", True),
        "negative": (np.array(-7, np.int8), "int32", True),
        "narrowing that fits": (np.array(100, np.int32), "int8", True),
        "narrowing that does not": (np.array(300, np.int32), "int8", False),
        "float to int": (np.array(2.5, np.float32), "int32", False),
        "large int to float rounds": (np.array(2**24 + 1, np.int32), "float32", True),
    }
    for label, (value, dtype, folds) in cases.items():

        def body(bb: relax.BlockBuilder, x: relax.Var, v: Any = value, dt: str = dtype) -> Any:
            c = bb.emit(relax.op.astype(relax.const(v), dt))
            return relax.op.add(relax.op.astype(x, dt), c)

        mod = _module(body, x)
        after = scalar_casts_pass()(mod)
        casts = relax_calls(after, "relax.astype")
        assert len(casts) == (1 if folds else 2), label
        if folds:  # the addition reads the constant, so legalization makes it an immediate
            (add,) = relax_calls(after, "relax.add")
            assert isinstance(add.args[1], tvm.ir.Constant), label
            assert add.args[1].value.numpy() == value.astype(dtype), label
        else:
            tvm.ir.assert_structural_equal(after, mod)
        if ON_X86 and np.dtype(dtype).kind == "f":
            data = np.arange(6, dtype=np.float32).reshape(2, 3) * 1.5
            np.testing.assert_array_equal(_run(after, data), data + value.astype(dtype))


@pytest.mark.parametrize("arm", ["x", "y", "both"])
def test_where_with_a_scalar_arm_selects_an_immediate(arm: str) -> None:
    n = tirx.Var("n", "int64")
    cond = relax.Var("cond", relax.TensorType((n, 4), "bool"))
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))  # broadcast along the rows
    six = relax.const(np.float32(6.0))

    def body(bb: relax.BlockBuilder, cond: relax.Var, x: relax.Var) -> Any:
        if arm == "both":
            return relax.op.where(cond, six, relax.const(np.float32(-1.0)))
        return relax.op.where(cond, six, x) if arm == "x" else relax.op.where(cond, x, six)

    mod = _module(body, cond, x)
    shapes = _kernel_buffers(mod, "where")
    # no 0-d buffer: the constant is in the code; the operands keep their own shapes
    assert "()" not in shapes, shapes
    assert len(shapes) == (2 if arm == "both" else 3), shapes
    if ON_X86:
        c = np.random.default_rng(0).random((5, 4)) < 0.5
        data = np.array([[1.0, -2.0, np.nan, 7.0]], np.float32)
        got = _run(mod, c, data)
        want = {
            "x": np.where(c, np.float32(6.0), data),
            "y": np.where(c, data, np.float32(6.0)),
            "both": np.where(c, np.float32(6.0), np.float32(-1.0)),
        }[arm]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)  # NaN where numpy has NaN
        np.testing.assert_array_equal(got, _run(mod, c, data, where=False))  # as Relax's


def test_a_where_of_its_operands_shape_is_element_wise() -> None:
    # [1, 6] operands and a [1, 6] result: index 0 of the unit dim stays the loop's, so the
    # kernel is element-wise (op pattern 0) and FuseOps fuses it into a producer's epilogue
    cond = relax.Var("cond", relax.TensorType((1, 6), "bool"))
    x = relax.Var("x", relax.TensorType((1, 6), "float32"))
    mod = _module(lambda bb, c, v: relax.op.where(c, relax.const(np.float32(0.0)), v), cond, x)
    with tvm.target.Target("llvm"):
        legal = relax.transform.LegalizeOps({"relax.where": legalize_where})(mod)
        annotated = relax.transform.AnnotateTIROpPattern()(legal)
    assert int(annotated["where"].attrs["op_pattern"]) == 0


def test_where_without_a_scalar_arm_is_relaxs_own() -> None:
    cond = relax.Var("cond", relax.TensorType((2, 3), "bool"))
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    y = relax.Var("y", relax.TensorType((2, 3), "float32"))

    def body(bb: relax.BlockBuilder, c: relax.Var, a: relax.Var, b: relax.Var) -> Any:
        return relax.op.where(c, a, b)

    mod = _module(body, cond, x, y)
    with tvm.target.Target("llvm"):
        ours = relax.transform.LegalizeOps({"relax.where": legalize_where})(mod)
        theirs = relax.transform.LegalizeOps()(mod)
    tvm.ir.assert_structural_equal(ours, theirs)
