"""Li et al.'s L1-norm filter pruning presets: parameters and FLOPs removed by shrink, against the paper.

Builds each CIFAR model, prunes it with its preset (the ranking does not change the counts), shrinks it and
prints parameters and FLOPs (multiply-accumulates, 32x32 input) before and after. Paper values: Li et al.,
"Pruning Filters for Efficient ConvNets" (ICLR 2017), Tables 1-2.

    python benchmarks/l1_presets.py
"""
from __future__ import annotations

import torch

from prunelab import Pruner
from prunelab.analysis import count_flops
from prunelab.structure.surgery import shrink
from prunelab.models import build_model

# preset: (model, kwargs, paper params reduction %, paper FLOPs reduction %)
CASES = {
    "vgg16_a": ("vgg16", {}, 64.0, 34.2),
    "resnet56_a": ("resnet56", {"shortcut": "A"}, 9.4, 10.4),
    "resnet56_b": ("resnet56", {"shortcut": "A"}, 13.7, 27.6),
    "resnet110_a": ("resnet110", {"shortcut": "A"}, 2.3, 15.9),
    "resnet110_b": ("resnet110", {"shortcut": "A"}, 32.4, 38.6),
}


def main() -> None:
    x = torch.zeros(1, 3, 32, 32)
    print("| preset | params | params after | params removed % (paper) | FLOPs | FLOPs after | FLOPs removed % (paper) |")
    print("|---|---|---|---|---|---|---|")
    for preset, (name, kw, pp, pf) in CASES.items():
        torch.manual_seed(0)
        m = build_model(name, (3, 32, 32), 10, **kw)
        p = Pruner(m, method={"name": "l1_filter", "preset": preset}, sparsity=0.5, example_inputs=x)
        small, _ = shrink(m, p.masks, x)
        n0, n1 = (sum(q.numel() for q in net.parameters()) for net in (m, small))
        f0, f1 = (count_flops(net, (3, 32, 32))["dense"] for net in (m, small))
        print(f"| {preset} | {n0:,} | {n1:,} | {100 * (1 - n1 / n0):.1f} ({pp}) | {f0:,} | {f1:,} | "
              f"{100 * (1 - f1 / f0):.1f} ({pf}) |")


if __name__ == "__main__":
    main()
