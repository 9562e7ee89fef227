"""The built-in op library. Importing this package registers every op.

One module per family; each op is registered with `@register_op` on its reference kernel.
Every module in this package is imported, so a new family needs only a new file.
"""

from __future__ import annotations

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
