"""ATen converters that index with tensors: embedding, index_select, gather, advanced
indexing (`x[i, j]`), scatter, and index_put (`x[i, j] = v`, `x[i] += v`, `x[mask] = v`)."""

from __future__ import annotations

from typing import Any

from ecograph.frontend.torch.converter import (
    Converter,
    NotConvertedError,
    aten,
    dim_arg,
    target_name,
)
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Value

# ------------------------------------------------------------ reading


@aten("aten.embedding.default")
def _embedding(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    return cx.op("Gather", cx.tensor(a["weight"]), cx.tensor(a["indices"]), axis=0)


@aten("aten.index_select.default")
def _index_select(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    return cx.op("Gather", x, cx.tensor(a["index"]), axis=a["dim"] % x.type.rank)


@aten("aten.gather.default")
def _gather(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    return cx.op("GatherElements", x, cx.tensor(a["index"]), axis=a["dim"] % x.type.rank)


@aten("aten.index.Tensor")
def _index(cx: Converter, node: Any) -> Value:
    """Advanced indexing x[i0, i1, ...]: one index tensor on any dim (Gather), or several on
    the leading dims (flattened into one Gather over the merged dims)."""
    a = cx.args(node)
    x = cx.tensor(a["self"])
    indices = list(a["indices"])
    present = [i for i, t in enumerate(indices) if t is not None]
    for i in present:
        if cx.val(indices[i]).dtype.is_floating_point or str(cx.val(indices[i]).dtype) in (
            "torch.bool",
            "torch.uint8",
        ):
            raise NotConvertedError("boolean mask indexing (data-dependent shape)")
    if len(present) == 1:
        axis = present[0]
        return cx.op("Gather", x, cx.tensor(indices[axis]), axis=axis)
    if present != list(range(len(present))):
        raise NotConvertedError("index tensors that are not on the leading dims")
    k = len(present)
    dims = list(x.shape[:k])
    flat: Value | None = None
    for i in range(k):
        idx = cx.tensor(indices[i], DType.INT64)
        size = cx.size(dim_arg(x, i))
        # Negative indices count from the end, as in torch.
        idx = cx.op("Where", cx.op("Less", idx, cx.tensor(0, DType.INT64)),
                    cx.op("Add", idx, size), idx)  # fmt: skip
        flat = idx if flat is None else cx.op("Add", cx.op("Mul", flat, size), idx)
    assert flat is not None
    merged = cx.op("Reshape", x, _merged_shape(cx, x, k, dims))
    return cx.op("Gather", merged, flat, axis=0)


def _merged_shape(cx: Converter, x: Value, k: int, dims: list[Any]) -> Value:
    rest = list(x.shape[k:])
    if all(isinstance(d, int) for d in rest):
        return cx.ints([-1, *[int(d) for d in rest]])
    return cx.op("Concat", cx.ints([-1]), cx.op("Shape", x, start=k), axis=0)


# ------------------------------------------------------------ writing


@aten("aten.scatter.src", "aten.scatter.value", "aten.scatter_add.default",
      "aten.scatter.reduce", "aten.scatter.value_reduce")  # fmt: skip
def _scatter(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    index = cx.tensor(a["index"])
    if "src" in a:
        updates = cx.tensor(a["src"], x.dtype)
    else:
        updates = cx.op("Expand", cx.tensor(a["value"], x.dtype), cx.shape_of(index))
    reduce = a.get("reduce")
    reduction = {None: "none", "add": "add", "sum": "add", "multiply": "mul"}.get(reduce)
    if "scatter_add" in target_name(node.target):
        reduction = "add"
    if reduction is None:
        raise NotConvertedError(f"scatter with reduce={reduce!r}")
    if updates.shape != index.shape:
        raise NotConvertedError("scatter whose src is larger than its index")
    axis = a["dim"] % x.type.rank
    return cx.op("ScatterElements", x, index, updates, axis=axis, reduction=reduction)


@aten("aten.index_put.default", "aten._unsafe_index_put.default")
def _index_put(cx: Converter, node: Any) -> Value:
    """x[mask] = v (a Where) and x[i0, i1, ...] = v / += v (a ScatterND). Index tensors must be
    consecutive; when they do not start at dim 0 the indexed dims are moved to the front."""
    import torch

    a = cx.args(node)
    x = cx.tensor(a["self"])
    indices = list(a["indices"])
    accumulate = bool(a.get("accumulate", False))
    present = [i for i, t in enumerate(indices) if t is not None]
    if not present or present != list(range(present[0], present[-1] + 1)):
        raise NotConvertedError("index tensors that are not consecutive")
    vals = [cx.val(indices[i]) for i in present]
    values = cx.tensor(a["values"], x.dtype)
    if vals[0].dtype == torch.bool:
        return _masked_put(cx, x, indices, present, values, accumulate)
    p, k, rank = present[0], len(present), x.type.rank
    data, perm = x, list(range(rank))
    if p > 0:
        perm = [*range(p, p + k), *range(p), *range(p + k, rank)]
        data = cx.op("Transpose", x, perm=perm)
    batch = list(torch.broadcast_shapes(*[v.shape for v in vals]))
    stacked = []
    for axis, i in zip(range(p, p + k), present, strict=True):
        idx = cx.tensor(indices[i], DType.INT64)
        size = cx.size(dim_arg(x, axis))
        idx = cx.op("Where", cx.op("Less", idx, cx.tensor(0, DType.INT64)),
                    cx.op("Add", idx, size), idx)  # fmt: skip
        idx = cx.op("Expand", idx, cx.shape_vec(batch))
        stacked.append(cx.op("Unsqueeze", idx, cx.ints([-1])))
    index = stacked[0] if k == 1 else cx.op("Concat", *stacked, axis=-1)
    # Updates are laid out like data[index]: the batch dims, then data's remaining dims.
    x_sizes = list(cx.val(a["self"]).shape)
    if p == 0:
        updates = cx.op("Expand", values, cx.shape_vec(batch + x_sizes[k:]))
    else:
        full = x_sizes[:p] + batch + x_sizes[p + k :]
        updates = cx.op("Expand", values, cx.shape_vec(full))
        nb = len(batch)
        updates = cx.op(
            "Transpose", updates, perm=[*range(p, p + nb), *range(p), *range(p + nb, len(full))]
        )
    out = cx.op("ScatterND", data, index, updates, reduction="add" if accumulate else "none")
    if p > 0:
        inverse = [perm.index(i) for i in range(rank)]
        out = cx.op("Transpose", out, perm=inverse)
    return out


def _masked_put(
    cx: Converter, x: Value, indices: list[Any], present: list[int], values: Value, acc: bool
) -> Value:
    """x[mask] = v with a boolean mask over the leading dims and a single value."""
    if present != [0] or len([t for t in indices if t is not None]) != 1:
        raise NotConvertedError("boolean mask assignment other than x[mask] = value")
    if values.type.numel != 1:
        raise NotConvertedError("boolean mask assignment of several values (data-dependent)")
    mask = cx.tensor(indices[0], DType.BOOL)
    extra = x.type.rank - mask.type.rank
    if extra:
        mask = cx.op("Unsqueeze", mask, cx.ints(list(range(mask.type.rank, x.type.rank))))
    value = cx.op("Reshape", values, cx.ints([])) if values.type.rank else values
    if acc:
        return cx.op("Add", x, cx.op("Where", mask, value, cx.tensor(0, x.dtype)))
    return cx.op("Where", mask, value, x)
