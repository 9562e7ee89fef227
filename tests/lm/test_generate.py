"""compile_lm against Hugging Face: logits at every position, decode steps over the KV cache,
greedy generation token for token, sampling, save / load_lm with a runtime-only TVM, and a
quantized build. Tolerance for fp32 logits: 1e-4 absolute and relative (observed ~2e-7)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.backends.test_tvm_build import _gpu_visible
from tests.lm.conftest import MAX_SEQ_LEN, VOCAB, hf_greedy, hf_logits, shared_keys

ATOL = RTOL = 1e-4
REPO = Path(__file__).resolve().parents[2]


def prompt(batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, length)).astype(np.int64)


@pytest.fixture(params=["llama", "gpt2"])
def pair(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """(HF model, its compiled LM) for each architecture."""
    name = request.param
    return request.getfixturevalue(name), request.getfixturevalue(f"{name}_lm")


def test_logits_match_hf_at_every_position(pair: tuple[Any, Any]) -> None:
    model, lm = pair
    ids = prompt(2, 11)
    np.testing.assert_allclose(lm.logits(ids), hf_logits(model, ids), atol=ATOL, rtol=RTOL)
    # a [T] prompt gives [T, vocab]
    np.testing.assert_allclose(
        lm.logits(ids[0]), hf_logits(model, ids[:1])[0], atol=ATOL, rtol=RTOL
    )


def test_decode_steps_over_the_cache_match_hf(pair: tuple[Any, Any]) -> None:
    """Prefill 5 tokens, then 4 decode steps, each fed the cache as it grows (positions
    5..8), against HF's logits of the whole sequence at those positions."""
    model, lm = pair
    ids = prompt(2, 9, seed=1)
    want = hf_logits(model, ids)
    logits, cache = lm.prefill(ids[:, :5])
    np.testing.assert_allclose(logits, want[:, :5], atol=ATOL, rtol=RTOL)
    # a CPU build: head major, [2 x layers, batch, kv_heads, positions, head_dim]
    assert lm.spec.kv_layout == "head-major"
    assert cache.shape == (2 * lm.spec.layers, 2, lm.spec.kv_heads, 5, lm.spec.head_dim)
    for pos in range(5, 9):
        step, new = lm.decode(ids[:, pos : pos + 1], cache)
        np.testing.assert_allclose(step[:, 0], want[:, pos], atol=ATOL, rtol=RTOL)
        cache = np.concatenate([cache, new], axis=3)
    # decode1, the step for one sequence (what generate runs for a batch of one): row 0
    _, cache = lm.prefill(ids[:1, :5])
    for pos in range(5, 9):
        step, new = lm.decode1(ids[:1, pos : pos + 1], cache)
        np.testing.assert_allclose(step[:, 0], want[:1, pos], atol=ATOL, rtol=RTOL)
        cache = np.concatenate([cache, new], axis=3)


def test_the_decode_functions_read_a_view_of_the_cache_in_place(pair: tuple[Any, Any]) -> None:
    """The decode artifacts' cache input takes strided views (manifest "views", from
    views.view_inputs), so generate hands them the first S positions of its buffer as they
    lie. The positions past the view are NaN here: a kernel that read them, or read the
    view as if compact, would give other logits than the compact copy does."""
    model, lm = pair
    for name in ("decode", "decode1"):
        manifest = json.loads((lm.path / name / "manifest.json").read_text())
        past = [t for t in manifest["inputs"] if t["name"] == "past_kv"]
        assert past and past[0].get("views") is True, manifest["inputs"]
    ids = prompt(1, 6, seed=3)
    _, cache = lm.prefill(ids[:, :5])
    from ecograph.lm.compiled import _aligned_empty

    buf = _aligned_empty(lm.spec.kv_shape(9, 1), np.dtype(np.float32))
    buf[...] = np.nan
    view = buf[:, :, :, :5]
    view[...] = cache
    assert not view.flags.c_contiguous
    for fn in (lm.decode, lm.decode1):
        assert fn.check_inputs([ids[:, 5:6], view])[1] is view  # no copy on the way in
        got, _ = fn.run_numpy([ids[:, 5:6], view])
        want, _ = fn.run_numpy([ids[:, 5:6], np.ascontiguousarray(view)])
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got[:, 0], hf_logits(model, ids)[:, 5], atol=ATOL, rtol=RTOL)


