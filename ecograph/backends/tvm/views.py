"""Which inputs of a lowered module may be strided views (manifest "views": true).

A CPU build's decode step reads its KV cache as the first S positions of a longer buffer;
head major, that is a strided view, which only a kernel whose buffer declares the strides
free can take (TVM asserts compact strides on every other buffer at the call, and a Relax
reshape would read a view as compact). `view_inputs` finds the inputs every use of which is
such a kernel; the runtime (inputs.py `viewable`) hands those a view as it lies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def view_inputs(mod: Any, names: Sequence[str]) -> list[str]:
    """The inputs of `mod`'s main (named `names`, in order) that may be strided views with
    compact last two axes: every use of them is a call_tir whose PrimFunc declares such
    strides for that argument (the CPU attention kernel's head-major KV cache), or a
    shape_of. TVM checks each compact buffer's strides at the call, so a view anywhere else
    would fail there; and a Relax reshape of a view would read it as compact. The runtime
    passes a view as it lies only where this allows (manifest "views": true; inputs.py
    `viewable`), and a compact copy otherwise."""
    from tvm import ir, relax, tirx

    main = mod["main"]
    params = dict(zip(main.params, names, strict=False))
    ok = set(params)
    call_tir, shape_of = ir.Op.get("relax.call_tir"), ir.Op.get("relax.shape_of")

    def others(expr: Any) -> None:
        ok.difference_update(v for v in relax.analysis.free_vars(expr) if v in params)

    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op == shape_of:
                continue
            if isinstance(value, relax.Call) and value.op == call_tir:
                func = mod[value.args[0]]
                for i, arg in enumerate(value.args[1].fields):
                    if arg in params:
                        if not (isinstance(func, tirx.PrimFunc) and _outer_strided(func, i)):
                            ok.discard(arg)
                    else:
                        others(arg)
                for arg in value.args[2:]:
                    others(arg)
                continue
            others(value)
    others(main.body.body)
    return [params[v] for v in main.params if v in ok]


def _outer_strided(func: Any, i: int) -> bool:
    """Whether PrimFunc `func`'s parameter `i` is a buffer of declared strides whose last two
    are those of a compact array (TVM 0.27: a PrimFunc's tensor parameters are its buffers)."""
    buf = func.params[i]
    strides, shape = list(getattr(buf, "strides", None) or ()), list(getattr(buf, "shape", ()))
    if len(strides) < 2 or len(strides) != len(shape):
        return False
    last, second = (getattr(s, "value", None) for s in strides[-2:][::-1])
    return last == 1 and second is not None and second == getattr(shape[-1], "value", None)
