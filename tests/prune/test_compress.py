"""ecograph.compress(): candidates pruned, scored on validation data by the reference
interpreter, compiled for x86 and kept only when faster (the timer is injected where the test
is about the decision, so it does not depend on this machine's timing)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from ecograph.errors import AccuracyError, InputError, UsageError
from ecograph.ir import Graph, GraphBuilder, interpret, verify
from ecograph.prune import PruningError
from ecograph.prune.compress import compress, is_faster
from ecograph.prune.passes import DropBlocks, transformer_blocks
from ecograph.report.green import GreenReport
from ecograph.report.measure import LatencyStats

D, HEADS, FFN = 16, 4, 16


def encoder(
    blocks: Sequence[int] = (0, 1, 2, 3), quiet: Sequence[int] = (), seed: int = 0
) -> Graph:
    """A pre-norm-free transformer stack: per block h += W_o·Attention(h W_q, h W_k, h W_v),
    then h += W_2 relu(h W_1); y = h W_out. Weights are drawn for 4 blocks whatever `blocks`
    keeps, so encoder((0, 2)) is encoder() without blocks 1 and 3. The branch outputs of
    blocks in `quiet` are scaled by 1e-3 (they barely turn the stream)."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (scale * rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    weights = []
    for i in range(4):
        s = 1e-3 if i in quiet else 1.0
        weights.append(
            {k: w(D, D) for k in ("q", "k", "v")}
            | {"o": w(D, D, scale=s), "1": w(D, FFN), "2": w(FFN, D, scale=s)}
        )
    w_out = w(D, 3)
    b = GraphBuilder("encoder")
    h = b.input("x", "float32", ["batch", 5, D])
    for i in blocks:
        p = weights[i]
        q, k, v = (b.op("MatMul", h, b.constant(p[n], f"w{n}_{i}")) for n in "qkv")
        a = b.op("Attention", q, k, v, q_num_heads=HEADS, kv_num_heads=HEADS)
        h = b.op("Add", h, b.op("MatMul", a, b.constant(p["o"], f"wo_{i}")), name=f"attn{i}")
        f = b.op("Relu", b.op("MatMul", h, b.constant(p["1"], f"w1_{i}")))
        h = b.op("Add", h, b.op("MatMul", f, b.constant(p["2"], f"w2_{i}")), name=f"ffn{i}")
    b.output(b.op("MatMul", h, b.constant(w_out, "w_out"), name="y"))
    return b.graph


def batches(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, 5, D)).astype(np.float32)} for _ in range(n)]


VALIDATION = batches(3, 1)
TRAIN = batches(4, 2)


def fake_timer(base_ms: float, ratio: float) -> tuple[Callable[..., LatencyStats], list[str]]:
    """A timer that gives the unpruned build `base_ms` and every candidate `ratio` of it,
    recording the labels it was asked for (it still runs the module once)."""
    asked: list[str] = []

    def measure(label: str, run: Callable[[], Any]) -> LatencyStats:
        run()
        asked.append(label)
        ms = base_ms if label == "unpruned" else base_ms * ratio
        return LatencyStats(ms, ms, ms, 1)

    return measure, asked


def mean_cos(graph: Graph, original: Graph, data: list[dict[str, np.ndarray]]) -> float:
    """Mean over batches of the cosine of y to the original's y (one output here)."""
    vals = []
    for feeds in data:
        a = interpret(graph, feeds)["y"].astype(np.float64).ravel()
        b = interpret(original, feeds)["y"].astype(np.float64).ravel()
        vals.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.mean(vals))


# ------------------------------------------------------------------ transformer blocks


def test_blocks_pair_attention_and_ffn_branches() -> None:
    blocks = transformer_blocks(encoder())
    assert [[g.name for g in blk] for blk in blocks] == [
        [f"layer:attn{i}", f"layer:ffn{i}"] for i in range(4)
    ]


