"""TensorType: an element type and a shape whose dims are ints or symbols."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ecograph.ir import symbolic
from ecograph.ir.dtypes import DType
from ecograph.ir.symbolic import Dim


class TensorType:
    """An immutable (dtype, shape) pair. `TensorType("float32", ["batch", 16])`."""

    __slots__ = ("dtype", "shape")

    dtype: DType
    shape: tuple[Dim, ...]

    def __init__(self, dtype: DType | str | np.dtype, shape: Iterable[Dim] = ()) -> None:
        dims: list[Dim] = []
        for d in shape:
            if isinstance(d, np.integer):
                d = int(d)
            if isinstance(d, int) and not isinstance(d, bool) and d < 0:
                raise ValueError(f"negative dimension {d} in shape {list(shape)}")
            dims.append(symbolic.canonical(d))
        object.__setattr__(self, "dtype", DType.parse(dtype))
        object.__setattr__(self, "shape", tuple(dims))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("TensorType is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorType):
            return NotImplemented
        return self.dtype == other.dtype and self.shape == other.shape

    def __hash__(self) -> int:
        return hash((self.dtype, self.shape))

    def __repr__(self) -> str:
        return f"TensorType({str(self)!r})"

    def __str__(self) -> str:
        return f"{self.dtype.value}[{', '.join(str(d) for d in self.shape)}]"

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> Dim:
        """Number of elements, symbolic when the shape is."""
        return symbolic.product(self.shape)

    @property
    def symbols(self) -> set[str]:
        out: set[str] = set()
        for d in self.shape:
            out |= symbolic.symbols(d)
        return out

    def static_shape(self) -> tuple[int, ...]:
        """The shape as ints; ValueError if any dim is symbolic."""
        if not self.is_static:
            raise ValueError(f"shape of {self} is not static")
        return tuple(int(d) for d in self.shape)

    def with_shape(self, shape: Sequence[Dim]) -> TensorType:
        return TensorType(self.dtype, shape)

    def with_dtype(self, dtype: DType | str) -> TensorType:
        return TensorType(dtype, self.shape)

    def nbytes(self) -> int | None:
        """Bytes the tensor takes (int4 packs two per byte); None when the shape is symbolic."""
        if not self.is_static:
            return None
        numel = int(np.prod(self.static_shape(), dtype=np.int64))
        return (numel * self.dtype.bitwidth + 7) // 8

    @classmethod
    def of(cls, array: np.ndarray) -> TensorType:
        """The type of a numpy array."""
        return cls(DType.from_numpy(array.dtype), array.shape)

    @classmethod
    def parse(cls, text: str) -> TensorType:
        """Parse the `str()` form, e.g. "float32[batch, 16]"."""
        text = text.strip()
        if not text.endswith("]") or "[" not in text:
            raise ValueError(f"bad tensor type {text!r}; expected e.g. 'float32[batch, 16]'")
        name, _, rest = text.partition("[")
        body = rest[:-1].strip()
        dims: list[Dim] = []
        if body:
            for part in _split_dims(body):
                part = part.strip()
                dims.append(int(part) if part.lstrip("-").isdigit() else part)
        return cls(name.strip(), dims)


def _split_dims(body: str) -> list[str]:
    """Split on commas at parenthesis depth 0 ("(a+1)//2, b")."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return parts
