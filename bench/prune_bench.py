"""Structured pruning tables (issue 14): ecograph.compress() on a ResNet-style CNN by channels
and on a Llama-style model with grouped-query attention by heads and FFN.

    python bench/prune_bench.py                  # both models, 1 thread, 10 rounds of 0.5 s
    python bench/prune_bench.py --models llama --threads 2 --json prune.json
    python bench/prune_bench.py --quick          # tiny models, 2 rounds: a smoke test

Per model: capture once, then one compress(prune={...}, target="x86") per setting. Accuracy:
each build's outputs against the unpruned torch model on held-out random inputs. Latency: the
pruned builds (timed even when compress rolled one back), compress's unpruned build and ONNX
Runtime fp32 on the unpruned model, each in its own worker process, interleaved
(bench/interleave.py), same thread count. The Llama is the bench's llama-prefill with 4 KV
heads instead of 2 (heads groups count KV heads, and 0.25 of 2 rounds down to none).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # as bench/run.py: bench/ must not shadow other packages
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.interleave import Plan, RunnerResult, ratio, round_ratios, run_interleaved  # noqa: E402
from bench.load import CpuSnapshot, describe_other_load, other_usage  # noqa: E402
from bench.run import fmt_ms, fmt_range, fmt_ratio  # noqa: E402
from bench.worker import Prepared, ProcessWorker, thread_env  # noqa: E402

MODELS = ["cnn", "llama"]
SETTINGS: dict[str, list[dict[str, float]]] = {
    "cnn": [{"channels": 0.25}, {"channels": 0.5}],
    "llama": [{"heads": 0.25}, {"ffn": 0.5}, {"heads": 0.25, "ffn": 0.5}],
}
ORT = "ort-fp32"


def build(name: str, quick: bool) -> tuple[Any, tuple[Any, ...], int]:
    """(torch module in eval mode, example args, vocab size or 0) from seed 0; the same in
    the driver and in every worker."""
    import torch

    from bench.runners import build_workload, prefill_module

    torch.manual_seed(0)
    if name == "cnn":
        if not quick:
            model, args = build_workload("resnet")
            return model, args, 0
        from tests.models.cnn import TinyResNet

        return TinyResNet(width=8).eval(), (torch.randn(1, 3, 32, 32),), 0
    if name != "llama":
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, ffn, vocab, seq = (2, 64, 128, 256, 16) if quick else (4, 256, 688, 2000, 128)
    cfg = LlamaConfig(
        num_hidden_layers=layers, hidden_size=hidden, intermediate_size=ffn, num_attention_heads=8,
        num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=256, bos_token_id=0,
        eos_token_id=0, pad_token_id=0, use_cache=False, attn_implementation="sdpa",
    )  # fmt: skip
    model = prefill_module(LlamaForCausalLM(cfg).eval())
    return model, (torch.randint(0, vocab, (1, seq)),), vocab


def random_args(example: Sequence[Any], vocab: int, rng: np.random.Generator) -> list[Any]:
    """Inputs shaped like `example`: normal floats, or token ids below `vocab`."""
    if vocab:
        return [rng.integers(0, vocab, tuple(a.shape)).astype(np.int64) for a in example]
    return [rng.standard_normal(tuple(a.shape)).astype(np.float32) for a in example]


def prepare(workload: str, runner: str, threads: int, options: dict[str, Any]) -> Prepared:
    """A worker's setup (bench/worker.py): ORT fp32 on the unpruned model, or a compress
    artifact (options["artifact"]) loaded with ecograph.load."""
    import torch

    from bench.runners import _prepare_ort

    torch.set_num_threads(threads)
    model, args, _ = build(workload, bool(options.get("quick")))
    np_args = [a.numpy() for a in args]
    with torch.no_grad():
        reference = model(*args).numpy()
    if runner == ORT:
        return _prepare_ort(runner, model, args, np_args, threads, reference)
    import ecograph

    module = ecograph.load(options["artifact"])
    first = module(*np_args)
    return Prepared(lambda: module(*np_args), None, None, first, reference)


def _artifact_dir(out_dir: Path, label: str) -> Path:
    # compress() builds each candidate into out_dir/<label, non-alphanumerics as "_">
    # (prune/compress.py _Search.build) and returns only the chosen one's artifact.
    return out_dir / "".join(c if c.isalnum() else "_" for c in label)


def held_out_accuracy(module: Any, batches: list[Any], refs: list[Any]) -> tuple[float, float]:
    """(mean cosine, top-1 agreement over output rows) of `module` to the torch outputs."""
    from bench.worker import cosine

    cosines, agree = [], []
    for args, ref in zip(batches, refs, strict=True):
        out = np.asarray(module(*args))
        cosines.append(cosine(out, ref)[0])
        agree.append(out.argmax(-1).reshape(-1) == ref.argmax(-1).reshape(-1))
    return float(np.mean(cosines)), float(np.mean(np.concatenate(agree)))


def compress_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Capture `name`, run compress once per setting; rows with sizes, accuracy, decisions
    and artifact paths (the unpruned build's as "baseline")."""
    import torch

    import ecograph
    from ecograph.errors import EcographError
    from ecograph.prune.compress import Candidate

    model, example, vocab = build(name, args.quick)
    graph = ecograph.from_torch(model, example)
    names = [v.name for v in graph.inputs]
    # the CNN's outputs are 10 logits, the Llama's a row per position: more CNN batches
    n_val, n_held = (2, 4) if args.quick else (4, 64 if name == "cnn" else 16)
    rng = np.random.default_rng(1)
    validation = [
        dict(zip(names, random_args(example, vocab, rng), strict=True)) for _ in range(n_val)
    ]
    held = [random_args(example, vocab, np.random.default_rng(100 + i)) for i in range(n_held)]
    with torch.no_grad():
        refs = [model(*(torch.from_numpy(a) for a in batch)).numpy() for batch in held]
    feeds = dict(zip(names, [a.numpy() for a in example], strict=True))

    say = lambda text: print(f"[prune] {name}: {text}", flush=True)  # noqa: E731
    common = {"validation_data": validation, "target": "x86", "name": name, "progress": say}
    rows: list[dict[str, Any]] = []
    baseline: dict[str, Any] | None = None
    for setting in SETTINGS[name]:
        label = Candidate(dict(setting)).label
        out_dir = work / name / _artifact_dir(Path(), label).name
        say(f"compress {label}")
        row: dict[str, Any] = {"setting": label}
        rows.append(row)
        try:
            res = ecograph.compress(graph, feeds, prune=setting, out_dir=out_dir, **common)
        except EcographError as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            continue
        facts = {c.label: c for c in res.report.candidates}
        base, cand = facts["unpruned"], facts[label]
        rolled = any(note.startswith("ROLLED BACK") for note in res.report.notes)
        artifact = res.artifact if cand.status == "chosen" else _artifact_dir(out_dir, label)
        row.update({k: getattr(cand, k) for k in ("parameters", "bytes", "status", "reason")})
        row.update(val_cosine=cand.cosine, compress_ratio=cand.latency_ratio, rolled_back=rolled)
        row["artifact"] = str(artifact) if artifact.is_dir() else None
        if baseline is None:
            baseline = {k: getattr(base, k) for k in ("parameters", "bytes", "status")}
            baseline.update(setting="unpruned", val_cosine=base.cosine)
            baseline["artifact"] = str(_artifact_dir(out_dir, "unpruned"))
    rows = [baseline, *rows] if baseline else rows  # no baseline: every setting failed
    for row in rows:
        if row.get("artifact"):
            module = ecograph.load(row["artifact"])
            row["cosine"], row["top1"] = held_out_accuracy(module, held, refs)
    return {"model": name, "rows": rows, "held_out_batches": n_held}


