"""Structured pruning passes: prune-ffn, prune-heads, prune-channels, drop-layers and
drop-blocks.

Each removes the least important `ratio` of the units of every prunable group of its kind
(rounded down, at least one unit kept) and physically shrinks the graph. Pruning is lossy:
`min_cosine` (default -1, no budget) is the cosine the PassManager's differential check
demands of the outputs; accuracy belongs to the caller's validation data. A ratio of 0 is an
exact no-op. Running a pass again prunes again (ratio of what is left): these passes are not
idempotent, on purpose. With `reconstruct=True` the pass then refits, on `calibration`, the
weight and bias of each MatMul / Gemm / Linear that lost input features (an FFN's down
projection, attention's output projection; not convs), by least squares against the unpruned
graph (prune/reconstruct.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ecograph.ir.graph import Graph
from ecograph.passes.core import CosineTolerance, Pass, PassResult, Tolerance
from ecograph.passes.registry import register_pass
from ecograph.prune.groups import Group, GroupKind, PruningError, groups, layer_groups
from ecograph.prune.importance import block_influence, score_groups
from ecograph.prune.reconstruct import refit, refit_targets
from ecograph.prune.rewrite import drop_layers, shrink
from ecograph.prune.tokens import mask_input

Feeds = Mapping[str, np.ndarray]


def _check_ratio(name: str, ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise PruningError(f"{name}: ratio must be in [0, 1), got {ratio}")


def units_to_remove(size: int, ratio: float) -> int:
    """floor(ratio · size), keeping at least one unit."""
    return min(math.floor(ratio * size + 1e-9), size - 1)


@dataclass
class _PruneGroups(Pass):
    """Shrink every prunable group of `kind` by `ratio` of its units (least important first)."""

    kind: ClassVar[GroupKind] = "ffn"

    ratio: float = 0.25
    importance: str = "l2"  # "l1", "l2" or "wanda" (needs calibration)
    calibration: Sequence[Feeds] | None = field(default=None, repr=False, compare=False)
    min_cosine: float = -1.0
    # Refit the contractions that lose input features on `calibration` (prune/reconstruct.py).
    reconstruct: bool = False
    # The token-mask input ("auto": attention_mask if the graph has it; None: every row
    # counts): padding rows of the calibration batches count in neither scores nor refit.
    mask: str | None = "auto"

    def numeric_tolerance(self) -> Tolerance:
        return None if self.ratio == 0 else CosineTolerance(self.min_cosine)

    def run(self, graph: Graph) -> PassResult:
        _check_ratio(self.name, self.ratio)
        if self.ratio == 0:
            return PassResult(False)
        found = [g for g in groups(graph, layers=False) if g.kind == self.kind]
        notes = [f"{g.name}: frozen: {g.frozen}" for g in found if g.frozen]
        live = [g for g in found if not g.frozen and units_to_remove(g.size, self.ratio) > 0]
        mask = mask_input(graph, self.mask, self.name)
        scores = score_groups(graph, live, self.importance, self.calibration, mask)
        plan: list[tuple[Group, list[int]]] = []
        for g, score in zip(live, scores, strict=True):
            drop = set(np.argsort(score, kind="stable")[: units_to_remove(g.size, self.ratio)])
            plan.append((g, [u for u in range(g.size) if u not in drop]))
            notes.append(f"{g.name}: {g.size} -> {g.size - len(drop)} units")
        if self.reconstruct and not self.calibration:
            raise PruningError(f"{self.name}: reconstruct=True needs calibration feeds")
        targets = refit_targets(plan) if self.reconstruct else []
        original = graph.copy() if targets else None
        removed = shrink(graph, plan)
        if original is not None and removed:
            notes += refit(original, graph, targets, self.calibration or [], mask=mask)
        stats = {"groups": len(plan), "units_removed": removed} if removed else {}
        return PassResult(removed > 0, stats, notes)


@register_pass
@dataclass
class PruneFFN(_PruneGroups):
    """W_down(act(W_up x)) -> the same with the least important hidden units removed

    FFN groups: a contraction's output features through activations (and a SwiGLU's gate and
    up pair) to the next contraction's input rows."""

    name: ClassVar[str] = "prune-ffn"
    kind: ClassVar[GroupKind] = "ffn"


@register_pass
@dataclass
class PruneHeads(_PruneGroups):
    """Attention(Q, K, V) with H heads -> with fewer heads (Q/K/V columns, output rows)

    With grouped-query attention a unit is a kv head together with its query heads."""

    name: ClassVar[str] = "prune-heads"
    kind: ClassVar[GroupKind] = "heads"


@register_pass
@dataclass
class PruneChannels(_PruneGroups):
    """Conv(Conv(x, W1), W2) -> the same with the least important channels of W1 / rows of W2

    Through BatchNormalization, activations and depthwise convs (which carry the channel)."""

    name: ClassVar[str] = "prune-channels"
    kind: ClassVar[GroupKind] = "channels"


