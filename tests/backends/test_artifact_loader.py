"""The artifact loader treats a folder as untrusted input: the manifest is schema-checked,
every file is listed and hashed before anything is mapped, no path leaves the folder; inputs
that do not fit the model raise InputError, a device the artifact cannot use UsageError."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.backends.tvm_helpers import run_with_runtime_only_tvm

pytest.importorskip("tvm")

import ecograph
from ecograph.backends.tvm import load, runtime
from ecograph.errors import ArtifactError, BuildError, InputError, UsageError
from ecograph.ir import Graph, GraphBuilder, interpret

# ------------------------------------------------------------------ helpers


def two_inputs() -> Graph:
    """x[n, 4] @ w[4, 8] + y[n, 8]: two inputs sharing the symbolic dim n; w goes to
    params.npz (keep_params=True), so the folder holds lib.so and params.npz."""
    b = GraphBuilder("two_inputs")
    x = b.input("x", "float32", ["n", 4])
    y = b.input("y", "float32", ["n", 8])
    w = b.constant(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32), "w")
    b.output(b.op("Add", b.op("MatMul", x, w), y, name="out"))
    return b.graph


def feeds(n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "x": rng.standard_normal((n, 4)).astype(np.float32),
        "y": rng.standard_normal((n, 8)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "two_inputs-x86"
    return ecograph.compile(two_inputs(), "x86", out, keep_params=True)


@pytest.fixture
def art(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built artifact that a test may break."""
    return Path(shutil.copytree(built, tmp_path / "art")).resolve()


@pytest.fixture(scope="module")
def model(built: Path) -> runtime.CompiledModel:
    return load(built)


def edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_opened: list[str] | None = None
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], str | bytes | os.PathLike):
        _opened.append(os.fsdecode(args[0]))


@contextmanager
def recording_opens() -> Iterator[list[str]]:
    """Every path Python opens inside the block (audit hook "open" events: open(), os.open,
    io, numpy's file reads). TVM's own dlopen is C code and is checked through
    /proc/self/maps instead (see `mapped`)."""
    global _opened, _hooked
    if not _hooked:  # an audit hook cannot be removed; install one, record only when asked
        sys.addaudithook(_audit)
        _hooked = True
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def touched(opened: list[str], planted: Path) -> list[str]:
    """The opens that reached `planted`, directly or through a symlink."""
    return [p for p in opened if Path(os.path.realpath(p)) == planted.resolve()]


def mapped(path: Path) -> bool:
    """True if this process has `path` (a shared library) mapped."""
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


def refused(folder: Path, match: str) -> ArtifactError:
    with pytest.raises(ArtifactError, match=match) as info:
        load(folder)
    assert not mapped(folder / "lib.so"), "the library was mapped before the checks failed"
    return info.value


# ------------------------------------------------------------ a good artifact


