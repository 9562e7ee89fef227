"""Capture a Hugging Face causal LM as two graphs: prefill and decode over an explicit KV cache.

The HF model runs unchanged inside two small torch modules that hand it a `DynamicCache`
built from an explicit tensor and collect what each layer appends to it:

    Prefill(input_ids [batch, T])            -> logits [batch, T, vocab], kv (T positions)
    Decode(input_ids [batch, 1], past_kv (S positions))
                                             -> logits [batch, 1, vocab], kv (1 position)

and Decode once more with batch 1 (decode1: one sequence, the common case). The cache is
laid out one of two ways (`CacheLayout`):

    sequence first [positions, 2 (keys, values), layers, batch, kv_heads, head_dim]
    head major     [2 x layers (keys of each layer, then values), batch, kv_heads, positions,
                   head_dim]

Position ids are S..S+T-1. The new keys and values are the tensors the attention layers pass
to `cache.update` (after RoPE where the model has it), so the capture does not depend on how
a model lays its cache out. batch, T and S are dynamic dims of the captured graphs
(torch.export's Dim.DYNAMIC: a named Dim over past_kv fails torch's range solver on a
contiguity guard that holds for every size). Sequence first, the host passes a prefix of one
preallocated buffer as a compact tensor (what a GPU build needs: TVM makes compact views of
device memory only); head major, each head's positions are contiguous (what attention reads
fastest) and the prefix is a strided view, which the CPU kernel reads in place (compiled.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ecograph.errors import UnsupportedError, UsageError

# model_type -> what its architecture brings; each is checked against Hugging Face's own
# outputs (tests/lm/test_architectures.py: the captured graphs, and compiled builds)
SUPPORTED = {
    "llama": "Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention",
    "mistral": "Mistral: Llama-style, sliding-window attention",
    "ministral": "Ministral: Mistral-style",
    "qwen2": "Qwen2: Llama-style, q/k/v biases, sliding windows on some layers",
    "qwen3": "Qwen3: Llama-style, q/k RMSNorm",
    "gemma": "Gemma: scaled embeddings, (1 + w) RMSNorm, GeGLU, multi-query attention",
    "gemma2": "Gemma 2: soft-capped scores and logits, alternating sliding windows",
    "gemma3_text": "Gemma 3 (text): q/k norms, local and global RoPE, sliding windows",
    "phi": "Phi: partial rotary, parallel attention and MLP, LayerNorm",
    "phi3": "Phi-3: fused qkv and gate/up projections, LongRoPE (frequencies by length)",
    "gpt2": "GPT-2: learned positions, LayerNorm, GELU MLP, multi-head attention",
    "gpt_neo": "GPT-Neo: alternating global and local (windowed) attention",
    "gptj": "GPT-J: interleaved partial rotary, parallel attention and MLP",
    "gpt_neox": "GPT-NeoX / Pythia: partial rotary, parallel residual",
    "gpt_bigcode": "GPTBigCode / StarCoder: multi-query attention",
    "codegen": "CodeGen: GPT-J-style",
    "opt": "OPT: learned positions (offset 2), ReLU MLP",
    "biogpt": "BioGPT: scaled embeddings, learned positions",
    "bloom": "BLOOM: ALiBi position biases, embedding LayerNorm",
    "falcon": "Falcon: multi-query or grouped attention, parallel attention and MLP",
    "stablelm": "StableLM: partial rotary, LayerNorm",
    "persimmon": "Persimmon: q/k LayerNorm, squared ReLU",
    "olmo": "OLMo: non-parametric LayerNorm",
    "olmo2": "OLMo 2: norms after attention and MLP, q/k RMSNorm",
    "olmo3": "OLMo 3: OLMo 2-style, sliding windows",
    "granite": "Granite: Llama-style with embedding, residual and logit multipliers",
    "cohere": "Cohere (Command R): parallel attention and MLP, logit scale",
    "starcoder2": "StarCoder2: biases, LayerNorm, sliding windows",
    "smollm3": "SmolLM3: Llama-style, RoPE left out on some layers",
    "nemotron": "Nemotron: (1 + w) LayerNorm, squared ReLU, partial rotary",
    "glm": "GLM: interleaved partial rotary",
    "glm4": "GLM-4: GLM-style, norms after attention and MLP",
    "helium": "Helium: Llama-style",
    "exaone4": "EXAONE 4: q/k norms, hybrid sliding-window layers",
    "ernie4_5": "ERNIE 4.5: Llama-style, interleaved rotary",
    "arcee": "Arcee (AFM): Llama-style, ReLU^2 MLP",
    "apertus": "Apertus: xIELU MLP, q/k norms",
    # mixtures of experts: every expert computed, weighted by the router (dense_experts_forward)
    "mixtral": "Mixtral: Mistral-style, mixture of experts (softmax top-k router)",
    "qwen2_moe": "Qwen2-MoE: mixture of experts with a gated shared expert",
    "qwen3_moe": "Qwen3-MoE: Qwen3-style, mixture of experts",
    "olmoe": "OLMoE: q/k norms, mixture of experts",
    "phimoe": "PhiMoE: LayerNorm, mixture of experts (sparsemixer router)",
    "granitemoe": "Granite-MoE: Granite multipliers, mixture of experts",
    "granitemoeshared": "Granite-MoE with a shared expert",
    "dots1": "dots.llm1: dense first layers, grouped sigmoid router, shared experts",
    "ernie4_5_moe": "ERNIE 4.5 MoE: router with a bias correction, shared experts",
    "glm4_moe": "GLM-4 MoE (GLM-4.5): grouped sigmoid router, shared experts",
    "hunyuan_v1_moe": "Hunyuan-MoE: q/k norms, shared expert",
    "flex_olmo": "FlexOlmo: OLMo 2-style, mixture of experts",
    "deepseek_v3": "DeepSeek-V3: latent attention (compressed cache), grouped sigmoid router",
    "gpt_oss": "gpt-oss: attention sinks, alternating windows, biased clamped-SwiGLU experts",
}
_EXAMPLE_BATCH, _EXAMPLE_T, _EXAMPLE_S = 2, 5, 7  # capture sizes: not 0 or 1 (torch specializes)


@dataclass(frozen=True)
class CacheLayout:
    """The KV cache of a model as the capture lays it out (module docstring): sequence first,
    [positions, 2, layers, batch, kv_heads, head_dim], or `head_major`, [2 x layers, batch,
    kv_heads, positions, head_dim], in `dtype`."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: Any  # torch.dtype
    head_major: bool = False
    # (key width, value width) where they differ (DeepSeek's latent attention caches its
    # compressed latent as keys and the rotary key as values): both stored head_dim wide
    # (the wider), the narrower padded with zeros
    widths: tuple[int, int] | None = None

    def shape(self, positions: int, batch: int) -> tuple[int, ...]:
        return kv_shape(
            self.head_major, self.layers, self.kv_heads, self.head_dim, positions, batch
        )

    @property
    def name(self) -> str:
        return HEAD_MAJOR if self.head_major else SEQUENCE_FIRST


