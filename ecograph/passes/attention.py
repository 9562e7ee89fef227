"""fuse-attention: softmax(Q·Kᵀ·scale + mask)·V -> one ONNX-23 Attention op.

Matches the decomposition exporters emit on 4-D head tensors [batch, heads, seq, head_dim]:
the Kᵀ Transpose (any perm whose last two axes are swapped relative to K's layout), a scale
by Mul / Div on the scores or a Mul on Q, an additive mask (padding or causal, any shape that
broadcasts to the scores without growing them), and GQA's repeat of K/V heads
(Unsqueeze -> Expand -> Reshape), which Attention does natively. ONNX-23 Attention is a
standard op, so export needs no decomposition; `ecograph.ir.ops.fused.attention` is its
reference kernel.

torch.onnx's decomposition of scaled_dot_product_attention (the dynamo exporter) differs in
two ways, both matched: it scales Q and Kᵀ by sqrt(scale) each, and it transposes K with
heads merged into the batch, Reshape(Transpose(Reshape(K, [B*H, S, D]), [0, 2, 1]),
[B, H, D, S]) (K being GQA's expanded [B, H/n, n, S, D] in a GQA model).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ecograph.ir.dtypes import DType
from ecograph.ir.graph import Graph, Value
from ecograph.ir.ops.cache_attention import canonical_dims
from ecograph.passes.core import Pass, PassResult
from ecograph.passes.pattern import Const, Match, Op, Pat, Pattern, RewritePass, Rule, Var
from ecograph.passes.registry import register_pass
from ecograph.passes.utils import const_array, remove_dead, scalar_of


def _last_axis_softmax(node) -> bool | str:
    x = node.input(0)
    axis = int(node.attr("axis", -1))
    if axis not in (-1, x.type.rank - 1):
        return f"Softmax over axis {axis}, not the last"
    return True


def _kt_perm(node) -> bool | str:
    x = node.input(0)
    if x.type.rank != 4:
        return f"Kᵀ input has rank {x.type.rank}, not 4"
    return True


def _kt_merged(node) -> bool | str:
    """Reshape(Transpose(x3, [0, 2, 1]), [B, H, D, S]) with x3 = [B * H, S, D]: Kᵀ with heads
    merged into the batch (torch.onnx's SDPA decomposition)."""
    t = node.input(0).producer
    if t is None or t.op_type != "Transpose" or t.input(0) is None:
        return "Kᵀ is not Reshape(Transpose(...))"
    x3, out = t.input(0), node.outputs[0]
    if x3.type.rank != 3 or out.type.rank != 4 or list(t.attr("perm") or []) != [0, 2, 1]:
        return "not a 3-D Kᵀ [B*H, D, S] split into [B, H, D, S]"
    b, h, d, s = out.shape
    if not (isinstance(b, int) and isinstance(h, int) and x3.shape[0] == b * h):
        return f"Kᵀ {out.type} does not split %{x3.name} {x3.type} by static batch and heads"
    if [x3.shape[2], x3.shape[1]] != [d, s]:
        return f"Kᵀ {out.type} is not %{x3.name} {x3.type} transposed"
    return True


def _k_transposes(k: Var) -> list[tuple[str, Op]]:
    """Kᵀ as a 4-D Transpose, or merged into 3-D (`_kt_merged`)."""
    merged = Op(
        "Reshape",
        Op("Transpose", Op("Reshape", k, Const(), name="k_merge"), name="kt"),
        Const(),
        name="kt_split",
        where=_kt_merged,
    )
    return [("", Op("Transpose", k, name="kt", where=_kt_perm)), ("kt3-", merged)]


def attention_patterns() -> list[Pattern]:
    """Every combination of Q (and Kᵀ) scaling, Kᵀ form, score scaling, mask form and NaN
    guard."""
    q, k, v = Var("q"), Var("k"), Var("v")
    out: list[Pattern] = []
    for q_kind, (kt_kind, kt) in (
        (q_kind, kt) for q_kind in ("", "qs-", "qks-") for kt in _k_transposes(k)
    ):
        q_pat: Pat = Op("Mul", q, Const("q_scale"), name="q_mul") if q_kind else q
        if q_kind == "qks-":  # torch.onnx: sqrt(scale) on each side
            kt = Op("Mul", kt, Const("k_scale"), name="k_mul")
        qk = Op("MatMul", q_pat, kt, name="qk")
        scaled: list[tuple[str, Op]] = [
            ("mul", Op("Mul", qk, Const("scale"), name="scale_op")),
            ("div", Op("Div", qk, Const("scale"), name="scale_op")),
            ("none", qk),
        ]
        for scale_kind, s in scaled:
            masks: list[tuple[str, Op]] = [
                ("add", Op("Add", s, Var("mask"), name="mask_add")),
                # torch's SDPA decomposition: a boolean mask selects -inf.
                ("where", Op("Where", Var("bool_mask"), s, Const(value=-np.inf), name="mask_add")),
                ("none", s),
            ]
            for mask_kind, scores in masks:
                probs = Op("Softmax", scores, where=_last_axis_softmax, name="softmax")
                # ... and rows that are fully masked (NaN after Softmax) become zeros.
                guarded = Op("Where", Op("IsNaN", probs), Const(value=0.0), probs)
                for guard, p in (("guard", guarded), ("", probs)):
                    if mask_kind == "where" and not guard:
                        continue  # -inf rows would be NaN in the graph but 0 in Attention
                    tag = f"{q_kind}{kt_kind}{scale_kind}-{mask_kind}"
                    tag += f"-{guard}" if guard else ""
                    out.append(Pattern(f"attention/{tag}", Op("MatMul", p, v), _check))
    return out


def _check(m: Match) -> bool | str:
    q, v = m["q"], m["v"]
    if q.type.rank != 4 or v.type.rank != 4:
        return f"Q {q.type} / V {v.type} are not 4-D [batch, heads, seq, head_dim]"
    if not q.dtype.is_float or q.dtype != v.dtype:
        return f"Q and V must share a float dtype ({q.dtype}, {v.dtype})"
    for key in ("scale", "q_scale", "k_scale"):
        if key in m and scalar_of(m[key]) is None:
            return f"{key} %{m[key].name} is not a scalar constant"
    if "mask" in m or "bool_mask" in m:
        add = m["mask_add"]
        mask = m["mask"] if "mask" in m else m["bool_mask"]
        want = q.dtype if "mask" in m else DType.BOOL
        if mask.dtype != want:
            return f"mask %{mask.name} is {mask.dtype}, not {want}"
        scores = add.outputs[0].type
        other = (
            add.input(1)
            if add.op_type == "Where"
            else (add.input(0) if add.input(1) is mask else add.input(1))
        )
        if mask.type.rank > 4 or other is None or other.type != scores:
            return f"mask %{mask.name} {mask.type} broadcasts the scores to {scores}"
    return True


def _repeat_kv_source(value: Value) -> tuple[Value, int] | None:
    """(kv, n_rep) if `value` is Reshape(Expand(Unsqueeze(kv, [2]), [B,H,n,L,D]), [B,H*n,L,D])."""
    r = value.producer
    if r is None or r.op_type != "Reshape" or r.domain != "":
        return None
    r_in = r.input(0)
    e = r_in.producer if r_in is not None else None
    if e is None or e.op_type != "Expand" or e.domain != "":
        return None
    e_in = e.input(0)
    u = e_in.producer if e_in is not None else None
    if u is None or u.op_type != "Unsqueeze" or u.domain != "":
        return None
    axes = const_array(u.input(1))
    kv = u.input(0)
    if axes is None or axes.tolist() not in ([2], [-3]) or kv is None or kv.type.rank != 4:
        return None
    expanded = e.outputs[0].shape
    n_rep = expanded[2]
    if not isinstance(n_rep, int) or len(expanded) != 5:
        return None
    b, h, seq, d = kv.shape
    if [expanded[0], expanded[1], expanded[3], expanded[4]] != [b, h, seq, d]:
        return None
    out = value.shape
    # Batch, heads and head_dim pinned down, the element count fixes the sequence axis (which
    # symbolic inference may only know as an expression).
    if len(out) != 4 or out[0] != b or out[3] != d:
        return None
    if not (isinstance(h, int) and out[1] == h * n_rep):
        return None
    return kv, n_rep


@register_pass
@dataclass
class FuseAttention(RewritePass):
    """softmax(Q·Kᵀ·scale + mask)·V -> Attention(Q, K, V, mask) {scale}

    `gqa=True` also absorbs K/V head repetition (Unsqueeze -> Expand -> Reshape).
    """

    name: ClassVar[str] = "fuse-attention"
    tolerance: ClassVar[tuple[float, float] | None] = (1e-4, 1e-5)

    gqa: bool = True

    def rules(self) -> list[Rule]:
        return [Rule(p, self._rewrite) for p in attention_patterns()]

    def _rewrite(self, graph: Graph, m: Match) -> Value | str:
        root = m.root
        q, v = m["q"], m["v"]
        if "kt_split" in m:  # Kᵀ = [B, H, D, S] from K's heads merged (`_kt_merged`)
            b, h, d, s = m["kt_split"].outputs[0].shape
            k_src, k_perm, k_shape = m["k"], None, [b, h, s, d]
        else:
            kt = m["kt"]
            k_src = kt.input(0)
            assert k_src is not None
            rank = k_src.type.rank
            perm = list(kt.attr("perm") or list(range(rank))[::-1])
            k_perm = [*perm[:-2], perm[-1], perm[-2]]
            k_shape = [k_src.shape[i] for i in k_perm]
        if k_shape[3] != q.shape[3]:
            return f"K {k_shape} does not line up with Q {q.type}"
        scale = 1.0
        if "scale" in m:
            c = scalar_of(m["scale"])
            assert c is not None
            if m["scale_op"].op_type == "Div":
                if c == 0:
                    return "division by a zero scale"
                scale /= c
            else:
                scale *= c
        for key in ("q_scale", "k_scale"):
            if key in m:
                scale *= scalar_of(m[key]) or 0.0
        # Build K in [batch, heads, seq, head_dim] layout.
        if k_perm is None:
            shape = np.array([k_shape[0], k_shape[1], -1, k_shape[3]], np.int64)
            k = graph.add_node(
                "Reshape",
                [k_src, graph.add_constant(shape, f"{root.name}_k_shape")],
                name=f"{root.name}_k",
                before=root,
            ).output
        elif k_perm == [0, 1, 2, 3]:
            k = k_src
        else:
            k = graph.add_node(
                "Transpose", [k_src], {"perm": k_perm}, name=f"{root.name}_k", before=root
            ).output
        made = k.producer if k is not k_src else None
        if self.gqa:
            rk, rv = _repeat_kv_source(k), _repeat_kv_source(v)
            if rk is not None and rv is not None and rk[1] == rv[1]:
                k, v = rk[0], rv[0]
        inputs = [q, k, v]
        if "mask" in m or "bool_mask" in m:
            inputs.append(m["mask"] if "mask" in m else m["bool_mask"])
        node = graph.add_node(
            "Attention",
            inputs,
            {"scale": float(np.float32(scale)) if q.dtype.bitwidth <= 32 else scale},
            name=f"{root.name}_attention",
            before=root,
        )
        if node.output.type != root.outputs[0].type:
            graph.remove_node(node)
            if made is not None and not made.outputs[0].has_uses():
                remove_dead(graph, [made])
            return f"Attention would give {node.output.type}, the graph has {root.outputs[0].type}"
        return node.output


def _heads_in(prefix: str) -> Op:
    """Transpose(Reshape(x3, [B, S, H, D]), [0, 2, 1, 3]): x3's heads split off."""
    return Op(
        "Transpose",
        Op("Reshape", Var(prefix), Const(), name=f"{prefix}_reshape"),
        attrs={"perm": [0, 2, 1, 3]},
        name=f"{prefix}_transpose",
    )


def _split_heads_ok(m: Match, prefix: str) -> str | None:
    x3 = m[prefix]
    r = m[f"{prefix}_reshape"].outputs[0]
    if x3.type.rank != 3 or r.type.rank != 4:
        return f"%{x3.name} is not [batch, seq, hidden] split into [batch, seq, heads, dim]"
    b, s, hidden = x3.shape
    if r.shape[0] != b or r.shape[1] != s:
        return f"the head split of %{x3.name} changes batch or sequence ({r.type})"
    heads, dim = r.shape[2], r.shape[3]
    if not (isinstance(heads, int) and isinstance(dim, int) and hidden == heads * dim):
        return f"the head split of %{x3.name} needs static heads and head_dim"
    return None


def _absorb_ok(m: Match) -> bool | str:
    attn = m["attention"]
    if attn.attr("q_num_heads") is not None or attn.attr("is_causal") or len(attn.inputs) > 4:
        return "Attention is already 3-D, causal, or has a KV cache"
    for prefix in ("q", "k", "v"):
        why = _split_heads_ok(m, prefix)
        if why is not None:
            return why
    y4 = attn.outputs[0]
    out = m.root.outputs[0]
    q3 = m["q"]
    b, s = q3.shape[0], q3.shape[1]
    if out.type.rank != 3 or out.shape[0] != b or out.shape[1] != s:
        return f"the merged heads {out.type} are not [batch, seq, hidden]"
    heads, dim = y4.shape[1], y4.shape[3]
    if not (isinstance(heads, int) and isinstance(dim, int) and out.shape[2] == heads * dim):
        return f"the head merge gives {out.type}, not [batch, seq, heads * head_dim]"
    return True


@register_pass
@dataclass
class AbsorbAttentionHeads(RewritePass):
    """merge(Attention(heads(q), heads(k), heads(v))) -> Attention(q, k, v) {q_num_heads=H}

    heads(x) is Transpose(Reshape(x, [B, S, H, D]), [0, 2, 1, 3]) and merge(y) is
    Reshape(Transpose(y, [0, 2, 1, 3]), [B, S, H * D]). ONNX-23 Attention's 3-D
    form does the head split and merge itself, so six Transposes and four Reshapes go.
    """

    name: ClassVar[str] = "absorb-attention-heads"
    tolerance: ClassVar[tuple[float, float] | None] = (1e-6, 1e-7)

    def rules(self) -> list[Rule]:
        patterns = []
        for masked in (True, False):
            inputs: list[Pat] = [_heads_in("q"), _heads_in("k"), _heads_in("v")]
            if masked:
                inputs.append(Var("mask"))
            attention = Op("Attention", *inputs, name="attention")
            merged = Op(
                "Reshape",
                Op("Transpose", attention, attrs={"perm": [0, 2, 1, 3]}),
                Const(),
            )
            patterns.append(
                Pattern(f"absorb-heads/{'mask' if masked else 'nomask'}", merged, _absorb_ok)
            )
        return [Rule(p, self._rewrite) for p in patterns]

    def _rewrite(self, graph: Graph, m: Match) -> Value | str:
        attn = m["attention"]
        inputs = [m["q"], m["k"], m["v"]]
        if "mask" in m:
            inputs.append(m["mask"])
        attrs = {
            **attn.attrs,
            "q_num_heads": int(m["q_reshape"].outputs[0].shape[2]),
            "kv_num_heads": int(m["k_reshape"].outputs[0].shape[2]),
        }
        node = graph.add_node("Attention", inputs, attrs, name=f"{attn.name}_3d", before=m.root)
        if node.output.type != m.root.outputs[0].type:
            graph.remove_node(node)
            return f"3-D Attention gives {node.output.type}, the graph has {m.root.outputs[0].type}"
        return node.output


@register_pass
@dataclass
class ExpandAttentionMasks(Pass):
    """Attention(q, k, v, mask[..., 1, L]) -> Attention(q, k, v, Expand(mask, [..., S, L]))

    ONNX allows an attention mask that broadcasts over the query axis, but ONNX Runtime's
    Attention kernel insists that the mask's query axis equal the query length. Expanding it
    keeps exported models runnable there. S comes from Shape(q) (folded when static).
    """

    name: ClassVar[str] = "expand-attention-masks"

    def run(self, graph: Graph) -> PassResult:
        expanded = 0
        for node in graph.find_nodes("Attention", ""):
            q, mask = node.input(0), node.input(3)
            if q is None or mask is None:
                continue
            seq_axis = 1 if q.type.rank == 3 else 2
            seq = q.shape[seq_axis]
            if mask.type.rank >= 2 and mask.shape[-2] == seq:
                continue
            rank = max(mask.type.rank, 2)
            seq_dim = graph.add_node(
                "Shape", [q], {"start": seq_axis, "end": seq_axis + 1},
                name=f"{node.name}_q_len", before=node,
            ).output  # fmt: skip
            parts = [seq_dim, graph.add_constant(np.array([1], np.int64), f"{node.name}_one")]
            if rank > 2:
                lead = graph.add_constant(np.ones(rank - 2, np.int64), f"{node.name}_lead")
                parts.insert(0, lead)
            shape = graph.add_node(
                "Concat", parts, {"axis": 0}, name=f"{node.name}_mask_shape", before=node
            ).output
            full = graph.add_node(
                "Expand", [mask, shape], name=f"{node.name}_mask", before=node
            ).output
            graph.set_node_input(node, 3, full)
            expanded += 1
        return PassResult(expanded > 0, {"expanded": expanded} if expanded else {})


@register_pass
class CausalAttentionMasks(Pass):
    """Attention(q, k, v, mask) -> Attention(q, k, v; is_causal=1) where the mask provably is
    the causal one: a bool mask that is (an Expand of) LessOrEqual(r[key], r[query]) over one
    strictly increasing 1-D r (a Range with a positive constant step, plus constants),
    lined up with the scores' query and key dims. mask[i, j] = r[j] <= r[i] = j <= i, which
    is is_causal's (upper-left) mask, so the result is the same to the bit, and kernels
    need not read the mask (the CPU kernel then stops each row block at its last query, and
    computes no masked score). torch.export of a Hugging Face Llama builds its prefill mask
    so (compile_lm)."""

    name: ClassVar[str] = "causal-attention-masks"

    def run(self, graph: Graph) -> PassResult:
        made = 0
        for node in graph.find_nodes("Attention", ""):
            q, k, mask = node.input(0), node.input(1), node.input(3)
            if mask is None or len(node.inputs) > 4 or node.attr("is_causal"):
                continue
            if q is None or k is None or not _is_causal_mask(mask):
                continue
            seq = 2 if q.type.rank == 4 else 1  # 3-D: [batch, seq, heads x dim]
            if list(mask.shape[-2:]) != [q.shape[seq], k.shape[seq]]:
                continue  # a dim of 1 would broadcast: not lined up
            graph.set_node_input(node, 3, None)
            node.attrs["is_causal"] = 1
            made += 1
            if mask.producer is not None:
                remove_dead(graph, [mask.producer])
        return PassResult(made > 0, {"causal": made} if made else {})


def _is_causal_mask(mask: Value) -> bool:
    """Whether bool `mask` is (an Expand of) LessOrEqual(r[..., 1, L], r[..., S, 1]) for one
    strictly increasing 1-D r (`_increasing`), each side r with only 1-dims added."""
    node = mask.producer
    while node is not None and node.op_type == "Expand":
        source = node.input(0)
        node = source.producer if source is not None else None
    if node is None or node.op_type != "LessOrEqual" or mask.dtype != DType.BOOL:
        return False
    if list(node.outputs[0].shape[-2:]) != list(mask.shape[-2:]):
        return False  # an Expand broadcasts it along the queries or keys (a range of one)
    keys, queries = node.input(0), node.input(1)
    if keys is None or queries is None or keys.type.rank < 2 or queries.type.rank < 2:
        return False
    if any(d != 1 for d in keys.shape[:-1]) or any(d != 1 for d in queries.shape[:-2]):
        return False
    if queries.shape[-1] != 1:
        return False
    r_keys, r_queries = _unsqueezed_1d(keys), _unsqueezed_1d(queries)
    return r_keys is not None and r_keys is r_queries and _increasing(r_keys)


def _unsqueezed_1d(value: Value) -> Value | None:
    """The 1-D value `value` is an Unsqueeze chain of, else None."""
    while value.type.rank > 1:
        node = value.producer
        source = node.input(0) if node is not None and node.op_type == "Unsqueeze" else None
        if source is None:
            return None
        value = source
    return value if value.type.rank == 1 else None


def _increasing(value: Value) -> bool:
    """Whether 1-D `value` is strictly increasing: Range(start, limit, step) with a constant
    step > 0, or such a value plus or minus a constant scalar."""
    node = value.producer
    if node is None:
        return False
    if node.op_type == "Range":
        step = scalar_of(node.input(2))
        return step is not None and step > 0
    if node.op_type in ("Add", "Sub") and len(node.inputs) == 2:
        a, b = node.input(0), node.input(1)
        if b is not None and scalar_of(b) is not None and b.type.rank == 0 and a is not None:
            return a.type.rank == 1 and _increasing(a)
        if (
            node.op_type == "Add"
            and a is not None
            and scalar_of(a) is not None
            and a.type.rank == 0
        ):
            return b is not None and b.type.rank == 1 and _increasing(b)
    return False


def _cache_past(prefix: str, seq_axis: int) -> Op:
    """Slot i of a KV cache as [batch, heads, past_len, dim]: Transpose(Gather(cache, i,
    axis=1), [1, 2, 0, 3]) for a sequence-first cache [past_len, slots, batch, heads, dim]
    (seq_axis 0), Gather(cache, i, axis=0) for a head-major one [slots, batch, heads,
    past_len, dim] (seq_axis 3)."""
    axis = 0 if seq_axis == 3 else 1
    gather = Op(
        "Gather", Var("cache"), Const(f"{prefix}_index"), attrs={"axis": axis},
        name=f"{prefix}_gather",
    )  # fmt: skip
    if seq_axis == 3:
        return gather
    return Op("Transpose", gather, attrs={"perm": [1, 2, 0, 3]}, name=f"{prefix}_past")


def _slot(m: Match, prefix: str, seq_axis: int) -> int | str:
    """The cache slot a Gather reads (a negative index counted from the end), or why not one."""
    index = const_array(m[f"{prefix}_index"])
    if index is None or index.ndim != 0 or index.dtype.kind not in "iu":
        return f"the {prefix} slot is not one integer index"
    i, slots = int(index), canonical_dims(m["cache"].shape, seq_axis)[0]
    if i < 0:
        if not isinstance(slots, int):
            return f"a negative {prefix} slot into a symbolic number of slots"
        i += slots
    return i


def _cache_attention_ok(seq_axis: int) -> Callable[[Match], bool | str]:
    def ok(m: Match) -> bool | str:
        attn, q = m.root, m["q"]
        if m["cache"].type.rank != 5 or q.type.rank != 4:
            return "not a 4-D Attention over a rank-5 KV cache"
        if len(attn.inputs) > 4:
            return "the Attention has its own past_key / past_value"
        for prefix in ("k", "v"):
            if m[f"{prefix}_concat"].attr("axis") not in (2, -2):
                return f"{prefix.upper()} is not concatenated along the sequence axis"
            why = _slot(m, prefix, seq_axis)
            if isinstance(why, str):
                return why
        return True

    return ok


@register_pass
@dataclass
class FuseCacheAttention(RewritePass):
    """Attention(q, Concat(past(i), k), Concat(past(j), v)) -> CacheAttention(q, cache, k, v)

    With the mask, if any; key_index i and value_index j become attributes, and past(i)
    reads a layer's keys or values out of a KV cache (what compile_lm's decode functions
    take): Transpose(Gather(cache, i, axis=1), [1, 2, 0, 3]) from a sequence-first cache
    [past_len, slots, batch, heads, head_dim] (seq_axis 0), Gather(cache, i, axis=0) from a
    head-major one [slots, batch, heads, past_len, head_dim] (seq_axis 3). Unfused, every
    layer and step copies its part of the cache (the gather and transpose, then the
    concatenation with the new position); the fused op reads it where it lies
    (ir/ops/cache_attention.py). The reference kernel computes the same concatenation, so
    the rewrite is exact.
    """

    name: ClassVar[str] = "fuse-cache-attention"
    tolerance: ClassVar[tuple[float, float] | None] = (0.0, 0.0)

    def rules(self) -> list[Rule]:
        rules = []
        for seq_axis in (0, 3):
            for masked in (True, False):
                inputs: list[Pat] = [
                    Var("q"),
                    Op("Concat", _cache_past("k", seq_axis), Var("k"), name="k_concat"),
                    Op("Concat", _cache_past("v", seq_axis), Var("v"), name="v_concat"),
                ]
                if masked:
                    inputs.append(Var("mask"))
                root = Op("Attention", *inputs, name="attention")
                layout = "head-major" if seq_axis == 3 else "sequence-first"
                name = f"cache-attention/{layout}/{'mask' if masked else 'nomask'}"
                pattern = Pattern(name, root, _cache_attention_ok(seq_axis))
                rules.append(Rule(pattern, functools.partial(self._rewrite, seq_axis=seq_axis)))
        return rules

    def _rewrite(self, graph: Graph, m: Match, *, seq_axis: int) -> Value | str:
        attn = m.root
        inputs = [m["q"], m["cache"], m["k"], m["v"]]
        if "mask" in m:
            inputs.append(m["mask"])
        attrs = {
            "key_index": _slot(m, "k", seq_axis),
            "value_index": _slot(m, "v", seq_axis),
            "is_causal": int(attn.attr("is_causal") or 0),
        }
        if seq_axis:
            attrs["seq_axis"] = seq_axis
        if attn.attr("scale") is not None:
            attrs["scale"] = attn.attr("scale")
        node = graph.add_node(
            "CacheAttention", inputs, attrs, domain="ecograph", name=f"{attn.name}_cache",
            before=attn,
        )  # fmt: skip
        if node.output.type != attn.outputs[0].type:
            graph.remove_node(node)
            return f"CacheAttention gives {node.output.type}, the graph has {attn.outputs[0].type}"
        return node.output
