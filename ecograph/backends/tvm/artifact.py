"""The artifact folder as untrusted input: its manifest's schema, its files and their hashes.

`open_artifact` checks the manifest's schema, that the folder holds exactly the files the
manifest lists (no symlinks, no path leaving the folder) and the SHA-256 of every one of them,
all before TVM maps anything; a check that fails raises `ArtifactError` and nothing of the
folder is loaded. `Artifact` then hands out the checked files (re-checked right before they are
opened) and the weights.

Its own module because it is the one part of loading that needs neither TVM nor a device: only
the standard library and numpy. `runtime.load`, `rpc.connect` and `build` (which writes what
this reads) all go through it; `runtime` re-exports its public names.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.backends.tvm.codec import CODECS
from ecograph.backends.tvm.inputs import ALIGN
from ecograph.errors import ArtifactError, UsageError
from ecograph.ir import symbolic

MANIFEST = "manifest.json"
LIBRARY = "lib.so"
FORMAT_VERSION = 1  # of manifest.json; build.py writes it
MANIFEST_MAX_BYTES = 64 << 20  # far above any real manifest; a bigger one is refused unread
FAMILIES = ("x86", "arm", "cuda", "other")  # TargetSpec.family
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def is_sha256(value: Any) -> bool:
    """A SHA-256 as manifests and lm.json write it: 64 lowercase hex digits."""
    return isinstance(value, str) and _SHA256.match(value) is not None


_REBUILD = "rebuild the artifact with ecograph.compile"
_PARAMS_NAMES = "the manifest's 'params.names'"


@dataclass(frozen=True)
class _FileId:
    """Which file was hashed: compared again right before TVM or numpy opens it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _FileId:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Artifact:
    """An artifact folder whose manifest passed the schema check and whose every file was
    listed, inside the folder and hashed. `folder` is the path as given, `root` resolved."""

    folder: Path
    root: Path
    manifest: dict[str, Any]
    ids: dict[str, _FileId]

    def path_of(self, name: str) -> Path:
        """The path of listed file `name`, checked to still be the very file that was hashed."""
        path = self.root / name
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise ArtifactError(f"{path} vanished after it was hashed ({exc.strerror})") from exc
        if _FileId.of(st) != self.ids[name]:
            raise ArtifactError(
                f"{path} changed after it was hashed (is something writing to the artifact "
                "folder?); load it again once nothing does"
            )
        return path

    def load_params(self, dev: Any, shared: SharedWeights | None = None) -> list[Any]:
        """The weights as TVM tensors on `dev`, in `params.names` order (none without): from
        the manifest's params file, or, for an artifact whose `params.shared` says they live in
        a file shared with other artifacts, from `shared` (that file, opened once for all of
        them; refused for an artifact with its own weights) or, without it, from the file
        `params.store` names beside the folder, checked against its SHA-256."""
        info = self.manifest.get("params") or {}
        if "shared" in info:
            store = info["store"]
            fix = f"rebuild the folder above {self.folder.name} (ecograph.compile_lm)"
            if shared is None:  # loaded alone: the file beside the folder, checked
                path = self.root.parent / store["file"]
                shared = open_shared_weights(path, store["sha256"], self.root / MANIFEST, fix)
            elif shared.digest != store["sha256"]:
                raise ArtifactError(
                    f"{self.folder} reads weights from a {store['file']} with SHA-256 "
                    f"{store['sha256'][:12]}..., not {shared.path} ({shared.digest[:12]}...): "
                    f"the folder mixes builds; {fix}"
                )
            return shared.tensors(info["names"], info["shared"], dev, self.folder)
        if shared is not None:
            raise UsageError(
                f"{self.folder} holds its own weights; shared weights ({shared.path}) are "
                "only for artifacts whose manifest names them ('params.shared')"
            )
        return weight_tensors(list(self.load_param_arrays().values()), dev)

    def load_param_arrays(self) -> dict[str, np.ndarray]:
        """The weights in the manifest's params file as numpy arrays, in `params.names` order
        (empty without a params file), decoded with the codec the manifest names (absent:
        "none", the plain .npz of older artifacts)."""
        info = self.manifest.get("params") or {}
        if not info.get("file"):
            return {}
        path = self.path_of(info["file"])
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot open it ({exc.strerror})") from exc
        with os.fdopen(fd, "rb") as fh:
            if _FileId.of(os.fstat(fh.fileno())) != self.ids[info["file"]]:
                raise ArtifactError(f"{path} changed after it was hashed; load it again")
            if info.get("codec", "none") != "none":
                from ecograph.backends.tvm.codec import decode

                decoded = decode(fh.read(), path)
                return _named(path, info["names"], decoded)
            return read_npz(fh, path, info["names"])


