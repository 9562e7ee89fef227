"""TVM lowerings of assorted ONNX ops: losses, rotary embedding, TfIdfVectorizer, NMS.

- NegativeLogLikelihoodLoss / SoftmaxCrossEntropyLoss: `gather_elements` of the class axis with
  the (clamped) target, weights gathered with `take`, ignored positions zeroed by a mask; `mean`
  divides by the summed applied weights (the spec's rule, see `_nll`). SCE first takes
  `log_softmax` over axis 1 and also returns it as the optional `log_prob` output.
- RotaryEmbedding (opset 23): caches gathered by `position_ids` (or taken as given), halves or
  even/odd lanes rotated with elementwise math, the un-rotated tail concatenated back.
- TfIdfVectorizer: the n-gram pool is an attribute, so the lowering builds constant tables
  (one row per pool n-gram: items, length, output slot) and a TE kernel counts, for each row and
  pool n-gram, the (skip distance, start) pairs that match; a second reduction maps n-grams to
  output slots and the mode applies the weights.
- NonMaxSuppression has a data-dependent output size: a greedy per-(batch, class) kernel
  written with TIR's IRBuilder fills a padded buffer, which `tensor_to_shape` + match_cast (a
  fresh size var) and a TE copy trim, so it needs no host callback. The kernel is a parallel
  loop on CPU and, for a GPU target (`ctx.target.is_gpu`), a GPU launch of one single-thread
  block per row (an IRBuilder kernel gets no dlight schedule; unbound, it would become host code).
  (NonZero, Compress and Unique are in `data_dependent.py`.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax, te
from tvm import tirx as tir

from ecograph.backends.tvm.context import NN, LowerContext, R, lowers

# ------------------------------------------------------------------------ losses


def _nll(ctx: LowerContext, logp: relax.Expr, target: relax.Expr, dtype: str) -> relax.Expr:
    """ONNX NLL on log-probabilities `logp` [N, C, d...] and `target` [N, d...].

    A `mean` divides by the sum of the applied weights whenever there are any (a weight input,
    or an ignore_index: ignored positions weigh 0), as the spec and ONNX Runtime do.
    """
    reduction = ctx.attrs["reduction"]
    if reduction not in ("none", "sum", "mean"):
        ctx.fail(f"reduction {reduction!r} is not one of none/sum/mean")
    ignore = ctx.attrs.get("ignore_index")
    tdt = str(ctx.in_type(1).dtype)
    t = ctx.emit(target)
    mask = None
    if ignore is not None:
        mask = ctx.emit(R.not_equal(t, ctx.scalar(ignore, tdt)))

    # Clamp the target into [0, C-1]: ignored positions may hold any value (e.g. -1, 10).
    def clamp(tt: te.Tensor, lp: te.Tensor) -> te.Tensor:
        hi = lp.shape[1].astype(tdt) - 1
        return te.compute(
            tt.shape, lambda *i: tir.max(tir.min(tt[i], hi), tir.const(0, tdt)), name="clamp"
        )

    safe = ctx.bb.emit_te(clamp, t, logp, primfunc_name_hint="clamp_target")
    if mask is not None:
        safe = ctx.emit(R.where(mask, safe, ctx.scalar(0, tdt)))
    picked = R.gather_elements(logp, R.expand_dims(safe, 1), axis=1)
    loss = ctx.emit(R.negative(R.squeeze(picked, [1])))
    weight = None
    if ctx.has(2):
        weight = ctx.emit(R.take(R.astype(ctx.arg(2), dtype), safe, axis=0))
    if mask is not None:
        m = R.astype(mask, dtype)
        weight = ctx.emit(m if weight is None else R.multiply(weight, m))
    if weight is not None:
        loss = ctx.emit(R.multiply(loss, weight))
    if reduction == "none":
        return loss
    total = R.sum(loss)
    if reduction == "sum":
        return total
    if weight is not None:
        return R.divide(total, R.sum(weight))
    return R.mean(loss)


@lowers("NegativeLogLikelihoodLoss")
def _nll_loss(ctx: LowerContext) -> relax.Expr:
    dtype = str(ctx.in_type(0).dtype)
    return _nll(ctx, ctx.arg(0), ctx.arg(1), dtype)


@lowers("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(ctx: LowerContext) -> list[relax.Expr]:
    dtype = str(ctx.in_type(0).dtype)
    x = ctx.arg(0)
    if dtype in ("float16", "bfloat16"):
        logp32 = ctx.emit(NN.log_softmax(R.astype(x, "float32"), axis=1))
        loss = R.astype(ctx.emit(_nll(ctx, logp32, ctx.arg(1), "float32")), dtype)
        return [loss, R.astype(logp32, dtype)]
    logp = ctx.emit(NN.log_softmax(x, axis=1))
    return [_nll(ctx, logp, ctx.arg(1), dtype), logp]


# --------------------------------------------------------------- RotaryEmbedding


@lowers("RotaryEmbedding")
def _rotary_embedding(ctx: LowerContext) -> relax.Expr:
    xt = ctx.in_type(0)
    x = ctx.arg(0)
    rank = xt.rank
    heads = ctx.attrs.get("num_heads") or 0
    if rank == 3:
        if not heads:
            ctx.fail("a 3-D input needs the num_heads attribute")
        hidden = xt.shape[2]
        if not isinstance(hidden, int):
            ctx.fail("a 3-D input needs a static hidden size (it is split into num_heads)")
        head = hidden // heads
        b, s = xt.shape[0], xt.shape[1]
        x = R.reshape(x, [ctx.dim(b), ctx.dim(s), heads, head])
        cache_axis = 2  # x is [B, S, H, D]
        lead = [ctx.dim(b), ctx.dim(s), heads]
    elif rank == 4:
        head = xt.shape[3]
        if not isinstance(head, int):
            ctx.fail("the head size (last input dim) must be static")
        cache_axis = 1  # x is [B, H, S, D]
        lead = [ctx.dim(d) for d in xt.shape[:3]]
    else:
        ctx.fail(f"input must be 3-D or 4-D, got rank {rank}")
    rot = ctx.attrs.get("rotary_embedding_dim") or 0
    rot = rot or head
    if rot % 2 or rot > head:
        ctx.fail(f"rotary_embedding_dim {rot} must be even and at most the head size {head}")
    half = rot // 2
    cos, sin = ctx.arg(1), ctx.arg(2)
    if ctx.has(3):
        cos = R.take(cos, ctx.arg(3), axis=0)
        sin = R.take(sin, ctx.arg(3), axis=0)
    cos = ctx.emit(R.expand_dims(cos, cache_axis))
    sin = ctx.emit(R.expand_dims(sin, cache_axis))
    x = ctx.emit(x)
    x_rot = R.strided_slice(x, axes=[3], begin=[0], end=[rot]) if rot < head else x
    if ctx.attrs.get("interleaved"):
        x1 = R.strided_slice(x_rot, axes=[3], begin=[0], end=[rot], strides=[2])
        x2 = R.strided_slice(x_rot, axes=[3], begin=[1], end=[rot], strides=[2])
    else:
        x1 = R.strided_slice(x_rot, axes=[3], begin=[0], end=[half])
        x2 = R.strided_slice(x_rot, axes=[3], begin=[half], end=[rot])
    x1, x2 = ctx.emit(x1), ctx.emit(x2)
    real = R.subtract(R.multiply(cos, x1), R.multiply(sin, x2))
    imag = R.add(R.multiply(sin, x1), R.multiply(cos, x2))
    if ctx.attrs.get("interleaved"):
        pairs = R.concat([R.expand_dims(real, 4), R.expand_dims(imag, 4)], axis=4)
        rotated = R.reshape(pairs, [*lead, rot])
    else:
        rotated = R.concat([real, imag], axis=3)
    if rot < head:
        rest = R.strided_slice(x, axes=[3], begin=[rot], end=[head])
        rotated = R.concat([rotated, rest], axis=3)
    if rank == 3:
        rotated = R.reshape(rotated, [ctx.dim(d) for d in xt.shape])
    return rotated


# --------------------------------------------------------------- TfIdfVectorizer


def _tfidf_tables(ctx: LowerContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Pool n-grams in the counted length range: items [G, L], lengths [G], output slots [G]."""
    a = ctx.attrs
    pool = a.get("pool_int64s")
    if pool is None or len(pool) == 0:
        if a.get("pool_strings"):
            ctx.fail("pool_strings: string tensors cannot lower to TVM (no string dtype)")
        pool = []
    pool = [int(v) for v in pool]
    counts = [int(v) for v in a["ngram_counts"]]
    indexes = [int(v) for v in a["ngram_indexes"]]
    lo, hi = int(a["min_gram_length"]), int(a["max_gram_length"])
    found: dict[tuple[int, ...], int] = {}  # a later duplicate wins, as in the reference's trie
    ngram_id = 0
    for size, start in enumerate(counts, start=1):
        end = counts[size] if size < len(counts) else len(pool)
        n = max(end - start, 0) // size
        for j in range(n):
            if lo <= size <= hi:
                found[tuple(pool[start + j * size : start + (j + 1) * size])] = indexes[ngram_id]
            ngram_id += 1
    width = max((len(k) for k in found), default=1)
    items = np.zeros((max(len(found), 1), width), dtype="int64")
    lengths = np.zeros((max(len(found), 1),), dtype="int64")  # length 0 never matches
    slots = np.zeros((max(len(found), 1),), dtype="int64")
    for g, (key, slot) in enumerate(found.items()):
        items[g, : len(key)] = key
        lengths[g] = len(key)
        slots[g] = slot
    return items, lengths, slots, width, max(indexes) + 1


