"""TVM lowerings of ecograph/backends/tvm/ops/misc.py against the reference interpreter:
losses, RotaryEmbedding, TfIdfVectorizer and the data-dependent NonMaxSuppression (NonZero,
Compress and Unique: test_tvm_data_dependent.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.errors import LoweringError
from tests.backends.tvm_helpers import Const, assert_matches, one_op, rand, run_tvm

COVERED_OPS = {
    ("", "NegativeLogLikelihoodLoss"),
    ("", "SoftmaxCrossEntropyLoss"),
    ("", "RotaryEmbedding"),
    ("", "TfIdfVectorizer"),
    ("", "NonMaxSuppression"),
}

RNG = np.random.default_rng(7)


def check(op: str, *inputs: Any, **kw: Any) -> list[np.ndarray]:
    graph, feeds = one_op(op, *inputs, **kw)
    got = run_tvm(graph, feeds)
    assert_matches(graph, feeds, got)
    return got


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

POOL = dict(
    pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7, 9, 9, 2],
    ngram_counts=[0, 4, 12],
    ngram_indexes=[0, 1, 2, 3, 4, 5, 6, 7, 8],
)


# onnx.reference (the interpreter's kernel) cannot run IDF/TFIDF without weights.
@pytest.mark.parametrize(
    ("mode", "weighted"), [("TF", False), ("TF", True), ("IDF", True), ("TFIDF", True)]
)
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
    # No max_output_boxes_per_class input: ONNX's default 0 selects no box. (onnx.reference
    # fails on absent optional inputs, so only the shape is checked.)
    graph, feeds = one_op("NonMaxSuppression", boxes, scores)
    assert run_tvm(graph, feeds)[0].shape == (0, 3)


def test_nms_constant_limit_symbolic_boxes() -> None:
    boxes = random_boxes(1, 9, False)
    scores = RNG.uniform(0, 1, (1, 2, 9)).astype("float32")
    check(
        "NonMaxSuppression", boxes, scores, Const(np.array([3], "int64")),
        Const(np.array([0.1], "float32")), symbolic={0: [1, "n", 4], 1: [1, 2, "n"]},
    )  # fmt: skip


def test_nms_symbolic_classes_fails_clearly() -> None:
    from ecograph.backends.tvm.lowering import lower_graph

    graph, _ = one_op(
        "NonMaxSuppression", random_boxes(1, 4, False), rand((1, 2, 4)), np.array([2], "int64"),
        symbolic={1: [1, "classes", 4]},
    )  # fmt: skip
    with pytest.raises(LoweringError, match="class count"):
        lower_graph(graph)


def test_tfidf_string_pool_fails_clearly() -> None:
    from ecograph.backends.tvm.lowering import lower_graph

    graph, _ = one_op(
        "TfIdfVectorizer", np.array([1, 2], "int64"), mode="TF", min_gram_length=1,
        max_gram_length=1, max_skip_count=0, ngram_counts=[0], ngram_indexes=[0],
        pool_strings=["a"],
    )  # fmt: skip
    with pytest.raises(LoweringError, match="pool_strings"):
        lower_graph(graph)


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
