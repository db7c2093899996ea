"""Distillation from the unpruned model: a loss for the built-in trainer and for one's own loop.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015): the student matches the teacher's
output distribution softened by a temperature T,

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * task loss,

the T^2 keeping the soft term's gradients on the scale of the hard one's. The KL is averaged over samples (a
classifier) or over every token (a causal language model, logits (N, T, V)), as the task loss is. The teacher
runs in eval and inference mode, never receives gradients and is never changed. Used for recovery after
pruning, in rounds and after one-shot methods alike: in a recipe ``prune.distill: {alpha, temperature}``, the
teacher being the run's own dense stage (read from its checkpoint, no second copy on disk).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .training.tasks import Classification, get_task, logits_of


@dataclass
class Distillation:
    """``loss(inputs, student_output, targets)``: see the module docstring. ``task``: "classification" or
    "causal_lm" (or a task object), for the hard term and the logits' layout."""

    teacher: nn.Module
    alpha: float = 0.5
    temperature: float = 2.0
    task: Any = None
    takes_inputs: bool = field(default=True, init=False)  # the trainer passes the batch's inputs first

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ConfigError(f"distillation alpha must be a number in [0, 1], got {self.alpha!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not self.temperature > 0:
            raise ConfigError(f"distillation temperature must be a positive number, got {self.temperature!r}")
        if not isinstance(self.teacher, nn.Module):
            raise ConfigError(f"the distillation teacher must be an nn.Module, got {type(self.teacher).__name__}")
        self.task_ = self.task if isinstance(self.task, Classification) else get_task(self.task)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def soft(self, student: Tensor, teacher: Tensor) -> Tensor:
        """T^2 KL(teacher || student) of softened logits, averaged over samples (or tokens)."""
        t = self.temperature
        s, q = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
        return F.kl_div(F.log_softmax(s / t, -1), F.log_softmax(q / t, -1), reduction="batchmean",
                        log_target=True) * t * t

    def __call__(self, inputs: Any, out: Any, y: Tensor) -> Tensor:
        student = logits_of(out)
        with torch.inference_mode():
            teacher = logits_of(self.teacher(inputs))
        if teacher.shape != student.shape:
            raise ConfigError(f"the teacher's logits {tuple(teacher.shape)} and the student's "
                              f"{tuple(student.shape)} differ: distillation needs the same outputs")
        hard = self.task_.loss(out, y) if self.alpha < 1 else student.new_zeros(())
        return self.alpha * self.soft(student, teacher.clone()) + (1 - self.alpha) * hard
