"""`ecograph.compile_lm()`: a Hugging Face causal LM compiled into prefill and decode functions.

Capture (capture.py) -> the pass pipeline and quantization (the same presets as optimize) on
each graph -> one artifact per function through the compile cache -> lm.json -> a check of
the compiled functions against the model's own logits in torch, on a probe prompt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.errors import AccuracyError, UsageError
from ecograph.lm.compiled import (
    LM_JSON,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    CompiledLM,
    LMSpec,
    load_lm,
    read_spec,
)

DEFAULT_MAX_SEQ_LEN = 2048  # when the model allows more (config.max_position_embeddings)
PROBE_TOKENS = 8  # the compile-time check's prompt length (at most max_seq_len)
# Weights of at least this many bytes go to the shared weights.npz; smaller constants (shape
# vectors, a small model's norm scales) stay in each library, where a copy per function costs
# next to nothing and no call passes them (bench's 4-layer Llama, decode step: every constant
# a parameter, 37 of them, 1.169 ms against 1.140 in the library; from 1 KiB, 19, 1.108 ms
# against 1.116: noise).
SHARED_PARAM_BYTES = 1024


def compile_lm(
    model: Any,
    *,
    target: str | dict[str, Any] = "x86",
    quantize: Any = None,
    max_seq_len: int | None = None,
    tokenizer: Any = None,
    pipeline: str = "default",
    tune: bool | int = False,
    accuracy_budget: float | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    cache: bool | Any = True,
    progress: bool | None = None,
) -> CompiledLM:
    """Compile a causal LM into prefill and decode functions over a KV cache of up to
    `max_seq_len` positions, and return the CompiledLM (generate, logits, save).

    - model: a float32 Hugging Face causal LM of a model type in lm.capture.SUPPORTED (Llama,
      Mistral, Qwen, Gemma, Phi, GPT-2, GPT-J, GPT-NeoX, Falcon, BLOOM, OPT and more), or the
      folder of one (loaded with AutoModelForCausalLM from safetensors; its tokenizer too).
      The model is not modified.
    - target: a preset ("x86", "arm", "cuda", ...), TVM target dict or TargetSpec. A target
      this machine cannot run is compiled all the same; the result then saves but does not
      run here (it raises UsageError saying where to run it).
    - quantize: None or a preset optimize accepts ("int8", "int8-weight", "int4",
      "palette4", ...), a dict of Quantize options or a Quantize pass; static int8 is refused
      (it needs calibration data that compile_lm does not take). Both functions get the same
      quantized weights: the prefill graph is quantized first and the decode graph takes its
      codes, so GPTQ's `calibration_data` are prefill inputs, [{"input_ids": [batch, T]}].
      A list of them runs in order, each on the float weights the ones before left (mixed
      precision: `[{...int4 GPTQ..., "exclude": ["*lm_head*"], "embeddings": False},
      "int8-weight"]` keeps the output projection and the embedding table in int8).
    - max_seq_len: prompt plus generated tokens; default min(the model's positions, 2048).
    - tokenizer: saved beside the functions (so `ecograph generate DIR --prompt TEXT` works).
    - accuracy_budget: the minimum cosine similarity of the compiled functions' logits to the
      model's on a probe prompt (default 0.99999, 0.99 when quantized); AccuracyError below.
    - out_dir: where the LM folder is written (default: a temporary folder; save() copies it).
    - cache / tune / pipeline / progress: as for ecograph.optimize.
    """
    from ecograph.api import (
        EXACT_BUDGET,
        QUANTIZED_BUDGET,
        compile_cached,
        recipe_for,
        resolve_target,
        runs_here_reason,
    )
    from ecograph.backends.tvm.build import share_params
    from ecograph.lm.capture import capture_lm, check_model

    spec = resolve_target(target)  # the one place compile_lm reads the target
    _check_quantize(quantize)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="ecograph-lm-"))
    _check_out_dir(out)
    model, tokenizer = _hf_model(model, tokenizer)
    max_len = _max_seq_len(model, max_seq_len)
    check_model(model, max_len)
    # head-major on CPU (each head's positions contiguous, read in place as a strided view);
    # sequence-first on GPUs, whose cache views TVM makes compact only (compiled.py)
    prefill, decode, decode1, layout = capture_lm(model, head_major=not spec.is_gpu)
    records: list[Any] = []
    qdesc = ""
    # per quantization, prefill's quantized weights, taken as they are by the decode functions
    shared: list[dict[Any, Any]] = [{} for _ in _quantizations(quantize)]
    graphs = {"prefill": prefill, "decode": decode, "decode1": decode1}
    for graph in graphs.values():
        records, qdesc = _run_passes(graph, pipeline, quantize, progress, shared)
    recipe = recipe_for(pipeline, qdesc, records)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        show = bool(progress)
        for name, graph in graphs.items():
            compile_cached(
                graph,
                spec,
                tmp / name,
                tune,
                recipe,
                cache,
                progress=show,
                keep_params=SHARED_PARAM_BYTES,
            )
        # each distinct packed weight once for the three functions (prefill and decode pack
        # theirs alike; decode1's single-row products may take other panel widths)
        weights = share_params([tmp / name for name in graphs], tmp / WEIGHTS_FILE)
        config = model.config
        lm_spec = LMSpec(
            model_type=str(config.model_type),
            architecture=type(model).__name__,
            vocab_size=int(config.vocab_size),
            layers=layout.layers,
            kv_heads=layout.kv_heads,
            head_dim=layout.head_dim,
            max_seq_len=max_len,
            kv_dtype=str(layout.dtype).removeprefix("torch."),
            eos_token_ids=_token_ids(getattr(config, "eos_token_id", None), config.vocab_size),
            pad_token_id=_pad_id(getattr(config, "pad_token_id", None), config.vocab_size),
            quantization=qdesc,
            target=spec.describe(),
            has_tokenizer=tokenizer is not None,
            weights=weights,
            functions=tuple(graphs),
            kv_layout=layout.name,
        )
        _write_json(tmp / LM_JSON, lm_spec.to_json())
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        _check_out_dir(out)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cannot_run = runs_here_reason(spec)
    if cannot_run:
        stub = _NotRunnableHere(spec.name, out, cannot_run)
        return CompiledLM(out, read_spec(out), stub, stub, stub)
    lm = load_lm(out)
    check = _check_against_model(lm, model)
    budget = accuracy_budget
    if budget is None:
        budget = QUANTIZED_BUDGET if quantize is not None else EXACT_BUDGET
    check["budget"] = budget
    data = lm.spec.to_json()
    data["check"] = check
    _write_json(out / LM_JSON, data)
    lm.spec = read_spec(out)
    if check["cosine"] < budget:
        raise AccuracyError(
            f"compiled {lm_spec.architecture}: logits cosine {check['cosine']:.6f} < budget "
            f"{budget} (max abs error {check['max_abs_error']:.3g}) against the model in torch "
            f"on {check['on']}; the build is in {out}. Quantize less aggressively or loosen "
            "accuracy_budget"
        )
    return lm


# ----------------------------------------------------------------- pieces


def _hf_model(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """The torch model (loaded when `model` is a folder) and the tokenizer to save with it."""
    if not isinstance(model, (str, os.PathLike)):
        return model, tokenizer
    folder = Path(model)
    if not (folder / "config.json").is_file():
        raise UsageError(
            f"{folder} is not a Hugging Face model folder (no config.json); give a folder "
            "written by save_pretrained, or the model object"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot load a causal LM from {folder} ({exc}); ecograph reads safetensors "
            "weights only (never pickles): save the model with save_pretrained(...)"
        ) from exc
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if tokenizer is None and any((folder / n).is_file() for n in names):
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return loaded, tokenizer


def _max_seq_len(model: Any, max_seq_len: int | None) -> int:
    if max_seq_len is None:
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        return min(limit, DEFAULT_MAX_SEQ_LEN) if isinstance(limit, int) else DEFAULT_MAX_SEQ_LEN
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise UsageError(f"max_seq_len must be an integer >= 2, got {max_seq_len!r}")
    return max_seq_len


def _quantizations(quantize: Any) -> list[Any]:
    """compile_lm's `quantize` as a list of quantizations, applied in order."""
    if quantize is None:
        return []
    return list(quantize) if isinstance(quantize, list | tuple) else [quantize]


def _run_passes(
    graph: Any,
    pipeline: str,
    quantize: Any,
    progress: bool | None,
    shared: list[dict[Any, Any]],
) -> tuple[Any, str]:
    """Run `pipeline`, then the quantizations, on `graph` in place; (records, description).
    Each quantization shares its quantized weights through its `shared` table with the other
    graph's (same weights, same codes: GPTQ calibrates on the prefill inputs only)."""
    from ecograph.passes import PassManager
    from ecograph.quant.presets import quantize_pass

    items: list[Any] = [pipeline]
    descriptions = []
    for spec, table in zip(_quantizations(quantize), shared, strict=True):
        # a fresh pass per graph (a Quantize given is copied), one shared weight table
        qpass = dataclasses.replace(quantize_pass(spec), shared=table)
        items.append(qpass)
        # a preset's name says more than the mode alone
        descriptions.append(
            f"{spec}: {qpass.describe()}" if isinstance(spec, str) else qpass.describe()
        )
    return PassManager(items, progress=progress).run(graph).records, "; then ".join(descriptions)


def _check_out_dir(out: Path) -> None:
    """`out` may be replaced: it is absent, an empty folder or a compiled LM folder."""
    if not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and not (out / LM_JSON).is_file()):
        raise UsageError(
            f"out_dir {out} exists and is not a compiled LM folder (it would be replaced); "
            "give a new or empty folder"
        )


