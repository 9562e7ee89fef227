"""Lossless entropy coding of an artifact's stored weights (its params file), decoded at load.

Codecs (`weights_codec` of `ecograph.compile` / `optimize`, `--weights-codec` on the CLI):
- "none": `params.npz`, plain numpy arrays (what artifacts always held);
- "zstd": `params.ecw`, each tensor's bytes zstd-compressed (the baseline to beat);
- "ans":  `params.ecw`, each tensor coded the smallest of three ways, measured per tensor:
  byte planes under an order-0 ANS coder (constriction; plane j holds byte j of every element,
  each plane with its own histogram: the integer codes of quantized weights and palette
  indices use few symbols, so this is where entropy coding wins), zstd, or raw bytes.

The `.ecw` container, version 1 (all numbers little-endian):

    b"ECGW" | u32 version (1) | u64 header length H | header: H bytes of UTF-8 JSON | payload

The header is {"format": "ecograph-weights", "version": 1, "tensors": [...]}, one entry per
tensor in payload order: name, dtype (numpy name), shape, encoding ("raw" | "zstd" | "ans"),
offset and size of its bytes in the payload (tensors are laid end to end, nothing between or
after), raw_size (elements x item size) and crc32 of the raw bytes. An "ans" entry adds
`planes`: per byte plane either {"raw": true} (its bytes stored as they are: a plane ANS would
shrink by under PLANE_MIN_GAIN) or `min`, the byte value symbol 0 stands for (symbol k is byte
(min + k) mod 256, so small signed codes take few symbols), the symbol `counts` (the model both
coder and decoder build) and `words`, the plane's count of 32-bit ANS words; the planes' bytes
follow one another in the tensor's payload.
Decoded bytes are the array's little-endian C-order bytes; nothing is pickled.

The file is untrusted input: `decode` checks every header field, size and bound before it
decodes, and the CRC after, and raises `ArtifactError` naming the file and the tensor.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from ecograph.errors import ArtifactError, UsageError

CODECS = ("none", "zstd", "ans")
NPZ_FILE = "params.npz"  # codec "none"
ECW_FILE = "params.ecw"  # codecs "zstd" and "ans"
MAGIC = b"ECGW"
VERSION = 1
FORMAT = "ecograph-weights"
HEADER_MAX_BYTES = 64 << 20  # far above any real header; a bigger one is refused unread
# zstd's default level. On MiniLM's weights level 19 gains 4-8 % on int4 codes and palette
# indices and nothing on int8 codes or float32, for about 100 times the encoding time (tens
# of seconds a build); "ans" beats level 19 in every case (docs/weights.md).
ZSTD_LEVEL = 3
SMALL_BYTES = 64  # tensors this small are stored raw: no coding pays for its header
# A byte plane is ANS-coded only when that saves this share of its bytes; otherwise it is
# stored raw: float32's three low bytes are near-uniform (~7.97 bits), and decoding them
# costs time for a fraction of a percent.
PLANE_MIN_GAIN = 0.02
_PREFIX = struct.Struct("<4sIQ")
_REBUILD = "rebuild the artifact with ecograph.compile (or rewrite it with build.recode_artifact)"

# The dtypes a params file may hold (numpy names); bfloat16 comes from ml_dtypes.
DTYPES = (
    "bool",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
)


def params_file(codec: str) -> str:
    """The params file name an artifact holds for `codec`."""
    check_codec(codec)
    return NPZ_FILE if codec == "none" else ECW_FILE


def check_codec(codec: Any) -> str:
    """`codec` itself when it is one of CODECS, else UsageError saying which there are."""
    if codec not in CODECS:
        raise UsageError(f"weights_codec must be one of {', '.join(CODECS)}, not {codec!r}")
    return codec


def _dtype(name: str) -> np.dtype[Any]:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# ------------------------------------------------------------------ encoding


def encode(arrays: Mapping[str, np.ndarray], codec: str) -> bytes:
    """The `.ecw` file for `arrays` (name -> array, kept in order) under codec "zstd" or
    "ans"; every tensor gets the smallest encoding the codec allows (module doc)."""
    check_codec(codec)
    if codec == "none":
        raise UsageError('codec "none" is a plain .npz (np.savez), not an .ecw file')
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    offset = 0
    for name, arr in arrays.items():
        entry, blob = _encode_tensor(name, np.asarray(arr), codec)
        entry["offset"] = offset
        entry["size"] = len(blob)
        offset += len(blob)
        entries.append(entry)
        blobs.append(blob)
    header = json.dumps(
        {"format": FORMAT, "version": VERSION, "tensors": entries},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return b"".join([_PREFIX.pack(MAGIC, VERSION, len(header)), header, *blobs])


def _encode_tensor(name: str, arr: np.ndarray, codec: str) -> tuple[dict[str, Any], bytes]:
    dtype = "bfloat16" if arr.dtype.name == "bfloat16" else arr.dtype.name
    if dtype not in DTYPES:
        raise UsageError(
            f"weight {name!r} has dtype {arr.dtype}, which the weights codec does not store "
            f"(it stores {', '.join(DTYPES)}); use weights_codec='none'"
        )
    if arr.dtype.byteorder == ">":  # stored little-endian, as every target reads it
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    raw = np.ascontiguousarray(arr).tobytes()
    entry: dict[str, Any] = {
        "name": name,
        "dtype": dtype,
        "shape": [int(d) for d in arr.shape],
        "raw_size": len(raw),
        "crc32": zlib.crc32(raw),
    }
    # Candidates in order of simplicity; the smallest wins, a tie goes to the simpler one.
    best: tuple[str, bytes, dict[str, Any]] = ("raw", raw, {})
    if len(raw) >= SMALL_BYTES:
        z = _zstd_compress(raw)
        if len(z) < len(best[1]):
            best = ("zstd", z, {})
        if codec == "ans":
            blob, planes = _ans_encode(raw, arr.dtype.itemsize)
            # the counts tables travel in the header: they count against ANS
            tables = len(json.dumps(planes, separators=(",", ":")))
            if len(blob) + tables < len(best[1]):
                best = ("ans", blob, {"planes": planes})
    encoding, blob, more = best
    entry["encoding"] = encoding
    entry.update(more)
    return entry, blob


def _zstd_compress(raw: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(raw)


def _ans_encode(raw: bytes, itemsize: int) -> tuple[bytes, list[dict[str, Any]]]:
    categorical, ans_coder = _constriction()
    planes_in = np.frombuffer(raw, np.uint8).reshape(-1, itemsize)
    n = len(planes_in)
    planes: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for j in range(itemsize):
        plane = planes_in[:, j]
        histogram = np.bincount(plane, minlength=256)
        if _entropy_bytes(histogram) > (1 - PLANE_MIN_GAIN) * n:
            planes.append({"raw": True})  # near-uniform bytes (low mantissa bits)
            chunks.append(plane.tobytes())
            continue
        lo = _start(histogram)
        symbols = (plane - np.uint8(lo)).astype(np.int32)  # wraps mod 256
        counts = np.roll(histogram, -lo)[: int(symbols.max()) + 1]
        coder = ans_coder()
        if len(counts) > 1:  # one symbol only: nothing to code, the counts say it all
            coder.encode_reverse(symbols, _model(categorical, counts))
        w = np.asarray(coder.get_compressed(), dtype="<u4")
        planes.append({"min": lo, "counts": [int(c) for c in counts], "words": int(w.size)})
        chunks.append(w.tobytes())
    return b"".join(chunks), planes


def _entropy_bytes(histogram: np.ndarray) -> float:
    """Bytes an order-0 coder needs for the symbols counted in `histogram` (ANS comes
    within a fraction of a percent of it)."""
    counts = histogram[histogram > 0].astype(np.float64)
    return float(-(counts * np.log2(counts / counts.sum())).sum() / 8)


def _start(histogram: np.ndarray) -> int:
    """The byte value that starts the shortest circular run (mod 256) holding every byte
    present: small signed codes (-8..7 are bytes 248..255, 0..7) then need 16 counts, not 256."""
    present = np.flatnonzero(histogram)
    gaps = np.diff(np.r_[present, present[0] + 256])  # from each present value to the next
    return int(present[(int(np.argmax(gaps)) + 1) % len(present)])


def _constriction() -> tuple[Any, Any]:
    """constriction's Categorical model and AnsCoder (its submodules are attributes of one
    extension module, not importable packages)."""
    import constriction

    stream: Any = getattr(constriction, "stream")  # noqa: B009 (no type stubs for it)
    return stream.model.Categorical, stream.stack.AnsCoder


def _model(categorical: Any, counts: np.ndarray) -> Any:
    # Encoder and decoder build the model from the same integer counts, so both quantize the
    # same float64 probabilities to the same fixed-point model (perfect=False is deterministic).
    return categorical(np.asarray(counts, np.float64), perfect=False)


# ------------------------------------------------------------------ decoding


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry, after its checks."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    offset: int
    size: int
    raw_size: int
    crc32: int
    planes: tuple[tuple[int, tuple[int, ...], int], ...] = ()  # (min, counts, words)


def read_header(data: bytes, path: str | os.PathLike[str]) -> tuple[list[TensorInfo], int]:
    """The checked tensor entries of the `.ecw` file `data` and where its payload starts.
    `path` only names the file in errors."""
    where = str(path)
    if len(data) < _PREFIX.size:
        raise ArtifactError(
            f"{where}: {len(data)} bytes, too short for an .ecw params file; {_REBUILD}"
        )
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError(f"{where}: not an .ecw params file (magic {magic!r}); {_REBUILD}")
    if version != VERSION:
        raise ArtifactError(
            f"{where}: .ecw version {version}, this ecograph reads version {VERSION}; {_REBUILD}"
        )
    start = _PREFIX.size + hlen
    if hlen > HEADER_MAX_BYTES or start > len(data):
        raise ArtifactError(
            f"{where}: header of {hlen} bytes does not fit in the file's {len(data)} bytes "
            f"(truncated?); {_REBUILD}"
        )
    try:
        header = json.loads(data[_PREFIX.size : start])
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{where}: header is not valid JSON ({exc}); {_REBUILD}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArtifactError(f"{where}: header is not an {FORMAT!r} object; {_REBUILD}")
    if header.get("version") != VERSION or not isinstance(header.get("tensors"), list):
        raise ArtifactError(f"{where}: header lacks version {VERSION} or 'tensors'; {_REBUILD}")
    infos: list[TensorInfo] = []
    names: set[str] = set()
    expected = 0
    for i, t in enumerate(header["tensors"]):
        info = _check_entry(where, i, t, expected)
        if info.name in names:
            raise ArtifactError(f"{where}: tensor {info.name!r} appears twice; {_REBUILD}")
        names.add(info.name)
        expected += info.size
        infos.append(info)
    have = len(data) - start
    cut = next((t for t in infos if t.offset + t.size > have), None)
    if cut is not None:
        raise ArtifactError(
            f"{where}: tensor {cut.name!r} ends at payload byte {cut.offset + cut.size}, the "
            f"file has {have} (truncated); {_REBUILD}"
        )
    if expected != have:
        raise ArtifactError(
            f"{where}: the tensors take {expected} payload bytes, the file has {have} "
            f"(trailing bytes); {_REBUILD}"
        )
    return infos, start


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(where: str, i: int, t: Any, offset: int) -> TensorInfo:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise ArtifactError(f"{where}: tensor entry {i} is not an object with a name; {_REBUILD}")
    name = t["name"]

    def bad(what: str) -> ArtifactError:
        return ArtifactError(f"{where}: tensor {name!r}: {what}; {_REBUILD}")

    dtype = t.get("dtype")
    if dtype not in DTYPES:
        raise bad(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(_int(d) for d in shape):
        raise bad(f"shape {shape!r} is not a list of sizes >= 0")
    for key in ("offset", "size", "raw_size", "crc32"):
        if not _int(t.get(key)):
            raise bad(f"'{key}' is {t.get(key)!r}, not an integer >= 0")
    raw_size = int(np.prod(shape, dtype=object)) * _dtype(dtype).itemsize
    if t["raw_size"] != raw_size:
        raise bad(f"raw_size {t['raw_size']} is not shape {shape} x {dtype} = {raw_size} bytes")
    if t["offset"] != offset:
        raise bad(f"offset {t['offset']}, expected {offset} (tensors lie end to end)")
    encoding = t.get("encoding")
    if encoding not in ("raw", "zstd", "ans"):
        raise bad(f"encoding {encoding!r} is not raw, zstd or ans")
    if encoding == "raw" and t["size"] != raw_size:
        raise bad(f"stored raw in {t['size']} bytes, but it has {raw_size}")
    planes: list[tuple[int, tuple[int, ...], int]] = []
    if encoding == "ans":
        planes = _check_planes(t.get("planes"), raw_size, _dtype(dtype).itemsize, t["size"], bad)
    return TensorInfo(
        name, dtype, tuple(shape), encoding, offset, t["size"], raw_size, t["crc32"], tuple(planes)
    )


def _check_planes(
    planes: Any, raw_size: int, itemsize: int, size: int, bad: Any
) -> list[tuple[int, tuple[int, ...], int]]:
    if not isinstance(planes, list) or len(planes) != itemsize:
        raise bad(f"'planes' must list {itemsize} byte planes")
    n = raw_size // itemsize
    out = []
    for j, p in enumerate(planes):
        if not isinstance(p, dict):
            raise bad(f"plane {j} is not an object")
        if p == {"raw": True}:
            out.append((0, (), 0))  # no counts: the plane's n bytes, stored as they are
            continue
        lo, counts, words = p.get("min"), p.get("counts"), p.get("words")
        if not _int(lo) or not _int(words) or not isinstance(counts, list) or not counts:
            raise bad(f"plane {j} lacks an integer 'min', 'words' or a 'counts' list")
        if lo > 255 or len(counts) > 256 or not all(_int(c) for c in counts):
            raise bad(f"plane {j}: 'min' {lo} > 255 or {len(counts)} counts (256 at most)")
        if sum(counts) != n:
            raise bad(f"plane {j}: counts add up to {sum(counts)}, not the {n} elements")
        out.append((lo, tuple(counts), words))
    held = sum(4 * w if counts else n for _, counts, w in out)
    if held != size:
        raise bad(f"planes hold {held} bytes (ANS words and raw planes), not {size}")
    return out


def decode(
    data: bytes, path: str | os.PathLike[str], *, max_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """The arrays of the `.ecw` file `data` (name -> array, in file order), bit for bit as
    encoded. `max_bytes` bounds the decoded total (default: this machine's memory)."""
    infos, start = read_header(data, path)
    limit = _memory_bytes() if max_bytes is None else max_bytes
    total = sum(t.raw_size for t in infos)
    if total > limit:
        raise ArtifactError(
            f"{path}: the weights decode to {total} bytes, more than the {limit} allowed "
            f"(this machine's memory); {_REBUILD}"
        )
    out: dict[str, np.ndarray] = {}
    view = memoryview(data)
    for t in infos:
        blob = view[start + t.offset : start + t.offset + t.size]
        raw = _decode_tensor(t, blob, path)
        if zlib.crc32(raw) != t.crc32:
            raise ArtifactError(
                f"{path}: tensor {t.name!r}: decoded bytes fail their CRC-32 (corrupt file); "
                f"{_REBUILD}"
            )
        # little-endian bytes read in place: x86 and ARM hosts, the only ones TVM targets here
        out[t.name] = np.frombuffer(raw, dtype=_dtype(t.dtype)).reshape(t.shape).copy()
    return out


def _decode_tensor(t: TensorInfo, blob: memoryview, path: Any) -> bytes:
    if t.encoding == "raw":
        return bytes(blob)
    if t.encoding == "zstd":
        return _zstd_decompress(t, bytes(blob), path)
    return _ans_decode(t, blob, path)


def _zstd_decompress(t: TensorInfo, blob: bytes, path: Any) -> bytes:
    import zstandard

    bad = f"{path}: tensor {t.name!r}: not a zstd frame of {t.raw_size} bytes"
    try:
        # The frame states its own size, and the decompressor trusts it over any limit.
        if zstandard.frame_content_size(blob) != t.raw_size:
            raise ArtifactError(f"{bad} (the frame says otherwise); {_REBUILD}")
        raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=t.raw_size)
    except zstandard.ZstdError as exc:
        raise ArtifactError(f"{bad} ({exc}); {_REBUILD}") from None
    if len(raw) != t.raw_size:
        raise ArtifactError(f"{bad} (it gave {len(raw)}); {_REBUILD}")
    return raw


