"""Declarative rewrite patterns over the IR, two drivers, and `explain` for near misses.

    x = Var("x")
    gelu = Pattern("gelu-erf", Op("Mul", Op("Mul", x, Const(value=0.5)),
                                  Op("Add", Op("Erf", Op("Div", x, Const(value=SQRT2, rel=1e-4))),
                                     Const(value=1.0))))
    rule = Rule(gelu, lambda graph, m: graph.add_node("Gelu", [m["x"]], before=m.root).output)
    apply_greedy(graph, [rule])

- `Op(op_type, *inputs, attrs=..., name=..., where=...)` matches a node; `op_type` may be a
  tuple of alternatives. Operands of two-input commutative ops (`OpSchema.commutative`: Add,
  Mul, ...) match in either order.
- `Var(name)` matches any value and captures it; a name used twice must bind the same value.
- `Const(name, value=, rel=)` matches a constant (all elements equal `value`, if given).
- Every matched node except the root must be single-use: all users of its outputs are inside
  the match and it is not a graph output, so a fusion never computes a value twice or drops a
  value someone else needs. `Op(..., single_use=False)` lifts that for one node (the node then
  stays alive for its other users).
- Predicates (`where=`) return True/False or a string: the reason they failed.

`explain(pattern, graph)` lists near misses: nodes where the root op matched but a later
constraint failed, with the constraint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.registry import lookup_schema
from ecograph.passes.core import Pass, PassResult
from ecograph.passes.utils import can_replace, remove_dead

Predicate = Callable[..., "bool | str | None"]


class Pat:
    """Base of pattern elements."""

    def describe(self) -> str:
        raise NotImplementedError


class Var(Pat):
    """Any value; captured as `name` (a repeated name must bind the same value)."""

    def __init__(self, name: str | None = None, where: Predicate | None = None) -> None:
        self.name = name
        self.where = where

    def describe(self) -> str:
        return f"${self.name or '_'}"


class Const(Pat):
    """A constant value; with `value`, every element must equal it (relative tolerance `rel`)."""

    def __init__(
        self,
        name: str | None = None,
        *,
        value: float | None = None,
        rel: float = 0.0,
        where: Predicate | None = None,
    ) -> None:
        self.name = name
        self.value = value
        self.rel = rel
        self.where = where

    def describe(self) -> str:
        return f"const({self.value})" if self.value is not None else f"const ${self.name or '_'}"


class Op(Pat):
    """A node of `op_type` (or one of a tuple of op types) with the given input patterns."""

    def __init__(
        self,
        op_type: str | tuple[str, ...],
        *inputs: Pat,
        attrs: dict[str, Any] | None = None,
        domain: str = "",
        name: str | None = None,
        commutative: bool | None = None,
        single_use: bool = True,
        where: Predicate | None = None,
        output: int = 0,
        extra_inputs: bool = False,
    ) -> None:
        self.op_types = (op_type,) if isinstance(op_type, str) else tuple(op_type)
        self.inputs = inputs
        self.attrs = dict(attrs or {})
        self.domain = domain
        self.name = name
        self.commutative = (
            commutative
            if commutative is not None
            else (len(inputs) == 2 and all(_is_commutative(t, domain) for t in self.op_types))
        )
        self.single_use = single_use
        self.where = where
        self.output = output
        self.extra_inputs = extra_inputs

    def describe(self) -> str:
        op = "|".join(self.op_types)
        return f"{op}({', '.join(p.describe() for p in self.inputs)})"


def _is_commutative(op_type: str, domain: str) -> bool:
    """The registry's fact (`OpSchema.commutative`); an unregistered op is not commutative."""
    schema = lookup_schema(op_type, domain)
    return schema is not None and schema.commutative


@dataclass
class Pattern:
    """A named pattern rooted at an Op, with an optional whole-match predicate."""

    name: str
    root: Op
    where: Callable[[Match], bool | str | None] | None = None


