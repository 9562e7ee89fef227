"""Load an artifact folder and run it: numpy (or torch) in, numpy (or torch) out.

This module needs only TVM's runtime: it works with `TVM_USE_RUNTIME_LIB=1` (no compiler
library) and never imports `tvm.relax`. For CUDA artifacts built on a machine without a GPU,
the library carries CUDA source; before loading one, `load` registers a
`tvm_callback_cuda_compile` that compiles it with nvcc or, without nvcc, with NVRTC.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.backends.tvm.threads import policy as thread_policy
from ecograph.errors import BuildError

MANIFEST = "manifest.json"
LIBRARY = "lib.so"
FORMAT_VERSION = 1  # of manifest.json; build.py writes it


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an artifact folder, checked for its format version and for the
    SHA-256 of every file it lists. Needs only the standard library (no TVM compiler)."""
    import hashlib
    import json

    folder = Path(path)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise BuildError(f"{folder} is not an ecograph artifact (no {MANIFEST})")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise BuildError(
            f"{mpath}: artifact format {manifest.get('format')!r} is not {FORMAT_VERSION}; "
            "rebuild it with this version of ecograph"
        )
    for name, digest in manifest.get("files", {}).items():
        f = folder / name
        if not f.is_file():
            raise BuildError(f"{f} is missing from the artifact")
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            raise BuildError(f"{f}: SHA-256 does not match the manifest (corrupt or edited)")
    return manifest


# ------------------------------------------------------------------- devices


def _device(spec: Any, family: str) -> Any:
    import tvm

    if spec is None:
        return tvm.cuda(0) if family == "cuda" else tvm.cpu(0)
    if isinstance(spec, str):
        kind, _, index = spec.partition(":")
        idx = int(index) if index else 0
        if kind == "cpu":
            return tvm.cpu(idx)
        if kind in ("cuda", "gpu"):
            return tvm.cuda(idx)
        raise BuildError(f"unknown device {spec!r}; use 'cpu', 'cuda' or 'cuda:N'")
    return spec  # a tvm Device


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
    give torch tensors out.
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

    def __repr__(self) -> str:
        return f"<CompiledModel {self.path} target={self.manifest['target']['name']}>"

    @property
    def vm(self) -> Any:
        """The TVM Relax VirtualMachine running the model (the profiler instruments it)."""
        return self._vm

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        feeds = self._bind(args, kwargs)
        as_torch = any(_is_torch(v) for v in feeds)
        arrays = [self._check(i, _to_numpy(v)) for i, v in enumerate(feeds)]
        return self.run_numpy(arrays, as_torch=as_torch)

    def run_numpy(self, arrays: Sequence[np.ndarray], *, as_torch: bool = False) -> Any:
        import tvm

        tensors = [tvm.runtime.tensor(a, self.device) for a in arrays]
        if self.device.dlpack_device_type() == tvm.cpu().dlpack_device_type():
            with thread_policy().run(self.path):  # the thread count follows the machine
                out = self._vm["main"](*tensors, *self._params)
        else:
            out = self._vm["main"](*tensors, *self._params)
        outs = _flatten(out)
        results = [o.numpy() for o in outs]
        if as_torch:
            import torch

            results = [torch.from_numpy(r) for r in results]
        return results[0] if len(results) == 1 else tuple(results)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
            kwargs = dict(args[0])
            args = ()
        if len(args) > len(self.input_names):
            raise BuildError(f"{len(args)} inputs given; the model takes {self.input_names}")
        feeds: dict[str, Any] = dict(zip(self.input_names, args, strict=False))
        for k, v in kwargs.items():
            if k not in self.input_names:
                raise BuildError(f"unknown input {k!r}; the model takes {self.input_names}")
            if k in feeds:
                raise BuildError(f"input {k!r} given twice")
            feeds[k] = v
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BuildError(f"missing inputs {missing}; the model takes {self.input_names}")
        return [feeds[n] for n in self.input_names]

    def _check(self, i: int, arr: np.ndarray) -> np.ndarray:
        spec = self.manifest["inputs"][i]
        if str(arr.dtype) != spec["dtype"]:
            raise BuildError(
                f"input {spec['name']!r} has dtype {arr.dtype}; the model expects {spec['dtype']}"
            )
        if arr.ndim != len(spec["shape"]) or any(
            isinstance(d, int) and d != s for d, s in zip(spec["shape"], arr.shape, strict=True)
        ):
            raise BuildError(
                f"input {spec['name']!r} has shape {list(arr.shape)}; the model expects "
                f"{spec['shape']}"
            )
        return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)


def _flatten(out: Any) -> list[Any]:
    import tvm

    if isinstance(out, tvm.runtime.Tensor):
        return [out]
    return [x for item in out for x in _flatten(item)]


def _is_torch(v: Any) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _to_numpy(v: Any) -> np.ndarray:
    if _is_torch(v):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def load(
    path: str | os.PathLike[str], device: Any = None, *, threads: int | str | None = None
) -> CompiledModel:
    """Load an artifact folder written by `ecograph.compile` and return a callable model.

    `device`: None (the artifact's own: GPU 0 for CUDA, else CPU), "cpu", "cuda", "cuda:N" or
    a TVM Device. ARM artifacts built on x86 cannot run here; use `ecograph.remote`.
    `threads`: CPU threads for the kernels, a count or "auto" (every core, fewer while other
    processes keep cores busy; see threads.py). It is one setting for the whole process (TVM
    has one thread pool); None keeps the current one (ECOGRAPH_NUM_THREADS or "auto").
    """
    if threads is not None:
        thread_policy(threads)
    import tvm
    import tvm.runtime.vm

    folder = Path(path)
    manifest = read_manifest(folder)
    family = manifest["target"]["family"]
    if family == "arm" and os.uname().machine not in ("aarch64", "arm64"):
        raise BuildError(
            f"{folder} is an aarch64 artifact and this machine is {os.uname().machine}; run it "
            "on an ARM device, or over RPC with ecograph.remote"
        )
    if family == "x86":
        from ecograph.backends.tvm.targets import missing_x86_features

        missing = missing_x86_features(manifest["target"].get("features", []))
        if missing:
            raise BuildError(
                f"{folder} was built for {manifest['target'].get('cpu')} and uses "
                f"{', '.join(missing)}, which this CPU lacks (it would die with an illegal "
                "instruction); rebuild it here with --target x86"
            )
    if family == "cuda":
        _load_runtime_cuda()
        register_cuda_compiler(_cuda_arch(manifest))
    dev = _device(device, family)
    if family == "cuda" and not dev.exist:
        raise BuildError(f"{folder} is a CUDA artifact but no CUDA GPU is visible here")
    lib = tvm.runtime.load_module(str(folder / LIBRARY))
    vm = tvm.runtime.vm.VirtualMachine(lib, dev)
    params = _load_params(folder, manifest, dev)
    return CompiledModel(folder, manifest, vm, dev, params)


def _load_params(folder: Path, manifest: Mapping[str, Any], dev: Any) -> list[Any]:
    import tvm

    info = manifest.get("params") or {}
    if not info.get("file"):
        return []
    with np.load(folder / info["file"], allow_pickle=False) as data:
        return [tvm.runtime.tensor(np.array(data[n], order="C"), dev) for n in info["names"]]
