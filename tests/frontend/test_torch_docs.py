"""The python blocks in docs/torch.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

DOC = Path(__file__).resolve().parents[2] / "docs" / "torch.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*isinstance\\(treespec, LeafSpec\\).*:FutureWarning"
)


def test_doc_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_block_runs(index: int) -> None:
    from ecograph.frontend.torch import ATEN_TABLE

    before = dict(ATEN_TABLE)
    try:
        exec(compile(BLOCKS[index], f"{DOC}:block{index}", "exec"), {"__name__": "docs_torch"})
    finally:
        ATEN_TABLE.clear()
        ATEN_TABLE.update(before)
