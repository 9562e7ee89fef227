"""Element types of tensors in the IR, with their numpy and ONNX counterparts.

int4, uint4 and bfloat16 have no native numpy type; they use ml_dtypes, which numpy, ONNX
(`onnx.numpy_helper`) and TVM all understand.
"""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np


class DType(enum.StrEnum):
    """A tensor element type. A `str` enum, so `DType.FLOAT32 == "float32"`."""

    BOOL = "bool"
    INT4 = "int4"
    UINT4 = "uint4"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"DType.{self.name}"

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype that holds values of this type (object for strings)."""
        return _TO_NUMPY[self]

    @property
    def onnx(self) -> int:
        """The `onnx.TensorProto` data type number."""
        return _TO_ONNX[self]

    @property
    def bitwidth(self) -> int:
        """Bits per element (strings report 0)."""
        return _BITS[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64)

    @property
    def is_integer(self) -> bool:
        return not self.is_float and self not in (DType.BOOL, DType.STRING)

    @property
    def is_signed(self) -> bool:
        return self.is_float or self in (
            DType.INT4,
            DType.INT8,
            DType.INT16,
            DType.INT32,
            DType.INT64,
        )

    @classmethod
    def from_numpy(cls, dtype: np.dtype | type) -> DType:
        """The DType of a numpy dtype; raises ValueError naming the dtype if there is none."""
        dt = np.dtype(dtype)
        if dt.kind in ("U", "S", "O"):
            return DType.STRING
        for member, np_dtype in _TO_NUMPY.items():
            if member is not DType.STRING and np_dtype == dt:
                return member
        raise ValueError(f"numpy dtype {dt} has no ecograph DType")

    @classmethod
    def from_onnx(cls, elem_type: int) -> DType:
        """The DType of an `onnx.TensorProto` data type number."""
        for member, number in _TO_ONNX.items():
            if number == elem_type:
                return member
        raise ValueError(
            f"ONNX element type {elem_type} has no ecograph DType "
            "(float8, float4, complex and int2 types are not modelled)"
        )

    @classmethod
    def parse(cls, value: DType | str | np.dtype | type) -> DType:
        """Accept a DType, its name ("float32") or a numpy dtype."""
        if isinstance(value, DType):
            return value
        if isinstance(value, str):
            try:
                return DType(value)
            except ValueError:
                names = ", ".join(m.value for m in DType)
                raise ValueError(f"unknown dtype {value!r}; expected one of {names}") from None
        return cls.from_numpy(value)


_TO_NUMPY: dict[DType, np.dtype] = {
    DType.BOOL: np.dtype(np.bool_),
    DType.INT4: np.dtype(ml_dtypes.int4),
    DType.UINT4: np.dtype(ml_dtypes.uint4),
    DType.INT8: np.dtype(np.int8),
    DType.UINT8: np.dtype(np.uint8),
    DType.INT16: np.dtype(np.int16),
    DType.UINT16: np.dtype(np.uint16),
    DType.INT32: np.dtype(np.int32),
    DType.UINT32: np.dtype(np.uint32),
    DType.INT64: np.dtype(np.int64),
    DType.UINT64: np.dtype(np.uint64),
    DType.FLOAT16: np.dtype(np.float16),
    DType.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    DType.FLOAT32: np.dtype(np.float32),
    DType.FLOAT64: np.dtype(np.float64),
    DType.STRING: np.dtype(object),
}

# onnx.TensorProto.DataType numbers (stable across onnx releases).
_TO_ONNX: dict[DType, int] = {
    DType.FLOAT32: 1,
    DType.UINT8: 2,
    DType.INT8: 3,
    DType.UINT16: 4,
    DType.INT16: 5,
    DType.INT32: 6,
    DType.INT64: 7,
    DType.STRING: 8,
    DType.BOOL: 9,
    DType.FLOAT16: 10,
    DType.FLOAT64: 11,
    DType.UINT32: 12,
    DType.UINT64: 13,
    DType.BFLOAT16: 16,
    DType.UINT4: 21,
    DType.INT4: 22,
}

_BITS: dict[DType, int] = {
    DType.BOOL: 8,
    DType.INT4: 4,
    DType.UINT4: 4,
    DType.INT8: 8,
    DType.UINT8: 8,
    DType.INT16: 16,
    DType.UINT16: 16,
    DType.INT32: 32,
    DType.UINT32: 32,
    DType.INT64: 64,
    DType.UINT64: 64,
    DType.FLOAT16: 16,
    DType.BFLOAT16: 16,
    DType.FLOAT32: 32,
    DType.FLOAT64: 64,
    DType.STRING: 0,
}

FLOAT_TYPES = frozenset(d for d in DType if d.is_float)
INTEGER_TYPES = frozenset(d for d in DType if d.is_integer)
NUMERIC_TYPES = FLOAT_TYPES | INTEGER_TYPES
ALL_TYPES = frozenset(DType)