class Match:
    """A successful match: captures by name (`m["x"]`), the root node and all matched nodes."""

    def __init__(self, pattern: Pattern, captures: dict[str, Any], nodes: list[Node]) -> None:
        self.pattern = pattern
        self.captures = captures
        self.nodes = nodes

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def __getitem__(self, name: str) -> Any:
        return self.captures[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.captures.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in self.captures


@dataclass(order=True)
class NearMiss:
    """Where a pattern almost matched: how many ops matched and which constraint failed."""

    progress: int
    node: str = field(compare=False)
    pattern: str = field(compare=False)
    reason: str = field(compare=False)

    def __str__(self) -> str:
        return f"{self.pattern} at {self.node}: {self.progress} op(s) matched, then {self.reason}"


class _Trace:
    def __init__(self) -> None:
        self.best: tuple[int, str] = (-1, "")

    def fail(self, progress: int, reason: str) -> None:
        if progress > self.best[0]:
            self.best = (progress, reason)


def _check(pred: Predicate | None, *args: Any) -> str | None:
    if pred is None:
        return None
    try:
        ok = pred(*args)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"predicate raised {type(exc).__name__}: {exc}"
    if ok is True or ok is None:
        return None
    if isinstance(ok, str):
        return ok
    return f"predicate {getattr(pred, '__name__', 'where')} is false"


_State = tuple[dict[str, Any], list[Node]]


def _match_value(pat: Pat, value: Value | None, state: _State, trace: _Trace) -> Iterator[_State]:
    caps, nodes = state
    if value is None:
        trace.fail(len(nodes), f"{pat.describe()}: input is absent")
        return
    if isinstance(pat, Var):
        if pat.name is not None and pat.name in caps and caps[pat.name] is not value:
            trace.fail(
                len(nodes), f"${pat.name} bound to %{caps[pat.name].name}, not %{value.name}"
            )
            return
        why = _check(pat.where, value)
        if why is not None:
            trace.fail(len(nodes), f"${pat.name}: {why}")
            return
        yield ({**caps, pat.name: value} if pat.name else caps), nodes
        return
    if isinstance(pat, Const):
        if value.const_value is None:
            trace.fail(len(nodes), f"%{value.name} is not a constant ({pat.describe()})")
            return
        if pat.value is not None and not _all_equal(value.const_value, pat.value, pat.rel):
            trace.fail(len(nodes), f"constant %{value.name} is not all {pat.value}")
            return
        if pat.name is not None and pat.name in caps and caps[pat.name] is not value:
            trace.fail(len(nodes), f"${pat.name} bound to another constant")
            return
        why = _check(pat.where, value)
        if why is not None:
            trace.fail(len(nodes), f"constant %{value.name}: {why}")
            return
        yield ({**caps, pat.name: value} if pat.name else caps), nodes
        return
    assert isinstance(pat, Op)
    node = value.producer
    if node is None:
        trace.fail(len(nodes), f"%{value.name} is not produced by {'|'.join(pat.op_types)}")
        return
    if value.index != pat.output:
        trace.fail(len(nodes), f"%{value.name} is output {value.index} of {node.name}")
        return
    yield from _match_node(pat, node, state, trace)


def _match_node(pat: Op, node: Node, state: _State, trace: _Trace) -> Iterator[_State]:
    caps, nodes = state
    if node.op_type not in pat.op_types or node.domain != pat.domain:
        trace.fail(
            len(nodes), f"node {node.name} is {node.qualified_op}, not {'|'.join(pat.op_types)}"
        )
        return
    if pat.name is not None and caps.get(pat.name) is node:
        yield caps, nodes  # the same named sub-pattern reached again (a shared value)
        return
    if any(n is node for n in nodes):
        trace.fail(len(nodes), f"node {node.name} would be matched twice")
        return
    n_in = len(node.inputs)
    if n_in < len(pat.inputs) or (n_in > len(pat.inputs) and not pat.extra_inputs):
        trace.fail(len(nodes), f"node {node.name} has {n_in} inputs, pattern {len(pat.inputs)}")
        return
    for key, want in pat.attrs.items():
        have = node.attr(key)
        ok = want(have) if callable(want) else _attr_equal(have, want)
        if not ok:
            trace.fail(len(nodes), f"node {node.name}: attribute {key}={have!r}, want {want!r}")
            return
    if pat.name is not None:
        if pat.name in caps and caps[pat.name] is not node:
            trace.fail(len(nodes), f"${pat.name} bound to another node")
            return
        caps = {**caps, pat.name: node}
    nodes = [*nodes, node]
    why = _check(pat.where, node)
    if why is not None:
        trace.fail(len(nodes), f"node {node.name}: {why}")
        return
    orders: list[Sequence[int]] = [range(len(pat.inputs))]
    if pat.commutative:
        orders.append([1, 0])
    for order in orders:
        yield from _match_inputs(pat, node, list(order), 0, (caps, nodes), trace)


def _match_inputs(
    pat: Op, node: Node, order: list[int], k: int, state: _State, trace: _Trace
) -> Iterator[_State]:
    if k == len(pat.inputs):
        yield state
        return
    sub = pat.inputs[k]
    for st in _match_value(sub, node.input(order[k]), state, trace):
        yield from _match_inputs(pat, node, order, k + 1, st, trace)


def _all_equal(arr: np.ndarray, target: float, rel: float) -> bool:
    a = np.asarray(arr)
    if a.size == 0 or a.dtype == object or a.dtype == np.bool_:
        return False
    flat = a.reshape(-1).astype(np.float64)
    if rel == 0.0:
        return bool(np.all(flat == target))
    return bool(np.all(np.abs(flat - target) <= rel * abs(target)))


def _attr_equal(have: Any, want: Any) -> bool:
    if isinstance(have, (list, tuple)) and isinstance(want, (list, tuple)):
        return list(have) == list(want)
    return bool(have == want)


def _escapes(pat: Op, nodes: list[Node], caps: dict[str, Any]) -> str | None:
    """Why a matched intermediate is used outside the match (None if nothing escapes)."""
    inside = {id(n) for n in nodes}
    lifted = {id(n) for n in _lifted_nodes(pat, caps)}
    for n in nodes[1:]:
        if id(n) in lifted:
            continue
        for out in n.outputs:
            if out.is_graph_output:
                return f"intermediate %{out.name} ({n.name}) is a graph output"
            for use in out.uses:
                if id(use.node) not in inside:
                    return f"intermediate %{out.name} ({n.name}) has another user {use.node.name}"
    return None


def _lifted_nodes(pat: Pat, caps: dict[str, Any]) -> list[Node]:
    out: list[Node] = []
    if isinstance(pat, Op):
        if not pat.single_use and pat.name is not None and pat.name in caps:
            out.append(caps[pat.name])
        for p in pat.inputs:
            out.extend(_lifted_nodes(p, caps))
    return out


def match(pattern: Pattern, node: Node, trace: _Trace | None = None) -> Match | None:
    """The first match of `pattern` rooted at `node`, or None."""
    trace = trace if trace is not None else _Trace()
    for caps, nodes in _match_node(pattern.root, node, ({}, []), trace):
        why = _escapes(pattern.root, nodes, caps)
        if why is not None:
            trace.fail(len(nodes), why)
            continue
        m = Match(pattern, caps, nodes)
        why = _check(pattern.where, m)
        if why is not None:
            trace.fail(len(nodes), why)
            continue
        return m
    return None


def explain(pattern: Pattern, graph: Graph, min_progress: int = 1) -> list[NearMiss]:
    """Near misses of `pattern` in `graph`, best first: nodes whose op matched the root and
    at least `min_progress` ops matched, with the constraint that failed."""
    misses: list[NearMiss] = []
    for node in graph.nodes:
        if node.op_type not in pattern.root.op_types:
            continue
        trace = _Trace()
        if match(pattern, node, trace) is not None:
            continue
        progress, reason = trace.best
        if progress >= min_progress:
            misses.append(NearMiss(progress, node.name, pattern.name, reason))
    return sorted(misses, reverse=True)


# ------------------------------------------------------------------------ drivers

RewriteFn = Callable[[Graph, Match], "Value | str | None"]


@dataclass
class Rule:
    """A pattern and its rewrite. The rewrite adds nodes (before `m.root`) and returns the
    value that replaces the root's output, or a string (the reason it declines) / None."""

    pattern: Pattern
    rewrite: RewriteFn


@dataclass
class RewriteStats:
    applied: dict[str, int] = field(default_factory=dict)
    declined: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.applied.values())


