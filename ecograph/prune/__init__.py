"""Structured pruning on the IR: dependency groups, importance scores and passes that shrink
the graph (fewer FFN units, heads, channels and layers; smaller constants, no masks)."""

from __future__ import annotations

from ecograph.prune.groups import Group, Member, PruningError, groups, layer_groups
from ecograph.prune.importance import (
    activation_norms,
    block_influence,
    magnitude,
    score_groups,
    wanda,
)
from ecograph.prune.passes import DropBlocks, DropLayers, PruneChannels, PruneFFN, PruneHeads
from ecograph.prune.rewrite import drop_layers, shrink

__all__ = [
    "DropBlocks",
    "DropLayers",
    "Group",
    "Member",
    "PruneChannels",
    "PruneFFN",
    "PruneHeads",
    "PruningError",
    "activation_norms",
    "block_influence",
    "drop_layers",
    "groups",
    "layer_groups",
    "magnitude",
    "score_groups",
    "shrink",
    "wanda",
]
