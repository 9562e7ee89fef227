"""The reference kernels of RNN, GRU and LSTM (ecograph/ir/ops/recurrent.py).

Each case is a one-node graph run by `ecograph.ir.interpret`. Every attribute is compared with
ONNX Runtime, which implements the ONNX spec (it has no `layout=1`: those cases run the
transposed layout-0 problem there and transpose back). The plain cases (no sequence_lens,
clip, custom activations or input_forget) are also compared with onnx.reference, which is
right for them.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest
from onnx import helper

from ecograph.errors import InterpreterError
from ecograph.ir import Graph, interpret
from ecograph.ir.ops._onnx_ref import reference_kernel

ort = pytest.importorskip("onnxruntime")

RNG = np.random.default_rng(0)
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
PER_DIR_ACTS = {"RNN": 1, "GRU": 2, "LSTM": 3}
NAMES = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
SEQ, BATCH, INPUT, HIDDEN = 5, 4, 3, 3
OPS = ["RNN", "GRU", "LSTM"]
DIRECTIONS = ["forward", "reverse", "bidirectional"]


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    """Each test draws the same data whatever runs before it."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.name.encode()))


def _rand(shape: tuple[int, ...], dtype: str, scale: float = 1.0) -> np.ndarray:
    return (RNG.uniform(-scale, scale, shape)).astype(dtype)


def _inputs(
    op: str,
    *,
    dirs: int,
    layout: int = 0,
    bias: bool = True,
    h0: bool = True,
    c0: bool = True,
    peep: bool = False,
    lens: list[int] | None = None,
    dtype: str = "float32",
    scale: float = 1.0,
) -> list[np.ndarray | None]:
    """The node's inputs in ONNX order (None where absent, trailing Nones dropped)."""
    g = GATES[op]
    state = (BATCH, dirs, HIDDEN) if layout else (dirs, BATCH, HIDDEN)
    ins: list[np.ndarray | None] = [
        _rand((BATCH, SEQ, INPUT) if layout else (SEQ, BATCH, INPUT), dtype, scale),
        _rand((dirs, g * HIDDEN, INPUT), dtype, scale),
        _rand((dirs, g * HIDDEN, HIDDEN), dtype, scale),
        _rand((dirs, 2 * g * HIDDEN), dtype, scale) if bias else None,
        None if lens is None else np.array(lens, np.int32),
        _rand(state, dtype, scale) if h0 else None,
    ]
    if op == "LSTM":
        ins.append(_rand(state, dtype, scale) if c0 else None)
        ins.append(_rand((dirs, 3 * HIDDEN), dtype, scale) if peep else None)
    while ins and ins[-1] is None:
        ins.pop()
    return ins


def _num_outputs(op: str) -> int:
    return 3 if op == "LSTM" else 2


def run_ecograph(
    op: str, ins: list[np.ndarray | None], attrs: dict[str, Any], num_outputs: int | None = None
) -> list[np.ndarray]:
    """The node run by ecograph's interpreter (the kernel under test)."""
    g = Graph(f"{op}_case")
    feeds: dict[str, np.ndarray] = {}
    values = []
    for name, x in zip(NAMES, ins, strict=False):
        if x is None:
            values.append(None)
            continue
        v = g.add_input(name, str(x.dtype), list(x.shape))
        feeds[name] = x
        values.append(v)
    node = g.add_node(op, values, attrs, num_outputs=num_outputs or _num_outputs(op))
    g.set_outputs(list(node.outputs))
    return list(interpret(g, feeds).values())


