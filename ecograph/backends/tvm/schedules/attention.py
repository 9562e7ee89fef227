"""Attention on CPUs as one hand-scheduled kernel: no [q_len, kv_len] tensor, no repeated K/V.

Why a hand-written PrimFunc and not a TE compute plus a rule chosen by structure: the kernel's
speed comes from choices a structural rule would have to rediscover from a generic
matmul -> softmax -> matmul nest (which rows share a task, which axis the vectors run along,
where the scratch lives), and the lowering knows them already. So `_attention` in
ops/fused.py builds this function for the node and calls it with call_tir; it is marked
`tirx.is_scheduled` (the CPU rules leave it alone) and `ecograph.schedule = "attention"`.

One parallel task is (batch, KV head, block of query rows), where the rows of a KV head are
its group's (query, q head) pairs, row = query * group + head-in-group: grouped-query heads
that read the same K and V share a task, and a decode step (one query) still fills a vector
with the group's heads. Per task:
1. Q^T: the block's query rows, transposed into a [head_dim, rows] scratch.
2. Scores S[key, row] = Q.K * scale, masked, into a [kv_len, rows] scratch. Vectors run along
   the rows, so Q.K needs no horizontal sums and K is read as stored (one key element
   broadcast per FMA); a register tile of `key_tile` keys x the block's row vectors stays on
   the stack (under STACK_BYTES), i.e. in registers. Causal tasks stop at their last row's
   last visible key.
3. Softmax over keys, vectorized along rows: max-subtracted; a masked score (-inf) gives 0,
   and a fully masked row gives zeros (the reference's convention).
4. Y = P.V: `pv_rows` rows x `v_chunk` columns of accumulators, vectorized along V's head
   dim, read as stored; each row scaled by 1 / its sum and written once.
A decode step has too few rows per KV head to fill a vector (SmolLM2: 3 of 16 lanes), so
for a few static rows (`dot_product_lanes`) phase 2 takes dot products along the head dim
instead (per (key, row) a vector of partial sums, halved to one lane; K and Q read as
stored), the scores are laid out [rows, keys] and phase 3 runs along the keys. A decode step
also splits its keys into chunks where its tasks do not divide evenly over the pool's threads
(`key_chunks`, `_KeySplit`, flash-decoding): a batch-1 step has only as many tasks as KV heads
(SmolLM2: 3, which two threads share 2 + 1), so each task takes one chunk of at least
SPLIT_MIN_KEYS keys, leaves its unnormalized P.V with its rows' score max and exponential
sum, and a second parallel loop combines the chunks into Y. In the row-vector form a task
with a mask first finds the last key any of its rows sees (`visible_end`) and skips the rest.
With a KV cache (ecograph::CacheAttention, `CacheSlots`), the keys and values of phases 2 and
4 come in two runs, the cache's past positions read where they lie and then the new ones
from K and V; nothing is concatenated. Everything is computed in float32 (float16 inputs are
read as float32 and the result cast back). The scratch rows are `keys x rows` floats per
task: over 1 KB they are heap workspaces (TVM's per-thread pool), which is cheap next to the
task's work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm import tirx

from ecograph.backends.tvm.targets import TargetSpec

from .base import halve_lanes
from .matmul import STACK_BYTES, accumulator_budget, lanes_for

F32 = "float32"
I64 = "int64"
INF = float("inf")
RULE_NAME = "attention"
# A decode step's keys are split into chunks of at least this many (key_chunks).
SPLIT_MIN_KEYS = 256


@dataclass(frozen=True)
class CacheSlots:
    """Keys and values that begin in a KV cache (ecograph::CacheAttention): the cache holds
    `slots` tensors [batch, kv_heads, past_len, head_dim], this layer's keys at slot
    `key_index`, its values at `value_index`, laid out sequence first ([past_len, slots,
    batch, kv_heads, head_dim], `seq_axis` 0, compact) or head major ([slots, batch, kv_heads,
    past_len, head_dim], `seq_axis` 3: any strides but the last two dims', so that the first
    past_len positions of a longer buffer are read in place). K and V hold the q_len new
    positions, so kv_len is past_len + q_len. The kernel reads the cache where it lies (no
    copy of it per layer and step)."""

    past_len: Any  # int64 PrimExpr
    slots: int
    key_index: int
    value_index: int
    seq_axis: int = 0

    def buffer(self, T: Any, batch: Any, kv_heads: Any, head_dim: int, dtype: str) -> Any:
        """The kernel's cache argument."""
        d = _i64(head_dim)
        if self.seq_axis == 0:
            shape = (self.past_len, _i64(self.slots), batch, kv_heads, d)
            return T.arg("cache", T.Buffer(shape, dtype))
        shape = (_i64(self.slots), batch, kv_heads, self.past_len, d)
        outer = [tirx.Var(f"cache_stride{i}", I64) for i in range(3)]
        return T.arg("cache", T.Buffer(shape, dtype, strides=[*outer, d, _i64(1)]))

    def at(self, cache: Any, slot: int, batch: Any, kv_head: Any, pos: Any, x: Any) -> Any:
        """The element `x` of slot `slot`'s position `pos` (batch, KV head) in `cache`."""
        if self.seq_axis == 0:
            return cache[pos, _i64(slot), batch, kv_head, x]
        return cache[_i64(slot), batch, kv_head, pos, x]


