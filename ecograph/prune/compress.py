"""`ecograph.compress()`: structured pruning chosen on validation data, kept only when the
pruned build is measurably faster on the target.

Flow: capture the model once; run the same pipeline as optimize() ("default") on a copy: that
is the unpruned graph, compiled for the target and timed. Each candidate (a dict of ratios per
group kind) prunes a copy of it (wanda importance for FFN units, heads and channels; block
influence for transformer blocks; both on `train_data`, else `validation_data`), is optionally
distilled from the unpruned graph, scored on `validation_data` by the reference interpreter
(mean cosine of the outputs to the captured model's, per batch, then averaged), and, when it
holds the budget, compiled and timed once. A candidate whose p50 latency is not below
`latency_margin` (0.95) times the unpruned build's is rolled back.

`prune="auto"` searches a small fixed grid (AUTO_GRID), each kind alone in increasing ratios
(a kind stops at its first ratio that misses the budget), then combines greedily: the fastest
single candidate, plus the best of each other kind in order of their own speed, each addition
kept only when the budget holds and the build is faster still. At most
1 + 2 (ffn) + 1 (heads) + 2 (channels) + 3 (layers) + 3 (combinations) = 12 compiles.
"""

from __future__ import annotations

import importlib
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.errors import AccuracyError, BuildError, InputError, UsageError
from ecograph.ir.graph import Graph, Value
from ecograph.ir.interpreter import interpret
from ecograph.passes.core import Pass
from ecograph.prune.groups import PruningError, groups
from ecograph.prune.passes import (
    DropBlocks,
    PruneChannels,
    PruneFFN,
    PruneHeads,
    transformer_blocks,
    units_to_remove,
)
from ecograph.report.measure import LatencyStats

Feeds = Mapping[str, np.ndarray]
# (label, run) -> latency of run(); the default times RUN_REPEAT runs after RUN_WARMUP.
Measure = Callable[[str, Callable[[], Any]], LatencyStats]

KINDS = ("layers", "ffn", "heads", "channels")
# group kind in ecograph.prune.groups for each ratio key
_GROUP_KIND = {"ffn": "ffn", "heads": "heads", "channels": "channels"}
AUTO_GRID: dict[str, tuple[float, ...]] = {
    "ffn": (0.25, 0.5),
    "heads": (0.25,),
    "channels": (0.25, 0.5),
    "layers": (1 / 6, 1 / 3, 1 / 2),
}
LATENCY_MARGIN = 0.95  # faster means p50 below this times the unpruned build's (timing noise)
# The default timing compares a candidate with the unpruned build in this many interleaved
# rounds (each a RUN_REPEAT-run slice of one, then of the other) and takes the median of the
# per-round ratios: drift on a shared machine hits both alike, and no single slow slice
# decides (timing each build once flipped keep/roll back between runs of a sub-ms CNN).
PAIRED_ROUNDS = 7
DISTILL_STEPS = 300

# candidate statuses, as the report shows them
BASELINE, CHOSEN, PASSED = "baseline", "chosen", "passed"
ROLLED_BACK, REJECTED, NOT_KEPT = "rolled back", "rejected", "not kept"


# --------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    """One pruning tried: its ratios, the pruned graph, how accurate and fast it was, and
    what became of it (status: baseline, chosen, passed, rolled back, rejected, not kept)."""

    ratios: dict[str, float]
    graph: Graph | None = None
    records: list[Any] = field(default_factory=list)
    cosine: float | None = None
    worst_cosine: float | None = None
    latency: LatencyStats | None = None
    # p50 latency relative to the unpruned build's (the median ratio of paired rounds with
    # the default timing, else one measurement's ratio), set whenever the build was timed;
    # what keep / roll back decides on and the report's latency ratio
    speed: float | None = None
    artifact: Path | None = None
    status: str = ""
    reason: str = ""
    bytes: int = 0
    parameters: int = 0
    flops: int | None = None
    nodes: int = 0

    @property
    def label(self) -> str:
        parts = [f"{k}={self.ratios[k]:.3g}" for k in KINDS if self.ratios.get(k)]
        return ",".join(parts) or "unpruned"

    def to_facts(self) -> dict[str, Any]:
        """The report's row (ecograph.report.green.CandidateFacts fields)."""
        return {
            "label": self.label,
            "ratios": dict(self.ratios),
            "cosine": self.cosine,
            "latency_ms": self.latency.p50_ms if self.latency is not None else None,
            "latency_ratio": self.speed,
            "bytes": self.bytes,
            "parameters": self.parameters,
            "status": self.status,
            "reason": self.reason,
        }


