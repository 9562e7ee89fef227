from __future__ import annotations

import numpy as np

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
