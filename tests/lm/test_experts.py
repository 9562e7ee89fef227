"""The capture's experts layer (ecograph.lm.capture.dense_experts_forward: every expert over
every token, weighted by the router) against transformers' own batched_mm implementation
(the chosen experts' weights gathered per token), for every layout transformers' experts
interface declares: gated or not, transposed weights, biases, a norm after each expert.
Tolerance 1e-5 (the two sum the same products in another order)."""

from __future__ import annotations

import itertools
from types import MethodType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ecograph.errors import UnsupportedError
from ecograph.lm.capture import dense_experts_forward
from tests.lm.conftest import torch

moe = pytest.importorskip("transformers.integrations.moe")

EXPERTS, HIDDEN, FFN, TOKENS, TOP_K = 5, 12, 8, 7, 2


def experts_layer(gated: bool, transposed: bool, bias: bool, post_norm: bool) -> Any:
    """An object with the attributes transformers' experts functions read (random weights)."""
    gen = torch.Generator().manual_seed(0)

    def weight(out: int, inp: int) -> Any:
        shape = (EXPERTS, inp, out) if transposed else (EXPERTS, out, inp)
        return torch.randn(shape, generator=gen)

    up = 2 * FFN if gated else FFN
    layer = SimpleNamespace(
        num_experts=EXPERTS,
        has_gate=gated,
        has_bias=bias,
        is_transposed=transposed,
        has_post_expert_norm=post_norm,
        _is_expert_parallel=False,
        act_fn=torch.nn.functional.silu,
        down_proj=weight(HIDDEN, FFN),
        down_proj_bias=torch.randn((EXPERTS, HIDDEN), generator=gen),
        post_expert_norm=torch.nn.LayerNorm(HIDDEN),
    )
    name = "gate_up_proj" if gated else "up_proj"
    setattr(layer, name, weight(up, HIDDEN))
    setattr(layer, f"{name}_bias", torch.randn((EXPERTS, up), generator=gen))
    layer._apply_gate = MethodType(moe._default_apply_gate, layer)
    return layer


def routing() -> tuple[Any, Any, Any]:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn((TOKENS, HIDDEN), generator=gen)
    scores = torch.randn((TOKENS, EXPERTS), generator=gen).softmax(-1)
    weights, index = scores.topk(TOP_K, dim=-1)
    return hidden, index, weights


@pytest.mark.parametrize(
    "gated,transposed,bias,post_norm", list(itertools.product([True, False], repeat=4))
)
def test_dense_experts_match_transformers(
    gated: bool, transposed: bool, bias: bool, post_norm: bool
) -> None:
    layer = experts_layer(gated, transposed, bias, post_norm)
    hidden, index, weights = routing()
    with torch.no_grad():
        want = moe.batched_mm_experts_forward(layer, hidden, index, weights)
        got = dense_experts_forward(layer, hidden, index, weights)
    assert got.shape == (TOKENS, HIDDEN)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=1e-5)


def test_unchosen_experts_do_not_count() -> None:
    """An expert no token chose adds exactly 0: changing its weights changes nothing."""
    layer = experts_layer(True, False, True, False)
    hidden, index, weights = routing()
    index = torch.where(index == 3, torch.full_like(index, 4), index)  # expert 3: unchosen
    index[:, 1] = torch.where(index[:, 0] == 4, 0, index[:, 1])  # (still 2 distinct)
    with torch.no_grad():
        before = dense_experts_forward(layer, hidden, index, weights)
        layer.gate_up_proj[3] *= 1e3
        layer.down_proj[3] *= 1e3
        after = dense_experts_forward(layer, hidden, index, weights)
    assert not (index == 3).any()
    np.testing.assert_array_equal(after.numpy(), before.numpy())


def test_expert_parallel_layers_are_refused() -> None:
    layer = experts_layer(True, False, False, False)
    layer._is_expert_parallel = True
    with pytest.raises(UnsupportedError, match="expert parallelism"):
        dense_experts_forward(layer, *routing())
