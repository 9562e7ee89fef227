"""from_onnx / to_onnx: round trips, ONNX Runtime against the interpreter, external data and
its escape attacks, bad files, the size cap, opset handling and the errors users see."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ecograph.errors import InterpreterError, ModelFormatError, UnsupportedError
from ecograph.frontend.onnx import from_onnx, register_onnx_export, to_onnx
from ecograph.frontend.onnx_export import OnnxExportContext
from ecograph.ir import Graph, GraphBuilder, Node, explain_difference, interpret, verify
from ecograph.ir.registry import register_op, unregister_op

RNG = np.random.default_rng(0)


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in sess.run(None, feeds)]


def run_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(out) for out in ReferenceEvaluator(model).run(None, feeds)]


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
    opset: int = 23,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def mlp_graph() -> Graph:
    b = GraphBuilder()
    x = b.input("x", "float32", ["batch", 16])
    w = b.constant(RNG.standard_normal((16, 8)).astype(np.float32), "w")
    bias = b.constant(RNG.standard_normal(8).astype(np.float32), "bias")
    h = b.op("Add", b.op("MatMul", x, w), bias)
    h = b.op("Gelu", h, approximate="tanh")
    ln_scale = b.constant(np.ones(8, np.float32), "ln_scale")
    h = b.op("LayerNormalization", h, ln_scale, axis=-1, epsilon=1e-5)
    shape = b.op("Shape", h)
    flat = b.op("Reshape", h, b.constant(np.array([-1], np.int64), "minus_one"))
    clipped = b.op("Clip", h, None, b.constant(np.array(0.5, np.float32), "hi"))
    b.output(b.op("Softmax", h, axis=-1), flat, shape, clipped)
    return b.graph


# ------------------------------------------------------------------ round trips


def test_round_trip_is_structurally_equal_and_checker_clean() -> None:
    g = mlp_graph()
    g.metadata["source"] = {"kind": "unit-test", "layers": [1, 2]}
    model = to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 23
    back = from_onnx(model)
    verify(back)
    assert explain_difference(g, back) is None


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_runtime_matches_interpreter_at_two_batch_sizes(batch: int) -> None:
    g = mlp_graph()
    model = to_onnx(g)
    x = RNG.standard_normal((batch, 16)).astype(np.float32)
    expected = interpret(g, {"x": x})
    got = run_ort(model, {"x": x})
    for (name, want), have in zip(expected.items(), got, strict=True):
        assert have.dtype == want.dtype, name
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_round_trip_with_path_writes_a_loadable_file(tmp_path: Path) -> None:
    g = mlp_graph()
    path = tmp_path / "m.onnx"
    to_onnx(g, path)
    back = from_onnx(path)
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    a, b = interpret(g, {"x": x}), interpret(back, {"x": x})
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_outputs_that_are_inputs_or_constants_round_trip() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [3])
    c = b.constant(np.arange(3, dtype=np.float32), "c")
    b.output(b.op("Add", x, c), x, c)
    model = to_onnx(b.graph)
    onnx.checker.check_model(model, full_check=True)
    xv = np.ones(3, np.float32)
    got = run_ort(model, {"x": xv})
    np.testing.assert_array_equal(got[0], xv + np.arange(3))
    np.testing.assert_array_equal(got[1], xv)
    np.testing.assert_array_equal(got[2], np.arange(3, dtype=np.float32))
    back = from_onnx(model)
    assert [v.name for v in back.outputs] == ["add", "x", "c"]
    assert back.outputs[1].is_graph_input and back.outputs[2].is_constant


# ------------------------------------------------------------- import details


def test_import_optional_inputs_constants_and_duplicate_outputs() -> None:
    one = numpy_helper.from_array(np.array(1, np.float32))
    nodes = [
        helper.make_node("Constant", [], ["hi"], value=one),
        helper.make_node("Clip", ["x", "", "hi"], ["y"]),
        helper.make_node("Dropout", ["y"], ["z", ""]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [4]),
        ],
    )
    g = from_onnx(model)
    verify(g)
    clip = g.find_nodes("Clip")[0]
    hi = clip.inputs[2]
    assert clip.inputs[1] is None and hi is not None and hi.is_constant
    assert not g.find_nodes("Constant")
    xv = np.array([-2, 0.5, 2, 3], np.float32)
    out = interpret(g, {"x": xv})
    for v in out.values():
        np.testing.assert_array_equal(v, np.minimum(xv, 1))


def test_dim_params_are_sanitized_and_unknown_dims_get_symbols() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch size", "N+1", None])
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    g = from_onnx(model)
    dims = g.inputs[0].shape
    assert all(isinstance(d, str) and d.isidentifier() for d in dims)
    assert len(set(dims)) == 3
    assert g.metadata["onnx_dim_params"][dims[0]] == "batch size"
    assert g.metadata["onnx_dim_params"][dims[1]] == "N+1"
    out = interpret(g, {"x": np.ones((2, 3, 4), np.float32)})
    assert out["y"].shape == (2, 3, 4)
    exported = to_onnx(g)
    params = [d.dim_param for d in exported.graph.input[0].type.tensor_type.shape.dim]
    assert params[:2] == ["batch size", "N+1"]


def test_unsorted_nodes_are_accepted() -> None:
    nodes = [
        helper.make_node("Relu", ["h"], ["y"]),
        helper.make_node("Neg", ["x"], ["h"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    g = from_onnx(model)
    out = interpret(g, {"x": np.array([-1, 1], np.float32)})
    np.testing.assert_array_equal(out["y"], [1, 0])


# ---------------------------------------------------------------------- opsets


def test_older_opset_is_converted_and_matches_onnx_reference() -> None:
    # Opset 11: ReduceSum takes axes as an attribute, Split takes split as an attribute.
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], axes=[1], keepdims=0),
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 2]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 1]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 2]),
        ],
        opset=11,
    )
    g = from_onnx(model)
    assert g.opset_imports[""] == 23
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    expected = run_reference(model, {"x": x})
    got = interpret(g, {"x": x})
    for want, name in zip(expected, ["s", "a", "b"], strict=True):
        np.testing.assert_allclose(got[name], want, rtol=1e-6)


def test_newer_opset_with_unchanged_or_type_widened_ops_is_accepted() -> None:
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),  # Reshape-25 only adds types
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6])],
        [numpy_helper.from_array(np.array([6], np.int64), "shape")],
        opset=28,
    )
    g = from_onnx(model)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(interpret(g, {"x": x})["y"], np.maximum(x.reshape(6), 0))


def test_newer_opset_with_a_changed_op_is_a_clear_error() -> None:
    # Cast-25 adds `round_mode`; a node that sets it means something opset 23 cannot say.
    model = make_model(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16, round_mode="up")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 3])],
        opset=25,
    )
    with pytest.raises(UnsupportedError, match=r"opset 25.*changed after opset 23: Cast"):
        from_onnx(model)


def test_newer_opset_node_using_a_type_opset_23_lacks_is_rejected() -> None:
    # Celu-28 only adds float16; a float16 Celu has no opset-23 meaning.
    model = make_model(
        [helper.make_node("Celu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [3])],
        opset=28,
    )
    with pytest.raises(UnsupportedError, match=r"tensor\(float16\).*only after opset 23"):
        from_onnx(model)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    want = run_reference(model, {"x": x})[0]
    np.testing.assert_allclose(interpret(from_onnx(model), {"x": x})["y"], want, rtol=1e-6)


# ------------------------------------------------------------ unsupported input


def test_unsupported_ops_are_all_listed_with_counts() -> None:
    nodes = [
        helper.make_node("Frobnicate", ["x"], ["a"], domain="com.example"),
        helper.make_node("Frobnicate", ["a"], ["b"], domain="com.example"),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node("MelWeightMatrix2", ["c"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedError) as info:
        from_onnx(model)
    message = str(info.value)
    assert "com.example::Frobnicate x2" in message
    assert "MelWeightMatrix2 x1" in message
    assert "Relu" not in message


def test_control_flow_is_a_clear_not_supported_error() -> None:
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])],
    )
    model = make_model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(UnsupportedError, match=r"control flow is not supported yet \(If x1\)"):
        from_onnx(model)


def test_unmodelled_dtype_is_unsupported() -> None:
    model = make_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT8E4M3FN, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT8E4M3FN, [2])],
    )
    with pytest.raises(UnsupportedError, match="float8"):
        from_onnx(model)


# ------------------------------------------------------------------ bad files


def _tiny_model() -> onnx.ModelProto:
    return make_model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
        [numpy_helper.from_array(RNG.standard_normal(64).astype(np.float32), "w")],
    )


def test_truncated_file(tmp_path: Path) -> None:
    data = _tiny_model().SerializeToString()
    path = tmp_path / "t.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match=r"t\.onnx"):
        from_onnx(path)


@pytest.mark.parametrize("seed", range(5))
def test_garbage_bytes(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(ModelFormatError):
        from_onnx(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="not an ONNX model"):
        from_onnx(empty)
    with pytest.raises(ModelFormatError, match="no such model file"):
        from_onnx(tmp_path / "missing.onnx")


def test_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_tiny_model(), path)
    with pytest.raises(ModelFormatError, match="over the cap"):
        from_onnx(path, max_bytes=100)
    with pytest.raises(ModelFormatError, match="over the cap"):
        from_onnx(_tiny_model(), max_bytes=100)
    assert from_onnx(path, max_bytes=10_000).inputs[0].name == "x"


def test_cycle_is_reported() -> None:
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(ModelFormatError, match="cycle"):
        from_onnx(model)


def test_dangling_input_is_reported() -> None:
    model = make_model(
        [helper.make_node("Add", ["x", "nowhere"], ["y"], name="adder")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(ModelFormatError, match=r"adder.*'nowhere'"):
        from_onnx(model)


def test_output_that_nothing_defines_is_reported() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("ghost", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(ModelFormatError, match="ghost"):
        from_onnx(model)


# -------------------------------------------------------------- external data


def _save_external(tmp_path: Path) -> tuple[Path, np.ndarray]:
    model = _tiny_model()
    weights = numpy_helper.to_array(model.graph.initializer[0])
    path = tmp_path / "model.onnx"
    onnx.save(model, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    return path, weights


def _set_location(path: Path, location: str, length: int | None = None) -> None:
    model = onnx.load(path, load_external_data=False)
    tensor = model.graph.initializer[0]
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location
        if entry.key == "length" and length is not None:
            entry.value = str(length)
    path.write_bytes(model.SerializeToString())


def test_external_data_is_loaded(tmp_path: Path) -> None:
    path, weights = _save_external(tmp_path)
    g = from_onnx(path)
    np.testing.assert_array_equal(g.value("w").const_value, weights)
    x = np.ones(64, np.float32)
    np.testing.assert_array_equal(interpret(g, {"x": x})["y"], x + weights)


def test_external_data_needs_a_path_not_a_proto(tmp_path: Path) -> None:
    path, _ = _save_external(tmp_path)
    with pytest.raises(ModelFormatError, match="pass the model's path"):
        from_onnx(onnx.load(path, load_external_data=False))


def test_external_data_parent_escape(tmp_path: Path) -> None:
    sub = tmp_path / "model"
    sub.mkdir()
    path, _ = _save_external(sub)
    os.replace(sub / "w.bin", tmp_path / "w.bin")
    _set_location(path, "../w.bin")
    with pytest.raises(ModelFormatError, match=r"leaves the model's folder"):
        from_onnx(path)


def test_external_data_absolute_path(tmp_path: Path) -> None:
    path, _ = _save_external(tmp_path)
    _set_location(path, str((tmp_path / "w.bin").resolve()))
    with pytest.raises(ModelFormatError, match="absolute path"):
        from_onnx(path)


def test_external_data_symlink_escape(tmp_path: Path) -> None:
    sub = tmp_path / "model"
    sub.mkdir()
    path, _ = _save_external(sub)
    os.replace(sub / "w.bin", tmp_path / "secret.bin")
    (sub / "w.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ModelFormatError, match="symlink"):
        from_onnx(path)


def test_external_data_larger_than_its_file(tmp_path: Path) -> None:
    path, _ = _save_external(tmp_path)
    with open(tmp_path / "w.bin", "r+b") as f:
        f.truncate(100)  # 64 float32 need 256 bytes
    with pytest.raises(ModelFormatError, match="only 100 bytes"):
        from_onnx(path)


def test_external_data_declared_length_too_small(tmp_path: Path) -> None:
    path, _ = _save_external(tmp_path)
    _set_location(path, "w.bin", length=8)
    with pytest.raises(ModelFormatError, match="declared length 8"):
        from_onnx(path)


def test_external_data_missing_file(tmp_path: Path) -> None:
    path, _ = _save_external(tmp_path)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelFormatError, match="does not exist"):
        from_onnx(path)


def test_external_data_counts_towards_the_size_cap(tmp_path: Path) -> None:
    path, _ = _save_external(tmp_path)
    cap = path.stat().st_size + 10
    with pytest.raises(ModelFormatError, match="cap"):
        from_onnx(path, max_bytes=cap)


# --------------------------------------------------------- ecograph-domain ops


@pytest.fixture
def twice_op():
    """A throwaway library op in a test domain: Twice(x) = 2 * x."""

    @register_op("Twice", domain="ecograph_test", inputs=["X"], outputs=["Y"],
                 infer=lambda c: [c.input(0)])  # fmt: skip
    def twice(x: np.ndarray) -> np.ndarray:
        return x + x

    yield
    unregister_op("Twice", "ecograph_test")
    from ecograph.frontend import onnx_export

    onnx_export._EXPORTS.pop(("ecograph_test", "Twice"), None)


def _twice_graph() -> Graph:
    b = GraphBuilder()
    x = b.input("x", "float32", [3])
    b.output(b.op("Relu", b.op("Twice", x, domain="ecograph_test")))
    return b.graph


def test_library_op_without_export_is_listed(twice_op: None) -> None:
    with pytest.raises(UnsupportedError, match=r"ecograph_test::Twice x1"):
        to_onnx(_twice_graph())


def test_library_op_with_registered_decomposition_runs_in_ort(twice_op: None) -> None:
    @register_onnx_export("Twice", domain="ecograph_test")
    def _export(ctx: OnnxExportContext, node: Node) -> None:
        (x,) = ctx.inputs(node)
        ctx.emit("Add", [x, x], ctx.outputs(node))

    g = _twice_graph()
    model = to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    x = np.array([-1, 2, 3], np.float32)
    np.testing.assert_array_equal(run_ort(model, {"x": x})[0], interpret(g, {"x": x})["relu"])


# ------------------------------------------- conformance models through to_onnx + ORT

# Ops whose ONNX node tests also run through to_onnx and ONNX Runtime (an independent
# implementation): import, export, check_model(full_check=True), ORT, compare with ONNX's
# expected outputs.
ROUND_TRIP_OPS = (
    "Add", "AveragePool", "BatchNormalization", "Cast", "Concat", "Conv", "ConvTranspose",
    "CumSum", "DepthToSpace", "DequantizeLinear", "Einsum", "Expand", "Flatten", "Gather",
    "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GroupNormalization",
    "HardSwish", "InstanceNormalization", "LayerNormalization", "LeakyRelu", "LogSoftmax",
    "MatMul", "MatMulInteger", "MaxPool", "Mul", "OneHot", "Pad", "PRelu", "QuantizeLinear",
    "RMSNormalization", "Range", "ReduceMax", "ReduceMean", "ReduceSum", "Relu", "Reshape",
    "RotaryEmbedding", "ScatterND", "Shape", "Sigmoid", "Slice", "Softmax", "Split", "Sqrt",
    "Squeeze", "Tanh", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Where",
)  # fmt: skip

# dtypes ONNX Runtime's Python API cannot feed or return.
_ORT_UNFEEDABLE = {"bfloat16", "int4", "uint4"}
# Node tests ONNX Runtime 1.32 itself cannot run (its own gaps, not ecograph's).
_ORT_GAPS = {
    "test_reduce_max_empty_set_bool": "ORT: ReduceMax is not defined for an empty bool set",
    "test_top_k_uint64": "ORT has no uint64 TopK kernel",
}


def _round_trip_cases() -> list:
    from ecograph.conformance import exclusion_reason, load_node_tests

    cases = []
    for test in load_node_tests(ROUND_TRIP_OPS):
        if exclusion_reason(test) is not None or test.name in _ORT_GAPS:
            continue
        io = [*test.model.graph.input, *test.model.graph.output]
        names = {TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower() for vi in io}
        if names & _ORT_UNFEEDABLE:
            continue
        cases.append(pytest.param(test, id=test.name))
    return cases


@pytest.fixture(scope="module")
def round_trip_cases() -> list:
    return _round_trip_cases()


def test_conformance_models_round_trip_through_onnx_runtime(round_trip_cases: list) -> None:
    from ecograph.conformance import _as_array, _compare

    assert len(round_trip_cases) > 300
    problems = []
    for param in round_trip_cases:
        test = param.values[0]
        try:
            graph = from_onnx(test.model)
        except UnsupportedError:
            continue  # excluded at import for a reason the conformance table records
        model = to_onnx(graph)
        onnx.checker.check_model(model, full_check=True)
        inputs, expected = test.data_sets[0]
        feeds = {v.name: _as_array(a) for v, a in zip(graph.inputs, inputs, strict=False)}
        try:
            got = run_ort(model, feeds)
        except Exception as exc:
            problems.append(f"{test.name}: ORT: {str(exc).splitlines()[0][:200]}")
            continue
        for want, have in zip(expected, got, strict=True):
            # ORT's float kernels differ from numpy's in the last bits; allow 1e-5 absolute.
            problem = _compare(_as_array(want), np.asarray(have), 1e-3, 1e-5)
            if problem:
                problems.append(f"{test.name}: {problem}")
    assert not problems, "\n".join(problems)


def test_builtin_library_ops_export_as_decompositions() -> None:
    from ecograph.ir import lookup_schema

    for op in ("SiLU", "SwiGLU", "Linear"):
        assert lookup_schema(op, "ecograph") is not None, f"ecograph::{op} is not registered"
    b = GraphBuilder()
    gate = b.input("gate", "float32", ["n", 8])
    up = b.input("up", "float32", ["n", 8])
    s = b.op("SiLU", gate, domain="ecograph")
    h = b.op("SwiGLU", s, up, domain="ecograph")
    w = b.constant(RNG.standard_normal((8, 4)).astype(np.float32), "w")
    bias = b.constant(RNG.standard_normal(4).astype(np.float32), "bias")
    y = b.op("Linear", h, w, bias, domain="ecograph")
    b.output(y)
    model = to_onnx(b.graph)
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} == {""}
    feeds = {"gate": RNG.standard_normal((3, 8)).astype(np.float32),
             "up": RNG.standard_normal((3, 8)).astype(np.float32)}  # fmt: skip
    want = interpret(b.graph, feeds)[y.name]
    np.testing.assert_allclose(run_ort(model, feeds)[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head_major", [False, True])
def test_cache_attention_exports_as_the_attention_it_fused(head_major: bool) -> None:
    """ecograph::CacheAttention (fuse-cache-attention) leaves as Gather (/ Transpose, for a
    sequence-first cache) / Concat and ONNX Attention, which ONNX Runtime runs to the
    interpreter's numbers."""
    from ecograph.passes.attention import FuseCacheAttention
    from tests.passes.test_cache_attention import decode_graph, feeds_for

    graph = decode_graph(head_major=head_major)
    FuseCacheAttention().run(graph)
    assert {n.op_type for n in graph.nodes} == {"CacheAttention"}
    model = to_onnx(graph)
    ops = {n.op_type for n in model.graph.node}
    assert ("Transpose" in ops) != head_major, ops
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} == {""}
    feeds = feeds_for(graph, s=6)
    want = interpret(graph, feeds)
    for got, name in zip(run_ort(model, feeds), want, strict=True):
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-6)