def is_faster(candidate_ms: float, baseline_ms: float, margin: float = LATENCY_MARGIN) -> bool:
    """The rollback rule: a candidate counts as faster only when its p50 latency is below
    `margin` times the unpruned build's."""
    return candidate_ms < margin * baseline_ms


def paired_ratio(
    measure: Measure,
    baseline: tuple[str, Callable[[], Any]],
    candidate: tuple[str, Callable[[], Any]],
    rounds: int = PAIRED_ROUNDS,
) -> float:
    """The candidate's p50 latency relative to the baseline's: `rounds` rounds, each timing
    the baseline then the candidate with `measure` ((label, run) -> LatencyStats); the
    median of the rounds' ratios."""
    ratios = []
    for _ in range(rounds):
        base = measure(baseline[0], baseline[1]).p50_ms
        ratios.append(measure(candidate[0], candidate[1]).p50_ms / base)
    return float(np.median(ratios))


def mean_cosine(
    graph: Graph, batches: Sequence[Feeds], references: Sequence[Sequence[np.ndarray]]
) -> tuple[float, float]:
    """(mean, worst) over batches of the mean over outputs of the cosine similarity of
    `graph`'s outputs (reference interpreter) to `references` (flattened, float64)."""
    per_batch = []
    for feeds, ref in zip(batches, references, strict=True):
        out = interpret(graph, feeds)
        outs = [out[v.name] for v in graph.outputs]
        per_batch.append(float(np.mean([_cosine(a, b) for a, b in zip(outs, ref, strict=True)])))
    return float(np.mean(per_batch)), float(np.min(per_batch))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    x = np.asarray(a, np.float64).reshape(-1)
    y = np.asarray(b, np.float64).reshape(-1)
    den = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / den if den > 0 else float(np.array_equal(x, y))


def check_batches(graph: Graph, batches: Any, what: str) -> list[dict[str, np.ndarray]]:
    """`batches`, a list of input dicts (graph input name -> array, a batch each), checked
    against `graph`'s inputs by name, dtype, rank and static dims; returned as numpy arrays
    (torch tensors are converted). `what` names the list in messages ("validation_data",
    "distill: train_data"). UsageError when it is not a non-empty list; InputError naming
    the batch and the input for a bad batch. compress() and distill() both check with it."""
    names = [v.name for v in graph.inputs]
    if isinstance(batches, Mapping) or not isinstance(batches, Sequence):
        raise UsageError(
            f"{what} must be a list of input dicts (graph input name -> array, a batch each), "
            f"got a {type(batches).__name__}; wrap a single batch in a list: [{{...}}]"
        )
    if not batches:
        raise UsageError(
            f"{what} is empty; give at least one batch: a dict of arrays named {names}"
        )
    out: list[dict[str, np.ndarray]] = []
    for i, feeds in enumerate(batches):
        where = f"{what}[{i}]"
        if not isinstance(feeds, Mapping):
            raise InputError(
                f"{where} is a {type(feeds).__name__}, not a dict; give a dict of arrays named "
                f"{names}"
            )
        missing = [n for n in names if n not in feeds]
        unknown = sorted(set(feeds) - set(names))
        if missing or unknown:
            raise InputError(
                f"{where} misses inputs {missing} / has unknown inputs {unknown}; the graph "
                f"takes {names}: key each array by the graph input it feeds"
            )
        batch: dict[str, np.ndarray] = {}
        for v in graph.inputs:
            batch[v.name] = _checked_array(feeds[v.name], v, where)
        out.append(batch)
    return out