@lowers("TfIdfVectorizer")
def _tfidf_vectorizer(ctx: LowerContext) -> relax.Expr:
    a = ctx.attrs
    mode = a["mode"]
    if mode not in ("TF", "IDF", "TFIDF"):
        ctx.fail(f"mode {mode!r} is not one of TF/IDF/TFIDF")
    xt = ctx.in_type(0)
    if xt.rank not in (1, 2):
        ctx.fail(f"input must be [C] or [B, C], got rank {xt.rank}")
    if not xt.dtype.is_integer:
        ctx.fail(f"input dtype {xt.dtype}: only int32/int64 inputs can lower (strings cannot)")
    items, lengths, slots, width, out_size = _tfidf_tables(ctx)
    skips = int(a["max_skip_count"]) + 1
    weights = a.get("weights")
    w = np.ones((out_size,), "float32") if weights is None or len(weights) == 0 else None
    if w is None:
        # Weight i belongs to pool n-gram i, whose output column is ngram_indexes[i] (the
        # spec and ONNX Runtime; onnx.reference indexes the weights by column instead).
        w = np.zeros((out_size,), "float32")
        vals = np.asarray(weights, dtype="float32").reshape(-1)
        for i, column in enumerate(int(v) for v in a["ngram_indexes"]):
            if i < len(vals):
                w[column] = vals[i]
    x = ctx.arg(0) if xt.rank == 2 else R.expand_dims(ctx.arg(0), 0)
    x = ctx.emit(R.astype(x, "int64"))

    def count(xx: te.Tensor, it: te.Tensor, ln: te.Tensor) -> te.Tensor:
        rows, cols = xx.shape
        d = te.reduce_axis((1, skips + 1), "d")
        s = te.reduce_axis((0, cols), "s")

        def body(r: Any, g: Any) -> Any:
            n = ln[g]
            ok = tir.all(n > 0, s + (n - 1) * d < cols, tir.any(n > 1, d == 1))
            for k in range(width):
                pos = tir.min(s + k * d, cols - 1)
                ok = tir.all(ok, tir.any(n <= k, xx[r, pos] == it[g, k]))
            return te.sum(tir.Select(ok, tir.const(1, "int64"), tir.const(0, "int64")), [d, s])

        return te.compute((rows, it.shape[0]), body, name="tfidf_count")

    def to_slots(cnt: te.Tensor, sl: te.Tensor, wt: te.Tensor) -> te.Tensor:
        rows, grams = cnt.shape
        g = te.reduce_axis((0, grams), "g")
        total = te.compute(
            (rows, out_size),
            lambda r, o: te.sum(tir.Select(sl[g] == o, cnt[r, g], tir.const(0, "int64")), axis=[g]),
            name="tfidf_slots",
        )

        def weigh(r: Any, o: Any) -> Any:
            f = total[r, o].astype("float32")
            if mode == "TF":
                return f
            if mode == "IDF":
                return tir.Select(total[r, o] > 0, wt[o], tir.const(0, "float32"))
            return f * wt[o]

        return te.compute((rows, out_size), weigh, name="tfidf_weigh")

    cnt = ctx.bb.emit_te(
        count, x, relax.const(items, "int64"), relax.const(lengths, "int64"),
        primfunc_name_hint="tfidf_count",
    )  # fmt: skip
    y = ctx.bb.emit_te(
        to_slots, cnt, relax.const(slots, "int64"), relax.const(w, "float32"),
        primfunc_name_hint="tfidf_slots",
    )  # fmt: skip
    return y if xt.rank == 2 else R.squeeze(y, [0])


