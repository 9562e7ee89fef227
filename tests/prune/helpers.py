"""Shared checks for the pruning tests: zero a group's units, prune them, compare."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ecograph.ir import Graph, interpret, verify
from ecograph.prune import Group, shrink


def zero_units(graph: Graph, group: Group, units: Sequence[int]) -> None:
    """Set every constant slice the given units own to 0 (a constant shared with another use
    is copied first, so only this group's uses see zeros)."""
    for m in group.members:
        if m.node is None or m.input_index is None:
            continue
        current = m.node.inputs[m.input_index]
        assert current is not None
        # A C-ordered copy: folded transposes leave Fortran-ordered weights, and BLAS sums a
        # transposed operand in another order than a C-ordered one (pruned weights are
        # C-ordered), which would make the comparison about memory layout, not pruning.
        arr = np.array(current.const_value, order="C")
        np.moveaxis(arr, m.axis, 0)[m.positions(units)] = 0  # a view: writes into arr
        graph.set_node_input(m.node, m.input_index, graph.add_constant(arr, f"{current.name}_z"))


def _uses(group: Group) -> list[tuple[str, int | None, int, int]]:
    return sorted(
        (m.node.name, m.input_index, m.axis, m.start) for m in group.weights if m.node is not None
    )


def check_zero_units_exact(
    graph: Graph, group_name: str, units: Sequence[int], feeds: Mapping[str, np.ndarray]
) -> Graph:
    """Zero `units` of the named group, then prune them: the outputs must not change, up to
    float32 rounding (see `assert_same_up_to_rounding`)."""
    from ecograph.prune import groups

    (group,) = [g for g in groups(graph) if g.name == group_name]
    zero_units(graph, group, units)
    verify(graph)
    expected = interpret(graph, feeds)
    # Zeroing swapped constants, so regroup and find the group by its weight uses.
    key = _uses(group)
    (group,) = [g for g in groups(graph) if _uses(g) == key]
    shrink(graph, [(group, [u for u in range(group.size) if u not in set(units)])])
    verify(graph)
    actual = interpret(graph, feeds)
    for key, value in expected.items():
        assert_same_up_to_rounding(actual[key], value, key)
    return graph


def assert_same_up_to_rounding(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal up to the rounding of a float32 sum taken in another order. The interpreter's
    MatMul is BLAS, and OpenBLAS splits a contraction into blocks by its length on some CPUs
    (AVX2 hosts: the last bit of ~1 output in 7 differs once zeroed rows are removed; AVX-512
    hosts gave identical bits). A wrong unit removed or a row misplaced is far outside this."""
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * scale, err_msg=what)
