"""Convolution ONNX ops: Conv, ConvTranspose, ConvInteger, and the window geometry the
pooling ops share (output sizes, explicit pads, sliding windows).

Each op carries a `macs` rule (multiply-accumulates, see `ecograph.ir.stats`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.registry import Attr, InferContext, MacsFn, make_type, register_op
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType

if TYPE_CHECKING:
    from ecograph.ir.graph import Node

# ------------------------------------------------------------ geometry, Conv


def conv_geometry(ctx: InferContext, spatial: list[Dim], kernel: list[int]) -> list[Dim | None]:
    n = len(spatial)
    strides = ctx.attr("strides") or [1] * n
    dilations = ctx.attrs.get("dilations") or [1] * n
    pads = ctx.attr("pads") or [0] * (2 * n)
    auto_pad = ctx.attr("auto_pad")
    ceil_mode = ctx.attrs.get("ceil_mode") or 0
    out: list[Dim | None] = []
    for i, d in enumerate(spatial):
        eff = (kernel[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(symbolic.floordiv(symbolic.add(d, strides[i] - 1), strides[i]))
        elif auto_pad == "VALID":
            out.append(symbolic.add(symbolic.floordiv(symbolic.sub(d, eff), strides[i]), 1))
        else:
            total = symbolic.add(d, pads[i] + pads[i + n] - eff)
            if ceil_mode and isinstance(total, int):
                o = -(-total // strides[i]) + 1
                # The last window must start inside the input or left padding.
                if (o - 1) * strides[i] >= d + pads[i]:  # type: ignore[operator]
                    o -= 1
                out.append(o)
            elif ceil_mode:
                # Ceil division with the last-window rule is not a polynomial in a symbol:
                # the dim is left unknown (a fresh symbol) rather than wrong.
                out.append(None)
            else:
                out.append(symbolic.add(symbolic.floordiv(total, strides[i]), 1))
    return out


def _conv_infer(ctx: InferContext) -> list[TensorType]:
    x, w = ctx.input(0), ctx.input(1)
    if x.rank < 3 or w.rank != x.rank:
        ctx.fail(f"Conv needs input and weight of equal rank >= 3, got {x} and {w}")
    kernel = ctx.attr("kernel_shape") or list(w.shape[2:])
    if not all(isinstance(k, int) for k in kernel):
        ctx.fail("kernel shape must be static")
    spatial = conv_geometry(ctx, list(x.shape[2:]), [int(k) for k in kernel])
    return [make_type(x.dtype, [x.shape[0], w.shape[0], *spatial])]


_CONV_ATTRS = {
    "auto_pad": Attr("string", "NOTSET"),
    "dilations": Attr("ints", None),
    "group": Attr("int", 1),
    "kernel_shape": Attr("ints", None),
    "pads": Attr("ints", None),
    "strides": Attr("ints", None),
}


def explicit_pads(
    in_spatial: tuple[int, ...],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    pads: list[int] | None,
    auto_pad: str,
) -> list[int]:
    n = len(in_spatial)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [0] * (2 * n)
        for i, d in enumerate(in_spatial):
            o = -(-d // strides[i])
            total = max(0, (o - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - d)
            small, big = total // 2, total - total // 2
            out[i], out[i + n] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return out
    if auto_pad == "VALID":
        return [0] * (2 * n)
    return list(pads) if pads else [0] * (2 * n)


@dataclass(frozen=True)
class Conv2dGeometry:
    """A 2-D convolution's strides, dilations, explicit pads (top, left, bottom, right) and
    output size, from its attributes and its static input and kernel sizes."""

    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]
    out: tuple[int, int]


def conv2d_geometry(
    attrs: Mapping[str, Any], size: tuple[int, int], kernel: tuple[int, int]
) -> Conv2dGeometry | None:
    """The geometry of a 2-D Conv / ConvInteger / QLinearConv with resolved `attrs` over an
    image of `size` with a `kernel`; None where a pad is negative or the output is empty."""
    strides = tuple(attrs["strides"] or (1, 1))
    dil = tuple(attrs["dilations"] or (1, 1))
    pads = explicit_pads(size, list(kernel), list(strides), list(dil), attrs["pads"],
                         attrs["auto_pad"])  # fmt: skip
    out = tuple(
        (size[i] + pads[i] + pads[i + 2] - (kernel[i] - 1) * dil[i] - 1) // strides[i] + 1
        for i in range(2)
    )
    if min(out) < 1 or min(pads) < 0:
        return None
    return Conv2dGeometry(strides, dil, tuple(pads), out)  # type: ignore[arg-type]


def sliding_windows(
    x: np.ndarray,
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    pads: list[int],
    fill: Any,
    out_spatial: list[int] | None = None,
) -> np.ndarray:
    """Sliding windows over the trailing spatial axes: (N, C, *out, *kernel)."""
    n = len(kernel)
    width = [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)]
    if out_spatial is not None:
        # ceil_mode: pad on the right as far as the last window needs.
        for i in range(n):
            need = (out_spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
            have = x.shape[2 + i] + pads[i] + pads[i + n]
            if need > have:
                width[2 + i] = (pads[i], pads[i + n] + need - have)
    xp = np.pad(x, width, mode="constant", constant_values=fill)
    eff = [(kernel[i] - 1) * dilations[i] + 1 for i in range(n)]
    win = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=tuple(range(2, 2 + n)))
    sl: list[Any] = [slice(None), slice(None)]
    sl += [slice(None, None, strides[i]) for i in range(n)]
    sl += [slice(None, None, dilations[i]) for i in range(n)]
    win = win[tuple(sl)]
    if out_spatial is not None:
        win = win[(slice(None), slice(None), *[slice(0, o) for o in out_spatial])]
    return win


def conv_macs(weight_input: int) -> MacsFn:
    """MACs of a convolution whose weight is input `weight_input`: every output element sums
    (C_in / group) · kernel products, the weight's dims after the first."""

    def macs(node: Node, bindings: Mapping[str, int]) -> int:
        w = node.inputs[weight_input]
        assert w is not None
        out = symbolic.evaluate(symbolic.product(node.outputs[0].shape), bindings)
        return out * symbolic.evaluate(symbolic.product(w.shape[1:]), bindings)

    return macs


