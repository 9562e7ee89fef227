"""check_batches: the one checker of input-dict lists (compress's validation_data and
train_data, distill's train_data and validation_data). Every rejection names the list, the
batch and the input, and says what to do."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ecograph.errors import InputError, UsageError
from ecograph.ir import Graph, GraphBuilder
from ecograph.prune.compress import check_batches


def two_inputs() -> Graph:
    """x: float32[batch, 4], ids: int64[batch, 3] -> y = x + ReduceSum(Cast(ids))."""
    b = GraphBuilder("two_inputs")
    x = b.input("x", "float32", ["batch", 4])
    ids = b.input("ids", "int64", ["batch", 3])
    total = b.op("ReduceSum", b.op("Cast", ids, to=1), b.constant(np.array([1], np.int64)))
    b.output(b.op("Add", x, total, name="y"))
    return b.graph


def batch(n: int = 2) -> dict[str, Any]:
    return {"x": np.zeros((n, 4), np.float32), "ids": np.zeros((n, 3), np.int64)}


def test_good_batches_come_back_as_numpy_with_dynamic_dims_free() -> None:
    torch = pytest.importorskip("torch")
    data = [batch(2), {"x": torch.zeros(5, 4), "ids": torch.zeros(5, 3, dtype=torch.int64)}]
    out = check_batches(two_inputs(), data, "validation_data")
    assert [sorted(b) for b in out] == [["ids", "x"], ["ids", "x"]]
    assert all(isinstance(a, np.ndarray) for b in out for a in b.values())
    assert out[1]["x"].shape == (5, 4) and out[1]["ids"].dtype == np.int64


@pytest.mark.parametrize(
    ("data", "error", "expected"),
    [
        (batch(), UsageError, r"^train_data must be a list of input dicts .* got a dict; wrap a "
         r"single batch in a list"),
        (iter([batch()]), UsageError, "got a list_iterator"),
        ([], UsageError, r"^train_data is empty; give at least one batch: a dict of arrays "
         r"named \['x', 'ids'\]"),
        ([batch(), (1, 2)], InputError, r"^train_data\[1\] is a tuple, not a dict; give a dict "
         r"of arrays named \['x', 'ids'\]"),
        ([{"x": batch()["x"]}], InputError, r"^train_data\[0\] misses inputs \['ids'\] / has "
         r"unknown inputs \[\]; the graph takes \['x', 'ids'\]: key each array by"),
        ([batch() | {"mask": 1}], InputError, r"unknown inputs \['mask'\]"),
        ([batch() | {"x": [[0.0] * 4] * 2}], InputError, r"^train_data\[0\] input 'x' is a "
         r"list; give a numpy array of float32\['batch', 4\]"),
        ([batch() | {"ids": np.zeros((2, 3), np.int32)}], InputError, r"^train_data\[0\] input "
         r"'ids' is int32\[2, 3\]; the graph input is int64\['batch', 3\]: cast it "
         r"\(\.astype\(np\.int64\)\)"),
        ([batch(), batch() | {"x": np.zeros(4, np.float32)}], InputError, r"^train_data\[1\] "
         r"input 'x' has rank 1 \(float32\[4\]\); the graph input is float32\['batch', 4\], "
         r"rank 2"),
        ([batch() | {"x": np.zeros((2, 5), np.float32)}], InputError, r"^train_data\[0\] input "
         r"'x' is float32\[2, 5\]; the graph input is float32\['batch', 4\]: axis 1 must be 4"),
    ],
)  # fmt: skip
def test_bad_batches_are_typed_errors_naming_list_batch_and_input(
    data: Any, error: type[Exception], expected: str
) -> None:
    with pytest.raises(error, match=expected):
        check_batches(two_inputs(), data, "train_data")
