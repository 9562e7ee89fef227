"""Load an artifact folder and run it: numpy (or torch) in, numpy (or torch) out.

This module needs only TVM's runtime: it works with `TVM_USE_RUNTIME_LIB=1` (no compiler
library) and never imports `tvm.relax`. For CUDA artifacts built on a machine without a GPU,
the library carries CUDA source; before loading one, `load` registers a
`tvm_callback_cuda_compile` that compiles it with nvcc or, without nvcc, with NVRTC.

The folder is untrusted input: `load` checks it with `open_artifact` before TVM maps anything.

Here: `load`, the device it is asked for, and `CompiledModel` with its numpy path (inputs read
in place through DLPack, outputs copied back). The loader's parts with a concern of their own
live beside it: `artifact` (the folder's manifest, files and hashes), `inputs` (binding and
checking a call's inputs against the manifest) and `gpu_runtime` (CUDA on load, torch CUDA
tensors in and out); the names other modules import from here are re-exported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.backends.tvm.artifact import (
    CPU_DLPACK,
    DLPACK_DTYPES,
    FAMILIES,
    FORMAT_VERSION,
    LIBRARY,
    MANIFEST,
    MANIFEST_MAX_BYTES,
    Artifact,
    SharedWeights,
    open_artifact,
    open_shared_weights,
    read_manifest,
)
from ecograph.backends.tvm.gpu_runtime import (
    cuda_arch,
    load_runtime_cuda,
    nvcc_compile,
    nvrtc_compile,
    register_cuda_compiler,
    torch_metas,
    torch_outputs,
    tvm_readable,
    wait_for_current_stream,
)
from ecograph.backends.tvm.inputs import (
    ALIGN,
    TensorMeta,
    bind_inputs,
    check_count,
    check_index_values,
    check_shapes,
    contiguous_within_memory,
    fmt_bytes,
    is_torch,
    memory_bytes,
    on_gpu,
    to_numpy,
    viewable,
)
from ecograph.backends.tvm.threads import policy as thread_policy
from ecograph.errors import BuildError, InputError, UsageError

__all__ = [
    "FAMILIES",
    "FORMAT_VERSION",
    "LIBRARY",
    "MANIFEST",
    "MANIFEST_MAX_BYTES",
    "Artifact",
    "CompiledModel",
    "SharedWeights",
    "load",
    "nvcc_compile",
    "nvrtc_compile",
    "open_artifact",
    "open_shared_weights",
    "read_manifest",
    "register_cuda_compiler",
]

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
        # looked up once (~1 us a call otherwise); no VM: a model for input checks only
        self._main: Any = vm["main"] if vm is not None else None
        self._params = params
        self.input_names = [t["name"] for t in manifest["inputs"]]
        self.output_names = [t["name"] for t in manifest["outputs"]]
        self._on_cpu = device is not None and device.dlpack_device_type() == CPU_DLPACK
        self._memory = memory_bytes()
        # (dtype, shape) of every input of the last call that passed the checks: a call with
        # the same signature passes them too (they depend on nothing else), so it skips them.
        self._checked: tuple[tuple[Any, tuple[int, ...]], ...] | None = None
        # the same for the last call on tensors not on the host (torch CUDA, run_device)
        self._checked_meta: tuple[TensorMeta, ...] | None = None

    def __repr__(self) -> str:
        return f"<CompiledModel {self.path} target={self.manifest['target']['name']}>"

    @property
    def vm(self) -> Any:
        """The TVM Relax VirtualMachine running the model (the profiler instruments it)."""
        return self._vm

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        feeds = bind_inputs(self.input_names, args, kwargs)
        if not self._on_cpu and feeds and all(on_gpu(v) for v in feeds):
            return self.run_torch_on_device(feeds)
        as_torch = any(is_torch(v) for v in feeds)
        arrays = [to_numpy(name, v) for name, v in zip(self.input_names, feeds, strict=True)]
        return self.run_numpy(arrays, as_torch=as_torch)

    def run_numpy(self, arrays: Sequence[np.ndarray], *, as_torch: bool = False) -> Any:
        """Run on numpy arrays in input order, after the checks of `check_inputs`."""
        arrays = self.check_inputs(arrays)
        tensors = [self._to_device(n, a) for n, a in zip(self.input_names, arrays, strict=True)]
        if self._on_cpu:  # the thread count follows the machine
            out = thread_policy().call(self.path, self._main, *tensors, *self._params)
            results = [_host_copy(o) for o in _flatten(out)]
        else:
            out = self._main(*tensors, *self._params)
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
        import tvm

        specs = check_count(self.manifest["inputs"], tensors)
        dev_id = int(self.device.index)
        metas = torch_metas(self.input_names, tensors, dev_id)
        self._check_metas(specs, metas)
        wait_for_current_stream(dev_id)
        ins = tvm_readable(tensors)
        out = self._main(*[tvm.runtime.from_dlpack(t) for t in ins], *self._params)
        results = torch_outputs(_flatten(out), ins)
        return results[0] if len(results) == 1 else tuple(results)

    def run_device(self, tensors: Sequence[Any]) -> list[Any]:
        """Run on TVM tensors that already live on this model's device (in input order) and
        leave the outputs there: a list of TVM tensors in manifest order. For callers that
        keep state on the device between calls (a compiled LM's KV cache).

        Shapes and dtypes are checked as for `run_numpy` (`InputError`, also for a tensor on
        another device); values are not read, so gather indices are the caller's to keep in
        range. A strided view (made with tvm_ffi.from_dlpack) goes in as it lies where the
        input takes views, and as a compact copy elsewhere."""
        specs = check_count(self.manifest["inputs"], tensors)
        metas = []
        tensors = list(tensors)
        for i, (name, t) in enumerate(zip(self.input_names, tensors, strict=True)):
            if t.device != self.device:
                raise InputError(
                    f"input {name!r} is on {t.device} and the model on {self.device}; "
                    "give a tensor on the model's device (or use run_numpy)"
                )
            if not t.is_contiguous() and not specs[i].get("views"):
                tensors[i] = self._to_device(name, np.ascontiguousarray(np.from_dlpack(t)))
            metas.append(TensorMeta(tuple(int(d) for d in t.shape), np.dtype(str(t.dtype))))
        self._check_metas(specs, metas)
        if self._on_cpu:
            out = thread_policy().call(self.path, self._main, *tensors, *self._params)
        else:
            out = self._main(*tensors, *self._params)
        return _flatten(out)

    def _check_metas(self, specs: list[dict[str, Any]], metas: list[TensorMeta]) -> None:
        """check_shapes on tensors not on the host, skipped for the last call's signature."""
        if tuple(metas) != self._checked_meta:
            check_shapes(specs, metas)
            self._checked_meta = tuple(metas)

    def check_inputs(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`arrays` (in input order) checked against the manifest's inputs, C-contiguous.

        Raises `InputError` for a wrong count, dtype, rank or static dim, two inputs that
        disagree on a shared symbolic dim (TVM would fail inside the VM), a dim that breaks
        its expression ("seq+1"), an input larger than this machine's memory, or gather
        indices outside the axis they index (token ids past the vocabulary)."""
        specs = check_count(self.manifest["inputs"], arrays)
        signature = tuple((a.dtype, a.shape) for a in arrays)
        if signature == self._checked:
            check_index_values(specs, arrays)  # values change from call to call
            return [
                a if a.flags.c_contiguous or viewable(spec, a) else np.ascontiguousarray(a)
                for spec, a in zip(specs, arrays, strict=True)
            ]
        check_shapes(specs, arrays)
        check_index_values(specs, arrays)
        out = contiguous_within_memory(specs, arrays, self._memory)
        self._checked = signature
        return out

    def _to_device(self, name: str, arr: np.ndarray) -> Any:
        import tvm

        try:
            if self._on_cpu and arr.size and arr.dtype in DLPACK_DTYPES:
                if not arr.flags.c_contiguous:  # check_inputs let it through: viewable
                    import tvm_ffi

                    return tvm_ffi.from_dlpack(
                        arr, require_alignment=ALIGN, require_contiguous=False
                    )
                # The kernels read the array in place (TVM wants 64-byte aligned data; others
                # are copied once into an aligned buffer): ~0.5 us instead of the ~17 us of
                # tvm.runtime.tensor's allocation and copy on every call.
                return _host_tensor(arr)
            return tvm.runtime.tensor(arr, self.device)
        except Exception as exc:  # allocation on the device failed: the input is too large
            raise InputError(
                f"input {name!r} of shape {list(arr.shape)} ({arr.dtype}, "
                f"{fmt_bytes(arr.nbytes)}) could not be placed on {self.device}: {exc}"
            ) from exc


# ------------------------------------------------------- numpy through DLPack


def _host_tensor(arr: np.ndarray) -> Any:
    """A C-contiguous array as a TVM tensor on the host: `arr` itself, read in place, where
    TVM can (as `_aligned` decides), else an aligned copy. The alignment is read from the
    tensor made (~0.4 us in all; `arr.ctypes.data` alone costs ~1 us, and TVM's own check
    raises a C++ exception, ~30 us)."""
    import tvm_ffi

    if arr.flags.writeable and _compact_strides(arr):
        tensor = tvm_ffi.from_dlpack(arr, require_alignment=0, require_contiguous=True)
        if tensor.data_ptr() % ALIGN == 0:
            return tensor
    return tvm_ffi.from_dlpack(_aligned(arr), require_alignment=ALIGN, require_contiguous=True)


def _aligned(arr: np.ndarray) -> np.ndarray:
    """`arr` itself when TVM can read it in place (writeable, 64-byte aligned, with the compact
    row-major strides TVM checks: numpy's C-contiguous flag also allows any stride on an axis
    of size 1), else a copy that is."""
    if arr.flags.writeable and arr.ctypes.data % ALIGN == 0 and _compact_strides(arr):
        return arr
    buf = np.empty(arr.nbytes + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    out = buf[start : start + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    np.copyto(out, arr)
    return out


def _compact_strides(arr: np.ndarray) -> bool:
    """Whether `arr` has the compact row-major strides TVM checks. A non-empty C-contiguous
    array without an axis of size 1 has them (numpy's flag allows any stride only on such an
    axis, or when it is empty); the others are compared stride by stride."""
    if arr.flags.c_contiguous and arr.size and 1 not in arr.shape:
        return True
    return arr.strides == _compact(arr)


def _compact(arr: np.ndarray) -> tuple[int, ...]:
    strides, step = [], arr.itemsize
    for n in reversed(arr.shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _host_copy(tensor: Any) -> np.ndarray:
    """A numpy copy of a CPU output (through DLPack: ~1 us instead of ~7 us for .numpy());
    a copy, never a view, since an output may be an input the caller still owns."""
    if str(tensor.dtype) in _DLPACK_NAMES:
        return np.from_dlpack(tensor).copy()
    return tensor.numpy()


_DLPACK_NAMES = frozenset(str(d) for d in DLPACK_DTYPES)


def _flatten(out: Any) -> list[Any]:
    import tvm

    if isinstance(out, tvm.runtime.Tensor):
        return [out]
    return [x for item in out for x in _flatten(item)]


# ------------------------------------------------------------------- loading


def load(
    path: str | os.PathLike[str],
    device: Any = None,
    *,
    threads: int | str | None = None,
    shared: SharedWeights | None = None,
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
    `shared`: for an artifact whose weights live in a file shared with other artifacts (beside
    its folder: a compiled LM's weights.npz), that file opened once (`open_shared_weights`),
    so that the artifacts loaded with it hold one copy of the weights (`load_lm` does this);
    None reads the file for this artifact alone.
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
        try:
            load_runtime_cuda()
        except BuildError as exc:
            raise BuildError(
                f"{folder} is a CUDA artifact and TVM's CUDA runtime cannot load here: {exc} "
                "Run it on a machine with an NVIDIA GPU and its driver"
            ) from exc
        register_cuda_compiler(cuda_arch(manifest))
    dev = _device(want, family)
    if family == "cuda" and not dev.exist:
        raise BuildError(f"{folder} is a CUDA artifact but no CUDA GPU {dev} is visible here")
    params = artifact.load_params(dev, shared)  # first: bad weights map no library
    lib_path = artifact.path_of(LIBRARY)
    lib: Any = tvm.runtime.load_module(str(lib_path))
    vm = tvm.runtime.vm.VirtualMachine(lib, dev)
    release_library_blob(lib_path)
    release_freed_memory()
    return CompiledModel(folder, manifest, vm, dev, params)


# The symbol under which TVM embeds a library's serialized modules (the VM executable with
# its constants: the weights), read once by load_module (tvm_ffi's library_module.cc).
LIBRARY_BIN_SYMBOL = "__tvm_ffi__library_bin"
_MADV_DONTNEED = 4  # Linux


def release_library_blob(lib_path: str | os.PathLike[str]) -> int:
    """Drop from this process the pages of the serialized modules a loaded lib.so embeds;
    returns the bytes released (0 where nothing was done).

    `tvm.runtime.load_module` reads the blob (`<nbytes: u64>` then the modules) and makes its
    own copy of every constant, so after loading the blob's pages only double the weights in
    memory (measured: a load held about twice the file). They are read-only pages of the
    file, so madvise(MADV_DONTNEED) drops them and a later read, if any, reads the file again:
    nothing is lost. Linux and glibc's dlopen only; elsewhere a no-op."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return 0
    try:  # the library TVM has already dlopen'ed (RTLD_NOLOAD: never load it a second time)
        lib = ctypes.CDLL(os.fspath(lib_path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        blob = ctypes.addressof(ctypes.c_char.in_dll(lib, LIBRARY_BIN_SYMBOL))
        libc = ctypes.CDLL(None, use_errno=True)
    except (OSError, ValueError):
        return 0
    try:
        nbytes = int.from_bytes(ctypes.string_at(blob, 8), "little")
        page = os.sysconf("SC_PAGE_SIZE")
        start = -(-blob // page) * page  # whole pages inside the blob only
        end = (blob + 8 + nbytes) // page * page
        if end <= start:
            return 0
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.madvise(ctypes.c_void_p(start), end - start, _MADV_DONTNEED) != 0:
            return 0
        return end - start
    finally:  # our dlopen's reference only; TVM's keeps the library loaded
        libc.dlclose.argtypes = [ctypes.c_void_p]
        libc.dlclose(ctypes.c_void_p(lib._handle))


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc's `malloc_trim`; a no-op elsewhere).

    Loading a library's constants makes temporary copies that the loader frees; after the
    first large free glibc raises its mmap threshold, so later temporaries come from the heap
    and, freed, stay resident. Measured (bench/RESULTS.md): a compiled fp32 LM (31 MB folder)
    held 102 MB after load_lm and one token, 74 MB with this call after each load."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return
    trim(0)