def _checked_array(arr: Any, value: Value, where: str) -> np.ndarray:
    """One input of one batch as a numpy array of the graph input's dtype, rank and static
    dims; InputError naming the batch (`where`) and the input otherwise."""
    if hasattr(arr, "detach"):  # a torch tensor
        arr = arr.detach().cpu().numpy()
    want = f"{value.dtype.value}{list(value.shape)}"
    if not isinstance(arr, np.ndarray):
        raise InputError(
            f"{where} input {value.name!r} is a {type(arr).__name__}; give a numpy array of {want}"
        )
    got = f"{arr.dtype}{list(arr.shape)}"
    if arr.dtype != value.dtype.numpy:
        raise InputError(
            f"{where} input {value.name!r} is {got}; the graph input is {want}: cast it "
            f"(.astype(np.{value.dtype.numpy}))"
        )
    if arr.ndim != value.type.rank:
        raise InputError(
            f"{where} input {value.name!r} has rank {arr.ndim} ({got}); the graph input is "
            f"{want}, rank {value.type.rank}"
        )
    for axis, (dim, n) in enumerate(zip(value.shape, arr.shape, strict=True)):
        if isinstance(dim, int) and dim != n:
            raise InputError(
                f"{where} input {value.name!r} is {got}; the graph input is {want}: axis "
                f"{axis} must be {dim} (the graph was captured with that size)"
            )
    return arr


def check_ratios(prune: Any) -> dict[str, float]:
    """A `prune` dict as {kind: ratio}; UsageError for an unknown kind or a ratio that is not
    a number >= 0 (a ratio >= 1, which removes whole groups, is checked against the graph)."""
    if not isinstance(prune, Mapping) or not prune:
        raise UsageError(
            f'prune must be "auto" or a dict of ratios such as {{"ffn": 0.5, "layers": 0.5}} '
            f"(kinds {', '.join(KINDS)}), got {prune!r}"
        )
    ratios: dict[str, float] = {}
    for kind, ratio in prune.items():
        if kind not in KINDS:
            raise UsageError(
                f"unknown group kind {kind!r} in prune; the kinds are {', '.join(KINDS)}"
            )
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not ratio >= 0:
            raise UsageError(f"prune ratio {kind}={ratio!r}: give a number in [0, 1)")
        ratios[kind] = float(ratio)
    return ratios


def check_against_graph(graph: Graph, ratios: Mapping[str, float]) -> None:
    """PruningError, naming the group, for a ratio that would remove a whole group or a kind
    the graph has no prunable group of."""
    for kind, ratio in ratios.items():
        if ratio == 0:
            continue
        if kind == "layers":
            blocks = transformer_blocks(graph)
            live = [b for b in blocks if not any(g.frozen for g in b)]
            if not live:
                raise PruningError(
                    f"prune layers={ratio:g}: {graph.name} has no droppable transformer block "
                    f"({len(blocks)} found, all frozen); drop 'layers' from prune"
                )
            if ratio >= 1:
                raise PruningError(
                    f"prune layers={ratio:g} would drop every one of the {len(blocks)} "
                    f"transformer blocks (first {blocks[0][0].name}); give a ratio below 1"
                )
            continue
        found = [g for g in groups(graph, layers=False) if g.kind == _GROUP_KIND[kind]]
        live = [g for g in found if not g.frozen]
        if not live:
            why = "; ".join(f"{g.name}: {g.frozen}" for g in found) or "none found"
            raise PruningError(
                f"prune {kind}={ratio:g}: {graph.name} has no prunable {kind} group ({why}); "
                f"drop {kind!r} from prune"
            )
        if ratio >= 1:
            raise PruningError(
                f"prune {kind}={ratio:g} would remove every unit of group {live[0].name} "
                f"({live[0].size} units); give a ratio below 1 (at least one unit stays)"
            )


