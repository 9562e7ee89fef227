"""The pass registry: passes by name for pipeline specs, the built-in pass modules and
third-party plugins found through the `ecograph.passes` entry-point group.

`BUILTIN_PASS_MODULES` is the one list of modules whose import registers ecograph's own
passes. They are imported by name (importlib), lazily, the first time the registry is read:
the quantization passes import this module to register themselves, so a static import of
them here would be an import cycle.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import re
from typing import Any, TypeVar

from ecograph.errors import PassError
from ecograph.passes.core import Pass

log = logging.getLogger("ecograph.passes")

ENTRY_POINT_GROUP = "ecograph.passes"

# Importing each of these registers its passes (`@register_pass` at class definition).
BUILTIN_PASS_MODULES: tuple[str, ...] = (
    "ecograph.passes.activations",
    "ecograph.passes.attention",
    "ecograph.passes.cleanup",
    "ecograph.passes.elementwise",
    "ecograph.passes.linear",
    "ecograph.passes.noops",
    "ecograph.passes.norms",
    "ecograph.passes.qlinear",
    "ecograph.passes.weight_only",
    "ecograph.prune.passes",
    "ecograph.quant.integer",
    "ecograph.quant.quantize",
)

P = TypeVar("P", bound=Pass)

_PASSES: dict[str, type[Pass]] = {}
_ENTRY_POINTS_LOADED = False


def register_pass(cls: type[P]) -> type[P]:
    """Class decorator: make a pass available by its `name` in pipeline specs."""
    name = getattr(cls, "name", "")
    if not name or not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name):
        raise PassError(f"pass {cls.__name__} needs a kebab-case `name`, got {name!r}")
    if not (cls.__doc__ or "").strip():
        raise PassError(f"pass {name} needs a docstring that opens with its rewrite")
    existing = _PASSES.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise PassError(f"pass name {name!r} is taken by {existing.__module__}.{existing.__name__}")
    _PASSES[name] = cls
    return cls


def unregister_pass(name: str) -> None:
    """Forget the pass called `name` (tests and tutorials that register throwaway passes)."""
    _PASSES.pop(name, None)


def load_passes() -> None:
    """Register the built-in passes and, once per process, the entry-point plugins.

    A plugin that fails to load is logged and skipped; it never shadows a built-in name."""
    global _ENTRY_POINTS_LOADED
    for module in BUILTIN_PASS_MODULES:
        importlib.import_module(module)
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            log.warning("could not load pass plugin %s (%s): %s", ep.name, ep.value, exc)
            continue
        if isinstance(obj, type) and issubclass(obj, Pass) and obj.name not in _PASSES:
            register_pass(obj)


def registered_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name, built-in and from `ecograph.passes` entry points."""
    load_passes()
    return dict(sorted(_PASSES.items()))


def get_pass(name: str, **options: Any) -> Pass:
    """An instance of the pass called `name`, with `options` set as its fields."""
    load_passes()
    cls = _PASSES.get(name)
    if cls is None:
        raise PassError(f"unknown pass {name!r}; known: {', '.join(sorted(_PASSES))}")
    try:
        return cls(**options)
    except TypeError as exc:
        fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        raise PassError(
            f"bad options {options} for pass {name}: {exc}; options: {fields}"
        ) from None
