"""Text form: printing and parsing back gives an equal graph."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ecograph.errors import ParseError
from ecograph.ir import (
    DType,
    Graph,
    GraphBuilder,
    explain_difference,
    graphs_equal,
    parse,
    read_text,
    to_text,
    verify,
    write_text,
)


def round_trip(g: Graph, inline_limit: int | None = None) -> Graph:
    text = to_text(g, inline_limit=inline_limit)
    back = parse(text, {k: v.const_value for k, v in g.constants.items()})
    assert explain_difference(g, back) is None, text
    assert to_text(back, inline_limit=inline_limit) == text
    verify(back)
    return back


def sample(dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = int(np.prod(shape))
    if dtype == DType.STRING:
        return np.array([f's"{i}\\n' for i in range(n)], dtype=object).reshape(shape)
    if dtype == DType.BOOL:
        return (rng.integers(0, 2, n) == 1).reshape(shape)
    if dtype in (DType.INT4, DType.UINT4):
        lo = -8 if dtype == DType.INT4 else 0
        return rng.integers(lo, lo + 16, n).astype(dtype.numpy).reshape(shape)
    if dtype.is_integer:
        info = np.iinfo(dtype.numpy)
        vals = rng.integers(info.min, info.max, n, dtype=dtype.numpy, endpoint=True)
        vals[:2] = [info.min, info.max][: min(n, 2)] if n else vals[:2]
        return vals.reshape(shape)
    vals = (rng.standard_normal(n) * 1e3).astype(dtype.numpy)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-7], np.float64).astype(dtype.numpy)
    vals[: min(n, 5)] = specials[: min(n, 5)]
    return vals.reshape(shape)


@pytest.mark.parametrize("dtype", list(DType), ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (2, 3)], ids=str)
def test_constants_of_every_dtype_and_shape_round_trip(dtype, shape):
    g = Graph()
    c = g.add_constant(sample(dtype, shape), "c")
    g.set_outputs([c])
    round_trip(g)


def test_nan_payloads_and_bfloat16_fall_back_to_exact_hex():
    g = Graph()
    payload = np.array([0x7FC00001, 0x7F800001], np.uint32).view(np.float32)
    c = g.add_constant(payload, "nan_payload")
    bf = g.add_constant(np.array([1.5, -3.25, 1e30], ml_dtypes.bfloat16), "bf")
    g.set_outputs([c, bf])
    text = to_text(g)
    assert 'hex"' in text
    round_trip(g)


def test_symbolic_dims_names_attrs_and_optional_inputs_round_trip():
    b = GraphBuilder("weird graph name")
    x = b.input("x:0/in put", "float32", ["batch", "2*seq+1", "(seq+1)//2"])
    lo = b.constant(np.array(0.0, np.float32), "lo")
    clip = b.graph.add_node("Clip", [x, lo], name="clip/0")
    hi = b.constant(np.array(6.0, np.float32), "hi")
    clip2 = b.graph.add_node("Clip", [clip.output, None, hi], name="clip.1")
    t = b.op("Transpose", clip2.output, perm=[2, 0, 1])
    lr = b.op("LeakyRelu", t, alpha=0.25)
    shape = b.op("Shape", lr, start=-2)
    cos = b.op("ConstantOfShape", shape, value=np.array([1.5], np.float32))
    s = b.op("Constant", value_strings=['a "quoted"\n', "b"])
    e = b.op("Constant", value_ints=[])
    parts = b.op_multi("Split", lr, num_outputs=2, axis=1, name="split")
    b.output(parts[0], parts[1], cos, s, e)
    b.graph.metadata["producer"] = "test"
    g = b.graph
    verify(g)
    back = round_trip(g)
    assert back.inputs[0].shape == ("batch", "2*seq+1", "(seq+1)//2")
    assert back.node("clip.1").inputs[1] is None


def test_large_constants_are_external_and_files_round_trip(tmp_path):
    g = Graph()
    big = g.add_constant(np.arange(1000, dtype=np.float32).reshape(10, 100), "big")
    small = g.add_constant(np.arange(3, dtype=np.int64), "small")
    g.set_outputs([big, small])
    text = to_text(g)
    assert "const %big: float32[10, 100] = external" in text
    assert "[0, 1, 2]" in text
    with pytest.raises(ParseError, match="external constant %big"):
        parse(text)
    round_trip(g, inline_limit=64)
    path = tmp_path / "model.ecg"
    write_text(g, path)
    assert (tmp_path / "model.ecg.npz").exists()
    assert graphs_equal(read_text(path), g)


def test_parse_errors_give_line_and_column():
    good = (
        'graph g opset {"": 23} {\n  input %x: float32[2]\n'
        "  %y: float32[2] = Relu(%x) @r\n  output %y\n}\n"
    )
    parse(good)
    cases = {
        good.replace("Relu(%x)", "Relu(%nope)"): "line 3.*%nope is used before",
        good.replace("float32[2]\n  %y", "float32[2\n  %y"): "line 2",
        good.replace("output %y", "output %z"): "output %z is not defined",
        good[:-2]: "missing the closing",
        good.replace("@r", "@r junk"): "line 3.*unexpected text",
        "": "empty text",
    }
    for text, pattern in cases.items():
        with pytest.raises(ParseError, match=pattern):
            parse(text)


def test_str_of_graph_is_the_text_form():
    b = GraphBuilder()
    x = b.input("x", "float32", ["n"])
    b.output(b.op("Relu", x, name="r"))
    assert str(b.graph).splitlines()[2] == "  %r: float32[n] = Relu(%x) @r"
