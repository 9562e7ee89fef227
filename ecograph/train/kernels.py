"""Torch kernels for IR ops, so `to_torch(graph)` runs a graph with autograd.

Each kernel takes torch tensors (None for absent optional inputs) and the node's resolved
attributes as keyword arguments, like the registry's numpy reference kernels, and returns one
tensor or a tuple. Semantics follow the reference kernels (ONNX opset 23 and the ecograph
domain); tests/train/test_module.py checks each one against `interpret()`.

Integer inputs that fix shapes (Reshape's shape, Slice's starts, ...) are read with `.tolist()`:
they are never differentiable, and the module runs every node fed only by constants and
integer tensors through the same kernels (or the numpy reference kernels when an op has no
torch kernel here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812 - the usual name

from ecograph.ir.dtypes import DType

Kernel = Callable[..., Any]

# (domain, op_type) -> kernel
KERNELS: dict[tuple[str, str], Kernel] = {}


def kernel(op_type: str, domain: str = "") -> Callable[[Kernel], Kernel]:
    def decorate(fn: Kernel) -> Kernel:
        KERNELS[(domain, op_type)] = fn
        return fn

    return decorate


def torch_dtype(dtype: DType) -> torch.dtype:
    """The torch dtype holding values of an IR dtype (UnsupportedError upstream if none)."""
    return torch.from_numpy(np.zeros(0, dtype.numpy)).dtype


def _ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------- elementwise


def _binary(op_type: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    KERNELS[("", op_type)] = lambda a, b: fn(a, b)


_binary("Add", torch.add)
_binary("Sub", torch.sub)
_binary("Mul", torch.mul)
_binary("Equal", torch.eq)
_binary("Less", torch.lt)
_binary("LessOrEqual", torch.le)
_binary("Greater", torch.gt)
_binary("GreaterOrEqual", torch.ge)
_binary("And", torch.logical_and)
_binary("Or", torch.logical_or)
_binary("Xor", torch.logical_xor)


@kernel("Max")
def max_(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = torch.maximum(out, x)
    return out


@kernel("Min")
def min_(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = torch.minimum(out, x)
    return out


@kernel("Div")
def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates


@kernel("Pow")
def pow_(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.ndim == 0 and not y.is_floating_point():
        return torch.pow(x, int(y))
    return torch.pow(x, y.to(x.dtype))


def _unary(op_type: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    KERNELS[("", op_type)] = lambda x: fn(x)


for _name, _fn in {
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Exp": torch.exp,
    "Log": torch.log,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    "Relu": torch.relu,
    "Erf": torch.erf,
    "Cos": torch.cos,
    "Sin": torch.sin,
    "Not": torch.logical_not,
    "IsNaN": torch.isnan,
    "Identity": lambda x: x,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
}.items():
    _unary(_name, _fn)


@kernel("Dropout")
def dropout(
    x: torch.Tensor, ratio: Any = None, training_mode: Any = None, *, seed: Any = None
) -> torch.Tensor:
    if training_mode is not None and bool(training_mode):
        raise NotImplementedError("Dropout in training mode is not supported by to_torch")
    return x


@kernel("Gelu")
def gelu(x: torch.Tensor, *, approximate: str) -> torch.Tensor:
    return F.gelu(x, approximate="tanh" if approximate == "tanh" else "none")


@kernel("HardSigmoid")
def hard_sigmoid(x: torch.Tensor, *, alpha: float, beta: float) -> torch.Tensor:
    return torch.clamp(x * alpha + beta, 0, 1)


@kernel("HardSwish")
def hard_swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.clamp(x * (1 / 6) + 0.5, 0, 1)


@kernel("LeakyRelu")
def leaky_relu(x: torch.Tensor, *, alpha: float) -> torch.Tensor:
    return F.leaky_relu(x, alpha)


@kernel("Softplus")
def softplus(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x)


@kernel("Clip")
def clip(
    x: torch.Tensor, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None
) -> torch.Tensor:
    out = x
    if lo is not None:
        out = torch.where(out < lo, lo.to(x.dtype), out)
    if hi is not None:
        out = torch.where(out > hi, hi.to(x.dtype), out)
    return out


@kernel("PRelu")
def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, x * slope, x)


@kernel("SiLU", "ecograph")
def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


@kernel("SwiGLU", "ecograph")
def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return gate * torch.sigmoid(gate) * up


@kernel("Where")
def where(cond: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.where(cond, x, y)


@kernel("Cast")
def cast(x: torch.Tensor, *, to: int, saturate: int = 1, round_mode: str = "up") -> torch.Tensor:
    target = torch_dtype(DType.from_onnx(to))
    # A float graph run in another float precision (module.double()) keeps that precision.
    if x.is_floating_point() and target.is_floating_point:
        return x
    return x.to(target)


# ---------------------------------------------------------------- contractions


@kernel("MatMul")
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b)


@kernel("Gemm")
def gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    alpha: float,
    beta: float,
    transA: int,
    transB: int,
) -> torch.Tensor:
    a = a.t() if transA else a
    b = b.t() if transB else b
    y = a @ b
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


@kernel("Linear", "ecograph")
def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    y = torch.matmul(x, w)
    return y if b is None else y + b


def _conv_padding(
    x: torch.Tensor,
    kernel_shape: list[int],
    strides: list[int],
    dilations: list[int],
    pads: list[int] | None,
    auto_pad: str,
) -> list[int]:
    """ONNX pads [x1_begin, x2_begin, ..., x1_end, x2_end] for any auto_pad."""
    n = len(kernel_shape)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out: list[int] = [0] * (2 * n)
        for i in range(n):
            size = x.shape[2 + i]
            total = max(
                (math.ceil(size / strides[i]) - 1) * strides[i]
                + (kernel_shape[i] - 1) * dilations[i]
                + 1
                - size,
                0,
            )
            small, big = total // 2, total - total // 2
            out[i], out[n + i] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return out
    if auto_pad == "VALID" or pads is None:
        return [0] * (2 * n)
    return list(pads)


def _apply_pads(
    x: torch.Tensor, pads: list[int], value: float = 0.0
) -> tuple[torch.Tensor, list[int]]:
    """Pad x explicitly where pads are asymmetric; return the symmetric remainder."""
    n = len(pads) // 2
    begin, end = pads[:n], pads[n:]
    if begin == end:
        return x, begin
    torch_pads: list[int] = []
    for i in reversed(range(n)):  # F.pad lists the last axis first
        torch_pads += [begin[i], end[i]]
    return F.pad(x, torch_pads, value=value), [0] * n


@kernel("Conv")
def conv(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    auto_pad: str,
    dilations: list[int] | None,
    group: int,
    kernel_shape: list[int] | None,
    pads: list[int] | None,
    strides: list[int] | None,
) -> torch.Tensor:
    n = w.ndim - 2
    kernel_shape = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    full = _conv_padding(x, kernel_shape, strides, dilations, pads, auto_pad)
    x, sym = _apply_pads(x, full)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return fn(x, w, b, strides, sym, dilations, group)


def _pool_args(
    x: torch.Tensor,
    kernel_shape: list[int],
    strides: list[int] | None,
    pads: list[int] | None,
    auto_pad: str,
    dilations: list[int] | None = None,
) -> tuple[list[int], list[int], list[int]]:
    n = len(kernel_shape)
    strides = list(strides or [1] * n)
    dil = list(dilations or [1] * n)
    return strides, dil, _conv_padding(x, kernel_shape, strides, dil, pads, auto_pad)


@kernel("MaxPool")
def max_pool(
    x: torch.Tensor,
    *,
    auto_pad: str,
    ceil_mode: int,
    dilations: list[int] | None,
    kernel_shape: list[int],
    pads: list[int] | None,
    storage_order: int,
    strides: list[int] | None,
    _num_outputs: int,
) -> torch.Tensor:
    if _num_outputs > 1:
        raise NotImplementedError("MaxPool's Indices output is not supported by to_torch")
    strides, dil, full = _pool_args(x, kernel_shape, strides, pads, auto_pad, dilations)
    n = len(kernel_shape)
    sizes = []  # ONNX output sizes: with ceil_mode, a window must start inside the input
    for i in range(n):
        span = x.shape[2 + i] + full[i] + full[n + i] - dil[i] * (kernel_shape[i] - 1) - 1
        out = (math.ceil if ceil_mode else math.floor)(span / strides[i]) + 1
        if ceil_mode and (out - 1) * strides[i] >= x.shape[2 + i] + full[i]:
            out -= 1
        sizes.append(out)
    # torch wants padding <= kernel/2: pad explicitly with -inf (max ignores it) instead.
    if any(full):
        torch_pads: list[int] = []
        for i in reversed(range(n)):  # F.pad lists the last axis first
            torch_pads += [full[i], full[n + i]]
        x = F.pad(x, torch_pads, value=-math.inf)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
    y = fn(x, kernel_shape, strides, 0, dil, ceil_mode=bool(ceil_mode))
    return y[(slice(None), slice(None), *[slice(0, size) for size in sizes])]


@kernel("AveragePool")
def average_pool(
    x: torch.Tensor,
    *,
    auto_pad: str,
    ceil_mode: int,
    count_include_pad: int,
    dilations: list[int] | None,
    kernel_shape: list[int],
    pads: list[int] | None,
    strides: list[int] | None,
) -> torch.Tensor:
    if dilations and any(d != 1 for d in dilations):
        raise NotImplementedError("AveragePool with dilations is not supported by to_torch")
    strides, _, full = _pool_args(x, kernel_shape, strides, pads, auto_pad)
    n = len(kernel_shape)
    if full[:n] != full[n:]:
        raise NotImplementedError("AveragePool with asymmetric pads is not supported by to_torch")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    return fn(x, kernel_shape, strides, full[:n], bool(ceil_mode), bool(count_include_pad))


@kernel("GlobalAveragePool")
def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


@kernel("GlobalMaxPool")
def global_max_pool(x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)


# ------------------------------------------------------------------ normalization


@kernel("LayerNormalization")
def layer_norm(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    axis: int,
    epsilon: float,
    stash_type: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dims = tuple(range(_axis(axis, x.ndim), x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(var + epsilon)
    y = (x - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return y, mean, inv


@kernel("RMSNormalization")
def rms_norm(
    x: torch.Tensor, scale: torch.Tensor, *, axis: int, epsilon: float, stash_type: int
) -> torch.Tensor:
    dims = tuple(range(_axis(axis, x.ndim), x.ndim))
    return x * torch.rsqrt((x * x).mean(dim=dims, keepdim=True) + epsilon) * scale


@kernel("BatchNormalization")
def batch_norm(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    *,
    epsilon: float,
    momentum: float,
    training_mode: int,
) -> torch.Tensor:
    if training_mode:
        raise NotImplementedError("BatchNormalization with training_mode=1 is not supported")
    shape = [1, -1] + [1] * (x.ndim - 2)
    inv = torch.rsqrt(var.reshape(shape) + epsilon)
    return (x - mean.reshape(shape)) * inv * scale.reshape(shape) + bias.reshape(shape)


@kernel("Softmax")
def softmax(x: torch.Tensor, *, axis: int) -> torch.Tensor:
    return torch.softmax(x, dim=axis)


@kernel("LogSoftmax")
def log_softmax(x: torch.Tensor, *, axis: int) -> torch.Tensor:
    return torch.log_softmax(x, dim=axis)


def _reduce(
    fn: Callable[..., torch.Tensor],
) -> Callable[..., torch.Tensor]:
    def run(
        x: torch.Tensor,
        axes: torch.Tensor | None = None,
        *,
        keepdims: int,
        noop_with_empty_axes: int,
    ) -> torch.Tensor:
        dims = _ints(axes)
        if not dims:
            if noop_with_empty_axes:
                return x
            dims = list(range(x.ndim))
        return fn(x, dim=tuple(_axis(d, x.ndim) for d in dims), keepdim=bool(keepdims))

    return run


KERNELS[("", "ReduceMean")] = _reduce(torch.mean)
KERNELS[("", "ReduceSum")] = _reduce(torch.sum)
KERNELS[("", "ReduceMax")] = _reduce(torch.amax)
KERNELS[("", "ReduceMin")] = _reduce(torch.amin)


@kernel("Attention")
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    past_key: torch.Tensor | None = None,
    past_value: torch.Tensor | None = None,
    *,
    is_causal: int,
    kv_num_heads: int | None,
    q_num_heads: int | None,
    qk_matmul_output_mode: int,
    scale: float | None,
    softcap: float,
    softmax_precision: int | None,
) -> torch.Tensor:
    """ONNX-23 Attention as the reference kernel computes it: a row with every key masked
    gives zeros rather than NaN."""
    three_d = q.ndim == 3

    def heads(x: torch.Tensor, n: int) -> torch.Tensor:
        b, s, hidden = x.shape
        return x.reshape(b, s, n, hidden // n).transpose(1, 2)

    if three_d:
        assert q_num_heads is not None and kv_num_heads is not None
        q, k, v = heads(q, q_num_heads), heads(k, kv_num_heads), heads(v, kv_num_heads)
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[3])
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    allowed: torch.Tensor | None = None
    if is_causal:
        s_len, l_len = scores.shape[-2], scores.shape[-1]
        allowed = torch.ones(s_len, l_len, dtype=torch.bool).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            scores = scores + attn_mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -math.inf)
    top = scores.amax(dim=-1, keepdim=True)
    dead = torch.isneginf(top)
    probs = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1)
    probs = probs.masked_fill(dead, 0.0)
    y = torch.matmul(probs, v)
    if three_d:
        b, h, s, d = y.shape
        y = y.transpose(1, 2).reshape(b, s, h * d)
    return y


# ------------------------------------------------------------------ layout


@kernel("Reshape")
def reshape(x: torch.Tensor, shape: torch.Tensor, *, allowzero: int) -> torch.Tensor:
    target = _ints(shape)
    if not allowzero:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


@kernel("Transpose")
def transpose(x: torch.Tensor, *, perm: list[int] | None) -> torch.Tensor:
    return x.permute(perm if perm is not None else list(reversed(range(x.ndim))))


@kernel("Unsqueeze")
def unsqueeze(x: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    rank = x.ndim + len(_ints(axes))
    for a in sorted(_axis(a, rank) for a in _ints(axes)):
        x = x.unsqueeze(a)
    return x


@kernel("Squeeze")
def squeeze(x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(_axis(a, x.ndim) for a in _ints(axes)))


@kernel("Flatten")
def flatten(x: torch.Tensor, *, axis: int) -> torch.Tensor:
    axis = _axis(axis, x.ndim)
    return x.reshape(math.prod(x.shape[:axis]), -1)


@kernel("Expand")
def expand(x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    target = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape)))
    return x.expand(target)


@kernel("Concat")
def concat(*xs: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.cat(list(xs), dim=axis)


@kernel("Split")
def split(
    x: torch.Tensor,
    sizes: torch.Tensor | None = None,
    *,
    axis: int,
    num_outputs: int | None,
    _num_outputs: int,
) -> tuple[torch.Tensor, ...]:
    axis = _axis(axis, x.ndim)
    if sizes is not None:
        return tuple(torch.split(x, _ints(sizes), dim=axis))
    n = num_outputs or _num_outputs
    chunk = -(-x.shape[axis] // n)
    return tuple(torch.split(x, chunk, dim=axis))


@kernel("Slice")
def slice_(
    x: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
    axes: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
) -> torch.Tensor:
    s, e = _ints(starts), _ints(ends)
    ax = _ints(axes) if axes is not None else list(range(len(s)))
    st = _ints(steps) if steps is not None else [1] * len(s)
    for start, end, a, step in zip(s, e, ax, st, strict=True):
        a = _axis(a, x.ndim)
        # Python's slice clamps exactly as ONNX's Slice does, for either sign of step.
        idx = range(x.shape[a])[slice(start, end, step)]
        if step > 0:
            x = (
                x.narrow(a, idx.start, len(idx))
                if step == 1
                else x[(slice(None),) * a + (slice(idx.start, idx.start + len(idx) * step, step),)]
            )
        else:
            x = x.index_select(a, torch.tensor(list(idx), dtype=torch.long))
    return x


def _fix_negative(idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = idx.to(torch.long)
    return torch.where(idx < 0, idx + size, idx)


@kernel("Gather")
def gather(x: torch.Tensor, idx: torch.Tensor, *, axis: int) -> torch.Tensor:
    axis = _axis(axis, x.ndim)
    flat = _fix_negative(idx, x.shape[axis]).reshape(-1)
    out = x.index_select(axis, flat)
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


@kernel("GatherElements")
def gather_elements(x: torch.Tensor, idx: torch.Tensor, *, axis: int) -> torch.Tensor:
    axis = _axis(axis, x.ndim)
    return torch.gather(x, axis, _fix_negative(idx, x.shape[axis]))


@kernel("CumSum")
def cumsum(x: torch.Tensor, axis: torch.Tensor, *, exclusive: int, reverse: int) -> torch.Tensor:
    a = _axis(int(axis.reshape(-1)[0]), x.ndim)
    y = x.flip(a) if reverse else x
    out = torch.cumsum(y, dim=a)
    if exclusive:
        out = out - y
    out = out.flip(a) if reverse else out
    return out.to(x.dtype)


@kernel("Pad")
def pad(
    x: torch.Tensor,
    pads: torch.Tensor,
    value: torch.Tensor | None = None,
    axes: torch.Tensor | None = None,
    *,
    mode: str,
) -> torch.Tensor:
    p = _ints(pads)
    ax = [_axis(a, x.ndim) for a in _ints(axes)] if axes is not None else list(range(x.ndim))
    n = len(ax)
    begin, end = dict(zip(ax, p[:n], strict=True)), dict(zip(ax, p[n:], strict=True))
    torch_pads: list[int] = []
    for a in reversed(range(x.ndim)):  # F.pad lists the last axis first
        torch_pads += [begin.get(a, 0), end.get(a, 0)]
    if mode == "constant":
        fill = 0.0 if value is None else float(value.reshape(-1)[0])
        return F.pad(x, torch_pads, value=fill)
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]  # torch pads the last axes only in these modes
    return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])


@kernel("Shape")
def shape(x: torch.Tensor, *, start: int, end: int | None) -> torch.Tensor:
    dims = list(x.shape)[slice(start, end)]
    return torch.tensor(dims, dtype=torch.int64)


def unsupported_reason(node: Any) -> str | None:
    """Why this node's attributes or outputs are outside its torch kernel, or None."""
    op = node.op_type
    if op == "MaxPool" and len(node.outputs) > 1:
        return "MaxPool's Indices output is not supported"
    if op == "BatchNormalization" and (node.attr("training_mode") or len(node.outputs) > 1):
        return "BatchNormalization in training mode is not supported (inference form only)"
    if op == "AveragePool" and any(d != 1 for d in node.attr("dilations") or []):
        return "AveragePool with dilations is not supported"
    if op == "Attention" and (len(node.outputs) > 1 or node.input(4) is not None):
        return "Attention with a KV cache or extra outputs is not supported"
    if op == "Dropout" and node.input(2) is not None and not node.input(2).is_constant:
        return "Dropout with a run-time training_mode is not supported"
    if op == "Pad" and node.attr("mode") not in ("constant", "reflect", "edge"):
        return f"Pad mode {node.attr('mode')!r} is not supported"
    return None
