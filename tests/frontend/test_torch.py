"""from_torch: op conversions checked against PyTorch, naming, weights, capture modes, errors."""

from __future__ import annotations

import collections
import warnings
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ecograph  # noqa: E402
from ecograph.errors import CaptureError, UnsupportedError  # noqa: E402
from ecograph.frontend.torch import (  # noqa: E402
    ATEN_TABLE,
    Converter,
    from_torch,
    register_aten,
    supported_aten_ops,
)
from ecograph.ir import graphs_equal, interpret, parse, verify  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*isinstance\\(treespec, LeafSpec\\).*:FutureWarning"
)


class Fn(nn.Module):
    """Wraps a function of tensors as a module (from_torch takes modules only)."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> Any:
        return self.fn(*args)


class Fn1(nn.Module):
    """A one-input function as a module with a named argument (for dynamic_shapes specs)."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> Any:
        return self.fn(x)


def check_against_torch(module: nn.Module, *inputs: torch.Tensor, **kw: Any) -> Any:
    """Capture, verify, interpret and compare every output with PyTorch (1e-5 relative)."""
    graph = from_torch(module, inputs, **kw)
    verify(graph)
    feeds = {v.name: x.numpy() for v, x in zip(graph.inputs, inputs, strict=True)}
    got = list(interpret(graph, feeds).values())
    with torch.no_grad():
        want = torch.utils._pytree.tree_leaves(module(*inputs))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        w = w.numpy()
        assert g.dtype == w.dtype, f"dtype {g.dtype}, PyTorch gives {w.dtype}"
        assert g.shape == w.shape, f"shape {g.shape}, PyTorch gives {w.shape}"
        if w.dtype == np.bool_ or np.issubdtype(w.dtype, np.integer):
            np.testing.assert_array_equal(g, w)
        else:
            scale = max(float(np.abs(w).max()), 1e-6)
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * scale)
    return graph


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


X = randn(2, 3, 8)
Y = randn(2, 3, 8, seed=1)

