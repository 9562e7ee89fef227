"""Graph passes: infrastructure, the pattern engine, cleanup and fusion passes.

    from ecograph.passes import run_passes, Instrumentation
    result = run_passes(graph, "cleanup,fuse-attention,fold-batchnorm")
    print(result.ledger())

Named pipelines: "cleanup" (a fixed-point group of the cleanup passes), "fusion" (every
fusion, then cleanup again) and "default" (cleanup, fusion, then marking of elementwise
chains). See docs/writing-a-pass.md for writing and registering a pass.
"""

from __future__ import annotations

# Importing the pass modules registers their passes.
from ecograph.passes.activations import FuseGelu, FuseSilu, FuseSwiGLU
from ecograph.passes.attention import AbsorbAttentionHeads, ExpandAttentionMasks, FuseAttention
from ecograph.passes.base import (
    FixedPoint,
    Instrumentation,
    Pass,
    PassManager,
    PassRecord,
    PassResult,
    PipelineResult,
    bisect_pipeline,
    compare_arrays,
    extract_cone,
    first_diverging_node,
    get_pass,
    parse_pipeline,
    pipeline_names,
    register_pass,
    register_pipeline,
    registered_passes,
    run_passes,
    sample_inputs_for,
)
from ecograph.passes.cleanup import (
    EliminateCommonSubexpressions,
    EliminateDeadCode,
    FoldConstants,
    FoldShapes,
)
from ecograph.passes.elementwise import MarkElementwiseChains
from ecograph.passes.linear import FoldBatchNorm, FuseMatMulAdd, MergeParallelMatMuls
from ecograph.passes.noops import EliminateNoOps
from ecograph.passes.norms import FuseLayerNorm, FuseRMSNorm
from ecograph.passes.pattern import (
    Const,
    Match,
    NearMiss,
    Op,
    Pattern,
    RewritePass,
    Rule,
    Var,
    apply_greedy,
    apply_once,
    explain,
    match,
)


def cleanup_pipeline() -> list:
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


def fusion_pipeline() -> list:
    return [
        FoldBatchNorm(),
        FuseLayerNorm(),
        FuseRMSNorm(),
        FuseGelu(),
        FuseSilu(),
        FuseSwiGLU(),
        FuseAttention(),
        *cleanup_pipeline(),
        AbsorbAttentionHeads(),
        ExpandAttentionMasks(),
        FuseMatMulAdd(),
        MergeParallelMatMuls(),
        *cleanup_pipeline(),
    ]


def default_pipeline() -> list:
    return [*cleanup_pipeline(), *fusion_pipeline(), MarkElementwiseChains()]


register_pipeline("cleanup", cleanup_pipeline)
register_pipeline("fusion", fusion_pipeline)
register_pipeline("default", default_pipeline)

__all__ = [
    "AbsorbAttentionHeads",
    "Const",
    "EliminateCommonSubexpressions",
    "EliminateDeadCode",
    "EliminateNoOps",
    "ExpandAttentionMasks",
    "FixedPoint",
    "FoldBatchNorm",
    "FoldConstants",
    "FoldShapes",
    "FuseAttention",
    "FuseGelu",
    "FuseLayerNorm",
    "FuseMatMulAdd",
    "FuseRMSNorm",
    "FuseSilu",
    "FuseSwiGLU",
    "Instrumentation",
    "MarkElementwiseChains",
    "Match",
    "MergeParallelMatMuls",
    "NearMiss",
    "Op",
    "Pass",
    "PassManager",
    "PassRecord",
    "PassResult",
    "Pattern",
    "PipelineResult",
    "RewritePass",
    "Rule",
    "Var",
    "apply_greedy",
    "apply_once",
    "bisect_pipeline",
    "compare_arrays",
    "explain",
    "extract_cone",
    "first_diverging_node",
    "get_pass",
    "match",
    "parse_pipeline",
    "pipeline_names",
    "register_pass",
    "register_pipeline",
    "registered_passes",
    "run_passes",
    "sample_inputs_for",
]