def _try_rule(graph: Graph, rule: Rule, node: Node, stats: RewriteStats) -> bool:
    m = match(rule.pattern, node)
    if m is None:
        return False
    root_out = m.root.outputs[rule.pattern.root.output]
    before = {id(n) for n in graph.nodes} if root_out.is_graph_output else None
    result = rule.rewrite(graph, m)
    if not isinstance(result, Value) or not can_replace(root_out, result):
        reason = result if isinstance(result, str) else "the rewrite cannot replace the output"
        stats.declined.append(f"{rule.pattern.name} at {node.name}: {reason}")
        if before is not None:
            remove_dead(graph, [n for n in graph.nodes if id(n) not in before])
        return False
    old_name = root_out.name
    was_output = root_out.is_graph_output
    graph.replace_all_uses_with(root_out, result)
    remove_dead(graph, m.nodes)
    if was_output and not graph.has_value(old_name):
        graph.rename_value(result, old_name)
    stats.applied[rule.pattern.name] = stats.applied.get(rule.pattern.name, 0) + 1
    return True


def apply_once(graph: Graph, rules: Sequence[Rule]) -> RewriteStats:
    """Single-walk driver: visit each node once (last to first, so larger patterns rooted
    further down win) and apply the first rule that matches there."""
    stats = RewriteStats()
    for node in reversed(graph.nodes):
        if node.is_removed:
            continue
        for rule in rules:
            if node.op_type in rule.pattern.root.op_types and _try_rule(graph, rule, node, stats):
                break
    return stats