# Each case: a function of tensors and its inputs. Together they exercise the op table.
CASES: dict[str, tuple[Any, tuple[torch.Tensor, ...]]] = {
    "arith": (lambda a, b: (a + 2 * b) * a - b / (a.abs() + 1) - 3, (X, Y)),
    "scalar_rsub_pow": (lambda a: 1 - a.pow(2) + a**3, (X,)),
    "int_promotion": (lambda a, i: a * i + i // 2 + (i % 3), (X, torch.arange(8))),
    "compare_where": (lambda a, b: torch.where(a > b, a, b * 0.5) + (a <= 0).float(), (X, Y)),
    "logic": (lambda a, b: ((a > 0) & (b < 0)) | ~(a > b) ^ (b > 1), (X, Y)),
    "unary": (
        lambda a: (
            torch.exp(-a.abs())
            + torch.log1p(a.abs())
            + torch.sqrt(a.abs())
            + a.rsqrt().nan_to_num(0.0).clamp(-2, 2)
            + torch.tanh(a)
            + torch.sigmoid(a)
            + torch.sin(a) * torch.cos(a)
        ),
        (X,),
    ),
    "activations": (
        lambda a: (
            nn.functional.gelu(a)
            + nn.functional.gelu(a, approximate="tanh")
            + nn.functional.silu(a)
            + nn.functional.hardswish(a)
            + nn.functional.hardsigmoid(a)
            + nn.functional.relu6(a)
            + nn.functional.leaky_relu(a, 0.1)
            + nn.functional.elu(a)
            + nn.functional.softplus(a)
            + nn.functional.mish(a)
        ),
        (X,),
    ),
    "clamp": (lambda a: a.clamp(min=-0.5) + a.clamp(max=0.3) + a.clamp(-0.2, 0.2), (X,)),
    "reductions": (
        lambda a: (
            a.mean(-1),
            a.sum((0, 2), keepdim=True),
            a.amax(1),
            a.amin(-1),
            a.max(-1),
            a.max(),
            a.min(),
            a.argmax(-1),
            a.prod(0),
            (a > 0).any(-1),
            (a > -5).all(),
        ),
        (X,),
    ),
    "softmax": (lambda a: torch.softmax(a, -1) + torch.log_softmax(a, 1).exp(), (X,)),
    "reshape": (
        lambda a: (
            a.view(6, 8),
            a.reshape(2, -1),
            a.permute(2, 0, 1),
            a.transpose(0, 1),
            a.unsqueeze(1).squeeze(1),
            a.flatten(),
            a.t() if a.dim() == 2 else a.mT,
        ),
        (X,),
    ),
    "slice_select": (
        lambda a: (a[:, 1:, ::2], a[..., -3:], a[1], a[:, :, 2], a[:, None, 0]),
        (X,),
    ),
    "cat_split_stack": (
        lambda a, b: (
            torch.cat([a, b], -1),
            *torch.split(a, [3, 5], -1),
            torch.stack([a, b]),
            *a.chunk(2, -1),
            *a.unbind(1),
        ),
        (X, Y),
    ),
    "expand_repeat_pad": (
        lambda a: (
            a[:, :1].expand(2, 4, 8),
            a.repeat(1, 2, 1),
            nn.functional.pad(a, (1, 2)),
            a[:1].expand(3, -1, -1),
        ),
        (X,),
    ),
    "index": (
        lambda a, i: (
            a[:, i],
            a[i % 2],
            a[torch.tensor([0, 1]), torch.tensor([2, -1])],
            torch.gather(a, 2, i.view(1, 1, 4).expand(2, 3, 4)),
            a.index_select(2, i),
        ),
        (X, torch.tensor([0, 2, 1, 2])),
    ),
    "creation": (
        lambda a: (
            torch.ones_like(a) * 2
            + torch.zeros(2, 3, 8)
            + torch.full((8,), 0.5)
            + torch.arange(8).float(),
            torch.tril(a) - torch.triu(a, 1),
        ),
        (X,),
    ),
    "cumsum_cast": (lambda a: (torch.cumsum(a, -1), (a > 0).cumsum(1), a.to(torch.int32)), (X,)),
    "masked_fill": (lambda a: a.masked_fill(a > 0.5, -1.0), (X,)),
    "div_modes": (
        lambda a, i: (
            torch.div(a, 0.7, rounding_mode="floor"),
            torch.div(a, 0.7, rounding_mode="trunc"),
            torch.div(i - 4, 3, rounding_mode="floor"),
            torch.remainder(a, 0.6),
            torch.fmod(a, 0.6),
        ),
        (X, torch.arange(8)),
    ),
    "more_unary": (
        lambda a: (
            torch.trunc(a * 3),
            torch.log2(a.abs() + 1),
            torch.log10(a.abs() + 1),
            torch.asinh(a),
            torch.atanh(a.tanh() * 0.9),
            torch.acosh(a.abs() + 1),
            torch.flip(a, [0, -1]),
        ),
        (X,),
    ),
    "topk_sort_var": (
        lambda a: (
            *torch.topk(a, 3, dim=-1),
            torch.sort(a, -1, descending=True)[0],
            torch.sort(a, 1)[1],
            a.var(-1),
            a.std((0, 2), keepdim=True),
            a.var(1, correction=0),
        ),
        (X,),
    ),
    "vector_norms": (
        lambda a: (
            nn.functional.normalize(a, dim=-1),
            a.norm(),
            torch.linalg.vector_norm(a, ord=1, dim=(0, 2)),
            torch.linalg.vector_norm(a, ord=float("inf"), dim=-1, keepdim=True),
            torch.linalg.vector_norm(a, ord=float("-inf"), dim=1),
            torch.linalg.vector_norm(a.relu(), ord=0, dim=-1),
            torch.linalg.vector_norm(a, ord=3, dim=0),
            torch.linalg.vector_norm(a, ord=-1.5, dim=(1, 2), keepdim=True),
            torch.linalg.vector_norm(a[0, 0, 0]),
        ),
        (X,),
    ),
    "pads_fill_scatter": (
        lambda a, i: (
            nn.functional.pad(a, (2, 1), mode="reflect"),
            nn.functional.pad(a, (1, 2), mode="replicate"),
            torch.zeros_like(a).fill_(3.0),
            torch.zeros(2, 3, 8).scatter(2, i.view(1, 1, 4).expand(2, 3, 4), a[..., :4]),
            torch.ones(2, 3, 8).scatter_add(2, i.view(1, 1, 4).expand(2, 3, 4), a[..., :4]),
        ),
        (X, torch.tensor([0, 5, 1, 7])),
    ),
    "matmul": (lambda a, b: (a @ b.transpose(1, 2), torch.bmm(a, b.transpose(1, 2))), (X, Y)),
    "sdpa_causal": (
        lambda q, k: nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True),
        (randn(1, 2, 5, 4), randn(1, 2, 5, 4, seed=3)),
    ),
    "sdpa_bool_mask_gqa": (
        lambda q, k, m: nn.functional.scaled_dot_product_attention(
            q, k, k * 2, attn_mask=m, enable_gqa=True, scale=0.3
        ),
        (randn(1, 4, 5, 4), randn(1, 2, 6, 4, seed=3), randn(5, 6, seed=4) > -0.5),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_pytorch(name: str) -> None:
    fn, inputs = CASES[name]
    check_against_torch(Fn(fn), *inputs)


def test_layers_match_pytorch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(4, 8, 3, padding=1, groups=2),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.AvgPool1d(2),
        nn.Flatten(),
        nn.Linear(8 * 8, 6),
        nn.LayerNorm(6),
        nn.Dropout(0.5),
    )
    _randomize_norm_stats(model)
    check_against_torch(model.eval(), randn(3, 4, 16))


def _randomize_norm_stats(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def test_pooling_and_adaptive_pool() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, dilation=2, padding=2),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.AvgPool2d(2, padding=1, count_include_pad=False),
        nn.AdaptiveAvgPool2d((2, 2)),
    )
    check_against_torch(model, randn(2, 3, 30, 30))


