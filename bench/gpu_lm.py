"""GPU rows for compiled LMs: a 7B-shaped decode step (CUDA) against torch, NVML energy, and a
check that compile_lm's CUDA build generates what its x86 build does.

bench/gpu.py runs these (prepare here, run on the GPU host) for workload names starting "lm":

- `lm-check`: bench/runners.py's 4-layer Llama (GQA 8/2, vocab 2000), compiled by compile_lm
  for CUDA with int4 weights (its weights travel). Here the same model compiled for x86 gives
  the expected logits on a 32-token prompt and its 24 greedy tokens. There: `load_lm` on the
  GPU, its logits against those (cosine), greedy generation with the KV cache on the device
  and on the host (tokens equal to the x86 build's), and generate's decode ms/token for both.
- `lm<shape>-<quant>-l<N>`: the layer shapes of `shape` ("7b": Llama-2-7B, hidden 4096, FFN
  11008, 32 heads without GQA, vocab 32000; "tiny": a small stand-in for dry runs) with N
  layers, quant "fp32" or a quantize preset ("int4"). The whole 7B model cannot be captured
  here (float32, 27 GB, on a 24 GB machine), hence slices. Their weights are GBs: they stay
  here and the GPU host regenerates them (seeded: random bytes for packed codes, each
  tensor's mean and standard deviation for floats) and rewrites the hashes that lm.json and
  the manifests record. There: decode1 alone (`ecograph.load`) runs one decode step over a
  128-position cache on device tensors (`run_device`), beside the torch twin in float16
  (eager, torch.compile) with the same N layers; `extrapolate` then estimates 32 layers.

The 32-layer estimate is linear in the layers, t(32) = t(1) + 31 (t(2) - t(1)), labelled
"extrapolated"; the same estimate from torch's own 1- and 2-layer rows, set beside torch's
measured 32-layer row (`lm<shape>-torch-l32`), says how far to trust it.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu import REGEN_BYTES, Results, measure_runners, name_rng, regenerate, torch_runners

CHECK = "lm-check"
CHECK_PROMPT, CHECK_NEW = 32, 24
CACHE_POSITIONS = 128  # the slices' decode step attends to this many cached positions, as
# bench/runners.py's decode_workload (the torch twin's arguments) does
FULL_LAYERS = 32
SHAPES: dict[str, dict[str, int]] = {
    "7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
    },
    "tiny": {  # its embedding and output projection still exceed REGEN_BYTES, as int4 / int8
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 4096,
    },
}
_SLICE = re.compile(r"lm(?P<shape>[a-z0-9]+)-(?P<quant>[a-z0-9-]+)-l(?P<layers>\d+)$")


def parse(name: str) -> tuple[str, str, int] | None:
    """(shape, quant, layers) of a slice workload's name; None for lm-check."""
    if name == CHECK:
        return None
    m = _SLICE.match(name)
    if m is None or m["shape"] not in SHAPES:
        raise ValueError(
            f"unknown LM workload {name!r}: give {CHECK} or lm<shape>-<quant>-l<layers> with "
            f"shape one of {sorted(SHAPES)} (lm7b-int4-l1, lm7b-torch-l32)"
        )
    return m["shape"], m["quant"], int(m["layers"])


def llama_config(shape: str, layers: int) -> dict[str, Any]:
    return {
        **SHAPES[shape],
        "num_hidden_layers": layers,
        "max_position_embeddings": 2 * CACHE_POSITIONS,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
    }


# ---------------------------------------------------------------------------- prepare


def prepare_lm(name: str, folder: Path, target: str) -> dict[str, Any]:
    """Build workload `name` for `target` into `folder` (lm/ and meta.json); returns meta."""
    import ecograph

    t0 = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    parsed = parse(name)
    meta: dict[str, Any] = {"workload": name}
    if parsed is None:
        from bench.runners import build_llama

        model = build_llama()
        # random weights lose much to int4 (cosine ~0.94 to fp32): the check here is CUDA
        # against x86 on the same int4 weights, so compile_lm's own check is not the point
        kw: dict[str, Any] = {"quantize": "int4", "accuracy_budget": 0.0}
        ecograph.compile_lm(model, target=target, out_dir=folder / "lm", **kw)
        ref = ecograph.compile_lm(model, target="x86", progress=False, **kw)
        ids = check_prompt(model.config.vocab_size)
        np.savez(
            folder / "expected.npz",
            input_ids=ids,
            logits=ref.logits(ids),
            tokens=ref.generate(ids, CHECK_NEW, stop_at_eos=False).tokens,
        )
        meta["config"] = model.config.to_dict()
    else:
        shape, quant, layers = parsed
        meta["config"] = llama_config(shape, layers)
        if quant != "torch":  # torch-only rows build nothing here
            model = _random_llama(meta["config"])
            ecograph.compile_lm(
                model,
                target=target,
                quantize=None if quant == "fp32" else quant,
                accuracy_budget=0.0,  # random weights: speed rows, values do not matter
                max_seq_len=2 * CACHE_POSITIONS,
                out_dir=folder / "lm",
            )
            del model
            meta["regenerated"] = strip_weights(folder / "lm")
    meta["compile_seconds"] = round(time.perf_counter() - t0, 1)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def check_prompt(vocab: int) -> np.ndarray:
    return np.random.default_rng(7).integers(1, vocab, (1, CHECK_PROMPT)).astype(np.int64)


