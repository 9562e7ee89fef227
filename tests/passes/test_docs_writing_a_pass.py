"""docs/writing-a-pass.md runs as written: its python blocks, in order, in one namespace."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-a-pass.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_the_worked_example() -> None:
    assert len(BLOCKS) >= 6
    text = DOC.read_text()
    for topic in (
        "register_pass",
        "check_rewrite",
        "optimize(",
        "--pipeline",
        "entry-points",
        "bisect",
    ):
        assert topic in text


def test_doc_blocks_run_in_order() -> None:
    from ecograph.passes import unregister_pass

    namespace: dict[str, object] = {"__name__": "writing_a_pass_doc"}
    try:
        for i, block in enumerate(BLOCKS):
            if "ecograph.optimize(" in block and importlib.util.find_spec("tvm") is None:
                pytest.skip("apache-tvm is not installed: the optimize() block cannot run")
            code = compile(block, f"{DOC}:python-block-{i}", "exec", dont_inherit=True)
            exec(code, namespace)
    finally:
        for name in ("fuse-hard-swish", "sub-neg-to-add"):
            unregister_pass(name)