def time_model(name: str, table: dict[str, Any], args: argparse.Namespace) -> list[RunnerResult]:
    """ORT fp32, the unpruned build and every pruned build, interleaved in worker processes."""
    artifacts = {r["setting"]: r["artifact"] for r in table["rows"] if r.get("artifact")}

    def start(runner: str) -> ProcessWorker:
        options = {"quick": args.quick, "artifact": artifacts.get(runner)}
        prep = "bench.prune_bench:prepare"
        return ProcessWorker(name, runner, threads=args.threads, prepare=prep, options=options)

    plan = Plan(rounds=args.rounds, slice_s=args.slice)
    say = lambda msg: print(f"[prune] {name}: {msg}", flush=True)  # noqa: E731
    return run_interleaved([ORT, *artifacts], start, plan, log=say).results


HEADER = (
    "| setting | parameters | weight MB | held-out cosine | top-1 agreement | p50 ms | "
    "vs unpruned ecograph (per round) | vs ORT fp32 | compress decision |"
)


def _cell(text: str) -> str:
    return " ".join(str(text).replace("|", "/").split())[:300]


def table_text(table: dict[str, Any], results: list[RunnerResult]) -> str:
    """The markdown table: ORT fp32, the unpruned build, then one row per setting."""
    p50 = {r.runner: s.p50_ms for r in results if not r.error and (s := r.summary("idle"))}
    runs = {r.runner: r for r in results}
    base = runs.get("unpruned")

    def timing(name: str) -> str:
        """p50 ms | vs the unpruned build (min-max of per-round ratios) | vs ORT fp32."""
        if name not in p50:
            why = f"failed: {runs[name].error or 'no timed calls'}" if name in runs else "not built"
            return _cell(why) + " | |"
        medians = runs[name].round_medians("idle")
        per_round = fmt_range(round_ratios(medians, base.round_medians("idle") if base else []))
        ms, vs_base = p50[name], fmt_ratio(ratio(p50[name], p50.get("unpruned")))
        return f"{fmt_ms(ms)} | {vs_base} ({per_round}) | {fmt_ratio(ratio(ms, p50.get(ORT)))}"

    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    if ORT in runs:
        setup = runs[ORT].setup
        size, cos = setup.get("bytes") or 0, setup.get("cosine") or float("nan")
        lines.append(
            f"| ORT fp32, unpruned | | {size / 1e6:.3g} (.onnx) | {cos:.5f} (example input) | "
            f"| {timing(ORT)} | |"
        )
    for row in table["rows"]:
        if row.get("error"):
            lines.append(f"| {row['setting']} | {_cell('failed: ' + row['error'])} |" + " |" * 7)
            continue
        decision = row["status"]
        if row.get("compress_ratio") is not None:
            decision += f" (compress timed {row['compress_ratio']:.2f}x)"
        elif row["status"] != "baseline":
            decision += f" ({_cell(row['reason'])})"
        cos, top1 = row.get("cosine"), row.get("top1")
        lines.append(
            f"| {row['setting']} | {row['parameters']:,} | {row['bytes'] / 1e6:.3g} | "
            f"{'n/a' if cos is None else f'{cos:.5f}'} | "
            f"{'n/a' if top1 is None else f'{top1:.1%}'} | {timing(row['setting'])} | {decision} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="cnn,llama")
    parser.add_argument("--threads", type=int, default=1, help="threads for every runner")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (10)")
    parser.add_argument("--slice", type=float, default=None, help="seconds per turn (0.5)")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 rounds of 0.2 s")
    parser.add_argument("--json", default=None, help="also write all results to this file")
    args = parser.parse_args(argv)
    args.rounds = (2 if args.quick else 10) if args.rounds is None else args.rounds
    args.slice = (0.2 if args.quick else 0.5) if args.slice is None else args.slice
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.model_list if m not in MODELS]
    if unknown or not args.model_list:
        parser.error(f"unknown model(s) {unknown or '(none)'}; known: {', '.join(MODELS)}")
    if args.threads < 1 or args.rounds < 1 or args.slice <= 0:
        parser.error("--threads and --rounds must be >= 1, --slice > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(thread_env(args.threads))  # before TVM is imported (compress times too)
    signal.signal(signal.SIGTERM, lambda signum, _f: sys.exit(128 + signum))
    from ecograph.report.measure import describe_machine

    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/prune_bench.py", *given])
    before = CpuSnapshot.take()
    sections, records = [], []
    with tempfile.TemporaryDirectory(prefix="ecograph-prune-bench-") as tmp:
        for name in args.model_list:
            table = compress_model(name, args, Path(tmp))
            results = time_model(name, table, args)
            sections.append(f"### {name}\n\n{table_text(table, results)}\n")
            records.append({**table, "timing": [r.to_dict() for r in results]})
    after = CpuSnapshot.take()
    other = describe_other_load(before, after, other_usage(before, after, [os.getpid()]))
    machine = describe_machine()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        f"## Pruning with compress() {when}\n",
        f"Command: `{command}`  ",
        f"CPU model: {machine['cpu']}; threads per runner: {args.threads}; {args.rounds} "
        f"rounds x ~{args.slice:g} s per runner, interleaved  ",
        f"Other load during the run: {other}  ",
        "Accuracy: each x86 build vs the unpruned torch model on held-out random inputs (mean "
        "cosine; top-1 agreement per output row). Decision: compress's own (its timing of the "
        "candidate against the unpruned build, docs/pruning.md; rolled back unless below 0.95x); "
        "rolled-back builds are timed here too.\n",
    ]
    text = "\n".join(head) + "\n" + "\n".join(sections)
    print("\n" + text)
    if args.json:
        payload = {"command": command, "date": when, "machine": machine, **vars(args)}
        payload["models"] = records
        Path(args.json).write_text(json.dumps(payload, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
