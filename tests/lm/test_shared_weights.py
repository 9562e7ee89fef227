"""A compiled LM stores its weights once: its functions read one weights.npz (each distinct
array once, keyed by content), checked against lm.json's SHA-256 and put on the device once
for all of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.lm.conftest import read_json, shared_keys

pytest.importorskip("tvm")

from ecograph import load_lm
from ecograph.backends.tvm import load
from ecograph.backends.tvm.artifact import open_shared_weights
from ecograph.errors import ArtifactError, UsageError


def test_the_functions_read_one_copy_of_their_weights(llama: Any, llama_lm: Any) -> None:
    """No params file in either function; every weight of the model is in weights.npz once,
    and the product weights (packed in panels) have one key for both functions."""
    folder = llama_lm.path
    for name in ("prefill", "decode"):
        files = read_json(folder / name / "manifest.json")["files"]
        assert set(files) == {"lib.so"}, (name, files)
    prefill, decode = shared_keys(folder / "prefill"), shared_keys(folder / "decode")
    with np.load(folder / "weights.npz") as data:
        stored = {k: data[k] for k in data.files}
    assert set(prefill.values()) | set(decode.values()) == set(stored)
    # every linear layer's weight: the same packed array, stored once
    linears = [n for n, m in llama.named_modules() if isinstance(m, __import__("torch").nn.Linear)]
    assert len(linears) == 2 * 7 + 1  # 2 layers of q, k, v, o, gate, up, down; lm_head
    shared = set(prefill.values()) & set(decode.values())
    linear_bytes = sum(m.weight.numel() * 4 for n, m in llama.named_modules() if n in linears)
    assert sum(stored[k].nbytes for k in shared) >= linear_bytes
    spec = llama_lm.spec.weights
    assert spec["arrays"] == len(stored)
    assert spec["bytes"] == sum(a.nbytes for a in stored.values())
    assert spec["bytes"] <= 0.55 * spec["bytes_before"], spec  # was stored twice


def test_loaded_functions_hold_the_same_tensors(llama_lm: Any) -> None:
    """Resident once: the decode function's weights are the very tensors prefill's are."""
    prefill, decode = shared_keys(llama_lm.path / "prefill"), shared_keys(llama_lm.path / "decode")
    by_key = dict(zip(prefill.values(), llama_lm.prefill._params, strict=True))
    both = [(i, k) for i, k in enumerate(decode.values()) if k in by_key]
    # the embedding table, 4 products a layer (q, k, v and gate, up merged), lm_head
    assert len(both) == 1 + 2 * 4 + 1
    for i, key in both:
        assert llama_lm.decode._params[i] is by_key[key]


def copy_lm(lm: Any, tmp_path: Path) -> Path:
    return Path(shutil.copytree(lm.path, tmp_path / "lm"))


def test_one_function_loads_alone_from_the_file_beside_it(llama_lm: Any, tmp_path: Path) -> None:
    """`ecograph.load` (and so `ecograph run` / `profile`) on one function's folder reads
    weights.npz beside it, checked against the SHA-256 its manifest records; it computes what
    the LM's own function computes. Without the file, or with another one: ArtifactError."""
    ids = np.array([[3, 1, 4, 1, 5]], np.int64)
    _, kv = llama_lm.prefill.run_numpy([ids[:, :-1]])
    want, _ = llama_lm.decode1.run_numpy([ids[:, -1:], kv])
    alone = load(llama_lm.path / "decode1")
    got, _ = alone.run_numpy([ids[:, -1:], kv])
    np.testing.assert_array_equal(got, want)
    folder = copy_lm(llama_lm, tmp_path)
    (folder / "weights.npz").unlink()
    with pytest.raises(ArtifactError, match=r"weights\.npz, which .*decode1.*manifest\.json lists"):
        load(folder / "decode1")


def test_a_weights_file_of_another_build_is_refused(
    llama_lm: Any, gpt2_lm: Any, tmp_path: Path
) -> None:
    other = open_shared_weights(
        gpt2_lm.path / "weights.npz", gpt2_lm.spec.weights["sha256"], gpt2_lm.path, "rebuild"
    )
    with pytest.raises(ArtifactError, match=r"reads weights from a weights\.npz with SHA-256"):
        load(llama_lm.path / "decode", shared=other)


