"""Physically shrink a graph: slice the constants of pruned groups, rewrite the shapes that
follow (Reshape / Expand targets, Split sizes, Attention head counts, depthwise Conv groups)
and re-infer types; drop residual branches. No masks: the result has smaller tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ecograph.errors import EcographError
from ecograph.ir.graph import Graph, Node, Value
from ecograph.passes.elementwise import METADATA_KEY as ELEMENTWISE_KEY
from ecograph.passes.utils import remove_dead, replace_value
from ecograph.prune.groups import Group, Member, PruningError, Ref, Slot, ancestors, shape_entry

Plan = Sequence[tuple[Group, Sequence[int]]]


def _masks(plan: Plan) -> dict[Slot, np.ndarray]:
    """Per slot, which elements stay (True)."""
    masks: dict[Slot, np.ndarray] = {}
    for group, kept in plan:
        if group.kind == "layer":
            raise PruningError(f"{group.name}: drop layer groups with drop_layers()")
        removed = sorted(set(range(group.size)) - {int(u) for u in kept})
        if not removed:
            continue
        if group.frozen:
            raise PruningError(f"cannot shrink {group.name}: {group.frozen}")
        if len(removed) == group.size:
            raise PruningError(f"cannot remove all {group.size} units of {group.name}")
        for m in group.members:
            ref: Ref = (m.node, m.input_index) if m.node is not None else m.value  # type: ignore[assignment]
            if _is_stale(m):
                raise PruningError(
                    f"{group.name} no longer matches the graph at {m}; call groups() again "
                    "after editing the graph"
                )
            extent = m.value.shape[m.axis]
            assert isinstance(extent, int)
            mask = masks.setdefault((ref, m.axis), np.ones(extent, bool))
            mask[m.positions(removed)] = False
    return masks


def _is_stale(m: Member) -> bool:
    """The member describes a graph that has changed since groups() ran."""
    if m.node is not None:
        return m.node.is_removed or m.node.inputs[m.input_index or 0] is not m.value
    extent = m.value.shape[m.axis]
    return m.value.graph is None or not isinstance(extent, int) or m.stop > extent


def shrink(graph: Graph, plan: Plan) -> int:
    """Remove the units of each group not listed as kept. Returns the units removed.

    Every constant use in a group is sliced (a new constant per use, so shared arrays stay
    intact), shape-carrying inputs and attributes downstream are rewritten, and each node's
    output types are re-inferred in order."""
    masks = _masks(plan)
    if not masks:
        return 0
    by_const: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # id(node) -> [(input, axis, mask)]
    new_ext: dict[tuple[int, int], int] = {}
    old_ext: dict[tuple[int, int], int] = {}
    for (ref, axis), mask in masks.items():
        if isinstance(ref, Value):
            new_ext[(id(ref), axis)] = int(mask.sum())
            old_ext[(id(ref), axis)] = len(mask)
        else:
            by_const.setdefault(id(ref[0]), []).append((ref[1], axis, mask))
    old_consts: list[Value] = []
    replaced: list[Node] = []  # keeps replaced nodes alive: extents are keyed by id(value)
    for node in graph.nodes:
        try:
            node = _shrink_node(graph, node, by_const, new_ext, old_ext, old_consts, replaced)
        except (EcographError, ValueError) as exc:
            raise PruningError(
                f"shrinking stopped at node {node.name} ({node.op_type}): {exc}; the graph is "
                "partly rewritten (prune a graph.copy() to keep the original)"
            ) from exc
    for old in old_consts:
        if not old.uses and not old.is_graph_output and old.name in graph.constants:
            graph.remove_constant(old)
    removed = 0
    for group, kept in plan:
        removed += group.size - len(set(kept))
    return removed


def _shrink_node(
    graph: Graph,
    node: Node,
    by_const: dict[int, list[tuple[int, int, np.ndarray]]],
    new_ext: dict[tuple[int, int], int],
    old_ext: dict[tuple[int, int], int],
    old_consts: list[Value],
    replaced: list[Node],
) -> Node:
    """Slice `node`'s pruned constant inputs, rewrite its shape-carrying inputs / attributes
    and re-infer its output types. Returns the node (a new one if it had to be recreated)."""
    cuts = by_const.get(id(node), [])
    for i in sorted({c[0] for c in cuts}):
        old = node.inputs[i]
        assert old is not None and old.const_value is not None
        arr = np.asarray(old.const_value)
        for _, axis, mask in (c for c in cuts if c[0] == i):
            arr = np.compress(mask, arr, axis=axis)
        name = old.name.removesuffix("_pruned") + "_pruned"
        graph.set_node_input(node, i, graph.add_constant(arr, name))
        old_consts.append(old)
    new = _rewrite_shapes(graph, node, new_ext, old_ext)
    if new is not node:
        replaced.append(node)
        node = new
    for value, t in zip(node.outputs, graph.infer_types(node), strict=True):
        value.type = t
    return node


def _ext(new_ext: dict[tuple[int, int], int], value: Value, axis: int) -> int | str:
    return new_ext.get((id(value), axis), value.shape[axis])


def _rewrite_shapes(
    graph: Graph,
    node: Node,
    new_ext: dict[tuple[int, int], int],
    old_ext: dict[tuple[int, int], int],
) -> Node:
    """Rewrite what fixes an output extent of `node` when a pruned axis passes through it.
    The types of `node`'s inputs are already re-inferred; `old_ext` has their old extents."""
    op = node.op_type
    y = node.outputs[0] if node.outputs else None
    if y is None:
        return node
    changed_out = [ax for ax in range(y.type.rank) if (id(y), ax) in new_ext]
    if op in ("Reshape", "Expand") and changed_out:
        _rewrite_shape_entries(graph, node, {ax: new_ext[(id(y), ax)] for ax in changed_out})
        return node
    if op == "Split":
        x = node.inputs[0]
        assert x is not None
        axis = int(node.attr("axis", 0)) % x.type.rank
        if (id(x), axis) not in new_ext:
            return node
        sizes = np.array([_ext(new_ext, o, axis) for o in node.outputs], np.int64)
        attrs = {k: v for k, v in node.attrs.items() if k != "num_outputs"}
        sizes_v = graph.add_constant(sizes, f"{node.name}_sizes")
        return _recreate(graph, node, [x, sizes_v], attrs, (new_ext, old_ext))
    if op == "Attention" and node.attr("q_num_heads") is not None:
        q, k = node.inputs[0], node.inputs[1]
        assert q is not None and k is not None
        if (id(q), 2) not in new_ext and (id(k), 2) not in new_ext:
            return node
        hq, hkv = int(node.attr("q_num_heads")), int(node.attr("kv_num_heads"))
        attrs: dict[str, Any] = dict(node.attrs)
        for key, heads, v in (("q_num_heads", hq, q), ("kv_num_heads", hkv, k)):
            if (id(v), 2) in new_ext:
                attrs[key] = heads * new_ext[(id(v), 2)] // old_ext[(id(v), 2)]
        return _recreate(graph, node, list(node.inputs), attrs, (new_ext, old_ext))
    if op == "Conv" and int(node.attr("group") or 1) > 1:
        x = node.inputs[0]
        assert x is not None
        if (id(x), 1) not in new_ext:
            return node
        attrs = {**node.attrs, "group": new_ext[(id(x), 1)]}
        return _recreate(graph, node, list(node.inputs), attrs, (new_ext, old_ext))
    return node


