"""Entropy-coded weights (backends/tvm/codec.py): lossless round trips on every params dtype,
the per-tensor choice, a checked container (malformed or truncated files raise ArtifactError
naming the file and the tensor), and artifacts built, loaded and recoded with each codec."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ecograph.backends.tvm import build, codec
from ecograph.errors import ArtifactError, UsageError

pytest.importorskip("zstandard")
pytest.importorskip("constriction")

RNG = np.random.default_rng(0)


def sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Weights-like values: integer codes in a small skewed range, floats from a normal."""
    dt = codec._dtype(dtype)
    if dtype == "bool":
        return RNG.random(shape) < 0.1
    if dt.kind in "iu":
        codes = np.clip(np.round(RNG.standard_normal(shape) * 3), -8, 7)
        return (codes if dt.kind == "i" else codes + 8).astype(dt)
    return RNG.standard_normal(shape).astype(dt)


def every_dtype() -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for dtype in codec.DTYPES:
        arrays[dtype] = sample(dtype, (64, 96))
        arrays[f"{dtype}/empty"] = sample(dtype, (0, 5))
        arrays[f"{dtype}/scalar"] = sample(dtype, ())
        arrays[f"{dtype}/small"] = sample(dtype, (3,))
    return arrays


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", ["zstd", "ans"])
def test_round_trip_is_bit_exact_on_every_dtype(name: str) -> None:
    arrays = every_dtype()
    arrays["float32/nan-inf-negzero"] = np.array([np.nan, -np.inf, np.inf, -0.0] * 32, np.float32)
    decoded = codec.decode(codec.encode(arrays, name), "mem.ecw")
    assert list(decoded) == list(arrays)
    for key, arr in arrays.items():
        assert same(decoded[key], arr), key
        assert decoded[key].flags.c_contiguous and decoded[key].flags.writeable


def test_ans_is_chosen_for_codes_and_floats_and_every_dtype_decodes_through_it() -> None:
    arrays = {d: sample(d, (256, 256)) for d in codec.DTYPES}
    # mostly-zero non-negative codes (a pruned layer): under one bit a symbol, where zstd's
    # Huffman literals cannot go, and the high byte planes hold one value
    ints = [d for d in codec.DTYPES if codec._dtype(d).kind in "iu"]
    sparse = (RNG.random((128, 128)) < 0.1) * RNG.integers(1, 16, (128, 128))
    arrays.update({f"{d}/codes": sparse.astype(d) for d in ints})
    data = codec.encode(arrays, "ans")
    infos, _ = codec.read_header(data, "mem.ecw")
    chosen = {t.name: t.encoding for t in infos}
    # skewed codes (the int8 / palette case) and float byte planes: ANS beats zstd
    for d in ("bool", "int8", "uint8", "float16", "bfloat16", "float32", "float64"):
        assert chosen[d] == "ans", d
    # wide signed ints (sign-extended bytes across planes) go to zstd, which sees across them
    assert chosen["int32"] == chosen["int64"] == "zstd"
    assert {chosen[f"{d}/codes"] for d in ints} == {"ans"}
    # float32: the sign/exponent plane is coded, the near-uniform mantissa planes stored raw
    f32 = next(t for t in infos if t.name == "float32")
    assert [bool(counts) for _, counts, _ in f32.planes] == [False, False, False, True]
    decoded = codec.decode(data, "mem.ecw")
    assert all(same(decoded[k], a) for k, a in arrays.items())