def test_corrupted_bytes_raise_only_typed_errors() -> None:
    """Random byte flips and truncations of real models: import succeeds or raises an
    EcographError, never anything else (a crash) and never hangs."""
    from ecograph.errors import EcographError

    models = [to_onnx(mlp_graph()).SerializeToString(), _tiny_model().SerializeToString()]
    rng = np.random.default_rng(7)
    outcomes = {"ok": 0, "typed": 0}
    for data in models:
        for _ in range(150):
            mutated = bytearray(data)
            for _ in range(int(rng.integers(1, 4))):
                mutated[int(rng.integers(0, len(mutated)))] = int(rng.integers(0, 256))
            if rng.random() < 0.3:
                mutated = mutated[: int(rng.integers(1, len(mutated)))]
            try:
                from_onnx(bytes(mutated))
                outcomes["ok"] += 1
            except EcographError:
                outcomes["typed"] += 1
    assert outcomes["typed"] > 50, outcomes


def test_export_with_external_data_round_trips(tmp_path: Path) -> None:
    b = GraphBuilder()
    x_in = b.input("x", "float32", ["batch", 64])
    w_big = b.constant(RNG.standard_normal((64, 64)).astype(np.float32), "w")
    small = b.constant(np.float32(0.5), "half")
    b.output(b.op("Mul", b.op("MatMul", x_in, w_big), small))
    g = b.graph
    path = tmp_path / "ext.onnx"
    model = to_onnx(g, path, external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    w = next(t for t in model.graph.initializer if t.name == "w")
    assert w.data_location == TensorProto.EXTERNAL and not w.raw_data
    onnx.checker.check_model(str(path), full_check=True)
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = interpret(g, {"x": x})
    for (name, expected), got in zip(want.items(), sess.run(None, {"x": x}), strict=True):
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6, err_msg=name)
    back = from_onnx(path)
    np.testing.assert_array_equal(back.value("w").const_value, g.value("w").const_value)