@register_pass
@dataclass
class DropLayers(Pass):
    """Add(x, f(x)) -> x for the least important residual branches f

    A branch, not a layer: in a post-norm model (BERT) the norm after the Add stays, so the
    stream stays normalized (drop-blocks removes whole layers, norms included).
    `importance` is "block-influence" (1 - cos(x, x + f(x)) on calibration data) or "l2" (the
    weight norm of f)."""

    name: ClassVar[str] = "drop-layers"

    ratio: float = 0.25
    importance: str = "block-influence"
    calibration: Sequence[Feeds] | None = field(default=None, repr=False, compare=False)
    min_cosine: float = -1.0
    mask: str | None = "auto"  # the token-mask input, as in prune-ffn

    def numeric_tolerance(self) -> Tolerance:
        return None if self.ratio == 0 else CosineTolerance(self.min_cosine)

    def run(self, graph: Graph) -> PassResult:
        _check_ratio(self.name, self.ratio)
        if self.ratio == 0:
            return PassResult(False)
        found = layer_groups(graph)
        notes = [f"{g.name}: frozen: {g.frozen}" for g in found if g.frozen]
        live = [g for g in found if not g.frozen]
        count = math.floor(self.ratio * len(live) + 1e-9)
        if count == 0:
            return PassResult(False, {}, notes)
        mask = mask_input(graph, self.mask, self.name)
        if self.importance == "block-influence":
            scores = block_influence(graph, live, self.calibration or [], mask)
        elif self.importance == "l2":
            scores = np.array([_branch_norm(g) for g in live])
        else:
            raise PruningError(
                f"drop-layers: unknown importance {self.importance!r}; "
                "choose 'block-influence' or 'l2'"
            )
        targets = [live[i].add.name for i in np.argsort(scores, kind="stable")[:count]]  # type: ignore[union-attr]
        for name in targets:
            # Regroup each time: dropping a branch replaces the next block's skip value.
            (group,) = [g for g in layer_groups(graph) if g.add is not None and g.add.name == name]
            drop_layers(graph, [group])
            notes.append(f"dropped {group.name} ({len(group.nodes)} nodes)")
        return PassResult(True, {"layers_dropped": len(targets)}, notes)


ATTENTION_OPS = frozenset({"Attention", "Softmax", "MultiHeadAttention", "GroupQueryAttention"})


def transformer_blocks(graph: Graph) -> list[list[Group]]:
    """Residual branches (layer groups, in graph order) grouped into transformer blocks: a
    block starts at each branch holding an attention op (Attention, Softmax) and takes the
    branches up to the next one (its FFN). A branch before the first attention branch, and
    every branch of a graph without attention, is a block of its own. A post-norm block's
    norms belong to it (`Group.norm` of its branches), so dropping it drops them too."""
    branches = layer_groups(graph, post_norms=True)
    blocks: list[list[Group]] = []
    for g in branches:
        starts = any(n.op_type in ATTENTION_OPS for n in g.nodes)
        if starts or not blocks or not _has_attention(blocks[-1]):
            blocks.append([g])
        else:
            blocks[-1].append(g)
    return blocks


def _has_attention(block: list[Group]) -> bool:
    return any(n.op_type in ATTENTION_OPS for n in block[0].nodes)


@register_pass
@dataclass
class DropBlocks(Pass):
    """block(x) -> x for the least influential transformer blocks (attention and FFN branches)

    `ratio` is of transformer blocks (see `transformer_blocks`): 0.5 of a 6-block BERT drops
    3 blocks, i.e. 6 residual branches with their LayerNorms, leaving the model as if those
    layers were deleted. Blocks are chosen by block influence (1 - cos of the block's input
    and output hidden states on `calibration`), least first."""

    name: ClassVar[str] = "drop-blocks"

    ratio: float = 0.25
    calibration: Sequence[Feeds] | None = field(default=None, repr=False, compare=False)
    min_cosine: float = -1.0
    mask: str | None = "auto"  # the token-mask input, as in prune-ffn

    def numeric_tolerance(self) -> Tolerance:
        return None if self.ratio == 0 else CosineTolerance(self.min_cosine)

    def run(self, graph: Graph) -> PassResult:
        _check_ratio(self.name, self.ratio)
        blocks = transformer_blocks(graph)
        notes = [f"{g.name}: frozen: {g.frozen}" for block in blocks for g in block if g.frozen]
        live = [b for b in blocks if not any(g.frozen for g in b)]
        count = math.floor(self.ratio * len(blocks) + 1e-9)
        count = min(count, len(live))
        if count == 0:
            return PassResult(False, {}, notes)
        spans = [block_span(b) for b in live]
        mask = mask_input(graph, self.mask, self.name)
        scores = block_influence(graph, spans, self.calibration or [], mask)
        chosen = [live[i] for i in sorted(np.argsort(scores, kind="stable")[:count])]
        for block in chosen:
            drop_block(graph, block)
            notes.append(f"dropped block {' + '.join(g.name for g in block)}")
        return PassResult(True, {"blocks_dropped": count}, notes)


def block_span(block: Sequence[Group]) -> Group:
    """A transformer block as one layer group, from its first branch's input (`skip`) to its
    last branch's output (after its norm in a post-norm block), for block influence."""
    first, last = block[0], block[-1]
    nodes = [n for g in block for n in [*g.nodes, *([g.norm] if g.norm else [])]]
    return Group(
        "layer", 1, [], nodes, None, first.name, add=last.add, skip=first.skip, norm=last.norm
    )


def drop_block(graph: Graph, block: Sequence[Group]) -> None:
    """Remove a transformer block (from `transformer_blocks`): each of its residual branches,
    with a post-norm block's norms, so that its output is its input."""
    for name in [g.add.name for g in block if g.add is not None]:
        # Regroup each time: dropping a branch replaces the next branch's skip value.
        found = [
            g
            for g in layer_groups(graph, post_norms=True)
            if g.add is not None and g.add.name == name
        ]
        if len(found) != 1:
            raise PruningError(
                f"block {block[0].name}: branch layer:{name} is gone; call transformer_blocks() "
                "again after editing the graph"
            )
        drop_layers(graph, found)


def _branch_norm(group: Group) -> float:
    total = 0.0
    for node in group.nodes:
        for v in node.inputs:
            if v is not None and v.const_value is not None and v.dtype.is_float:
                total += float(np.sum(np.asarray(v.const_value, np.float64) ** 2))
    return math.sqrt(total)
