"""Latency of MiniLM-L6 (real weights) compiled by ecograph: fp32 against the int8 variants.

    python -m tests.quant.minilm_int8_speed                       # minilm-b1, 1 and 2 threads
    python -m tests.quant.minilm_int8_speed --workloads minilm-b1,minilm-b8 --rounds 9

Every build is the default float pipeline, then (for int8) one Quantize pass, compiled for the
host x86 CPU. Builds run interleaved: each round times a batch of calls of every build, in an
order rotated per round, so load from other processes lands on all of them alike; the table
gives the median call and each build's median relative to fp32 (per-round ratios' median).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BUILDS: dict[str, dict[str, Any] | None] = {
    "fp32": None,
    "int8 per-tensor (main's int8)": {"mode": "dynamic", "activations": "tensor"},
    "int8 per-token": {"mode": "dynamic", "activations": "token"},
    "int8 per-token, FFN down in fp32": {
        "mode": "dynamic",
        "activations": "token",
        "float_after": ("Gelu",),
    },
}


def build(workload: str, options: dict[str, Any] | None, out: Path) -> Callable[[], Any]:
    import ecograph
    from bench.runners import build_workload
    from ecograph.passes import run_passes
    from ecograph.quant.quantize import Quantize

    model, args = build_workload(workload)
    graph = ecograph.from_torch(model, args)
    run_passes(graph, "default")
    if options is not None:
        Quantize(**options).run(graph)
    module = ecograph.load(ecograph.compile(graph, "x86", out, progress=False))
    feeds = dict(zip([v.name for v in graph.inputs], [a.numpy() for a in args], strict=True))
    return lambda: module(**feeds)


def timed(call: Callable[[], Any], seconds: float) -> list[float]:
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(out) < 3:
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workloads", default="minilm-b1")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--slice", type=float, default=0.5, help="seconds per build per turn")
    parser.add_argument("--builds", default="", help="comma-separated labels (substrings)")
    args = parser.parse_args(argv)

    from ecograph.backends.tvm.threads import policy
    from ecograph.report.measure import describe_machine

    wanted = [w for w in args.builds.split(",") if w]
    builds = {k: v for k, v in BUILDS.items() if not wanted or any(w in k for w in wanted)}
    print(f"machine: {describe_machine()}")
    rows = []
    for workload in args.workloads.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="ecograph-int8-speed-"))
        calls = {}
        for i, (label, options) in enumerate(builds.items()):
            t0 = time.perf_counter()
            calls[label] = build(workload, options, tmp / str(i))
            print(f"{workload}: {label}: compiled in {time.perf_counter() - t0:.1f} s", flush=True)
        for threads in [int(t) for t in args.threads.split(",")]:
            policy(threads)
            for c in calls.values():
                timed(c, 0.3)  # warm-up at this thread count
            samples: dict[str, list[float]] = {k: [] for k in calls}
            per_round: dict[str, list[float]] = {k: [] for k in calls}
            labels = list(calls)
            for r in range(args.rounds):
                order = labels[r % len(labels) :] + labels[: r % len(labels)]
                for label in order:
                    got = timed(calls[label], args.slice)
                    samples[label] += got
                    per_round[label].append(statistics.median(got))
            base = per_round.get("fp32")
            for label in labels:
                med = statistics.median(samples[label]) * 1e3
                rel = (
                    statistics.median(
                        np.array(per_round[label]) / np.array(base)  # same-round ratios
                    )
                    if base
                    else float("nan")
                )
                rows.append((workload, threads, label, med, rel, len(samples[label])))
                print(rows[-1], flush=True)
    print()
    print("| workload | threads | build | median ms/call | vs fp32 (median of round ratios) "
          "| calls |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for w, t, label, med, rel, n in rows:
        print(f"| {w} | {t} | {label} | {med:.2f} | {rel:.2f} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