# ------------------------------------------------------------ names and weights


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 4)

    def forward(self, tokens: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.proj(tokens)
        return {"hidden": h, "scaled": h * scale}


def test_input_and_output_names_follow_the_signature() -> None:
    graph = from_torch(DictOut(), (X, torch.tensor(2.0)))
    assert [v.name for v in graph.inputs] == ["tokens", "scale"]
    assert [v.name for v in graph.outputs] == ["hidden", "scaled"]


def test_keyword_inputs_and_tuple_outputs() -> None:
    model = Fn(lambda a, b: (a + b, a * b))
    graph = from_torch(model, (X, Y))
    assert [v.name for v in graph.outputs] == ["output_0", "output_1"]
    graph = from_torch(DictOut(), {"scale": torch.tensor(3.0), "tokens": X})
    assert sorted(v.name for v in graph.inputs) == ["scale", "tokens"]


def test_named_tuple_and_single_outputs() -> None:
    Pair = collections.namedtuple("Pair", ["low", "high"])
    graph = from_torch(Fn(lambda a: Pair(a.amin(-1), a.amax(-1))), (X,))
    assert [v.name for v in graph.outputs] == ["low", "high"]
    graph = from_torch(Fn(lambda a: a * 2), (X,))
    assert [v.name for v in graph.outputs] == ["output"]


def test_output_that_is_an_input_or_repeated() -> None:
    graph = from_torch(Fn1(lambda a: (a, a + 1, a)), (X,))
    verify(graph)
    assert [v.name for v in graph.outputs] == ["output_0", "output_1", "output_2"]
    got = list(interpret(graph, {"x": X.numpy()}).values())
    np.testing.assert_array_equal(got[0], X.numpy())
    np.testing.assert_array_equal(got[1], X.numpy() + 1)
    np.testing.assert_array_equal(got[2], X.numpy())


def test_weights_are_shared_with_the_module() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    graph = from_torch(model, (X,))
    arrays = [c.const_value for c in graph.constants.values()]
    for p in model.parameters():
        assert any(np.shares_memory(a, p.detach().numpy()) for a in arrays), p.shape


def test_unused_buffers_are_dropped_and_train_flags_restored() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.9))
    model.train()
    graph = from_torch(model, (randn(1, 3, 4, 4),))
    assert model.training and all(m.training for m in model.modules())
    assert not any("num_batches_tracked" in name for name in graph.constants)
    # Dropout is gone in eval mode: the output is deterministic and equals eval PyTorch.
    model.eval()
    check_against_torch(model, randn(1, 3, 4, 4))


class Overwrites(nn.Module):
    """Overwrites a buffer it never reads, from its input (as Phi-3's LongRoPE picks its
    frequencies by the sequence length each call), then uses the new value."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(4))
        self.register_buffer("short", torch.ones(4))
        self.register_buffer("long", torch.full((4,), 3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.scale.copy_(torch.where(x.max() > 0.5, self.long, self.short))
        return x * self.scale


class Counts(nn.Module):
    """Reads a buffer and updates it: state carried from one call to the next."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return x * self.calls


