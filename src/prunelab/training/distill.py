"""Distillation from the unpruned model: a loss for the built-in trainer and for one's own loop.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015): the student matches the teacher's
output distribution softened by a temperature T,

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * task loss,

the T^2 keeping the soft term's gradients on the scale of the hard one's. The KL is averaged over samples (a
classifier) or over every token (a causal language model, logits (N, T, V)), as the task loss is. The teacher
runs in eval and inference mode, never receives gradients and is never changed. Used for recovery after
pruning, in rounds and after one-shot methods alike: in a recipe ``prune.distill: {alpha, temperature}``, the
teacher being the run's own dense stage (read from its checkpoint, no second copy on disk).

``hidden``: a hidden-state term added with weight ``w`` (Minitron, Muralidharan et al. 2024, distil hidden
states besides logits): the outputs of the named modules (names or globs, e.g. ``model.layers.*``, the same in
both models: masking renames nothing) matched by a normalised mean squared error, averaged over the layers,

    w * mean_l ||s_l - t_l||^2 / ||t_l||^2,   over the channels the student keeps.

The projection is fixed, not learned: the selection of the student's live channels. A width-pruned student is
trained masked, at the teacher's width, its removed hidden channels exactly zero; those are left out of both
norms (their error is a constant the student cannot change, so leaving it out changes the value, not the
gradient). A student of another width (an already shrunk model) is refused: distil the masked model.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .tasks import Classification, get_task, logits_of


def match_layers(model: nn.Module, patterns: list[str]) -> list[str]:
    """The names of ``model``'s modules matched by ``patterns`` (names or globs), in model order; ConfigError
    naming the first pattern that matches nothing."""
    if isinstance(patterns, str) or not patterns or not all(isinstance(h, str) for h in patterns):
        raise ConfigError(f"distillation hidden layers must be a list of module names or globs, got {patterns!r}")
    names = [n for n, _ in model.named_modules() if n]
    out: list[str] = []
    for pattern in patterns:
        found = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not found:
            raise ConfigError(f"distillation hidden layer {pattern!r} names no module of the model; some of its "
                              f"modules: {', '.join([n for n in names if n.count('.') <= 2][:6])}")
        out += [n for n in found if n not in out]
    return out


@dataclass
class Distillation:
    """``loss(inputs, student_output, targets)``: see the module docstring. ``task``: "classification" or
    "causal_lm" (or a task object), for the hard term and the logits' layout. With ``hidden``, ``student`` is
    the model being trained (hooks catch its layers' outputs; the teacher's are caught alike)."""

    teacher: nn.Module
    alpha: float = 0.5
    temperature: float = 2.0
    task: Any = None
    hidden: list[str] | None = None  # module names or globs whose outputs are matched (see the module docstring)
    hidden_weight: float = 1.0
    student: nn.Module | None = None  # needed with ``hidden``: its outputs are caught by forward hooks
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
        self._caught: dict[str, dict[str, Tensor]] = {"student": {}, "teacher": {}}
        self.layers: list[str] = []
        self._handles: list = []
        if self.hidden is not None:
            self._hook_hidden()

    def _hook_hidden(self) -> None:
        if isinstance(self.hidden_weight, bool) or not isinstance(self.hidden_weight, (int, float)) \
                or not self.hidden_weight >= 0:
            raise ConfigError(f"the hidden-state weight must be a number >= 0, got {self.hidden_weight!r}")
        if not isinstance(self.student, nn.Module):
            raise ConfigError("a hidden-state loss needs the student (Distillation(..., student=model)) to catch "
                              "its layers' outputs")
        self.layers = match_layers(self.teacher, self.hidden)
        teacher, student = dict(self.teacher.named_modules()), dict(self.student.named_modules())
        missing = [n for n in self.layers if n not in student]
        if missing:
            raise ConfigError(f"the student has no module {missing[0]!r}; a hidden-state loss matches modules of "
                              "the same names")
        for who, modules in (("teacher", teacher), ("student", student)):
            self._handles += [modules[n].register_forward_hook(self._catcher(who, n)) for n in self.layers]

    def _catcher(self, who: str, name: str):
        def hook(module, args, out):
            # the student's outputs only while it trains (its evaluation holds nothing); the teacher runs only here
            out = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(out, Tensor) and (who == "teacher" or module.training):
                self._caught[who][name] = out
        return hook

    def close(self) -> None:
        """Remove the forward hooks from both models (the run calls it when the recovery ends)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def hidden_loss(self) -> Tensor:
        """The hidden-state term of the last forward passes of both models (see the module docstring)."""
        s_all, t_all = self._caught["student"], self._caught["teacher"]
        terms = []
        for n in self.layers:
            if n not in s_all or n not in t_all:
                raise ConfigError(f"layer {n!r} gave no tensor output in the forward pass; name a module whose "
                                  "output is the hidden state")
            s, t = s_all[n], t_all[n].clone()
            if s.shape != t.shape:
                raise ConfigError(f"layer {n!r} gives {tuple(s.shape)} in the student and {tuple(t.shape)} in the "
                                  "teacher; distil the masked model, at the teacher's width")
            live = s.detach().reshape(-1, s.shape[-1]).abs().amax(0) > 0  # removed channels are exactly zero
            s, t = s[..., live], t[..., live]
            terms.append((s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
        for caught in self._caught.values():
            caught.clear()  # nothing held between steps
        return torch.stack(terms).mean()

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
        loss = self.alpha * self.soft(student, teacher.clone()) + (1 - self.alpha) * hard
        return loss + self.hidden_weight * self.hidden_loss() if self.layers else loss
