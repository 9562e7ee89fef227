"""Importance of a group's units: which heads, channels, FFN rows or layers matter least.

- `magnitude(group, p)`: the Lp norm of every weight slice a unit owns (across all the
  contractions of the group: the up and gate projections' columns and the down projection's
  rows of an FFN unit, for example).
- `wanda(group, norms)`: Wanda's |W|·‖X‖ (Sun et al., 2023): each weight element times the L2
  norm, over calibration data, of the input feature it multiplies; summed per unit.
- `block_influence(graph, layers, calibration)`: per residual branch, 1 - cos(input, output)
  of the hidden states around what would be removed (its Add, or the norm after it when the
  group takes that along; ShortGPT's block influence), averaged over tokens.

Scores are float64 arrays of `group.size` (one per unit); low means prunable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ecograph.ir.graph import Graph, Node
from ecograph.ir.interpreter import interpret
from ecograph.prune.groups import Group, Member, PruningError
from ecograph.prune.tokens import real_rows, token_mask, token_rows

Feeds = Mapping[str, np.ndarray]
IMPORTANCES = ("l1", "l2", "wanda")


def _per_unit(member: Member, size: int, arr: np.ndarray) -> np.ndarray:
    """`arr` (shaped like the member's tensor) summed over each unit's slice."""
    seg = np.take(arr, np.arange(member.start, member.stop), axis=member.axis)
    return np.moveaxis(seg, member.axis, 0).reshape(size, -1).sum(axis=1)


def magnitude(group: Group, p: int = 2) -> np.ndarray:
    """Lp norm of each unit's weight slices (all contraction weights of the group)."""
    if p not in (1, 2):
        raise PruningError(f"magnitude: p must be 1 or 2, got {p}")
    weights = group.weights
    if not weights:
        raise PruningError(f"{group.name}: no weights to score")
    score = np.zeros(group.size, np.float64)
    for m in weights:
        w = np.abs(np.asarray(m.value.const_value, np.float64))
        score += _per_unit(m, group.size, w**p)
    return score ** (1.0 / p)


def _feature_axis(node: Node) -> int | None:
    """The axis of input 0 whose features a constant weight (input 1) multiplies."""
    x = node.inputs[0]
    if x is None or x.const_value is not None:
        return None
    if node.op_type in ("MatMul", "Linear"):
        return x.type.rank - 1
    if node.op_type == "Gemm":
        return 0 if int(node.attr("transA") or 0) else 1
    if node.op_type == "Conv":
        return 1
    return None


def activation_norms(
    graph: Graph, nodes: Iterable[Node], calibration: Sequence[Feeds], mask: str | None = None
) -> dict[int, np.ndarray]:
    """Per contraction node (by id): the L2 norm over `calibration` of each input feature of
    its activation (input 0), as Wanda uses it. `mask`: the graph input holding a token mask
    (see prune/tokens.py); padding rows then do not count."""
    targets = {id(n): n for n in nodes if _feature_axis(n) is not None}
    if not calibration:
        raise PruningError("activation-aware importance needs calibration feeds (a list of dicts)")
    names = sorted({n.inputs[0].name for n in targets.values()})  # type: ignore[union-attr]
    sumsq: dict[int, np.ndarray] = {}
    for feeds in calibration:
        values = interpret(graph, feeds, outputs=names)
        keep = token_mask(feeds, mask)
        for key, node in targets.items():
            x = np.asarray(values[node.inputs[0].name], np.float64)  # type: ignore[union-attr]
            axis = _feature_axis(node)
            assert axis is not None
            rows = real_rows(x.shape, keep) if axis == x.ndim - 1 else None
            if rows is not None:
                x = x.reshape(-1, x.shape[-1])[rows]
                axis = 1
            other = tuple(a for a in range(x.ndim) if a != axis)
            part = (x * x).sum(axis=other)
            sumsq[key] = sumsq[key] + part if key in sumsq else part
    return {k: np.sqrt(v) for k, v in sumsq.items()}


def _scaled_weight(member: Member, norms: Mapping[int, np.ndarray]) -> np.ndarray:
    """|W| times the norm of the input feature each element multiplies (|W| when unknown)."""
    node = member.node
    assert node is not None
    w = np.abs(np.asarray(member.value.const_value, np.float64))
    n = norms.get(id(node))
    if n is None or member.input_index != 1:
        return w
    if node.op_type in ("MatMul", "Linear"):
        return w * n.reshape((-1, 1))
    if node.op_type == "Gemm":
        return w * (n.reshape((1, -1)) if int(node.attr("transB") or 0) else n.reshape((-1, 1)))
    if node.op_type == "Conv":
        shape = [1] * w.ndim
        group = int(node.attr("group") or 1)
        if group == 1:
            shape[1] = -1
            return w * n.reshape(shape)
        if w.shape[1] == 1 and group == w.shape[0] == n.shape[0]:
            shape[0] = -1
            return w * n.reshape(shape)
    return w


def wanda(group: Group, norms: Mapping[int, np.ndarray]) -> np.ndarray:
    """Sum over each unit's weight slices of |W|·‖X‖ (`norms` from `activation_norms`)."""
    weights = group.weights
    if not weights:
        raise PruningError(f"{group.name}: no weights to score")
    score = np.zeros(group.size, np.float64)
    for m in weights:
        score += _per_unit(m, group.size, _scaled_weight(m, norms))
    return score


def score_groups(
    graph: Graph,
    groups: Sequence[Group],
    importance: str,
    calibration: Sequence[Feeds] | None = None,
    mask: str | None = None,
) -> list[np.ndarray]:
    """One score array per group, by `importance` ("l1", "l2" or "wanda"; `mask` as in
    `activation_norms`)."""
    if importance == "l1":
        return [magnitude(g, 1) for g in groups]
    if importance == "l2":
        return [magnitude(g, 2) for g in groups]
    if importance == "wanda":
        nodes = [m.node for g in groups for m in g.weights if m.node is not None]
        norms = activation_norms(graph, nodes, calibration or [], mask)
        return [wanda(g, norms) for g in groups]
    raise PruningError(f"unknown importance {importance!r}; choose one of {IMPORTANCES}")


def block_influence(
    graph: Graph, layers: Sequence[Group], calibration: Sequence[Feeds], mask: str | None = None
) -> np.ndarray:
    """Per layer group: 1 - cos(skip, output) over the last axis, averaged over every token
    (row) of every calibration batch (the real tokens only with a `mask`, as in
    `activation_norms`); the output is skip + f(skip), or its norm when the group takes the
    norm along (`Group.output`). Low: the branch barely changes the stream."""
    if not calibration:
        raise PruningError("block influence needs calibration feeds (a list of dicts)")
    names: list[str] = []
    for g in layers:
        if g.output is None or g.skip is None:
            raise PruningError(f"{g.name} is not a layer group")
        names += [g.skip.name, g.output.name]
    totals = np.zeros(len(layers), np.float64)
    rows = 0
    for feeds in calibration:
        values = interpret(graph, feeds, outputs=sorted(set(names)))
        keep = token_mask(feeds, mask)
        batch_rows = 0
        for i, g in enumerate(layers):
            assert g.output is not None and g.skip is not None
            x = np.asarray(values[g.skip.name], np.float64)
            y = np.asarray(values[g.output.name], np.float64)
            tokens = keep if y.shape == x.shape else None
            x2 = token_rows(x, tokens) if x.ndim else x.reshape(1, 1)
            y2 = token_rows(y, tokens) if y.ndim else y.reshape(1, 1)
            den = np.linalg.norm(x2, axis=1) * np.linalg.norm(y2, axis=1)
            cos = np.where(den > 0, (x2 * y2).sum(axis=1) / np.where(den > 0, den, 1.0), 1.0)
            totals[i] += (1.0 - cos).sum()
            batch_rows = x2.shape[0]
        rows += batch_rows
    return totals / max(rows, 1)
