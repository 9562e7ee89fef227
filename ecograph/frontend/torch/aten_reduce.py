"""ATen converters for reductions and scans: sum / mean / max / min / prod, any / all,
max and argmax along a dim, var / std, vector norms, cumsum, topk and sort."""

from __future__ import annotations

from typing import Any

import numpy as np

from ecograph.frontend.torch.converter import (
    Converter,
    ConvertFn,
    NotConvertedError,
    aten,
    dim_arg,
    target_name,
)
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Value


def _axes(dims: Any, rank: int) -> list[int]:
    if dims is None:
        return list(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    dims = list(dims)
    return [d % max(rank, 1) for d in dims] if dims else list(range(rank))


def _reduce(onnx_op: str, dim_key: str = "dim") -> ConvertFn:
    def convert(cx: Converter, node: Any) -> Value:
        a = cx.args(node)
        dtype = cx.out_dtype(node)
        x = cx.tensor(a["self"], dtype)
        axes = _axes(a.get(dim_key), x.type.rank)
        keep = int(bool(a.get("keepdim", False)))
        if x.type.rank == 0:
            return x
        return cx.op(onnx_op, x, cx.ints(axes), keepdims=keep)

    return convert


aten("aten.mean.dim", "aten.mean.default")(_reduce("ReduceMean"))


aten("aten.sum.dim_IntList", "aten.sum.default")(_reduce("ReduceSum"))


aten("aten.amax.default", "aten.max.default")(_reduce("ReduceMax"))  # max(): of every element


aten("aten.amin.default", "aten.min.default")(_reduce("ReduceMin"))


aten("aten.prod.dim_int", "aten.prod.default")(_reduce("ReduceProd"))


@aten("aten.any.dim", "aten.any.dims", "aten.any.default", "aten.all.dim", "aten.all.dims",
      "aten.all.default")  # fmt: skip
def _any_all(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    if x.dtype != DType.BOOL:
        x = cx.op("Not", cx.op("Equal", x, cx.tensor(0, x.dtype)))
    as_int = cx.op("Cast", x, to=DType.INT32.onnx)
    op = "ReduceMax" if ".any" in target_name(node.target) else "ReduceMin"
    axes = _axes(a.get("dim"), x.type.rank)
    reduced = cx.op(op, as_int, cx.ints(axes), keepdims=int(bool(a.get("keepdim", False))))
    return cx.op("Cast", reduced, to=DType.BOOL.onnx)


@aten("aten.max.dim", "aten.min.dim")
def _max_dim(cx: Converter, node: Any) -> tuple[Value, Value]:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    axis = a["dim"] % x.type.rank
    keep = int(bool(a["keepdim"]))
    is_max = ".max" in target_name(node.target)
    values = cx.op("ReduceMax" if is_max else "ReduceMin", x, cx.ints([axis]), keepdims=keep)
    indices = cx.op("ArgMax" if is_max else "ArgMin", x, axis=axis, keepdims=keep)
    return values, indices


@aten("aten.argmax.default", "aten.argmin.default")
def _argmax(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    op = "ArgMax" if "argmax" in target_name(node.target) else "ArgMin"
    if a["dim"] is None:
        return cx.op(op, cx.op("Reshape", x, cx.ints([-1])), axis=0, keepdims=0)
    return cx.op(op, x, axis=a["dim"] % x.type.rank, keepdims=int(bool(a["keepdim"])))


@aten("aten.var.correction", "aten.var.dim", "aten.std.correction")
def _var(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"], cx.out_dtype(node))
    axes = _axes(a.get("dim"), x.type.rank)
    correction = a.get("correction")
    if correction is None:
        correction = 1 if a.get("unbiased", True) else 0
    count = symbolic.product([x.shape[i] for i in axes])
    if not isinstance(count, int):
        raise NotConvertedError("variance over symbolic dims")
    keep = int(bool(a.get("keepdim", False)))
    ax = cx.ints(axes)
    centered = cx.op("Sub", x, cx.op("ReduceMean", x, ax, keepdims=1))
    total = cx.op("ReduceSumSquare", centered, ax, keepdims=keep)
    out = cx.op("Div", total, cx.tensor(float(max(count - correction, 0)), x.dtype))
    if target_name(node.target).startswith("aten.std"):
        out = cx.op("Sqrt", out)
    return out


@aten("aten.linalg_vector_norm.default")
def _vector_norm(cx: Converter, node: Any) -> Value:
    """torch.linalg.vector_norm (F.normalize, weight norm, x.norm(p, dim)): ord 2 and 1 as
    ReduceL2 / ReduceL1, +-inf as the largest / smallest magnitude, 0 as the count of
    nonzeros, any other p as (sum |x|^p)^(1/p)."""
    a = cx.args(node)
    x = cx.tensor(a["self"], cx.out_dtype(node))
    if x.type.rank == 0:
        x = cx.op("Reshape", x, cx.ints([1]))
        dims: Any = None
        keep = 0
    else:
        dims = a.get("dim")
        keep = int(bool(a.get("keepdim", False)))
    ax = cx.ints(_axes(dims, x.type.rank))
    p = float(a.get("ord", 2))
    if p == 2:
        return cx.op("ReduceL2", x, ax, keepdims=keep)
    if p == 1:
        return cx.op("ReduceL1", x, ax, keepdims=keep)
    if p in (np.inf, -np.inf):
        op = "ReduceMax" if p > 0 else "ReduceMin"
        return cx.op(op, cx.op("Abs", x), ax, keepdims=keep)
    if p == 0:
        nonzero = cx.op("Cast", cx.op("Not", cx.op("Equal", x, cx.tensor(0, x.dtype))),
                        to=x.dtype.onnx)  # fmt: skip
        return cx.op("ReduceSum", nonzero, ax, keepdims=keep)
    powered = cx.op("Pow", cx.op("Abs", x), cx.tensor(p, x.dtype))
    total = cx.op("ReduceSum", powered, ax, keepdims=keep)
    return cx.op("Pow", total, cx.tensor(1.0 / p, x.dtype))


@aten("aten.cumsum.default")
def _cumsum(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"], cx.out_dtype(node))
    axis = cx.const(np.array(a["dim"] % max(x.type.rank, 1), np.int64))
    return cx.op("CumSum", x, axis)


@aten("aten.topk.default")
def _topk(cx: Converter, node: Any) -> tuple[Value, ...]:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    k = cx.size(a["k"])
    outs = cx.op_multi(
        "TopK",
        x,
        k,
        num_outputs=2,
        axis=a["dim"] % x.type.rank,
        largest=int(bool(a["largest"])),
        sorted=1,
    )
    return tuple(outs)


@aten("aten.sort.default", "aten.sort.stable")
def _sort(cx: Converter, node: Any) -> tuple[Value, ...]:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    axis = a["dim"] % x.type.rank
    size = cx.size(dim_arg(x, axis))
    outs = cx.op_multi(
        "TopK", x, size, num_outputs=2, axis=axis, largest=int(bool(a["descending"])), sorted=1
    )
    return tuple(outs)
