"""Calibration data as users give it: optimize() takes each batch in a form the example inputs
take (a tuple in the graph's input order, one array for a one-input model, a dict by name);
the Quantize pass checks every batch against the graph and says which one is wrong; data a
quantization would not read is refused, not ignored."""

from __future__ import annotations

import numpy as np
import pytest

import ecograph
from ecograph.errors import EcographError, InterpreterError, PassError, UsageError
from ecograph.models import build_default_model, example_inputs
from ecograph.quant.calibrate import calibration_feeds
from ecograph.quant.presets import quantize_pass

torch = pytest.importorskip("torch")


def _optimize(model, example, calibration, quantize="int8-static", tmp_path=None):
    return ecograph.optimize(
        model, example, quantize=quantize, calibration_data=calibration, measure=False,
        cache=False, progress=False, out_dir=tmp_path,
    )  # fmt: skip


def test_tuples_in_input_order_calibrate_exactly_as_dicts_by_name(tmp_path):
    feeds = example_inputs()
    dicts = [example_inputs(seed=s) for s in range(3)]
    tuples = [(d["x"], d["mask"]) for d in dicts]  # the graph's input order: x, mask
    by_name = _optimize(build_default_model(), feeds, dicts, tmp_path=tmp_path / "a")
    by_order = _optimize(build_default_model(), feeds, tuples, tmp_path=tmp_path / "b")
    assert "QuantizeLinear" in [n.op_type for n in by_order.graph.nodes]
    np.testing.assert_array_equal(by_name.module(**feeds), by_order.module(**feeds))
    swapped = [(d["mask"], d["x"]) for d in dicts]
    with pytest.raises(InterpreterError, match=r"calibration batch 0: input 'x' has rank 2"):
        _optimize(build_default_model(), feeds, swapped)


def test_one_tensor_per_batch_for_a_one_input_torch_model(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    batches = [torch.randn(1, 3, 16, 16) for _ in range(2)]
    bare = _optimize(model, (x,), batches, tmp_path=tmp_path / "a")
    name = bare.graph.inputs[0].name
    named = _optimize(model, (x,), [{name: b} for b in batches], tmp_path=tmp_path / "b")
    assert "QuantizeLinear" in [n.op_type for n in bare.graph.nodes]
    np.testing.assert_array_equal(bare.module(x.numpy()), named.module(x.numpy()))


@pytest.mark.parametrize(
    ("batches", "error", "message"),
    [
        ([example_inputs()["x"]], UsageError, r"calibration batch 0 gives 1 input\(s\); the "
         r"graph inputs are \['x', 'mask'\]"),
        ([example_inputs(), {"x": example_inputs()["x"]}], UsageError,
         r"calibration batch 1 lacks \['mask'\]"),
        ([{**example_inputs(), "masks": 0}], UsageError, r"batch 0 has unknown \['masks'\]"),
        ([], UsageError, "calibration data is empty"),
        ([{"x": example_inputs()["x"].astype(np.float64), "mask": example_inputs()["mask"]}],
         UsageError, r"batch 0: input 'x' has dtype float64; expected float32"),
        ([{"x": np.zeros((2, 16, 63), np.float32), "mask": example_inputs()["mask"]}],
         InterpreterError, r"batch 0: input 'x' has shape \[2, 16, 63\]"),
    ],
)  # fmt: skip
def test_a_batch_that_does_not_fit_the_graph_is_named(batches, error, message):
    with pytest.raises(error, match=message):
        _optimize(build_default_model(), example_inputs(), batches)


def test_the_quantize_pass_names_a_batch_that_is_not_a_dict():
    g = build_default_model()
    with pytest.raises(UsageError, match=r"batch 1 is a tuple, not a dict.*\['x', 'mask'\]"):
        calibration_feeds(g, [example_inputs(), (1, 2)])
    # symbols bind per batch: another batch size and length in each batch is fine
    other = {"x": np.zeros((3, 5, 64), np.float32), "mask": np.zeros((3, 5), np.float32)}
    feeds = calibration_feeds(g, [example_inputs(), other])
    assert [f["x"].shape for f in feeds] == [(2, 16, 64), (3, 5, 64)]
    bad = {"x": np.zeros((3, 5, 64), np.float32), "mask": np.zeros((3, 6), np.float32)}
    with pytest.raises(InterpreterError, match="symbol 'seq' is 6 here but 5 elsewhere"):
        calibration_feeds(g, [bad])


def test_calibration_data_a_quantization_would_not_read_is_refused():
    calib = [example_inputs()]
    for preset in ("int8", "int8-weight", "int4", "palette4"):
        with pytest.raises(PassError, match="calibration_data is read by mode='static'"):
            quantize_pass(preset, calib)
    # the forms that read it: static, GPTQ, SmoothQuant
    assert quantize_pass("int8-static", calib).calibration_data == calib
    gptq = {"mode": "weight_only", "dtype": "int4", "granularity": "group:32", "algorithm": "gptq"}
    assert quantize_pass(gptq, calib).calibration_data == calib  # given beside the options
    assert quantize_pass({"mode": "dynamic", "smooth": 0.5}, calib).smooth == 0.5
    with pytest.raises(EcographError, match="given twice"):
        quantize_pass({**gptq, "calibration_data": calib}, calib)
