"""TVM lowerings of ecograph/backends/tvm/ops/misc.py against the reference interpreter:
losses, RotaryEmbedding, TfIdfVectorizer and the data-dependent NonMaxSuppression (NonZero,
Compress and Unique: test_tvm_data_dependent.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.errors import LoweringError
from tests.backends.tvm_helpers import Const, lowering_target, one_op, rand
from tests.backends.tvm_helpers import check_op as check

COVERED_OPS = {
    ("", "NegativeLogLikelihoodLoss"),
    ("", "SoftmaxCrossEntropyLoss"),
    ("", "RotaryEmbedding"),
    ("", "TfIdfVectorizer"),
    ("", "NonMaxSuppression"),
}

RNG = np.random.default_rng(7)


def targets(shape: tuple[int, ...], classes: int, ignore: int | None = None) -> np.ndarray:
    t = RNG.integers(0, classes, shape).astype("int64")
    if ignore is not None:
        t.reshape(-1)[::3] = ignore
    return t


# ------------------------------------------------------------------------ losses


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [None, 1, -1, 10])
def test_nll_loss(reduction: str, weighted: bool, ignore: int | None) -> None:
    x = rand((3, 5, 4))
    t = targets((3, 4), 5, ignore)
    w = rand((5,), lo=0.1, hi=1.0) if weighted else None
    attrs: dict[str, Any] = {"reduction": reduction}
    if ignore is not None:
        attrs["ignore_index"] = ignore
    check("NegativeLogLikelihoodLoss", x, t, w, **attrs)


def test_nll_loss_high_rank_and_2d() -> None:
    check("NegativeLogLikelihoodLoss", rand((2, 3, 4, 2, 3)), targets((2, 4, 2, 3), 3))
    check("NegativeLogLikelihoodLoss", rand((4, 6)), targets((4,), 6), reduction="sum")


def test_nll_loss_symbolic_batch() -> None:
    x, t = rand((3, 5, 2)), targets((3, 2), 5)
    check(
        "NegativeLogLikelihoodLoss", x, t, reduction="none", symbolic={0: ["n", 5, 2], 1: ["n", 2]}
    )


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [None, 2, -1])
@pytest.mark.parametrize("log_prob", [False, True])
def test_softmax_cross_entropy(
    reduction: str, weighted: bool, ignore: int | None, log_prob: bool
) -> None:
    x = rand((3, 5, 2, 3))
    t = targets((3, 2, 3), 5, ignore)
    w = rand((5,), lo=0.1, hi=1.0) if weighted else None
    attrs: dict[str, Any] = {"reduction": reduction}
    if ignore is not None:
        attrs["ignore_index"] = ignore
    check("SoftmaxCrossEntropyLoss", x, t, w, num_outputs=2 if log_prob else 1, **attrs)


def test_softmax_cross_entropy_float64_2d() -> None:
    check("SoftmaxCrossEntropyLoss", rand((4, 7), "float64"), targets((4,), 7), num_outputs=2)


# --------------------------------------------------------------- RotaryEmbedding


def caches(rows: int, half: int) -> tuple[np.ndarray, np.ndarray]:
    ang = RNG.uniform(0, 6.3, (rows, half)).astype("float32")
    return np.cos(ang), np.sin(ang)


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rot_dim", [0, 4])
def test_rotary_embedding_4d(interleaved: int, rot_dim: int) -> None:
    x = rand((2, 3, 5, 8))
    cos, sin = caches(20, (rot_dim or 8) // 2)
    pos = RNG.integers(0, 20, (2, 5)).astype("int64")
    check(
        "RotaryEmbedding", x, cos, sin, pos, interleaved=interleaved, rotary_embedding_dim=rot_dim
    )


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_3d(interleaved: int) -> None:
    x = rand((2, 5, 24))  # 4 heads of 6
    cos, sin = caches(10, 3)
    pos = RNG.integers(0, 10, (2, 5)).astype("int64")
    check("RotaryEmbedding", x, cos, sin, pos, num_heads=4, interleaved=interleaved)


def test_rotary_embedding_no_position_ids() -> None:
    x = rand((2, 2, 3, 8))
    cos = np.cos(rand((2, 3, 2)))
    sin = np.sin(rand((2, 3, 2)))
    check("RotaryEmbedding", x, cos, sin, None, rotary_embedding_dim=4, interleaved=1)


def test_rotary_embedding_symbolic_seq() -> None:
    x = rand((1, 2, 6, 8))
    cos, sin = caches(16, 4)
    pos = np.arange(6, dtype="int64").reshape(1, 6)
    check(
        "RotaryEmbedding", x, Const(cos), Const(sin), pos,
        symbolic={0: [1, 2, "seq", 8], 3: [1, "seq"]},
    )  # fmt: skip


# --------------------------------------------------------------- TfIdfVectorizer

# 4 unigrams, 4 bigrams, 1 trigram (9 n-grams); output columns in reverse pool order, so a
# weight indexed by column instead of by pool n-gram would show.
POOL = dict(
    pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7, 9, 9, 2, 3, 5],
    ngram_counts=[0, 4, 12],
    ngram_indexes=[8, 7, 6, 5, 4, 3, 2, 1, 0],
)


@pytest.mark.parametrize(
    ("mode", "weighted"),
    [("TF", False), ("TF", True), ("IDF", False), ("IDF", True), ("TFIDF", False),
     ("TFIDF", True)],
)  # fmt: skip
def test_tfidf_modes(mode: str, weighted: bool) -> None:
    x = RNG.integers(2, 10, (3, 9)).astype("int64")
    attrs: dict[str, Any] = dict(POOL, mode=mode, min_gram_length=1, max_gram_length=3)
    attrs["max_skip_count"] = 2
    if weighted:
        attrs["weights"] = [0.5, 1.0, 2.0, 0.25, 3.0, 1.5, 0.75, 2.5, 4.0]
    check("TfIdfVectorizer", x, **attrs)


@pytest.mark.parametrize(("lo", "hi", "skip"), [(2, 2, 0), (1, 1, 3), (2, 3, 1), (3, 3, 4)])
def test_tfidf_gram_ranges_int32_1d(lo: int, hi: int, skip: int) -> None:
    x = RNG.integers(2, 10, (14,)).astype("int32")
    check(
        "TfIdfVectorizer", x, mode="TF", min_gram_length=lo, max_gram_length=hi,
        max_skip_count=skip, **POOL,
    )  # fmt: skip


def test_tfidf_symbolic_length() -> None:
    x = np.array([[2, 3, 5, 4, 5, 6], [7, 8, 6, 7, 9, 9]], dtype="int64")
    check(
        "TfIdfVectorizer", x, mode="TFIDF", min_gram_length=1, max_gram_length=2,
        max_skip_count=1, weights=[1.5] * 9, symbolic={0: [2, "c"]}, **POOL,
    )  # fmt: skip


# ------------------------------------------------------------- NonMaxSuppression


def random_boxes(batch: int, n: int, center: bool) -> np.ndarray:
    xy = RNG.uniform(0, 10, (batch, n, 2))
    wh = RNG.uniform(0.5, 4, (batch, n, 2))
    if center:
        return np.concatenate([xy, wh], -1).astype("float32")
    # corner form [y1, x1, y2, x2], some boxes flipped
    b = np.concatenate([xy, xy + wh], -1)
    flip = RNG.random((batch, n)) < 0.3
    b[flip] = b[flip][:, [2, 3, 0, 1]]
    return b.astype("float32")


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("with_score_threshold", [False, True])
def test_nms_random(center: int, with_score_threshold: bool) -> None:
    boxes = random_boxes(2, 12, bool(center))
    scores = RNG.uniform(0, 1, (2, 3, 12)).astype("float32")
    scores[0, 0, 3] = scores[0, 0, 5]  # a tie: the lower index goes first
    thr = np.array([0.3], "float32") if with_score_threshold else None
    check(
        "NonMaxSuppression", boxes, scores, np.array([4], "int64"), np.array([0.2], "float32"),
        thr, center_point_box=center,
    )  # fmt: skip


def test_nms_negative_scores_zero_iou_threshold() -> None:
    boxes = random_boxes(1, 8, False)
    scores = RNG.uniform(-1, 1, (1, 2, 8)).astype("float32")
    check(
        "NonMaxSuppression", boxes, scores, np.array([10], "int64"), np.array([0.0], "float32"),
        np.array([-0.5], "float32"),
    )  # fmt: skip


def test_nms_zero_limit_and_absent_limit_select_nothing() -> None:
    boxes, scores = random_boxes(1, 5, False), rand((1, 1, 5))
    got = check(
        "NonMaxSuppression", boxes, scores, np.array([0], "int64"), np.array([0.5], "float32")
    )
    assert got[0].shape == (0, 3)
    # No max_output_boxes_per_class input: ONNX's default 0 selects no box.
    assert check("NonMaxSuppression", boxes, scores)[0].shape == (0, 3)
    # 0-d limit and threshold (models carry them so too)
    got = check("NonMaxSuppression", boxes, scores, np.array(2, "int64"), np.array(0.3, "f4"))
    assert got[0].shape[0] <= 2


def test_nms_constant_limit_symbolic_boxes() -> None:
    boxes = random_boxes(1, 9, False)
    scores = RNG.uniform(0, 1, (1, 2, 9)).astype("float32")
    check(
        "NonMaxSuppression", boxes, scores, Const(np.array([3], "int64")),
        Const(np.array([0.1], "float32")), symbolic={0: [1, "n", 4], 1: [1, 2, "n"]},
    )  # fmt: skip


def test_nms_symbolic_classes_fails_clearly() -> None:
    from ecograph.backends.tvm.driver import lower_graph

    graph, _ = one_op(
        "NonMaxSuppression", random_boxes(1, 4, False), rand((1, 2, 4)), np.array([2], "int64"),
        symbolic={1: [1, "classes", 4]},
    )  # fmt: skip
    with pytest.raises(LoweringError, match="class count"):
        lower_graph(graph, lowering_target())


def test_tfidf_string_pool_fails_clearly() -> None:
    from ecograph.backends.tvm.driver import lower_graph

    graph, _ = one_op(
        "TfIdfVectorizer", np.array([1, 2], "int64"), mode="TF", min_gram_length=1,
        max_gram_length=1, max_skip_count=0, ngram_counts=[0], ngram_indexes=[0],
        pool_strings=["a"],
    )  # fmt: skip
    with pytest.raises(LoweringError, match="pool_strings"):
        lower_graph(graph, lowering_target())


# ---------------------------------------------------------------------- CUDA build


@pytest.mark.parametrize("case", ["nms", "sce", "rotary", "tfidf"])
def test_builds_for_cuda(case: str) -> None:
    from ecograph.backends.tvm import build

    graphs = {
        "nms": lambda: one_op(
            "NonMaxSuppression", random_boxes(2, 6, False), rand((2, 2, 6)),
            np.array([3], "int64"), np.array([0.5], "float32"), np.array([0.1], "float32"),
        ),
        "sce": lambda: one_op(
            "SoftmaxCrossEntropyLoss", rand((3, 5, 2)), targets((3, 2), 5), rand((5,)),
            num_outputs=2, ignore_index=1,
        ),
        "rotary": lambda: one_op(
            "RotaryEmbedding", rand((2, 3, 4, 8)), *caches(8, 4),
            np.zeros((2, 4), "int64"), interleaved=1,
        ),
        "tfidf": lambda: one_op(
            "TfIdfVectorizer", np.zeros((2, 6), "int64"), mode="TFIDF", min_gram_length=1,
            max_gram_length=2, max_skip_count=1, **POOL,
        ),
    }  # fmt: skip
    graph, _ = graphs[case]()
    build.build_module(graph, "cuda:sm_80", keep_params=False)


# ------------------------------------------------ CUDA: kernels are device code, not host code


def _modules(mod: Any) -> Iterator[Any]:
    yield mod
    for imported in mod.imports:
        yield from _modules(imported)


def cuda_build_sources(ex: Any) -> tuple[str, str]:
    """(CUDA source, host LLVM IR) of a CUDA-built VM executable (compile only, no GPU)."""
    mods = list(_modules(ex.mod))
    cuda = "".join(m.inspect_source() for m in mods if m.kind == "cuda")
    host = "".join(m.inspect_source("ll") for m in mods if m.kind == "llvm")
    assert cuda and host, [m.kind for m in mods]
    return cuda, host


def gpu_kernels(cuda: str) -> set[str]:
    return set(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", cuda))


def host_derefs(host: str) -> list[str]:
    """Host code that touches tensor memory in a CUDA build (there, all of it is on the device):
    a parallel-for launch, or a `<func>_compute_` host function that loads from, stores into or
    indexes one of its buffer pointers (instead of only passing them to a kernel launch). The
    VM's own `shape_func`s work on the host shape heap and are skipped."""
    found = ["TVMBackendParallelLaunch"] if "TVMBackendParallelLaunch" in host else []
    funcs = re.finditer(r"^define [^\n]*?@(\w+)_compute_\(([^\n]*)\n(.*?)^\}", host, re.M | re.S)
    for name, header, body in (m.groups() for m in funcs):
        if re.fullmatch(r"shape_func\d*", name):
            continue
        for ptr in re.findall(r"ptr\b[^%,]*%([\w.]+)", header):
            if ptr == "stack_ffi_any":  # the launch's argument stack
                continue
            q = re.escape(ptr)
            uses = (rf"load [^,\n]+, ptr %{q}\b", rf"store [^,\n]+, ptr %{q}\b")
            uses += (rf"getelementptr[^,\n]*, ptr %{q}\b",)
            if any(re.search(u, body) for u in uses):
                found.append(f"{name}: {ptr}")
    return found


