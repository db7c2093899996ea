"""Cost of one-shot calibrated pruning on a GPT-2-small-sized model: Wanda and SparseGPT against the forward
passes alone, wall time split into calibration passes and pruning / reconstruction, and peak memory.

    python benchmarks/calibration.py --threads 2 --repeats 2 > benchmarks/results/calibration.md

The model is ``hf:gpt2`` from its default config (12 layers, 768 wide, 124M parameters, random weights: the
cost does not depend on their values); calibration is ``--sequences`` random token sequences of ``--tokens``.
Each measurement runs in a fresh process (so its peak resident memory is its own), the three kinds interleaved
(forward, wanda, sparsegpt, forward, ...), ``--repeats`` times; the table gives min and median. "forward" is
the plain forward passes over the calibration batches (eval, no gradients): the floor every calibrated method
pays once. Wanda and SparseGPT run sequentially, block by block on cached inputs
(:mod:`prunelab.calibration.pipeline`), so they pay two block passes (statistics, then the pruned block's
outputs) plus, for SparseGPT, the Gram matrices and the reconstruction (``--precision``, float32 by default).
Memory: peak RSS minus the RSS with the model built, against one block's Gram matrices plus the cached block
inputs (float32, replaced in place by the outputs) as the expected bound.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def one(kind: str, a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from prunelab import Pruner
    from prunelab.models import build_model

    model = build_model("hf:gpt2", (a.tokens,), 50257, seed=0, n_layer=a.layers, n_positions=max(a.tokens, 1024))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 50257, (a.batch, a.tokens), generator=g) for _ in range(a.sequences // a.batch)]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inner = {"s": 0.0}

    def timed(fn):
        def wrapper(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                inner["s"] += time.perf_counter() - t
        return wrapper
    t0 = time.perf_counter()
    if kind == "forward":
        with torch.no_grad():
            model.eval()
            for x in batches:
                model(x)
    else:
        # the time inside the method's decisions (SparseGPT's reconstruction, Wanda's scoring and selection) is
        # pruning; the rest (the calibration pipeline's passes) is calibration
        Pruner._decide = timed(Pruner._decide)
        p = Pruner(model, {"name": kind, "samples": a.sequences}, sparsity=0.5, schedule="manual")
        p.calibrate(batches, precision=a.precision)
        p.prune(0.5)
    total = time.perf_counter() - t0
    calib = total - inner["s"]
    return {"kind": kind, "total": total, "calibration": calib, "pruning": total - calib if kind != "forward" else 0.0,
            "peak_extra_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024,
            "model_mb": sum(q.numel() * q.element_size() for q in model.parameters()) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="float32", choices=["float32", "float64"])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a)))
        return
    args = [f"--threads={a.threads}", f"--layers={a.layers}", f"--sequences={a.sequences}", f"--tokens={a.tokens}",
            f"--batch={a.batch}", f"--precision={a.precision}"]
    runs: dict = {}
    for _ in range(a.repeats):
        for kind in ("forward", "wanda", "sparsegpt"):
            out = subprocess.run([sys.executable, __file__, "--one", kind, *args], capture_output=True, text=True,
                                 check=True)
            runs.setdefault(kind, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    e, w = 768, 3072
    size = 8 if a.precision == "float64" else 4
    block_mb = (3 * e * e + w * w) * size / 2**20  # Gram matrices of one block's four targets (c_attn and
    # attn.c_proj see 768 columns, mlp.c_fc 768, mlp.c_proj 3072)
    act_mb = a.sequences * a.tokens * e * 4 / 2**20  # the cached block inputs, float32
    fwd = statistics.median(r["total"] for r in runs["forward"])
    print("# Calibrated one-shot pruning of a GPT-2-small-sized model on this CPU\n")
    print(f"{time.strftime('%Y-%m-%d')}; {a.threads} thread(s); {a.layers} layers x 768, "
          f"{runs['forward'][0]['model_mb']:.0f} MiB of float32 weights; {a.sequences} sequences of {a.tokens} "
          f"tokens in batches of {a.batch}; {a.repeats} interleaved repeats, each in a fresh process.\n")
    print("| run | total s (min / median) | calibration passes s | pruning / reconstruction s | "
          "x forward alone | peak memory above the model, MiB |")
    print("|---|---|---|---|---|---|")
    for kind, rs in runs.items():
        tot = [r["total"] for r in rs]
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(f"| {kind} | {min(tot):.1f} / {statistics.median(tot):.1f} | {med('calibration'):.1f} | "
              f"{med('pruning'):.1f} | {statistics.median(tot) / fwd:.2f} | {med('peak_extra_mb'):.0f} |")
    print(f"\nExpected memory bound: one block's Gram matrices {block_mb:.0f} MiB + cached block inputs "
          f"(replaced in place by the outputs) {act_mb:.0f} MiB = {block_mb + act_mb:.0f} MiB (plus the forward pass's own activations, which the "
          "forward row shows).")


if __name__ == "__main__":
    main()
