"""Load an artifact folder and run it: numpy (or torch) in, numpy (or torch) out.

This module needs only TVM's runtime: it works with `TVM_USE_RUNTIME_LIB=1` (no compiler
library) and never imports `tvm.relax`. For CUDA artifacts built on a machine without a GPU,
the library carries CUDA source; before loading one, `load` registers a
`tvm_callback_cuda_compile` that compiles it with nvcc or, without nvcc, with NVRTC.

The folder is untrusted input. `open_artifact` checks the manifest's schema, that the folder
holds exactly the files the manifest lists (no symlinks, no path leaving the folder) and the
SHA-256 of every one of them, all before TVM maps anything; a check that fails raises
`ArtifactError` and nothing of the folder is loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.backends.tvm.codec import CODECS
from ecograph.backends.tvm.threads import policy as thread_policy
from ecograph.errors import ArtifactError, BuildError, InputError, UsageError
from ecograph.ir import symbolic

MANIFEST = "manifest.json"
LIBRARY = "lib.so"
FORMAT_VERSION = 1  # of manifest.json; build.py writes it
MANIFEST_MAX_BYTES = 64 << 20  # far above any real manifest; a bigger one is refused unread
FAMILIES = ("x86", "arm", "cuda", "other")  # TargetSpec.family
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_REBUILD = "rebuild the artifact with ecograph.compile"


# ------------------------------------------------------------------ manifest


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

    def load_params(self, dev: Any) -> list[Any]:
        """The weights in the manifest's params file as TVM tensors on `dev` (none without)."""
        import tvm

        return [tvm.runtime.tensor(a, dev) for a in self.load_param_arrays().values()]

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
            bad = f"{path}: not an .npz of plain arrays"
            try:
                data = np.load(fh, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise ArtifactError(f"{bad} ({exc}); {_REBUILD}") from exc
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ArtifactError(f"{bad} (a single .npy array); {_REBUILD}")
            with data:
                missing = [n for n in info["names"] if n not in data.files]
                if missing:
                    raise ArtifactError(
                        f"{path} lacks arrays {missing}, which the manifest's 'params.names' "
                        f"lists; {_REBUILD}"
                    )
                try:
                    return {n: np.array(data[n], order="C") for n in info["names"]}
                except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                    raise ArtifactError(f"{bad} ({exc}); {_REBUILD}") from exc


def _named(path: Path, names: list[str], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`arrays` in the order of the manifest's `names`; one missing is an ArtifactError."""
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ArtifactError(
            f"{path} lacks arrays {missing}, which the manifest's 'params.names' lists; {_REBUILD}"
        )
    return {n: arrays[n] for n in names}


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
        if not isinstance(digest, str) or not _SHA256.match(digest):
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
        if file is not None:
            _check_file_name(mpath, _str(mpath, file, "params.file"), "params.file")
            if file not in files:
                raise ArtifactError(
                    f"{mpath}: 'params.file' {file!r} is not listed in 'files' (so it is not "
                    f"hashed); {_REBUILD}"
                )
    if m.get("schedules") is not None:
        _obj(mpath, m["schedules"], "schedules")


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


def _hash_check(path: Path, digest: str, mpath: Path) -> _FileId:
    # Read with plain reads, never mapped: a truncated file is a hash mismatch, not a SIGBUS.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot open it ({exc.strerror})") from exc
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path} is not a regular file; {_REBUILD}")
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != digest:
        raise ArtifactError(
            f"{path}: SHA-256 does not match {mpath} (corrupt, truncated or edited); {_REBUILD}"
        )
    return _FileId.of(st)


# ------------------------------------------------------------------- devices

_DEVICE_HELP = "device must be cpu, cuda or cuda:N (or a TVM device)"
_KDL_CPU, _KDL_CUDA = 1, 2  # DLPack device types


@dataclass(frozen=True)
class _DeviceRequest:
    kind: str  # "cpu" | "cuda"
    index: int
    text: str  # as the caller spelled it, for messages


def _parse_device(spec: Any) -> _DeviceRequest | None:
    """The device `load` was asked for, or None for the artifact's own."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec == "cpu":
            return _DeviceRequest("cpu", 0, spec)
        if spec == "cuda":
            return _DeviceRequest("cuda", 0, spec)
        m = re.fullmatch(r"cuda:([0-9]+)", spec)
        if m:
            return _DeviceRequest("cuda", int(m.group(1)), spec)
        raise UsageError(f"{_DEVICE_HELP}, got {spec!r}")
    kind = getattr(spec, "dlpack_device_type", None)
    if callable(kind):
        code = kind()
        if code in (_KDL_CPU, _KDL_CUDA):
            name = "cpu" if code == _KDL_CPU else "cuda"
            return _DeviceRequest(name, int(spec.index), f"{name}:{spec.index}")
        raise UsageError(f"{_DEVICE_HELP}; TVM device {spec} is neither")
    raise UsageError(f"{_DEVICE_HELP}, got {spec!r} ({type(spec).__name__})")


def _check_device_fits(
    want: _DeviceRequest | None, folder: Path, target: Mapping[str, Any]
) -> None:
    if want is None:
        return
    needs = "cuda" if target["family"] == "cuda" else "cpu"
    if want.kind == needs:
        return
    fix = "device='cuda' or 'cuda:N'" if needs == "cuda" else "device='cpu'"
    raise UsageError(
        f"device {want.text!r} cannot run {folder}: it was built for target "
        f"{target['name']!r} ({target['family']}, runs on {needs}); give {fix}, leave device "
        "unset, or compile the model for the device you want"
    )


def _device(want: _DeviceRequest | None, family: str) -> Any:
    import tvm

    if want is None:
        return tvm.cuda(0) if family == "cuda" else tvm.cpu(0)
    return tvm.cuda(want.index) if want.kind == "cuda" else tvm.cpu(want.index)


# ------------------------------------------------------------ CUDA on load


def _cuda_arch(manifest: Mapping[str, Any]) -> str:
    target = manifest.get("target", {})
    return str(target.get("cuda_arch") or target.get("tvm", {}).get("arch", "sm_80"))


def _load_runtime_cuda() -> None:
    """Make the CUDA device API available when TVM was loaded runtime-only."""
    import tvm

    lib_dir = Path(tvm.__file__).parent / "lib"
    so = lib_dir / "libtvm_runtime_cuda.so"
    if so.is_file():
        try:
            ctypes.CDLL(str(so), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise BuildError(
                f"cannot load {so} ({exc}); is the CUDA driver (libcuda.so) installed?"
            ) from exc


def nvcc_compile(code: str, arch: str) -> bytes:
    """Compile CUDA source to a fatbin with nvcc."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    with tempfile.TemporaryDirectory(prefix="ecograph-nvcc-") as tmp:
        src = Path(tmp) / "kernels.cu"
        out = Path(tmp) / "kernels.fatbin"
        src.write_text(code)
        proc = subprocess.run(
            [nvcc, "-O3", "-fatbin", f"-arch={arch}", "-o", str(out), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildError(f"nvcc failed for {arch}:\n{proc.stderr[-4000:]}")
        return out.read_bytes()


def nvrtc_compile(code: str, arch: str) -> bytes:
    """Compile CUDA source to a cubin with NVRTC (libnvrtc.so through ctypes)."""
    name = ctypes.util.find_library("nvrtc")
    candidates = [name] if name else []
    candidates += ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"]
    lib = None
    for cand in candidates:
        try:
            lib = ctypes.CDLL(cand)
            break
        except OSError:
            continue
    if lib is None:
        raise BuildError("neither nvcc nor NVRTC (libnvrtc.so) was found to compile CUDA code")
    prog = ctypes.c_void_p()
    src = code.encode()
    _nvrtc_check(
        lib, lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"kernels.cu", 0, None, None), "create"
    )
    opts = [f"--gpu-architecture={arch}".encode(), b"-default-device", b"-std=c++17"]
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if Path(cuda_home, "include").is_dir():
        opts.append(f"-I{cuda_home}/include".encode())
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    if rc != 0:
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        raise BuildError(f"NVRTC failed for {arch}:\n{log.value.decode(errors='replace')[-4000:]}")
    size = ctypes.c_size_t()
    _nvrtc_check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "cubin size")
    buf = ctypes.create_string_buffer(size.value)
    _nvrtc_check(lib, lib.nvrtcGetCUBIN(prog, buf), "cubin")
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return buf.raw


def _nvrtc_check(lib: Any, rc: int, what: str) -> None:
    if rc != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise BuildError(f"NVRTC {what} failed: {lib.nvrtcGetErrorString(rc).decode()}")


def register_cuda_compiler(arch: str) -> str:
    """Register `tvm_callback_cuda_compile` for `arch`; returns "nvcc" or "nvrtc"."""
    import tvm_ffi

    use_nvcc = shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()
    which = "nvcc" if use_nvcc else "nvrtc"

    def callback(code: str, *_: Any) -> bytes:
        return nvcc_compile(code, arch) if use_nvcc else nvrtc_compile(code, arch)

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", callback, override=True)
    return which


# ------------------------------------------------------------------- the model


class CompiledModel:
    """A loaded artifact. Call it with inputs (positional or by name); get arrays back.

    One output returns one array, several return a tuple in manifest order. Torch tensors in
    give torch tensors out. Inputs that do not fit the manifest raise `InputError` before
    anything runs.
    """

    def __init__(
        self, path: Path, manifest: dict[str, Any], vm: Any, device: Any, params: list[Any]
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.device = device
        self._vm = vm
        self._params = params
        self.input_names = [t["name"] for t in manifest["inputs"]]
        self.output_names = [t["name"] for t in manifest["outputs"]]
        self._on_cpu = device is not None and device.dlpack_device_type() == _CPU_DLPACK
        self._memory = _memory_bytes()
        # (dtype, shape) of every input of the last call that passed the checks: a call with
        # the same signature passes them too (they depend on nothing else), so it skips them.
        self._checked: tuple[tuple[Any, tuple[int, ...]], ...] | None = None
        self._checked_gpu: tuple[_TensorMeta, ...] | None = None

    def __repr__(self) -> str:
        return f"<CompiledModel {self.path} target={self.manifest['target']['name']}>"

    @property
    def vm(self) -> Any:
        """The TVM Relax VirtualMachine running the model (the profiler instruments it)."""
        return self._vm

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        feeds = self._bind(args, kwargs)
        if not self._on_cpu and feeds and all(_on_gpu(v) for v in feeds):
            return self.run_torch_on_device(feeds)
        as_torch = any(_is_torch(v) for v in feeds)
        arrays = [_to_numpy(name, v) for name, v in zip(self.input_names, feeds, strict=True)]
        return self.run_numpy(arrays, as_torch=as_torch)

    def run_numpy(self, arrays: Sequence[np.ndarray], *, as_torch: bool = False) -> Any:
        """Run on numpy arrays in input order, after the checks of `check_inputs`."""
        arrays = self.check_inputs(arrays)
        tensors = [self._to_device(n, a) for n, a in zip(self.input_names, arrays, strict=True)]
        if self._on_cpu:
            with thread_policy().run(self.path):  # the thread count follows the machine
                out = self._vm["main"](*tensors, *self._params)
            results = [_host_copy(o) for o in _flatten(out)]
        else:
            out = self._vm["main"](*tensors, *self._params)
            results = [o.numpy() for o in _flatten(out)]
        if as_torch:
            import torch

            results = [torch.from_numpy(r) for r in results]
        return results[0] if len(results) == 1 else tuple(results)

    def run_torch_on_device(self, tensors: Sequence[Any]) -> Any:
        """Run on torch CUDA tensors (in input order) without host copies: inputs are handed
        to TVM through DLPack and the outputs come back as torch CUDA tensors.

        The kernels run on the device's default stream; work queued on another torch stream
        is waited for first. Raises `InputError` for tensors that do not fit the manifest or
        sit on another GPU than the model's."""
        import torch
        import tvm

        specs = self._check_count(tensors)
        dev_id = int(self.device.index)
        metas = []
        for name, t in zip(self.input_names, tensors, strict=True):
            if t.device.index != dev_id:
                raise InputError(
                    f"input {name!r} is on {t.device} and the model on cuda:{dev_id}; move it "
                    f"with .to('cuda:{dev_id}')"
                )
            metas.append(_TensorMeta(tuple(t.shape), _numpy_dtype_of(name, t)))
        if tuple(metas) != self._checked_gpu:
            _check_shapes(specs, metas)
            self._checked_gpu = tuple(metas)
        stream = torch.cuda.current_stream(dev_id)
        if stream != torch.cuda.default_stream(dev_id):
            stream.synchronize()
        ins = []
        for t in tensors:
            t = t.detach().contiguous()
            if t.data_ptr() % _ALIGN:
                t = t.clone()
            ins.append(t)
        out = self._vm["main"](*[tvm.runtime.from_dlpack(t) for t in ins], *self._params)
        taken = {t.data_ptr() for t in ins}
        results = []
        for o in _flatten(out):
            r = torch.from_dlpack(o)
            results.append(r.clone() if r.data_ptr() in taken else r)  # never alias an input
        return results[0] if len(results) == 1 else tuple(results)

    def _check_count(self, arrays: Sequence[Any]) -> list[dict[str, Any]]:
        """The manifest's input specs, after checking that `arrays` has one per input."""
        specs = self.manifest["inputs"]
        if len(arrays) != len(specs):
            raise InputError(f"{len(arrays)} inputs given; the model takes {self.input_names}")
        return specs

    def check_inputs(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`arrays` (in input order) checked against the manifest's inputs, C-contiguous.

        Raises `InputError` for a wrong count, dtype, rank or static dim, two inputs that
        disagree on a shared symbolic dim (TVM would fail inside the VM), a dim that breaks
        its expression ("seq+1"), or an input larger than this machine's memory."""
        specs = self._check_count(arrays)
        signature = tuple((a.dtype, a.shape) for a in arrays)
        if signature == self._checked:
            return [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]
        _check_shapes(specs, arrays)
        limit = self._memory
        out = []
        for spec, arr in zip(specs, arrays, strict=True):
            need = int(arr.size) * arr.itemsize
            if need > limit:
                raise InputError(
                    f"input {spec['name']!r} of shape {list(arr.shape)} ({arr.dtype}) needs "
                    f"{_fmt_bytes(need)}, more than this machine's {_fmt_bytes(limit)} of "
                    "memory; give a smaller input"
                )
            try:
                contiguous = np.ascontiguousarray(arr).reshape(arr.shape)
            except MemoryError as exc:
                raise InputError(
                    f"input {spec['name']!r} of shape {list(arr.shape)} ({arr.dtype}, "
                    f"{_fmt_bytes(need)}) does not fit in memory; give a smaller input"
                ) from exc
            out.append(contiguous)
        self._checked = signature
        return out

    def _to_device(self, name: str, arr: np.ndarray) -> Any:
        import tvm

        try:
            if self._on_cpu and arr.size and arr.dtype in _DLPACK_DTYPES:
                # The kernels read the array in place (TVM wants 64-byte aligned data; others
                # are copied once into an aligned buffer): ~0.5 us instead of the ~17 us of
                # tvm.runtime.tensor's allocation and copy on every call.
                return tvm.runtime.from_dlpack(_aligned(arr))
            return tvm.runtime.tensor(arr, self.device)
        except Exception as exc:  # allocation on the device failed: the input is too large
            raise InputError(
                f"input {name!r} of shape {list(arr.shape)} ({arr.dtype}, "
                f"{_fmt_bytes(arr.nbytes)}) could not be placed on {self.device}: {exc}"
            ) from exc

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
            kwargs = dict(args[0])
            args = ()
        if len(args) > len(self.input_names):
            raise InputError(f"{len(args)} inputs given; the model takes {self.input_names}")
        feeds: dict[str, Any] = dict(zip(self.input_names, args, strict=False))
        for k, v in kwargs.items():
            if k not in self.input_names:
                raise InputError(f"unknown input {k!r}; the model takes {self.input_names}")
            if k in feeds:
                raise InputError(f"input {k!r} given twice (by position and by name)")
            feeds[k] = v
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"missing inputs {missing}; the model takes {self.input_names}")
        return [feeds[n] for n in self.input_names]


_CPU_DLPACK = 1  # kDLCPU
_ALIGN = 64  # TVM's kAllocAlignment: kernels may assume it
# dtypes exchanged through DLPack both ways (bool and others take TVM's copying path)
_DLPACK_DTYPES = frozenset(
    np.dtype(f"{kind}{bits}") for kind in ("int", "uint") for bits in (8, 16, 32, 64)
) | {np.dtype("float16"), np.dtype("float32"), np.dtype("float64")}


def _aligned(arr: np.ndarray) -> np.ndarray:
    """`arr` itself when TVM can read it in place (writeable, 64-byte aligned, with the compact
    row-major strides TVM checks: numpy's C-contiguous flag also allows any stride on an axis
    of size 1), else a copy that is."""
    if arr.flags.writeable and arr.ctypes.data % _ALIGN == 0 and arr.strides == _compact(arr):
        return arr
    buf = np.empty(arr.nbytes + _ALIGN, np.uint8)
    start = -buf.ctypes.data % _ALIGN
    out = buf[start : start + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    np.copyto(out, arr)
    return out


def _compact(arr: np.ndarray) -> tuple[int, ...]:
    strides, step = [], arr.itemsize
    for n in reversed(arr.shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _host_copy(tensor: Any) -> np.ndarray:
    """A numpy copy of a CPU output (through DLPack: ~2 us instead of ~7 us for .numpy());
    a copy, never a view, since an output may be an input the caller still owns."""
    arr = np.from_dlpack(tensor) if np.dtype(str(tensor.dtype)) in _DLPACK_DTYPES else None
    return tensor.numpy() if arr is None else arr.copy()


def _check_shapes(specs: Sequence[Mapping[str, Any]], arrays: Sequence[Any]) -> None:
    """Each input's dtype, rank and static dims, the symbolic dims the inputs share, and the
    dims given by expressions ("seq+1"), read from shapes and dtypes only (numpy arrays, or
    `_TensorMeta` for tensors on a GPU)."""
    env: dict[str, tuple[int, str, int]] = {}  # symbol -> (size, input, axis) it came from
    for spec, arr in zip(specs, arrays, strict=True):
        _check_static(spec, arr)
        _bind_symbols(spec, arr, env)
    sizes = {s: v[0] for s, v in env.items()}
    for spec, arr in zip(specs, arrays, strict=True):
        _check_expressions(spec, arr, sizes, env)


def _check_static(spec: Mapping[str, Any], arr: np.ndarray) -> None:
    name, shape = spec["name"], spec["shape"]
    if str(arr.dtype) != spec["dtype"]:
        raise InputError(f"input {name!r} has dtype {arr.dtype}; the model expects {spec['dtype']}")
    if arr.ndim != len(shape):
        raise InputError(
            f"input {name!r} has rank {arr.ndim} (shape {list(arr.shape)}); the model expects "
            f"rank {len(shape)}: {shape}"
        )
    for axis, (d, n) in enumerate(zip(shape, arr.shape, strict=True)):
        if isinstance(d, int) and d != n:
            raise InputError(
                f"input {name!r} has shape {list(arr.shape)}; the model expects {shape} "
                f"(axis {axis} must be {d})"
            )


def _bind_symbols(
    spec: Mapping[str, Any], arr: np.ndarray, env: dict[str, tuple[int, str, int]]
) -> None:
    """Record the size of each symbol that is a whole dim of this input; a symbol already
    bound to another size is an error naming both inputs (or both axes) and the dim."""
    name = spec["name"]
    for axis, (d, n) in enumerate(zip(spec["shape"], arr.shape, strict=True)):
        if not (isinstance(d, str) and symbolic.is_symbol_name(d)):
            continue
        seen = env.get(d)
        if seen is None:
            env[d] = (int(n), name, axis)
            continue
        size, other, other_axis = seen
        if size == n:
            continue
        if other == name:
            raise InputError(
                f"input {name!r} has {size} at axis {other_axis} and {n} at axis {axis}, both "
                f"dim {d!r}; they must be equal"
            )
        raise InputError(
            f"inputs {other!r} and {name!r} disagree on dim {d!r}: {other!r} has {size} (axis "
            f"{other_axis}), {name!r} has {n} (axis {axis}); give both the same {d}"
        )


def _check_expressions(
    spec: Mapping[str, Any],
    arr: np.ndarray,
    sizes: Mapping[str, int],
    env: Mapping[str, tuple[int, str, int]],
) -> None:
    name = spec["name"]
    for axis, (d, n) in enumerate(zip(spec["shape"], arr.shape, strict=True)):
        if not isinstance(d, str) or symbolic.is_symbol_name(d):
            continue
        try:
            want = symbolic.evaluate(d, sizes)
        except ZeroDivisionError:
            want = None
        if want != n:
            given = ", ".join(
                f"{s}={sizes[s]} from {env[s][1]!r}" for s in sorted(symbolic.symbols(d))
            )
            raise InputError(
                f"input {name!r} axis {axis} is {n}; the model expects {d} = {want} ({given})"
            )


def _memory_bytes() -> int:
    """Physical memory of this machine: every input is a host array first."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _flatten(out: Any) -> list[Any]:
    import tvm

    if isinstance(out, tvm.runtime.Tensor):
        return [out]
    return [x for item in out for x in _flatten(item)]


def _is_torch(v: Any) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _on_gpu(v: Any) -> bool:
    return _is_torch(v) and getattr(v.device, "type", "") == "cuda"


@dataclass(frozen=True)
class _TensorMeta:
    """What the input checks read of an array (shape, dtype), for a tensor not on the host."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _numpy_dtype_of(name: str, t: Any) -> np.dtype:
    """The numpy dtype of torch tensor `t` (torch.float32 -> float32)."""
    try:
        return np.dtype(str(t.dtype).removeprefix("torch."))
    except TypeError as exc:
        raise InputError(
            f"input {name!r} has torch dtype {t.dtype}, which TVM cannot take"
        ) from exc


def _to_numpy(name: str, v: Any) -> np.ndarray:
    if _is_torch(v):
        return v.detach().cpu().numpy()
    try:
        return np.asarray(v)
    except (ValueError, TypeError) as exc:
        raise InputError(f"input {name!r} is not an array ({exc})") from exc


def load(
    path: str | os.PathLike[str], device: Any = None, *, threads: int | str | None = None
) -> CompiledModel:
    """Load an artifact folder written by `ecograph.compile` and return a callable model.

    The folder is checked first (see `open_artifact`): a malformed manifest, a file not listed
    or not matching its hash, a symlink or a path leaving the folder raise `ArtifactError`
    before TVM maps anything.
    `device`: None (the artifact's own: GPU 0 for CUDA, else CPU), "cpu", "cuda", "cuda:N" or
    a TVM Device; anything else, or a device the artifact's target cannot run on, raises
    `UsageError`. ARM artifacts built on x86 cannot run here; use `ecograph.remote`.
    `threads`: CPU threads for the kernels, a count or "auto" (every core, fewer while other
    processes keep cores busy; see threads.py). It is one setting for the whole process (TVM
    has one thread pool); None keeps the current one (ECOGRAPH_NUM_THREADS or "auto").
    """
    want = _parse_device(device)
    if threads is not None:
        thread_policy(threads)
    import tvm
    import tvm.runtime.vm

    artifact = open_artifact(path)
    folder, manifest = artifact.folder, artifact.manifest
    target = manifest["target"]
    family = target["family"]
    _check_device_fits(want, folder, target)
    if family == "arm" and os.uname().machine not in ("aarch64", "arm64"):
        raise BuildError(
            f"{folder} is an aarch64 artifact and this machine is {os.uname().machine}; run it "
            "on an ARM device, or over RPC with ecograph.remote"
        )
    if family == "x86":
        from ecograph.backends.tvm.targets import missing_x86_features

        missing = missing_x86_features(target.get("features", []))
        if missing:
            raise BuildError(
                f"{folder} was built for {target.get('cpu')} and uses "
                f"{', '.join(missing)}, which this CPU lacks (it would die with an illegal "
                "instruction); rebuild it here with --target x86"
            )
    if family == "cuda":
        _load_runtime_cuda()
        register_cuda_compiler(_cuda_arch(manifest))
    dev = _device(want, family)
    if family == "cuda" and not dev.exist:
        raise BuildError(f"{folder} is a CUDA artifact but no CUDA GPU {dev} is visible here")
    params = artifact.load_params(dev)  # first: a params file that fails maps no library
    lib: Any = tvm.runtime.load_module(str(artifact.path_of(LIBRARY)))
    vm = tvm.runtime.vm.VirtualMachine(lib, dev)
    return CompiledModel(folder, manifest, vm, dev, params)