@dataclass(frozen=True)
class AttentionShape:
    """What one Attention node computes, in the kernel's terms. Dims are int64 PrimExprs
    (IntImm or symbolic); head counts and head sizes are static. 4-D layout: Q [b, hq, s, d],
    K [b, hkv, l, d], V [b, hkv, l, dv], Y [b, hq, s, dv]; 3-D: Q [b, s, hq*d], K [b, l,
    hkv*d], V [b, l, hkv*dv], Y [b, s, hq*dv]. `mask_axes` says, for each mask dim, which
    scores axis it follows (0 batch, 1 q head, 2 query, 3 key), None where it is 1. With
    `cache` (4-D only), the first past_len keys and values come from the cache and K, V hold
    the last q_len (kv_len = past_len + q_len)."""

    dtype: str
    three_d: bool
    batch: Any
    q_len: Any
    kv_len: Any
    q_heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int
    causal: bool
    scale: float
    mask_dtype: str | None = None
    mask_shape: tuple[Any, ...] = ()
    mask_axes: tuple[int | None, ...] = ()
    cache: CacheSlots | None = None

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    @property
    def static_rows(self) -> int | None:
        """Query rows per KV head (query x group) when q_len is static."""
        q_len = self.q_len
        return int(q_len) * self.group if isinstance(q_len, tirx.IntImm) else None


@dataclass(frozen=True)
class AttentionTiles:
    """Rows per task (`row_block` = `row_vectors` vectors of `row_lanes`), keys per score
    tile, and the P.V tile: `pv_rows` rows x `v_chunk` columns in vectors of `v_lanes`.
    `dot_lanes` > 0: the scores are dot products along the head dim in vectors of that many
    lanes (a block of exactly the rows there are, `row_vectors` 1), for the few rows of a
    decode step, where vectors along the rows would be mostly empty."""

    row_lanes: int
    row_vectors: int
    key_tile: int
    pv_rows: int
    v_lanes: int
    v_chunk: int
    dot_lanes: int = 0

    @property
    def row_block(self) -> int:
        return self.row_lanes * self.row_vectors


