"""The reference kernels of ecograph/ir/ops/spec_kernels.py: Unique, TfIdfVectorizer,
NonMaxSuppression and NegativeLogLikelihoodLoss, where onnx.reference deviates from the ONNX
spec (SoftmaxCrossEntropyLoss, right in onnx.reference, is checked here too).

Each case is a one-node graph run by `ecograph.ir.interpret`. The cases where onnx.reference
deviates are compared with ONNX Runtime, which implements the spec; Unique for the dtypes ONNX
Runtime lacks (int32, uint8, ...) is compared with `spec_unique`, a small implementation of
the spec text in plain Python. The plain cases are also compared with onnx.reference.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest
from onnx import helper

from ecograph.ir import get_schema, interpret
from ecograph.ir.ops._onnx_ref import reference_kernel
from tests.backends.tvm_helpers import one_op

ort = pytest.importorskip("onnxruntime")

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    """Each test draws the same data whatever runs before it."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.name.encode()))


Inputs = list[np.ndarray | None]


def run_ecograph(op: str, ins: Inputs, attrs: dict[str, Any], outputs: int = 1) -> list[Any]:
    """The node run by ecograph's interpreter (the kernel under test)."""
    g, feeds = one_op(op, *ins, num_outputs=outputs, **attrs)
    return list(interpret(g, feeds).values())


