"""Tiny random-weight Hugging Face causal LMs of every architecture compile_lm captures
(ecograph.lm.capture.SUPPORTED), for tests/lm/test_architectures.py: each config is the
smallest that keeps the architecture's mechanisms (grouped or multi-query attention, partial
rotary, ALiBi, sliding windows shorter than the tests' sequences, soft-capping, biases)."""

from __future__ import annotations

from typing import Any

VOCAB = 96
# the common sizes; each entry below overrides what its config names differently
BASE = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)  # fmt: skip
GPT = dict(n_layer=2, n_embd=32, n_head=4, n_positions=64)
# a mixture of experts: each config names its expert count
MOE = dict(num_hidden_layers=1, num_experts_per_tok=2, moe_intermediate_size=16)
# DeepSeek's multi-head latent attention
LATENT = dict(
    kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8
)
WINDOW = 6  # sliding windows (and Phi-3's LongRoPE switch) inside the sequences tests run

# model_type -> (config class, model class, config overrides)
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW)),
    "ministral": (
        "MinistralConfig",
        "MinistralForCausalLM",
        dict(head_dim=8, sliding_window=WINDOW),
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=8)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=8, num_key_value_heads=1)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=8, sliding_window=WINDOW)),
    "gemma3_text": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(head_dim=8, sliding_window=WINDOW),
    ),
    "phi": ("PhiConfig", "PhiForCausalLM", {}),
    "phi3": (  # LongRoPE: short factors up to 6 positions, long ones past them (Phi-3-128k)
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(
            original_max_position_embeddings=WINDOW,
            initializer_range=0.2,  # attention far from uniform: the long factors show
            rope_parameters=dict(
                rope_type="longrope",
                rope_theta=10000.0,
                short_factor=[1.0] * 4,
                long_factor=[1.0, 2.0, 4.0, 8.0],
            ),
        ),
    ),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", GPT),
    "gpt_neo": (
        "GPTNeoConfig",
        "GPTNeoForCausalLM",
        dict(num_layers=2, attention_types=[[["global", "local"], 1]], window_size=WINDOW),
    ),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(GPT, rotary_dim=4)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {}),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", GPT),
    "codegen": ("CodeGenConfig", "CodeGenForCausalLM", dict(GPT, rotary_dim=4, n_ctx=64)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(ffn_dim=64, word_embed_proj_dim=32)),
    "biogpt": ("BioGptConfig", "BioGptForCausalLM", {}),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(n_layer=2, n_head=4)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(multi_query=True)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", {}),
    "persimmon": ("PersimmonConfig", "PersimmonForCausalLM", {}),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM", dict(sliding_window=WINDOW)),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {}),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", dict(sliding_window=WINDOW)),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {}),
    "nemotron": ("NemotronConfig", "NemotronForCausalLM", {}),
    "glm": ("GlmConfig", "GlmForCausalLM", dict(head_dim=8)),
    "glm4": ("Glm4Config", "Glm4ForCausalLM", dict(head_dim=8)),
    "helium": ("HeliumConfig", "HeliumForCausalLM", dict(head_dim=8)),
    "exaone4": (
        "Exaone4Config",
        "Exaone4ForCausalLM",
        dict(sliding_window=WINDOW, sliding_window_pattern=2),
    ),
    "ernie4_5": ("Ernie4_5Config", "Ernie4_5ForCausalLM", dict(head_dim=8)),
    "arcee": ("ArceeConfig", "ArceeForCausalLM", {}),
    "apertus": ("ApertusConfig", "ApertusForCausalLM", {}),
    # mixtures of experts: one layer of 4 experts, 2 chosen per token
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(MOE, num_local_experts=4)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(MOE, num_experts=4, shared_expert_intermediate_size=32),
    ),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(MOE, num_experts=4, head_dim=8)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(MOE, num_experts=4)),
    "phimoe": ("PhimoeConfig", "PhimoeForCausalLM", dict(MOE, num_local_experts=4)),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM", dict(MOE, num_local_experts=4)),
    "granitemoeshared": (
        "GraniteMoeSharedConfig",
        "GraniteMoeSharedForCausalLM",
        dict(MOE, num_local_experts=4, shared_intermediate_size=32),
    ),
    "dots1": (  # the first layer dense, the second experts
        "Dots1Config",
        "Dots1ForCausalLM",
        dict(
            MOE,
            num_hidden_layers=2,
            n_routed_experts=4,
            n_shared_experts=1,
            first_k_dense_replace=1,
        ),
    ),
    "ernie4_5_moe": (
        "Ernie4_5_MoeConfig",
        "Ernie4_5_MoeForCausalLM",
        dict(MOE, moe_num_experts=4, moe_k=2, moe_num_shared_experts=1, moe_layer_start_index=0),
    ),
    "glm4_moe": (
        "Glm4MoeConfig",
        "Glm4MoeForCausalLM",
        dict(MOE, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=0, head_dim=8),
    ),
    "hunyuan_v1_moe": (
        "HunYuanMoEV1Config",
        "HunYuanMoEV1ForCausalLM",
        dict(MOE, num_experts=4, moe_topk=2, head_dim=8),
    ),
    "flex_olmo": ("FlexOlmoConfig", "FlexOlmoForCausalLM", dict(MOE, num_experts=4)),
    "deepseek_v3": (  # latent attention: keys 16 wide (the latent), values 4 (the rotary key)
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        dict(MOE, num_key_value_heads=4, **LATENT, n_routed_experts=4, n_shared_experts=1),
    ),
    "gpt_oss": (  # attention sinks, alternating sliding windows, biased experts
        "GptOssConfig",
        "GptOssForCausalLM",
        dict(MOE, num_hidden_layers=2, num_local_experts=4, head_dim=8, sliding_window=WINDOW),
    ),
}


def tiny_model(model_type: str) -> Any:
    """A random-weight model of `model_type` (seeded), in eval mode."""
    import torch
    import transformers

    config_class, model_class, overrides = ARCHITECTURES[model_type]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**{**BASE, **overrides})
    return getattr(transformers, model_class)(config).eval()
