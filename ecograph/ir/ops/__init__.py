"""The built-in op library. Importing this package registers every op.

One module per family; each op is registered with `@register_op` on its reference kernel.
"""

from __future__ import annotations

from ecograph.ir.ops import elementwise, nn, quant, reduce, tensor  # noqa: F401
