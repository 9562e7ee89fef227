"""Loading artifacts does not keep the loader's freed temporaries resident (glibc's heap)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

REPO = Path(__file__).resolve().parents[2]

# A fresh process with TVM's runtime library only; the first load pays one-time costs, then
# the resident growth of loading two more artifacts is printed with their lib.so sizes.
_PROBE = """
import os, sys
import numpy as np
import ecograph

def rss():
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:"))

first = ecograph.load(sys.argv[1])
first(np.zeros((1, 1024), np.float32))
before = rss()
models = [ecograph.load(p) for p in sys.argv[2:]]
size = sum(os.path.getsize(os.path.join(p, "lib.so")) for p in sys.argv[2:])
print(rss() - before, size)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_loading_keeps_about_two_copies_of_the_weights_not_three(tmp_path: Path) -> None:
    """Each load maps lib.so (its pages are read) and copies its constants once: about twice
    the file. Without `release_freed_memory` the loader's freed temporaries stayed resident
    from the second load on (measured 3.1x the files for two 6 MB artifacts, 2.0x with it)."""
    import ecograph
    from ecograph.ir import GraphBuilder

    rng = np.random.default_rng(0)
    b = GraphBuilder("mem")
    x = b.input("x", "float32", [1, 1024])
    w = rng.standard_normal((1024, 2048)).astype(np.float32)  # 8 MB of weights
    b.output(b.op("MatMul", x, b.constant(w, "w")))
    art = ecograph.compile(b.graph, "x86", tmp_path / "a0", progress=False)
    copies = [shutil.copytree(art, tmp_path / f"a{i}") for i in (1, 2, 3)]
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(copies[0]), *map(str, copies[1:])],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    grown, size = (int(v) for v in proc.stdout.split())
    assert size > 16_000_000
    assert grown < 2.5 * size, (grown, size, grown / size)