# ------------------------------------------------------------- NonMaxSuppression


def _nms_greedy(
    boxes: te.Tensor,
    scores: te.Tensor,
    limit: te.Tensor,
    iou: te.Tensor,
    thr: te.Tensor,
    center: bool,
    use_thr: bool,
    gpu: bool,
) -> list[te.Tensor]:
    """Greedy NMS per (batch, class) row: the selected box ids [B*C, N], their count [B*C] and
    the scratch live flags [B*C, N].

    `gpu=False` runs the rows in a parallel loop (CPU); `gpu=True` launches one CUDA block of
    one thread per row (`blockIdx.x`), so the kernel runs on the device: a TIR function without
    thread bindings would be compiled as host code reading device pointers.

    Each step takes the best live box (highest score, lowest index on ties, as the reference's
    ordering), keeps it and kills every live box whose IoU with it exceeds the threshold; this
    selects the same boxes in the same order as ONNX's candidate-by-candidate loop.
    """
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T  # noqa: N812  (TVM's own spelling)

    batch, classes, n = scores.shape
    dtype = scores.dtype

    def ir(bx: Any, sc: Any, lim: Any, io: Any, th: Any, sel: Any, cnt: Any, live: Any) -> Any:
        with IRBuilder() as ib:
            bx, sc, sel, cnt, live = (T.buffer_proxy(b) for b in (bx, sc, sel, cnt, live))
            lim, io, th = (T.buffer_proxy(b) for b in (lim, io, th))
            zero = tir.const(0, dtype)

            def corners(b: Any, i: Any) -> tuple[Any, Any, Any, Any]:
                """(x_min, x_max, y_min, y_max) of box i in batch b, as the reference."""
                if center:
                    hw = bx[b, i, 2] / tir.const(2, dtype)
                    hh = bx[b, i, 3] / tir.const(2, dtype)
                    return bx[b, i, 0] - hw, bx[b, i, 0] + hw, bx[b, i, 1] - hh, bx[b, i, 1] + hh
                x0, x1, y0, y1 = bx[b, i, 1], bx[b, i, 3], bx[b, i, 0], bx[b, i, 2]
                return tir.min(x0, x1), tir.max(x0, x1), tir.min(y0, y1), tir.max(y0, y1)

            def suppresses(b: Any, i: Any, k: Any) -> Any:
                ax0, ax1, ay0, ay1 = corners(b, i)
                bx0, bx1, by0, by1 = corners(b, k)
                ix0, ix1 = tir.max(ax0, bx0), tir.min(ax1, bx1)
                iy0, iy1 = tir.max(ay0, by0), tir.min(ay1, by1)
                inter = (ix1 - ix0) * (iy1 - iy0)
                area_a = (ax1 - ax0) * (ay1 - ay0)
                area_b = (bx1 - bx0) * (by1 - by0)
                union = area_a + area_b - inter
                return tir.all(
                    ix1 > ix0,
                    iy1 > iy0,
                    inter > zero,
                    area_a > zero,
                    area_b > zero,
                    union > zero,
                    inter / tir.Select(union > zero, union, tir.const(1, dtype)) > io[0],
                )

            def row(bc: Any) -> None:
                """The greedy loop of (batch, class) row `bc`, in one thread."""
                b = bc // classes
                c = bc % classes
                count = T.buffer_proxy(T.decl_buffer((1,), "int64", scope="local"))
                best = T.buffer_proxy(T.decl_buffer((1,), "int64", scope="local"))
                best_score = T.buffer_proxy(T.decl_buffer((1,), dtype, scope="local"))
                done = T.buffer_proxy(T.decl_buffer((1,), "int32", scope="local"))
                with T.serial(0, n) as j:
                    if use_thr:
                        live[bc, j] = tir.Select(sc[b, c, j] > th[0], 1, 0).astype("int32")
                    else:
                        live[bc, j] = tir.const(1, "int32")
                count[0] = tir.const(0, "int64")
                done[0] = tir.const(0, "int32")
                with T.While(tir.all(done[0] == 0, count[0] < lim[0])):
                    best[0] = tir.const(-1, "int64")
                    best_score[0] = zero
                    with (
                        T.serial(0, n) as j,
                        T.If(
                            tir.all(
                                live[bc, j] != 0,
                                tir.any(best[0] < 0, sc[b, c, j] > best_score[0]),
                            )
                        ),
                        T.Then(),
                    ):
                        best[0] = j.astype("int64")
                        best_score[0] = sc[b, c, j]
                    with T.If(best[0] < 0):
                        with T.Then():
                            done[0] = tir.const(1, "int32")
                        with T.Else():
                            sel[bc, count[0]] = best[0]
                            count[0] = count[0] + 1
                            live[bc, best[0]] = tir.const(0, "int32")
                            with (
                                T.serial(0, n) as k,
                                T.If(tir.all(live[bc, k] != 0, suppresses(b, best[0], k))),
                                T.Then(),
                            ):
                                live[bc, k] = tir.const(0, "int32")
                cnt[bc] = count[0]

            rows = batch * classes
            if gpu:
                # One block of one thread per row: a kernel launch, not host code that would
                # read device memory. The greedy loop is sequential within a row.
                block = te.thread_axis("blockIdx.x")
                thread = te.thread_axis("threadIdx.x")
                blocks = tir.max(rows, 1).astype("int32")  # a launch needs >= 1 block
                with T.frame_scope(
                    [T.attr(block, "thread_extent", blocks), T.attr(thread, "thread_extent", 1)]
                ):
                    bc = block.astype("int64")  # Relax shapes (and so `rows`) are int64
                    with T.If(bc < rows), T.Then():
                        row(bc)
            else:
                with T.parallel(0, rows) as bc:
                    row(bc)
            return ib.get()

    # The live flags are a third output so that no kernel allocates global scratch (CUDA
    # kernels cannot).
    return te.extern(
        [(batch * classes, n), (batch * classes,), (batch * classes, n)],
        [boxes, scores, limit, iou, thr],
        lambda ins, outs: ir(*ins, *outs),
        dtype=["int64", "int64", "int32"],
        name="nms_greedy",
    )


