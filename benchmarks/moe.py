"""Expert removal on a small mixture of experts trained here: REAP, frequency and magnitude at 25 / 50 % of experts.

A Mixtral-layout model (``hf:mixtral``, 8 experts, top-2, byte-level tokens) is trained on the Python standard
library's source (``pystdlib``) by ``prunelab run llama_pystdlib_units`` (dense training shared by every run),
then each side removes a share of every block's experts with ``transformer_units`` ``units: [experts]``:

- ``reap``: router weight x expert output norm, mean over the calibration tokens routed to each expert;
- ``frequency``: tokens routed to each expert;
- ``magnitude``: the L1 norm of the expert's tensors (``expert_score: criterion``);
- ``reap+distill``: REAP, then one epoch over a quarter of the training tokens at lr 1e-4 distilling the dense model
  (``prune.distill``; the removed experts stay removed and unrouted while it trains).

Printed per side: held-out perplexity of the pruned model (no retraining), parameters of the shrunk model (the
same class with fewer experts) against the dense one, and the wall time of the run (the first run's includes the
dense training every later run shares). One seed: differences of a percent are within run-to-run noise until
repeated. Bigger models: ``--hidden``, ``--layers``, ``--tokens``.

    python benchmarks/moe.py [--runs-dir /tmp/moe] [--threads 1]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SIDES = {"reap": ["prune.method.expert_score=reap"], "frequency": ["prune.method.expert_score=frequency"],
         "magnitude": ["prune.method.expert_score=criterion"]}
# REAP, then a short recovery by distillation from the dense model (a quarter of the training tokens, one epoch
# at a tenth of the training lr: at the training lr, 1e-3 cosine from the top, it undid the converged model:
# 4 x 128 at 25 % 12.06 -> 12.78)
DISTILL = ["prune.method.expert_score=reap", "prune.retrain.epochs=1", "prune.retrain.lr=0.0001",
           "prune.distill={alpha: 0.5, temperature: 2}"]


def _run(a, overrides: list[str]) -> dict:
    model = (f"model.kwargs={{num_hidden_layers: {a.layers}, hidden_size: {a.hidden}, intermediate_size: "
             f"{2 * a.hidden}, num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 128, "
             f"num_local_experts: {a.experts}, num_experts_per_tok: 2}}")
    argv = [sys.executable, "-m", "prunelab", "run", "llama_pystdlib_units", "model.name=hf:mixtral", model,
            "prune.method.units=[experts]", "prune.method.criterion=magnitude", f"data.train_tokens={a.tokens}",
            f"data.calibration_tokens={a.tokens // 8}", "data.eval_tokens=16384", "data.seq_len=128",
            f"train.epochs={a.epochs}", "--runs-dir", a.runs_dir, "--no-progress", "--threads", str(a.threads),
            *overrides]
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(overrides)} failed: {out.stderr[-600:]}")
    folder = next(line.split(": ", 1)[1] for line in out.stdout.splitlines() if line.startswith("run folder: "))
    summary = json.loads((Path(folder) / "summary.json").read_text())
    return {"seconds": time.perf_counter() - t0, **summary}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs-dir", default="/tmp/prunelab-moe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--shares", default="0.25,0.5")
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    print(f"expert removal, Mixtral layout {a.layers} x {a.hidden}, {a.experts} experts top-2, {a.tokens:,} training "
          f"tokens x {a.epochs} epochs; {a.threads} thread(s); {os.cpu_count()} cores; "
          f"{platform.processor() or platform.machine()}; {datetime.date.today()}")
    dense = None
    print("| experts removed | side | perplexity | x dense | parameters (shrunk / dense) | run time (s) |")
    print("|---|---|---|---|---|---|")
    for share in a.shares.split(","):
        sides = {**SIDES, "reap+distill": DISTILL + [f"prune.retrain.train_tokens={a.tokens // 4}"]}
        for side, overrides in sides.items():
            r = _run(a, [f"prune.sparsity={share}", *overrides])
            dense = dense or r["dense_ppl"]
            small = r.get("shrunk", {}).get("params", r["params_nonzero"])
            print(f"| {float(share):.0%} | {side} | {r['pruned_ppl']:.3f} | {r['pruned_ppl'] / dense:.3f} | "
                  f"{small:,} / {r['params_total']:,} | {r['seconds']:.1f} |", flush=True)
    print(f"dense perplexity {dense:.3f}")


if __name__ == "__main__":
    main()
