"""Reference kernels of the ONNX recurrent ops RNN, GRU and LSTM, in numpy.

The schemas (inputs, outputs, attributes) are ONNX's at `ONNX_OPSET` and the types come from
ONNX's shape inference, as for the ops in `reference_ops.py`; the kernels are ecograph's own,
because onnx.reference ignores several attributes. They follow the ONNX spec as ONNX Runtime
implements it:

* `direction` forward / reverse / bidirectional (the reverse direction runs from the last step
  to the first); `layout` 0 (`[seq, batch, ...]`) and 1 (`[batch, seq, ...]`);
* optional B, initial_h, initial_c and P (zeros when absent); all outputs Y, Y_h, Y_c;
* `activations` by name, case-insensitive (Relu, Tanh, Sigmoid, Affine, LeakyRelu,
  ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, Softsign, Softplus), one set per direction;
  `activation_alpha` / `activation_beta` are consumed in order by the functions that take them,
  with each function's default once they run out;
* `clip` bounds the input of every activation except LSTM's `h` (whose input is the cell state);
* GRU `linear_before_reset`; LSTM `input_forget` (forget gate = 1 - input gate) and peepholes;
* `sequence_lens`: a batch row stops at its own length; past it Y is 0 and the state holds (the
  reverse direction starts at the row's last valid step), and a row of length 0 has zero final
  states.

float16 / bfloat16 inputs compute in float32 and are rounded once at the end; other float
dtypes (float32, float64) compute in their own dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecograph.ir.ops._onnx_ref import register_reference_op

Act = Callable[[np.ndarray], np.ndarray]

# Gates stacked in W / R per op (RNN: i; GRU: z, r, h; LSTM: i, o, f, c) and the activations
# of one direction.
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}

# lower-case name -> (takes alpha, takes beta, default alpha, default beta)
_ACT_PARAMS: dict[str, tuple[bool, bool, float, float]] = {
    "relu": (False, False, 0.0, 0.0),
    "tanh": (False, False, 0.0, 0.0),
    "sigmoid": (False, False, 0.0, 0.0),
    "affine": (True, True, 1.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 1.0, 0.0),
    "scaledtanh": (True, True, 1.0, 1.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0),
    "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _activation(name: str, alpha: float, beta: float, dtype: np.dtype) -> Act:
    """The numpy function of one activation; constants in the compute dtype."""
    a, b = dtype.type(alpha), dtype.type(beta)
    key = name.lower()
    if key == "relu":
        return lambda x: np.maximum(x, 0)
    if key == "tanh":
        return np.tanh
    if key == "sigmoid":
        return _sigmoid
    if key == "affine":
        return lambda x: a * x + b
    if key == "leakyrelu":
        return lambda x: np.where(x >= 0, x, a * x)
    if key == "thresholdedrelu":
        return lambda x: np.where(x > a, x, 0).astype(x.dtype)
    if key == "scaledtanh":
        return lambda x: a * np.tanh(b * x)
    if key == "hardsigmoid":
        return lambda x: np.clip(a * x + b, 0, 1)
    if key == "elu":
        return lambda x: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0)))
    if key == "softsign":
        return lambda x: x / (1 + np.abs(x))
    if key == "softplus":
        # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), stable for large |x|
        return lambda x: np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
    raise AssertionError(key)  # names are checked in _activations


@dataclass(frozen=True)
class ActivationSpec:
    """One recurrent activation as the ONNX attributes give it: its lower-case name, its
    alpha and beta (defaults filled in), and whether `clip` bounds its input."""

    name: str
    alpha: float
    beta: float
    clipped: bool


def activation_specs(
    op: str,
    names: Sequence[str] | None,
    alphas: Sequence[float] | None,
    betas: Sequence[float] | None,
    num_dirs: int,
    clip: float | None = None,
) -> list[list[ActivationSpec]]:
    """The activations of each direction of an RNN / GRU / LSTM node, from its attributes;
    ValueError for a name the spec does not list or a wrong count. Shared by the reference
    kernels and the TVM lowerings, so both read the attributes the same way."""
    per_dir = len(_DEFAULT_ACTS[op])
    names = [str(n) for n in (names or _DEFAULT_ACTS[op] * num_dirs)]
    if op == "RNN" and num_dirs == 1 and len(names) == 2:
        names = names[:1]  # RNN's schema default is ["Tanh", "Tanh"] for any direction
    if len(names) != per_dir * num_dirs:
        raise ValueError(
            f"activations has {len(names)} entries; {op} with {num_dirs} direction(s) needs "
            f"{per_dir * num_dirs}"
        )
    alpha_left = [float(v) for v in alphas or []]
    beta_left = [float(v) for v in betas or []]
    specs: list[ActivationSpec] = []
    for k, name in enumerate(names):
        params = _ACT_PARAMS.get(name.lower())
        if params is None:
            raise ValueError(
                f"activation {name!r} is not one the ONNX spec lists for {op} "
                f"({', '.join(sorted(_ACT_PARAMS))})"
            )
        takes_alpha, takes_beta, alpha, beta = params
        if takes_alpha and alpha_left:
            alpha = alpha_left.pop(0)
        if takes_beta and beta_left:
            beta = beta_left.pop(0)
        # clip bounds the input of every activation except LSTM's h (its input is the cell
        # state C, which ONNX Runtime leaves unclipped).
        clipped = clip is not None and not (op == "LSTM" and k % per_dir == 2)
        specs.append(ActivationSpec(name.lower(), alpha, beta, clipped))
    return [specs[d * per_dir : (d + 1) * per_dir] for d in range(num_dirs)]


def _activations(
    op: str,
    names: Sequence[str] | None,
    alphas: Sequence[float] | None,
    betas: Sequence[float] | None,
    clip: float | None,
    num_dirs: int,
    dtype: np.dtype,
) -> list[list[Act]]:
    """The activation functions of each direction, with `clip` applied to their input."""
    out: list[list[Act]] = []
    for direction in activation_specs(op, names, alphas, betas, num_dirs, clip):
        acts: list[Act] = []
        for spec in direction:
            fn = _activation(spec.name, spec.alpha, spec.beta, dtype)
            if spec.clipped:
                fn = _clipped(fn, dtype.type(clip))
            acts.append(fn)
        out.append(acts)
    return out


def _clipped(fn: Act, lim: Any) -> Act:
    return lambda x: fn(np.clip(x, -lim, lim))


Step = Callable[[np.ndarray, np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]


def _rnn_step(acts: list[Act], r: np.ndarray) -> Step:
    (f,) = acts
    rt = r.T

    def step(xw: np.ndarray, h: np.ndarray, c: np.ndarray | None) -> tuple[np.ndarray, None]:
        return f(xw + h @ rt), None

    return step


def _gru_step(acts: list[Act], r: np.ndarray, rbh: np.ndarray | None, lbr: bool) -> Step:
    f, g = acts
    hid = r.shape[-1]
    rt_zr, rt_h = r[: 2 * hid].T, r[2 * hid :].T

    def step(xw: np.ndarray, h: np.ndarray, c: np.ndarray | None) -> tuple[np.ndarray, None]:
        zr = xw[:, : 2 * hid] + h @ rt_zr
        z, rg = f(zr[:, :hid]), f(zr[:, hid:])
        if lbr:
            hr = h @ rt_h
            if rbh is not None:
                hr = hr + rbh
            hh = g(xw[:, 2 * hid :] + rg * hr)
        else:
            hh = g(xw[:, 2 * hid :] + (rg * h) @ rt_h)
        return (1 - z) * hh + z * h, None

    return step


def _lstm_step(acts: list[Act], r: np.ndarray, p: np.ndarray | None, input_forget: bool) -> Step:
    f, g, hf = acts
    hid = r.shape[-1]
    rt = r.T
    pi, po, pf = (None, None, None) if p is None else (p[:hid], p[hid : 2 * hid], p[2 * hid :])

    def step(xw: np.ndarray, h: np.ndarray, c: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        assert c is not None
        gates = xw + h @ rt
        gi, go, gf, gc = (gates[:, k * hid : (k + 1) * hid] for k in range(4))
        i = f(gi if pi is None else gi + pi * c)
        if input_forget:
            fg = 1 - i
        else:
            fg = f(gf if pf is None else gf + pf * c)
        c_new = fg * c + i * g(gc)
        o = f(go if po is None else go + po * c_new)
        return o * hf(c_new), c_new

    return step


def _run_direction(
    step: Step,
    xw: np.ndarray,
    h: np.ndarray,
    c: np.ndarray | None,
    lens: np.ndarray | None,
    reverse: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Y [seq, batch, hidden] and the final states of one direction; xw [seq, batch, G*H] is
    the input projection with its biases."""
    seq = xw.shape[0]
    y = np.zeros((seq, *h.shape), h.dtype)
    for t in range(seq - 1, -1, -1) if reverse else range(seq):
        h_new, c_new = step(xw[t], h, c)
        if lens is None:
            y[t], h, c = h_new, h_new, c_new
            continue
        live = (t < lens)[:, None]
        y[t] = np.where(live, h_new, 0)
        h = np.where(live, h_new, h)
        if c is not None and c_new is not None:
            c = np.where(live, c_new, c)
    if lens is not None:  # ONNX Runtime gives an empty row zero final states
        nonempty = (lens > 0)[:, None]
        h = np.where(nonempty, h, 0).astype(h.dtype)
        c = None if c is None else np.where(nonempty, c, 0).astype(c.dtype)
    return y, h, c


