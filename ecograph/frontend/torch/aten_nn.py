"""ATen converters for neural-network layers: softmax, matmul / linear, scaled dot-product
attention (causal and boolean masks, grouped-query), layer / batch / group norm, upsampling,
convolution and pooling."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ecograph.frontend.torch.converter import (
    Converter,
    NotConvertedError,
    aten,
    target_name,
)
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Value

# ------------------------------------------------------------ softmax


@aten("aten._softmax.default", "aten.softmax.int", "aten._safe_softmax.default")
def _softmax(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"], cx.out_dtype(node))
    out = cx.op("Softmax", x, axis=a["dim"] % x.type.rank)
    if "safe" in target_name(node.target):
        out = _zero_nan(cx, out)
    return out


@aten("aten._log_softmax.default", "aten.log_softmax.int")
def _log_softmax(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"], cx.out_dtype(node))
    return cx.op("LogSoftmax", x, axis=a["dim"] % x.type.rank)


def _zero_nan(cx: Converter, x: Value) -> Value:
    """Rows that were masked entirely give NaN in softmax; torch makes them 0."""
    return cx.op("Where", cx.op("IsNaN", x), cx.tensor(0.0, x.dtype), x)


# ------------------------------------------------------------ linear algebra


@aten("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _matmul(cx: Converter, node: Any) -> Value:
    return cx.op("MatMul", cx.tensor(node.args[0]), cx.tensor(node.args[1]))


@aten("aten.addmm.default")
def _addmm(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    return cx.op(
        "Gemm",
        cx.tensor(a["mat1"]),
        cx.tensor(a["mat2"]),
        cx.tensor(a["self"]),
        alpha=float(a["alpha"]),
        beta=float(a["beta"]),
    )


@aten("aten.linear.default")
def _linear(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    out = cx.op("MatMul", cx.tensor(a["input"]), cx.op("Transpose", cx.tensor(a["weight"])))
    if a["bias"] is not None:
        out = cx.op("Add", out, cx.tensor(a["bias"]))
    return out


@aten("aten.scaled_dot_product_attention.default",
      "aten._scaled_dot_product_flash_attention_for_cpu.default")  # fmt: skip
def _sdpa(cx: Converter, node: Any) -> Any:
    """softmax(q @ k^T * scale + mask) @ v, with causal and boolean masks, and grouped-query
    attention (k/v heads repeated to the query heads)."""
    a = cx.args(node)
    if a.get("dropout_p", 0.0):
        raise NotConvertedError("attention dropout (inference graphs only)")
    q, k, v = cx.tensor(a["query"]), cx.tensor(a["key"]), cx.tensor(a["value"])
    dtype = q.dtype
    if a.get("enable_gqa") and q.shape[-3] != k.shape[-3]:
        k, v = _repeat_heads(cx, k, q), _repeat_heads(cx, v, q)
    e = q.shape[-1]
    if not isinstance(e, int):
        raise NotConvertedError("symbolic head size")
    scale = a.get("scale")
    scale = 1.0 / math.sqrt(e) if scale is None else float(scale)
    rank = k.type.rank
    perm = [*range(rank - 2), rank - 1, rank - 2]
    scores = cx.op("MatMul", q, cx.op("Transpose", k, perm=perm))
    scores = cx.op("Mul", scores, cx.tensor(scale, dtype))
    neg_inf = cx.tensor(-np.inf, dtype)
    masked = False
    if a.get("is_causal"):
        l_dim, s_dim = q.shape[-2], k.shape[-2]
        if isinstance(l_dim, int) and isinstance(s_dim, int):
            causal = cx.graph.add_constant(np.tril(np.ones((l_dim, s_dim), bool)), "causal")
        else:
            size = cx.op("Concat", cx.op("Shape", q, start=-2, end=-1),
                         cx.op("Shape", k, start=-2, end=-1), axis=0)  # fmt: skip
            ones = cx.op("ConstantOfShape", size, value=np.array([1], np.int64))
            causal = cx.op("Cast", cx.op("Trilu", ones, upper=0), to=DType.BOOL.onnx)
        scores = cx.op("Where", causal, scores, neg_inf)
        masked = True
    mask = a.get("attn_mask")
    if mask is not None:
        m = cx.tensor(mask)
        if m.dtype == DType.BOOL:
            scores = cx.op("Where", m, scores, neg_inf)
        else:
            scores = cx.op("Add", scores, cx.tensor(mask, dtype))
        masked = True
    probs = cx.op("Softmax", scores, axis=-1)
    if masked:
        probs = _zero_nan(cx, probs)
    out = cx.op("MatMul", probs, v)
    if "flash_attention" in target_name(node.target):
        return (out, None)
    return out


def _repeat_heads(cx: Converter, kv: Value, q: Value) -> Value:
    """[B, Hk, S, E] -> [B, Hq, S, E], each k/v head repeated Hq/Hk times (repeat_interleave)."""
    hq, hk = q.shape[-3], kv.shape[-3]
    if not (isinstance(hq, int) and isinstance(hk, int)):
        raise NotConvertedError("grouped-query attention with symbolic head counts")
    r = hq // hk
    rank = kv.type.rank
    x = cx.op("Unsqueeze", kv, cx.ints([rank - 2]))
    expand = [1] * (rank + 1)
    expand[rank - 2] = r
    x = cx.op("Expand", x, cx.ints(expand))
    e = kv.shape[-1]
    if not isinstance(e, int):
        raise NotConvertedError("grouped-query attention with a symbolic head size")
    # 0 copies the batch dims; the sequence dim is inferred.
    return cx.op("Reshape", x, cx.ints([0] * (rank - 3) + [hq, -1, e]))


# ------------------------------------------------------------ normalization


@aten("aten.native_layer_norm.default", "aten.layer_norm.default")
def _layer_norm(cx: Converter, node: Any) -> Any:
    a = cx.args(node)
    x = cx.tensor(a["input"])
    shape = [int(s) for s in a["normalized_shape"]]
    scale = (
        cx.tensor(a["weight"], x.dtype)
        if a["weight"] is not None
        else cx.graph.add_constant(np.ones(shape, x.dtype.numpy), "ln_scale")
    )
    bias = cx.tensor(a["bias"], x.dtype) if a["bias"] is not None else None
    eps = float(a.get("eps", 1e-5))
    out = cx.op("LayerNormalization", x, scale, bias, axis=-len(shape), epsilon=eps)
    if target_name(node.target).startswith("aten.native_layer_norm"):
        return (out, None, None)
    return out


@aten("aten._native_batch_norm_legit_no_training.default",
      "aten._native_batch_norm_legit.no_stats", "aten.native_batch_norm.default",
      "aten._native_batch_norm_legit_functional.default", "aten.batch_norm.default")  # fmt: skip
def _batch_norm(cx: Converter, node: Any) -> Any:
    a = cx.args(node)
    x = cx.tensor(a["input"])
    if a.get("training") or a.get("running_mean") is None:
        return _batch_stats_norm(cx, node, a, x)
    c = x.shape[1]
    if not isinstance(c, int):
        raise NotConvertedError("batch norm over a symbolic channel count")
    dt = x.dtype.numpy
    weight = (
        cx.tensor(a["weight"]) if a["weight"] is not None
        else cx.graph.add_constant(np.ones(c, dt), "bn_scale")
    )  # fmt: skip
    bias = (
        cx.tensor(a["bias"]) if a["bias"] is not None
        else cx.graph.add_constant(np.zeros(c, dt), "bn_bias")
    )  # fmt: skip
    out = cx.op(
        "BatchNormalization",
        x, weight, bias, cx.tensor(a["running_mean"]), cx.tensor(a["running_var"]),
        epsilon=float(a["eps"]),
    )  # fmt: skip
    if target_name(node.target) == "aten.batch_norm.default":
        return out
    return (out, None, None) if "functional" not in target_name(node.target) else (
        out, None, None, None, None)  # fmt: skip


def _batch_stats_norm(cx: Converter, node: Any, a: dict[str, Any], x: Value) -> Any:
    """Batch norm over the batch's own statistics (instance norm runs this way in eval mode):
    normalize each channel over all other axes with the biased variance."""
    if a.get("running_mean") is not None and "functional" not in target_name(node.target):
        # Training mode would also update the running statistics in place.
        raise NotConvertedError("batch norm in training mode (call module.eval())")
    axes = cx.ints([i for i in range(x.type.rank) if i != 1])
    eps = cx.tensor(float(a["eps"]), x.dtype)
    mean = cx.op("ReduceMean", x, axes, keepdims=1)
    centered = cx.op("Sub", x, mean)
    var = cx.op("ReduceMean", cx.op("Mul", centered, centered), axes, keepdims=1)
    out = cx.op("Div", centered, cx.op("Sqrt", cx.op("Add", var, eps)))
    shape = cx.ints([1, -1] + [1] * (x.type.rank - 2))
    if a.get("weight") is not None:
        out = cx.op("Mul", out, cx.op("Reshape", cx.tensor(a["weight"]), shape))
    if a.get("bias") is not None:
        out = cx.op("Add", out, cx.op("Reshape", cx.tensor(a["bias"]), shape))
    if target_name(node.target) == "aten.batch_norm.default":
        return out
    return (out, None, None)


@aten("aten.native_group_norm.default", "aten.group_norm.default")
def _group_norm(cx: Converter, node: Any) -> Any:
    a = cx.args(node)
    x = cx.tensor(a["input"])
    c = x.shape[1]
    if not isinstance(c, int):
        raise NotConvertedError("group norm over a symbolic channel count")
    groups = int(a["group"] if "group" in a else a["num_groups"])
    dt = x.dtype.numpy
    weight = (
        cx.tensor(a["weight"])
        if a["weight"] is not None
        else cx.graph.add_constant(np.ones(c, dt), "gn_scale")
    )
    bias = (
        cx.tensor(a["bias"])
        if a["bias"] is not None
        else cx.graph.add_constant(np.zeros(c, dt), "gn_bias")
    )
    out = cx.op("GroupNormalization", x, weight, bias, num_groups=groups, epsilon=float(a["eps"]))
    if target_name(node.target) == "aten.group_norm.default":
        return out
    return (out, None, None)


# ------------------------------------------------------------ resampling


@aten("aten.upsample_nearest2d.vec", "aten.upsample_bilinear2d.vec",
      "aten.upsample_nearest1d.vec", "aten.upsample_linear1d.vec")  # fmt: skip
def _upsample(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["input"])
    nearest = "nearest" in target_name(node.target)
    sizes = list(cx.val(node).shape)
    if nearest:
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}  # fmt: skip
    else:
        mode = "align_corners" if a.get("align_corners") else "pytorch_half_pixel"
        attrs = {"mode": "linear", "coordinate_transformation_mode": mode}
    if a.get("scale_factors") is not None and not a.get("align_corners"):
        # torch maps coordinates with the given scale, not out/in; ONNX does the same with
        # `scales`.
        scales = [1.0, 1.0] + [float(f) for f in a["scale_factors"]]
        return cx.op("Resize", x, None, cx.const(np.array(scales, np.float32)), **attrs)
    return cx.op("Resize", x, None, None, cx.shape_vec(sizes), **attrs)


# ------------------------------------------------------------ convolution and pooling


@aten(
    "aten.convolution.default",
    "aten.conv2d.default",
    "aten.conv1d.default",
    "aten.conv_transpose2d.input",
)
def _convolution(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x, w = cx.tensor(a["input"]), cx.tensor(a["weight"])
    b = cx.tensor(a["bias"]) if a.get("bias") is not None else None
    nd = w.type.rank - 2
    padding = a["padding"]
    if isinstance(padding, str):
        raise NotConvertedError(f"padding={padding!r}")
    pads = _expand_list(padding, nd)
    if a.get("transposed"):
        # torch and ONNX share the weight layout [C_in, C_out / groups, k...].
        return cx.op(
            "ConvTranspose",
            x,
            w,
            b,
            strides=_expand_list(a["stride"], nd),
            pads=pads + pads,
            dilations=_expand_list(a["dilation"], nd),
            output_padding=_expand_list(a["output_padding"], nd),
            group=int(a["groups"]),
            kernel_shape=[int(d) for d in w.shape[2:]],
        )
    return cx.op(
        "Conv",
        x,
        w,
        b,
        strides=_expand_list(a["stride"], nd),
        pads=pads + pads,
        dilations=_expand_list(a["dilation"], nd),
        group=int(a["groups"]),
        kernel_shape=[int(d) for d in w.shape[2:]],
    )


def _expand_list(v: Any, n: int) -> list[int]:
    items = [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]
    return items * n if len(items) == 1 else items


@aten("aten.max_pool2d_with_indices.default", "aten.max_pool2d.default",
      "aten.max_pool1d.default", "aten.max_pool3d_with_indices.default")  # fmt: skip
def _max_pool(cx: Converter, node: Any) -> Any:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    nd = x.type.rank - 2
    kernel = _expand_list(a["kernel_size"], nd)
    stride = _expand_list(a["stride"], nd) if a["stride"] else kernel
    pads = _expand_list(a["padding"], nd)
    out = cx.op(
        "MaxPool",
        x,
        kernel_shape=kernel,
        strides=stride,
        pads=pads + pads,
        dilations=_expand_list(a["dilation"], nd),
        ceil_mode=int(bool(a["ceil_mode"])),
    )
    if "with_indices" in target_name(node.target):
        return (out, None)
    return out


@aten("aten.avg_pool2d.default", "aten.avg_pool1d.default")
def _avg_pool(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    if a.get("divisor_override") is not None:
        raise NotConvertedError("avg_pool with divisor_override")
    x = cx.tensor(a["self"])
    nd = x.type.rank - 2
    kernel = _expand_list(a["kernel_size"], nd)
    stride = _expand_list(a["stride"], nd) if a["stride"] else kernel
    pads = _expand_list(a["padding"], nd)
    return cx.op(
        "AveragePool",
        x,
        kernel_shape=kernel,
        strides=stride,
        pads=pads + pads,
        ceil_mode=int(bool(a["ceil_mode"])),
        count_include_pad=int(bool(a["count_include_pad"])),
    )


@aten("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default",
      "aten.adaptive_avg_pool1d.default", "aten._adaptive_avg_pool3d.default")  # fmt: skip
def _adaptive_avg_pool(cx: Converter, node: Any) -> Value:
    a = cx.args(node)
    x = cx.tensor(a["self"])
    nd = x.type.rank - 2
    out_size = _expand_list(a["output_size"], nd)
    if all(s == 1 for s in out_size):
        return cx.op("GlobalAveragePool", x)
    in_size = x.shape[2:]
    if not all(isinstance(d, int) for d in in_size):
        raise NotConvertedError("adaptive pooling over symbolic spatial dims")
    if all(int(d) % s == 0 for d, s in zip(in_size, out_size, strict=True)):
        kernel = [int(d) // s for d, s in zip(in_size, out_size, strict=True)]
        return cx.op("AveragePool", x, kernel_shape=kernel, strides=kernel)
    # Uneven windows: torch averages [floor(i*n/m), ceil((i+1)*n/m)) per output i. A mean over
    # a box is the mean over each axis in turn, so pool one axis at a time.
    out = x
    for k, (n, m) in enumerate(zip(in_size, out_size, strict=True)):
        axis = 2 + k
        cells = []
        for i in range(m):
            start, end = (i * int(n)) // m, -((-(i + 1) * int(n)) // m)
            part = cx.op("Slice", out, cx.ints([start]), cx.ints([end]), cx.ints([axis]))
            cells.append(cx.op("ReduceMean", part, cx.ints([axis]), keepdims=1))
        out = cells[0] if m == 1 else cx.op("Concat", *cells, axis=axis)
    return out
