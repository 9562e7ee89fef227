"""dlight's CUDA schedule rules as ecograph runs them, with the guards TVM 0.27 needs.

- `checked_rule`: a rule whose schedule must survive cross-thread-reduction lowering (the
  Reduction rules' grouped / depthwise convolutions), else the next rule gets the function;
- `isolate_batched_matmuls` / `guarded_matmul`: batched matmuls stay kernels of their own and
  the Matmul rule declines one that still has an epilogue (`batched_matmul_with_epilogue`:
  it computed attention's fused Q.K^T * scale + mask wrongly on an H200);
- `border_guarded`: a padding or concatenation fused after a reduction goes to Fallback
  (`borders_after_reduction`).

build.py's CUDA pipeline assembles them.
"""

from __future__ import annotations

from typing import Any


def _checked_rule_class() -> Any:
    from tvm import s_tir
    from tvm.s_tir import dlight as dl

    class CheckedRule(dl.ScheduleRule):
        """A dlight rule whose schedule must survive cross-thread-reduction lowering.

        TVM 0.27's Reduction rule schedules grouped / depthwise convolutions into a form that
        LowerCrossThreadReduction rejects at build time ("reduction-related loops must be the
        deepest"); such a function is left to the next rule (in the end Fallback) instead."""

        def __init__(self, rule: Any) -> None:
            self.rule = rule

        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            import tvm

            sch = self.rule.apply(func, target, tunable)
            if sch is None or isinstance(sch, list):
                return sch
            try:
                checked = sch.mod["main"].with_attr("target", target)
                s_tir.transform.LowerCrossThreadReduction()(tvm.IRModule({"main": checked}))
            except Exception:  # rejected schedule: let the next rule schedule this function
                return None
            return sch

    return CheckedRule


def checked_rule(rule: Any) -> Any:
    return _checked_rule_class()(rule)


def _batched_reduction(func: Any) -> tuple[int, bool] | None:
    """(blocks, whether its one reduction is a batched matmul: more than two spatial iterators
    and two buffers read) for a PrimFunc with exactly one reduction block; None otherwise."""
    from tvm import s_tir
    from tvm.s_tir.dlight import analysis

    try:
        sch = s_tir.Schedule(func)
        infos = analysis.normalize_prim_func(sch)
    except Exception:  # not analyzable: not a function the guards below are about
        return None
    if not infos:
        return None
    reductions = [b for b in infos if b.is_reduction()]
    if len(reductions) != 1:
        return None
    info = reductions[0]
    spatial = sum(it.kind == "S" for it in info.iters)
    return len(infos), spatial > 2 and len(sch.get(info.block_rv).reads) == 2


def batched_matmul_with_epilogue(func: Any) -> bool:
    """True for a PrimFunc whose one reduction is a batched matmul followed by other blocks
    (an epilogue such as attention's scale + mask).

    dlight's gpu.Matmul rule (TVM 0.27) computes such functions wrongly on CUDA: attention's
    fused Q.K^T * scale + mask in MiniLM-L6 and in a Llama prefill came out with 12-50 %
    relative error on an H200 (sm_90), while the same builds with the rule declined for these
    functions matched the reference interpreter exactly (docs/tvm.md). Plain and batched
    matmuls without an epilogue, and 2-D matmuls with one (bias), were exact under the rule."""
    found = _batched_reduction(func)
    return found is not None and found[1] and found[0] > 1


def batched_matmul_kernel(func: Any) -> bool:
    """True for a PrimFunc that is a batched matmul and nothing else."""
    return _batched_reduction(func) == (1, True)


def borders_after_reduction(func: Any) -> bool:
    """True for a PrimFunc where a block after a reduction writes elements that read none of
    it: a Pad or a concatenation fused after a conv, pool or matmul (a block value that is an
    `if_then_else`, schedules/analysis.split_epilogue).

    dlight's rules place such a block at the reduction's thread blocks, which keeps only the
    elements that read what a thread block reduced: its Reduction rule left a Pad after an
    average pool unwritten outside the pool's extent (the scheduled TIR). On CUDA these
    functions go to dlight's Fallback, which gives each block loops of its own; the CPU rules
    split such blocks off themselves."""
    from tvm import s_tir

    from .schedules.analysis import iter_kinds, split_epilogue

    try:
        sch = s_tir.Schedule(func)
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    except Exception:  # not analyzable: not a function this is about
        return False
    first = next((i for i, b in enumerate(blocks) if "R" in iter_kinds(sch, b)), None)
    return first is not None and bool(split_epilogue(sch, blocks[first + 1 :])[1])


def border_guarded(rule: Any) -> Any:
    """`rule`, declining `borders_after_reduction` functions (the next rules, in the end
    Fallback, schedule them)."""
    from tvm.s_tir import dlight as dl

    class BorderGuarded(dl.ScheduleRule):
        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            if borders_after_reduction(func):
                return None
            return rule.apply(func, target, tunable)

    return BorderGuarded()


def isolate_batched_matmuls() -> Any:
    """A module pass marking batched-matmul PrimFuncs opaque to FuseOps (CUDA): they stay one
    kernel that dlight's Matmul rule schedules correctly, and their epilogue becomes its own
    elementwise kernel (see `batched_matmul_with_epilogue` for why). PrimFuncs the lowering
    marked with OPAQUE_ATTR (a prefill's weight decoding, ops/quant.py) stay alone too."""
    import tvm

    from .context import OPAQUE_ATTR, OPAQUE_PATTERN

    @tvm.transform.module_pass(opt_level=0, name="IsolateBatchedMatmul")
    def isolate(mod: Any, _ctx: Any) -> Any:
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            marked = func.attrs is not None and bool(func.attrs.get(OPAQUE_ATTR))
            if marked or batched_matmul_kernel(func):
                mod[gv] = func.with_attr("op_pattern", OPAQUE_PATTERN)
        return mod

    return isolate


def guarded_matmul() -> Any:
    """dlight's gpu.Matmul rule, declining `batched_matmul_with_epilogue` functions (the next
    rules schedule them)."""
    from tvm.s_tir import dlight as dl

    class GuardedMatmul(dl.gpu.Matmul):
        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            if batched_matmul_with_epilogue(func):
                return None
            return super().apply(func, target, tunable)

    return GuardedMatmul()
