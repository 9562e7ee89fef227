"""`make demo`: the main job on the bundled default model, as far as the project goes today.

Builds the default encoder block, verifies it, prints its IR and statistics, round-trips the
text form, runs it in the reference interpreter at two sequence lengths (one graph, symbolic
dims) and compares with an independent numpy computation.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from ecograph.ir import graph_stats, graphs_equal, interpret, parse, to_text, verify
from ecograph.models import build_default_model, example_inputs, reference_block


def main() -> int:
    graph = build_default_model()
    verify(graph)
    print(to_text(graph, inline_limit=8))
    print(graph_stats(graph).summary())
    for seq in (16, 128):
        s = graph_stats(graph, {"batch": 1, "seq": seq})
        print(f"at batch=1, seq={seq}: {s.flops:,} FLOPs ({s.macs:,} MACs)")

    back = parse(to_text(graph, inline_limit=None))
    print(f"text round trip exact: {graphs_equal(graph, back)}")

    worst = 0.0
    for batch, seq in ((2, 16), (1, 128)):
        feeds = example_inputs(batch, seq)
        start = time.perf_counter()
        out = interpret(graph, feeds)["y"]
        ms = (time.perf_counter() - start) * 1e3
        ref = reference_block(feeds["x"], feeds["mask"])
        err = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
        worst = max(worst, err)
        print(
            f"interpreter batch={batch} seq={seq}: output {out.dtype}{list(out.shape)} in "
            f"{ms:.1f} ms; max error vs numpy float64 reference {err:.2e} (relative to max |y|)"
        )
    ok = worst < 1e-5
    print("demo: OK" if ok else "demo: MISMATCH against the numpy reference")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
