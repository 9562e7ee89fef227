"""Which rows of a calibration activation are real tokens, not padding.

A batch of sentences padded to one length carries a token mask (BERT's attention_mask:
nonzero = a real token). Padding positions still compute hidden states, and in a batch of
short sentences padded to a long length they are most of the rows: importance scores,
block influence and the least-squares refit would be fit to them. These helpers let each
count only the real tokens, as `ecograph.train.distill` does for its loss.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ecograph.errors import UsageError
from ecograph.ir.graph import Graph

AUTO_MASK = "attention_mask"


def mask_input(graph: Graph, mask: str | None, who: str) -> str | None:
    """The name of the graph input holding the token mask: `mask` itself (checked: an integer
    or bool input), None for no mask, or for "auto" an input named attention_mask if the graph
    has one."""
    inputs = {v.name: v for v in graph.inputs}
    if mask == "auto":
        value = inputs.get(AUTO_MASK)
        return AUTO_MASK if value is not None and not value.dtype.is_float else None
    if mask is not None and (mask not in inputs or inputs[mask].dtype.is_float):
        raise UsageError(
            f"{who}: mask={mask!r} is not an integer or bool input of the graph (its inputs: "
            f"{sorted(inputs)}); name the token-mask input, or pass mask=None"
        )
    return mask


def token_mask(feeds: Mapping[str, np.ndarray], mask: str | None) -> np.ndarray | None:
    """The batch's token mask as bools (True = a real token), or None without a mask."""
    return None if mask is None else np.asarray(feeds[mask]) != 0


def real_rows(shape: tuple[int, ...], keep: np.ndarray | None) -> np.ndarray | None:
    """For an activation of `shape` with its features on the last axis, read as rows
    (`reshape(-1, shape[-1])`): a bool per row, True for a real token. None (every row
    counts) without a mask or when the rows are not the mask's tokens: the leading axes must
    be the mask's shape ([batch, seq, features]) or that shape flattened ([batch * seq,
    features], row-major, as torch.export leaves a BERT's linear layers)."""
    if keep is None or len(shape) < 2:
        return None
    lead = tuple(shape[:-1])
    if lead == keep.shape or (len(lead) == 1 and lead[0] == keep.size and keep.ndim > 1):
        return keep.reshape(-1)
    return None


def token_rows(x: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """`x` as rows over its last axis: the real tokens only when `keep` (a token mask) says
    which rows they are (see `real_rows`), else every row."""
    rows = x.reshape(-1, x.shape[-1])
    real = real_rows(x.shape, keep)
    return rows if real is None else rows[real]