def test_ans_codes_at_the_entropy_and_never_loses_to_zstd() -> None:
    p = np.r_[np.full(8, 0.1), np.full(8, 0.025)]  # skewed use of 16 palette entries
    entropy = float(-(p * np.log2(p)).sum())
    indices = RNG.choice(16, size=200_000, p=p).astype(np.uint8)
    sparse = ((RNG.random(200_000) < 0.05) * RNG.integers(1, 16, 200_000)).astype(np.int8)
    noise = RNG.integers(0, 256, 4096, np.uint8)
    arrays = {"idx": indices, "sparse": sparse, "noise": noise}
    zstd, ans = codec.encode(arrays, "zstd"), codec.encode(arrays, "ans")
    assert len(ans) <= len(zstd)
    sizes = {t.name: t.size for t in codec.read_header(ans, "mem.ecw")[0]}
    assert sizes["idx"] < 1.01 * 200_000 * entropy / 8  # within 1 % of the entropy
    z_sizes = {t.name: t.size for t in codec.read_header(zstd, "mem.ecw")[0]}
    assert sizes["sparse"] < 0.8 * z_sizes["sparse"]  # under a bit a symbol: ANS wins clearly
    infos, _ = codec.read_header(ans, "mem.ecw")
    assert {t.name: t.encoding for t in infos}["noise"] == "raw"  # incompressible: stored raw


@pytest.mark.parametrize("name", codec.CODECS)
def test_write_params_takes_views_and_scalars(tmp_path: Path, name: str) -> None:
    # a transposed view (a packed weight can be one) and a 0-d array keep their shapes
    arrays = {"t": np.arange(24, dtype=np.float32).reshape(4, 6).T, "s": np.array(3, np.int64)}
    file = codec.write_params(tmp_path, arrays, name)
    data = (tmp_path / file).read_bytes()
    if name == "none":
        with np.load(tmp_path / file, allow_pickle=False) as z:
            back = {k: z[k] for k in z.files}
    else:
        back = codec.decode(data, file)
    assert all(same(back[k], np.ascontiguousarray(a).reshape(a.shape)) for k, a in arrays.items())


def test_encode_refuses_a_dtype_it_does_not_store() -> None:
    with pytest.raises(UsageError, match="weight 'c' has dtype complex64"):
        codec.encode({"c": np.zeros(4, np.complex64)}, "ans")
    with pytest.raises(UsageError, match="weights_codec must be one of none, zstd, ans"):
        codec.encode({}, "lz4")


# ------------------------------------------------------------------ malformed files


def good() -> bytes:
    """An ANS-coded int8 tensor 'w', then a float32 tensor 'f'."""
    w = ((RNG.random((64, 64)) < 0.1) * RNG.integers(-8, 8, (64, 64))).astype(np.int8)
    data = codec.encode({"w": w, "f": sample("float32", (16, 16))}, "ans")
    assert codec.read_header(data, "mem.ecw")[0][0].encoding == "ans"
    return data


