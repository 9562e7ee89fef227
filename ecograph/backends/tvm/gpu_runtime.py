"""CUDA artifacts on a GPU host: loading them with runtime-only TVM, and calling them on torch
CUDA tensors without host copies.

On load, `load_runtime_cuda` makes TVM's CUDA device API available when TVM was loaded
runtime-only (`TVM_USE_RUNTIME_LIB=1`), and `register_cuda_compiler` registers the
`tvm_callback_cuda_compile` that turns the CUDA source of an artifact built without a GPU into
a fatbin (nvcc) or cubin (NVRTC, through ctypes). On a call, the torch tensors are checked to
sit on the model's GPU, work queued on another torch stream is waited for, and the tensors go
to TVM through DLPack and come back the same way, never aliasing an input.

Its own module because all of it concerns the GPU host alone (nvcc, libnvrtc, torch.cuda
streams) and none of it runs for a CPU artifact; `runtime` calls it from `load` and from
`CompiledModel.run_torch_on_device`, and re-exports the compile functions.
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

from ecograph.backends.tvm.inputs import ALIGN, TensorMeta
from ecograph.errors import BuildError, InputError

# ------------------------------------------------------------ CUDA on load


def cuda_arch(manifest: Mapping[str, Any]) -> str:
    """The CUDA arch the artifact was built for ("sm_80" when the manifest names none)."""
    target = manifest.get("target", {})
    return str(target.get("cuda_arch") or target.get("tvm", {}).get("arch", "sm_80"))


def load_runtime_cuda() -> None:
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


# ------------------------------------------------------- torch CUDA tensors


def torch_metas(
    input_names: Sequence[str], tensors: Sequence[Any], dev_id: int
) -> list[TensorMeta]:
    """Shape and dtype of each torch CUDA tensor, for the input checks, after checking that
    each sits on GPU `dev_id`, the model's."""
    metas = []
    for name, t in zip(input_names, tensors, strict=True):
        if t.device.index != dev_id:
            raise InputError(
                f"input {name!r} is on {t.device} and the model on cuda:{dev_id}; move it "
                f"with .to('cuda:{dev_id}')"
            )
        metas.append(TensorMeta(tuple(t.shape), _numpy_dtype_of(name, t)))
    return metas


def _numpy_dtype_of(name: str, t: Any) -> np.dtype:
    """The numpy dtype of torch tensor `t` (torch.float32 -> float32)."""
    try:
        return np.dtype(str(t.dtype).removeprefix("torch."))
    except TypeError as exc:
        raise InputError(
            f"input {name!r} has torch dtype {t.dtype}, which TVM cannot take"
        ) from exc


def wait_for_current_stream(dev_id: int) -> None:
    """The kernels run on the device's default stream: work queued on another torch stream
    (the current one, when it is not the default) is waited for first."""
    import torch

    stream = torch.cuda.current_stream(dev_id)
    if stream != torch.cuda.default_stream(dev_id):
        stream.synchronize()


def tvm_readable(tensors: Sequence[Any]) -> list[Any]:
    """Each tensor detached, contiguous and 64-byte aligned (cloned when it is not), as TVM
    reads it in place through DLPack."""
    ins = []
    for t in tensors:
        t = t.detach().contiguous()
        if t.data_ptr() % ALIGN:
            t = t.clone()
        ins.append(t)
    return ins


def torch_outputs(outputs: Sequence[Any], ins: Sequence[Any]) -> list[Any]:
    """The VM's (flattened) outputs as torch CUDA tensors through DLPack; an output that is
    one of the inputs `ins` is cloned, never aliased."""
    import torch

    taken = {t.data_ptr() for t in ins}
    results = []
    for o in outputs:
        r = torch.from_dlpack(o)
        results.append(r.clone() if r.data_ptr() in taken else r)  # never alias an input
    return results
