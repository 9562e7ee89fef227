"""The green report: JSON plus a self-contained HTML page (inline CSS and SVG, no scripts,
no network) comparing the original and optimized model.

Runs compared: `original` (the captured graph built by the same backend without ecograph's
passes), `optimized`, and, when the model came from a framework, `framework` (torch eager or
ONNX Runtime: the model as its user runs it today). Charts mark an optimized value that is
worse (higher) than a baseline in red and say "worse" in words.

Every energy number carries its kind (`measured`, `estimated`, `unavailable`) and method; the
HTML prints them next to the number. gCO2e appears only when the user gives a carbon
intensity (g/kWh); nothing is looked up.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecograph.ir.stats import human_bytes
from ecograph.report.measure import EnergyReading, LatencyStats, grams_co2e
from ecograph.report.profile import Profile

if TYPE_CHECKING:
    from ecograph.ir.graph import Graph

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
PROFILE_ROWS = 15  # kernels shown in the text table (the HTML and JSON have all)


@dataclass
class ModelFacts:
    """Static facts of one version of the model."""

    bytes: int
    parameters: int
    flops: int | None
    nodes: int


@dataclass
class RunFacts:
    """Measured behaviour of one version of the model on one device."""

    device: str
    latency: LatencyStats | None = None
    energy: EnergyReading | None = None


@dataclass
class CandidateFacts:
    """One pruning candidate compress() tried: its ratios, mean cosine on the validation
    data, p50 latency (and its ratio to the unpruned build), size, and what became of it
    (`status`: baseline, chosen, passed, not kept, rolled back, rejected; `reason` says why)."""

    label: str
    ratios: dict[str, float]
    cosine: float | None
    latency_ms: float | None
    latency_ratio: float | None
    bytes: int
    parameters: int
    status: str
    reason: str = ""


@dataclass
class WeightStage:
    """The weights' bytes after one stage that actually ran (as captured, pruned, quantized
    or palettized, stored on disk with or without entropy coding); `detail` says how."""

    stage: str
    bytes: int
    detail: str = ""


@dataclass
class GreenReport:
    model: str
    target: str
    original: ModelFacts
    optimized: ModelFacts
    machine: dict[str, Any] = field(default_factory=dict)
    original_run: RunFacts | None = None
    optimized_run: RunFacts | None = None
    accuracy: dict[str, Any] = field(default_factory=dict)
    passes: list[dict[str, Any]] = field(default_factory=list)
    carbon_intensity_g_per_kwh: float | None = None
    notes: list[str] = field(default_factory=list)
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    )
    profile: Profile | None = None  # per-kernel profile of the optimized build, when asked for
    # The source framework as a baseline: its name ("torch eager", "ONNX Runtime"), how it ran
    # (version, device, provider) and its measured run; "" / None when there is none.
    framework: str = ""
    framework_detail: str = ""
    framework_run: RunFacts | None = None
    # compress(): the pruning candidates tried (empty for optimize())
    candidates: list[CandidateFacts] = field(default_factory=list)
    # the weights through the stages that ran, first row the captured model (weight_stages)
    weights: list[WeightStage] = field(default_factory=list)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("original_run", "optimized_run", "framework_run"):
            run = getattr(self, key)
            if run is not None and run.energy is not None:
                out[key]["energy"]["gco2e"] = grams_co2e(
                    run.energy.joules, self.carbon_intensity_g_per_kwh
                )
        out["profile"] = self.profile.to_dict() if self.profile is not None else None
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GreenReport:
        def run(d: dict[str, Any] | None) -> RunFacts | None:
            if d is None:
                return None
            lat = LatencyStats(**d["latency"]) if d.get("latency") else None
            en = d.get("energy")
            energy = (
                EnergyReading(en["joules"], en["kind"], en["method"]) if en is not None else None
            )
            return RunFacts(d["device"], lat, energy)

        return cls(
            model=data["model"],
            target=data["target"],
            original=ModelFacts(**data["original"]),
            optimized=ModelFacts(**data["optimized"]),
            machine=data.get("machine", {}),
            original_run=run(data.get("original_run")),
            optimized_run=run(data.get("optimized_run")),
            accuracy=data.get("accuracy", {}),
            passes=data.get("passes", []),
            carbon_intensity_g_per_kwh=data.get("carbon_intensity_g_per_kwh"),
            notes=data.get("notes", []),
            created=data.get("created", ""),
            profile=Profile.from_dict(data["profile"]) if data.get("profile") else None,
            framework=data.get("framework", ""),
            framework_detail=data.get("framework_detail", ""),
            framework_run=run(data.get("framework_run")),
            candidates=[CandidateFacts(**c) for c in data.get("candidates", [])],
            weights=[WeightStage(**w) for w in data.get("weights", [])],
        )

    # ----------------------------------------------------------------- table

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(metric, original, optimized, ratio) rows for terminals and the HTML table."""
        o, n = self.original, self.optimized
        rows = [
            ("model bytes", _bytes(o.bytes), _bytes(n.bytes), _ratio(n.bytes, o.bytes)),
            (
                "parameters",
                f"{o.parameters:,}",
                f"{n.parameters:,}",
                _ratio(n.parameters, o.parameters),
            ),
            ("FLOPs", _num(o.flops), _num(n.flops), _ratio(n.flops, o.flops)),
            ("nodes", str(o.nodes), str(n.nodes), _ratio(n.nodes, o.nodes)),
        ]
        lo = self.original_run.latency if self.original_run else None
        ln = self.optimized_run.latency if self.optimized_run else None
        if lo or ln:
            rows.append(
                (
                    "latency p50 (ms)",
                    _ms(lo and lo.p50_ms),
                    _ms(ln and ln.p50_ms),
                    _ratio(ln and ln.p50_ms, lo and lo.p50_ms),
                )
            )
            rows.append(
                (
                    "latency p90 (ms)",
                    _ms(lo and lo.p90_ms),
                    _ms(ln and ln.p90_ms),
                    _ratio(ln and ln.p90_ms, lo and lo.p90_ms),
                )
            )
        eo = self.original_run.energy if self.original_run else None
        en = self.optimized_run.energy if self.optimized_run else None
        if eo or en:
            rows.append(_energy_row(eo, en))
            if self.carbon_intensity_g_per_kwh is not None:
                co, cn = (
                    grams_co2e(e.joules if e else None, self.carbon_intensity_g_per_kwh)
                    for e in (eo, en)
                )
                rows.append(
                    (
                        "gCO2e / 1M inferences",
                        _num(co and co * 1e6, 3),
                        _num(cn and cn * 1e6, 3),
                        _ratio(cn, co),
                    )
                )
        for key, value in self.accuracy.items():
            rows.append((f"accuracy: {key}", "reference", _num(value, 6), ""))
        return rows

    def framework_rows(self) -> list[tuple[str, str, str, str]]:
        """(metric, framework, optimized, ratio) rows against the source framework (torch
        eager or ONNX Runtime); empty when there is no framework run."""
        f, n = self.framework_run, self.optimized_run
        if f is None or n is None:
            return []
        rows = []
        lf, ln = f.latency, n.latency
        if lf and ln:
            rows.append(
                ("latency p50 (ms)", _ms(lf.p50_ms), _ms(ln.p50_ms), _ratio(ln.p50_ms, lf.p50_ms))
            )
            rows.append(
                ("latency p90 (ms)", _ms(lf.p90_ms), _ms(ln.p90_ms), _ratio(ln.p90_ms, lf.p90_ms))
            )
        ef, en = f.energy, n.energy
        if ef or en:
            rows.append(_energy_row(ef, en))
        return rows

    def table(self) -> str:
        lines = _text_table([("metric", "original", "optimized", "ratio"), *self.rows()])
        if self.weights:
            lines += ["", "weights, stage by stage:"]
            lines += _text_table_n(_weight_rows(self.weights))
        framework = self.framework_rows()
        if framework:
            lines += ["", f"against {self.framework} ({self.framework_detail}):"]
            lines += _text_table([("metric", self.framework, "optimized", "ratio"), *framework])
        if self.candidates:
            lines += ["", "pruning candidates:"]
            lines += _text_table_n(_candidate_rows(self.candidates))
        if self.profile is not None:
            lines += ["", "where the time goes (optimized build, per kernel):"]
            lines.append(self.profile.table(limit=PROFILE_ROWS))
        return "\n".join(lines)

    # ------------------------------------------------------------------ HTML

    def to_html(self) -> str:
        esc = html.escape
        o, n = self.original, self.optimized
        # (title, [(baseline label, value)], optimized value, format)
        bars: list[tuple[str, Sequence[tuple[str, float | None]], float | None, Any]] = [
            ("Model bytes", [("original", o.bytes)], n.bytes, _bytes),
            ("Parameters", [("original", o.parameters)], n.parameters, lambda v: f"{v:,}"),
            ("FLOPs", [("original", o.flops)], n.flops, _num),
        ]
        fw = self.framework or "framework"
        runs = [(fw, self.framework_run), ("original", self.original_run)]
        ln = self.optimized_run.latency if self.optimized_run else None
        if ln:
            for label, pick in (("p50", lambda s: s.p50_ms), ("p90", lambda s: s.p90_ms)):
                base = [(name, pick(r.latency)) for name, r in runs if r and r.latency]
                if base:
                    bars.append((f"Latency {label} (ms)", base, pick(ln), _ms))
        en = self.optimized_run.energy if self.optimized_run else None
        if en and en.joules is not None:
            base = [
                (name, r.energy.joules * 1e3)
                for name, r in runs
                if r and r.energy and r.energy.joules is not None and r.energy.kind == en.kind
            ]
            if base:
                bars.append((f"Energy / inference (mJ, {en.kind})", base, en.joules * 1e3, _mj))
        charts = "\n".join(
            _bar_chart(t, [(lbl, v) for lbl, v in base if v is not None], after, fmt)
            for t, base, after, fmt in bars
            if any(v is not None for _, v in base)
        )
        table_rows = _html_rows(self.rows())
        framework_rows = self.framework_rows()
        framework_table = ""
        if framework_rows:
            framework_table = (
                f"<h2>Against {esc(self.framework)} (the model as you run it today)</h2>\n"
                f'<p class="meta">{esc(self.framework_detail)}</p>\n'
                f"<table><tr><th>metric</th><th>{esc(self.framework)}</th><th>optimized</th>"
                f"<th>ratio</th></tr>\n{_html_rows(framework_rows)}\n</table>\n"
            )
        eo = self.original_run.energy if self.original_run else None
        ef = self.framework_run.energy if self.framework_run else None
        energy_notes = "".join(
            f"<li><b>{esc(label)}</b>: {esc(e.label())}</li>"
            for label, e in ((fw, ef), ("original", eo), ("optimized", en))
            if e is not None
        )
        pass_rows = "\n".join(
            "<tr>"
            + "".join(
                f"<td>{esc(str(p.get(k, '')))}</td>"
                for k in ("name", "changed", "nodes_before", "nodes_after", "param_bytes")
            )
            + f"<td>{float(p.get('seconds', 0.0)) * 1e3:.1f}</td></tr>"
            for p in self.passes
        )
        ledger_chart = _ledger_chart(self.passes) if self.passes else ""
        notes = "".join(f"<li>{esc(x)}</li>" for x in self.notes)
        machine = ", ".join(f"{esc(str(k))}: {esc(str(v))}" for k, v in self.machine.items())
        return _PAGE.format(
            title=esc(f"ecograph report: {self.model} for {self.target}"),
            model=esc(self.model),
            target=esc(self.target),
            created=esc(self.created),
            machine=machine or "not recorded",
            charts=charts,
            table_rows=table_rows,
            framework_table=framework_table,
            energy_notes=energy_notes or "<li>no energy measured</li>",
            carbon=esc(
                f"{self.carbon_intensity_g_per_kwh:g} g/kWh (given by the user)"
                if self.carbon_intensity_g_per_kwh is not None
                else "not given: gCO2e not computed"
            ),
            ledger_chart=ledger_chart,
            pass_rows=pass_rows or "<tr><td colspan=6>no passes recorded</td></tr>",
            notes=notes or "<li>none</li>",
            profile=_profile_section(self.profile) if self.profile is not None else "",
            candidates=_candidates_section(self.candidates) if self.candidates else "",
            weights=_weights_section(self.weights) if self.weights else "",
        )

    def write(self, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write report.json and report.html into `out_dir` (atomically); return both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, text in ((REPORT_JSON, self.to_json()), (REPORT_HTML, self.to_html())):
            path = out / name
            tmp = out / f".{name}.tmp{os.getpid()}"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
            paths.append(path)
        return paths[0], paths[1]


def weight_stages(
    original: Graph,
    optimized: Graph,
    records: Sequence[Any] = (),
    quantization: str = "",
    artifact: str | os.PathLike[str] | None = None,
) -> list[WeightStage]:
    """The weights' bytes through the stages that ran, for the report's size table: as
    captured (`_captured_stage`), pruned (when a pruning pass changed the graph; `records`
    are the PassManager's), quantized or palettized (when a quantizing pass did), then the
    artifact's params file on disk, entropy-coded or not (when the weights are kept out of
    lib.so). Graph bytes count int4 at 4 bits, as `graph_stats` does."""
    from ecograph.passes.registry import registered_passes
    from ecograph.quant import QUANTIZING_PASSES

    passes = registered_passes()

    def is_pruning(name: str) -> bool:
        cls = passes.get(name)
        return cls is not None and cls.__module__.startswith("ecograph.prune")

    stages = [_captured_stage(original)]
    pruned = [r for r in records if r.changed and is_pruning(r.pass_name)]
    quantized = any(r.changed and r.pass_name in QUANTIZING_PASSES for r in records)
    final = _graph_weight_bytes(optimized)
    if pruned:
        last = pruned[-1]
        after = final if not quantized else int(last.param_bytes_after or 0)
        names = ", ".join(sorted({r.pass_name for r in pruned}))
        stages.append(WeightStage("pruned", after, names))
    if quantized:
        label = "palettized" if "palette" in quantization else "quantized"
        stages.append(WeightStage(label, final, quantization))
    if artifact is not None:
        stored = _stored_weights(Path(artifact))
        if stored is not None:
            stages.append(stored)
    return stages


def _captured_stage(graph: Graph) -> WeightStage:
    """The first row: "fp32, as captured" when every float weight is float32 and none is
    already quantized (8 bits or fewer: a model ONNX Runtime's tools quantized arrives with
    int8 weights and float32 scales), else "as captured"; the detail gives each element
    type's share of the bytes (those under 1 % left out)."""
    by_dtype: dict[str, int] = {}
    fp32 = True
    for v in graph.constants.values():
        dtype = v.dtype
        if (dtype.is_float and dtype.value != "float32") or (
            dtype.is_integer and dtype.bitwidth <= 8
        ):
            fp32 = False
        by_dtype[dtype.value] = by_dtype.get(dtype.value, 0) + int(v.type.nbytes() or 0)
    total = sum(by_dtype.values())
    shares = [
        (n, b)
        for n, b in sorted(by_dtype.items(), key=lambda kv: (-kv[1], kv[0]))
        if b * 100 >= total
    ]
    if len(shares) > 1:
        detail = ", ".join(f"{n} {100 * b / total:.0f} %" for n, b in shares)
    else:
        detail = ", ".join(n for n, _ in shares)
    return WeightStage("fp32, as captured" if fp32 else "as captured", total, detail)


def _graph_weight_bytes(graph: Graph) -> int:
    return int(sum(v.type.nbytes() or 0 for v in graph.constants.values()))


def _stored_weights(folder: Path) -> WeightStage | None:
    """The params file of an artifact this process just wrote, as a stage; None when the
    weights are inside lib.so (no params file) or the manifest cannot be read."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        params = manifest.get("params") or {}
        name = params.get("file")
        size = (folder / name).stat().st_size if isinstance(name, str) else None
    except (OSError, ValueError, AttributeError):
        return None
    if size is None:
        return None
    codec = params.get("codec", "none")
    count = len(params.get("names") or [])
    if codec == "none":
        return WeightStage(
            "on disk, not entropy-coded", size, f"{name}: {count} arrays as the library takes them"
        )
    raw = params.get("raw_bytes")
    before = f" from {human_bytes(raw)} as the library takes them" if isinstance(raw, int) else ""
    return WeightStage(f"entropy-coded on disk ({codec})", size, f"{name}: {count} arrays{before}")


def _weight_rows(stages: Sequence[WeightStage]) -> list[tuple[str, ...]]:
    """(stage, bytes, ratio to the first stage, detail) rows of the weights table."""
    base = stages[0].bytes if stages else 0
    rows: list[tuple[str, ...]] = [("stage", "bytes", "vs first", "how")]
    for w in stages:
        rows.append(
            (w.stage, f"{_bytes(w.bytes)} ({w.bytes:,} B)", _ratio(w.bytes, base), w.detail)
        )
    return rows


def _weights_section(stages: Sequence[WeightStage]) -> str:
    esc = html.escape
    head, *rows = _weight_rows(stages)
    body = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (
        "<h2>Weights, stage by stage</h2>\n"
        '<p class="meta">only stages that ran; bytes of the graph\'s constants (int4 at 4 bits), '
        "then of the artifact's params file on disk</p>\n"
        "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + f"</tr>\n{body}\n</table>\n"
    )


def _text_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def read_report(result_dir: str | os.PathLike[str]) -> GreenReport:
    path = Path(result_dir) / REPORT_JSON
    if not path.is_file():
        from ecograph.errors import EcographError

        raise EcographError(f"{path} does not exist; pass a folder written by optimize().save()")
    return GreenReport.from_dict(json.loads(path.read_text(encoding="utf-8")))


# ------------------------------------------------------------------ formatting


def _bytes(n: float | None) -> str:
    return "n/a" if n is None else human_bytes(int(n))


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "n/a"
    if digits == 0 and float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:.{digits or 3}g}" if abs(v) < 1e-3 and v != 0 else f"{v:,.{digits or 3}f}"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ratio(new: float | None, old: float | None) -> str:
    if new is None or old is None or old == 0:
        return "n/a"
    return f"{new / old:.3f}x"


def _energy_row(base: EnergyReading | None, new: EnergyReading | None) -> tuple[str, str, str, str]:
    """The energy row against a baseline; energies of different kinds are never compared."""
    if base is not None and new is not None and base.kind == new.kind:
        ratio = _ratio(new.joules, base.joules)
    else:
        ratio = "n/a"
    return ("energy / inference", _energy(base), _energy(new), ratio)


def _energy(e: EnergyReading | None) -> str:
    if e is None or e.joules is None:
        return "unavailable"
    return f"{e.joules * 1e3:.3f} mJ ({e.kind})"


def _bar_chart(
    title: str, baselines: list[tuple[str, float]], after: float | None, fmt: Any
) -> str:
    """Horizontal bars: each baseline, then the optimized value; lower is better for every
    metric charted, so an optimized bar above any baseline is drawn in the "worse" class and
    its label says "worse than <baseline>" in words (not only in colour)."""
    esc = html.escape
    top = max([v for _, v in baselines] + [after or 0.0]) or 1.0
    width = 360
    worse_than = [lbl for lbl, v in baselines if after is not None and after > v]
    series = [(lbl, v, "base", "") for lbl, v in baselines]
    if after is not None:
        verdict = f" (worse than {', '.join(worse_than)})" if worse_than else ""
        series.append(("optimized", after, "worse" if worse_than else "better", verdict))
    rows = []
    for i, (label, value, cls, verdict) in enumerate(series):
        w = max(1.0, width * value / top)
        y = 8 + i * 30
        rows.append(
            f'<text x="0" y="{y + 15}" class="lbl">{esc(label)}</text>'
            f'<rect x="110" y="{y}" width="{w:.1f}" height="22" class="{cls}"/>'
            f'<text x="{110 + w + 6:.1f}" y="{y + 15}" class="val{" worse" if verdict else ""}">'
            f"{esc(fmt(value) + verdict)}</text>"
        )
    height = 16 + 30 * len(series)
    caption = title + (" \u2014 optimized is worse" if worse_than else "")
    return (
        f'<figure class="{"worse" if worse_than else "chart"}"><figcaption>{esc(caption)}'
        f'</figcaption><svg width="760" height="{height}" role="img" aria-label="{esc(caption)}">'
        + "".join(rows)
        + "</svg></figure>"
    )


def _html_rows(rows: list[tuple[str, str, str, str]]) -> str:
    """Table rows; a ratio above 1 (the optimized value is higher, i.e. worse) is marked."""
    out = []
    for metric, before, after, ratio in rows:
        cells = [f"<td>{html.escape(c)}</td>" for c in (metric, before, after)]
        if _is_worse(ratio):
            cells.append(f'<td class="worse">{html.escape(ratio)} (worse)</td>')
        else:
            cells.append(f"<td>{html.escape(ratio)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out)


def _is_worse(ratio: str) -> bool:
    """True for a ratio cell ("1.250x") above 1: every ratio in the tables is new / old of a
    metric where lower is better (bytes, FLOPs, nodes, latency, energy, gCO2e)."""
    if not ratio.endswith("x"):
        return False
    try:
        return float(ratio[:-1]) > 1.0
    except ValueError:
        return False


def _mj(v: float) -> str:
    return f"{v:.3f}"


def _ledger_chart(passes: list[dict[str, Any]]) -> str:
    counts = [int(p.get("nodes_after", 0)) for p in passes]
    if not counts:
        return ""
    top = max([int(passes[0].get("nodes_before", 0)), *counts]) or 1
    bar_w = max(6, min(40, 600 // (len(counts) + 1)))
    parts = []
    series = [("start", int(passes[0].get("nodes_before", 0)))] + [
        (str(p.get("name", "")), c) for p, c in zip(passes, counts, strict=True)
    ]
    for i, (name, c) in enumerate(series):
        h = 120 * c / top
        x = 10 + i * (bar_w + 4)
        parts.append(
            f'<rect x="{x}" y="{130 - h:.1f}" width="{bar_w}" height="{h:.1f}" fill="#1565c0">'
            f"<title>{html.escape(name)}: {c} nodes</title></rect>"
        )
    width = 20 + len(series) * (bar_w + 4)
    return (
        "<figure><figcaption>Node count after each pass</figcaption>"
        f'<svg width="{width}" height="140" role="img" aria-label="node counts">'
        + "".join(parts)
        + "</svg></figure>"
    )


CANDIDATE_HEADER = ("candidate", "status", "cosine", "p50 ms", "vs unpruned", "bytes", "why")


def _candidate_rows(candidates: Sequence[CandidateFacts]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [CANDIDATE_HEADER]
    for c in candidates:
        rows.append(
            (
                c.label,
                c.status,
                _num(c.cosine, 4),
                _ms(c.latency_ms),
                "n/a" if c.latency_ratio is None else f"{c.latency_ratio:.3f}x",
                _bytes(c.bytes),
                c.reason,
            )
        )
    return rows


def _text_table_n(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _candidates_section(candidates: Sequence[CandidateFacts]) -> str:
    """ "Pruning candidates": accuracy against latency and against size, one point per
    candidate (the chosen one ringed, a rolled-back one crossed), and the table."""
    esc = html.escape
    rows = []
    for cells, c in zip(_candidate_rows(candidates)[1:], candidates, strict=True):
        cls = c.status.replace(" ", "-")
        rows.append(
            f'<tr class="{esc(cls)}">' + "".join(f"<td>{esc(x)}</td>" for x in cells) + "</tr>"
        )
    header = "".join(f"<th>{esc(h)}</th>" for h in CANDIDATE_HEADER)
    latency = _scatter(
        "Accuracy (mean cosine) against latency p50 (ms)",
        [(c, c.latency_ms) for c in candidates],
        _ms,
        "latency p50 (ms)",
    )
    size = _scatter(
        "Accuracy (mean cosine) against model bytes",
        [(c, float(c.bytes)) for c in candidates],
        _bytes,
        "model bytes",
    )
    return (
        "<h2>Pruning candidates</h2>\n"
        '<p class="meta">each candidate pruned, scored on the validation data and, when it '
        "held the budget, compiled and timed; chosen: ringed green; rolled back (not faster "
        "than the unpruned build): red cross; rejected (missed the budget): orange</p>\n"
        f"{latency}\n{size}\n"
        f"<table><tr>{header}</tr>\n" + "\n".join(rows) + "\n</table>\n"
    )


def _scatter(
    title: str, points: Sequence[tuple[CandidateFacts, float | None]], fmt: Any, axis: str
) -> str:
    """An SVG scatter: x the metric (lower is better), y the mean cosine; points without
    either value are left out (a rejected candidate was never timed) and listed below."""
    esc = html.escape
    shown = [(c, x) for c, x in points if x is not None and c.cosine is not None]
    left = [c.label for c, x in points if x is None or c.cosine is None]
    if not shown:
        return ""
    w, h, pad = 560, 260, 48
    xs = [x for _, x in shown]
    ys = [float(c.cosine) for c, _ in shown if c.cosine is not None]
    x0, x1 = min(0.0, min(xs)), max(xs) * 1.05 or 1.0
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-6:
        y0, y1 = y0 - 0.01, y1 + 0.01
    y0, y1 = y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0)

    def px(x: float) -> float:
        return pad + (w - 2 * pad) * (x - x0) / ((x1 - x0) or 1.0)

    def py(y: float) -> float:
        return h - pad + (2 * pad - h) * (y - y0) / ((y1 - y0) or 1.0)

    parts = [
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#555"/>',
        f'<line x1="{pad}" y1="{pad / 2}" x2="{pad}" y2="{h - pad}" stroke="#555"/>',
        f'<text x="{pad}" y="{h - pad + 16}" class="lbl">{esc(fmt(x0))}</text>',
        f'<text x="{w - pad}" y="{h - pad + 16}" class="lbl" text-anchor="end">'
        f"{esc(fmt(x1))}</text>",
        f'<text x="{w / 2:.0f}" y="{h - pad + 30}" class="lbl" text-anchor="middle">'
        f"{esc(axis)} (lower is better)</text>",
        f'<text x="4" y="{pad / 2 - 6}" class="lbl">mean cosine (higher is better)</text>',
        f'<text x="{pad - 4}" y="{py(y0):.1f}" class="lbl" text-anchor="end">{y0:.3f}</text>',
        f'<text x="{pad - 4}" y="{py(y1) + 10:.1f}" class="lbl" text-anchor="end">{y1:.3f}</text>',
    ]
    for c, x in shown:
        assert c.cosine is not None
        cx, cy = px(x), py(float(c.cosine))
        cls = c.status.replace(" ", "-")
        tip = f"{c.label}: {c.status}, cosine {c.cosine:.4f}, {fmt(x)}"
        r = 7 if c.status == "chosen" else 5
        parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" class="{esc(cls)}">'
            f"<title>{esc(tip)}</title></circle>"
        )
        if c.status == "rolled back":
            parts.append(
                f'<path d="M{cx - 6:.1f},{cy - 6:.1f}L{cx + 6:.1f},{cy + 6:.1f}'
                f'M{cx - 6:.1f},{cy + 6:.1f}L{cx + 6:.1f},{cy - 6:.1f}" class="rolled-back"/>'
            )
        parts.append(
            f'<text x="{cx + 9:.1f}" y="{cy + 4:.1f}" class="lbl">{esc(c.label)}'
            f"{' (chosen)' if c.status == 'chosen' else ''}"
            f"{' (rolled back)' if c.status == 'rolled back' else ''}</text>"
        )
    note = f'<p class="meta">not plotted (never timed): {esc(", ".join(left))}</p>' if left else ""
    return (
        f"<figure><figcaption>{esc(title)}</figcaption>"
        f'<svg width="{w + 160}" height="{h}" role="img" aria-label="{esc(title)}">'
        + "".join(parts)
        + f"</svg>{note}</figure>"
    )


def _profile_section(profile: Profile) -> str:
    """The "Where the time goes" section: one row per kernel, unscheduled rows highlighted."""
    esc = html.escape
    rows = []
    for r in profile.rows:
        mark = ' class="unscheduled"' if r.unscheduled else ""
        rule = "unscheduled (no rule applied)" if r.unscheduled else r.rule
        rows.append(
            f"<tr{mark}><td>{esc(r.kernel)}</td><td>{esc(rule)}</td>"
            f'<td class="num">{r.calls}</td><td class="num">{r.ms:.4f}</td>'
            f'<td class="num">{r.median_ms:.4f}</td><td class="num">{100 * r.share:.1f} %</td>'
            f'<td><span class="bar" style="width: {max(1.0, 200 * r.share):.0f}px"></span></td>'
            "</tr>"
        )
    summary = "".join(f"<li>{esc(line)}</li>" for line in profile.summary())
    return (
        "<h2>Where the time goes (optimized build, per kernel)</h2>\n"
        f"<ul>{summary}</ul>\n"
        "<table><tr><th>kernel</th><th>rule</th><th>calls</th><th>ms / inference</th>"
        "<th>median ms</th><th>share</th><th></th></tr>\n" + "\n".join(rows) + "\n</table>\n"
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 980px; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
th {{ background: #f0f0f0; text-align: left; }}
figure {{ margin: 8px 0; }} figcaption {{ font-weight: 600; margin-bottom: 2px; }}
.lbl {{ font-size: 12px; fill: #333; }} .val {{ font-size: 12px; fill: #111; }}
rect.base {{ fill: #8c8c8c; }} rect.better {{ fill: #2e7d32; }} rect.worse {{ fill: #c62828; }}
text.worse {{ fill: #c62828; font-weight: 600; }} td.worse {{ color: #c62828; font-weight: 600; }}
.meta {{ color: #555; font-size: 13px; }}
td.num {{ text-align: right; }} tr.unscheduled td {{ background: #fff3e0; }}
.bar {{ display: inline-block; height: 10px; background: #1565c0; }}
circle.baseline {{ fill: #8c8c8c; }} circle.chosen {{ fill: #2e7d32; stroke: #111; }}
circle.passed, circle.not-kept {{ fill: #1565c0; }} circle.rejected {{ fill: #ef6c00; }}
path.rolled-back {{ stroke: #c62828; stroke-width: 2; }} tr.chosen td {{ background: #e8f5e9; }}
tr.rolled-back td {{ background: #ffebee; }}
tr.unscheduled .bar {{ background: #e65100; }}
</style></head><body>
<h1>{title}</h1>
<p class="meta">model <b>{model}</b> &middot; target <b>{target}</b> &middot; {created}<br>
machine: {machine}</p>
<h2>Summary</h2>
<table><tr><th>metric</th><th>original</th><th>optimized</th><th>ratio</th></tr>
{table_rows}
</table>
{weights}{framework_table}{candidates}<h2>Charts</h2>
{charts}
<h2>Energy: how it was obtained</h2>
<ul>{energy_notes}</ul>
<p class="meta">carbon intensity: {carbon}</p>
<h2>Per-pass ledger</h2>
{ledger_chart}
<table><tr><th>pass</th><th>changed</th><th>nodes before</th><th>nodes after</th>
<th>parameter bytes</th><th>time (ms)</th></tr>
{pass_rows}
</table>
{profile}<h2>Notes</h2>
<ul>{notes}</ul>
</body></html>
"""
