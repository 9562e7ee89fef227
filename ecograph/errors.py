"""Typed errors. Each names the node, op, value or file at fault and says what to do.

Every class carries the command line's exit code for it (`exit_code`): 2 usage (the call or
command line cannot work as given), 3 the model, artifact or inputs were rejected, 4 the
accuracy budget was missed. 1 is left for internal errors: anything that is not an
`EcographError` is a bug in ecograph, and so is a pass that breaks the IR it was given
(`PassError` raised by the pass manager's checks).
"""

from __future__ import annotations


class EcographError(Exception):
    """Base class of every error ecograph raises on purpose."""

    exit_code: int = 3


class IRError(EcographError):
    """An invalid edit or query on the IR (a value used across graphs, a name clash, ...)."""


class VerificationError(EcographError):
    """`verify(graph)` found a broken rule. `rule` names the rule, `where` the node or value."""

    def __init__(self, rule: str, where: str, message: str) -> None:
        self.rule = rule
        self.where = where
        super().__init__(f"[{rule}] {where}: {message}")


class TypeInferenceError(EcographError):
    """Type or shape inference failed for a node (bad input types, missing constant, ...)."""


class UnknownOpError(EcographError):
    """An op is not in the registry."""


class AttributeSchemaError(EcographError):
    """A node carries an attribute that its op's schema rejects."""


class ParseError(EcographError):
    """The IR text form could not be parsed; the message gives the line and column."""


class InterpreterError(EcographError):
    """The reference interpreter failed while running a node; the message names the node."""


class UnsupportedError(EcographError):
    """A model uses something ecograph does not support yet (ops, control flow, dtypes)."""


class ModelFormatError(EcographError):
    """An input model (file or proto) is malformed: truncated or garbage bytes, a cycle, a
    dangling input, external data that escapes the model's folder or overruns its file, or a
    model over the configured size cap. The message names the file, tensor or node at fault."""


class PassError(EcographError):
    """A pass or pipeline is misconfigured or broke the IR: unknown pass name, bad pipeline
    spec, unmet `requires`, or a verifier failure after a named pass."""


class NumericDivergenceError(PassError):
    """A pass changed a graph's outputs beyond its declared tolerance. The message names the
    pass, the first diverging node, and where the before/after pair was written."""

    def __init__(self, message: str, *, pass_name: str, node: str | None, dump: str | None):
        self.pass_name = pass_name
        self.node = node
        self.dump = dump
        super().__init__(message)


class LoweringError(EcographError):
    """Lowering a node to a backend (TVM Relax) failed; the message names the node and op."""


class BuildError(EcographError):
    """Compiling or loading a backend artifact failed; the message names the target or file."""


class CaptureError(EcographError):
    """A framework could not capture the model (torch.export and torch.fx both failed, ...)."""


class UsageError(EcographError):
    """A call or command line asks for something that cannot work as given (an unknown
    device, a negative repeat count, a target this machine cannot run); the message says what
    to give instead."""

    exit_code = 2


class InputError(EcographError):
    """Run-time inputs do not fit the model: a missing or unknown input, a wrong dtype or rank,
    two inputs that disagree on a shared symbolic dim, an input too large to allocate."""


class ArtifactError(BuildError):
    """An artifact folder is not one ecograph can trust: a malformed or incomplete manifest, a
    path leaving the folder (absolute, `..`, a symlink), a file not listed or whose hash does
    not match. Nothing of such a folder is loaded."""


class AccuracyError(EcographError):
    """The optimized model is less accurate than the budget allows on the example inputs."""

    exit_code = 4
