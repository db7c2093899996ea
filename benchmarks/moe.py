"""Expert removal on a small mixture of experts trained here: REAP, frequency and magnitude at 25 / 50 % of experts.

A Mixtral-layout model (``hf:mixtral``, 8 experts, top-2, byte-level tokens) is trained on the Python standard
library's source (``pystdlib``) by ``prunelab run llama_pystdlib_units`` (dense training shared by every run),
then each side removes a share of every block's experts with ``transformer_units`` ``units: [experts]``:

- ``reap``: router weight x expert output norm, mean over the calibration tokens routed to each expert;
- ``frequency``: tokens routed to each expert;
- ``magnitude``: the L1 norm of the expert's tensors (``expert_score: criterion``);
- ``random``: experts drawn at random (``expert_score: criterion``, ``criterion: random``), the control;
- ``reap+distill``: REAP, then one epoch over a quarter of the training tokens at lr 1e-4 distilling the dense model
  (``prune.distill``; the removed experts stay removed and unrouted while it trains).

Printed per side: held-out perplexity of the pruned model (no retraining), parameters of the shrunk model (the
same class with fewer experts) against the dense one, the bytes of their weights, greedy decode tokens per second
at batch 1 (the shrunk model as ``prunelab export --format hf`` writes it, loaded by plain transformers, against
the dense checkpoint, interleaved, 1 thread; at these widths per-token overhead dominates), and the wall time of
the run (the first run's includes the
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
         "magnitude": ["prune.method.expert_score=criterion"],
         "random": ["prune.method.expert_score=criterion", "prune.method.criterion=random"]}
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
    seconds = time.perf_counter() - t0
    hf = Path(a.runs_dir + "-hf") / Path(folder).name  # outside the run folder, which prunelab keeps to itself
    if not (hf / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "prunelab", "export", folder, "--format", "hf", "--out", str(hf)],
                       check=True, capture_output=True)
    return {"seconds": seconds, "folder": folder, "hf": hf, **summary}


def _decode(model, repeats: int, new: int = 64) -> float:
    """Greedy decode tokens per second, batch 1, 16-token prompt, ``new`` new tokens with the key-value cache:
    the best of ``repeats`` (a warm-up first)."""
    import torch

    prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(prompt, **kw)
        best = min(_timed(lambda: model.generate(prompt, **kw)) for _ in range(repeats))
    return new / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _deployed(r: dict, repeats: int) -> tuple[float, float, float, float]:
    """(decode tokens/s of the dense model, of the shrunk one, their weights' MiB), measured interleaved."""
    import torch
    import transformers

    from prunelab.experiment.context import RunContext

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    dense = RunContext.from_folder(r["folder"]).build_model(checkpoint=Path(r["folder"]) / "stages" / "dense").eval()
    small = transformers.AutoModelForCausalLM.from_pretrained(r["hf"]).eval()
    rates: dict[str, list[float]] = {"dense": [], "small": []}
    for _ in range(repeats):  # interleaved
        rates["dense"].append(_decode(dense, 1))
        rates["small"].append(_decode(small, 1))
    mib = lambda m: sum(p.numel() * p.element_size() for p in m.parameters()) / 2 ** 20  # noqa: E731
    return max(rates["dense"]), max(rates["small"]), mib(dense), mib(small)


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
    print("| experts removed | side | perplexity | x dense | parameters (shrunk / dense) | weights MiB (shrunk / "
          "dense) | decode tok/s, batch 1 (shrunk / dense, best of 3) | run time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for share in a.shares.split(","):
        sides = {**SIDES, "reap+distill": DISTILL + [f"prune.retrain.train_tokens={a.tokens // 4}"]}
        for side, overrides in sides.items():
            r = _run(a, [f"prune.sparsity={share}", *overrides])
            dense = dense or r["dense_ppl"]
            small = r.get("shrunk", {}).get("params", r["params_nonzero"])
            tps_dense, tps_small, mib_dense, mib_small = _deployed(r, 3)
            print(f"| {float(share):.0%} | {side} | {r['pruned_ppl']:.3f} | {r['pruned_ppl'] / dense:.3f} | "
                  f"{small:,} / {r['params_total']:,} | {mib_small:.2f} / {mib_dense:.2f} | "
                  f"{tps_small:.0f} / {tps_dense:.0f} ({tps_small / tps_dense:.2f}x) | {r['seconds']:.1f} |",
                  flush=True)
    print(f"dense perplexity {dense:.3f}")


if __name__ == "__main__":
    main()
