"""What capture and the converters share: the captured graph (`Captured`) and the
conversions between torch's and ecograph's descriptions of tensors (dtypes, shapes with symbolic
sympy dims, CPU tensors as numpy views)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecograph.errors import TypeInferenceError, UnsupportedError
from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.symbolic import Dim
from ecograph.ir.types import TensorType


@dataclass
class Captured:
    """A captured ATen-level fx graph plus what the converter needs to name and bind it."""

    graph_module: Any  # torch.fx.GraphModule
    user_inputs: list[str]  # placeholder names of the user inputs, in order
    input_names: dict[str, str]  # placeholder name -> IR input name
    constants: dict[str, Any]  # placeholder or get_attr target -> torch.Tensor
    constant_names: dict[str, str]  # placeholder or get_attr target -> IR constant name
    output_names: list[str]  # one per flat output, in order
    symbol_names: dict[str, str] = field(default_factory=dict)  # torch symbol -> user dim name
    method: str = "export"


def get_attr(module: Any, target: str) -> Any:
    """The attribute a get_attr fx node names: `target` is a dotted path inside `module`."""
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------ dims and dtypes


def torch_dtype_to_ir(dtype: Any, where: str = "") -> DType:
    import torch

    table = {
        torch.float32: DType.FLOAT32,
        torch.float16: DType.FLOAT16,
        torch.bfloat16: DType.BFLOAT16,
        torch.float64: DType.FLOAT64,
        torch.int8: DType.INT8,
        torch.uint8: DType.UINT8,
        torch.int16: DType.INT16,
        torch.int32: DType.INT32,
        torch.int64: DType.INT64,
        torch.bool: DType.BOOL,
        torch.uint16: DType.UINT16,
        torch.uint32: DType.UINT32,
        torch.uint64: DType.UINT64,
    }
    if dtype not in table:
        raise UnsupportedError(f"{where}torch dtype {dtype} has no ecograph DType")
    return table[dtype]


def tensor_to_numpy(t: Any) -> np.ndarray:
    """A numpy view of a CPU tensor (no copy when torch allows it); bfloat16 via ml_dtypes."""
    import ml_dtypes
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def sympy_to_dim(expr: Any, names: Mapping[str, str]) -> Dim:
    """A torch/sympy shape expression as an IR dim (int or canonical string)."""
    return symbolic.canonical(_render_sympy(expr, names))


def _render_sympy(expr: Any, names: Mapping[str, str]) -> Dim:
    import sympy
    from torch.utils._sympy.functions import FloorDiv, Mod, PythonMod

    if isinstance(expr, (int, np.integer)):
        return int(expr)
    if expr.is_Integer:
        return int(expr)
    if expr.is_Symbol:
        return names.get(str(expr), str(expr))
    if isinstance(expr, sympy.Add):
        out: Dim = 0
        for arg in expr.args:
            out = symbolic.add(out, _render_sympy(arg, names))
        return out
    if isinstance(expr, sympy.Mul):
        out = 1
        for arg in expr.args:
            out = symbolic.mul(out, _render_sympy(arg, names))
        return out
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and int(expr.exp) > 0:
        base = _render_sympy(expr.base, names)
        out = 1
        for _ in range(int(expr.exp)):
            out = symbolic.mul(out, base)
        return out
    if isinstance(expr, FloorDiv):
        return symbolic.floordiv(
            _render_sympy(expr.args[0], names), _render_sympy(expr.args[1], names)
        )
    if isinstance(expr, (Mod, PythonMod)):
        return symbolic.mod(_render_sympy(expr.args[0], names), _render_sympy(expr.args[1], names))
    raise TypeInferenceError(f"shape expression {expr} cannot be written as an ecograph dim")


def torch_shape_to_dims(shape: Sequence[Any], names: Mapping[str, str]) -> list[Dim]:
    import torch

    dims: list[Dim] = []
    for size in shape:
        if isinstance(size, torch.SymInt):
            dims.append(sympy_to_dim(size.node.expr, names))
        else:
            dims.append(int(size))
    return dims


def meta_type(val: Any, names: Mapping[str, str], where: str = "") -> TensorType:
    """The IR type of a torch (fake) tensor from an fx node's meta["val"]."""
    return TensorType(torch_dtype_to_ir(val.dtype, where), torch_shape_to_dims(val.shape, names))
