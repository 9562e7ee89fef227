"""Compatibility names for code that imports the old single-module lowering.

The backend is now `driver.py` (lower_graph), `context.py` (the lowering table, the
per-node context, shared helpers) and `ops/<family>.py` (the lowerings). New code imports
from those modules.
"""

from __future__ import annotations

from ecograph.backends.tvm.driver import (
    LOWERINGS,
    UNLOWERABLE,
    Lowered,
    lower_graph,
    pack_int4,
    unlowered_registry_ops,
)

__all__ = [
    "LOWERINGS",
    "UNLOWERABLE",
    "Lowered",
    "lower_graph",
    "pack_int4",
    "unlowered_registry_ops",
]
