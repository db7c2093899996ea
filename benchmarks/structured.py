"""Structured pruning of torchvision's ResNet-50: prunelab against Torch-Pruning, and what the shrunk model runs at.

1. Time to prune half the channels by L1 norm and get a smaller model: prunelab (``Pruner(model, "l1_filter")``
   then ``export.shrink``, which by default also checks the shrunk model's outputs against the masked model's
   in float64; ``check=False``, and shrinking in place with the pruner's own trace (``graph=``), is the
   same work as the peer's) against Torch-Pruning's ``MagnitudePruner`` (p=1, ratio 0.5, the classifier left whole, no check), each from
   a fresh model, interleaved, min and median of ``--repeats``. Also the multiply-accumulates (MACs) and
   parameters each removes.
2. Latency of the dense and the two shrunk models at 1 and 2 threads, batch 1 and 32 (models interleaved per
   repeat, median of repeats): speedup over dense, and speedup / MAC reduction, the share of the ideal (1.0)
   that the smaller dense kernels deliver.

    python benchmarks/structured.py [--size 224] [--repeats 3] [--profile]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch
import torchvision
from torch import nn

from prunelab.analysis import count_flops


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _prunelab(x, check=True, reuse=False):
    from prunelab import Pruner
    from prunelab.export import shrink

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    t0 = time.perf_counter()
    p = Pruner(model, "l1_filter", sparsity=0.5, example_inputs=x)
    t1 = time.perf_counter()
    small, _ = shrink(model, p.masks, x, check=check, graph=p.channels if reuse else None)
    t2 = time.perf_counter()
    return small, t2 - t0, {"select": t1 - t0, "shrink": t2 - t1}


def _torch_pruning(x):
    import torch_pruning as tp

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    t0 = time.perf_counter()
    tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                              ignored_layers=[model.fc]).step()
    return model, time.perf_counter() - t0, {}


def _latency(model, x, repeats) -> list[float]:
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--profile", action="store_true", help="cProfile one prunelab prune+shrink and print the top")
    a = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(1, 3, a.size, a.size)
    if a.profile:
        import cProfile
        import pstats

        cProfile.runctx("_prunelab(x)", globals(), {"x": x}, "/tmp/structured.prof")
        pstats.Stats("/tmp/structured.prof").sort_stats("cumulative").print_stats(40)
        return
    print(f"torchvision resnet50 at {a.size} px; {datetime.date.today()}; torch {torch.__version__}; "
          f"{os.cpu_count()} cores; pruning at 1 thread; {a.repeats} repeats interleaved\n")
    sides = {"prunelab": _prunelab, "prunelab, check=False": lambda x: _prunelab(x, check=False),
             "prunelab, in place (graph=pruner.channels, check=False)":
                 lambda x: _prunelab(x, check=False, reuse=True),
             "Torch-Pruning": _torch_pruning}
    runs = {k: [] for k in sides}
    for _ in range(a.repeats):
        for side, fn in sides.items():
            runs[side].append(fn(x))
    dense = torchvision.models.resnet50().eval()
    shape = (3, a.size, a.size)
    macs = {"dense": count_flops(dense, shape)["dense"]}
    models = {"dense": dense}
    print("| side | prune (+shrink) s, min | median | MACs | MAC reduction | params | split (min) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| dense | - | - | {macs['dense'] / 1e9:.2f} G | 1.00x | {_params(dense) / 1e6:.2f} M | |")
    for side, rs in runs.items():
        model = rs[0][0]
        if not side.startswith("prunelab,"):  # the same model as prunelab's
            models[side] = model
        macs[side] = count_flops(model, shape)["dense"]
        ts = [r[1] for r in rs]
        split = ", ".join(f"{k} {min(r[2][k] for r in rs):.2f}" for k in rs[0][2])
        print(f"| {side} | {min(ts):.2f} | {statistics.median(ts):.2f} | {macs[side] / 1e9:.2f} G | "
              f"{macs['dense'] / macs[side]:.2f}x | {_params(model) / 1e6:.2f} M | {split} |")
    print("\n| threads | batch | model | latency ms (median) | speedup | speedup / MAC reduction |")
    print("|---|---|---|---|---|---|")
    for threads in map(int, a.threads.split(",")):
        torch.set_num_threads(threads)
        for batch in map(int, a.batches.split(",")):
            xb = torch.randn(batch, *shape)
            lat = {k: [] for k in models}
            for _ in range(a.repeats):
                for k, m in models.items():
                    lat[k] += _latency(m, xb, 1 if batch > 1 else 5)
            med = {k: statistics.median(v) for k, v in lat.items()}
            for k in models:
                speed = med["dense"] / med[k]
                red = macs["dense"] / macs[k]
                share = f"{speed / red:.2f}" if k != "dense" else "-"
                print(f"| {threads} | {batch} | {k} | {med[k] * 1e3:.1f} | {speed:.2f}x | {share} |", flush=True)


if __name__ == "__main__":
    main()
