"""`make demo` runs ecograph.demo; it must succeed and print its checks."""

from __future__ import annotations

from ecograph import demo


def test_demo_runs_and_matches_the_numpy_reference(capsys):
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "text round trip exact: True" in out
    assert "demo: OK" in out
    assert "LayerNormalization" in out