def nms_graph(symbolic: dict[int, list[Any]] | None = None, center: int = 0) -> Any:
    graph, _ = one_op(
        "NonMaxSuppression", random_boxes(2, 6, bool(center)), rand((2, 3, 6)),
        np.array([3], "int64"), np.array([0.5], "float32"), np.array([0.1], "float32"),
        center_point_box=center, symbolic=symbolic or {},
    )  # fmt: skip
    return graph


@pytest.mark.parametrize(
    "symbolic",
    [None, {0: [2, "n", 4], 1: [2, 3, "n"]}, {0: ["b", 6, 4], 1: ["b", 3, 6]}],
    ids=["static", "symbolic_boxes", "symbolic_batch"],
)
def test_nms_cuda_greedy_kernel_is_a_gpu_launch(symbolic: dict[int, list[Any]] | None) -> None:
    from ecograph.backends.tvm import build

    ex = build.build_module(nms_graph(symbolic), "cuda:sm_80", keep_params=False).executable
    cuda, host = cuda_build_sources(ex)
    assert {"nms_greedy_kernel", "nms_owner_kernel", "nms_rows_kernel"} <= gpu_kernels(cuda)
    greedy = re.search(r"void nms_greedy_kernel\([^)]*\) \{\n(.*?)\n\}\n", cuda, re.S)
    assert greedy and "blockIdx.x" in greedy.group(1)  # one block per (batch, class) row
    assert host_derefs(host) == []


