"""Pass infrastructure: Pass, PassResult, the pass registry, pipelines and the PassManager.

A pass is a dataclass whose fields are its options:

    @register_pass
    @dataclass
    class EliminateIdentity(Pass):
        '''Identity(x) -> x'''
        name = "eliminate-identity"

        def run(self, graph: Graph) -> PassResult:
            ...

`PassManager` runs an ordered list of passes and `FixedPoint` groups (repeat until nothing
changes, with an iteration cap) and instruments every step: verify after each changing pass,
time it, dump the IR before/after to a folder, keep a ledger (node count, parameter bytes), and
compare outputs numerically against the previous stage on sample inputs. When outputs diverge
the error names the pass and the first diverging node, and a minimal before/after pair is
written to disk.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ecograph.errors import EcographError, NumericDivergenceError, PassError, VerificationError
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Value
from ecograph.ir.interpreter import interpret
from ecograph.ir.text import write_text
from ecograph.ir.verify import verify

log = logging.getLogger("ecograph.passes")

ENTRY_POINT_GROUP = "ecograph.passes"

# ------------------------------------------------------------------------- passes


@dataclass
class PassResult:
    """What a pass did. `changed` must be honest: False means the graph is untouched.

    `stats` counts what happened (e.g. {"fused": 2}); `notes` are human-readable lines: skips
    with their reason, near misses of patterns.
    """

    changed: bool
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Pass:
    """Base class of every pass. Subclasses are dataclasses whose fields are their options.

    Class attributes:
    - `name`: kebab-case name used in pipeline specs and the registry.
    - `requires`: properties that must hold before the pass runs (the manager runs the
      providing pass first, or fails if `auto_requires` is off).
    - `provides`: properties that hold after the pass ran.
    - `preserves`: properties that survive a run that changed the graph ("*" for all).
    - `tolerance`: (rtol, atol) the numeric differential check allows; None means the pass
      must be exact (bit for bit, NaN equal to NaN).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    preserves: ClassVar[frozenset[str] | str] = frozenset()
    tolerance: ClassVar[tuple[float, float] | None] = None

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError(f"{type(self).__name__} must implement run(graph)")

    def __call__(self, graph: Graph) -> PassResult:
        return self.run(graph)

    @property
    def summary(self) -> str:
        """The first docstring line: the rewrite this pass performs."""
        doc = (type(self).__doc__ or "").strip()
        return doc.splitlines()[0] if doc else self.name

    def describe(self) -> str:
        """The pass as a pipeline spec entry, options included (`name(opt=1)`)."""
        if not dataclasses.is_dataclass(self):
            return self.name
        opts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            opts.append(f"{f.name}={value!r}")
        return f"{self.name}({', '.join(opts)})" if opts else self.name


# ----------------------------------------------------------------------- registry

_PASSES: dict[str, type[Pass]] = {}
_ENTRY_POINTS_LOADED = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its `name` in pipeline specs."""
    name = getattr(cls, "name", "")
    if not name or not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name):
        raise PassError(f"pass {cls.__name__} needs a kebab-case `name`, got {name!r}")
    if not (cls.__doc__ or "").strip():
        raise PassError(f"pass {name} needs a docstring that opens with its rewrite")
    existing = _PASSES.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise PassError(f"pass name {name!r} is taken by {existing.__module__}.{existing.__name__}")
    _PASSES[name] = cls
    return cls


def _load_builtin_and_plugins() -> None:
    global _ENTRY_POINTS_LOADED
    # Importing these registers the built-in passes and "quantize" (imported here, lazily,
    # because ecograph.quant.quantize itself imports this module).
    import ecograph.passes
    import ecograph.quant.integer
    import ecograph.quant.quantize  # noqa: F401

    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            log.warning("could not load pass plugin %s (%s): %s", ep.name, ep.value, exc)
            continue
        if isinstance(obj, type) and issubclass(obj, Pass) and obj.name not in _PASSES:
            register_pass(obj)


def registered_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name, built-in and from `ecograph.passes` entry points."""
    _load_builtin_and_plugins()
    return dict(sorted(_PASSES.items()))


