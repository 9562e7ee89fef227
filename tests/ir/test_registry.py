"""The op registry: registering an op with one decorator, schemas, symbolic shape inference."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.errors import AttributeSchemaError, TypeInferenceError
from ecograph.ir import (
    Attr,
    GraphBuilder,
    get_schema,
    interpret,
    parse,
    register_op,
    registered_ops,
    to_text,
    verify,
)
from ecograph.ir.ops._infer import same_as_input
from ecograph.ir.registry import unregister_op


def test_register_an_op_with_one_decorator_and_use_it_everywhere():
    @register_op(
        "Swish",
        domain="test",
        inputs=["X"],
        outputs=["Y"],
        attrs={"beta": Attr("float", 1.0)},
        infer=same_as_input(0),
    )
    def swish(x, *, beta):
        """Swish(x) = x * sigmoid(beta * x)."""
        return (x / (1 + np.exp(-beta * x))).astype(x.dtype)

    try:
        b = GraphBuilder()
        x = b.input("x", "float32", ["n"])
        b.output(b.op("Swish", x, domain="test", beta=2.0, name="s"))
        verify(b.graph)
        text = to_text(b.graph)
        assert "test::Swish(%x) {beta = 2.0} @s" in text
        assert parse(text).node("s").attrs == {"beta": 2.0}
        xs = np.array([-1.0, 0.0, 3.0], np.float32)
        out = interpret(b.graph, {"x": xs})["s"]
        np.testing.assert_allclose(out, xs / (1 + np.exp(-2 * xs)), rtol=1e-6)
        assert get_schema("Swish", "test").doc.startswith("Swish(x)")
        with pytest.raises(ValueError, match="already registered"):
            register_op(
                "Swish", domain="test", inputs=["X"], outputs=["Y"], infer=same_as_input(0)
            )(swish)
    finally:
        unregister_op("Swish", "test")


def test_attribute_defaults_and_checks():
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3])
    node = b.graph.add_node("LeakyRelu", [x], name="lr")
    assert node.attr("alpha") == pytest.approx(0.01)
    with pytest.raises(AttributeSchemaError, match="unknown attribute 'slope'"):
        b.graph.add_node("LeakyRelu", [x], {"slope": 1.0})
    with pytest.raises(AttributeSchemaError, match="'axis' must be int"):
        b.graph.add_node("Softmax", [x], {"axis": 1.5})
    with pytest.raises(TypeInferenceError, match="has 0 inputs; expected 1"):
        b.graph.add_node("Relu", [])


def test_every_registered_op_has_a_kernel_inference_and_valid_schema():
    ops = registered_ops()
    assert len(ops) >= 100
    for schema in ops:
        assert callable(schema.kernel) and callable(schema.infer), schema.qualified_name
        assert schema.outputs, schema.qualified_name
        for name, spec in schema.attrs.items():
            assert spec.kind in ("int", "float", "string", "ints", "floats", "strings", "tensor"), (
                schema.qualified_name,
                name,
            )


def test_shape_math_propagates_symbolically_through_exporter_style_chains():
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", "seq", 64])
    shape = b.op("Shape", x)
    dims = b.op("Gather", shape, b.constant(np.array([0, 1], np.int64), "idx"))
    heads = b.constant(np.array([4, 16], np.int64), "heads")
    target = b.op("Concat", dims, heads, axis=0)
    r = b.op("Reshape", x, target)
    assert r.type.shape == ("batch", "seq", 4, 16)
    merged = b.op("Reshape", r, b.constant(np.array([-1, 64], np.int64), "flat"))
    assert merged.type.shape == ("batch*seq", 64)
    half = b.op("Div", b.op("Shape", x, start=1, end=2), b.constant(np.array([2], np.int64)))
    cat = b.op(
        "Concat", b.op("Shape", x, end=1), half, b.constant(np.array([128], np.int64), "w"), axis=0
    )
    r2 = b.op("Reshape", x, cat)
    assert r2.type.shape == ("batch", "seq//2", 128)
    b.output(r2)
    verify(b.graph)
    out = interpret(b.graph, {"x": np.zeros((3, 4, 64), np.float32)})
    assert next(iter(out.values())).shape == (3, 2, 128)


def test_data_dependent_dims_get_fresh_symbols_that_verify_accepts():
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 8])
    k = b.input("k", "int64", [1])
    vals = b.op("TopK", x, k, name="top")
    assert vals.type.shape == (2, "top_o0_d1")
    b.output(vals)
    verify(b.graph)
    out = interpret(
        b.graph, {"x": np.arange(16, dtype=np.float32).reshape(2, 8), "k": np.array([3])}
    )
    assert out[vals.name].tolist() == [[7, 6, 5], [15, 14, 13]]


# ------------------------------------------------------------------ schema facts

# The set passes/pattern.py kept before commutativity moved into the schema.
_COMMUTATIVE = {"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal"}
_RANDOM = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
}
# The ops whose MACs ir/stats.py counted by name before the rule moved into the schema.
_COUNTED = {
    ("", "MatMul"),
    ("", "MatMulInteger"),
    ("", "QLinearMatMul"),
    ("", "Gemm"),
    ("ecograph", "Linear"),
    ("", "Conv"),
    ("", "ConvInteger"),
    ("", "QLinearConv"),
    ("", "ConvTranspose"),
    ("", "Attention"),
    ("ecograph", "CacheAttention"),  # added with the op (2026-12-06)
    ("com.microsoft", "QGemm"),  # added with the op (2026-12-07)
}


def test_commutativity_is_a_schema_fact():
    commutative = {s.op_type for s in registered_ops() if s.commutative}
    assert commutative == _COMMUTATIVE
    assert all(s.domain == "" for s in registered_ops() if s.commutative)


def test_random_ops_are_flagged_and_run():
    assert {s.op_type for s in registered_ops() if s.random} == _RANDOM
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", 3])
    outs = [
        b.op("RandomNormal", shape=[2, 3], seed=1.0),
        b.op("RandomUniform", shape=[2, 3], low=-1.0, high=1.0),
        b.op("RandomNormalLike", x),
        b.op("RandomUniformLike", x, dtype=11),
        b.op("Bernoulli", b.op("Sigmoid", x)),
        b.op("Multinomial", x, sample_size=4, seed=3.0),
    ]
    b.output(*outs)
    verify(b.graph)
    assert [str(v.type) for v in outs[2:]] == [
        "float32[batch, 3]",
        "float64[batch, 3]",
        "float32[batch, 3]",
        "int32[batch, 4]",
    ]
    feeds = {"x": np.random.default_rng(0).random((5, 3), np.float32)}
    got = interpret(b.graph, feeds)
    again = interpret(b.graph, feeds)
    # A seed makes a draw repeatable; the Multinomial indices are classes.
    np.testing.assert_array_equal(got[outs[0].name], again[outs[0].name])
    np.testing.assert_array_equal(got[outs[5].name], again[outs[5].name])
    assert set(np.unique(got[outs[5].name])) <= {0, 1, 2}
    uniform = got[outs[1].name]
    assert uniform.shape == (2, 3) and ((uniform >= -1) & (uniform <= 1)).all()


def test_macs_rules_live_in_the_schema():
    assert {(s.domain, s.op_type) for s in registered_ops() if s.macs is not None} == _COUNTED
