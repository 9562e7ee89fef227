"""Causal LMs: prefill/decode capture over a KV cache, compile_lm, generate (docs/generation.md).

capture.py turns a Hugging Face causal LM into two graphs (prefill, decode) over an explicit
KV cache; build.py holds `compile_lm` (capture, passes, quantization, one artifact per
function, a check against the model); compiled.py holds `CompiledLM` (generate, logits, save)
and `load_lm`, which need only TVM's runtime. Importing this package imports neither torch nor
TVM.
"""

from __future__ import annotations

from ecograph.lm.build import compile_lm
from ecograph.lm.compiled import CompiledLM, GenerateStats, Generation, LMSpec, load_lm

__all__ = ["CompiledLM", "GenerateStats", "Generation", "LMSpec", "compile_lm", "load_lm"]
