"""Training-step overhead of mask enforcement: dense vs prunelab's Pruner vs torch.nn.utils.prune.

One step = forward, backward, SGD step (momentum, weight decay) and, for prunelab, ``pruner.step(optimizer)``.
All three variants train the same model from the same weights at 90% sparsity (layerwise magnitude);
the median over interleaved rounds of median step times is reported with the ratio against dense measured in the same run.
End-to-end ratios on a shared 2-core machine move by +-10% from run to run, so the time of ``pruner.step``
alone is reported too: (dense + step()) / dense is the overhead the masks add, measured directly.

    python benchmarks/overhead.py [--steps 30] [--models lenet5,vgg16]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
import torch.nn.utils.prune as tprune
from torch import nn

import prunelab
from prunelab.models import build_model

SHAPES = {"lenet5": ((1, 28, 28), 128), "lenet300_100": ((1, 28, 28), 128), "vgg16": ((3, 32, 32), 32)}


def _time_steps(model: nn.Module, x, y, steps: int, pruner_kind: str, sparsity: float) -> tuple[float, float]:
    """(median step time, median time of ``pruner.step`` alone) in seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    pruner = None
    if pruner_kind == "prunelab":
        pruner = prunelab.Pruner(model, "magnitude", sparsity=sparsity)
    elif pruner_kind == "torch":
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                tprune.l1_unstructured(m, "weight", amount=sparsity)
    times, enforce = [], []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        t1 = time.perf_counter()
        if pruner is not None:
            pruner.step(opt)
        if i >= 3:  # warm-up first
            times.append(time.perf_counter() - t0)
            enforce.append(time.perf_counter() - t1)
    return statistics.median(times), statistics.median(enforce)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", default="lenet5,vgg16")
    ap.add_argument("--sparsity", type=float, default=0.9)
    a = ap.parse_args()
    print(f"median over {a.rounds} interleaved rounds of the median step time of {a.steps // a.rounds} steps, CPU, {torch.get_num_threads()} threads, "
          f"sparsity {a.sparsity}")
    print(f"| {'model':10s} | {'batch':>5s} | {'dense ms':>9s} | {'prunelab ms':>11s} | {'torch.prune ms':>14s} "
          f"| {'prunelab/dense':>14s} | {'torch.prune/dense':>17s} | {'step() ms':>8s} | {'(dense+step())/dense':>18s} |")
    print("|" + "|".join("-" * (w + 2) for w in (10, 5, 9, 11, 14, 14, 17, 8, 18)) + "|")
    for name in a.models.split(","):
        shape, batch = SHAPES[name]
        torch.manual_seed(0)
        base = build_model(name, shape, 10)
        x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
        res = {}
        # interleave the variants over rounds so drift in machine load hits all of them alike
        for _ in range(a.rounds):
            for kind in ("dense", "prunelab", "torch"):
                res.setdefault(kind, []).append(_time_steps(copy.deepcopy(base), x, y, a.steps // a.rounds, kind, a.sparsity))
        d, p, t = (statistics.median(r[0] for r in res[k]) * 1e3 for k in ("dense", "prunelab", "torch"))
        e = statistics.median(r[1] for r in res["prunelab"]) * 1e3
        print(f"| {name:10s} | {batch:5d} | {d:9.2f} | {p:11.2f} | {t:14.2f} | {p / d:13.3f}x | {t / d:16.3f}x "
              f"| {e:8.3f} | {1 + e / d:17.4f}x |")


if __name__ == "__main__":
    main()
