"""The Pass base class, what a pass returns (PassResult) and how much it may move the outputs.

A pass is a dataclass whose fields are its options:

    @register_pass
    @dataclass
    class EliminateIdentity(Pass):
        '''Identity(x) -> x'''
        name = "eliminate-identity"

        def run(self, graph: Graph) -> PassResult:
            ...

The registry (`register_pass`) lives in ecograph.passes.registry, pipelines in
ecograph.passes.pipeline and the PassManager that runs and checks passes in
ecograph.passes.manager.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from ecograph.errors import PassError
from ecograph.ir.graph import Graph


@dataclass
class PassResult:
    """What a pass did. `changed` must be honest: False means the graph is untouched.

    `stats` counts what happened (e.g. {"fused": 2}); `notes` are human-readable lines: skips
    with their reason, near misses of patterns.
    """

    changed: bool
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CosineTolerance:
    """A lossy pass's numeric budget: every float output keeps a cosine similarity of at least
    `min_cosine` to the previous stage (and NaN only where it was NaN).

    For passes such as quantization, whose element-wise error on random inputs says little
    about accuracy; exact passes use None and near-exact ones (rtol, atol).
    """

    min_cosine: float

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_cosine <= 1.0:
            raise PassError(f"CosineTolerance: min_cosine={self.min_cosine} is not in [-1, 1]")


# None: bit for bit (NaN equal to NaN); (rtol, atol): element-wise; CosineTolerance: lossy.
Tolerance = tuple[float, float] | CosineTolerance | None


class Pass:
    """Base class of every pass. Subclasses are dataclasses whose fields are their options.

    Class attributes:
    - `name`: kebab-case name used in pipeline specs and the registry.
    - `requires`: properties that must hold before the pass runs (the manager runs the
      providing pass first, or fails if `auto_requires` is off).
    - `provides`: properties that hold after the pass ran.
    - `preserves`: properties that survive a run that changed the graph ("*" for all).
    - `tolerance`: what the numeric differential check allows: None means the pass must be
      exact (bit for bit, NaN equal to NaN), (rtol, atol) element-wise closeness, and
      CosineTolerance(min_cosine) a lossy pass's budget (quantization). A pass whose options
      set its accuracy overrides `numeric_tolerance()` instead.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    preserves: ClassVar[frozenset[str] | str] = frozenset()
    tolerance: ClassVar[Tolerance] = None

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError(f"{type(self).__name__} must implement run(graph)")

    def __call__(self, graph: Graph) -> PassResult:
        return self.run(graph)

    def numeric_tolerance(self) -> Tolerance:
        """The tolerance the PassManager's differential check applies to this instance: the
        class's `tolerance` unless an option of the pass sets it."""
        return self.tolerance

    @property
    def summary(self) -> str:
        """The first docstring line: the rewrite this pass performs."""
        doc = (type(self).__doc__ or "").strip()
        return doc.splitlines()[0] if doc else self.name

    def describe(self) -> str:
        """The pass as a pipeline spec entry, options included (`name(opt=1)`).

        Options that differ from their default are shown, except fields declared with
        `repr=False` (data such as calibration sets, which would flood messages and logs)."""
        if not dataclasses.is_dataclass(self):
            return self.name
        opts = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            opts.append(f"{f.name}={value!r}")
        return f"{self.name}({', '.join(opts)})" if opts else self.name
