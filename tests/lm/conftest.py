"""Tiny random-weight causal LMs (Llama with grouped-query attention, GPT-2) and their
compiled builds, shared by tests/lm. Expected values always come from the models in torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 128
MAX_SEQ_LEN = 32


def llama_model() -> Any:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: 2 query heads per kv head
        vocab_size=VOCAB,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def gpt2_model() -> Any:
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=None,
        eos_token_id=None,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def word_tokenizer() -> Any:
    """A whitespace word-level tokenizer over words w0..w126 (+ [UNK] = 127), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")


def hf_greedy(model: Any, ids: Any, new: int, **kw: Any) -> Any:
    """Hugging Face's own greedy continuation (the oracle), as numpy."""
    with torch.no_grad():
        out = model.generate(
            torch.as_tensor(ids), max_new_tokens=new, min_new_tokens=kw.pop("min_new", None),
            do_sample=False, **kw,
        )  # fmt: skip
    return out.numpy()


def hf_logits(model: Any, ids: Any) -> Any:
    """Hugging Face's logits for a whole sequence (the oracle), as numpy."""
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def shared_keys(folder: Path) -> dict[str, str]:
    """One compiled-LM function's params: name -> its key in the LM's weights.npz."""
    params = read_json(folder / "manifest.json")["params"]
    return {n: e["key"] for n, e in zip(params["names"], params["shared"], strict=True)}


@pytest.fixture(scope="session")
def llama() -> Any:
    return llama_model()


@pytest.fixture(scope="session")
def gpt2() -> Any:
    return gpt2_model()


@pytest.fixture(scope="session")
def llama_lm(llama: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The Llama model compiled for x86 (fp32), with the word tokenizer saved beside it."""
    from ecograph import compile_lm

    out: Path = tmp_path_factory.mktemp("llama") / "lm"
    return compile_lm(
        llama, max_seq_len=MAX_SEQ_LEN, tokenizer=word_tokenizer(), out_dir=out, progress=False
    )


@pytest.fixture(scope="session")
def gpt2_lm(gpt2: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The GPT-2 model compiled for x86 (fp32), without a tokenizer."""
    from ecograph import compile_lm

    out: Path = tmp_path_factory.mktemp("gpt2") / "lm"
    return compile_lm(gpt2, max_seq_len=MAX_SEQ_LEN, out_dir=out, progress=False)