def _ans_decode(t: TensorInfo, blob: memoryview, path: Any) -> bytes:
    try:
        categorical, ans_coder = _constriction()
    except ImportError:
        raise ArtifactError(
            f"{path}: tensor {t.name!r} is ANS-coded and the 'constriction' package is not "
            "installed; pip install constriction (see constraints.txt for the version)"
        ) from None
    itemsize = _dtype(t.dtype).itemsize
    n = t.raw_size // itemsize
    out = np.empty((itemsize, n), np.uint8)  # plane by plane, interleaved at the end
    pos = 0
    for j, (lo, counts, words) in enumerate(t.planes):
        if not counts:  # a raw plane
            out[j] = np.frombuffer(blob[pos : pos + n], np.uint8)
            pos += n
            continue
        w = np.frombuffer(blob[pos : pos + 4 * words], dtype="<u4").astype(np.uint32)
        pos += 4 * words
        if len(counts) == 1:
            if words:
                raise ArtifactError(
                    f"{path}: tensor {t.name!r}: plane {j} holds one byte value yet has ANS "
                    f"words; {_REBUILD}"
                )
            out[j] = lo
            continue
        try:
            coder = ans_coder(w)
            symbols = coder.decode(_model(categorical, np.asarray(counts)), n)
            empty = coder.is_empty()
        except (ValueError, RuntimeError, AssertionError) as exc:
            raise ArtifactError(
                f"{path}: tensor {t.name!r}: plane {j} does not decode ({exc}); {_REBUILD}"
            ) from None
        if not empty:
            raise ArtifactError(
                f"{path}: tensor {t.name!r}: plane {j} has ANS words left over after its "
                f"{n} symbols (corrupt file); {_REBUILD}"
            )
        out[j] = np.asarray(symbols).astype(np.uint8) + np.uint8(lo)  # wraps mod 256
    return out.T.tobytes()  # C order of the transpose: element by element


def _memory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------ files


def write_params(folder: Path, params: Mapping[str, np.ndarray], codec: str) -> str:
    """Write `params` into `folder` as the params file of `codec`; returns its file name.
    "none" is np.savez (no pickle; ZIP entries get fixed timestamps, so it is deterministic),
    the others an `.ecw` container."""
    name = params_file(codec)
    # a copy only where an array is not C-contiguous (numpy 2 refuses copy=False there)
    arrays = {k: np.asarray(v, order="C") for k, v in params.items()}
    with open(folder / name, "wb") as f:
        if codec == "none":
            np.savez(f, allow_pickle=False, **arrays)
        else:
            f.write(encode(arrays, codec))
    return name


def params_entry(
    file: str | None, names: list[str], codec: str, arrays: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """The manifest's "params" entry. "codec" and "raw_bytes" (the arrays' bytes before
    coding) appear only for a coded file, so an uncoded artifact's manifest is as before."""
    entry: dict[str, Any] = {"file": file, "names": names}
    if file is not None and codec != "none":
        entry["codec"] = codec
        entry["raw_bytes"] = int(sum(np.asarray(a).nbytes for a in arrays.values()))
    return entry
