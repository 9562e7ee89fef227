from __future__ import annotations

import numpy as np
import pytest

from ecograph.ir import GraphBuilder, graph_stats


def test_counts_parameters_bytes_and_macs_by_hand():
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", 3, 8, 8])
    w = b.constant(np.zeros((4, 3, 3, 3), np.float32), "w")
    conv = b.op("Conv", x, w, pads=[1, 1, 1, 1])  # out [batch, 4, 8, 8]
    flat = b.op("Flatten", conv)  # [batch, 256]
    fc = b.constant(np.zeros((256, 10), np.float16), "fc")
    q = b.constant(np.zeros((7,), np.int8), "q")
    b.output(b.op("MatMul", b.op("Cast", flat, to=10), fc), q)
    s = graph_stats(b.graph, {"batch": 2})
    assert s.num_parameters == 4 * 3 * 3 * 3 + 256 * 10 + 7
    assert s.bytes_by_dtype == {"float32": 108 * 4, "float16": 2560 * 2, "int8": 7}
    conv_macs = 2 * 4 * 8 * 8 * (3 * 3 * 3)
    mm_macs = 2 * 10 * 256
    assert s.macs == conv_macs + mm_macs
    assert s.flops == 2 * s.macs
    assert s.op_histogram == {"Conv": 1, "Flatten": 1, "Cast": 1, "MatMul": 1}
    unbound = graph_stats(b.graph)
    assert unbound.macs is None and unbound.unbound_symbols == ["batch"]
    assert "parameters: 2,675" in s.summary()


def _one_op_macs(op: str, inputs: list, bindings: dict | None = None, **attrs) -> int | None:
    """MACs of a graph holding one `op` node; inputs are (name, dtype, shape) or arrays."""
    b = GraphBuilder()
    values = []
    for i, spec in enumerate(inputs):
        if isinstance(spec, np.ndarray):
            values.append(b.constant(spec, f"c{i}"))
        else:
            values.append(b.input(*spec))
    domain = "ecograph" if op in ("Linear", "CacheAttention") else ""
    b.output(b.op(op, *values, domain=domain, **attrs))
    return graph_stats(b.graph, bindings or {}).macs


def _u8(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.uint8)


def _f32(*shape: int) -> np.ndarray:
    return np.ones(shape, np.float32)


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "macs"),
    [
        ("MatMul", [("a", "float32", ["batch", 4, 8]), _f32(8, 16)], {}, 2 * 4 * 16 * 8),
        ("MatMul", [("a", "float32", [8]), _f32(8, 5)], {}, 5 * 8),
        ("MatMulInteger", [("a", "uint8", [3, 8]), _u8(8, 5)], {}, 3 * 5 * 8),
        (
            "QLinearMatMul",
            [("a", "uint8", [3, 8]), _f32(), _u8(), _u8(8, 5), _f32(), _u8(), _f32(), _u8()],
            {},
            3 * 5 * 8,
        ),
        ("Gemm", [("a", "float32", [3, 8]), _f32(5, 8)], {"transB": 1}, 3 * 5 * 8),
        ("Gemm", [("a", "float32", [8, 3]), _f32(8, 5)], {"transA": 1}, 3 * 5 * 8),
        ("Linear", [("x", "float32", ["batch", 8]), _f32(8, 5)], {}, 2 * 5 * 8),
        ("Conv", [("x", "float32", [1, 4, 8, 8]), _f32(4, 2, 3, 3)], {"group": 2}, 144 * 18),
        (
            "ConvInteger",
            [("x", "uint8", [1, 3, 8, 8]), _u8(4, 3, 3, 3)],
            {"pads": [1, 1, 1, 1]},
            256 * 27,
        ),
        (
            "QLinearConv",
            [
                ("x", "uint8", [1, 3, 8, 8]),
                _f32(),
                _u8(),
                _u8(4, 3, 3, 3),
                _f32(),
                _u8(),
                _f32(),
                _u8(),
            ],
            {},
            144 * 27,
        ),
        ("ConvTranspose", [("x", "float32", [1, 3, 4, 4]), _f32(3, 2, 3, 3)], {}, 48 * 18),
        (
            "Attention",
            [
                ("q", "float32", [1, 2, 5, 8]),
                ("k", "float32", [1, 2, 7, 8]),
                ("v", "float32", [1, 2, 7, 8]),
            ],
            {},
            2 * 80 * 7,
        ),
        (
            "Attention",
            [
                ("q", "float32", [1, 5, 16]),
                ("k", "float32", [1, 7, 16]),
                ("v", "float32", [1, 7, 16]),
            ],
            {"q_num_heads": 2, "kv_num_heads": 2},
            2 * 80 * 7,
        ),
        (
            "CacheAttention",
            [
                ("q", "float32", [1, 2, 3, 8]),
                ("cache", "float32", [5, 4, 1, 2, 8]),
                ("k", "float32", [1, 2, 3, 8]),
                ("v", "float32", [1, 2, 3, 8]),
            ],
            {"key_index": 0, "value_index": 2},
            2 * 48 * (5 + 3),  # Q.K^T and P.V over the 5 cached and 3 new keys
        ),
        ("Relu", [("x", "float32", [4, 4])], {}, 0),
        ("Softmax", [("x", "float32", [4, 4])], {}, 0),
    ],
)
def test_macs_per_op(op: str, inputs: list, attrs: dict, macs: int) -> None:
    """MACs of every counted op (FLOPs are twice these); uncounted ops add nothing."""
    assert _one_op_macs(op, inputs, {"batch": 2}, **attrs) == macs


def test_unbound_symbol_in_a_counted_op_gives_none() -> None:
    q = ("q", "float32", [1, 2, "seq", 8])
    kv = ("k", "float32", [1, 2, "seq", 8])
    assert _one_op_macs("Attention", [q, kv, ("v", "float32", [1, 2, "seq", 8])]) is None
    assert _one_op_macs("Attention", [q, kv, ("v", "float32", [1, 2, "seq", 8])], {"seq": 3}) == (
        2 * 2 * 3 * 8 * 3
    )
    # An uncounted op with unbound dims costs nothing, so the total stays known.
    assert _one_op_macs("Relu", [("x", "float32", ["n", 4])]) == 0
