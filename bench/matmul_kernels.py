"""One product, several weight encodings: a MatMul with a constant [K, N] weight, built for a
CPU target as float32 and as each quantization preset asked for, checked against the
reference interpreter and timed in turn, interleaved.

    python bench/matmul_kernels.py --k 2048 --n 5632 --rows 1 --presets fp32,int4,palette4
    python bench/matmul_kernels.py --k 768 --n 50257 --presets fp32 --target x86:haswell

A kernel-level view under the workloads of bench/run.py: which encoding's kernel is faster
for a decode row (rows 1) or a prefill block, and which schedule rule took it. Set
TVM_NUM_THREADS (default here: 1) for the thread count. Prints the median over rounds of
each build's mean call time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--n", type=int, default=5632)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--presets", default="fp32,int4,palette4")
    parser.add_argument("--target", default="x86")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--slice", type=float, default=0.3, help="seconds per build per round")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", "1")

    import tvm
    from tvm import relax

    from ecograph.backends.tvm import build
    from ecograph.ir import GraphBuilder, interpret
    from ecograph.quant.presets import quantize_pass

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((args.k, args.n)) * 0.05).astype(np.float32)
    x = rng.standard_normal((args.rows, args.k)).astype(np.float32)
    runs = {}
    for preset in args.presets.split(","):
        b = GraphBuilder("product")
        xv = b.input("x", "float32", [args.rows, args.k])
        b.output(b.op("MatMul", xv, b.constant(weight, "w")))
        graph = b.graph
        if preset != "fp32":
            quantize_pass(preset).run(graph)
        result = build.build_module(graph, args.target, keep_params=False)
        fn = relax.VirtualMachine(result.executable, tvm.cpu())["main"]
        xt = tvm.runtime.tensor(x)
        want = interpret(graph, {"x": x})[graph.outputs[0].name]
        err = np.abs(fn(xt).numpy() - want).max() / max(np.abs(want).max(), 1e-30)
        runs[preset] = (lambda f=fn, t=xt: f(t), err, result.kernels)
    times: dict[str, list[float]] = {p: [] for p in runs}
    for r in range(args.rounds):
        order = list(runs)[r % len(runs) :] + list(runs)[: r % len(runs)]
        for preset in order:
            call = runs[preset][0]
            start, calls = time.perf_counter(), 0
            while time.perf_counter() - start < args.slice:
                call()
                calls += 1
            times[preset].append((time.perf_counter() - start) / calls * 1e3)
    threads = os.environ["TVM_NUM_THREADS"]
    print(f"{args.rows} x {args.k} x {args.n} on {args.target}, TVM_NUM_THREADS={threads}, "
          f"{args.rounds} rounds interleaved")  # fmt: skip
    print("| build | median ms | max rel. error vs interpreter | kernels (rule) |")
    print("|---|---|---|---|")
    for preset, (_, err, kernels) in runs.items():
        print(f"| {preset} | {np.median(times[preset]):.3f} | {err:.1e} | {kernels} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
