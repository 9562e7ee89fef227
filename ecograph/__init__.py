"""ecograph: a compiler-style graph optimizer for green neural-network and LLM inference."""

from __future__ import annotations

__version__ = "0.1.0"

from ecograph import ir  # noqa: E402
from ecograph.errors import EcographError  # noqa: E402

__all__ = ["EcographError", "__version__", "ir"]
