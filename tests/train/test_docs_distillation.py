"""docs/distillation.md runs as written: its python blocks, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

DOC = Path(__file__).resolve().parents[2] / "docs" / "distillation.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_covers_to_torch_and_distill() -> None:
    assert len(BLOCKS) >= 2
    text = DOC.read_text()
    for topic in ("to_torch", "to_graph", "hidden_state_names", "InputError", "mask"):
        assert topic in text


def test_doc_blocks_run_in_order() -> None:
    namespace: dict[str, object] = {"__name__": "distillation_doc"}
    for i, block in enumerate(BLOCKS):
        exec(compile(block, f"{DOC}:block{i}", "exec"), namespace)