def test_export_of_huge_weights_needs_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from ecograph.frontend import onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 100)
    with pytest.raises(UnsupportedError, match="pass a path"):
        to_onnx(mlp_graph())


def test_public_api_exports_the_frontend() -> None:
    import ecograph

    assert ecograph.from_onnx is from_onnx
    assert ecograph.to_onnx is to_onnx


def test_large_external_weights_are_memory_mapped(tmp_path: Path) -> None:
    weights = RNG.standard_normal((512, 600)).astype(np.float32)  # > 1 MiB
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 600])],
        [numpy_helper.from_array(weights, "w")],
    )
    path = tmp_path / "big.onnx"
    onnx.save(model, path, save_as_external_data=True, location="big.bin", size_threshold=0)
    g = from_onnx(path)
    w = g.value("w").const_value
    assert w is not None and isinstance(w.base, np.memmap) and not w.flags.writeable
    np.testing.assert_array_equal(w, weights)
    x = RNG.standard_normal((1, 512)).astype(np.float32)
    np.testing.assert_allclose(interpret(g, {"x": x})["y"], x @ weights, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(1, 4, 5), (3, 6, 2)])
def test_symbolic_dims_through_newer_op_kernels_match_ort(size: tuple[int, int, int]) -> None:
    """ConvTranspose, DepthToSpace, Resize, GroupNormalization, Einsum and LpPool on inputs
    with symbolic dims: one imported graph, run at two sizes, against ONNX Runtime."""
    n, h, w = size
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["ct"], strides=[2, 2], pads=[1, 1, 0, 0]),
        helper.make_node("GroupNormalization", ["ct", "gs", "gb"], ["gn"], num_groups=2),
        helper.make_node("DepthToSpace", ["gn"], ["d2s"], blocksize=2, mode="CRD"),
        helper.make_node("Resize", ["d2s", "", "scales"], ["rs"], mode="nearest"),
        helper.make_node("LpPool", ["rs"], ["lp"], kernel_shape=[2, 2], p=2),
        helper.make_node("Einsum", ["lp", "lp"], ["y"], equation="nchw,nchw->nc"),
    ]
    inits = [
        numpy_helper.from_array(RNG.standard_normal((3, 8, 3, 3)).astype(np.float32), "wt"),
        numpy_helper.from_array(np.ones(8, np.float32), "gs"),
        numpy_helper.from_array(np.zeros(8, np.float32), "gb"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    g = from_onnx(model)
    verify(g)
    assert g.value("rs").shape == ("N", 2, "8*H", "8*W")
    x = RNG.standard_normal((n, 3, h, w)).astype(np.float32)
    got = interpret(g, {"x": x})["y"]
    want = run_ort(model, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_resize_node_tests_with_constant_scales_or_sizes() -> None:
    """ONNX's Resize node tests feed scales/sizes as inputs; as initializers they take
    ecograph's own Resize shape rule, which must give the same outputs."""
    from ecograph.conformance import _as_array, _compare, load_node_tests

    checked = 0
    for test in load_node_tests(["Resize"]):
        if "_expanded" in test.name:
            continue
        model = onnx.ModelProto()
        model.CopyFrom(test.model)
        inputs, expected = test.data_sets[0]
        names = [vi.name for vi in model.graph.input]
        feeds = {}
        for name, value in zip(names, inputs, strict=True):
            if name in ("scales", "sizes", "roi"):
                model.graph.initializer.append(numpy_helper.from_array(_as_array(value), name))
            else:
                feeds[name] = _as_array(value)
        kept = [vi for vi in model.graph.input if vi.name in feeds]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        g = from_onnx(model)
        got = interpret(g, feeds)[g.outputs[0].name]
        assert _compare(_as_array(expected[0]), got, 1e-3, 1e-7) is None, test.name
        checked += 1
    assert checked >= 30


def test_numpy_attribute_values_export_as_plain_onnx_attributes() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", [2, 3, 4])
    t = b.op("Transpose", x, perm=(np.int64(2), np.int64(0), np.int64(1)))
    y = b.op("Softmax", t, axis=np.int64(-1))
    z = b.op("LeakyRelu", y, alpha=np.float32(0.25))
    b.output(z)
    model = to_onnx(b.graph)
    onnx.checker.check_model(model, full_check=True)
    xv = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(
        run_ort(model, {"x": xv})[0], interpret(b.graph, {"x": xv})[z.name], rtol=1e-6
    )


# -------------------------------------------- what ONNX Runtime runs, ecograph imports


def _pool_model(input_dims: list) -> onnx.ModelProto:
    """Relu, then a mean over the last axis broadcast back onto the input: the last two
    axes must not be forced equal."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("ReduceMean", ["r", "axes"], ["m"], keepdims=1),
        helper.make_node("Mul", ["r", "m"], ["y"]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([3], np.int64), "axes")],
    )


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 3, 4, 4)])
def test_negative_dims_are_dynamic_like_in_onnx_runtime(shape: tuple[int, ...]) -> None:
    model = _pool_model([-1, 3, -1, -1])  # Paddle2ONNX writes -1 for dynamic dims
    g = from_onnx(model)
    verify(g)
    dims = g.inputs[0].shape
    assert dims[1] == 3 and len({dims[0], dims[2], dims[3]}) == 3
    assert all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
    x = RNG.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(
        interpret(g, {"x": x})["y"], run_ort(model, {"x": x})[0], rtol=1e-6, atol=1e-6
    )


def test_dim_param_reused_on_one_input_is_a_symbol_per_axis() -> None:
    model = _pool_model([1, 3, "dim", "dim"])  # height and width both called "dim"
    g = from_onnx(model)
    verify(g)
    _, _, h, w = g.inputs[0].shape
    assert h == "dim" and isinstance(w, str) and w != "dim"
    x = RNG.standard_normal((1, 3, 5, 7)).astype(np.float32)  # H != W: ORT runs it
    want = run_ort(model, {"x": x})[0]
    np.testing.assert_allclose(interpret(g, {"x": x})["y"], want, rtol=1e-6, atol=1e-6)
    # Exported again, the split symbol keeps its own name: the round trip stays faithful.
    again = from_onnx(to_onnx(g))
    assert again.inputs[0].shape == g.inputs[0].shape


def _untied_model() -> onnx.ModelProto:
    """Inputs that share dim_params the graph never ties: `a` and `b` are concatenated along
    "len" (only "batch" must agree), `c` feeds its own branch."""
    return make_model(
        [
            helper.make_node("Concat", ["a", "b"], ["y"], axis=1),
            helper.make_node("Relu", ["b"], ["z"]),
            helper.make_node("Neg", ["c"], ["w"]),
        ],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "len"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", "len"]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, ["len"]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "yzw"],
    )


def _untied_feeds(batch: int = 2) -> dict[str, np.ndarray]:
    return {  # three different lengths for the one name "len": ONNX Runtime runs this
        "a": RNG.standard_normal((batch, 7)).astype(np.float32),
        "b": RNG.standard_normal((batch, 5)).astype(np.float32),
        "c": RNG.standard_normal(3).astype(np.float32),
    }


def test_dim_param_shared_by_untied_inputs_is_a_symbol_per_input() -> None:
    model = _untied_model()
    g = from_onnx(model)
    verify(g)
    (batch, len_a), (batch_b, len_b), (len_c,) = (v.shape for v in g.inputs)
    assert (batch, len_a) == ("batch", "len") and batch_b == "batch"  # Concat ties the batch
    assert len({len_a, len_b, len_c}) == 3 and isinstance(len_b, str) and isinstance(len_c, str)
    feeds = _untied_feeds()
    want = run_ort(model, feeds)
    got = interpret(g, feeds)
    for name, expected in zip("yzw", want, strict=True):
        np.testing.assert_array_equal(got[name], expected)  # Concat, Relu, Neg: exact
    # Exported, each length keeps its own name, so ecograph reads the file back the same and
    # ONNX Runtime still runs it with three lengths.
    exported = to_onnx(g)
    again = from_onnx(exported)
    assert [v.shape for v in again.inputs] == [v.shape for v in g.inputs]
    for have, expected in zip(run_ort(exported, feeds), want, strict=True):
        np.testing.assert_array_equal(have, expected)
    for name, expected in zip("yzw", want, strict=True):
        np.testing.assert_array_equal(interpret(again, feeds)[name], expected)


def test_untied_inputs_compiled_for_x86_match_onnx_runtime(tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    import ecograph
    from ecograph.errors import InputError

    model = _untied_model()
    compiled = ecograph.load(ecograph.compile(from_onnx(model), "x86", tmp_path / "untied"))
    for batch in (1, 3):
        feeds = _untied_feeds(batch)
        got = compiled(**feeds)
        for have, expected in zip(got, run_ort(model, feeds), strict=True):
            np.testing.assert_array_equal(np.asarray(have), expected)
    bad = {**_untied_feeds(2), "b": RNG.standard_normal((3, 5)).astype(np.float32)}
    with pytest.raises(InputError, match="batch"):  # the tie Concat makes is checked
        compiled(**bad)


def _tied(op: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A model whose op ties the inputs' dim_params, a feed that keeps the tie, one that breaks
    it (ONNX Runtime rejects that one too)."""
    f32 = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    if op == "Add":
        node = helper.make_node("Add", ["a", "b"], ["y"])
        ins = [vi("a", f32, ["batch", "seq len"]), vi("b", f32, ["batch", "seq len"])]
        good, bad = ((2, 5), (2, 5)), ((2, 5), (2, 4))
    elif op == "MatMul":
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        ins = [vi("a", f32, ["m", "seq len"]), vi("b", f32, ["seq len", "n"])]
        good, bad = ((3, 5), (5, 2)), ((3, 5), (4, 2))
    else:
        node = helper.make_node("Concat", ["a", "b"], ["y"], axis=0)
        ins = [vi("a", f32, ["m", "seq len"]), vi("b", f32, ["n", "seq len"])]
        good, bad = ((3, 5), (2, 5)), ((3, 5), (2, 4))
    model = make_model([node], ins, [vi("y", f32, None)])

    def feeds(shapes: tuple[tuple[int, int], ...]) -> dict[str, np.ndarray]:
        arrays = [RNG.standard_normal(s).astype(np.float32) for s in shapes]
        return dict(zip("ab", arrays, strict=True))

    return model, feeds(good), feeds(bad)


@pytest.mark.parametrize("op", ["Add", "MatMul", "Concat"])
def test_tied_inputs_unify_to_one_symbol_with_the_exporters_name(op: str) -> None:
    model, good, bad = _tied(op)
    g = from_onnx(model)
    verify(g)
    seq = [d for v in g.inputs for d in v.shape if isinstance(d, str) and "seq" in d]
    assert seq == ["seq_len", "seq_len"]  # one symbol, named after the dim_param
    assert g.metadata["onnx_dim_params"] == {"seq_len": "seq len"}
    exported = to_onnx(g)  # the exporter's name goes back into the file
    assert {d.dim_param for i in exported.graph.input for d in i.type.tensor_type.shape.dim} >= {
        "seq len"
    }
    np.testing.assert_allclose(
        interpret(g, good)["y"], run_ort(model, good)[0], rtol=1e-6, atol=1e-6
    )
    with pytest.raises(InterpreterError, match=r"input 'b'.*symbol 'seq_len' is 4 here but 5"):
        interpret(g, bad)
    with pytest.raises(Exception):  # noqa: B017 - ONNX Runtime's own error types
        run_ort(model, bad)


def test_symbol_that_is_1_at_run_time_where_it_is_broadcast_is_a_typed_error() -> None:
    """Add ties "seq" on both inputs, assuming it is not 1; ONNX Runtime would broadcast a
    length-1 `b`, ecograph rejects the feed, naming the input and the symbol."""
    model, good, _ = _tied("Add")
    g = from_onnx(model)
    feeds = {"a": good["a"], "b": good["b"][:, :1]}
    run_ort(model, feeds)  # ONNX Runtime broadcasts it
    with pytest.raises(InterpreterError, match=r"input 'b'.*symbol 'seq_len' is 1 here but 5"):
        interpret(g, feeds)


def test_ties_chain_through_several_ops() -> None:
    """Add(a, b) ties a's and b's "n", Mul(a + b, c) ties c's to them (union over nodes);
    d, in a branch of its own, stays free."""
    f32 = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    model = make_model(
        [
            helper.make_node("Add", ["a", "b"], ["s"]),
            helper.make_node("Mul", ["s", "c"], ["y"]),
            helper.make_node("Relu", ["d"], ["z"]),
        ],
        [vi("a", f32, ["n"]), vi("b", f32, ["n"]), vi("c", f32, ["n"]), vi("d", f32, ["n"])],
        [vi("y", f32, None), vi("z", f32, None)],
    )
    g = from_onnx(model)
    verify(g)
    assert [v.shape for v in g.inputs][:3] == [("n",), ("n",), ("n",)]
    assert g.inputs[3].shape != ("n",)  # d feeds only its own branch
    feeds = {k: RNG.standard_normal(4).astype(np.float32) for k in "abc"}
    feeds["d"] = RNG.standard_normal(9).astype(np.float32)
    got = interpret(g, feeds)
    for name, want in zip("yz", run_ort(model, feeds), strict=True):
        np.testing.assert_array_equal(got[name], want)


def test_a_tie_takes_the_exporters_name_over_a_generated_one() -> None:
    f32 = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    model = make_model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [vi("a", f32, [-1, "seq"]), vi("b", f32, ["batch", "seq"])],  # a's batch: -1
        [vi("y", f32, None)],
    )
    g = from_onnx(model)
    verify(g)
    assert g.inputs[0].shape == g.inputs[1].shape == ("batch", "seq")
    assert "onnx_dim_params" not in g.metadata
    feeds = {k: RNG.standard_normal((2, 3)).astype(np.float32) for k in "ab"}
    np.testing.assert_array_equal(interpret(g, feeds)["y"], run_ort(model, feeds)[0])


def test_ecograph_exports_keep_a_repeated_symbol_on_one_input() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", ["n", "n"])  # a square matrix: equality is meant here
    b.output(b.op("MatMul", x, x, name="y"))
    g = from_onnx(to_onnx(b.graph))
    assert g.inputs[0].shape == ("n", "n")


def test_external_data_that_is_a_directory_or_fifo_is_refused(tmp_path: Path) -> None:
    path, _ = _save_external(tmp_path)
    (tmp_path / "w.bin").unlink()
    (tmp_path / "w.bin").mkdir()
    with pytest.raises(ModelFormatError, match=r"'w\.bin' is a directory, not a regular file"):
        from_onnx(path)
    if not hasattr(os, "mkfifo"):
        return
    (tmp_path / "w.bin").rmdir()
    os.mkfifo(tmp_path / "w.bin")
    with pytest.raises(ModelFormatError, match=r"'w\.bin' is a FIFO \(named pipe\), not a regular"):
        from_onnx(path)  # must not block reading the pipe


def test_model_path_that_is_a_directory_or_fifo_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="is a directory, not a regular file"):
        from_onnx(tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.onnx")
        with pytest.raises(ModelFormatError, match="is a FIFO"):
            from_onnx(tmp_path / "pipe.onnx")


def test_external_data_dims_whose_product_overflows_int64(tmp_path: Path) -> None:
    path, _ = _save_external(tmp_path)
    model = onnx.load(path, load_external_data=False)
    del model.graph.initializer[0].dims[:]
    # 2**32 * 2**32 wraps to 0 in int64: an unchecked product would pass every size check.
    model.graph.initializer[0].dims.extend([2**32, 2**32])
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelFormatError, match=r"more than int64 can count"):
        from_onnx(path)
    model.graph.initializer[0].dims[:] = [2**31, 2**31]  # fits int64, not the file
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelFormatError, match=r"less than the \d+ bytes its shape"):
        from_onnx(path)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (_zip_bytes({"model/data.pkl": b"\x80\x02}q\x00.", "model/version": b"3\n"}),
         r"a PyTorch checkpoint \(torch.save zip\), not ONNX; load the module in Python and "
         r"use ecograph.from_torch"),
        (_zip_bytes({"m/constants.pkl": b"", "m/code/__torch__/m.py": b"", "m/data.pkl": b""}),
         r"a TorchScript archive \(torch.jit.save\), not ONNX"),
        (_zip_bytes({"readme.txt": b"hi"}), r"a zip archive, not ONNX"),
        (b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.", r"a Python pickle .* never "
         r"unpickles"),
        (len(b'{"w":{}}').to_bytes(8, "little") + b'{"w":{}}', r"a safetensors file"),
    ],
    ids=["torch-save-zip", "torchscript", "zip", "pickle", "safetensors"],
)  # fmt: skip
def test_non_onnx_formats_are_named(tmp_path: Path, data: bytes, says: str) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError, match=says):
        from_onnx(path)
    with pytest.raises(ModelFormatError, match=says):
        from_onnx(data)