def test_edited_weights_file_is_refused_before_loading(llama_lm: Any, tmp_path: Path) -> None:
    folder = copy_lm(llama_lm, tmp_path)
    with open(folder / "weights.npz", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\0" * 8)
    with pytest.raises(ArtifactError, match=r"weights\.npz: SHA-256 does not match .*lm\.json"):
        load_lm(folder)


def test_missing_weights_file_is_an_artifact_error(llama_lm: Any, tmp_path: Path) -> None:
    folder = copy_lm(llama_lm, tmp_path)
    (folder / "weights.npz").unlink()
    with pytest.raises(ArtifactError, match=r"weights\.npz, which .*lm\.json lists, is missing"):
        load_lm(folder)


def test_symlinked_weights_file_is_refused(llama_lm: Any, tmp_path: Path) -> None:
    folder = copy_lm(llama_lm, tmp_path)
    shutil.move(folder / "weights.npz", tmp_path / "elsewhere.npz")
    (folder / "weights.npz").symlink_to(tmp_path / "elsewhere.npz")
    with pytest.raises(ArtifactError, match="is a symlink"):
        load_lm(folder)


@pytest.mark.parametrize(
    "edit",
    [
        lambda w: w.update(file="../weights.npz"),
        lambda w: w.update(sha256="abc"),
        lambda w: w.update(bytes=-1),
        lambda w: w.pop("arrays"),
    ],
    ids=["file", "sha256", "bytes", "arrays"],
)
def test_malformed_weights_entry_in_lm_json(llama_lm: Any, tmp_path: Path, edit: Any) -> None:
    folder = copy_lm(llama_lm, tmp_path)
    data = json.loads((folder / "lm.json").read_text())
    edit(data["weights"])
    (folder / "lm.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="'weights' must be null or"):
        load_lm(folder)


def test_a_weight_the_file_lacks_or_holds_otherwise_is_named(llama_lm: Any, tmp_path: Path) -> None:
    """A manifest whose shared entry names a key or a shape the file does not hold: the
    folder mixes builds, said with the weight's name, before the library loads."""
    folder = copy_lm(llama_lm, tmp_path)
    shared = open_shared_weights(
        folder / "weights.npz", llama_lm.spec.weights["sha256"], folder / "lm.json", "rebuild"
    )
    path = folder / "decode" / "manifest.json"
    data = json.loads(path.read_text())
    name = data["params"]["names"][0]
    data["params"]["shared"][0]["shape"] = [*data["params"]["shared"][0]["shape"], 1]
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=f"weight '{name}' is .* which holds .*mixes builds"):
        load(folder / "decode", shared=shared)
    data["params"]["shared"][0]["key"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="which does not hold it"):
        load(folder / "decode", shared=shared)


def test_shared_weights_for_an_artifact_with_its_own_are_refused(
    llama_lm: Any, tmp_path: Path
) -> None:
    import ecograph
    from ecograph.ir import GraphBuilder

    b = GraphBuilder("own")
    x = b.input("x", "float32", [1, 4])
    b.output(b.op("MatMul", x, b.constant(np.ones((4, 4), np.float32), "w")))
    art = ecograph.compile(b.graph, "x86", tmp_path / "own", keep_params=True, progress=False)
    shared = open_shared_weights(
        llama_lm.path / "weights.npz",
        llama_lm.spec.weights["sha256"],
        llama_lm.path / "lm.json",
        "rebuild",
    )
    with pytest.raises(UsageError, match="holds its own weights"):
        load(art, shared=shared)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: p.update(file="params.npz"), "names both a file and shared weights"),
        (lambda p: p["shared"].pop(), "params.shared"),
        (lambda p: p["shared"][0].update(shape=[-1]), r"params\.shared\[0\]\.shape"),
        (lambda p: p["shared"][0].pop("key"), r"params\.shared\[0\]"),
        (lambda p: p["store"].update(file="../weights.npz"), "a path leaving"),
        (lambda p: p["store"].update(sha256="0"), r"params\.store\.sha256"),
        (lambda p: p.pop("store"), r"params\.store"),
    ],
    ids=["file-too", "count", "shape", "key", "store-path", "store-hash", "no-store"],
)
def test_malformed_shared_params_entry_names_the_key(
    llama_lm: Any, tmp_path: Path, edit: Any, match: str
) -> None:
    folder = copy_lm(llama_lm, tmp_path)
    path = folder / "prefill" / "manifest.json"
    data = json.loads(path.read_text())
    edit(data["params"])
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=match):
        load_lm(folder)


def _product(name: str, w: np.ndarray, add: bool) -> Any:
    from ecograph.ir import GraphBuilder

    b = GraphBuilder(name)
    x = b.input("x", "float32", ["n", 4])
    y = b.op("MatMul", x, b.constant(w, "w"))
    b.output(b.op("Add", y, y) if add else y)
    return b.graph


def test_share_params_stores_an_equal_array_once_beside_the_folders(tmp_path: Path) -> None:
    """Two artifacts with the same weight: one array in the store, each loads alone (reading
    the store beside it) and computes x @ w; a store elsewhere than beside the folders is a
    UsageError before anything is rewritten."""
    import ecograph
    from ecograph.backends.tvm.build import share_params

    w = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    folders = [
        ecograph.compile(_product(n, w, n == "b"), "x86", tmp_path / n, keep_params=True,
                         progress=False)
        for n in ("a", "b")
    ]  # fmt: skip
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UsageError, match="must sit beside the artifact folders"):
        share_params(folders, tmp_path / "elsewhere" / "w.npz")
    assert (tmp_path / "a" / "params.npz").is_file()
    # the weight as the target packs it (its panels pad N to the vector width: 128 bytes
    # on AVX2, 768 on AVX-512)
    with np.load(tmp_path / "a" / "params.npz") as stored:
        assert len(stored.files) == 1
        packed = stored[stored.files[0]].nbytes
    assert packed >= w.nbytes
    info = share_params(folders, tmp_path / "w.npz")
    assert info is not None and info["arrays"] == 1
    assert info["bytes"] == packed and info["bytes_before"] == 2 * packed
    assert not (tmp_path / "a" / "params.npz").exists()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(load(tmp_path / "a")(x), x @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(load(tmp_path / "b")(x), 2 * (x @ w), rtol=1e-5, atol=1e-5)