def test_layers_half_drops_half_the_blocks_chosen_by_influence_exactly() -> None:
    """{"layers": 0.5} on 4 blocks drops 2 blocks (4 residual branches): the quiet ones."""
    graph = encoder(quiet=(1, 3))
    result = DropBlocks(ratio=0.5, calibration=TRAIN).run(graph)
    verify(graph)
    assert result.changed and result.stats == {"blocks_dropped": 2}
    assert len(graph.find_nodes("Attention")) == 2
    expected = encoder(blocks=(0, 2), quiet=(1, 3))
    for feeds in VALIDATION:
        np.testing.assert_array_equal(interpret(graph, feeds)["y"], interpret(expected, feeds)["y"])


def test_drop_blocks_ratio_zero_is_a_no_op() -> None:
    graph = encoder()
    before = interpret(graph, VALIDATION[0])["y"]
    assert not DropBlocks(ratio=0.0, calibration=TRAIN).run(graph).changed
    np.testing.assert_array_equal(interpret(graph, VALIDATION[0])["y"], before)


@pytest.mark.parametrize(
    ("ms", "base", "faster"), [(9.4, 10.0, True), (9.5, 10.0, False), (12.0, 10.0, False)]
)
def test_rollback_rule(ms: float, base: float, faster: bool) -> None:
    assert is_faster(ms, base, 0.95) is faster


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"prune": {"mlp": 0.5}}, UsageError, "'mlp'"),
        ({"prune": {"ffn": -0.1}}, UsageError, "ffn"),
        ({"prune": {"ffn": 1.0}}, PruningError, "ffn:"),
        ({"prune": {"layers": 1.0}}, PruningError, "layer:attn0"),
        ({"prune": {"channels": 0.3}}, PruningError, "channels"),
        ({"prune": "auto"}, UsageError, "accuracy_budget"),
        ({"prune": {"ffn": 0.5}, "distill": True}, UsageError, "train_data"),
        ({"prune": {"ffn": 0.5}, "metric": "mse"}, UsageError, "mse"),
        (
            {"prune": {"ffn": 0.5}, "validation_data": [{"z": VALIDATION[0]["x"]}]},
            InputError,
            "'z'",
        ),
        (
            {"prune": {"ffn": 0.5}, "validation_data": [{"x": np.zeros((2, 6, D), np.float32)}]},
            InputError,
            "'x' is float32[2, 6, 16]",
        ),
        (
            {"prune": {"ffn": 0.5}, "validation_data": [{"x": np.zeros((2, 5, D))}]},
            InputError,
            "'x' is float64",
        ),
        ({"prune": {"ffn": 0.5}, "validation_data": []}, UsageError, "validation_data"),
    ],
)
def test_bad_input_is_a_typed_error_naming_it(
    kwargs: dict[str, Any], error: type[Exception], names: str
) -> None:
    args: dict[str, Any] = {"validation_data": VALIDATION} | kwargs
    with pytest.raises(error, match=None) as info:
        compress(encoder(), measure=fake_timer(10.0, 0.5)[0], **args)
    assert names in str(info.value)


# ------------------------------------------------------------------- end to end (x86)


