"""An EfficientNet-style MBConv network (ReLU6, SAME padding, squeeze-excite,
AdaptiveAvgPool2d) through both import paths: `from_torch` against PyTorch eager, and
`torch.onnx.export` -> `from_onnx` -> the default pass pipeline against ONNX Runtime."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from ecograph.frontend.onnx import from_onnx  # noqa: E402
from ecograph.frontend.torch import from_torch  # noqa: E402
from ecograph.ir import Graph, interpret, verify  # noqa: E402
from ecograph.passes import Instrumentation, PassManager  # noqa: E402
from tests.models.cnn import TinyMBConvNet  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*isinstance\\(treespec, LeafSpec\\).*:FutureWarning"
)

IMAGE = (33, 30)  # odd and unequal, so SAME padding is asymmetric and H != W


def image(batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *IMAGE, generator=gen)


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    scale = max(float(np.abs(want).max()), 1e-6)
    err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    assert err <= 1e-4 * scale, f"{what}: max error {err:.3g} > 1e-4 x {scale:.3g}"


def export_onnx(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    """The TorchScript exporter, as most published EfficientNet ONNX files were made: it
    writes the SAME pads as a computed subgraph rather than a constant."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), buf, input_names=["image"], output_names=["logits"], opset_version=17,
            dynamo=False,
        )  # fmt: skip
    return buf.getvalue()


@pytest.mark.parametrize("dynamic_padding", [False, True], ids=["static-same", "dynamic-same"])
def test_from_torch_matches_pytorch_eager(dynamic_padding: bool) -> None:
    model = TinyMBConvNet(IMAGE, dynamic_padding=dynamic_padding).eval()
    x = image(2)
    graph = from_torch(model, (x,))
    verify(graph)
    with torch.no_grad():
        want = model(x).numpy()
    got = interpret(graph, {graph.inputs[0].name: x.numpy()})
    assert_close(next(iter(got.values())), want, "from_torch")


@pytest.mark.parametrize("capture", ["export", "fx"])
def test_channels_last_model_matches_pytorch_eager(capture: str) -> None:
    """In channels_last, the decomposed AdaptiveAvgPool2d(1) restrides its result with an
    in-place aten.as_strided_ (three of them here, under torch.fx capture)."""
    model = TinyMBConvNet(IMAGE).eval().to(memory_format=torch.channels_last)
    x = image(2).to(memory_format=torch.channels_last)
    graph = from_torch(model, (x,), capture=capture)
    verify(graph)
    with torch.no_grad():
        want = model(x).numpy()
    got = interpret(graph, {graph.inputs[0].name: x.numpy()})
    assert_close(next(iter(got.values())), want, f"from_torch channels_last ({capture})")


def optimized(data: bytes) -> Graph:
    graph = from_onnx(data)
    verify(graph)
    PassManager("default", Instrumentation(verify=True)).run(graph)
    verify(graph)
    return graph


@pytest.mark.parametrize("dynamic_padding", [False, True], ids=["static-same", "dynamic-same"])
def test_onnx_export_then_default_pipeline_matches_onnx_runtime(dynamic_padding: bool) -> None:
    model = TinyMBConvNet(IMAGE, dynamic_padding=dynamic_padding).eval()
    x = image()
    data = export_onnx(model, x)
    graph = optimized(data)
    assert not [v for v in graph.values() if not v.type.is_static]  # folding made all dims known
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    want = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert_close(want, model(x).numpy(), "onnxruntime vs PyTorch")
    got = interpret(graph, {"image": x.numpy()})["logits"]
    assert_close(got, want, "from_onnx + default pipeline vs onnxruntime")
