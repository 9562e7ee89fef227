"""The base of ecograph's CPU schedule rules and the scheduling steps several rules share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.s_tir.schedule import SBlockRV

from ecograph.backends.tvm.targets import TargetSpec

from .analysis import static_int


class CPURule(ScheduleRule):
    """A dlight schedule rule built for one resolved target (its facts: vector width, cores,
    dot-product instructions). `apply` returns a Schedule, or None when the PrimFunc's
    structure is not the rule's; the next rule then gets it."""

    name = "cpu-rule"

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec

    def apply(self, func: tirx.PrimFunc, target: Any, tunable: bool) -> s_tir.Schedule | None:
        raise NotImplementedError

    @staticmethod
    def blocks(sch: s_tir.Schedule) -> list[SBlockRV]:
        """The blocks directly under the function's root block, in program order."""
        return list(sch.get_child_blocks(sch.get_sblock("root")))


def schedule_injective(
    sch: s_tir.Schedule, block: SBlockRV, lanes: int, *, parallel: bool = True
) -> None:
    """A data-parallel block: its outer loops fused and run in parallel, the innermost loop
    vectorized by `lanes` when its extent allows (else left scalar for LLVM)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    extent = static_int(sch.get(inner).extent)
    if extent is not None and extent >= lanes and extent % lanes == 0:
        outer, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)
        loops = [*loops[:-1], outer]
    if parallel and len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
    elif parallel and loops and loops[0] is not inner:
        sch.parallel(loops[0])


def body_rewrite_pass(name: str, rewrite: Callable[..., Any], *, named: bool = False) -> Any:
    """A module pass replacing every PrimFunc's body by `rewrite(body)`, or by
    `rewrite(body, function name)` when `named` (functions whose body comes back unchanged
    are left as they are)."""
    from tvm.ir.transform import module_pass

    @module_pass(opt_level=0, name=name)
    def run(mod: Any, _ctx: Any) -> Any:
        updated = {}
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                body = rewrite(func.body, gv.name_hint) if named else rewrite(func.body)
                if not body.same_as(func.body):
                    updated[gv] = func.with_body(body)
        for gv, func in updated.items():
            mod[gv] = func
        return mod

    return run


def halve_lanes(T: Any, buf: Any, lanes: int, op: Callable[[Any, Any], Any]) -> None:
    """Reduce the first `lanes` (a power of two) elements of 1-D `buf` into buf[0] with `op`,
    halving in vectors: buf[c] = op(buf[c], buf[c + half]) for half = lanes / 2 .. 1 (an
    IRBuilder step of the hand-written kernels: attention's softmax, the int4-a8 prologue)."""
    half = lanes // 2
    while half:
        with T.vectorized(0, tirx.const(half, "int64")) as c:
            T.buffer_store(buf, op(buf[c], buf[c + tirx.const(half, "int64")]), [c])
        half //= 2
