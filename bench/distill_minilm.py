"""MiniLM-L6 (real weights): structured pruning, then distillation from the unpruned model.

    nice -n 10 python bench/distill_minilm.py --prune ffn --ratio 0.5 --steps 300
    python bench/distill_minilm.py --prune blocks --ratio 0.5 --latency   # + x86 timings
    python bench/distill_minilm.py --table --latency   # blocks 0.5, ffn 0.5 / 0.25, heads 0.25

Training inputs are unlabeled sentences (`--corpus`): cut from the license texts under
/usr/share/common-licenses (the default), from the manual pages, or WordNet's usage examples
(`apt-get install wordnet-base`; the closest to the held-out set); the held-out set is
tests/data/sentences.txt (209 general English sentences; any training sentence equal to one
is dropped). Calibration (importance, `--reconstruct`) takes the first training sentences.
Metrics as bench/quant_accuracy.py: mean cosine of mean-pooled embeddings to the unpruned
model and Spearman of the pairwise similarities, on the held-out set, before and after
distillation. CPU only; prints one table row per pruning.
`--prune blocks` drops whole transformer blocks (DropBlocks: 0.5 of 6 = 3 layers), `layers`
single residual branches (DropLayers). With `--latency`, the unpruned and the distilled graphs
are compiled for x86 and timed interleaved with ONNX Runtime fp32 on the unpruned model (batch
1, sequence 48: the captured graph's fixed length; same thread count): p50 of each, and the
ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LICENSES = Path("/usr/share/common-licenses")


def license_sentences(limit: int, seed: int = 0) -> list[str]:
    """Distinct sentences of 40-400 characters from the license texts, shuffled."""
    seen: set[str] = set()
    for path in sorted(LICENSES.iterdir()):
        if not path.is_file():
            continue
        text = re.sub(r"\s+", " ", path.read_text(encoding="utf-8", errors="replace"))
        for sentence in re.split(r"(?<=[.;:!?])\s+", text):
            if 40 <= len(sentence) <= 400 and sentence not in seen:
                seen.add(sentence)
    out = sorted(seen)
    np.random.default_rng(seed).shuffle(out)
    return out[:limit]


MAN_PAGES = Path("/usr/share/man")
_ROFF = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\s[-+]?\d|\\.")


def manual_sentences(limit: int, seed: int = 0) -> list[str]:
    """Distinct prose sentences of 40-300 characters from the manual pages in sections 1, 5
    and 8 under /usr/share/man (roff requests dropped, escapes stripped; sentences that start
    with a capitalized word and are >= 90 % letters and spaces), shuffled: technical English
    on many more topics than the license texts."""
    import gzip

    pages = sorted(p for sec in ("man1", "man5", "man8") for p in (MAN_PAGES / sec).glob("*.gz"))
    if not pages:
        raise SystemExit(f"no manual pages under {MAN_PAGES}; use --corpus licenses")
    seen: set[str] = set()
    for page in pages:
        try:
            with gzip.open(page, "rt", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except (OSError, EOFError):
            continue
        prose = " ".join(ln for ln in text.splitlines() if not ln.startswith((".", "'")))
        prose = re.sub(r"\s+", " ", _ROFF.sub("", prose))
        for sentence in re.split(r"(?<=[.;:!?])\s+", prose):
            letters = sum(c.isalpha() or c == " " for c in sentence)
            if (
                40 <= len(sentence) <= 300
                and re.match(r"[A-Z][a-z]", sentence)
                and (letters >= 0.9 * len(sentence))
            ):
                seen.add(sentence)
    out = sorted(seen)
    np.random.default_rng(seed).shuffle(out)
    return out[:limit]


WORDNET = Path("/usr/share/wordnet")


def wordnet_sentences(limit: int, seed: int = 0) -> list[str]:
    """The usage examples quoted in WordNet's glosses (/usr/share/wordnet/data.{noun,verb,adj,
    adv}, Debian's wordnet-base package) of 20-300 characters: ~40,000 everyday English
    sentences and phrases ("he rented a color television"), shuffled. Closer to the held-out
    sentences than the licenses or the manual pages; any that is also a held-out sentence is
    left out by the caller."""
    files = [WORDNET / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.is_file() for f in files):
        raise SystemExit(
            f"no WordNet data under {WORDNET}: `apt-get install wordnet-base`, or use --corpus "
            "manuals / licenses"
        )
    seen: set[str] = set()
    for path in files:
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:  # the license header
                continue
            for example in re.findall(r'"([^"]+)"', line.split(" | ", 1)[1]):
                example = example.strip()
                if 20 <= len(example) <= 300:
                    seen.add(example[0].upper() + example[1:])
    out = sorted(seen)
    np.random.default_rng(seed).shuffle(out)
    return out[:limit]


def augmented(
    batches: list[dict[str, np.ndarray]], copies: int, rate: float = 0.25, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Copies of the batches with `rate` of the real word pieces (not [CLS], [SEP] or padding)
    replaced by random vocabulary entries: more varied inputs than the license texts alone
    (TinyBERT-style augmentation, without a word-embedding neighbour model)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(copies):
        for batch in batches:
            ids, mask = batch["input_ids"].copy(), batch["attention_mask"]
            real = (mask != 0) & (ids != 101) & (ids != 102)  # BERT's [CLS] and [SEP]
            swap = real & (rng.random(ids.shape) < rate)
            ids[swap] = rng.integers(1996, 30522, int(swap.sum()))  # word pieces, not specials
            out.append({**batch, "input_ids": ids})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="MiniLM-L6: prune, then distill.")
    parser.add_argument("--prune", choices=["ffn", "layers", "blocks", "heads"], default="ffn")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=1024)
    parser.add_argument(
        "--corpus", choices=["licenses", "manuals", "wordnet"], default="licenses",
        help="training text: the license texts, prose from the manual pages (/usr/share/man), "
        "or WordNet's usage examples (apt-get install wordnet-base)",
    )  # fmt: skip
    parser.add_argument(
        "--stages", type=int, default=1,
        help="gradual pruning: prune to ratio/stages more of the original width, distill "
        "steps/stages, and again, `stages` times (ffn and heads only)",
    )  # fmt: skip
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--hidden-weight", type=float, default=1.0)
    parser.add_argument("--importance", default=None, help="default: wanda / block-influence")
    parser.add_argument(
        "--reconstruct", action="store_true",
        help="refit the pruned FFN / head projections by least squares on calibration data",
    )  # fmt: skip
    parser.add_argument(
        "--calibration", type=int, default=64, help="calibration sentences (importance, refit)"
    )
    parser.add_argument("--augment", type=int, default=0, help="token-replaced copies per batch")
    parser.add_argument("--latency", action="store_true", help="also time x86 builds and ORT")
    parser.add_argument("--rounds", type=int, default=45, help="interleaved timing rounds")
    parser.add_argument(
        "--table", action="store_true",
        help="issue 14's MiniLM table in one run: blocks 0.5, ffn 0.5, heads 0.25, ffn 0.25 "
        "(ignores --prune/--ratio)",
    )  # fmt: skip
    args = parser.parse_args()

    import torch

    from ecograph.ir import Graph
    from ecograph.passes import PassManager
    from ecograph.prune import DropBlocks, DropLayers, PruneFFN, PruneHeads
    from ecograph.train import distill, to_torch
    from tests.quant import minilm_eval as ev

    t0 = time.perf_counter()
    teacher = ev.capture_graph()
    PassManager(["default"]).run(teacher)
    names = [v.name for v in teacher.inputs]

    def batches(texts: list[str], size: int) -> list[dict[str, np.ndarray]]:
        out = []
        for i in range(0, len(texts) - size + 1, size):
            feeds = ev.tokenize(texts[i : i + size])
            out.append(dict(zip(names, feeds.values(), strict=True)))
        return out

    corpus = {"licenses": license_sentences, "manuals": manual_sentences,
              "wordnet": wordnet_sentences}[args.corpus]  # fmt: skip
    held_out = ev.sentences()
    known = {t.lower().rstrip(".") for t in held_out}
    train_texts = [t for t in corpus(args.sentences + len(held_out))
                   if t.lower().rstrip(".") not in known][: args.sentences]  # fmt: skip
    train = batches(train_texts, args.batch)
    train += augmented(train, args.augment)
    calibration = batches(train_texts[: args.calibration], 16)

    def embed(graph: Graph) -> np.ndarray:
        module = to_torch(graph)
        with torch.no_grad():
            return ev.embed(lambda f: module(*f.values())[0].numpy(), held_out)

    reference = embed(teacher)

    def prune(kind: str, ratio: float, student: Graph) -> None:
        if kind == "ffn":
            PruneFFN(ratio=ratio, importance=args.importance or "wanda",
                     calibration=calibration, reconstruct=args.reconstruct,
                     ).run(student)  # fmt: skip
        elif kind == "heads":
            PruneHeads(ratio=ratio, importance=args.importance or "wanda",
                       calibration=calibration, reconstruct=args.reconstruct,
                       ).run(student)  # fmt: skip
        elif kind == "blocks":
            DropBlocks(ratio=ratio, calibration=calibration).run(student)
        else:
            DropLayers(ratio=ratio, importance=args.importance or "block-influence",
                       calibration=calibration).run(student)  # fmt: skip

    table = [("blocks", 0.5), ("ffn", 0.5), ("heads", 0.25), ("ffn", 0.25)]
    configs = table if args.table else [
        (args.prune, args.ratio)
    ]  # fmt: skip
    print(
        "| pruning | train data | steps | lr | before: mean cosine / Spearman | after "
        "distillation | distill time |"
    )
    print("|---|---|---|---|---|---|---|")
    latency: list[str] = []
    for index, (kind, ratio) in enumerate(configs):
        t1 = time.perf_counter()
        stages = args.stages if kind in ("ffn", "heads") else 1
        student, seconds, before = teacher.copy(), 0.0, None
        for stage in range(1, stages + 1):
            # the stage's ratio of the width that is left: (ratio * stage / stages) of the
            # original in all
            done, goal = ratio * (stage - 1) / stages, ratio * stage / stages
            prune(kind, (goal - done) / (1 - done), student)
            if before is None:
                before = ev.compare(reference, embed(student))
                setup = time.perf_counter() - (t0 if index == 0 else t1)
            result = distill(student, teacher, train, steps=args.steps // stages, lr=args.lr,
                             hidden_weight=args.hidden_weight)  # fmt: skip
            student, seconds = result.graph, seconds + result.seconds
            if stage < stages:
                mid = ev.compare(reference, embed(student))
                print(f"stage {stage}: {goal:g} pruned, after distillation "
                      f"{mid['mean_cosine']:.3f} / {mid['spearman']:.3f}", flush=True)  # fmt: skip
        assert before is not None
        after = ev.compare(reference, embed(student))
        print(
            f"| {kind} {ratio}{f' in {stages} stages' if stages > 1 else ''} | "
            f"{len(train)}x{args.batch} {args.corpus} sentences"
            f"{f' ({args.augment} augmented copies)' if args.augment else ''} | {args.steps} | "
            f"{args.lr or 3e-4:g} | {before['mean_cosine']:.3f} / {before['spearman']:.3f} | "
            f"{after['mean_cosine']:.3f} / {after['spearman']:.3f} | {seconds:.0f} s "
            f"(setup {setup:.0f} s, {torch.get_num_threads()} threads) |",
            flush=True,
        )
        print("losses:", " ".join(f"{x:.3f}" for x in result.losses[:: max(1, args.steps // 10)]))
        if args.latency:
            latency.append(f"{kind} {ratio}: {latency_row(teacher, student, ev, args.rounds)}")
    for row in latency:
        print(row)
    return 0


def latency_row(teacher: Any, student: Any, ev: Any, rounds: int = 45, calls: int = 10) -> str:
    """x86 p50 (ms) of the unpruned and the pruned builds and of ONNX Runtime fp32 on the
    unpruned model, batch 1, sequence 48 (the graph's fixed length), interleaved rounds;
    the median over rounds of each round's unpruned / pruned ratio (robust to the machine's
    load drifting between rounds); parameters and bytes of both graphs."""
    import tempfile

    import onnxruntime as ort

    import ecograph
    from ecograph.ir.stats import graph_stats

    feeds = ev.tokenize(["The quick brown fox jumps over the lazy dog. " * 12])
    feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
    names = [v.name for v in teacher.inputs]
    feeds = dict(zip(names, feeds.values(), strict=True))
    work = Path(tempfile.mkdtemp(prefix="distill-bench-"))
    runs: dict[str, Any] = {}
    for label, graph in (("unpruned", teacher), ("pruned", student)):
        model = ecograph.load(ecograph.compile(graph, "x86", work / label, progress=False))
        runs[label] = lambda m=model: m(**feeds)
    onnx_path = work / "unpruned.onnx"
    ecograph.to_onnx(teacher, onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    runs["ort-fp32"] = lambda: session.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()
    for r in range(rounds):
        order = list(runs)[r % len(runs) :] + list(runs)[: r % len(runs)]
        for k in order:
            for _ in range(calls):
                t0 = time.perf_counter()
                runs[k]()
                times[k].append(time.perf_counter() - t0)
    p50 = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    per_round = [
        np.median(times["unpruned"][r * calls : (r + 1) * calls])
        / np.median(times["pruned"][r * calls : (r + 1) * calls])
        for r in range(rounds)
    ]
    size = {k: graph_stats(g) for k, g in (("unpruned", teacher), ("pruned", student))}
    return (
        f"x86 p50 ms: unpruned {p50['unpruned']:.2f}, pruned {p50['pruned']:.2f} "
        f"({p50['unpruned'] / p50['pruned']:.2f}x faster; median of {rounds} rounds' ratios "
        f"{float(np.median(per_round)):.2f}x), ORT fp32 unpruned "
        f"{p50['ort-fp32']:.2f} (pruned vs ORT {p50['pruned'] / p50['ort-fp32']:.2f}x); "
        f"params {size['unpruned'].num_parameters:,} -> {size['pruned'].num_parameters:,}, bytes "
        f"{size['unpruned'].parameter_bytes:,} -> {size['pruned'].parameter_bytes:,}"
    )


if __name__ == "__main__":
    sys.exit(main())
