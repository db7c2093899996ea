"""Global magnitude pruning of torchvision's VGG-16 (138M weights) to 90%: prunelab vs torch.nn.utils.prune.

Each side runs in its own process on an identical model (same seed); the table gives wall time, extra peak
memory (peak RSS minus RSS once the model exists), and the number of weights kept, with ratios.

    python benchmarks/global_threshold.py [--model vgg16] [--sparsity 0.9]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker(side: str, model_name: str, sparsity: float) -> None:
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None)
    weights = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m, _ in weights)
    base = _rss_mb()
    t0 = time.perf_counter()
    if side == "torch":
        import torch.nn.utils.prune as prune

        prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=sparsity)
        per_layer = [int(m.weight_mask.sum()) for m, _ in weights]
    else:
        import prunelab

        pruner = prunelab.Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=sparsity)
        per_layer = [int(torch.count_nonzero(m)) for m in pruner.masks.values()]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"side": side, "seconds": seconds, "extra_mb": peak - base, "kept": sum(per_layer), "per_layer": per_layer,
                      "weights": sum(m.weight.numel() for m, _ in weights), "weight_mb": weight_bytes / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--worker")
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.model, a.sparsity)
        return
    res = {}
    for side in ("prunelab", "torch"):
        out = subprocess.run([sys.executable, __file__, "--worker", side, "--model", a.model,
                              "--sparsity", str(a.sparsity)], capture_output=True, text=True, check=True)
        res[side] = json.loads(out.stdout.strip().splitlines()[-1])
    p, t = res["prunelab"], res["torch"]
    print(f"global magnitude pruning of torchvision {a.model} ({p['weights']:,} conv+linear weights, "
          f"{p['weight_mb']:.0f} MB) to sparsity {a.sparsity}")
    print(f"| {'':28s} | {'torch.nn.utils.prune':>20s} | {'prunelab':>12s} | {'ratio':>16s} |")
    print(f"|{'-' * 30}|{'-' * 22}|{'-' * 14}|{'-' * 18}|")
    print(f"| {'time (s)':28s} | {t['seconds']:20.2f} | {p['seconds']:12.2f} | {t['seconds'] / p['seconds']:13.1f}x faster |")
    print(f"| {'extra peak memory (MB)':28s} | {t['extra_mb']:20.0f} | {p['extra_mb']:12.0f} | "
          f"{p['extra_mb'] / p['weight_mb']:9.2f}x weights |")
    print(f"| {'weights kept':28s} | {t['kept']:20,} | {p['kept']:12,} | {'equal' if t['kept'] == p['kept'] else 'DIFFERENT':>16s} |")
    same = t["per_layer"] == p["per_layer"]
    print(f"| {'kept per layer':28s} | {'':20s} | {'':12s} | {'all equal' if same else 'DIFFERENT':>16s} |")


if __name__ == "__main__":
    main()
