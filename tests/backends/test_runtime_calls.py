"""The per-call path of a loaded model: inputs read in place through DLPack when TVM can
(C-contiguous, writeable, 64-byte aligned), copied once when it cannot; outputs copied; the
input checks skipped only for a call whose dtypes and shapes already passed them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

import ecograph
from ecograph.backends.tvm import load
from ecograph.errors import InputError
from ecograph.ir import Graph, GraphBuilder, interpret


def model() -> Graph:
    """out = x * 2 + y over [n, 5] (y broadcast [5]), and x itself as a second output."""
    b = GraphBuilder("calls")
    x = b.input("x", "float32", ["n", 5])
    y = b.input("y", "float32", [5])
    two = b.constant(np.array(2.0, np.float32), "two")
    b.output(b.op("Add", b.op("Mul", x, two), y, name="out"))
    b.output(b.op("Identity", x, name="same"))
    return b.graph


def misaligned(a: np.ndarray, by: int) -> np.ndarray:
    """A copy of `a` whose data starts `by` bytes past a 64-byte boundary."""
    buf = np.empty(a.nbytes + 64 + by, np.uint8)
    start = (-buf.ctypes.data % 64) + by
    out = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> object:
    out = tmp_path_factory.mktemp("calls") / "calls-x86"
    return load(ecograph.compile(model(), "x86", Path(out)))


def check(m: object, x: np.ndarray, y: np.ndarray) -> None:
    want = interpret(model(), {"x": np.ascontiguousarray(x), "y": np.ascontiguousarray(y)})
    got = m(x=x, y=y)  # type: ignore[operator]
    np.testing.assert_array_equal(got[0], want["out"])
    np.testing.assert_array_equal(got[1], x)
    # outputs are copies the caller owns: never the input's memory, never the VM's
    assert not np.shares_memory(got[1], x)


@pytest.mark.parametrize("offset", [0, 4, 16, 32])
def test_aligned_and_misaligned_inputs_give_the_same_result(compiled, offset):
    rng = np.random.default_rng(offset)
    x = misaligned(rng.standard_normal((7, 5)).astype(np.float32), offset)
    y = misaligned(rng.standard_normal(5).astype(np.float32), offset)
    assert x.ctypes.data % 64 == offset
    check(compiled, x, y)


def test_inputs_tvm_can_read_are_read_in_place() -> None:
    # aligned, writeable, compact strides: the tensor is the array's memory; else an aligned
    # copy with the same values (a misaligned start, a read-only array, and a C-contiguous
    # array whose axis of size 1 has a stride TVM would reject)
    from numpy.lib.stride_tricks import as_strided

    from ecograph.backends.tvm.runtime import _host_tensor

    a = misaligned(np.arange(12, dtype=np.float32).reshape(3, 1, 4), 0)
    assert _host_tensor(a).data_ptr() == a.ctypes.data
    read_only = a.view()
    read_only.flags.writeable = False
    odd = as_strided(a, a.shape, (16, 999, 4))
    assert odd.flags.c_contiguous
    for other in (misaligned(a, 16), read_only, odd):
        t = _host_tensor(other)
        assert t.data_ptr() != other.ctypes.data and t.data_ptr() % 64 == 0
        assert tuple(t.strides) == (4, 4, 1)
        np.testing.assert_array_equal(np.from_dlpack(t), other)


def test_views_read_only_and_empty_inputs(compiled):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((9, 10)).astype(np.float32)
    check(compiled, base[::3, ::2], rng.standard_normal(5).astype(np.float32))  # strided view
    check(compiled, np.asfortranarray(base[:5, :5]), np.ones(5, np.float32))
    check(compiled, base[:4, :5], np.broadcast_to(np.float32(3), (5,)))  # read-only view
    check(compiled, np.zeros((0, 5), np.float32), np.ones(5, np.float32))  # n = 0


def test_the_caller_s_input_is_not_written(compiled):
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    y = np.ones(5, np.float32)
    keep = x.copy()
    for _ in range(3):
        compiled(x=x, y=y)
    np.testing.assert_array_equal(x, keep)


def test_checks_are_skipped_only_for_a_signature_that_passed(compiled):
    x, y = np.ones((3, 5), np.float32), np.ones(5, np.float32)
    compiled(x=x, y=y)
    with pytest.raises(InputError, match="dtype"):
        compiled(x=x.astype(np.float64), y=y)
    with pytest.raises(InputError, match="shape"):
        compiled(x=np.ones((3, 4), np.float32), y=y)
    compiled(x=x, y=y)  # the passing signature again
    with pytest.raises(InputError, match="shape"):
        compiled(x=x, y=np.ones(4, np.float32))
    check(compiled, np.ones((6, 5), np.float32), y)  # a new n is checked, then runs


def test_only_an_input_that_takes_views_gets_one_as_it_lies() -> None:
    """inputs.viewable: a strided array goes to TVM uncopied only where the manifest says the
    input takes views ("views", views.view_inputs), its last two axes are compact, its data
    64-byte aligned and writeable; anything else is copied compact first."""
    from ecograph.backends.tvm.inputs import viewable

    buf = misaligned(np.zeros((4, 3, 10, 8), np.float32), 0)
    view = buf[:, :, :6]  # the first 6 positions of each (slot, head): outer axes strided
    takes, compact_only = {"name": "cache", "views": True}, {"name": "cache"}
    assert not view.flags.c_contiguous
    assert viewable(takes, view) and not viewable(compact_only, view)
    assert not viewable(takes, buf[:, :, :6, :4])  # the last axis cut: not compact
    assert not viewable(takes, buf[:, :, ::2])  # positions strided: the last two not compact
    assert not viewable(takes, misaligned(np.zeros((4, 3, 10, 8), np.float32), 16)[:, :, :6])
    read_only = view.view()
    read_only.flags.writeable = False
    assert not viewable(takes, read_only)


def test_run_device_copies_a_strided_tensor_for_an_input_without_views(compiled) -> None:
    """run_device on a strided TVM tensor (tvm_ffi.from_dlpack of a view) for an input the
    manifest does not mark "views": a compact copy goes in (TVM would refuse the strides at
    the kernel), and the result is the reference's."""
    import tvm
    import tvm_ffi

    base = misaligned(np.random.default_rng(3).standard_normal((8, 5)).astype(np.float32), 0)
    x = base[::2]  # rows strided, each row compact
    y = np.ones(5, np.float32)
    assert not compiled.manifest["inputs"][0].get("views")
    strided = tvm_ffi.from_dlpack(x, require_contiguous=False)
    assert not strided.is_contiguous()
    out = compiled.run_device([strided, tvm.runtime.tensor(y)])
    want = interpret(model(), {"x": np.ascontiguousarray(x), "y": y})
    np.testing.assert_array_equal(out[0].numpy(), want["out"])