def apply_greedy(graph: Graph, rules: Sequence[Rule], max_iterations: int = 50) -> RewriteStats:
    """Greedy fixed-point driver: walk again until no rule applies (at most `max_iterations`)."""
    total = RewriteStats()
    for _ in range(max_iterations):
        stats = apply_once(graph, rules)
        for k, v in stats.applied.items():
            total.applied[k] = total.applied.get(k, 0) + v
        total.declined = stats.declined
        if not stats.applied:
            break
    return total


# -------------------------------------------------------------- pattern-based passes


class RewritePass(Pass):
    """Base for passes that are a list of rules run by the greedy driver.

    Subclasses implement `rules()`. The result counts applications per pattern and lists
    near misses (at least `near_miss_progress` ops matched) as notes for the fusion report.
    """

    near_miss_progress: ClassVar[int] = 2

    def rules(self) -> list[Rule]:
        raise NotImplementedError

    def run(self, graph: Graph) -> PassResult:
        rules = self.rules()
        stats = apply_greedy(graph, rules)
        notes = [f"declined: {d}" for d in stats.declined]
        seen: set[str] = set()
        # Near misses with the same pattern and reason are reported once, with a count.
        grouped: dict[tuple[str, str], list[NearMiss]] = {}
        for rule in rules:
            size = _op_count(rule.pattern.root)
            threshold = max(self.near_miss_progress, (size + 1) // 2)
            for miss in explain(rule.pattern, graph, threshold):
                if miss.node in seen:
                    continue
                seen.add(miss.node)
                reason = re.sub(r"%\S+|\bnode \S+", "…", miss.reason)
                grouped.setdefault((miss.pattern, reason), []).append(miss)
        for misses in grouped.values():
            first = misses[0]
            more = f" (and {len(misses) - 1} more like it)" if len(misses) > 1 else ""
            notes.append(f"near miss: {first}{more}")
        counts = {"fused": stats.total} if stats.total else {}
        return PassResult(stats.total > 0, counts, notes)


def _op_count(pat: Pat) -> int:
    if not isinstance(pat, Op):
        return 0
    return 1 + sum(_op_count(p) for p in pat.inputs)
