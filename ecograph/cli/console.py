"""Where the command line writes: the Console (results, progress, notes), exit codes."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MODEL_HELP = (
    "MODEL arguments are an .onnx file, a Python reference `package.module:factory` whose "
    "factory returns (torch module, example inputs) or an ecograph Graph, or `default` for the "
    "bundled encoder block."
)


EXIT_CODES = """\
exit codes:
  0  success
  1  internal error: a bug in ecograph (run with --debug for the traceback; please report it)
  2  usage: the command line cannot work as given (unknown option, bad value, missing file)
  3  rejected: the model, artifact or inputs cannot be used (malformed, unsupported, too large)
  4  accuracy: the optimized model missed the accuracy budget
"""


@dataclass
class Console:
    """Where a command's words go: `say` is the human-readable result (stdout; nothing with
    --json or --quiet), `progress` a line about work under way (stderr, only with --verbose),
    `note` something the user should know (stderr, not with --quiet)."""

    json: bool = False
    quiet: bool = False
    verbose: bool = False

    def say(self, text: str = "") -> None:
        if not self.json and not self.quiet:
            print(text)

    def progress(self, text: str) -> None:
        if self.verbose and not self.quiet:
            print(f"ecograph: {text}", file=sys.stderr)

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"ecograph: note: {text}", file=sys.stderr)

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Run a command: under --quiet everything it writes (progress bars, warnings) is
        dropped; under --json stray prints go to stderr, so stdout holds only the JSON."""
        if self.quiet:
            sink = io.StringIO()
            with (
                _native_stderr_dropped(),
                contextlib.redirect_stdout(sink),
                contextlib.redirect_stderr(sink),
            ):
                yield
        elif self.json:
            with contextlib.redirect_stdout(sys.stderr):
                yield
        else:
            yield


@contextlib.contextmanager
def _native_stderr_dropped() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a while: native libraries (TVM's C++ logging)
    write there directly, past sys.stderr. Errors still reach Python as exceptions."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all: nothing to drop
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass
class Done:
    """A command's result: `data` is what --json prints; `exit_code` 0 unless it says."""

    data: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0