def _rewrite_shape_entries(graph: Graph, node: Node, new_dims: dict[int, int]) -> None:
    """Write the new output extents into a Reshape / Expand shape: its constant, or the
    constant pieces of the Concat that computes it (a Concat shared with other nodes is
    copied first, so only this node's shape changes)."""
    target = node.inputs[1]
    assert target is not None
    concat = target.producer
    if concat is not None and len(target.uses) > 1:
        copy = graph.add_node("Concat", list(concat.inputs), dict(concat.attrs), before=node)
        graph.set_node_input(node, 1, copy.output)
    keep = (0, -1) if node.op_type == "Reshape" else (1,)
    for ax, dim in sorted(new_dims.items()):
        where = shape_entry(node, ax)
        if where == "none":
            continue
        if where is None:
            raise PruningError(
                f"{node.op_type} {node.name}: the shape entry of axis {ax} is computed"
            )
        owner, k, offset = where
        old = owner.inputs[k]
        assert old is not None and old.const_value is not None
        arr = np.array(old.const_value, np.int64).reshape(-1)
        if int(arr[offset]) in keep:
            continue
        arr[offset] = dim
        graph.set_node_input(owner, k, graph.add_constant(arr, f"{node.name}_shape"))
        if not old.uses and old.name in graph.constants:
            graph.remove_constant(old)


