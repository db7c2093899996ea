"""The built-in training loop: epochs of SGD/Adam with evaluation, hooks, a progress bar and JSONL metrics.

Hooks are objects with any of ``on_epoch_begin(trainer, epoch)``, ``on_batch_end(trainer, step, loss)``,
``on_progress(trainer, epoch, samples, info)`` (the running loss and accuracy, every ``log_every`` steps, read
when the loop reads them anyway), ``on_epoch_end(trainer, epoch, metrics)``; a :class:`~prunelab.Pruner` passed as ``pruner`` is stepped after
every optimizer step, so the same engine runs in this loop and in a user's own.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import TrainingDiverged
from . import speed
from .optim import OptimConfig, lr_at, set_lr
from .tasks import Classification, get_task


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu",
             task: str | Classification | None = None) -> dict[str, float]:
    """The task's metrics of ``model`` over ``loader`` (default classification: mean cross-entropy ``loss`` and
    top-1 ``acc`` in [0, 1]; ``causal_lm``: mean token loss, next-token ``acc`` and ``ppl``, every target token
    of the loader counted once)."""
    task = task if isinstance(task, Classification) else get_task(task)
    was_training = model.training
    model.eval()
    total, correct, loss = 0, None, None
    dtype = speed.sum_dtype(device)
    for x, y in loader:
        x, y = speed.to_device(x, device), speed.to_device(y, device)
        out = model(x)
        batch_loss = task.loss(out, y, reduction="sum").to(dtype)  # summed on the device, read once at the end
        loss = batch_loss if loss is None else loss + batch_loss
        hits = task.hits(out, y)
        correct = hits if correct is None else correct + hits
        total += task.count(y)
    model.train(was_training)
    return task.metrics(0.0 if loss is None else float(loss), 0 if correct is None else int(correct), total)


@torch.no_grad()
def bn_l1_step(model: nn.Module, s: float) -> None:
    """Add the subgradient of s * sum|gamma| to every BatchNorm scale's gradient (Network Slimming)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.weight.grad is not None:
            m.weight.grad.add_(torch.sign(m.weight), alpha=s)


