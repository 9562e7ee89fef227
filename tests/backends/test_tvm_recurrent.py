"""TVM lowerings of RNN, GRU and LSTM (ecograph/backends/tvm/ops/recurrent.py).

Compared with the reference interpreter (its numpy kernels in ecograph/ir/ops/recurrent.py
follow the ONNX spec), and, for the attributes onnx.reference ignores (short sequence_lens,
clip, GRU/LSTM activations, input_forget, an activation per direction), also directly with
ONNX Runtime.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

import onnx
from onnx import TensorProto, helper

from ecograph.errors import LoweringError
from ecograph.frontend.onnx import from_onnx
from ecograph.ir import Graph
from tests.backends.tvm_helpers import RNG, Const, assert_matches, one_op, rand, run_tvm

COVERED_OPS = {("", "RNN"), ("", "GRU"), ("", "LSTM")}

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
SEQ, BATCH, INPUT, HIDDEN = 4, 3, 5, 3


def _inputs(
    op: str,
    *,
    dirs: int = 1,
    layout: int = 0,
    bias: bool = True,
    h0: bool = False,
    c0: bool = False,
    peep: bool = False,
    lens: np.ndarray | Const | None = None,
    dtype: str = "float32",
    const_weights: bool = False,
) -> list[Any]:
    g = GATES[op]
    x = rand((BATCH, SEQ, INPUT) if layout else (SEQ, BATCH, INPUT), dtype, -1, 1)
    w = rand((dirs, g * HIDDEN, INPUT), dtype, -1, 1)
    r = rand((dirs, g * HIDDEN, HIDDEN), dtype, -1, 1)
    state = (BATCH, dirs, HIDDEN) if layout else (dirs, BATCH, HIDDEN)
    ins: list[Any] = [
        x,
        Const(w) if const_weights else w,
        Const(r) if const_weights else r,
        rand((dirs, 2 * g * HIDDEN), dtype, -1, 1) if bias else None,
        lens,
        rand(state, dtype, -1, 1) if h0 else None,
    ]
    if op == "LSTM":
        ins.append(rand(state, dtype, -1, 1) if c0 else None)
        ins.append(rand((dirs, 3 * HIDDEN), dtype, -1, 1) if peep else None)
    while ins and ins[-1] is None:
        ins.pop()
    return ins


def _check(graph: Graph, feeds: dict[str, np.ndarray]) -> None:
    assert_matches(graph, feeds, run_tvm(graph, feeds))


DIRECTIONS = ["forward", "reverse", "bidirectional"]


# ------------------------------------------------------------ against the interpreter


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_directions_all_outputs(op: str, direction: str) -> None:
    dirs = 2 if direction == "bidirectional" else 1
    ins = _inputs(op, dirs=dirs, h0=True, c0=True, peep=True)
    g, feeds = one_op(
        op, *ins, num_outputs=3 if op == "LSTM" else 2, direction=direction, hidden_size=HIDDEN
    )
    _check(g, feeds)


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_layouts_and_optional_inputs(op: str, layout: int) -> None:
    ins = _inputs(op, dirs=2, layout=layout, bias=False, h0=True, c0=True, const_weights=True)
    g, feeds = one_op(
        op,
        *ins,
        num_outputs=3 if op == "LSTM" else 2,
        layout=layout,
        direction="bidirectional",
        hidden_size=HIDDEN,
    )
    _check(g, feeds)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_defaults_only_y(op: str) -> None:
    """No bias, no states, no hidden_size attribute, only Y."""
    g, feeds = one_op(op, *_inputs(op, bias=False), num_outputs=1)
    _check(g, feeds)


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_only_last_states(op: str) -> None:
    """Y unused (ONNX's empty output name): only Y_h (and Y_c) come out."""
    g = Graph("states")
    ins = _inputs(op, dirs=2, h0=True)
    values = [
        None if x is None else g.add_input(f"x{i}", "float32", list(x.shape))
        for i, x in enumerate(ins)
    ]
    feeds = {f"x{i}": x for i, x in enumerate(ins) if x is not None}
    n = 3 if op == "LSTM" else 2
    node = g.add_node(
        op, values, {"direction": "bidirectional", "hidden_size": HIDDEN}, num_outputs=n
    )
    g.set_outputs(list(node.outputs[1:]))
    _check(g, feeds)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_gru_linear_before_reset(direction: str) -> None:
    dirs = 2 if direction == "bidirectional" else 1
    for bias in (True, False):
        ins = _inputs("GRU", dirs=dirs, bias=bias, h0=True)
        g, feeds = one_op(
            "GRU",
            *ins,
            num_outputs=2,
            direction=direction,
            linear_before_reset=1,
            hidden_size=HIDDEN,
        )
        _check(g, feeds)


def test_rnn_affine_activation() -> None:
    g, feeds = one_op(
        "RNN",
        *_inputs("RNN", h0=True),
        num_outputs=2,
        hidden_size=HIDDEN,
        activations=["Affine"],
        activation_alpha=[0.7],
        activation_beta=[0.2],
    )
    _check(g, feeds)


@pytest.mark.parametrize("as_input", [False, True])
def test_full_sequence_lens(as_input: bool) -> None:
    """sequence_lens equal to seq_length: a constant drops the masks, an input keeps them."""
    lens = np.full(BATCH, SEQ, np.int32)
    ins = _inputs(
        "LSTM", dirs=2, h0=True, c0=True, peep=True, lens=lens if as_input else Const(lens)
    )
    g, feeds = one_op("LSTM", *ins, num_outputs=3, direction="bidirectional")
    _check(g, feeds)


def test_float64() -> None:
    ins = _inputs("LSTM", dirs=2, h0=True, c0=True, peep=True, dtype="float64")
    g, feeds = one_op("LSTM", *ins, num_outputs=3, direction="bidirectional")
    _check(g, feeds)


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_float16(op: str) -> None:
    """float16 computes in float32 and rounds once, in both the lowering and the interpreter;
    compared to float16 precision (the float32 intermediates may round differently)."""
    from ecograph.ir import interpret

    ins = _inputs(op, dirs=2, h0=True, dtype="float16")
    g, feeds = one_op(op, *ins, num_outputs=2, direction="bidirectional")
    got = run_tvm(g, feeds)
    want = list(interpret(g, feeds).values())
    for have, ref in zip(got, want, strict=True):
        assert have.dtype == ref.dtype == np.float16 and have.shape == ref.shape
        np.testing.assert_allclose(have.astype(np.float32), ref.astype(np.float32), atol=5e-3)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_symbolic_batch(op: str) -> None:
    ins = _inputs(op, dirs=2, h0=True, c0=True, peep=True)
    symbolic = {0: [SEQ, "batch", INPUT], 5: [2, "batch", HIDDEN], 6: [2, "batch", HIDDEN]}
    g, feeds = one_op(op, *ins, num_outputs=2, direction="bidirectional", symbolic=symbolic)
    assert g.outputs[0].shape[2] == "batch"
    _check(g, feeds)


def test_symbolic_batch_layout1_with_lens() -> None:
    """layout=1, symbolic batch, run-time sequence_lens; ONNX Runtime (layout 0 only) runs the
    transposed problem."""
    lens = np.array([SEQ, 2, 1], np.int32)
    x = rand((BATCH, SEQ, INPUT), lo=-1, hi=1)
    w, r = rand((1, 4 * HIDDEN, INPUT), lo=-1, hi=1), rand((1, 4 * HIDDEN, HIDDEN), lo=-1, hi=1)
    g, feeds = one_op(
        "LSTM",
        x,
        Const(w),
        Const(r),
        None,
        lens,
        num_outputs=3,
        layout=1,
        symbolic={0: ["b", SEQ, INPUT], 4: ["b"]},
    )
    assert g.outputs[0].shape[0] == "b"
    got = run_tvm(g, feeds)
    node = helper.make_node("LSTM", ["X", "W", "R", "", "L"], ["Y", "Yh", "Yc"], hidden_size=HIDDEN)
    graph = helper.make_graph(
        [node],
        "lstm",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [SEQ, "b", INPUT]),
            helper.make_tensor_value_info("L", TensorProto.INT32, ["b"]),
        ],
        [helper.make_empty_tensor_value_info(n) for n in ("Y", "Yh", "Yc")],
        initializer=[onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(r, "R")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    want = _ort(model, {"X": np.swapaxes(x, 0, 1), "L": lens})
    want = [np.transpose(want[0], [2, 0, 1, 3])] + [np.swapaxes(v, 0, 1) for v in want[1:]]
    for have, ref in zip(got, want, strict=True):
        assert have.shape == ref.shape
        np.testing.assert_allclose(have, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ against ONNX Runtime (spec)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _spec_case(
    op: str,
    attrs: dict[str, Any],
    *,
    dirs: int,
    layout: int = 0,
    lens: np.ndarray | None = None,
    lens_const: bool = False,
    h0: bool = True,
    peep: bool = False,
    hidden_attr: bool = True,
) -> None:
    """One node run by ONNX Runtime and, imported with from_onnx, by TVM."""
    ins = _inputs(op, dirs=dirs, layout=layout, h0=h0, c0=h0, peep=peep)
    names = ["X", "W", "R", "B", "L", "H0", "C0", "P"][: len(ins)]
    arrays = dict(zip(names, ins, strict=True))
    if lens is not None:
        arrays["L"] = lens
    node_inputs = [n if arrays.get(n) is not None else "" for n in names]
    if lens is not None and len(node_inputs) < 5:
        node_inputs += [""] * (5 - len(node_inputs))
        node_inputs[4] = "L"
    outs = ["Y", "Yh", "Yc"] if op == "LSTM" else ["Y", "Yh"]
    node = helper.make_node(op, node_inputs, outs, layout=layout, hidden_size=HIDDEN, **attrs)
    inits = [onnx.numpy_helper.from_array(arrays[n], n) for n in ("W", "R") if n in arrays]
    if lens is not None and lens_const:
        inits.append(onnx.numpy_helper.from_array(lens, "L"))
    init_names = {t.name for t in inits}
    feeds = {n: a for n, a in arrays.items() if a is not None and n not in init_names}
    graph_inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
        for n, a in feeds.items()
    ]
    graph = helper.make_graph(
        [node],
        op.lower(),
        graph_inputs,
        [helper.make_empty_tensor_value_info(n) for n in outs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    want = _ort(_as_layout0(model) if layout else model, _swap_feeds(feeds) if layout else feeds)
    if layout:  # ONNX Runtime has no layout=1: run the layout-0 model, transpose back
        want = [np.transpose(w, [2, 0, 1, 3] if w.ndim == 4 else [1, 0, 2]) for w in want]
    eg = from_onnx(model)
    got = run_tvm(eg, {v.name: feeds[v.name] for v in eg.inputs})
    assert len(got) == len(want)
    for name, have, ref in zip(outs, got, want, strict=True):
        assert have.dtype == ref.dtype and have.shape == ref.shape, name
        np.testing.assert_allclose(have, ref, rtol=1e-5, atol=1e-6, err_msg=name)


def _swap_feeds(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: np.swapaxes(a, 0, 1) if n in ("X", "H0", "C0") else a for n, a in feeds.items()}


def _as_layout0(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for a in m.graph.node[0].attribute:
        if a.name == "layout":
            a.i = 0
    for vi in m.graph.input:
        if vi.name in ("X", "H0", "C0"):
            dims = vi.type.tensor_type.shape.dim
            d0, d1 = dims[0].dim_value, dims[1].dim_value
            dims[0].dim_value, dims[1].dim_value = d1, d0
    return m


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_sequence_lens_with_empty_row(op: str) -> None:
    lens = np.array([SEQ, 2, 0], np.int32)  # a full row, a short row, an empty row
    _spec_case(op, {"direction": "bidirectional"}, dirs=2, lens=lens)


@pytest.mark.parametrize("lens_const", [False, True])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_sequence_lens(op: str, direction: str, lens_const: bool) -> None:
    dirs = 2 if direction == "bidirectional" else 1
    lens = np.array([SEQ, 2, 1], np.int32)
    _spec_case(op, {"direction": direction}, dirs=dirs, lens=lens, lens_const=lens_const, peep=True)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_sequence_lens_layout1(op: str) -> None:
    lens = np.array([1, SEQ, 3], np.int32)
    _spec_case(op, {"direction": "bidirectional"}, dirs=2, layout=1, lens=lens)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_clip(op: str) -> None:
    _spec_case(op, {"clip": 0.3, "direction": "bidirectional"}, dirs=2)


SPEC_ACTIVATIONS = {
    "RNN": [
        (["Relu"], None, None),
        (["LeakyRelu", "Affine"], [0.1, 0.5], [0.3]),  # per direction
        (["ThresholdedRelu"], [0.2], None),
        (["ScaledTanh", "HardSigmoid"], [0.8, 0.3], [1.5, 0.4]),
        (["Elu", "Softsign"], [0.6], None),
        (["Softplus", "Sigmoid"], None, None),
    ],
    "GRU": [
        (["HardSigmoid", "Softsign"], [0.25], [0.45]),
        (["HardSigmoid", "Softsign", "HardSigmoid", "Softsign"], [0.25, 0.3], [0.45, 0.6]),
        (["Sigmoid", "Relu", "Sigmoid", "ScaledTanh"], [0.9], [1.2]),
    ],
    "LSTM": [
        (["HardSigmoid", "Elu", "Softsign"], [0.25, 0.7], [0.45]),
        (["Sigmoid", "Tanh", "Relu", "Sigmoid", "Softplus", "Affine"], [0.5], [0.1]),
    ],
}


@pytest.mark.parametrize(
    ("op", "i"), [(op, i) for op, cases in SPEC_ACTIVATIONS.items() for i in range(len(cases))]
)
def test_activations(op: str, i: int) -> None:
    names, alpha, beta = SPEC_ACTIVATIONS[op][i]
    per_dir = {"RNN": 1, "GRU": 2, "LSTM": 3}[op]
    dirs = len(names) // per_dir
    attrs: dict[str, Any] = {"activations": names}
    attrs["direction"] = "bidirectional" if dirs == 2 else "forward"
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    _spec_case(op, attrs, dirs=dirs)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_input_forget(direction: str) -> None:
    dirs = 2 if direction == "bidirectional" else 1
    _spec_case(
        "LSTM",
        {"input_forget": 1, "direction": direction},
        dirs=dirs,
        peep=True,
        lens=np.array([SEQ, 3, 2], np.int32),
    )


def test_everything_at_once() -> None:
    _spec_case(
        "GRU",
        {
            "direction": "reverse",
            "clip": 0.8,
            "linear_before_reset": 1,
            "activations": ["HardSigmoid", "Tanh"],
        },
        dirs=1,
        layout=1,
        lens=np.array([2, SEQ, 1], np.int32),
    )


# ------------------------------------------------------------ errors and CUDA


def test_symbolic_seq_length_fails_clearly() -> None:
    ins = _inputs("LSTM")
    g, feeds = one_op("LSTM", *ins, num_outputs=3, symbolic={0: ["seq", BATCH, INPUT]})
    with pytest.raises(LoweringError, match=r"sequence length of X is symbolic \('seq'\)"):
        run_tvm(g, feeds)


def test_bad_constant_sequence_lens_fails() -> None:
    ins = _inputs("GRU", lens=Const(np.array([SEQ + 1, 1, 1], np.int32)))
    g, feeds = one_op("GRU", *ins, num_outputs=2)
    with pytest.raises(LoweringError, match="sequence_lens"):
        run_tvm(g, feeds)


def test_unknown_activation_fails() -> None:
    g, feeds = one_op("RNN", *_inputs("RNN"), num_outputs=2, activations=["Gelu"])
    with pytest.raises(LoweringError, match="activation 'Gelu'"):
        run_tvm(g, feeds)


def test_builds_for_cuda() -> None:
    from ecograph.backends.tvm import build

    lens = RNG.integers(0, SEQ + 1, BATCH).astype(np.int32)
    ins = _inputs("LSTM", dirs=2, h0=True, c0=True, peep=True, lens=lens, const_weights=True)
    g, _ = one_op(
        "LSTM",
        *ins,
        num_outputs=3,
        direction="bidirectional",
        clip=2.0,
        symbolic={
            0: [SEQ, "batch", INPUT],
            4: ["batch"],
            5: [2, "batch", HIDDEN],
            6: [2, "batch", HIDDEN],
        },
    )
    result = build.build_module(g, "cuda:sm_80", keep_params=False)
    assert result.executable is not None
    g2, _ = one_op("GRU", *_inputs("GRU", layout=1), num_outputs=2, layout=1, linear_before_reset=1)
    assert build.build_module(g2, "cuda:sm_80", keep_params=False).executable is not None


def test_wrong_activation_count_fails() -> None:
    """One set of activations for a bidirectional GRU is ambiguous (ONNX Runtime refuses it)."""
    ins = _inputs("GRU", dirs=2)
    g, feeds = one_op(
        "GRU", *ins, num_outputs=2, direction="bidirectional", activations=["Sigmoid", "Tanh"]
    )
    with pytest.raises(LoweringError, match="activations has 2 entries; GRU with 2 direction"):
        run_tvm(g, feeds)