def _recreate(
    graph: Graph,
    node: Node,
    inputs: list[Value | None],
    attrs: dict[str, Any],
    exts: Sequence[dict[tuple[int, int], int]],
) -> Node:
    """Replace `node` by a node with new inputs / attributes, keeping its name and its outputs'
    names (graph outputs included); the extents recorded for its outputs move to the new ones."""
    name, out_names = node.name, [o.name for o in node.outputs]
    new = graph.add_node(
        node.op_type,
        inputs,
        attrs,
        domain=node.domain,
        name=f"{name}_pruned",
        num_outputs=len(node.outputs),
        before=node,
    )
    for old_o, new_o in zip(node.outputs, new.outputs, strict=True):
        graph.replace_all_uses_with(old_o, new_o)  # graph outputs too
        for ext in exts:
            for ax in range(old_o.type.rank):
                if (id(old_o), ax) in ext:
                    ext[(id(new_o), ax)] = ext.pop((id(old_o), ax))
    old_inputs = [v for v in node.inputs if v is not None and v.const_value is not None]
    graph.remove_node(node)
    for v in old_inputs:
        if not v.uses and v.name in graph.constants:
            graph.remove_constant(v)
    graph.rename_node(new, name)
    for o, n in zip(new.outputs, out_names, strict=True):
        graph.rename_value(o, n)
    return new


def drop_layers(graph: Graph, layers: Sequence[Group]) -> int:
    """Remove residual branches: Add(skip, f(skip)) -> skip, or Norm(skip + f(skip)) -> skip
    for a group whose `norm` is set (see `layer_groups`). Returns how many were dropped."""
    dropped = 0
    for group in layers:
        output = group.output
        if group.kind != "layer" or group.add is None or group.skip is None or output is None:
            raise PruningError(f"{group.name} is not a layer group")
        if group.frozen:
            raise PruningError(f"cannot drop {group.name}: {group.frozen}")
        add = group.add
        for node in (add, group.norm):
            if node is not None and node.is_removed:
                raise PruningError(
                    f"{group.name}: its {node.op_type} {node.name} is gone (regroup after edits)"
                )
        tail = [add] if group.norm is None else [add, group.norm]
        cone = {id(n) for n in group.nodes}
        upstream: set[int] = set()
        for n in group.nodes:
            for v in n.inputs:
                if v is not None and v.producer is not None and id(v.producer) not in cone:
                    upstream |= ancestors(v)
        feeding = [n for n in graph.nodes if id(n) in upstream]
        consts = [v for n in [*group.nodes, *tail] for v in n.inputs if v is not None]
        if not replace_value(graph, output, group.skip):
            graph.replace_all_uses_with(output, group.skip)
        for node in [*reversed(tail), *reversed(group.nodes)]:
            if not node.is_removed:
                graph.remove_node(node)
        remove_dead(graph, [n for n in feeding if n is not None and not n.is_removed])
        for v in consts:
            if v.const_value is not None and not v.uses and v.name in graph.constants:
                graph.remove_constant(v)
        dropped += 1
    _forget_removed_nodes(graph)
    return dropped


def _forget_removed_nodes(graph: Graph) -> None:
    """Drop the names of removed nodes from mark-elementwise-chains' metadata."""
    chains = graph.metadata.get(ELEMENTWISE_KEY)
    if not isinstance(chains, list):
        return
    alive = {n.name for n in graph.nodes}
    kept = [[n for n in chain if n in alive] for chain in chains]
    graph.metadata[ELEMENTWISE_KEY] = [chain for chain in kept if len(chain) > 1]