def run_ort(
    op: str, ins: list[np.ndarray | None], attrs: dict[str, Any], num_outputs: int | None = None
) -> list[np.ndarray]:
    """The node run by ONNX Runtime; layout=1 runs as the equivalent layout-0 node."""
    layout = int(attrs.get("layout", 0))
    arrays = dict(zip(NAMES, ins, strict=False))
    if layout:
        arrays = {
            n: np.swapaxes(a, 0, 1) if a is not None and n in ("X", "initial_h", "initial_c") else a
            for n, a in arrays.items()
        }
    attrs = {k: v for k, v in attrs.items() if k != "layout"}
    attrs.setdefault("hidden_size", HIDDEN)  # ONNX Runtime needs it
    outs = ["Y", "Y_h", "Y_c"][: num_outputs or _num_outputs(op)]
    node = helper.make_node(
        op, [n if a is not None else "" for n, a in arrays.items()], outs, **attrs
    )
    feeds = {n: a for n, a in arrays.items() if a is not None}
    graph = helper.make_graph(
        [node],
        op.lower(),
        [
            helper.make_tensor_value_info(
                n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)
            )
            for n, a in feeds.items()
        ],
        [helper.make_empty_tensor_value_info(n) for n in outs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)
    if layout:
        got = [np.transpose(v, [2, 0, 1, 3] if v.ndim == 4 else [1, 0, 2]) for v in got]
    return got


def run_onnx_reference(
    op: str, ins: list[np.ndarray | None], attrs: dict[str, Any], num_outputs: int | None = None
) -> list[np.ndarray]:
    n = num_outputs or _num_outputs(op)
    return list(reference_kernel(op)(*ins, _num_outputs=n, **attrs))


def assert_close(
    got: list[np.ndarray], want: list[np.ndarray], rtol: float = 1e-5, atol: float = 1e-6
) -> None:
    assert len(got) == len(want)
    for name, have, ref in zip(["Y", "Y_h", "Y_c"], got, want, strict=False):
        assert have.dtype == ref.dtype, f"{name}: dtype {have.dtype} != {ref.dtype}"
        assert have.shape == ref.shape, f"{name}: shape {have.shape} != {ref.shape}"
        np.testing.assert_allclose(have, ref, rtol=rtol, atol=atol, err_msg=name)


