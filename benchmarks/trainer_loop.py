"""The built-in Trainer against a minimal hand-written loop: steps per second and host syncs per step.

Both train the same model from the same weights on the same random batches (held in memory) with SGD
(momentum 0.9, weight decay 5e-4) at 90 % layerwise magnitude sparsity; the hand loop enforces the masks itself
(gradients and weights multiplied by them after each step) and reads nothing back. The Trainer runs with its
progress bar off and no evaluation. A host sync is any read of a tensor's value by Python (``item``,
``tolist``, ``__bool__``, ``__int__``, ``__float__``), counted by patching those methods over a separate epoch;
on a GPU each one stalls the stream. Timing: interleaved rounds, one epoch of ``--steps`` steps each, the
min and median over rounds of the time per step.

    python benchmarks/trainer_loop.py --threads 1 > benchmarks/results/trainer_loop.md
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

import prunelab
from prunelab.models import build_model
from prunelab.training import OptimConfig, Trainer

SHAPES = {"lenet5": ((1, 28, 28), 128), "vgg11": ((3, 32, 32), 32)}


@contextmanager
def counted():
    """Count Python reads of tensor values inside the block (see the module docstring)."""
    calls = [0]
    names = ("item", "tolist", "__bool__", "__int__", "__float__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(fn):
        def inner(self, *a, **k):
            calls[0] += 1
            return fn(self, *a, **k)
        return inner
    for n in names:
        setattr(torch.Tensor, n, wrap(saved[n]))
    try:
        yield calls
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)


def _batches(shape, batch, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(steps)]


def _opt(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def hand_loop(model, pruner, data) -> None:
    opt = _opt(model)
    masks = [(p, pruner.masks[n].to(p.dtype)) for n, p in pruner.params.items()]
    model.train()
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p, m in masks:
                p.grad.mul_(m)
        opt.step()
        with torch.no_grad():
            for p, m in masks:
                p.mul_(m)


def trainer_loop(model, pruner, data) -> None:
    cfg = OptimConfig(epochs=1, lr=0.01, momentum=0.9, weight_decay=5e-4, lr_schedule="constant")
    Trainer(model, _opt(model), cfg, data, pruner=pruner, progress=False).fit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", default="lenet5,vgg11")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# The built-in Trainer against a hand-written loop\n\n{time.strftime('%Y-%m-%d')}, torch "
          f"{torch.__version__}, prunelab {prunelab.__version__}, {a.threads} thread(s), CPU, {a.steps} steps per "
          f"round, {a.rounds} interleaved rounds (min / median ms per step), random data in memory, 90 % "
          "sparsity\n")
    print("| model | batch | hand loop ms | Trainer ms | ratio (median) | host syncs per step, hand | "
          "host syncs per step, Trainer |")
    print("|---|---|---|---|---|---|---|")
    for name in a.models.split(","):
        shape, batch = SHAPES[name]
        base = build_model(name, shape, 10, seed=0)
        data = _batches(shape, batch, a.steps)
        times = {"hand": [], "trainer": []}
        syncs = {}
        for r in range(a.rounds + 1):  # round 0 warms up and counts
            for kind, loop in (("hand", hand_loop), ("trainer", trainer_loop)):
                model = copy.deepcopy(base)
                pruner = prunelab.Pruner(model, "magnitude", sparsity=0.9)
                if r == 0:
                    with counted() as calls:
                        loop(model, pruner, data)
                    syncs[kind] = calls[0] / a.steps
                    continue
                t0 = time.perf_counter()
                loop(model, pruner, data)
                times[kind].append((time.perf_counter() - t0) / a.steps * 1e3)
        h, t = times["hand"], times["trainer"]
        print(f"| {name} | {batch} | {min(h):.2f} / {statistics.median(h):.2f} | {min(t):.2f} / "
              f"{statistics.median(t):.2f} | {statistics.median(t) / statistics.median(h):.3f} | "
              f"{syncs['hand']:.2f} | {syncs['trainer']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
