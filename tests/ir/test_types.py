from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ecograph.ir import DType, TensorType
from ecograph.ir import symbolic as sym


def test_every_dtype_maps_to_numpy_and_onnx_and_back():
    import onnx

    for dt in DType:
        assert DType.from_onnx(dt.onnx) is dt
        if dt is not DType.STRING:
            assert DType.from_numpy(dt.numpy) is dt
        assert onnx.helper.tensor_dtype_to_np_dtype(dt.onnx) == dt.numpy or dt is DType.STRING


def test_low_bit_and_bfloat16_use_ml_dtypes():
    assert DType.INT4.numpy == np.dtype(ml_dtypes.int4)
    assert DType.UINT4.numpy == np.dtype(ml_dtypes.uint4)
    assert DType.BFLOAT16.numpy == np.dtype(ml_dtypes.bfloat16)
    assert DType.INT4.bitwidth == 4
    assert TensorType("int4", [3, 5]).nbytes() == 8  # 15 nibbles -> 8 bytes


def test_dtype_parse_errors_name_the_value():
    with pytest.raises(ValueError, match="float33"):
        DType.parse("float33")
    with pytest.raises(ValueError, match="complex"):
        DType.from_numpy(np.complex64)


def test_tensor_type_str_and_parse_round_trip():
    for text in ["float32[batch, 16]", "int4[]", "bool[0, 3]", "bfloat16[2*seq+1, (seq+1)//2]"]:
        t = TensorType.parse(text)
        assert TensorType.parse(str(t)) == t
    assert str(TensorType("float32", ["batch", 16])) == "float32[batch, 16]"
    assert TensorType("float32", []).rank == 0


def test_tensor_type_rejects_negative_dims_and_is_immutable():
    with pytest.raises(ValueError, match="negative"):
        TensorType("float32", [-1])
    t = TensorType("float32", [1])
    with pytest.raises(AttributeError):
        t.dtype = DType.INT8  # type: ignore[misc]


def test_symbolic_arithmetic_is_canonical():
    assert sym.mul("batch", "seq") == sym.mul("seq", "batch") == "batch*seq"
    assert sym.add("seq", 1) == "seq+1"
    assert sym.sub(sym.add("seq", 1), 1) == "seq"
    assert sym.mul(2, "seq") == "2*seq"
    assert sym.floordiv(sym.mul(4, "seq"), 2) == "2*seq"
    assert sym.floordiv("seq", "seq") == 1
    assert sym.floordiv(sym.mul("batch", "seq"), "seq") == "batch"
    assert sym.floordiv("384*batch*seq", "32*batch*seq") == 12
    assert sym.floordiv("2*batch*seq+4*seq", "2*seq") == "batch+2"
    # Not an exact division: stays an opaque, canonical atom.
    assert sym.floordiv(sym.add("seq", 1), "seq") == "(seq+1)//seq"
    assert sym.floordiv(sym.add("seq", 1), 2) == "(seq+1)//2"
    assert sym.canonical("(seq+1)//2") == "(seq+1)//2"
    assert sym.floordiv("seq", 2) == "seq//2"
    # Atoms inside products and negations keep their parentheses, so they parse back.
    assert sym.mul(2, sym.floordiv("seq", 2)) == "2*(seq//2)"
    assert sym.sub(0, sym.floordiv("seq", 2)) == "-(seq//2)"
    for d in ["2*(seq//2)", "-(seq//2)", "(seq//2)//2", "((seq+1)//2)*batch+1"]:
        assert sym.canonical(d) == d
    assert sym.evaluate("2*(seq//2)", {"seq": 7}) == 6
    assert sym.evaluate("-(seq//2)", {"seq": 7}) == -3
    assert sym.canonical("3*4") == 12
    assert sym.product(["batch", 8, "seq"]) == "8*batch*seq"


def test_symbolic_evaluate_and_symbols():
    d = sym.add(sym.mul(2, "seq"), "batch")
    assert sym.evaluate(d, {"seq": 5, "batch": 3}) == 13
    assert sym.symbols(d) == {"seq", "batch"}
    assert sym.evaluate("(seq+1)//2", {"seq": 6}) == 3
    with pytest.raises(KeyError, match="seq"):
        sym.evaluate("seq+1", {})


def test_symbolic_parser_rejects_junk_without_eval():
    for bad in ["__import__('os')", "seq +", "seq ** 2", "a;b"]:
        with pytest.raises(ValueError):
            sym.canonical(bad)