def _check_quantize(quantize: Any) -> None:
    """Fail fast, before the capture, on a quantization compile_lm cannot run."""
    if isinstance(quantize, list | tuple):
        if not quantize:
            raise UsageError(
                "quantize=[] names no quantization; give None for none, or one or more "
                "presets, dicts of Quantize options or Quantize passes"
            )
        for spec in quantize:
            if spec is None or isinstance(spec, list | tuple):
                raise UsageError(
                    f"quantize={quantize!r}: each item is a preset, a dict of Quantize "
                    f"options or a Quantize pass, not {spec!r}"
                )
            _check_quantize(spec)
        return
    if quantize is None:
        return
    from ecograph.quant.presets import QUANTIZE_PRESETS

    if isinstance(quantize, str):
        if quantize not in QUANTIZE_PRESETS:
            raise UsageError(
                f"quantize={quantize!r} is not a preset; give one of "
                f"{sorted(p for p, o in QUANTIZE_PRESETS.items() if o['mode'] != 'static')}, "
                "a dict of Quantize options or a Quantize pass"
            )
        mode = QUANTIZE_PRESETS[quantize]["mode"]
    elif isinstance(quantize, dict):
        mode = quantize.get("mode", "dynamic")
    else:
        mode = getattr(quantize, "mode", None)
    if mode == "static":
        raise UsageError(
            "compile_lm does not take static quantization (it needs calibration data); use "
            "quantize='int8' (dynamic), 'int8-weight', 'int4' or a palette preset"
        )