@register_op(
    "Conv",
    inputs=["X", "W", "B?"],
    outputs=["Y"],
    attrs=_CONV_ATTRS,
    infer=_conv_infer,
    macs=conv_macs(1),
)
def conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str,
    dilations: list[int] | None,
    group: int,
    kernel_shape: list[int] | None,
    pads: list[int] | None,
    strides: list[int] | None,
) -> np.ndarray:
    n = x.ndim - 2
    kernel = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    p = explicit_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    acc = np.float64 if x.dtype == np.float64 else np.float32
    win = sliding_windows(x.astype(acc), kernel, strides, dilations, p, 0)
    batch, cin = x.shape[:2]
    cout = w.shape[0]
    cg, og = cin // group, cout // group
    out_sp = win.shape[2 : 2 + n]
    letters = "abcdefgh"[:n]
    klet = "pqrstuvw"[:n]
    outs = []
    for g in range(group):
        wg = w[g * og : (g + 1) * og].astype(acc)
        xg = win[:, g * cg : (g + 1) * cg]
        outs.append(np.einsum(f"nc{letters}{klet},oc{klet}->no{letters}", xg, wg, optimize=True))
    y = np.concatenate(outs, axis=1) if group > 1 else outs[0]
    if b is not None:
        y = y + b.astype(acc).reshape(1, cout, *[1] * n)
    return y.reshape(batch, cout, *out_sp).astype(x.dtype)


# --------------------------------------------------------------- ConvTranspose


def conv_transpose_pads(
    in_sp: list[Dim],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    out_pad: list[int],
    pads: list[int] | None,
    output_shape: list[int] | None,
    auto_pad: str,
) -> tuple[list[Dim], list[int] | None]:
    """Output spatial dims and explicit pads (None when they depend on symbolic dims)."""
    n = len(kernel)
    full = [
        symbolic.add(symbolic.mul(symbolic.sub(d, 1), strides[i]),
                     out_pad[i] + (kernel[i] - 1) * dilations[i] + 1)
        for i, d in enumerate(in_sp)
    ]  # fmt: skip
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [symbolic.mul(d, strides[i]) for i, d in enumerate(in_sp)]  # type: ignore[misc]
    if output_shape is not None:
        target: list[Dim] = list(output_shape[-n:])
        if not all(
            isinstance(f, int) and isinstance(t, int) for f, t in zip(full, target, strict=True)
        ):
            return target, None
        p = [0] * (2 * n)
        for i in range(n):
            total = int(full[i]) - int(target[i])  # both static, checked above
            if auto_pad == "SAME_UPPER":
                p[i], p[i + n] = total // 2, total - total // 2
            else:
                p[i], p[i + n] = total - total // 2, total // 2
        return target, p
    p = list(pads) if pads else [0] * (2 * n)
    return [symbolic.sub(full[i], p[i] + p[i + n]) for i in range(n)], p


