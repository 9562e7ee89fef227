"""ATen converters that make, view and rearrange tensors: full / zeros / arange / fill,
view and reshape, permute, (un)squeeze, expand, slice / select and assignment into a slice,
cat / split, pad, flip, tril / triu, as_strided (where it is a reshape, slice or expand); and
sizes (sym_size, Python arithmetic on SymInts) and items of multi-output nodes (getitem)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecograph.frontend.torch.converter import (
    Converter,
    NotConvertedError,
    aten,
    target_name,
)
from ecograph.ir.graph import Value

INT64_MAX = 9223372036854775807


# ------------------------------------------------------------ sizes and items


@aten("aten.sym_size.int", "aten.sym_numel.default")
def _sym_size(cx: Converter, node: Any) -> Value:
    return cx.sym_value(cx.val(node))


@aten(
    "operator.add", "operator.sub", "operator.mul", "operator.floordiv", "operator.mod",
    "operator.neg", "operator.truediv",
)  # fmt: skip
def _sym_arith(cx: Converter, node: Any) -> Value:
    import torch

    val = cx.val(node)
    if not isinstance(val, (torch.SymInt, int)):
        raise NotConvertedError(f"Python arithmetic on {type(val).__name__} values")
    return cx.sym_value(val)


@aten("operator.getitem")
def _getitem(cx: Converter, node: Any) -> Any:
    seq = cx.env[node.args[0]]
    item = seq[node.args[1]]
    if item is None:
        raise NotConvertedError(f"output {node.args[1]} of {node.args[0].name} is not supported")
    return item


# ------------------------------------------------------------ creation


def _fill_value(cx: Converter, node: Any, value: Any) -> np.ndarray:
    return np.array(value, dtype=cx.out_dtype(node).numpy)


def _filled(cx: Converter, node: Any, value: Any, shape: Sequence[Any] | Value) -> Value:
    fill = _fill_value(cx, node, value)
    if isinstance(shape, Value):
        return cx.op("ConstantOfShape", shape, value=fill.reshape(1))
    if all(isinstance(s, (int, np.integer)) for s in shape):
        return cx.graph.add_constant(np.full([int(s) for s in shape], fill), "full")
    return cx.op("ConstantOfShape", cx.shape_vec(shape), value=fill.reshape(1))


@aten("aten.full.default", "aten.new_full.default")
def _full(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    return _filled(cx, node, a["fill_value"], list(a["size"]))


@aten("aten.zeros.default", "aten.new_zeros.default", "aten.empty.memory_format",
      "aten.new_empty.default")  # fmt: skip
def _zeros(cx: Converter, node: Any) -> Value:
    return _filled(cx, node, 0, list(cx.args(node)["size"]))


@aten("aten.ones.default", "aten.new_ones.default")
def _ones(cx: Converter, node: Any) -> Value:
    return _filled(cx, node, 1, list(cx.args(node)["size"]))


@aten("aten.full_like.default", "aten.zeros_like.default", "aten.ones_like.default",
      "aten.empty_like.default")  # fmt: skip
def _full_like(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    name = target_name(node.target)
    fill = a["fill_value"] if "full_like" in name else 1 if "ones" in name else 0
    src = cx.tensor(a["self"])
    if src.type.is_static:
        return _filled(cx, node, fill, list(src.type.static_shape()))
    return _filled(cx, node, fill, cx.op("Shape", src))


@aten("aten.scalar_tensor.default")
def _scalar_tensor(cx: Converter, node: Any) -> Value:
    return cx.const(_fill_value(cx, node, node.args[0]))


@aten("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    start = a.get("start", 0) if "start" in a else 0
    end, step = a["end"], a.get("step", 1) or 1
    if all(isinstance(x, (int, float, np.number)) for x in (start, end, step)):
        return cx.graph.add_constant(np.arange(start, end, step, dtype=dtype.numpy), "arange")
    return cx.op("Range", cx.scalar(start, dtype), cx.scalar(end, dtype), cx.scalar(step, dtype))


@aten("aten.fill.Scalar", "aten.fill.Tensor")
def _fill(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    value = cx.tensor(a["value"], x.dtype)
    if value.type.rank:
        value = cx.op("Reshape", value, cx.ints([]))
    return cx.op("Expand", value, cx.shape_of(x))


# ------------------------------------------------------------ shape ops


@aten(
    "aten.view.default",
    "aten._unsafe_view.default",
    "aten.reshape.default",
    "aten.view_copy.default",
)
def _view(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    return _reshape_to(cx, x, list(cx.val(node).shape))


def _reshape_to(cx: Converter, x: Value, sizes: list[Any]) -> Value:
    """Reshape to torch's output sizes (ints and SymInts). One symbolic dim becomes -1; with
    more, each is computed from the input shapes so the IR keeps exact symbolic dims."""
    import torch

    symbolic_at = [i for i, s in enumerate(sizes) if isinstance(s, torch.SymInt)]
    items = list(sizes)
    if len(symbolic_at) == 1:
        items[symbolic_at[0]] = -1
    allowzero = int(any(isinstance(s, int) and s == 0 for s in items))
    return cx.op("Reshape", x, cx.shape_vec(items), allowzero=allowzero)


@aten("aten.permute.default", "aten.permute_copy.default")
def _permute(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    perm = [int(p) % max(x.type.rank, 1) for p in node.args[1]]
    return cx.op("Transpose", x, perm=perm)


@aten(
    "aten.transpose.int",
    "aten.t.default",
    "aten.numpy_T.default",
    "aten.transpose_copy.int",
    "aten.t_copy.default",
)
def _transpose(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    rank = x.type.rank
    if rank < 2:
        return x
    d0, d1 = (node.args[1], node.args[2]) if len(node.args) > 2 else (0, 1)
    perm = list(range(rank))
    d0, d1 = d0 % rank, d1 % rank
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return cx.op("Transpose", x, perm=perm)


@aten("aten.unsqueeze.default", "aten.unsqueeze_copy.default")
def _unsqueeze(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    dim = int(node.args[1])
    return cx.op("Unsqueeze", x, cx.ints([dim % (x.type.rank + 1)]))


@aten(
    "aten.squeeze.dim",
    "aten.squeeze.dims",
    "aten.squeeze.default",
    "aten.squeeze_copy.dim",
    "aten.squeeze_copy.dims",
    "aten.squeeze_copy.default",
)
def _squeeze(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    rank = x.type.rank
    if len(node.args) > 1:
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
    else:
        dims = list(range(rank))
    # torch silently keeps dims that are not 1; ONNX fails on them, so pick the real ones.
    axes = [d % rank for d in dims if x.shape[d % rank] == 1]
    if not axes:
        return x
    return cx.op("Squeeze", x, cx.ints(axes))


@aten("aten.expand.default", "aten.expand_copy.default")
def _expand(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    # -1 keeps the input's dim; ONNX Expand broadcasts 1 to it, which does the same.
    sizes = [1 if isinstance(s, int) and s == -1 else s for s in node.args[1]]
    return cx.op("Expand", x, cx.shape_vec(sizes))


@aten("aten.slice.Tensor", "aten.slice_copy.Tensor")
def _slice(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    dim = a["dim"] % x.type.rank
    start = 0 if a["start"] is None else a["start"]
    end = INT64_MAX if a["end"] is None else a["end"]
    step = a["step"] or 1
    whole = isinstance(start, int) and start == 0 and isinstance(end, int) and end >= INT64_MAX
    if whole and step == 1:
        return x
    return cx.op("Slice", x, cx.size(start), cx.size(end), cx.ints([dim]), cx.ints([step]))


@aten("aten.select.int", "aten.select_copy.int")
def _select(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    index = a["index"]
    idx = (
        cx.const(np.array(int(index), np.int64))
        if isinstance(index, int)
        else cx.op("Squeeze", cx.size(index), cx.ints([0]))
    )
    return cx.op("Gather", x, idx, axis=a["dim"] % x.type.rank)


@aten("aten.copy.default", "aten._copy.default")
def _copy(cx: Converter, node: Any) -> Value:
    """copy(self, src): src broadcast to self's shape in self's dtype (functionalized `=`)."""
    a = cx.args(node)
    target = cx.tensor(a["self"])
    src = cx.tensor(a["src"], target.dtype)
    if src.shape == target.shape:
        return src
    return cx.op("Expand", src, cx.shape_of(target))


@aten("aten.slice_scatter.default", "aten.select_scatter.default")
def _slice_scatter(cx: Converter, node: Any) -> Value:
    """x[..., start:end, ...] = src along one dim: concatenate the untouched parts with src."""
    a = cx.args(node)
    x = cx.tensor(a["self"])
    rank = x.type.rank
    dim = a["dim"] % rank
    size = x.shape[dim]
    src = cx.tensor(a["src"], x.dtype)
    if "select_scatter" in target_name(node.target):
        start, end, step = a["index"], None, 1
        src = cx.op("Unsqueeze", src, cx.ints([dim]))
        if isinstance(start, int):
            end = start + 1 if start != -1 else INT64_MAX
    else:
        start, end, step = a["start"], a["end"], a["step"] or 1
    if step != 1 or not isinstance(size, int) or not isinstance(start, (int, type(None))):
        raise NotConvertedError("strided or symbolic slice assignment")
    if end is not None and not isinstance(end, int):
        raise NotConvertedError("slice assignment with a symbolic end")
    begin, stop, _ = slice(start, end).indices(size)
    stop = max(stop, begin)
    parts = []
    if begin > 0:
        parts.append(cx.op("Slice", x, cx.ints([0]), cx.ints([begin]), cx.ints([dim])))
    parts.append(src)
    if stop < size:
        parts.append(cx.op("Slice", x, cx.ints([stop]), cx.ints([size]), cx.ints([dim])))
    return parts[0] if len(parts) == 1 else cx.op("Concat", *parts, axis=dim)


@aten("aten.cat.default", "aten.concat.default")
def _cat(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    dtype = cx.out_dtype(node)
    parts = [cx.tensor(t, dtype) for t in a["tensors"]]
    rank = cx.val(node).dim()
    # torch.cat skips legacy empty 1-D tensors.
    parts = [p for p in parts if not (p.type.rank == 1 and p.shape[0] == 0 and rank != 1)]
    if len(parts) == 1:
        return parts[0]
    return cx.op("Concat", *parts, axis=a["dim"] % rank)


@aten("aten.split_with_sizes.default", "aten.split.Tensor", "aten.split_with_sizes_copy.default",
      "aten.split.sizes")  # fmt: skip
def _split(cx: Converter, node: Any) -> tuple[Value, ...]:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    dim = a["dim"] % x.type.rank
    outs = cx.val(node)
    sizes = [o.shape[dim] for o in outs]
    if not all(isinstance(s, int) for s in sizes):
        raise NotConvertedError("split along a symbolic dim")
    node_outs = cx.op_multi("Split", x, cx.ints(sizes), num_outputs=len(sizes), axis=dim)
    return tuple(node_outs)


@aten("aten.unbind.int")
def _unbind(cx: Converter, node: Any) -> tuple[Value, ...]:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    dim = a["dim"] % x.type.rank
    n = x.shape[dim]
    if not isinstance(n, int):
        raise NotConvertedError("unbind along a symbolic dim")
    outs = cx.op_multi("Split", x, cx.ints([1] * n), num_outputs=n, axis=dim)
    return tuple(cx.op("Squeeze", o, cx.ints([dim])) for o in outs)


@aten("aten.flatten.using_ints")
def _flatten(cx: Converter, node: Any) -> Value:
    return _reshape_to(cx, cx.tensor(node.args[0]), list(cx.val(node).shape))


@aten("aten.repeat.default")
def _repeat(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    reps = list(node.args[1])
    if len(reps) > x.type.rank:
        extra = [1] * (len(reps) - x.type.rank)
        x = _reshape_to(cx, x, extra + list(cx.val(node.args[0]).shape))
    return cx.op("Tile", x, cx.shape_vec(reps))


@aten("aten.constant_pad_nd.default")
def _pad(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    pad = list(a["pad"])
    if not all(isinstance(p, int) for p in pad):
        raise NotConvertedError("symbolic padding")
    rank = x.type.rank
    begins, ends = [0] * rank, [0] * rank
    # torch lists (begin, end) pairs from the last dim backwards.
    for i in range(len(pad) // 2):
        axis = rank - 1 - i
        begins[axis], ends[axis] = pad[2 * i], pad[2 * i + 1]
    value = cx.tensor(a["value"] or 0, x.dtype)
    return cx.op("Pad", x, cx.ints(begins + ends), value, mode="constant")


@aten("aten.reflection_pad1d.default", "aten.reflection_pad2d.default",
      "aten.replication_pad1d.default", "aten.replication_pad2d.default")  # fmt: skip
def _mode_pad(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    pad = [int(p) for p in a["padding"]]
    rank = x.type.rank
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        axis = rank - 1 - i
        begins[axis], ends[axis] = pad[2 * i], pad[2 * i + 1]
    mode = "reflect" if "reflection" in target_name(node.target) else "edge"
    return cx.op("Pad", x, cx.ints(begins + ends), mode=mode)


@aten("aten.flip.default")
def _flip(cx: Converter, node: Any) -> Value:
    x = cx.tensor(node.args[0])
    axes = [d % x.type.rank for d in node.args[1]]
    n = len(axes)
    # A negative step walks each axis from its last element down past the first.
    starts, ends = cx.ints([-1] * n), cx.ints([-INT64_MAX] * n)
    return cx.op("Slice", x, starts, ends, cx.ints(axes), cx.ints([-1] * n))


@aten("aten.tril.default", "aten.triu.default")
def _trilu(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    upper = int("triu" in target_name(node.target))
    k = cx.const(np.array(int(a["diagonal"]), np.int64))
    return cx.op("Trilu", cx.tensor(a["self"]), k, upper=upper)


# ------------------------------------------------------------ as_strided


@dataclass(frozen=True)
class StridedView:
    """An as_strided view of a contiguous tensor, said as ONNX can say it: reshape the input
    to `reshape` (if set), then slice (`starts`, `ends`, `steps` per axis, if set), then
    reshape to `shape` (if set) and expand to `expand` (if set; stride-0 axes)."""

    reshape: tuple[int, ...] | None = None
    starts: tuple[int, ...] | None = None
    ends: tuple[int, ...] | None = None
    steps: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None
    expand: tuple[int, ...] | None = None


def contiguous_strides(shape: Sequence[int]) -> list[int]:
    out, step = [], 1
    for d in reversed(shape):
        out.append(step)
        step *= max(d, 1)
    return out[::-1]


def strided_view_plan(
    in_shape: Sequence[int], size: Sequence[int], stride: Sequence[int], offset: int
) -> StridedView | None:
    """How `as_strided(x, size, stride, offset)` on a contiguous `x` of `in_shape` is a
    reshape, a slice or an expand of `x` (or a slice between reshapes, with size-1 axes
    dropped), or None when it is none of these (overlapping windows, strides that walk the
    storage out of order). `offset` is relative to x's first element."""
    in_shape, size, stride = list(in_shape), list(size), list(stride)
    numel = math.prod(in_shape)
    if len(size) != len(stride) or any(s <= 0 for s in size) or offset < 0:
        return None
    # Stride-0 axes of length > 1 repeat one element: an Expand of a length-1 axis.
    base = [1 if t == 0 else s for s, t in zip(size, stride, strict=True)]
    expand = tuple(size) if base != size else None
    moving = [(s, t) for s, t in zip(base, stride, strict=True) if s > 1]
    walks_in_order = [t for _, t in moving] == contiguous_strides([s for s, _ in moving])
    if offset == 0 and math.prod(base) == numel and walks_in_order:
        same = base == in_shape
        return StridedView(reshape=None if same else tuple(base), expand=expand)
    if len(base) == len(in_shape):
        cut = _slice_of(in_shape, base, stride, offset)
        if cut is not None:
            return StridedView(starts=cut[0], ends=cut[1], steps=cut[2], expand=expand)
    # A slice with the size-1 axes of both sides dropped, between two reshapes.
    src = [d for d in in_shape if d != 1]
    kept = [s for s, _ in moving]
    cut = _slice_of(src, kept, [t for _, t in moving], offset)
    if cut is None and len(moving) <= 1:
        # One walking axis (or a single element): a strided slice of the flattened input.
        src = [numel]
        length, step = moving[0] if moving else (1, 1)
        kept = [length]
        cut = _slice_of(src, kept, [step], offset)
    if cut is None:
        return None
    return StridedView(
        reshape=None if src == in_shape else tuple(src),
        starts=cut[0],
        ends=cut[1],
        steps=cut[2],
        shape=None if base == kept else tuple(base),
        expand=expand,
    )


