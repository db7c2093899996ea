"""Global magnitude pruning of 10M-1B weights against the physical limit and against peers.

One model of bias-free Linear layers of mixed sizes holds N weights (float32, N(0, 1)). Sides, each a fresh
process per repeat so peak memory is its own, run interleaved (A B C A B C ...):

- ``limit``: the fused pass, what no selection can beat: with the threshold given, each weight read once and,
  slice by cache-sized slice, |w| compared with it, the mask written and the pruned weights zeroed (what a
  fused abs-compare-write-zero kernel does; a bare ``w > t``, the floor before 2026-12, omitted the abs and
  the zeroing and made every ratio look worse than the work allows).
- ``abs_limit``: ``m = w.abs() > t; w.mul_(m)`` per tensor, the same work as a torch user writes it.
- ``prunelab``: ``prunelab.Pruner(model, {name: magnitude, allocation: global}, sparsity)``: scores, the exact
  global k-th largest (ties by position), masks, and the weights zeroed.
- ``cat_kthvalue``: ``torch.cat`` of every |w|, ``kthvalue``, masks: the plain-torch way.
- ``torch_prune``: ``torch.nn.utils.prune.global_unstructured`` (up to 100M weights: it needs several copies).

Time is wall time of the side's work (model building excluded), after a warm-up of the same code on a 64K-weight
model (first calls into torch and prunelab cost about 1.3 s, which is not selection); CPU time is printed beside
it (a wall time well above it means the machine was busy). Extra memory is peak RSS minus RSS with the model
built, over the weights' bytes. Each selecting side's kept count is shown against k, the exact number
to keep (a plain ``> v`` drops the entries tied with the k-th largest).

    python benchmarks/global_selection.py [--sizes 10M,100M,400M,1B] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

SIDES = ("limit", "abs_limit", "prunelab", "cat_kthvalue", "torch_prune")
PEER_MAX = {"cat_kthvalue": 400_000_000, "torch_prune": 100_000_000}  # beyond: memory or hours


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _shapes(n: int) -> list[tuple[int, int]]:
    """Layers of mixed widths (a quarter of the weights in small layers) adding up to about n weights."""
    shapes, left, w = [], n, 256
    while left > 0:
        width = min(8192, w)
        rows = max(1, min(left // width, 4 * width))
        shapes.append((rows, width))
        left -= rows * width
        w = 256 if w >= 8192 else w * 2
    return shapes


def worker(side: str, n: int, sparsity: float, threads: int) -> None:
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    layers = []
    for rows, cols in _shapes(n):
        lin = nn.Linear(cols, rows, bias=False, device="meta").to_empty(device="cpu")
        with torch.no_grad():
            lin.weight.normal_(generator=gen)
        layers.append(lin)
    model = nn.Sequential(*layers)
    weights = [l.weight for l in layers]
    total = sum(w.numel() for w in weights)
    k = int((1 - sparsity) * total + 0.5)
    t_given = 1.6448536  # the 0.9 quantile of |N(0,1)|: the limit passes are given the threshold
    import torch.nn.utils.prune as prune  # imports outside the timed part

    import prunelab

    def run(model, layers, weights, total, k):
        with torch.no_grad():
            if side == "limit":
                masks = [_fused(w, t_given) for w in weights]
            elif side == "abs_limit":
                masks = [w.abs() > t_given for w in weights]
                for w, m in zip(weights, masks):
                    w.mul_(m)
            elif side == "prunelab":
                pruner = prunelab.Pruner(model, {"name": "magnitude", "allocation": "global"}, sparsity=sparsity)
                masks = list(pruner.masks.values())
            elif side == "cat_kthvalue":
                v = torch.cat([w.abs().reshape(-1) for w in weights]).kthvalue(total - k + 1).values
                masks = [w.abs() > v for w in weights]  # no ties in continuous random weights
                for w, m in zip(weights, masks):
                    w.mul_(m)
            else:
                prune.global_unstructured([(l, "weight") for l in layers], pruning_method=prune.L1Unstructured,
                                          amount=sparsity)
                masks = [l.weight_mask for l in layers]
        return masks

    small = [nn.Linear(256, 128, bias=False), nn.Linear(128, 256, bias=False)]
    run(nn.Sequential(*small), small, [l.weight for l in small], 65536, int((1 - sparsity) * 65536 + 0.5))  # warm-up
    base = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    masks = run(model, layers, weights, total, k)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kept = sum(int(torch.count_nonzero(m)) for m in masks)
    print(json.dumps({"side": side, "seconds": seconds, "cpu": cpu, "extra_mb": peak - base, "kept": kept, "k": k,
                      "weights": total, "weight_mb": total * 4 / 2**20}))


def _fused(w, t: float, slice_len: int = 1 << 18):
    """One pass over ``w`` in cache-sized slices: |w| > t into the mask, the pruned weights zeroed."""
    import torch

    flat, mask = w.reshape(-1), torch.empty(w.numel(), dtype=torch.bool)
    buf = torch.empty(min(slice_len, flat.numel()))
    for start in range(0, flat.numel(), slice_len):
        x, b, m = flat[start:start + slice_len], buf[: min(slice_len, flat.numel() - start)], mask[start:start + slice_len]
        torch.abs(x, out=b)
        torch.gt(b, t, out=m)
        x.mul_(m)
    return mask.reshape(w.shape)


def _size(s: str) -> int:
    mult = {"K": 10**3, "M": 10**6, "B": 10**9}
    return int(float(s[:-1]) * mult[s[-1]]) if s[-1] in mult else int(s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10M,100M,400M,1B")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--worker")
    ap.add_argument("--n", type=int)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.n, a.sparsity, a.threads)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    print(f"global magnitude pruning to sparsity {a.sparsity}; {a.threads} torch thread(s); {os.cpu_count()} cores; "
          f"{platform.processor() or platform.machine()}; {datetime.date.today()}; {a.repeats} repeats interleaved")
    print("| weights | side | time min (s) | time median (s) | cpu median (s) | x limit (min) | extra memory / weights | kept |")
    print("|---|---|---|---|---|---|---|---|")
    for size in a.sizes.split(","):
        n = _size(size)
        sides = [s for s in a.sides.split(",") if n <= PEER_MAX.get(s, n)]
        runs: dict[str, list[dict]] = {s: [] for s in sides}
        for _ in range(a.repeats):
            for side in sides:
                out = subprocess.run([sys.executable, __file__, "--worker", side, "--n", str(n), "--sparsity",
                                      str(a.sparsity), "--threads", str(a.threads)], capture_output=True, text=True,
                                     env=env)
                if out.returncode != 0:
                    sys.exit(f"{side} at {size} failed: {out.stderr[-800:]}")
                runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
        limit = min(r["seconds"] for r in runs["limit"]) if "limit" in runs else None
        for side in sides:
            rs = runs[side]
            tmin, tmed = min(r["seconds"] for r in rs), statistics.median(r["seconds"] for r in rs)
            cmed = statistics.median(r["cpu"] for r in rs)
            mem = max(r["extra_mb"] for r in rs) / rs[0]["weight_mb"]
            kept, k = rs[0]["kept"], rs[0]["k"]
            if side in ("limit", "abs_limit"):
                note = "(threshold given)"
            elif kept == k:
                note = f"{kept:,} = k"
            else:  # a plain `> v` drops the entries tied with the k-th largest
                note = f"{kept:,} = k - {k - kept:,}" if kept < k else f"{kept:,} = k + {kept - k:,}"
            ratio = f"{tmin / limit:.2f}" if limit else "-"
            print(f"| {rs[0]['weights']:,} | {side} | {tmin:.3f} | {tmed:.3f} | {cmed:.3f} | {ratio} | {mem:.2f} | "
                  f"{note} |", flush=True)


if __name__ == "__main__":
    main()
