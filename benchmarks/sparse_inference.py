"""CPU sparse inference of an MLP (3 x Linear 4096 x 4096) at 90-99 % unstructured sparsity, per kernel.

Kernels for every masked Linear: ``dense`` (the masked weight, zeros multiplied), torch CSR
(``export.sparsify_linear``), SciPy CSR (``export.sparse_linear.ScipyLinear`` on every layer) and ``chosen``
(``export.choose_linear_kernels``: per layer the fastest of the three on this machine, dense when no sparse
kernel is faster). Models are timed interleaved (dense, csr, scipy, chosen, dense, ...), ``--repeats`` rounds
of ``--calls`` forward passes each; the table gives the median and min of the per-round medians, the speedup
over dense (medians) and that speedup over the ideal one, 1 / density (the multiply-accumulates removed).

    python benchmarks/sparse_inference.py [--sparsities 0.9,0.95,0.98,0.99] [--batches 1,64] [--threads 1]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch
from torch import nn

from prunelab import Pruner
from prunelab.export.sparse_linear import ScipyLinear, choose_linear_kernels, sparsify_linear


def _round(model, x, calls) -> float:
    times = []
    with torch.no_grad():
        for _ in range(calls):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--sparsities", default="0.9,0.95,0.98,0.99")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    w = a.width
    print(f"MLP 3 x Linear({w}, {w}), per-layer magnitude masks; {a.threads} torch thread(s); {os.cpu_count()} cores; "
          f"torch {torch.__version__}; {datetime.date.today()}; {a.repeats} interleaved rounds of {a.calls} calls\n")
    print("| sparsity | batch | kernel | ms median | ms min | speedup | / ideal | layers' kernels |")
    print("|---|---|---|---|---|---|---|---|")
    for s in map(float, a.sparsities.split(",")):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w)).eval()
        pruner = Pruner(model, "magnitude", sparsity=s)
        masks = pruner.masks
        csr, _ = sparsify_linear(model, masks)
        scipy_model = torch.nn.Sequential(*[ScipyLinear(m) if isinstance(m, nn.Linear) else m for m in model])
        for batch in map(int, a.batches.split(",")):
            chosen, choices = choose_linear_kernels(model, masks, batch)
            models = {"dense": model, "torch csr": csr, "scipy csr": scipy_model, "chosen": chosen}
            x = torch.randn(batch, w)
            ref = model(x)
            for k, m in models.items():  # every kernel computes the same outputs
                assert torch.allclose(m(x), ref, atol=1e-4, rtol=1e-4), k
            rounds = {k: [] for k in models}
            for _ in range(a.repeats):
                for k, m in models.items():
                    rounds[k].append(_round(m, x, a.calls))
            med = {k: statistics.median(v) for k, v in rounds.items()}
            picked = ", ".join(c["kernel"] for c in choices.values())
            for k in models:
                speed = med["dense"] / med[k]
                print(f"| {s:.2f} | {batch} | {k} | {med[k] * 1e3:.3f} | {min(rounds[k]) * 1e3:.3f} | {speed:.2f}x | "
                      f"{speed * (1 - s):.2f} | {picked if k == 'chosen' else ''} |", flush=True)


if __name__ == "__main__":
    main()
