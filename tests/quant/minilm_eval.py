"""MiniLM-L6 (real weights) sentence-embedding accuracy of quantized graphs.

Shared by tests/quant/test_minilm_accuracy.py and bench/quant_accuracy.py. Sentences come from
tests/data/sentences.txt (209 varied English sentences); calibration uses a disjoint set made
from the same file by pairing sentences, so no evaluation input is seen during calibration.
Embeddings are mean-pooled over the attention mask, as sentence-transformers does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "data" / "sentences.txt"
SEQ = 48


def sentences() -> list[str]:
    return [s.strip() for s in DATA.read_text(encoding="utf-8").splitlines() if s.strip()]


def calibration_sentences() -> list[str]:
    """Inputs unlike any evaluation sentence: consecutive pairs joined into one."""
    s = sentences()
    return [f"{a} {b}" for a, b in zip(s[0::2], s[1::2], strict=False)][:64]


@functools.lru_cache(maxsize=1)
def tokenizer() -> Any:
    import transformers

    from tests.models.transformers_models import minilm_path

    return transformers.AutoTokenizer.from_pretrained(str(minilm_path()))


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    enc = tokenizer()(texts, padding="max_length", truncation=True, max_length=SEQ,
                      return_tensors="np")  # fmt: skip
    return {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
    }


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    return (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def encoder_module(inner: Any = None) -> Any:
    """The encoder as a module of (input_ids, attention_mask) -> last hidden state: MiniLM with
    its real weights, or `inner` (a BertModel, e.g. the same config with random weights)."""
    import torch

    if inner is None:
        from tests.models.transformers_models import load_minilm

        inner = load_minilm()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]

    return Encoder().eval()


def capture_graph() -> Any:
    """MiniLM captured through torch.export with a symbolic batch dim."""
    import torch

    import ecograph

    feeds = tokenize(sentences()[:4])
    batch = torch.export.Dim("batch", min=1, max=1024)
    return ecograph.from_torch(
        encoder_module(),
        (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])),
        dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}},
    )


def embed(run: Callable[[dict[str, np.ndarray]], np.ndarray], texts: list[str]) -> np.ndarray:
    feeds = tokenize(texts)
    return mean_pool(run(feeds), feeds["attention_mask"])


def interpreter_runner(graph: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    from ecograph.ir import interpret

    names = [v.name for v in graph.inputs]

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = interpret(graph, dict(zip(names, feeds.values(), strict=True)))
        return next(iter(out.values()))

    return run


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Mean cosine of embeddings and Spearman correlation of the pairwise similarities."""
    from scipy.stats import spearmanr

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    ru, ou = unit(reference), unit(other)
    cos = float(np.mean(np.sum(ru * ou, axis=1)))
    iu = np.triu_indices(len(reference), 1)
    rho = float(spearmanr((ru @ ru.T)[iu], (ou @ ou.T)[iu]).statistic)
    return {"mean_cosine": cos, "spearman": rho}


def weight_bytes(graph: Any) -> int:
    """Bytes of the constants (int4 counted at 4 bits, as packed two per byte)."""
    return int(sum(v.type.nbytes() or 0 for v in graph.constants.values()))
