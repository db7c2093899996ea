"""Tasks: what a model's output is scored against, and which metrics a run reports.

A task turns a model's output and a batch's targets into a loss and counts: ``classification`` (targets (N,)
class indices; accuracy) and ``causal_lm`` (targets (N, T) the next token of every position, already shifted by
the data set; mean token loss, perplexity exp(mean token loss), and next-token accuracy). Both report ``acc``,
so every command that compares accuracies works for both; the language-model task adds ``ppl``.
An output may be a tensor of logits or any object with a ``logits`` attribute (Hugging Face models).
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def logits_of(out) -> Tensor:
    """The logits of a model's output: the tensor itself, or its ``logits`` (Hugging Face outputs)."""
    return getattr(out, "logits", out)


class Classification:
    """Cross-entropy over classes; one target per sample."""

    name = "classification"

    def loss(self, out, y: Tensor, reduction: str = "mean") -> Tensor:
        return F.cross_entropy(logits_of(out), y, reduction=reduction)

    def hits(self, out, y: Tensor) -> Tensor:
        """The count of correct predictions, as a tensor on the outputs' device (no host sync)."""
        return (logits_of(out).argmax(1) == y).sum()

    def correct(self, out, y: Tensor) -> int:
        return int(self.hits(out, y))

    def count(self, y: Tensor) -> int:
        return len(y)

    def metrics(self, loss_sum: float, correct: int, n: int) -> dict[str, float]:
        return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1)}


class CausalLM(Classification):
    """Next-token prediction: logits (N, T, V) against targets (N, T); every position counts once."""

    name = "causal_lm"

    def loss(self, out, y: Tensor, reduction: str = "mean") -> Tensor:
        z = logits_of(out)
        if z.dim() != 3 or z.shape[:2] != y.shape:
            raise ConfigError(f"a causal language model must give logits (batch, tokens, vocabulary) for targets "
                              f"{tuple(y.shape)}; got {tuple(z.shape)}")
        return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), reduction=reduction)

    def hits(self, out, y: Tensor) -> Tensor:
        return (logits_of(out).argmax(-1) == y).sum()

    def count(self, y: Tensor) -> int:
        return y.numel()

    def metrics(self, loss_sum: float, correct: int, n: int) -> dict[str, float]:
        out = super().metrics(loss_sum, correct, n)
        out["ppl"] = math.exp(min(out["loss"], 700.0))  # exp overflows float past ~709
        return out


TASKS = {t.name: t for t in (Classification(), CausalLM())}


def get_task(name: str | None) -> Classification:
    if name is None:
        return TASKS["classification"]
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]