def test_nms_host_check_catches_the_cpu_kernel_in_a_cuda_build(monkeypatch: Any) -> None:
    """The check above is not vacuous: the CPU form of the kernel (a parallel loop), built for
    CUDA, has no GPU kernel and runs on the host; so does a serial loop."""
    from tvm.script.ir_builder import tirx

    from ecograph.backends.tvm import build

    lower = build.lower_graph

    def as_cpu(graph: Any, target: Any, **kw: Any) -> Any:
        return lower(graph, lowering_target("x86"), **kw)

    monkeypatch.setattr(build, "lower_graph", as_cpu)
    ex = build.build_module(nms_graph(), "cuda:sm_80", keep_params=False).executable
    cuda, host = cuda_build_sources(ex)
    assert "nms_greedy_kernel" not in gpu_kernels(cuda)
    assert host_derefs(host) == ["TVMBackendParallelLaunch"]

    monkeypatch.setattr(tirx, "parallel", tirx.serial)
    ex = build.build_module(nms_graph(), "cuda:sm_80", keep_params=False).executable
    cuda, host = cuda_build_sources(ex)
    assert "nms_greedy_kernel" not in gpu_kernels(cuda)
    assert "nms_greedy: x1" in host_derefs(host)


def test_nms_kernel_form_follows_target_family() -> None:
    from ecograph.backends.tvm.driver import lower_graph

    def greedy_script(family: str) -> str:
        mod = lower_graph(nms_graph(), lowering_target(family)).mod
        return next(f.script() for gv, f in mod.functions.items() if gv.name_hint == "nms_greedy")

    cpu, cuda = greedy_script("x86"), greedy_script("cuda")
    assert "T.parallel" in cpu and "launch_thread" not in cpu
    assert 'T.launch_thread("blockIdx.x"' in cuda and "T.parallel" not in cuda


@pytest.mark.parametrize("center", [0, 1])
def test_nms_cpu_numerics_three_classes(center: int) -> None:
    """CPU form still matches the reference (the CUDA form shares the same row body)."""
    boxes = random_boxes(2, 6, bool(center))
    scores = RNG.uniform(0, 1, (2, 3, 6)).astype("float32")
    check(
        "NonMaxSuppression", boxes, scores, np.array([3], "int64"), np.array([0.5], "float32"),
        np.array([0.1], "float32"), center_point_box=center,
        symbolic={0: ["b", 6, 4], 1: ["b", 3, 6]},
    )  # fmt: skip