def prune_passes(
    ratios: Mapping[str, float], calibration: Sequence[Feeds], reconstruct: bool = False
) -> list[Pass]:
    """The passes for `ratios`: layers first (block influence), then FFN units, heads and
    channels (wanda importance), all scored on `calibration`; with `reconstruct`, FFN and
    head pruning refit the projections that lost inputs on `calibration` too."""
    passes: list[Pass] = []
    if ratios.get("layers"):
        passes.append(DropBlocks(ratio=ratios["layers"], calibration=calibration))
    for kind, cls in (("ffn", PruneFFN), ("heads", PruneHeads), ("channels", PruneChannels)):
        if ratios.get(kind):
            refit = reconstruct and kind != "channels"  # FFN and head projections only
            passes.append(cls(ratio=ratios[kind], importance="wanda", calibration=calibration,
                              reconstruct=refit))  # fmt: skip
    return passes


def _auto_grid(graph: Graph) -> dict[str, list[float]]:
    """AUTO_GRID restricted to what the graph can prune: ratios that remove at least one
    unit (one block) and differ in what they remove."""
    grid: dict[str, list[float]] = {}
    every = transformer_blocks(graph)
    live_blocks = [b for b in every if not any(g.frozen for g in b)]
    total = len(every)
    counts = sorted({math.floor(r * total + 1e-9) for r in AUTO_GRID["layers"]})
    counts = [c for c in counts if 0 < c <= len(live_blocks) and c < total]
    if counts:
        grid["layers"] = [c / total for c in counts]
    found = groups(graph, layers=False)
    for kind in ("ffn", "heads", "channels"):
        live = [g for g in found if g.kind == kind and not g.frozen]
        seen: set[tuple[int, ...]] = set()
        for r in AUTO_GRID[kind]:
            removed = tuple(units_to_remove(g.size, r) for g in live)
            if any(removed) and removed not in seen:
                seen.add(removed)
                grid.setdefault(kind, []).append(r)
    return grid


# ------------------------------------------------------------------------ compress


