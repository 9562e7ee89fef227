"""TVM lowerings of the ONNX recurrent ops RNN, GRU and LSTM.

The time loop is unrolled into Relax ops, so the sequence length must be static (a symbolic
`seq_length` is refused with a clear error; batch may be symbolic). Per direction:

* the input projection of all time steps is one matmul, `X @ W^T + Wb (+ Rb)`, done up front;
* each step adds `H @ R^T` (one matmul) to its slice of that projection, applies the gates'
  activations and updates the state (elementwise ops);
* `reverse` runs the steps from the last to the first; `bidirectional` does both and stacks.

The semantics are ONNX's (the spec, as ONNX Runtime implements it):

* `activations` with their `activation_alpha` / `activation_beta` (every function the spec lists,
  names case-insensitive; alpha/beta are consumed in order by the functions that take them, with
  the spec's defaults when they run out); `clip` on the input of every activation but LSTM's
  `h` (whose input is the cell state);
* GRU `linear_before_reset`; LSTM `input_forget` (forget gate = 1 - input gate) and peepholes P;
* `layout` 0 and 1; optional B, initial_h, initial_c, P (zeros when absent);
* `sequence_lens` (constant or a run-time input): a batch row stops at its own length; its
  state then holds (Y_h / Y_c are the last valid state; 0 for an empty row) and Y is 0 past
  the length; the reverse direction starts at the row's last valid step.

float16/bfloat16 compute in float32 and are rounded once at the end.

The reference kernels (`ecograph/ir/ops/recurrent.py`) follow the same semantics; both were
checked against ONNX Runtime (onnx.reference, which ecograph used before, ignores
`sequence_lens`, `clip`, the GRU/LSTM `activations` and `input_forget`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tvm import relax

from ecograph.backends.tvm.context import LowerContext, R, lowers
from ecograph.ir.ops.recurrent import GATES, activation_specs

# The gate layout, default activations and the activations' alpha/beta defaults are the
# reference kernels' own (one table, so the two cannot disagree).
Act = Callable[[relax.Expr], relax.Expr]


class _Emitter:
    """Emits each intermediate once (the unrolled steps reuse bound vars, not re-built trees)."""

    def __init__(self, ctx: LowerContext, dtype: str) -> None:
        self.ctx = ctx
        self.dtype = dtype

    def __call__(self, expr: relax.Expr) -> relax.Expr:
        return self.ctx.bb.emit(expr)

    def c(self, value: float) -> relax.Expr:
        return relax.const(np.array(value, dtype=self.dtype), self.dtype)


def _activation(e: _Emitter, name: str, alpha: float, beta: float) -> Act:
    c = e.c
    key = name.lower()
    if key == "relu":
        return lambda x: R.maximum(x, c(0))
    if key == "tanh":
        return R.tanh
    if key == "sigmoid":
        return R.sigmoid
    if key == "affine":
        return lambda x: R.add(R.multiply(x, c(alpha)), c(beta))
    if key == "leakyrelu":
        return lambda x: R.where(R.greater_equal(x, c(0)), x, R.multiply(x, c(alpha)))
    if key == "thresholdedrelu":
        return lambda x: R.where(R.greater_equal(x, c(alpha)), x, c(0))
    if key == "scaledtanh":
        return lambda x: R.multiply(c(alpha), R.tanh(R.multiply(x, c(beta))))
    if key == "hardsigmoid":
        return lambda x: R.clip(R.add(R.multiply(x, c(alpha)), c(beta)), 0, 1)
    if key == "elu":
        return lambda x: R.where(
            R.greater_equal(x, c(0)), x, R.multiply(c(alpha), R.subtract(R.exp(x), c(1)))
        )
    if key == "softsign":
        return lambda x: R.divide(x, R.add(c(1), R.abs(x)))
    if key == "softplus":
        # log(1 + exp(x)) = max(x, 0) + log(1 + exp(-|x|)), stable for large |x|.
        return lambda x: R.add(R.maximum(x, c(0)), R.log(R.add(c(1), R.exp(R.negative(R.abs(x))))))
    raise AssertionError(key)  # names are checked in _activations


def _activations(ctx: LowerContext, e: _Emitter, num_dirs: int) -> list[list[Act]]:
    """The activation functions of each direction, with clip applied to their input."""
    clip = ctx.attrs.get("clip")
    try:
        specs = activation_specs(
            ctx.node.op_type,
            ctx.attrs.get("activations"),
            ctx.attrs.get("activation_alpha"),
            ctx.attrs.get("activation_beta"),
            num_dirs,
            clip,
        )
    except ValueError as exc:
        ctx.fail(str(exc))
        raise  # ctx.fail raises; this keeps type checkers informed
    out: list[list[Act]] = []
    for direction in specs:
        acts: list[Act] = []
        for spec in direction:
            fn = _activation(e, spec.name, spec.alpha, spec.beta)
            if spec.clipped:
                fn = _clipped(fn, float(clip))
            acts.append(fn)
        out.append(acts)
    return out


def _clipped(fn: Act, lim: float) -> Act:
    return lambda x: fn(R.clip(x, -lim, lim))


def _direction_slice(e: _Emitter, x: relax.Expr | None, d: int) -> relax.Expr | None:
    """x[d] of a [num_directions, ...] tensor."""
    if x is None:
        return None
    return e(R.squeeze(R.strided_slice(x, axes=[0], begin=[d], end=[d + 1]), axis=[0]))


def _cols(e: _Emitter, x: relax.Expr, lo: int, hi: int) -> relax.Expr:
    """x[..., lo:hi] (a non-negative axis: TVM 0.27 mis-legalizes axis -1 on symbolic shapes)."""
    return e(R.strided_slice(x, axes=[x.ty.ndim - 1], begin=[lo], end=[hi]))


def _lower_rnn(ctx: LowerContext) -> list[relax.Expr | None]:
    op = ctx.node.op_type
    xt = ctx.in_type(0)
    dtype = str(xt.dtype)
    cdt = "float32" if dtype in ("float16", "bfloat16") else dtype
    e = _Emitter(ctx, cdt)
    layout = int(ctx.attrs.get("layout") or 0)
    if layout not in (0, 1):
        ctx.fail(f"layout must be 0 or 1, got {layout}")
    direction = str(ctx.attrs.get("direction") or "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        ctx.fail(f"direction must be forward, reverse or bidirectional, got {direction!r}")
    num_dirs = 2 if direction == "bidirectional" else 1
    seq_dim = xt.shape[1 if layout else 0]
    if not isinstance(seq_dim, int):
        ctx.fail(
            f"the sequence length of X is symbolic ({seq_dim!r}); the TVM lowering unrolls the "
            "time loop and needs a static seq_length (batch may be symbolic): give X a static "
            "sequence dimension (e.g. pad the sequence to a fixed length and pass sequence_lens)"
        )
    seq = int(seq_dim)
    if seq < 1:
        ctx.fail("X has an empty sequence (seq_length 0)")
    rt = ctx.in_type(2)
    hidden = ctx.attrs.get("hidden_size") or rt.shape[-1]
    if not isinstance(hidden, int):
        ctx.fail("hidden_size is not given and R's last dim is symbolic; it must be static")
    hidden = int(hidden)
    if ctx.in_type(1).shape[0] != num_dirs:
        ctx.fail(
            f"W has {ctx.in_type(1).shape[0]} direction(s) but direction={direction!r} needs "
            f"{num_dirs}"
        )
    gates = GATES[op]
    hg = hidden * gates
    input_forget = op == "LSTM" and bool(ctx.attrs.get("input_forget") or 0)
    lbr = op == "GRU" and bool(ctx.attrs.get("linear_before_reset") or 0)
    acts = _activations(ctx, e, num_dirs)

    def arg(i: int) -> relax.Expr | None:
        if not ctx.has(i):
            return None
        a = ctx.arg(i)
        return e(R.astype(a, cdt)) if cdt != dtype else a

    x = arg(0)
    if layout:
        x = e(R.permute_dims(x, [1, 0, 2]))  # [seq, batch, input]
    w, r_all, b = arg(1), arg(2), arg(3)
    h0 = arg(5)
    c0 = arg(6) if op == "LSTM" else None
    p = arg(7) if op == "LSTM" else None
    if layout:
        h0 = None if h0 is None else e(R.permute_dims(h0, [1, 0, 2]))
        c0 = None if c0 is None else e(R.permute_dims(c0, [1, 0, 2]))

    masks, nonempty = _step_masks(ctx, e, seq)
    outs = ctx.node.outputs
    want_y = outs[0].has_uses()

    ys, hs, cs = [], [], []
    for d in range(num_dirs):
        wd = _direction_slice(e, w, d)
        rd = _direction_slice(e, r_all, d)
        bd = _direction_slice(e, b, d)
        # Bias folded into the input projection: Wb + Rb, except GRU's Rbh with
        # linear_before_reset, which sits inside r * (...).
        rbh = None
        bias = None
        if bd is not None:
            wb, rb = _cols(e, bd, 0, hg), _cols(e, bd, hg, 2 * hg)
            if lbr:
                rbh = _cols(e, rb, 2 * hidden, hg)
                rb = e(R.concat([_cols(e, rb, 0, 2 * hidden), R.zeros((hidden,), cdt)], axis=0))
            bias = e(R.add(wb, rb))
        xw = R.matmul(x, R.permute_dims(wd, [1, 0]))  # [seq, batch, G*H]
        if bias is not None:
            xw = R.add(xw, bias)
        xw = e(xw)
        steps = e(R.split(xw, seq, axis=0)) if seq > 1 else None
        x_steps = [
            e(R.squeeze(xw if steps is None else relax.TupleGetItem(steps, t), axis=[0]))
            for t in range(seq)
        ]
        rt_d = e(R.permute_dims(rd, [1, 0]))  # [H, G*H]
        batch_shape = _state_shape(ctx, hidden)
        h = _direction_slice(e, h0, d) if h0 is not None else e(R.zeros(batch_shape, cdt))
        c = None
        if op == "LSTM":
            c = _direction_slice(e, c0, d) if c0 is not None else e(R.zeros(batch_shape, cdt))
        pd = _direction_slice(e, p, d)
        order = range(seq - 1, -1, -1) if (direction == "reverse" or d == 1) else range(seq)
        y_at: dict[int, relax.Expr] = {}
        step = {"RNN": _rnn_step, "GRU": _gru_step, "LSTM": _lstm_step}[op]
        cfg = {"hidden": hidden, "lbr": lbr, "rbh": rbh, "input_forget": input_forget, "p": pd}
        for t in order:
            h_new, c_new = step(e, acts[d], x_steps[t], h, c, rt_d, cfg)
            mask = masks[t] if masks is not None else None
            if mask is None:
                h, c, y_at[t] = h_new, c_new, h_new
            else:
                if want_y:
                    y_at[t] = e(R.where(mask, h_new, e.c(0)))
                h = e(R.where(mask, h_new, h))
                if c is not None:
                    c = e(R.where(mask, c_new, c))
        if want_y:
            ys.append(e(R.stack([y_at[t] for t in range(seq)], axis=0)))  # [seq, batch, H]
        if nonempty is not None:
            h = e(R.where(nonempty, h, e.c(0)))
            c = None if c is None else e(R.where(nonempty, c, e.c(0)))
        hs.append(h)
        cs.append(c)

    def final(x: relax.Expr, perm: list[int]) -> relax.Expr:
        if layout:
            x = R.permute_dims(x, perm)
        return R.astype(x, dtype) if cdt != dtype else x

    result: list[relax.Expr | None] = [None] * len(outs)
    if want_y:
        result[0] = final(R.stack(ys, axis=1), [2, 0, 1, 3])  # [seq, dirs, batch, H]
    if len(outs) > 1 and outs[1].has_uses():
        result[1] = final(R.stack(hs, axis=0), [1, 0, 2])
    if len(outs) > 2 and outs[2].has_uses():
        result[2] = final(R.stack(cs, axis=0), [1, 0, 2])  # type: ignore[arg-type]
    return result


def _state_shape(ctx: LowerContext, hidden: int) -> relax.ShapeExpr:
    xt = ctx.in_type(0)
    batch = xt.shape[0 if int(ctx.attrs.get("layout") or 0) else 1]
    return ctx.shape([batch, hidden])


def _step_masks(
    ctx: LowerContext, e: _Emitter, seq: int
) -> tuple[list[relax.Expr] | None, relax.Expr | None]:
    """Per step, a [batch, 1] bool mask `t < sequence_lens` (None when every row is full), and
    a [batch, 1] mask `sequence_lens > 0` (None when no row can be empty): ONNX Runtime gives
    an empty row zero final states, not its initial ones."""
    if not ctx.has(4):
        return None, None
    known = ctx.const(4)
    maybe_empty = True
    if known is not None:
        lens = np.asarray(known).reshape(-1)
        if (lens < 0).any() or (lens > seq).any():
            ctx.fail(f"sequence_lens {lens.tolist()} must lie in [0, seq_length={seq}]")
        if (lens == seq).all():
            return None, None
        maybe_empty = bool((lens == 0).any())
    lens_col = e(R.expand_dims(ctx.arg(4), axis=1))  # [batch, 1]
    ldt = str(ctx.in_type(4).dtype)

    def c(v: int) -> relax.Expr:
        return relax.const(np.array(v, dtype=ldt), ldt)

    masks = [e(R.less(c(t), lens_col)) for t in range(seq)]
    return masks, e(R.greater(lens_col, c(0))) if maybe_empty else None


def _rnn_step(
    e: _Emitter, acts: list[Act], xw: relax.Expr, h: relax.Expr, c: Any, rt: relax.Expr, cfg: dict
) -> tuple[relax.Expr, None]:
    return e(acts[0](R.add(xw, R.matmul(h, rt)))), None


def _gru_step(
    e: _Emitter, acts: list[Act], xw: relax.Expr, h: relax.Expr, c: Any, rt: relax.Expr, cfg: dict
) -> tuple[relax.Expr, None]:
    f, g = acts
    hid = cfg["hidden"]
    if cfg["lbr"]:
        hr = e(R.matmul(h, rt))  # [batch, 3H]
        zr = e(R.add(_cols(e, xw, 0, 2 * hid), _cols(e, hr, 0, 2 * hid)))
        z = e(f(_cols(e, zr, 0, hid)))
        r = e(f(_cols(e, zr, hid, 2 * hid)))
        rh = _cols(e, hr, 2 * hid, 3 * hid)
        if cfg["rbh"] is not None:
            rh = R.add(rh, cfg["rbh"])
        hh = e(g(R.add(_cols(e, xw, 2 * hid, 3 * hid), R.multiply(r, rh))))
    else:
        rt_zr = _cols(e, rt, 0, 2 * hid)
        rt_h = _cols(e, rt, 2 * hid, 3 * hid)
        zr = e(R.add(_cols(e, xw, 0, 2 * hid), R.matmul(h, rt_zr)))
        z = e(f(_cols(e, zr, 0, hid)))
        r = e(f(_cols(e, zr, hid, 2 * hid)))
        hh = e(g(R.add(_cols(e, xw, 2 * hid, 3 * hid), R.matmul(R.multiply(r, h), rt_h))))
    # (1 - z) * hh + z * h  ==  hh + z * (h - hh)
    return e(R.add(hh, R.multiply(z, R.subtract(h, hh)))), None


def _lstm_step(
    e: _Emitter, acts: list[Act], xw: relax.Expr, h: relax.Expr, c: Any, rt: relax.Expr, cfg: dict
) -> tuple[relax.Expr, relax.Expr]:
    f, g, hf = acts
    hid = cfg["hidden"]
    p = cfg["p"]
    gates = e(R.add(xw, R.matmul(h, rt)))  # i, o, f, c
    gi, go, gf, gc = (_cols(e, gates, k * hid, (k + 1) * hid) for k in range(4))
    pi = po = pf = None
    if p is not None:
        pi, po, pf = (_cols(e, p, k * hid, (k + 1) * hid) for k in range(3))
    i = e(f(gi if pi is None else R.add(gi, R.multiply(pi, c))))
    if cfg["input_forget"]:
        fg = e(R.subtract(e.c(1), i))
    else:
        fg = e(f(gf if pf is None else R.add(gf, R.multiply(pf, c))))
    c_new = e(R.add(R.multiply(fg, c), R.multiply(i, g(gc))))
    o = e(f(go if po is None else R.add(go, R.multiply(po, c_new))))
    return e(R.multiply(o, hf(c_new))), c_new


@lowers("RNN", "GRU", "LSTM")
def _recurrent(ctx: LowerContext) -> list[relax.Expr | None]:
    return _lower_rnn(ctx)
