"""Every lowered op, compiled for x86 (LLVM) and compared with the reference interpreter.

Exact for integer and bool outputs; 1e-5 relative (1e-6 absolute floor) for floats. Each case
is one small graph; a test at the end checks that every lowering has at least one case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.backends.tvm.driver import LOWERINGS, UNLOWERABLE, unlowered_registry_ops
from ecograph.ir import Graph, TensorType, interpret, registered_ops
from tests.backends.tvm_helpers import (
    RNG,
    Const,
    assert_matches,
    one_op,
    rand,
    run_tvm,
    run_with_runtime_only_tvm,
)

i64 = np.int64
f32 = "float32"
CaseFn = Callable[[], tuple[Graph, dict[str, np.ndarray]]]
CASES: list[tuple[str, str, CaseFn]] = []  # (op_type, case id, builder)
_FUSED_COVERED: set[tuple[str, str]] = set()


def case(op: str, cid: str | None = None, *inputs: Any, **kw: Any) -> None:
    CASES.append((op, cid or op, lambda: one_op(op, *inputs, **kw)))


def c64(*values: int) -> Const:
    return Const(np.array(values, i64))


X = rand((2, 3, 4))
POS = rand((2, 3, 4), lo=0.1, hi=3)
UNIT = rand((2, 3, 4), lo=-0.9, hi=0.9)
# ------------------------------------------------------------------ unary
for op in (
    "Abs",
    "Neg",
    "Exp",
    "Floor",
    "Ceil",
    "Sin",
    "Cos",
    "Tan",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Tanh",
    "Sign",
    "Sigmoid",
    "Erf",
    "Relu",
    "Softsign",
    "Softplus",
    "Mish",
    "HardSwish",
    "Identity",
):
    case(op, None, X)
for op in ("Log", "Sqrt", "Reciprocal"):
    case(op, None, POS)
for op in ("Asin", "Acos", "Atanh"):
    case(op, None, UNIT)
case("Acosh", None, rand((3, 4), lo=1.1, hi=4))
case("Round", None, np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.4, -2.6, 3.0], np.float32))
case("Abs", "Abs-int32", rand((3, 4), "int32", -9, 9))
case("Neg", "Neg-int64", rand((3, 4), "int64", -9, 9))
case("Sign", "Sign-int32", rand((3, 4), "int32", -3, 3))
case("Not", None, rand((3, 4), "bool"))
case("BitwiseNot", None, rand((3, 4), "int32", -100, 100))
case("IsNaN", None, np.array([1.0, np.nan, -np.inf, 0.0], np.float32))
case("IsInf", None, np.array([1.0, np.nan, -np.inf, np.inf], np.float32))
case("IsInf", "IsInf-neg", np.array([1.0, np.nan, -np.inf, np.inf], np.float32), detect_positive=0)
case("LeakyRelu", None, X, alpha=0.1)
case("Elu", None, X, alpha=0.7)
case("Celu", None, X, alpha=1.3)
case("Selu", None, X)
case("ThresholdedRelu", None, X, alpha=0.5)
case("HardSigmoid", None, X, alpha=0.3, beta=0.4)
case("Gelu", None, X)
case("Gelu", "Gelu-tanh", X, approximate="tanh")
case("PRelu", None, X, rand((3, 1), lo=0.01, hi=0.5))
case("Clip", None, X, Const(np.array(-0.5, np.float32)), Const(np.array(0.7, np.float32)))
case("Clip", "Clip-min-only", X, Const(np.array(-0.5, np.float32)))
case(
    "Clip",
    "Clip-int",
    rand((3, 4), "int32", -9, 9),
    Const(np.array(-2, np.int32)),
    Const(np.array(3, np.int32)),
)
case("Dropout", None, X)
# training mode with ratio 0 drops nothing (deterministic); the mask output is all true
case("Dropout", "Dropout-train-ratio0", X, Const(np.array(0.0, np.float32)),
     Const(np.array(True)), num_outputs=2)  # fmt: skip
case("IsNaN", "IsNaN-f16", np.array([1.0, np.nan, -np.inf, 0.0], np.float16))
case("Mish", "Mish-tiny", np.array([-10.0, -20.0, -7.5, 0.0, 30.0], np.float32))
case("Softplus", "Softplus-tiny", np.array([-10.0, -20.0, -87.0, 0.0, 30.0], np.float32))
# float Mod: fmod 0 takes the divisor's sign; a finite dividend over inf stays itself
_MOD_A = np.array([-4.3, 7.2, 5.0, 4.3, -7.2, 8.0, -3.0, 3.0, -1.0, 1.0, 0.0, -0.0], np.float32)
_MOD_B = np.array(
    [2.1, -3.4, 8.0, -2.1, 3.4, 5.0, np.inf, np.inf, -np.inf, -np.inf, -2, 2], np.float32
)
case("Mod", "Mod-float-python", _MOD_A, _MOD_B)
case("Mod", "Mod-fmod-inf", _MOD_A, _MOD_B, fmod=1)
case("Cast", "Cast-f2uint4-wraps", np.arange(-9, 16, dtype=np.float32), to=21)
case("Cast", "Cast-f2int4-wraps", np.arange(-9, 16, dtype=np.float32), to=22)
case("Gelu", "Gelu-f16", rand((3, 4), "float16"))
case("Exp", "Exp-f16", rand((3, 4), "float16"))

# ------------------------------------------------------------------ binary
A, B = rand((2, 3, 4)), rand((3, 1), lo=0.5, hi=2)
IA, IB = rand((2, 3, 4), "int32", -20, 20), rand((3, 1), "int32", 1, 5)
for op in ("Add", "Sub", "Mul", "Div"):
    case(op, None, A, B)
    case(op, f"{op}-int32", IA, IB)
case("Div", "Div-int-neg", rand((4, 5), "int32", -20, 20), rand((5,), "int32", -5, -1))
case("Mod", None, IA, IB)
case("Mod", "Mod-neg", rand((4, 5), "int32", -20, 20), rand((5,), "int32", -5, -1))
case("Mod", "Mod-fmod", rand((4, 5), "int32", -20, 20), rand((5,), "int32", -5, -1), fmod=1)
case("Mod", "Mod-float", A, B, fmod=1)
case("Pow", None, POS, rand((4,), lo=-2, hi=2))
case("Pow", "Pow-int", rand((3, 4), "int32", -4, 4), rand((3, 4), "int32", 0, 3))
for op in ("BitwiseAnd", "BitwiseOr", "BitwiseXor"):
    case(op, None, IA, IB)
case(
    "BitShift", None, rand((3, 4), "uint32", 0, 100), rand((3, 4), "uint32", 0, 4), direction="LEFT"
)
case(
    "BitShift",
    "BitShift-right",
    rand((3, 4), "uint8", 0, 255),
    rand((4,), "uint8", 0, 7),
    direction="RIGHT",
)
for op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"):
    case(op, None, IA, IB)
    case(op, f"{op}-float", A, Const(np.float32(0.25) * np.ones(4, np.float32)))
for op in ("And", "Or", "Xor"):
    case(op, None, rand((3, 4), "bool"), rand((4,), "bool"))
for op in ("Max", "Min", "Sum", "Mean"):
    case(op, None, A, B, rand((4,)))
case("Max", "Max-single", A)
case("Where", None, rand((3, 4), "bool"), rand((3, 4)), rand((4,)))

# ------------------------------------------------------------------ casts
case("Cast", None, rand((3, 4), lo=-50, hi=50), to=6)  # float -> int32 (truncation)
case("Cast", "Cast-i2f", IA, to=1)
case("Cast", "Cast-f2bool", np.array([0.0, 1.5, -0.0, 2.0], np.float32), to=9)
case("Cast", "Cast-f2f16", X, to=10)
case("Cast", "Cast-i64-i8", rand((3, 4), "int64", -100, 100), to=3)
case("CastLike", None, IA, np.zeros((1,), np.float32))

# ------------------------------------------------------------------ shapes
case("Shape", None, X)
case("Shape", "Shape-sym", X, symbolic={0: ["n", 3, 4]}, start=0, end=2)
case("Size", None, X)
case("Size", "Size-sym", X, symbolic={0: ["n", "m", 4]})
CASES.append(("Constant", "Constant", lambda: _constant_case()))
CASES.append(("Slice", "Slice-symbolic-bounds-of-constant", lambda: _symbolic_slice_case()))
# bounds read from tensors: the output's sliced dims are bound at run time
case("Slice", "Slice-run-time-bounds", rand((3, 10, 4)), np.array([2, -3], i64),
     np.array([9, 1], i64), c64(1, 2), c64(3, -1))  # fmt: skip
case("Slice", "Slice-run-time-start-symbolic-dim", rand((3, 10)), np.array([4], i64),
     c64(2**62), c64(1), symbolic={0: ["n", "m"]})  # fmt: skip
case("ConstantOfShape", None, c64(2, 3), value=np.array([1.5], np.float32))
# a length known only at run time: computed and bound to the IR's symbol
case("Range", "Range-runtime-limit", Const(np.array(1, np.int64)), np.array(10, np.int64),
     Const(np.array(3, np.int64)))  # fmt: skip
case("Range", "Range-runtime-float", np.array(0.5, np.float32), np.array(-2.0, np.float32),
     np.array(-0.75, np.float32))  # fmt: skip
case(
    "Range",
    None,
    Const(np.array(1, np.int64)),
    Const(np.array(10, np.int64)),
    Const(np.array(3, np.int64)),
)
case("Reshape", None, X, c64(4, -1))
case("Reshape", "Reshape-sym", X, c64(0, -1), symbolic={0: ["batch", 3, 4]})
case("Reshape", "Reshape-allowzero-empty", np.zeros((0, 3, 4), np.float32), c64(3, 4, 0),
     allowzero=1)  # fmt: skip
case("Flatten", None, X, axis=2)
case("Squeeze", None, rand((2, 1, 4, 1)), c64(1, -1))
case("Squeeze", "Squeeze-all", rand((2, 1, 4, 1)))
case("Unsqueeze", None, X, c64(0, -1))
case("Transpose", None, X, perm=[2, 0, 1])
case("Transpose", "Transpose-default", X)
case("Expand", None, rand((3, 1)), c64(2, 3, 4))
case("Tile", None, rand((2, 3)), c64(2, 3))
CASES.append(("Tile", "Tile-repeats-from-shapes", lambda: _symbolic_tile_case()))
case("Concat", None, rand((2, 3)), rand((2, 5)), axis=-1)
case(
    "Concat", "Concat-sym", rand((2, 3)), rand((3, 3)), axis=0, symbolic={0: ["a", 3], 1: ["b", 3]}
)
case("Split", None, rand((6, 4)), c64(2, 4), axis=0, num_outputs=2)
case("Split", "Split-even", rand((2, 9)), axis=1, num_outputs=3)
case("Slice", None, rand((5, 6)), c64(1, -4), c64(4, 100), c64(0, 1), c64(1, 2))
case("Slice", "Slice-neg-step", rand((5, 6)), c64(-1), c64(-100), c64(1), c64(-2))
case("Gather", None, rand((5, 4)), np.array([[0, -1], [3, 2]], i64), axis=0)
case("Gather", "Gather-axis1", rand((3, 5)), np.array([4, -2, 0], np.int32), axis=1)
case("Gather", "Gather-scalar", rand((5, 4)), Const(np.array(2, i64)), axis=0)
# one constant position: lowered as a slice (fusable), negative counted from the end
case("Gather", "Gather-const-negative", rand((3, 5, 2)), Const(np.array(-2, i64)), axis=1)
case("Gather", "Gather-const-one-element", rand((3, 5)), Const(np.array([4], np.int32)), axis=1)
case("Gather", "Gather-const-last-axis", rand((2, 3)), Const(np.array(-3, i64)), axis=1)
case("GatherElements", None, rand((3, 4)), np.array([[0, 3], [1, -1], [2, 0]], i64), axis=1)
case("Trilu", None, rand((4, 5)), Const(np.array(1, i64)))
case("Trilu", "Trilu-lower", rand((2, 4, 5)), upper=0)
case("Pad", None, rand((2, 3)), c64(1, 0, 2, 1), Const(np.array(0.5, np.float32)))
case("Pad", "Pad-reflect", rand((3, 4)), c64(0, 2, 0, 1), mode="reflect")
case("Pad", "Pad-edge", rand((3, 4)), c64(1, 1, 1, 1), mode="edge")
case("Pad", "Pad-axes", rand((2, 3, 4)), c64(1, 2), None, c64(-1))

# ------------------------------------------------------------------ matmul / nn
case("MatMul", None, rand((2, 3, 4)), rand((4, 5)))
case("MatMul", "MatMul-vec", rand((4,)), rand((2, 4, 3)))
case("MatMul", "MatMul-int32", rand((3, 4), "int32", -5, 5), rand((4, 2), "int32", -5, 5))
case(
    "MatMul", "MatMul-sym", rand((2, 3, 4)), Const(rand((4, 5))), symbolic={0: ["batch", "seq", 4]}
)
case("MatMulInteger", None, rand((3, 8), "int8", -128, 127), rand((8, 4), "int8", -128, 127))
case(
    "MatMulInteger",
    "MatMulInteger-zp",
    rand((3, 8), "uint8", 0, 255),
    rand((8, 4), "uint8", 0, 255),
    Const(np.array(128, np.uint8)),
    Const(np.array(120, np.uint8)),
)
case("Gemm", None, rand((3, 4)), rand((5, 4)), rand((5,)), alpha=0.5, beta=2.0, transB=1)
case("Gemm", "Gemm-transA", rand((4, 3)), rand((4, 5)), transA=1)
case(
    "Conv",
    None,
    rand((1, 3, 7, 7)),
    Const(rand((4, 3, 3, 3))),
    Const(rand((4,))),
    pads=[1, 1, 1, 1],
    strides=[2, 2],
)
case(
    "Conv",
    "Conv-group-same",
    rand((1, 4, 6, 6)),
    Const(rand((4, 1, 3, 3))),
    group=4,
    auto_pad="SAME_UPPER",
)
case("Conv", "Conv1d-dil", rand((2, 3, 10)), Const(rand((2, 3, 3))), dilations=[2])
case("MaxPool", None, rand((1, 2, 6, 6)), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
# ceil_mode over symbolic dims: the IR leaves the dim unknown, Relax computes it
case("MaxPool", "MaxPool-ceil-sym", rand((1, 2, 7, 7)), kernel_shape=[2, 2], strides=[2, 2],
     ceil_mode=1, symbolic={0: [1, 2, "h", "w"]})  # fmt: skip
case("AveragePool", "AveragePool-ceil-sym", rand((1, 2, 7, 5)), kernel_shape=[3, 2],
     strides=[2, 2], ceil_mode=1, symbolic={0: [1, 2, "h", "w"]})  # fmt: skip
# Indices: flat input positions, padding never chosen, ties to the first maximum
_POOL_TIES = RNG.integers(0, 3, (2, 2, 5, 6)).astype(np.float32)
case("MaxPool", "MaxPool-indices", _POOL_TIES, kernel_shape=[3, 2], strides=[2, 2],
     pads=[1, 0, 1, 1], num_outputs=2)  # fmt: skip
case("MaxPool", "MaxPool-indices-colmajor", _POOL_TIES, kernel_shape=[2, 2], storage_order=1,
     num_outputs=2)  # fmt: skip
case("MaxPool", "MaxPool-indices-1d-dilated-ceil", rand((1, 3, 9)), kernel_shape=[2],
     strides=[2], dilations=[2], ceil_mode=1, num_outputs=2)  # fmt: skip
# Over an empty set: the dtype's lowest / highest value; bool max/min
case("ReduceMax", "ReduceMax-empty", np.zeros((2, 0, 3), np.float32), c64(1), keepdims=1)
case("ReduceMin", "ReduceMin-empty-int", np.zeros((2, 0, 3), np.int32), c64(1), keepdims=0)
case("ReduceMax", "ReduceMax-bool", rand((3, 4), "bool"), c64(1), keepdims=0)
case("ReduceMin", "ReduceMin-bool", rand((3, 4), "bool"), c64(0), keepdims=1)
case(
    "MaxPool", "MaxPool-ceil", rand((1, 2, 7, 7)), kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1
)
case("AveragePool", None, rand((1, 2, 6, 6)), kernel_shape=[3, 3], pads=[1, 1, 1, 1])
case(
    "AveragePool",
    "AveragePool-incl",
    rand((1, 2, 6, 6)),
    kernel_shape=[3, 3],
    pads=[1, 1, 1, 1],
    count_include_pad=1,
)
case("AveragePool", "AveragePool-1d", rand((1, 2, 9)), kernel_shape=[3], strides=[2])
case("GlobalAveragePool", None, rand((2, 3, 4, 5)))
case("GlobalMaxPool", None, rand((2, 3, 4, 5)))
case(
    "BatchNormalization",
    None,
    rand((2, 3, 4, 4)),
    Const(rand((3,))),
    Const(rand((3,))),
    Const(rand((3,))),
    Const(rand((3,), lo=0.5, hi=2)),
)
case(
    "BatchNormalization",
    "BatchNormalization-training",
    rand((2, 3, 4, 4)),
    Const(rand((3,))),
    Const(rand((3,))),
    Const(rand((3,))),
    Const(rand((3,), lo=0.5, hi=2)),
    training_mode=1,
    momentum=0.8,
    num_outputs=3,
)
case("LayerNormalization", None, rand((2, 3, 8)), Const(rand((8,))), Const(rand((8,))))
case(
    "LayerNormalization",
    "LayerNormalization-3out",
    rand((2, 3, 8)),
    Const(rand((3, 8))),
    axis=1,
    num_outputs=3,
)
case(
    "LayerNormalization",
    "LayerNormalization-sym",
    rand((2, 3, 8)),
    Const(rand((8,))),
    symbolic={0: ["b", "s", 8]},
)
case("RMSNormalization", None, rand((2, 3, 8)), Const(rand((8,))))
case("InstanceNormalization", None, rand((2, 3, 5, 4)), Const(rand((3,))), Const(rand((3,))))
case("LRN", None, rand((1, 5, 3, 3)), size=3, alpha=0.01)
case("Softmax", None, X, axis=1)
case("Softmax", "Softmax-sym", X, symbolic={0: ["b", "s", 4]})
case("LogSoftmax", None, X)
case("Hardmax", None, rand((3, 5)), axis=1)

# ------------------------------------------------------------------ reductions
for op in (
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceSumSquare",
):
    case(op, None, X, c64(1, -1), keepdims=0)
case("ReduceLogSum", None, POS, c64(1), keepdims=1)
case("ReduceSum", "ReduceSum-all", X)
case("ReduceSum", "ReduceSum-noop", X, noop_with_empty_axes=1)
case("ReduceSum", "ReduceSum-int", IA, c64(0))
case("ReduceMax", "ReduceMax-sym", X, c64(1), symbolic={0: ["b", 3, "w"]})
case("ArgMax", None, rand((3, 5)), axis=1)
case("ArgMin", None, rand((3, 5)), axis=0, keepdims=0)
case(
    "ArgMax",
    "ArgMax-last",
    np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.int32),
    axis=1,
    select_last_index=1,
)
case("CumSum", None, rand((3, 4)), Const(np.array(1, i64)))
case("CumSum", "CumSum-excl-rev", rand((3, 4)), Const(np.array(0, i64)), exclusive=1, reverse=1)
case("TopK", None, RNG.permutation(20).astype(np.float32).reshape(4, 5), c64(3))
case("TopK", "TopK-uint64", np.array([[1, 2**63 + 5, 7, 2**64 - 1, 0]], np.uint64), c64(3))
case("TopK", "TopK-uint64-smallest", np.array([[9, 2**63, 7, 2**62, 3]], np.uint64), c64(2),
     largest=0)  # fmt: skip
case(
    "TopK",
    "TopK-smallest",
    RNG.permutation(20).astype(np.float32).reshape(4, 5),
    c64(2),
    axis=0,
    largest=0,
)

# ------------------------------------------------------------------ quantization
QX = rand((2, 3, 4), lo=-4, hi=4)
case("QuantizeLinear", None, QX, Const(np.array(0.05, np.float32)), Const(np.array(3, np.int8)))
case(
    "QuantizeLinear",
    "QuantizeLinear-u8-axis",
    QX,
    Const(np.array([0.02, 0.03, 0.05], np.float32)),
    Const(np.array([128, 120, 100], np.uint8)),
    axis=1,
)
case(
    "QuantizeLinear",
    "QuantizeLinear-ties",
    np.array([0.5, 1.5, 2.5, -0.5, -1.5, 300], np.float32),
    Const(np.array(1.0, np.float32)),
    Const(np.array(0, np.int8)),
)
case(
    "QuantizeLinear",
    "QuantizeLinear-block",
    rand((4, 6)),
    Const(rand((4, 2), lo=0.01, hi=0.1)),
    Const(np.zeros((4, 2), np.int8)),
    axis=1,
    block_size=3,
)
case(
    "DequantizeLinear",
    None,
    rand((2, 3, 4), "int8", -128, 127),
    Const(np.array(0.05, np.float32)),
    Const(np.array(3, np.int8)),
)
case(
    "DequantizeLinear",
    "DequantizeLinear-axis",
    rand((2, 3, 4), "uint8", 0, 255),
    Const(np.array([0.02, 0.03, 0.05], np.float32)),
    Const(np.array([128, 120, 100], np.uint8)),
    axis=1,
)
case(
    "DequantizeLinear",
    "DequantizeLinear-int4-block",
    Const(RNG.integers(-8, 8, (4, 8)).astype(ml_dtypes.int4)),
    Const(rand((4, 2), lo=0.01, hi=0.1)),
    axis=1,
    block_size=4,
)
CASES.append(("QuantizeLinear", "QuantizeLinear-int4-roundtrip", lambda: _int4_roundtrip_case()))
case("DynamicQuantizeLinear", None, QX, num_outputs=3)


# ------------------------------------------------------------------ more ops (ir/ops/more_*.py)
case("Shrink", None, X, lambd=0.6, bias=0.2)
case("Shrink", "Shrink-int", rand((3, 4), "int32", -5, 5), lambd=1.5, bias=1.0)
case("EyeLike", None, rand((3, 5)), k=1)
case("HannWindow", None, Const(np.array(10, i64)))
case("HammingWindow", None, Const(np.array(8, i64)), periodic=0)
case("BlackmanWindow", None, Const(np.array(7, i64)))
case("DepthToSpace", None, rand((1, 8, 2, 3)), blocksize=2)
case("DepthToSpace", "DepthToSpace-CRD", rand((1, 8, 2, 3)), blocksize=2, mode="CRD")
case("SpaceToDepth", None, rand((1, 2, 4, 6)), blocksize=2)
case("GatherND", None, rand((3, 4, 5)), np.array([[0, 1], [2, -1], [1, 3]], i64))
case("GatherND", "GatherND-batch", rand((2, 4, 5)), np.array([[1], [3]], i64), batch_dims=1)
case(
    "ScatterElements",
    None,
    rand((3, 4)),
    np.array([[0, 2], [1, -1], [3, 0]], i64),
    rand((3, 2)),
    axis=1,
)
case(
    "ScatterElements",
    "ScatterElements-add",
    rand((3, 4)),
    np.array([[1, 2], [0, 1]], i64),
    rand((2, 2)),
    axis=0,
    reduction="add",
)
case("ScatterND", None, rand((4, 3)), np.array([[1], [3]], i64), rand((2, 3)))
case(
    "OneHot",
    None,
    np.array([[0, 2], [-1, 1]], i64),
    Const(np.array(3, i64)),
    Const(np.array([0.5, 2.0], np.float32)),
    axis=1,
)
case(
    "GroupNormalization",
    None,
    rand((2, 4, 3, 3)),
    Const(rand((4,))),
    Const(rand((4,))),
    num_groups=2,
)
case("MeanVarianceNormalization", None, rand((2, 3, 4, 5)))
case("LpNormalization", None, X, axis=1, p=1)
case("LpNormalization", "LpNormalization-p2", X)
case(
    "QLinearMatMul",
    None,
    rand((3, 8), "uint8", 0, 255),
    Const(np.array(0.02, np.float32)),
    Const(np.array(120, np.uint8)),
    rand((8, 4), "uint8", 0, 255),
    Const(np.array(0.03, np.float32)),
    Const(np.array(130, np.uint8)),
    Const(np.array(0.5, np.float32)),
    Const(np.array(128, np.uint8)),
)
_NB = RNG.integers(0, 256, (8, 2, 8)).astype(np.uint8)  # N=8, K=32 in 2 blocks of 16, 4 bits
CASES.append(
    (
        "MatMulNBits",
        "com.microsoft::MatMulNBits",
        lambda: one_op(
            "MatMulNBits",
            rand((3, 32)),
            Const(_NB),
            Const(rand((16,), lo=0.01, hi=0.1)),
            Const(RNG.integers(0, 256, (8,)).astype(np.uint8)),
            domain="com.microsoft",
            K=32,
            N=8,
            bits=4,
            block_size=16,
        ),
    )
)
CASES.append(
    (
        "MatMulNBits",
        "com.microsoft::MatMulNBits-nozp-bias",
        lambda: one_op(
            "MatMulNBits",
            rand((2, 3, 32)),
            Const(_NB),
            Const(rand((16,), lo=0.01, hi=0.1)),
            None,
            None,
            Const(rand((8,))),
            domain="com.microsoft",
            K=32,
            N=8,
            bits=4,
            block_size=16,
        ),
    )
)
_FUSED_COVERED.add(("com.microsoft", "MatMulNBits"))
case(
    "ConvTranspose",
    None,
    rand((1, 3, 4, 4)),
    Const(rand((3, 2, 3, 3))),
    Const(rand((2,))),
    strides=[2, 2],
    pads=[1, 1, 1, 1],
    output_padding=[1, 1],
)
case(
    "ConvTranspose",
    "ConvTranspose-3d",
    rand((1, 2, 3, 4, 3)),
    Const(rand((2, 3, 2, 3, 2))),
    strides=[2, 1, 2],
)
case(
    "ConvTranspose",
    "ConvTranspose-1d-group",
    rand((2, 4, 5)),
    Const(rand((4, 1, 3))),
    group=2,
    dilations=[2],
)
case(
    "ConvInteger",
    None,
    rand((1, 2, 5, 5), "uint8", 0, 255),
    Const(rand((3, 2, 3, 3), "uint8", 0, 255)),
    Const(np.array(128, np.uint8)),
    Const(np.array([100, 120, 140], np.uint8)),
    pads=[1, 1, 1, 1],
)
case("NonZero", None, np.array([[1, 0, 2], [0, 0, 3]], np.int32))
case("Einsum", None, rand((2, 3, 4)), rand((2, 4, 5)), equation="bij,bjk->bik")


def _int4_roundtrip_case() -> tuple[Graph, dict[str, np.ndarray]]:
    """x -> QuantizeLinear(int4) -> DequantizeLinear: the int4 tensor stays inside the graph."""
    g = Graph("int4_roundtrip")
    x = g.add_input("x0", "float32", [3, 8])
    scale = g.add_constant(np.array(0.25, np.float32), "scale")
    zp = g.add_constant(np.array(1, ml_dtypes.int4), "zp")
    q = g.add_node("QuantizeLinear", [x, scale, zp], {})
    y = g.add_node("DequantizeLinear", [q.output, scale, zp], {})
    g.set_outputs([y.output])
    return g, {"x0": rand((3, 8), lo=-3, hi=3)}


def _symbolic_slice_case() -> tuple[Graph, dict[str, np.ndarray]]:
    """position_ids[:, :seq] as BERT does it: a constant sliced by a Shape-derived bound."""
    g = Graph("symbolic_slice")
    x = g.add_input("x0", "int64", ["batch", "seq"])
    pos = g.add_constant(np.arange(64, dtype=np.int64).reshape(1, 64), "pos")
    seq = g.add_node("Shape", [x], {"start": 1, "end": 2}).output
    zero, one = (
        g.add_constant(np.array([0], i64), "zero"),
        g.add_constant(np.array([1], i64), "one"),
    )
    sliced = g.add_node(
        "Slice", [pos, zero, seq, one, one], {}, output_types=[TensorType("int64", [1, "seq"])]
    )
    y = g.add_node("Add", [x, sliced.output], {})
    g.set_outputs([y.output])
    return g, {"x0": rand((2, 7), "int64", 0, 100)}


def _symbolic_tile_case() -> tuple[Graph, dict[str, np.ndarray]]:
    """`t.repeat(batch, 2)` as GPT-J and BLOOM write it: repeats from a dynamic dim, on an
    axis of 1 (a broadcast) and on an axis of 2 (copies of the whole), beside a static 2."""
    g = Graph("symbolic_tile")
    x = g.add_input("x0", "float32", ["batch", 3])
    v = g.add_input("x1", "float32", [2, 3])
    row = g.add_constant(rand((1, 3)), "row")
    batch = g.add_node("Shape", [x], {"start": 0, "end": 1}).output
    two = g.add_constant(np.array([2], i64), "two")
    reps = g.add_node("Concat", [batch, two], {"axis": 0}).output
    a = g.add_node("Tile", [row, reps], {})
    b = g.add_node("Tile", [v, reps], {})
    g.set_outputs([a.output, b.output])
    assert (a.output.type.shape, b.output.type.shape) == (("batch", 6), ("2*batch", 6))
    return g, {"x0": rand((5, 3)), "x1": rand((2, 3))}


def _constant_case() -> tuple[Graph, dict[str, np.ndarray]]:
    g = Graph("constant_case")
    x = g.add_input("x0", "float32", [3])
    c = g.add_node("Constant", [], {"value": np.array([1.0, 2.0, 3.0], np.float32)})
    y = g.add_node("Add", [x, c.output], {})
    g.set_outputs([y.output])
    return g, {"x0": rand((3,))}


# ------------------------------------------------------------------ fused ops (ir/ops/fused.py)
def _fused(op: str, cid: str, *inputs: Any, **kw: Any) -> None:
    CASES.append((op, cid, lambda: one_op(op, *inputs, domain="ecograph", **kw)))
    _FUSED_COVERED.add(("ecograph", op))


_fused("SiLU", "ecograph::SiLU", X)
_fused("SwiGLU", "ecograph::SwiGLU", X, rand((3, 4)))
_fused("Linear", "ecograph::Linear", rand((2, 3, 4)), Const(rand((4, 5))), Const(rand((5,))))
_fused("Linear", "ecograph::Linear-no-bias", rand((2, 3, 4)), Const(rand((4, 5))))
# Weight-only matmul (made by fuse-weight-dequantize): one kernel reading int8 or packed int4.
_fused(
    "DequantizeMatMul",
    "ecograph::DequantizeMatMul-int8-per-column",
    rand((3, 8)),
    Const(RNG.integers(-128, 128, (8, 5)).astype(np.int8)),
    Const(RNG.uniform(0.01, 0.1, 5).astype(f32)),
    Const(RNG.integers(-128, 128, 5).astype(np.int8)),
    axis=1,
)
_fused(
    "DequantizeMatMul",
    "ecograph::DequantizeMatMul-int4-blocked-trans_b",
    rand((2, 3, 8)),
    Const(RNG.integers(-8, 8, (5, 8)).astype(ml_dtypes.int4)),
    Const(RNG.uniform(0.01, 0.1, (5, 2)).astype(f32)),
    Const(RNG.integers(-8, 8, (5, 2)).astype(ml_dtypes.int4)),
    axis=1,
    block_size=4,
    trans_b=1,
)
_fused(
    "DequantizeMatMul",
    "ecograph::DequantizeMatMul-uint4-per-tensor-odd",
    rand((3, 8)),
    Const(RNG.integers(0, 16, (8, 5)).astype(ml_dtypes.uint4)),
    Const(np.array(0.05, f32)),
)
QKV = [rand((2, 2, 5, 4)) for _ in range(3)]
case("Attention", None, *QKV)
case("Attention", "Attention-causal-mask", *QKV, rand((5, 5)), is_causal=1, scale=0.3)
case("Attention", "Attention-bool-mask", *QKV, rand((2, 1, 5, 5), "bool"))
case(
    "Attention",
    "Attention-3d-gqa",
    rand((2, 5, 8)),
    rand((2, 6, 4)),
    rand((2, 6, 4)),
    q_num_heads=4,
    kv_num_heads=2,
)
case(
    "Attention",
    "Attention-sym-causal",
    *QKV,
    is_causal=1,
    symbolic={0: ["b", 2, "s", 4], 1: ["b", 2, "s", 4], 2: ["b", 2, "s", 4]},
)
# Decode over a cache (causal, 1 query < 9 keys), 4 q heads on 2 KV heads, head size 24.
case(
    "Attention",
    "Attention-gqa-decode-causal",
    rand((2, 4, 1, 24)),
    rand((2, 2, 9, 24)),
    rand((2, 2, 9, 24)),
    is_causal=1,
)
# BERT's key-padding mask [b, 1, 1, kv] (additive), V head size unlike Q's.
case("Attention", "Attention-key-padding", *QKV[:2], rand((2, 2, 5, 6)), rand((2, 1, 1, 5)))
# A decode step over a KV cache [past 6, slots 3, batch 1, kv heads 2, 8]: keys in slot 2,
# values in slot 0, a bool mask over past + 1 keys (more cases: test_attention_kernel.py).
case(
    "CacheAttention",
    "CacheAttention-gqa-decode",
    rand((1, 4, 1, 8)),
    rand((6, 3, 1, 2, 8)),
    rand((1, 2, 1, 8)),
    rand((1, 2, 1, 8)),
    rand((1, 1, 1, 7), "bool"),
    domain="ecograph",
    key_index=2,
    value_index=0,
)
_FUSED_COVERED.add(("ecograph", "CacheAttention"))


@pytest.mark.parametrize("builder", [c[2] for c in CASES], ids=[c[1] for c in CASES])
def test_op_matches_interpreter(builder: CaseFn) -> None:
    graph, feeds = builder()
    # No lowering-time folding: an op whose inputs are all constants is still run by TVM.
    assert_matches(graph, feeds, run_tvm(graph, feeds, fold=False))


def test_tile_by_repeats_from_data_fails_clearly() -> None:
    """Repeats read from an input tensor size the output by data: a LoweringError naming the
    node and what the repeats must be, not TVM's failure."""
    from ecograph.backends.tvm.driver import lower_graph
    from ecograph.errors import LoweringError
    from tests.backends.tvm_helpers import lowering_target

    graph, _ = one_op("Tile", rand((2, 3)), np.array([2, 1], i64))
    with pytest.raises(LoweringError, match=r"\(Tile\): repeats .* computed from tensor data"):
        lower_graph(graph, lowering_target())


