"""Every architecture compile_lm captures (ecograph.lm.capture.SUPPORTED) against Hugging
Face's own outputs: the captured prefill and decode graphs, run by the reference
interpreter, give the logits HF computes over its own cache (as its generate does) at every
position of a sequence longer than the sliding windows, a decode step at a time over the KV
cache they return; a compiled build of the
architectures whose mechanisms the lowering treats apart (multi-query attention, Tile by
the batch, ALiBi, soft-capping with a sliding window, a mixture of experts with attention
sinks) generates HF's greedy tokens.
Tolerance 1e-4 absolute and relative (observed ~1e-6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.lm.conftest import hf_greedy, hf_logits, torch

pytest.importorskip("tvm")

from ecograph.ir import interpret
from ecograph.lm.capture import SUPPORTED, cache_layout, capture_lm, check_model
from tests.lm.architectures import ARCHITECTURES, VOCAB, WINDOW, tiny_model

TOL = 1e-4
PROMPT, STEPS = 5, 4  # 9 positions: past every sliding window (WINDOW)
COMPILED = ["falcon", "gptj", "bloom", "gemma2", "gpt_oss"]


def test_every_supported_architecture_has_a_model_here() -> None:
    assert sorted(ARCHITECTURES) == sorted(SUPPORTED)
    assert PROMPT + STEPS > WINDOW


def hf_incremental(model: Any, ids: np.ndarray) -> list[np.ndarray]:
    """HF's logits as its generate computes them: the prompt's, then one position at a time
    over HF's own cache (LongRoPE's frequencies follow the length each call reaches, so a
    whole-sequence forward differs from this one)."""
    with torch.no_grad():
        out = model(torch.as_tensor(ids[:, :PROMPT]), use_cache=True)
        logits, cache = [out.logits.numpy()], out.past_key_values
        for pos in range(PROMPT, ids.shape[1]):
            step = torch.as_tensor(ids[:, pos : pos + 1])
            out = model(step, past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, 0].numpy())
    return logits


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_captured_graphs_match_hf(model_type: str) -> None:
    model = tiny_model(model_type)
    check_model(model, 32)
    experts = model.get_experts_implementation()
    prefill, decode, decode1, layout = capture_lm(model, head_major=True)
    assert model.get_experts_implementation() == experts  # the capture's own, undone
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, PROMPT + STEPS)).astype(np.int64)
    want, want1 = hf_incremental(model, ids), hf_incremental(model, ids[:1])
    logits, kv = interpret(prefill, {"input_ids": ids[:, :PROMPT]}).values()
    np.testing.assert_allclose(logits, want[0], atol=TOL, rtol=TOL)
    assert kv.shape == layout.shape(PROMPT, 2)
    one = kv[:, :1]  # row 0's cache, for the batch-1 step
    for i, pos in enumerate(range(PROMPT, PROMPT + STEPS), start=1):
        step, new = interpret(decode, {"input_ids": ids[:, pos : pos + 1], "past_kv": kv}).values()
        np.testing.assert_allclose(step[:, 0], want[i], atol=TOL, rtol=TOL)
        kv = np.concatenate([kv, new], axis=3)
        feeds = {"input_ids": ids[:1, pos : pos + 1], "past_kv": one}
        step1, new1 = interpret(decode1, feeds).values()
        np.testing.assert_allclose(step1[:, 0], want1[i], atol=TOL, rtol=TOL)
        one = np.concatenate([one, new1], axis=3)
    if model_type not in ("phi3",):  # a whole-sequence forward: the same logits
        np.testing.assert_allclose(want[-1], hf_logits(model, ids)[:, -1], atol=TOL, rtol=TOL)


def test_latent_attention_caches_latent_and_rotary_key_at_one_width() -> None:
    """DeepSeek-V3 caches its compressed latent (16 wide here) as keys and its rotary key (4)
    as values, one head: the cache holds both 16 wide (test_captured_graphs_match_hf checks
    that the padding round-trips)."""
    layout = cache_layout(tiny_model("deepseek_v3"), head_major=True)
    assert (layout.kv_heads, layout.head_dim, layout.widths) == (1, 16, (16, 4))
    assert cache_layout(tiny_model("llama")).widths is None


@pytest.mark.parametrize("model_type", COMPILED)
def test_compiled_greedy_generation_matches_hf(model_type: str, tmp_path: Path) -> None:
    from ecograph import compile_lm

    model = tiny_model(model_type)
    lm = compile_lm(model, max_seq_len=16, out_dir=tmp_path / "lm", progress=False, cache=False)
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, PROMPT)).astype(np.int64)
    np.testing.assert_allclose(lm.logits(ids), hf_logits(model, ids), atol=TOL, rtol=TOL)
    np.testing.assert_array_equal(lm.generate(ids, 10).tokens, hf_greedy(model, ids, 10))
    np.testing.assert_array_equal(lm.generate(ids[:1], 10).tokens, hf_greedy(model, ids[:1], 10))
