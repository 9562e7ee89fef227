"""A call's inputs: bound to the model's input names, checked against the manifest, and what
TVM requires of them (C-contiguous, 64-byte aligned, within this machine's memory).

Its own module because the checks read only the manifest's input specs and the inputs' shapes
and dtypes: no TVM, no device, no loaded model. The numpy path (`CompiledModel.check_inputs`)
and the torch-on-GPU path (tensors described by `TensorMeta`) run the very same `check_shapes`,
so a bad input fails with the same `InputError` wherever it lives.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecograph.errors import InputError
from ecograph.ir import symbolic

ALIGN = 64  # TVM's kAllocAlignment: kernels may assume it


def bind_inputs(
    input_names: Sequence[str], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[Any]:
    """The call's inputs in `input_names` order, from positional arguments, keywords by input
    name, or one mapping; an unknown, doubled or missing input is an `InputError`."""
    if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
        kwargs = dict(args[0])
        args = ()
    if len(args) > len(input_names):
        raise InputError(f"{len(args)} inputs given; the model takes {input_names}")
    feeds: dict[str, Any] = dict(zip(input_names, args, strict=False))
    for k, v in kwargs.items():
        if k not in input_names:
            raise InputError(f"unknown input {k!r}; the model takes {input_names}")
        if k in feeds:
            raise InputError(f"input {k!r} given twice (by position and by name)")
        feeds[k] = v
    missing = [n for n in input_names if n not in feeds]
    if missing:
        raise InputError(f"missing inputs {missing}; the model takes {input_names}")
    return [feeds[n] for n in input_names]


def check_count(specs: list[dict[str, Any]], arrays: Sequence[Any]) -> list[dict[str, Any]]:
    """The manifest's input `specs`, after checking that `arrays` has one per input."""
    if len(arrays) != len(specs):
        names = [t["name"] for t in specs]
        raise InputError(f"{len(arrays)} inputs given; the model takes {names}")
    return specs


def viewable(spec: Mapping[str, Any], arr: np.ndarray) -> bool:
    """Whether `arr` goes to the kernels as it lies though it is not compact: its input takes
    strided views (the manifest's "views", views.view_inputs: the CPU attention kernel's
    head-major KV cache), its last two axes are compact, its data is 64-byte aligned and
    writeable (TVM's DLPack import asks both)."""
    if not spec.get("views") or arr.ndim < 2 or not arr.size:
        return False
    inner = arr.strides[-1] == arr.itemsize and arr.strides[-2] == arr.shape[-1] * arr.itemsize
    return inner and arr.flags.writeable and arr.ctypes.data % ALIGN == 0


def contiguous_within_memory(
    specs: Sequence[Mapping[str, Any]], arrays: Sequence[np.ndarray], limit: int
) -> list[np.ndarray]:
    """`arrays` C-contiguous (or a view `viewable` allows); one larger than `limit` bytes (or
    that cannot be copied for lack of memory) is an `InputError` naming the input."""
    out = []
    for spec, arr in zip(specs, arrays, strict=True):
        if viewable(spec, arr):
            out.append(arr)
            continue
        need = int(arr.size) * arr.itemsize
        if need > limit:
            raise InputError(
                f"input {spec['name']!r} of shape {list(arr.shape)} ({arr.dtype}) needs "
                f"{fmt_bytes(need)}, more than this machine's {fmt_bytes(limit)} of "
                "memory; give a smaller input"
            )
        try:
            contiguous = np.ascontiguousarray(arr).reshape(arr.shape)
        except MemoryError as exc:
            raise InputError(
                f"input {spec['name']!r} of shape {list(arr.shape)} ({arr.dtype}, "
                f"{fmt_bytes(need)}) does not fit in memory; give a smaller input"
            ) from exc
        out.append(contiguous)
    return out


def check_shapes(specs: Sequence[Mapping[str, Any]], arrays: Sequence[Any]) -> None:
    """Each input's dtype, rank and static dims, the symbolic dims the inputs share, and the
    dims given by expressions ("seq+1"), read from shapes and dtypes only (numpy arrays, or
    `TensorMeta` for tensors on a GPU)."""
    env: dict[str, tuple[int, str, int]] = {}  # symbol -> (size, input, axis) it came from
    for spec, arr in zip(specs, arrays, strict=True):
        _check_static(spec, arr)
        _bind_symbols(spec, arr, env)
    sizes = {s: v[0] for s, v in env.items()}
    for spec, arr in zip(specs, arrays, strict=True):
        _check_expressions(spec, arr, sizes, env)


def check_index_values(specs: Sequence[Mapping[str, Any]], arrays: Sequence[np.ndarray]) -> None:
    """Inputs the model reads as gather indices (the manifest's "index_range": token ids into
    an embedding, ...) hold values inside the indexed axis: the compiled gather reads memory
    at the index unchecked. An id outside is an `InputError` naming the input, the value,
    where it is and what it indexes."""
    for spec, arr in zip(specs, arrays, strict=True):
        info = spec.get("index_range")
        if info is None or arr.size == 0:
            continue
        lo, hi = info["range"]
        bad = (arr < lo) | (arr >= hi)
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(
                f"input {spec['name']!r} holds {arr[pos]} at index {list(pos)}; it indexes "
                f"{info['node']}: values must be in [{lo}, {hi}) (a token id past the "
                "vocabulary?)"
            )


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


def memory_bytes() -> int:
    """Physical memory of this machine: every input is a host array first."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def is_torch(v: Any) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def on_gpu(v: Any) -> bool:
    return is_torch(v) and getattr(v.device, "type", "") == "cuda"


@dataclass(frozen=True)
class TensorMeta:
    """What the input checks read of an array (shape, dtype), for a tensor not on the host."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def to_numpy(name: str, v: Any) -> np.ndarray:
    if is_torch(v):
        return v.detach().cpu().numpy()
    try:
        return np.asarray(v)
    except (ValueError, TypeError) as exc:
        raise InputError(f"input {name!r} is not an array ({exc})") from exc