def _recurrent(
    op: str,
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None,
    sequence_lens: np.ndarray | None,
    initial_h: np.ndarray | None,
    initial_c: np.ndarray | None,
    p: np.ndarray | None,
    attrs: dict[str, Any],
) -> tuple[np.ndarray, ...]:
    out_dtype = x.dtype
    cdt = np.dtype(np.float32) if str(out_dtype) in ("float16", "bfloat16") else out_dtype
    direction = attrs.get("direction") or "forward"
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"direction must be forward, reverse or bidirectional, got {direction!r}")
    num_dirs = 2 if direction == "bidirectional" else 1
    layout = int(attrs.get("layout") or 0)
    if layout not in (0, 1):
        raise ValueError(f"layout must be 0 or 1, got {layout}")
    if w.shape[0] != num_dirs:
        raise ValueError(
            f"W has {w.shape[0]} direction(s) but direction={direction!r} needs {num_dirs}"
        )
    hidden = r.shape[-1]
    if attrs.get("hidden_size") is not None and int(attrs["hidden_size"]) != hidden:
        raise ValueError(f"hidden_size={attrs['hidden_size']} but R has hidden size {hidden}")
    gh = GATES[op] * hidden

    def cast(a: np.ndarray) -> np.ndarray:
        return np.asarray(a).astype(cdt, copy=False)

    x, w, r = cast(x), cast(w), cast(r)
    b, initial_h, initial_c, p = (
        None if a is None else cast(a) for a in (b, initial_h, initial_c, p)
    )
    if layout:  # to [seq, batch, ...] / [dirs, batch, hidden]
        x = np.swapaxes(x, 0, 1)
        initial_h = None if initial_h is None else np.swapaxes(initial_h, 0, 1)
        initial_c = None if initial_c is None else np.swapaxes(initial_c, 0, 1)
    seq, batch = x.shape[0], x.shape[1]

    lens = None
    if sequence_lens is not None:
        lens = np.asarray(sequence_lens).reshape(-1).astype(np.int64)
        if lens.shape != (batch,):
            raise ValueError(f"sequence_lens has {lens.size} entries for a batch of {batch}")
        if (lens < 0).any() or (lens > seq).any():
            raise ValueError(f"sequence_lens {lens.tolist()} must lie in [0, seq_length={seq}]")
        if (lens == seq).all():
            lens = None

    acts = _activations(
        op,
        attrs.get("activations"),
        attrs.get("activation_alpha"),
        attrs.get("activation_beta"),
        attrs.get("clip"),
        num_dirs,
        cdt,
    )
    lbr = op == "GRU" and bool(attrs.get("linear_before_reset") or 0)
    input_forget = op == "LSTM" and bool(attrs.get("input_forget") or 0)
    zeros = np.zeros((batch, hidden), cdt)

    ys, hs, cs = [], [], []
    with np.errstate(all="ignore"):  # masked-out rows may overflow; their values are dropped
        for d in range(num_dirs):
            # The biases Wb + Rb join the input projection, except GRU's Rbh with
            # linear_before_reset, which sits inside r * (H Rh^T + Rbh).
            xw = x @ w[d].T
            rbh = None
            if b is not None:
                wb, rb = b[d, :gh], b[d, gh:]
                if lbr:
                    rbh = rb[2 * hidden :]
                    rb = np.concatenate([rb[: 2 * hidden], np.zeros(hidden, cdt)])
                xw = xw + (wb + rb)
            if op == "RNN":
                step = _rnn_step(acts[d], r[d])
            elif op == "GRU":
                step = _gru_step(acts[d], r[d], rbh, lbr)
            else:
                step = _lstm_step(acts[d], r[d], None if p is None else p[d], input_forget)
            h0 = zeros if initial_h is None else initial_h[d]
            c0 = None
            if op == "LSTM":
                c0 = zeros if initial_c is None else initial_c[d]
            reverse = direction == "reverse" or d == 1
            y, h, c = _run_direction(step, xw, h0, c0, lens, reverse)
            ys.append(y)
            hs.append(h)
            cs.append(c)

    y_all = np.stack(ys, axis=1)  # [seq, dirs, batch, hidden]
    h_all = np.stack(hs, axis=0)  # [dirs, batch, hidden]
    if layout:
        y_all = np.transpose(y_all, [2, 0, 1, 3])
        h_all = np.swapaxes(h_all, 0, 1)
    outs = [y_all, h_all]
    if op == "LSTM":
        c_all = np.stack(cs, axis=0)  # type: ignore[arg-type]
        outs.append(np.swapaxes(c_all, 0, 1) if layout else c_all)
    return tuple(np.ascontiguousarray(o).astype(out_dtype, copy=False) for o in outs)


def _register(op: str, kernel: Callable[..., Any]) -> None:
    register_reference_op(op, kernel=kernel, kernel_source="ecograph.ir.ops.recurrent")


def rnn(
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    **attrs: Any,
) -> tuple[np.ndarray, ...]:
    """ONNX RNN: H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)."""
    return _recurrent("RNN", x, w, r, b, sequence_lens, initial_h, None, None, attrs)


def gru(
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    **attrs: Any,
) -> tuple[np.ndarray, ...]:
    """ONNX GRU (gates z, r, h; `linear_before_reset` moves Rbh inside r * (...))."""
    return _recurrent("GRU", x, w, r, b, sequence_lens, initial_h, None, None, attrs)


def lstm(
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
    p: np.ndarray | None = None,
    **attrs: Any,
) -> tuple[np.ndarray, ...]:
    """ONNX LSTM (gates i, o, f, c; peepholes P; `input_forget` couples f to 1 - i)."""
    return _recurrent("LSTM", x, w, r, b, sequence_lens, initial_h, initial_c, p, attrs)


_register("RNN", rnn)
_register("GRU", gru)
_register("LSTM", lstm)
