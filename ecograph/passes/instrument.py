"""What the PassManager checks and records: Instrumentation switches, one PassRecord per pass
run (the ledger), and the PipelineResult of a run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.ir.graph import Graph
from ecograph.passes.core import PassResult


@dataclass
class Instrumentation:
    """What the PassManager checks and records; each switch is independent.

    - `verify`: run `verify(graph)` after every pass that changed something.
    - `timing`: time each pass.
    - `dump_dir`: write the IR before/after each changing pass there (`NN-name.before.txt`).
    - `ledger`: record node count and parameter bytes before and after each pass.
    - `differential`: after each changing pass, run the reference interpreter on
      `sample_inputs` (made up from the input types when None) and compare to the previous
      stage, exactly or within the pass's tolerance (`Pass.numeric_tolerance()`).
    - `failure_dir`: where a minimal before/after pair goes when outputs diverge.
    """

    verify: bool = True
    timing: bool = True
    dump_dir: str | Path | None = None
    ledger: bool = True
    differential: bool = False
    sample_inputs: Mapping[str, np.ndarray] | None = None
    symbol_values: Mapping[str, int] | None = None
    failure_dir: str | Path | None = None
    seed: int = 0

    @classmethod
    def all_on(cls, dump_dir: str | Path | None = None, **kwargs: Any) -> Instrumentation:
        """Everything on (what the tests use)."""
        return cls(differential=True, dump_dir=dump_dir, failure_dir=dump_dir, **kwargs)


@dataclass
class PassRecord:
    """One ledger line: a pass run (or one round of it inside a fixed-point group)."""

    pass_name: str
    changed: bool
    seconds: float | None = None
    nodes_before: int | None = None
    nodes_after: int | None = None
    param_bytes_before: int | None = None
    param_bytes_after: int | None = None
    iteration: int | None = None
    result: PassResult | None = None
    auto: bool = False

    def __str__(self) -> str:
        parts = [f"{self.pass_name:<28}", "changed" if self.changed else "-      "]
        if self.nodes_before is not None:
            parts.append(f"nodes {self.nodes_before}->{self.nodes_after}")
        if self.param_bytes_before is not None:
            parts.append(f"params {self.param_bytes_before}->{self.param_bytes_after} B")
        if self.seconds is not None:
            parts.append(f"{self.seconds * 1e3:.2f} ms")
        if self.result is not None and self.result.stats:
            parts.append(" ".join(f"{k}={v}" for k, v in self.result.stats.items()))
        return "  ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The record as a report ledger row (the `passes` list of the green report)."""
        return {
            "name": self.pass_name + (f" #{self.iteration}" if self.iteration else ""),
            "changed": self.changed,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "param_bytes": self.param_bytes_after,
            "seconds": self.seconds or 0.0,
        }


@dataclass
class PipelineResult:
    """What a PassManager run did: `changed`, and one PassRecord per pass run."""

    changed: bool
    records: list[PassRecord]

    def ledger(self) -> str:
        return "\n".join(str(r) for r in self.records)

    def fusion_report(self) -> str:
        """What fused, per pass, and the near misses each fusion pattern reported."""
        lines: list[str] = []
        seen: set[str] = set()
        totals: dict[str, dict[str, int]] = {}
        notes: dict[str, list[str]] = {}
        for r in self.records:
            if r.result is None:
                continue
            for k, v in r.result.stats.items():
                totals.setdefault(r.pass_name, {}).setdefault(k, 0)
                totals[r.pass_name][k] += v
            # Near misses of the last round are the ones still standing.
            notes[r.pass_name] = list(r.result.notes)
        for name in [r.pass_name for r in self.records]:
            if name in seen:
                continue
            seen.add(name)
            stats = totals.get(name, {})
            head = ", ".join(f"{k} {v}" for k, v in stats.items()) or "nothing"
            lines.append(f"{name}: {head}")
            lines.extend(f"  {n}" for n in notes.get(name, []))
        return "\n".join(lines)


def param_bytes(graph: Graph) -> int:
    """Bytes held by the graph's constants (the ledger's parameter bytes)."""
    return int(sum(int(v.const_value.nbytes) for v in graph.constants.values()))  # type: ignore[union-attr]