def test_llama_cache_has_grouped_kv_heads(llama_lm: Any) -> None:
    """4 query heads share 2 kv heads: the cache holds 2 heads of 64 / 4 = 16."""
    assert (llama_lm.spec.kv_heads, llama_lm.spec.head_dim, llama_lm.spec.layers) == (2, 16, 2)


@pytest.mark.parametrize(("batch", "length", "new"), [(2, 5, 12), (1, 1, 8)])
def test_greedy_generate_equals_hf_generate(
    pair: tuple[Any, Any], batch: int, length: int, new: int
) -> None:
    """Temperature 0 gives exactly HF's greedy tokens (a 1-token prompt: a 1-position cache)."""
    model, lm = pair
    ids = prompt(batch, length, seed=2)
    result = lm.generate(ids, new)
    np.testing.assert_array_equal(result.tokens, hf_greedy(model, ids, new))
    s = result.stats
    assert (s.batch, s.prompt_tokens, s.new_tokens) == (batch, length, new)
    assert s.prefill_s > 0 and s.time_to_first_token_s >= s.prefill_s
    assert s.decode_tokens_per_s is not None and s.decode_tokens_per_s > 0
    if s.joules_per_token is None:
        assert s.energy_kind == "unavailable" and s.energy_method
    else:
        assert s.energy_kind == "measured"


def test_generation_may_fill_max_seq_len_exactly(gpt2: Any, gpt2_lm: Any) -> None:
    ids = prompt(1, MAX_SEQ_LEN - 4, seed=3)
    result = gpt2_lm.generate(ids, 4)
    np.testing.assert_array_equal(result.tokens, hf_greedy(gpt2, ids, 4))


def test_generate_stops_at_eos_like_hf(gpt2: Any, gpt2_lm: Any) -> None:
    """With an end-of-sequence token, finished rows continue with the pad token and
    generation stops when every row has finished, as in HF's generate."""
    ids = prompt(2, 4, seed=4)
    free = hf_greedy(gpt2, ids, 10)
    eos = int(free[0, 4 + 3])  # the 4th new token of row 0
    want = hf_greedy(gpt2, ids, 10, eos_token_id=eos, pad_token_id=0)
    lm = dataclasses.replace(gpt2_lm.spec, eos_token_ids=(eos,), pad_token_id=0)
    from ecograph.lm import CompiledLM

    with_eos = CompiledLM(gpt2_lm.path, lm, gpt2_lm.prefill, gpt2_lm.decode, gpt2_lm.decode1)
    np.testing.assert_array_equal(with_eos.generate(ids, 10).tokens, want)
    # and stop_at_eos=False runs on as HF does without an eos
    np.testing.assert_array_equal(with_eos.generate(ids, 10, stop_at_eos=False).tokens, free)


def test_sampling_top_k_draws_among_hf_top_k(llama: Any, llama_lm: Any) -> None:
    ids = prompt(1, 4, seed=5)
    sampled = llama_lm.generate(ids, 10, temperature=1.5, top_k=3, seed=7).tokens
    logits = hf_logits(llama, sampled)
    for pos in range(4, sampled.shape[1]):
        top3 = np.argsort(logits[0, pos - 1])[-3:]
        assert sampled[0, pos] in top3, (pos, sampled[0, pos], top3)
    again = llama_lm.generate(ids, 10, temperature=1.5, top_k=3, seed=7).tokens
    np.testing.assert_array_equal(again, sampled)  # a seed makes the draw repeatable
    # top_k=1 leaves one candidate: HF's greedy tokens at any temperature
    one = llama_lm.generate(ids, 10, temperature=3.0, top_k=1, seed=0).tokens
    np.testing.assert_array_equal(one, hf_greedy(llama, ids, 10))