@dataclass
class _Search:
    """What every candidate evaluation needs, and the candidates tried so far."""

    base: Graph
    base_records: list[Any]
    validation: list[dict[str, np.ndarray]]
    references: list[list[np.ndarray]]
    calibration: list[dict[str, np.ndarray]]
    train: list[dict[str, np.ndarray]] | None
    distill: bool
    distill_steps: int
    reconstruct: bool
    budget: float | None
    margin: float
    spec: Any
    pipeline: str
    feeds: dict[str, np.ndarray]
    work: Path
    cache: Any
    measure: Measure
    bind: dict[str, int]
    progress: Callable[[str], None]
    tried: list[Candidate] = field(default_factory=list)
    baseline: Candidate | None = None
    paired: bool = False  # compare each candidate with the baseline in paired rounds
    runs: dict[int, Callable[[], Any]] = field(default_factory=dict)  # id(candidate) -> run

    def build(self, cand: Candidate, graph: Graph) -> None:
        """Compile `graph` for the target and time it once; fills artifact and latency."""
        from ecograph.api import compile_cached, recipe_for
        from ecograph.backends.tvm import load

        records = [*self.base_records, *cand.records]
        recipe = recipe_for(self.pipeline, "", records)
        self.progress(f"compiling and timing {cand.label}")
        safe = "".join(c if c.isalnum() else "_" for c in cand.label)
        cand.artifact = compile_cached(
            graph, self.spec, self.work / safe, False, recipe, self.cache
        )
        module = load(cand.artifact)
        run = self.runs[id(cand)] = lambda: module(**self.feeds)
        cand.latency = self.measure(cand.label, run)

    def facts(self, cand: Candidate, graph: Graph) -> None:
        from ecograph.ir.stats import graph_stats

        stats = graph_stats(graph, self.bind)
        cand.bytes, cand.parameters = stats.parameter_bytes, stats.num_parameters
        cand.flops, cand.nodes = stats.flops, stats.num_nodes

    def evaluate(self, ratios: Mapping[str, float]) -> Candidate:
        """Prune (and distill), score, and when the budget holds compile and time one
        candidate; its status is PASSED, REJECTED or ROLLED_BACK."""
        from ecograph.passes import run_passes

        cand = Candidate(dict(ratios))
        self.tried.append(cand)
        graph = self.base.copy()
        self.progress(f"pruning {cand.label}")
        passes = prune_passes(ratios, self.calibration, self.reconstruct)
        cand.records = list(run_passes(graph, passes).records)
        if not any(r.changed for r in cand.records):
            cand.graph, cand.status = graph, ROLLED_BACK
            cand.reason = "removes nothing: each ratio rounds down to 0 units of its groups"
            self.facts(cand, graph)
            return cand
        if self.distill:
            graph = self._distill(graph)
        cand.graph = graph
        self.facts(cand, graph)
        cand.cosine, cand.worst_cosine = mean_cosine(graph, self.validation, self.references)
        if self.budget is not None and cand.cosine < self.budget:
            cand.status = REJECTED
            cand.reason = f"mean cosine {cand.cosine:.4f} < budget {self.budget}"
            return cand
        base_ms = self.baseline_ms()
        self.build(cand, graph)
        assert cand.latency is not None and self.baseline is not None
        ms = cand.latency.p50_ms
        how = "one measurement each"
        if self.paired:
            base_run = ("unpruned", self.runs[id(self.baseline)])
            cand.speed = paired_ratio(self.measure, base_run, (cand.label, self.runs[id(cand)]))
            how = f"median of {PAIRED_ROUNDS} interleaved rounds"
        else:
            cand.speed = ms / base_ms
        if is_faster(cand.speed, 1.0, self.margin):
            cand.status = PASSED
            cand.reason = f"p50 {cand.speed:.3f}x the unpruned build's ({how})"
        else:
            cand.status = ROLLED_BACK
            cand.reason = (
                f"not measurably faster: p50 {cand.speed:.3f}x the unpruned build's ({how}; "
                f"{ms:.3f} ms vs {base_ms:.3f} ms), not below {self.margin:g}x"
            )
        return cand

    def baseline_ms(self) -> float:
        """The unpruned build's p50 latency, compiling and timing it on first use (so a
        search whose candidates all miss the budget compiles nothing)."""
        if self.baseline is None:
            base = Candidate({}, graph=self.base, status=BASELINE, reason="the unpruned build")
            self.facts(base, self.base)
            base.cosine, base.worst_cosine = mean_cosine(
                self.base, self.validation, self.references
            )
            self.build(base, self.base)
            base.speed = 1.0
            self.baseline = base
            self.tried.insert(0, base)
        assert self.baseline.latency is not None
        return self.baseline.latency.p50_ms

    def _distill(self, student: Graph) -> Graph:
        module = importlib.import_module("ecograph.train.distill")
        assert self.train is not None
        result = module.distill(
            student,
            self.base,
            self.train,
            steps=self.distill_steps,
            validation_data=self.validation,
            seed=0,
        )
        return result.graph