def test_a_buffer_overwritten_and_never_read_is_computed_each_call() -> None:
    model = Overwrites()
    graph = from_torch(model, (torch.full((2, 4), 0.1),))
    verify(graph)
    assert len(graph.outputs) == 1  # the mutation is not an output
    for value in (0.1, 0.9, 0.2):  # the short and the long branch, one graph
        x = torch.full((2, 4), value)
        (got,) = interpret(graph, {graph.inputs[0].name: x.numpy()}).values()
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-6)
    with pytest.raises(UnsupportedError, match=r"mutates 'calls' in place.*reads it"):
        from_torch(Counts(), (X,), capture="export")


def test_graph_prints_and_parses_back() -> None:
    graph = from_torch(DictOut(), (X, torch.tensor(2.0)))
    assert graphs_equal(parse(str(graph)), graph)


# ------------------------------------------------------------- symbolic dims


def test_dynamic_shapes_spec_errors_are_not_hidden_by_fx() -> None:
    batch = torch.export.Dim("batch")
    with pytest.raises(CaptureError, match=r"torch.export could not capture"):
        # A spec for two inputs on a one-input module: torch rejects it; no silent fx fallback.
        from_torch(Fn1(torch.relu), (X,), dynamic_shapes=({0: batch}, {0: batch}))


def test_dynamic_dims_keep_user_names() -> None:
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=64)
    model = Fn1(lambda a: torch.softmax(a.reshape(a.shape[0], -1), -1).view_as(a))
    x = randn(2, 6, 8)
    graph = from_torch(model, (x,), dynamic_shapes={"x": {0: batch, 1: seq}})
    assert graph.inputs[0].name == "x"
    assert graph.inputs[0].shape == ("batch", "seq", 8)
    assert graph.outputs[0].shape == ("batch", "seq", 8)
    for shape in [(3, 5, 8), (2, 9, 8)]:
        x2 = randn(*shape, seed=5)
        got = interpret(graph, {graph.inputs[0].name: x2.numpy()})["output"]
        np.testing.assert_allclose(got, model(x2).numpy(), rtol=1e-5, atol=1e-6)


def test_dynamic_arange_full_and_causal_attention() -> None:
    def fn(q: torch.Tensor) -> torch.Tensor:
        n = q.shape[-2]
        pos = torch.arange(n).float()
        bias = torch.full((n,), 0.5) * pos
        out = nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        return out + bias[:, None]

    seq = torch.export.Dim("seq", min=2, max=64)
    graph = from_torch(Fn1(fn), (randn(1, 2, 7, 4),), dynamic_shapes=({2: seq},))
    verify(graph)
    assert graph.inputs[0].shape == (1, 2, "seq", 4)
    for n in (3, 11):
        q = randn(1, 2, n, 4, seed=n)
        got = interpret(graph, {graph.inputs[0].name: q.numpy()})["output"]
        np.testing.assert_allclose(got, fn(q).numpy(), rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------- capture modes


def test_capture_fx_forced() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(1), nn.Linear(4 * 6 * 6, 5)
    )
    graph = check_against_torch(model.eval(), randn(2, 3, 8, 8), capture="fx")
    assert graph.metadata["source"] == "torch.fx"


def test_auto_falls_back_to_fx_when_export_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated torch.export failure")

    monkeypatch.setattr(torch.export, "export", broken_export)
    model = nn.Sequential(nn.Linear(8, 4), nn.Tanh())
    with pytest.warns(UserWarning, match="falling back to torch.fx"):
        graph = from_torch(model, (X,))
    assert graph.metadata["source"] == "torch.fx"
    got = interpret(graph, {graph.inputs[0].name: X.numpy()})["output"]
    np.testing.assert_allclose(got, model(X).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(CaptureError, match=r"simulated torch.export failure"):
        from_torch(model, (X,), capture="export")


def test_capture_error_when_both_fail() -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # Python control flow on data: neither capture can keep it
                return x * 2
            return x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CaptureError, match=r"torch.fx could not trace DataDependent"):
            from_torch(DataDependent(), (X,))


