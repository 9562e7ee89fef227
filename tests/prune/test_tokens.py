"""Padding rows do not count in calibration (ecograph/prune/tokens.py): importance, block
influence and the refit on a padded batch with its token mask equal the same on the real
tokens alone."""

from __future__ import annotations

import numpy as np
import pytest

from ecograph.errors import UsageError
from ecograph.ir import Graph, GraphBuilder
from ecograph.prune import PruneFFN, block_influence, layer_groups
from ecograph.prune.tokens import mask_input, real_rows

D, F = 6, 10


def _encoder(blocks: int = 2) -> Graph:
    """x[batch, seq, D] (+ an attention_mask input) -> `blocks` residual MLP blocks."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("padded")
    x = b.input("x", "float32", ["batch", "seq", D])
    b.input("attention_mask", "int64", ["batch", "seq"])
    for i in range(blocks):
        w1 = (rng.standard_normal((D, F)) / np.sqrt(D)).astype(np.float32)
        w2 = (rng.standard_normal((F, D)) / np.sqrt(F)).astype(np.float32)
        h = b.op("Relu", b.op("MatMul", x, b.constant(w1, f"w1_{i}"), name=f"up{i}"))
        y = b.op("Add", b.op("MatMul", h, b.constant(w2, f"w2_{i}"), name=f"down{i}"),
                 b.constant(rng.standard_normal(D).astype(np.float32), f"b2_{i}"))  # fmt: skip
        x = b.op("Add", x, y)
    b.output(x)
    return b.graph


def _padded_and_compact() -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Two batches of 3 sentences padded to 8 tokens, padding positions filled with large
    values, and the same real tokens as one unpadded batch each."""
    rng = np.random.default_rng(1)
    padded, compact = [], []
    for lengths in ([3, 8, 5], [2, 6, 4]):
        x = 50 * rng.standard_normal((3, 8, D)).astype(np.float32)
        mask = np.zeros((3, 8), np.int64)
        for row, n in enumerate(lengths):
            x[row, :n] = rng.standard_normal((n, D))
            mask[row, :n] = 1
        padded.append({"x": x, "attention_mask": mask})
        real = x[mask != 0][None]
        compact.append({"x": real, "attention_mask": np.ones(real.shape[:2], np.int64)})
    return padded, compact


def _constants(graph: Graph) -> dict[str, np.ndarray]:
    return {name: np.asarray(v.const_value) for name, v in graph.constants.items()}


def test_pruning_and_refit_count_only_the_real_tokens() -> None:
    padded, compact = _padded_and_compact()

    def pruned(calibration: list[dict[str, np.ndarray]], mask: str | None) -> Graph:
        graph = _encoder()
        PruneFFN(ratio=0.5, importance="wanda", calibration=calibration, reconstruct=True,
                 mask=mask).run(graph)  # fmt: skip
        return graph

    on_real = _constants(pruned(compact, None))
    masked = _constants(pruned(padded, "auto"))
    assert masked.keys() == on_real.keys()
    assert {k: v.shape for k, v in masked.items()} == {k: v.shape for k, v in on_real.items()}
    for name, value in on_real.items():
        np.testing.assert_allclose(masked[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # Without the mask the padding rows (most of the rows, and large) steer both.
    unmasked = _constants(pruned(padded, None))
    assert any(
        unmasked[k].shape != v.shape or not np.allclose(unmasked[k], v, rtol=1e-3, atol=1e-3)
        for k, v in on_real.items()
    )


def test_block_influence_counts_only_the_real_tokens() -> None:
    padded, compact = _padded_and_compact()
    graph = _encoder(blocks=3)
    layers = layer_groups(graph)
    assert len(layers) == 3
    on_real = block_influence(graph, layers, compact)
    masked = block_influence(graph, layers, padded, mask="attention_mask")
    np.testing.assert_allclose(masked, on_real, rtol=1e-9, atol=1e-12)
    assert not np.allclose(block_influence(graph, layers, padded), on_real, rtol=1e-3)


def test_rows_of_an_activation_follow_the_mask() -> None:
    keep = np.array([[1, 1, 0], [1, 0, 0]]) != 0
    expected = [True, True, False, True, False, False]
    assert real_rows((2, 3, 5), keep).tolist() == expected  # type: ignore[union-attr]
    assert real_rows((6, 5), keep).tolist() == expected  # type: ignore[union-attr]  # flattened
    assert real_rows((2, 5), keep) is None  # pooled: one row per sentence, all real
    assert real_rows((2, 3, 5), None) is None


def test_the_mask_input_is_named_or_found() -> None:
    graph = _encoder(blocks=1)
    assert mask_input(graph, "auto", "prune-ffn") == "attention_mask"
    assert mask_input(graph, None, "prune-ffn") is None
    b = GraphBuilder("no-mask")
    b.output(b.op("Relu", b.input("x", "float32", ["batch", D])))
    assert mask_input(b.graph, "auto", "prune-ffn") is None
    with pytest.raises(UsageError, match=r"prune-ffn: mask='x' is not an integer or bool input"):
        mask_input(graph, "x", "prune-ffn")
    with pytest.raises(UsageError, match=r"mask='tokens' .*'attention_mask', 'x'"):
        PruneFFN(ratio=0.5, importance="wanda", calibration=_padded_and_compact()[0],
                 mask="tokens").run(_encoder(blocks=1))  # fmt: skip
