"""bench/gpu_lm.py's parts that need no GPU, on the tiny compiled LMs of tests/lm: the check of
a build against expected logits and tokens (both KV-cache placements), and the weights that
stay here and are regenerated on the GPU host (hashes rewritten, the folder still loads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.lm.conftest import VOCAB

gpu_lm = pytest.importorskip("bench.gpu_lm")


def _check(lm: Any, tmp_path: Path, flip_at: int | None) -> dict[str, Any]:
    from bench.gpu import Results

    folder = tmp_path / f"lm-check-{flip_at}"
    shutil.copytree(lm.path, folder / "lm")
    (folder / "meta.json").write_text(json.dumps({"workload": "lm-check"}))  # as prepare writes
    ids = np.random.default_rng(4).integers(0, VOCAB, (1, 8)).astype(np.int64)
    tokens = lm.generate(ids, 6, stop_at_eos=False).tokens.copy()
    if flip_at is not None:
        tokens[0, 8 + flip_at] = (tokens[0, 8 + flip_at] + 1) % VOCAB
    np.savez(folder / "expected.npz", input_ids=ids, logits=lm.logits(ids), tokens=tokens)
    out = tmp_path / f"out-{flip_at}"
    out.mkdir()
    results = Results(out, {})
    gpu_lm.run_check("lm-check", folder, tmp_path / "work", results)
    assert results.data["errors"] == []
    return results.data["workloads"]["lm-check"]["check"]


def test_the_lm_check_compares_logits_and_counts_agreeing_tokens(
    llama_lm: Any, tmp_path: Path
) -> None:
    same = _check(llama_lm, tmp_path, None)
    assert same["cosine"] == pytest.approx(1.0, abs=1e-12) and same["max_abs_error"] == 0.0
    for where in ("device", "host"):
        assert same[f"tokens_equal_{where}"] is True and same[f"tokens_agreeing_{where}"] == 6
        assert same[f"decode_ms_per_token_{where}"] > 0
    flipped = _check(llama_lm, tmp_path, 3)  # the 4th new token differs
    for where in ("device", "host"):
        assert flipped[f"tokens_equal_{where}"] is False
        assert flipped[f"tokens_agreeing_{where}"] == 3


def test_weights_left_here_are_regenerated_with_the_hashes_they_need(
    gpt2_lm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ecograph
    from ecograph.lm.compiled import WEIGHTS_FILE

    folder = tmp_path / "lmtiny-fp32-l2"
    shutil.copytree(gpt2_lm.path, folder / "lm")
    before = dict(np.load(folder / "lm" / WEIGHTS_FILE))
    monkeypatch.setattr(gpu_lm, "REGEN_BYTES", 16 << 10)
    regen = gpu_lm.strip_weights(folder / "lm")
    big = {k for k, a in before.items() if a.nbytes >= 16 << 10}
    assert set(regen) == big and big and big != set(before)
    assert set(np.load(folder / "lm" / WEIGHTS_FILE).files) == set(before) - big
    (folder / "meta.json").write_text(json.dumps({"regenerated": regen}))

    dst = gpu_lm.restore_weights(folder, tmp_path / "work")
    after = dict(np.load(dst / WEIGHTS_FILE))
    for key, a in before.items():
        b = after[key]
        assert (b.shape, b.dtype) == (a.shape, a.dtype), key
        if key in big:
            assert not np.array_equal(a, b), key
            assert abs(float(b.mean()) - float(a.mean())) < 0.01 + 0.1 * float(a.std())
        else:
            np.testing.assert_array_equal(a, b)
    lm = ecograph.load_lm(dst)  # lm.json's and the manifests' hashes now fit the new file
    assert lm.generate([1, 2, 3], 4).tokens.shape == (1, 7)
    assert ecograph.load(dst / "decode1").manifest["params"]["store"]["file"] == WEIGHTS_FILE


def test_codes_are_remade_as_seeded_random_bytes() -> None:
    recipe = {"shape": [64, 32], "dtype": "uint8"}
    a = gpu_lm.remake("w.codes", recipe)
    assert a.dtype == np.uint8 and a.shape == (64, 32)
    assert np.array_equal(a, gpu_lm.remake("w.codes", recipe))
    assert not np.array_equal(a, gpu_lm.remake("v.codes", recipe))
    assert len(np.unique(a)) > 200  # every byte value, not a constant
