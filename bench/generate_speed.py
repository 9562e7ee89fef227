"""compile_lm on the bench's Llama config (4 layers, hidden 256, GQA 8/2, vocab 2000): x86 fp32
and int8-weight; 128-token prompt, 64 new tokens, greedy; 3 runs each, median. Beside it,
Hugging Face's own generate (torch eager, same weights, same threads) and whether the greedy
tokens are the same.

    python bench/generate_speed.py
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

import ecograph
from bench.runners import build_llama

model = build_llama()
prompt = np.random.default_rng(0).integers(1, 1000, (1, 128)).astype(np.int64)
for q in (None, "int8-weight"):
    t0 = time.perf_counter()
    lm = ecograph.compile_lm(
        model, target="x86", quantize=q, max_seq_len=256, cache=False, progress=False
    )
    build = time.perf_counter() - t0
    runs = [lm.generate(prompt, max_new_tokens=64) for _ in range(3)]
    ttft = statistics.median(r.stats.time_to_first_token_s for r in runs) * 1000
    tps = statistics.median(r.stats.decode_tokens_per_s for r in runs)
    with torch.inference_mode():
        hf = model.generate(torch.from_numpy(prompt), max_new_tokens=64, do_sample=False)
        t0 = time.perf_counter()
        for _ in range(3):
            model.generate(
                torch.from_numpy(prompt), max_new_tokens=64, do_sample=False, min_new_tokens=64
            )
        hf_s = (time.perf_counter() - t0) / 3
    n = hf.shape[1]
    same = np.array_equal(runs[0].tokens[:, :n], hf.numpy()) if q is None else None
    print(
        f"{q or 'fp32'}: build {build:.0f} s, TTFT {ttft:.1f} ms, decode {tps:.0f} tok/s "
        f"({1000 / tps:.2f} ms/token); HF eager generate (64 tokens incl. prefill) "
        f"{hf_s * 1000:.0f} ms = {64 / hf_s:.0f} tok/s; greedy tokens equal HF: {same}"
    )
