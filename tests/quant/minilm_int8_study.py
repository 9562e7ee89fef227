"""Which dynamic int8 scheme keeps MiniLM-L6 (real weights) within optimize()'s 0.99 budget.

    python -m tests.quant.minilm_int8_study              # accuracy table (reference interpreter)

optimize() checks the cosine similarity of the last hidden state (all positions, flattened) on
the example inputs, so each of the 209 sentences of tests/data/sentences.txt is run alone (batch
1, padded to 48 tokens) as an example input would be, and the table shows the mean and the min
over sentences of that cosine, the cosine over the real (unpadded) tokens only, the cosine of
the mean-pooled sentence embeddings, and the weight bytes relative to fp32. Variants quantize
the graph optimize() quantizes (after the default pipeline).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def default_pipeline_graph(unpadded: bool = False) -> Any:
    """MiniLM captured with a symbolic batch (and sequence length, when `unpadded`), after
    optimize()'s default float pipeline."""
    from ecograph.passes import run_passes
    from tests.quant import minilm_eval as ev

    if unpadded:
        import torch

        import ecograph

        feeds = ev.tokenize(ev.sentences()[:4])
        batch = torch.export.Dim("batch", min=1, max=1024)
        seq = torch.export.Dim("seq", min=2, max=512)
        graph = ecograph.from_torch(
            ev.encoder_module(),
            (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])),
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        )
    else:
        graph = ev.capture_graph()
    run_passes(graph, "default")
    return graph