def _nms_owner(ends: te.Tensor, rows: Any) -> te.Tensor:
    """For each output row r, its (batch, class) row: the number of running counts <= r."""
    q = te.reduce_axis((0, ends.shape[0]), "q")
    one, zero = tir.const(1, "int64"), tir.const(0, "int64")
    return te.compute(
        (rows,), lambda r: te.sum(tir.Select(ends[q] <= r, one, zero), q), name="nms_owner"
    )


def _nms_collect(
    sel: te.Tensor, cnt: te.Tensor, ends: te.Tensor, owner: te.Tensor, classes: int
) -> te.Tensor:
    """Rows [rows, 3] of (batch, class, box ids)."""

    def row(r: Any, j: Any) -> Any:
        bc = owner[r]
        k = r - (ends[bc] - cnt[bc])
        return tir.Select(
            j == 0, bc // classes, tir.Select(j == 1, bc % classes, sel[bc, k])
        ).astype("int64")

    return te.compute((owner.shape[0], 3), row, name="nms_rows")


@lowers("NonMaxSuppression")
def _non_max_suppression(ctx: LowerContext) -> relax.Expr:
    st = ctx.in_type(1)
    if st.rank != 3 or ctx.in_type(0).rank != 3:
        ctx.fail("boxes must be [batch, boxes, 4] and scores [batch, classes, boxes]")
    classes = st.shape[1]
    if not isinstance(classes, int):
        ctx.fail("the class count (scores dim 1) must be static")
    dtype = str(st.dtype)
    boxes, scores = ctx.arg(0), ctx.arg(1)
    if str(ctx.in_type(0).dtype) != dtype:
        boxes = R.astype(boxes, dtype)

    def scalar_input(i: int, default: Any, dt: str) -> relax.Expr:
        if not ctx.has(i):
            return relax.const(np.array([default], dtype=dt), dt)
        v = ctx.arg(i)
        v = v if str(ctx.in_type(i).dtype) == dt else R.astype(v, dt)
        return ctx.emit(R.reshape(v, [1]))

    # Absent inputs: no boxes (max 0), IoU threshold 0, no score filtering (ONNX defaults).
    limit = scalar_input(2, 0, "int64")
    iou = scalar_input(3, 0, dtype)
    thr = scalar_input(4, 0, dtype)
    center = bool(ctx.attrs.get("center_point_box", 0))
    gpu = ctx.target.is_gpu
    greedy = ctx.bb.emit_te(
        _nms_greedy, boxes, scores, limit, iou, thr, center, ctx.has(4), gpu,
        primfunc_name_hint="nms_greedy",
    )  # fmt: skip
    sel = ctx.emit(relax.TupleGetItem(greedy, 0))
    cnt = ctx.emit(relax.TupleGetItem(greedy, 1))
    ends = ctx.emit(R.cumsum(cnt, axis=0))
    total = ctx.emit(R.reshape(R.sum(cnt), [1]))
    # The selected count is data-dependent: bind it to a fresh size var, then copy the rows.
    rows = tir.Var("nms_selected", "int64")
    ctx.bb.match_cast(ctx.emit(R.tensor_to_shape(total)), relax.ShapeType([rows]))
    owner = ctx.bb.emit_te(_nms_owner, ends, rows, primfunc_name_hint="nms_owner")
    return ctx.bb.emit_te(
        _nms_collect, sel, cnt, ends, owner, classes, primfunc_name_hint="nms_rows"
    )
