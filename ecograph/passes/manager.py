"""The PassManager: runs pipeline items in order and checks every step.

It runs an ordered list of passes and `FixedPoint` groups (repeat until nothing changes, with
an iteration cap) and instruments every step: verify after each changing pass, time it, dump
the IR before/after to a folder, keep a ledger (node count, parameter bytes), and compare
outputs numerically against the previous stage on sample inputs, within each pass's declared
tolerance. When outputs diverge the error names the pass and the first diverging node, and a
minimal before/after pair is written to disk.

The IR text form is printed only when something reads it (dumps, divergence pairs): the
honest-`changed` check compares a structural fingerprint built from object identities, which
costs a fraction of printing every node before and after every pass. A pipeline that runs
longer than two seconds shows one progress line per pass on a terminal (see `progress`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ecograph.errors import EcographError, NumericDivergenceError, PassError, VerificationError
from ecograph.ir.graph import Graph, Node
from ecograph.ir.interpreter import interpret
from ecograph.ir.text import write_text
from ecograph.ir.verify import verify
from ecograph.passes.core import Pass, PassResult
from ecograph.passes.divergence import extract_cone, first_diverging_node
from ecograph.passes.instrument import Instrumentation, PassRecord, PipelineResult, param_bytes
from ecograph.passes.pipeline import PipelineItem, PipelineSpec, parse_pipeline
from ecograph.passes.registry import registered_passes
from ecograph.passes.sample import compare_arrays, sample_inputs_for

log = logging.getLogger("ecograph.passes")

# A pipeline shows progress (on a terminal) once it has run this long.
PROGRESS_DELAY_S = 2.0


class PassManager:
    """Runs pipeline items in order with instrumentation. See the module docstring.

    `auto_requires`: run the registered provider of a missing `requires` property first
    (recorded as an automatic run); when False a missing property is a PassError.
    `progress`: None shows a per-pass progress line on stderr once a run has taken
    PROGRESS_DELAY_S seconds, and only when stderr is a terminal; True always shows it (from
    the first pass, terminal or not); False never does.
    """

    def __init__(
        self,
        pipeline: PipelineSpec,
        instrumentation: Instrumentation | None = None,
        *,
        auto_requires: bool = True,
        progress: bool | None = None,
    ) -> None:
        self.items = parse_pipeline(pipeline)
        self.instrumentation = instrumentation or Instrumentation()
        self.auto_requires = auto_requires
        self.progress = progress
        self._bar: Any = None
        self._fingerprint: tuple[Any, ...] | None = None  # of the graph as it stands, if known
        self._properties: set[str] = set()
        self._records: list[PassRecord] = []
        self._step = 0
        self._feeds: dict[str, np.ndarray] | None = None
        self._reference: dict[str, np.ndarray] | None = None

    def run(self, graph: Graph) -> PipelineResult:
        """Run the pipeline on `graph` in place."""
        inst = self.instrumentation
        self._properties = set()
        self._records = []
        self._step = 0
        self._fingerprint = None
        if inst.differential:
            self._feeds = dict(inst.sample_inputs or {}) or sample_inputs_for(
                graph, inst.symbol_values, inst.seed
            )
            self._reference = self._outputs(graph)
        changed = False
        self._bar = _progress_bar(self.progress)
        try:
            for item in self.items:
                changed |= self._run_item(graph, item)
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        return PipelineResult(changed, self._records)

    # ------------------------------------------------------------------ internals

    def _run_item(self, graph: Graph, item: PipelineItem) -> bool:
        if isinstance(item, Pass):
            return self._run_pass(graph, item, None)
        changed_any = False
        for iteration in range(1, item.max_iterations + 1):
            changed = False
            for p in item.passes:
                changed |= self._run_pass(graph, p, iteration)
            changed_any |= changed
            if not changed:
                return changed_any
        log.warning(
            "%s group [%s] still changed the graph after %d rounds; stopping there",
            item.name,
            ", ".join(p.name for p in item.passes),
            item.max_iterations,
        )
        return changed_any

    def _ensure_requires(self, graph: Graph, p: Pass) -> None:
        missing = sorted(set(p.requires) - self._properties)
        for prop in missing:
            providers = [c for c in registered_passes().values() if prop in c.provides]
            if not self.auto_requires or not providers:
                raise PassError(
                    f"pass {p.name} requires property {prop!r}, which no earlier pass provided; "
                    f"run {', '.join(c.name for c in providers) or 'a pass providing it'} first"
                )
            self._run_pass(graph, providers[0](), None, auto=True)

    def _run_pass(self, graph: Graph, p: Pass, iteration: int | None, auto: bool = False) -> bool:
        inst = self.instrumentation
        self._ensure_requires(graph, p)
        self._step += 1
        step = self._step
        record = PassRecord(p.name, False, iteration=iteration, auto=auto)
        if self._bar is not None:
            # Name the pass while it runs, once the bar is on screen (tqdm's `delay` passed).
            shown = time.time() >= self._bar.start_t + self._bar.delay
            self._bar.set_postfix_str(f"{p.name} ({len(graph.nodes)} nodes)", refresh=shown)
        if inst.ledger:
            record.nodes_before, record.param_bytes_before = len(graph.nodes), param_bytes(graph)
        before_text = str(graph) if inst.dump_dir is not None else None
        before_copy = graph.copy() if inst.differential else None
        fingerprint = None
        if inst.verify:  # an unchanged pass left the graph as its fingerprint says: reuse it
            fingerprint = self._fingerprint or _fingerprint(graph)
        self._fingerprint = None
        start = time.perf_counter()
        try:
            result = p.run(graph)
        except EcographError:
            raise
        except Exception as exc:
            raise PassError(
                f"pass {p.describe()} crashed: {type(exc).__name__}: {exc} (a bug in the pass; "
                "run it alone with ecograph.passes.testing.check_rewrite to reproduce)"
            ) from exc
        if not isinstance(result, PassResult):
            raise PassError(f"pass {p.name} returned {type(result).__name__}, not a PassResult")
        if fingerprint is not None and not result.changed:
            after = _fingerprint(graph)
            if after != fingerprint:
                raise PassError(
                    f"pass {p.describe()} reported changed=False but edited the graph "
                    f"({_first_difference(fingerprint, after)}); `changed` must be honest "
                    "(the manager skips checks on unchanged graphs)"
                )
            self._fingerprint = after
        if inst.timing:
            record.seconds = time.perf_counter() - start
        record.changed = result.changed
        record.result = result
        if inst.ledger:
            record.nodes_after, record.param_bytes_after = len(graph.nodes), param_bytes(graph)
        self._records.append(record)
        if self._bar is not None:
            self._bar.update(1)
        for note in result.notes:
            log.info("%s: %s", p.name, note)
        if result.changed:
            preserved = p.preserves
            if preserved != "*":
                self._properties &= set(preserved)
        self._properties |= set(p.provides)
        if not result.changed:
            return False
        if inst.dump_dir is not None:
            folder = Path(inst.dump_dir)
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"{step:03d}-{p.name}"
            _write_atomic(folder / f"{stem}.before.txt", (before_text or "").encode())
            _write_atomic(folder / f"{stem}.after.txt", str(graph).encode())
        if inst.verify:
            try:
                verify(graph)
            except VerificationError as exc:
                raise PassError(f"pass {p.describe()} left an invalid graph: {exc}") from exc
        if inst.differential:
            assert before_copy is not None
            self._check_numerics(before_copy, graph, p, step)
        return True

    def _outputs(self, graph: Graph) -> dict[str, np.ndarray]:
        assert self._feeds is not None
        feeds = {v.name: self._feeds[v.name] for v in graph.inputs if v.name in self._feeds}
        out = interpret(graph, feeds)
        return {str(i): out[v.name] for i, v in enumerate(graph.outputs)}

    def _check_numerics(self, before: Graph, after: Graph, p: Pass, step: int) -> None:
        assert self._reference is not None
        tolerance = p.numeric_tolerance()
        outputs = self._outputs(after)
        problems = []
        for key, expected in self._reference.items():
            why = compare_arrays(expected, outputs[key], tolerance)
            if why is not None:
                problems.append(f"output {key} (%{after.outputs[int(key)].name}): {why}")
        if not problems:
            # Compare against the previous stage next time: tolerances do not accumulate
            # silently, each pass is judged on its own change.
            self._reference = outputs
            return
        node, detail = first_diverging_node(before, after, self._feeds or {}, tolerance)
        dump = self._write_failure(before, after, node, step, p.name)
        where = f"; first diverging node: {node} ({detail})" if node else ""
        raise NumericDivergenceError(
            f"pass {p.describe()} changed the outputs: {'; '.join(problems)}{where}"
            + (f"; before/after written to {dump}" if dump else ""),
            pass_name=p.name,
            node=node,
            dump=dump,
        )

    def _write_failure(
        self, before: Graph, after: Graph, node: str | None, step: int, name: str
    ) -> str | None:
        folder = self.instrumentation.failure_dir
        if folder is None:
            return None
        out = Path(folder) / f"divergence-{step:03d}-{name}"
        out.mkdir(parents=True, exist_ok=True)
        pair = [(before, "before"), (after, "after")]
        if node is not None:
            value = after.node(node).outputs[0].name if _has_node(after, node) else None
            if value is not None and before.has_value(value):
                pair = [
                    (extract_cone(before, [value]), "before"),
                    (extract_cone(after, [value]), "after"),
                ]
        for g, tag in pair:
            write_text(g, out / f"{tag}.txt")
        # Object (string) arrays would need pickle: they are left out of the inputs file.
        arrays: dict[str, Any] = {
            k: v for k, v in (self._feeds or {}).items() if np.asarray(v).dtype != object
        }
        np.savez(str(out / "inputs.npz"), **arrays)
        return str(out)


def _fingerprint(graph: Graph) -> tuple[Any, ...]:
    """A cheap structural summary to catch a pass that edits the graph but reports
    changed=False, without printing the text form (which cost more than the passes on large
    graphs): node names in order, and per node a hash of its identity, op, input and output
    values (identity, name, type) and attributes. Hashes, not tuples, are kept: a tuple per
    node would make the garbage collector walk the whole graph again and again."""
    nodes = graph.nodes
    return (
        hash(tuple((id(v), v.name, v.type) for v in graph.inputs)),
        hash(tuple(id(v) for v in graph.outputs)),
        hash(tuple((v.name, v.type, id(v.const_value)) for v in graph.constants.values())),
        tuple([n.name for n in nodes]),
        tuple([_node_hash(n) for n in nodes]),
        repr(sorted(graph.metadata.items())),
    )


def _node_hash(node: Node) -> int:
    return hash(
        (
            id(node),
            node.op_type,
            node.domain,
            *[id(v) for v in node.inputs],
            None,
            *[(id(v), v.name, v.type) for v in node.outputs],
            *[(k, _frozen(v)) for k, v in node.attrs.items()],
        )
    )


def _frozen(value: Any) -> Any:
    """An attribute value in a hashable form that an in-place edit would change."""
    if isinstance(value, np.ndarray):
        return (id(value), value.dtype.str, value.shape, value.tobytes() if value.size <= 64 else 0)
    if isinstance(value, (list, tuple)):
        return tuple([_frozen(v) for v in value])
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    try:
        hash(value)
    except TypeError:  # some other mutable object: by identity
        return (type(value).__name__, id(value))
    return value


def _first_difference(before: tuple[Any, ...], after: tuple[Any, ...]) -> str:
    """Where two fingerprints differ, in words (the first node that differs, if any)."""
    what = ("graph inputs", "graph outputs", "constants")
    for label, b, a in zip(what, before, after, strict=False):
        if b != a:
            return f"its {label} changed"
    names_b, hashes_b, names_a, hashes_a = before[3], before[4], after[3], after[4]
    for i, (nb, na) in enumerate(zip(names_b, names_a, strict=False)):
        if nb != na:
            return f"node {nb} became {na}"
        if hashes_b[i] != hashes_a[i]:
            return f"node {na} changed"
    if len(names_b) != len(names_a):
        return f"node count {len(names_b)} -> {len(names_a)}"
    return "its metadata changed"


def _progress_bar(progress: bool | None) -> Any:
    """A tqdm bar counting passes, or None when progress is off (see PassManager)."""
    if progress is False:
        return None
    if progress is None and not _stderr_is_tty():
        return None
    from tqdm import tqdm

    forced = progress is True
    return tqdm(
        desc="passes",
        unit="pass",
        file=sys.stderr,
        delay=0.0 if forced else PROGRESS_DELAY_S,
        mininterval=0.0 if forced else 0.1,
        dynamic_ncols=True,
        leave=forced,
    )


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream: no terminal
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and a rename, so readers never see half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _has_node(graph: Graph, name: str) -> bool:
    return any(n.name == name for n in graph.nodes)


def run_passes(
    graph: Graph,
    pipeline: PipelineSpec = "default",
    instrumentation: Instrumentation | None = None,
    *,
    progress: bool | None = None,
) -> PipelineResult:
    """Run a pipeline on `graph` in place (a convenience wrapper around PassManager)."""
    return PassManager(pipeline, instrumentation, progress=progress).run(graph)


def bisect_pipeline(
    graph: Graph,
    pipeline: PipelineSpec,
    feeds: Mapping[str, np.ndarray] | None = None,
    failure_dir: str | Path | None = None,
) -> NumericDivergenceError | None:
    """Replay `pipeline` on a copy of `graph`, checking numerics after every pass; return the
    divergence error naming the first pass that changed the outputs (None if none did)."""
    inst = Instrumentation(differential=True, sample_inputs=feeds, failure_dir=failure_dir)
    try:
        PassManager(pipeline, inst).run(graph.copy())
    except NumericDivergenceError as exc:
        return exc
    return None
