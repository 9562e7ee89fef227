"""`make demo`: the main job on the bundled default model.

1. Build the default encoder block (ecograph/models.py), verify it, print its statistics.
2. optimize() it for x86 with int8: passes, dynamic int8 quantization, TVM compile, accuracy
   check against the original, latency and energy of the original and optimized builds.
3. Cross-compile the optimized graph for ARM (aarch64) and CUDA.
4. Load the x86 artifact from disk and run it on the example inputs, compared with an
   independent numpy computation of the model.
5. Print the report table and write report.json / report.html.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from ecograph.ir import graph_stats, verify
from ecograph.models import build_default_model, example_inputs, reference_block

OUT = Path("build") / "demo"
# No energy counter on a typical CPU VM: energy is then *estimated* from latency and this
# declared power (and labelled so). Override with ECOGRAPH_DECLARED_WATTS.
DECLARED_WATTS = float(os.environ.get("ECOGRAPH_DECLARED_WATTS", "35"))


def main(out_dir: Path = OUT) -> int:
    import ecograph
    from ecograph.errors import EcographError

    graph = build_default_model()
    verify(graph)
    feeds = example_inputs(batch=2, seq=32)
    print(f"== model: {graph.name} (bundled default, ecograph/models.py)")
    print(graph_stats(graph, {"batch": 2, "seq": 32}).summary())

    print("\n== optimize(target='x86', quantize='int8')")
    t0 = time.perf_counter()
    result = ecograph.optimize(
        graph,
        feeds,
        target="x86",
        quantize="int8",
        out_dir=out_dir / "work",
        name="encoder_block",
        declared_power_watts=DECLARED_WATTS,
    )
    print(f"done in {time.perf_counter() - t0:.1f} s")
    for rec in result.report.passes:
        if rec.get("changed"):
            print(f"  {rec['name']}: {rec.get('nodes_before')} -> {rec.get('nodes_after')} nodes")

    print("\n== cross-compile the optimized graph")
    for target in ("arm", "cuda"):
        try:
            path = ecograph.compile(result.graph, target, out_dir / target, progress=False)
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            print(f"  {target:5s} -> {path} ({size / 1024:.0f} KiB)")
        except EcographError as exc:
            print(f"  {target:5s} -> not built: {exc}")

    print("\n== run the saved x86 artifact")
    saved = result.save(out_dir)
    module = ecograph.load(saved / "artifact")
    out = module(**feeds)
    out = out[0] if isinstance(out, tuple) else out
    ref = reference_block(feeds["x"], feeds["mask"])
    rel = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
    print(
        f"  output {out.dtype}{list(out.shape)}; max error vs float64 numpy reference "
        f"{rel:.2e} (relative to max |y|; int8 quantization)"
    )

    print("\n== green report")
    print(result.report.table())
    print(f"\nHTML report: {(saved / 'report.html').resolve()}")
    ok = result.report.accuracy["cosine"] >= 0.99 and rel < 0.05
    print("demo: OK" if ok else "demo: accuracy below expectations")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
