"""Deployment targets: files that are really smaller and models that are really faster, measured in one run.

1. LeNet-5 at >= 50x (global magnitude over all weights): the sparse (compact) file against the dense fp32
   safetensors file; target at most 1/30.
2. CIFAR VGG-16 with half of every conv layer's filters removed (l1_filter, shrunk): CPU latency speedup at
   batch 64 against the FLOP reduction; target speedup >= 0.8x the FLOP reduction.
3. LeNet-300-100 at >= 95% sparsity: CSR linear layers against dense at batch 1 (and 64); target faster, or
   the diagnosis says why not.
Sizes and speeds depend on the masks and shapes, not on accuracy: the masks come from one-shot magnitude /
L1 pruning of trained weights when ``--lenet5-weights`` / ``--lenet300-weights`` name a dense checkpoint
(model.safetensors), else of the seeded random init (said in the table). CPU, one thread, median of repeats
after warm-up.

    python benchmarks/deploy.py --lenet5-weights RUN/stages/dense/model.safetensors
"""
from __future__ import annotations

import argparse
import sys

import torch
from safetensors.torch import load_file, save as st_save

from prunelab import Pruner
from prunelab.analysis import count_flops
from prunelab.experiment.export_run import diagnose, latency_ms
from prunelab.export.compact import compact_bytes
from prunelab.structure.surgery import shrink
from prunelab.export.sparse_linear import choose_linear_kernels, sparsify_linear
from prunelab.models import build_model


def _model(name, shape, weights):
    torch.manual_seed(0)
    m = build_model(name, shape, 10).eval()
    if weights:
        m.load_state_dict(load_file(weights))
    return m, ("trained weights" if weights else "random init")


def lenet5_files(weights, compressions) -> list[str]:
    rows = ["| compression (prunable) | weights | dense fp32 file bytes | sparse file bytes | ratio | formats | target <= 1/30 |",
            "|---|---|---|---|---|---|---|"]
    for c in compressions:
        m, src = _model("lenet5", (1, 28, 28), weights)
        p = Pruner(m, method={"name": "magnitude", "allocation": "global"}, sparsity=1 - 1 / c)
        dense = len(st_save({k: v.contiguous() for k, v in m.state_dict().items()}))
        sparse, formats = compact_bytes(m, p.masks)
        fmts = ", ".join(f"{k.split('.')[0]}={v}" for k, v in formats.items())
        rows.append(f"| {p.masks.compression_ratio():.1f}x | {src} | {dense:,} | {sparse:,} | 1/{dense / sparse:.1f} | "
                    f"{fmts} | {'met' if sparse * 30 <= dense else 'missed'} |")
    return rows


def vgg_shrink(repeats) -> list[str]:
    torch.manual_seed(0)
    shape = (3, 32, 32)
    m = build_model("vgg16", shape, 10).eval()
    x = torch.zeros(1, *shape)
    p = Pruner(m, method="l1_filter", sparsity=0.5, example_inputs=x, targets={"module_types": ["Conv2d"]})
    small, _ = shrink(m, p.masks, x)
    f_big, f_small = count_flops(m, shape)["dense"], count_flops(small, shape)["dense"]
    red = f_big / f_small
    rows = ["| model | params | FLOPs | b=1 ms | b=64 ms | speedup b=1 | speedup b=64 | speedup / FLOP reduction (b=64) | target >= 0.8 |",
            "|---|---|---|---|---|---|---|---|---|"]
    lat = {(k, b): latency_ms(net, shape, b, repeats if b == 1 else max(3, repeats // 5))
           for k, net in (("big", m), ("small", small)) for b in (1, 64)}
    for k, net, f in (("big", m, f_big), ("small", small, f_small)):
        s1, s64 = lat["big", 1] / lat[k, 1], lat["big", 64] / lat[k, 64]
        ok = "" if k == "big" else ("met" if s64 >= 0.8 * red else "missed")
        rows.append(f"| VGG-16 {'unpruned' if k == 'big' else 'half filters, shrunk'} | "
                    f"{sum(q.numel() for q in net.parameters()):,} | {f:,} | {lat[k, 1]:.2f} | {lat[k, 64]:.1f} | "
                    f"{s1:.2f}x | {s64:.2f}x | {s64 / (f_big / f):.2f} | {ok} |")
    return rows


def lenet300_csr(weights, sparsities, repeats) -> list[str]:
    rows = ["| sparsity | weights | dense b=1 ms | CSR b=1 ms | speedup b=1 | dense b=64 ms | CSR b=64 ms | speedup b=64 | "
            "diagnosis (b=1) | chosen kernels: speedup b=1 / b=64 (kernels) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for s in sparsities:
        m, src = _model("lenet300_100", (1, 28, 28), weights)
        p = Pruner(m, method={"name": "magnitude", "allocation": "global"}, sparsity=s)
        fast, _ = sparsify_linear(m, p.masks)
        chosen = {b: choose_linear_kernels(m, p.masks, b) for b in (1, 64)}  # per layer, measured here
        d = {b: latency_ms(m, (1, 28, 28), b, repeats) for b in (1, 64)}
        c = {b: latency_ms(fast, (1, 28, 28), b, repeats) for b in (1, 64)}
        k = {b: latency_ms(chosen[b][0], (1, 28, 28), b, repeats) for b in (1, 64)}
        red = 1 / (1 - s)
        why = diagnose("csr linear", d[1] / c[1], red, s, 1) if d[1] < c[1] else "faster: target met"
        picked = " / ".join(",".join(v["kernel"] for v in chosen[b][1].values()) for b in (1, 64))
        rows.append(f"| {s:.2f} | {src} | {d[1]:.3f} | {c[1]:.3f} | {d[1] / c[1]:.2f}x | {d[64]:.3f} | {c[64]:.3f} | "
                    f"{d[64] / c[64]:.2f}x | {why} | {d[1] / k[1]:.2f}x / {d[64] / k[64]:.2f}x ({picked}) |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lenet5-weights", help="dense LeNet-5 model.safetensors (default: random init)")
    ap.add_argument("--lenet300-weights", help="dense LeNet-300-100 model.safetensors (default: random init)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/results/deploy.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    import datetime
    import os

    lines = ["# Deployment: smaller files, faster models", "",
             f"Command: `python {' '.join(sys.argv)}`; {datetime.date.today()}; torch {torch.__version__}; "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before the run", "",
             "## 1. LeNet-5 sparse file vs dense fp32 file", "", *lenet5_files(a.lenet5_weights, [50]), "",
             "## 2. CIFAR VGG-16, half the filters removed by shrink (CPU, 1 thread)", "", *vgg_shrink(a.repeats), "",
             "## 3. LeNet-300-100, CSR linear layers vs dense (CPU, 1 thread)", "",
             *lenet300_csr(a.lenet300_weights, [0.95, 0.98, 0.99], a.repeats), ""]
    from pathlib import Path

    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