def test_bad_arguments() -> None:
    with pytest.raises(UnsupportedError, match="never unpickles"):
        from_torch("model.pt", (X,))  # type: ignore[arg-type]
    with pytest.raises(UnsupportedError, match=r"torch.nn.Module"):
        from_torch(lambda x: x, (X,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capture must be one of"):
        from_torch(Fn(torch.relu), (X,), capture="jit")


def test_public_entry_point() -> None:
    assert ecograph.from_torch is from_torch
    assert "aten.addmm.default" in supported_aten_ops()


# ------------------------------------------------------------ unsupported ops


class Inner(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(x) + torch.lgamma(x * 2)


class TwoUnsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return torch.erfinv(y.tanh() * 0.5) + torch.lgamma(y)


def test_unsupported_ops_are_listed_at_once_with_places() -> None:
    with pytest.raises(UnsupportedError) as info:
        from_torch(TwoUnsupported(), (X,))
    message = str(info.value)
    assert "2 op type(s)" in message and "(4 node(s))" in message
    assert "aten.lgamma.default x3" in message
    assert "aten.erfinv.default x1" in message
    assert "module block (Inner)" in message  # the module path of the lgammas inside Inner
    assert "test_torch.py" in message  # the source line
    assert len(info.value.unsupported["aten.lgamma.default"]) == 3  # type: ignore[attr-defined]


def test_register_aten_adds_a_converter() -> None:
    model = Fn(lambda a, b: torch.hypot(a, b) * 2)
    assert "aten.hypot.default" not in ATEN_TABLE
    with pytest.raises(UnsupportedError, match=r"aten\.hypot\.default x1"):
        from_torch(model, (X, Y))

    @register_aten("aten.hypot.default")
    def _hypot(cx: Converter, node: Any) -> Any:
        a, b = cx.tensor(node.args[0]), cx.tensor(node.args[1])
        return cx.op("Sqrt", cx.op("Add", cx.op("Mul", a, a), cx.op("Mul", b, b)))

    try:
        check_against_torch(model, X, Y)
    finally:
        del ATEN_TABLE["aten.hypot.default"]


def test_unnamed_dynamic_dims_are_named_after_their_input() -> None:
    model = Fn1(lambda a: a.sum(-1))
    graph = from_torch(model, (X,), dynamic_shapes={"x": {0: torch.export.Dim.AUTO}})
    assert graph.inputs[0].shape == ("x_dim0", 3, 8)
    got = interpret(graph, {"x": randn(5, 3, 8).numpy()})["output"]
    assert got.shape == (5, 3)


def test_constants_are_named_after_module_attributes() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    graph = from_torch(model, (X,))
    assert set(graph.constants) >= {"0.weight", "0.bias"}


class _Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8, bias=False)
        self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
        self.lm_head = nn.Linear(8, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc(x))
        for layer in self.layers:
            x = layer(x) * 2
        return self.lm_head(x)


def test_nodes_are_named_after_the_module_they_ran_in() -> None:
    """`{module path}.{op}` inside submodules, the op alone in the root module; so a glob on
    a module name (the documented `*lm_head*`) names the right layer of a torch capture."""
    from ecograph.passes import run_passes
    from ecograph.quant.quantize import Quantize

    graph = from_torch(_Named().eval(), (X,))
    ops = {n.name: n.op_type for n in graph.nodes}
    assert ops["fc.mat_mul"] == "MatMul" and ops["lm_head.mat_mul"] == "MatMul"
    assert ops["layers.0.gemm"] == "Gemm" and ops["layers.1.gemm"] == "Gemm"
    assert ops["relu"] == "Relu" and ops["mul"] == "Mul"  # the root module's own ops
    run_passes(graph, "default", progress=False)  # folds the weights' transposes; names stay
    res = Quantize(mode="weight_only", exclude=["*lm_head*", "layers.1.*"]).run(graph)
    assert res.stats["quantized"] == 2
    for name, quantized in [("fc.mat_mul", True), ("layers.0.gemm", True),
                            ("lm_head.mat_mul", False), ("layers.1.gemm", False)]:  # fmt: skip
        w = graph.node(name).input(1)
        assert w is not None
        assert (w.producer is not None and w.producer.op_type == "DequantizeLinear") == quantized
    assert not any("matches no node" in note for note in res.notes)


LAYER_CASES: dict[str, tuple[Any, tuple[torch.Tensor, ...]]] = {
    "multihead_attention": (
        lambda: nn.MultiheadAttention(16, 4, batch_first=True),
        (randn(2, 5, 16), randn(2, 6, 16, seed=1), randn(2, 6, 16, seed=2)),
    ),
    "transformer_encoder_layer": (
        lambda: nn.TransformerEncoderLayer(16, 4, 32, batch_first=True),
        (randn(2, 5, 16),),
    ),
    "gru": (lambda: nn.GRU(8, 8, batch_first=True), (randn(2, 5, 8),)),
    "conv_transpose": (
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        (randn(1, 4, 5, 5),),
    ),
    "group_norm": (lambda: nn.GroupNorm(2, 4), (randn(2, 4, 3, 3),)),
    "weight_norm_conv": (  # wav2vec2's positional conv: the weight's norm is computed
        lambda: nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3, padding=1), dim=2),
        (randn(1, 4, 6),),
    ),
    "instance_norm": (lambda: nn.InstanceNorm2d(3, affine=True), (randn(2, 3, 4, 4),)),
    "upsample_nearest": (lambda: nn.Upsample(size=(8, 12)), (randn(1, 2, 4, 5),)),
    "upsample_bilinear": (
        lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
        (randn(1, 2, 4, 4),),
    ),
    "upsample_bilinear_align_corners": (
        lambda: nn.Upsample(size=(7, 9), mode="bilinear", align_corners=True),
        (randn(1, 2, 4, 4),),
    ),
    "pixel_shuffle_rms_norm": (
        lambda: nn.Sequential(nn.PixelShuffle(2), nn.RMSNorm(6)),
        (randn(1, 8, 3, 3),),
    ),
}


