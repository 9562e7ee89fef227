"""The green report: honest labels, JSON round trip, and an HTML page a browser renders."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from ecograph.report.green import GreenReport, ModelFacts, RunFacts, read_report
from ecograph.report.measure import (
    EnergyReading,
    LatencyStats,
    grams_co2e,
    measure_energy,
    measure_latency,
)


def sample_report(**overrides) -> GreenReport:
    lat_o = LatencyStats(p50_ms=10.0, p90_ms=12.0, mean_ms=10.5, runs=20)
    lat_n = LatencyStats(p50_ms=4.0, p90_ms=5.0, mean_ms=4.2, runs=20)
    fields = dict(
        model="encoder_block",
        target="x86",
        original=ModelFacts(bytes=132_000, parameters=33_000, flops=1_114_112, nodes=30),
        optimized=ModelFacts(bytes=34_000, parameters=33_000, flops=1_114_112, nodes=12),
        machine={"cpu": "test cpu", "cores": 2},
        original_run=RunFacts("cpu", lat_o, EnergyReading(0.5, "estimated", "p50 x 50 W")),
        optimized_run=RunFacts("cpu", lat_n, EnergyReading(0.2, "estimated", "p50 x 50 W")),
        accuracy={"max_abs_error": 0.0123, "cosine": 0.9991},
        passes=[
            {
                "name": "cleanup",
                "changed": True,
                "nodes_before": 30,
                "nodes_after": 20,
                "param_bytes": 132_000,
                "seconds": 0.01,
            },
            {
                "name": "quantize",
                "changed": True,
                "nodes_before": 20,
                "nodes_after": 12,
                "param_bytes": 34_000,
                "seconds": 0.02,
            },
        ],
        carbon_intensity_g_per_kwh=400.0,
    )
    fields.update(overrides)
    return GreenReport(**fields)


def test_json_round_trip_and_labels(tmp_path):
    r = sample_report()
    json_path, html_path = r.write(tmp_path)
    data = json.loads(json_path.read_text())
    assert data["optimized_run"]["energy"]["kind"] == "estimated"
    assert data["optimized_run"]["energy"]["gco2e"] == pytest.approx(0.2 / 3.6e6 * 400)
    back = read_report(tmp_path)
    assert back.to_dict() == r.to_dict()
    table = r.table()
    assert "0.400x" in table  # latency p50 ratio 4/10
    assert "(estimated)" in table
    page = html_path.read_text()
    assert "estimated: p50 x 50 W" in page and "<svg" in page and "<script" not in page


def test_mixed_energy_kinds_are_not_compared():
    r = sample_report(
        original_run=RunFacts("cpu", None, EnergyReading(0.5, "measured", "RAPL")),
        optimized_run=RunFacts("cpu", None, EnergyReading(0.2, "estimated", "x W")),
    )
    row = next(row for row in r.rows() if row[0] == "energy / inference")
    assert row[3] == "n/a"


def test_no_carbon_without_a_given_intensity():
    r = sample_report(carbon_intensity_g_per_kwh=None)
    assert not any(row[0].startswith("gCO2e") for row in r.rows())
    assert r.to_dict()["optimized_run"]["energy"]["gco2e"] is None
    assert grams_co2e(3.6e6, 100.0) == pytest.approx(100.0)


def test_energy_is_estimated_or_unavailable_without_counters():
    lat = measure_latency(lambda: np.ones(10).sum(), warmup=1, repeat=5)
    assert lat.runs >= 5 and lat.p50_ms <= lat.p90_ms
    reading = measure_energy(lambda: None, device="cuda:0", latency=lat)
    if reading.kind == "measured":  # only on a machine with an NVML counter
        assert reading.joules is not None and reading.joules >= 0
    else:
        assert reading.kind == "unavailable" and reading.joules is None
        est = measure_energy(lambda: None, device="cuda:0", latency=lat, declared_power_watts=50)
        assert est.kind == "estimated"
        assert est.joules == pytest.approx(50 * lat.p50_ms / 1e3)
        assert "declared power 50 W" in est.method


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian package chromium is not installed")
def test_html_renders_in_headless_chromium(tmp_path):
    _, html_path = sample_report().write(tmp_path)
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1000,1400",
        html_path.as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    import zlib

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # Decode the PNG enough to check it is not blank: inflate IDAT, count non-white bytes.
    pos, idat = 8, b""
    width = height = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = int.from_bytes(chunk[:4], "big"), int.from_bytes(chunk[4:8], "big")
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert (width, height) == (1000, 1400)
    dark = sum(1 for b in raw[::7] if b < 200)
    assert dark > 2000, "the screenshot is (nearly) blank"


def test_framework_baseline_rows_ratios_and_round_trip(tmp_path):
    lat_f = LatencyStats(p50_ms=8.0, p90_ms=9.0, mean_ms=8.2, runs=10)
    r = sample_report(
        framework="torch eager",
        framework_detail="torch 2.x eager, inference_mode, cpu, 2 threads",
        framework_run=RunFacts("cpu", lat_f, EnergyReading(0.4, "estimated", "p50 x 50 W")),
    )
    rows = {row[0]: row for row in r.framework_rows()}
    assert rows["latency p50 (ms)"] == ("latency p50 (ms)", "8.000", "4.000", "0.500x")
    assert rows["energy / inference"][3] == "0.500x"
    table = r.table()
    assert "against torch eager (torch 2.x eager" in table and "0.500x" in table
    r.write(tmp_path)
    back = read_report(tmp_path)
    assert back.framework == "torch eager" and back.framework_run == r.framework_run
    assert back.to_dict() == r.to_dict()
    assert r.to_dict()["framework_run"]["energy"]["gco2e"] == pytest.approx(0.4 / 3.6e6 * 400)
    page = r.to_html()
    assert "Against torch eager (the model as you run it today)" in page
    assert "<b>torch eager</b>: 400.000 mJ (estimated" in page
    assert "worse" not in page.replace("rect.worse", "").replace("text.worse", "").replace(
        "td.worse", ""
    )  # optimized beats every baseline: nothing marked


def test_charts_and_tables_mark_an_optimized_value_worse_than_a_baseline():
    slow = LatencyStats(p50_ms=12.0, p90_ms=14.0, mean_ms=12.5, runs=10)
    fast = LatencyStats(p50_ms=6.0, p90_ms=7.0, mean_ms=6.2, runs=10)
    r = sample_report(
        optimized_run=RunFacts("cpu", slow, EnergyReading(0.2, "estimated", "p50 x 50 W")),
        framework="ONNX Runtime",
        framework_detail="onnxruntime, CPUExecutionProvider",
        framework_run=RunFacts("cpu", fast, None),
    )
    page = r.to_html()
    # Latency p50: 12 ms is worse than both the original (10) and ONNX Runtime (6), in words.
    assert "Latency p50 (ms) \u2014 optimized is worse" in page
    assert "12.000 (worse than ONNX Runtime, original)" in page
    assert 'class="worse"' in page
    # Energy 0.2 < 0.5 mJ: better, not marked.
    energy = page[page.index("<figcaption>Energy") :].split("</figure>")[0]
    assert "worse" not in energy and 'class="better"' in energy
    # The table ratios say it too, next to the number.
    assert '<td class="worse">1.200x (worse)</td>' in page
    assert '<td class="worse">2.000x (worse)</td>' in page
    assert "no energy" not in page