def test_save_then_load_lm_with_runtime_only_tvm(gpt2: Any, gpt2_lm: Any, tmp_path: Path) -> None:
    """load_lm needs only TVM's runtime (TVM_USE_RUNTIME_LIB=1): neither tvm.relax nor
    transformers is imported (TVM's own import pulls in torch when it is installed)."""
    import os

    saved = gpt2_lm.save(tmp_path / "saved")
    ids = prompt(1, 6, seed=6)
    np.save(tmp_path / "ids.npy", ids)
    code = (
        "import sys, numpy as np\n"
        "from ecograph import load_lm\n"
        f"lm = load_lm({str(saved)!r})\n"
        f"out = lm.generate(np.load({str(tmp_path / 'ids.npy')!r}), 7)\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, out.tokens)\n"
        "assert 'tvm.relax' not in sys.modules, 'the TVM compiler was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), hf_greedy(gpt2, ids, 7))


def test_quantized_int8_weight_build_runs_and_stays_close(llama: Any, tmp_path: Path) -> None:
    """Weight-only int8 (per channel): logits within cosine 0.999 of HF's fp32 logits and
    the greedy tokens of a short continuation unchanged on this model."""
    from ecograph import compile_lm

    lm = compile_lm(llama, quantize="int8-weight", max_seq_len=MAX_SEQ_LEN, out_dir=tmp_path / "q")
    assert "int8" in lm.spec.quantization
    ids = prompt(2, 9, seed=8)
    got = lm.logits(ids).reshape(-1).astype(np.float64)
    want = hf_logits(llama, ids).reshape(-1).astype(np.float64)
    cosine = got @ want / (np.linalg.norm(got) * np.linalg.norm(want))
    assert cosine > 0.999, cosine
    assert not np.allclose(got, want, atol=1e-6, rtol=0)  # it is quantized, not the fp32 build
    assert lm.spec.check["cosine"] > 0.999
    np.testing.assert_array_equal(lm.generate(ids, 4).tokens, hf_greedy(llama, ids, 4))


@pytest.mark.slow
def test_quantized_int4_build_runs_within_its_budget(llama: Any, tmp_path: Path) -> None:
    """Weight-only int4 (groups of 128) of a random-weight model is noisier than int8: on
    this model the logits' cosine to HF's fp32 logits is ~0.985, under compile_lm's default
    0.99 budget for quantized builds, so the budget is given."""
    from ecograph import compile_lm

    lm = compile_lm(
        llama, quantize="int4", max_seq_len=MAX_SEQ_LEN, accuracy_budget=0.97, out_dir=tmp_path
    )
    assert lm.spec.quantization.startswith("int4")
    ids = prompt(2, 9, seed=8)
    got = lm.logits(ids).reshape(-1).astype(np.float64)
    want = hf_logits(llama, ids).reshape(-1).astype(np.float64)
    assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) > 0.97
    assert lm.generate(ids, 4).tokens.shape == (2, 13)
    # the 4-bit codes, packed alike for both functions, are stored once (weights.npz)
    both = set(shared_keys(lm.path / "prefill").values())
    both &= set(shared_keys(lm.path / "decode").values())
    with np.load(lm.path / "weights.npz") as data:
        codes = [k for k in data.files if data[k].dtype == np.uint8]
    # q, k, v and gate, up are merged products: 4 a layer, and lm_head
    assert len(codes) == 9 and all(k in both for k in codes)
    assert lm.spec.weights["bytes"] <= 0.55 * lm.spec.weights["bytes_before"]


@pytest.mark.slow
def test_compile_lm_from_a_model_folder_keeps_its_tokenizer(gpt2: Any, tmp_path: Path) -> None:
    """A save_pretrained folder (safetensors + tokenizer): the tokenizer travels with the
    build, so generation takes text."""
    from ecograph import compile_lm, load_lm
    from tests.lm.conftest import word_tokenizer

    folder = tmp_path / "hf"
    gpt2.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    lm = compile_lm(folder, max_seq_len=MAX_SEQ_LEN, out_dir=tmp_path / "lm")
    again = load_lm(lm.save(tmp_path / "copy"))
    ids = again.encode("w3 w9 w27")
    np.testing.assert_array_equal(ids, [[3, 9, 27]])
    want = hf_greedy(gpt2, ids, 5)
    tokens = again.generate(ids, 5).tokens
    np.testing.assert_array_equal(tokens, want)
    assert again.decode_text(tokens) == word_tokenizer().decode(list(want[0]))


def test_every_cache_prefix_is_read_in_place() -> None:
    """The host cache's prefixes buf[:S] are what CompiledModel passes to TVM without a copy
    (runtime._aligned returns the array itself), for any S."""
    from ecograph.backends.tvm.runtime import _aligned
    from ecograph.lm.compiled import _aligned_empty

    buf = _aligned_empty((9, 2, 2, 3, 2, 16), np.dtype(np.float32))
    for s in range(1, 10):
        view = buf[:s]
        assert _aligned(view) is view, s


