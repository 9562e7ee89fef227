"""ecograph: a compiler-style graph optimizer for green neural-network and LLM inference.

The public API is re-exported here lazily, so `import ecograph` stays light and optional
dependencies (torch, onnx, tvm) load only when their entry point is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from ecograph import ir
from ecograph.errors import AccuracyError, EcographError

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "from_torch": "ecograph.frontend.torch",
    "from_onnx": "ecograph.frontend.onnx",
    "to_onnx": "ecograph.frontend.onnx",
    "compile": "ecograph.backends.tvm",
    "load": "ecograph.backends.tvm",
    "optimize": "ecograph.api",
    "compress": "ecograph.prune.compress",
    "to_torch": "ecograph.train.module",
    "compile_lm": "ecograph.lm",
    "load_lm": "ecograph.lm",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ecograph' has no attribute {name!r}")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise AttributeError(f"ecograph.{name} is not implemented yet ({module})") from None
        raise
    return getattr(mod, name)


__all__ = ["AccuracyError", "EcographError", "__version__", "ir", *_LAZY]