def per_sentence_feeds(
    graph: Any, texts: list[str], unpadded: bool = False
) -> list[dict[str, np.ndarray]]:
    """One feed per sentence, batch 1: padded to 48 tokens, or (`unpadded`) its own length."""
    from tests.quant import minilm_eval as ev

    names = [v.name for v in graph.inputs]
    if unpadded:
        out = []
        for text in texts:
            enc = ev.tokenizer()([text], truncation=True, max_length=ev.SEQ, return_tensors="np")
            ids, mask = (enc[k].astype(np.int64) for k in ("input_ids", "attention_mask"))
            out.append(dict(zip(names, (ids, mask), strict=True)))
        return out
    feeds = ev.tokenize(texts)
    return [
        dict(zip(names, (feeds["input_ids"][i : i + 1], feeds["attention_mask"][i : i + 1]),
                 strict=True))
        for i in range(len(texts))
    ]  # fmt: skip


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def outputs(graph: Any, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    from ecograph.ir import interpret

    return [next(iter(interpret(graph, f).values())) for f in feeds]


def score(
    reference: list[np.ndarray], got: list[np.ndarray], feeds: list[dict[str, np.ndarray]]
) -> dict[str, float]:
    all_pos = [cosine(r, g) for r, g in zip(reference, got, strict=True)]
    masks = [list(f.values())[1][0].astype(bool) for f in feeds]
    tokens = [cosine(r[0][m], g[0][m]) for r, g, m in zip(reference, got, masks, strict=True)]
    pooled = [
        cosine(r[0][m].mean(0), g[0][m].mean(0)) for r, g, m in zip(reference, got, masks,
                                                                     strict=True)
    ]  # fmt: skip
    return {
        "mean": float(np.mean(all_pos)),
        "min": float(np.min(all_pos)),
        "tokens_mean": float(np.mean(tokens)),
        "tokens_min": float(np.min(tokens)),
        "pooled_mean": float(np.mean(pooled)),
        "below_budget": int(sum(c < 0.99 for c in all_pos)),
    }


def variants(graph: Any, calib: list[dict[str, np.ndarray]]) -> dict[str, Callable[[Any], Any]]:
    """label -> function quantizing a copy of the graph in place (returns notes)."""
    from ecograph.quant.quantize import Quantize, find_targets

    down = [t.node.name for t in find_targets(graph)[0] if _is_down(graph, t.node)]

    def q(**opts: Any) -> Callable[[Any], Any]:
        return lambda g: Quantize(**opts).run(g).stats

    return {
        "(a) per-tensor uint8 activations (main's int8)": q(mode="dynamic"),
        "(a') per-tensor, FFN down projections in fp32": q(mode="dynamic", exclude=tuple(down)),
        "(b) per-token int8 activations": q(mode="dynamic", activations="token"),
        "(b') per-token, FFN down projections in fp32": q(
            mode="dynamic", activations="token", exclude=tuple(down)
        ),
        "(e) per-token, float_after=Gelu (the int8 preset)": q(
            mode="dynamic", activations="token", float_after=("Gelu",)
        ),
        "(b'') per-token, layer 0's FFN down projection in fp32": q(
            mode="dynamic", activations="token", exclude=tuple(down[:1])
        ),
        "(c) SmoothQuant a=0.5 + per-tensor": q(mode="dynamic", smooth=0.5, calibration_data=calib),
        "(c') SmoothQuant a=0.5 + per-token": q(
            mode="dynamic", activations="token", smooth=0.5, calibration_data=calib
        ),
    }


def presets(graph: Any) -> dict[str, Callable[[Any], Any]]:
    """Each preset as optimize(quantize=name) runs it; int8-static calibrates on 64 inputs made
    by joining pairs of the sentences (no evaluation input is seen during calibration)."""
    from ecograph.quant.presets import QUANTIZE_PRESETS, quantize_pass
    from tests.quant import minilm_eval as ev

    names = [v.name for v in graph.inputs]
    calib = [dict(zip(names, ev.tokenize(ev.calibration_sentences()).values(), strict=True))]
    out: dict[str, Callable[[Any], Any]] = {}
    for name in ("int8", "int8-static", "int8-weight", "int4"):
        data = calib if QUANTIZE_PRESETS[name]["mode"] == "static" else None
        out[f"preset {name}"] = lambda g, n=name, d=data: quantize_pass(n, d).run(g).stats
    return out


def _is_down(graph: Any, node: Any) -> bool:
    """The FFN down projection: its weight contracts the 1536-wide intermediate axis."""
    w = node.input(1)
    return w is not None and w.type.rank == 2 and w.type.static_shape()[0] == 1536


def budget_search(
    graph: Any, template: Any, feeds: list[dict[str, np.ndarray]], budget: float
) -> tuple[Any, list[str]]:
    from ecograph.quant.sensitivity import quantize_within_budget

    result = quantize_within_budget(graph, template, feeds, budget)
    return result.graph, result.kept_float


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="first N sentences only")
    parser.add_argument("--only", default="", help="labels containing one of these")
    parser.add_argument("--search", action="store_true", help="also the sensitivity fallback")
    parser.add_argument("--presets", action="store_true", help="the presets, not the variants")
    parser.add_argument("--unpadded", action="store_true", help="each sentence at its length")
    args = parser.parse_args(argv)

    from ecograph.quant.quantize import Quantize
    from tests.quant import minilm_eval as ev

    texts = ev.sentences()[: args.limit or None]
    graph = default_pipeline_graph(args.unpadded)
    feeds = per_sentence_feeds(graph, texts, args.unpadded)
    t0 = time.perf_counter()
    reference = outputs(graph, feeds)
    print(f"fp32 reference: {len(feeds)} sentences in {time.perf_counter() - t0:.1f} s")
    # The dynamic default has no calibration set: optimize() has only its example inputs.
    # SmoothQuant's channel maxima come from 4 of the sentences, as a batch of 4.
    names = [v.name for v in graph.inputs]
    calib = [dict(zip(names, ev.tokenize(ev.sentences()[:4]).values(), strict=True))]
    rows = []
    table = presets(graph) if args.presets else variants(graph, calib)
    for label, fn in table.items():
        if args.only and not any(o in label for o in args.only.split(",")):
            continue
        g = graph.copy()
        stats = fn(g)
        m = score(reference, outputs(g, feeds), feeds)
        ratio = ev.weight_bytes(g) / ev.weight_bytes(graph)
        rows.append((label, m, ratio, stats))
        print(label, m, f"bytes {ratio:.3f}", stats, flush=True)
    if args.search:
        for label, template in {
            "(d) per-tensor + sensitivity fallback (budget 0.99 on 1 sentence)": Quantize(),
            "(d') per-token + sensitivity fallback (budget 0.99 on 1 sentence)": Quantize(
                activations="token"
            ),
        }.items():
            # optimize(accuracy_budget=0.99) searches on its example input: sentence 0 here.
            g, kept = budget_search(graph, template, feeds[:1], 0.99)
            m = score(reference, outputs(g, feeds), feeds)
            ratio = ev.weight_bytes(g) / ev.weight_bytes(graph)
            rows.append((label, m, ratio, {"kept_float": len(kept), "layers": kept}))
            print(label, m, f"bytes {ratio:.3f}", kept, flush=True)
    print()
    print("| variant | mean cos (all pos.) | min | sentences < 0.99 | mean cos (real tokens) "
          "| min | pooled mean | weight bytes vs fp32 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for label, m, ratio, _ in rows:
        print(
            f"| {label} | {m['mean']:.4f} | {m['min']:.4f} | {m['below_budget']}/{len(feeds)} "
            f"| {m['tokens_mean']:.4f} | {m['tokens_min']:.4f} | {m['pooled_mean']:.4f} "
            f"| {ratio:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
