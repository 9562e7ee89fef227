"""MiniLM-L6 (real weights) quantization accuracy, ecograph next to ONNX Runtime's quantizer.

    python bench/quant_accuracy.py          # prints the table and appends it to RESULTS.md

Same 209 sentences (tests/data/sentences.txt), same metrics as tests/quant/
test_minilm_accuracy.py: mean cosine similarity of mean-pooled embeddings to fp32, Spearman
correlation of the pairwise-similarity matrix, and weight bytes relative to fp32 (ecograph:
IR constants with int4 at 4 bits; ONNX Runtime: the .onnx file sizes).
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch

    from ecograph.passes import run_passes
    from ecograph.quant.quantize import Quantize
    from ecograph.report.measure import describe_machine
    from tests.quant import minilm_eval as ev

    texts = ev.sentences()
    graph = ev.capture_graph()
    run_passes(graph, "cleanup")
    reference = ev.embed(ev.interpreter_runner(graph), texts)
    names = [v.name for v in graph.inputs]
    calib = [dict(zip(names, ev.tokenize(ev.calibration_sentences()).values(), strict=True))]
    rows = []
    cases = {
        "ecograph static int8 (per-channel weights, uint8 activations, minmax)": dict(
            mode="static", dtype="int8", calibration_data=calib
        ),
        "ecograph dynamic int8 (per-channel weights)": dict(mode="dynamic", dtype="int8"),
        "ecograph weight-only int4 g128 (RTN, MSE clip)": dict(
            mode="weight_only", dtype="int4", granularity="group:128", symmetric=False
        ),
        "ecograph weight-only int4 g128 (GPTQ, act order)": dict(
            mode="weight_only",
            dtype="int4",
            granularity="group:128",
            symmetric=False,
            algorithm="gptq",
            calibration_data=calib,
        ),
    }
    for label, options in cases.items():
        t0 = time.perf_counter()
        g = graph.copy()
        Quantize(**options).run(g)
        m = ev.compare(reference, ev.embed(ev.interpreter_runner(g), texts))
        ratio = ev.weight_bytes(g) / ev.weight_bytes(graph)
        rows.append((label, m["mean_cosine"], m["spearman"], ratio, time.perf_counter() - t0))
        print(rows[-1], flush=True)

    # ONNX Runtime: torch.onnx.export, then onnxruntime.quantization.quantize_dynamic (QInt8).
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = Path(tempfile.mkdtemp(prefix="ecograph-ortq-"))
    fp32 = tmp / "minilm.onnx"
    int8 = tmp / "minilm.int8.onnx"
    int8_pc = tmp / "minilm.int8pc.onnx"
    feeds0 = ev.tokenize(texts[:2])
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        ev.encoder_module(),
        (torch.from_numpy(feeds0["input_ids"]), torch.from_numpy(feeds0["attention_mask"])),
        str(fp32),
        input_names=["input_ids", "attention_mask"],
        output_names=["hidden"],
        dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}},
        dynamo=True,
        external_data=False,
    )
    t0 = time.perf_counter()
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    quantize_dynamic(str(fp32), str(int8_pc), weight_type=QuantType.QInt8, per_channel=True)
    for path, label in (
        (fp32, "ONNX Runtime fp32"),
        (int8, "ONNX Runtime dynamic int8 (QInt8, its default per-tensor)"),
        (int8_pc, "ONNX Runtime dynamic int8 (QInt8, per_channel=True)"),
    ):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(feeds: dict[str, np.ndarray], sess: ort.InferenceSession = sess) -> np.ndarray:
            return sess.run(None, feeds)[0]

        m = ev.compare(reference, ev.embed(run, texts))
        ratio = path.stat().st_size / fp32.stat().st_size
        rows.append((label, m["mean_cosine"], m["spearman"], ratio, time.perf_counter() - t0))
        print(rows[-1], flush=True)

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## MiniLM-L6 quantization accuracy ({when})\n",
        "Command: `python bench/quant_accuracy.py`  ",
        f"Machine: {describe_machine()}  ",
        f"Data: {len(texts)} sentences (tests/data/sentences.txt), padded to {ev.SEQ} tokens; "
        "calibration: 64 inputs made by joining pairs of those sentences.  ",
        "Reference: ecograph's fp32 graph in the reference interpreter (matches PyTorch to "
        "~5e-7).\n",
        "| variant | mean cosine | Spearman (pairwise sims) | weight bytes vs fp32 | time (s) |",
        "|---|---|---|---|---|",
    ]
    for label, cos, rho, ratio, secs in rows:
        lines.append(f"| {label} | {cos:.5f} | {rho:.5f} | {ratio:.3f} | {secs:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