@pytest.mark.filterwarnings("ignore:The tensor attributes self._flat_weights")
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_matches_pytorch(name: str) -> None:
    make, inputs = LAYER_CASES[name]
    torch.manual_seed(0)
    check_against_torch(make().eval(), *inputs)


def test_half_precision_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU()).half().eval()
    x = randn(4, 8).half()
    graph = from_torch(model, (x,))
    assert graph.inputs[0].dtype == "float16"
    got = interpret(graph, {"input": x.numpy()})["output"]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=0, atol=2e-3)


def test_bfloat16_weights_are_viewed_not_copied() -> None:
    model = nn.Linear(8, 4).to(torch.bfloat16).eval()
    graph = from_torch(model, (randn(2, 8).to(torch.bfloat16),))
    weight = graph.constants["weight"].const_value
    assert weight.dtype.name == "bfloat16"
    assert np.shares_memory(weight, model.weight.detach().view(torch.int16).numpy())


def test_symbolic_size_used_as_a_number() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        return x.sum(1) / n + torch.ones(()) * n  # the size enters tensor arithmetic

    seq = torch.export.Dim("seq", max=64)
    graph = from_torch(Fn1(fn), (randn(2, 6),), dynamic_shapes={"x": {1: seq}})
    for n in (3, 10):
        x = randn(2, n, seed=n)
        got = interpret(graph, {"x": x.numpy()})["output"]
        np.testing.assert_allclose(got, fn(x).numpy(), rtol=1e-6)


class WithOptions(nn.Module):
    def forward(self, x: torch.Tensor, n: int = 2, extra: torch.Tensor | None = None) -> Any:
        return x * n if extra is None else x * n + extra


def test_python_inputs_are_baked_in_and_recorded() -> None:
    graph = from_torch(WithOptions(), (X, 3))
    assert [v.name for v in graph.inputs] == ["x"]
    assert graph.metadata["baked_inputs"] == {"n": "3"}
    np.testing.assert_allclose(interpret(graph, {"x": X.numpy()})["output"], X.numpy() * 3)
    graph = from_torch(WithOptions(), {"x": X, "extra": Y})
    assert [v.name for v in graph.inputs] == ["x", "extra"]


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(x * 2)
        y += 1
        return y