def test_real_torch_checkpoints_are_named(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(2, 2)
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ModelFormatError, match=r"PyTorch checkpoint.*ecograph\.from_torch"):
        from_onnx(tmp_path / "weights.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(module), tmp_path / "scripted.pt")
    with pytest.raises(ModelFormatError, match=r"TorchScript archive"):
        from_onnx(tmp_path / "scripted.pt")


def test_opset_newer_than_the_installed_onnx_is_a_warning() -> None:
    known = onnx.defs.onnx_opset_version()
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        opset=known + 2,
    )
    says = rf"opset {known + 2}, newer than the installed onnx {onnx.__version__} knows"
    with pytest.warns(UserWarning, match=rf"{says} \(opset {known}\)"):
        g = from_onnx(model)
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    np.testing.assert_array_equal(interpret(g, {"x": x})["y"], np.maximum(x, 0))


def test_mask_expanded_through_equal_where_ties_its_sequence_to_the_ids() -> None:
    # Hugging Face BERT exports build the mask's Expand target as
    # Where(Equal(shape, -1), 1, shape); following shape values through Equal / Where ties the
    # mask's sequence dim to the ids' (one symbol, as when the dim_param was shared).
    shape_of_ids = helper.make_node("Shape", ["ids"], ["s"])
    neg = helper.make_tensor("neg", TensorProto.INT64, [2], [-1, -1])
    one = helper.make_tensor("one", TensorProto.INT64, [2], [1, 1])
    model = make_model(
        [
            shape_of_ids,
            helper.make_node("Equal", ["s", "neg"], ["is_neg"]),
            helper.make_node("Where", ["is_neg", "one", "s"], ["target"]),
            helper.make_node("Expand", ["mask", "target"], ["wide"]),
            helper.make_node("Add", ["ids", "wide"], ["y"]),
        ],
        [
            helper.make_tensor_value_info("ids", TensorProto.FLOAT, ["batch", "sequence"]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers=[neg, one],
    )
    g = from_onnx(model)
    assert g.inputs[0].shape == g.inputs[1].shape == ("batch", "sequence")
    ids = RNG.standard_normal((2, 5)).astype(np.float32)
    mask = RNG.standard_normal((2, 5)).astype(np.float32)
    np.testing.assert_allclose(
        interpret(g, {"ids": ids, "mask": mask})["y"], run_ort(model, {"ids": ids, "mask": mask})[0]
    )