def test_gptq_calibrates_on_prompts_and_decode_takes_the_prefill_codes(
    llama: Any, tmp_path: Path
) -> None:
    """GPTQ's calibration data are prompts (prefill inputs); the decode graph takes the
    prefill's quantized weights instead of quantizing (and calibrating) again, so a decode
    step gives the logits prefill gives at that position, to float rounding (different codes
    would differ by the quantization noise, ~1e-1 here)."""
    from ecograph import compile_lm

    calib = [{"input_ids": prompt(1, 24, seed=s)} for s in (11, 12)]
    options = {"mode": "weight_only", "dtype": "int4", "granularity": "group:16",
               "algorithm": "gptq", "calibration_data": calib}  # fmt: skip
    lm = compile_lm(llama, quantize=options, max_seq_len=MAX_SEQ_LEN, accuracy_budget=0.9,
                    out_dir=tmp_path)  # fmt: skip
    assert "gptq" in lm.spec.quantization
    ids = prompt(1, 9, seed=8)
    full, _ = lm.prefill.run_numpy([ids])
    _, kv = lm.prefill.run_numpy([ids[:, :-1]])
    for decode in (lm.decode, lm.decode1):
        step, _ = decode.run_numpy([ids[:, -1:], kv])
        np.testing.assert_allclose(step[:, -1], full[:, -1], atol=1e-4, rtol=1e-4)


def test_a_list_of_quantizations_runs_in_order_on_both_functions(
    llama: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mixed precision: int4 for the layers but the output projection (excluded by its module
    name, as torch capture names nodes), then int8-weight for what is left float (the output
    projection and the embedding table), in both functions; decode takes the prefill's codes
    of both, so a decode step gives prefill's logits at that position."""
    from ecograph import compile_lm
    from ecograph.quant.quantize import Quantize

    seen: list[tuple[str, int, int, bool]] = []
    run = Quantize.run

    def spy(self: Quantize, graph: Any) -> Any:
        res = run(self, graph)
        excluded = any("lm_head" in n and "excluded" in n for n in res.notes)
        seen.append((self.dtype, res.stats["quantized"], res.stats["embeddings"], excluded))
        return res

    monkeypatch.setattr(Quantize, "run", spy)
    int4 = {"mode": "weight_only", "dtype": "int4", "granularity": "group:16",
            "exclude": ["*lm_head*"], "embeddings": False}  # fmt: skip
    lm = compile_lm(llama, quantize=[int4, "int8-weight"], max_seq_len=MAX_SEQ_LEN,
                    accuracy_budget=0.9, out_dir=tmp_path)  # fmt: skip
    layers = llama.config.num_hidden_layers * 4  # q|k|v, o, gate|up (fused by default), down
    expected = [("int4", layers, 0, True), ("int8", 1, 1, False)]
    assert seen == expected * 3, seen  # prefill, decode, then decode1
    assert "int8-weight: " in lm.spec.quantization and "; then " in lm.spec.quantization
    ids = prompt(1, 9, seed=8)
    full, _ = lm.prefill.run_numpy([ids])
    _, kv = lm.prefill.run_numpy([ids[:, :-1]])
    for decode in (lm.decode, lm.decode1):
        step, _ = decode.run_numpy([ids[:, -1:], kv])
        np.testing.assert_allclose(step[:, -1], full[:, -1], atol=1e-4, rtol=1e-4)


def test_a_quantization_list_must_name_quantizations(llama: Any, tmp_path: Path) -> None:
    from ecograph import compile_lm
    from ecograph.errors import UsageError

    for bad, match in (([], "names no quantization"), (["int4", None], "each item"),
                       (["int4", "int8-static"], "static")):  # fmt: skip
        with pytest.raises(UsageError, match=match):
            compile_lm(llama, quantize=bad, max_seq_len=MAX_SEQ_LEN, out_dir=tmp_path)


def test_int8_activation_blocks_give_decode_the_logits_prefill_gives(
    llama: Any, tmp_path: Path
) -> None:
    """int4 weights times int8 activations (activations="block", groups of 32: the hidden
    size is 64): each row's activations are quantized on their own, so a decode step (one
    row, the x86 / ARM integer kernel's single-row tile where the host has it) gives the
    logits prefill gives at that position (many rows), to float rounding."""
    from ecograph import compile_lm

    options = {"mode": "weight_only", "dtype": "int4", "granularity": "group:32",
               "activations": "block"}  # fmt: skip
    lm = compile_lm(llama, quantize=options, max_seq_len=MAX_SEQ_LEN, accuracy_budget=0.9,
                    out_dir=tmp_path)  # fmt: skip
    ids = prompt(1, 9, seed=8)
    full, _ = lm.prefill.run_numpy([ids])
    _, kv = lm.prefill.run_numpy([ids[:, :-1]])
    step, _ = lm.decode.run_numpy([ids[:, -1:], kv])
    np.testing.assert_allclose(step[:, -1], full[:, -1], atol=1e-4, rtol=1e-4)
    want = hf_logits(llama, ids).reshape(-1).astype(np.float64)
    got = full.reshape(-1).astype(np.float64)
    assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) > 0.9
    from ecograph.backends.tvm import targets
    from ecograph.backends.tvm.ops.int4_a8 import isa

    if isa(targets.resolve("x86")) is not None:  # compile_lm's default target: the host
        import json

        for function in ("prefill", "decode"):
            manifest = json.loads((lm.path / function / "manifest.json").read_text())
            assert "int4-a8" in manifest["schedules"].values(), (function, manifest["schedules"])


