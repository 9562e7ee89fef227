"""Knowledge distillation of a pruned graph from its original, on CPU, on unlabeled inputs.

Both graphs run through `to_torch`; the teacher's values are computed without gradients and
kept for the next epoch up to `cache_bytes` (beyond that the teacher runs again each step:
caching every batch of a large data set grows without bound). The loss matches the hidden
states the two graphs share by name (pruning keeps value names) and the outputs: per hidden
state a normalized MSE (mean((s - t)²) / mean(t²), so that every layer weighs the same
whatever its scale), per output the normalized MSE plus 1 - cosine over the last axis, or,
for logits, the KL divergence of the softened distributions. AdamW with linear warmup and
cosine decay, gradient clipping; the trained weights go back into a new graph.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812 - the usual name

from ecograph.errors import UsageError
from ecograph.ir.graph import Graph, Node, Value
from ecograph.ir.verify import verify
from ecograph.prune.compress import check_batches
from ecograph.prune.tokens import mask_input, real_rows, token_mask
from ecograph.train.module import GraphModule, to_torch

Feeds = Mapping[str, np.ndarray]
CACHE_BYTES = 2 << 30  # teacher values kept between epochs (per distill call)
NORM_OPS = frozenset(["LayerNormalization", "RMSNormalization", "SkipLayerNormalization"])


@dataclass
class DistillResult:
    """What `distill` returns: the trained student as a new graph and how training went."""

    graph: Graph
    losses: list[float]
    hidden_states: list[str]  # the intermediate values matched to the teacher's
    seconds: float
    # Mean cosine (over the last axis) of each output to the teacher's, on validation_data.
    cosine_before: dict[str, float] = field(default_factory=dict)
    cosine_after: dict[str, float] = field(default_factory=dict)


def _is_residual_add(node: Node) -> bool:
    if node.op_type != "Add" or node.domain != "" or len(node.inputs) != 2:
        return False
    a, b = node.inputs
    out = node.output
    return all(
        v is not None and not v.is_constant and v.dtype.is_float and v.shape == out.shape
        for v in (a, b)
    )


def _same_role(mine: Value, theirs: Value) -> bool:
    """The student computes this hidden state as the teacher does: the same op, and for a
    norm after a residual Add, an Add feeding it (not the norm of a dropped branch's input)."""
    a, b = mine.producer, theirs.producer
    if a is None or b is None or a.qualified_op != b.qualified_op:
        return False
    if b.op_type in NORM_OPS:
        x = a.inputs[0]
        return x is not None and x.producer is not None and _is_residual_add(x.producer)
    return True


def hidden_state_names(student: Graph, teacher: Graph) -> list[str]:
    """The hidden states to match, in teacher order: the result of each residual Add of the
    teacher (or of the norm right after it, for post-norm models such as BERT) that the
    student holds under the same name and type, computed by the same op. Pruning keeps value
    names; a dropped residual branch takes its Add with it (drop-layers leaves a post-norm
    model's norm without an Add before it, drop-blocks takes the norm too), so its state is
    left out."""
    names: list[str] = []
    outputs = {v.name for v in teacher.outputs}
    for node in teacher.nodes:
        if not _is_residual_add(node):
            continue
        value = node.output
        users = value.users
        if len(users) == 1 and users[0].op_type in NORM_OPS and not value.is_graph_output:
            value = users[0].outputs[0]
        if value.name in outputs or not student.has_value(value.name):
            continue
        mine = student.value(value.name)
        if mine.type == value.type and _same_role(mine, value):
            names.append(value.name)
    return names


def _check_compatible(student: Graph, teacher: Graph) -> None:
    s_in = [(v.name, v.dtype) for v in student.inputs]
    t_in = [(v.name, v.dtype) for v in teacher.inputs]
    if s_in != t_in:
        raise UsageError(
            f"distill: the student's inputs {s_in} differ from the teacher's {t_in}; distill a "
            "pruned copy of the teacher"
        )
    t_out = {v.name: v for v in teacher.outputs}
    s_out = {v.name: v for v in student.outputs}
    for name in sorted(set(t_out) | set(s_out)):
        if name not in s_out or name not in t_out:
            where = "student" if name not in s_out else "teacher"
            raise UsageError(
                f"distill: output {name!r} is missing from the {where}; student and teacher must "
                "have the same outputs"
            )
        s, t = s_out[name], t_out[name]
        if s.dtype != t.dtype or s.type.rank != t.type.rank or s.shape[-1:] != t.shape[-1:]:
            raise UsageError(
                f"distill: output {name!r} is {s.type} in the student but {t.type} in the "
                "teacher; prune only what does not reach the outputs"
            )


def _looks_like_logits(value: Value) -> bool:
    return "logit" in value.name.lower()


def _rows(t: torch.Tensor, keep: np.ndarray | None) -> torch.Tensor:
    """`t` as rows over its last axis; with a token mask whose tokens are t's rows (see
    prune/tokens.py `real_rows`), only the real tokens (padding does not count)."""
    rows = t.reshape(-1, t.shape[-1])
    real = real_rows(tuple(t.shape), keep)
    return rows if real is None else rows[torch.from_numpy(real)]


def _nmse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ((s - t) ** 2).mean() / ((t**2).mean() + 1e-8)


def _cosine(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean cosine over the last axis (per row)."""
    return F.cosine_similarity(s, t, dim=-1).mean()


def _output_loss(s: torch.Tensor, t: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """Loss between two row matrices (see `_rows`)."""
    if kind == "kl":
        log_p = F.log_softmax(s / temperature, dim=-1)
        log_q = F.log_softmax(t / temperature, dim=-1)
        kl = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
        return kl * temperature**2
    return _nmse(s, t) + (1 - _cosine(s, t))


def _mean_cosines(
    student: GraphModule,
    teacher: GraphModule,
    data: Sequence[Feeds],
    outputs: list[str],
    mask: str | None,
) -> dict[str, float]:
    sums = dict.fromkeys(outputs, 0.0)
    with torch.no_grad():
        for batch in data:
            s, t = student.run(batch, outputs), teacher.run(batch, outputs)
            keep = token_mask(batch, mask)
            for name in outputs:
                a, b = _rows(s[name].double(), keep), _rows(t[name].double(), keep)
                sums[name] += float(_cosine(a, b))
    return {name: total / len(data) for name, total in sums.items()}


def distill(
    student: Graph,
    teacher: Graph,
    train_data: Sequence[Feeds],
    *,
    steps: int = 300,
    lr: float | None = None,
    validation_data: Sequence[Feeds] | None = None,
    progress: bool | None = None,
    seed: int = 0,
    hidden_states: Sequence[str] | str = "auto",
    hidden_weight: float = 1.0,
    output_loss: str = "auto",
    temperature: float = 2.0,
    warmup: float = 0.1,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    train_embeddings: bool = False,
    mask: str | None = "auto",
    cache_bytes: int = CACHE_BYTES,
) -> DistillResult:
    """Train `student` (a pruned copy of `teacher`) to reproduce the teacher on `train_data`.

    `train_data` / `validation_data`: lists of input dicts (graph input name -> numpy array,
    one batch each); batches are visited in a shuffled order, epoch after epoch, for `steps`
    optimizer steps. `lr` defaults to 3e-4. `hidden_states`: "auto" (see
    `hidden_state_names`), a list of value names, or [] for outputs only. `output_loss`:
    "auto" (KL for outputs named like logits, normalized MSE + cosine otherwise), "mse+cos" or
    "kl". `mask`: an integer or bool input holding a token mask (nonzero = a real token)
    shaped like the leading axes of the hidden states and outputs ([batch, seq, features], or
    [batch * seq, features] as torch.export flattens them); padding positions then count in
    neither loss nor validation cosine. "auto" picks an input named attention_mask if there
    is one; None counts every position.
    `cache_bytes`: how much of the teacher's values (hidden states and outputs, per batch)
    is kept for later epochs; batches past it run the teacher again when they come back.
    Embedding tables stay frozen unless `train_embeddings`. Progress shows on a TTY or
    when `progress=True`. Returns a DistillResult whose `.graph` is a new graph; `student`
    and `teacher` are not modified.
    """
    if steps < 1:
        raise UsageError(f"distill: steps must be at least 1, got {steps}")
    if output_loss not in ("auto", "mse+cos", "kl"):
        raise UsageError(
            f"distill: output_loss must be 'auto', 'mse+cos' or 'kl', not {output_loss!r}"
        )
    if not 0 <= warmup < 1:
        raise UsageError(f"distill: warmup is a fraction of the steps in [0, 1), got {warmup}")
    _check_compatible(student, teacher)
    train_data = check_batches(student, train_data, "distill: train_data")
    if validation_data is not None:
        validation_data = check_batches(student, validation_data, "distill: validation_data")
    if hidden_states == "auto":
        hidden = hidden_state_names(student, teacher)
    elif isinstance(hidden_states, str):
        raise UsageError(
            f"distill: hidden_states is 'auto' or a list of names, not {hidden_states!r}"
        )
    else:
        hidden = list(hidden_states)
        for name in hidden:
            if not (student.has_value(name) and teacher.has_value(name)):
                raise UsageError(
                    f"distill: hidden state {name!r} is not a value of both the student and the "
                    "teacher"
                )
    mask_name = mask_input(student, mask, "distill")
    outputs = [v.name for v in teacher.outputs if v.dtype.is_float]
    kinds = {
        v.name: ("kl" if _looks_like_logits(v) else "mse+cos")
        if output_loss == "auto"
        else output_loss
        for v in teacher.outputs
    }
    lr = 3e-4 if lr is None else lr
    show = sys.stderr.isatty() if progress is None else progress

    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        s_mod, t_mod = to_torch(student), to_torch(teacher)
        t_mod.requires_grad_(False)
        params = [
            p
            for name, p in s_mod.weights().items()
            if train_embeddings or s_mod.roles[name] != "embedding"
        ]
        for name, p in s_mod.weights().items():
            p.requires_grad_(train_embeddings or s_mod.roles[name] != "embedding")
        if not params:
            raise UsageError(f"distill: the student {student.name} has no trainable weights")
        cos_before = (
            _mean_cosines(s_mod, t_mod, validation_data, outputs, mask_name)
            if validation_data
            else {}
        )
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        warm = int(warmup * steps)

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        wanted = hidden + outputs
        cache: dict[int, dict[str, torch.Tensor]] = {}
        cached = 0
        order_rng = np.random.default_rng(seed)
        order: list[int] = []
        losses: list[float] = []
        bar = _progress_bar(steps, show)
        try:
            for _ in range(steps):
                if not order:
                    order = list(order_rng.permutation(len(train_data)))
                index = int(order.pop())
                batch = train_data[index]
                target = cache.get(index)
                if target is None:
                    with torch.no_grad():
                        target = t_mod.run(batch, wanted)
                    size = sum(t.numel() * t.element_size() for t in target.values())
                    if cached + size <= cache_bytes:
                        cache[index], cached = target, cached + size
                got = s_mod.run(batch, wanted)
                keep = token_mask(batch, mask_name)
                loss = torch.zeros(())
                if hidden:
                    h = sum(_nmse(_rows(got[n], keep), _rows(target[n], keep)) for n in hidden)
                    loss = loss + hidden_weight * h / len(hidden)
                for name in outputs:
                    s_rows, t_rows = _rows(got[name], keep), _rows(target[name], keep)
                    loss = loss + _output_loss(s_rows, t_rows, kinds[name], temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
        finally:
            if bar is not None:
                bar.close()
        cos_after = (
            _mean_cosines(s_mod, t_mod, validation_data, outputs, mask_name)
            if validation_data
            else {}
        )
        graph = s_mod.to_graph()
    verify(graph)
    return DistillResult(
        graph=graph,
        losses=losses,
        hidden_states=hidden,
        seconds=time.perf_counter() - start,
        cosine_before=cos_before,
        cosine_after=cos_after,
    )


def _progress_bar(steps: int, show: bool) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc="distill", unit="step", file=sys.stderr)
