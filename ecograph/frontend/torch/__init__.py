"""PyTorch frontend: capture a live `torch.nn.Module` into an ecograph IR `Graph`.

capture.py captures the module (torch.export, falling back to torch.fx) and holds `from_torch`;
converter.py walks the captured ATen graph and emits IR through `ATEN_TABLE`; the aten_*.py
modules register the converters of one op family each (imported here for that); types.py holds
the dtype / shape / tensor conversions they share. User guide: docs/torch.md.
"""

from __future__ import annotations

from ecograph.frontend.torch import (  # noqa: F401  (imported to register their converters)
    aten_elementwise,
    aten_indexing,
    aten_nn,
    aten_reduce,
    aten_tensor,
)
from ecograph.frontend.torch.capture import from_torch
from ecograph.frontend.torch.converter import (
    ATEN_TABLE,
    Converter,
    NotConvertedError,
    register_aten,
    supported_aten_ops,
)

__all__ = [
    "from_torch",
    "register_aten",
    "supported_aten_ops",
    "ATEN_TABLE",
    "Converter",
    "NotConvertedError",
]