def compress(
    model: Any,
    example_inputs: Any = None,
    *,
    prune: Mapping[str, float] | str,
    validation_data: Sequence[Feeds],
    train_data: Sequence[Feeds] | None = None,
    distill: bool = False,
    accuracy_budget: float | None = None,
    metric: str = "cosine",
    target: Any = "x86",
    pipeline: str = "default",
    distill_steps: int = DISTILL_STEPS,
    reconstruct: bool = True,
    latency_margin: float = LATENCY_MARGIN,
    measure: Measure | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    cache: Any = True,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """Prune `model` structurally, keep the result only if it is faster on `target`, and
    return an OptimizeResult (compiled module, report with the candidates tried).

    - prune: {"layers": r, "ffn": r, "heads": r, "channels": r} (ratios in [0, 1); "layers"
      is of transformer blocks: 0.5 of a 6-block BERT drops 3 blocks) or "auto" (needs
      accuracy_budget: the fastest candidate of AUTO_GRID that holds it).
    - validation_data / train_data: lists of input dicts, a batch each. Importance (wanda,
      block influence) is computed on train_data when given, else on validation_data.
      Accuracy is the mean cosine over validation batches of the outputs to the model's.
    - distill: distill each pruned candidate from the unpruned graph on train_data
      (ecograph.train.distill, `distill_steps` steps) before it is scored.
    - reconstruct: after FFN and head pruning, refit the weights and biases of the
      projections that lost input features by least squares against the unpruned model, on
      train_data (ecograph/prune/reconstruct.py). Without train_data nothing is refit (the
      accuracy would be measured on the data the weights were fit to); the report says so.
    - accuracy_budget: the minimum mean cosine; a candidate below it is rejected (with
      explicit ratios: AccuracyError; with "auto": AccuracyError when no candidate holds it).
    - latency_margin: a candidate is kept only when its p50 latency is below this times the
      unpruned build's; otherwise it is rolled back and the unpruned build is returned. The
      default timing compares the two in PAIRED_ROUNDS interleaved rounds (median ratio).
    - measure: (label, run) -> LatencyStats; the default times the compiled module like the
      report's runs. A caller's timer (a seam for tests and other timers) is called once
      per build and its ratio decides.
    """
    from ecograph.api import (
        OptimizeResult,
        build_budget,
        capture,
        feeds_for,
        resolve_target,
        runs_here_reason,
        symbol_bindings,
    )
    from ecograph.backends.tvm import load
    from ecograph.passes import run_passes
    from ecograph.report.green import GreenReport, ModelFacts, RunFacts
    from ecograph.report.measure import (
        RUN_REPEAT,
        RUN_WARMUP,
        describe_machine,
        measure_energy,
        measure_latency,
    )

    if metric != "cosine":
        raise UsageError(f"metric {metric!r} is not supported; use metric='cosine'")
    auto = isinstance(prune, str)
    if auto and prune != "auto":
        raise UsageError(f'prune must be "auto" or a dict of ratios, got {prune!r}')
    ratios = {} if auto else check_ratios(prune)
    if auto and accuracy_budget is None:
        raise UsageError(
            'prune="auto" chooses ratios under an accuracy budget: pass accuracy_budget '
            "(minimum mean cosine to the original on validation_data, e.g. 0.95)"
        )
    if accuracy_budget is not None and not 0 < accuracy_budget <= 1:
        raise UsageError(f"accuracy_budget is a cosine in (0, 1], got {accuracy_budget}")
    if distill and not train_data:
        raise UsageError(
            "distill=True trains the pruned model on train_data: pass train_data (a list of "
            "input dicts), or drop distill"
        )
    if not 0 < latency_margin <= 1:
        raise UsageError(f"latency_margin is in (0, 1], got {latency_margin}")
    spec = resolve_target(target)
    cannot_run = runs_here_reason(spec)
    if cannot_run:
        raise UsageError(
            f"compress times every candidate on the target and the {spec.name} build cannot "
            f"run here ({cannot_run}); run compress on a machine of that target"
        )
    say = progress or (lambda _text: None)

    original = capture(model, example_inputs)
    if name:
        original.name = name
    validation = check_batches(original, validation_data, "validation_data")
    train = check_batches(original, train_data, "train_data") if train_data else None
    feeds = feeds_for(original, example_inputs) if example_inputs is not None else validation[0]
    references = [
        [out[v.name] for v in original.outputs]
        for out in (interpret(original, b) for b in validation)
    ]
    base = original.copy()
    base_records = list(run_passes(base, pipeline).records)
    if not auto:
        check_against_graph(base, ratios)

    timer = measure or (
        lambda _label, run: measure_latency(run, warmup=RUN_WARMUP, repeat=RUN_REPEAT)
    )
    work = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="ecograph-"))
    search = _Search(
        base=base,
        base_records=base_records,
        validation=validation,
        references=references,
        calibration=train or validation,
        train=train,
        distill=distill,
        distill_steps=distill_steps,
        reconstruct=reconstruct and bool(train),
        budget=accuracy_budget,
        margin=latency_margin,
        spec=spec,
        pipeline=pipeline,
        feeds=feeds,
        work=work,
        cache=cache,
        measure=timer,
        bind=symbol_bindings(original, feeds),
        progress=say,
        paired=measure is None,
    )
    notes: list[str] = []
    if auto:
        chosen = _auto_search(search, notes)
    else:
        cand = search.evaluate(ratios)
        if cand.status == REJECTED:
            raise AccuracyError(
                f"pruned model ({cand.label}): {cand.reason} on {len(validation)} validation "
                "batches; the model is untouched. Prune less, or distill with train_data."
            )
        chosen = cand if cand.status == PASSED else None
        if cand.status == ROLLED_BACK:
            notes.append(
                f"ROLLED BACK {cand.label}: {cand.reason} on {spec.describe()}; the result is "
                "the unpruned build"
            )
    if chosen is not None:
        chosen.status = CHOSEN
    search.baseline_ms()
    baseline = search.baseline
    assert baseline is not None
    final = chosen or baseline
    assert final.graph is not None and final.artifact is not None and final.latency is not None
    assert baseline.latency is not None

    module = load(final.artifact)
    # The build must compute the graph the accuracy was scored on (as optimize() checks).
    built = _outputs(module(**validation[0]))
    expected = interpret(final.graph, validation[0])
    build_cos = min(
        _cosine(a, expected[v.name]) for a, v in zip(built, final.graph.outputs, strict=True)
    )
    if build_cos < build_budget(final.graph):
        raise BuildError(
            f"the {spec.name} build of {final.label} differs from its graph under the "
            f"reference interpreter (cosine {build_cos:.6f} on validation batch 0); this is "
            "a backend bug: please report it with the model"
        )
    records = [*base_records, *final.records]
    bstats, fstats = ((c.bytes, c.parameters, c.flops, c.nodes) for c in (baseline, final))
    device = spec.device
    runs = []
    for cand in (baseline, final):
        assert cand.artifact is not None and cand.latency is not None
        energy = None
        if measure is None:  # an injected timer means: measure nothing here
            mod = module if cand is final else load(cand.artifact)
            energy = measure_energy(lambda m=mod: m(**feeds), device=device, latency=cand.latency)
        runs.append(RunFacts(device, cand.latency, energy))
    report = GreenReport(
        model=original.name,
        target=spec.describe(),
        original=ModelFacts(*bstats),
        optimized=ModelFacts(*fstats),
        machine=describe_machine(),
        original_run=runs[0],
        optimized_run=runs[1],
        accuracy={
            "cosine": final.cosine,
            "worst_batch_cosine": final.worst_cosine,
            "build_vs_graph_cosine": build_cos,
        },
        passes=[r.to_dict() for r in records],
        notes=[
            *notes,
            f"pruning: {'auto search' if auto else 'ratios ' + _label(ratios)}; chosen: "
            f"{final.label}" + (" (nothing pruned)" if chosen is None else ""),
            f"accuracy = mean over {len(validation)} validation batches of the mean cosine of "
            "the outputs to the captured model's, both run by the reference interpreter; "
            "build_vs_graph_cosine: the target build's outputs to the chosen graph's on "
            "validation batch 0",
            f"original = the unpruned model through the same pipeline ({pipeline!r}) and "
            f"target; a candidate is kept only when its p50 latency is below "
            f"{latency_margin:g}x the original's ("
            + (
                f"the median ratio of {PAIRED_ROUNDS} rounds timing the two interleaved"
                if measure is None
                else "one measurement each"
            )
            + ")",
            "importance: wanda (FFN units, heads, channels) and block influence (transformer "
            f"blocks) on {'train_data' if train else 'validation_data'}"
            + (
                (
                    "; FFN / head projections refit by least squares on train_data"
                    if train
                    else "; no refit of the pruned projections (no train_data: validation_data "
                    "judges the accuracy, so it is not fit to)"
                )
                if reconstruct
                else ""
            )
            + (f"; distilled {distill_steps} steps on train_data" if distill else ""),
        ],
        candidates=[_row(c) for c in search.tried],
    )
    if measure is not None:
        report.notes.append("latency from the caller's measure function; energy not measured")
    return OptimizeResult(final.graph, module, report, final.artifact, original, records, "")