def get_pass(name: str, **options: Any) -> Pass:
    """An instance of the pass called `name`, with `options` set as its fields."""
    _load_builtin_and_plugins()
    cls = _PASSES.get(name)
    if cls is None:
        known = ", ".join(sorted([*_PASSES, *_PIPELINES]))
        raise PassError(f"unknown pass or pipeline {name!r}; known: {known}")
    try:
        return cls(**options)
    except TypeError as exc:
        fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        raise PassError(
            f"bad options {options} for pass {name}: {exc}; options: {fields}"
        ) from None


# ---------------------------------------------------------------------- pipelines


@dataclass
class FixedPoint:
    """Run `passes` in order, again and again, until none changes the graph (at most
    `max_iterations` rounds; hitting the cap is logged, not an error)."""

    passes: list[Pass]
    max_iterations: int = 8
    name: str = "fixed-point"


PipelineItem = Pass | FixedPoint
_PIPELINES: dict[str, Callable[[], list[PipelineItem]]] = {}


def register_pipeline(name: str, factory: Callable[[], list[PipelineItem]]) -> None:
    """Register a named pipeline; `factory` builds fresh pass instances each time."""
    _PIPELINES[name] = factory


def pipeline_names() -> list[str]:
    _load_builtin_and_plugins()
    return sorted(_PIPELINES)