def _conv_transpose_infer(ctx: InferContext) -> list[TensorType]:
    x, w = ctx.input(0), ctx.input(1)
    n = x.rank - 2
    kernel = ctx.attr("kernel_shape") or list(w.shape[2:])
    if not all(isinstance(k, int) for k in kernel):
        ctx.fail("kernel shape must be static")
    out_sp, _ = conv_transpose_pads(
        list(x.shape[2:]),
        [int(k) for k in kernel],
        ctx.attr("strides") or [1] * n,
        ctx.attr("dilations") or [1] * n,
        ctx.attr("output_padding") or [0] * n,
        ctx.attr("pads"),
        ctx.attr("output_shape"),
        ctx.attr("auto_pad"),
    )
    return [TensorType(x.dtype, [x.shape[0], symbolic.mul(w.shape[1], ctx.attr("group")),
                                 *out_sp])]  # fmt: skip


def _conv_transpose_macs(node: Node, bindings: Mapping[str, int]) -> int:
    """Every input element meets every (C_out / group) · kernel weight once."""
    x, w = node.inputs[0], node.inputs[1]
    assert x is not None and w is not None
    per_input = symbolic.evaluate(symbolic.product(w.shape[1:]), bindings)
    return symbolic.evaluate(symbolic.product(x.shape), bindings) * per_input


@register_op(
    "ConvTranspose",
    inputs=["X", "W", "B?"],
    outputs=["Y"],
    attrs={
        **_CONV_ATTRS,
        "output_padding": Attr("ints", None),
        "output_shape": Attr("ints", None),
    },
    infer=_conv_transpose_infer,
    macs=_conv_transpose_macs,
)
def conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str,
    dilations: list[int] | None,
    group: int,
    kernel_shape: list[int] | None,
    output_padding: list[int] | None,
    output_shape: list[int] | None,
    pads: list[int] | None,
    strides: list[int] | None,
) -> np.ndarray:
    n = x.ndim - 2
    kernel = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    out_pad = list(output_padding or [0] * n)
    _, p = conv_transpose_pads(
        list(x.shape[2:]), kernel, strides, dilations, out_pad, pads, output_shape, auto_pad
    )
    assert p is not None
    acc = np.float64 if x.dtype == np.float64 else np.float32
    batch, cin = x.shape[:2]
    mg = w.shape[1]
    cg = cin // group
    full = [(x.shape[2 + i] - 1) * strides[i] + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
            for i in range(n)]  # fmt: skip
    y = np.zeros((batch, mg * group, *full), dtype=acc)
    xs = x.astype(acc)
    ws = w.astype(acc)
    for g in range(group):
        xg = xs[:, g * cg : (g + 1) * cg]
        for kk in itertools.product(*[range(k) for k in kernel]):
            wk = ws[(slice(g * cg, (g + 1) * cg), slice(None), *kk)]  # (cg, mg)
            contrib = np.tensordot(xg, wk, axes=([1], [0]))  # (N, *in_sp, mg)
            contrib = np.moveaxis(contrib, -1, 1)
            index: list[Any] = [slice(None), slice(g * mg, (g + 1) * mg)]
            for i in range(n):
                start = kk[i] * dilations[i]
                index.append(slice(start, start + (x.shape[2 + i] - 1) * strides[i] + 1,
                                   strides[i]))  # fmt: skip
            y[tuple(index)] += contrib
    # Crop the pads (negative pads grow the output with zeros).
    width = [(0, 0), (0, 0)] + [(max(-p[i], 0), max(-p[i + n], 0)) for i in range(n)]
    if any(a or c for a, c in width):
        y = np.pad(y, width)
    crop = [slice(None), slice(None)] + [
        slice(max(p[i], 0), y.shape[2 + i] - max(p[i + n], 0)) for i in range(n)
    ]
    y = y[tuple(crop)]
    if b is not None:
        y = y + b.astype(acc).reshape(1, -1, *[1] * n)
    return y.astype(x.dtype)


# ------------------------------------------------------------ ConvInteger


def _conv_integer_infer(ctx: InferContext) -> list[TensorType]:
    t = _conv_infer(ctx)[0]
    return [make_type(DType.INT32, t.shape)]


@register_op(
    "ConvInteger",
    inputs=["x", "w", "x_zero_point?", "w_zero_point?"],
    outputs=["y"],
    attrs=_CONV_ATTRS,
    infer=_conv_integer_infer,
    macs=conv_macs(1),
)
def conv_integer(
    x: np.ndarray,
    w: np.ndarray,
    x_zp: np.ndarray | None = None,
    w_zp: np.ndarray | None = None,
    **attrs: Any,
) -> np.ndarray:
    # Exact: products and sums of 8-bit values stay far below 2**53 in float64.
    xd = x.astype(np.float64) - (0 if x_zp is None else x_zp.astype(np.float64))
    wd = w.astype(np.float64)
    if w_zp is not None:
        wz = w_zp.astype(np.float64)
        wd = wd - (wz.reshape(-1, *[1] * (w.ndim - 1)) if wz.ndim == 1 and wz.size > 1 else wz)
    return np.rint(conv(xd, wd, **attrs)).astype(np.int32)
