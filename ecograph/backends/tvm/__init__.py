"""TVM backend: lower the IR to Relax, compile for x86 / ARM / CUDA, load and run artifacts.

`compile` needs TVM's compiler; `load` needs only its runtime (`TVM_USE_RUNTIME_LIB=1`
works), so this package imports the compiler side only when `compile` is called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ecograph.backends.tvm.runtime import CompiledModel, load
from ecograph.ir.graph import Graph


def compile(
    graph: Graph,
    target: str | dict[str, Any] = "x86",
    out_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Path:
    """Compile `graph` for `target` into an artifact folder; see `build.compile`."""
    from ecograph.backends.tvm import build

    return build.compile(graph, target, out_dir, **options)


__all__ = ["CompiledModel", "compile", "load"]
