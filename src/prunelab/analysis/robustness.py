"""Adversarial robustness: white-box untargeted L-inf FGSM and PGD, with epsilons in pixel space.

Models see normalized inputs; attacks work on the pixels in [0, 1] *before* normalization (the convention
of the literature, and what an epsilon like 0.1 on MNIST means), so every step un-normalizes, perturbs,
clips to the epsilon ball and to [0, 1], and normalizes again.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Norm:
    def __init__(self, mean: Sequence[float], std: Sequence[float], device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def to_pixels(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean

    def from_pixels(self, p: Tensor) -> Tensor:
        return (p - self.mean) / self.std


def _grad_sign(model: nn.Module, norm: _Norm, pix: Tensor, y: Tensor) -> Tensor:
    pix = pix.detach().requires_grad_(True)
    loss = F.cross_entropy(model(norm.from_pixels(pix)), y)
    (grad,) = torch.autograd.grad(loss, pix)
    return grad.sign()


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Fast Gradient Sign Method (Goodfellow et al., 2015): one step of size eps; returns normalized inputs."""
    norm = _Norm(mean, std, x.device)
    pix = norm.to_pixels(x)
    adv = (pix + eps * _grad_sign(model, norm, pix, y)).clamp(0, 1)
    return norm.from_pixels(adv).detach()


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, mean: Sequence[float], std: Sequence[float],
        steps: int = 10, step_size: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None) -> Tensor:
    """Projected gradient descent (Madry et al., 2018) in the L-inf ball of radius eps around the pixels.

    ``step_size`` defaults to eps / 4; ``random_start`` draws the start uniformly in the ball (from
    ``generator``, for repeatable results). Returns normalized inputs.
    """
    norm = _Norm(mean, std, x.device)
    pix = norm.to_pixels(x)
    alpha = eps / 4 if step_size is None else step_size
    adv = pix.clone()
    if random_start:
        noise = torch.rand(pix.shape, generator=generator).to(pix.device) * 2 - 1
        adv = (pix + eps * noise).clamp(0, 1)
    for _ in range(steps):
        adv = adv + alpha * _grad_sign(model, norm, adv, y)
        adv = torch.min(torch.max(adv, pix - eps), pix + eps).clamp(0, 1)
    return norm.from_pixels(adv).detach()


def accuracy_under_attack(model: nn.Module, loader: Iterable, attack: str, eps: float, mean: Sequence[float],
                          std: Sequence[float], samples: int | None = None, steps: int = 10,
                          step_size: float | None = None, random_start: bool = True, seed: int = 0,
                          device: str = "cpu") -> float:
    """Top-1 accuracy on adversarial examples of ``attack`` ("none", "fgsm" or "pgd") over the first
    ``samples`` test examples (all when None)."""
    if attack not in ("none", "fgsm", "pgd"):
        raise ValueError(f"unknown attack {attack!r}")
    was = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = total = 0
    for x, y in loader:
        if samples is not None and total >= samples:
            break
        if samples is not None:
            x, y = x[: samples - total], y[: samples - total]
        x, y = x.to(device), y.to(device)
        if attack == "fgsm" and eps > 0:
            x = fgsm(model, x, y, eps, mean, std)
        elif attack == "pgd" and eps > 0:
            x = pgd(model, x, y, eps, mean, std, steps, step_size, random_start, gen)
        with torch.no_grad():
            correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    model.train(was)
    return correct / max(total, 1)