def _token_ids(value: Any, vocab: int) -> tuple[int, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return tuple(int(v) for v in values if isinstance(v, int) and 0 <= v < vocab)


def _pad_id(value: Any, vocab: int) -> int | None:
    return int(value) if isinstance(value, int) and 0 <= value < vocab else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _check_against_model(lm: CompiledLM, model: Any) -> dict[str, Any]:
    """Cosine and max abs error of the compiled logits to the model's in torch (eager) on a
    fixed random probe: prefill on all but the last token, then one decode step by each
    decode function (the worse of the two is reported)."""
    import torch

    n = min(PROBE_TOKENS, lm.max_seq_len)
    probe = np.random.default_rng(0).integers(0, lm.spec.vocab_size, (1, n)).astype(np.int64)
    training = model.training
    try:
        with torch.no_grad():
            want = model.eval()(torch.from_numpy(probe)).logits.numpy()
    finally:
        model.train(training)
    from ecograph.api import compare_outputs

    logits, kv = lm.prefill.run_numpy([probe[:, :-1]])
    got = [
        np.concatenate([logits, fn.run_numpy([probe[:, -1:], kv])[0]], axis=1)
        for fn in (lm.decode, lm.decode1)
        if fn is not None
    ]
    check: dict[str, Any] = compare_outputs({str(i): want for i in range(len(got))}, got)
    check["on"] = f"a random {n}-token prompt: prefill of {n - 1}, then one step of each decode"
    return check


class _NotRunnableHere:
    """Stands in for the functions of a target this machine cannot run."""

    device = None

    def __init__(self, target: str, folder: Path, reason: str) -> None:
        self.target, self.folder, self.reason = target, folder, reason

    def run_numpy(self, *_: Any, **__: Any) -> Any:
        raise UsageError(
            f"the {self.target} build cannot run on this machine ({self.reason}); copy "
            f"{self.folder} to a machine that can run it and call ecograph.load_lm there, or "
            "compile with a target this machine runs (target='x86')"
        )