class Assigns(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[:, 0] = 0.0
        y[..., 1:3] = x[..., :2] * 2
        y[:, -1, -2:] = 5.0
        return y


@pytest.mark.parametrize("capture", ["export", "fx"])
def test_in_place_ops_are_functionalized(capture: str) -> None:
    check_against_torch(InPlace(), X, capture=capture)


def test_item_assignment() -> None:
    check_against_torch(Assigns(), X)


class MaxOfSizes(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = max(x.shape[1], y.shape[1])  # torch.sym_max on two symbolic sizes
        return torch.zeros(n) + x.sum() + y.sum()


def test_python_functions_of_sizes_are_computed_at_run_time() -> None:
    a, b = torch.export.Dim("a", max=64), torch.export.Dim("b", max=64)
    model = MaxOfSizes()
    graph = from_torch(model, (randn(2, 5), randn(2, 7)), dynamic_shapes={"x": {1: a}, "y": {1: b}})
    verify(graph)
    for n1, n2 in [(3, 9), (8, 4)]:
        x, y = randn(2, n1), randn(2, n2, seed=1)
        got = interpret(graph, {"x": x.numpy(), "y": y.numpy()})["output"]
        np.testing.assert_allclose(got, model(x, y).numpy(), rtol=1e-5)


class IndexPut(nn.Module):
    def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[x > 0.5] = 0.0
        y[i] = 1.0
        y[i, i] += 2.0
        y[:, i] = y[:, i] * 3.0
        return y


def test_index_put() -> None:
    check_against_torch(IndexPut(), randn(4, 5), torch.tensor([0, -2]))


# ------------------------------------------------------------ as_strided


AS_STRIDED_VIEWS = {
    # (input shape, size, stride, storage_offset): what each is, said as a view
    "reshape": ((2, 3, 4), (6, 4), (4, 1), 0),
    "reshape-add-unit-axis": ((2, 12), (2, 1, 3, 4), (12, 12, 4, 1), 0),
    "slice": ((2, 3, 8), (2, 2, 3), (24, 8, 2), 9),
    "slice-one-row": ((2, 3, 8), (1, 3, 8), (24, 8, 1), 24),
    "flat-strided-pick": ((4, 4), (4,), (5,), 0),
    "expand": ((3, 1), (3, 4), (1, 0), 0),
    "expand-and-slice": ((2, 6), (2, 5, 3), (6, 0, 2), 1),
}


@pytest.mark.parametrize("case", sorted(AS_STRIDED_VIEWS))
def test_as_strided_views_match_pytorch(case: str) -> None:
    shape, size, stride, offset = AS_STRIDED_VIEWS[case]
    module = Fn(lambda x: torch.as_strided(x * 2, size, stride, offset) + 1)
    graph = check_against_torch(module, randn(*shape))
    assert not graph.find_nodes("Gather")  # a view, not a copy through indices


def test_as_strided_plan_agrees_with_numpy_as_strided() -> None:
    from numpy.lib.stride_tricks import as_strided

    from ecograph.frontend.torch.aten_tensor import strided_view_plan

    for shape, size, stride, offset in AS_STRIDED_VIEWS.values():
        x = np.arange(int(np.prod(shape))).reshape(shape)
        plan = strided_view_plan(shape, size, stride, offset)
        assert plan is not None, (shape, size, stride, offset)
        y = x if plan.reshape is None else x.reshape(plan.reshape)
        if plan.starts is not None and plan.ends is not None and plan.steps is not None:
            y = y[tuple(slice(*t) for t in zip(plan.starts, plan.ends, plan.steps, strict=True))]
        y = y if plan.shape is None else y.reshape(plan.shape)
        y = y if plan.expand is None else np.broadcast_to(y, plan.expand)
        flat = x.reshape(-1)[offset:]
        want = as_strided(flat, size, [s * flat.itemsize for s in stride])
        np.testing.assert_array_equal(y, want)
    # Overlapping windows and out-of-order walks are no view ONNX can say.
    assert strided_view_plan((8,), (3, 4), (2, 1), 0) is None
    assert strided_view_plan((2, 3, 4), (4, 3, 2), (1, 4, 12), 0) is None


def test_as_strided_that_is_not_a_view_is_a_clear_error() -> None:
    module = Fn(lambda x: torch.as_strided(x + 1, (3, 4), (2, 1)))  # overlapping windows
    with pytest.raises(UnsupportedError) as info:
        from_torch(module, (randn(8),))
    message = str(info.value)
    assert "aten.as_strided.default x1" in message
    assert "as_strided(size=[3, 4], stride=[2, 1]" in message
    assert "not a reshape, slice or expand" in message
    assert "test_torch.py" in message  # the model's own line


@pytest.mark.parametrize("sizes", [((7, 7), (3, 3)), ((5, 9), (2, 4)), ((6, 6), 1)])
def test_adaptive_avg_pool_with_non_divisible_sizes(sizes: tuple[Any, Any]) -> None:
    (h, w), out = sizes
    check_against_torch(nn.AdaptiveAvgPool2d(out), randn(2, 3, h, w))
