"""ecograph's CPU schedules: deterministic rules, no search, chosen by a kernel's structure.

TVM 0.27's CPU pipeline legalizes every op to plain loops: no tiling, no vectors, no threads.
These rules schedule each fused PrimFunc after legalization and fusion, dlight-style: the
first rule whose structural test accepts the function schedules it, and a rule that does not
apply (or whose schedule TVM rejects) leaves the function to the next one, so the build never
fails because of a schedule. Rules are parameterized by the resolved target's facts (vector
width, cores, dot-product instructions), never by a kernel's name.

Every scheduled function carries the attribute `ecograph.schedule` naming its rule, which the
profiler reports next to each kernel's time (`ecograph profile`).
"""

from __future__ import annotations

from typing import Any

from ecograph.backends.tvm.targets import TargetSpec

from .base import CPURule
from .conv import Conv
from .fallback import Fallback
from .injective import Injective
from .int8 import Int8Matmul, Quantize, QuantizeRange
from .matmul import Matmul, panel_width
from .pool import Pool
from .reduction import Reduction

RULE_ATTR = "ecograph.schedule"


def cpu_rules(spec: TargetSpec) -> list[CPURule]:
    """The CPU rules for `spec`, most specific first."""
    return [
        Int8Matmul(spec),
        QuantizeRange(spec),
        Quantize(spec),
        Conv(spec),
        Matmul(spec),
        Injective(spec),
        Reduction(spec),
        Pool(spec),
        Fallback(spec),
    ]


def apply_cpu_schedules(
    spec: TargetSpec,
    failures: list[str] | None = None,
    chosen: dict[str, str | None] | None = None,
) -> Any:
    """A module pass scheduling every unscheduled PrimFunc with the first rule that applies,
    recording the rule's name on the function and in `chosen` (kernel name -> rule, None when
    no rule applied; "pre-scheduled" for kernels that came scheduled, e.g. tuned ones). A rule
    that raises while scheduling leaves the function to the next rule; what it raised is
    appended to `failures` (the build's notes)."""
    from tvm import tirx
    from tvm.ir.transform import module_pass

    rules = cpu_rules(spec)

    @module_pass(opt_level=0, name="EcographCPUSchedules")
    def schedule(mod: Any, _ctx: Any) -> Any:
        updated = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs.get("tirx.is_scheduled", 0):
                if chosen is not None:
                    chosen[gv.name_hint] = str(func.attrs.get(RULE_ATTR, "pre-scheduled"))
                continue
            if chosen is not None:
                chosen[gv.name_hint] = None
            target = func.attrs.get("target")
            for rule in rules:
                try:
                    sch = rule.apply(func, target, False)
                except Exception as exc:  # never fail a build because of a schedule
                    if failures is not None:
                        first = str(exc).strip().splitlines()[0][:200] if str(exc) else ""
                        failures.append(
                            f"schedule rule {rule.name} failed on {gv.name_hint} "
                            f"({type(exc).__name__}: {first}); the next rule scheduled it"
                        )
                    sch = None
                if sch is None:
                    continue
                if chosen is not None:
                    chosen[gv.name_hint] = rule.name
                updated[gv] = (
                    sch.mod["main"]
                    .with_attr("tirx.is_scheduled", True)
                    .with_attr(RULE_ATTR, rule.name)
                )
                break
        for gv, func in updated.items():
            mod[gv] = func
        return mod

    return schedule


__all__ = [
    "RULE_ATTR",
    "CPURule",
    "Conv",
    "Int8Matmul",
    "Matmul",
    "apply_cpu_schedules",
    "cpu_rules",
    "panel_width",
]
