"""Typed errors. Each names the node, op, value or file at fault and says what to do."""

from __future__ import annotations


class EcographError(Exception):
    """Base class of every error ecograph raises on purpose."""


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
