"""TVM lowerings of ecograph/backends/tvm/ops/data_dependent.py (NonZero, Compress, Unique)
against the reference interpreter, plus: no host callback in the built module, a runtime-only
TVM runs them, and they compile for CUDA."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.errors import LoweringError
from ecograph.ir import Graph, GraphBuilder, interpret
from tests.backends.tvm_helpers import (
    Const,
    lowering_target,
    one_op,
    rand,
    run_tvm,
    run_with_runtime_only_tvm,
)
from tests.backends.tvm_helpers import check_op as check

COVERED_OPS = {("", "TopK"), ("", "NonZero"), ("", "Compress"), ("", "Unique")}

RNG = np.random.default_rng(11)


def sparse(shape: tuple[int, ...], dtype: str, density: float = 0.4) -> np.ndarray:
    x = RNG.integers(1, 9, shape).astype(dtype)
    x[RNG.random(shape) >= density] = 0
    return x


# ----------------------------------------------------------------------- NonZero


@pytest.mark.parametrize("dtype", ["float32", "int32", "int64", "uint8", "float16"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)])
def test_nonzero(dtype: str, shape: tuple[int, ...]) -> None:
    check("NonZero", sparse(shape, dtype))


def test_nonzero_bool_and_edge_counts() -> None:
    check("NonZero", RNG.random((4, 6)) < 0.5)
    assert check("NonZero", np.zeros((3, 2), "float32"))[0].shape == (2, 0)
    assert check("NonZero", np.ones((2, 3), "int64"))[0].shape == (2, 6)


def test_nonzero_symbolic_shape() -> None:
    check("NonZero", sparse((5, 3), "float32"), symbolic={0: ["n", 3]})
    check("NonZero", sparse((4, 6), "int32"), symbolic={0: ["a", "b"]})


def test_nonzero_scalar_fails_clearly() -> None:
    from ecograph.backends.tvm.driver import lower_graph

    graph, _ = one_op("NonZero", np.array(3.0, "float32"))
    with pytest.raises(LoweringError, match="0-d input"):
        lower_graph(graph, lowering_target())


# ---------------------------------------------------------------------- Compress


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_compress_runtime_condition(axis: int | None) -> None:
    x = rand((4, 5))
    n = x.size if axis is None else x.shape[axis]
    cond = RNG.random(n) < 0.5
    check("Compress", x, cond, **({} if axis is None else {"axis": axis}))


def test_compress_constant_and_short_condition() -> None:
    x = rand((3, 6), "int32", 0, 9)
    check("Compress", x, Const(np.array([True, False, True, True])), axis=1)
    check("Compress", x, np.array([False, True]), axis=0)


def test_compress_long_condition_and_none_or_all_kept() -> None:
    x = rand((3, 4, 2))
    check("Compress", x, np.array([True, False, True, False, False]), axis=0)
    assert check("Compress", x, np.zeros(4, bool), axis=1)[0].shape == (3, 0, 2)
    check("Compress", x, np.ones(2, bool), axis=2)


def test_compress_symbolic_input() -> None:
    x, cond = rand((5, 3)), np.array([1, 0, 1, 1, 0], dtype=bool)
    check("Compress", x, cond, axis=0, symbolic={0: ["n", 3], 1: ["n"]})
    check("Compress", rand((4, 3)), RNG.random(12) < 0.5, symbolic={0: ["n", 3], 1: ["c"]})


# ------------------------------------------------------------------------ Unique


def spec_unique(x: np.ndarray, axis: int | None, is_sorted: bool) -> list[np.ndarray]:
    """ONNX Unique as specified (onnx.reference takes the unsorted Y along axis 0 of the
    unflattened input, and sorts Y when it is the only output)."""
    src = x.reshape(-1) if axis is None else x
    y, idx, inv, cnt = np.unique(src, True, True, True, axis=0 if axis is None else axis)
    inv = inv.reshape(-1)
    if not is_sorted:
        perm = np.argsort(idx, kind="stable")
        renumber = np.argsort(perm, kind="stable")
        idx, cnt, inv = idx[perm], cnt[perm], renumber[inv]
        y = np.take(src, idx, axis=0 if axis is None else axis)
    return [y, idx.astype("int64"), inv.astype("int64"), cnt.astype("int64")]


def check_spec(x: np.ndarray, axis: int | None, is_sorted: int, outputs: int = 4) -> None:
    kw: dict[str, Any] = {"num_outputs": outputs, "sorted": is_sorted}
    if axis is not None:
        kw["axis"] = axis
    graph, feeds = one_op("Unique", x, **kw)
    got = run_tvm(graph, feeds)
    want = spec_unique(x, axis, bool(is_sorted))[:outputs]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, (g, w)
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", ["float32", "int64", "int8", "uint8", "float16", "uint64"])
def test_unique_flattened_sorted(dtype: str) -> None:
    x = RNG.integers(0, 5, (3, 4)).astype(dtype)
    check("Unique", x, num_outputs=4, sorted=1)


def test_unique_not_sorted_1d() -> None:
    x = np.array([3, 1, 3, 0, 2, 1, 7], dtype="int64")
    check("Unique", x, num_outputs=4, sorted=0)


def test_unique_negative_and_large_values() -> None:
    check("Unique", np.array([-5.5, 2.0, -5.5, 1e30, -1e30, 2.0], "float32"), num_outputs=4)
    big = np.array([2**63 + 5, 3, 2**63 + 5, 2**64 - 1], "uint64")
    check("Unique", big, num_outputs=4, sorted=1)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_unique_axis_sorted(axis: int) -> None:
    x = np.array([[1, 0, 1], [1, 0, 1], [2, 3, 2], [1, 0, 1]], dtype="float32")
    check("Unique", x, num_outputs=4, sorted=1, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_unique_axis_3d_random(axis: int) -> None:
    x = RNG.integers(0, 2, (4, 5, 3)).astype("int32")
    check("Unique", x, num_outputs=4, sorted=1, axis=axis)


def test_unique_not_sorted_axis0() -> None:
    x = np.array([[2, 3], [1, 0], [2, 3], [0, 0]], dtype="int32")
    check("Unique", x, num_outputs=4, sorted=0, axis=0)


@pytest.mark.parametrize("axis", [None, 1])
def test_unique_not_sorted_as_specified(axis: int | None) -> None:
    # Cases where onnx.reference deviates from the ONNX spec: compared with the spec.
    x = RNG.integers(0, 3, (3, 6)).astype("float32")
    x[:, 4] = x[:, 1]
    check_spec(x, axis, 0)


def test_unique_y_only() -> None:
    check("Unique", np.array([4.0, 1.0, 4.0, 2.0], dtype="float32"), num_outputs=1)
    # sorted=0: first-occurrence order (as specified; onnx.reference sorts a lone Y).
    check_spec(np.array([4, 1, 4, 2], dtype="int64"), None, 0, outputs=1)
    check("Unique", RNG.integers(0, 3, (6, 2)).astype("int64"), num_outputs=2, axis=0)


def test_unique_symbolic_length() -> None:
    x = RNG.integers(0, 4, (9,)).astype("int64")
    check("Unique", x, num_outputs=4, sorted=0, symbolic={0: ["n"]})
    rows = RNG.integers(0, 2, (6, 2)).astype("float32")
    check("Unique", rows, num_outputs=4, sorted=1, axis=0, symbolic={0: ["n", 2]})


def test_unique_axis_with_symbolic_slice_fails_clearly() -> None:
    from ecograph.backends.tvm.driver import lower_graph

    graph, _ = one_op("Unique", rand((3, 4)), num_outputs=4, axis=0, symbolic={0: [3, "w"]})
    with pytest.raises(LoweringError, match="other dims static"):
        lower_graph(graph, lowering_target())


# ------------------------------------------------- deployable: no host callbacks


def chain_graph() -> Graph:
    """NonZero, Compress (run-time condition) and Unique (all four outputs) in one graph."""
    b = GraphBuilder("data_dependent")
    x = b.input("x", "float32", ["n", 4])
    cond = b.input("cond", "bool", ["n"])
    nz = b.op("NonZero", x, name="nz")
    kept = b.op("Compress", x, cond, axis=0, name="kept")
    outs = b.op_multi("Unique", kept, num_outputs=4, axis=0, sorted=0, name="u")
    flat = b.op_multi("Unique", x, num_outputs=4, sorted=1, name="uf")
    b.output(nz, kept, *outs, *flat)
    return b.graph


def chain_feeds() -> dict[str, np.ndarray]:
    x = RNG.integers(0, 3, (6, 4)).astype("float32")
    x[4] = x[0]
    return {"x": x, "cond": np.array([1, 0, 1, 1, 0, 1], bool)}


def assert_no_host_callbacks(executable: Any) -> None:
    text = executable.as_text()
    assert "relax.run." not in text
    called = set(re.findall(r"call\s+([\w.]+)", text))
    # Only the VM's own C++ builtins (TVM registers from Python only relax.run.* and
    # vm.builtin.debug_print / the py_func hooks): no Python callback at run time.
    dotted = {c for c in called if "." in c}
    assert all(c.startswith("vm.builtin.") for c in dotted), dotted
    assert not any("py_func" in c or "debug_print" in c for c in dotted), dotted
    assert "vm.builtin.tensor_to_shape" in dotted  # the data-dependent sizes


def test_no_host_callbacks_in_module() -> None:
    """The chain for the CPU; for CUDA, test_builds_for_cuda checks each op's build (the
    chain's CUDA build took ~4 minutes of CI)."""
    from ecograph.backends.tvm import build

    result = build.build_module(chain_graph(), {"kind": "llvm"}, keep_params=False)
    assert_no_host_callbacks(result.executable)