def test_generate_steps_one_sequence_with_decode1(llama: Any, llama_lm: Any) -> None:
    """A batch of one steps through decode1 (the batch-1 function), a larger batch through
    decode; both give HF's greedy tokens (test_greedy_generate_equals_hf_generate)."""
    from ecograph.lm import CompiledLM

    calls = {"decode": 0, "decode1": 0}

    class Counting:
        def __init__(self, name: str, fn: Any) -> None:
            self.name, self.fn, self.device = name, fn, fn.device

        def run_numpy(self, args: Any) -> Any:
            calls[self.name] += 1
            return self.fn.run_numpy(args)

    lm = CompiledLM(
        llama_lm.path,
        llama_lm.spec,
        llama_lm.prefill,
        Counting("decode", llama_lm.decode),
        Counting("decode1", llama_lm.decode1),
    )
    ids = prompt(1, 4, seed=3)
    np.testing.assert_array_equal(lm.generate(ids, 5).tokens, hf_greedy(llama, ids, 5))
    assert calls == {"decode": 0, "decode1": 4}
    lm.generate(prompt(2, 4, seed=3), 5)
    assert calls == {"decode": 4, "decode1": 4}


def test_an_lm_built_without_decode1_still_loads_and_generates(
    llama: Any, llama_lm: Any, tmp_path: Path
) -> None:
    """Folders written before decode1 existed (no 'functions' in lm.json, no decode1/) load,
    and a batch of one steps through decode."""
    import shutil

    from ecograph import load_lm
    from ecograph.errors import ArtifactError

    folder = Path(shutil.copytree(llama_lm.path, tmp_path / "old"))
    shutil.rmtree(folder / "decode1")
    data = json.loads((folder / "lm.json").read_text())
    del data["functions"]
    (folder / "lm.json").write_text(json.dumps(data))
    lm = load_lm(folder)
    assert lm.decode1 is None and lm.spec.functions == ("prefill", "decode")
    ids = prompt(1, 4, seed=5)
    np.testing.assert_array_equal(lm.generate(ids, 5).tokens, hf_greedy(llama, ids, 5))
    data["functions"] = ["prefill", "decode1"]
    (folder / "lm.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="'functions' must list prefill, decode"):
        load_lm(folder)


@pytest.mark.parametrize(("batch", "length", "new"), [(2, 5, 12), (1, 1, 8)])
def test_a_cache_on_the_device_gives_hf_greedy_tokens(
    pair: tuple[Any, Any], batch: int, length: int, new: int
) -> None:
    """kv_cache="device" (what a GPU gets by default) keeps the cache in one TVM tensor and
    steps the functions on views of it (run_device only: the wrapper has no run_numpy)."""
    from ecograph.lm import CompiledLM

    model, lm = pair
    calls: list[str] = []

    class DeviceOnly:
        def __init__(self, name: str, fn: Any) -> None:
            self.name, self.fn, self.device = name, fn, fn.device

        def run_device(self, tensors: Any) -> Any:
            calls.append(self.name)
            return self.fn.run_device(tensors)

    wrapped = CompiledLM(
        lm.path, lm.spec, *(DeviceOnly(n, getattr(lm, n)) for n in ("prefill", "decode", "decode1"))
    )
    ids = prompt(batch, length, seed=2)
    result = wrapped.generate(ids, new, kv_cache="device")
    np.testing.assert_array_equal(result.tokens, hf_greedy(model, ids, new))
    step = "decode1" if batch == 1 else "decode"
    assert calls == ["prefill"] + [step] * (new - 1)
    host = lm.generate(ids, new, kv_cache="host").tokens
    np.testing.assert_array_equal(result.tokens, host)


def test_kv_cache_must_name_a_place(gpt2_lm: Any) -> None:
    from ecograph.errors import UsageError

    with pytest.raises(UsageError, match="kv_cache must be 'auto', 'host' or 'device', got 'gpu'"):
        gpt2_lm.generate(prompt(1, 3), 2, kv_cache="gpu")


def test_run_device_checks_shapes_and_the_device(gpt2_lm: Any) -> None:
    """CompiledModel.run_device: TVM tensors in, TVM tensors out on the model's device; a
    wrong shape or a tensor on another device is an InputError naming the input."""
    import tvm

    from ecograph.errors import InputError

    fn, spec = gpt2_lm.decode1, gpt2_lm.spec
    ids = np.array([[3]], np.int64)
    _, cache = gpt2_lm.prefill(prompt(1, 4))
    dev = fn.device
    logits, kv = fn.run_device([tvm.runtime.tensor(ids, dev), tvm.runtime.tensor(cache, dev)])
    assert isinstance(logits, tvm.runtime.Tensor) and logits.device == dev
    want_logits, want_kv = fn(ids, cache)
    np.testing.assert_array_equal(logits.numpy(), want_logits)
    np.testing.assert_array_equal(kv.numpy(), want_kv)
    wide = tvm.runtime.tensor(np.zeros((1, 2), np.int64), dev)
    with pytest.raises(InputError, match="input_ids"):
        fn.run_device([wide, tvm.runtime.tensor(cache, dev)])
    other = tvm.runtime.tensor(ids, tvm.cpu(1))
    with pytest.raises(InputError, match=r"is on cpu:1 and the model on cpu:0"):
        fn.run_device([other, tvm.runtime.tensor(cache, dev)])
    assert spec.kv_shape(4, 1) == cache.shape


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_visible(), reason="no CUDA GPU visible")
def test_a_cuda_build_generates_hf_greedy_tokens_with_the_cache_on_the_gpu(
    pair: tuple[Any, Any], tmp_path: Path
) -> None:
    """compile_lm for CUDA where a GPU is visible: the compile-time check runs there, and
    greedy generation with the cache on the device (and on the host) gives HF's tokens."""
    from ecograph import compile_lm

    model, _ = pair
    lm = compile_lm(model, target="cuda", max_seq_len=MAX_SEQ_LEN, out_dir=tmp_path / "lm")
    assert lm.device.startswith("cuda") and lm.spec.check["cosine"] > 0.99999
    assert_hf_greedy_tokens(lm, model)