def _slice_of(
    shape: Sequence[int], size: Sequence[int], stride: Sequence[int], offset: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(starts, ends, steps) when the strided view (same rank as `shape`) is x[start::step]
    on every axis of a contiguous x of `shape`, else None."""
    if len(size) != len(shape) or 0 in shape:
        return None
    strides = contiguous_strides(shape)
    starts, rest = [], offset
    for d, c in zip(shape, strides, strict=True):
        start, rest = divmod(rest, c)
        if start >= d:
            return None
        starts.append(start)
    if rest:
        return None
    steps, ends = [], []
    for s, t, c, d, start in zip(size, stride, strides, shape, starts, strict=True):
        step = 1 if s == 1 else t // c if t > 0 and t % c == 0 else 0
        if step == 0 or start + (s - 1) * step >= d:
            return None
        steps.append(step)
        ends.append(start + (s - 1) * step + 1)
    return tuple(starts), tuple(ends), tuple(steps)


@aten("aten.as_strided.default", "aten.as_strided_copy.default", "aten.as_strided_.default")
def _as_strided(cx: Converter, node: Any) -> Value:
    """as_strided(x, size, stride, offset) where it is a reshape, slice or expand of x
    (torch.export emits it for some pooling and view chains); anything else is refused with
    the strides it asked for. The in-place as_strided_ (decompositions use it to restride a
    result to channels_last) is taken only where it keeps every element in place: later
    users of x itself must see the same values."""
    a = cx.args(node)
    x = cx.tensor(a["self"])
    src = cx.val(a["self"])
    sizes, strides, offset = list(a["size"]), list(a["stride"]), a["storage_offset"]
    asked = f"as_strided(size={sizes}, stride={strides}, storage_offset={offset})"
    static = all(isinstance(v, int) for v in [*sizes, *strides, offset or 0])
    if not static or not x.type.is_static:
        raise NotConvertedError(f"{asked} with symbolic sizes; export with static shapes")
    if not src.is_contiguous():
        raise NotConvertedError(
            f"{asked} on a non-contiguous input (strides {list(src.stride())}); only views of "
            "contiguous tensors are converted"
        )
    base_offset = int(src.storage_offset())
    in_shape = list(x.type.static_shape())
    plan = strided_view_plan(in_shape, sizes, strides, (base_offset if offset is None else
                                                        offset) - base_offset)  # fmt: skip
    if plan is None:
        raise NotConvertedError(
            f"{asked} on an input of shape {in_shape} (contiguous strides "
            f"{contiguous_strides(in_shape)}, storage offset {base_offset}) is not a reshape, "
            "slice or expand of it; rewrite that part of the model with view/slice/expand"
        )
    if target_name(node.target).endswith("as_strided_.default") and plan != StridedView():
        raise NotConvertedError(
            f"in-place {asked} on an input of shape {in_shape} moves its elements; only an "
            "in-place restride that keeps every element in place is converted"
        )
    y = x
    if plan.reshape is not None:
        y = cx.op("Reshape", y, cx.ints(plan.reshape))
    if plan.starts is not None and plan.ends is not None and plan.steps is not None:
        rank = len(plan.starts)
        y = cx.op("Slice", y, cx.ints(plan.starts), cx.ints(plan.ends),
                  cx.ints(list(range(rank))), cx.ints(plan.steps))  # fmt: skip
    if plan.shape is not None:
        y = cx.op("Reshape", y, cx.ints(plan.shape))
    if plan.expand is not None:
        y = cx.op("Expand", y, cx.ints(plan.expand))
    return y