def test_runtime_only_tvm_runs_data_dependent_ops(tmp_path: Path) -> None:
    """The x86 artifact runs under TVM_USE_RUNTIME_LIB=1 without importing tvm.relax."""
    import ecograph

    graph, feeds = chain_graph(), chain_feeds()
    art = ecograph.compile(graph, "x86", tmp_path / "dd")
    want = interpret(graph, feeds)
    np.save(tmp_path / "x.npy", feeds["x"])
    np.save(tmp_path / "cond.npy", feeds["cond"])
    code = (
        "import sys, numpy as np\n"
        "from ecograph.backends.tvm import load\n"
        f"d = {str(tmp_path)!r}\n"
        f"m = load({str(art)!r})\n"
        "outs = m(np.load(d + '/x.npy'), np.load(d + '/cond.npy'))\n"
        "np.savez(d + '/out.npz', *outs)\n"
        "assert 'tvm.relax' not in sys.modules, 'compiler imported'\n"
    )
    run_with_runtime_only_tvm(code)
    got = np.load(tmp_path / "out.npz")
    assert len(got.files) == len(want)
    for i, (name, w) in enumerate(want.items()):
        np.testing.assert_array_equal(got[f"arr_{i}"], w, err_msg=name)


# ---------------------------------------------------------------------- CUDA build