def _family_covered() -> set[tuple[str, str]]:
    """Ops tested numerically by the per-family test modules (their COVERED_OPS)."""
    import importlib
    import pkgutil

    import tests.backends as pkg

    covered: set[tuple[str, str]] = set()
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("test_tvm_") and info.name != "test_tvm_ops":
            module = importlib.import_module(f"tests.backends.{info.name}")
            covered |= set(getattr(module, "COVERED_OPS", ()))
    return covered


def test_every_lowering_has_a_case() -> None:
    covered = {("", op) for op, _, _ in CASES} | set(_FUSED_COVERED) | _family_covered()
    untested = sorted(f"{d}::{o}" if d else o for d, o in LOWERINGS if (d, o) not in covered)
    assert not untested, f"lowerings without a numeric test case: {untested}"


# The op library in these modules is the backend's baseline: all of it must lower.
_BASELINE_MODULES = {"elementwise", "tensor", "nn", "reduce", "quant", "convolution", "pooling",
                     "normalization", "generators"}  # fmt: skip


def test_baseline_registry_ops_all_lower() -> None:
    missing = [
        s.qualified_name
        for s in unlowered_registry_ops()
        if s.kernel.__module__.rsplit(".", 1)[-1] in _BASELINE_MODULES
    ]
    assert not missing, f"baseline ops without a TVM lowering: {missing}"