def rewrite_header(data: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    _, _, hlen = struct.unpack_from("<4sIQ", data)
    header = json.loads(data[16 : 16 + hlen])
    edit(header)
    new = json.dumps(header).encode()
    return struct.pack("<4sIQ", b"ECGW", 1, len(new)) + new + data[16 + hlen :]


def refused(data: bytes, match: str) -> None:
    with pytest.raises(ArtifactError, match=match) as info:
        codec.decode(data, "/art/params.ecw")
    assert "/art/params.ecw" in str(info.value)


def test_truncated_or_padded_files_are_refused_naming_the_file() -> None:
    data = good()
    refused(data[:10], "too short")
    refused(b"NOPE" + data[4:], "not an .ecw params file")
    refused(data[:4] + struct.pack("<I", 2) + data[8:], "version 2")
    refused(data[:-1], "tensor 'f' ends at payload byte .*truncated")
    refused(data + b"\0", "trailing bytes")
    refused(data[:40], "header of .* does not fit")


def test_malformed_tensor_entries_name_the_tensor() -> None:
    data = good()

    def entry(name: str, key: str, value: object):  # type: ignore[no-untyped-def]
        def edit(h: dict) -> None:  # type: ignore[type-arg]
            next(t for t in h["tensors"] if t["name"] == name)[key] = value

        return rewrite_header(data, edit)

    refused(entry("w", "dtype", "object"), "tensor 'w': dtype 'object'")
    refused(entry("w", "shape", [32, -64]), "tensor 'w': shape")
    refused(entry("w", "shape", [64, 65]), "tensor 'w': raw_size")
    refused(entry("f", "offset", 0), "tensor 'f': offset")
    refused(entry("w", "size", 8), r"tensor 'w': planes hold \d+ bytes \(ANS words and raw .*not 8")
    refused(entry("w", "planes", [{"raw": True}]), r"tensor 'w': planes hold 4096 bytes")
    refused(entry("f", "size", 10**12), "tensor 'f' ends at payload byte .*truncated")
    refused(entry("w", "encoding", "pickle"), "tensor 'w': encoding 'pickle'")
    refused(entry("w", "crc32", 1), "tensor 'w': decoded bytes fail their CRC-32")
    refused(entry("w", "planes", []), "tensor 'w': 'planes' must list 1")
    counts_off = [{"min": 0, "counts": [1, 2], "words": 1}]
    refused(entry("w", "planes", counts_off), "tensor 'w': plane 0: counts add up to 3")
    too_wide = [{"min": 0, "counts": [2048] + [0] * 256, "words": 1}]
    refused(entry("w", "planes", too_wide), "tensor 'w': plane 0: 'min' 0 > 255 or 257 counts")
    refused(rewrite_header(data, lambda h: h["tensors"].append(h["tensors"][0])), "twice|offset")
    refused(rewrite_header(data, lambda h: h.pop("tensors")), "lacks version 1 or 'tensors'")


def test_corrupt_payload_is_caught_by_the_crc_or_the_coder() -> None:
    data = bytearray(good())
    data[-7] ^= 0x5A  # inside the last tensor's coded bytes
    refused(bytes(data), "tensor 'f'")


def test_a_zstd_frame_that_lies_about_its_size_is_refused_before_decompressing() -> None:
    import zstandard

    raw = np.zeros(1024, np.float32)
    data = codec.encode({"z": raw}, "zstd")
    liar = zstandard.ZstdCompressor().compress(bytes(1 << 20))  # 1 MiB frame for a 4 KiB tensor
    _, _, hlen = struct.unpack_from("<4sIQ", data)

    def edit(h: dict) -> None:  # type: ignore[type-arg]
        h["tensors"][0]["size"] = len(liar)

    forged = rewrite_header(data[: 16 + hlen], edit) + liar
    refused(forged, "tensor 'z': not a zstd frame of 4096 bytes")


def test_decoded_total_is_bounded() -> None:
    data = codec.encode({"z": np.zeros((512, 512), np.float32)}, "zstd")
    with pytest.raises(ArtifactError, match="decode to 1048576 bytes, more than the 1000"):
        codec.decode(data, "p.ecw", max_bytes=1000)


# ------------------------------------------------------------------ artifacts

tvm = pytest.importorskip("tvm")


def mlp():  # type: ignore[no-untyped-def]
    from ecograph.ir import GraphBuilder

    b = GraphBuilder("mlp")
    x = b.input("x", "float32", ["n", 64])
    w1 = b.constant(RNG.standard_normal((64, 128)).astype(np.float32), "w1")
    w2 = b.constant(np.round(RNG.standard_normal((128, 8)) * 4).astype(np.float32), "w2")
    h = b.op("Relu", b.op("MatMul", x, w1))
    b.output(b.op("MatMul", h, w2, name="out"))
    return b.graph


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import ecograph

    root = tmp_path_factory.mktemp("codec")
    graph = mlp()
    return {
        name: ecograph.compile(
            graph, "x86", root / name, keep_params=True, weights_codec=name, progress=False
        )
        for name in codec.CODECS
    }


def test_artifacts_with_each_codec_load_and_agree(artifacts: dict[str, Path]) -> None:
    from ecograph.backends.tvm import load, runtime

    x = RNG.standard_normal((3, 64)).astype(np.float32)
    plain = runtime.open_artifact(artifacts["none"]).load_param_arrays()
    outs = {}
    for name, folder in artifacts.items():
        m = json.loads((folder / "manifest.json").read_text())
        params = m["params"]
        if name == "none":
            assert params == {"file": "params.npz", "names": ["w1", "w2"]}  # as before: additive
        else:
            assert params["codec"] == name and params["file"] == "params.ecw"
            # the arrays as the library takes them (packed, padded panels), before coding
            assert params["raw_bytes"] == sum(a.nbytes for a in plain.values())
            assert set(m["files"]) == {"lib.so", "params.ecw"}
        arrays = runtime.open_artifact(folder).load_param_arrays()
        assert all(same(arrays[k], plain[k]) for k in plain)
        outs[name] = load(folder)(x=x)
    assert np.array_equal(outs["zstd"], outs["none"]) and np.array_equal(outs["ans"], outs["none"])


def test_keep_params_false_with_a_codec_is_a_usage_error(tmp_path: Path) -> None:
    import ecograph

    with pytest.raises(UsageError, match=r"keep_params=False puts every weight inside lib\.so"):
        ecograph.compile(mlp(), "x86", tmp_path / "a", keep_params=False, weights_codec="ans")


def test_recode_artifact_rewrites_params_and_hashes(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    from ecograph.backends.tvm import load, runtime

    x = RNG.standard_normal((2, 64)).astype(np.float32)
    want = load(artifacts["none"])(x=x)
    ans = build.recode_artifact(artifacts["none"], tmp_path / "ans", "ans")
    back = build.recode_artifact(ans, tmp_path / "back", "none")
    m = runtime.read_manifest(ans)  # every hash checked
    assert m["params"]["codec"] == "ans" and "params.npz" not in m["files"]
    assert runtime.read_manifest(back)["params"] == {"file": "params.npz", "names": ["w1", "w2"]}
    assert (back / "params.npz").read_bytes() == (artifacts["none"] / "params.npz").read_bytes()
    assert np.array_equal(load(ans)(x=x), want) and np.array_equal(load(back)(x=x), want)
    build.recode_artifact(ans, ans, "zstd")  # in place
    assert runtime.read_manifest(ans)["params"]["codec"] == "zstd"
    assert np.array_equal(load(ans)(x=x), want)


def test_recode_refuses_an_artifact_without_a_params_file(tmp_path: Path) -> None:
    import ecograph

    art = ecograph.compile(mlp(), "x86", tmp_path / "in-lib", keep_params=False, progress=False)
    with pytest.raises(UsageError, match=r"keeps its weights inside lib\.so"):
        build.recode_artifact(art, tmp_path / "out", "ans")


def test_loader_refuses_a_bad_codec_or_a_broken_ecw(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    import hashlib
    import shutil

    from ecograph.backends.tvm import load

    art = Path(shutil.copytree(artifacts["ans"], tmp_path / "art"))
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["params"]["codec"] = "lzma"
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"'params\.codec' is 'lzma'"):
        load(art)
    # a truncated params.ecw whose hash was updated to match: the container check catches it
    data = (art / "params.ecw").read_bytes()[:-5]
    (art / "params.ecw").write_bytes(data)
    manifest["params"]["codec"] = "ans"
    manifest["files"]["params.ecw"] = hashlib.sha256(data).hexdigest()
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"params\.ecw: .*truncated"):
        load(art)


# ------------------------------------------------------------------ CLI and report


def test_cli_compile_takes_weights_codec(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # type: ignore[type-arg]
    from ecograph.backends.tvm import runtime
    from ecograph.cli import build_parser, main

    argv = ["compile", "default", "-o", str(tmp_path), "--target", "x86", "--pipeline", "cleanup"]
    assert main([*argv, "--weights-codec", "zstd", "--json"]) == 0
    capsys.readouterr()
    manifest = runtime.read_manifest(tmp_path / "x86")
    assert manifest["params"]["codec"] == "zstd" and "params.ecw" in manifest["files"]
    assert main([*argv, "--weights-codec", "lz4"]) == 2
    assert "invalid choice: 'lz4'" in capsys.readouterr().err
    parsed = build_parser().parse_args(
        ["optimize", "m.onnx", "-o", "o.onnx", "--weights-codec", "ans"]
    )
    assert parsed.weights_codec == "ans"  # cmd_optimize hands it to optimize()


def test_optimize_report_follows_the_weights_to_the_disk(tmp_path: Path) -> None:
    import ecograph
    from ecograph.models import build_default_model, example_inputs
    from ecograph.report.green import GreenReport

    feeds = example_inputs(batch=1, seq=8)
    result = ecograph.optimize(
        build_default_model(),
        feeds,
        quantize="palette4",
        weights_codec="ans",
        measure=False,
        cache=False,
        out_dir=tmp_path,
    )
    stages = result.report.weights
    assert [s.stage for s in stages] == [
        "fp32, as captured",
        "palettized",
        "entropy-coded on disk (ans)",
    ]
    assert stages[0].bytes == result.report.original.bytes
    assert stages[1].bytes == result.report.optimized.bytes
    assert stages[2].bytes == (result.artifact / "params.ecw").stat().st_size
    assert stages[0].bytes > stages[1].bytes
    table = result.report.table()
    assert "weights, stage by stage:" in table and "entropy-coded on disk (ans)" in table
    assert "<h2>Weights, stage by stage</h2>" in result.report.to_html()
    again = GreenReport.from_dict(json.loads(result.report.to_json()))
    assert again.weights == stages
    # no quantization, no pruning, weights inside lib.so: the captured row only
    plain = ecograph.optimize(
        build_default_model(), feeds, measure=False, cache=False, out_dir=tmp_path / "p"
    )
    assert [s.stage for s in plain.report.weights] == ["fp32, as captured"]


def test_docs_weights_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/weights.md runs as written (its python blocks, in order, in one namespace)."""
    import re

    doc = Path(__file__).resolve().parents[2] / "docs" / "weights.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_weights"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{doc}:block{i}", "exec"), namespace)
    assert (tmp_path / "build" / "doc_mlp-ans" / "params.ecw").is_file()
    assert (tmp_path / "build" / "doc_mlp-npz" / "params.npz").is_file()


def test_weight_stages_list_only_the_stages_that_ran() -> None:
    from ecograph.passes.instrument import PassRecord
    from ecograph.report.green import weight_stages

    original = mlp()  # float32 weights: 64x128 + 128x8
    small = original.copy()
    for v in small.constants.values():  # stands in for pruned-then-int8 weights
        v.const_value = np.zeros((2, 2), np.int8)
        v.type = type(v.type).of(v.const_value)
    fp32 = (64 * 128 + 128 * 8) * 4
    pruned = PassRecord("prune-ffn", True, param_bytes_after=fp32 // 2)
    quant = PassRecord("quantize", True)
    idle = PassRecord("drop-layers", False, param_bytes_after=1)  # ran, changed nothing
    stages = weight_stages(original, small, [idle, pruned, quant], "quantize(mode='weight_only')")
    assert [(s.stage, s.bytes) for s in stages] == [
        ("fp32, as captured", fp32),
        ("pruned", fp32 // 2),
        ("quantized", 8),
    ]
    assert stages[1].detail == "prune-ffn"
    # pruning alone: the pruned row is the final graph; nothing ran: the captured row only
    assert [s.stage for s in weight_stages(original, small, [pruned])] == [
        "fp32, as captured",
        "pruned",
    ]
    assert [s.stage for s in weight_stages(original, original, [idle])] == ["fp32, as captured"]
    assert stages[0].detail == "float32"
    # a model that arrives quantized (int8 weights, float32 scales) is not "fp32"
    arrived = original.copy()
    big = max(arrived.constants.values(), key=lambda v: v.type.nbytes() or 0)
    big.const_value = np.zeros(big.type.static_shape(), np.int8)
    big.type = type(big.type).of(big.const_value)
    (captured,) = weight_stages(arrived, arrived, [idle])
    assert captured.stage == "as captured"
    assert captured.bytes == 64 * 128 + 128 * 8 * 4
    assert captured.detail == "int8 67 %, float32 33 %"