def _random_llama(config: dict[str, Any]) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**config, use_cache=False, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def strip_weights(lm: Path) -> dict[str, Any]:
    """Replace the LM's weights.npz by the arrays under REGEN_BYTES; returns how to remake
    each other one: {key: {shape, dtype, mean, std}} for floats, {shape, dtype} for codes."""
    from ecograph.lm.compiled import WEIGHTS_FILE

    regen: dict[str, Any] = {}
    small: dict[str, np.ndarray] = {}
    with np.load(lm / WEIGHTS_FILE) as data:
        for key in data.files:
            a = data[key]
            if a.nbytes < REGEN_BYTES:
                small[key] = a
                continue
            recipe: dict[str, Any] = {"shape": list(a.shape), "dtype": str(a.dtype)}
            if a.dtype.kind == "f":
                recipe |= {"mean": float(a.mean()), "std": float(a.std())}
            regen[key] = recipe
    np.savez(lm / WEIGHTS_FILE, **small)
    return regen


def restore_weights(folder: Path, work: Path) -> Path:
    """A copy of the workload's LM folder with its regenerated weights written back in, and
    the SHA-256 that lm.json and each function's manifest record of weights.npz rewritten."""
    from ecograph.backends.tvm.artifact import file_sha256
    from ecograph.lm.compiled import LM_JSON, WEIGHTS_FILE

    meta = json.loads((folder / "meta.json").read_text())
    dst = work / folder.name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(folder / "lm", dst)
    regen = meta.get("regenerated") or {}
    if regen:
        arrays = dict(np.load(dst / WEIGHTS_FILE))
        for key, recipe in regen.items():
            arrays[key] = remake(key, recipe)
        path = dst / WEIGHTS_FILE
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        digest = file_sha256(path)
        spec = json.loads((dst / LM_JSON).read_text())
        spec["weights"]["sha256"] = digest
        (dst / LM_JSON).write_text(json.dumps(spec, indent=1))
        for function in spec["functions"]:
            manifest_path = dst / function / "manifest.json"
            manifest = json.loads(manifest_path.read_text())
            manifest["params"]["store"]["sha256"] = digest
            manifest_path.write_text(json.dumps(manifest, indent=1))
    return dst


def remake(key: str, recipe: dict[str, Any]) -> np.ndarray:
    if "mean" in recipe:
        return regenerate(key, recipe["shape"], recipe["dtype"], recipe["mean"], recipe["std"])
    count = int(np.prod(recipe["shape"])) * np.dtype(recipe["dtype"]).itemsize
    raw = name_rng(key).bytes(count)
    return np.frombuffer(raw, recipe["dtype"]).reshape(recipe["shape"]).copy()


# -------------------------------------------------------------------------------- run