def test_fresh_artifact_loads_and_runs(art: Path) -> None:
    manifest = json.loads((art / "manifest.json").read_text())
    assert set(manifest["files"]) == {"lib.so", "params.npz"}
    assert runtime.read_manifest(art) == manifest
    with recording_opens() as opened:
        m = load(art)
    inside = {Path(p).name for p in opened if Path(os.path.realpath(p)).parent == art}
    assert inside == {"manifest.json", "lib.so", "params.npz"}
    for n in (1, 5):  # one artifact, two sizes of the symbolic dim
        want = interpret(two_inputs(), feeds(n))["out"]
        np.testing.assert_allclose(m(**feeds(n)), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------- paths and file lists


@pytest.mark.parametrize(
    "name_of",
    [
        lambda decoy: str(decoy),  # absolute
        lambda decoy: f"../{decoy.name}",
        lambda decoy: f"sub/../../{decoy.name}",
        lambda decoy: f"..\\{decoy.name}",
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "backslash-dotdot"],
)
def test_listed_path_leaving_the_folder_is_refused_unopened(
    art: Path, name_of: Callable[[Path], str]
) -> None:
    decoy = art.parent / "decoy.txt"
    decoy.write_text("a file outside the artifact folder\n")
    # The listed hash is right: only the path check stands between the loader and the decoy.
    edit_manifest(art, lambda m: m["files"].__setitem__(name_of(decoy), sha256(decoy)))
    with recording_opens() as opened:
        err = refused(art, "leaving the artifact folder")
    assert touched(opened, decoy) == []
    assert str(art / "manifest.json") in str(err)


def test_listed_name_in_a_subfolder_is_refused(art: Path) -> None:
    (art / "sub").mkdir()
    shutil.copy(art / "lib.so", art / "sub" / "lib.so")
    edit_manifest(art, lambda m: m["files"].__setitem__("sub/lib.so", sha256(art / "lib.so")))
    refused(art, "'sub/lib.so', not a plain file name")


@pytest.mark.parametrize("form", ["dotdot", "absolute"])
def test_params_path_leaving_the_folder_is_refused_unopened(art: Path, form: str) -> None:
    decoy = art.parent / "decoy.npz"
    shutil.copy(art / "params.npz", decoy)  # valid weights: without the check they would load
    name = "../decoy.npz" if form == "dotdot" else str(decoy)

    def point_outside(m: dict[str, Any]) -> None:
        m["params"]["file"] = name
        m["files"][name] = sha256(decoy)

    edit_manifest(art, point_outside)
    with recording_opens() as opened:
        refused(art, "names '[^']*decoy.npz', a path leaving the artifact folder")
    assert touched(opened, decoy) == []


def test_params_file_must_be_listed(art: Path) -> None:
    edit_manifest(art, lambda m: m["params"].__setitem__("file", "lib.so.npz"))
    refused(art, "'params.file' 'lib.so.npz' is not listed in 'files'")


def test_params_names_must_be_in_the_params_file(art: Path) -> None:
    edit_manifest(art, lambda m: m["params"]["names"].append("ghost"))
    refused(art, r"params.npz lacks arrays \['ghost'\]")


@pytest.mark.parametrize("name", ["lib.so", "params.npz", "manifest.json"])
def test_symlink_out_of_the_folder_is_refused_unopened(art: Path, name: str) -> None:
    outside = art.parent / "outside"
    outside.mkdir()
    real = outside / name
    os.replace(art / name, real)  # same bytes, same hash: only the symlink check refuses it
    (art / name).symlink_to(real)
    with recording_opens() as opened:
        refused(art, "is a symlink")
    assert touched(opened, real) == []
    if name == "lib.so":
        assert not mapped(real)


def test_unlisted_file_or_folder_is_refused(art: Path) -> None:
    (art / "extra.bin").write_bytes(b"\0" * 16)
    err = refused(art, "extra.bin is not listed in .*'files'")
    assert "remove it" in str(err)
    (art / "extra.bin").unlink()
    (art / "extra").mkdir()
    refused(art, "extra is not listed")


def test_listed_file_missing_is_refused(art: Path) -> None:
    (art / "params.npz").unlink()
    refused(art, "params.npz is listed in .* but missing from the folder")


def test_files_key_is_required(art: Path) -> None:
    edit_manifest(art, lambda m: m.pop("files"))
    refused(art, "key 'files' is missing")
    edit_manifest(art, lambda m: m.__setitem__("files", {}))
    refused(art, "'files' does not list lib.so")


def test_modified_library_is_refused_before_loading(art: Path) -> None:
    with open(art / "lib.so", "r+b") as f:
        f.seek(100)
        f.write(b"\0\1\2\3")
    refused(art, "lib.so: SHA-256 does not match")


def test_truncated_library_is_an_artifact_error_not_sigbus(art: Path) -> None:
    """A truncated lib.so used to be mapped unchecked (no 'files' key) and kill the process
    with SIGBUS; now both forms are refused by hash or schema before TVM sees the file. Run
    in a child (runtime-only TVM) so a regression fails this test, not the whole session."""
    lib = art / "lib.so"
    lib.write_bytes(lib.read_bytes()[: lib.stat().st_size // 2])
    unlisted = art.parent / "unlisted"
    shutil.copytree(art, unlisted)
    edit_manifest(unlisted, lambda m: m.pop("files"))
    code = (
        "from ecograph.backends.tvm import load\n"
        "from ecograph.errors import ArtifactError\n"
        f"for folder in ({str(art)!r}, {str(unlisted)!r}):\n"
        "    try:\n"
        "        load(folder)\n"
        "    except ArtifactError as exc:\n"
        "        print('refused:', exc)\n"
        "    else:\n"
        "        raise SystemExit('loaded a truncated library')\n"
    )
    out = run_with_runtime_only_tvm(code).stdout.splitlines()
    assert len(out) == 2
    assert "lib.so: SHA-256 does not match" in out[0]
    assert "key 'files' is missing" in out[1]


# ------------------------------------------------------------ manifest schema


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets a key path ("inputs/0/shape") in the manifest."""

    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        obj: Any = m
        for p in parents:
            obj = obj[int(p)] if isinstance(obj, list) else obj[p]
        obj[int(last) if isinstance(obj, list) else last] = value

    return edit


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        obj: Any = m
        for p in parents:
            obj = obj[int(p)] if isinstance(obj, list) else obj[p]
        del obj[last]

    return edit


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"format": 1, "target": ', r"not valid JSON \(Expecting value at line 1"),
        ("", "is empty"),
        ("[1, 2]", "must be a JSON object, not a list"),
        ("{}", "key 'format' is missing"),
        ('"manifest"', "must be a JSON object, not a string"),
    ],
    ids=["truncated-json", "empty", "list", "empty-object", "string"],
)
def test_unreadable_manifest_is_an_artifact_error(art: Path, text: str, match: str) -> None:
    (art / "manifest.json").write_text(text)
    err = refused(art, match)
    assert str(art / "manifest.json") in str(err)
    assert "rebuild" in str(err)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_drop("target"), "key 'target' is missing"),
        (_drop("inputs"), "key 'inputs' is missing"),
        (_drop("outputs"), "key 'outputs' is missing"),
        (_set("target", "x86"), "'target' must be an object, not a string"),
        (_drop("target/family"), "key 'target.family' is missing"),
        (_set("target/family", "tpu"), "'target.family' is 'tpu'"),
        (_set("format", 2), "'format' is 2, not 1"),
        (_set("format", True), "'format' is True"),
        (_set("inputs", {"x": 1}), "'inputs' must be a list, not an object"),
        (_drop("inputs/0/dtype"), r"key 'inputs\[0\].dtype' is missing"),
        (_set("inputs/1/name", "x"), "'inputs' names 'x' twice"),
        (_set("inputs/0/shape", ["n", -1]), r"'inputs\[0\].shape' holds -1"),
        (_set("inputs/0/shape", ["n+", 4]), r"'inputs\[0\].shape' holds 'n\+', not a symbolic"),
        (_set("inputs/1/shape", ["m+1", 8]), r"input 'y' dim 'm\+1' uses \['m'\]"),
        (_set("files/lib.so", "abc"), "'files.lib.so' must be a SHA-256"),
        (_set("files", ["lib.so"]), "'files' must be an object, not a list"),
        (_set("params/names", "w"), "'params.names' must be a list of strings"),
        (_set("params", 3), "'params' must be an object, not a number"),
        (
            _set("inputs/0/index_range", {"range": [3, 1], "node": "g"}),
            r"'inputs\[0\].index_range.range' must be \[lo, hi\) integers",
        ),
        (
            _set("inputs/0/index_range", {"range": [0, 4]}),
            r"key 'inputs\[0\].index_range.node' is missing",
        ),
        (_set("inputs/0/views", "yes"), r"'inputs\[0\].views' must be true \(or absent\)"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_malformed_manifest_names_the_key(
    art: Path, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    edit_manifest(art, edit)
    err = refused(art, match)
    assert str(art / "manifest.json") in str(err)


# ---------------------------------------------------------------- input errors


def _huge(n: int, cols: int) -> np.ndarray:
    # A broadcast view: a few bytes of real memory standing for a petabyte-sized input.
    return np.broadcast_to(np.zeros(1, np.float32), (n, cols))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, f: m(f["x"]), r"missing inputs \['y'\]"),
        (lambda m, f: m(**f, z=f["x"]), "unknown input 'z'"),
        (lambda m, f: m(f["x"], f["y"], x=f["x"]), "input 'x' given twice"),
        (lambda m, f: m(f["x"], f["y"], f["x"]), "3 inputs given"),
        (lambda m, f: m(f["x"].astype(np.float64), f["y"]), "'x' has dtype float64"),
        (lambda m, f: m(f["x"][None], f["y"]), "'x' has rank 3"),
        (lambda m, f: m(f["x"][:, :3], f["y"]), "axis 1 must be 4"),
        (
            lambda m, f: m(f["x"], np.zeros((5, 8), np.float32)),
            r"inputs 'x' and 'y' disagree on dim 'n': 'x' has 3 \(axis 0\), 'y' has 5",
        ),
        (lambda m, f: m(_huge(1 << 46, 4), _huge(1 << 46, 8)), r"input 'x' .* needs 1024.0 TiB"),
        (lambda m, f: m.run_numpy([f["x"]]), r"1 inputs given; the model takes \['x', 'y'\]"),
    ],
    ids=[
        "missing",
        "unknown",
        "twice",
        "too-many",
        "dtype",
        "rank",
        "static-dim",
        "shared-dim",
        "too-large",
        "run_numpy-count",
    ],
)
def test_input_errors_are_input_errors(
    model: runtime.CompiledModel, call: Callable[..., Any], match: str
) -> None:
    with pytest.raises(InputError, match=match) as info:
        call(model, feeds(3))
    assert not isinstance(info.value, BuildError) and info.value.exit_code == 3
    # The model is unharmed: a good call still gives the right answer.
    want = interpret(two_inputs(), feeds(2))["out"]
    np.testing.assert_allclose(model(**feeds(2)), want, rtol=1e-5, atol=1e-5)


def test_dim_expressions_and_repeated_symbols_are_checked() -> None:
    """Checks that need no TVM: `check_inputs` against a manifest's input shapes."""
    manifest = {
        "target": {"name": "x86", "family": "x86"},
        "inputs": [
            {"name": "a", "dtype": "float32", "shape": ["n", "n"]},
            {"name": "b", "dtype": "float32", "shape": ["n+1", 2]},
        ],
        "outputs": [],
    }
    m = runtime.CompiledModel(Path("m"), manifest, vm=None, device=None, params=[])
    a, b = np.zeros((3, 3), np.float32), np.zeros((4, 2), np.float32)
    assert [x.shape for x in m.check_inputs([a, b])] == [(3, 3), (4, 2)]
    with pytest.raises(InputError, match=r"'b' axis 0 is 3; the model expects n\+1 = 4 \(n=3"):
        m.check_inputs([a, np.zeros((3, 2), np.float32)])
    with pytest.raises(InputError, match="'a' has 3 at axis 0 and 2 at axis 1, both dim 'n'"):
        m.check_inputs([np.zeros((3, 2), np.float32), b])


# --------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["cuda:abc", "gpu", "cpu:0", "cuda:", " cuda", "cuda:-1", 0])
def test_device_must_be_cpu_cuda_or_cuda_n(art: Path, device: Any) -> None:
    with pytest.raises(UsageError, match="device must be cpu, cuda or cuda:N") as info:
        load(art, device=device)
    assert info.value.exit_code == 2


def test_cuda_device_on_an_x86_artifact_is_a_usage_error(art: Path) -> None:
    import tvm

    for device in ("cuda", "cuda:1", tvm.cuda(0)):
        with pytest.raises(UsageError, match=r"device 'cuda(:[01])?' cannot run .*'x86'"):
            load(art, device=device)
    assert not mapped(art / "lib.so")
    for device in ("cpu", tvm.cpu(0)):  # the right kind loads
        np.testing.assert_allclose(
            load(art, device=device)(**feeds(2)),
            interpret(two_inputs(), feeds(2))["out"],
            rtol=1e-5,
            atol=1e-5,
        )


def test_cpu_device_on_a_cuda_artifact_is_a_usage_error(art: Path) -> None:
    edit_manifest(art, _set("target/family", "cuda"))  # checked before any CUDA setup
    with pytest.raises(UsageError, match=r"device 'cpu' cannot run .*\(cuda, runs on cuda\)"):
        load(art, device="cpu")


def test_token_ids_past_the_table_are_input_errors(tmp_path: Path) -> None:
    """An input read as Gather indices (token ids into an embedding) is checked for values
    inside the indexed axis before the call: the compiled gather reads memory at the index
    unchecked (an id past the table would read outside it, or crash the process)."""
    b = GraphBuilder()
    ids = b.input("ids", "int64", ["batch", 3])
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    b.output(b.op("Gather", b.constant(table, "table"), ids, axis=0, name="embed"))
    graph = b.graph
    model = load(ecograph.compile(graph, "x86", tmp_path / "emb", progress=False))
    ok = np.array([[0, 9, -10]], np.int64)  # negative ids count from the end, as in ONNX
    np.testing.assert_array_equal(
        model(ids=ok), interpret(graph, {"ids": ok})[graph.outputs[0].name]
    )
    for bad, value in (([[0, 10, 1]], 10), ([[0, 1, -11]], -11)):
        with pytest.raises(InputError, match=rf"'ids' holds {value} at index \[0, \d\]; it "
                           r"indexes node embed \(Gather\) on axis 0 of table, size 10: values "
                           r"must be in \[-10, 10\)"):  # fmt: skip
            model(ids=np.array(bad, np.int64))
    model(ids=ok)  # the same shape again (the shape check is cached; the values are not)
    with pytest.raises(InputError, match="holds 12"):
        model(ids=np.array([[12, 0, 0]], np.int64))


def test_cpu_weights_lie_back_to_back_in_one_aligned_buffer() -> None:
    """artifact.weight_tensors on the CPU: each weight at a 64-byte boundary right after the
    previous one (sizes rounded up to 64), values, dtypes and shapes kept; an empty array and
    a bool one (no DLPack exchange) take TVM's own copy; the caller's list is emptied."""
    import tvm

    from ecograph.backends.tvm.artifact import weight_tensors

    rng = np.random.default_rng(5)
    arrays = [
        rng.standard_normal((3, 5)).astype(np.float32),  # 60 bytes
        np.arange(7, dtype=np.int8),
        np.zeros((0, 4), np.float32),
        np.array([True, False, True]),
        rng.standard_normal(40).astype(np.float16),  # 80 bytes
        rng.integers(-9, 9, (2, 3)).astype(np.int64),
    ]
    want = [a.copy() for a in arrays]
    got = weight_tensors(arrays, tvm.cpu())
    assert arrays == []
    for have, ref in zip(got, want, strict=True):
        arr = have.numpy()
        assert arr.dtype == ref.dtype and arr.shape == ref.shape
        np.testing.assert_array_equal(arr, ref)
    addresses = [np.from_dlpack(got[i]).ctypes.data for i in (0, 1, 4, 5)]
    assert all(a % 64 == 0 for a in addresses), addresses
    assert np.diff(addresses).tolist() == [64, 64, 128], addresses