def run_ort(op: str, ins: Inputs, attrs: dict[str, Any], outputs: int = 1) -> list[Any]:
    names = [f"x{i}" if x is not None else "" for i, x in enumerate(ins)]
    node = helper.make_node(op, names, [f"y{i}" for i in range(outputs)], **attrs)
    feeds = {n: x for n, x in zip(names, ins, strict=True) if x is not None}
    graph = helper.make_graph(
        [node],
        op.lower(),
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
            for n, x in feeds.items()
        ],
        [helper.make_empty_tensor_value_info(f"y{i}") for i in range(outputs)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


def run_onnx_reference(op: str, ins: Inputs, attrs: dict[str, Any], outputs: int = 1) -> list:
    return list(reference_kernel(op)(*ins, _num_outputs=outputs, **attrs))[:outputs]


def assert_same(got: list[Any], want: list[Any], rtol: float = 0.0, atol: float = 0.0) -> None:
    assert len(got) == len(want)
    for i, (have, ref) in enumerate(zip(got, want, strict=True)):
        ref = np.asarray(ref)
        assert have.dtype == ref.dtype, f"output {i}: dtype {have.dtype} != {ref.dtype}"
        assert have.shape == ref.shape, f"output {i}: shape {have.shape} != {ref.shape}"
        if rtol or atol:
            np.testing.assert_allclose(have, ref, rtol=rtol, atol=atol, err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(have, ref, err_msg=f"output {i}")


def test_kernels_live_in_spec_kernels() -> None:
    for op in ("Unique", "TfIdfVectorizer", "NonMaxSuppression", "NegativeLogLikelihoodLoss"):
        assert get_schema(op).kernel.__module__ == "ecograph.ir.ops.spec_kernels", op
    assert (
        get_schema("SoftmaxCrossEntropyLoss").kernel.__name__ == "reference_SoftmaxCrossEntropyLoss"
    )


# ------------------------------------------------------------------------ Unique


def spec_unique(x: np.ndarray, axis: int | None, is_sorted: bool) -> list[np.ndarray]:
    """ONNX Unique from the spec text: the unique elements of the flattened input (no axis) or
    the unique subtensors along `axis`, ascending or in order of first occurrence; indices of
    first occurrences, inverse indices and counts."""
    src = x.reshape(-1) if axis is None else np.moveaxis(x, axis, 0)
    keys = [tuple(np.asarray(s).reshape(-1).tolist()) for s in src]
    first: dict[tuple[Any, ...], int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    order = sorted(first) if is_sorted else list(first)
    slot = {k: j for j, k in enumerate(order)}
    idx = np.array([first[k] for k in order], dtype="int64")
    inv = np.array([slot[k] for k in keys], dtype="int64")
    cnt = np.array([keys.count(k) for k in order], dtype="int64")
    y = np.take(x.reshape(-1) if axis is None else x, idx, axis=0 if axis is None else axis)
    return [y, idx, inv, cnt]


def unique_attrs(axis: int | None, is_sorted: int | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if axis is not None:
        attrs["axis"] = axis
    if is_sorted is not None:
        attrs["sorted"] = is_sorted
    return attrs


def small_ints(shape: tuple[int, ...], dtype: str, hi: int = 3) -> np.ndarray:
    x = RNG.integers(0, hi, shape).astype(dtype)
    if len(shape) == 2:
        x[:, -1] = x[:, 0]  # a repeated column, so axis=1 has duplicates
        x[-1] = x[0]  # and a repeated row
    return x


@pytest.mark.parametrize("outputs", [1, 2, 4])
@pytest.mark.parametrize("is_sorted", [0, 1])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("dtype", ["float32", "int64", "int8", "float64"])
def test_unique_matches_ort(dtype: str, axis: int | None, is_sorted: int, outputs: int) -> None:
    """Including the deviations of onnx.reference: a lone Y with sorted=0, a flattened 2-D
    input and axis != 0 with sorted=0."""
    x = small_ints((4, 6), dtype)
    attrs = unique_attrs(axis, is_sorted)
    got = run_ecograph("Unique", [x], attrs, outputs)
    assert_same(got, run_ort("Unique", [x], attrs, outputs))
    assert_same(got, spec_unique(x, axis, bool(is_sorted))[:outputs])


@pytest.mark.parametrize("is_sorted", [0, 1])
@pytest.mark.parametrize("axis", [None, 0, 1, 2])
def test_unique_3d_matches_ort(axis: int | None, is_sorted: int) -> None:
    x = small_ints((3, 4, 2), "int64", hi=2)
    attrs = unique_attrs(axis, is_sorted)
    got = run_ecograph("Unique", [x], attrs, 4)
    assert_same(got, run_ort("Unique", [x], attrs, 4))
    assert_same(got, spec_unique(x, axis, bool(is_sorted)))


@pytest.mark.parametrize("is_sorted", [0, 1])
@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("dtype", ["int32", "uint8", "uint64", "int16", "bool"])
def test_unique_dtypes_without_ort_match_spec(dtype: str, axis: int | None, is_sorted: int) -> None:
    # ONNX Runtime's CPU Unique has float, double, int8, int64 (and a few more), not these.
    x = small_ints((3, 5), dtype, hi=2 if dtype == "bool" else 4)
    attrs = unique_attrs(axis, is_sorted)
    for outputs in (1, 4):
        got = run_ecograph("Unique", [x], attrs, outputs)
        assert_same(got, spec_unique(x, axis, bool(is_sorted))[:outputs])


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("is_sorted", [0, 1])
def test_unique_strings(is_sorted: int, axis: int | None) -> None:
    x = np.array([["b", "a", "b"], ["c", "a", "c"], ["b", "a", "b"]], dtype=object)
    attrs = unique_attrs(axis, is_sorted)
    got = run_ecograph("Unique", [x], attrs, 4)
    assert_same(got, spec_unique(x, axis, bool(is_sorted)))
    if axis is None:
        assert_same(got, run_ort("Unique", [x], attrs, 4))


def test_unique_spec_examples() -> None:
    x = np.array([2, 1, 1, 3, 4, 3], dtype="int64")
    got = run_ecograph("Unique", [x], {"sorted": 0}, 4)
    assert [g.tolist() for g in got] == [
        [2, 1, 3, 4],
        [0, 1, 3, 4],
        [0, 1, 1, 2, 3, 2],
        [1, 2, 2, 1],
    ]
    got = run_ecograph("Unique", [np.array([[1, 3], [2, 3]], "int64")], {"sorted": 1}, 4)
    assert [g.tolist() for g in got] == [[1, 2, 3], [0, 2, 1], [0, 2, 1, 2], [1, 1, 2]]
    x = np.array([[1, 0, 0], [1, 0, 0], [2, 3, 4]], dtype="int64")
    got = run_ecograph("Unique", [x], {"sorted": 1, "axis": 0}, 4)
    assert [g.tolist() for g in got] == [[[1, 0, 0], [2, 3, 4]], [0, 2], [0, 0, 1], [2, 1]]
    x = np.array([[[1, 1], [0, 1], [2, 1], [0, 1]], [[1, 1], [0, 1], [2, 1], [0, 1]]], "float32")
    got = run_ecograph("Unique", [x], {"sorted": 1, "axis": 1}, 4)
    want_y = [[[0, 1], [1, 1], [2, 1]], [[0, 1], [1, 1], [2, 1]]]
    assert [g.tolist() for g in got] == [want_y, [1, 0, 2], [1, 0, 2, 0], [2, 1, 1]]


def test_unique_lone_y_not_sorted() -> None:
    """onnx.reference sorts Y when it is the only output; the spec keeps first occurrences."""
    x = np.array([4, 1, 4, 2, 1], dtype="int64")
    (y,) = run_ecograph("Unique", [x], {"sorted": 0}, 1)
    assert y.tolist() == [4, 1, 2]
    assert run_onnx_reference("Unique", [x], {"sorted": 0}, 1)[0].tolist() == [1, 2, 4]


def test_unique_empty_and_scalar() -> None:
    x = np.zeros((0, 3), "float32")
    for axis in (None, 0):
        got = run_ecograph("Unique", [x], unique_attrs(axis, 0), 4)
        assert_same(got, run_ort("Unique", [x], unique_attrs(axis, 0), 4))
    got = run_ecograph("Unique", [np.array(5.0, "float32")], {}, 4)
    assert [g.tolist() for g in got] == [[5.0], [0], [0], [1]]


@pytest.mark.parametrize("case", ["sorted_flat", "sorted_axis0", "sorted_axis1", "unsorted_1d"])
def test_unique_plain_matches_onnx_reference(case: str) -> None:
    """The cases where onnx.reference is right (sorted, or 1-D / axis 0 with all outputs)."""
    x = small_ints((4, 5), "float32")
    axis, is_sorted, arr = {
        "sorted_flat": (None, 1, x),
        "sorted_axis0": (0, 1, x),
        "sorted_axis1": (1, 1, x),
        "unsorted_1d": (None, 0, x.reshape(-1)),
    }[case]
    attrs = unique_attrs(axis, is_sorted)
    for outputs in (1, 4):
        got = run_ecograph("Unique", [arr], attrs, outputs)
        assert_same(got, run_onnx_reference("Unique", [arr], attrs, outputs))


# --------------------------------------------------------------- TfIdfVectorizer

# 4 unigrams, 4 bigrams and 2 trigrams.
POOL: dict[str, Any] = dict(
    pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7, 9, 9, 2, 3, 5, 6, 7, 8],
    ngram_counts=[0, 4, 12],
)
WEIGHTS = [0.5, 1.0, 2.0, 0.25, 3.0, 1.5, 0.75, 2.5, 4.0, 0.125]
INDEXES = {
    "identity": list(range(10)),
    "reversed": list(range(9, -1, -1)),
    "gaps": [0, 2, 4, 6, 8, 10, 12, 14, 16, 18],
}


def tfidf_input(shape: tuple[int, ...], dtype: str = "int64") -> np.ndarray:
    x = RNG.integers(2, 10, shape).astype(dtype)
    x.reshape(-1)[:3] = [2, 3, 5]  # the first trigram, at least once
    return x


@pytest.mark.parametrize("indexes", list(INDEXES))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
def test_tfidf_matches_ort(mode: str, weighted: bool, indexes: str) -> None:
    """IDF / TFIDF without weights (onnx.reference raises) and weights with ngram_indexes that
    are not the identity (onnx.reference indexes the weights by output column)."""
    x = tfidf_input((3, 10))
    attrs = dict(POOL, mode=mode, min_gram_length=1, max_gram_length=3, max_skip_count=2)
    attrs["ngram_indexes"] = INDEXES[indexes]
    if weighted:
        attrs["weights"] = WEIGHTS
    got = run_ecograph("TfIdfVectorizer", [x], attrs)
    assert_same(got, run_ort("TfIdfVectorizer", [x], attrs))


@pytest.mark.parametrize(("lo", "hi", "skip"), [(1, 1, 0), (2, 2, 1), (2, 3, 0), (3, 3, 3)])
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_tfidf_gram_ranges_1d_matches_ort(dtype: str, lo: int, hi: int, skip: int) -> None:
    x = tfidf_input((16,), dtype)
    attrs = dict(POOL, mode="TFIDF", min_gram_length=lo, max_gram_length=hi, max_skip_count=skip)
    attrs["ngram_indexes"] = INDEXES["reversed"]
    got = run_ecograph("TfIdfVectorizer", [x], attrs)
    assert got[0].shape == (10,)
    assert_same(got, run_ort("TfIdfVectorizer", [x], attrs))


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
def test_tfidf_strings_match_ort(mode: str) -> None:
    x = np.array([["a", "b", "a", "c"], ["b", "b", "c", "a"]], dtype=object)
    attrs = dict(
        mode=mode, min_gram_length=1, max_gram_length=2, max_skip_count=1,
        pool_strings=["a", "b", "c", "a", "b", "b", "c"], ngram_counts=[0, 3],
        ngram_indexes=[4, 0, 2, 1, 3], weights=[1.0, 2.0, 3.0, 4.0, 5.0],
    )  # fmt: skip
    got = run_ecograph("TfIdfVectorizer", [x], attrs)
    assert_same(got, run_ort("TfIdfVectorizer", [x], attrs))


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
def test_tfidf_plain_matches_onnx_reference(mode: str) -> None:
    """TF, and weighted IDF / TFIDF with identity ngram_indexes: onnx.reference is right."""
    x = tfidf_input((2, 12))
    attrs = dict(POOL, mode=mode, min_gram_length=1, max_gram_length=3, max_skip_count=1)
    attrs.update(ngram_indexes=INDEXES["identity"], weights=WEIGHTS)
    got = run_ecograph("TfIdfVectorizer", [x], attrs)
    assert_same(got, run_onnx_reference("TfIdfVectorizer", [x], attrs))
    if mode == "TF":  # TF ignores the weights: any ngram_indexes
        for indexes in ("reversed", "gaps"):
            attrs["ngram_indexes"] = INDEXES[indexes]
            got = run_ecograph("TfIdfVectorizer", [x], attrs)
            assert_same(got, run_onnx_reference("TfIdfVectorizer", [x], attrs))


# ------------------------------------------------------------- NonMaxSuppression


def random_boxes(batch: int, n: int, center: bool) -> np.ndarray:
    xy = RNG.uniform(0, 10, (batch, n, 2))
    wh = RNG.uniform(0.5, 4, (batch, n, 2))
    if center:
        return np.concatenate([xy, wh], -1).astype("float32")
    b = np.concatenate([xy, xy + wh], -1)  # [y1, x1, y2, x2], some corners flipped
    flip = RNG.random((batch, n)) < 0.3
    b[flip] = b[flip][:, [2, 3, 0, 1]]
    return b.astype("float32")


def nms_inputs(center: bool = False) -> tuple[np.ndarray, np.ndarray]:
    boxes = random_boxes(2, 10, center)
    scores = RNG.uniform(0, 1, (2, 3, 10)).astype("float32")
    scores[0, 0, 3] = scores[0, 0, 5]  # a tie
    return boxes, scores


def nms_scalars(limit: int | None, iou: float | None, thr: float | None, rank: int) -> Inputs:
    def make(v: float | None, dtype: str) -> np.ndarray | None:
        return None if v is None else np.array(v if rank == 0 else [v], dtype)

    ins = [make(limit, "int64"), make(iou, "float32"), make(thr, "float32")]
    while ins and ins[-1] is None:
        ins.pop()
    return ins


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize(
    ("limit", "iou", "thr"),
    [
        (None, None, None),
        (None, 0.5, 0.2),
        (4, None, None),
        (4, 0.3, None),
        (4, None, 0.4),
        (10, 0.0, 0.2),
        (3, 0.5, 0.3),
        (0, 0.5, None),
        (-2, 0.5, None),
    ],
)
def test_nms_optional_and_scalar_inputs_match_ort(
    limit: int | None, iou: float | None, thr: float | None, rank: int, center: int
) -> None:
    boxes, scores = nms_inputs(bool(center))
    ins = [boxes, scores, *nms_scalars(limit, iou, thr, rank)]
    attrs = {"center_point_box": center}
    got = run_ecograph("NonMaxSuppression", ins, attrs)
    assert_same(got, run_ort("NonMaxSuppression", ins, attrs))
    if limit is None or limit <= 0:
        assert got[0].shape == (0, 3)


def test_nms_negative_scores_and_threshold() -> None:
    boxes = random_boxes(1, 8, False)
    scores = RNG.uniform(-1, 1, (1, 2, 8)).astype("float32")
    ins = [boxes, scores, *nms_scalars(10, 0.0, -0.5, 0)]
    assert_same(run_ecograph("NonMaxSuppression", ins, {}), run_ort("NonMaxSuppression", ins, {}))


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("with_thr", [False, True])
def test_nms_plain_matches_onnx_reference(with_thr: bool, center: int) -> None:
    """All of limit and iou_threshold given as 1-element tensors: onnx.reference is right."""
    boxes, scores = nms_inputs(bool(center))
    ins = [boxes, scores, *nms_scalars(4, 0.3, 0.25 if with_thr else None, 1)]
    attrs = {"center_point_box": center}
    got = run_ecograph("NonMaxSuppression", ins, attrs)
    assert_same(got, run_onnx_reference("NonMaxSuppression", ins, attrs))
    assert_same(got, run_ort("NonMaxSuppression", ins, attrs))


def test_nms_rejects_non_scalar_limit() -> None:
    from ecograph.errors import InterpreterError

    boxes, scores = nms_inputs()
    with pytest.raises(InterpreterError, match="max_output_boxes_per_class must be a scalar"):
        run_ecograph("NonMaxSuppression", [boxes, scores, np.array([2, 3], "int64")], {})


# ------------------------------------------------------------------------ losses

LOSSES = ["NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"]


def loss_inputs(op: str, weighted: bool, ignore: int | None, dtype: str = "float32") -> Inputs:
    x = RNG.standard_normal((3, 5, 4)).astype(dtype)
    if op == "NegativeLogLikelihoodLoss":
        x = -np.abs(x)  # log-probabilities
    t = RNG.integers(0, 5, (3, 4)).astype("int64")
    if ignore is not None:
        t.reshape(-1)[::3] = ignore
    w = RNG.uniform(0.1, 1.0, (5,)).astype(dtype) if weighted else None
    return [x, t, w]


def loss_attrs(reduction: str, ignore: int | None) -> dict[str, Any]:
    return {"reduction": reduction, **({} if ignore is None else {"ignore_index": ignore})}


@pytest.mark.parametrize("ignore", [None, 1, -1, 7])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("op", LOSSES)
def test_losses_match_ort(op: str, reduction: str, weighted: bool, ignore: int | None) -> None:
    """Mean = sum of the weighted losses / sum of the weights applied, ignored targets having
    weight 0 (onnx.reference's NLL without a weight input divides by all targets when
    ignore_index is -1)."""
    ins = loss_inputs(op, weighted, ignore)
    attrs = loss_attrs(reduction, ignore)
    got = run_ecograph(op, ins, attrs)
    assert_same(got, run_ort(op, ins, attrs), rtol=1e-5, atol=1e-6)


def test_nll_mean_ignore_minus_one_without_weight() -> None:
    x, t, _ = loss_inputs("NegativeLogLikelihoodLoss", False, -1)
    (got,) = run_ecograph("NegativeLogLikelihoodLoss", [x, t], loss_attrs("mean", -1))
    kept = t != -1
    picked = np.take_along_axis(x, np.where(kept, t, 0)[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(got, -picked[kept].sum() / kept.sum(), rtol=1e-6)
    assert got.dtype == np.float32 and got.shape == ()


@pytest.mark.parametrize("ignore", [None, 1, -1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("op", LOSSES)
def test_losses_plain_match_onnx_reference(
    op: str, reduction: str, weighted: bool, ignore: int | None
) -> None:
    ins = loss_inputs(op, weighted, ignore)
    attrs = loss_attrs(reduction, ignore)
    outputs = 2 if op == "SoftmaxCrossEntropyLoss" else 1
    got = run_ecograph(op, ins, attrs, outputs)
    want = run_onnx_reference(op, ins, attrs, outputs)
    if op == "NegativeLogLikelihoodLoss" and (reduction, weighted, ignore) == ("mean", False, -1):
        # onnx.reference divides by all targets here (`elif ignore_index != -1`), ignored ones
        # included; ecograph divides by the counted ones (the spec and ORT, tested above).
        kept = ins[1] != -1
        np.testing.assert_allclose(got[0] * kept.sum() / kept.size, want[0], rtol=1e-6)
        return
    assert_same(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_nll_other_dtypes_match_ort(dtype: str) -> None:
    ins = loss_inputs("NegativeLogLikelihoodLoss", False, -1, dtype)
    attrs = loss_attrs("mean", -1)
    got = run_ecograph("NegativeLogLikelihoodLoss", ins, attrs)
    assert_same(got, run_ort("NegativeLogLikelihoodLoss", ins, attrs), rtol=2e-3, atol=1e-3)