SEQUENCE_FIRST, HEAD_MAJOR = "sequence-first", "head-major"  # lm.json's kv_layout


def kv_shape(
    head_major: bool, layers: int, kv_heads: int, head_dim: int, positions: int, batch: int
) -> tuple[int, ...]:
    """The shape of `positions` positions of a KV cache in either layout."""
    if head_major:
        return (2 * layers, batch, kv_heads, positions, head_dim)
    return (positions, 2, layers, batch, kv_heads, head_dim)


def kv_axes(head_major: bool) -> tuple[int, int]:
    """(positions axis, batch axis) of a KV cache in either layout (`kv_shape`)."""
    return (3, 1) if head_major else (0, 3)


def check_model(model: Any, max_seq_len: int) -> None:
    """Raise a typed error, saying what to do, unless `model` is a float32 Hugging Face causal
    LM of an architecture in SUPPORTED that can hold `max_seq_len` positions."""
    import torch

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise UsageError(
            f"compile_lm takes a Hugging Face causal LM (a transformers model such as "
            f"LlamaForCausalLM or GPT2LMHeadModel) or the folder of one, got "
            f"{type(model).__name__}; for another torch module use ecograph.optimize"
        )
    config = model.config
    model_type = getattr(config, "model_type", None)
    name = type(model).__name__
    if model_type not in SUPPORTED:
        known = ", ".join(SUPPORTED)
        raise UnsupportedError(
            f"compile_lm does not know the architecture of {name} (model_type "
            f"{model_type!r}); it captures these model types: {known} (docs/generation.md). "
            "Convert the model to one of them, or capture one decode step yourself with "
            "ecograph.optimize"
        )
    if not (name.endswith("ForCausalLM") or name.endswith("LMHeadModel")):
        raise UsageError(
            f"{name} is not a causal LM head model; give the ...ForCausalLM / ...LMHeadModel "
            "class (e.g. AutoModelForCausalLM.from_pretrained(...))"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedError(f"{name} is an encoder-decoder model; compile_lm takes decoders")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        got = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        raise UsageError(
            f"{name} has {got} weights; compile_lm captures float32 models (quantize with "
            "quantize='int8' / 'int4' instead): pass model.float(), or a copy of it"
        )
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and max_seq_len > limit:
        raise UsageError(
            f"max_seq_len={max_seq_len} is more than the {limit} positions {name} has "
            f"(config.max_position_embeddings); give max_seq_len <= {limit}"
        )


def run_with_cache(
    model: Any,
    input_ids: Any,
    past_kv: Any | None,
    head_major: bool = False,
    widths: tuple[int, int] | None = None,
) -> tuple[Any, Any]:
    """Run `model` on `input_ids` after `past_kv` (S positions of a KV cache laid out as
    `head_major` says, or None); return its logits and the new positions' keys/values in the
    same layout (keys and values of different `widths` padded to the wider, CacheLayout)."""
    import torch

    logits, layers = _run_recording(model, input_ids, past_kv, head_major, widths)
    if widths is not None:
        width = max(widths)
        pad = torch.nn.functional.pad
        layers = [
            (pad(k, (0, width - k.shape[-1])), pad(v, (0, width - v.shape[-1]))) for k, v in layers
        ]
    # one shape for every layer's keys and values: cache_layout refused models without it
    if head_major:  # [2 x layers, batch, kv_heads, T, dim]
        return logits, torch.stack([k for k, _ in layers] + [v for _, v in layers]).contiguous()
    kv = torch.stack([torch.stack([k for k, _ in layers]), torch.stack([v for _, v in layers])])
    # [2, layers, batch, kv_heads, T, dim] -> [T, 2, layers, batch, kv_heads, dim]
    return logits, kv.permute(4, 0, 1, 2, 3, 5).contiguous()


def _run_recording(
    model: Any,
    input_ids: Any,
    past_kv: Any | None,
    head_major: bool,
    widths: tuple[int, int] | None,
) -> tuple[Any, list[tuple[Any, Any]]]:
    """run_with_cache's model call: its logits and, per layer, the keys and values it wrote
    to the cache, as it wrote them."""
    import torch
    from transformers import DynamicCache

    def unpad(keys: Any, values: Any) -> tuple[Any, Any]:
        if widths is None:
            return keys, values
        return keys[..., : widths[0]], values[..., : widths[1]]

    cache = DynamicCache()
    past = 0
    if past_kv is not None and head_major:
        # [2 x layers, batch, kv_heads, S, dim]: each layer's keys and values are one index
        past, layers = past_kv.shape[3], past_kv.shape[0] // 2
        for i in range(layers):
            cache.update(*unpad(past_kv[i], past_kv[layers + i]), i)
    elif past_kv is not None:
        past = past_kv.shape[0]
        # One index per (keys or values, layer) into a view of the cache: each layer's keys
        # and values are then a chain from the input alone (a select and a permute, one
        # fused kernel; then the attention's concatenation). A permute of the whole cache
        # first, then selects, left copies that every layer shared: the whole cache was
        # copied four times a step, now twice (SmolLM2-135M at 255 positions: 5.5 of 17 ms
        # before, bench/RESULTS.md).
        layers = past_kv.shape[2]
        pairs = past_kv.flatten(1, 2)  # [S, 2 * layers, batch, kv_heads, dim], a view
        for i in range(layers):
            keys, values = pairs[:, i], pairs[:, layers + i]  # [S, batch, kv_heads, dim]
            cache.update(*unpad(keys.permute(1, 2, 0, 3), values.permute(1, 2, 0, 3)), i)
    new: dict[int, tuple[Any, Any]] = {}
    update = cache.update

    def recording_update(key: Any, value: Any, layer_idx: int, *args: Any, **kw: Any) -> Any:
        new[layer_idx] = (key, value)
        return update(key, value, layer_idx, *args, **kw)

    cache.update = recording_update  # type: ignore[method-assign]
    batch, steps = input_ids.shape
    positions = (torch.arange(steps) + past).unsqueeze(0).expand(batch, -1)
    out = model(input_ids=input_ids, past_key_values=cache, position_ids=positions, use_cache=True)
    if not new or sorted(new) != list(range(len(new))):
        raise UnsupportedError(
            f"{type(model).__name__} did not write its keys and values through the cache it was "
            f"given (layers written: {sorted(new)}); its attention cannot be captured over an "
            "explicit KV cache"
        )
    return out.logits, [new[i] for i in range(len(new))]


DENSE_EXPERTS = "ecograph-dense"  # the experts implementation the capture registers


def dense_experts_forward(
    self: Any, hidden_states: Any, top_k_index: Any, top_k_weights: Any
) -> Any:
    """A mixture of experts' layer (transformers' `use_experts_implementation` interface) as
    the capture computes it: every expert over every token, each weighted by its routing
    weight (0 where the router did not choose it), summed. The same sum as transformers'
    implementations, whose gathers and grouped products depend on the routing (data that
    torch.export cannot follow, or weights copied per token); here each expert's products
    have constant weights, which the pipeline packs and quantizes like any other. A step
    computes all experts' products, not only the chosen ones' (docs/generation.md)."""
    import torch

    if self._is_expert_parallel:
        raise UnsupportedError("compile_lm captures experts on one device (no expert parallelism)")
    experts = self.num_experts
    chosen = top_k_index.unsqueeze(-1) == torch.arange(experts, device=top_k_index.device)
    routing = (chosen.to(top_k_weights.dtype) * top_k_weights.unsqueeze(-1)).sum(1)
    gated = self.has_gate

    def linear(x: Any, name: str, e: int) -> Any:
        weight = getattr(self, name)[e]
        out = x @ weight if self.is_transposed else torch.nn.functional.linear(x, weight)
        return out + getattr(self, f"{name}_bias")[e] if self.has_bias else out

    total: Any = None
    for e in range(experts):
        out = linear(hidden_states, "gate_up_proj" if gated else "up_proj", e)
        out = self._apply_gate(out) if gated else self.act_fn(out)
        out = linear(out, "down_proj", e)
        if self.has_post_expert_norm:
            out = self.post_expert_norm(out)
        out = out * routing[:, e : e + 1]
        total = out if total is None else total + out
    return total.to(hidden_states.dtype)


@contextmanager
def _experts_dense(model: Any) -> Iterator[None]:
    """Within the block, `model`'s mixture-of-experts layers (if any) compute as
    `dense_experts_forward` says; restored after."""
    from transformers.integrations.moe import ExpertsInterface

    if not model._can_set_experts_implementation():
        yield
        return
    ExpertsInterface.register(DENSE_EXPERTS, dense_experts_forward)
    before = model.get_experts_implementation()
    model.set_experts_implementation(DENSE_EXPERTS)
    try:
        yield
    finally:
        model.set_experts_implementation(before)


def _modules(model: Any, layout: CacheLayout) -> tuple[Any, Any]:
    import torch

    head_major, widths = layout.head_major, layout.widths

    class Prefill(torch.nn.Module):
        """The prompt pass: logits at every position and the prompt's keys/values."""

        def __init__(self) -> None:
            super().__init__()
            self.lm = model

        def forward(self, input_ids: Any) -> Any:
            return run_with_cache(self.lm, input_ids, None, head_major, widths)

    class Decode(torch.nn.Module):
        """One step: the new token attends to the S cached positions."""

        def __init__(self) -> None:
            super().__init__()
            self.lm = model

        def forward(self, input_ids: Any, past_kv: Any) -> Any:
            return run_with_cache(self.lm, input_ids, past_kv, head_major, widths)

    return Prefill().eval(), Decode().eval()


def cache_layout(model: Any, head_major: bool = False) -> CacheLayout:
    """The model's cache layout, read from one eager prefill of a short prompt."""
    import torch

    ids = torch.zeros((1, 2), dtype=torch.long)
    with torch.no_grad():
        _, layers = _run_recording(model.eval(), ids, None, head_major, None)
    shapes = {(tuple(k.shape[:-1]), tuple(v.shape[:-1])) for k, v in layers}
    key_widths, value_widths = {k.shape[-1] for k, _ in layers}, {v.shape[-1] for _, v in layers}
    if len(shapes) > 1 or len(key_widths) > 1 or len(value_widths) > 1:
        raise UnsupportedError(
            f"{type(model).__name__}'s layers keep keys/values of different shapes (keys "
            f"{sorted(key_widths)} wide, values {sorted(value_widths)}); the capture needs one "
            "shape for every layer"
        )
    ((key_shape, value_shape),) = shapes
    if key_shape != value_shape:
        raise UnsupportedError(
            f"{type(model).__name__} caches keys and values of different shapes ({key_shape} "
            f"and {value_shape}, leaving out the last dim); the capture needs them alike"
        )
    (key_width,), (value_width,) = key_widths, value_widths
    widths = (key_width, value_width) if key_width != value_width else None
    keys = layers[0][0]
    return CacheLayout(
        len(layers), int(keys.shape[1]), max(key_width, value_width), keys.dtype, head_major, widths
    )


def _capture(model: Any, head_major: bool) -> tuple[Any, Any, Any, CacheLayout]:
    """capture_lm's three graphs and the cache layout, the model as it is set up."""
    import torch
    from torch.export import Dim

    from ecograph.frontend.torch import from_torch

    layout = cache_layout(model, head_major)
    prefill, decode = _modules(model, layout)
    b, t, s = _EXAMPLE_BATCH, _EXAMPLE_T, _EXAMPLE_S
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (b, t))
    prefill_graph = from_torch(
        prefill, (ids,), dynamic_shapes=({0: Dim.DYNAMIC, 1: Dim.DYNAMIC},), capture="export"
    )
    step = torch.randint(0, vocab, (b, 1))
    past = torch.zeros(layout.shape(s, b), dtype=layout.dtype)
    seq_axis, batch_axis = kv_axes(head_major)
    decode_graph = from_torch(
        decode,
        (step, past),
        dynamic_shapes=({0: Dim.DYNAMIC}, {seq_axis: Dim.DYNAMIC, batch_axis: Dim.DYNAMIC}),
        capture="export",
    )
    one = from_torch(
        decode,
        (step[:1], past.narrow(batch_axis, 0, 1).contiguous()),
        dynamic_shapes=(None, {seq_axis: Dim.DYNAMIC}),
        capture="export",
    )
    return prefill_graph, decode_graph, one, layout


def capture_lm(model: Any, head_major: bool = False) -> tuple[Any, Any, Any, CacheLayout]:
    """The prefill, decode and single-sequence decode graphs of `model` (an HF causal LM
    that passed check_model) and its cache layout (`head_major` or sequence first). batch,
    T and S are symbolic dims of the graphs, except the third one's batch: 1, so that its
    products are matrix-vector products the CPU kernels compute row by row (a symbolic batch
    gets the row-tiled kernel, which pads one row to a whole tile of rows: measured 1.1-2.5x
    the time of the single-row kernel)."""
    training = model.training
    try:
        with _experts_dense(model):
            prefill_graph, decode_graph, one, layout = _capture(model, head_major)
    finally:
        model.train(training)
    name = type(model).__name__
    prefill_graph.name = f"{name}-prefill"
    decode_graph.name = f"{name}-decode"
    one.name = f"{name}-decode1"
    return prefill_graph, decode_graph, one, layout
