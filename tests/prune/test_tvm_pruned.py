"""A pruned graph compiles with TVM for x86 and runs like the interpreter."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import ecograph
from ecograph.ir import interpret
from ecograph.passes import run_passes
from tests.prune import graphs


def test_pruned_attention_block_compiles_for_x86() -> None:
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)}
    graph = graphs.attention_block(hkv=2)
    run_passes(graph, "default,prune-heads(ratio=0.5),prune-ffn(ratio=0.5)")
    (attn,) = graph.find_nodes("Attention")
    assert (attn.attr("q_num_heads"), attn.attr("kv_num_heads")) == (2, 1)
    expected = interpret(graph, feeds)["y"]
    opt = ecograph.optimize(graph, feeds, target="x86", pipeline="default", measure=False)
    out = opt.module(feeds["x"])
    out = out[0] if isinstance(out, (list, tuple)) else out
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