def test_every_registry_op_lowers() -> None:
    """Every registry op has a lowering, except the string ops TVM cannot carry."""
    missing = [
        s.qualified_name
        for s in unlowered_registry_ops()
        if (s.domain, s.op_type) not in UNLOWERABLE
    ]
    total = len(registered_ops())
    assert not missing, f"{len(missing)} of {total} registry ops have no TVM lowering: {missing}"


@pytest.mark.slow
def test_every_case_runs_with_runtime_only_tvm(tmp_path) -> None:
    """Artifacts must run where only TVM's runtime is installed (TVM_USE_RUNTIME_LIB=1): no
    lowering may call into the compiler library or a Python callback (TVM's CPU topk and
    argsort call tvm.contrib.sort, R.nonzero/R.unique call numpy through tvm.relax)."""
    import pickle

    import ecograph

    items = []
    for _, cid, make in CASES:
        graph, feeds = make()
        folder = tmp_path / f"case{len(items)}"
        # the artifact in its own subfolder: a folder holds only the files its manifest lists
        art = ecograph.compile(graph, "x86", folder / "artifact", keep_params=False)
        np.savez(folder / "feeds.npz", **feeds)
        expected = list(interpret(graph, feeds).values())
        # 4-bit values are saved widened (npz has no int4); the artifact returns 8-bit carriers.
        np.savez(
            folder / "want.npz",
            *[w.astype(np.int16) if str(w.dtype) in ("int4", "uint4") else w for w in expected],
        )  # fmt: skip
        items.append((cid, str(art), str(folder), [v.name for v in graph.inputs]))
    (tmp_path / "items.pkl").write_bytes(pickle.dumps(items))
    code = f"""
import pickle, sys, numpy as np
from ecograph.backends.tvm import load
bad = []
for cid, art, folder, names in pickle.loads(open({str(tmp_path / "items.pkl")!r}, "rb").read()):
    try:
        feeds = np.load(folder + "/feeds.npz")
        out = load(art)(**{{n: feeds[n] for n in names}})
        outs = out if isinstance(out, tuple) else (out,)
        want = np.load(folder + "/want.npz")
        assert len(outs) == len(want.files), "output count"
        for i, o in enumerate(outs):
            w = want[f"arr_{{i}}"]
            if w.dtype.kind in "fc":
                np.testing.assert_allclose(o.astype(np.float64), w.astype(np.float64),
                                           rtol=1e-5, atol=1e-6)
            elif w.dtype == np.int16 and o.dtype.itemsize == 1:
                np.testing.assert_array_equal(o.astype(np.int16), w)
            else:
                np.testing.assert_array_equal(o, w)
    except Exception as exc:
        bad.append(f"{{cid}}: {{type(exc).__name__}}: {{str(exc).strip().splitlines()[:1]}}")
assert "tvm.relax" not in sys.modules, "the compiler package was imported"
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""
    run_with_runtime_only_tvm(code, timeout=900)


def test_a_constant_gather_fuses_with_what_reads_it():
    """A layer's keys picked from a KV cache ([S, layers, heads, dim], S symbolic) by a
    constant Gather, then transposed: one kernel reading the cache (take, opaque to FuseOps,
    made the selection a kernel and a copy of its own)."""
    import tvm
    from tvm import relax

    from ecograph.backends.tvm import build
    from ecograph.ir import GraphBuilder

    b = GraphBuilder("cache")
    cache = b.input("cache", "float32", ["s", 3, 2, 8])
    layer = b.op("Gather", cache, b.constant(np.array(-2, np.int64), "layer"), axis=1)
    b.output(b.op("Transpose", layer, perm=[1, 0, 2]))
    result = build.build_module(b.graph, "x86")
    assert len(result.kernels) == 1, result.kernels
    x = np.random.default_rng(0).standard_normal((5, 3, 2, 8)).astype(np.float32)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, x[:, 1].transpose(1, 0, 2))
    assert np.array_equal(got, interpret(b.graph, {"cache": x})[b.graph.outputs[0].name])
