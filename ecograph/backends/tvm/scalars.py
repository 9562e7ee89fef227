"""Scalar constants as immediates in the CPU kernels.

A scalar that a kernel reads from a buffer argument is a load at run time, and where it sits in
one arm of a select (ONNX `Where`, `Clip` with tensor bounds, a quantization's NaN test), LLVM
loads it under a mask: a masked gather per vector, and the arms are no longer the same
expressions, so the work under them is not shared. An int8 product's fused epilogue
(dequantize, clip to [0, 6], quantize) computed each division four times that way.

Relax's legalization turns a 0-d constant operand of a binary op into an immediate, but not

- the `astype` of a 0-d constant (a quantization's zero point cast to float32): Relax's
  FoldConstant would fold it, but the CPU pipeline leaves FoldConstant out (build.py), so
  `scalar_casts_pass` folds just these casts, exactly (`_cast`);
- a 0-d constant arm of `where`: `legalize_where` builds the select with the immediate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import ir, relax, te, tirx

from .channels_last import op_name


def scalar_casts_pass() -> Any:
    """A Relax pass: `astype` of a 0-d constant, where the cast is exact or rounds as LLVM's
    does (integer or float to float, an integer to an integer type that holds it), becomes
    the constant of the new type, and the ops of the block that read it read the constant
    (which legalization then makes an immediate)."""

    @relax.transform.dataflowblock_pass(opt_level=0, name="FoldScalarCasts")
    def fold(block: relax.DataflowBlock, _mod: Any, _ctx: Any) -> relax.DataflowBlock:
        constants: dict[relax.Var, ir.Constant] = {}
        bindings = []
        for b in block.bindings:
            value = getattr(b, "value", None)
            folded = _folded(value)
            if folded is not None:
                constants[b.var] = folded
                b = relax.VarBinding(b.var, folded)
            elif isinstance(value, relax.Call) and any(a in constants for a in value.args):
                args = [constants.get(a, a) for a in value.args]
                call = relax.Call(value.op, args, value.attrs, value.ty_args, value.span)
                b = relax.VarBinding(b.var, call)
            bindings.append(b)
        return relax.DataflowBlock(bindings, block.span) if constants else block

    return fold


def _folded(value: Any) -> ir.Constant | None:
    if op_name(value) != "relax.astype" or not isinstance(value.args[0], ir.Constant):
        return None
    source = value.args[0].value.numpy()
    if source.ndim != 0:
        return None
    return _cast(source, str(value.attrs.dtype))


def _cast(source: np.ndarray, dtype: str) -> ir.Constant | None:
    """`source` (0-d) as `dtype`, or None where numpy's cast could differ from TVM's."""
    try:
        target = np.dtype(dtype)
    except TypeError:
        return None  # bfloat16, float8: no numpy dtype
    kind = source.dtype.kind
    if target.kind == "f" and kind in "iuf":
        return relax.const(source.astype(target), dtype)  # to nearest, as LLVM's casts
    if target.kind in "iu" and kind in "iu":
        info = np.iinfo(target)
        if info.min <= int(source) <= info.max:
            return relax.const(source.astype(target), dtype)
    return None


def legalize_where(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """`where(cond, x, y)` as one select, a 0-d constant arm as an immediate (module doc);
    Relax's own legalization (topi's `where`) where neither arm is one."""
    from tvm import topi
    from tvm.relax.transform.legalize_ops.common import _try_convert_to_scalar_const

    cond, *arms = call.args
    values = [_try_convert_to_scalar_const(a) for a in arms]
    tensor = [not isinstance(v, tirx.IntImm | tirx.FloatImm) for v in values]  # else immediate
    if all(tensor):
        return bb.call_te(topi.where, *call.args)
    rank = call.ty.ndim
    tensors = [cond, *(a for a, t in zip(arms, tensor, strict=True) if t)]

    def select(*placeholders: te.Tensor) -> te.Tensor:
        shape = _broadcast(placeholders, rank)
        given = iter(placeholders[1:])
        operands = [next(given) if t else v for v, t in zip(values, tensor, strict=True)]

        def at(*ix: Any) -> Any:
            picked = [_at(o, ix, shape) if isinstance(o, te.Tensor) else o for o in operands]
            return tirx.Select(_at(placeholders[0], ix, shape), *picked)

        return te.compute(shape, at, name="T_where")

    return bb.call_te(select, *tensors, primfunc_name_hint="where")


def _one(d: Any) -> bool:
    return isinstance(d, tirx.IntImm) and int(d) == 1


def _broadcast(tensors: tuple[te.Tensor, ...], rank: int) -> list[Any]:
    """The shape `tensors` broadcast to (numpy rules; `rank` dims): along each axis the first
    dim that is not 1. Taken from the placeholders, not the Relax call, so that the kernel's
    symbolic dims are its operands' own."""
    shape = []
    for k in range(rank):
        dims = [t.shape[k - rank + len(t.shape)] for t in tensors if k - rank + len(t.shape) >= 0]
        shape.append(next((d for d in dims if not _one(d)), tirx.const(1, "int64")))
    return shape


def _at(tensor: te.Tensor, ix: tuple[Any, ...], shape: list[Any]) -> Any:
    """`tensor` broadcast (numpy rules) to the index `ix` of an output of `shape`: a dim of 1
    where the output's is not reads index 0 (where both are 1 the index stays, so that an
    operand of the output's shape reads it element-wise, as FuseOps wants)."""

    rank = len(tensor.shape)
    outer = len(ix) - rank
    return tensor[
        tuple(
            tirx.const(0, "int64") if _one(d) and not _one(shape[outer + k]) else ix[outer + k]
            for k, d in enumerate(tensor.shape)
        )
    ]