class Trainer:
    """Trains ``model`` for ``cfg.epochs`` epochs, or for its budget of steps or training targets (see
    :mod:`prunelab.training.optim`); see the module docstring for hooks. ``steps`` and ``targets`` count what
    it has done (targets: tokens of a language model, samples of a classifier, over ``world`` processes)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: OptimConfig, train_loader: Any,
                 test_loader: Any = None, pruner: Any = None, hooks: list | None = None,
                 metrics_path: str | Path | None = None, progress: bool = True, device: str = "cpu",
                 stage: str = "train", loss_fn: Any = None, task: str | Classification | None = None,
                 world: int = 1) -> None:
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.train_loader, self.test_loader = train_loader, test_loader
        self.pruner, self.hooks = pruner, list(hooks or [])
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.progress, self.device, self.stage = progress, device, stage
        self.task = task if isinstance(task, Classification) else get_task(task)
        self.loss_fn = loss_fn or self.task.loss
        # a loss that needs the inputs too (distillation runs the teacher on them) says so; read once, not per step
        self._loss_takes_inputs = bool(getattr(self.loss_fn, "takes_inputs", False))
        self.global_step = 0
        self.targets = 0  # training targets seen (all processes: each sees an equal shard)
        self.world = world
        self.total_steps: int | None = cfg.max_steps  # a token budget's is known at its first batch
        self.history: list[dict] = []
        speed.check(cfg, device)
        self.forward = speed.prepare(model, cfg)  # channels-last in place; compiled: a wrapper on the same weights
        self.scaler = speed.scaler(cfg, device)
        self._sum_dtype = speed.sum_dtype(device)  # of the running sums, fixed per device: not looked up per step
        # a hook that takes each step's loss makes the loop read it every step; otherwise every log_every steps
        self._per_step = any(getattr(h, "on_batch_end", None) for h in self.hooks)

    def _call(self, event: str, *args: Any) -> None:
        for h in self.hooks:
            fn = getattr(h, event, None)
            if fn is not None:
                fn(self, *args)

    def spent(self) -> bool:
        """The budget is used up (never, without one: epochs bound the training then)."""
        if self.cfg.max_steps is not None:
            return self.global_step >= self.cfg.max_steps
        return self.cfg.train_tokens is not None and self.targets >= self.cfg.train_tokens

    def fit(self, start_epoch: int = 0) -> list[dict]:
        """Run epochs ``start_epoch .. cfg.epochs - 1``, or until the budget is spent (the last epoch then ends
        early); returns one metrics dict per epoch."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
        with Progress(*columns, disable=not self.progress, transient=True) as bar:
            epoch = start_epoch
            while (not self.spent()) if self.cfg.budget else epoch < self.cfg.epochs:
                of = "" if self.cfg.budget else f"/{self.cfg.epochs}"
                task = bar.add_task(f"{self.stage} epoch {epoch + 1}{of}", total=len(self.train_loader), info="")
                def tick(info, task=task):
                    bar.update(task, advance=1, **({"info": info} if info is not None else {}))
                self.history.append(self._epoch(epoch, tick))
                bar.remove_task(task)
                epoch += 1
        return self.history

    def _read(self, loss_value: float, epoch: int, lr: float) -> float:
        """``loss_value`` once it is on the host; TrainingDiverged when it is not finite."""
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"training diverged in stage {self.stage}, epoch {epoch + 1} (loss {loss_value} by "
                                   f"step {self.global_step}); lower the learning rate (lr={lr:g})")
        return loss_value

    def _budget_lr(self, n: int) -> float:
        """Under a budget: the rate at this step's fractional epoch over the budget's length (module optim)."""
        per_epoch = max(len(self.train_loader), 1)
        if self.total_steps is None:  # a token budget, in steps of this first batch's size
            self.total_steps = max(1, math.ceil(self.cfg.train_tokens / (n * self.world)))
        return lr_at(self.cfg, self.global_step / per_epoch, self.total_steps / per_epoch, 1 / per_epoch)

    def _epoch(self, epoch: int, tick) -> dict:
        t0 = time.perf_counter()
        lr = lr_at(self.cfg, epoch)
        set_lr(self.optimizer, lr)
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        elif hasattr(getattr(self.train_loader, "sampler", None), "set_epoch"):
            self.train_loader.sampler.set_epoch(epoch)
        self._call("on_epoch_begin", epoch)
        self.model.train()
        seen, since = 0, 0
        # running sums kept on the device and read every log_every steps, the epoch's end and a divergence
        # check there: a read per step stalls a GPU (the loop made two per step, plus the masks' sparsity)
        loss_t = correct_t = None
        loss_sum, correct = 0.0, 0
        for x, y in self.train_loader:
            if self.spent():
                break
            x = speed.to_device(x, self.device, self.cfg.channels_last)
            y = speed.to_device(y, self.device)
            if self.cfg.budget:
                lr = self._budget_lr(self.task.count(y))
                set_lr(self.optimizer, lr)
            self.optimizer.zero_grad(set_to_none=True)
            with speed.autocast(self.cfg, self.device):
                out = self.forward(x)
                loss = self.loss_fn(x, out, y) if self._loss_takes_inputs else self.loss_fn(out, y)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                if self.cfg.bn_l1 > 0:  # the subgradient is added to true gradients, not scaled ones
                    self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if self.cfg.bn_l1 > 0:
                bn_l1_step(self.model, self.cfg.bn_l1)
            if self.pruner is not None:
                self.pruner.after_backward()
            self._call("after_backward")
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.pruner is not None:  # after the (scaler's) step: the masks hold on what was written
                self.pruner.step(self.optimizer)
            self.global_step += 1
            n = self.task.count(y)
            self.targets += n * self.world
            seen += n
            since += 1
            term = loss.detach().to(self._sum_dtype) * n
            loss_t = term if loss_t is None else loss_t + term
            hits = self.task.hits(out, y)
            correct_t = hits if correct_t is None else correct_t + hits
            if self._per_step:
                value = self._read(loss.item(), epoch, lr)
                self._call("on_batch_end", self.global_step, value)
            if since >= self.cfg.log_every:
                loss_sum, correct = self._read(float(loss_t), epoch, lr), int(correct_t)
                since = 0
                info = f"loss {loss_sum / seen:.4f} acc {correct / seen:.4f}"
                if self.pruner is not None:
                    info += f" sparsity {self.pruner.masks.sparsity():.3f}"
                tick(info)
                self._call("on_progress", epoch, seen, info)  # the running figures every log_every steps
            else:
                tick(None)
        if loss_t is not None:
            loss_sum, correct = self._read(float(loss_t), epoch, lr), int(correct_t)
        metrics = {"stage": self.stage, "epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / max(seen, 1),
                   "train_acc": correct / max(seen, 1), "steps": self.global_step, "targets": self.targets}
        if self.test_loader is not None:
            ev = evaluate(self.model, self.test_loader, self.device, self.task)
            metrics.update({f"test_{k}": v for k, v in ev.items()})
        if self.pruner is not None:
            metrics["sparsity"] = self.pruner.masks.sparsity()
        metrics["seconds"] = time.perf_counter() - t0
        if self.metrics_path is not None:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
        self._call("on_epoch_end", epoch, metrics)
        return metrics
