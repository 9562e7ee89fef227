"""Per-layer sensitivity and mixed precision under an accuracy budget.

- `layer_sensitivity`: for each quantizable layer, the accuracy when only that layer is
  quantized (cosine similarity of the outputs to float, and max abs error).
- `quantize_within_budget`: quantize everything, then keep the most sensitive layers in
  float, one at a time, until the cosine similarity reaches the budget; every step is
  recorded, so the report can show the trade-off layer by layer.
- `QuantizeWithinBudget`: the same search as a pipeline item, so optimize() runs it (and
  its verifier, numeric check and ledger row) under the PassManager like any other pass.

Accuracy is measured with the reference interpreter on the evaluation feeds the caller gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ecograph.errors import AccuracyError
from ecograph.ir import Graph, interpret
from ecograph.passes.core import CosineTolerance, Pass, PassResult, Tolerance
from ecograph.quant.quantize import Quantize
from ecograph.quant.targets import DYNAMIC_OPS, QUANTIZABLE, find_targets

Feeds = Mapping[str, np.ndarray]


class AccuracyBudgetError(AccuracyError):
    """Even with every layer kept in float the budget is not met (or no layer is left)."""


def outputs_on(graph: Graph, feeds: Sequence[Feeds]) -> list[dict[str, np.ndarray]]:
    return [interpret(graph, dict(f)) for f in feeds]


def cosine_and_error(
    reference: Sequence[Mapping[str, np.ndarray]], actual: Sequence[Mapping[str, np.ndarray]]
) -> tuple[float, float]:
    """Mean cosine similarity (per sample and output, flattened) and max abs error."""
    cosines: list[float] = []
    worst = 0.0
    for ref, out in zip(reference, actual, strict=True):
        for name, r in ref.items():
            a = out[name].astype(np.float64).reshape(-1)
            b = r.astype(np.float64).reshape(-1)
            denom = np.linalg.norm(a) * np.linalg.norm(b)
            cosines.append(float(a @ b / denom) if denom > 0 else float(np.allclose(a, b)))
            if a.size:
                worst = max(worst, float(np.max(np.abs(a - b))))
    return float(np.mean(cosines)), worst


@dataclass
class LayerSensitivity:
    node: str
    op_type: str
    cosine: float
    max_abs_error: float


def sharing(template: Quantize) -> Quantize:
    """`template` with a `shared` cache of quantized weights (its own, or a new one), so the
    search's many quantized copies of one graph quantize each weight once: a 4-bit weight's
    MSE range search took 4 s per TinyLlama FFN matrix, and the search quantized every
    weight once per copy (measured: 93 of optimize's 109 s on a 2-layer TinyLlama-shaped
    decode step went to quantizing the same weights twice)."""
    return template if template.shared is not None else dataclasses.replace(template, shared={})


def _quantized_copy(graph: Graph, template: Quantize, exclude: Sequence[str]) -> Graph:
    g = graph.copy()
    pass_ = dataclasses.replace(template, exclude=tuple(template.exclude) + tuple(exclude))
    pass_.run(g)
    return g


def layer_sensitivity(
    graph: Graph, template: Quantize, feeds: Sequence[Feeds]
) -> list[LayerSensitivity]:
    """Accuracy with only one layer quantized, for each layer; most sensitive first."""
    template = sharing(template)
    ops = DYNAMIC_OPS if template.mode == "dynamic" else QUANTIZABLE
    targets, _ = find_targets(graph, template.exclude, ops)
    if template.float_after:  # layers the template keeps in float are not candidates
        targets = template.without_float_after(targets, [])
    names = [t.node.name for t in targets]
    reference = outputs_on(graph, feeds)
    out: list[LayerSensitivity] = []
    for t in targets:
        others = [n for n in names if n != t.node.name]
        g = _quantized_copy(graph, template, others)
        cos, err = cosine_and_error(reference, outputs_on(g, feeds))
        out.append(LayerSensitivity(t.node.name, t.node.op_type, cos, err))
    out.sort(key=lambda s: s.cosine)
    return out


@dataclass
class BudgetStep:
    kept_float: list[str]
    cosine: float
    max_abs_error: float


@dataclass
class BudgetResult:
    graph: Graph
    budget: float
    kept_float: list[str]
    cosine: float
    sensitivity: list[LayerSensitivity]
    steps: list[BudgetStep] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"accuracy budget: cosine >= {self.budget}"]
        if self.sensitivity:
            lines.append("per-layer sensitivity (cosine with only this layer quantized):")
            lines += [f"  {s.node} ({s.op_type}): {s.cosine:.6f}" for s in self.sensitivity]
        else:
            lines.append("per-layer sensitivity: not measured (every layer quantized meets it)")
        lines.append("steps (layers kept in float -> cosine):")
        for st in self.steps:
            lines.append(f"  {len(st.kept_float)} in float {st.kept_float}: {st.cosine:.6f}")
        return "\n".join(lines)


def quantize_within_budget(
    graph: Graph, template: Quantize, feeds: Sequence[Feeds], min_cosine: float
) -> BudgetResult:
    """The quantized graph that meets `min_cosine` keeping the fewest layers in float.

    Every layer quantized is tried first; only if that misses the budget is each layer's
    sensitivity measured (one run of the model per layer) to choose which to keep in float."""
    if not feeds:
        raise AccuracyBudgetError("an accuracy budget needs evaluation inputs")
    template = sharing(template)
    reference = outputs_on(graph, feeds)
    g = _quantized_copy(graph, template, [])
    cos, err = cosine_and_error(reference, outputs_on(g, feeds))
    steps = [BudgetStep([], cos, err)]
    if cos >= min_cosine:
        return BudgetResult(g, min_cosine, [], cos, [], steps)
    sensitivity = layer_sensitivity(graph, template, feeds)
    for i in range(1, len(sensitivity) + 1):
        kept = [s.node for s in sensitivity[:i]]
        g = _quantized_copy(graph, template, kept)
        cos, err = cosine_and_error(reference, outputs_on(g, feeds))
        steps.append(BudgetStep(kept, cos, err))
        if cos >= min_cosine:
            return BudgetResult(g, min_cosine, kept, cos, sensitivity, steps)
    raise AccuracyBudgetError(
        f"cosine {steps[-1].cosine:.6f} < budget {min_cosine} even with every layer in float "
        "(the budget cannot be met by keeping layers in float; check the evaluation inputs)"
    )


@dataclass
class QuantizeWithinBudget(Pass):
    """op(x, W) -> quantized op, except the most sensitive layers, kept in float until the
    outputs on `feeds` keep cosine >= min_cosine

    `template` says how to quantize; the search is `quantize_within_budget`, and the graph
    is then quantized in place with the layers it kept in float excluded. `outcome` holds the
    search (sensitivity and steps) after a run. Not registered by name: it carries data.
    """

    name: ClassVar[str] = "quantize-within-budget"

    template: Quantize = field(default_factory=Quantize)
    feeds: Sequence[Feeds] = field(default=(), repr=False, compare=False)
    min_cosine: float = 0.99
    outcome: BudgetResult | None = field(default=None, init=False, repr=False, compare=False)

    def numeric_tolerance(self) -> Tolerance:
        """The caller's accuracy budget is the stated tolerance of this pass."""
        return CosineTolerance(self.min_cosine)

    def run(self, graph: Graph) -> PassResult:
        template = sharing(self.template)  # the search's quantized weights, reused below
        self.outcome = quantize_within_budget(graph, template, self.feeds, self.min_cosine)
        exclude = tuple(template.exclude) + tuple(self.outcome.kept_float)
        result = dataclasses.replace(template, exclude=exclude).run(graph)
        stats = {**result.stats, "kept_float": len(self.outcome.kept_float)}
        return PassResult(
            result.changed, stats, [*result.notes, *self.outcome.report().splitlines()]
        )
