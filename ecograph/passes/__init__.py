"""Graph passes: infrastructure, the pattern engine, cleanup and fusion passes.

    from ecograph.passes import run_passes, Instrumentation
    result = run_passes(graph, "cleanup,fuse-attention,fold-batchnorm")
    print(result.ledger())

Named pipelines: "cleanup" (a fixed-point group of the cleanup passes), "fusion" (every
fusion, then cleanup again) and "default" (cleanup, fusion, then marking of elementwise
chains). See docs/writing-a-pass.md for writing and registering a pass.

Infrastructure, one concern per module: core (Pass, PassResult, tolerances), registry (names,
built-in modules, entry-point plugins), pipeline (FixedPoint, named pipelines, the spec
parser), instrument (Instrumentation, PassRecord, PipelineResult), sample (sample inputs,
compare_arrays), divergence (first diverging node, extract_cone) and manager (PassManager,
run_passes, bisect_pipeline).
"""

from __future__ import annotations

# Importing the pass modules registers their passes (ecograph.passes.registry lists them).
from ecograph.passes.activations import FuseGelu, FuseSilu, FuseSwiGLU
from ecograph.passes.attention import (
    AbsorbAttentionHeads,
    CausalAttentionMasks,
    ExpandAttentionMasks,
    FuseAttention,
)
from ecograph.passes.cleanup import (
    EliminateCommonSubexpressions,
    EliminateDeadCode,
    FoldConstants,
    FoldShapes,
)
from ecograph.passes.core import CosineTolerance, Pass, PassResult, Tolerance
from ecograph.passes.divergence import extract_cone, first_diverging_node
from ecograph.passes.elementwise import MarkElementwiseChains
from ecograph.passes.instrument import Instrumentation, PassRecord, PipelineResult
from ecograph.passes.linear import (
    FoldBatchNorm,
    FoldPadIntoConv,
    FuseMatMulAdd,
    MergeParallelMatMuls,
)
from ecograph.passes.manager import PassManager, bisect_pipeline, run_passes
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
from ecograph.passes.pipeline import (
    FixedPoint,
    cleanup_pipeline,
    default_pipeline,
    fusion_pipeline,
    parse_pipeline,
    pipeline_names,
    register_pipeline,
)
from ecograph.passes.registry import (
    get_pass,
    register_pass,
    registered_passes,
    unregister_pass,
)
from ecograph.passes.sample import compare_arrays, sample_inputs_for
from ecograph.passes.weight_only import FuseWeightDequantize, NBitsActivationBlocks

__all__ = [
    "AbsorbAttentionHeads",
    "Const",
    "CosineTolerance",
    "EliminateCommonSubexpressions",
    "EliminateDeadCode",
    "EliminateNoOps",
    "CausalAttentionMasks",
    "ExpandAttentionMasks",
    "FixedPoint",
    "FoldBatchNorm",
    "FoldPadIntoConv",
    "FoldConstants",
    "FoldShapes",
    "FuseAttention",
    "FuseGelu",
    "FuseLayerNorm",
    "FuseMatMulAdd",
    "FuseRMSNorm",
    "FuseSilu",
    "FuseSwiGLU",
    "FuseWeightDequantize",
    "Instrumentation",
    "MarkElementwiseChains",
    "Match",
    "MergeParallelMatMuls",
    "NBitsActivationBlocks",
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
    "Tolerance",
    "Var",
    "apply_greedy",
    "apply_once",
    "bisect_pipeline",
    "cleanup_pipeline",
    "compare_arrays",
    "default_pipeline",
    "explain",
    "extract_cone",
    "first_diverging_node",
    "fusion_pipeline",
    "get_pass",
    "match",
    "parse_pipeline",
    "pipeline_names",
    "register_pass",
    "register_pipeline",
    "registered_passes",
    "run_passes",
    "sample_inputs_for",
    "unregister_pass",
]