def assert_hf_greedy_tokens(lm: Any, model: Any) -> None:
    """Greedy generation gives HF's tokens: a batch of two with the cache on the device and
    on the host, and one sequence (decode1) with the cache where "auto" puts it."""
    ids = prompt(2, 5, seed=2)
    want = hf_greedy(model, ids, 12)
    for where in ("device", "host"):
        np.testing.assert_array_equal(lm.generate(ids, 12, kv_cache=where).tokens, want)
    one = prompt(1, 3, seed=4)
    np.testing.assert_array_equal(lm.generate(one, 8).tokens, hf_greedy(model, one, 8))


@pytest.mark.slow
def test_a_sequence_first_build_still_generates_hf_greedy_tokens(
    gpt2: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout GPU builds take, and LMs built before head-major (whose lm.json has no
    kv_layout), compiled and run on this CPU: the decode functions take the cache compact
    (no "views"), the kernel reads it sequence first, and greedy tokens are HF's, with the
    cache on the host and on the "device"."""
    import ecograph.lm.capture as capture
    from ecograph import compile_lm, load_lm

    real = capture.capture_lm
    monkeypatch.setattr(capture, "capture_lm", lambda model, head_major: real(model, False))
    lm = compile_lm(gpt2, max_seq_len=MAX_SEQ_LEN, out_dir=tmp_path / "lm", cache=False)
    assert lm.spec.kv_layout == "sequence-first"
    manifest = json.loads((lm.path / "decode" / "manifest.json").read_text())
    assert not any(t.get("views") for t in manifest["inputs"])
    data = json.loads((lm.path / "lm.json").read_text())
    del data["kv_layout"]
    (lm.path / "lm.json").write_text(json.dumps(data))
    old = load_lm(lm.path)
    assert old.spec.kv_layout == "sequence-first"
    assert_hf_greedy_tokens(old, gpt2)
