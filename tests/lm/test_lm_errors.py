"""Bad input to compile_lm, generate, logits and load_lm: typed errors that name the problem
and say what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecograph.errors import ArtifactError, InputError, UnsupportedError, UsageError
from tests.lm.conftest import MAX_SEQ_LEN, VOCAB, torch, transformers


def test_unknown_architecture_is_unsupported() -> None:
    from ecograph import compile_lm

    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, is_decoder=True,
    )  # fmt: skip
    bert = transformers.BertLMHeadModel(cfg)
    with pytest.raises(UnsupportedError, match=r"model_type 'bert'.*llama.*gpt2.*optimize"):
        compile_lm(bert, max_seq_len=16)


def test_not_a_hugging_face_lm_is_a_usage_error() -> None:
    from ecograph import compile_lm

    with pytest.raises(UsageError, match=r"Hugging Face causal LM.*ecograph.optimize"):
        compile_lm(torch.nn.Linear(4, 4))


def test_folder_without_a_config_is_a_usage_error(tmp_path: Path) -> None:
    from ecograph import compile_lm

    with pytest.raises(UsageError, match=r"no config.json"):
        compile_lm(tmp_path)


def test_max_seq_len_past_the_model_positions(gpt2: Any) -> None:
    from ecograph import compile_lm

    with pytest.raises(UsageError, match=r"max_seq_len=100 .* 64 positions.*<= 64"):
        compile_lm(gpt2, max_seq_len=100)


def test_half_precision_model_is_refused_with_the_fix() -> None:
    from ecograph import compile_lm

    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=16)
    half = transformers.GPT2LMHeadModel(cfg).half()
    with pytest.raises(UsageError, match=r"float16 weights.*model.float\(\)"):
        compile_lm(half, max_seq_len=8)


@pytest.mark.parametrize(
    ("quantize", "match"),
    [("int8-static", "calibration data.*'int8'"), ("int3", "not a preset.*'int4'")],
)
def test_quantization_compile_lm_cannot_run(gpt2: Any, quantize: str, match: str) -> None:
    from ecograph import compile_lm

    with pytest.raises(UsageError, match=match):
        compile_lm(gpt2, quantize=quantize, max_seq_len=16)


def test_prompt_longer_than_max_seq_len(gpt2_lm: Any) -> None:
    ids = np.zeros((1, MAX_SEQ_LEN + 1), np.int64)
    with pytest.raises(InputError, match=rf"{MAX_SEQ_LEN + 1} tokens.*max_seq_len={MAX_SEQ_LEN}"):
        gpt2_lm.generate(ids, 1)
    with pytest.raises(InputError, match="in windows"):
        gpt2_lm.logits(ids)


def test_generation_that_would_run_past_max_seq_len(gpt2_lm: Any) -> None:
    ids = np.zeros((1, MAX_SEQ_LEN - 3), np.int64)
    with pytest.raises(InputError, match="past max_seq_len=32; ask for at most 3 new tokens"):
        gpt2_lm.generate(ids, 4)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (np.array([[1, VOCAB]]), "outside the vocabulary"),
        (np.array([[-1, 2]]), "outside the vocabulary"),
        (np.array([[1.0, 2.0]]), "dtype float64"),
        (np.zeros((1, 0), np.int64), "at least one token"),
        (np.zeros((1, 2, 3), np.int64), r"\[T\] or \[batch, T\]"),
    ],
)
def test_bad_token_ids(gpt2_lm: Any, ids: np.ndarray, match: str) -> None:
    """Out-of-vocabulary ids are refused before TVM's gather (which does not bound-check)."""
    with pytest.raises(InputError, match=match):
        gpt2_lm.generate(ids, 2)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"max_new_tokens": 2, "temperature": -1}, "temperature"),
        ({"max_new_tokens": 2, "temperature": 1, "top_k": 0}, "top_k must be at least 1"),
    ],
)
def test_bad_generation_options(gpt2_lm: Any, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        gpt2_lm.generate(np.array([[1, 2]]), **kw)


def test_text_without_a_tokenizer(gpt2_lm: Any) -> None:
    with pytest.raises(UsageError, match=r"no tokenizer.*token ids"):
        gpt2_lm.encode("hello world")


def test_load_lm_on_a_folder_that_is_not_one(tmp_path: Path) -> None:
    from ecograph import load_lm

    with pytest.raises(ArtifactError, match="not a compiled LM"):
        load_lm(tmp_path)
    (tmp_path / "lm.json").write_text(json.dumps({"format": 1, "layers": "two"}))
    with pytest.raises(ArtifactError, match="'vocab_size' must be a positive integer"):
        load_lm(tmp_path)


def test_load_lm_refuses_mixed_builds(gpt2_lm: Any, llama_lm: Any, tmp_path: Path) -> None:
    """A decode artifact from another model reads another weights.npz than the LM's (its
    manifest records that file's SHA-256); functions whose inputs and outputs do not fit
    lm.json (here: lm.json edited to another layer count) are refused too. Both
    ArtifactError."""
    import json
    import shutil

    from ecograph import load_lm

    mixed = gpt2_lm.save(tmp_path / "mixed")
    shutil.rmtree(mixed / "decode")
    shutil.copytree(llama_lm.path / "decode", mixed / "decode")
    with pytest.raises(ArtifactError, match=r"reads weights from a weights\.npz .*mixes builds"):
        load_lm(mixed)
    edited = gpt2_lm.save(tmp_path / "edited")
    data = json.loads((edited / "lm.json").read_text())
    data["layers"] += 1
    (edited / "lm.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"do not fit.*mixes builds"):
        load_lm(edited)
    # a head-major build's lm.json edited to say sequence-first: the shapes do not fit
    data["layers"] -= 1
    data["kv_layout"] = "sequence-first"
    (edited / "lm.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"do not fit.*mixes builds"):
        load_lm(edited)
    data["kv_layout"] = "heads-first"
    (edited / "lm.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"'kv_layout' must be 'sequence-first' or 'head"):
        load_lm(edited)


def test_out_dir_that_is_not_an_lm_folder_is_left_alone(gpt2: Any, tmp_path: Path) -> None:
    from ecograph import compile_lm

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a compiled LM folder"):
        compile_lm(gpt2, max_seq_len=16, out_dir=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


CANNOT_RUN = (
    r"the cuda:sm_90 build cannot run on this machine \(target 'cuda:sm_90' needs a CUDA "
    r"GPU and none is visible here \(nvidia-smi found none\)\); copy .* call ecograph.load_lm"
)


@pytest.mark.slow
def test_a_cuda_build_compiles_here_and_says_where_to_run_it(gpt2: Any, tmp_path: Path) -> None:
    """compile_lm for CUDA on a machine without a GPU: the folder holds the three functions
    and the shared weights (what bench/gpu_lm.py carries to a GPU host); running it here is a
    UsageError naming the target, wherever the cache would live."""
    from ecograph import compile_lm, load_lm
    from ecograph.api import resolve_target, runs_here_reason
    from ecograph.errors import BuildError

    if not runs_here_reason(resolve_target("cuda:sm_90")):
        pytest.skip("a CUDA GPU is visible here; this is the case of a machine without one")
    # int4: the GPU layout of the fused kernels' weights (transpose-dequantize-weights) too
    lm = compile_lm(
        gpt2, target="cuda:sm_90", quantize="int4", max_seq_len=16, out_dir=tmp_path / "lm"
    )
    data = json.loads((tmp_path / "lm" / "lm.json").read_text())
    assert data["target"].startswith("cuda")
    # sequence first: a GPU cache's first S positions must be a compact view
    assert data["kv_layout"] == "sequence-first"
    assert data["functions"] == ["prefill", "decode", "decode1"]
    assert data["weights"]["arrays"] > 0 and data["check"] == {}
    for function in data["functions"]:
        manifest = json.loads((tmp_path / "lm" / function / "manifest.json").read_text())
        names = manifest["params"]["names"]  # the [N, K] codes are new constants, "..._nk"
        assert any(n.endswith("_nk") for n in names), names
    for where in ("auto", "device", "host"):
        with pytest.raises(UsageError, match=CANNOT_RUN):
            lm.generate([1, 2, 3], 2, kv_cache=where)
    with pytest.raises(BuildError, match=r"lm/prefill is a CUDA artifact"):
        load_lm(tmp_path / "lm")


def test_a_head_major_cache_cannot_live_on_a_gpu(gpt2_lm: Any) -> None:
    """A CPU build's head-major cache asked onto a GPU device (its functions reporting one):
    UsageError saying to keep the cache on the host or rebuild for that device, before
    anything runs."""
    import tvm

    from ecograph.lm import CompiledLM

    class OnGpu:
        device = tvm.cuda(0)

    assert gpt2_lm.spec.kv_layout == "head-major"
    lm = CompiledLM(gpt2_lm.path, gpt2_lm.spec, OnGpu(), OnGpu(), OnGpu())
    with pytest.raises(
        UsageError, match=r"head-major .* cannot view in place on cuda.*kv_cache='host'"
    ):
        lm.generate([1, 2, 3], 2, kv_cache="device")
