"""`ecograph generate DIR --prompt ...`: text through the saved tokenizer, token ids without
one, the stats line, and the tokenizer-missing error (exit code 2)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from ecograph.cli import main
from tests.lm.conftest import hf_greedy, word_tokenizer


def test_generate_text_with_the_saved_tokenizer(
    llama: Any, llama_lm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", str(llama_lm.path), "--prompt", "w5 w17 w99", "--max-new-tokens", "6"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    want = hf_greedy(llama, np.array([[5, 17, 99]]), 6)[0]
    assert out[0] == word_tokenizer().decode(list(want))
    assert "time to first token" in out[1] and "tokens/s" in out[1]


def test_generate_token_ids_json(
    gpt2: Any, gpt2_lm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", str(gpt2_lm.path), "--prompt", "3 1 4 1 5", "--max-new-tokens", "5"]
    code = main([*argv, "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    want = hf_greedy(gpt2, np.array([[3, 1, 4, 1, 5]]), 5)[0]
    assert data["prompt_tokens"] + data["new_tokens"] == [int(t) for t in want]
    assert data["stats"]["new_tokens"] == 5 and data["stats"]["decode_tokens_per_s"] > 0
    assert data["stats"]["energy_kind"] in ("measured", "unavailable")


def test_text_prompt_without_a_tokenizer_exits_2(
    gpt2_lm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", str(gpt2_lm.path), "--prompt", "hello world"])
    assert code == 2
    err = capsys.readouterr().err
    assert "has no tokenizer" in err and "token ids like '1 2 3'" in err


def test_prompt_past_max_seq_len_exits_3(gpt2_lm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", str(gpt2_lm.path), "--prompt", "1 2 3", "--max-new-tokens", "40"])
    assert code == 3
    assert "ask for at most 29 new tokens" in capsys.readouterr().err