def _outputs(out: Any) -> list[np.ndarray]:
    items = out if isinstance(out, tuple | list) else [out]
    return [o.detach().cpu().numpy() if hasattr(o, "detach") else np.asarray(o) for o in items]


def _row(cand: Candidate) -> Any:
    from ecograph.report.green import CandidateFacts

    return CandidateFacts(**cand.to_facts())


def _label(ratios: Mapping[str, float]) -> str:
    return Candidate(dict(ratios)).label


def _auto_search(search: _Search, notes: list[str]) -> Candidate | None:
    """Each kind alone over its grid, then a greedy combination; the fastest candidate that
    holds the budget and is faster than the unpruned build (None: keep the unpruned one)."""
    grid = _auto_grid(search.base)
    if not grid:
        raise PruningError(
            f"prune='auto': {search.base.name} has no prunable group (FFN, heads, channels) "
            "and no droppable transformer block; see 'ecograph inspect MODEL --prunable'"
        )
    best: dict[str, Candidate] = {}
    for kind, ratios in grid.items():
        for r in ratios:
            cand = search.evaluate({kind: r})
            if cand.status == REJECTED:
                break  # a larger ratio of the same kind would not hold the budget either
            # on a tie the larger ratio wins: as fast, and smaller
            if cand.status == PASSED and (kind not in best or _speed(cand) <= _speed(best[kind])):
                best[kind] = cand
    order = sorted(best.values(), key=_speed)
    current = order[0] if order else None
    for other in order[1:]:
        assert current is not None
        cand = search.evaluate({**current.ratios, **other.ratios})
        if cand.status == PASSED and _speed(cand) < _speed(current):
            current = cand
        elif cand.status == PASSED:
            cand.status = NOT_KEPT
            cand.reason += f"; not faster than {current.label}"
    for cand in search.tried:
        if current is not None and cand.status == PASSED and cand is not current:
            cand.status = NOT_KEPT
            cand.reason += f"; {current.label} is as fast or faster and holds the budget"
    if current is not None:
        return current
    held = [c for c in search.tried if c.status == ROLLED_BACK]
    if held:
        notes.append(
            "ROLLED BACK every candidate that held the budget ("
            + ", ".join(c.label for c in held)
            + "): none was measurably faster on the target; the result is the unpruned build"
        )
        return None
    tried = ", ".join(f"{c.label}: {c.reason}" for c in search.tried if c.status == REJECTED)
    raise AccuracyError(
        f"prune='auto': no candidate holds accuracy_budget {search.budget} ({tried}); the "
        "model is untouched. Loosen the budget, or distill with train_data."
    )


def _speed(cand: Candidate) -> float:
    """How fast a candidate is, for ranking: its latency relative to the unpruned build."""
    assert cand.speed is not None
    return cand.speed
