"""Pruning graphs captured from PyTorch, after the default pipeline (what users get): a tiny
MLP, a BERT-style block, a Llama-style block with GQA and RoPE, a two-block Llama stack and the
MobileNet block from tests/models/cnn.py. Groups are found, zeroed units prune exactly, and the
pruned graphs verify and run in ONNX Runtime like the interpreter."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("torch")

import torch

import ecograph
from ecograph.ir import Graph, interpret, verify
from ecograph.passes import PassManager
from ecograph.prune import (
    DropLayers,
    Group,
    PruneChannels,
    PruneFFN,
    PruneHeads,
    drop_layers,
    groups,
    layer_groups,
)
from tests.prune import torch_blocks
from tests.prune.helpers import check_zero_units_exact
from tests.prune.test_passes import _ort_outputs


def _capture(
    module: torch.nn.Module, shape: tuple[int, ...]
) -> tuple[Graph, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    example = torch.randn(*shape)
    graph = ecograph.from_torch(module.eval(), (example,))
    PassManager(["default"]).run(graph)
    verify(graph)
    (name,) = [v.name for v in graph.inputs]
    return graph, {name: example.numpy()}


def _feeds(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        v.name: rng.standard_normal([int(d) for d in v.shape]).astype(np.float32)
        for v in graph.inputs
    }


def _kinds(gs: list[Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = {}
    for g in gs:
        out.setdefault(g.kind, []).append(g)
    return out


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch_blocks.TinyMLP()


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch_blocks.BertBlock()


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch_blocks.LlamaBlock()


def _mobilenet() -> torch.nn.Module:
    from tests.models.cnn import MobileNetBlock

    torch.manual_seed(0)
    return MobileNetBlock()


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]] = {
    "mlp": (_mlp, (3, 8)),
    "bert": (_bert, (2, 8, 32)),
    "llama": (_llama, (2, 8, 32)),
    "mobilenet": (_mobilenet, (1, 16, 8, 8)),
}


def test_mlp_groups() -> None:
    graph, _ = _capture(_mlp(), (3, 8))
    (ffn,) = [g for g in groups(graph) if not g.frozen]
    assert (ffn.kind, ffn.size) == ("ffn", 16)


def test_bert_block_groups() -> None:
    graph, _ = _capture(_bert(), (2, 8, 32))
    kinds = _kinds(groups(graph))
    (heads,) = kinds["heads"]
    assert (heads.size, heads.frozen) == (4, None)
    (ffn,) = kinds["ffn"]
    assert (ffn.size, ffn.frozen) == (64, None)
    assert all(g.frozen for g in kinds["residual"])  # the hidden size reaches the output


def test_bert_block_with_bmm_attention_freezes_heads() -> None:
    # Without SDPA, torch.export writes q @ kᵀ as a bmm over [batch * heads, seq, dim]: the
    # heads axis is folded under the batch axis, so the heads cannot be cut contiguously.
    graph, _ = _capture(torch_blocks.BertBlock(sdpa=False), (2, 8, 32))
    kinds = _kinds(groups(graph))
    assert kinds["heads"] and all(
        g.frozen is not None and "folds it into another axis" in g.frozen for g in kinds["heads"]
    )
    (ffn,) = kinds["ffn"]
    assert ffn.frozen is None


def test_llama_block_groups() -> None:
    graph, _ = _capture(_llama(), (2, 8, 32))
    kinds = _kinds(groups(graph))
    (heads,) = kinds["heads"]
    assert (heads.size, heads.frozen) == (2, None)  # units are the 2 kv heads
    (ffn,) = kinds["ffn"]
    assert (ffn.size, ffn.frozen) == (48, None)
    assert len(ffn.weights) >= 2  # gate and up (maybe merged into one weight) and down
    assert len(kinds["layer"]) == 2


@pytest.mark.parametrize(
    ("model", "kind", "units"),
    [("mlp", "ffn", [1, 2, 9]), ("bert", "heads", [1, 3]), ("bert", "ffn", [0, 5, 63]),
     ("llama", "heads", [0]), ("llama", "ffn", [3, 4, 40]), ("mobilenet", "channels", [0, 7])],
)  # fmt: skip
def test_zeroed_units_prune_exactly(model: str, kind: str, units: list[int]) -> None:
    make, shape = MODELS[model]
    graph, feeds = _capture(make(), shape)
    live = [g for g in groups(graph) if g.kind == kind and not g.frozen]
    group = max(live, key=lambda g: g.size)
    check_zero_units_exact(graph, group.name, units, feeds)


@pytest.mark.parametrize(
    ("model", "passes"),
    [("mlp", [PruneFFN(ratio=0.5)]), ("bert", [PruneHeads(ratio=0.5), PruneFFN(ratio=0.5)]),
     ("llama", [PruneHeads(ratio=0.5), PruneFFN(ratio=0.5)]),
     ("mobilenet", [PruneChannels(ratio=0.5)])],
)  # fmt: skip
def test_pruned_model_runs_in_onnxruntime(model: str, passes: list) -> None:
    make, shape = MODELS[model]
    graph, feeds = _capture(make(), shape)
    for p in passes:
        assert p.run(graph).changed, p.name
        verify(graph)
    expected = interpret(graph, feeds)
    actual = _ort_outputs(graph, feeds)
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, rtol=1e-4, atol=1e-4, err_msg=key)


def test_llama_stack_drop_layers_and_wanda() -> None:
    graph, feeds = _capture(torch_blocks.LlamaStack(), (2, 8, 32))
    calib = [_feeds(graph, s) for s in range(2)]
    assert len([g for g in groups(graph) if g.kind == "layer"]) == 4
    PruneFFN(ratio=0.25, importance="wanda", calibration=calib).run(graph)
    result = DropLayers(ratio=0.5, calibration=calib).run(graph)
    assert result.stats == {"layers_dropped": 2}
    verify(graph)
    assert len([g for g in groups(graph) if g.kind == "layer"]) == 2
    expected = interpret(graph, feeds)
    actual = _ort_outputs(graph, feeds)
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, rtol=1e-4, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("model", ["bert", "llama"])
def test_dynamic_sequence_length(model: str) -> None:
    # Dynamic dims leave computed shapes (Concat(Shape(x)[0:2], [heads, dim])) and, for GQA,
    # the kv-head repeat's Expand; their constant pieces are rewritten.
    make, shape = MODELS[model]
    seq = torch.export.Dim("seq", min=2, max=8)
    graph = ecograph.from_torch(make(), (torch.randn(*shape),), dynamic_shapes=({1: seq},))
    PassManager(["default"]).run(graph)
    live = {g.kind: g.size for g in groups(graph) if not g.frozen and g.kind != "layer"}
    assert live == {"heads": 4 if model == "bert" else 2, "ffn": 64 if model == "bert" else 48}
    PruneHeads(ratio=0.5).run(graph)
    PruneFFN(ratio=0.5).run(graph)
    verify(graph)
    for length in (3, 8):
        rng = np.random.default_rng(length)
        feeds = {"x": rng.standard_normal((2, length, 32)).astype(np.float32)}
        expected, actual = interpret(graph, feeds), _ort_outputs(graph, feeds)
        for key, value in expected.items():
            np.testing.assert_allclose(actual[key], value, rtol=1e-4, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("post_norms", [False, True])
def test_post_norm_branch_drop_keeps_or_takes_its_norm(post_norms: bool) -> None:
    """Dropping one residual branch of a post-norm block (BERT: LayerNorm(x + f(x))) leaves
    LayerNorm(x) by default (drop-layers); with `layer_groups(post_norms=True)` (how whole
    layers are dropped) the norm goes too: the stack computes as if the sublayer were deleted."""
    torch.manual_seed(0)
    blocks = [torch_blocks.BertBlock().eval() for _ in range(2)]
    with torch.no_grad():
        for blk in blocks:
            for ln in (blk.ln1, blk.ln2):
                ln.weight.copy_(torch.rand_like(ln.weight) + 0.5)
                ln.bias.copy_(torch.randn_like(ln.bias))

    def attention(blk: torch_blocks.BertBlock, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (p(x).view(b, s, blk.heads, -1).transpose(1, 2) for p in (blk.q, blk.k, blk.v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x + blk.o(a.transpose(1, 2).reshape(b, s, d))

    def ffn(blk: torch_blocks.BertBlock, h: torch.Tensor) -> torch.Tensor:
        return h + blk.fc2(torch.nn.functional.gelu(blk.fc1(h)))

    def stack(x: torch.Tensor, drop: int | None = None) -> torch.Tensor:
        """The two blocks; branch `drop` (in graph order) without its branch (and its norm
        when post_norms)."""
        branches = [(b, f, ln) for b in blocks for f, ln in ((attention, b.ln1), (ffn, b.ln2))]
        for i, (blk, branch, norm) in enumerate(branches):
            if i != drop:
                x = norm(branch(blk, x))
            elif not post_norms:
                x = norm(x)
        return x

    class Stack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(blocks)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return stack(x)

    graph, feeds = _capture(Stack(), (2, 8, 32))
    x = torch.from_numpy(feeds["x"])
    (captured,) = interpret(graph, feeds).values()
    with torch.no_grad():
        np.testing.assert_allclose(captured, stack(x).numpy(), rtol=1e-5, atol=1e-5)
    layers = layer_groups(graph, post_norms=post_norms)
    assert len(layers) == 4
    assert all((g.norm is not None) == post_norms for g in layers)
    for index in (1, 2):  # block 0's FFN branch, block 1's attention branch
        pruned = graph.copy()
        drop_layers(pruned, [layer_groups(pruned, post_norms=post_norms)[index]])
        verify(pruned)
        assert len(pruned.find_nodes("LayerNormalization")) == (3 if post_norms else 4)
        (out,) = interpret(pruned, feeds).values()
        with torch.no_grad():
            expected = stack(x, drop=index)
        scale = float(expected.abs().max())
        np.testing.assert_allclose(out, expected.numpy(), rtol=0, atol=1e-5 * scale)
