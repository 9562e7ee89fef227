"""Pipelines: FixedPoint groups, named pipelines and the spec parser.

A pipeline spec is a string like "cleanup,fuse-attention,fold-constants(max_bytes=1024)" or
a list mixing such names with Pass and FixedPoint objects. Names are registered passes or
named pipelines: "cleanup" (a fixed-point group of the cleanup passes), "fusion" (every
fusion, then cleanup again) and "default" (cleanup, fusion, then marking of elementwise
chains).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ecograph.errors import PassError
from ecograph.passes.activations import FuseGelu, FuseSilu, FuseSwiGLU
from ecograph.passes.attention import (
    AbsorbAttentionHeads,
    CausalAttentionMasks,
    ExpandAttentionMasks,
    FuseAttention,
    FuseCacheAttention,
)
from ecograph.passes.cleanup import (
    EliminateCommonSubexpressions,
    EliminateDeadCode,
    FoldConstants,
    FoldShapes,
)
from ecograph.passes.core import Pass
from ecograph.passes.elementwise import MarkElementwiseChains
from ecograph.passes.linear import (
    FoldBatchNorm,
    FoldPadIntoConv,
    FuseMatMulAdd,
    MergeParallelMatMuls,
)
from ecograph.passes.noops import EliminateNoOps
from ecograph.passes.norms import FuseLayerNorm, FuseRMSNorm
from ecograph.passes.registry import get_pass, load_passes, registered_passes


@dataclass
class FixedPoint:
    """Run `passes` in order, again and again, until none changes the graph (at most
    `max_iterations` rounds; hitting the cap is logged, not an error)."""

    passes: list[Pass]
    max_iterations: int = 8
    name: str = "fixed-point"


PipelineItem = Pass | FixedPoint
PipelineSpec = str | Sequence[PipelineItem | str]

_PIPELINES: dict[str, Callable[[], list[PipelineItem]]] = {}


def register_pipeline(name: str, factory: Callable[[], list[PipelineItem]]) -> None:
    """Register a named pipeline; `factory` builds fresh pass instances each time."""
    _PIPELINES[name] = factory


def pipeline_names() -> list[str]:
    load_passes()
    return sorted(_PIPELINES)


def parse_pipeline(spec: PipelineSpec) -> list[PipelineItem]:
    """Turn a spec like "cleanup,fuse-attention,fold-constants(max_bytes=1024)" into items.

    Names are passes or named pipelines ("cleanup", "fusion", "default"); options in
    parentheses set pass fields. A list may mix spec strings and Pass/FixedPoint objects
    (["default,fuse-attention", Quantize(mode="dynamic")]).
    """
    load_passes()
    if isinstance(spec, str):
        entries: list[PipelineItem | str] = list(_split_top_level(spec))
    else:
        entries = []
        for item in spec:
            entries.extend(_split_top_level(item) if isinstance(item, str) else [item])
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
            continue
        known = sorted([*registered_passes(), *_PIPELINES])
        if name not in known:
            raise PassError(f"unknown pass or pipeline {name!r}; known: {', '.join(known)}")
        items.append(get_pass(name, **_parse_options(name, body or "")))
    return items


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


# ----------------------------------------------------------------- named pipelines


def cleanup_pipeline() -> list[PipelineItem]:
    return [
        FixedPoint(
            [
                EliminateNoOps(),
                FoldShapes(),
                FoldConstants(),
                EliminateCommonSubexpressions(),
                EliminateDeadCode(),
            ],
            max_iterations=8,
            name="cleanup",
        )
    ]


def fusion_pipeline() -> list[PipelineItem]:
    return [
        FoldBatchNorm(),
        FoldPadIntoConv(),
        FuseLayerNorm(),
        FuseRMSNorm(),
        FuseGelu(),
        FuseSilu(),
        FuseSwiGLU(),
        FuseAttention(),
        *cleanup_pipeline(),
        AbsorbAttentionHeads(),
        ExpandAttentionMasks(),
        CausalAttentionMasks(),
        FuseCacheAttention(),
        FuseMatMulAdd(),
        MergeParallelMatMuls(),
        *cleanup_pipeline(),
    ]


def default_pipeline() -> list[PipelineItem]:
    return [*cleanup_pipeline(), *fusion_pipeline(), MarkElementwiseChains()]


register_pipeline("cleanup", cleanup_pipeline)
register_pipeline("fusion", fusion_pipeline)
register_pipeline("default", default_pipeline)