def test_explicit_ratios_faster_candidate_is_chosen() -> None:
    measure, asked = fake_timer(10.0, 0.5)
    original = encoder()
    result = compress(
        original, prune={"ffn": 0.5, "layers": 0.5}, validation_data=VALIDATION,
        train_data=TRAIN, measure=measure,
    )  # fmt: skip
    graph = result.graph
    verify(graph)
    assert asked == ["unpruned", "layers=0.5,ffn=0.5"]
    assert len(graph.find_nodes("Attention")) == 2  # 2 of 4 blocks dropped
    widths = sorted(c.shape for n in graph.find_nodes("MatMul") for c in [n.inputs[1]]
                    if c is not None and c.const_value is not None and c.shape[0] == D)  # fmt: skip
    assert widths.count((D, FFN // 2)) == 2  # the two remaining FFNs have half their units
    # the report's accuracy is the mean cosine to the original under the interpreter
    assert result.report.accuracy["cosine"] == pytest.approx(mean_cos(graph, original, VALIDATION))
    # the compiled module computes the pruned graph
    out = result.module(**VALIDATION[0])
    out = out[0] if isinstance(out, list | tuple) else out
    np.testing.assert_allclose(out, interpret(graph, VALIDATION[0])["y"], rtol=1e-4, atol=1e-4)
    rows = {c.label: c for c in result.report.candidates}
    assert rows["layers=0.5,ffn=0.5"].status == "chosen"
    assert rows["layers=0.5,ffn=0.5"].latency_ratio == pytest.approx(0.5)
    assert rows["unpruned"].status == "baseline"
    assert result.report.optimized.parameters < result.report.original.parameters


def test_explicit_ratios_not_faster_is_rolled_back() -> None:
    measure, _ = fake_timer(10.0, 0.97)
    original = encoder()
    result = compress(original, prune={"ffn": 0.5}, validation_data=VALIDATION, measure=measure)
    # the unpruned build comes back: same outputs as the original, exactly under the
    # interpreter up to the default pipeline's float reordering
    for feeds in VALIDATION:
        np.testing.assert_allclose(
            interpret(result.graph, feeds)["y"],
            interpret(original, feeds)["y"],
            rtol=1e-5,
            atol=1e-5,
        )
    assert result.report.optimized.parameters == result.report.original.parameters
    (row,) = [c for c in result.report.candidates if c.label == "ffn=0.5"]
    assert row.status == "rolled back" and "not measurably faster" in row.reason
    assert any("ROLLED BACK ffn=0.5" in n for n in result.report.notes)
    html = result.report.to_html()
    assert "Pruning candidates" in html and "(rolled back)" in html


def test_explicit_ratios_below_budget_raise_accuracy_error() -> None:
    measure, asked = fake_timer(10.0, 0.5)
    with pytest.raises(AccuracyError, match=r"ffn=0\.5"):
        compress(
            encoder(), prune={"ffn": 0.5}, validation_data=VALIDATION, accuracy_budget=0.99999,
            measure=measure,
        )  # fmt: skip
    assert asked == []  # rejected on accuracy before anything was compiled


def label_timer(label: str, run: Callable[[], Any]) -> LatencyStats:
    """A fake timer where pruning more of any kind is faster: 10 ms unpruned, times
    (1 - 0.5 layers)(1 - 0.3 ffn)(1 - 0.2 heads) read from the candidate's label."""
    run()
    ratios = {k: float(v) for k, v in (p.split("=") for p in label.split(",") if "=" in p)}
    ms = 10.0 * (1 - 0.5 * ratios.get("layers", 0)) * (1 - 0.3 * ratios.get("ffn", 0))
    ms *= 1 - 0.2 * ratios.get("heads", 0)
    return LatencyStats(ms, ms, ms, 1)


@pytest.mark.parametrize("budget", [0.98, 0.95])
def test_auto_picks_the_fastest_candidate_within_budget(budget: float) -> None:
    original = encoder(quiet=(1, 3))
    result = compress(
        original, prune="auto", validation_data=VALIDATION, train_data=TRAIN,
        accuracy_budget=budget, measure=label_timer,
    )  # fmt: skip
    rows = result.report.candidates
    print(result.report.table())
    held = [
        c for c in rows if c.status != "baseline" and c.cosine is not None and c.cosine >= budget
    ]
    assert any(c.ratios == {"layers": 0.5} for c in held), "the quiet blocks go within budget"
    (chosen,) = [c for c in rows if c.status == "chosen"]
    assert chosen.latency_ratio == min(c.latency_ratio or 1.0 for c in held)
    if budget == 0.95:  # FFN pruning holds too: the greedy step combines both kinds
        assert set(chosen.ratios) == {"layers", "ffn"}
    assert chosen.cosine is not None and chosen.cosine >= budget
    assert result.report.accuracy["cosine"] == pytest.approx(
        mean_cos(result.graph, original, VALIDATION)
    )
    assert all(c.status == "rejected" for c in rows if c.cosine is not None and c.cosine < budget)
    assert len(rows) <= 12
    again = GreenReport.from_dict(result.report.to_dict())
    assert again.candidates == rows


def test_auto_with_nothing_in_budget_raises_accuracy_error() -> None:
    measure, asked = fake_timer(10.0, 0.5)
    with pytest.raises(AccuracyError, match="no candidate holds accuracy_budget"):
        compress(
            encoder(), prune="auto", validation_data=VALIDATION, accuracy_budget=0.999999,
            measure=measure,
        )  # fmt: skip
    assert asked == []


def test_distill_runs_on_train_data() -> None:
    pytest.importorskip("ecograph.train.distill")
    measure, _ = fake_timer(10.0, 0.5)
    original = encoder()
    plain = compress(
        original, prune={"ffn": 0.5}, validation_data=VALIDATION, train_data=TRAIN,
        measure=measure, reconstruct=False,
    )  # fmt: skip
    distilled = compress(
        original, prune={"ffn": 0.5}, validation_data=VALIDATION, train_data=TRAIN,
        distill=True, distill_steps=100, measure=measure, reconstruct=False,
    )  # fmt: skip
    got = mean_cos(distilled.graph, original, VALIDATION)
    assert distilled.report.accuracy["cosine"] == pytest.approx(got)
    assert got > plain.report.accuracy["cosine"]


def test_reconstruct_refits_the_pruned_projections_on_train_data() -> None:
    measure, _ = fake_timer(10.0, 0.5)
    original = encoder()
    runs = {}
    for refit in (False, True):
        runs[refit] = compress(
            original, prune={"ffn": 0.5, "heads": 0.5}, validation_data=VALIDATION,
            train_data=TRAIN, measure=measure, reconstruct=refit,
        )  # fmt: skip
    cosine = {k: mean_cos(r.graph, original, VALIDATION) for k, r in runs.items()}
    assert cosine[True] > cosine[False]
    assert any("refit by least squares on train_data" in n for n in runs[True].report.notes)
    assert not any("refit" in n for n in runs[False].report.notes)


def test_without_train_data_nothing_is_refit_to_the_validation_data() -> None:
    measure, _ = fake_timer(10.0, 0.5)
    original = encoder()
    kwargs = {"prune": {"ffn": 0.5}, "validation_data": VALIDATION, "measure": measure}
    runs = [compress(original, **kwargs), compress(original, reconstruct=False, **kwargs)]
    for feeds in VALIDATION:
        np.testing.assert_array_equal(
            interpret(runs[0].graph, feeds)["y"], interpret(runs[1].graph, feeds)["y"]
        )
    assert any("no refit of the pruned projections" in n for n in runs[0].report.notes)


# ------------------------------------------------------------------------------ report


def test_report_candidates_section_and_old_reports_load() -> None:
    from ecograph.report.green import CandidateFacts, ModelFacts

    facts = ModelFacts(1000, 250, None, 10)
    rows = [
        CandidateFacts("unpruned", {}, 1.0, 10.0, 1.0, 1000, 250, "baseline", "the unpruned build"),
        CandidateFacts("ffn=0.5", {"ffn": 0.5}, 0.97, 8.0, 0.8, 800, 200, "chosen", "faster"),
        CandidateFacts("heads=0.25", {"heads": 0.25}, 0.99, 9.8, 0.98, 900, 225, "rolled back"),
        CandidateFacts("layers=0.5", {"layers": 0.5}, 0.5, None, None, 500, 125, "rejected"),
    ]
    report = GreenReport("m", "x86", facts, facts, candidates=rows)
    page = report.to_html()
    assert page.count("<svg") >= 2 and "Pruning candidates" in page
    assert "ffn=0.5 (chosen)" in page and "heads=0.25 (rolled back)" in page
    assert "not plotted (never timed): layers=0.5" in page  # no latency: left out, said so
    assert "rolled back" in report.table()
    assert GreenReport.from_dict(report.to_dict()).candidates == rows
    old = report.to_dict()
    del old["candidates"]  # a report written before compress() existed
    loaded = GreenReport.from_dict(old)
    assert loaded.candidates == [] and "Pruning candidates" not in loaded.to_html()


def test_layers_half_of_a_6_block_bert_drops_3_blocks() -> None:
    """{"layers": 0.5} on a 6-block post-norm BERT (torch.export, default pipeline) drops 3
    transformer blocks = 6 of its 12 residual branches: the 3 quiet ones, each with its two
    LayerNorms (a post-norm block's norms belong to it), so the pruned graph must match torch
    running the kept blocks only. The other blocks' norms have random scales and shifts, so
    a dropped block's norm left behind would show."""
    torch = pytest.importorskip("torch")
    from ecograph.api import capture
    from ecograph.passes import run_passes
    from ecograph.prune import layer_groups
    from tests.prune.torch_blocks import BertBlock

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(BertBlock() for _ in range(6)).eval()
    with torch.no_grad():
        for i in (1, 3, 5):  # quiet blocks: their branches barely turn the stream
            for p in (*blocks[i].o.parameters(), *blocks[i].fc2.parameters()):
                p.mul_(1e-3)
        for i in (0, 2, 4):
            for ln in (blocks[i].ln1, blocks[i].ln2):
                ln.weight.copy_(torch.rand_like(ln.weight) + 0.5)
                ln.bias.copy_(0.5 * torch.randn_like(ln.bias))

    class Stack(torch.nn.Module):
        def __init__(self, drop: tuple[int, ...] = ()) -> None:
            super().__init__()
            self.blocks, self.drop = blocks, drop

        def forward(self, x: Any) -> Any:
            for i, blk in enumerate(self.blocks):
                x = x if i in self.drop else blk(x)
            return x

    x = torch.randn(2, 8, 32)
    graph = capture(Stack(), (x,))
    run_passes(graph, "default")
    assert len(layer_groups(graph)) == 12 and len(transformer_blocks(graph)) == 6
    calibration = [{graph.inputs[0].name: torch.randn(2, 8, 32).numpy()} for _ in range(2)]
    DropBlocks(ratio=0.5, calibration=calibration).run(graph)
    verify(graph)
    assert len(graph.find_nodes("Attention")) == 3 and len(layer_groups(graph)) == 6
    (out,) = interpret(graph, {graph.inputs[0].name: x.numpy()}).values()
    with torch.no_grad():
        expected = Stack(drop=(1, 3, 5))(x).numpy()
        h = blocks[0](x)
        kept_norms = blocks[1].ln2(blocks[1].ln1(h))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # A dropped block's norms are not an identity here: keeping them would be caught.
    assert float((kept_norms - h).abs().max()) > 0.1


def test_a_ratio_that_removes_nothing_is_rolled_back_without_a_compile() -> None:
    measure, asked = fake_timer(10.0, 0.5)
    result = compress(encoder(), prune={"heads": 0.2}, validation_data=VALIDATION, measure=measure)
    assert asked == ["unpruned"]  # 0.2 of 4 heads rounds down to 0: nothing to compile
    (row,) = [c for c in result.report.candidates if c.label == "heads=0.2"]
    assert row.status == "rolled back" and "removes nothing" in row.reason
    assert any("ROLLED BACK heads=0.2" in n for n in result.report.notes)


def test_paired_ratio_interleaves_and_takes_the_median_round() -> None:
    """The default keep / roll back measurement: rounds alternate baseline then candidate,
    and one slow round (noise hitting either build) does not decide."""
    from ecograph.prune.compress import paired_ratio

    calls: list[str] = []
    script = iter([10.0, 5.0, 10.0, 5.0, 10.0, 50.0, 40.0, 5.0, 10.0, 5.0])  # ms, in order

    def measure(label: str, run: Callable[[], Any]) -> LatencyStats:
        run()
        calls.append(label)
        ms = next(script)
        return LatencyStats(ms, ms, ms, 1)

    ratio = paired_ratio(measure, ("unpruned", lambda: None), ("ffn=0.5", lambda: None), 5)
    assert calls == ["unpruned", "ffn=0.5"] * 5
    assert ratio == pytest.approx(0.5)  # rounds: 0.5, 0.5, 5.0, 0.125, 0.5
