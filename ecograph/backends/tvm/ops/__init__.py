"""The TVM lowerings, one module per op family; importing this package registers them all.

Each module registers its functions with `@lowers` from `ecograph.backends.tvm.context` (the
lowering table and the `LowerContext` they receive). A new family needs only a new file; a new
op in an existing family is one decorated function in that family's module.
"""

from __future__ import annotations

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