def check_ort(op: str, ins: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
    got = run_ecograph(op, ins, attrs)
    assert_close(got, run_ort(op, ins, attrs))
    return got


def _dirs(direction: str) -> int:
    return 2 if direction == "bidirectional" else 1


# ------------------------------------------------------------------ plain cases


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", OPS)
def test_plain_matches_ort_and_onnx_reference(op: str, direction: str, layout: int) -> None:
    ins = _inputs(op, dirs=_dirs(direction), layout=layout, peep=True)
    attrs = {"direction": direction, "layout": layout, "hidden_size": HIDDEN}
    got = check_ort(op, ins, attrs)
    assert_close(got, run_onnx_reference(op, ins, attrs))


@pytest.mark.parametrize("op", OPS)
def test_no_optional_inputs(op: str) -> None:
    """No B, sequence_lens, initial states or P, no hidden_size attribute."""
    ins = _inputs(op, dirs=2, bias=False, h0=False, c0=False)
    attrs = {"direction": "bidirectional"}
    got = check_ort(op, ins, attrs)
    assert_close(got, run_onnx_reference(op, ins, attrs))


@pytest.mark.parametrize("op", OPS)
def test_only_y(op: str) -> None:
    ins = _inputs(op, dirs=1)
    got = run_ecograph(op, ins, {}, num_outputs=1)
    assert len(got) == 1
    assert_close(got, run_ort(op, ins, {}, num_outputs=1))
    assert_close(got, run_onnx_reference(op, ins, {}, num_outputs=1))


def test_lstm_initial_c_without_initial_h() -> None:
    ins = _inputs("LSTM", dirs=1, h0=False, peep=True)
    assert ins[5] is None and ins[6] is not None
    check_ort("LSTM", ins, {})


@pytest.mark.parametrize("op", OPS)
def test_float64_computes_in_float64(op: str) -> None:
    """float64 stays float64 throughout: it agrees with onnx.reference (which computes in the
    input dtype) to float64 precision (ONNX Runtime's CPU kernels are float32 only)."""
    ins = _inputs(op, dirs=2, peep=True, dtype="float64")
    attrs = {"direction": "bidirectional"}
    got = run_ecograph(op, ins, attrs)
    assert_close(got, run_onnx_reference(op, ins, attrs), rtol=1e-12, atol=1e-14)
    as32 = [None if a is None else a.astype(np.float32) for a in ins]
    assert not np.array_equal(got[0].astype(np.float32), run_ecograph(op, as32, attrs)[0])


@pytest.mark.parametrize("op", OPS)
def test_float16_computes_in_float32(op: str) -> None:
    """float16 computes in float32 and rounds once: exactly the float32 result, rounded."""
    lens = [SEQ, 2, 0, 3]
    ins = _inputs(op, dirs=2, peep=True, lens=lens, dtype="float16")
    attrs = {"direction": "bidirectional", "clip": 0.7}
    got = run_ecograph(op, ins, attrs)
    upcast = [None if a is None or a.dtype.kind != "f" else a.astype(np.float32) for a in ins]
    upcast[4] = ins[4]
    want = [w.astype(np.float16) for w in run_ecograph(op, upcast, attrs)]
    for have, ref in zip(got, want, strict=True):
        assert have.dtype == np.float16
        np.testing.assert_array_equal(have, ref)


# ------------------------------------------------------------------ sequence_lens


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", OPS)
def test_sequence_lens(op: str, direction: str) -> None:
    lens = [SEQ, 2, 1, 4]  # a full row and three short ones
    ins = _inputs(op, dirs=_dirs(direction), peep=True, lens=lens)
    got = check_ort(op, ins, {"direction": direction})
    y = got[0]
    for b, n in enumerate(lens):
        assert not y[n:, :, b].any(), "Y is 0 past the row's length"


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", OPS)
def test_sequence_lens_with_empty_row(op: str, direction: str) -> None:
    lens = [SEQ, 0, 3, 0]
    ins = _inputs(op, dirs=_dirs(direction), peep=True, lens=lens)
    got = check_ort(op, ins, {"direction": direction})
    for out in got[1:]:  # zero final states, not the initial ones
        assert not out[:, 1].any() and not out[:, 3].any()
    assert not got[0][:, :, [1, 3]].any()


@pytest.mark.parametrize("op", OPS)
def test_sequence_lens_layout1(op: str) -> None:
    lens = [1, SEQ, 3, 0]
    ins = _inputs(op, dirs=2, layout=1, peep=True, lens=lens)
    check_ort(op, ins, {"direction": "bidirectional", "layout": 1})


@pytest.mark.parametrize("op", OPS)
def test_full_sequence_lens_is_no_sequence_lens(op: str) -> None:
    ins = _inputs(op, dirs=2, lens=[SEQ] * BATCH)
    attrs = {"direction": "bidirectional"}
    got = check_ort(op, ins, attrs)
    without = list(ins)
    without[4] = None
    assert_close(got, run_ecograph(op, without, attrs), rtol=0, atol=0)


def test_reverse_starts_at_last_valid_step() -> None:
    """A reverse RNN on a short row equals the same RNN on that row truncated to its length."""
    lens = [2, SEQ, 3, 1]
    ins = _inputs("RNN", dirs=1, lens=lens)
    attrs = {"direction": "reverse"}
    y, yh = run_ecograph("RNN", ins, attrs)
    for b, n in enumerate(lens):
        x, w, r, bias, _, h0 = ins
        assert x is not None and h0 is not None
        row = [x[:n, b : b + 1], w, r, bias, None, h0[:, b : b + 1]]
        y_row, yh_row = run_ecograph("RNN", row, attrs)
        np.testing.assert_allclose(y[:n, :, b : b + 1], y_row, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(yh[:, b : b + 1], yh_row, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ clip


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", OPS)
def test_clip(op: str, direction: str) -> None:
    """Large weights push the gates well past the clip, so clip changes the result."""
    ins = _inputs(op, dirs=_dirs(direction), peep=True, scale=2.0)
    attrs: dict[str, Any] = {"direction": direction, "clip": 0.4}
    got = check_ort(op, ins, attrs)
    unclipped = run_ecograph(op, ins, {"direction": direction})
    assert not np.allclose(got[0], unclipped[0], atol=1e-3)


def test_lstm_clip_leaves_cell_state_unclipped() -> None:
    """LSTM's h activation takes the cell state, which clip does not bound: with h = identity
    and every gate saturated at the clip (+0.5), C tends to 0.29 / 0.38 = 0.76 from 3, and
    Y = sigmoid(0.5) * C > 0.4, where a clipped C would give at most 0.62 * 0.5 = 0.31."""
    ins = _inputs("LSTM", dirs=1)
    bias = np.zeros((1, 8 * HIDDEN), np.float32)
    bias[0, : 4 * HIDDEN] = 20.0  # Wb of i, o, f, c: far past the clip whatever X and H
    ins[3] = bias
    ins[6] = np.full((1, BATCH, HIDDEN), 3.0, np.float32)
    attrs = {
        "clip": 0.5,
        "activations": ["Sigmoid", "Tanh", "Affine"],  # h = identity: Y = o * C
        "activation_alpha": [1.0],
        "activation_beta": [0.0],
    }
    got = check_ort("LSTM", ins, attrs)
    assert got[0].min() > 0.4


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_clip_with_sequence_lens_and_activations(op: str) -> None:
    acts = {"GRU": ["HardSigmoid", "Elu"], "LSTM": ["HardSigmoid", "Softsign", "ScaledTanh"]}[op]
    ins = _inputs(op, dirs=2, peep=True, lens=[3, SEQ, 0, 1], scale=2.0)
    attrs = {
        "direction": "bidirectional",
        "clip": 1.5,
        "activations": acts * 2,
        "activation_alpha": [0.3, 0.9, 0.25, 0.8],
        "activation_beta": [0.4, 1.1, 0.6, 0.9],
    }
    check_ort(op, ins, attrs)


# ------------------------------------------------------------------ activations

# (activations, activation_alpha, activation_beta); one set per direction.
ACTIVATION_CASES: dict[str, list[tuple[list[str], list[float] | None, list[float] | None]]] = {
    "RNN": [
        (["Relu"], None, None),
        (["Tanh"], None, None),
        (["Sigmoid"], None, None),
        (["Affine"], [0.7], [0.2]),
        (["LeakyRelu"], [0.3], None),
        (["LeakyRelu"], None, None),
        (["ThresholdedRelu"], [0.2], None),
        (["ScaledTanh"], [0.8], [1.5]),
        (["HardSigmoid"], [0.3], [0.4]),
        (["HardSigmoid"], None, None),
        (["Elu"], [0.6], None),
        (["Softsign"], None, None),
        (["Softplus"], None, None),
        (["Relu", "Tanh"], None, None),  # a different activation for the reverse direction
        (["Tanh", "Relu"], None, None),
        (["LeakyRelu", "Affine"], [0.1, 0.5], [0.3]),  # alpha/beta consumed in order
        (["Tanh", "Affine"], [0.5], [0.3]),
        (["ScaledTanh", "HardSigmoid"], [0.8, 0.3], [1.5, 0.4]),
        (["Elu", "Softsign"], [0.6], None),
        (["Softplus", "Sigmoid"], None, None),
    ],
    "GRU": [
        (["HardSigmoid", "Softsign"], [0.25], [0.45]),
        (["HardSigmoid", "Softsign", "HardSigmoid", "Softsign"], [0.25, 0.3], [0.45, 0.6]),
        (["Sigmoid", "Relu", "Sigmoid", "ScaledTanh"], [0.9], [1.2]),
        (["Sigmoid", "Tanh", "Sigmoid", "LeakyRelu"], None, None),
        (["Affine", "Elu"], [0.3, 0.4], [0.5]),
        (["sigmoid", "TANH"], None, None),  # case-insensitive
        (["Sigmoid", "Softplus", "ThresholdedRelu", "Tanh"], [0.1], None),
    ],
    "LSTM": [
        (["HardSigmoid", "Elu", "Softsign"], [0.25, 0.7], [0.45]),
        (["Sigmoid", "Tanh", "Relu", "Sigmoid", "Softplus", "Affine"], [0.5], [0.1]),
        (["Sigmoid", "ScaledTanh", "LeakyRelu"], [0.9, 0.2], [1.3]),
        (["Sigmoid", "ThresholdedRelu", "Tanh", "Sigmoid", "Tanh", "Tanh"], [0.1], None),
        (["sigmoid", "tanh", "TANH"], None, None),  # case-insensitive
    ],
}


@pytest.mark.parametrize(
    ("op", "i"), [(op, i) for op, cases in ACTIVATION_CASES.items() for i in range(len(cases))]
)
def test_activations(op: str, i: int) -> None:
    names, alpha, beta = ACTIVATION_CASES[op][i]
    dirs = len(names) // PER_DIR_ACTS[op]
    attrs: dict[str, Any] = {
        "activations": names,
        "direction": "bidirectional" if dirs == 2 else "forward",
    }
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    check_ort(op, _inputs(op, dirs=dirs, peep=True, scale=1.5), attrs)


@pytest.mark.parametrize(
    ("op", "names", "alpha", "beta"),
    [
        ("RNN", ["Affine"], 1.0, 0.0),
        ("RNN", ["ThresholdedRelu"], 1.0, None),
        ("GRU", ["Sigmoid", "ScaledTanh"], 1.0, 1.0),
        ("LSTM", ["Sigmoid", "Tanh", "Affine"], 1.0, 0.0),
    ],
)
def test_spec_defaults_of_alpha_beta(
    op: str, names: list[str], alpha: float, beta: float | None
) -> None:
    """Missing alpha / beta take the defaults of the ONNX operator of the same name
    (ThresholdedRelu alpha 1.0; the retired Affine 1.0 / 0.0; ScaledTanh 1.0 / 1.0), as the
    spec says and as the TVM lowering does. ONNX Runtime departs from the spec here: it uses
    0 for all three (its own defaults are only LeakyRelu 0.01, HardSigmoid 0.2 / 0.5 and
    Elu 1.0, which agree with ours and are checked against it above)."""
    ins = _inputs(op, dirs=1, scale=1.5)
    explicit: dict[str, Any] = {"activations": names, "activation_alpha": [alpha]}
    if beta is not None:
        explicit["activation_beta"] = [beta]
    assert_close(
        run_ecograph(op, ins, {"activations": names}), run_ecograph(op, ins, explicit), 0, 0
    )


def test_rnn_activation_names_are_case_insensitive() -> None:
    """ONNX Runtime's RNN refuses non-canonical spellings (its GRU and LSTM accept them)."""
    ins = _inputs("RNN", dirs=2)
    lower = run_ecograph(
        "RNN", ins, {"direction": "bidirectional", "activations": ["relu", "SCALEDTANH"]}
    )
    canon = run_ecograph(
        "RNN", ins, {"direction": "bidirectional", "activations": ["Relu", "ScaledTanh"]}
    )
    assert_close(lower, canon, rtol=0, atol=0)


def test_rnn_default_activations_for_one_direction() -> None:
    """RNN's schema default is ["Tanh", "Tanh"]; one direction uses the first."""
    ins = _inputs("RNN", dirs=1)
    assert_close(
        run_ecograph("RNN", ins, {"activations": ["Relu", "Tanh"]}),
        run_ort("RNN", ins, {"activations": ["Relu", "Tanh"]}),
    )


# ------------------------------------------------------------------ GRU / LSTM specifics


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gru_linear_before_reset(direction: str, bias: bool) -> None:
    ins = _inputs("GRU", dirs=_dirs(direction), bias=bias)
    attrs = {"direction": direction, "linear_before_reset": 1}
    got = check_ort("GRU", ins, attrs)
    assert_close(got, run_onnx_reference("GRU", ins, attrs))


def test_gru_linear_before_reset_with_sequence_lens() -> None:
    ins = _inputs("GRU", dirs=2, lens=[2, 0, SEQ, 4])
    check_ort("GRU", ins, {"direction": "bidirectional", "linear_before_reset": 1})


@pytest.mark.parametrize("peep", [True, False])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_input_forget(direction: str, peep: bool) -> None:
    ins = _inputs("LSTM", dirs=_dirs(direction), peep=peep, lens=[SEQ, 3, 2, 0])
    attrs = {"direction": direction, "input_forget": 1}
    got = check_ort("LSTM", ins, attrs)
    plain = run_ecograph("LSTM", ins, {"direction": direction})
    assert not np.allclose(got[2], plain[2], atol=1e-3)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_peepholes(direction: str) -> None:
    ins = _inputs("LSTM", dirs=_dirs(direction), peep=True, scale=1.5)
    attrs = {"direction": direction}
    got = check_ort("LSTM", ins, attrs)
    assert_close(got, run_onnx_reference("LSTM", ins, attrs))


@pytest.mark.parametrize("op", OPS)
def test_everything_at_once(op: str) -> None:
    acts = {
        "RNN": ["Affine", "HardSigmoid"],
        "GRU": ["HardSigmoid", "Tanh", "Sigmoid", "Softsign"],
        "LSTM": ["HardSigmoid", "Tanh", "Elu", "Sigmoid", "Softsign", "Tanh"],
    }[op]
    attrs: dict[str, Any] = {
        "direction": "bidirectional",
        "layout": 1,
        "clip": 0.9,
        "activations": acts,
        "activation_alpha": [0.6, 0.3],
        "activation_beta": [0.1, 0.55],
        "hidden_size": HIDDEN,
    }
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    if op == "LSTM":
        attrs["input_forget"] = 1
    ins = _inputs(op, dirs=2, layout=1, peep=True, lens=[2, SEQ, 0, 1], scale=1.5)
    check_ort(op, ins, attrs)


# ------------------------------------------------------------------ errors


def test_unknown_activation_fails() -> None:
    with pytest.raises(InterpreterError, match="activation 'Gelu'"):
        run_ecograph("RNN", _inputs("RNN", dirs=1), {"activations": ["Gelu"]})


def test_wrong_activation_count_fails() -> None:
    """One set of activations for a bidirectional GRU is ambiguous (ONNX Runtime refuses it)."""
    with pytest.raises(InterpreterError, match="activations has 2 entries; GRU with 2 dir"):
        run_ecograph(
            "GRU",
            _inputs("GRU", dirs=2),
            {"direction": "bidirectional", "activations": ["Sigmoid", "Tanh"]},
        )


def test_sequence_lens_out_of_range_fails() -> None:
    with pytest.raises(InterpreterError, match="sequence_lens"):
        run_ecograph("LSTM", _inputs("LSTM", dirs=1, lens=[SEQ + 1, 1, 1, 1]), {})


def test_direction_mismatch_fails() -> None:
    with pytest.raises(InterpreterError, match="W has 1 direction"):
        run_ecograph("GRU", _inputs("GRU", dirs=1), {"direction": "bidirectional"})


def test_schema_unchanged() -> None:
    """The registration keeps ONNX's schema: inputs, outputs and attribute defaults."""
    from ecograph.ir.ops._onnx_ref import schema_signature
    from ecograph.ir.registry import get_schema

    for op in OPS:
        schema = get_schema(op)
        inputs, outputs, attrs = schema_signature(op)
        assert [p.name + ("?" if p.optional else "") for p in schema.inputs] == inputs
        assert [p.name + ("?" if p.optional else "") for p in schema.outputs] == outputs
        assert schema.attrs == attrs
        assert schema.kernel.__module__ == "ecograph.ir.ops.recurrent"