def run_lm(
    name: str,
    folder: Path,
    work: Path,
    results: Results,
    meter: Any,
    sync: Any,
    args: Any,
    deadline: float,
) -> None:
    """Check and time workload `name` (prepared in `folder`) on this machine's GPU (or CPU)."""
    import torch

    meta = json.loads((folder / "meta.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parsed = parse(name)
    if parsed is None:
        run_check(name, folder, work, results)
        return
    quant = parsed[1]
    runners: dict[str, Any] = {}
    if quant != "torch":
        try:
            runners["ecograph"] = _decode_step(name, folder, work, results, meta, device)
        except Exception as exc:
            results.error(f"{name} ecograph", exc)
    try:
        twin, targs = _torch_decode(meta["config"], device)
        results.set(name, "torch_dtype", str(targs[1].dtype).removeprefix("torch."))
        runners.update(torch_runners(name, twin, targs, deadline, results, sync))
    except Exception as exc:
        results.error(f"{name} torch", exc)
    measure_runners(name, runners, results, meter, sync, args)
    del runners
    if device == "cuda":  # the next slice's model needs the memory
        torch.cuda.empty_cache()


def _decode_step(
    name: str, folder: Path, work: Path, results: Results, meta: dict[str, Any], device: str
) -> Any:
    """decode1 of the slice on its regenerated weights: a runner of one step over a
    CACHE_POSITIONS cache, inputs and outputs on the device."""
    import tvm

    import ecograph
    from ecograph.lm.compiled import read_spec

    t0 = time.perf_counter()
    lm = restore_weights(folder, work)
    fn = ecograph.load(lm / "decode1", device)
    results.set(name, "load_seconds", round(time.perf_counter() - t0, 2))
    spec = read_spec(lm)
    rng = np.random.default_rng(0)
    past = rng.standard_normal(spec.kv_shape(CACHE_POSITIONS, 1), np.float32)
    ids = tvm.runtime.tensor(np.array([[5]], np.int64), fn.device)
    past_t = tvm.runtime.tensor(past.astype(spec.kv_dtype), fn.device)
    logits, _ = fn.run_device([ids, past_t])
    finite = bool(np.isfinite(logits.numpy()).all())
    manifest = json.loads((lm / "decode1" / "manifest.json").read_text())
    read = sum(
        int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize
        for e in manifest["params"]["shared"]
    )
    results.set(
        name,
        "ecograph",
        {
            "quantization": spec.quantization or "none",
            "weights_file_bytes": (spec.weights or {}).get("bytes"),
            "decode1_param_bytes": read,
            "logits_finite": finite,
            # how many of decode1's kernels each schedule rule took (dlight's on CUDA)
            "schedules": dict(Counter(str(r) for r in manifest["schedules"].values())),
        },
    )
    return lambda: fn.run_device([ids, past_t])


def _torch_decode(config: dict[str, Any], device: str) -> tuple[Any, tuple]:
    """The slice's architecture in torch, float16 on a GPU (float32 on CPU), built on the
    device, and one decode step's arguments over a CACHE_POSITIONS cache."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.runners import decode_workload

    dtype = torch.float16 if device == "cuda" else torch.float32
    cfg = LlamaConfig(**config, attn_implementation="sdpa")
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(default)
    module, (ids, keys, values) = decode_workload(model)
    assert keys.shape[3] == CACHE_POSITIONS, keys.shape  # the cache ecograph's step reads
    return module, (ids.to(device), keys.to(device, dtype), values.to(device, dtype))


def run_check(name: str, folder: Path, work: Path, results: Results) -> None:
    """compile_lm's CUDA build against its x86 twin: logits, greedy tokens with the cache on
    the device and on the host, and decode ms/token of each."""
    import ecograph
    from ecograph.api import compare_outputs

    try:
        t0 = time.perf_counter()
        lm = ecograph.load_lm(restore_weights(folder, work))  # the weights travel: a copy
        results.set(name, "load_seconds", round(time.perf_counter() - t0, 2))
        want = dict(np.load(folder / "expected.npz"))
        ids = want["input_ids"]
        new = want["tokens"].shape[1] - ids.shape[1]
        check: dict[str, Any] = compare_outputs({"logits": want["logits"]}, [lm.logits(ids)])
        check["device"] = lm.device
        for where in ("device", "host"):
            runs = [lm.generate(ids, new, stop_at_eos=False, kv_cache=where) for _ in range(5)]
            same = runs[0].new_tokens == want["tokens"][:, ids.shape[1] :]
            check[f"tokens_equal_{where}"] = bool(same.all())
            # of the new tokens, how many agree before the first that differs
            check[f"tokens_agreeing_{where}"] = int(np.cumprod(same[0]).sum())
            rates = sorted(r.stats.decode_tokens_per_s or 0.0 for r in runs)
            check[f"decode_ms_per_token_{where}"] = 1000.0 / rates[len(rates) // 2]
            results.set(name, "check", check)
    except Exception as exc:
        results.error(f"{name} ecograph", exc)


# -------------------------------------------------------------------------- extrapolate


def extrapolate(results: Results) -> None:
    """For each shape and runner with 1- and 2-layer rows: t(32) = t(1) + 31 (t(2) - t(1))
    (and the same for J/call), as workload lm<shape>-<quant>-l32 (extrapolated), beside
    torch's measured 32-layer row where there is one."""
    rows = results.data["workloads"]
    for name in list(rows):
        parsed = _parse_quiet(name)
        if parsed is None or parsed[2] != 1:
            continue
        shape, quant, _ = parsed
        two = rows.get(f"lm{shape}-{quant}-l2", {}).get("timings", {})
        one = rows[name].get("timings", {})
        full = rows.get(f"lm{shape}-torch-l{FULL_LAYERS}", {}).get("timings", {})
        est: dict[str, Any] = {}
        for runner in sorted(set(one) & set(two)):
            row = {"extrapolated": f"t(1) + {FULL_LAYERS - 1} (t(2) - t(1))"}
            for key in ("p50_ms", "joules_per_call"):
                a, b = one[runner].get(key), two[runner].get(key)
                if a is not None and b is not None:
                    row[key] = a + (FULL_LAYERS - 1) * (b - a)
            est[f"{runner} (extrapolated)"] = row
        est.update(full)  # torch's measured rows keep their names: the table's ratios use them
        if est:
            results.set(f"lm{shape}-{quant}-l{FULL_LAYERS} (estimate)", "timings", est)


def _parse_quiet(name: str) -> tuple[str, str, int] | None:
    try:
        return parse(name) if name.startswith("lm") else None
    except ValueError:
        return None