def attention_tiles(
    spec: TargetSpec,
    rows: int | None,
    v_head_dim: int,
    head_dim: int | None = None,
) -> AttentionTiles:
    """Tiles for `rows` query rows per KV head (None: symbolic) on `spec`'s vectors: a row
    vector no wider than the rows (a decode step with 4 grouped heads uses 4 lanes), two of
    them per task when there are enough rows; accumulator tiles within the register budget
    and under STACK_BYTES so they stay on the stack. With `head_dim` known and so few rows
    that dot products cost less (`dot_product_lanes`), scores are dot products instead. A
    task stays one KV head (a form that took every head in one task, for a sequence-first
    cache, made a two-thread decode step 18 % slower: bench/RESULTS.md 2026-12-06)."""
    lanes = lanes_for(spec)
    budget = accumulator_budget(spec)
    dot = dot_product_lanes(lanes, rows, head_dim)
    if dot:
        assert rows is not None
        row_lanes, row_vectors = rows, 1
    else:
        row_lanes = lanes if rows is None else min(lanes, 1 << max(0, rows - 1).bit_length())
        row_vectors = 2 if rows is None or rows > row_lanes else 1
    block = row_lanes * row_vectors
    # per key: an accumulator register per row (dot products) or per row vector, and
    # block x (dot lanes or 1) floats of stack
    registers = block if dot else row_vectors
    key_tile = max(1, min(8, budget // registers, (STACK_BYTES - 1) // (block * (dot or 1) * 4)))
    v_lanes = next(w for w in (16, 8, 4, 2, 1) if w <= lanes and v_head_dim % w == 0)
    per_row = next(
        k for k in (6, 5, 4, 3, 2, 1) if (v_head_dim // v_lanes) % k == 0 and v_lanes * k <= 64
    )
    v_chunk = v_lanes * per_row
    pv_rows = next(
        m
        for m in range(8, 0, -1)
        if block % m == 0 and m * per_row <= budget and m * v_chunk * 4 < STACK_BYTES
    )
    return AttentionTiles(row_lanes, row_vectors, key_tile, pv_rows, v_lanes, v_chunk, dot)


def dot_product_lanes(lanes: int, rows: int | None, head_dim: int | None) -> int:
    """Vector lanes for scores as dot products along the head dim, or 0 for vectors along
    the rows. Per key, vectors along the rows cost a broadcast and an FMA per head element
    however few rows fill them; dot products cost, per row, head_dim / w FMAs and a halving
    sum. Measured on the kernel alone, keys in cache (SmolLM2's 3 rows of 64, a 4-layer
    Llama's 4 of 32, MHA's 1, 8 rows of 64; 128 and 1024 keys; bench/RESULTS.md
    2026-12-06): dot products 1.04-2.1x faster up to half a vector of rows, 0.84-0.89x at
    a full AVX2 vector (8 rows), even at a full AVX-512 one (16)."""
    if rows is None or head_dim is None or rows > lanes // 2:
        return 0
    w = next((w for w in (16, 8, 4) if w <= lanes and head_dim % w == 0), 0)
    return w if rows * w * 4 < STACK_BYTES else 0


def _i64(v: int) -> Any:
    return tirx.const(v, I64)


def _f32(v: float) -> Any:
    return tirx.const(v, F32)


def attention_kernel(shape: AttentionShape, tiles: AttentionTiles) -> tirx.PrimFunc:
    """The PrimFunc `(Q, K, V[, mask], Y)` for `shape`, scheduled with `tiles`; with a cache,
    `(Q, cache, K, V[, mask], Y)`."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T  # noqa: N812  (TVM's own spelling)

    s = shape
    b, hq, hkv, q_len, kv_len = s.batch, _i64(s.q_heads), _i64(s.kv_heads), s.q_len, s.kv_len
    d, dv = s.head_dim, s.v_head_dim
    if s.three_d:
        q_shape, k_shape = (b, q_len, hq * _i64(d)), (b, kv_len, hkv * _i64(d))
        v_shape, y_shape = (b, kv_len, hkv * _i64(dv)), (b, q_len, hq * _i64(dv))
    else:
        q_shape, k_shape = (b, hq, q_len, _i64(d)), (b, hkv, kv_len, _i64(d))
        v_shape, y_shape = (b, hkv, kv_len, _i64(dv)), (b, hq, q_len, _i64(dv))
    with IRBuilder() as ib, T.prim_func():
        T.func_name("attention")
        T.func_attr(
            {"tirx.noalias": True, "tirx.is_scheduled": True, "ecograph.schedule": RULE_NAME}
        )
        q = T.arg("q", T.Buffer(q_shape, s.dtype))
        cache = None
        if s.cache is not None:
            k_shape = v_shape = (b, hkv, q_len, _i64(d))
            cache = s.cache.buffer(T, b, hkv, d, s.dtype)
        k = T.arg("k", T.Buffer(k_shape, s.dtype))
        v = T.arg("v", T.Buffer(v_shape, s.dtype))
        mask = T.arg("mask", T.Buffer(s.mask_shape, s.mask_dtype)) if s.mask_dtype else None
        y = T.arg("y", T.Buffer(y_shape, s.dtype))
        rows = q_len * _i64(s.group)
        blocks = (rows + _i64(tiles.row_block - 1)) // _i64(tiles.row_block)
        buffers, groups = (q, k, v, mask, y, cache), b * hkv * blocks
        if tiles.dot_lanes:  # a decode step: its keys in chunks where that balances threads
            count = T.bind(key_chunks(T, s.kv_len, groups), var=tirx.Var("chunks", I64))
            with T.If(count > _i64(1)):
                with T.Then():
                    split = _KeySplit.declare(T, s, tiles, groups, count)
                    with T.parallel(0, groups * count) as task:
                        _Task(s, tiles, buffers, task // count, blocks, split, task % count).emit()
                    with T.parallel(0, groups) as task:
                        split.combine(T, s, tiles, y, task, blocks)
                with T.Else(), T.parallel(0, groups) as task:
                    _Task(s, tiles, buffers, task, blocks).emit()
        else:
            with T.parallel(0, groups) as task:
                _Task(s, tiles, buffers, task, blocks).emit()
    # No global symbol: each node's kernel takes the name its GlobalVar gets in the module.
    return ib.get().without_attr("global_symbol")


def key_chunks(T: Any, kv_len: Any, groups: Any) -> Any:
    """How many chunks a decode step's keys are split into (`_KeySplit`), as an int64
    expression of `kv_len` and the `groups` (batch x KV heads x row blocks) of tasks: the
    fewest that give every thread of the pool (TVM's runtime.NumThreads, over which a
    parallel loop is split evenly) as many tasks, threads / gcd(groups, threads), but no
    chunk under SPLIT_MIN_KEYS keys. One thread, or groups a multiple of the threads, gives 1:
    no split. Emits the statements that compute it."""
    threads = T.bind(
        tirx.Cast(I64, tirx.call_packed("runtime.NumThreads")), var=tirx.Var("threads", I64)
    )
    common = T.decl_buffer((1,), I64, scope="local")
    T.buffer_store(common, _i64(1), [0])
    with T.serial(1, threads + _i64(1)) as d:  # gcd(groups, threads)
        shared = tirx.all(groups % d == _i64(0), threads % d == _i64(0))
        T.buffer_store(common, tirx.Select(shared, d, common[0]), [0])
    by_keys = kv_len // _i64(SPLIT_MIN_KEYS)
    return tirx.max(_i64(1), tirx.min(threads // common[0], by_keys))


class _KeySplit:
    """A decode step's keys split into chunks (flash-decoding), so that a batch-1 step has
    work for every thread (SmolLM2's 3 KV heads gave two threads 2 + 1). Each task takes one
    chunk of `chunk` keys of one (batch, KV head, row block) group and leaves its rows'
    unnormalized P.V (`o`), score max (`m`) and exponential sum (`l`); `combine` rescales
    the chunks to their common max and writes Y. There are `count` chunks (`key_chunks`)."""

    def __init__(self, count: Any, most: Any, chunk: Any, m: Any, l: Any, o: Any) -> None:  # noqa: E741
        self.count, self.most, self.chunk, self.m, self.l, self.o = count, most, chunk, m, l, o

    @classmethod
    def declare(
        cls,
        T: Any,
        s: AttentionShape,
        tiles: AttentionTiles,
        groups: Any,
        count: Any,
    ) -> _KeySplit:
        """`count` chunks of `s`'s keys for each of `groups` (batch x KV heads x row
        blocks) groups, and their partial results as workspaces."""
        chunk = (s.kv_len + count - _i64(1)) // count
        rb, dv = _i64(tiles.row_block), _i64(s.v_head_dim)
        # room for the most chunks kv_len allows: a workspace sized by `count` itself fails
        # TVM's build ("used before definition": the workspaces are allocated before it is
        # bound; `combine`'s too where its parallel loop has one iteration and goes away, as
        # in a batch-1 step of one KV head, multi-query attention)
        most = tirx.max(_i64(1), s.kv_len // _i64(SPLIT_MIN_KEYS))
        m = T.decl_buffer((groups, most, rb), F32, scope="global")
        l = T.decl_buffer((groups, most, rb), F32, scope="global")  # noqa: E741
        o = T.decl_buffer((groups, most, rb, dv), F32, scope="global")
        return cls(count, most, chunk, m, l, o)

    def combine(
        self,
        T: Any,
        s: AttentionShape,
        tiles: AttentionTiles,
        y: Any,
        g: Any,
        blocks: Any,
    ) -> None:
        """Y for group `g`'s rows: each chunk's P.V weighted by exp(its max - the rows' max),
        divided by the sums weighted alike; a chunk with no visible key (sum 0) weighs 0, and
        a row with none at all gives zeros."""
        rows = _Task(s, tiles, (None, None, None, None, y, None), g, blocks)
        dv, neg_inf, zero = _i64(s.v_head_dim), _f32(-INF), _f32(0.0)
        w = T.decl_buffer((self.most,), F32, scope="global")
        acc = T.decl_buffer((s.v_head_dim,), F32, scope="global")
        top = T.decl_buffer((1,), F32, scope="global")
        den = T.decl_buffer((1,), F32, scope="global")
        m, l, o = self.m, self.l, self.o  # noqa: E741
        with (
            T.serial(0, _i64(tiles.row_block)) as r,
            T.If(rows.r0 + r < rows.rows),
            T.Then(),
        ):
            T.buffer_store(top, neg_inf, [0])
            T.buffer_store(den, zero, [0])
            with T.serial(0, self.count) as c:
                seen = tirx.Select(l[g, c, r] > zero, m[g, c, r], neg_inf)
                T.buffer_store(top, tirx.max(top[0], seen), [0])
            with T.serial(0, self.count) as c:
                wc = tirx.Select(l[g, c, r] > zero, tirx.exp(m[g, c, r] - top[0]), zero)
                T.buffer_store(w, wc, [c])
                T.buffer_store(den, den[0] + wc * l[g, c, r], [0])
            with T.vectorized(0, dv) as x:
                T.buffer_store(acc, zero, [x])
            with T.serial(0, self.count) as c, T.vectorized(0, dv) as x:
                T.buffer_store(acc, acc[x] + w[c] * o[g, c, r, x], [x])
            inv = tirx.Select(den[0] == zero, zero, _f32(1.0) / den[0])
            i, h = rows.row(r)
            with T.vectorized(0, dv) as x:
                rows.y_store(h, i, x, acc[x] * inv)


class _Task:
    """One parallel task: batch `bi`, KV head `kh`, rows r0 .. r0 + row_block; with `split`,
    the keys of chunk `chunk` only."""

    def __init__(
        self, shape: AttentionShape, tiles: AttentionTiles, buffers: tuple[Any, ...], task: Any,
        blocks: Any, split: _KeySplit | None = None, chunk: Any = None,
    ) -> None:  # fmt: skip
        from tvm.script.ir_builder import tirx as T  # noqa: N812

        self.T = T
        self.s, self.t = shape, tiles
        self.q, self.k, self.v, self.mask, self.y, self.cache = buffers
        hkv, rb = _i64(shape.kv_heads), tiles.row_block
        self.group, self.split, self.chunk = task, split, chunk
        self.bi = task // (hkv * blocks)
        self.kh = task // blocks % hkv
        self.r0 = task % blocks * _i64(rb)
        self.rows = shape.q_len * _i64(shape.group)
        if shape.causal:  # rows see keys up to their own query: stop at the block's last one
            last_query, _ = self.row(_i64(rb - 1))
            self.key_end = tirx.min(shape.kv_len, last_query + _i64(1))
        else:
            self.key_end = shape.kv_len
        # this task's keys: k0 .. k0 + n_keys (one chunk of them with a split)
        self.k0 = _i64(0) if split is None else chunk * split.chunk
        self.n_keys = self.keys_before(self.key_end)

    def keys_before(self, end: Any) -> Any:
        """How many of the task's keys lie before key `end`."""
        if self.split is None:
            return end
        return tirx.max(tirx.min(end, self.k0 + self.split.chunk) - self.k0, _i64(0))

    def emit(self) -> None:
        self.declare_scratch()
        if self.mask is not None and not self.t.dot_lanes:  # (a decode step: one row's mask)
            self.n_keys = self.keys_before(self.visible_end())
        self.transpose_queries()
        self.scores()
        self.softmax()
        self.weighted_sum()

    def visible_end(self) -> Any:
        """One past the last key some row of the block sees (under `key_end`), from the mask:
        the keys after it are masked for every row (False, or -inf added), so their
        probabilities are exactly 0 and the task skips them (key padding; a causal mask
        passed as a mask, which `causal-attention-masks` could not prove causal: SmolLM2's
        prefill attention took 7.12 ms a layer at 512 tokens so, 7.86 reading every key, 3.98
        as is_causal, whose scores read no mask). Scanned backwards from `key_end`, a key at
        a time over the block's rows; only in the form with vectors along the rows (a decode
        step's one-row mask rarely ends early, and the scan cost its steps ~1 %)."""
        T = self.T  # noqa: N806
        end = T.decl_buffer((1,), I64, scope="local")
        seen = T.decl_buffer((1,), "int32", scope="local")
        T.buffer_store(end, self.key_end, [0])
        T.buffer_store(seen, tirx.const(0, "int32"), [0])
        with T.While(tirx.all(end[0] > _i64(0), seen[0] == tirx.const(0, "int32"))):
            with T.serial(0, _i64(self.t.row_block)) as r:
                i, h = self.row(r)
                m = self.mask_at(h, i, end[0] - _i64(1))
                dt = self.s.mask_dtype
                shown = m if dt == "bool" else m != tirx.const(-INF, dt)
                T.buffer_store(seen, seen[0] | tirx.Cast("int32", shown), [0])
            T.buffer_store(end, tirx.Select(seen[0] == 0, end[0] - _i64(1), end[0]), [0])
        return T.bind(end[0], var=tirx.Var("visible_end", I64))

    def declare_scratch(self) -> None:
        """Q^T (Q's rows for dot products), the scores (then probabilities) and the register
        tiles (stack)."""
        T, s, t, rb = self.T, self.s, self.t, self.t.row_block  # noqa: N806
        if t.dot_lanes:
            self.qt = T.decl_buffer((rb, s.head_dim), F32, scope="global")
            self.acc = T.decl_buffer((t.key_tile, rb, t.dot_lanes), F32, scope="global")
        else:
            self.qt = T.decl_buffer((s.head_dim, rb), F32, scope="global")
            self.acc = T.decl_buffer((t.key_tile, rb), F32, scope="global")
        # scores [key, row]; with dot products [row, key] (the chunk's keys), so that softmax
        # runs along keys
        keys = s.kv_len if self.split is None else self.split.chunk
        self.sc = T.decl_buffer(
            (_i64(rb), keys) if t.dot_lanes else (keys, _i64(rb)), F32, scope="global"
        )
        self.lane = T.decl_buffer((t.dot_lanes or 1,), F32, scope="global")
        self.mx = T.decl_buffer((rb,), F32, scope="global")
        self.inv = T.decl_buffer((rb,), F32, scope="global")
        self.pv = T.decl_buffer((t.pv_rows, t.v_chunk), F32, scope="global")

    # ----------------------------------------------------------------- indexing
    def f32(self, e: Any) -> Any:
        return e if self.s.dtype == F32 else tirx.Cast(F32, e)

    def row(self, r: Any) -> tuple[Any, Any]:
        """(query, q head) of the block's row `r`, clamped to the last row."""
        group = _i64(self.s.group)
        rho = tirx.min(self.r0 + r, self.rows - _i64(1))
        return rho // group, self.kh * group + rho % group

    def q_at(self, h: Any, i: Any, x: Any) -> Any:
        d = self.s.head_dim
        return self.q[self.bi, i, h * d + x] if self.s.three_d else self.q[self.bi, h, i, x]

    def key_ranges(self) -> list[tuple[Any, Any, bool]]:
        """(first key, number of keys, read from the cache) for each run of keys that one
        buffer holds (of the task's keys): all of them in K and V, or the cache's past_len
        then K's and V's."""
        c, k0, end = self.s.cache, self.k0, self.k0 + self.n_keys
        if c is None:
            return [(k0, self.n_keys, False)]
        past, zero = c.past_len, _i64(0)
        new0 = tirx.max(past, k0)
        return [
            (k0, tirx.max(tirx.min(past, end) - k0, zero), True),
            (new0, tirx.max(end - new0, zero), False),
        ]

    def k_at(self, j: Any, x: Any, in_cache: bool = False) -> Any:
        d, kh, c = self.s.head_dim, self.kh, self.s.cache
        if c is not None:
            if in_cache:
                return c.at(self.cache, c.key_index, self.bi, kh, j, x)
            return self.k[self.bi, kh, j - c.past_len, x]
        return self.k[self.bi, j, kh * d + x] if self.s.three_d else self.k[self.bi, kh, j, x]

    def v_at(self, j: Any, col: Any, in_cache: bool = False) -> Any:
        dv, kh, c = self.s.v_head_dim, self.kh, self.s.cache
        if c is not None:
            if in_cache:
                return c.at(self.cache, c.value_index, self.bi, kh, j, col)
            return self.v[self.bi, kh, j - c.past_len, col]
        if self.s.three_d:
            return self.v[self.bi, j, kh * dv + col]
        return self.v[self.bi, kh, j, col]

    def y_store(self, h: Any, i: Any, c: Any, value: Any) -> None:
        out = value if self.s.dtype == F32 else tirx.Cast(self.s.dtype, value)
        dv, bi = self.s.v_head_dim, self.bi
        self.T.buffer_store(self.y, out, [bi, i, h * dv + c] if self.s.three_d else [bi, h, i, c])

    def mask_at(self, h: Any, i: Any, j: Any) -> Any:
        """The mask's element for q head `h`, query `i` and key `j` (of the task's batch)."""
        at = (self.bi, h, i, j)
        return self.mask[tuple(_i64(0) if a is None else at[a] for a in self.s.mask_axes)]

    def masked(self, score: Any, r: Any, j: Any) -> Any:
        """`score` of row `r` and key `j` after the causal mask and the attention mask."""
        i, h = self.row(r)
        if self.s.causal:
            score = tirx.Select(j <= i, score, _f32(-INF))
        if self.mask is not None:
            m = self.mask_at(h, i, j)
            if self.s.mask_dtype == "bool":
                score = tirx.Select(m, score, _f32(-INF))
            else:
                score = score + self.f32(m)
        return score

    # ------------------------------------------------------------------ phases
    def transpose_queries(self) -> None:
        T = self.T  # noqa: N806
        with T.serial(0, _i64(self.t.row_block)) as r, T.serial(0, _i64(self.s.head_dim)) as x:
            i, h = self.row(r)
            at = [r, x] if self.t.dot_lanes else [x, r]
            T.buffer_store(self.qt, self.f32(self.q_at(h, i, x)), at)

    def scores(self) -> None:
        T = self.T  # noqa: N806
        mj = _i64(self.t.key_tile)
        tile = self.dot_tile if self.t.dot_lanes else self.score_tile
        for start, count, in_cache in self.key_ranges():
            with T.serial(0, count // mj) as jo:
                tile(start + jo * mj, self.t.key_tile, in_cache)
            with T.serial(0, count % mj) as jt:
                tile(start + count // mj * mj + jt, 1, in_cache)

    def dot_tile(self, j0: Any, keys: int, in_cache: bool) -> None:
        """Scores of keys j0 .. j0 + keys for every row as dot products: per (key, row) a
        vector of partial sums along the head dim (K and Q read as stored), then halved
        until one lane holds the sum."""
        T, acc, qt = self.T, self.acc, self.qt  # noqa: N806
        w, rb = self.t.dot_lanes, _i64(self.t.row_block)
        with T.unroll(0, _i64(keys)) as jj, T.unroll(0, rb) as r, T.vectorized(0, _i64(w)) as ln:
            T.buffer_store(acc, _f32(0.0), [jj, r, ln])
        with (
            T.serial(0, _i64(self.s.head_dim // w)) as xc,
            T.unroll(0, _i64(keys)) as jj,
            T.unroll(0, rb) as r,
            T.vectorized(0, _i64(w)) as ln,
        ):
            x = xc * _i64(w) + ln
            kx = self.f32(self.k_at(j0 + jj, x, in_cache))
            T.buffer_store(acc, acc[jj, r, ln] + qt[r, x] * kx, [jj, r, ln])
        half = w // 2
        while half:
            with (
                T.unroll(0, _i64(keys)) as jj,
                T.unroll(0, rb) as r,
                T.vectorized(0, _i64(half)) as ln,
            ):
                T.buffer_store(acc, acc[jj, r, ln] + acc[jj, r, ln + _i64(half)], [jj, r, ln])
            half //= 2
        with T.unroll(0, _i64(keys)) as jj, T.unroll(0, rb) as r:
            j = j0 + jj
            score = self.masked(acc[jj, r, _i64(0)] * _f32(self.s.scale), r, j)
            T.buffer_store(self.sc, score, [r, j - self.k0])

    def score_tile(self, j0: Any, keys: int, in_cache: bool) -> None:
        """Scores of keys j0 .. j0 + keys for every row: accumulators in registers, vectors
        along the rows, one broadcast key element per FMA."""
        T, acc, qt = self.T, self.acc, self.qt  # noqa: N806
        vl, rb = self.t.row_lanes, self.t.row_block
        with T.unroll(0, _i64(keys)) as jj, T.vectorized(0, _i64(rb)) as r:
            T.buffer_store(acc, _f32(0.0), [jj, r])
        with T.serial(0, _i64(self.s.head_dim)) as x, T.unroll(0, _i64(keys)) as jj:
            kx = self.f32(self.k_at(j0 + jj, x, in_cache))
            with T.unroll(0, _i64(self.t.row_vectors)) as nv, T.vectorized(0, _i64(vl)) as lane:
                r = nv * vl + lane
                T.buffer_store(acc, acc[jj, r] + kx * qt[x, r], [jj, r])
        with T.unroll(0, _i64(keys)) as jj, T.vectorized(0, _i64(rb)) as r:
            j = j0 + jj
            score = self.masked(acc[jj, r] * _f32(self.s.scale), r, j)
            T.buffer_store(self.sc, score, [j, r])

    def softmax(self) -> None:
        """Max-subtracted exponentials in place of the scores and 1 / their sum per row; a
        masked score gives 0 and a fully masked row a zero sum, hence zeros."""
        if self.t.dot_lanes:
            self.softmax_along_keys()
            return
        T, sc, mx, inv = self.T, self.sc, self.mx, self.inv  # noqa: N806
        rb, zero, neg_inf = _i64(self.t.row_block), _f32(0.0), _f32(-INF)
        with T.vectorized(0, rb) as r:
            T.buffer_store(mx, neg_inf, [r])
            T.buffer_store(inv, zero, [r])
        with T.serial(0, self.n_keys) as j, T.vectorized(0, rb) as r:
            T.buffer_store(mx, tirx.max(mx[r], sc[j, r]), [r])
        with T.vectorized(0, rb) as r:
            T.buffer_store(mx, tirx.Select(mx[r] == neg_inf, zero, mx[r]), [r])
        with T.serial(0, self.n_keys) as j, T.vectorized(0, rb) as r:
            e = tirx.Select(sc[j, r] == neg_inf, zero, tirx.exp(sc[j, r] - mx[r]))
            T.buffer_store(sc, e, [j, r])
            T.buffer_store(inv, inv[r] + sc[j, r], [r])
        with T.vectorized(0, rb) as r:
            T.buffer_store(inv, tirx.Select(inv[r] == zero, zero, _f32(1.0) / inv[r]), [r])

    def softmax_along_keys(self) -> None:
        """`softmax` for scores laid out [row, key], one row at a time with vectors along
        the keys (a few rows would fill a vector along the rows poorly): each row's max and
        sum gathered in the lanes of `lane`, then halved into its first one. With a split,
        the max and the sum (not its inverse) go to the split's `m` and `l`."""
        T, sc, mx, inv, lane = self.T, self.sc, self.mx, self.inv, self.lane  # noqa: N806
        w, n = self.t.dot_lanes, self.n_keys
        zero, neg_inf = _f32(0.0), _f32(-INF)
        vw, main = _i64(w), n // _i64(w) * _i64(w)

        def along_keys(start: Any, update: Any) -> None:
            """`lane[l] = update(lane[l], key)` over every key: vectors, then the rest."""
            with T.vectorized(0, vw) as c:
                T.buffer_store(lane, start, [c])
            with T.serial(0, n // vw) as jo, T.vectorized(0, vw) as c:
                T.buffer_store(lane, update(lane[c], jo * vw + c), [c])
            with T.serial(0, n % vw) as jt:
                T.buffer_store(lane, update(lane[_i64(0)], main + jt), [_i64(0)])

        with T.serial(0, _i64(self.t.row_block)) as r:
            along_keys(neg_inf, lambda acc, j: tirx.max(acc, sc[r, j]))
            halve_lanes(T, lane, w, tirx.max)
            T.buffer_store(mx, tirx.Select(lane[0] == neg_inf, zero, lane[0]), [r])

            def exp_sum(acc: Any, j: Any) -> Any:
                e = tirx.Select(sc[r, j] == neg_inf, zero, tirx.exp(sc[r, j] - mx[r]))
                T.buffer_store(sc, e, [r, j])
                return acc + sc[r, j]

            along_keys(zero, exp_sum)
            halve_lanes(T, lane, w, lambda a, b: a + b)
            split = self.split
            if split is None:
                T.buffer_store(inv, tirx.Select(lane[0] == zero, zero, _f32(1.0) / lane[0]), [r])
            else:
                T.buffer_store(split.m, mx[r], [self.group, self.chunk, r])
                T.buffer_store(split.l, lane[0], [self.group, self.chunk, r])

    def weighted_sum(self) -> None:
        """Y = P.V in tiles of pv_rows rows x v_chunk columns, vectors along V's head dim
        (with a split, the chunk's unnormalized P.V)."""
        T = self.T  # noqa: N806
        mr, yl, yc = self.t.pv_rows, self.t.v_lanes, self.t.v_chunk
        with (
            T.serial(0, _i64(self.t.row_block // mr)) as ro,
            T.If(self.r0 + ro * _i64(mr) < self.rows),
            T.Then(),
            T.serial(0, _i64(self.s.v_head_dim // yc)) as co,
        ):
            with T.unroll(0, _i64(mr)) as rr, T.vectorized(0, _i64(yc)) as c:
                T.buffer_store(self.pv, _f32(0.0), [rr, c])
            for start, count, in_cache in self.key_ranges():
                with T.serial(0, count) as jr, T.unroll(0, _i64(mr)) as rr:
                    j = start + jr
                    r = ro * _i64(mr) + rr
                    p = self.sc[r, j - self.k0] if self.t.dot_lanes else self.sc[j, r]
                    with T.unroll(0, _i64(yc // yl)) as cv, T.vectorized(0, _i64(yl)) as lane:
                        c = cv * yl + lane
                        vc = self.f32(self.v_at(j, co * _i64(yc) + c, in_cache))
                        T.buffer_store(self.pv, self.pv[rr, c] + p * vc, [rr, c])
            with T.serial(0, _i64(mr)) as rr:
                r = ro * _i64(mr) + rr
                with T.If(self.r0 + r < self.rows), T.Then(), T.vectorized(0, _i64(yc)) as c:
                    col = co * _i64(yc) + c
                    if self.split is not None:
                        at = [self.group, self.chunk, r, col]
                        T.buffer_store(self.split.o, self.pv[rr, c], at)
                    else:
                        i, h = self.row(r)
                        self.y_store(h, i, col, self.pv[rr, c] * self.inv[r])
