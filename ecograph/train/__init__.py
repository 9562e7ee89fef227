"""Training on the IR: `to_torch(graph)` runs a graph as a trainable torch module, and
`distill` trains a pruned graph against its original (knowledge distillation) on CPU."""

from __future__ import annotations

from ecograph.train.distill import DistillResult, distill, hidden_state_names
from ecograph.train.module import GraphModule, to_torch

__all__ = ["DistillResult", "GraphModule", "distill", "hidden_state_names", "to_torch"]
