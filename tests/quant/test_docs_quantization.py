"""docs/quantization.md runs as written: its python blocks, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "quantization.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_examples() -> None:
    assert len(BLOCKS) >= 2


def test_doc_blocks_run_in_order() -> None:
    namespace: dict[str, object] = {"__name__": "docs_quantization"}
    for i, block in enumerate(BLOCKS):
        exec(compile(block, f"{DOC}:block{i}", "exec"), namespace)
