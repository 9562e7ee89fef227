"""Least-squares reconstruction after structured pruning.

When a group loses units, every contraction that reads those units as input features (an
FFN's down projection, attention's output projection) computes its output from fewer
features. Its weight and bias are refit on calibration data so that its output, from the
pruned graph's activations, is as close as possible in least squares to the unpruned
graph's output (the layer-wise reconstruction of Kwon et al., 2022, "A Fast Post-Training
Pruning Framework for Transformers"):

    W', b' = argmin  sum over rows ||X_s W' + b' - (X W + b)||^2 + lam ||W' - W_s||^2

X_s is the pruned graph's input to the contraction (the kept features, with every earlier
contraction already refit, so errors do not compound), X the unpruned graph's, W_s the
sliced weight and lam = damp x the mean diagonal of X_s^T X_s: a large damp keeps the sliced
weight, 0 is plain least squares. One solve per contraction, in graph order, in float64.
The bias is refit where the contraction has one (Linear's or Gemm's third input, or a
constant Add right after a MatMul); elsewhere the weight alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ecograph.ir.graph import Graph, Node
from ecograph.ir.interpreter import interpret
from ecograph.prune.groups import Group, PruningError
from ecograph.prune.tokens import token_mask, token_rows

Feeds = Mapping[str, np.ndarray]
Plan = Sequence[tuple[Group, Sequence[int]]]
DAMP = 0.1  # ridge term towards the sliced weight, relative to the mean diagonal of X_s^T X_s


@dataclass(frozen=True)
class Refit:
    """A contraction whose input features were pruned: `kept` are the positions, along its
    weight's input axis in the unpruned graph, that stay."""

    node: str
    kept: tuple[int, ...]


def _k_axis(node: Node) -> int | None:
    """The axis of the constant weight (input 1) that the activation's last axis multiplies,
    for contractions whose activation (input 0) carries its features last."""
    w, x = node.inputs[1], node.inputs[0]
    if w is None or w.const_value is None or x is None or x.const_value is not None:
        return None
    if w.type.rank != 2:
        return None
    if node.op_type in ("MatMul", "Linear") and node.domain in ("", "ecograph"):
        return 0
    if node.op_type == "Gemm" and not int(node.attr("transA") or 0):
        scaled = any(node.attr(a) not in (None, 1.0) for a in ("alpha", "beta"))
        return None if scaled else (1 if int(node.attr("transB") or 0) else 0)
    return None


def refit_targets(plan: Plan) -> list[Refit]:
    """The contractions of `plan`'s groups that lose input features over a whole axis (a
    segment of an axis, as in a fused QKV weight, is not refit)."""
    found: dict[str, Refit] = {}
    for group, kept in plan:
        units = sorted({int(u) for u in kept})
        if len(units) == group.size:
            continue
        for m in group.weights:
            node = m.node
            assert node is not None
            if m.input_index != 1 or _k_axis(node) != m.axis:
                continue
            if m.start != 0 or m.stop != m.value.shape[m.axis]:
                continue
            found.setdefault(node.name, Refit(node.name, tuple(int(p) for p in m.positions(units))))
    return list(found.values())


def _bias(node: Node) -> tuple[Node, int] | None:
    """Where the contraction's bias lives: (node, input index) of a constant of shape [N]."""
    w = node.inputs[1]
    assert w is not None
    n = w.shape[0] if node.op_type == "Gemm" and int(node.attr("transB") or 0) else w.shape[1]
    if node.op_type in ("Linear", "Gemm") and len(node.inputs) > 2:
        b = node.inputs[2]
        if b is not None and b.const_value is not None and b.shape == (n,):
            return node, 2
        return None
    users = node.outputs[0].users
    if node.op_type == "MatMul" and len(users) == 1 and users[0].op_type == "Add":
        add = users[0]
        for i, v in enumerate(add.inputs):
            if v is not None and v.const_value is not None and v.shape == (n,):
                return add, i
    return None


def _weight_kn(node: Node) -> np.ndarray:
    w = np.asarray(node.inputs[1].const_value, np.float64)  # type: ignore[union-attr]
    return w.T if _k_axis(node) == 1 else w


