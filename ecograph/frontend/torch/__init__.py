"""PyTorch frontend: capture a live `torch.nn.Module` into an ecograph IR `Graph`.

`from_torch` (capture.py) captures the module with torch.export or torch.fx; the converter
(converter.py) maps each ATen op to ONNX-semantics IR nodes through `ATEN_TABLE`.
User guide: docs/torch.md.
"""

from __future__ import annotations

from ecograph.frontend.torch.capture import from_torch, register_aten, supported_aten_ops
from ecograph.frontend.torch.converter import ATEN_TABLE, Converter, NotConvertedError

__all__ = [
    "from_torch",
    "register_aten",
    "supported_aten_ops",
    "ATEN_TABLE",
    "Converter",
    "NotConvertedError",
]