@pytest.mark.parametrize("case", ["nonzero", "compress", "unique", "unique_axis"])
def test_builds_for_cuda(case: str) -> None:
    from ecograph.backends.tvm import build

    graphs = {
        "nonzero": lambda: one_op("NonZero", rand((3, 4)), symbolic={0: ["n", 4]}),
        "compress": lambda: one_op("Compress", rand((4, 3)), rand((4,), "bool"), axis=0),
        "unique": lambda: one_op("Unique", rand((3, 4)), num_outputs=4, sorted=0),
        "unique_axis": lambda: one_op("Unique", rand((4, 3)), num_outputs=4, axis=1),
    }
    graph, _ = graphs[case]()
    assert_no_host_callbacks(build.build_module(graph, "cuda:sm_80", keep_params=False).executable)


# ------------------------------------------------------------------------- TopK


@pytest.mark.parametrize("largest", [1, 0])
def test_topk_radix_sort_axis_ties_and_symbolic_dims(largest: int) -> None:
    x = RNG.integers(-3, 4, (3, 7, 4)).astype(np.float32)  # many ties
    x[0, 0, 0], x[1, 2, 3] = -0.0, np.inf
    check("TopK", x, Const(np.array([5], np.int64)), axis=1, largest=largest)
    check("TopK", x, Const(np.array([2], np.int64)), axis=-1, largest=largest,
          symbolic={0: ["b", 7, 4]})  # fmt: skip
    ints = RNG.integers(-(2**62), 2**62, (2, 9)).astype(np.int64)
    check("TopK", ints, Const(np.array([9], np.int64)), largest=largest)


def test_topk_runs_with_runtime_only_tvm(tmp_path: Path) -> None:
    """TVM's CPU topk calls tvm.contrib.sort.topk, absent from a runtime-only TVM."""
    import ecograph

    graph, feeds = one_op("TopK", rand((4, 50)), Const(np.array([7], np.int64)), num_outputs=2)
    art = ecograph.compile(graph, "x86", tmp_path / "topk")
    want = interpret(graph, feeds)
    np.save(tmp_path / "x.npy", feeds["x0"])
    code = (
        "import numpy as np\n"
        "from ecograph.backends.tvm import load\n"
        f"v, i = load({str(art)!r})(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, v, i)\n"
    )
    run_with_runtime_only_tvm(code)
    got = np.load(tmp_path / "out.npz")
    for i, w in enumerate(want.values()):
        np.testing.assert_array_equal(got[f"arr_{i}"], w)


def test_topk_builds_for_cuda() -> None:
    from ecograph.backends.tvm import build

    graph, _ = one_op("TopK", rand((4, 50)), Const(np.array([7], np.int64)), num_outputs=2)
    build.build_module(graph, "cuda:sm_80", keep_params=False)