def _split_top_level(spec: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in spec:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _parse_options(name: str, body: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in _split_top_level(body):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise PassError(f"pipeline entry {name}({body}): expected key=value, got {item!r}")
        try:
            value: Any = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        options[key.strip().replace("-", "_")] = value
    return options


def parse_pipeline(spec: str | Sequence[PipelineItem | str]) -> list[PipelineItem]:
    """Turn a spec like "cleanup,fuse-attention,fold-constants(max_bytes=1024)" into items.

    Names are passes or named pipelines ("cleanup", "fusion", "default"); options in
    parentheses set pass fields. A list may mix names and Pass/FixedPoint objects.
    """
    _load_builtin_and_plugins()
    entries = _split_top_level(spec) if isinstance(spec, str) else list(spec)
    items: list[PipelineItem] = []
    for entry in entries:
        if isinstance(entry, (Pass, FixedPoint)):
            items.append(entry)
            continue
        m = re.fullmatch(r"([A-Za-z0-9_\-]+)\s*(?:\((.*)\))?", entry.strip(), re.S)
        if m is None:
            raise PassError(f"bad pipeline entry {entry!r}; expected name or name(key=value)")
        name, body = m.group(1), m.group(2)
        if name in _PIPELINES:
            if body:
                raise PassError(f"pipeline {name!r} takes no options")
            items.extend(_PIPELINES[name]())
        else:
            items.append(get_pass(name, **_parse_options(name, body or "")))
    return items


# ------------------------------------------------------------------ instrumentation


@dataclass
class Instrumentation:
    """What the PassManager checks and records; each switch is independent.

    - `verify`: run `verify(graph)` after every pass that changed something.
    - `timing`: time each pass.
    - `dump_dir`: write the IR before/after each changing pass there (`NN-name.before.txt`).
    - `ledger`: record node count and parameter bytes before and after each pass.
    - `differential`: after each changing pass, run the reference interpreter on
      `sample_inputs` (made up from the input types when None) and compare to the previous
      stage, exactly or within the pass's `tolerance`.
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
    return int(sum(int(v.const_value.nbytes) for v in graph.constants.values()))  # type: ignore[union-attr]


def sample_inputs_for(
    graph: Graph, symbol_values: Mapping[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic random inputs for `graph`: floats ~N(0,1), ints in [0, 3), random bools.

    Symbolic dims take `symbol_values[name]`, else 2, 3, 4, ... in order of appearance.
    """
    rng = np.random.default_rng(seed)
    env: dict[str, int] = dict(symbol_values or {})
    counter = 2
    feeds: dict[str, np.ndarray] = {}
    for v in graph.inputs:
        dims: list[int] = []
        for d in v.shape:
            if isinstance(d, int):
                dims.append(d)
                continue
            if symbolic.is_symbol_name(d) and d not in env:
                env[d] = counter
                counter += 1
            dims.append(int(symbolic.evaluate(d, env)))
        feeds[v.name] = _random_array(rng, v.dtype, tuple(dims))
    return feeds


def _random_array(rng: np.random.Generator, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == DType.BOOL:
        return rng.random(shape) < 0.5
    if dtype.is_float:
        return rng.standard_normal(shape).astype(dtype.numpy)
    if dtype == DType.STRING:
        return np.full(shape, "a", dtype=object)
    return rng.integers(0, 3, size=shape).astype(dtype.numpy)


def compare_arrays(
    expected: np.ndarray, actual: np.ndarray, tolerance: tuple[float, float] | None
) -> str | None:
    """None if `actual` matches `expected` (bit for bit, or within (rtol, atol)); else why."""
    if expected.dtype != actual.dtype:
        return f"dtype {actual.dtype} != {expected.dtype}"
    if expected.shape != actual.shape:
        return f"shape {list(actual.shape)} != {list(expected.shape)}"
    if expected.dtype == object:
        return None if bool(np.all(expected == actual)) else "string contents differ"
    if tolerance is None or not DType.from_numpy(expected.dtype).is_float:
        a = np.ascontiguousarray(expected).view(np.uint8)
        b = np.ascontiguousarray(actual).view(np.uint8)
        if a.tobytes() == b.tobytes():
            return None
        if DType.from_numpy(expected.dtype).is_float:
            # Bit-different NaN payloads still count as equal.
            e, g = expected.astype(np.float64), actual.astype(np.float64)
            same = (e == g) & (np.signbit(e) == np.signbit(g)) | (np.isnan(e) & np.isnan(g))
            if bool(np.all(same)):
                return None
            at = tuple(int(i) for i in np.argwhere(~same)[0])
            return f"not bit-identical: at {at} {g[at]!r} != {e[at]!r}"
        return "not bit-identical"
    rtol, atol = tolerance
    if DType.from_numpy(expected.dtype).bitwidth <= 16:
        rtol, atol = max(rtol, 1e-2), max(atol, 1e-2)
    e, g = expected.astype(np.float64), actual.astype(np.float64)
    with np.errstate(all="ignore"):
        close = np.isclose(g, e, rtol=rtol, atol=atol) | (np.isnan(e) & np.isnan(g))
    if bool(np.all(close)):
        return None
    bad = tuple(int(i) for i in np.argwhere(~close)[0])
    err = float(np.nanmax(np.abs(g - e)))
    return f"max abs error {err:.3g} > rtol={rtol} atol={atol} (first at {bad})"


# -------------------------------------------------------------------- the manager


class PassManager:
    """Runs pipeline items in order with instrumentation. See the module docstring.

    `auto_requires`: run the registered provider of a missing `requires` property first
    (recorded as an automatic run); when False a missing property is a PassError.
    """

    def __init__(
        self,
        pipeline: str | Sequence[PipelineItem | str],
        instrumentation: Instrumentation | None = None,
        *,
        auto_requires: bool = True,
    ) -> None:
        self.items = parse_pipeline(pipeline)
        self.instrumentation = instrumentation or Instrumentation()
        self.auto_requires = auto_requires
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
        if inst.differential:
            self._feeds = dict(inst.sample_inputs or {}) or sample_inputs_for(
                graph, inst.symbol_values, inst.seed
            )
            self._reference = self._outputs(graph)
        changed = False
        for item in self.items:
            changed |= self._run_item(graph, item)
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
        if inst.ledger:
            record.nodes_before, record.param_bytes_before = len(graph.nodes), param_bytes(graph)
        before_text = str(graph) if inst.dump_dir is not None else None
        before_copy = graph.copy() if inst.differential else None
        fingerprint = _fingerprint(graph) if inst.verify else None
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
        if fingerprint is not None and not result.changed and _fingerprint(graph) != fingerprint:
            raise PassError(
                f"pass {p.describe()} reported changed=False but edited the graph; "
                "`changed` must be honest (the manager skips checks on unchanged graphs)"
            )
        if inst.timing:
            record.seconds = time.perf_counter() - start
        record.changed = result.changed
        record.result = result
        if inst.ledger:
            record.nodes_after, record.param_bytes_after = len(graph.nodes), param_bytes(graph)
        self._records.append(record)
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
        outputs = self._outputs(after)
        problems = []
        for key, expected in self._reference.items():
            why = compare_arrays(expected, outputs[key], p.tolerance)
            if why is not None:
                problems.append(f"output {key} (%{after.outputs[int(key)].name}): {why}")
        if not problems:
            # Compare against the previous stage next time: tolerances do not accumulate
            # silently, each pass is judged on its own change.
            self._reference = outputs
            return
        node, detail = first_diverging_node(before, after, self._feeds or {}, p.tolerance)
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
    """A cheap structural summary (constants by identity, not bytes) to catch a pass that
    edits the graph but reports changed=False."""
    from ecograph.ir.text import node_to_text

    return (
        tuple((v.name, v.type) for v in graph.inputs),
        tuple(v.name for v in graph.outputs),
        tuple((v.name, v.type, id(v.const_value)) for v in graph.constants.values()),
        tuple(node_to_text(n) for n in graph.nodes),
        repr(sorted(graph.metadata.items())),
    )


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and a rename, so readers never see half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _has_node(graph: Graph, name: str) -> bool:
    return any(n.name == name for n in graph.nodes)


def first_diverging_node(
    before: Graph,
    after: Graph,
    feeds: Mapping[str, np.ndarray],
    tolerance: tuple[float, float] | None,
) -> tuple[str | None, str]:
    """Bisect to the first node of `after` (in order) whose output differs from the value of
    the same name in `before` (values that exist in both graphs are compared)."""
    try:
        a = interpret(before, dict(feeds), keep_all=True)
        b = interpret(after, dict(feeds), keep_all=True)
    except Exception as exc:
        return None, f"could not bisect: {exc}"
    for node in after.nodes:
        for out in node.outputs:
            if out.name in a and out.name in b:
                why = compare_arrays(a[out.name], b[out.name], tolerance)
                if why is not None:
                    return node.name, f"%{out.name}: {why}"
    # No value of the same name differs: blame the first new or edited node on the path to
    # a diverging output.
    ancestors: set[int] = set()
    stack = list(after.outputs)
    while stack:
        v = stack.pop()
        if v.producer is not None and id(v.producer) not in ancestors:
            ancestors.add(id(v.producer))
            stack.extend(x for x in v.producer.inputs if x is not None)
    old_nodes = {n.name: n for n in before.nodes}
    for node in after.nodes:
        if id(node) not in ancestors:
            continue
        old = old_nodes.get(node.name)
        if old is None:
            return node.name, f"new node {node.qualified_op}"
        if old.qualified_op != node.qualified_op or old.attrs != node.attrs:
            return node.name, f"edited node: was {old.qualified_op}, now {node.qualified_op}"
    return None, "no value shared by both graphs differs"


def extract_cone(graph: Graph, value_names: Iterable[str]) -> Graph:
    """A copy of `graph` that computes only `value_names` (their backward cone)."""
    g = graph.copy()
    g.set_outputs([g.value(n) for n in value_names])
    for node in reversed(list(g.nodes)):
        if not any(o.has_uses() for o in node.outputs):
            g.remove_node(node)
    for c in list(g.constants.values()):
        if not c.has_uses():
            g.remove_constant(c)
    return g


def bisect_pipeline(
    graph: Graph,
    pipeline: str | Sequence[PipelineItem | str],
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


def run_passes(
    graph: Graph,
    pipeline: str | Sequence[PipelineItem | str] = "default",
    instrumentation: Instrumentation | None = None,
) -> PipelineResult:
    """Run a pipeline on `graph` in place (a convenience wrapper around PassManager)."""
    return PassManager(pipeline, instrumentation).run(graph)


def value_bytes(value: Value) -> int | None:
    return value.type.nbytes()
