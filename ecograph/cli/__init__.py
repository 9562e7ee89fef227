"""The `ecograph` command line. Every command has --help.

MODEL arguments are an .onnx file, a Python reference `package.module:factory` whose factory
returns (torch module, example inputs) or an ecograph Graph, or `default` for the bundled
encoder block.

Exit codes: 0 success, 1 internal error (a bug in ecograph: please report it), 2 usage (the
command line cannot work as given), 3 the model, artifact or inputs were rejected, 4 the
accuracy budget was missed. Each `EcographError` carries its code (ecograph/errors.py).
"""

from __future__ import annotations

from ecograph.cli.console import EXIT_CODES, Console, Done
from ecograph.cli.inputs import load_model, to_graph
from ecograph.cli.main import build_parser, main

__all__ = ["EXIT_CODES", "Console", "Done", "build_parser", "load_model", "main", "to_graph"]
