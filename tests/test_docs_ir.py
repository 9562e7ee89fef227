"""The python blocks in docs/ir.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ecograph.ir.registry import registered_ops, unregister_op

DOC = Path(__file__).resolve().parent.parent / "docs" / "ir.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_block_runs(index):
    try:
        exec(compile(BLOCKS[index], f"{DOC}:block{index}", "exec"), {})
    finally:
        for schema in registered_ops("ecograph_docs"):
            unregister_op(schema.op_type, "ecograph_docs")
