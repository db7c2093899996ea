"""Memory of calibrated one-shot pruning on a LLaMA-style model, and SparseGPT's speed against the paper's
algorithm in float32.

    python benchmarks/calibration_memory.py --threads 1 [--baseline-src OLD/src] > benchmarks/results/calibration_memory.md

Part 1, memory. A LLaMA-style model built from a config (random weights: memory does not depend on their
values), width 2048 / MLP 5632 / 32 heads / 4 kv heads / vocabulary 32000 as TinyLlama-1.1B, ``--layers``
decoder layers; ``--sequences`` x ``--tokens`` calibration tokens. Each measurement runs in a fresh process;
"peak above the weights" is the peak resident memory minus the resident memory once the model and the batches
exist. Rows: Wanda and SparseGPT at 50 % (sequential, the default), in memory and with ``device="cpu"`` given
(the onloading path: blocks moved, cached inputs on the host; on this CPU-only machine nothing really moves, so
the row checks that path's cost and its masks). The bound the pipeline is built to: one block's Gram matrices
(float32, SparseGPT; Wanda keeps a vector per target) + the cached block inputs (float32, replaced in place by
each block's outputs), beside the measured figure; the forward pass's own temporaries of one block on one batch
come on top. With ``--baseline-src`` the same runs use an older prunelab (its ``src`` folder) for comparison.

Part 2, speed. SparseGPT on one Linear (width d x d, 50 %, 4 x d calibration rows) against a float32
transcription of the paper's Algorithm 1 written here (Frantar & Alistarh 2023: Cholesky of H^-1, blocks of
128 columns, mask by w^2 / [H^-1]_jj^2 per block, lazy updates), both from the same float32 Gram matrix,
interleaved, ``--repeats`` times; and the physical floor measured in the same run: one float32 GEMM of the
algorithm's dominant size (d x d by d x d).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from global_selection import _rss_mb  # resident memory now, from /proc (the script's folder is on sys.path)

HIDDEN, MLP, HEADS, KV, VOCAB = 2048, 5632, 32, 4, 32000


def one(kind: str, a) -> dict:
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    from prunelab import Pruner

    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP,
                                   num_hidden_layers=a.layers, num_attention_heads=HEADS, num_key_value_heads=KV,
                                   max_position_embeddings=max(2048, a.tokens), tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.config.use_cache = False  # the old path keeps transformers' default otherwise (a growing cache)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, VOCAB, (a.batch, a.tokens), generator=g) for _ in range(a.sequences // a.batch)]
    method, _, where = kind.partition("_")
    spec = {"name": method, "samples": a.sequences}
    targets = {"exclude": ["lm_head*"]}  # the same targets on either version (the old one prunes lm_head)
    p = Pruner(model, spec, sparsity=0.5, schedule="manual", targets=targets)
    base = _rss_mb()
    t0 = time.perf_counter()
    p.calibrate(batches, **({"device": "cpu"} if where == "onload" else {}))
    p.prune(0.5)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    h = hashlib.sha256()
    for n, m in p.masks.items():
        h.update(n.encode())
        h.update(m.numpy().tobytes())
    return {"kind": kind, "seconds": seconds, "peak_above_mb": peak - base,
            "weights_mb": sum(q.numel() * q.element_size() for q in model.parameters()) / 2**20,
            "targets_mb": sum(q.numel() * q.element_size() for q in p.params.values()) / 2**20,
            "masks": h.hexdigest()[:12]}


def paper_sparsegpt(w, h, sparsity: float, blocksize: int = 128, percdamp: float = 0.01):
    """The paper's Algorithm 1 in float32, transcribed for comparison (not prunelab's code)."""
    import torch

    w = w.clone()
    rows, cols = w.shape
    h = h.clone()
    h.diagonal().add_(percdamp * h.diagonal().mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    mask = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, hb = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err = torch.zeros_like(w1)
        score = w1.square() / hb.diagonal().square()[None]
        m1 = score <= score.flatten().sort()[0][int(score.numel() * sparsity)]
        for i in range(i2 - i1):
            q = w1[:, i].masked_fill(m1[:, i], 0)
            e = (w1[:, i] - q) / hb[i, i]
            w1[:, i:] -= e[:, None] * hb[i, i:][None]
            w1[:, i] = q
            err[:, i] = e
        w[:, i1:i2] = w1
        mask[:, i1:i2] = m1
        w[:, i2:] -= err @ hinv[i1:i2, i2:]
    return w, ~mask


def speed(a) -> list[dict]:
    import torch

    torch.set_num_threads(a.threads)
    from prunelab.engine.reconstruction import sparsegpt

    out = []
    for d in a.widths:
        g = torch.Generator().manual_seed(d)
        x = torch.randn(4 * d, 64, generator=g) @ torch.randn(64, d, generator=g) + 0.1 * torch.randn(4 * d, d, generator=g)
        h = x.T @ x
        w = torch.randn(d, d, generator=g)
        b = torch.randn(d, d, generator=g)
        times: dict = {"prunelab": [], "paper_fp32": [], "gemm": []}
        for _ in range(a.repeats):  # interleaved
            for k in times:
                t = time.perf_counter()
                if k == "prunelab":
                    sparsegpt(w, h, 0.5)
                elif k == "paper_fp32":
                    paper_sparsegpt(w, h, 0.5)
                else:
                    w @ b
                times[k].append(time.perf_counter() - t)
        out.append({"d": d, **{k: (min(v), statistics.median(v)) for k, v in times.items()}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    ap.add_argument("--baseline-src", help="an older prunelab's src folder, measured the same way")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--kinds", default="wanda,sparsegpt,wanda_onload,sparsegpt_onload")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a)))
        return
    args = [f"--threads={a.threads}", f"--layers={a.layers}", f"--sequences={a.sequences}", f"--tokens={a.tokens}",
            f"--batch={a.batch}"]
    print("# Calibration memory and SparseGPT's speed\n")
    print(f"{time.strftime('%Y-%m-%d')}; {a.threads} thread(s); this 2-core shared CPU machine.\n")
    if not a.skip_memory:
        kinds = a.kinds.split(",")
        envs = [("today", None)] + ([("baseline", a.baseline_src)] if a.baseline_src else [])
        rows = []
        for label, src in envs:
            for kind in kinds if label == "today" else [k for k in kinds if "_" not in k]:
                env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
                res = subprocess.run([sys.executable, __file__, "--one", kind, *args], capture_output=True,
                                     text=True, env=env)
                if res.returncode:
                    print(f"<!-- {label} {kind} failed: {res.stderr[-400:]!r} -->")
                    continue
                rows.append({"version": label, **json.loads(res.stdout.strip().splitlines()[-1])})
        tokens = a.sequences * a.tokens
        # per target: q, k, v, o, gate and up see 2048 columns, down 5632; float32
        gram_mb = (6 * HIDDEN ** 2 + MLP ** 2) * 4 / 2**20
        cache_mb = tokens * HIDDEN * 4 / 2**20
        w = rows[0]["weights_mb"] if rows else 0
        print(f"Model: LLaMA-style, {a.layers} layers x {HIDDEN} (MLP {MLP}, {HEADS} heads, {KV} kv heads, "
              f"vocabulary {VOCAB}), {w:.0f} MiB of float32 weights; {a.sequences} x {a.tokens} calibration "
              f"tokens in batches of {a.batch}; the output layer left dense in every row.\n")
        masks_mb = rows[0]["targets_mb"] / 4 if rows else 0  # one bool per float32 weight: the result itself
        solve_mb = (2 * MLP ** 2 + HIDDEN * MLP) * 4 / 2**20  # SparseGPT's largest solve: H's copy, its factor, W
        block_mb = (2 * HIDDEN * HIDDEN + 2 * HIDDEN * HIDDEN // (HEADS // KV) + 3 * HIDDEN * MLP) * 4 / 2**20
        score_mb = block_mb + HIDDEN * MLP * 8 / 2**20  # a block's scores (float32), its largest also in float64
        print("| version | run | seconds | peak above the weights, MiB | bound, MiB | x targets' bytes | masks |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            bound = masks_mb + cache_mb + (gram_mb + solve_mb if r["kind"].startswith("sparsegpt") else score_mb)
            print(f"| {r['version']} | {r['kind']} | {r['seconds']:.0f} | {r['peak_above_mb']:.0f} | {bound:.0f} | "
                  f"{r['peak_above_mb'] / r['targets_mb']:.2f} | {r['masks']} |")
        print(f"\nBound = the masks ({masks_mb:.0f} MiB: one bool per target weight, the result) + the cached block "
              f"inputs ({tokens} x {HIDDEN} float32 = {cache_mb:.0f} MiB) + for SparseGPT one block's Gram matrices "
              f"(6 x {HIDDEN}^2 + {MLP}^2 float32 = {gram_mb:.0f} MiB) and its largest solve ({solve_mb:.0f} MiB: "
              f"the dampened copy of H, its inverse factor, the weight), for Wanda a block's scores in float32 and its "
              f"largest target's in float64 ({score_mb:.0f} MiB). A block's forward temporaries on one batch and the allocator's own slack come "
              "on top; nothing in the bound grows with the number of layers.\n")
    if a.skip_speed:
        return
    sp = speed(a)
    print("| width d | prunelab s (min / median) | paper fp32 s (min / median) | ratio (median) | "
          "one d x d GEMM s (floor) | prunelab / floor |")
    print("|---|---|---|---|---|---|")
    for r in sp:
        print(f"| {r['d']} | {r['prunelab'][0]:.3f} / {r['prunelab'][1]:.3f} | {r['paper_fp32'][0]:.3f} / "
              f"{r['paper_fp32'][1]:.3f} | {r['prunelab'][1] / r['paper_fp32'][1]:.2f} | {r['gemm'][1]:.3f} | "
              f"{r['prunelab'][1] / r['gemm'][1]:.1f} |")


if __name__ == "__main__":
    main()