def refit(
    original: Graph,
    pruned: Graph,
    targets: Sequence[Refit],
    calibration: Sequence[Feeds],
    damp: float = DAMP,
    mask: str | None = None,
) -> list[str]:
    """Refit each target contraction of `pruned` (see the module docstring) against the same
    node of `original`, the graph before pruning. `mask`: the graph input holding a token
    mask (prune/tokens.py); padding rows are then left out of the fit. Returns one note per
    contraction."""
    if not calibration:
        raise PruningError("reconstruction needs calibration feeds (a list of dicts)")
    order = {n.name: i for i, n in enumerate(pruned.nodes)}
    todo = sorted((t for t in targets if t.node in order), key=lambda t: order[t.node])
    notes = [f"{t.node}: not refit (the node is gone after pruning)" for t in targets
             if t.node not in order]  # fmt: skip
    # The unpruned outputs X W + b of every target, per calibration batch.
    wanted: dict[str, tuple[np.ndarray, np.ndarray | None, str]] = {}
    for t in todo:
        node = original.node(t.node)
        bias = _bias(node)
        b = None
        if bias is not None:
            b = np.asarray(bias[0].inputs[bias[1]].const_value, np.float64)  # type: ignore[union-attr]
        wanted[t.node] = (_weight_kn(node), b, node.inputs[0].name)  # type: ignore[union-attr]
    goals: list[dict[str, np.ndarray]] = []
    for feeds in calibration:
        xs = interpret(original, feeds, outputs=sorted({x for *_, x in wanted.values()}))
        goal = {}
        for name, (w, b, x) in wanted.items():
            y = token_rows(np.asarray(xs[x], np.float64), token_mask(feeds, mask)) @ w
            goal[name] = (y if b is None else y + b).astype(np.float32)
        goals.append(goal)
    for t in todo:
        goals_t = [g[t.node] for g in goals]
        notes.append(_refit_one(pruned, t, calibration, goals_t, damp, mask))
    return notes


def _refit_one(
    graph: Graph,
    target: Refit,
    calibration: Sequence[Feeds],
    goals: list[np.ndarray],
    damp: float,
    mask: str | None,
) -> str:
    node = graph.node(target.node)
    x_name = node.inputs[0].name  # type: ignore[union-attr]
    k = len(target.kept)
    bias = _bias(node)
    cols = k + (bias is not None)
    gram = np.zeros((cols, cols), np.float64)
    cross = np.zeros((cols, goals[0].shape[1]), np.float64)
    rows = 0
    for feeds, goal in zip(calibration, goals, strict=True):
        x = np.asarray(interpret(graph, feeds, outputs=[x_name])[x_name], np.float64)
        x = token_rows(x, token_mask(feeds, mask))
        if bias is not None:
            x = np.hstack([x, np.ones((x.shape[0], 1))])
        gram += x.T @ x
        cross += x.T @ goal
        rows += x.shape[0]
    before = _weight_kn(node)
    diag = np.arange(k)
    reg = damp * max(float(np.mean(gram[diag, diag])), 1e-12)
    gram[diag, diag] += reg
    cross[:k] += reg * before  # the ridge pulls towards the sliced weight, not towards 0
    solution = np.linalg.solve(gram, cross)
    w = solution[:k]
    weight = node.inputs[1]
    assert weight is not None and weight.const_value is not None
    dtype = np.asarray(weight.const_value).dtype
    _replace(graph, node, 1, (w.T if _k_axis(node) == 1 else w).astype(dtype))
    if bias is not None:
        owner, i = bias
        _replace(graph, owner, i, solution[k].astype(dtype))
    change = float(np.linalg.norm(w - before) / max(np.linalg.norm(before), 1e-30))
    return f"{target.node}: refit on {rows} rows ({k} input features, weight changed {change:.1%})"


def _replace(graph: Graph, node: Node, index: int, array: np.ndarray) -> None:
    old = node.inputs[index]
    assert old is not None
    name = old.name.removesuffix("_refit") + "_refit"
    graph.set_node_input(node, index, graph.add_constant(np.ascontiguousarray(array), name))
    if not old.users and not old.is_graph_output:
        graph.remove_constant(old)