def read_npz(
    fh: Any,
    path: Path,
    names: list[str] | None,
    listed_by: str = _PARAMS_NAMES,
    fix: str = _REBUILD,
) -> dict[str, np.ndarray]:
    """The arrays `names` (which `listed_by` lists; None: every array) of the .npz open in
    `fh`, read without pickle, in that order, C-contiguous; ArtifactError ending with `fix`
    when `fh` is not such an .npz or lacks any of them."""
    bad = f"{path}: not an .npz of plain arrays"
    try:
        data = np.load(fh, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{bad} ({exc}); {fix}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ArtifactError(f"{bad} (a single .npy array); {fix}")
    with data:
        names = list(data.files) if names is None else names
        missing = [n for n in names if n not in data.files]
        if missing:
            raise ArtifactError(f"{path} lacks arrays {missing}, which {listed_by} lists; {fix}")
        try:
            return {n: np.array(data[n], order="C") for n in names}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise ArtifactError(f"{bad} ({exc}); {fix}") from exc


def _named(path: Path, names: list[str], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`arrays` in the order of the manifest's `names`; one missing is an ArtifactError."""
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ArtifactError(
            f"{path} lacks arrays {missing}, which {_PARAMS_NAMES} lists; {_REBUILD}"
        )
    return {n: arrays[n] for n in names}


class SharedWeights:
    """Weights stored once for several artifacts: one .npz of distinct arrays keyed by
    content (a compiled LM's weights.npz, which its functions read; build.share_params writes
    it), put on a device once for all of them.

    `open_shared_weights` checks the file against its SHA-256 and reads it; `tensors` hands an
    artifact the tensors its `params.shared` entries name, each made on the device the first
    time an artifact asks for it (its numpy copy then dropped), so a weight read by several
    artifacts is resident once. Arrays no loaded artifact reads go with this object."""

    def __init__(self, path: Path, digest: str, arrays: dict[str, np.ndarray]) -> None:
        self.path = path
        self.digest = digest  # the file's SHA-256, as checked
        self._meta = {k: (str(a.dtype), list(a.shape)) for k, a in arrays.items()}
        self._arrays = arrays
        self._tensors: dict[str, Any] = {}
        self._device: Any = None

    def tensors(
        self, names: list[str], entries: list[dict[str, Any]], dev: Any, folder: Path
    ) -> list[Any]:
        """The tensors for one artifact's params (`names`, with their `params.shared`
        entries), on `dev`; ArtifactError when this file lacks one or holds it with another
        dtype or shape, UsageError for a device other than the first caller's."""
        for name, entry in zip(names, entries, strict=True):
            have = self._meta.get(entry["key"])
            want = (entry["dtype"], list(entry["shape"]))
            if have != want:
                held = "does not hold it" if have is None else f"holds {have[0]} {have[1]}"
                raise ArtifactError(
                    f"{folder}: weight {name!r} is {want[0]} {want[1]} under key "
                    f"{entry['key']!r} of {self.path}, which {held}: the folder mixes builds; "
                    "rebuild it with ecograph.compile_lm"
                )
        if self._device is not None and str(dev) != str(self._device):
            raise UsageError(
                f"the weights of {self.path} are on {self._device}; load every artifact that "
                f"shares them on that device, not {dev}"
            )
        self._device = dev
        # each made once, in one buffer for the artifact that first reads it; its numpy copy
        # dropped as soon as it is copied
        keys = list(dict.fromkeys(e["key"] for e in entries if e["key"] not in self._tensors))
        made = weight_tensors([self._arrays.pop(k) for k in keys], dev)
        self._tensors.update(zip(keys, made, strict=True))
        return [self._tensors[entry["key"]] for entry in entries]


CPU_DLPACK = 1  # kDLCPU: a local CPU (an RPC session's devices have other types)
# dtypes exchanged through DLPack both ways (bool and others take TVM's copying path)
DLPACK_DTYPES = frozenset(
    np.dtype(f"{kind}{bits}") for kind in ("int", "uint") for bits in (8, 16, 32, 64)
) | {np.dtype("float16"), np.dtype("float32"), np.dtype("float64")}


def weight_tensors(arrays: list[np.ndarray], dev: Any) -> list[Any]:
    """`arrays` as TVM tensors on `dev`, in order; empties `arrays`, each numpy copy freed
    once made (the peak stays one set of weights plus one array). On the local CPU the tensors
    lie back to back in one buffer (each at a 64-byte boundary) that TVM reads in place: a
    decode step streams its weights in the order the graph reads them; separately allocated
    tensors made SmolLM2's int4-a8 decode step 1.3x slower in a fresh process and 7 % in
    bench/lm_bench.py's (bench/RESULTS.md, 2026-12-06). Elsewhere (CUDA, a remote device),
    and for empty arrays or dtypes numpy cannot hand over, one tensor each."""
    import tvm

    local = dev.dlpack_device_type() == CPU_DLPACK
    packed = [local and a.size > 0 and a.dtype in DLPACK_DTYPES for a in arrays]
    sizes = [-(-a.nbytes // ALIGN) * ALIGN if p else 0 for a, p in zip(arrays, packed, strict=True)]
    raw = np.empty(sum(sizes) + ALIGN, np.uint8)
    at = -raw.ctypes.data % ALIGN
    arrays.reverse()  # popped from the end: first to last
    out = []
    for size, p in zip(sizes, packed, strict=True):
        a = arrays.pop()
        if not p:
            out.append(tvm.runtime.tensor(a, dev))
            continue
        view = raw[at : at + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        out.append(tvm.runtime.from_dlpack(view))
        at += size
    return out


def open_shared_weights(path: Path, digest: str, listed_in: Path, fix: str) -> SharedWeights:
    """The weights file `path` that `listed_in` records with SHA-256 `digest`, checked (a
    regular file, not a symlink, the digest) and read; ArtifactError ending with `fix`."""
    if path.is_symlink():
        raise ArtifactError(f"{path} is a symlink; the folder holds its own files; {fix}")
    if not path.exists():
        raise ArtifactError(f"{path}, which {listed_in} lists, is missing; {fix}")
    file_id = _hash_check(path, digest, listed_in, fix)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot open it ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as fh:
        if _FileId.of(os.fstat(fh.fileno())) != file_id:
            raise ArtifactError(f"{path} changed after it was hashed; load it again")
        return SharedWeights(path, digest, read_npz(fh, path, None, str(listed_in), fix))


def open_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Check an artifact folder without loading anything: its manifest against the schema,
    then that the folder holds exactly the files `files` lists, each a plain regular file (no
    symlink, no path leaving the folder) with the listed SHA-256. Needs only the standard
    library and numpy; raises `ArtifactError` naming the file or key at fault."""
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(
            f"{folder} is not an ecograph artifact (not a folder); give the folder that "
            "ecograph.compile or 'ecograph compile' wrote"
        )
    root = folder.resolve()
    mpath = root / MANIFEST
    manifest = _read_manifest_json(mpath, folder)
    _check_schema(manifest, mpath)
    ids = _check_files(root, manifest["files"], mpath)
    return Artifact(folder, root, manifest, ids)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an artifact folder, after every check of `open_artifact`."""
    return open_artifact(path).manifest


def _read_manifest_json(mpath: Path, folder: Path) -> Any:
    if mpath.is_symlink():  # refused unopened; O_NOFOLLOW below closes the race
        raise ArtifactError(
            f"{mpath} is a symlink; an artifact folder holds its own files (replace the link "
            f"with the file, or {_REBUILD})"
        )
    try:
        fd = os.open(mpath, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ArtifactError(
            f"{folder} is not an ecograph artifact (no {MANIFEST}); give the folder that "
            "ecograph.compile or 'ecograph compile' wrote"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArtifactError(
                f"{mpath} is a symlink; an artifact folder holds its own files (replace the "
                f"link with the file, or {_REBUILD})"
            ) from None
        raise ArtifactError(f"{mpath}: cannot open it ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ArtifactError(f"{mpath} is not a regular file; {_REBUILD}")
        data = fh.read(MANIFEST_MAX_BYTES + 1)
    if len(data) > MANIFEST_MAX_BYTES:
        raise ArtifactError(f"{mpath} is over {MANIFEST_MAX_BYTES >> 20} MiB; {_REBUILD}")
    if not data.strip():
        raise ArtifactError(f"{mpath} is empty; {_REBUILD}")
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{mpath}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            f"{_REBUILD}"
        ) from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8, absurd nesting
        raise ArtifactError(f"{mpath}: not valid JSON ({type(exc).__name__}); {_REBUILD}") from None


def _kind(value: Any) -> str:
    """How JSON would name the type of `value`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _bad(mpath: Path, key: str, want: str, value: Any) -> ArtifactError:
    return ArtifactError(f"{mpath}: '{key}' must be {want}, not {_kind(value)}; {_REBUILD}")


def _get(mpath: Path, obj: dict[str, Any], where: str, key: str) -> Any:
    if key not in obj:
        name = f"{where}.{key}" if where else key
        raise ArtifactError(f"{mpath}: key '{name}' is missing; {_REBUILD}")
    return obj[key]


def _obj(mpath: Path, value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(mpath, key, "an object", value)
    return value


def _str(mpath: Path, value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _bad(mpath, key, "a string", value)
    return value


def _str_list(mpath: Path, value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(mpath, key, "a list of strings", value)
    return value


def _check_schema(m: Any, mpath: Path) -> None:
    """Every key the loader and the model read, with its type (see build._manifest)."""
    if not isinstance(m, dict):
        raise ArtifactError(
            f"{mpath}: the manifest must be a JSON object, not {_kind(m)}; {_REBUILD}"
        )
    fmt = _get(mpath, m, "", "format")
    if isinstance(fmt, bool) or fmt != FORMAT_VERSION:
        raise ArtifactError(
            f"{mpath}: 'format' is {fmt!r}, not {FORMAT_VERSION}; rebuild the artifact with "
            "this version of ecograph"
        )
    target = _obj(mpath, _get(mpath, m, "", "target"), "target")
    _str(mpath, _get(mpath, target, "target", "name"), "target.name")
    family = _str(mpath, _get(mpath, target, "target", "family"), "target.family")
    if family not in FAMILIES:
        raise ArtifactError(
            f"{mpath}: 'target.family' is {family!r}, not one of {', '.join(FAMILIES)}; {_REBUILD}"
        )
    if "features" in target:
        _str_list(mpath, target["features"], "target.features")
    if target.get("cuda_arch") is not None:
        _str(mpath, target["cuda_arch"], "target.cuda_arch")
    if "tvm" in target:
        _obj(mpath, target["tvm"], "target.tvm")
    for key in ("inputs", "outputs"):
        _check_tensors(mpath, _get(mpath, m, "", key), key)
    _check_symbols(mpath, m["inputs"])
    files = _obj(mpath, _get(mpath, m, "", "files"), "files")
    for name, digest in files.items():
        _check_file_name(mpath, name, "files")
        if not is_sha256(digest):
            raise ArtifactError(
                f"{mpath}: 'files.{name}' must be a SHA-256 (64 lowercase hex digits), not "
                f"{digest!r}; {_REBUILD}"
            )
    if LIBRARY not in files:
        raise ArtifactError(f"{mpath}: 'files' does not list {LIBRARY}; {_REBUILD}")
    params = m.get("params")
    if params is not None:
        params = _obj(mpath, params, "params")
        file = _get(mpath, params, "params", "file")
        _str_list(mpath, _get(mpath, params, "params", "names"), "params.names")
        codec = params.get("codec", "none")
        if codec not in CODECS:
            raise ArtifactError(
                f"{mpath}: 'params.codec' is {codec!r}, not one of {', '.join(CODECS)}; {_REBUILD}"
            )
        if "shared" in params:
            _check_shared(mpath, params)
        elif file is not None:
            _check_file_name(mpath, _str(mpath, file, "params.file"), "params.file")
            if file not in files:
                raise ArtifactError(
                    f"{mpath}: 'params.file' {file!r} is not listed in 'files' (so it is not "
                    f"hashed); {_REBUILD}"
                )
    if m.get("schedules") is not None:
        _obj(mpath, m["schedules"], "schedules")


def _check_shared(mpath: Path, params: dict[str, Any]) -> None:
    """`params.shared`: one {key, dtype, shape} per name, and no params file of its own;
    `params.store`: the shared file beside the artifact folder, {file, sha256}."""
    if params["file"] is not None:
        raise ArtifactError(f"{mpath}: 'params' names both a file and shared weights; {_REBUILD}")
    store = _obj(mpath, _get(mpath, params, "params", "store"), "params.store")
    _check_file_name(
        mpath,
        _str(mpath, _get(mpath, store, "params.store", "file"), "params.store.file"),
        "params.store.file",
    )
    digest = _get(mpath, store, "params.store", "sha256")
    if not is_sha256(digest):
        raise _bad(mpath, "params.store.sha256", "a SHA-256 (64 lowercase hex digits)", digest)
    shared = params["shared"]
    if not isinstance(shared, list) or len(shared) != len(params["names"]):
        raise _bad(mpath, "params.shared", "a list with one entry per name", shared)
    for i, entry in enumerate(shared):
        where = f"params.shared[{i}]"
        entry = _obj(mpath, entry, where)
        _str(mpath, _get(mpath, entry, where, "key"), f"{where}.key")
        _str(mpath, _get(mpath, entry, where, "dtype"), f"{where}.dtype")
        shape = _get(mpath, entry, where, "shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _bad(mpath, f"{where}.shape", "a list of sizes >= 0", shape)


def _check_tensors(mpath: Path, value: Any, key: str) -> None:
    if not isinstance(value, list):
        raise _bad(mpath, key, "a list", value)
    names: set[str] = set()
    for i, t in enumerate(value):
        where = f"{key}[{i}]"
        t = _obj(mpath, t, where)
        name = _str(mpath, _get(mpath, t, where, "name"), f"{where}.name")
        if name in names:
            raise ArtifactError(f"{mpath}: '{key}' names {name!r} twice; {_REBUILD}")
        names.add(name)
        _str(mpath, _get(mpath, t, where, "dtype"), f"{where}.dtype")
        shape = _get(mpath, t, where, "shape")
        if not isinstance(shape, list):
            raise _bad(mpath, f"{where}.shape", "a list", shape)
        for d in shape:
            if (
                isinstance(d, bool)
                or not isinstance(d, int | str)
                or (isinstance(d, int) and d < 0)
            ):
                raise ArtifactError(
                    f"{mpath}: '{where}.shape' holds {d!r}; a dim is a size >= 0 or a symbol "
                    f"(string); {_REBUILD}"
                )
            if isinstance(d, str):
                try:
                    symbolic.canonical(d)
                except (ValueError, ZeroDivisionError) as exc:
                    raise ArtifactError(
                        f"{mpath}: '{where}.shape' holds {d!r}, not a symbolic dim ({exc}); "
                        f"{_REBUILD}"
                    ) from None
        if "views" in t and t["views"] is not True:  # views.view_inputs
            raise _bad(mpath, f"{where}.views", "true (or absent)", t["views"])
        if "index_range" in t:  # gather indices: the runtime checks the values (inputs.py)
            info = _obj(mpath, t["index_range"], f"{where}.index_range")
            _str(mpath, _get(mpath, info, f"{where}.index_range", "node"), f"{where}.node")
            bounds = _get(mpath, info, f"{where}.index_range", "range")
            if not (
                isinstance(bounds, list)
                and len(bounds) == 2
                and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
                and bounds[0] < bounds[1]
            ):
                raise _bad(mpath, f"{where}.index_range.range", "[lo, hi) integers", bounds)


def _check_symbols(mpath: Path, inputs: list[dict[str, Any]]) -> None:
    """Every symbol in an input dim expression is some input's whole dim, so the inputs
    bind it (as build's lowering requires)."""
    bare = {
        d for t in inputs for d in t["shape"] if isinstance(d, str) and symbolic.is_symbol_name(d)
    }
    for t in inputs:
        for d in t["shape"]:
            unbound = sorted(symbolic.symbols(d) - bare) if isinstance(d, str) else []
            if unbound:
                raise ArtifactError(
                    f"{mpath}: input {t['name']!r} dim {d!r} uses {unbound}, which no input "
                    f"has as a whole dim; {_REBUILD}"
                )


def _check_file_name(mpath: Path, name: str, key: str) -> None:
    """A listed file is a plain name in the folder: no absolute path, `..` or sub-folder."""
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or ".." in parts:
        raise ArtifactError(
            f"{mpath}: '{key}' names {name!r}, a path leaving the artifact folder; an artifact "
            f"lists only its own files, by plain name; {_REBUILD}"
        )
    if len(parts) != 1 or name in ("", ".") or "\0" in name:
        raise ArtifactError(
            f"{mpath}: '{key}' names {name!r}, not a plain file name in the artifact folder; "
            f"{_REBUILD}"
        )
    if name == MANIFEST:
        raise ArtifactError(f"{mpath}: '{key}' names the manifest itself; {_REBUILD}")


def _check_files(root: Path, files: Mapping[str, str], mpath: Path) -> dict[str, _FileId]:
    """The folder holds exactly the listed files, each a regular file with its SHA-256."""
    with os.scandir(root) as entries:
        present = {e.name: e for e in entries if e.name != MANIFEST}
    for name, entry in sorted(present.items()):
        if entry.is_symlink():
            raise ArtifactError(
                f"{entry.path} is a symlink; an artifact folder holds its own files (a link may "
                f"point outside it): replace the link with the file, or {_REBUILD}"
            )
        if name not in files:
            raise ArtifactError(
                f"{entry.path} is not listed in {mpath} 'files'; an artifact folder holds only "
                "the files its manifest lists and hashes: remove it, or rebuild the artifact"
            )
        if not entry.is_file(follow_symlinks=False):
            raise ArtifactError(f"{entry.path} is not a regular file; {_REBUILD}")
    for name in files:
        if name not in present:
            raise ArtifactError(
                f"{root / name} is listed in {mpath} 'files' but missing from the folder; "
                f"{_REBUILD}"
            )
    return {name: _hash_check(root / name, digest, mpath) for name, digest in files.items()}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (the digests manifests and lm.json hold)."""
    with open(path, "rb") as fh:
        return _stream_sha256(fh)


def _stream_sha256(fh: Any) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _hash_check(path: Path, digest: str, mpath: Path, fix: str = _REBUILD) -> _FileId:
    # Read with plain reads, never mapped: a truncated file is a hash mismatch, not a SIGBUS.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot open it ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path} is not a regular file; {fix}")
        actual = _stream_sha256(fh)
    if actual != digest:
        raise ArtifactError(
            f"{path}: SHA-256 does not match {mpath} (corrupt, truncated or edited); {fix}"
        )
    return _FileId.of(st)
