"""The ops fusions produce (ecograph/ir/ops/fused.py) against independent references:
onnx.reference's Attention-23, and plain numpy for SiLU / SwiGLU."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.ir.ops.fused import attention, silu, swiglu

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

RNG = np.random.default_rng(0)


def onnx_attention(inputs: list[np.ndarray | None], **attrs: object) -> np.ndarray:
    names = ["Q", "K", "V", "attn_mask"][: len(inputs)]
    node = helper.make_node("Attention", names, ["Y"], **attrs)
    ins = [
        helper.make_tensor_value_info(
            n, TensorProto.BOOL if a.dtype == np.bool_ else TensorProto.FLOAT, list(a.shape)
        )
        for n, a in zip(names, inputs, strict=True)
        if a is not None
    ]
    out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph([node], "g", ins, [out]), opset_imports=[helper.make_opsetid("", 23)]
    )
    feeds = {n: a for n, a in zip(names, inputs, strict=True) if a is not None}
    return ReferenceEvaluator(model).run(None, feeds)[0]


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def kernel(*args: np.ndarray | None, **attrs: object) -> np.ndarray:
    defaults = {"is_causal": 0, "kv_num_heads": None, "q_num_heads": None,
                "qk_matmul_output_mode": 0, "scale": None, "softcap": 0.0,
                "softmax_precision": None}  # fmt: skip
    return attention(*args, **{**defaults, **attrs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mask", "attrs"),
    [
        (None, {}),
        ("float", {"scale": 0.3}),
        ("bool", {}),
        (None, {"is_causal": 1}),
    ],
)
def test_attention_4d_matches_onnx_reference(mask: str | None, attrs: dict) -> None:
    q, k, v = f32(2, 4, 5, 8), f32(2, 2, 6, 8), f32(2, 2, 6, 8)  # GQA: 4 query, 2 kv heads
    m = None
    if mask == "float":
        m = f32(2, 1, 5, 6)
    elif mask == "bool":
        m = RNG.random((2, 1, 5, 6)) < 0.7
        m[..., 0] = True  # no fully masked rows (both conventions give zeros anyway)
    args = [q, k, v] if m is None else [q, k, v, m]
    np.testing.assert_allclose(
        kernel(*args, **attrs), onnx_attention(args, **attrs), rtol=1e-5, atol=1e-6
    )


def test_attention_3d_matches_onnx_reference() -> None:
    q, k, v = f32(2, 5, 32), f32(2, 6, 16), f32(2, 6, 16)
    attrs = {"q_num_heads": 4, "kv_num_heads": 2}
    np.testing.assert_allclose(
        kernel(q, k, v, **attrs), onnx_attention([q, k, v], **attrs), rtol=1e-5, atol=1e-6
    )


def test_fully_masked_rows_give_zeros() -> None:
    q, k, v = f32(1, 1, 2, 4), f32(1, 1, 3, 4), f32(1, 1, 3, 4)
    m = np.ones((1, 1, 2, 3), bool)
    m[0, 0, 1] = False
    y = kernel(q, k, v, m)
    assert np.all(y[0, 0, 1] == 0) and np.all(np.isfinite(y))


def test_silu_and_swiglu() -> None:
    x, u = f32(3, 7) * 4, f32(3, 7)
    ref = x.astype(np.float64) / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(silu(x), ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(swiglu(x, u), ref * u, rtol=1e-6, atol=1e-7)
    assert silu(x.astype(np.float16)).dtype == np.float16
