"""More lowerings, one module per op family; importing `lowering` imports every module here.

Each module registers its functions with `@lowers` from `ecograph.backends.tvm.lowering`, like
the lowerings in that module itself. A new family needs only a new file.
"""

from __future__ import annotations

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
