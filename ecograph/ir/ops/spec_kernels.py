"""Reference kernels of ONNX ops where onnx.reference deviates from the ONNX spec.

The schemas (inputs, outputs, attributes) are ONNX's at `ONNX_OPSET` and the types come from
ONNX's shape inference, as for the ops in `reference_ops.py`; only the kernels differ. Where
onnx.reference gets the core of an op right, the kernel here fixes its inputs or outputs around
a call to it; otherwise the kernel is ecograph's own numpy. Each follows the spec as ONNX
Runtime implements it (and is tested against it where ONNX Runtime has the op):

* Unique (own kernel): with `sorted=0`, Y (also when it is the only output) and the other
  outputs are in order of first occurrence; without `axis` the input is flattened; with an
  `axis`, subtensors are taken along that axis. (onnx.reference sorts a lone Y, and with
  `sorted=0` takes Y along axis 0 of the unflattened input whatever the axis.)
* TfIdfVectorizer (n-gram counts from onnx.reference): `weights` default to 1 in IDF / TFIDF
  modes, and the i-th weight scales the i-th pool n-gram, which lands in output column
  `ngram_indexes[i]`. (onnx.reference raises without weights and indexes the weights by output
  column.)
* NonMaxSuppression (onnx.reference after normalising the inputs): an absent
  `max_output_boxes_per_class` selects no box, an absent `iou_threshold` is 0, an absent
  `score_threshold` filters nothing; the three may be 0-d or 1-element tensors. (onnx.reference
  raises on absent or 0-d ones.)
* NegativeLogLikelihoodLoss (onnx.reference with unit class weights when none are given):
  `reduction="mean"` divides by the summed weights of the targets that are not `ignore_index`.
  (Without a weight input, onnx.reference divides by the count of all targets when
  `ignore_index` is -1.) SoftmaxCrossEntropyLoss is right in onnx.reference and stays there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ecograph.ir.ops._onnx_ref import reference_kernel, register_reference_op

_INT64 = np.dtype(np.int64)


def _register(op: str, kernel: Callable[..., Any]) -> None:
    register_reference_op(op, kernel=kernel, kernel_source="ecograph.ir.ops.spec_kernels")


# ------------------------------------------------------------------------ Unique


def _unique_object_axis(
    x: np.ndarray, axis: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """np.unique(..., axis=axis) for object (string) tensors, which numpy does not support:
    slices compared as tuples, lexicographically as numpy compares them."""
    moved = np.moveaxis(x, axis, 0)
    keys = [tuple(row) for row in moved.reshape(moved.shape[0], -1).tolist()]
    first: dict[tuple[Any, ...], int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    order = sorted(first)
    slot = {k: j for j, k in enumerate(order)}
    idx = np.array([first[k] for k in order], dtype=_INT64)
    inv = np.array([slot[k] for k in keys], dtype=_INT64)
    cnt = np.bincount(inv, minlength=len(order)).astype(_INT64)
    return np.take(x, idx, axis=axis), idx, inv, cnt


def unique(x: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
    """ONNX Unique: Y, indices (first occurrences), inverse_indices and counts; sorted
    ascending (`sorted=1`) or in order of first occurrence (`sorted=0`)."""
    x = np.asarray(x)
    axis = attrs.get("axis")
    is_sorted = bool(1 if attrs.get("sorted") is None else attrs["sorted"])
    if axis is None:
        src, ax = x.reshape(-1), 0
    else:
        ax = int(axis)
        if not -x.ndim <= ax < x.ndim:
            raise ValueError(f"axis {ax} is out of range for a rank-{x.ndim} input")
        src, ax = x, ax % x.ndim
    if src.ndim == 1:  # flattened, or a 1-D input (numpy has no axis for object dtype)
        y, idx, inv, cnt = np.unique(
            src, return_index=True, return_inverse=True, return_counts=True
        )
    elif src.dtype == object:
        y, idx, inv, cnt = _unique_object_axis(src, ax)
    else:
        y, idx, inv, cnt = np.unique(
            src, return_index=True, return_inverse=True, return_counts=True, axis=ax
        )
    idx, inv, cnt = (np.asarray(a, dtype=_INT64).reshape(-1) for a in (idx, inv, cnt))
    if not is_sorted:
        perm = np.argsort(idx, kind="stable")  # unique slices by first occurrence
        renumber = np.empty_like(perm)
        renumber[perm] = np.arange(perm.size)
        idx, cnt, inv = idx[perm], cnt[perm], renumber[inv].astype(_INT64)
        y = np.take(src, idx, axis=ax)
    return np.ascontiguousarray(y).astype(x.dtype, copy=False), idx, inv, cnt


# --------------------------------------------------------------- TfIdfVectorizer

_tfidf_reference = reference_kernel("TfIdfVectorizer")


def tfidf_vectorizer(x: np.ndarray, **attrs: Any) -> tuple[np.ndarray]:
    """ONNX TfIdfVectorizer: n-gram counts (onnx.reference, TF mode, one column per pool
    n-gram), weighted per pool n-gram and summed into the `ngram_indexes` columns."""
    mode = attrs.get("mode")
    if mode not in ("TF", "IDF", "TFIDF"):
        raise ValueError(f"mode must be TF, IDF or TFIDF, got {mode!r}")
    indexes = np.asarray(attrs["ngram_indexes"], dtype=_INT64).reshape(-1)
    if indexes.size == 0 or (indexes < 0).any():
        raise ValueError(f"ngram_indexes {indexes.tolist()} must be non-empty and non-negative")
    grams = indexes.size
    count_attrs = {**attrs, "mode": "TF", "ngram_indexes": list(range(grams)), "weights": None}
    (per_gram,) = _tfidf_reference(x, **count_attrs)  # [..., grams], float32 counts
    per_gram = np.asarray(per_gram, dtype=np.float32)
    weights = attrs.get("weights")
    if weights is None or len(weights) == 0:
        w = np.ones(grams, np.float32)
    else:
        w = np.asarray(weights, dtype=np.float32).reshape(-1)
        if w.size != grams:
            raise ValueError(f"weights has {w.size} entries for {grams} ngram_indexes")
    if mode == "IDF":
        values = (per_gram > 0).astype(np.float32) * w
    elif mode == "TFIDF":
        values = per_gram * w
    else:
        values = per_gram
    lead = per_gram.shape[:-1]
    out = np.zeros((int(np.prod(lead, dtype=np.int64)), int(indexes.max()) + 1), np.float32)
    np.add.at(out.T, indexes, values.reshape(-1, grams).T)  # columns may repeat
    return (out.reshape(*lead, out.shape[-1]),)


# ------------------------------------------------------------- NonMaxSuppression

_nms_reference = reference_kernel("NonMaxSuppression")


def _scalar_input(a: np.ndarray | None, name: str) -> np.ndarray | None:
    """A 0-d or 1-element scalar input as a 1-element array; None when absent (or empty)."""
    if a is None or np.asarray(a).size == 0:
        return None
    arr = np.asarray(a).reshape(-1)
    if arr.size != 1:
        raise ValueError(f"{name} must be a scalar (0-d or 1 element), got shape {a.shape}")
    return arr


def non_max_suppression(
    boxes: np.ndarray,
    scores: np.ndarray,
    max_output_boxes_per_class: np.ndarray | None = None,
    iou_threshold: np.ndarray | None = None,
    score_threshold: np.ndarray | None = None,
    **attrs: Any,
) -> tuple[np.ndarray]:
    """ONNX NonMaxSuppression: selected [batch, class, box] triples, int64 [n, 3]."""
    if boxes.ndim != 3 or scores.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(
            f"boxes must be [batches, boxes, 4] and scores [batches, classes, boxes], got "
            f"{list(boxes.shape)} and {list(scores.shape)}"
        )
    limit = _scalar_input(max_output_boxes_per_class, "max_output_boxes_per_class")
    iou = _scalar_input(iou_threshold, "iou_threshold")
    thr = _scalar_input(score_threshold, "score_threshold")
    if limit is None or int(limit[0]) <= 0:  # absent: 0 boxes per class
        return (np.zeros((0, 3), _INT64),)
    if iou is None:
        iou = np.zeros(1, boxes.dtype)
    (selected,) = _nms_reference(boxes, scores, limit.astype(_INT64), iou, thr, **attrs)
    return (np.asarray(selected, dtype=_INT64).reshape(-1, 3),)


# -------------------------------------------------------------------------- losses

_nll_reference = reference_kernel("NegativeLogLikelihoodLoss")


def negative_log_likelihood_loss(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None, **attrs: Any
) -> tuple[np.ndarray]:
    """ONNX NegativeLogLikelihoodLoss. With `ignore_index` and no weight input, onnx.reference
    runs with unit class weights: the same losses, and a mean over the targets that count."""
    if weight is None and attrs.get("ignore_index") is not None and x.ndim >= 2:
        weight = np.ones(x.shape[1], x.dtype)
    return _nll_reference(x, target, weight, **attrs)


_register("Unique", unique)
_register("TfIdfVectorizer", tfidf_vectorizer)
_register("NonMaxSuppression", non_max_suppression)
_register("NegativeLogLikelihoodLoss", negative_log_likelihood_loss)
