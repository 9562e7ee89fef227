"""distill(): a pruned tiny transformer trained against its original gets closer to it on
held-out inputs; the weights come back in a new graph that the interpreter runs; bad input
is a typed error."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from ecograph.errors import InputError, UsageError
from ecograph.ir import Graph, GraphBuilder, Value, interpret, verify
from ecograph.prune import DropLayers, PruneFFN
from ecograph.train import distill, hidden_state_names, to_torch
from tests.train.graphs import feeds, tiny_transformer

TRAIN = [feeds(i) for i in range(8)]
HELD_OUT = [feeds(100 + i) for i in range(4)]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny graphs: on a busy machine, more threads only contend (10x slower measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _array(value: Value) -> np.ndarray:
    assert value.const_value is not None
    return value.const_value


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine over the last axis, in float64 (numpy, independent of distill's own)."""
    a2 = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b2 = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return float(
        ((a2 * b2).sum(1) / np.linalg.norm(a2, axis=1) / np.linalg.norm(b2, axis=1)).mean()
    )


def _held_out_cosine(student: Graph, teacher: Graph) -> float:
    return float(
        np.mean([_cosine(interpret(student, f)["y"], interpret(teacher, f)["y"]) for f in HELD_OUT])
    )


def test_distill_recovers_pruned_ffn() -> None:
    teacher = tiny_transformer()
    student = teacher.copy()
    PruneFFN(ratio=0.75).run(student)
    weights_before = {n: _array(v).copy() for n, v in student.constants.items()}
    before = _held_out_cosine(student, teacher)

    result = distill(
        student, teacher, TRAIN, steps=50, lr=1e-2, validation_data=HELD_OUT, progress=False
    )
    after = _held_out_cosine(result.graph, teacher)
    # Measured: 0.736 before, 0.905 after.
    assert before < 0.80
    assert after > before + 0.1
    assert result.cosine_before["y"] == pytest.approx(before, abs=1e-5)
    assert result.cosine_after["y"] == pytest.approx(after, abs=1e-4)
    assert len(result.losses) == 50 and np.mean(result.losses[-5:]) < 0.5 * result.losses[0]
    assert result.hidden_states == ["h0_attn", "h0_ffn", "h1_attn"]

    # A new graph with the same interface and constant types; the student is untouched.
    verify(result.graph)
    assert result.graph is not student
    for name, value in student.constants.items():
        assert np.array_equal(_array(value), weights_before[name]), name
        new = result.graph.constants[name]
        assert (new.dtype, new.shape) == (value.dtype, value.shape)
    # The interpreter runs the trained graph as the torch module does.
    x = HELD_OUT[0]["x"]
    (expected,) = to_torch(result.graph)(x)
    np.testing.assert_allclose(
        interpret(result.graph, {"x": x})["y"], expected.detach().numpy(), rtol=1e-5, atol=1e-5
    )


def test_same_model_has_zero_loss_and_keeps_global_state() -> None:
    teacher = tiny_transformer()
    rng_state = torch.get_rng_state()
    threads = torch.get_num_threads()
    result = distill(teacher.copy(), teacher, TRAIN[:2], steps=2, lr=1e-3, progress=False)
    assert result.losses[0] == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.get_num_threads() == threads


def test_teacher_values_past_the_cache_budget_are_recomputed_the_same() -> None:
    # Two epochs over two batches: the default caches both teacher runs, cache_bytes=0 runs
    # the teacher at every step; the training is the same, loss for loss.
    teacher = tiny_transformer()
    student = teacher.copy()
    PruneFFN(ratio=0.5).run(student)
    cached = distill(student, teacher, TRAIN[:2], steps=4, lr=1e-2, progress=False)
    uncached = distill(student, teacher, TRAIN[:2], steps=4, lr=1e-2, progress=False, cache_bytes=0)
    assert cached.losses == uncached.losses
    assert len(set(cached.losses)) == 4  # the student did change between the visits


def test_hidden_states_skip_dropped_branches() -> None:
    teacher = tiny_transformer()
    assert hidden_state_names(teacher, teacher) == ["h0_attn", "h0_ffn", "h1_attn"]
    student = teacher.copy()
    DropLayers(ratio=0.25, importance="l2").run(student)  # drops branch h0_attn
    assert not student.has_value("h0_attn")
    assert hidden_state_names(student, teacher) == ["h0_ffn", "h1_attn"]


def test_kl_on_logits_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    b = GraphBuilder("classifier")
    x = b.input("x", "float32", [4, 8])
    h = b.op("Relu", b.op("MatMul", x, b.constant(rng.standard_normal((8, 32)).astype(np.float32))))
    b.output(
        b.op(
            "MatMul", h, b.constant(rng.standard_normal((32, 5)).astype(np.float32)), name="logits"
        )
    )
    teacher = b.graph
    student = teacher.copy()
    PruneFFN(ratio=0.5).run(student)
    data = [{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(4)]
    result = distill(student, teacher, data, steps=30, lr=1e-2, progress=True)
    assert "distill" in capsys.readouterr().err  # the progress bar
    assert result.losses[-1] < result.losses[0]
    distill(student, teacher, data, steps=2, progress=False)
    assert capsys.readouterr().err == ""


def test_bad_input_is_a_typed_error() -> None:
    teacher = tiny_transformer()
    student = teacher.copy()
    with pytest.raises(UsageError, match="train_data is empty"):
        distill(student, teacher, [])
    with pytest.raises(InputError, match=r"misses inputs \['x'\] / has unknown inputs \['z'\]"):
        distill(student, teacher, [{"z": TRAIN[0]["x"]}])
    with pytest.raises(InputError, match=r"train_data\[0\] input 'x' is float64\[4, 6, 16\]"):
        distill(student, teacher, [{"x": TRAIN[0]["x"].astype(np.float64)}])
    with pytest.raises(InputError, match=r"validation_data\[1\] input 'x' has rank 2"):
        distill(
            student,
            teacher,
            TRAIN,
            validation_data=[HELD_OUT[0], {"x": np.zeros((2, 3), np.float32)}],
        )
    with pytest.raises(UsageError, match="steps must be at least 1"):
        distill(student, teacher, TRAIN, steps=0)
    other = teacher.copy()
    other.rename_value(other.outputs[0], "z")
    with pytest.raises(UsageError, match="output 'y' is missing from the student"):
        distill(other, teacher, TRAIN)
    with pytest.raises(UsageError, match="hidden state 'nope'"):
        distill(student, teacher, TRAIN, hidden_states=["nope"])
